//! Where a command's work happens: in this process on the store, or in a running
//! server over HTTP. Commands are written once against [`Backend`].

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plughost::accounts::{Grant, KeySpec};
use plughost::admin::{Admin, JobFilter, PluginDetails, ServiceAction, ServiceStatus, StepProfile, UnregisteredPlugin};
use plughost::config::Config;
use plughost::jobs::SystemJob;
use plughost::metadata::EntityDefinition;
use plughost::model::{Entity, EntityCollection};
use plughost::pipeline::{BulkDelete, Caller, NewJob, Pipeline, Request, Response};
use plughost::protocol::WorkerInfo;
use plughost::registry::{AssemblyRecord, PluginRecord, Registration, StepRecord, StepSpec};
use plughost::runs::{RecordedRun, RunSummary};
use plughost::security::{ApiKey, AuditEntry, NewKey, Principal, Role, SYSTEM_USER, User};
use plughost::server::{
    DefineBody, ErrorBody, IdBody, ImportQuery, MessageBody, NewRoleBody, NewUserBody, PostponeBody, RolesBody,
    ServerInfo,
};
use plughost::store::{Committer, JobAction, JobQueue, Store, StoreError};
use plughost::workflow::LogEntry;
use plughost::workflow::ops::WorkflowView;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CliError;

pub(crate) trait Backend {
    fn register(
        &self,
        bytes: &[u8],
        name: &str,
        description: Option<String>,
        steps: Vec<StepSpec>,
    ) -> Result<Registration, CliError>;
    fn plugins(&self) -> Result<Vec<PluginRecord>, CliError>;
    fn plugin(&self, name: &str) -> Result<PluginDetails, CliError>;
    fn steps(&self) -> Result<Vec<StepRecord>, CliError>;
    fn step(&self, key: &str) -> Result<StepRecord, CliError>;
    fn add_step(&self, spec: StepSpec) -> Result<StepRecord, CliError>;
    fn remove_step(&self, key: &str) -> Result<StepRecord, CliError>;
    fn set_step_enabled(&self, key: &str, enabled: bool) -> Result<StepRecord, CliError>;
    /// Sets a step to record its next `runs` runs (0: none).
    fn profile_step(&self, key: &str, runs: u32) -> Result<StepProfile, CliError>;
    /// Recorded runs, newest first.
    fn runs(&self, step: Option<&str>, limit: usize) -> Result<Vec<RunSummary>, CliError>;
    fn run(&self, id: uuid::Uuid) -> Result<RecordedRun, CliError>;
    fn delete_run(&self, id: uuid::Uuid) -> Result<RunSummary, CliError>;
    fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<UnregisteredPlugin, CliError>;
    fn unregister_assembly(&self, key: &str) -> Result<AssemblyRecord, CliError>;
    fn definitions(&self) -> Result<Vec<EntityDefinition>, CliError>;
    fn define_entity(&self, def: EntityDefinition) -> Result<EntityDefinition, CliError>;
    fn execute(&self, request: Request) -> Result<Response, CliError>;
    /// Queues a bulk delete.
    fn bulk_delete(&self, spec: BulkDelete) -> Result<SystemJob, CliError>;
    /// Queues an import of `file`.
    fn bulk_import(&self, query: &ImportQuery, file: &[u8]) -> Result<SystemJob, CliError>;
    /// Queues a bulk mail.
    fn bulk_mail(&self, spec: plughost::mail::BulkMail) -> Result<SystemJob, CliError>;
    /// Queues the distribution of a campaign activity.
    fn distribute(&self, activity: uuid::Uuid, name: Option<String>) -> Result<SystemJob, CliError>;
    /// A page of the jobs `filter` selects.
    fn jobs(&self, filter: &JobFilter) -> Result<Vec<SystemJob>, CliError>;
    fn manage_job(&self, id: uuid::Uuid, action: JobAction) -> Result<Option<SystemJob>, CliError>;
    fn create_job(&self, spec: NewJob) -> Result<SystemJob, CliError>;
    /// The asynchronous service's status, after `action` if given.
    fn service(&self, action: Option<ServiceAction>) -> Result<ServiceStatus, CliError>;
    /// The remote workers (`plughost worker`) serving the server.
    fn remote_workers(&self) -> Result<Vec<WorkerInfo>, CliError>;
    /// Who this command acts as: the key's user on a server, SYSTEM on the store.
    fn whoami(&self) -> Result<Principal, CliError>;
    fn users(&self) -> Result<Vec<User>, CliError>;
    fn create_user(&self, name: &str, roles: &[String]) -> Result<User, CliError>;
    /// `disable`, `enable`, or `roles` (with roles to add and remove).
    fn user_action(&self, name: &str, action: &str, roles: RolesBody) -> Result<User, CliError>;
    fn keys(&self, user: Option<&str>) -> Result<Vec<ApiKey>, CliError>;
    fn create_key(&self, spec: &KeySpec) -> Result<NewKey, CliError>;
    fn revoke_key(&self, id: uuid::Uuid) -> Result<ApiKey, CliError>;
    fn roles(&self) -> Result<Vec<Role>, CliError>;
    fn create_role(&self, name: &str, description: &str) -> Result<Role, CliError>;
    fn grant(&self, role: &str, grant: &Grant) -> Result<Role, CliError>;
    /// Audit entries, newest first, older than `before`.
    fn audit(&self, before: Option<uuid::Uuid>, limit: usize) -> Result<Vec<AuditEntry>, CliError>;
    /// Whether something may run this store's queued jobs while the command waits: a
    /// server (its workers), or, on a shared store, servers elsewhere. An embedded
    /// store opened by the command itself has no workers.
    fn jobs_run(&self) -> bool;
    fn workflows(&self) -> Result<Vec<WorkflowView>, CliError>;
    fn workflow(&self, name: &str, version: Option<u32>) -> Result<WorkflowView, CliError>;
    /// Creates a workflow from its definition, or (with `update`) replaces the
    /// definition of the inactive workflow it names.
    fn workflow_save(&self, definition: &[u8], update: bool) -> Result<WorkflowView, CliError>;
    fn workflow_set_active(&self, name: &str, active: bool) -> Result<WorkflowView, CliError>;
    fn workflow_run(&self, name: &str, record: uuid::Uuid) -> Result<SystemJob, CliError>;
    fn workflow_log(&self, job: uuid::Uuid) -> Result<Vec<LogEntry>, CliError>;
    fn workflow_delete(&self, name: &str) -> Result<WorkflowView, CliError>;
}

