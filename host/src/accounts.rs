//! The administrative operations on identities, written once for the HTTP API and
//! the CLI: users, keys, roles, the audit log, who may see and act on which system
//! jobs, and `Admin::audited`, which records every administrative action.
//!
//! **Invariant:** every administrative action of the HTTP API and of the CLI goes
//! through [`Admin::audited`]: one entry per action, failures included.

use uuid::Uuid;

use crate::admin::{Admin, AdminError, JobFilter};
use crate::clock::now_ms;
use crate::jobs::SystemJob;
use crate::security::{
    self, ApiKey, AuditEntry, Capability, Denied, EntityPrivilege, NewKey, Principal, Role, SYSTEM_USER, User,
};
use crate::store::JobAction;

type Result<T, E = AdminError> = std::result::Result<T, E>;

impl From<Denied> for AdminError {
    fn from(d: Denied) -> Self {
        AdminError::Denied(d.0)
    }
}

/// What `keys create` asks for.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KeySpec {
    pub user: String,
    #[serde(default)]
    pub label: String,
    /// A duration (`30d`, `12h`, `90m`) or an RFC 3339 time; none: no expiry.
    #[serde(default)]
    pub expires: Option<String>,
}

/// What `roles grant` asks for.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    #[serde(default)]
    pub privileges: Vec<EntityPrivilege>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

