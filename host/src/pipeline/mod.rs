//! The event execution pipeline: runs a data request through its steps —
//! PreValidation (10), PreOperation (20), the core operation or MainOperation (30),
//! PostOperation (40) — and queues a system job for each matching async step.
//!
//! A request runs against a read snapshot plus a private write buffer (the
//! overlay); plug-ins' calls back into the organization service re-enter the
//! pipeline one level deeper through the same overlay. When every step has
//! succeeded, the overlay and the new jobs go to the group-commit writer as one
//! change set, so a request's data change and its system jobs commit together or
//! not at all. A conflicting concurrent change re-runs the request.
//!
//! **Invariant:** nothing a failed request did is stored; no job is queued for a
//! change that did not commit.

mod jobs;
mod mail;
mod overlay;
mod read;
mod scope;
mod service;
mod source;
mod steps;
mod workflow;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use crate::jobs::SystemJob;
use crate::model::{Entity, EntityCollection, EntityReference, Parameters, Query};
use crate::runtime::{Failure, Limits, Runtime, ServiceError};
use crate::store::{ChangeSet, CommitError, Committer, Store, StoreError};

pub use self::jobs::{BulkDelete, JobRun, NewJob};
pub use self::mail::{MAIL_BATCH, OUTGOING_BATCH, OUTGOING_RUN_MS};
use self::scope::Scope;
pub use self::source::{Registered, Source, View};
use self::steps::{StepIndex, invoke_step};
pub use self::workflow::{TRIGGER_CHILD, TRIGGER_ON_DEMAND, workflow_job};

/// Deepest a chain of plug-in calls may go (Dataverse's limit).
pub const MAX_DEPTH: u32 = 8;
/// How often a request is re-run after a concurrent change to a record it read.
const MAX_ATTEMPTS: usize = 5;

/// A data request.
#[derive(Clone, Debug)]
pub enum Request {
    Create {
        record: Entity,
    },
    Update {
        record: Entity,
    },
    Delete {
        target: EntityReference,
    },
    Retrieve {
        target: EntityReference,
        columns: Vec<String>,
    },
    RetrieveMultiple {
        query: Query,
    },
    /// A custom message (custom API), optionally bound to a record.
    Custom {
        message: String,
        target: Option<EntityReference>,
        parameters: Parameters,
    },
}

impl Request {
    pub fn message(&self) -> &str {
        match self {
            Request::Create { .. } => "Create",
            Request::Update { .. } => "Update",
            Request::Delete { .. } => "Delete",
            Request::Retrieve { .. } => "Retrieve",
            Request::RetrieveMultiple { .. } => "RetrieveMultiple",
            Request::Custom { message, .. } => message,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Created(Uuid),
    Updated,
    Deleted,
    Retrieved(Entity),
    Collection(EntityCollection),
    Custom(Parameters),
}

/// Who makes a request: its user (the nil user is the host itself, SYSTEM).
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub user_id: Uuid,
    /// Joins this request to an existing correlation (a new one otherwise).
    pub correlation_id: Option<Uuid>,
    /// The caller's principal when the caller was authenticated already (saves a read).
    pub principal: Option<Arc<crate::security::Principal>>,
}

/// Whom a message runs for: the user who started the chain, and the user it runs
/// as now (different under a step's run-as).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub initiating: Uuid,
    pub user: Uuid,
}