/// The name a workflow definition gives itself (to say which workflow a file updates).
fn definition_name(definition: &[u8]) -> Result<String, CliError> {
    plughost::workflow::definition_name(definition)
        .ok_or_else(|| CliError::new("invalid_workflow", "the definition is not a JSON object with a \"name\""))
}

/// Works on the store in this process, through the library's admin layer (built
/// on first use: reading the store needs no plug-in runtime).
pub(crate) struct Local {
    store: Arc<Store>,
    data_dir: std::path::PathBuf,
    config: Config,
    admin: OnceLock<Admin>,
}

impl Local {
    pub(crate) fn new(store: Arc<Store>, data_dir: &Path, config: Config) -> Local {
        Local { store, data_dir: data_dir.to_owned(), config, admin: OnceLock::new() }
    }

    /// Runs an administrative action as the host itself (whoever can open the store
    /// owns it), recorded in the audit log like the server's.
    fn audited<T>(
        &self,
        action: &str,
        target: &str,
        f: impl FnOnce(&Admin) -> Result<T, plughost::admin::AdminError>,
    ) -> Result<T, CliError> {
        let mut who = Principal::system();
        who.name = format!("SYSTEM (local CLI as {})", std::env::var("USER").unwrap_or_else(|_| "?".into()));
        Ok(self.admin()?.audited(&who, action, target, f)?)
    }

