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

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock, Weak};

use uuid::Uuid;

use crate::clock::now_ms;
use crate::jobs::SystemJob;
use crate::metadata::EntityDefinition;
use crate::model::{
    AssemblyHash, Entity, EntityCollection, EntityReference, ExecutionContext, ExecutionResult, Mode, ParameterValue,
    Parameters, Query, Stage, Value,
};
use crate::query;
use crate::registry::{CORE_MESSAGES, ImageKind, StepRecord};
use crate::runtime::{
    CallContext, ErrorCode, Failure, InstanceCache, Invocation, Limits, LoadedPlugin, OrganizationService, Reuse,
    Runtime, ServiceError,
};
use crate::store::{ChangeSet, CommitError, Committer, RecordChange, Snapshot, Store, StoreError, StoredRecord};

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

/// Who makes a request.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub user_id: Uuid,
    /// Joins this request to an existing correlation (a new one otherwise).
    pub correlation_id: Option<Uuid>,
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
            PipelineError::Conflict(_) | PipelineError::Store(_) => ServiceError::Failed(m),
        }
    }
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// The enabled steps, by message, with each plug-in's assembly: rebuilt when the
/// registry changes.
#[derive(Default)]
struct StepIndex {
    by_message: HashMap<String, Vec<StepRecord>>,
    /// Every step, enabled or not: what queued jobs refer to.
    by_id: HashMap<Uuid, StepRecord>,
    assemblies: HashMap<String, AssemblyHash>,
}

impl StepIndex {
    fn load(store: &Store) -> Result<StepIndex> {
        let mut index = StepIndex::default();
        for p in store.plugins()? {
            index.assemblies.insert(p.name, p.assembly);
        }
        for s in store.steps()? {
            index.by_id.insert(s.id, s.clone());
            if s.enabled {
                index.by_message.entry(s.message.clone()).or_default().push(s);
            }
        }
        for steps in index.by_message.values_mut() {
            steps.sort_by_key(|s| (s.stage, s.rank, s.created_at));
        }
        Ok(index)
    }

    /// Steps for (message, entity, stage, mode), in rank order.
    fn matching<'a>(
        &'a self,
        message: &str,
        entity: &'a str,
        stage: Stage,
        mode: Mode,
    ) -> impl Iterator<Item = &'a StepRecord> + 'a {
        self.by_message
            .get(message)
            .into_iter()
            .flatten()
            .filter(move |s| s.stage == stage && s.mode == mode && s.entity.as_deref().is_none_or(|e| e == entity))
    }
}

pub struct Pipeline {
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    committer: Committer,
    defaults: Limits,
    steps: RwLock<Arc<StepIndex>>,
}

