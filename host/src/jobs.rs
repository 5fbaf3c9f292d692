//! System jobs (Dataverse AsyncOperation): the durable record of an asynchronous
//! operation, its state machine, and the numbers Dataverse gives them.
//!
//! **Invariant:** a job's status changes only through [`JobStatus::can_become`];
//! the store applies no transition that table does not allow.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{AssemblyHash, EntityReference, ExecutionContext, Parameters};

/// The state of a system job (statecode), derived from its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Ready,
    Suspended,
    Locked,
    Completed,
}

impl JobState {
    /// Dataverse's statecode.
    pub fn code(self) -> u32 {
        match self {
            JobState::Ready => 0,
            JobState::Suspended => 1,
            JobState::Locked => 2,
            JobState::Completed => 3,
        }
    }
}

/// The status of a system job (statuscode), with Dataverse's names and numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobStatus {
    WaitingForResources,
    Waiting,
    InProgress,
    Pausing,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::WaitingForResources,
        JobStatus::Waiting,
        JobStatus::InProgress,
        JobStatus::Pausing,
        JobStatus::Canceling,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    /// Dataverse's statuscode.
    pub fn code(self) -> u32 {
        match self {
            JobStatus::WaitingForResources => 0,
            JobStatus::Waiting => 10,
            JobStatus::InProgress => 20,
            JobStatus::Pausing => 21,
            JobStatus::Canceling => 22,
            JobStatus::Succeeded => 30,
            JobStatus::Failed => 31,
            JobStatus::Canceled => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::WaitingForResources => "WaitingForResources",
            JobStatus::Waiting => "Waiting",
            JobStatus::InProgress => "InProgress",
            JobStatus::Pausing => "Pausing",
            JobStatus::Canceling => "Canceling",
            JobStatus::Succeeded => "Succeeded",
            JobStatus::Failed => "Failed",
            JobStatus::Canceled => "Canceled",
        }
    }

    pub fn state(self) -> JobState {
        match self {
            JobStatus::WaitingForResources => JobState::Ready,
            JobStatus::Waiting => JobState::Suspended,
            JobStatus::InProgress | JobStatus::Pausing | JobStatus::Canceling => JobState::Locked,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled => JobState::Completed,
        }
    }

    /// The legal transitions, in one table (Dataverse "Asynchronous operation states").
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            // A worker locks a ready job; a user postpones, pauses or cancels it; the
            // host fails it when it cannot run (its step was unregistered).
            (WaitingForResources, InProgress | Waiting | Canceled | Failed)
            // A waiting job becomes ready (resume, postpone-until reached), is canceled or failed.
            | (Waiting, WaitingForResources | Canceled | Failed)
            // A running job finishes, is released (lease expiry, shutdown), asked to pause or cancel,
            // or goes back to waiting (retry with backoff, next recurrence).
            | (InProgress, Succeeded | Failed | Canceled | WaitingForResources | Waiting | Pausing | Canceling)
            // A job being paused may still be canceled (the user changed their mind).
            | (Pausing, Waiting | Succeeded | Failed | WaitingForResources | Canceling)
            | (Canceling, Canceled | Succeeded | Failed)
            // A user retries a failed or canceled job.
            | (Failed | Canceled, WaitingForResources)
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.to_ascii_lowercase();
        JobStatus::ALL
            .into_iter()
            .find(|st| st.name().to_ascii_lowercase() == key || st.code().to_string() == key)
            .ok_or_else(|| {
                let names: Vec<_> = JobStatus::ALL.iter().map(|s| format!("{} ({})", s.name(), s.code())).collect();
                format!("unknown status '{s}': use one of {}", names.join(", "))
            })
    }
}

/// What kind of operation a job runs (Dataverse operationtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// An asynchronous plug-in step (Dataverse 1, "Event").
    PluginExecution,
    /// System-job cleanup (Dataverse 14, "Deletion Service"): purges completed jobs
    /// older than the configured retention, on a recurrence.
    DeletionService,
    /// Deletes the records a query selects, through the pipeline (Dataverse 13).
    BulkDelete,
    /// Creates records from a CSV or JSON-lines file, through the pipeline (Dataverse 5, "Import").
    BulkImport,
    /// A run of a workflow (Dataverse 10, "Workflow"): see [`crate::workflow`].
    Workflow,
    /// One action (cancel, pause, resume, postpone, retry, delete) on every job a
    /// filter selects, in batches (plughost 100; the dashboard's "all matching"):
    /// see [`crate::bulk::JobSelection`]. Stored jobs keep the variant order: new
    /// ones go last.
    JobAction,
    /// Renders one email per record a query selects (Dataverse 2, "Bulk E-mail",
    /// `SendBulkMail`): see [`crate::mail`].
    BulkEmail,
    /// One activity per member of a campaign activity's lists (Dataverse 6,
    /// "Activity Propagation", `DistributeCampaignActivity`).
    ActivityPropagation,
    /// Sends Pending Send emails over SMTP (Dataverse 50, "Outgoing Activity"), on a
    /// recurrence and when new ones are queued.
    OutgoingActivity,
}

