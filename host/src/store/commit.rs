//! Group commit: one writer thread owns the data write transactions. Producers
//! send change sets; the writer applies everything queued (up to a bound) in ONE
//! durable transaction and answers each producer only after that commit returns.
//!
//! **Invariant:** a change set is applied whole or not at all. Its version checks
//! run before any of its writes, against the state left by the change sets
//! before it in the same batch, so a conflicting set is simply skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::kv::{Reads, Write};
use super::pg;
use super::{RECORDS, Store, StoreError, StoredRecord, get};
use crate::codec;
use crate::jobs::SystemJob;

/// How many change sets may wait for the writer before producers block.
const QUEUE_BOUND: usize = 4096;

/// One record written by a change set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RecordChange {
    pub entity: String,
    pub id: Uuid,
    /// The version the change was computed from: `None` means the record must not exist.
    pub expected_version: Option<u64>,
    /// The new state; `None` deletes the record.
    pub new: Option<StoredRecord>,
}

/// Everything one request writes, applied atomically.
#[derive(Clone, Debug, Default)]
pub struct ChangeSet {
    pub records: Vec<RecordChange>,
    /// New system jobs; the writer assigns their ids and sequence numbers.
    pub jobs: Vec<SystemJob>,
    /// Workflow log rows (a run's steps), written with the steps' effects.
    pub log: Vec<LogRow>,
    /// Runs recorded for steps set to record (`crate::runs`): kept with the
    /// request's changes or the job's completion, whatever its result.
    pub runs: Vec<crate::runs::RecordedRun>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.jobs.is_empty() && self.log.is_empty() && self.runs.is_empty()
    }
}

/// One workflow log row of a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    pub job: Uuid,
    pub entry: crate::workflow::LogEntry,
    /// The index, in this change set's `jobs`, of the child job the step started:
    /// its id is known once the writer gives it.
    pub child: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another request changed a record this one read: run it again.
    #[error("{entity} {id} was changed by another request")]
    Conflict { entity: String, id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation was refused (e.g. an illegal job transition); nothing of it was written.
    #[error("{0}")]
    Refused(StoreError),
    #[error("the store's writer has stopped")]
    Stopped,
}

/// What a committed change set produced.
#[derive(Clone, Debug, Default)]
pub struct Receipt {
    /// The ids and sequence numbers given to the change set's jobs, in order.
    pub jobs: Vec<(Uuid, u64)>,
}

/// One operation of a batch. It may run more than once: on PostgreSQL a batch is
/// applied while the one before it commits, and applied again if another writer got
/// in between (`pg_writer`), so an operation reads and writes only through its
/// transaction (anything else it touches must not mind a repeat).
trait Operation: Send {
    /// Runs against the batch's transaction; the result is kept for [`Operation::answer`].
    fn run(&mut self, w: &Write<'_>) -> Ran;
    /// Answers the producer with the last run's result, or why the batch failed.
    fn answer(self: Box<Self>, batch: Option<&BatchFailure>);
    /// Answers without running: no transaction could begin.
    fn refuse(self: Box<Self>, e: &StoreError);
}

type Work = Box<dyn Operation>;

/// How a run of an operation went, for its batch.
#[derive(Clone, Copy, Default)]
struct Ran {
    /// A storage failure: the whole batch is abandoned.
    fatal: bool,
    /// The storage error was an unreachable database.
    unavailable: bool,
}

struct Op<T, F> {
    f: F,
    result: Option<Result<T, CommitError>>,
    reply: oneshot::Sender<Result<T, CommitError>>,
}

impl<T: Send, F: FnMut(&Write<'_>) -> Result<T, CommitError> + Send> Operation for Op<T, F> {
    fn run(&mut self, w: &Write<'_>) -> Ran {
        let result = (self.f)(w);
        let ran = Ran {
            fatal: matches!(result, Err(CommitError::Store(_))),
            unavailable: matches!(result, Err(CommitError::Store(StoreError::Unavailable(_)))),
        };
        self.result = Some(result);
        ran
    }

    fn answer(self: Box<Self>, batch: Option<&BatchFailure>) {
        let _ = self.reply.send(match (batch, self.result) {
            (None, Some(result)) => result,
            (Some(e), _) => Err(CommitError::Store(e.error())),
            (None, None) => Err(CommitError::Stopped),
        });
    }

    fn refuse(self: Box<Self>, e: &StoreError) {
        let _ = self.reply.send(Err(CommitError::Store(e.clone_for_reply())));
    }
}

/// The handle producers commit through. Cloning it is cheap.
#[derive(Clone)]
pub struct Committer {
    tx: SyncSender<Work>,
    wake: Arc<Wake>,
    stats: Arc<CommitStats>,
    _writer: Arc<WriterThread>,
}

/// The writer's counters since start-up: operations per commit is the group-commit
/// batch size.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
    /// Time spent making batches durable (redb commit: page writes and fsync).
    pub commit_us: AtomicU64,
    /// Time spent applying operations, from beginning a transaction to committing it
    /// (with `commit_us`: how busy the writer is).
    pub apply_us: AtomicU64,
    /// PostgreSQL: batches applied again because another transaction wrote while
    /// they were applied ahead of the commit before them.
    pub reapplied: AtomicU64,
    /// PostgreSQL: operations left to the next batch when a batch applied again under
    /// the writer lock was cut short ([`HANDOVER_SLICE`]).
    pub carried: AtomicU64,
}