impl Admin {
    /// Runs an administrative action of `who` and records it in the audit log with
    /// its outcome (a failure is recorded too). A failure to record is logged, never
    /// turned into the action's failure: the action happened.
    pub fn audited<T>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        f: impl FnOnce(&Admin) -> Result<T>,
    ) -> Result<T> {
        let out = f(self);
        let (outcome, message) = match &out {
            Ok(_) => ("ok".to_owned(), None),
            Err(e) => (e.code().to_owned(), Some(e.to_string())),
        };
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            at: now_ms(),
            user_id: who.user_id,
            user: who.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome,
            message,
        };
        if let Err(e) = self.store().audit(&entry) {
            tracing::error!(action, target, "the audit log could not record an action: {e}");
        }
        out
    }

    pub fn users(&self) -> Result<Vec<User>> {
        Ok(self.store().users()?)
    }

    pub fn create_user(&self, name: &str, roles: &[String]) -> Result<User> {
        let out = self.store().create_user(name, roles)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    pub fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<User> {
        let out = self.store().set_user_disabled(name, disabled)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    pub fn change_user_roles(&self, name: &str, add: &[String], remove: &[String]) -> Result<User> {
        let out = self.store().change_user_roles(name, add, remove)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    /// Creates a key; its secret is in the answer and nowhere else.
    pub fn create_key(&self, spec: &KeySpec) -> Result<NewKey> {
        let expires_on = spec
            .expires
            .as_deref()
            .map(|e| security::parse_expiry(e, now_ms()))
            .transpose()
            .map_err(AdminError::invalid)?;
        let secret = security::new_key_secret();
        let key = self.store().create_key(&spec.user, &spec.label, expires_on, security::key_hash(&secret))?;
        self.pipeline().forget_principals();
        Ok(NewKey { key, secret })
    }

    pub fn keys(&self, user: Option<&str>) -> Result<Vec<ApiKey>> {
        Ok(self.store().keys(user)?)
    }

    pub fn revoke_key(&self, id: Uuid) -> Result<ApiKey> {
        let out = self.store().revoke_key(id)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    pub fn roles(&self) -> Result<Vec<Role>> {
        Ok(self.store().roles()?)
    }

    pub fn create_role(&self, name: &str, description: &str) -> Result<Role> {
        let out = self.store().create_role(name, description)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    pub fn grant(&self, role: &str, grant: &Grant) -> Result<Role> {
        let out = self.store().grant(role, &grant.privileges, &grant.capabilities)?;
        self.pipeline().forget_principals();
        Ok(out)
    }

    pub fn audit_log(&self, before: Option<Uuid>, limit: Option<usize>) -> Result<Vec<AuditEntry>> {
        Ok(self.store().audit_entries(before, limit.unwrap_or(100))?)
    }

    /// The jobs `filter` selects that `who` may see: all with `manage_jobs`, else its own.
    pub fn jobs_of(&self, who: &Principal, filter: &JobFilter) -> Result<Vec<SystemJob>> {
        let query = self.job_query_of(who, filter)?;
        self.jobs(&query)
    }

    /// The query of `filter` for `who`: its own jobs only without `manage_jobs`; a
    /// plug-in named by the filter stands for its steps (one step: that step's index).
    pub fn job_query_of(&self, who: &Principal, filter: &JobFilter) -> Result<crate::jobs::JobQuery> {
        let mut query = filter.query()?;
        if !who.privileges.has(Capability::ManageJobs) {
            query.owner = Some(who.user_id);
        }
        if let Some(plugin) = filter.plugin.as_deref().filter(|p| !p.is_empty()) {
            let steps: Vec<Uuid> = self.plugin(plugin)?.steps.iter().map(|s| s.id).collect();
            match steps.as_slice() {
                [one] if query.step.is_none() => query.step = Some(*one),
                _ => query.steps = Some(steps),
            }
        }
        Ok(query)
    }

    /// A job `who` may see.
    pub fn job_of(&self, who: &Principal, id: Uuid) -> Result<SystemJob> {
        let job = self.job(id)?;
        may_see(who, &job)?;
        Ok(job)
    }

    /// `action` on every job `filter` selects, as a system job that works through
    /// them in batches (see [`crate::bulk::JobSelection`]). Needs `manage_jobs`.
    pub fn job_action_matching(
        &self,
        who: &Principal,
        filter: &JobFilter,
        action: JobAction,
        name: Option<String>,
    ) -> Result<SystemJob> {
        who.require(Capability::ManageJobs)?;
        let mut query = self.job_query_of(who, filter)?;
        query.after = None;
        query.limit = None;
        let job = crate::bulk::JobSelection { query, action }.job(name, who.user_id).map_err(AdminError::invalid)?;
        Ok(self.queue().create(job)?)
    }

    /// `action` on each of `ids` that `who` may act on, one at a time: each job's
    /// outcome (a job that does not allow it says why).
    pub fn job_action_each(
        &self,
        who: &Principal,
        ids: &[Uuid],
        action: JobAction,
    ) -> Result<Vec<(Uuid, std::result::Result<(), String>)>> {
        if ids.len() > crate::bulk::JOB_ACTION_BATCH {
            return Err(AdminError::invalid(format!(
                "{} jobs selected; act on at most {} at once, or on all matching jobs (a system job)",
                ids.len(),
                crate::bulk::JOB_ACTION_BATCH
            )));
        }
        Ok(ids
            .iter()
            .map(|id| (*id, self.manage_job_of(who, *id, action).map(|_| ()).map_err(|e| e.to_string())))
            .collect())
    }

    /// An action on a job `who` may act on.
    pub fn manage_job_of(&self, who: &Principal, id: Uuid, action: JobAction) -> Result<Option<SystemJob>> {
        may_see(who, &self.job(id)?)?;
        self.manage_job(id, action)
    }
}

/// Users see and act on the jobs they queued; `manage_jobs` sees every job.
pub(crate) fn may_see(who: &Principal, job: &SystemJob) -> Result<()> {
    let owner = job.context.initiating_user_id;
    if who.privileges.has(Capability::ManageJobs) || (owner == who.user_id && owner != SYSTEM_USER) {
        return Ok(());
    }
    Err(AdminError::Denied(format!(
        "user '{}' may see and act on its own system jobs only; job {} is another user's (the '{}' privilege reaches every job)",
        who.name,
        job.id,
        Capability::ManageJobs.name()
    )))
}
