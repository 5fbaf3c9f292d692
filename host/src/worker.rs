//! The asynchronous service's worker pool: threads that take leased system jobs
//! from one in-process queue, run them in the sandbox, and complete them (effects
//! included) through group commit; a heartbeat thread renews the leases of every
//! job the pool holds.
//!
//! **Invariants:**
//! - A worker completes only what the pool leased, presenting the fencing token it
//!   was leased with; the queue drops a stale completion.
//! - Every job the pool holds, started or not, has its lease renewed every third of
//!   the lease, so a live pool never loses a job to lease expiry however long it
//!   runs; only a dead or stuck process's jobs are recovered.
//! - No leased job waits behind a slow one while a worker is idle: leased jobs wait
//!   in one queue that every worker of the pool takes from, and the pool leases
//!   about what it will start soon (by the recent run time).
//! - A leased job a user canceled or paused before it started does not run.
//! - On shutdown or pause, leased jobs that were not started go back to the queue;
//!   a job cut off mid-run is recovered when its lease expires.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot::Receiver;
use uuid::Uuid;

use crate::jobs::{OperationType, RunOutcome, SystemJob};
use crate::pipeline::{JobRun, Pipeline};
use crate::store::{CommitError, CompletionOutcome, JobCompletion, JobQueue, LeaseTicket, Outcomes, Renewal};

/// The queue a worker pool works: the store's (`JobQueue`, in `plughost serve`) or
/// the server's over HTTP (`crate::remote`, in `plughost worker`). The pool's rules
/// are the same for both.
pub trait WorkQueue: Send + Sync {
    /// Locks up to `max` runnable jobs for `host`, with their contexts (blocking).
    fn lease(&self, host: &str, max: usize, lease: Duration) -> Result<Vec<SystemJob>, CommitError>;
    /// Asks for a lease without waiting for it, where the queue can (by default it
    /// leases at once).
    fn lease_ahead(&self, host: &str, max: usize, lease: Duration) -> LeaseTicket {
        LeaseTicket::answered(max, self.lease(host, max, lease))
    }
    /// Extends the leases of held jobs; says for each whether it is still held.
    fn renew(&self, held: Vec<(Uuid, u64)>, lease: Duration) -> Result<Vec<Renewal>, CommitError>;
    /// Puts leased jobs that were not run back in the queue.
    fn release(&self, leased: Vec<(Uuid, u64)>) -> Result<usize, CommitError>;
    /// Hands completions over without waiting; the receiver gets their outcomes, in
    /// order, once durable.
    fn complete_all(&self, completions: Vec<JobCompletion>) -> Receiver<Result<Outcomes, CommitError>>;
    /// Whether a user canceled or paused this leased job (as far as this process
    /// knows at once; the heartbeat tells the rest); forgets it.
    fn take_interrupt(&self, id: Uuid) -> bool;
    /// Wakes idle workers.
    fn notify(&self);
    /// Sleeps until new jobs may have been queued, or `timeout`.
    fn wait_for_work(&self, timeout: Duration);
    /// Whether the queue's owner says the service is paused, if it says (a server
    /// tells remote workers in its lease and heartbeat answers); `None` when the
    /// pool's own pause is all there is.
    fn paused(&self) -> Option<bool> {
        None
    }
}

impl WorkQueue for JobQueue {
    fn lease(&self, host: &str, max: usize, lease: Duration) -> Result<Vec<SystemJob>, CommitError> {
        JobQueue::lease(self, host, max, lease)
    }
    fn lease_ahead(&self, host: &str, max: usize, lease: Duration) -> LeaseTicket {
        JobQueue::lease_ahead(self, host, max, lease)
    }
    fn renew(&self, held: Vec<(Uuid, u64)>, lease: Duration) -> Result<Vec<Renewal>, CommitError> {
        JobQueue::renew(self, held, lease)
    }
    fn release(&self, leased: Vec<(Uuid, u64)>) -> Result<usize, CommitError> {
        JobQueue::release(self, leased)
    }
    fn complete_all(&self, completions: Vec<JobCompletion>) -> Receiver<Result<Outcomes, CommitError>> {
        JobQueue::complete_all(self, completions)
    }
    fn take_interrupt(&self, id: Uuid) -> bool {
        JobQueue::take_interrupt(self, id)
    }
    fn notify(&self) {
        JobQueue::notify(self)
    }
    fn wait_for_work(&self, timeout: Duration) {
        JobQueue::wait_for_work(self, timeout)
    }
}