impl Pipeline {
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        committer: Committer,
        defaults: Limits,
    ) -> Result<Arc<Pipeline>> {
        let steps = RwLock::new(Arc::new(StepIndex::load(&store)?));
        Ok(Arc::new(Pipeline { store, runtime, committer, defaults, steps }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Re-reads the registry; call after plug-ins or steps change.
    pub fn reload_steps(&self) -> Result<()> {
        let index = Arc::new(StepIndex::load(&self.store)?);
        *self.steps.write().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(())
    }

    /// Runs `request` through the pipeline and commits its effects durably.
    /// Blocks: call from a thread that may block (plug-ins run on it).
    pub fn execute(self: &Arc<Self>, request: Request, caller: &Caller) -> Result<Response> {
        let correlation_id = caller.correlation_id.unwrap_or_else(Uuid::new_v4);
        let mut conflict = String::new();
        for _ in 0..MAX_ATTEMPTS {
            let scope = Scope::new(
                self.clone(),
                self.store.snapshot()?,
                correlation_id,
                caller.user_id,
                self.defaults.write_bytes,
            );
            let response =
                scope.run(request.clone(), 1, BTreeMap::new()).map(|(r, _)| r).map_err(|e| scope.root_cause(e))?;
            let changes = scope.into_changes();
            if changes.is_empty() {
                return Ok(response);
            }
            match self.committer.commit_blocking(changes) {
                Ok(_) => return Ok(response),
                Err(CommitError::Conflict { entity, id }) => conflict = format!("{entity} {id}"),
                Err(CommitError::Store(e) | CommitError::Refused(e)) => return Err(e.into()),
                Err(CommitError::Stopped) => return Err(StoreError::Db("the store's writer has stopped".into()).into()),
            }
        }
        Err(PipelineError::Conflict(conflict))
    }

    /// Runs a plug-in execution job: the plug-in's writes are buffered (and run
    /// through the pipeline at depth + 1) and returned as the job's effects, to be
    /// committed with its completion. Blocks.
    pub fn run_job(self: &Arc<Self>, job: &SystemJob) -> JobRun {
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
        let store = self.store.clone();
        let plugin = match self.runtime.load(&hash, || {
            store.assembly_bytes(&hash)?.ok_or_else(|| anyhow::anyhow!("assembly {hash} is missing from the store"))
        }) {
            Ok(p) => p,
            Err(e) => {
                return JobRun::failed(
                    "plugin_not_registered",
                    format!("assembly {} cannot be loaded: {e:#}", hash.short()),
                );
            }
        };
        let snapshot = match self.store.snapshot() {
            Ok(s) => s,
            Err(e) => return JobRun::retry("store_error", e.to_string()),
        };
        let limits = self.defaults.with(&step.limits);
        let scope =
            Scope::new(self.clone(), snapshot, job.correlation_id, job.context.initiating_user_id, limits.write_bytes);
        let mut context = job.context.clone();
        context.operation_id = Some(job.id);
        let invocation = invoke_step(&self.runtime, step, &plugin, &context, &limits, scope.clone());
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
            // A plug-in that failed after a write broke the limit failed because of it.
            Err(f) if scope.write_limit_hit().is_some() => {
                let hit = scope.write_limit_hit().unwrap_or_default();
                run.result = crate::store::JobResult::Failed {
                    code: "write_limit".into(),
                    message: format!("{hit}; then the plug-in failed: {}", f.message),
                }
            }
            Err(f) if f.code.is_retryable() => {
                run.result = crate::store::JobResult::Retry { code: f.code.to_string(), message: f.message }
            }
            Err(f) => run.result = crate::store::JobResult::Failed { code: f.code.to_string(), message: f.message },
        }
        run
    }
}

impl Pipeline {
    /// Runs one batch of a bulk job (see [`crate::bulk`]): its rows or records go
    /// through the pipeline as top-level requests, each in its own savepoint. The
    /// successful ones' effects and the new progress come back, to be committed with
    /// the run's completion. Blocks.
    pub fn run_bulk(self: &Arc<Self>, job: &SystemJob) -> JobRun {
        use crate::bulk::{BATCH, BulkSpec, Failure as RowFailure, ImportFormat, Progress, typed_row};
        let started = std::time::Instant::now();
        let spec = match BulkSpec::from_job(job) {
            Ok(s) => s,
            Err(m) => return JobRun::failed("invalid_job", m),
        };
        let snapshot = match self.store.snapshot() {
            Ok(s) => s,
            Err(e) => return JobRun::retry("store_error", e.to_string()),
        };
        let scope = Scope::new(
            self.clone(),
            snapshot,
            job.correlation_id,
            job.context.initiating_user_id,
            self.defaults.write_bytes,
        );
        let failure = |row: Option<u64>, id: Option<Uuid>, e: &PipelineError| RowFailure {
            row,
            id,
            code: e.code().to_owned(),
            message: e.to_string(),
        };
        let mut progress = Progress::from_output(&job.output);
        let more = match spec {
            BulkSpec::Delete { query } => {
                let page = Query {
                    columns: Vec::new(),
                    orders: Vec::new(),
                    top: None,
                    page_size: Some(BATCH as u32),
                    paging_cookie: progress.after.map(|id| format!("id:{id}")),
                    ..query
                };
                let found = match scope.retrieve_multiple(&page) {
                    Ok(found) => found,
                    Err(e) => return JobRun::failed(e.code(), e.to_string()),
                };
                for record in &found.entities {
                    let id = record.id.expect("stored records have ids");
                    let target = EntityReference { logical_name: page.entity_name.clone(), id };
                    progress
                        .record(scope.attempt(Request::Delete { target }).err().map(|e| failure(None, Some(id), &e)));
                    progress.after = Some(id);
                }
                found.more_records
            }
            BulkSpec::Import { entity, format, rows } => {
                let batch = match self.store.bulk_rows(job.id, progress.next_row, BATCH) {
                    Ok(batch) => batch,
                    Err(e) => return JobRun::retry("store_error", e.to_string()),
                };
                let def = match scope.definition(&entity) {
                    Ok(def) => def,
                    Err(e) => return JobRun::failed(e.code(), e.to_string()),
                };
                for (index, row) in batch {
                    let row = match format {
                        ImportFormat::Csv => typed_row(&def, row).map_err(PipelineError::Invalid),
                        ImportFormat::Jsonl => Ok(row),
                    };
                    let outcome = row.and_then(|record| scope.attempt(Request::Create { record }));
                    progress.record(outcome.err().map(|e| failure(Some(index + 1), None, &e)));
                    progress.next_row = index + 1;
                }
                progress.next_row < rows
            }
        };
        progress.done = !more;
        JobRun {
            result: if more { crate::store::JobResult::Progress } else { crate::store::JobResult::Succeeded },
            effects: scope.into_changes(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: started.elapsed().as_micros() as u64,
            delete_on_success: false,
            output: progress.to_output(),
            message: Some(progress.summary()),
        }
    }
}

/// A job created directly rather than by an event (Dataverse: "directly by a Web
/// service call"): a run of an asynchronous step, once, later, or on a recurrence.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NewJob {
    /// The step: id, unique id prefix or name. It must be asynchronous.
    pub step: String,
    /// Input parameters for the plug-in.
    pub parameters: Parameters,
    /// An RRULE (FREQ=MINUTELY..YEARLY, INTERVAL, COUNT, UNTIL, BYDAY, BYMONTHDAY,
    /// BYMONTH, BYHOUR, BYMINUTE) and its start (RFC 3339 or UTC ms; default now).
    pub recurrence_pattern: Option<String>,
    #[serde(with = "crate::model::flexible_time")]
    pub recurrence_start: Option<i64>,
    /// Do not start before this time (RFC 3339 or UTC ms).
    #[serde(with = "crate::model::flexible_time")]
    pub postpone_until: Option<i64>,
    pub dependency_token: Option<String>,
}

impl Pipeline {
    /// Builds a job for a step from a [`NewJob`]; refuses a bad pattern or step.
    pub fn new_job(&self, spec: NewJob) -> Result<SystemJob> {
        let step = self.store.resolve_step(&spec.step)?;
        if step.mode != Mode::Asynchronous {
            return Err(PipelineError::Invalid(format!(
                "step '{}' is synchronous: jobs run asynchronous steps",
                step.name
            )));
        }
        let assembly = self.store.plugin(&step.plugin)?.map(|p| p.assembly);
        let context = ExecutionContext {
            message_name: step.message.clone(),
            primary_entity_name: step.entity.clone().unwrap_or_default(),
            stage: Stage::PostOperation,
            mode: Mode::Asynchronous,
            step_id: Some(step.id),
            configuration: step.configuration.clone(),
            input_parameters: spec.parameters,
            operation_created_on: now_ms(),
            ..ExecutionContext::default()
        };
        let mut job = SystemJob::plugin_execution(&step.name, step.id, assembly, context);
        job.dependency_token = spec.dependency_token;
        schedule(&mut job, spec.postpone_until, spec.recurrence_pattern, spec.recurrence_start)?;
        Ok(job)
    }

    /// A bulk delete job for `spec`, checked against the entity's definition.
    pub fn new_bulk_delete(&self, spec: BulkDelete) -> Result<SystemJob> {
        let q = &spec.query;
        let def = self.store.snapshot()?.definition(&q.entity_name)?.ok_or_else(|| unknown_entity(&q.entity_name))?;
        check_query(q, &def)?;
        let mut job = crate::bulk::BulkSpec::Delete { query: spec.query }.job(spec.name);
        schedule(&mut job, spec.postpone_until, spec.recurrence_pattern, spec.recurrence_start)?;
        Ok(job)
    }

    /// An import job and its rows, parsed from `bytes` (see [`crate::bulk::parse_import`]).
    pub fn new_import(
        &self,
        entity: &str,
        format: crate::bulk::ImportFormat,
        bytes: &[u8],
        name: Option<String>,
    ) -> Result<(SystemJob, Vec<Entity>)> {
        let def = self.store.snapshot()?.definition(entity)?.ok_or_else(|| unknown_entity(entity))?;
        let rows = crate::bulk::parse_import(&def, format, bytes).map_err(PipelineError::Invalid)?;
        let spec = crate::bulk::BulkSpec::Import { entity: entity.to_owned(), format, rows: rows.len() as u64 };
        Ok((spec.job(name), rows))
    }
}

/// What `POST /bulk/delete` and `plughost bulk delete` ask for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// The records to delete: the query's entity and criteria (order and paging are ignored).
    pub query: Query,
    #[serde(default)]
    pub name: Option<String>,
    /// Do not start before this time (RFC 3339 or UTC milliseconds).
    #[serde(default, with = "crate::model::flexible_time")]
    pub postpone_until: Option<i64>,
    /// Run again on this RRULE (e.g. nightly), from `recurrence_start` (default now).
    #[serde(default)]
    pub recurrence_pattern: Option<String>,
    #[serde(default, with = "crate::model::flexible_time")]
    pub recurrence_start: Option<i64>,
}

