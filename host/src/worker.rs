//! The asynchronous service's worker pool: threads that lease batches of system
//! jobs, run them in the sandbox, and complete them (effects included) through
//! group commit.
//!
//! **Invariant:** a worker completes only what it leased, presenting the fencing
//! token it leased with; the queue drops a stale completion. On shutdown, leased
//! jobs that were not started go back to the queue; a job cut off mid-run is
//! recovered when its lease expires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pipeline::{JobRun, Pipeline};
use tokio::sync::oneshot::Receiver;

use crate::jobs::{JobStatus, OperationType};
use crate::store::{CommitError, CompletionOutcome, JobCompletion, JobQueue, Outcomes};

/// Worker pool settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Worker threads (default: the number of cores).
    pub workers: usize,
    /// Jobs leased at once by one worker.
    pub batch: usize,
    /// How long a lease lasts; a job whose worker died is recovered after it.
    /// Keep it above the longest step timeout.
    pub lease_ms: u64,
    /// How long an idle worker sleeps before looking again (new jobs wake it sooner).
    pub poll_ms: u64,
    /// Retries of a retryable failure before the job fails.
    pub max_retries: u32,
    /// The first retry's delay; doubled for each further retry.
    pub backoff_ms: i64,
    /// On SIGTERM, how long in-flight jobs get to finish.
    pub shutdown_grace_ms: u64,
    /// This host's name in job leases (default: hostname and process id).
    pub host_id: Option<String>,
    /// The deletion service purges jobs completed longer ago than this, in seconds
    /// (default 30 days; 0 keeps every job and removes the deletion service job).
    pub completed_job_retention_secs: u64,
    /// When the deletion service runs (RRULE; default hourly).
    pub deletion_service_recurrence: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch: 256,
            lease_ms: 5 * 60 * 1000,
            poll_ms: 500,
            max_retries: 5,
            backoff_ms: 1000,
            shutdown_grace_ms: 10_000,
            host_id: None,
            completed_job_retention_secs: 30 * 24 * 3600,
            deletion_service_recurrence: "FREQ=HOURLY".into(),
        }
    }
}

impl WorkerConfig {
    /// The deletion service's recurrence, or `None` when completed jobs are kept;
    /// refuses an invalid pattern.
    pub fn deletion_service(&self) -> Result<Option<&str>, String> {
        if self.completed_job_retention_secs == 0 {
            return Ok(None);
        }
        let pattern = self.deletion_service_recurrence.as_str();
        crate::recurrence::validate(pattern, crate::registry::now_ms())
            .map_err(|e| format!("workers.deletion_service_recurrence '{pattern}': {e}"))?;
        Ok(Some(pattern))
    }