/// The shortest lease allowed: the heartbeat renews every third of the lease, and a
/// renewal must commit well before the lease ends.
pub const MIN_LEASE_MS: u64 = 1000;
/// The pool leases about the jobs it will start within this time (by the recent
/// average run time); the rest stay in the queue for other workers and hosts. With
/// up to two leases under way that is enough to keep a writer's commits overlapped;
/// shorter leases keep what a writer applies under its lock short, which is what two
/// servers on one PostgreSQL database wait for when they hand over (in interleaved
/// runs 100 ms leases gave them 0.78x the rate of one server, 30 ms 0.82x; redb and
/// remote workers did not change: BENCHMARKS.md, thirteenth session).
const LEASE_AHEAD_US: u64 = 30_000;

/// Worker pool settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Worker threads (default: the number of cores).
    pub workers: usize,
    /// Jobs leased at once, per worker of the pool (the pool leases for all its
    /// workers at once, fewer when jobs run slowly).
    pub batch: usize,
    /// How long a lease lasts; a job whose worker died is recovered after it. The
    /// pool's heartbeat renews the leases it holds every third of this, so a job may
    /// run longer than its lease. At least [`MIN_LEASE_MS`].
    pub lease_ms: u64,
    /// A job whose lease expires more often than this (its worker died or hung each
    /// time) fails with `lease_expired` instead of running again.
    pub max_lease_expirations: u32,
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
    /// The SMTP client the outgoing-mail job sends through (`[mail]`; set by `serve`).
    /// Without one this pool never leases that job.
    #[serde(skip)]
    pub mailer: Option<Arc<crate::mail::smtp::Mailer>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch: 512,
            lease_ms: 5 * 60 * 1000,
            max_lease_expirations: crate::store::DEFAULT_MAX_LEASE_EXPIRATIONS,
            poll_ms: 500,
            max_retries: 5,
            backoff_ms: 1000,
            shutdown_grace_ms: 10_000,
            host_id: None,
            completed_job_retention_secs: 30 * 24 * 3600,
            deletion_service_recurrence: "FREQ=HOURLY".into(),
            mailer: None,
        }
    }
}

impl WorkerConfig {
    /// Refuses settings the pool cannot keep.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_ms < MIN_LEASE_MS {
            return Err(format!(
                "workers.lease_ms = {} is shorter than the minimum of {MIN_LEASE_MS} ms: the heartbeat renews leases every third of the lease",
                self.lease_ms
            ));
        }
        if self.batch == 0 {
            return Err("workers.batch must be at least 1".into());
        }
        self.deletion_service().map(|_| ())
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.max(MIN_LEASE_MS))
    }

    /// The deletion service's recurrence, or `None` when completed jobs are kept;
    /// refuses an invalid pattern.
    pub fn deletion_service(&self) -> Result<Option<&str>, String> {
        if self.completed_job_retention_secs == 0 {
            return Ok(None);
        }
        let pattern = self.deletion_service_recurrence.as_str();
        crate::recurrence::validate(pattern, crate::clock::now_ms())
            .map_err(|e| format!("workers.deletion_service_recurrence '{pattern}': {e}"))?;
        Ok(Some(pattern))
    }

    pub fn host_id(&self) -> String {
        self.host_id.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()))
    }
}

/// This machine's name ("host" when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into())
}

/// Counters since start-up: each counts what its name says.
#[derive(Debug, Default, Serialize)]
pub struct WorkerStats {
    pub leased: AtomicU64,
    /// Runs that succeeded (a recurring job's successful occurrence included).
    pub succeeded: AtomicU64,
    /// Runs that failed for good (after their retries).
    pub failed: AtomicU64,
    /// Retryable failures scheduled to run again.
    pub retried: AtomicU64,
    /// Runs canceled while they ran (their effects discarded).
    pub canceled: AtomicU64,
    /// Completions dropped because the job was no longer this worker's.
    pub stale: AtomicU64,
    /// Runs re-queued because a record they read changed meanwhile.
    pub requeued: AtomicU64,
    /// Leases renewed by the heartbeat.
    pub renewed: AtomicU64,
    pub fuel_used: AtomicU64,
    pub run_us: AtomicU64,
}

pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<WorkerStats>,
}

/// What the pool's threads share.
struct Shared {
    pipeline: Arc<Pipeline>,
    queue: Arc<dyn WorkQueue>,
    config: WorkerConfig,
    host: String,
    stop: AtomicBool,
    paused: AtomicBool,
    stats: Arc<WorkerStats>,
    /// Leased jobs not started yet, in lease order, for any worker to take.
    local: Mutex<Local>,
    changed: Condvar,
    /// Jobs started and not yet durably completed: id -> fencing token.
    held: Mutex<HashMap<Uuid, u64>>,
    /// Jobs running now, with the fencing token of the run and the flag that stops its
    /// plug-in. A heartbeat's answer about an earlier lease of the same job (a bulk job
    /// runs again at once, leased anew) must not stop this run: it checks the token.
    running: Mutex<HashMap<Uuid, (u64, Arc<AtomicBool>)>>,
    /// Recent average run time in µs (0 until a job ran): sizes the next lease.
    avg_run_us: AtomicU64,
    /// Worker threads still running (the heartbeat lasts as long as they do).
    live: AtomicUsize,
}

#[derive(Default)]
struct Local {
    waiting: VecDeque<SystemJob>,
    /// Leases asked for and not yet taken, oldest first (at most [`LEASES_AHEAD`]).
    leases: VecDeque<LeaseTicket>,
    /// A worker is taking a lease's jobs now: the others wait for them.
    taking: bool,
    /// The last lease got fewer jobs than it asked for: lease again only when empty.
    drained: bool,
}

