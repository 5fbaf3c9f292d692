//! The administrative operations, written once: registration, unregistration (with
//! eviction of compiled code), steps, entity definitions, data requests, system
//! jobs, bulk jobs and the asynchronous service. The HTTP handlers and the CLI's
//! local backend call these and only translate between their transport and them;
//! remote workers, authentication and the dashboard will too.
//!
//! **Invariants:** every change to registrations reloads the pipeline's step index
//! before it returns, so the next request sees it; unregistering an assembly drops
//! its compiled code from memory and disk; every operation blocks (call it from a
//! thread that may block).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bulk::ImportFormat;
use crate::fleet::Fleet;
use crate::jobs::{JobQuery, JobStatus, SystemJob};
use crate::metadata::EntityDefinition;
use crate::pipeline::{BulkDelete, Caller, NewJob, Pipeline, PipelineError, Request, Response};
use crate::registry::{self, AssemblyRecord, PluginRecord, Registration, RegistryError, StepRecord, StepSpec};
use crate::runtime::Runtime;
use crate::store::{CommitError, JobAction, JobQueue, QueueCounts, Store, StoreError};
use crate::worker::{WorkerConfig, WorkerPool};

/// What went wrong in an administrative operation; each kind keeps its own code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's writer stopped (the process is shutting down).
    #[error("the store's writer has stopped")]
    Stopped,
    /// A request the operation cannot take, with its own code.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The operation needs something this process does not run.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// The caller lacks a privilege (`403 forbidden`, naming it).
    #[error("{0}")]
    Denied(String),
}

impl AdminError {
    /// The stable code of the API and the CLI.
    pub fn code(&self) -> &str {
        match self {
            AdminError::Pipeline(e) => e.code(),
            AdminError::Registry(e) => e.code(),
            AdminError::Store(e) => e.code(),
            AdminError::Stopped => "store_error",
            AdminError::Invalid { code, .. } | AdminError::Unavailable { code, .. } => code,
            AdminError::Denied(_) => "forbidden",
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> AdminError {
        AdminError::Invalid { code: "invalid", message: message.into() }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::Store(StoreError::NotFound(message.into()))
    }
}

impl From<CommitError> for AdminError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Refused(s) | CommitError::Store(s) => AdminError::Store(s),
            CommitError::Stopped => AdminError::Stopped,
            other => AdminError::Store(StoreError::Db(other.to_string())),
        }
    }
}

type Result<T, E = AdminError> = std::result::Result<T, E>;

/// A step set to record its runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    pub step: Uuid,
    pub name: String,
    /// Runs still to record (0: the step records none).
    pub runs_left: u32,
}

/// A plug-in with its assembly and steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginDetails {
    pub plugin: PluginRecord,
    pub assembly: Option<AssemblyRecord>,
    pub steps: Vec<StepRecord>,
}

/// What unregistering a plug-in removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnregisteredPlugin {
    pub plugin: PluginRecord,
    pub removed_steps: Vec<StepRecord>,
}

/// The asynchronous service's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Whether jobs are being worked: this process runs a worker pool, or a remote
    /// worker that is not lost serves it.
    pub running: bool,
    /// Paused (persisted: a restart keeps it paused until resumed).
    pub paused: bool,
    /// Worker threads of this process's pool.
    pub workers: usize,
    /// Remote worker processes (`plughost worker`) heard from within a lease.
    #[serde(default)]
    pub remote_workers: usize,
    /// The process doing the queue's housekeeping (due postponed jobs, expired leases):
    /// one at a time among those sharing the store.
    #[serde(default)]
    pub housekeeper: Option<crate::store::Housekeeper>,
    pub counts: QueueCounts,
}

/// What a user may do to the asynchronous service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Pause,
    Resume,
}

impl std::str::FromStr for ServiceAction {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pause" => Ok(ServiceAction::Pause),
            "resume" => Ok(ServiceAction::Resume),
            other => Err(format!("unknown service action '{other}': use pause or resume")),
        }
    }
}

/// The query of `GET /jobs` and of `plughost jobs list`: filters and paging as
/// text, every one optional; [`JobFilter::query`] checks them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Status name or number.
    pub status: Option<String>,
    /// Step id.
    pub step: Option<String>,
    /// Operation type name or code.
    #[serde(rename = "type")]
    pub operation_type: Option<String>,
    /// Queued by a step of this plug-in.
    pub plugin: Option<String>,
    /// Regarding a record of this entity.
    pub entity: Option<String>,
    /// Regarding this record (id).
    pub record: Option<String>,
    /// Names containing this text.
    pub name: Option<String>,
    pub token: Option<String>,
    /// Created at or after / before (RFC 3339 or UTC ms).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Ids starting with these hex digits.
    pub id_prefix: Option<String>,
    /// The last id of the previous page.
    pub after: Option<String>,
    /// `oldest` (default) or `newest` first.
    pub order: Option<String>,
    pub limit: Option<usize>,
}