/// Lets workers sleep until a commit queues new jobs.
#[derive(Default)]
struct Wake {
    generation: std::sync::Mutex<u64>,
    signal: std::sync::Condvar,
}

struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        // The sender side is gone by now (it is dropped before this field), so the
        // writer drains what is queued and exits.
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl Committer {
    /// Starts the writer thread for `store`, committing at most `max_batch` operations at once.
    pub fn start(store: Arc<Store>, max_batch: usize) -> Committer {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BOUND);
        let stats = Arc::new(CommitStats::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("plughost-writer".into())
            .spawn(move || writer(&store, &rx, max_batch.max(1), counters))
            .expect("spawn the writer thread");
        Committer { tx, wake: Arc::default(), stats, _writer: Arc::new(WriterThread(Some(thread))) }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Queues an operation for the next batch; the receiver gets its result once
    /// the batch is durable. The operation must check everything before it writes
    /// anything: a refused operation (`Err` other than a storage error) is skipped,
    /// not undone.
    pub(crate) fn submit_op<T: Send + 'static>(
        &self,
        op: impl FnMut(&Write<'_>) -> Result<T, CommitError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, CommitError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(work)) = self.tx.send(Box::new(Op { f: op, result: None, reply })) {
            // Never run: answered `Stopped`.
            work.answer(None);
        }
        rx
    }

    /// Queues a change set; the receiver gets the outcome once durable.
    pub(crate) fn submit(&self, changes: ChangeSet) -> oneshot::Receiver<Result<Receipt, CommitError>> {
        self.submit_op(move |txn| apply(txn, &changes))
    }

    /// Wakes workers waiting in [`Committer::wait_for_work`].
    pub(crate) fn notify(&self) {
        *self.wake.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.wake.signal.notify_all();
    }

    /// Sleeps until [`Committer::notify`] or `timeout`.
    pub(crate) fn wait_for_work(&self, timeout: std::time::Duration) {
        let g = self.wake.generation.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *g;
        let _ = self.wake.signal.wait_timeout_while(g, timeout, |g| *g == seen);
    }

    /// Commits `changes` and waits for the durable outcome (for blocking threads).
    pub fn commit_blocking(&self, changes: ChangeSet) -> Result<Receipt, CommitError> {
        let queues_jobs = !changes.jobs.is_empty();
        let result = self.submit(changes).blocking_recv().unwrap_or(Err(CommitError::Stopped));
        if queues_jobs && result.is_ok() {
            self.notify();
        }
        result
    }
}

/// Why a batch was not committed, told to each of its producers.
struct BatchFailure {
    message: String,
    /// The database could not be reached (a PostgreSQL store down or restarting).
    unavailable: bool,
}

impl BatchFailure {
    fn error(&self) -> StoreError {
        if self.unavailable {
            StoreError::Unavailable(self.message.clone())
        } else {
            StoreError::Db(self.message.clone())
        }
    }
}

fn writer(store: &Store, rx: &Receiver<Work>, max_batch: usize, stats: Arc<CommitStats>) {
    if let super::Engine::Pg(pg) = &store.engine {
        return pg_writer(pg, rx, max_batch, stats);
    }
    let stats = &*stats;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(store, batch, stats);
    }
}