/// Leases a pool may have asked for at once. Two let the writer commit the next
/// jobs' lease while the jobs of the last one are being leased, so a store whose
/// commits take long (PostgreSQL) always has one under way.
const LEASES_AHEAD: usize = 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerPool {
    /// Starts the workers and the heartbeat, paused if `paused` (a service paused
    /// before a restart stays paused).
    pub fn start(
        pipeline: Arc<Pipeline>,
        queue: Arc<dyn WorkQueue>,
        config: WorkerConfig,
        paused: bool,
    ) -> Arc<WorkerPool> {
        let stats = Arc::new(WorkerStats::default());
        let workers = config.workers.max(1);
        let shared = Arc::new(Shared {
            pipeline,
            queue,
            host: config.host_id(),
            config,
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(paused),
            stats: stats.clone(),
            local: Mutex::default(),
            changed: Condvar::new(),
            held: Mutex::default(),
            running: Mutex::default(),
            avg_run_us: AtomicU64::new(0),
            live: AtomicUsize::new(workers),
        });
        let mut threads: Vec<JoinHandle<()>> = (0..workers)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("plughost-worker-{i}"))
                    .spawn(move || Worker::new(shared).run())
                    .expect("spawn a worker thread")
            })
            .collect();
        let beat = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("plughost-heartbeat".into())
                .spawn(move || beat.heartbeat())
                .expect("spawn the heartbeat thread"),
        );
        Arc::new(WorkerPool { shared, threads: Mutex::new(threads), stats })
    }

    /// Pausing stops leasing new jobs (running ones finish, unstarted ones go back)
    /// until resumed.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
        if paused {
            self.shared.changed.notify_all();
        } else {
            self.shared.queue.notify();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Stops leasing, puts unstarted jobs back, lets running ones finish within
    /// `grace`, and returns whether every worker stopped in time.
    pub fn shutdown(&self, grace: Duration) -> bool {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        self.shared.queue.notify();
        self.shared.release_waiting();
        let deadline = Instant::now() + grace;
        let mut threads = std::mem::take(&mut *lock(&self.threads));
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

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// How many jobs to lease: about what the pool starts within [`LEASE_AHEAD_US`].
    /// At most `batch` per worker of the pool.
    fn batch_size(&self) -> usize {
        let workers = self.config.workers.max(1);
        let most = self.config.batch.saturating_mul(workers);
        let avg = self.avg_run_us.load(Ordering::Relaxed);
        if avg == 0 {
            return most;
        }
        let n = LEASE_AHEAD_US.saturating_mul(workers as u64) / avg;
        usize::try_from(n).unwrap_or(usize::MAX).clamp(1, most)
    }

    /// Puts leased jobs that were not started back in the queue, with those of the
    /// leases asked for (waiting for them).
    fn release_waiting(&self) {
        let (mut jobs, leases): (Vec<(Uuid, u64)>, VecDeque<LeaseTicket>) = {
            let mut local = lock(&self.local);
            (local.waiting.drain(..).map(|j| (j.id, j.fencing_token)).collect(), std::mem::take(&mut local.leases))
        };
        for ticket in leases {
            match ticket.take() {
                Ok(leased) => jobs.extend(leased.iter().map(|j| (j.id, j.fencing_token))),
                Err(e) => tracing::error!("leasing jobs failed: {e}"),
            }
        }
        self.release(jobs);
    }

    fn release(&self, jobs: Vec<(Uuid, u64)>) {
        if !jobs.is_empty()
            && let Err(e) = self.queue.release(jobs)
        {
            tracing::error!("releasing unstarted jobs failed (their leases will expire): {e}");
        }
    }

    /// Renews the leases of every job the pool holds, every third of the lease, for
    /// as long as a worker runs; drops unstarted jobs it lost and releases unstarted
    /// ones a user canceled or paused.
    fn heartbeat(&self) {
        let lease = self.config.lease();
        let every = lease / 3;
        let poll = Duration::from_millis(self.config.poll_ms).min(every);
        let mut last = Instant::now();
        while self.live.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(20).min(every));
            // A server that paused the service pauses this (remote) pool too: unstarted
            // jobs go back; while paused, it is asked every poll whether it resumed.
            let owner_paused = self.queue.paused();
            if let Some(paused) = owner_paused
                && paused != self.paused()
            {
                self.paused.store(paused, Ordering::SeqCst);
                self.changed.notify_all();
            }
            // A running job a user canceled or paused (as this process learned at once)
            // stops now rather than at its end.
            for (id, (_, stop)) in lock(&self.running).iter() {
                if self.queue.take_interrupt(*id) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            let asking = owner_paused == Some(true) && last.elapsed() >= poll;
            if last.elapsed() < every && !asking {
                continue;
            }
            last = Instant::now();
            let mut held: Vec<(Uuid, u64)> = lock(&self.held).iter().map(|(id, t)| (*id, *t)).collect();
            held.extend(lock(&self.local).waiting.iter().map(|j| (j.id, j.fencing_token)));
            if held.is_empty() && !asking {
                continue;
            }
            let renewals = match self.queue.renew(held.clone(), lease) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("renewing leases failed: {e}");
                    continue;
                }
            };
            let mut release = Vec::new();
            {
                let running = lock(&self.running);
                let mut local = lock(&self.local);
                for ((id, token), renewal) in held.into_iter().zip(renewals) {
                    match renewal {
                        Renewal::Renewed => {
                            self.stats.renewed.fetch_add(1, Ordering::Relaxed);
                        }
                        Renewal::Lost | Renewal::Interrupted => {
                            // Running: the heartbeat's answer stops it (a lost job's
                            // completion would be refused anyway).
                            if let Some((run_token, stop)) = running.get(&id)
                                && *run_token == token
                            {
                                stop.store(true, Ordering::Relaxed);
                            }
                            let before = local.waiting.len();
                            local.waiting.retain(|j| (j.id, j.fencing_token) != (id, token));
                            if renewal == Renewal::Interrupted && local.waiting.len() < before {
                                release.push((id, token));
                            }
                        }
                    }
                }
            }
            self.release(release);
        }
    }
}

/// Completions wait at most this long before they go to the writer: quick jobs share
/// one operation, and a slow job does not hold back the completions before it.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// A worker's completions: those not yet handed to the writer, and those handed
/// over whose commit it has not yet seen, with the jobs each covers.
struct Completions {
    pending: Vec<JobCompletion>,
    since: Instant,
    submitted: Vec<(Submitted, Vec<Uuid>)>,
}

/// A group of completions handed to the writer: their outcomes once durable.
type Submitted = Receiver<Result<Outcomes, CommitError>>;