impl OperationType {
    pub fn code(self) -> u32 {
        match self {
            OperationType::PluginExecution => 1,
            OperationType::DeletionService => 14,
            OperationType::BulkDelete => 13,
            OperationType::BulkImport => 5,
            OperationType::Workflow => 10,
            OperationType::JobAction => 100,
            OperationType::BulkEmail => 2,
            OperationType::ActivityPropagation => 6,
            OperationType::OutgoingActivity => 50,
        }
    }

    pub const ALL: [OperationType; 9] = [
        OperationType::PluginExecution,
        OperationType::BulkImport,
        OperationType::Workflow,
        OperationType::BulkDelete,
        OperationType::DeletionService,
        OperationType::JobAction,
        OperationType::BulkEmail,
        OperationType::ActivityPropagation,
        OperationType::OutgoingActivity,
    ];

    /// The name people read (Dataverse's label).
    pub fn label(self) -> &'static str {
        match self {
            OperationType::PluginExecution => "Plug-in",
            OperationType::DeletionService => "Deletion service",
            OperationType::BulkDelete => "Bulk delete",
            OperationType::BulkImport => "Import",
            OperationType::Workflow => "Workflow",
            OperationType::JobAction => "Bulk job action",
            OperationType::BulkEmail => "Bulk e-mail",
            OperationType::ActivityPropagation => "Activity propagation",
            OperationType::OutgoingActivity => "Outgoing activity",
        }
    }

    /// The name in the API (`plugin_execution`, …).
    pub fn name(self) -> &'static str {
        match self {
            OperationType::PluginExecution => "plugin_execution",
            OperationType::DeletionService => "deletion_service",
            OperationType::BulkDelete => "bulk_delete",
            OperationType::BulkImport => "bulk_import",
            OperationType::Workflow => "workflow",
            OperationType::JobAction => "job_action",
            OperationType::BulkEmail => "bulk_email",
            OperationType::ActivityPropagation => "activity_propagation",
            OperationType::OutgoingActivity => "outgoing_activity",
        }
    }
}

impl std::str::FromStr for OperationType {
    type Err = String;

    /// A type by its API name or its Dataverse code.
    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.to_ascii_lowercase();
        OperationType::ALL.into_iter().find(|t| t.name() == key || t.code().to_string() == key).ok_or_else(|| {
            let names: Vec<_> = OperationType::ALL.iter().map(|t| format!("{} ({})", t.name(), t.code())).collect();
            format!("unknown operation type '{s}': use one of {}", names.join(", "))
        })
    }
}

/// What a step's asynchronous runs did, kept by the store as jobs complete (the
/// dashboard's per-step counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStats {
    pub succeeded: u64,
    /// Failed for good.
    pub failed: u64,
    /// Retryable failures scheduled again.
    pub retried: u64,
    pub fuel: u64,
    pub run_us: u64,
}

/// What the runs that ended in one minute did (the dashboard's charts): kept by the
/// store as jobs complete, one row per minute for a day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteStats {
    pub succeeded: u64,
    pub failed: u64,
    /// Run durations: bucket `i` counts runs of [`MinuteStats::bucket_floor_us`]`(i)`
    /// up to the next bucket's floor (steps of √2 from 64 µs; the last has no end).
    pub buckets: Vec<u64>,
}

impl MinuteStats {
    pub const BUCKETS: usize = 44;

    /// The shortest duration of bucket `i`, in microseconds.
    pub fn bucket_floor_us(i: usize) -> f64 {
        64.0 * std::f64::consts::SQRT_2.powi(i as i32)
    }

    fn bucket_of(us: u64) -> usize {
        let mut i = 0;
        while i + 1 < Self::BUCKETS && Self::bucket_floor_us(i + 1) <= us as f64 {
            i += 1;
        }
        i
    }

    pub fn record(&mut self, succeeded: bool, duration_us: u64) {
        if succeeded {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.buckets.resize(Self::BUCKETS, 0);
        self.buckets[Self::bucket_of(duration_us)] += 1;
    }

    pub fn add(&mut self, other: &MinuteStats) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.buckets.resize(Self::BUCKETS, 0);
        for (i, n) in other.buckets.iter().enumerate().take(Self::BUCKETS) {
            self.buckets[i] += n;
        }
    }