/// Runs every operation in one transaction, commits once, then answers each.
fn commit_batch(store: &Store, mut batch: Vec<Work>, stats: &CommitStats) {
    let began = Instant::now();
    let mut applied = Instant::now();
    let result = store.transact(|w| {
        let ran = run_all(&mut batch, w);
        stats.apply_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        applied = Instant::now();
        (ran, !ran.fatal)
    });
    match result {
        Ok((ran, committed)) => {
            stats.commit_us.fetch_add(applied.elapsed().as_micros() as u64, Ordering::Relaxed);
            answer(batch, ran, committed);
        }
        Err(e) => refuse(batch, &e),
    }
}

/// Runs `batch` against `w`; how the runs went, together.
fn run_all(batch: &mut [Work], w: &Write<'_>) -> Ran {
    batch.iter_mut().fold(Ran::default(), |all, work| all.and(work.run(w)))
}

impl Ran {
    fn and(self, other: Ran) -> Ran {
        Ran { fatal: self.fatal || other.fatal, unavailable: self.unavailable || other.unavailable }
    }
}

/// Answers a batch that was applied: with each operation's result if it committed.
fn answer(batch: Vec<Work>, ran: Ran, committed: Result<(), StoreError>) {
    let outcome = match committed {
        _ if ran.fatal => Some(BatchFailure {
            message: "a storage error stopped the batch; nothing in it was committed".to_owned(),
            unavailable: ran.unavailable,
        }),
        Err(e) => Some(BatchFailure { unavailable: matches!(e, StoreError::Unavailable(_)), message: e.to_string() }),
        Ok(()) => None,
    };
    for work in batch {
        work.answer(outcome.as_ref());
    }
}

/// Answers a batch that could not run: no transaction began (a database that is
/// down: `store_unavailable`).
fn refuse(batch: Vec<Work>, e: &StoreError) {
    tracing::error!("cannot begin a write transaction: {e}; {} operations refused", batch.len());
    for work in batch {
        work.refuse(e);
    }
}

/// How often the PostgreSQL writer looks whether the commit under way has ended,
/// while it waits for operations.
const COMMIT_POLL: Duration = Duration::from_micros(500);

/// How long the PostgreSQL writer goes on applying operations that keep arriving
/// when no commit is under way, before it commits them: operations that arrive
/// later are applied while that batch commits.
const FIRST_GATHER: Duration = Duration::from_millis(2);

/// How long a PostgreSQL writer that found another process writing between two of
/// its batches leaves the store to it before it writes again, at most: it takes its
/// turn early once the other stops writing ([`wait_turn`]).
const WRITER_TURN: Duration = Duration::from_millis(500);

/// How long a PostgreSQL writer applies operations again under the writer lock (the
/// batch it had applied ahead was spoilt by another writer, or its predecessor
/// failed) before it commits them: the rest are applied while that slice commits, as
/// the next batch. A whole batch gathered during another process's turn took up to
/// 300 ms to apply under the lock, with PostgreSQL idle meanwhile.
const HANDOVER_SLICE: Duration = Duration::from_millis(5);

/// While a PostgreSQL writer leaves the store to another process, it looks this
/// often whether that one still writes...
const TURN_POLL: Duration = Duration::from_millis(5);
/// ... and takes its turn early once it found the writer row free this many times
/// in a row (a writer that has stopped writing, or writes now and then, does not
/// keep the other waiting for a whole turn).
const IDLE_POLLS: u32 = 4;

/// Waits while another process writes, for at most `turn`.
fn wait_turn(pg: &pg::Pg, turn: Duration) {
    let ends = Instant::now() + turn;
    let mut free = 0;
    while free < IDLE_POLLS && Instant::now() < ends {
        std::thread::sleep(TURN_POLL.min(ends.saturating_duration_since(Instant::now())));
        free = match pg.writer_free() {
            Ok(true) => free + 1,
            // Busy, or the database cannot say: wait on.
            _ => 0,
        };
    }
}

/// A batch whose commit runs on the commit thread.
struct InFlight {
    batch: Vec<Work>,
    ran: Ran,
    /// What it wrote: the next batch reads it over the database meanwhile.
    writes: Arc<pg::Writes>,
    /// The writer row's version it set.
    version: i64,
    /// The commit's outcome, once the commit thread told it.
    outcome: Option<Result<(), StoreError>>,
}

