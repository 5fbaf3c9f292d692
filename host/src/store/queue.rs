//! The queue manager's operations on system jobs: lease, complete, release, and
//! the user's management actions. Every one is a group-committed operation.
//!
//! **Invariant:** a completion is accepted only while the job is still locked with
//! the fencing token it was leased with; its effects are written in the same
//! transaction that completes the job, so they exist exactly once or not at all.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot::{self, Receiver};
use uuid::Uuid;

use super::commit::apply_in;
use super::jobs::{self, Renewal, Tables, load, put_job, with_tables};
use super::{ChangeSet, CommitError, Committer, Store, StoreError};
use crate::clock::now_ms;
use crate::jobs::{JobResult, JobState, JobStatus, RetryPolicy, RunOutcome, RunReport, SystemJob};

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

/// Each completion's outcome, in the order they were given.
pub type Outcomes = Vec<Result<CompletionOutcome, CommitError>>;

/// What became of a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionOutcome {
    /// The job is now in `status`; `run` says what the run did to it.
    Recorded { status: JobStatus, run: RunOutcome },
    /// The job succeeded and was deleted (its step's delete-on-success).
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

impl JobAction {
    /// The action's name in routes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            JobAction::Cancel => "cancel",
            JobAction::Pause => "pause",
            JobAction::Resume => "resume",
            JobAction::Postpone(_) => "postpone",
            JobAction::Retry => "retry",
            JobAction::Delete => "delete",
        }
    }

    /// The action's name in the audit log (`jobs.cancel`, ...).
    pub fn audit_name(self) -> &'static str {
        match self {
            JobAction::Cancel => "jobs.cancel",
            JobAction::Pause => "jobs.pause",
            JobAction::Resume => "jobs.resume",
            JobAction::Postpone(_) => "jobs.postpone",
            JobAction::Retry => "jobs.retry",
            JobAction::Delete => "jobs.delete",
        }
    }

    /// The action named `name`; `until` is the postpone action's time. An unknown
    /// name is an error, never a guess.
    pub fn parse(name: &str, until: Option<i64>) -> Result<JobAction, String> {
        Ok(match name {
            "cancel" => JobAction::Cancel,
            "pause" => JobAction::Pause,
            "resume" => JobAction::Resume,
            "retry" => JobAction::Retry,
            "delete" => JobAction::Delete,
            "postpone" => JobAction::Postpone(until.ok_or("postpone needs a time ('until')")?),
            other => {
                return Err(format!(
                    "unknown job action '{other}': use cancel, pause, resume, postpone, retry or delete"
                ));
            }
        })
    }
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
    /// Leased jobs a user asked to cancel or pause: a worker that has not started
    /// one yet releases it instead (this process's workers learn it here at once;
    /// any worker learns it from its next heartbeat).
    interrupts: Arc<Mutex<HashSet<Uuid>>>,
    /// A job whose lease expires more often than this fails ([`crate::jobs::after_lease_expired`]).
    max_lease_expirations: u32,
    /// This process among those sharing the store (host name and pid): who does the
    /// housekeeping ([`crate::store::Housekeeper`]).
    instance: Arc<str>,
    /// Which jobs [`JobQueue::lease`] takes.
    filter: LeaseFilter,
}

/// Which runnable jobs a lease takes: the outgoing-mail job needs the SMTP settings
/// only `serve` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFilter {
    All,
    /// All but the outgoing-mail job (remote workers).
    NotMail,
    /// Only the outgoing-mail job (a `serve` with `[mail]` and no workers of its own).
    OnlyMail,
}

/// A job's lease may expire this often before the job fails, unless configured.
pub const DEFAULT_MAX_LEASE_EXPIRATIONS: u32 = 5;

fn wait<T>(rx: Receiver<Result<T, CommitError>>) -> Result<T, CommitError> {
    rx.blocking_recv().unwrap_or(Err(CommitError::Stopped))
}

impl JobQueue {
    pub fn new(store: Arc<Store>, committer: Committer) -> JobQueue {
        let instance = format!("{}:{}", crate::worker::hostname(), std::process::id()).into();
        JobQueue {
            store,
            committer,
            interrupts: Arc::default(),
            max_lease_expirations: DEFAULT_MAX_LEASE_EXPIRATIONS,
            instance,
            filter: LeaseFilter::All,
        }
    }