/// Checks a query's shape and that its criteria name attributes of its entity.
fn check_query(q: &Query, def: &EntityDefinition) -> Result<()> {
    query::validate(q).map_err(PipelineError::Invalid)?;
    for c in q.criteria.conditions.iter().chain(q.criteria.groups.iter().flat_map(|g| &g.conditions)) {
        if def.attribute_type(&c.attribute).is_none() {
            return Err(PipelineError::Invalid(format!("{} has no attribute '{}'", q.entity_name, c.attribute)));
        }
    }
    Ok(())
}

fn unknown_entity(entity: &str) -> PipelineError {
    PipelineError::UnknownEntity(format!(
        "unknown entity '{entity}': define it first (plughost entities define {entity} --attr NAME:TYPE)"
    ))
}

/// Sets when a new job first runs: not before `postpone_until`, and on a recurrence
/// from its first occurrence; a job that must wait starts Suspended/Waiting.
fn schedule(
    job: &mut SystemJob,
    postpone_until: Option<i64>,
    pattern: Option<String>,
    start: Option<i64>,
) -> Result<()> {
    job.postpone_until = postpone_until;
    if let Some(pattern) = pattern {
        let start = start.unwrap_or_else(now_ms);
        // Occurrences fall on whole seconds: the start's own second is the first.
        let first = crate::recurrence::next_after(&pattern, start, start - start.rem_euclid(1000) - 1)
            .map_err(PipelineError::Invalid)?
            .ok_or_else(|| {
                PipelineError::Invalid(format!("the recurrence '{pattern}' has no occurrence after its start"))
            })?;
        job.postpone_until = Some(job.postpone_until.map_or(first, |p| p.max(first)));
        job.recurrence_pattern = Some(pattern);
        job.recurrence_start = Some(start);
    }
    if job.postpone_until.is_some_and(|t| t > now_ms()) {
        job.status = crate::jobs::JobStatus::Waiting;
    }
    Ok(())
}

/// What running a job came to, ready to be completed.
#[derive(Debug)]
pub struct JobRun {
    pub result: crate::store::JobResult,
    pub effects: ChangeSet,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub delete_on_success: bool,
    /// The plug-in's output parameters, kept on the job.
    pub output: Parameters,
    /// A summary for the job's message (bulk jobs' progress).
    pub message: Option<String>,
}

impl JobRun {
    /// A run with nothing to report but success.
    pub fn succeeded() -> JobRun {
        JobRun::ended(crate::store::JobResult::Succeeded)
    }

    fn failed(code: &str, message: String) -> JobRun {
        JobRun::ended(crate::store::JobResult::Failed { code: code.into(), message })
    }

    fn retry(code: &str, message: String) -> JobRun {
        JobRun::ended(crate::store::JobResult::Retry { code: code.into(), message })
    }