/// The thread that commits PostgreSQL batches, so the writer can apply the next one
/// meanwhile.
struct CommitThread {
    jobs: SyncSender<(pg::PgCommit, Arc<pg::Writes>)>,
    done: Receiver<Result<(), StoreError>>,
}

impl CommitThread {
    fn start(stats: Arc<CommitStats>) -> CommitThread {
        let (jobs, jobs_rx) = mpsc::sync_channel::<(pg::PgCommit, Arc<pg::Writes>)>(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("plughost-pg-commit".into())
            .spawn(move || {
                while let Ok((commit, writes)) = jobs_rx.recv() {
                    let began = Instant::now();
                    let outcome = commit.commit(&writes);
                    stats.commit_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let _ = done_tx.send(outcome);
                }
            })
            .expect("spawn the commit thread");
        CommitThread { jobs, done }
    }

    /// Whether the batch in flight has committed (or failed), without waiting.
    fn finished(&self, f: &mut InFlight) -> bool {
        if f.outcome.is_none() {
            f.outcome = self.done.try_recv().ok();
        }
        f.outcome.is_some()
    }

    /// Waits for the batch in flight to commit and answers its producers; whether it
    /// committed.
    fn settle(&self, mut f: InFlight) -> bool {
        let outcome = match f.outcome.take() {
            Some(o) => o,
            None => self.done.recv().unwrap_or_else(|_| Err(StoreError::Db("the commit thread stopped".into()))),
        };
        let committed = outcome.is_ok();
        answer(f.batch, f.ran, outcome);
        committed
    }
}

/// The writer on PostgreSQL: it applies a batch while the batch before it commits
/// (PostgreSQL executes one's writes while plughost applies the next: about a third
/// of a drain's time was the writer applying while PostgreSQL idled). The batch
/// applied ahead reads the committing batch's writes over the database, then takes
/// the writer lock once that one is durable; if the writer row's version shows that
/// another transaction (another `plughost serve`, or a registration in this one)
/// wrote in between, it forgets what it did and applies its operations again under
/// the lock. A batch whose predecessor failed is applied again too.
fn pg_writer(pg: &pg::Pg, rx: &Receiver<Work>, max_batch: usize, stats: Arc<CommitStats>) {
    let committer = CommitThread::start(stats.clone());
    let mut inflight: Option<InFlight> = None;
    // Operations of a batch cut short ([`HANDOVER_SLICE`]), ahead of the channel's.
    let mut carried: VecDeque<Work> = VecDeque::new();
    let mut closed = false;
    loop {
        // The first operation of the next batch; meanwhile the batch in flight may end.
        let first = match inflight.as_mut() {
            _ if !carried.is_empty() => carried.pop_front().expect("not empty"),
            None if closed => return,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            },
            Some(f) => {
                let mut first = None;
                while first.is_none() && !closed && !committer.finished(f) {
                    match rx.recv_timeout(COMMIT_POLL) {
                        Ok(w) => first = Some(w),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
                    }
                }
                match first {
                    Some(w) => w,
                    None => {
                        committer.settle(inflight.take().expect("in flight"));
                        continue;
                    }
                }
            }
        };
        let began = Instant::now();
        let txn = match &inflight {
            Some(f) => pg.begin_after(f.writes.clone()),
            None => pg.begin_write(),
        };
        let txn = match txn {
            Ok(t) => t,
            Err(e) => {
                if let Some(f) = inflight.take() {
                    committer.settle(f);
                }
                refuse(vec![first], &e);
                continue;
            }
        };
        let mut batch = vec![first];
        let mut ran = batch[0].run(&Write::Pg(&txn));
        // Time spent running operations (not waiting for them, or for the commit ahead).
        let mut applying = began.elapsed();
        // Gather what arrives while the batch ahead commits, until it has; with
        // nothing committing, what is queued, for at most `FIRST_GATHER` (what comes
        // later is applied while this batch commits).
        while batch.len() < max_batch {
            let next = match inflight.as_mut() {
                None if began.elapsed() >= FIRST_GATHER => break,
                None => match carried.pop_front().or_else(|| rx.try_recv().ok()) {
                    Some(work) => work,
                    None => break,
                },
                Some(f) => {
                    if committer.finished(f) {
                        break;
                    }
                    match carried.pop_front().map_or_else(|| rx.recv_timeout(COMMIT_POLL), Ok) {
                        Ok(work) => work,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            closed = true;
                            // Nothing more will come: wait for the commit ahead.
                            while !committer.finished(f) {
                                std::thread::sleep(COMMIT_POLL);
                            }
                            break;
                        }
                    }
                }
            };
            let mut work = next;
            let running = Instant::now();
            ran = ran.and(work.run(&Write::Pg(&txn)));
            applying += running.elapsed();
            batch.push(work);
        }
        let mut txn = txn;
        if let Some(f) = inflight.take() {
            let expected = f.version + 1;
            let ahead_committed = committer.settle(f);
            let version = match txn.lock() {
                Ok(v) => v,
                Err(e) => {
                    txn.rollback();
                    refuse(batch, &e);
                    continue;
                }
            };
            if !ahead_committed || version != expected {
                if ahead_committed && txn.after_other() {
                    // Another writer got in between, so what was read ahead may be
                    // stale. Let it have the store for a while (its batches go on
                    // overlapping their commits), then apply again: writers on several
                    // processes take turns instead of spoiling each other's batches.
                    txn.rollback();
                    wait_turn(pg, WRITER_TURN);
                    txn = match pg.begin_write() {
                        Ok(t) => t,
                        Err(e) => {
                            refuse(batch, &e);
                            continue;
                        }
                    };
                } else {
                    // What it read ahead never reached the store, or this process wrote
                    // in between (a registration): apply again on what the store holds.
                    txn.restart();
                }
                stats.reapplied.fetch_add(1, Ordering::Relaxed);
                // Under the lock nothing of this process's overlaps PostgreSQL's work:
                // apply a slice, commit it, and apply the rest while it commits.
                let running = Instant::now();
                ran = Ran::default();
                let mut done = 0;
                while done < batch.len() && (done == 0 || running.elapsed() < HANDOVER_SLICE) {
                    ran = ran.and(batch[done].run(&Write::Pg(&txn)));
                    done += 1;
                }
                stats.carried.fetch_add((batch.len() - done) as u64, Ordering::Relaxed);
                for work in batch.drain(done..).rev() {
                    carried.push_front(work);
                }
                applying += running.elapsed();
            }
        }
        stats.apply_us.fetch_add(applying.as_micros() as u64, Ordering::Relaxed);
        if ran.fatal {
            txn.rollback();
            answer(batch, ran, Ok(()));
            continue;
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let version = txn.version().expect("locked before it commits");
        let (writes, commit) = txn.send();
        if committer.jobs.send((commit, writes.clone())).is_err() {
            answer(batch, ran, Err(StoreError::Db("the commit thread stopped".into())));
            continue;
        }
        inflight = Some(InFlight { batch, ran, writes, version, outcome: None });
    }
}

