//! The worker protocol: what `plughost worker` and the server say to each other over
//! HTTP (JSON under `/api/v1/worker/`, with the worker token). Both sides use these
//! types; [`PROTOCOL_VERSION`] changes whenever they change, and a worker and a server
//! that speak different versions refuse each other at `hello`.
//!
//! One run of a job, as the protocol sees it: `lease` (jobs with their contexts and
//! fencing tokens) → reads through `read` while the lease holds → `complete` (result,
//! trace, and the buffered writes as effects, applied by the server in the
//! transaction that completes the job, with the same version checks as in-process).
//! `heartbeat` renews leases every third of the lease and says which held jobs were
//! canceled or paused (`interrupted`) or lost; `release` gives back unstarted jobs.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::{JobResult, JobStatus, RunOutcome, SystemJob};
use crate::metadata::EntityDefinition;
use crate::model::{Entity, ExecutionContext, Parameters};
use crate::records::{PluginRecord, StepRecord};
use crate::store::{ChangeSet, CompletionOutcome, JobCompletion, RecordChange, Renewal, StoredRecord};

/// The version of this protocol.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first call of a worker process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// The worker's plughost version.
    pub version: String,
    /// Worker threads it runs.
    pub workers: usize,
}

/// The server's answer to [`Hello`]: the worker's id and the server's job policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub worker: Uuid,
    pub server_version: String,
    /// The lease the server's pool uses: the worker leases for as long.
    pub lease_ms: u64,
    /// The deletion service's retention (0: the service does not run).
    pub completed_job_retention_secs: u64,
    /// The server's default limits, which steps' own limits override.
    pub limits: crate::runtime::Limits,
}

/// A lease request. The completions are borrowed when sent (a retry re-sends them
/// without a copy) and owned when received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest<'a> {
    pub worker: Uuid,
    pub max: usize,
    pub lease_ms: u64,
    /// When no job is runnable, wait up to this long for one (long poll; at most
    /// [`MAX_WAIT_MS`]).
    pub wait_ms: u64,
    /// Completions not sent yet: applied in the same group commit as the lease (one
    /// round trip and one commit instead of two, as an in-process pool's are).
    #[serde(default)]
    pub completions: Cow<'a, [WireCompletion]>,
}

/// The longest a lease request waits for work.
pub const MAX_WAIT_MS: u64 = 5_000;

/// A leased job as it travels: the job and its execution context (which the job
/// record does not carry).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireJob {
    pub job: SystemJob,
    pub context: ExecutionContext,
}

impl WireJob {
    pub fn new(mut job: SystemJob) -> WireJob {
        let context = std::mem::take(&mut job.context);
        WireJob { job, context }
    }

    pub fn into_job(self) -> SystemJob {
        SystemJob { context: self.context, ..self.job }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leased {
    /// What became of the request's completions, in order.
    #[serde(default)]
    pub outcomes: Vec<WireOutcome>,
    pub jobs: Vec<WireJob>,
    /// The registry's generation: when it differs from the worker's, the worker
    /// reloads the registry (and drops code no plug-in uses any more).
    pub generation: u64,
    pub paused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: Uuid,
    pub held: Vec<(Uuid, u64)>,
    pub lease_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Renewed {
    /// One per held job, in order.
    pub renewals: Vec<Renewal>,
    pub generation: u64,
    /// Whether the service is paused: the worker puts back the jobs it has not started.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Release {
    pub worker: Uuid,
    pub jobs: Vec<(Uuid, u64)>,
}

/// A run's report, as the worker sends it. The server applies its own retry policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireCompletion {
    pub id: Uuid,
    pub fencing_token: u64,
    pub result: JobResult,
    pub records: Vec<RecordChange>,
    /// Jobs the run's writes queued.
    pub jobs: Vec<WireJob>,
    /// Workflow log rows the run wrote.
    #[serde(default)]
    pub log: Vec<crate::store::LogRow>,
    /// Runs recorded for steps set to record.
    #[serde(default)]
    pub runs: Vec<crate::runs::RecordedRun>,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub delete_on_success: bool,
    pub purge_before: Option<i64>,
    pub output: Parameters,
    pub message: Option<String>,
}

impl WireCompletion {
    pub fn new(c: JobCompletion) -> WireCompletion {
        WireCompletion {
            id: c.id,
            fencing_token: c.fencing_token,
            result: c.result,
            records: c.effects.records,
            jobs: c.effects.jobs.into_iter().map(WireJob::new).collect(),
            log: c.effects.log,
            runs: c.effects.runs,
            trace: c.trace,
            fuel_used: c.fuel_used,
            duration_us: c.duration_us,
            delete_on_success: c.delete_on_success,
            purge_before: c.purge_before,
            output: c.output,
            message: c.message,
        }
    }

    /// The completion to apply, under the server's retry policy.
    pub fn into_completion(self, max_retries: u32, backoff_ms: i64) -> JobCompletion {
        JobCompletion {
            id: self.id,
            fencing_token: self.fencing_token,
            result: self.result,
            effects: ChangeSet {
                records: self.records,
                jobs: self.jobs.into_iter().map(WireJob::into_job).collect(),
                log: self.log,
                runs: self.runs,
            },
            trace: self.trace,
            fuel_used: self.fuel_used,
            duration_us: self.duration_us,
            delete_on_success: self.delete_on_success,
            max_retries,
            backoff_ms,
            purge_before: self.purge_before,
            output: self.output,
            message: self.message,
        }
    }
}

/// Completions sent on their own (borrowed when sent, owned when received).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Completions<'a> {
    pub worker: Uuid,
    pub completions: Cow<'a, [WireCompletion]>,
}

/// What became of one completion (see [`CompletionOutcome`]); `Error` when the
/// server could not record it (the job's lease will expire and it runs again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireOutcome {
    Recorded { status: JobStatus, run: RunOutcome },
    Deleted,
    Stale,
    Requeued,
    Error { code: String, message: String },
}