    /// The `q` quantile of the durations (0 without runs): the geometric middle of
    /// its bucket, so within about ±19% of the true value.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (Self::bucket_floor_us(i) * 2f64.powf(0.25)) as u64;
            }
        }
        0
    }
}

impl StepStats {
    pub fn add(&mut self, other: &StepStats) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retried += other.retried;
        self.fuel = self.fuel.saturating_add(other.fuel);
        self.run_us = self.run_us.saturating_add(other.run_us);
    }
}

/// A durable asynchronous operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemJob {
    /// Given by the store when the job is queued: time-ordered, so id order is creation order.
    pub id: Uuid,
    /// Creation order across all jobs; the queue runs jobs in this order.
    pub sequence: u64,
    pub name: String,
    pub operation_type: OperationType,
    pub status: JobStatus,
    /// UTC milliseconds.
    pub created_on: i64,
    pub started_on: Option<i64>,
    pub completed_on: Option<i64>,
    /// The job does not start before this time (UTC milliseconds).
    pub postpone_until: Option<i64>,
    /// Jobs with the same token run one at a time in creation order.
    pub dependency_token: Option<String>,
    /// A recurring job's RRULE (see `recurrence`) and its start time (UTC ms):
    /// between runs it waits with postpone-until at the next occurrence.
    pub recurrence_pattern: Option<String>,
    pub recurrence_start: Option<i64>,
    pub correlation_id: Uuid,
    pub depth: u32,
    /// The step that queued the job and the assembly it pointed at then.
    pub step_id: Option<Uuid>,
    pub assembly: Option<AssemblyHash>,
    /// The record the event was about (regardingobjectid).
    pub regarding: Option<EntityReference>,
    /// The execution context the plug-in will receive. Stored in a table of its own,
    /// written once (`job_contexts`), never in the job's record, which every
    /// transition rewrites: so it is skipped here, and [`JobView`] shows it.
    #[serde(skip)]
    pub context: ExecutionContext,
    /// The worker holding the job, its lease expiry (UTC ms) and the fencing token.
    pub host_id: Option<String>,
    pub lease_expiry: Option<i64>,
    pub fencing_token: u64,
    pub retry_count: u32,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// What the last run produced: a plug-in's output parameters, or an operation's
    /// results (e.g. how many jobs the deletion service deleted).
    pub output: Parameters,
    /// How often this job's lease expired while it was locked (its worker died or
    /// hung); past the policy's maximum it fails with `lease_expired`. Reset when an
    /// occurrence completes and when a user retries the job.
    pub lease_expirations: u32,
    /// A recurring job: how many occurrences have run to completion (COUNT bounds it).
    pub recurrence_runs: u32,
}

impl SystemJob {
    /// The recurring deletion service job: first run now, then on `pattern`.
    pub fn deletion_service(pattern: &str, now: i64) -> SystemJob {
        SystemJob {
            name: "Deletion Service".into(),
            operation_type: OperationType::DeletionService,
            step_id: None,
            regarding: None,
            recurrence_pattern: Some(pattern.to_owned()),
            recurrence_start: Some(now),
            // The first occurrence is now; completing it computes the next one after it.
            postpone_until: Some(now),
            ..SystemJob::plugin_execution("", Uuid::nil(), None, ExecutionContext::default())
        }
    }

    /// The recurring outgoing-mail job: first run now, then on `pattern`, and
    /// whenever new emails become Pending Send.
    pub fn outgoing_mail(pattern: &str, now: i64) -> SystemJob {
        SystemJob {
            name: "Outgoing e-mail".into(),
            operation_type: OperationType::OutgoingActivity,
            ..SystemJob::deletion_service(pattern, now)
        }
    }

    /// A new, ready plug-in execution job for `step` with the context it will run with.
    pub fn plugin_execution(
        step_name: &str,
        step_id: Uuid,
        assembly: Option<AssemblyHash>,
        context: ExecutionContext,
    ) -> SystemJob {
        SystemJob {
            // The store gives the id when the job is queued.
            id: Uuid::nil(),
            sequence: 0,
            name: step_name.to_owned(),
            operation_type: OperationType::PluginExecution,
            status: JobStatus::WaitingForResources,
            created_on: crate::clock::now_ms(),
            started_on: None,
            completed_on: None,
            postpone_until: None,
            dependency_token: None,
            recurrence_pattern: None,
            recurrence_start: None,
            correlation_id: context.correlation_id,
            depth: context.depth,
            step_id: Some(step_id),
            assembly,
            regarding: context
                .primary_entity_id
                .map(|id| EntityReference { logical_name: context.primary_entity_name.clone(), id }),
            context,
            host_id: None,
            lease_expiry: None,
            fencing_token: 0,
            retry_count: 0,
            error_code: None,
            message: None,
            trace: String::new(),
            fuel_used: 0,
            duration_us: 0,
            output: Parameters::new(),
            lease_expirations: 0,
            recurrence_runs: 0,
        }
    }