    pub fn host_id(&self) -> String {
        self.host_id.clone().unwrap_or_else(|| {
            let host =
                std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Counters since start-up.
#[derive(Debug, Default, Serialize)]
pub struct WorkerStats {
    pub leased: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub stale: AtomicU64,
    pub requeued: AtomicU64,
    pub fuel_used: AtomicU64,
    pub run_us: AtomicU64,
}

pub struct WorkerPool {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<WorkerStats>,
    queue: JobQueue,
}

impl WorkerPool {
    pub fn start(pipeline: Arc<Pipeline>, queue: JobQueue, config: WorkerConfig) -> Arc<WorkerPool> {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let host = config.host_id();
        let threads = (0..config.workers.max(1))
            .map(|i| {
                let worker = Worker {
                    pipeline: pipeline.clone(),
                    queue: queue.clone(),
                    config: config.clone(),
                    host: host.clone(),
                    stop: stop.clone(),
                    paused: paused.clone(),
                    stats: stats.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("plughost-worker-{i}"))
                    .spawn(move || worker.run())
                    .expect("spawn a worker thread")
            })
            .collect();
        Arc::new(WorkerPool { stop, paused, threads: Mutex::new(threads), stats, queue })
    }

    /// Stops leasing new jobs; running ones finish.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.queue.notify();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Stops leasing, lets in-flight jobs finish within `grace`, and returns
    /// whether every worker stopped in time.
    pub fn shutdown(&self, grace: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        let mut threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let all = threads.iter().all(JoinHandle::is_finished);
        for t in threads.drain(..).filter(|t| t.is_finished()) {
            let _ = t.join();
        }
        all
    }
}

struct Worker {
    pipeline: Arc<Pipeline>,
    queue: JobQueue,
    config: WorkerConfig,
    host: String,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
}

/// Completions wait at most this long before they go to the writer: quick jobs share
/// one operation, and a slow job does not hold back the completions before it.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// A worker's completions: those not yet handed to the writer, and those handed
/// over whose commit it has not yet waited for.
struct Completions {
    pending: Vec<JobCompletion>,
    since: Instant,
    submitted: Vec<Receiver<Result<Outcomes, CommitError>>>,
}

impl Worker {
    fn run(self) {
        let poll = Duration::from_millis(self.config.poll_ms);
        let lease = Duration::from_millis(self.config.lease_ms);
        let mut done = Completions { pending: Vec::new(), since: Instant::now(), submitted: Vec::new() };
        while !self.stop.load(Ordering::SeqCst) {
            if self.paused.load(Ordering::SeqCst) {
                self.flush(&mut done);
                self.settle(&mut done);
                std::thread::sleep(poll.min(Duration::from_millis(50)));
                continue;
            }
            // The previous batch's completions share the next lease's commit, so a
            // cycle costs one durable commit rather than two.
            self.flush(&mut done);
            let leased = self.queue.lease(&self.host, self.config.batch, lease);
            self.settle(&mut done);
            let jobs = match leased {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!("leasing jobs failed: {e}");
                    std::thread::sleep(poll);
                    continue;
                }
            };
            if jobs.is_empty() {
                self.queue.wait_for_work(poll);
                continue;
            }
            self.stats.leased.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            let mut unstarted = Vec::new();
            for job in jobs {
                if self.stop.load(Ordering::SeqCst) || self.paused.load(Ordering::SeqCst) {
                    unstarted.push((job.id, job.fencing_token));
                    continue;
                }
                if done.since.elapsed() >= FLUSH_AFTER {
                    self.flush(&mut done);
                }
                let span =
                    tracing::info_span!("job", id = %job.id, correlation_id = %job.correlation_id, name = %job.name);
                let _enter = span.enter();
                let (run, purge_before) = match job.operation_type {
                    OperationType::PluginExecution => (self.pipeline.run_job(&job), None),
                    // The deletion service's work happens in the transaction that completes it.
                    OperationType::DeletionService => (JobRun::succeeded(), self.purge_before()),
                    OperationType::BulkDelete | OperationType::BulkImport => (self.pipeline.run_bulk(&job), None),
                };
                self.stats.fuel_used.fetch_add(run.fuel_used, Ordering::Relaxed);
                self.stats.run_us.fetch_add(run.duration_us, Ordering::Relaxed);
                tracing::debug!(fuel = run.fuel_used, us = run.duration_us, result = ?run.result, "job ran");
                if done.pending.is_empty() {
                    done.since = Instant::now();
                }
                done.pending.push(JobCompletion {
                    id: job.id,
                    fencing_token: job.fencing_token,
                    result: run.result,
                    effects: run.effects,
                    trace: run.trace,
                    fuel_used: run.fuel_used,
                    duration_us: run.duration_us,
                    delete_on_success: run.delete_on_success,
                    max_retries: self.config.max_retries,
                    backoff_ms: self.config.backoff_ms,
                    purge_before,
                    output: run.output,
                    message: run.message,
                });
            }
            if !unstarted.is_empty()
                && let Err(e) = self.queue.release(unstarted)
            {
                tracing::error!("releasing unstarted jobs failed (their leases will expire): {e}");
            }
        }
        self.flush(&mut done);
        self.settle(&mut done);
    }

    /// Where the deletion service cuts off: jobs completed before this are deleted.
    fn purge_before(&self) -> Option<i64> {
        let retention = i64::try_from(self.config.completed_job_retention_secs.saturating_mul(1000)).ok()?;
        (retention > 0).then(|| crate::registry::now_ms().saturating_sub(retention))
    }

    /// Hands the pending completions to the writer as one operation, without waiting.
    fn flush(&self, done: &mut Completions) {
        if !done.pending.is_empty() {
            done.submitted.push(self.queue.complete_all(std::mem::take(&mut done.pending)));
        }
    }

    /// Waits for the submitted completions to be durable and counts their outcomes.
    fn settle(&self, done: &mut Completions) {
        for rx in done.submitted.drain(..) {
            let outcomes = match rx.blocking_recv() {
                Ok(Ok(outcomes)) => outcomes,
                Ok(Err(e)) => {
                    tracing::error!("completing jobs failed (their leases will expire): {e}");
                    continue;
                }
                Err(_) => {
                    tracing::error!("the store's writer stopped while completing jobs");
                    continue;
                }
            };
            for outcome in outcomes {
                let counter = match outcome {
                    Ok(CompletionOutcome::Recorded(JobStatus::Succeeded) | CompletionOutcome::Deleted) => {
                        &self.stats.succeeded
                    }
                    Ok(CompletionOutcome::Recorded(JobStatus::Waiting)) => &self.stats.retried,
                    // A bulk job's batch: it goes on.
                    Ok(CompletionOutcome::Recorded(JobStatus::WaitingForResources)) => continue,
                    Ok(CompletionOutcome::Recorded(_)) => &self.stats.failed,
                    Ok(CompletionOutcome::Stale) => &self.stats.stale,
                    Ok(CompletionOutcome::Requeued) => &self.stats.requeued,
                    Err(e) => {
                        tracing::error!("completing a job failed (its lease will expire): {e}");
                        continue;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
