//! The queue manager's operations on system jobs: lease, complete, release, and
//! the user's management actions. Every one is a group-committed operation.
//!
//! **Invariant:** a completion is accepted only while the job is still locked with
//! the fencing token it was leased with; its effects are written in the same
//! transaction that completes the job, so they exist exactly once or not at all.

use std::sync::Arc;
use std::time::Duration;

use redb::WriteTransaction;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot::Receiver;
use uuid::Uuid;

use super::commit::apply_in;
use super::jobs::{self, Tables, load, put_job, with_tables};
use super::{ChangeSet, CommitError, Committer, Store, StoreError};
use crate::jobs::{JobState, JobStatus, SystemJob};
use crate::registry::now_ms;

/// What a worker reports about a job it ran.
#[derive(Clone, Debug)]
pub struct JobCompletion {
    pub id: Uuid,
    pub fencing_token: u64,
    pub result: JobResult,
    /// The plug-in's data writes (and the jobs they queue): committed only on success.
    pub effects: ChangeSet,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// Delete the job once it succeeds (the step's setting).
    pub delete_on_success: bool,
    /// Retries allowed for a retryable failure, and the first backoff (doubled each time).
    pub max_retries: u32,
    pub backoff_ms: i64,
    /// The deletion service's work: on success, delete jobs completed before this
    /// time (UTC ms), in the transaction that completes this job.
    pub purge_before: Option<i64>,
    /// What the run produced, kept on the job when it succeeds.
    pub output: crate::model::Parameters,
    /// The run's summary for the job's message, when it succeeds (bulk jobs' progress).
    pub message: Option<String>,
}

/// Most jobs one run of the deletion service deletes in one transaction; if it
/// deletes this many, it runs again at once for the rest.
pub const PURGE_BATCH: usize = 2000;

#[derive(Clone, Debug)]
pub enum JobResult {
    Succeeded,
    /// A bulk job finished a batch and has more to do: commit the effects and the
    /// output (its progress), and queue it again at once.
    Progress,
    Failed {
        code: String,
        message: String,
    },
    Retry {
        code: String,
        message: String,
    },
}

/// Each completion's outcome, in the order they were given.
pub type Outcomes = Vec<Result<CompletionOutcome, CommitError>>;

/// What became of a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// The job is now in this status.
    Recorded(JobStatus),
    /// The job was deleted on success.
    Deleted,
    /// The job is no longer leased with that token (its lease expired and another
    /// worker has it, or it was canceled): the result was dropped.
    Stale,
    /// A record the plug-in read changed meanwhile: the job goes back to the queue
    /// to run again, with no effects written.
    Requeued,
}

/// A user's action on a job. Only state, status and postpone-until change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "until")]
pub enum JobAction {
    Cancel,
    Pause,
    Resume,
    /// Do not start before this time (UTC milliseconds).
    Postpone(i64),
    Retry,
    Delete,
}

/// Job counts for status and metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueCounts {
    pub by_status: Vec<(String, u32, u64)>,
    pub runnable: u64,
}

#[derive(Clone)]
pub struct JobQueue {
    store: Arc<Store>,
    committer: Committer,
}

fn wait<T>(rx: Receiver<Result<T, CommitError>>) -> Result<T, CommitError> {
    rx.blocking_recv().unwrap_or(Err(CommitError::Stopped))
}