    pub fn state(&self) -> JobState {
        self.status.state()
    }

    /// Whether the job is locked (leased) with fencing token `token`: what a worker
    /// must show to renew, release or complete it, or to read for it.
    pub fn is_leased_with(&self, token: u64) -> bool {
        self.state() == JobState::Locked && self.fencing_token == token
    }

    /// Whether another occurrence may still run: COUNT not used up and an occurrence
    /// of the pattern after `now` (a job without a recurrence has none).
    pub fn has_occurrences_left(&self, now: i64) -> bool {
        matches!(self.next_run_after(now), Ok(Some(_)))
    }

    /// A recurring job's next occurrence after its current one: the first of the
    /// pattern after both `now` and the time it was due (missed occurrences are not
    /// run one after another), unless COUNT runs are done.
    fn next_occurrence(&self, now: i64) -> Result<Option<i64>, String> {
        let due = self.postpone_until.map_or(now, |due| due.max(now));
        self.next_run_after(self.recurrence_start.map_or(due, |start| due.max(start - 1)))
    }

    /// The pattern's first occurrence after `after`, unless COUNT runs are done or the
    /// job has no recurrence.
    fn next_run_after(&self, after: i64) -> Result<Option<i64>, String> {
        let (Some(pattern), Some(start)) = (&self.recurrence_pattern, self.recurrence_start) else { return Ok(None) };
        if crate::recurrence::count(pattern)?.is_some_and(|count| self.recurrence_runs >= count) {
            return Ok(None);
        }
        crate::recurrence::next_after(pattern, start, after)
    }
}

/// A job as the API's JSON and `--json` output show it: the record, its context,
/// and Dataverse's state and status numbers (the stored record has only the status).
#[derive(Clone, Debug, Serialize)]
pub struct JobView<'a> {
    #[serde(flatten)]
    pub job: &'a SystemJob,
    pub context: &'a ExecutionContext,
    /// State name (Ready, Suspended, Locked, Completed).
    pub state: JobState,
    pub statecode: u32,
    pub statuscode: u32,
    /// Who queued the job (Dataverse's owner of the system job; nil: the host).
    pub createdby: uuid::Uuid,
}

impl<'a> JobView<'a> {
    pub fn of(job: &'a SystemJob) -> JobView<'a> {
        JobView {
            job,
            createdby: job.context.initiating_user_id,
            context: &job.context,
            state: job.state(),
            statecode: job.state().code(),
            statuscode: job.status.code(),
        }
    }
}

/// How a worker's run of a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobResult {
    Succeeded,
    /// A bulk job finished a batch and has more to do: keep the output (its
    /// progress) and run again at once.
    Progress,
    Failed {
        code: String,
        message: String,
    },
    Retry {
        code: String,
        message: String,
    },
    /// A workflow run reached a wait: the job waits (Suspended/Waiting) until
    /// `until`, or until the watched record changes, and keeps the output (its position).
    Wait {
        until: Option<i64>,
        watch: Option<Watch>,
    },
    /// A workflow stopped itself as canceled: the job is Canceled, with the run's effects.
    Canceled {
        message: String,
    },
}

/// What wakes a waiting workflow run: a change to one of `attributes` of a record
/// (any change when empty), or its deletion (which cancels the run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub entity: String,
    pub id: Uuid,
    pub attributes: Vec<String>,
    /// The record's version the run evaluated its wait against: if the record has
    /// changed since, the run is made ready again at once instead of waiting (an
    /// update committed while the run entered its wait is not lost).
    pub version: Option<u64>,
}

/// What a run reports besides its result; kept on the job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// The summary for the job's message when it succeeds (bulk jobs' progress).
    pub message: Option<String>,
    pub output: Parameters,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
}

/// Retries of retryable failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    /// The first retry's delay; doubled for each further retry.
    pub backoff_ms: i64,
}

/// What a completed run did to its job: what the metrics count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    /// The run succeeded (a recurring job then waits for its next occurrence).
    Succeeded,
    /// The run failed for good (a recurring job then waits for its next occurrence).
    Failed,
    /// A retryable failure: the job runs again after a backoff.
    Retrying,
    /// Canceled while it ran: its effects were discarded.
    Canceled,
    /// Paused while it ran: its effects were discarded; it waits to be resumed.
    Paused,
    /// A bulk job's batch: it runs again at once for the rest.
    MoreToDo,
    /// A workflow run reached a wait.
    Waiting,
}