impl JobFilter {
    /// The query, or which part of the filter is wrong.
    pub fn query(&self) -> Result<JobQuery> {
        let invalid = AdminError::invalid;
        let newest_first = match self.order.as_deref() {
            None | Some("oldest") => false,
            Some("newest") => true,
            Some(other) => return Err(invalid(format!("order '{other}': use oldest or newest"))),
        };
        let time = |name: &str, t: &Option<String>| {
            t.as_deref()
                .map(|t| crate::model::time_from_text(t).map_err(|m| invalid(format!("{name}: {m}"))))
                .transpose()
        };
        let guid = |t: &Option<String>| {
            t.as_deref().map(|t| crate::model::parse_guid(t).map_err(AdminError::invalid)).transpose()
        };
        let query = JobQuery {
            status: self.status.as_deref().map(str::parse::<JobStatus>).transpose().map_err(invalid)?,
            step: guid(&self.step)?,
            steps: None,
            operation_type: self
                .operation_type
                .as_deref()
                .map(str::parse::<crate::jobs::OperationType>)
                .transpose()
                .map_err(invalid)?,
            entity: self.entity.clone(),
            record: guid(&self.record)?,
            name: self.name.clone().filter(|n| !n.is_empty()),
            token: self.token.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            id_prefix: self.id_prefix.clone(),
            after: guid(&self.after)?,
            before: None,
            newest_first,
            limit: self.limit,
            owner: None,
        };
        query.page_size().map_err(invalid)?;
        query.id_range().map_err(invalid)?;
        Ok(query)
    }
}

/// The administrative operations of one host.
pub struct Admin {
    pipeline: Arc<Pipeline>,
    queue: JobQueue,
    /// The worker pool, when this process runs one.
    workers: Option<Arc<WorkerPool>>,
    /// Workers the pool runs (for status).
    worker_threads: usize,
    /// Remote workers (`plughost worker`) serving this server.
    fleet: Fleet,
    /// Whether the asynchronous service is paused: no worker, in-process or remote,
    /// leases while it is.
    paused: AtomicBool,
    /// The store's registry generation the step index was last loaded at (a shared
    /// store: see [`Admin::follow_store`]).
    registry_generation: std::sync::atomic::AtomicU64,
    /// The store's security generation last seen (a shared store, as the registry's).
    security_generation: std::sync::atomic::AtomicU64,
}

impl Admin {
    /// Reads whether the service was left paused.
    pub fn new(pipeline: Arc<Pipeline>, queue: JobQueue) -> Result<Admin> {
        let paused = AtomicBool::new(pipeline.store().service_paused()?);
        let registry_generation = pipeline.store().registry_generation()?.into();
        let fleet = Fleet::new(&WorkerConfig::default(), crate::runtime::Limits::default());
        let security_generation = pipeline.store().security_generation()?.into();
        Ok(Admin {
            pipeline,
            queue,
            workers: None,
            worker_threads: 0,
            fleet,
            paused,
            registry_generation,
            security_generation,
        })
    }

    /// Takes in what other processes on a shared store changed: reloads the step index
    /// when the registry changed, and pauses or resumes this process's workers as the
    /// service's stored state says. `plughost serve` calls it every second on a
    /// PostgreSQL store. Blocks.
    pub fn follow_store(&self) -> Result<()> {
        let generation = self.store().registry_generation()?;
        if self.registry_generation.swap(generation, Ordering::SeqCst) != generation {
            self.pipeline.reload_steps()?;
            tracing::info!(generation, "registry changed on the shared store: step index reloaded");
        }
        let security = self.store().security_generation()?;
        if self.security_generation.swap(security, Ordering::SeqCst) != security {
            // Another process changed users, keys or roles: no cached principal stays.
            self.pipeline.forget_principals();
        }
        let paused = self.store().service_paused()?;
        if self.paused.swap(paused, Ordering::SeqCst) != paused {
            if let Some(w) = &self.workers {
                w.set_paused(paused);
            }
            if !paused {
                self.queue.notify();
            }
            tracing::info!(paused, "the asynchronous service was paused or resumed on the shared store");
        }
        Ok(())
    }

    /// With the job policy remote workers get (lease, retries, retention).
    pub fn with_worker_config(mut self, config: &WorkerConfig, limits: crate::runtime::Limits) -> Admin {
        self.fleet = Fleet::new(config, limits);
        self
    }