    fn admin(&self) -> Result<&Admin, CliError> {
        if let Some(a) = self.admin.get() {
            return Ok(a);
        }
        let runtime = Arc::new(super::cli_runtime(&self.config, &self.data_dir, Some(self.store.clone()))?);
        let committer = Committer::start(self.store.clone(), self.config.group_commit_max_batch);
        let pipeline = Pipeline::new(self.store.clone(), runtime, committer.clone(), self.config.limits)?;
        let queue = JobQueue::new(self.store.clone(), committer);
        let admin = Admin::new(pipeline, queue)?;
        Ok(self.admin.get_or_init(|| admin))
    }
}

impl Backend for Local {
    fn register(
        &self,
        bytes: &[u8],
        name: &str,
        description: Option<String>,
        steps: Vec<StepSpec>,
    ) -> Result<Registration, CliError> {
        self.audited("register", name, |a| a.register(bytes, name, description, steps))
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>, CliError> {
        Ok(self.store.plugins()?)
    }

    fn plugin(&self, name: &str) -> Result<PluginDetails, CliError> {
        Ok(self.admin()?.plugin(name)?)
    }

    fn steps(&self) -> Result<Vec<StepRecord>, CliError> {
        Ok(self.store.steps()?)
    }

    fn step(&self, key: &str) -> Result<StepRecord, CliError> {
        Ok(self.store.resolve_step(key)?)
    }

    fn add_step(&self, spec: StepSpec) -> Result<StepRecord, CliError> {
        let target = format!("{} {} {}", spec.plugin, spec.message, spec.entity.as_deref().unwrap_or("*"));
        self.audited("steps.add", &target, |a| a.add_step(spec))
    }

    fn remove_step(&self, key: &str) -> Result<StepRecord, CliError> {
        self.audited("steps.remove", key, |a| a.remove_step(key))
    }

    fn set_step_enabled(&self, key: &str, enabled: bool) -> Result<StepRecord, CliError> {
        let action = if enabled { "steps.enable" } else { "steps.disable" };
        self.audited(action, key, |a| a.set_step_enabled(key, enabled))
    }

    fn profile_step(&self, key: &str, runs: u32) -> Result<StepProfile, CliError> {
        self.audited("steps.profile", key, |a| a.profile_step(key, runs))
    }

    fn runs(&self, step: Option<&str>, limit: usize) -> Result<Vec<RunSummary>, CliError> {
        let step = step.map(|k| self.store.resolve_step(k)).transpose()?;
        Ok(self.store.runs(step.map(|s| s.id), None, limit)?)
    }

    fn run(&self, id: uuid::Uuid) -> Result<RecordedRun, CliError> {
        Ok(self.store.run(id)?)
    }

    fn delete_run(&self, id: uuid::Uuid) -> Result<RunSummary, CliError> {
        self.audited("runs.delete", &id.to_string(), |a| a.delete_run(id))
    }

    fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<UnregisteredPlugin, CliError> {
        self.audited("unregister.plugin", name, |a| a.unregister_plugin(name, with_steps))
    }

    fn unregister_assembly(&self, key: &str) -> Result<AssemblyRecord, CliError> {
        self.audited("unregister.assembly", key, |a| a.unregister_assembly(key))
    }

    fn definitions(&self) -> Result<Vec<EntityDefinition>, CliError> {
        Ok(self.store.definitions()?)
    }

    fn define_entity(&self, def: EntityDefinition) -> Result<EntityDefinition, CliError> {
        let name = def.name.clone();
        self.audited("entities.define", &name, |a| a.define_entity(&def))
    }

    fn execute(&self, request: Request) -> Result<Response, CliError> {
        Ok(self.admin()?.execute(request, &Caller::default())?)
    }

    fn bulk_delete(&self, spec: BulkDelete) -> Result<SystemJob, CliError> {
        let target = spec.query.entity_name.clone();
        self.audited("bulk.delete", &target, |a| a.bulk_delete(spec, SYSTEM_USER))
    }

    fn bulk_import(&self, query: &ImportQuery, file: &[u8]) -> Result<SystemJob, CliError> {
        self.audited("bulk.import", &query.entity, |a| {
            a.bulk_import(&query.entity, query.format.as_deref(), file, query.name.clone(), SYSTEM_USER)
        })
    }

    fn bulk_mail(&self, spec: plughost::mail::BulkMail) -> Result<SystemJob, CliError> {
        let target = spec.query.entity_name.clone();
        self.audited("mail.bulk", &target, |a| a.bulk_mail(spec, SYSTEM_USER))
    }

    fn distribute(&self, activity: uuid::Uuid, name: Option<String>) -> Result<SystemJob, CliError> {
        self.audited("campaigns.distribute", &activity.to_string(), |a| {
            a.distribute_campaign_activity(activity, name, SYSTEM_USER)
        })
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Vec<SystemJob>, CliError> {
        // As the server does it (a plug-in stands for its steps), as SYSTEM.
        let query = self.admin()?.job_query_of(&plughost::security::Principal::system(), filter)?;
        Ok(self.store.list_jobs(&query)?)
    }

    fn manage_job(&self, id: uuid::Uuid, action: JobAction) -> Result<Option<SystemJob>, CliError> {
        let name = format!("jobs.{}", action.name());
        self.audited(&name, &id.to_string(), |a| a.manage_job(id, action))
    }

    fn create_job(&self, spec: NewJob) -> Result<SystemJob, CliError> {
        let step = spec.step.clone();
        self.audited("jobs.create", &step, |a| a.create_job(spec, SYSTEM_USER))
    }

    /// Without a server, pausing or resuming sets how the next `plughost serve` starts.
    fn service(&self, action: Option<ServiceAction>) -> Result<ServiceStatus, CliError> {
        match action {
            None => Ok(self.admin()?.service(None)?),
            Some(a) => {
                let name = if a == ServiceAction::Pause { "service.pause" } else { "service.resume" };
                self.audited(name, "asynchronous service", |admin| admin.service(Some(a)))
            }
        }
    }

    /// No server runs for this data directory, so no worker serves it.
    fn remote_workers(&self) -> Result<Vec<WorkerInfo>, CliError> {
        Ok(Vec::new())
    }

    fn whoami(&self) -> Result<Principal, CliError> {
        Ok(Principal::system())
    }

    fn users(&self) -> Result<Vec<User>, CliError> {
        Ok(self.store.users()?)
    }

    fn create_user(&self, name: &str, roles: &[String]) -> Result<User, CliError> {
        self.audited("users.create", name, |a| a.create_user(name, roles))
    }

    fn user_action(&self, name: &str, action: &str, roles: RolesBody) -> Result<User, CliError> {
        match action {
            "disable" => self.audited("users.disable", name, |a| a.set_user_disabled(name, true)),
            "enable" => self.audited("users.enable", name, |a| a.set_user_disabled(name, false)),
            _ => self.audited("users.roles", name, |a| a.change_user_roles(name, &roles.add, &roles.remove)),
        }
    }

    fn keys(&self, user: Option<&str>) -> Result<Vec<ApiKey>, CliError> {
        Ok(self.store.keys(user)?)
    }

    fn create_key(&self, spec: &KeySpec) -> Result<NewKey, CliError> {
        self.audited("keys.create", &spec.user, |a| a.create_key(spec))
    }

    fn revoke_key(&self, id: uuid::Uuid) -> Result<ApiKey, CliError> {
        self.audited("keys.revoke", &id.to_string(), |a| a.revoke_key(id))
    }

    fn roles(&self) -> Result<Vec<Role>, CliError> {
        Ok(self.store.roles()?)
    }

    fn create_role(&self, name: &str, description: &str) -> Result<Role, CliError> {
        self.audited("roles.create", name, |a| a.create_role(name, description))
    }

    fn grant(&self, role: &str, grant: &Grant) -> Result<Role, CliError> {
        self.audited("roles.grant", role, |a| a.grant(role, grant))
    }

    fn jobs_run(&self) -> bool {
        self.store.is_shared()
    }

    fn workflows(&self) -> Result<Vec<WorkflowView>, CliError> {
        Ok(self.admin()?.workflows()?)
    }

    fn workflow(&self, name: &str, version: Option<u32>) -> Result<WorkflowView, CliError> {
        Ok(self.admin()?.workflow(name, version)?)
    }

    fn workflow_save(&self, definition: &[u8], update: bool) -> Result<WorkflowView, CliError> {
        let name = definition_name(definition)?;
        match update {
            false => self.audited("workflows.create", &name, |a| a.workflow_create(definition, SYSTEM_USER)),
            true => self.audited("workflows.update", &name, |a| a.workflow_update(&name, definition)),
        }
    }

    fn workflow_set_active(&self, name: &str, active: bool) -> Result<WorkflowView, CliError> {
        let action = if active { "workflows.activate" } else { "workflows.deactivate" };
        self.audited(action, name, |a| a.workflow_set_active(name, active))
    }

    fn workflow_run(&self, name: &str, record: uuid::Uuid) -> Result<SystemJob, CliError> {
        self.audited("workflows.run", name, |a| a.workflow_run(name, record, &Principal::system()))
    }

    fn workflow_log(&self, job: uuid::Uuid) -> Result<Vec<LogEntry>, CliError> {
        Ok(self.admin()?.workflow_log(&Principal::system(), job)?)
    }

    fn workflow_delete(&self, name: &str) -> Result<WorkflowView, CliError> {
        self.audited("workflows.delete", name, |a| a.workflow_delete(name))
    }

    fn audit(&self, before: Option<uuid::Uuid>, limit: usize) -> Result<Vec<AuditEntry>, CliError> {
        Ok(self.store.audit_entries(before, limit)?)
    }
}

/// Talks to a running server.
pub(crate) struct Remote {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Remote {
    pub(crate) fn new(url: &str, token: Option<String>, tls: ureq::tls::TlsConfig) -> Remote {
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Remote { url: url.trim_end_matches('/').to_owned(), token, agent }
    }

    /// Whether a server answers at this address.
    pub(crate) fn alive(&self) -> bool {
        self.agent
            .get(format!("{}/healthz", self.url))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()
            .is_ok_and(|r| r.status().is_success())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, CliError> {
        let mut resp = result
            .map_err(|e| CliError::new("unreachable", format!("cannot reach the server at {}: {e}", self.url)))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| CliError::new("bad_response", e.to_string()))?;
        if status.is_success() {
            let body = if body.is_empty() { "null" } else { &body };
            serde_json::from_str(body)
                .map_err(|e| CliError::new("bad_response", format!("the server's answer is not understood: {e}")))
        } else {
            match serde_json::from_str::<ErrorBody>(&body) {
                Ok(e) => Err(CliError::new(e.error.code, e.error.message)),
                Err(_) => Err(CliError::new("http", format!("the server answered {status}: {body}"))),
            }
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.answer(self.auth(self.agent.get(self.url(path))).call())
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, CliError> {
        self.answer(self.auth(self.agent.post(self.url(path))).send_json(body))
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.answer(self.auth(self.agent.delete(self.url(path))).call())
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Backend for Remote {
    fn register(
        &self,
        bytes: &[u8],
        name: &str,
        description: Option<String>,
        steps: Vec<StepSpec>,
    ) -> Result<Registration, CliError> {
        let mut req = self.auth(self.agent.post(self.url("/assemblies"))).query("name", name);
        if let Some(d) = &description {
            req = req.query("description", d);
        }
        if !steps.is_empty() {
            req = req.query("steps", serde_json::to_string(&steps).expect("steps serialize"));
        }
        self.answer(req.header("Content-Type", "application/wasm").send(bytes))
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>, CliError> {
        self.get("/plugins")
    }

    fn plugin(&self, name: &str) -> Result<PluginDetails, CliError> {
        self.get(&format!("/plugins/{}", enc(name)))
    }

    fn steps(&self) -> Result<Vec<StepRecord>, CliError> {
        self.get("/steps")
    }

    fn step(&self, key: &str) -> Result<StepRecord, CliError> {
        self.get(&format!("/steps/{}", enc(key)))
    }

    fn add_step(&self, spec: StepSpec) -> Result<StepRecord, CliError> {
        self.post("/steps", &spec)
    }

    fn remove_step(&self, key: &str) -> Result<StepRecord, CliError> {
        self.delete(&format!("/steps/{}", enc(key)))
    }

    fn set_step_enabled(&self, key: &str, enabled: bool) -> Result<StepRecord, CliError> {
        let action = if enabled { "enable" } else { "disable" };
        self.answer(self.auth(self.agent.post(self.url(&format!("/steps/{}/{action}", enc(key))))).send_empty())
    }

    fn profile_step(&self, key: &str, runs: u32) -> Result<StepProfile, CliError> {
        self.post(&format!("/steps/{}/profile", enc(key)), &serde_json::json!({ "runs": runs }))
    }

    fn runs(&self, step: Option<&str>, limit: usize) -> Result<Vec<RunSummary>, CliError> {
        let step = step.map(|s| format!("&step={}", enc(s))).unwrap_or_default();
        self.get(&format!("/runs?limit={limit}{step}"))
    }

    fn run(&self, id: uuid::Uuid) -> Result<RecordedRun, CliError> {
        self.get(&format!("/runs/{id}"))
    }

    fn delete_run(&self, id: uuid::Uuid) -> Result<RunSummary, CliError> {
        self.delete(&format!("/runs/{id}"))
    }

    fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<UnregisteredPlugin, CliError> {
        self.delete(&format!("/plugins/{}?with_steps={with_steps}", enc(name)))
    }

    fn unregister_assembly(&self, key: &str) -> Result<AssemblyRecord, CliError> {
        self.delete(&format!("/assemblies/{}", enc(key)))
    }

    fn definitions(&self) -> Result<Vec<EntityDefinition>, CliError> {
        self.get("/metadata/entities")
    }

    fn define_entity(&self, def: EntityDefinition) -> Result<EntityDefinition, CliError> {
        let body = DefineBody { attributes: def.attributes };
        self.answer(
            self.auth(self.agent.put(self.url(&format!("/metadata/entities/{}", enc(&def.name))))).send_json(&body),
        )
    }

    fn execute(&self, request: Request) -> Result<Response, CliError> {
        match request {
            Request::Create { record } => {
                let mut path = format!("/entities/{}", enc(&record.logical_name));
                if let Some(id) = record.id {
                    path.push_str(&format!("?id={id}"));
                }
                let id: IdBody = self.post(&path, &record.attributes)?;
                Ok(Response::Created(id.id))
            }
            Request::Update { record } => {
                let id = record.id.ok_or_else(|| CliError::new("invalid", "an update needs the record's id"))?;
                let path = self.url(&format!("/entities/{}/{id}", enc(&record.logical_name)));
                let _: IdBody = self.answer(self.auth(self.agent.patch(path)).send_json(&record.attributes))?;
                Ok(Response::Updated)
            }
            Request::Delete { target } => {
                let _: Option<()> = self.delete(&format!("/entities/{}/{}", enc(&target.logical_name), target.id))?;
                Ok(Response::Deleted)
            }
            Request::Retrieve { target, columns } => {
                let mut path = format!("/entities/{}/{}", enc(&target.logical_name), target.id);
                if !columns.is_empty() {
                    path.push_str(&format!("?columns={}", enc(&columns.join(","))));
                }
                let e: Entity = self.get(&path)?;
                Ok(Response::Retrieved(e))
            }
            Request::RetrieveMultiple { query } => {
                let c: EntityCollection = self.post("/query", &query)?;
                Ok(Response::Collection(c))
            }
            Request::Custom { message, target, parameters } => {
                let m: MessageBody =
                    self.post(&format!("/messages/{}", enc(&message)), &MessageBody { target, parameters })?;
                Ok(Response::Custom(m.parameters))
            }
        }
    }

    fn bulk_delete(&self, spec: BulkDelete) -> Result<SystemJob, CliError> {
        self.post("/bulk/delete", &spec)
    }

    fn bulk_import(&self, query: &ImportQuery, file: &[u8]) -> Result<SystemJob, CliError> {
        let mut req = self.auth(self.agent.post(self.url("/bulk/import"))).query("entity", &query.entity);
        for (key, value) in [("format", &query.format), ("name", &query.name)] {
            if let Some(v) = value {
                req = req.query(key, v);
            }
        }
        self.answer(req.header("Content-Type", "application/octet-stream").send(file))
    }

    fn bulk_mail(&self, spec: plughost::mail::BulkMail) -> Result<SystemJob, CliError> {
        self.post("/mail/bulk", &spec)
    }

    fn distribute(&self, activity: uuid::Uuid, name: Option<String>) -> Result<SystemJob, CliError> {
        self.post(&format!("/campaigns/activities/{activity}/distribute"), &serde_json::json!({ "name": name }))
    }

    fn jobs(&self, filter: &JobFilter) -> Result<Vec<SystemJob>, CliError> {
        let query = serde_json::to_value(filter).map_err(|e| CliError::new("invalid", e.to_string()))?;
        let mut req = self.auth(self.agent.get(self.url("/jobs")));
        for (key, value) in query.as_object().into_iter().flatten().filter(|(_, v)| !v.is_null()) {
            req = req.query(key, value.as_str().map_or_else(|| value.to_string(), str::to_owned));
        }
        self.answer(req.call())
    }

    fn manage_job(&self, id: uuid::Uuid, action: JobAction) -> Result<Option<SystemJob>, CliError> {
        match action {
            JobAction::Delete => {
                let _: Option<()> = self.delete(&format!("/jobs/{id}"))?;
                Ok(None)
            }
            JobAction::Postpone(until) => {
                self.post(&format!("/jobs/{id}/postpone"), &PostponeBody { until: until.into() })
            }
            other => {
                self.answer(self.auth(self.agent.post(self.url(&format!("/jobs/{id}/{}", other.name())))).send_empty())
            }
        }
    }

    fn create_job(&self, spec: NewJob) -> Result<SystemJob, CliError> {
        self.post("/jobs", &spec)
    }

    fn service(&self, action: Option<ServiceAction>) -> Result<ServiceStatus, CliError> {
        let name = match action {
            None => return self.get("/service"),
            Some(ServiceAction::Pause) => "pause",
            Some(ServiceAction::Resume) => "resume",
        };
        self.answer(self.auth(self.agent.post(self.url(&format!("/service/{name}")))).send_empty())
    }

    fn remote_workers(&self) -> Result<Vec<WorkerInfo>, CliError> {
        self.get("/workers")
    }

    fn whoami(&self) -> Result<Principal, CliError> {
        self.get("/whoami")
    }

    fn users(&self) -> Result<Vec<User>, CliError> {
        self.get("/users")
    }

    fn create_user(&self, name: &str, roles: &[String]) -> Result<User, CliError> {
        self.post("/users", &NewUserBody { name: name.to_owned(), roles: roles.to_vec() })
    }

    fn user_action(&self, name: &str, action: &str, roles: RolesBody) -> Result<User, CliError> {
        self.post(&format!("/users/{}/{action}", enc(name)), &roles)
    }

    fn keys(&self, user: Option<&str>) -> Result<Vec<ApiKey>, CliError> {
        match user {
            Some(u) => self.get(&format!("/keys?user={}", enc(u))),
            None => self.get("/keys"),
        }
    }

    fn create_key(&self, spec: &KeySpec) -> Result<NewKey, CliError> {
        self.post("/keys", spec)
    }

    fn revoke_key(&self, id: uuid::Uuid) -> Result<ApiKey, CliError> {
        self.answer(self.auth(self.agent.post(self.url(&format!("/keys/{id}/revoke")))).send_empty())
    }

    fn roles(&self) -> Result<Vec<Role>, CliError> {
        self.get("/roles")
    }

    fn create_role(&self, name: &str, description: &str) -> Result<Role, CliError> {
        self.post("/roles", &NewRoleBody { name: name.to_owned(), description: description.to_owned() })
    }

    fn grant(&self, role: &str, grant: &Grant) -> Result<Role, CliError> {
        self.post(&format!("/roles/{}/grant", enc(role)), grant)
    }

    fn audit(&self, before: Option<uuid::Uuid>, limit: usize) -> Result<Vec<AuditEntry>, CliError> {
        match before {
            Some(b) => self.get(&format!("/audit?limit={limit}&before={b}")),
            None => self.get(&format!("/audit?limit={limit}")),
        }
    }

    fn jobs_run(&self) -> bool {
        true
    }

    fn workflows(&self) -> Result<Vec<WorkflowView>, CliError> {
        self.get("/workflows")
    }

    fn workflow(&self, name: &str, version: Option<u32>) -> Result<WorkflowView, CliError> {
        match version {
            Some(v) => self.get(&format!("/workflows/{}?version={v}", enc(name))),
            None => self.get(&format!("/workflows/{}", enc(name))),
        }
    }

    fn workflow_save(&self, definition: &[u8], update: bool) -> Result<WorkflowView, CliError> {
        let name = definition_name(definition)?;
        let req = match update {
            false => self.agent.post(self.url("/workflows")),
            true => self.agent.put(self.url(&format!("/workflows/{}", enc(&name)))),
        };
        self.answer(self.auth(req).header("content-type", "application/json").send(definition))
    }

    fn workflow_set_active(&self, name: &str, active: bool) -> Result<WorkflowView, CliError> {
        let action = if active { "activate" } else { "deactivate" };
        self.post(&format!("/workflows/{}/{action}", enc(name)), &serde_json::json!({}))
    }

    fn workflow_run(&self, name: &str, record: uuid::Uuid) -> Result<SystemJob, CliError> {
        self.post(&format!("/workflows/{}/run", enc(name)), &serde_json::json!({ "record": record }))
    }

    fn workflow_log(&self, job: uuid::Uuid) -> Result<Vec<LogEntry>, CliError> {
        self.get(&format!("/jobs/{job}/log"))
    }

    fn workflow_delete(&self, name: &str) -> Result<WorkflowView, CliError> {
        self.delete(&format!("/workflows/{}", enc(name)))
    }
}

/// Chooses the backend: `--server` if given, else a server this data directory
/// says is running, else the store itself.
pub(crate) fn connect(
    server: Option<&str>,
    token: Option<String>,
    data_dir: &Path,
    config: Config,
) -> Result<Box<dyn Backend>, CliError> {
    let token = token
        .or_else(|| std::fs::read_to_string(plughost::config::token_path(data_dir)).ok().map(|t| t.trim().to_owned()));
    let tls =
        plughost::server::tls_client_config(config.tls.ca.as_deref()).map_err(|m| CliError::new("bad_config", m))?;
    if let Some(url) = server {
        return Ok(Box::new(Remote::new(url, token, tls)));
    }
    if let Some(info) = ServerInfo::read(data_dir) {
        let remote = Remote::new(&info.url, token, tls);
        if remote.alive() {
            return Ok(Box::new(remote));
        }
    }
    match Store::open_at(&config.store_location(data_dir)) {
        Ok(store) => Ok(Box::new(Local::new(Arc::new(store), data_dir, config))),
        Err(StoreError::Locked(path)) => Err(CliError {
            code: "store_locked".into(),
            message: format!(
                "the store {} is in use by another process and no server answers for it: if `plughost serve` runs elsewhere, pass --server URL",
                path.display()
            ),
            exit: super::exit::STORE_LOCKED,
        }),
        Err(e) => Err(e.into()),
    }
}