/// The job policy: what becomes of `old`, a locked job, after a run that ended with
/// `result`. A pure function of its arguments; the store applies the decision (and,
/// for a success, writes the run's effects in the same transaction).
pub fn after_run(
    old: &SystemJob,
    result: JobResult,
    report: RunReport,
    retry: &RetryPolicy,
    now: i64,
) -> (SystemJob, RunOutcome) {
    let mut new = SystemJob {
        host_id: None,
        lease_expiry: None,
        trace: report.trace,
        fuel_used: report.fuel_used,
        duration_us: report.duration_us,
        ..old.clone()
    };
    let outcome = match (old.status, result) {
        (JobStatus::Canceling, _) => {
            new.status = JobStatus::Canceled;
            new.completed_on = Some(now);
            new.message = Some("canceled while running; its effects were discarded".into());
            return (new, RunOutcome::Canceled);
        }
        (JobStatus::Pausing, _) => {
            new.status = JobStatus::Waiting;
            new.message = Some("paused while running; its effects were discarded; resume runs it again".into());
            return (new, RunOutcome::Paused);
        }
        (_, result @ (JobResult::Progress | JobResult::Succeeded)) => {
            new.error_code = None;
            new.message = report.message;
            new.output = report.output;
            if result == JobResult::Progress {
                new.status = JobStatus::WaitingForResources;
                return (new, RunOutcome::MoreToDo);
            }
            new.status = JobStatus::Succeeded;
            RunOutcome::Succeeded
        }
        (_, JobResult::Wait { until, .. }) => {
            new.error_code = None;
            new.message = report.message;
            new.output = report.output;
            new.status = JobStatus::Waiting;
            new.postpone_until = until;
            return (new, RunOutcome::Waiting);
        }
        (_, JobResult::Canceled { message }) => {
            new.output = report.output;
            new.status = JobStatus::Canceled;
            new.message = Some(message);
            RunOutcome::Canceled
        }
        (_, JobResult::Retry { code, message }) if old.retry_count < retry.max_retries => {
            let backoff = retry.backoff_ms.saturating_mul(1i64 << old.retry_count.min(20));
            new.status = JobStatus::Waiting;
            new.postpone_until = Some(now.saturating_add(backoff));
            new.retry_count += 1;
            new.error_code = Some(code);
            new.message =
                Some(format!("{message} (retry {} of {} in {backoff} ms)", new.retry_count, retry.max_retries));
            return (new, RunOutcome::Retrying);
        }
        (_, JobResult::Retry { code, message }) => {
            new.status = JobStatus::Failed;
            new.error_code = Some(code);
            new.message = Some(format!("{message} (gave up after {} retries)", old.retry_count));
            RunOutcome::Failed
        }
        (_, JobResult::Failed { code, message }) => {
            new.status = JobStatus::Failed;
            new.error_code = Some(code);
            new.message = Some(message);
            RunOutcome::Failed
        }
    };
    // The occurrence is over, one way or the other.
    new.completed_on = Some(now);
    new.lease_expirations = 0;
    if new.recurrence_pattern.is_some() {
        new.recurrence_runs = old.recurrence_runs.saturating_add(1);
        new.retry_count = 0;
        match new.next_occurrence(now) {
            Ok(Some(next)) => {
                // A recurring job waits for its next occurrence instead of completing.
                new.status = JobStatus::Waiting;
                new.postpone_until = Some(next);
                new.completed_on = None;
            }
            Ok(None) => {}
            Err(m) => new.message = Some(format!("recurrence stopped: {m}")),
        }
    }
    (new, outcome)
}

/// Code of a job failed because its lease kept expiring.
pub const LEASE_EXPIRED: &str = "lease_expired";

/// The job policy for a locked job whose lease expired (its worker died or hung):
/// it runs again, unless its lease has now expired more than `max_expirations`
/// times, when the run fails with [`LEASE_EXPIRED`]. A job being canceled is
/// canceled; one being paused waits.
pub fn after_lease_expired(old: &SystemJob, max_expirations: u32, now: i64) -> SystemJob {
    let expirations = old.lease_expirations.saturating_add(1);
    if old.status == JobStatus::InProgress && expirations > max_expirations {
        let message = format!(
            "the job's lease expired {expirations} times (its worker died or stopped answering each time), more than the maximum of {max_expirations}: giving up"
        );
        let report = RunReport { trace: old.trace.clone(), ..RunReport::default() };
        let failed = JobResult::Failed { code: LEASE_EXPIRED.into(), message };
        return after_run(old, failed, report, &RetryPolicy { max_retries: 0, backoff_ms: 0 }, now).0;
    }
    SystemJob { lease_expirations: expirations, ..released(old, now) }
}