    pub(crate) fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Whether the asynchronous service is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// With the worker pool this process runs.
    pub fn with_workers(mut self, workers: Arc<WorkerPool>, threads: usize) -> Admin {
        self.workers = Some(workers);
        self.worker_threads = threads;
        self
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    pub fn workers(&self) -> Option<&Arc<WorkerPool>> {
        self.workers.as_ref()
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        self.pipeline.store()
    }

    fn runtime(&self) -> &Arc<Runtime> {
        self.pipeline.runtime()
    }

    fn reloaded<T>(&self, value: T) -> Result<T> {
        self.pipeline.reload_steps()?;
        Ok(value)
    }

    // ---- registry ----

    /// Validates, compiles and stores a component, points plug-in `name` at it and
    /// adds `steps`, in one transaction; keeps the compiled code so the first event
    /// does not compile it.
    pub fn register(
        &self,
        bytes: &[u8],
        name: &str,
        description: Option<String>,
        steps: Vec<StepSpec>,
    ) -> Result<Registration> {
        let reg = registry::register(self.store(), self.runtime(), bytes, name, description, steps)?;
        self.reloaded(reg)
    }

    pub fn assemblies(&self) -> Result<Vec<AssemblyRecord>> {
        Ok(self.store().assemblies()?)
    }

    /// Removes an assembly no plug-in uses (by hash or a unique prefix) and its compiled code.
    pub fn unregister_assembly(&self, key: &str) -> Result<AssemblyRecord> {
        let record = self.store().resolve_assembly(key)?;
        let removed = self.store().unregister_assembly(&record.hash)?;
        self.runtime().evict(&removed.hash);
        Ok(removed)
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        Ok(self.store().plugins()?)
    }

    pub fn plugin(&self, name: &str) -> Result<PluginDetails> {
        let plugin = self
            .store()
            .plugin(name)?
            .ok_or_else(|| AdminError::not_found(format!("no plug-in named '{name}': see `plughost plugins list`")))?;
        let assembly = self.store().assembly(&plugin.assembly)?;
        let steps = self.store().steps()?.into_iter().filter(|s| s.plugin == name).collect();
        Ok(PluginDetails { plugin, assembly, steps })
    }

    /// Removes a plug-in (and, `with_steps`, its steps, failing their queued jobs).
    pub fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<UnregisteredPlugin> {
        let (plugin, removed_steps) = self.store().unregister_plugin(name, with_steps)?;
        self.reloaded(UnregisteredPlugin { plugin, removed_steps })
    }

    pub fn steps(&self) -> Result<Vec<StepRecord>> {
        Ok(self.store().steps()?)
    }

    /// A step by id, unique id prefix or name.
    pub fn step(&self, key: &str) -> Result<StepRecord> {
        Ok(self.store().resolve_step(key)?)
    }

    pub fn add_step(&self, spec: StepSpec) -> Result<StepRecord> {
        let run_as = crate::registry::resolve_run_as(self.store(), spec.run_as.as_deref())?;
        let record_runs = spec.record_runs;
        let mut record = spec.into_record(self.runtime().config().max_memory_bytes)?;
        record.run_as = run_as;
        self.store().add_step(&record, record_runs)?;
        self.reloaded(record)
    }

    /// Sets a step to record its next `runs` runs (0: stop recording).
    pub fn profile_step(&self, key: &str, runs: u32) -> Result<StepProfile> {
        let step = self.store().resolve_step(key)?;
        self.store().set_profile(step.id, runs)?;
        self.reloaded(StepProfile { step: step.id, name: step.name, runs_left: runs })
    }

    /// Steps set to record, with the runs each has left.
    pub fn profiles(&self) -> Result<Vec<StepProfile>> {
        let steps: std::collections::HashMap<Uuid, String> =
            self.store().steps()?.into_iter().map(|s| (s.id, s.name)).collect();
        let profiles = self.store().profiles()?.into_iter();
        Ok(profiles
            .map(|(step, runs_left)| StepProfile {
                step,
                name: steps.get(&step).cloned().unwrap_or_default(),
                runs_left,
            })
            .collect())
    }

    /// Recorded runs, newest first, of the step `step` names (or of every step).
    pub fn runs(&self, step: Option<&str>, before: Option<Uuid>, limit: usize) -> Result<Vec<crate::runs::RunSummary>> {
        let step = step.map(|k| self.store().resolve_step(k)).transpose()?;
        Ok(self.store().runs(step.map(|s| s.id), before, limit)?)
    }

    /// One recorded run, as `runs export` writes it.
    pub fn run(&self, id: Uuid) -> Result<crate::runs::RecordedRun> {
        Ok(self.store().run(id)?)
    }

    pub fn delete_run(&self, id: Uuid) -> Result<crate::runs::RunSummary> {
        Ok(self.store().delete_run(id)?)
    }

    /// Removes a step and fails its queued jobs in the same transaction.
    pub fn remove_step(&self, key: &str) -> Result<StepRecord> {
        let step = self.store().resolve_step(key)?;
        let removed = self.store().remove_step(step.id)?;
        self.reloaded(removed)
    }

    pub fn set_step_enabled(&self, key: &str, enabled: bool) -> Result<StepRecord> {
        let step = self.store().resolve_step(key)?;
        let step = self.store().set_step_enabled(step.id, enabled)?;
        self.reloaded(step)
    }

    // ---- metadata and data ----

    pub fn definitions(&self) -> Result<Vec<EntityDefinition>> {
        Ok(self.store().definitions()?)
    }

    pub fn define_entity(&self, def: &EntityDefinition) -> Result<EntityDefinition> {
        Ok(self.store().define_entity(def)?)
    }

    /// Runs a data request through the pipeline.
    pub fn execute(&self, request: Request, caller: &Caller) -> Result<Response> {
        Ok(self.pipeline.execute(request, caller)?)
    }

    // ---- system jobs ----

    pub fn jobs(&self, query: &JobQuery) -> Result<Vec<SystemJob>> {
        Ok(self.store().list_jobs(query)?)
    }

    pub fn job(&self, id: Uuid) -> Result<SystemJob> {
        self.store().job(id)?.ok_or_else(|| AdminError::not_found(format!("no system job {id}")))
    }

    /// A user's action on a job; `None` after a delete.
    pub fn manage_job(&self, id: Uuid, action: JobAction) -> Result<Option<SystemJob>> {
        Ok(self.queue.manage(id, action)?)
    }

    /// Creates a job for an asynchronous step directly: once, later, or on a recurrence.
    pub fn create_job(&self, spec: NewJob, by: Uuid) -> Result<SystemJob> {
        let job = self.pipeline.new_job(spec, by)?;
        Ok(self.queue.create(job)?)
    }

    pub fn bulk_delete(&self, spec: BulkDelete, by: Uuid) -> Result<SystemJob> {
        let job = self.pipeline.new_bulk_delete(spec, by)?;
        Ok(self.queue.create(job)?)
    }

    /// Queues an import of `file` (parsed whole first: a malformed file queues nothing).
    pub fn bulk_import(
        &self,
        entity: &str,
        format: Option<&str>,
        file: &[u8],
        name: Option<String>,
        by: Uuid,
    ) -> Result<SystemJob> {
        let format: ImportFormat = format.unwrap_or("csv").parse().map_err(AdminError::invalid)?;
        let (job, rows) = self.pipeline.new_import(entity, format, file, name, by)?;
        Ok(self.queue.create_with_rows(job, rows)?)
    }

    /// Queues a bulk mail (`SendBulkMail`): one Pending Send email per record the
    /// query selects, rendered from the template.
    pub fn bulk_mail(&self, spec: crate::mail::BulkMail, by: Uuid) -> Result<SystemJob> {
        let job = self.pipeline.new_bulk_mail(spec, by)?;
        Ok(self.queue.create(job)?)
    }

    /// Queues the distribution of a campaign activity (`DistributeCampaignActivity`).
    pub fn distribute_campaign_activity(&self, activity: Uuid, name: Option<String>, by: Uuid) -> Result<SystemJob> {
        let job = self.pipeline.new_distribution(activity, name, by)?;
        Ok(self.queue.create(job)?)
    }

    /// The asynchronous service's state, after `action` if given. Without a worker
    /// pool in this process, pausing or resuming sets how the next one starts.
    pub fn service(&self, action: Option<ServiceAction>) -> Result<ServiceStatus> {
        if let Some(action) = action {
            let paused = action == ServiceAction::Pause;
            self.store().set_service_paused(paused)?;
            self.paused.store(paused, Ordering::SeqCst);
            if let Some(w) = &self.workers {
                w.set_paused(paused);
            }
            if !paused {
                self.queue.notify();
            }
        }
        let remote_workers = self.fleet.list().iter().filter(|w| !w.lost).count();
        Ok(ServiceStatus {
            running: self.workers.is_some() || remote_workers > 0,
            remote_workers,
            paused: self.is_paused(),
            workers: self.worker_threads,
            housekeeper: self.store().housekeeper()?,
            counts: self.queue.counts()?,
        })
    }

    pub fn counts(&self) -> Result<QueueCounts> {
        Ok(self.queue.counts()?)
    }
}