    /// The same queue, leasing only what `filter` takes.
    pub fn leasing(&self, filter: LeaseFilter) -> JobQueue {
        JobQueue { filter, ..self.clone() }
    }

    /// This process's name among those sharing the store.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sets how often a job's lease may expire before the job fails.
    pub fn with_max_lease_expirations(mut self, max: u32) -> JobQueue {
        self.max_lease_expirations = max;
        self
    }

    /// Whether a user asked to cancel or pause this leased job; forgets it.
    pub fn take_interrupt(&self, id: Uuid) -> bool {
        let mut set = self.interrupts.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.remove(&id)
    }

    /// Extends the leases of jobs a worker holds (running or not yet started) by
    /// `lease` from now; says for each whether it is still the worker's.
    pub fn renew(&self, held: Vec<(Uuid, u64)>, lease: Duration) -> Result<Vec<Renewal>, CommitError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        wait(self.committer.submit_op(move |w| Ok(with_tables(w, |t| jobs::renew(t, &held, lease_ms, now_ms()))?)))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Locks up to `max` runnable jobs for `host` (blocking).
    pub fn lease(&self, host: &str, max: usize, lease: Duration) -> Result<Vec<SystemJob>, CommitError> {
        self.lease_for(host, max, lease, self.filter)
    }

    /// Leases like [`JobQueue::lease`], the jobs `filter` takes.
    pub fn lease_for(
        &self,
        host: &str,
        max: usize,
        lease: Duration,
        filter: LeaseFilter,
    ) -> Result<Vec<SystemJob>, CommitError> {
        self.lease_ahead_for(host, max, lease, filter).take()
    }

    /// Asks for a lease like [`JobQueue::lease`] without waiting for it: the ticket
    /// gives the jobs once the lease is durable. A worker pool asks for the next
    /// jobs while it runs the last ones, so the writer always has a lease to commit.
    pub fn lease_ahead(&self, host: &str, max: usize, lease: Duration) -> LeaseTicket {
        self.lease_ahead_for(host, max, lease, self.filter)
    }