/// A locked job taken back from its worker without a result (shutdown, or the
/// worker never started it): a running job is ready again, one being canceled is
/// canceled, one being paused waits.
pub fn released(old: &SystemJob, now: i64) -> SystemJob {
    let mut new = old.clone();
    new.status = match old.status {
        JobStatus::Canceling => JobStatus::Canceled,
        JobStatus::Pausing => JobStatus::Waiting,
        _ => JobStatus::WaitingForResources,
    };
    if new.status == JobStatus::Canceled {
        new.completed_on = Some(now);
    }
    new.host_id = None;
    new.lease_expiry = None;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_dataverse_numbers() {
        let table: Vec<_> = JobStatus::ALL.iter().map(|s| (s.state().code(), s.code())).collect();
        assert_eq!(table, vec![(0, 0), (1, 10), (2, 20), (2, 21), (2, 22), (3, 30), (3, 31), (3, 32)]);
        assert_eq!("InProgress".parse::<JobStatus>().unwrap(), JobStatus::InProgress);
        assert_eq!("31".parse::<JobStatus>().unwrap(), JobStatus::Failed);
    }

    #[test]
    fn minute_statistics_estimate_quantiles_within_their_bucket() {
        let mut m = MinuteStats::default();
        assert_eq!(m.quantile_us(0.5), 0, "no runs, no duration");
        // 1 ms .. 100 ms, one run each: p50 ~ 50 ms, p95 ~ 95 ms.
        for ms in 1..=100u64 {
            m.record(ms % 10 != 0, ms * 1000);
        }
        assert_eq!((m.succeeded, m.failed), (90, 10));
        let near = |got: u64, want: f64| (got as f64 / want - 1.0).abs() < 0.2;
        assert!(near(m.quantile_us(0.5), 50_000.0), "{}", m.quantile_us(0.5));
        assert!(near(m.quantile_us(0.95), 95_000.0), "{}", m.quantile_us(0.95));
        let mut sum = MinuteStats::default();
        sum.add(&m);
        sum.add(&m);
        assert_eq!((sum.succeeded, sum.quantile_us(0.5)), (180, m.quantile_us(0.5)));
        // Out of range on both sides lands in the end buckets.
        let mut edges = MinuteStats::default();
        edges.record(true, 0);
        edges.record(true, u64::MAX);
        assert_eq!((edges.buckets[0], edges.buckets[MinuteStats::BUCKETS - 1]), (1, 1));
    }

    const MIN: i64 = 60_000;
    /// 2026-01-05T00:00:00Z.
    const T0: i64 = 1_767_571_200_000;
    const RETRY: RetryPolicy = RetryPolicy { max_retries: 2, backoff_ms: 1000 };

    fn locked(pattern: Option<&str>, due: Option<i64>) -> SystemJob {
        SystemJob {
            status: JobStatus::InProgress,
            recurrence_pattern: pattern.map(str::to_owned),
            recurrence_start: pattern.map(|_| T0),
            postpone_until: due,
            host_id: Some("h".into()),
            lease_expiry: Some(T0 + 100 * MIN),
            ..SystemJob::plugin_execution("job", Uuid::nil(), None, ExecutionContext::default())
        }
    }

    fn run(job: &SystemJob, result: JobResult, now: i64) -> (SystemJob, RunOutcome) {
        after_run(job, result, RunReport::default(), &RETRY, now)
    }

    fn failed() -> JobResult {
        JobResult::Failed { code: "plugin_error".into(), message: "no".into() }
    }

    #[test]
    fn a_run_ends_as_its_result_says() {
        let (done, outcome) = run(&locked(None, None), JobResult::Succeeded, T0);
        assert_eq!((done.status, outcome, done.completed_on), (JobStatus::Succeeded, RunOutcome::Succeeded, Some(T0)));
        assert_eq!((done.host_id, done.lease_expiry), (None, None), "a finished job holds no lease");
        let retry = JobResult::Retry { code: "plugin_retryable".into(), message: "later".into() };
        let (again, outcome) = run(&locked(None, None), retry.clone(), T0);
        assert_eq!(
            (again.status, outcome, again.postpone_until),
            (JobStatus::Waiting, RunOutcome::Retrying, Some(T0 + 1000))
        );
        let third = SystemJob { retry_count: 2, ..locked(None, None) };
        let (gave_up, outcome) = run(&third, retry, T0);
        assert_eq!((gave_up.status, outcome), (JobStatus::Failed, RunOutcome::Failed));
        let canceling = SystemJob { status: JobStatus::Canceling, ..locked(None, None) };
        assert_eq!(run(&canceling, JobResult::Succeeded, T0).1, RunOutcome::Canceled);
        let pausing = SystemJob { status: JobStatus::Pausing, ..locked(Some("FREQ=DAILY"), Some(T0)) };
        let (paused, outcome) = run(&pausing, JobResult::Succeeded, T0);
        assert_eq!((paused.status, outcome, paused.recurrence_runs), (JobStatus::Waiting, RunOutcome::Paused, 0));
        assert_eq!(run(&locked(None, None), JobResult::Progress, T0).0.status, JobStatus::WaitingForResources);
    }

    #[test]
    fn a_recurring_job_goes_on_after_now_and_never_past_its_count() {
        let pattern = "FREQ=MINUTELY;COUNT=3";
        // Its first occurrence, on time: the next is the one after.
        let (next, outcome) = run(&locked(Some(pattern), Some(T0)), JobResult::Succeeded, T0 + 50);
        assert_eq!((next.status, outcome), (JobStatus::Waiting, RunOutcome::Succeeded), "a success counts as one");
        assert_eq!((next.postpone_until, next.recurrence_runs, next.completed_on), (Some(T0 + MIN), 1, None));
        // Resumed (no due time) at 10.5 minutes: one run now, then the next after now,
        // not the occurrences in between.
        let resumed = SystemJob { postpone_until: None, ..locked(Some(pattern), None) };
        let resumed = SystemJob { recurrence_runs: 1, ..resumed };
        let (next, _) = run(&resumed, failed(), T0 + 10 * MIN + 30_000);
        assert_eq!(
            (next.status, next.postpone_until, next.recurrence_runs),
            (JobStatus::Waiting, Some(T0 + 11 * MIN), 2)
        );
        assert_eq!(next.error_code.as_deref(), Some("plugin_error"), "a failed occurrence keeps its error");
        // The third run uses up COUNT, even though the pattern has later occurrences.
        let (last, _) = run(
            &SystemJob { recurrence_runs: 2, ..locked(Some(pattern), Some(T0 + 11 * MIN)) },
            JobResult::Succeeded,
            T0 + 11 * MIN,
        );
        assert_eq!((last.status, last.recurrence_runs), (JobStatus::Succeeded, 3));
        assert!(!last.has_occurrences_left(T0 + 11 * MIN));
    }

    #[test]
    fn after_downtime_one_missed_occurrence_runs() {
        // Due two hours ago: it runs once now and then waits for the next minute.
        let (next, _) = run(&locked(Some("FREQ=MINUTELY"), Some(T0)), JobResult::Succeeded, T0 + 120 * MIN + 5);
        assert_eq!((next.postpone_until, next.recurrence_runs), (Some(T0 + 121 * MIN), 1));
    }

    #[test]
    fn a_lease_that_keeps_expiring_fails_the_job() {
        let job = locked(None, None);
        let once = after_lease_expired(&job, 2, T0);
        assert_eq!(
            (once.status, once.lease_expirations, once.host_id.clone()),
            (JobStatus::WaitingForResources, 1, None)
        );
        let third = SystemJob { lease_expirations: 2, ..locked(None, None) };
        let failed = after_lease_expired(&third, 2, T0);
        assert_eq!((failed.status, failed.error_code.as_deref()), (JobStatus::Failed, Some(LEASE_EXPIRED)));
        assert!(failed.message.unwrap().contains("3 times"));
        let canceling = SystemJob { status: JobStatus::Canceling, lease_expirations: 9, ..locked(None, None) };
        assert_eq!(after_lease_expired(&canceling, 2, T0).status, JobStatus::Canceled);
    }

    #[test]
    fn completed_jobs_only_go_back_through_retry() {
        assert!(!JobStatus::Succeeded.can_become(JobStatus::InProgress));
        assert!(!JobStatus::Failed.can_become(JobStatus::Succeeded));
        assert!(JobStatus::Failed.can_become(JobStatus::WaitingForResources));
        assert!(!JobStatus::WaitingForResources.can_become(JobStatus::Succeeded));
        assert!(!JobStatus::Canceled.can_become(JobStatus::Failed));
        assert!(JobStatus::Pausing.can_become(JobStatus::Canceling), "a job being paused can still be canceled");
    }
}