impl From<CompletionOutcome> for WireOutcome {
    fn from(o: CompletionOutcome) -> Self {
        match o {
            CompletionOutcome::Recorded { status, run } => WireOutcome::Recorded { status, run },
            CompletionOutcome::Deleted => WireOutcome::Deleted,
            CompletionOutcome::Stale => WireOutcome::Stale,
            CompletionOutcome::Requeued => WireOutcome::Requeued,
        }
    }
}

/// A read of a plug-in running on a worker, allowed while `job` is leased with `token`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    pub job: Uuid,
    pub token: u64,
    pub read: Read,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "read")]
pub enum Read {
    Record {
        entity: String,
        id: Uuid,
    },
    /// Up to `max` records of `entity` in id order after `after`.
    Scan {
        entity: String,
        after: Option<Uuid>,
        max: usize,
    },
    Definition {
        entity: String,
    },
    /// Up to `max` rows of the (bulk import) job, from row `from`.
    Rows {
        from: u64,
        max: usize,
    },
    /// Who a user is and what it may do (the job's user, or a step's run-as user).
    Principal {
        user: Uuid,
    },
}

/// Most records one scan read returns.
pub const MAX_SCAN: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAnswer {
    Record(Option<StoredRecord>),
    Records(Vec<(Uuid, StoredRecord)>),
    Definition(Option<EntityDefinition>),
    Rows(Vec<(u64, Entity)>),
    Principal(Option<crate::security::Principal>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registry {
    pub generation: u64,
    pub plugins: Vec<PluginRecord>,
    pub steps: Vec<StepRecord>,
    /// The active workflows' frozen versions: the triggers a worker's writes fire.
    pub workflows: Vec<WireWorkflow>,
    /// Steps set to record their runs, with the runs each has left.
    #[serde(default)]
    pub profiles: Vec<(Uuid, u32)>,
}

/// An active workflow version on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireWorkflow {
    pub id: Uuid,
    pub version: u32,
    pub owner: Uuid,
    pub json: String,
}

impl WireWorkflow {
    pub fn new(w: &crate::workflow::ActiveWorkflow) -> WireWorkflow {
        WireWorkflow { id: w.id, version: w.version, owner: w.owner, json: w.json.to_string() }
    }

    pub fn into_active(self) -> Result<crate::workflow::ActiveWorkflow, String> {
        let definition = crate::workflow::Definition::parse(self.json.as_bytes())?;
        Ok(crate::workflow::ActiveWorkflow {
            id: self.id,
            version: self.version,
            owner: self.owner,
            definition: definition.into(),
            json: self.json.into(),
        })
    }
}

/// A worker as the server knows it (`plughost workers list`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub workers: usize,
    /// UTC ms.
    pub started: i64,
    pub last_heartbeat: i64,
    /// Jobs it holds now (leased and not completed or released).
    pub leased: u64,
    /// Runs it completed that succeeded, and that failed for good.
    pub done: u64,
    pub failures: u64,
    /// Not heard from for longer than a lease: its jobs are recovered.
    pub lost: bool,
}