impl Who {
    pub fn user(user: Uuid) -> Who {
        Who { initiating: user, user }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error("{step} failed: {failure}")]
    Plugin { step: String, step_id: Uuid, failure: Failure },
    #[error("{0}")]
    DepthExceeded(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnknownEntity(String),
    #[error("{0}")]
    UnknownMessage(String),
    #[error("the request kept conflicting with concurrent changes to {0}; try again")]
    Conflict(String),
    #[error("{0}")]
    WriteLimit(String),
    /// The user lacks a privilege (`403 forbidden`).
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PipelineError {
    /// A stable code for the API and the CLI.
    pub fn code(&self) -> &str {
        match self {
            PipelineError::Plugin { failure, .. } => failure.code.as_str(),
            PipelineError::DepthExceeded(_) => "infinite_loop",
            PipelineError::NotFound(_) => "not_found",
            PipelineError::AlreadyExists(_) => "already_exists",
            PipelineError::Invalid(_) => "invalid",
            PipelineError::UnknownEntity(_) => "unknown_entity",
            PipelineError::UnknownMessage(_) => "unknown_message",
            PipelineError::Conflict(_) => "conflict",
            PipelineError::WriteLimit(_) => "write_limit",
            PipelineError::Denied(_) => "forbidden",
            PipelineError::Store(e) => e.code(),
        }
    }

    fn to_service_error(&self) -> ServiceError {
        let m = self.to_string();
        match self {
            PipelineError::Plugin { .. } => ServiceError::Rejected(m),
            PipelineError::DepthExceeded(_) => ServiceError::DepthExceeded(m),
            PipelineError::NotFound(_) | PipelineError::UnknownEntity(_) | PipelineError::UnknownMessage(_) => {
                ServiceError::NotFound(m)
            }
            PipelineError::AlreadyExists(_) => ServiceError::AlreadyExists(m),
            PipelineError::Invalid(_) => ServiceError::Invalid(m),
            PipelineError::WriteLimit(_) => ServiceError::Limit(m),
            PipelineError::Denied(_) => ServiceError::Denied(m),
            PipelineError::Conflict(_) | PipelineError::Store(_) => ServiceError::Failed(m),
        }
    }
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

pub struct Pipeline {
    source: Arc<dyn Source>,
    /// The store and its writer; `None` on a remote worker, whose jobs' effects go
    /// back to the server with their completions.
    local: Option<Local>,
    runtime: Arc<Runtime>,
    defaults: Limits,
    steps: RwLock<Arc<StepIndex>>,
    /// Counts registry reloads: remote workers reload theirs when it changes.
    generation: AtomicU64,
    /// Principals read lately, so a job run does not read its user's roles each time.
    principals: PrincipalCache,
    /// Moves whenever users, keys or roles change (here, or on a shared store as
    /// `Admin::follow_store` sees): every cache of principals follows it.
    security_epoch: AtomicU64,
}

/// How long a principal read for a job run or a nested call is reused. Changes made
/// through this process drop the cache at once; others (another server on a shared
/// store) reach running jobs within this.
pub const PRINCIPAL_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most principals kept (past it the cache starts over).
const MAX_CACHED_PRINCIPALS: usize = 10_000;

#[derive(Default)]
struct PrincipalCache(
    std::sync::Mutex<std::collections::HashMap<Uuid, (std::time::Instant, Arc<crate::security::Principal>)>>,
);

struct Local {
    store: Arc<Store>,
    committer: Committer,
}

impl Pipeline {
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        committer: Committer,
        defaults: Limits,
    ) -> Result<Arc<Pipeline>> {
        let source: Arc<dyn Source> = store.clone();
        Self::with_source(source, Some(Local { store, committer }), runtime, defaults)
    }

    /// A pipeline that reads through `source` and commits nothing itself: a remote
    /// worker's, whose job runs return their effects for the server to commit.
    pub fn remote(source: Arc<dyn Source>, runtime: Arc<Runtime>, defaults: Limits) -> Result<Arc<Pipeline>> {
        Self::with_source(source, None, runtime, defaults)
    }

    fn with_source(
        source: Arc<dyn Source>,
        local: Option<Local>,
        runtime: Arc<Runtime>,
        defaults: Limits,
    ) -> Result<Arc<Pipeline>> {
        let steps = RwLock::new(Arc::new(StepIndex::load(source.as_ref())?));
        Ok(Arc::new(Pipeline {
            source,
            local,
            runtime,
            defaults,
            steps,
            generation: AtomicU64::new(0),
            principals: PrincipalCache::default(),
            security_epoch: AtomicU64::new(0),
        }))
    }

    fn local(&self) -> &Local {
        // Only `Pipeline::remote` leaves it out, and a remote worker calls nothing that needs it.
        self.local.as_ref().expect("the server's and the CLI's pipelines have a store")
    }

    /// The store (not on a remote worker's pipeline).
    pub fn store(&self) -> &Arc<Store> {
        &self.local().store
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// How often the registry was reloaded since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The store's writer (not on a remote worker's pipeline).
    pub fn committer(&self) -> &Committer {
        &self.local().committer
    }

    /// An active workflow's frozen version, by name.
    pub fn active_workflow(&self, name: &str) -> Option<crate::workflow::ActiveWorkflow> {
        self.steps.read().unwrap_or_else(|p| p.into_inner()).workflow_names.get(name).cloned()
    }

    /// Re-reads the registry; call after plug-ins or steps change.
    pub fn reload_steps(&self) -> Result<()> {
        let index = Arc::new(StepIndex::load(self.source.as_ref())?);
        *self.steps.write().unwrap_or_else(|p| p.into_inner()) = index;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Forgets the principals read lately (after a change of users, keys or roles),
    /// here and in every cache that follows [`Pipeline::security_epoch`].
    pub fn forget_principals(&self) {
        self.principals.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.security_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes whenever cached principals must be read again.
    pub fn security_epoch(&self) -> u64 {
        self.security_epoch.load(Ordering::SeqCst)
    }

    /// A principal read within [`PRINCIPAL_TTL`].
    fn cached_principal(&self, user: Uuid) -> Option<Arc<crate::security::Principal>> {
        let cache = self.principals.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&user).filter(|(at, _)| at.elapsed() < PRINCIPAL_TTL).map(|(_, p)| p.clone())
    }

    fn remember_principal(&self, p: Arc<crate::security::Principal>) {
        let mut cache = self.principals.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_PRINCIPALS {
            cache.clear();
        }
        cache.insert(p.user_id, (std::time::Instant::now(), p));
    }

    /// The assembly each plug-in runs now.
    pub fn plugin_assemblies(&self) -> Vec<crate::model::AssemblyHash> {
        self.steps.read().unwrap_or_else(|p| p.into_inner()).assemblies.values().copied().collect()
    }

    /// Runs `request` through the pipeline and commits its effects durably.
    /// Blocks: call from a thread that may block (plug-ins run on it).
    pub fn execute(self: &Arc<Self>, request: Request, caller: &Caller) -> Result<Response> {
        let correlation_id = caller.correlation_id.unwrap_or_else(Uuid::new_v4);
        let mut conflict = String::new();
        let Some(local) = &self.local else {
            return Err(PipelineError::Invalid("a remote worker's pipeline runs jobs, not requests".into()));
        };
        for _ in 0..MAX_ATTEMPTS {
            let scope = Scope::new(
                self.clone(),
                self.source.view(None)?,
                correlation_id,
                Who::user(caller.user_id),
                self.defaults.write_bytes,
                Arc::default(),
            );
            if let Some(p) = &caller.principal {
                scope.principals.lock().unwrap_or_else(|p| p.into_inner()).insert(p.user_id, Some(p.clone()));
            }
            let response = match scope.run(request.clone(), 1, BTreeMap::new(), scope.who) {
                Ok((r, _)) => r,
                Err(e) => {
                    // A failed request writes nothing, but the runs it recorded are kept.
                    if let Err(kept) = local.store.keep_runs(&scope.take_runs()) {
                        tracing::warn!("recorded runs of a failed request were not kept: {kept}");
                    }
                    return Err(scope.root_cause(e));
                }
            };
            let changes = scope.into_changes();
            if changes.is_empty() {
                return Ok(response);
            }
            match local.committer.commit_blocking(changes) {
                Ok(_) => return Ok(response),
                Err(CommitError::Conflict { entity, id }) => conflict = format!("{entity} {id}"),
                Err(CommitError::Store(e) | CommitError::Refused(e)) => return Err(e.into()),
                Err(CommitError::Stopped) => return Err(StoreError::Db("the store's writer has stopped".into()).into()),
            }
        }
        Err(PipelineError::Conflict(conflict))
    }

    /// The compiled plug-in of `hash` for a job, or what the job comes to without
    /// it: run again later when its bytes could not be fetched (the store or, on a
    /// remote worker, the server was unavailable), failed when they cannot be loaded.
    pub(super) fn load_plugin(
        &self,
        hash: &crate::model::AssemblyHash,
    ) -> std::result::Result<Arc<crate::runtime::LoadedPlugin>, crate::store::JobResult> {
        self.runtime.load(hash, || self.source.assembly_bytes(hash)).map_err(|e| {
            let message = format!("assembly {} cannot be loaded: {e:#}", hash.short());
            if e.chain().any(|c| matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Unavailable(_)))) {
                crate::store::JobResult::Retry { code: "store_unavailable".into(), message }
            } else {
                crate::store::JobResult::Failed { code: "plugin_not_registered".into(), message }
            }
        })
    }

    /// Runs a plug-in execution job: the plug-in's writes are buffered (and run
    /// through the pipeline at depth + 1) and returned as the job's effects, to be
    /// committed with its completion. Its plug-ins stop when `stop` is set (the job
    /// was canceled or paused). Blocks.
    pub fn run_job(self: &Arc<Self>, job: &SystemJob, stop: Arc<AtomicBool>) -> JobRun {
        let steps = self.steps.read().unwrap_or_else(|p| p.into_inner()).clone();
        let orphan = |what: String| {
            JobRun::failed("plugin_not_registered", format!("{what} was unregistered while this job was queued"))
        };
        let Some(step_id) = job.step_id else { return orphan("the job's step".into()) };
        let Some(step) = steps.by_id.get(&step_id) else {
            return orphan(format!("step '{}' ({step_id})", job.name));
        };
        let Some(hash) = steps.assemblies.get(&step.plugin).copied() else {
            let queued = job.assembly.map(|h| format!(", assembly {} at queue time", h.short())).unwrap_or_default();
            return orphan(format!("plug-in '{}'{queued}", step.plugin));
        };
        let plugin = match self.load_plugin(&hash) {
            Ok(p) => p,
            Err(result) => return JobRun::ended(result),
        };
        let limits = self.defaults.with(&step.limits);
        let scope = match self.job_scope(job, None, limits.write_bytes, stop) {
            Ok(scope) => scope,
            Err(run) => return *run,
        };
        let mut context = job.context.clone();
        context.operation_id = Some(job.id);
        let invocation = invoke_step(&self.runtime, step, &plugin, &context, &limits, scope.clone());
        // Kept with the completion whatever the run came to.
        let runs = scope.take_runs();
        let mut run = JobRun {
            result: crate::store::JobResult::Succeeded,
            effects: ChangeSet::default(),
            trace: invocation.trace,
            fuel_used: invocation.fuel_used,
            duration_us: invocation.duration_us,
            delete_on_success: step.delete_job_on_success,
            output: Parameters::new(),
            message: None,
        };
        match invocation.outcome {
            Ok(result) => {
                run.effects = scope.into_changes();
                run.output = result.output_parameters;
            }
            Err(f) => run.result = scope.job_failure(f),
        }
        run.effects.runs = runs;
        run
    }
}