/// The index a job listing reads (every one is in id order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobIndex {
    Owner,
    Step,
    Status,
    Id,
}

impl JobIndex {
    pub fn name(self) -> &'static str {
        match self {
            JobIndex::Owner => "owner",
            JobIndex::Step => "step",
            JobIndex::Status => "status",
            JobIndex::Id => "id and created time",
        }
    }
}

/// A page of a job listing that may stop before it is full (see
/// [`crate::store::Store::list_jobs_page`]).
#[derive(Clone, Debug, Default)]
pub struct JobPage {
    pub jobs: Vec<SystemJob>,
    /// How many jobs were read to fill it.
    pub scanned: usize,
    /// Where the next page starts (the last id read), when there may be more.
    pub next_after: Option<Uuid>,
    /// The listing stopped at its read budget before the page was full: more
    /// jobs may match after `next_after`.
    pub budget_spent: bool,
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Jobs a listing returns when it names no limit.
pub const DEFAULT_PAGE: usize = 500;
/// The most jobs one listing returns: page on with `after`.
pub const MAX_PAGE: usize = 5000;

/// Which jobs to list: filters, and a page of them in id order (ids are
/// time-ordered, so this is creation order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobQuery {
    pub status: Option<JobStatus>,
    pub step: Option<Uuid>,
    /// Queued by any of these steps (a plug-in's steps).
    pub steps: Option<Vec<Uuid>>,
    pub operation_type: Option<OperationType>,
    /// Regarding a record of this entity.
    pub entity: Option<String>,
    /// Regarding this record.
    pub record: Option<Uuid>,
    /// Names containing this text (any case).
    pub name: Option<String>,
    pub token: Option<String>,
    /// Created at or after / before (UTC ms).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Ids starting with these hex digits (dashes ignored): finds a job by a prefix
    /// of its id without a scan.
    pub id_prefix: Option<String>,
    /// Continue after this id: the last one of the previous page.
    pub after: Option<Uuid>,
    /// Only ids below this one (jobs queued before it: a bulk job action's selection).
    #[serde(default)]
    pub before: Option<Uuid>,
    pub newest_first: bool,
    /// At most this many (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Only the jobs this user queued (`createdby`): a user without the
    /// `manage_jobs` privilege sees only its own.
    pub owner: Option<Uuid>,
}

