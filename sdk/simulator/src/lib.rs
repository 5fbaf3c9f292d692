//! A pipeline simulator for plug-in tests (FakeXrmEasy's place in the Dataverse
//! world), used as a dev-dependency on the host, not in WASM.
//!
//! It runs the server's own code: the registry checks a component as `register`
//! does, steps fire by message, entity, stage and rank with their images and
//! filtering attributes, writes are checked against entity definitions, and
//! asynchronous steps queue system jobs that [`Simulator::run_jobs`] runs. The store
//! is redb held in memory (`Store::in_memory`), gone when the simulator is dropped. Every step's
//! runs are recorded ([`Simulator::runs`]): the context each got, its data calls
//! with their answers, its outcome and its trace.
//!
//! ```no_run
//! use plughost_simulator::{Simulator, step};
//! use plughost::model::{Entity, Value};
//! use plughost::pipeline::Request;
//!
//! let sim = Simulator::new()?;
//! sim.define("account", &[("name", "text"), ("accountnumber", "text")])?;
//! sim.register("account-number", "target/wasm32-wasip2/release/account_number.wasm")?;
//! sim.add_step(step("account-number", "Create", "account", "pre-operation"))?;
//! let id = sim.create(Entity::new("account").with("name", Value::Text("Contoso".into())))?;
//! assert!(sim.record("account", id)?.unwrap().attributes.contains_key("accountnumber"));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, bail};
use plughost::admin::Admin;
use plughost::jobs::{JobQuery, OperationType, RetryPolicy, SystemJob};
use plughost::metadata::{AttributeType, EntityDefinition};
use plughost::model::{Entity, EntityReference};
use plughost::pipeline::{Caller, Pipeline, PipelineError, Request, Response};
use plughost::registry::{StepRecord, StepSpec};
use plughost::runs::{MAX_RECORD_RUNS, RecordedRun};
use plughost::runtime::{Limits, Runtime, RuntimeConfig};
use plughost::store::{Committer, JobQueue, Store, StoreError};
use uuid::Uuid;

pub use plughost;

/// Most rounds of [`Simulator::run_jobs`]: jobs that keep queueing jobs stop here.
pub const MAX_JOB_ROUNDS: usize = 1000;

/// The pipeline, registry and queue of a server, in this process, over a store in memory.
pub struct Simulator {
    admin: Admin,
    pipeline: Arc<Pipeline>,
    queue: JobQueue,
    store: Arc<Store>,
    steps: std::sync::Mutex<Vec<Uuid>>,
}

/// A step spec for `plugin` on `message` of `entity` at `stage` (`pre-validation`,
/// `pre-operation`, `main-operation`, `post-operation`), synchronous; change the
/// rest (mode, rank, images, filtering attributes, configuration) on the result.
pub fn step(plugin: &str, message: &str, entity: &str, stage: &str) -> StepSpec {
    StepSpec {
        plugin: plugin.into(),
        message: message.into(),
        entity: Some(entity.into()),
        stage: stage.parse().unwrap_or_else(|e| panic!("stage '{stage}': {e}")),
        ..StepSpec::default()
    }
}

impl Simulator {
    /// A simulator with an empty store and the server's default limits.
    pub fn new() -> anyhow::Result<Simulator> {
        Self::with_limits(Limits::default())
    }

