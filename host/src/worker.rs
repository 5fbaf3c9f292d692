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

use crate::pipeline::Pipeline;
use crate::store::{CompletionOutcome, JobCompletion, JobQueue};

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
        }
    }
}

impl WorkerConfig {
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

impl Worker {
    fn run(self) {
        let poll = Duration::from_millis(self.config.poll_ms);
        let lease = Duration::from_millis(self.config.lease_ms);
        // The previous batch's completions: checked after the next lease, whose commit
        // they share, so a cycle costs one durable commit rather than two.
        let mut completions = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            if self.paused.load(Ordering::SeqCst) {
                self.settle(std::mem::take(&mut completions));
                std::thread::sleep(poll.min(Duration::from_millis(50)));
                continue;
            }
            let leased = self.queue.lease(&self.host, self.config.batch, lease);
            self.settle(std::mem::take(&mut completions));
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
                let span =
                    tracing::info_span!("job", id = %job.id, correlation_id = %job.correlation_id, name = %job.name);
                let _enter = span.enter();
                let run = self.pipeline.run_job(&job);
                self.stats.fuel_used.fetch_add(run.fuel_used, Ordering::Relaxed);
                self.stats.run_us.fetch_add(run.duration_us, Ordering::Relaxed);
                tracing::debug!(fuel = run.fuel_used, us = run.duration_us, result = ?run.result, "job ran");
                // Completions of the whole batch share group commits: do not wait for each.
                completions.push(self.queue.complete(JobCompletion {
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
                }));
            }
            if !unstarted.is_empty()
                && let Err(e) = self.queue.release(unstarted)
            {
                tracing::error!("releasing unstarted jobs failed (their leases will expire): {e}");
            }
        }
        self.settle(completions);
    }

    /// Waits for completions to be durable and counts their outcomes.
    fn settle(
        &self,
        completions: Vec<tokio::sync::oneshot::Receiver<Result<CompletionOutcome, crate::store::CommitError>>>,
    ) {
        for rx in completions {
            match rx.blocking_recv() {
                Ok(Ok(CompletionOutcome::Recorded(s))) => {
                    let counter = match s {
                        crate::jobs::JobStatus::Succeeded => &self.stats.succeeded,
                        crate::jobs::JobStatus::Waiting => &self.stats.retried,
                        _ => &self.stats.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(CompletionOutcome::Deleted)) => {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(CompletionOutcome::Stale)) => {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(CompletionOutcome::Requeued)) => {
                    self.stats.requeued.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => tracing::error!("completing a job failed (its lease will expire): {e}"),
                Err(_) => tracing::error!("the store's writer stopped while completing a job"),
            }
        }
    }
}