pub(super) fn apply(w: &Write<'_>, changes: &ChangeSet) -> Result<Receipt, CommitError> {
    prefetch(w, [changes])?;
    let receipt = super::jobs::with_tables(w, |t| apply_in(t, changes))?;
    super::runs::keep_runs(w, &changes.runs)?;
    Ok(receipt)
}

/// Reads ahead, in one round trip per table, what applying `sets` reads: the records
/// they write (for the version checks) and the wait subscriptions of those that exist.
pub(super) fn prefetch<'a>(
    w: &Write<'_>,
    sets: impl IntoIterator<Item = &'a ChangeSet> + Clone,
) -> Result<(), StoreError> {
    let changes = || sets.clone().into_iter().flat_map(|s| &s.records);
    if changes().next().is_none() {
        return Ok(());
    }
    w.prefetch(&RECORDS, changes().map(|c| (c.entity.clone(), c.id.as_u128())))?;
    super::workflows::prefetch_waits(w, changes().filter(|c| c.expected_version.is_some()))
}

/// Applies `changes` with the job tables already open (a completion's effects).
pub(super) fn apply_in(t: &mut super::jobs::Tables<'_, '_>, changes: &ChangeSet) -> Result<Receipt, CommitError> {
    let now = crate::clock::now_ms();
    let before = apply_records(t.w, changes)?;
    // Waiting workflow runs learn of the change in its own transaction.
    super::workflows::wake(t, changes, &before, now)?;
    // The outbox follows the emails' status; a new Pending Send one starts the
    // outgoing-mail job.
    let mut woken = false;
    for (c, was) in changes.records.iter().zip(&before) {
        if c.entity != crate::mail::EMAIL {
            continue;
        }
        match (pending(was.as_ref()), pending(c.new.as_ref())) {
            (false, true) => {
                t.w.insert(&OUTBOX, &c.id.as_u128(), &())?;
                woken = true;
            }
            (true, false) => t.w.remove(&OUTBOX, &c.id.as_u128())?,
            _ => {}
        }
    }
    if woken {
        super::jobs::wake_outgoing_mail(t, now)?;
    }
    let receipt = Receipt { jobs: super::jobs::enqueue(t, &changes.jobs, now)? };
    super::workflows::write_log(t.w, changes, &receipt)?;
    Ok(receipt)
}