    /// A simulator whose steps get `limits` unless they set their own.
    pub fn with_limits(limits: Limits) -> anyhow::Result<Simulator> {
        let store = Arc::new(Store::in_memory()?);
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), None)?);
        let committer = Committer::start(store.clone(), 1024);
        let pipeline = Pipeline::new(store.clone(), runtime, committer.clone(), limits)?;
        let queue = JobQueue::new(store.clone(), committer);
        let admin = Admin::new(pipeline.clone(), queue.clone())?;
        Ok(Simulator { admin, pipeline, queue, store, steps: Default::default() })
    }

    /// Defines (or extends) an entity: `(attribute, type)` with types as
    /// `plughost entities define` takes them (`text`, `integer`, `money`, `reference`, ...).
    pub fn define(&self, entity: &str, attributes: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut attrs = std::collections::BTreeMap::new();
        for (name, ty) in attributes {
            let ty: AttributeType = ty.parse().map_err(|e| anyhow::anyhow!("attribute {name}: {e}"))?;
            attrs.insert((*name).to_owned(), ty);
        }
        self.admin.define_entity(&EntityDefinition { name: entity.into(), attributes: attrs })?;
        Ok(())
    }

    /// Registers the component at `wasm` as plug-in `name` (checked as `plughost register` checks it).
    pub fn register(&self, name: &str, wasm: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = wasm.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("read the component {}", path.display()))?;
        self.admin.register(&bytes, name, None, Vec::new())?;
        Ok(())
    }

    /// Adds a step; its runs are recorded (see [`Simulator::runs`]).
    pub fn add_step(&self, mut spec: StepSpec) -> anyhow::Result<StepRecord> {
        spec.record_runs = MAX_RECORD_RUNS;
        let step = self.admin.add_step(spec)?;
        self.steps.lock().unwrap_or_else(|p| p.into_inner()).push(step.id);
        Ok(step)
    }

    /// Stores records as they are, without running any step: the data a test starts from.
    pub fn seed(&self, records: impl IntoIterator<Item = Entity>) -> anyhow::Result<Vec<Uuid>> {
        let mut changes = plughost::store::ChangeSet::default();
        let now = plughost::clock::now_ms();
        let mut ids = Vec::new();
        for mut record in records {
            record.validate().map_err(anyhow::Error::msg)?;
            let Some(definition) = self.store.snapshot()?.definition(&record.logical_name)? else {
                bail!("entity '{}' is not defined: define it first", record.logical_name);
            };
            definition.check_record(&mut record).map_err(anyhow::Error::msg)?;
            let id = *record.id.get_or_insert_with(Uuid::now_v7);
            ids.push(id);
            changes.records.push(plughost::store::RecordChange {
                entity: record.logical_name,
                id,
                expected_version: None,
                new: Some(plughost::store::StoredRecord {
                    version: 1,
                    created_on: now,
                    modified_on: now,
                    attributes: record.attributes,
                }),
            });
        }
        self.pipeline.committer().commit_blocking(changes)?;
        Ok(ids)
    }

    /// Sends a message through the pipeline as the system user, as the data API does.
    pub fn send(&self, request: Request) -> Result<Response, PipelineError> {
        let response = self.pipeline.execute(request, &Caller::default());
        self.rearm()?;
        response
    }

    /// Creates a record through the pipeline; its id.
    pub fn create(&self, record: Entity) -> anyhow::Result<Uuid> {
        match self.send(Request::Create { record })? {
            Response::Created(id) => Ok(id),
            other => bail!("a create answered {other:?}"),
        }
    }

    /// Updates a record through the pipeline.
    pub fn update(&self, record: Entity) -> anyhow::Result<()> {
        self.send(Request::Update { record })?;
        Ok(())
    }

    /// Deletes a record through the pipeline.
    pub fn delete(&self, entity: &str, id: Uuid) -> anyhow::Result<()> {
        self.send(Request::Delete { target: EntityReference { logical_name: entity.into(), id } })?;
        Ok(())
    }

    /// A stored record (read from the store, not through the pipeline).
    pub fn record(&self, entity: &str, id: Uuid) -> anyhow::Result<Option<Entity>> {
        Ok(self.store.snapshot()?.record(entity, id)?.map(|r| r.to_entity(entity, id)))
    }

    /// Every stored record of `entity`, in id order.
    pub fn records(&self, entity: &str) -> anyhow::Result<Vec<Entity>> {
        let mut out = Vec::new();
        self.store.snapshot()?.scan(entity, None, |id, r| {
            out.push(r.to_entity(entity, id));
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Every system job, in creation order.
    pub fn jobs(&self) -> anyhow::Result<Vec<SystemJob>> {
        Ok(self.store.list_jobs(&JobQuery { limit: Some(5000), ..JobQuery::default() })?)
    }

    /// Runs the plug-in and workflow jobs runnable now, and those their runs queue,
    /// one at a time, until none is left (or [`MAX_JOB_ROUNDS`]); returns how many ran.
    /// A retryable failure fails the job at once (no retries, so a test sees it);
    /// postponed and recurring jobs stay queued until their time.
    pub fn run_jobs(&self) -> anyhow::Result<usize> {
        let mut ran = 0;
        for _ in 0..MAX_JOB_ROUNDS {
            let Some(job) = self.queue.lease("simulator", 1, Duration::from_secs(3600))?.into_iter().next() else {
                return Ok(ran);
            };
            let stop = Arc::new(AtomicBool::new(false));
            let run = match job.operation_type {
                OperationType::PluginExecution => self.pipeline.run_job(&job, stop),
                OperationType::Workflow => self.pipeline.run_workflow(&job, stop),
                other => bail!("the simulator runs plug-in and workflow jobs; job {} is {other:?}", job.id),
            };
            // No retries: a retryable failure fails the job, for the test to see at once.
            let retry = RetryPolicy { max_retries: 0, backoff_ms: 0 };
            self.queue.complete(run.completion(&job, retry, None))?;
            self.rearm()?;
            ran += 1;
        }
        Ok(ran)
    }

    /// The recorded runs of the simulator's steps (the newest 1,000; [`Simulator::clear_runs`]
    /// between phases of a long test), oldest first: the context each plug-in got, its
    /// data calls with their answers, its outcome and its trace.
    pub fn runs(&self) -> anyhow::Result<Vec<RecordedRun>> {
        let summaries = self.store.runs(None, None, plughost::store::MAX_RUNS_PAGE)?;
        let mut runs = summaries.iter().rev().map(|s| self.store.run(s.id)).collect::<Result<Vec<_>, _>>()?;
        runs.sort_by_key(|r| r.id);
        Ok(runs)
    }

    /// The trace of every recorded run, oldest first, joined.
    pub fn trace(&self) -> anyhow::Result<String> {
        Ok(self.runs()?.iter().map(|r| r.invocation.trace.as_str()).collect::<Vec<_>>().join(""))
    }

    /// Forgets the runs recorded so far.
    pub fn clear_runs(&self) -> anyhow::Result<()> {
        for s in self.store.runs(None, None, plughost::store::MAX_RUNS_PAGE)? {
            self.store.delete_run(s.id)?;
        }
        Ok(())
    }

    /// The admin layer, for anything else a server does (workflows, bulk jobs, jobs' actions).
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Keeps every step recording: a step whose budget ran below half is topped up
    /// (one read per message; a registry write and a reload only when one is topped up).
    fn rearm(&self) -> Result<(), PipelineError> {
        let left: std::collections::HashMap<Uuid, u32> = self.store.profiles()?.into_iter().collect();
        let steps = self.steps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let low: Vec<Uuid> =
            steps.into_iter().filter(|id| left.get(id).is_none_or(|n| *n < MAX_RECORD_RUNS / 2)).collect();
        if low.is_empty() {
            return Ok(());
        }
        for id in low {
            match self.store.set_profile(id, MAX_RECORD_RUNS) {
                // Removed through `admin()`: nothing to keep recording.
                Err(StoreError::NotFound(_)) => {
                    self.steps.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| *s != id)
                }
                other => other?,
            }
        }
        self.pipeline.reload_steps()
    }
}