    fn lease_ahead_for(&self, host: &str, max: usize, lease: Duration, filter: LeaseFilter) -> LeaseTicket {
        let host = host.to_owned();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let expirations = self.max_lease_expirations;
        let instance = self.instance.clone();
        let rx = self.committer.submit_op(move |w| {
            Ok(with_tables(w, |t| jobs::lease(t, &instance, &host, max, lease_ms, expirations, filter, now_ms()))?)
        });
        let store = self.store.clone();
        LeaseTicket {
            asked: max,
            answer: None,
            rx: Some(rx),
            // A context never changes once queued: read it on the worker's thread.
            then: Some(Box::new(move |mut leased| {
                store.fill_contexts(&mut leased)?;
                Ok(leased)
            })),
        }
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
        let interrupts = self.interrupts.clone();
        self.committer.submit_op(move |w| {
            let now = now_ms();
            let mut queued_jobs = false;
            let outcomes = with_tables(w, |t| {
                let mut outcomes = Vec::with_capacity(completions.len());
                {
                    // A completed job needs no interrupt any more.
                    let mut set = interrupts.lock().unwrap_or_else(|p| p.into_inner());
                    if !set.is_empty() {
                        for c in &completions {
                            set.remove(&c.id);
                        }
                    }
                }
                t.w.prefetch(&super::JOBS, completions.iter().map(|c| c.id.as_u128()))?;
                super::commit::prefetch(t.w, completions.iter().map(|c| &c.effects))?;
                for c in &completions {
                    queued_jobs |= !c.effects.jobs.is_empty();
                    match complete_one(t, c, now) {
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
        let wanted = pattern.map(|p| SystemJob::deletion_service(p, now_ms()));
        self.ensure_service_job(super::DELETION_SERVICE_JOB, wanted)
    }

    /// Makes the outgoing-mail job exist exactly when `pattern` is given (`[mail]`
    /// with `smtp`); returns it.
    pub fn ensure_outgoing_mail(&self, pattern: Option<&str>) -> Result<Option<SystemJob>, CommitError> {
        let wanted = pattern.map(|p| SystemJob::outgoing_mail(p, now_ms()));
        self.ensure_service_job(super::OUTGOING_MAIL_JOB, wanted)
    }

    fn ensure_service_job(
        &self,
        key: &'static str,
        wanted: Option<SystemJob>,
    ) -> Result<Option<SystemJob>, CommitError> {
        let job =
            wait(self.committer.submit_op(move |w| {
                Ok(with_tables(w, |t| jobs::ensure_service_job(t, key, wanted.clone(), now_ms()))?)
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
        let created = wait(self.committer.submit_op(move |w| {
            with_tables(w, |t| {
                let (id, sequence) = jobs::enqueue(t, std::slice::from_ref(&job), now_ms())?[0];
                jobs::put_bulk_rows(t, id, &rows)?;
                Ok::<_, StoreError>(SystemJob { id, sequence, ..job.clone() })
            })
            .map_err(CommitError::from)
        }))?;
        self.committer.notify();
        Ok(created)
    }

    /// Puts leased jobs that were never run back in the queue (shutdown).
    pub fn release(&self, leased: Vec<(Uuid, u64)>) -> Result<usize, CommitError> {
        wait(self.committer.submit_op(move |w| {
            let now = now_ms();
            with_tables(w, |t| {
                let mut released = 0;
                for &(id, token) in &leased {
                    let Some(old) = load(t, id)? else { continue };
                    if !old.is_leased_with(token) {
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
        let interrupts = self.interrupts.clone();
        wait(self.committer.submit_op(move |w| {
            with_tables(w, |t| {
                let (new, interrupted) = manage_in(t, id, action, now_ms())?;
                if interrupted {
                    interrupts.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                }
                Ok(new)
            })
        }))
        .inspect(|_| self.committer.notify())
    }

    /// Job counts by status, and how many are runnable now.
    pub fn counts(&self) -> Result<QueueCounts, StoreError> {
        self.store.job_counts()
    }
}

/// A lease asked for ([`JobQueue::lease_ahead`]): its jobs, once it is durable.
pub struct LeaseTicket {
    /// How many jobs it asked for.
    pub asked: usize,
    answer: Option<Result<Vec<SystemJob>, CommitError>>,
    rx: Option<oneshot::Receiver<Result<Vec<SystemJob>, CommitError>>>,
    /// What the jobs need once leased (their contexts read).
    then: Option<FillLeased>,
}

type FillLeased = Box<dyn FnOnce(Vec<SystemJob>) -> Result<Vec<SystemJob>, CommitError> + Send>;

impl LeaseTicket {
    /// A lease already answered (a queue that leases only while the caller waits).
    pub fn answered(asked: usize, answer: Result<Vec<SystemJob>, CommitError>) -> LeaseTicket {
        LeaseTicket { asked, answer: Some(answer), rx: None, then: None }
    }

    /// Whether the lease is answered (its jobs can be taken without waiting for a commit).
    pub fn ready(&mut self) -> bool {
        if self.answer.is_none()
            && let Some(rx) = self.rx.as_mut()
        {
            match rx.try_recv() {
                Ok(answer) => self.answer = Some(answer),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => self.answer = Some(Err(CommitError::Stopped)),
            }
        }
        true
    }

    /// The leased jobs with their contexts, waiting for the lease's commit if need be.
    pub fn take(mut self) -> Result<Vec<SystemJob>, CommitError> {
        let answer = match (self.answer.take(), self.rx.take()) {
            (Some(a), _) => a,
            (None, Some(rx)) => wait(rx),
            (None, None) => Err(CommitError::Stopped),
        };
        match (answer, self.then.take()) {
            (Ok(jobs), Some(then)) => then(jobs),
            (answer, _) => answer,
        }
    }
}

/// Records one completion. Writes nothing unless it returns `Ok`.
fn complete_one(t: &mut Tables<'_, '_>, c: &JobCompletion, now: i64) -> Result<CompletionOutcome, CommitError> {
    let old = load(t, c.id)?;
    let Some(old) = old else { return Ok(CompletionOutcome::Stale) };
    if !old.is_leased_with(c.fencing_token) {
        return Ok(CompletionOutcome::Stale);
    }
    // Recorded runs are kept whatever the run came to (a failing run is what they are for).
    super::runs::keep_runs(t.w, &c.effects.runs)?;
    let mut result = c.result.clone();
    let mut report = RunReport {
        message: c.message.clone(),
        output: c.output.clone(),
        trace: c.trace.clone(),
        fuel_used: c.fuel_used,
        duration_us: c.duration_us,
    };
    // A successful run of a job still running (not being canceled or paused) writes
    // its effects here, in the transaction that completes it.
    // A failure writes nothing of its own, but a workflow that failed at a step keeps
    // what its earlier steps did (and their log rows): its run hands them over.
    if old.status == JobStatus::InProgress && !matches!(result, JobResult::Retry { .. }) {
        match apply_in(t, &c.effects) {
            Err(CommitError::Conflict { .. }) => {
                // Still InProgress, so released it is ready again.
                put_job(t, Some(&old), Some(&crate::jobs::released(&old, now)), now)?;
                return Ok(CompletionOutcome::Requeued);
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if old.operation_type == crate::jobs::OperationType::JobAction {
            match job_action_batch(t, &old, now)? {
                Ok((more, output, message)) => {
                    report.output = output;
                    report.message = Some(message);
                    if more {
                        result = JobResult::Progress;
                    }
                }
                Err(message) => result = JobResult::Failed { code: "invalid_job".into(), message },
            }
        }
        if let Some(before) = c.purge_before {
            use crate::model::{ParameterValue, Value};
            let purged = jobs::purge_completed(t, before, PURGE_BATCH, now)?;
            report.message = Some(format!("deleted {purged} jobs completed before {}", Value::DateTime(before)));
            report.output = [
                ("deleted".to_owned(), ParameterValue::Value(Value::Integer(purged as i64))),
                ("completed_before".to_owned(), ParameterValue::Value(Value::DateTime(before))),
            ]
            .into();
            // A full batch: more remain, so it runs again now rather than completing.
            if purged == PURGE_BATCH {
                result = JobResult::Progress;
            }
        }
    }
    let retry = RetryPolicy { max_retries: c.max_retries, backoff_ms: c.backoff_ms };
    let watch = match &result {
        JobResult::Wait { watch, .. } => watch.clone(),
        _ => None,
    };
    let (fuel, run_us) = (report.fuel_used, report.duration_us);
    let (mut new, run) = crate::jobs::after_run(&old, result, report, &retry, now);
    // Emails queued while it ran may lie behind where it looked: it runs again now.
    if old.operation_type == crate::jobs::OperationType::OutgoingActivity
        && jobs::take_outgoing_mail_woken(t)?
        && new.status == JobStatus::Waiting
        && new.postpone_until.is_some_and(|at| at > now)
    {
        new.status = JobStatus::WaitingForResources;
        new.postpone_until = Some(now);
    }
    if matches!(run, RunOutcome::Succeeded | RunOutcome::Failed) {
        t.run_ended(now, run == RunOutcome::Succeeded, run_us);
    }
    if let Some(step) = old.step_id {
        let outcome = |o: RunOutcome| u64::from(run == o);
        t.step_ran(
            step,
            crate::jobs::StepStats {
                succeeded: outcome(RunOutcome::Succeeded),
                failed: outcome(RunOutcome::Failed),
                retried: outcome(RunOutcome::Retrying),
                fuel,
                run_us,
            },
        );
    }
    if run == RunOutcome::Waiting
        && let Some(watch) = watch
    {
        use super::workflows::{WaitDecision, subscribe};
        match subscribe(t.w, old.id, &watch)? {
            WaitDecision::Subscribed => {}
            // The record changed while the run looked at it: look again now.
            WaitDecision::Changed => {
                new.status = JobStatus::WaitingForResources;
                new.postpone_until = None;
            }
            WaitDecision::Gone => {
                new.status = JobStatus::Canceled;
                new.completed_on = Some(now);
                new.message = Some(format!("canceled: {} {} it waited on was deleted", watch.entity, watch.id));
            }
        }
    }
    if run == RunOutcome::Succeeded
        && new.status == JobStatus::Succeeded
        && c.delete_on_success
        && old.recurrence_pattern.is_none()
    {
        put_job(t, Some(&old), None, now)?;
        return Ok(CompletionOutcome::Deleted);
    }
    put_job(t, Some(&old), Some(&new), now)?;
    Ok(CompletionOutcome::Recorded { status: new.status, run })
}

/// A user's action on job `id` inside a write transaction: the job after it
/// (`None`: deleted) and whether a running job must be told to stop.
pub(crate) fn manage_in(
    t: &mut Tables<'_, '_>,
    id: Uuid,
    action: JobAction,
    now: i64,
) -> Result<(Option<SystemJob>, bool), CommitError> {
    let old = load(t, id)?.ok_or_else(|| CommitError::Refused(StoreError::NotFound(format!("no system job {id}"))))?;
    let refuse =
        |what: &str| CommitError::Refused(StoreError::Conflict(format!("job {id} is {}: {what}", old.status.name())));
    let mut new = old.clone();
    let mut interrupted = false;
    match action {
        JobAction::Cancel => match old.status {
            JobStatus::WaitingForResources | JobStatus::Waiting => {
                new.status = JobStatus::Canceled;
                new.completed_on = Some(now);
            }
            JobStatus::InProgress | JobStatus::Pausing => {
                new.status = JobStatus::Canceling;
                interrupted = true;
            }
            _ => return Err(refuse("only ready, waiting or running jobs can be canceled")),
        },
        JobAction::Pause => match old.status {
            JobStatus::WaitingForResources => new.status = JobStatus::Waiting,
            // A recurring job between occurrences: it waits without a next run until resumed.
            JobStatus::Waiting if old.recurrence_pattern.is_some() && old.postpone_until.is_some() => {
                new.postpone_until = None;
            }
            JobStatus::InProgress => {
                new.status = JobStatus::Pausing;
                interrupted = true;
            }
            _ => {
                return Err(refuse(
                    "only ready or running jobs, and recurring jobs between occurrences, can be paused",
                ));
            }
        },
        // Runs now; a recurring job then goes on with its next occurrence after now.
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
        // Runs now; a recurring job then goes on with its next occurrence
        // after now, and never runs more than its COUNT.
        JobAction::Retry => match old.status {
            JobStatus::Failed | JobStatus::Canceled
                if old.recurrence_pattern.is_some() && !old.has_occurrences_left(now) =>
            {
                return Err(refuse(&format!(
                    "its recurrence is used up after {} runs: create a new job to run it again",
                    old.recurrence_runs
                )));
            }
            JobStatus::Failed | JobStatus::Canceled => {
                new.status = JobStatus::WaitingForResources;
                new.completed_on = None;
                new.postpone_until = None;
                new.retry_count = 0;
                new.lease_expirations = 0;
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
            return Ok((None, false));
        }
    }
    put_job(t, Some(&old), Some(&new), now)?;
    Ok((Some(new), interrupted))
}

/// One batch of a bulk job action (see [`crate::bulk::JobSelection`]): applies the
/// action to the next jobs of its selection and returns whether more remain, the
/// job's progress output and its message; `Err` if the job's selection is damaged.
fn job_action_batch(
    t: &mut Tables<'_, '_>,
    job: &SystemJob,
    now: i64,
) -> Result<Result<(bool, crate::model::Parameters, String), String>, CommitError> {
    use crate::model::{ParameterValue, Value};
    // The selection is in the job's context, which loading the job leaves out.
    let mut with_context = job.clone();
    jobs::fill_context(t.w, &mut with_context)?;
    let selection = match crate::bulk::JobSelection::from_job(&with_context) {
        Ok(s) => s,
        Err(m) => return Ok(Err(m)),
    };
    let int = |name: &str| match job.output.get(name) {
        Some(ParameterValue::Value(Value::Integer(n))) => *n,
        _ => 0,
    };
    let after = match job.output.get("After") {
        Some(ParameterValue::Value(Value::Guid(id))) => Some(*id),
        _ => None,
    };
    let (mut applied, mut skipped) = (int("Applied"), int("Skipped"));
    // The selection as it was when the action was queued: jobs before this one.
    let query = crate::jobs::JobQuery {
        after,
        before: Some(job.id),
        newest_first: false,
        limit: Some(crate::bulk::JOB_ACTION_BATCH),
        ..selection.query.clone()
    };
    let bounds = super::data::id_bounds(&query)?;
    let page = super::data::select_jobs(
        t.w,
        &query,
        bounds,
        crate::bulk::JOB_ACTION_BATCH,
        Some(crate::bulk::JOB_ACTION_BATCH),
    )?;
    for target in &page.jobs {
        match manage_in(t, target.id, selection.action, now) {
            Ok(_) => applied += 1,
            Err(CommitError::Refused(_)) => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    let more = page.next_after.is_some();
    let mut output = crate::model::Parameters::from([
        ("Applied".to_owned(), ParameterValue::Value(Value::Integer(applied))),
        ("Skipped".to_owned(), ParameterValue::Value(Value::Integer(skipped))),
        ("Processed".to_owned(), ParameterValue::Value(Value::Integer(applied + skipped))),
    ]);
    if let Some(next) = page.next_after {
        output.insert("After".to_owned(), ParameterValue::Value(Value::Guid(next)));
    }
    let message = format!(
        "{}: applied to {applied} jobs, skipped {skipped} that do not allow it{}",
        selection.action.name(),
        if more { " (more to do)" } else { "" }
    );
    Ok(Ok((more, output, message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExecutionContext;

    #[test]
    fn job_actions_are_named_and_unknown_ones_are_errors() {
        for action in [
            JobAction::Cancel,
            JobAction::Pause,
            JobAction::Resume,
            JobAction::Retry,
            JobAction::Delete,
            JobAction::Postpone(5),
        ] {
            assert_eq!(JobAction::parse(action.name(), Some(5)), Ok(action));
        }
        assert!(JobAction::parse("frobnicate", None).unwrap_err().contains("unknown job action 'frobnicate'"));
        assert!(JobAction::parse("postpone", None).is_err(), "postpone needs a time");
    }

    #[test]
    fn a_job_whose_lease_keeps_expiring_fails_and_renewal_keeps_a_lease() {
        for (_dir, store) in crate::store::testing::stores() {
            lease_expiry_on(Arc::new(store));
        }
    }

    fn lease_expiry_on(store: Arc<Store>) {
        let queue = JobQueue::new(store.clone(), Committer::start(store.clone(), 16)).with_max_lease_expirations(1);
        let job =
            queue.create(SystemJob::plugin_execution("j", Uuid::nil(), None, ExecutionContext::default())).unwrap();
        let short = Duration::from_millis(1);
        let first = queue.lease("a", 10, short).unwrap();
        assert_eq!(first.len(), 1);
        // A heartbeat keeps it: renewed for a minute, nothing expires.
        assert_eq!(
            queue.renew(vec![(job.id, first[0].fencing_token)], Duration::from_secs(60)).unwrap(),
            vec![Renewal::Renewed]
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(queue.lease("b", 10, short).unwrap().is_empty(), "a renewed lease is not recovered");
        // Without renewals it expires: once is forgiven, twice is more than the maximum of 1.
        queue.renew(vec![(job.id, first[0].fencing_token)], short).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = queue.lease("b", 10, short).unwrap();
        assert_eq!((second.len(), second[0].lease_expirations), (1, 1), "recovered and leased again");
        assert_eq!(
            queue.renew(vec![(job.id, first[0].fencing_token)], short).unwrap(),
            vec![Renewal::Lost],
            "the old lease is gone"
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(queue.lease("c", 10, short).unwrap().is_empty());
        let failed = store.job(job.id).unwrap().unwrap();
        assert_eq!(
            (failed.status, failed.error_code.as_deref()),
            (JobStatus::Failed, Some(crate::jobs::LEASE_EXPIRED))
        );
        // A user's retry starts the count again.
        let retried = queue.manage(job.id, JobAction::Retry).unwrap().unwrap();
        assert_eq!((retried.status, retried.lease_expirations), (JobStatus::WaitingForResources, 0));
    }
}