impl JobQuery {
    /// The page size, or why it is refused.
    pub fn page_size(&self) -> Result<usize, String> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(format!("limit {n} is out of range: give 1 to {MAX_PAGE}, and page on with 'after'")),
        }
    }

    /// The id range the query covers (its prefix, else every id), or why the prefix is refused.
    pub fn id_range(&self) -> Result<(u128, u128), String> {
        let Some(prefix) = &self.id_prefix else { return Ok((0, u128::MAX)) };
        let digits: String = prefix.chars().filter(|c| *c != '-').collect();
        if digits.is_empty() || digits.len() > 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("id prefix '{prefix}' is not 1 to 32 hex digits"));
        }
        let free = 4 * (32 - digits.len() as u32);
        let value = u128::from_str_radix(&digits, 16).map_err(|e| e.to_string())?;
        let low = value.checked_shl(free).unwrap_or(0);
        let mask = if free == 128 { u128::MAX } else { (1u128 << free) - 1 };
        Ok((low, low | mask))
    }

    /// The filters checked job by job after the index the listing reads (see
    /// [`JobQuery::index`]): each names what the dashboard tells its user.
    pub fn unindexed(&self) -> Vec<&'static str> {
        let index = self.index();
        let mut out = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                out.push(name);
            }
        };
        add(self.status.is_some() && index != JobIndex::Status, "status");
        add(self.step.is_some() && index != JobIndex::Step, "step");
        add(self.steps.is_some(), "plug-in");
        add(self.operation_type.is_some(), "operation type");
        add(self.entity.is_some(), "regarding entity");
        add(self.record.is_some(), "regarding record");
        add(self.name.is_some(), "name");
        add(self.token.is_some(), "dependency token");
        out
    }

    /// The index a listing reads: one user's jobs, one step's, one status's, or
    /// all jobs by id (narrowed by an id prefix and the created range).
    pub fn index(&self) -> JobIndex {
        if self.owner.is_some() {
            JobIndex::Owner
        } else if self.step.is_some() {
            JobIndex::Step
        } else if self.status.is_some() {
            JobIndex::Status
        } else {
            JobIndex::Id
        }
    }

    /// Whether `job` passes the filters (not the id range or paging).
    pub fn matches(&self, job: &SystemJob) -> bool {
        self.status.is_none_or(|s| job.status == s)
            && self.step.is_none_or(|s| job.step_id == Some(s))
            && self.steps.as_ref().is_none_or(|s| job.step_id.is_some_and(|id| s.contains(&id)))
            && self.operation_type.is_none_or(|t| job.operation_type == t)
            && self.entity.as_ref().is_none_or(|e| job.regarding.as_ref().is_some_and(|r| &r.logical_name == e))
            && self.record.is_none_or(|id| job.regarding.as_ref().is_some_and(|r| r.id == id))
            && self.name.as_ref().is_none_or(|n| contains_ignoring_case(&job.name, n))
            && self.token.as_ref().is_none_or(|t| job.dependency_token.as_ref() == Some(t))
            && self.since.is_none_or(|t| job.created_on >= t)
            && self.until.is_none_or(|t| job.created_on < t)
    }
}