impl JobQueue {
    pub fn new(store: Arc<Store>, committer: Committer) -> JobQueue {
        JobQueue { store, committer }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Locks up to `max` runnable jobs for `host` (blocking).
    pub fn lease(&self, host: &str, max: usize, lease: Duration) -> Result<Vec<SystemJob>, CommitError> {
        let host = host.to_owned();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut leased = wait(
            self.committer
                .submit_op(move |txn| Ok(with_tables(txn, |t| jobs::lease(t, &host, max, lease_ms, now_ms()))?)),
        )?;
        // A context never changes once queued: read it here, on the worker's thread.
        self.store.fill_contexts(&mut leased)?;
        Ok(leased)
    }

    /// Wakes idle workers.
    pub fn notify(&self) {
        self.committer.notify();
    }

    /// Sleeps until new jobs may have been queued, or `timeout`.
    pub fn wait_for_work(&self, timeout: Duration) {
        self.committer.wait_for_work(timeout);
    }

    /// Records one completion and waits until it is durable (blocking).
    pub fn complete(&self, c: JobCompletion) -> Result<CompletionOutcome, CommitError> {
        wait(self.complete_all(vec![c]))?.pop().unwrap_or(Err(CommitError::Stopped))
    }

    /// Queues a worker's completions as one operation of the next group commit; the
    /// receiver gets each one's outcome, in order, once durable. Each completion is
    /// checked and applied on its own: a stale or conflicting one writes nothing and
    /// does not affect the others.
    pub fn complete_all(&self, completions: Vec<JobCompletion>) -> Receiver<Result<Outcomes, CommitError>> {
        let committer = self.committer.clone();
        self.committer.submit_op(move |txn| {
            let now = now_ms();
            let mut queued_jobs = false;
            let outcomes = with_tables(txn, |t| {
                let mut outcomes = Vec::with_capacity(completions.len());
                for c in completions {
                    queued_jobs |= !c.effects.jobs.is_empty();
                    match complete_one(txn, t, c, now) {
                        // A storage error abandons the whole group commit.
                        Err(e @ CommitError::Store(_)) => return Err(e),
                        outcome => outcomes.push(outcome),
                    }
                }
                Ok(outcomes)
            })?;
            if queued_jobs {
                committer.notify();
            }
            Ok(outcomes)
        })
    }

    /// Makes the deletion service job exist exactly when `pattern` is given (see
    /// [`crate::worker::WorkerConfig::deletion_service`]); returns it.
    pub fn ensure_deletion_service(&self, pattern: Option<&str>) -> Result<Option<SystemJob>, CommitError> {
        let pattern = pattern.map(str::to_owned);
        let job = wait(self.committer.submit_op(move |txn| {
            Ok(with_tables(txn, |t| jobs::ensure_deletion_service(t, pattern.as_deref(), now_ms()))?)
        }))?;
        self.committer.notify();
        Ok(job)
    }

    /// Creates a job directly (not through an event): e.g. a recurring run of a step.
    pub fn create(&self, job: SystemJob) -> Result<SystemJob, CommitError> {
        self.create_with_rows(job, Vec::new())
    }

    /// Creates a job with the rows it works through (a bulk import), in one transaction.
    pub fn create_with_rows(&self, job: SystemJob, rows: Vec<crate::model::Entity>) -> Result<SystemJob, CommitError> {
        let created = wait(self.committer.submit_op(move |txn| {
            with_tables(txn, |t| {
                let (id, sequence) = jobs::enqueue(t, std::slice::from_ref(&job), now_ms())?[0];
                jobs::put_bulk_rows(t, id, &rows)?;
                Ok::<_, StoreError>(SystemJob { id, sequence, ..job })
            })
            .map_err(CommitError::from)
        }))?;
        self.committer.notify();
        Ok(created)
    }

    /// Puts leased jobs that were never run back in the queue (shutdown).
    pub fn release(&self, leased: Vec<(Uuid, u64)>) -> Result<usize, CommitError> {
        wait(self.committer.submit_op(move |txn| {
            let now = now_ms();
            with_tables(txn, |t| {
                let mut released = 0;
                for (id, token) in leased {
                    let Some(old) = load(t, id)? else { continue };
                    if old.state() != JobState::Locked || old.fencing_token != token {
                        continue;
                    }
                    jobs::release(t, &old, now)?;
                    released += 1;
                }
                Ok(released)
            })
        }))
    }

    /// Applies a user's action; refuses one the job's status does not allow.
    pub fn manage(&self, id: Uuid, action: JobAction) -> Result<Option<SystemJob>, CommitError> {
        wait(self.committer.submit_op(move |txn| {
            with_tables(txn, |t| {
                let now = now_ms();
                let old = load(t, id)?
                    .ok_or_else(|| CommitError::Refused(StoreError::NotFound(format!("no system job {id}"))))?;
                let refuse = |what: &str| {
                    CommitError::Refused(StoreError::Conflict(format!("job {id} is {}: {what}", old.status.name())))
                };
                let mut new = old.clone();
                match action {
                    JobAction::Cancel => match old.status {
                        JobStatus::WaitingForResources | JobStatus::Waiting => {
                            new.status = JobStatus::Canceled;
                            new.completed_on = Some(now);
                        }
                        JobStatus::InProgress | JobStatus::Pausing => new.status = JobStatus::Canceling,
                        _ => return Err(refuse("only ready, waiting or running jobs can be canceled")),
                    },
                    JobAction::Pause => match old.status {
                        JobStatus::WaitingForResources => new.status = JobStatus::Waiting,
                        JobStatus::InProgress => new.status = JobStatus::Pausing,
                        _ => return Err(refuse("only ready or running jobs can be paused")),
                    },
                    JobAction::Resume => match old.status {
                        JobStatus::Waiting => {
                            new.status = JobStatus::WaitingForResources;
                            new.postpone_until = None;
                        }
                        _ => return Err(refuse("only waiting jobs can be resumed")),
                    },
                    JobAction::Postpone(until) => match old.status {
                        JobStatus::WaitingForResources | JobStatus::Waiting => {
                            new.status = JobStatus::Waiting;
                            new.postpone_until = Some(until);
                        }
                        _ => return Err(refuse("only ready or waiting jobs can be postponed")),
                    },
                    JobAction::Retry => match old.status {
                        JobStatus::Failed | JobStatus::Canceled => {
                            new.status = JobStatus::WaitingForResources;
                            new.completed_on = None;
                            new.postpone_until = None;
                            new.retry_count = 0;
                            new.error_code = None;
                            new.message = None;
                        }
                        _ => return Err(refuse("only failed or canceled jobs can be retried")),
                    },
                    JobAction::Delete => {
                        if old.state() == JobState::Locked {
                            return Err(refuse("a running job cannot be deleted: cancel it first"));
                        }
                        put_job(t, Some(&old), None, now)?;
                        return Ok(None);
                    }
                }
                put_job(t, Some(&old), Some(&new), now)?;
                Ok(Some(new))
            })
        }))
        .inspect(|_| self.committer.notify())
    }

    /// Job counts by status, and how many are runnable now.
    pub fn counts(&self) -> Result<QueueCounts, StoreError> {
        self.store.job_counts()
    }
}

/// Records one completion. Writes nothing unless it returns `Ok`.
fn complete_one(
    txn: &WriteTransaction,
    t: &mut Tables<'_>,
    c: JobCompletion,
    now: i64,
) -> Result<CompletionOutcome, CommitError> {
    let old = load(t, c.id)?;
    let Some(old) = old else { return Ok(CompletionOutcome::Stale) };
    if old.state() != JobState::Locked || old.fencing_token != c.fencing_token {
        return Ok(CompletionOutcome::Stale);
    }
    let mut new = old.clone();
    new.host_id = None;
    new.lease_expiry = None;
    new.trace = c.trace;
    new.fuel_used = c.fuel_used;
    new.duration_us = c.duration_us;
    match (old.status, c.result) {
        (JobStatus::Canceling, _) => {
            new.status = JobStatus::Canceled;
            new.completed_on = Some(now);
            new.message = Some("canceled while running; its effects were discarded".into());
        }
        (JobStatus::Pausing, _) => {
            new.status = JobStatus::Waiting;
            new.message = Some("paused while running; resume runs it again".into());
        }
        (_, result @ (JobResult::Succeeded | JobResult::Progress)) => match apply_in(txn, t, &c.effects) {
            Err(CommitError::Conflict { .. }) => {
                new.status = JobStatus::WaitingForResources;
                put_job(t, Some(&old), Some(&new), now)?;
                return Ok(CompletionOutcome::Requeued);
            }
            Err(e) => return Err(e),
            Ok(_) => {
                new.error_code = None;
                new.message = c.message;
                new.output = c.output;
                // A bulk job's batch, or a deletion service that filled its batch: more
                // remains, so it runs again now rather than completing.
                let mut more = matches!(result, JobResult::Progress);
                if let Some(before) = c.purge_before {
                    use crate::model::{ParameterValue, Value};
                    let purged = jobs::purge_completed(t, before, PURGE_BATCH, now)?;
                    new.message = Some(format!("deleted {purged} jobs completed before {}", Value::DateTime(before)));
                    new.output = [
                        ("deleted".to_owned(), ParameterValue::Value(Value::Integer(purged as i64))),
                        ("completed_before".to_owned(), ParameterValue::Value(Value::DateTime(before))),
                    ]
                    .into();
                    more |= purged == PURGE_BATCH;
                }
                if more {
                    new.status = JobStatus::WaitingForResources;
                    put_job(t, Some(&old), Some(&new), now)?;
                    return Ok(CompletionOutcome::Recorded(new.status));
                }
                new.status = JobStatus::Succeeded;
                new.completed_on = Some(now);
                if c.delete_on_success && old.recurrence_pattern.is_none() {
                    put_job(t, Some(&old), None, now)?;
                    return Ok(CompletionOutcome::Deleted);
                }
            }
        },
        (_, JobResult::Failed { code, message }) => {
            new.status = JobStatus::Failed;
            new.completed_on = Some(now);
            new.error_code = Some(code);
            new.message = Some(message);
        }
        (_, JobResult::Retry { code, message }) => {
            if old.retry_count < c.max_retries {
                let backoff = c.backoff_ms.saturating_mul(1i64 << old.retry_count.min(20));
                new.status = JobStatus::Waiting;
                new.postpone_until = Some(now.saturating_add(backoff));
                new.retry_count += 1;
                new.error_code = Some(code);
                new.message =
                    Some(format!("{message} (retry {} of {} in {backoff} ms)", new.retry_count, c.max_retries));
            } else {
                new.status = JobStatus::Failed;
                new.completed_on = Some(now);
                new.error_code = Some(code);
                new.message = Some(format!("{message} (gave up after {} retries)", old.retry_count));
            }
        }
    }
    // A recurring job waits for its next occurrence instead of completing.
    if matches!(new.status, JobStatus::Succeeded | JobStatus::Failed)
        && let (Some(pattern), Some(start)) = (&old.recurrence_pattern, old.recurrence_start)
    {
        let previous = old.postpone_until.unwrap_or(start - 1).max(start - 1);
        match crate::recurrence::next_after(pattern, start, previous) {
            Ok(Some(next)) => {
                new.status = JobStatus::Waiting;
                new.postpone_until = Some(next);
                new.completed_on = None;
                new.retry_count = 0;
            }
            Ok(None) => {}
            Err(m) => new.message = Some(format!("recurrence stopped: {m}")),
        }
    }
    put_job(t, Some(&old), Some(&new), now)?;
    Ok(CompletionOutcome::Recorded(new.status))
}