/// The Pending Send emails, by id: what the outgoing-mail job sends, without reading
/// the emails already sent.
pub(super) const OUTBOX: super::kv::Table<u128, ()> = super::kv::Table::new(super::kv::ALL_TABLES[36]);

/// Fills the outbox from the email records (schema 9's migration: emails a user's own
/// `email` entity marked Pending Send before).
pub(super) fn rebuild_outbox(w: &super::kv::Write<'_>) -> Result<usize, StoreError> {
    let email = crate::mail::EMAIL.to_owned();
    let mut pending_ids = Vec::new();
    w.scan(&RECORDS, (email.clone(), 0)..=(email, u128::MAX), false, |(_, id), v: Vec<u8>| {
        let record: StoredRecord = crate::codec::decode(&v)?;
        if pending(Some(&record)) {
            pending_ids.push(id);
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    for id in &pending_ids {
        w.insert(&OUTBOX, id, &())?;
    }
    Ok(pending_ids.len())
}

/// Whether an email record is Pending Send.
fn pending(email: Option<&StoredRecord>) -> bool {
    email.is_some_and(|r| {
        r.attributes.get("statuscode") == Some(&crate::model::Value::OptionSet(crate::mail::PENDING_SEND))
    })
}

/// Writes the change set's records, after checking every version against the
/// store: a conflict writes nothing. Returns each record as it was.
fn apply_records(w: &Write<'_>, changes: &ChangeSet) -> Result<Vec<Option<StoredRecord>>, CommitError> {
    let mut before = Vec::with_capacity(changes.records.len());
    for c in &changes.records {
        let current: Option<StoredRecord> = get(w, &RECORDS, &(c.entity.clone(), c.id.as_u128()))?;
        if current.as_ref().map(|r| r.version) != c.expected_version {
            return Err(CommitError::Conflict { entity: c.entity.clone(), id: c.id });
        }
        before.push(current);
    }
    for c in &changes.records {
        let key = (c.entity.clone(), c.id.as_u128());
        match &c.new {
            Some(r) => w.insert(&RECORDS, &key, &codec::encode(r).map_err(StoreError::from)?)?,
            None => w.remove(&RECORDS, &key)?,
        };
    }
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::META;

    /// A writer waiting for its turn goes on waiting while another holds the writer
    /// lock, and takes its turn early once nobody does.
    #[test]
    fn a_waiting_writer_takes_its_turn_early_when_the_other_stops_writing() {
        let Some(server) = plughost_test_support::postgres::server() else { return };
        let store = Store::open_postgres(&server.database(), 4).unwrap();
        let super::super::Engine::Pg(pg) = &store.engine else { unreachable!("a PostgreSQL store") };
        assert!(pg.writer_free().unwrap());
        let other = pg.begin_write().unwrap();
        assert!(!pg.writer_free().unwrap(), "a write transaction holds the writer row");
        let waited = Instant::now();
        wait_turn(pg, Duration::from_millis(300));
        assert!(waited.elapsed() >= Duration::from_millis(300), "the whole turn while the other writes");
        other.rollback();
        assert!(pg.writer_free().unwrap());
        let waited = Instant::now();
        wait_turn(pg, Duration::from_secs(60));
        assert!(waited.elapsed() < Duration::from_secs(30), "early: nobody writes");
    }

    /// A batch applied ahead and spoilt by another process's write is applied again
    /// under the writer lock a slice at a time: its first operation (slow when run
    /// again) commits alone, the others follow in the next batch, and each producer is
    /// answered only once its own operation is durable.
    #[test]
    fn a_batch_applied_again_under_the_lock_commits_a_slice_and_carries_the_rest() {
        let Some(server) = plughost_test_support::postgres::server() else { return };
        let url = server.database();
        let committer = Committer::start(Arc::new(Store::open_postgres(&url, 4).unwrap()), 64);
        let other = Store::open_postgres(&url, 4).unwrap();
        let (go, went) = mpsc::channel::<()>();
        // Another process: waits for the writer lock while the first batch holds it,
        // then keeps it long enough for the second batch to find its write.
        let intruder = std::thread::spawn(move || {
            went.recv().unwrap();
            let super::super::Engine::Pg(pg) = &other.engine else { unreachable!("a PostgreSQL store") };
            let txn = pg.begin_write().unwrap();
            Write::Pg(&txn).insert(&META, &"intruder".to_owned(), &codec::encode(&1u64).unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            txn.commit().unwrap();
        });
        let key = |i: usize| format!("sliced_{i}");
        let write = move |i: usize| {
            let mut runs = 0;
            move |w: &Write<'_>| {
                runs += 1;
                if runs > 1 {
                    // Longer than a slice when applied again.
                    std::thread::sleep(HANDOVER_SLICE * 2);
                }
                w.insert(&META, &key(i), &codec::encode(&(i as u64)).map_err(StoreError::from)?)?;
                Ok(runs)
            }
        };
        let first = committer.submit_op({
            let mut write = write(0);
            move |w: &Write<'_>| {
                let _ = go.send(());
                // The other process now waits for the lock this batch holds; the
                // batch's commit takes a while, so the next batch gathers them all.
                std::thread::sleep(Duration::from_millis(100));
                for n in 0..50_000u32 {
                    w.insert(&META, &format!("bulk_{n}"), &Vec::new())?;
                }
                write(w)
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let rest: Vec<_> = (1..5).map(|i| committer.submit_op(write(i))).collect();
        assert_eq!(first.blocking_recv().unwrap().unwrap(), 1);
        let read = Store::open_postgres(&url, 2).unwrap();
        for (i, answer) in (1..5).zip(rest) {
            answer.blocking_recv().unwrap().unwrap();
            let stored: Option<u64> = get(&read.read().unwrap(), &META, &key(i)).unwrap();
            assert_eq!(stored, Some(i as u64), "operation {i} is durable once answered");
        }
        intruder.join().unwrap();
        let stats = committer.stats();
        assert!(stats.reapplied.load(Ordering::Relaxed) >= 1, "the other process spoilt a batch applied ahead");
        assert!(stats.carried.load(Ordering::Relaxed) >= 1, "a slice committed without the rest of its batch");
    }

    /// Two processes' writers on one database (two stores: two pools with their own
    /// writer names), each applying batches ahead of their commits, increment one
    /// counter from several threads: every acknowledged increment is there, so a batch
    /// that read ahead over another process's write never committed.
    #[test]
    fn writers_of_two_processes_on_one_postgresql_database_lose_no_update() {
        let Some(pg) = plughost_test_support::postgres::server() else { return };
        let url = pg.database();
        let committers: Vec<Committer> =
            (0..2).map(|_| Committer::start(Arc::new(Store::open_postgres(&url, 4).unwrap()), 64)).collect();
        const KEY: &str = "test_counter";
        let threads: Vec<_> = committers
            .iter()
            .flat_map(|c| std::iter::repeat_n(c.clone(), 3))
            .map(|c| {
                std::thread::spawn(move || {
                    let mut acknowledged = 0u64;
                    for _ in 0..20 {
                        let answers: Vec<_> = (0..10)
                            .map(|_| {
                                c.submit_op(|w| {
                                    let n: u64 = get(w, &META, &KEY.to_owned())?.unwrap_or(0);
                                    w.insert(
                                        &META,
                                        &KEY.to_owned(),
                                        &codec::encode(&(n + 1)).map_err(StoreError::from)?,
                                    )?;
                                    Ok(())
                                })
                            })
                            .collect();
                        for answer in answers {
                            answer.blocking_recv().unwrap().unwrap();
                            acknowledged += 1;
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 2 * 3 * 20 * 10);
        let store = Store::open_postgres(&url, 2).unwrap();
        let counted: u64 = get(&store.read().unwrap(), &META, &KEY.to_owned()).unwrap().unwrap();
        assert_eq!(counted, total, "every increment is there once");
        let applied_again: u64 = committers.iter().map(|c| c.stats().reapplied.load(Ordering::Relaxed)).sum();
        eprintln!("batches applied again: {applied_again}");
    }
}