    fn ended(result: crate::store::JobResult) -> JobRun {
        JobRun {
            result,
            effects: ChangeSet::default(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: 0,
            delete_on_success: false,
            output: Parameters::new(),
            message: None,
        }
    }
}

/// A record in the overlay: the version it had in the snapshot, and its state now.
#[derive(Clone)]
struct Slot {
    base: Option<u64>,
    state: Option<StoredRecord>,
}

/// The request's write buffer. Savepoints are an undo journal: a nested call that
/// fails undoes just its own writes, so a savepoint costs what it changes, not the
/// size of the buffer.
#[derive(Default)]
struct Overlay {
    records: BTreeMap<(String, Uuid), Slot>,
    jobs: Vec<SystemJob>,
    /// Approximate bytes of the buffered records: bounded by the write limit.
    bytes: u64,
    /// While a savepoint is open: each write's key and the slot it replaced.
    journal: Vec<((String, Uuid), Option<Slot>)>,
    open_savepoints: usize,
}

/// Where a savepoint began: the journal's and the job list's lengths.
struct Savepoint {
    journal: usize,
    jobs: usize,
}

fn record_bytes(state: Option<&StoredRecord>) -> u64 {
    state.map_or(0, |r| 32 + r.attributes.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>() as u64)
}

impl Overlay {
    fn savepoint(&mut self) -> Savepoint {
        self.open_savepoints += 1;
        Savepoint { journal: self.journal.len(), jobs: self.jobs.len() }
    }

