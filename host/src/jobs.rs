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
            | (Pausing, Waiting | Succeeded | Failed | WaitingForResources)
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
}

impl OperationType {
    pub fn code(self) -> u32 {
        match self {
            OperationType::PluginExecution => 1,
            OperationType::DeletionService => 14,
            OperationType::BulkDelete => 13,
            OperationType::BulkImport => 5,
        }
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
    /// The serialized execution context the plug-in will receive.
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
            created_on: chrono::Utc::now().timestamp_millis(),
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
        }
    }

    pub fn state(&self) -> JobState {
        self.status.state()
    }
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
    fn completed_jobs_only_go_back_through_retry() {
        assert!(!JobStatus::Succeeded.can_become(JobStatus::InProgress));
        assert!(!JobStatus::Failed.can_become(JobStatus::Succeeded));
        assert!(JobStatus::Failed.can_become(JobStatus::WaitingForResources));
        assert!(!JobStatus::WaitingForResources.can_become(JobStatus::Succeeded));
        assert!(!JobStatus::Canceled.can_become(JobStatus::Failed));
    }
}

/// Jobs a listing returns when it names no limit.
pub const DEFAULT_PAGE: usize = 500;
/// The most jobs one listing returns: page on with `after`.
pub const MAX_PAGE: usize = 5000;

/// Which jobs to list: filters, and a page of them in id order (ids are
/// time-ordered, so this is creation order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobQuery {
    pub status: Option<JobStatus>,
    pub step: Option<Uuid>,
    /// Regarding a record of this entity.
    pub entity: Option<String>,
    pub token: Option<String>,
    /// Created at or after / before (UTC ms).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Ids starting with these hex digits (dashes ignored): finds a job by a prefix
    /// of its id without a scan.
    pub id_prefix: Option<String>,
    /// Continue after this id: the last one of the previous page.
    pub after: Option<Uuid>,
    pub newest_first: bool,
    /// At most this many (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
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

    /// Whether `job` passes the filters (not the id range or paging).
    pub fn matches(&self, job: &SystemJob) -> bool {
        self.status.is_none_or(|s| job.status == s)
            && self.step.is_none_or(|s| job.step_id == Some(s))
            && self.entity.as_ref().is_none_or(|e| job.regarding.as_ref().is_some_and(|r| &r.logical_name == e))
            && self.token.as_ref().is_none_or(|t| job.dependency_token.as_ref() == Some(t))
            && self.since.is_none_or(|t| job.created_on >= t)
            && self.until.is_none_or(|t| job.created_on < t)
    }
}