struct Worker {
    shared: Arc<Shared>,
    done: Completions,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        Worker { shared, done: Completions { pending: Vec::new(), since: Instant::now(), submitted: Vec::new() } }
    }

    fn run(mut self) {
        let poll = Duration::from_millis(self.shared.config.poll_ms);
        while !self.shared.stopping() {
            if self.shared.paused() {
                self.shared.release_waiting();
                self.flush();
                self.settle(true);
                std::thread::sleep(poll.min(Duration::from_millis(50)));
                continue;
            }
            let Some(job) = self.next_job(poll) else { continue };
            // A user canceled or paused it after it was leased: it does not run.
            if self.shared.queue.take_interrupt(job.id) {
                self.shared.release(vec![(job.id, job.fencing_token)]);
                continue;
            }
            self.run_job(job);
            if self.done.since.elapsed() >= FLUSH_AFTER {
                self.flush();
            }
            self.settle(false);
        }
        self.flush();
        self.settle(true);
        self.shared.release_waiting();
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// The next leased job to run, from the pool's queue. The pool asks for the next
    /// lease when its queue runs low ([`LEASES_AHEAD`] batches left, counting the leases asked for),
    /// without waiting for it; up to [`LEASES_AHEAD`] may be under way. A lease's
    /// jobs join the queue once it is durable; a worker that finds the queue empty
    /// waits for the oldest lease, and the others for its jobs.
    fn next_job(&mut self, poll: Duration) -> Option<SystemJob> {
        let shared = self.shared.clone();
        let mut local = lock(&shared.local);
        loop {
            if shared.stopping() || shared.paused() {
                return None;
            }
            // A lease answered joins the queue first (a queue that leases while the
            // caller waits answers at once: its jobs run before anything is asked).
            let answered = local.leases.front_mut().is_some_and(LeaseTicket::ready);
            if (answered || local.waiting.is_empty() && !local.leases.is_empty()) && !local.taking {
                let ticket = local.leases.pop_front().expect("a lease asked for");
                local.taking = true;
                drop(local);
                if !answered {
                    // Hand over what this worker finished while it waits.
                    self.flush();
                }
                let asked = ticket.asked;
                let leased = ticket.take();
                self.settle(false);
                local = lock(&shared.local);
                local.taking = false;
                shared.changed.notify_all();
                match leased {
                    Ok(jobs) => {
                        local.drained = jobs.len() < asked;
                        shared.stats.leased.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                        if shared.stopping() || shared.paused() {
                            drop(local);
                            shared.release(jobs.iter().map(|j| (j.id, j.fencing_token)).collect());
                            return None;
                        }
                        local.waiting.extend(jobs);
                        if local.waiting.is_empty() && local.leases.is_empty() {
                            drop(local);
                            shared.queue.wait_for_work(poll);
                            return None;
                        }
                    }
                    Err(e) => {
                        drop(local);
                        tracing::error!("leasing jobs failed: {e}");
                        std::thread::sleep(poll);
                        return None;
                    }
                }
                continue;
            }
            let batch = shared.batch_size();
            let asked: usize = local.leases.iter().map(|t| t.asked).sum();
            let under_way = local.leases.len() + usize::from(local.taking);
            // Lease ahead when the queue runs low, unless the last lease found the
            // backlog drained (then only when the queue is empty and nothing is asked).
            let low = local.waiting.len() + asked <= batch * LEASES_AHEAD
                && (!local.drained || local.waiting.is_empty() && under_way == 0);
            if low && under_way < LEASES_AHEAD {
                drop(local);
                // The finished jobs' completions share the lease's commit.
                self.flush();
                let ticket = shared.queue.lease_ahead(&shared.host, batch, shared.config.lease());
                local = lock(&shared.local);
                local.leases.push_back(ticket);
                continue;
            }
            if let Some(job) = local.waiting.pop_front() {
                return Some(job);
            }
            // Another worker is taking a lease's jobs: hand over what this one
            // finished, then wait for them.
            drop(local);
            self.flush();
            local = lock(&shared.local);
            if local.taking && local.waiting.is_empty() {
                local = shared.changed.wait_timeout(local, poll).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }

    fn run_job(&mut self, job: SystemJob) {
        let shared = &self.shared;
        lock(&shared.held).insert(job.id, job.fencing_token);
        let span = tracing::info_span!("job", id = %job.id, correlation_id = %job.correlation_id, name = %job.name);
        let _enter = span.enter();
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        lock(&shared.running).insert(job.id, (job.fencing_token, stop.clone()));
        let (run, purge_before) = match job.operation_type {
            OperationType::PluginExecution => (shared.pipeline.run_job(&job, stop), None),
            // The deletion service's work happens in the transaction that completes it.
            OperationType::DeletionService => (JobRun::succeeded(), self.purge_before()),
            // So is a bulk job action's: a batch of actions and the progress in one transaction.
            OperationType::JobAction => (JobRun::succeeded(), None),
            OperationType::BulkDelete | OperationType::BulkImport => (shared.pipeline.run_bulk(&job, stop), None),
            OperationType::Workflow => (shared.pipeline.run_workflow(&job, stop), None),
            OperationType::BulkEmail | OperationType::ActivityPropagation => {
                (shared.pipeline.run_mail(&job, stop), None)
            }
            OperationType::OutgoingActivity => match &shared.config.mailer {
                Some(mailer) => (shared.pipeline.run_outgoing_mail(&job, stop, mailer), None),
                // Leased before `[mail]` went away: it waits, and the next `serve` removes it.
                None => (JobRun::retry("mail_not_configured", "this process has no [mail] smtp setting".into()), None),
            },
        };
        lock(&shared.running).remove(&job.id);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        let avg = shared.avg_run_us.load(Ordering::Relaxed);
        let avg = if avg == 0 { took } else { (avg.saturating_mul(7).saturating_add(took)) / 8 };
        shared.avg_run_us.store(avg.max(1), Ordering::Relaxed);
        shared.stats.fuel_used.fetch_add(run.fuel_used, Ordering::Relaxed);
        shared.stats.run_us.fetch_add(run.duration_us, Ordering::Relaxed);
        tracing::debug!(fuel = run.fuel_used, us = run.duration_us, result = ?run.result, "job ran");
        if self.done.pending.is_empty() {
            self.done.since = Instant::now();
        }
        let retry =
            crate::jobs::RetryPolicy { max_retries: shared.config.max_retries, backoff_ms: shared.config.backoff_ms };
        self.done.pending.push(run.completion(&job, retry, purge_before));
    }

    /// Where the deletion service cuts off: jobs completed before this are deleted.
    fn purge_before(&self) -> Option<i64> {
        let retention = i64::try_from(self.shared.config.completed_job_retention_secs.saturating_mul(1000)).ok()?;
        (retention > 0).then(|| crate::clock::now_ms().saturating_sub(retention))
    }

    /// Hands the pending completions to the writer as one operation, without waiting.
    fn flush(&mut self) {
        if !self.done.pending.is_empty() {
            let pending = std::mem::take(&mut self.done.pending);
            let ids = pending.iter().map(|c| c.id).collect();
            self.done.submitted.push((self.shared.queue.complete_all(pending), ids));
        }
    }

    /// Counts the outcomes of submitted completions that are durable (all of them,
    /// waiting, when `block`), and stops holding their jobs.
    fn settle(&mut self, block: bool) {
        let stats = &self.shared.stats;
        let mut still = Vec::new();
        for (mut rx, ids) in self.done.submitted.drain(..) {
            let answer = if block {
                rx.blocking_recv().map_err(|_| ())
            } else {
                match rx.try_recv() {
                    Ok(a) => Ok(a),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                        still.push((rx, ids));
                        continue;
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(()),
                }
            };
            {
                let mut held = lock(&self.shared.held);
                for id in &ids {
                    held.remove(id);
                }
            }
            let outcomes = match answer {
                Ok(Ok(outcomes)) => outcomes,
                Ok(Err(e)) => {
                    tracing::error!("completing jobs failed (their leases will expire): {e}");
                    continue;
                }
                Err(()) => {
                    tracing::error!("the store's writer stopped while completing jobs");
                    continue;
                }
            };
            for outcome in outcomes {
                let counter = match outcome {
                    Ok(CompletionOutcome::Recorded { run, .. }) => match run {
                        RunOutcome::Succeeded => &stats.succeeded,
                        RunOutcome::Failed => &stats.failed,
                        RunOutcome::Retrying => &stats.retried,
                        RunOutcome::Canceled => &stats.canceled,
                        RunOutcome::Paused | RunOutcome::MoreToDo | RunOutcome::Waiting => continue,
                    },
                    Ok(CompletionOutcome::Deleted) => &stats.succeeded,
                    Ok(CompletionOutcome::Stale) => &stats.stale,
                    Ok(CompletionOutcome::Requeued) => &stats.requeued,
                    Err(e) => {
                        tracing::error!("completing a job failed (its lease will expire): {e}");
                        continue;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.done.submitted = still;
    }
}