    /// Closes a savepoint; on failure, undoes every write made since it.
    fn close(&mut self, savepoint: Savepoint, failed: bool) {
        self.open_savepoints -= 1;
        if failed {
            while self.journal.len() > savepoint.journal {
                let Some((key, previous)) = self.journal.pop() else { break };
                let now = self.records.get(&key).and_then(|s| s.state.as_ref()).map_or(0, |r| record_bytes(Some(r)));
                let then = previous.as_ref().map_or(0, |s| record_bytes(s.state.as_ref()));
                self.bytes = (self.bytes + then).saturating_sub(now);
                match previous {
                    Some(slot) => self.records.insert(key, slot),
                    None => self.records.remove(&key),
                };
            }
            self.jobs.truncate(savepoint.jobs);
        }
        if self.open_savepoints == 0 {
            // Nothing can be undone any more.
            self.journal.clear();
        }
    }
}

/// One request in flight: its snapshot, its write buffer and its jobs. It is the
/// organization service the request's plug-ins call.
struct Scope {
    me: Weak<Scope>,
    pipeline: Arc<Pipeline>,
    steps: Arc<StepIndex>,
    snapshot: Snapshot,
    overlay: Mutex<Overlay>,
    correlation_id: Uuid,
    user_id: Uuid,
    /// Set when a call went deeper than [`MAX_DEPTH`], to name the root cause.
    depth_exceeded: Mutex<Option<String>>,
    /// The most bytes the write buffer may hold now: the request's limit, tightened
    /// while a step runs to what it found plus that step's write limit.
    write_caps: Mutex<Vec<u64>>,
    /// Set when a write broke the limit, to name the root cause.
    write_exceeded: Mutex<Option<String>>,
}

impl Scope {
    fn new(
        pipeline: Arc<Pipeline>,
        snapshot: Snapshot,
        correlation_id: Uuid,
        user_id: Uuid,
        write_bytes: u64,
    ) -> Arc<Scope> {
        let steps = pipeline.steps.read().unwrap_or_else(|p| p.into_inner()).clone();
        Arc::new_cyclic(|me| Scope {
            me: me.clone(),
            pipeline,
            steps,
            snapshot,
            overlay: Mutex::new(Overlay::default()),
            correlation_id,
            user_id,
            depth_exceeded: Mutex::new(None),
            write_caps: Mutex::new(vec![write_bytes]),
            write_exceeded: Mutex::new(None),
        })
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn caps(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.write_caps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What broke the write limit, if a write did.
    fn write_limit_hit(&self) -> Option<String> {
        self.write_exceeded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A failure caused by an infinite loop or a broken write limit shows up as a
    /// plug-in failing on the error it got: report the cause.
    fn root_cause(&self, e: PipelineError) -> PipelineError {
        if let PipelineError::Plugin { .. } = &e {
            if let Some(depth) = self.depth_exceeded.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return PipelineError::DepthExceeded(format!("{depth}; then {e}"));
            }
            if let Some(hit) = self.write_limit_hit() {
                return PipelineError::WriteLimit(format!("{hit}; then {e}"));
            }
        }
        e
    }

    /// Runs `request` at `depth`; if it fails, the overlay is as it was before.
    fn attempt_at(&self, request: Request, depth: u32) -> Result<Response> {
        let savepoint = self.overlay().savepoint();
        let result = self.run(request, depth, BTreeMap::new());
        self.overlay().close(savepoint, result.is_err());
        result.map(|(response, _)| response)
    }

    /// Runs one top-level request of a batch (a bulk job's row), naming the root
    /// cause of a failure as a request would.
    fn attempt(&self, request: Request) -> Result<Response> {
        self.attempt_at(request, 1).map_err(|e| self.root_cause(e))
    }

    fn into_changes(self: Arc<Self>) -> ChangeSet {
        let overlay = std::mem::take(&mut *self.overlay());
        let records = overlay
            .records
            .into_iter()
            .filter(|(_, slot)| match (slot.base, &slot.state) {
                (None, None) => false,
                (Some(v), Some(s)) => s.version != v,
                _ => true,
            })
            .map(|((entity, id), slot)| RecordChange { entity, id, expected_version: slot.base, new: slot.state })
            .collect();
        ChangeSet { records, jobs: overlay.jobs }
    }

    /// The current state of a record: the overlay's, else the snapshot's.
    fn read(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>> {
        if let Some(slot) = self.overlay().records.get(&(entity.to_owned(), id)) {
            return Ok(slot.state.clone());
        }
        Ok(self.snapshot.record(entity, id)?)
    }

    /// Buffers a record's new state; refuses a write that would take the buffer past
    /// the write limit (`write_limit`).
    fn write(&self, entity: &str, id: Uuid, state: Option<StoredRecord>) -> Result<()> {
        let key = (entity.to_owned(), id);
        let base = match self.overlay().records.contains_key(&key) {
            true => None,
            false => Some(self.snapshot.record(entity, id)?.map(|r| r.version)),
        };
        let cap = self.caps().last().copied().unwrap_or(u64::MAX);
        let new_bytes = record_bytes(state.as_ref());
        let mut o = self.overlay();
        let old_bytes = o.records.get(&key).map_or(0, |s| record_bytes(s.state.as_ref()));
        let total = (o.bytes + new_bytes).saturating_sub(old_bytes);
        if new_bytes > old_bytes && total > cap {
            let m = format!(
                "writing {entity} {id} (about {new_bytes} bytes) would take the request's pending writes to about {total} bytes, past the write limit of {cap} bytes"
            );
            drop(o);
            self.write_exceeded.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(m.clone());
            return Err(PipelineError::WriteLimit(m));
        }
        if o.open_savepoints > 0 {
            let previous = o.records.get(&key).cloned();
            o.journal.push((key.clone(), previous));
        }
        match o.records.get_mut(&key) {
            Some(slot) => slot.state = state,
            None => {
                o.records.insert(key, Slot { base: base.flatten(), state });
            }
        }
        o.bytes = total;
        Ok(())
    }

    fn definition(&self, entity: &str) -> Result<EntityDefinition> {
        self.snapshot.definition(entity)?.ok_or_else(|| unknown_entity(entity))
    }

    /// Runs one message at `depth`; returns the response and the shared variables.
    fn run(
        &self,
        request: Request,
        depth: u32,
        shared: BTreeMap<String, Value>,
    ) -> Result<(Response, BTreeMap<String, Value>)> {
        if depth > MAX_DEPTH {
            let m = format!(
                "{} would run at depth {depth}, deeper than the maximum of {MAX_DEPTH}: plug-ins are calling each other in an infinite loop",
                request.message()
            );
            self.depth_exceeded.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(m.clone());
            return Err(PipelineError::DepthExceeded(m));
        }
        let message = request.message().to_owned();
        let mut ctx = ExecutionContext {
            message_name: message.clone(),
            depth,
            correlation_id: self.correlation_id,
            initiating_user_id: self.user_id,
            user_id: self.user_id,
            operation_created_on: now_ms(),
            shared_variables: shared,
            ..ExecutionContext::default()
        };
        // Inputs, the primary entity, and the record as it was (for pre-images and filters).
        let mut pre_state: Option<Entity> = None;
        // The primary entity's definition, read once for the whole message.
        let definition = match &request {
            Request::Create { record } | Request::Update { record } => Some(self.definition(&record.logical_name)?),
            Request::Delete { target } | Request::Retrieve { target, .. } => {
                Some(self.definition(&target.logical_name)?)
            }
            Request::RetrieveMultiple { query } => Some(self.definition(&query.entity_name)?),
            Request::Custom { .. } => None,
        };
        match &request {
            Request::Create { record } => {
                ctx.primary_entity_name = record.logical_name.clone();
                ctx.primary_entity_id = record.id;
                ctx.input_parameters.insert("Target".into(), ParameterValue::Entity(record.clone()));
            }
            Request::Update { record } => {
                let id = record.id.ok_or_else(|| PipelineError::Invalid("an update needs the record's id".into()))?;
                let current =
                    self.read(&record.logical_name, id)?.ok_or_else(|| not_found(&record.logical_name, id))?;
                pre_state = Some(current.to_entity(&record.logical_name, id));
                ctx.primary_entity_name = record.logical_name.clone();
                ctx.primary_entity_id = Some(id);
                ctx.input_parameters.insert("Target".into(), ParameterValue::Entity(record.clone()));
            }
            Request::Delete { target } | Request::Retrieve { target, .. } => {
                let current = self
                    .read(&target.logical_name, target.id)?
                    .ok_or_else(|| not_found(&target.logical_name, target.id))?;
                pre_state = Some(current.to_entity(&target.logical_name, target.id));
                ctx.primary_entity_name = target.logical_name.clone();
                ctx.primary_entity_id = Some(target.id);
                ctx.input_parameters.insert("Target".into(), ParameterValue::Reference(target.clone()));
                if let Request::Retrieve { columns, .. } = &request {
                    ctx.input_parameters
                        .insert("ColumnSet".into(), ParameterValue::Value(Value::Text(columns.join(","))));
                }
            }
            Request::RetrieveMultiple { query } => {
                ctx.primary_entity_name = query.entity_name.clone();
                ctx.input_parameters.insert("Query".into(), ParameterValue::Query(query.clone()));
            }
            Request::Custom { target, parameters, .. } => {
                if let Some(t) = target {
                    ctx.primary_entity_name = t.logical_name.clone();
                    ctx.primary_entity_id = Some(t.id);
                    ctx.input_parameters.insert("Target".into(), ParameterValue::Reference(t.clone()));
                }
                ctx.input_parameters.extend(parameters.clone());
            }
        }
        let entity = ctx.primary_entity_name.clone();
        let fires = |s: &StepRecord| update_filter_fires(s, &request, pre_state.as_ref());

        for stage in [Stage::PreValidation, Stage::PreOperation] {
            let steps: Vec<StepRecord> = self
                .steps
                .matching(&message, &entity, stage, Mode::Synchronous)
                .filter(|s| fires(s))
                .cloned()
                .collect();
            for step in &steps {
                self.run_step(step, &mut ctx, stage, pre_state.as_ref(), None)?;
            }
        }

        let post_state = self.core_operation(&request, definition.as_ref(), &mut ctx)?;

        let post_steps: Vec<StepRecord> = self
            .steps
            .matching(&message, &entity, Stage::PostOperation, Mode::Synchronous)
            .filter(|s| fires(s))
            .cloned()
            .collect();
        for step in &post_steps {
            self.run_step(step, &mut ctx, Stage::PostOperation, pre_state.as_ref(), post_state.as_ref())?;
        }
        let async_steps: Vec<StepRecord> = self
            .steps
            .matching(&message, &entity, Stage::PostOperation, Mode::Asynchronous)
            .filter(|s| fires(s))
            .cloned()
            .collect();
        for step in &async_steps {
            self.queue_job(step, &ctx, pre_state.as_ref(), post_state.as_ref());
        }
        Ok((response(&request, &ctx), ctx.shared_variables))
    }

    /// The core operation (or stage 30 for custom messages); returns the record after it.
    fn core_operation(
        &self,
        request: &Request,
        definition: Option<&EntityDefinition>,
        ctx: &mut ExecutionContext,
    ) -> Result<Option<Entity>> {
        let check = |target: &mut Entity| {
            definition.expect("data messages have a definition").check_record(target).map_err(PipelineError::Invalid)
        };
        let target_entity = |ctx: &ExecutionContext| -> Result<Entity> {
            match ctx.input_parameters.get("Target") {
                Some(ParameterValue::Entity(e)) => Ok(e.clone()),
                _ => Err(PipelineError::Invalid("the Target parameter must be a record".into())),
            }
        };
        let now = now_ms();
        match request {
            Request::Create { record } => {
                let mut target = target_entity(ctx)?;
                if target.logical_name != record.logical_name {
                    return Err(PipelineError::Invalid("a plug-in changed the Target's entity".into()));
                }
                check(&mut target)?;
                // Sequential ids, as Dataverse gives: new records land at the end of the
                // table instead of dirtying a random page each.
                let id = target.id.unwrap_or_else(Uuid::now_v7);
                if self.read(&target.logical_name, id)?.is_some() {
                    return Err(PipelineError::AlreadyExists(format!(
                        "{} with id {id} already exists",
                        target.logical_name
                    )));
                }
                let stored =
                    StoredRecord { version: 1, created_on: now, modified_on: now, attributes: target.attributes };
                let after = stored.to_entity(&target.logical_name, id);
                self.write(&target.logical_name, id, Some(stored))?;
                ctx.primary_entity_id = Some(id);
                ctx.output_parameters.insert("id".into(), ParameterValue::Value(Value::Guid(id)));
                Ok(Some(after))
            }
            Request::Update { record } => {
                let mut target = target_entity(ctx)?;
                let id = record.id.expect("checked before");
                if target.logical_name != record.logical_name || target.id.is_some_and(|t| t != id) {
                    return Err(PipelineError::Invalid("a plug-in changed which record the Target is".into()));
                }
                check(&mut target)?;
                let mut stored =
                    self.read(&target.logical_name, id)?.ok_or_else(|| not_found(&target.logical_name, id))?;
                stored.attributes.extend(target.attributes);
                stored.version += 1;
                stored.modified_on = now;
                let after = stored.to_entity(&target.logical_name, id);
                self.write(&target.logical_name, id, Some(stored))?;
                Ok(Some(after))
            }
            Request::Delete { target } => {
                self.write(&target.logical_name, target.id, None)?;
                Ok(None)
            }
            Request::Retrieve { target, columns } => {
                let stored = self
                    .read(&target.logical_name, target.id)?
                    .ok_or_else(|| not_found(&target.logical_name, target.id))?;
                let entity = query::project(stored.to_entity(&target.logical_name, target.id), columns);
                ctx.output_parameters.insert("BusinessEntity".into(), ParameterValue::Entity(entity.clone()));
                Ok(Some(entity))
            }
            Request::RetrieveMultiple { .. } => {
                let q = match ctx.input_parameters.get("Query") {
                    Some(ParameterValue::Query(q)) => q.clone(),
                    _ => return Err(PipelineError::Invalid("the Query parameter must be a query".into())),
                };
                let collection = self.retrieve_multiple(&q)?;
                ctx.output_parameters
                    .insert("BusinessEntityCollection".into(), ParameterValue::Entities(collection.entities));
                ctx.output_parameters
                    .insert("MoreRecords".into(), ParameterValue::Value(Value::Boolean(collection.more_records)));
                if let Some(cookie) = collection.paging_cookie {
                    ctx.output_parameters.insert("PagingCookie".into(), ParameterValue::Value(Value::Text(cookie)));
                }
                Ok(None)
            }
            Request::Custom { message, .. } => {
                let steps: Vec<StepRecord> = self
                    .steps
                    .matching(message, &ctx.primary_entity_name, Stage::MainOperation, Mode::Synchronous)
                    .cloned()
                    .collect();
                if steps.is_empty() || CORE_MESSAGES.contains(&message.as_str()) {
                    return Err(PipelineError::UnknownMessage(format!(
                        "no plug-in implements message '{message}': register a main-operation (30) step for it"
                    )));
                }
                for step in &steps {
                    self.run_step(step, ctx, Stage::MainOperation, None, None)?;
                }
                Ok(None)
            }
        }
    }

    /// Runs a query over the snapshot plus this request's own writes.
    fn retrieve_multiple(&self, q: &Query) -> Result<EntityCollection> {
        check_query(q, &self.definition(&q.entity_name)?)?;
        let page = q.page_size.unwrap_or(query::MAX_PAGE_SIZE) as usize;
        let limit = q.top.map_or(usize::MAX, |t| t as usize);
        let overlay: BTreeMap<Uuid, Option<StoredRecord>> = self
            .overlay()
            .records
            .iter()
            .filter(|((e, _), _)| e == &q.entity_name)
            .map(|((_, id), slot)| (*id, slot.state.clone()))
            .collect();
        let by_id = q.orders.is_empty();
        // Without an order the cookie is the last id (a cursor); with one, an offset.
        let (after, offset) = match &q.paging_cookie {
            None => (None, 0),
            Some(c) => match (by_id, c.strip_prefix("id:"), c.strip_prefix("offset:")) {
                (true, Some(id), _) => (Some(Uuid::parse_str(id).map_err(|_| bad_cookie(c))?), 0),
                (false, _, Some(n)) => (None, n.parse::<usize>().map_err(|_| bad_cookie(c))?),
                _ => return Err(bad_cookie(c)),
            },
        };
        let mut found = Vec::new();
        let keep = |id: Uuid, rec: &StoredRecord| {
            let e = rec.to_entity(&q.entity_name, id);
            query::matches(&e, &q.criteria).then_some(e)
        };
        // Records from the snapshot (unless this request changed them), then the request's own new ones.
        let want = if by_id { page.saturating_add(1).min(limit) } else { usize::MAX };
        self.snapshot.scan(&q.entity_name, after, |id, rec| {
            found.extend(match overlay.get(&id) {
                Some(Some(mine)) => keep(id, mine),
                Some(None) => None,
                None => keep(id, &rec),
            });
            if found.len() >= want { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        for (id, state) in &overlay {
            if let Some(rec) = state
                && self.snapshot.record(&q.entity_name, *id)?.is_none()
                && after.is_none_or(|a| *id > a)
            {
                found.extend(keep(*id, rec));
            }
        }
        if by_id {
            found.sort_by_key(|e| e.id);
        } else {
            query::sort(&mut found, &q.orders);
        }
        found.truncate(limit);
        let start = offset.min(found.len());
        let end = start.saturating_add(page).min(found.len());
        let more = end < found.len();
        let entities: Vec<Entity> = found[start..end].iter().cloned().map(|e| query::project(e, &q.columns)).collect();
        let cookie = more.then(|| match (by_id, entities.last()) {
            (true, Some(last)) => format!("id:{}", last.id.expect("stored records have ids")),
            _ => format!("offset:{end}"),
        });
        Ok(EntityCollection { entities, more_records: more, paging_cookie: cookie })
    }

    /// Runs one synchronous step and folds its result into the context.
    fn run_step(
        &self,
        step: &StepRecord,
        ctx: &mut ExecutionContext,
        stage: Stage,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) -> Result<()> {
        let step_ctx = self.step_context(step, ctx, stage, pre, post);
        let failed = |failure: Failure| PipelineError::Plugin { step: step.name.clone(), step_id: step.id, failure };
        let Some(hash) = self.steps.assemblies.get(&step.plugin) else {
            return Err(failed(Failure::new(
                ErrorCode::InstantiationFailed,
                format!("plug-in '{}' is not registered", step.plugin),
            )));
        };
        let store = self.pipeline.store.clone();
        let hash = *hash;
        let plugin = self
            .pipeline
            .runtime
            .load(&hash, || {
                store.assembly_bytes(&hash)?.ok_or_else(|| anyhow::anyhow!("assembly {hash} is missing from the store"))
            })
            .map_err(|e| failed(Failure::new(ErrorCode::InstantiationFailed, format!("{e:#}"))))?;
        let me: Arc<dyn OrganizationService> = self.me.upgrade().expect("a scope outlives its invocations");
        let limits = self.pipeline.defaults.with(&step.limits);
        // While the step runs, its writes may add at most its own write limit.
        let cap = {
            let buffered = self.overlay().bytes;
            let mut caps = self.caps();
            let outer = caps.last().copied().unwrap_or(u64::MAX);
            caps.push(outer.min(buffered.saturating_add(limits.write_bytes)));
            caps.len()
        };
        let invocation = invoke_step(&self.pipeline.runtime, step, &plugin, &step_ctx, &limits, me);
        self.caps().truncate(cap - 1);
        tracing::debug!(step = %step.name, correlation_id = %ctx.correlation_id, fuel = invocation.fuel_used, "step ran");
        let result: ExecutionResult = invocation.outcome.map_err(failed)?;
        // A pre-stage plug-in changes the request through its input parameters.
        if matches!(stage, Stage::PreValidation | Stage::PreOperation | Stage::MainOperation) {
            ctx.input_parameters.extend(result.input_parameters);
        }
        ctx.output_parameters.extend(result.output_parameters);
        ctx.shared_variables.extend(result.shared_variables);
        Ok(())
    }

    fn step_context(
        &self,
        step: &StepRecord,
        ctx: &ExecutionContext,
        stage: Stage,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) -> ExecutionContext {
        let mut c = ctx.clone();
        c.stage = stage;
        c.mode = step.mode;
        c.step_id = Some(step.id);
        c.configuration = step.configuration.clone();
        for image in &step.images {
            let (source, images) = match image.kind {
                ImageKind::Pre => (pre, &mut c.pre_entity_images),
                ImageKind::Post => (post, &mut c.post_entity_images),
            };
            if let Some(e) = source {
                images.insert(image.alias.clone(), query::project(e.clone(), &image.attributes));
            }
        }
        c
    }

    fn queue_job(&self, step: &StepRecord, ctx: &ExecutionContext, pre: Option<&Entity>, post: Option<&Entity>) {
        let context = self.step_context(step, ctx, Stage::PostOperation, pre, post);
        let mut job =
            SystemJob::plugin_execution(&step.name, step.id, self.steps.assemblies.get(&step.plugin).copied(), context);
        if step.ordered_per_record
            && let Some(r) = &job.regarding
        {
            job.dependency_token = Some(format!("{}:{}", r.logical_name, r.id));
        }
        self.overlay().jobs.push(job);
    }

    /// Runs a nested request for a plug-in; on failure, undoes what it wrote.
    fn nested(&self, caller: &CallContext, request: Request) -> std::result::Result<Response, ServiceError> {
        self.attempt_at(request, caller.depth + 1).map_err(|e| e.to_service_error())
    }
}

thread_local! {
    /// Instances kept for steps that opt in to reuse, per thread: an instance is
    /// never shared between threads, and nested invocations take their own.
    static KEPT: std::cell::RefCell<InstanceCache> = std::cell::RefCell::new(InstanceCache::default());
}

/// Invokes a step's plug-in, in a kept instance when the step allows reuse.
fn invoke_step(
    runtime: &Runtime,
    step: &StepRecord,
    plugin: &LoadedPlugin,
    context: &ExecutionContext,
    limits: &Limits,
    service: Arc<dyn OrganizationService>,
) -> Invocation {
    if step.instance_reuse <= 1 {
        return runtime.invoke(plugin, context, limits, service);
    }
    // Take the cache out while the plug-in runs, so a nested invocation on this
    // thread finds an empty one instead of a borrowed one.
    let mut cache = KEPT.with(|k| std::mem::take(&mut *k.borrow_mut()));
    let invocation = runtime.invoke_reusing(
        Reuse { cache: &mut cache, key: step.id, max_uses: step.instance_reuse },
        plugin,
        context,
        limits,
        service,
    );
    KEPT.with(|k| *k.borrow_mut() = cache);
    invocation
}

fn not_found(entity: &str, id: Uuid) -> PipelineError {
    PipelineError::NotFound(format!("{entity} with id {id} does not exist"))
}

fn bad_cookie(c: &str) -> PipelineError {
    PipelineError::Invalid(format!("paging cookie '{c}' does not belong to this query"))
}

/// An Update step with filtering attributes fires only when one of them changes.
fn update_filter_fires(step: &StepRecord, request: &Request, before: Option<&Entity>) -> bool {
    let Request::Update { record } = request else { return true };
    if step.filtering_attributes.is_empty() {
        return true;
    }
    step.filtering_attributes.iter().any(|a| match record.attributes.get(a) {
        Some(new) => before.and_then(|b| b.attributes.get(a)).is_none_or(|old| old != new),
        None => false,
    })
}

fn response(request: &Request, ctx: &ExecutionContext) -> Response {
    let out = &ctx.output_parameters;
    match request {
        Request::Create { .. } => Response::Created(ctx.primary_entity_id.expect("a created record has an id")),
        Request::Update { .. } => Response::Updated,
        Request::Delete { .. } => Response::Deleted,
        Request::Retrieve { .. } => match out.get("BusinessEntity") {
            Some(ParameterValue::Entity(e)) => Response::Retrieved(e.clone()),
            _ => Response::Retrieved(Entity::default()),
        },
        Request::RetrieveMultiple { .. } => {
            let entities = match out.get("BusinessEntityCollection") {
                Some(ParameterValue::Entities(es)) => es.clone(),
                _ => Vec::new(),
            };
            let more_records = matches!(out.get("MoreRecords"), Some(ParameterValue::Value(Value::Boolean(true))));
            let paging_cookie = match out.get("PagingCookie") {
                Some(ParameterValue::Value(Value::Text(c))) => Some(c.clone()),
                _ => None,
            };
            Response::Collection(EntityCollection { entities, more_records, paging_cookie })
        }
        Request::Custom { .. } => Response::Custom(out.clone()),
    }
}

impl OrganizationService for Scope {
    fn create(&self, caller: &CallContext, record: Entity) -> std::result::Result<Uuid, ServiceError> {
        match self.nested(caller, Request::Create { record })? {
            Response::Created(id) => Ok(id),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn retrieve(
        &self,
        caller: &CallContext,
        target: EntityReference,
        columns: Vec<String>,
    ) -> std::result::Result<Entity, ServiceError> {
        match self.nested(caller, Request::Retrieve { target, columns })? {
            Response::Retrieved(e) => Ok(e),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn update(&self, caller: &CallContext, record: Entity) -> std::result::Result<(), ServiceError> {
        self.nested(caller, Request::Update { record }).map(|_| ())
    }

    fn delete(&self, caller: &CallContext, target: EntityReference) -> std::result::Result<(), ServiceError> {
        self.nested(caller, Request::Delete { target }).map(|_| ())
    }

    fn retrieve_multiple(
        &self,
        caller: &CallContext,
        query: Query,
    ) -> std::result::Result<EntityCollection, ServiceError> {
        match self.nested(caller, Request::RetrieveMultiple { query })? {
            Response::Collection(c) => Ok(c),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn execute(
        &self,
        caller: &CallContext,
        message: String,
        parameters: Parameters,
    ) -> std::result::Result<Parameters, ServiceError> {
        match self.nested(caller, Request::Custom { message, target: None, parameters })? {
            Response::Custom(p) => Ok(p),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }
}
