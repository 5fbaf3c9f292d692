//! Group commit: one writer thread owns the data write transactions. Producers
//! send change sets; the writer applies everything queued (up to a bound) in ONE
//! durable transaction and answers each producer only after that commit returns.
//!
//! **Invariant:** a change set is applied whole or not at all. Its version checks
//! run before any of its writes, against the state left by the change sets
//! before it in the same batch, so a conflicting set is simply skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::kv::{Reads, Write};
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

/// One operation of a batch: it runs against the batch's transaction and returns
/// how to answer its producer once the commit's outcome is known.
/// Without a transaction (it could not begin), the operation answers with the failure.
type Work = Box<dyn FnOnce(Result<&Write<'_>, &StoreError>) -> Done + Send>;

/// Answers an operation's producer, given how its batch ended.
type Finish = Box<dyn FnOnce(Option<&BatchFailure>) + Send>;

struct Done {
    /// A storage failure: the whole batch is abandoned.
    fatal: bool,
    /// The storage error was an unreachable database.
    unavailable: bool,
    finish: Finish,
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
            .spawn(move || writer(&store, &rx, max_batch.max(1), &counters))
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
        op: impl FnOnce(&Write<'_>) -> Result<T, CommitError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, CommitError>> {
        let (reply, rx) = oneshot::channel();
        let work: Work = Box::new(move |txn| {
            let result = match txn {
                Ok(w) => op(w),
                Err(e) => Err(CommitError::Store(e.clone_for_reply())),
            };
            let fatal = matches!(result, Err(CommitError::Store(_)));
            let unavailable = matches!(result, Err(CommitError::Store(StoreError::Unavailable(_))));
            Done {
                fatal,
                unavailable,
                finish: Box::new(move |batch_error| {
                    let _ = reply.send(match batch_error {
                        None => result,
                        Some(e) => Err(CommitError::Store(e.error())),
                    });
                }),
            }
        });
        if self.tx.send(work).is_err() {
            let (reply, rx) = oneshot::channel();
            let _ = reply.send(Err(CommitError::Stopped));
            return rx;
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

fn writer(store: &Store, rx: &Receiver<Work>, max_batch: usize, stats: &CommitStats) {
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
fn commit_batch(store: &Store, batch: Vec<Work>, stats: &CommitStats) {
    let began = Instant::now();
    let n = batch.len();
    let mut applied = Instant::now();
    let mut batch = Some(batch);
    let result = store.transact(|w| {
        let batch = batch.take().expect("the batch runs once");
        let mut done = Vec::with_capacity(batch.len());
        let mut fatal = false;
        for work in batch {
            let d = work(Ok(w));
            fatal |= d.fatal;
            done.push(d);
        }
        stats.apply_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        applied = Instant::now();
        (done, !fatal)
    });
    let (done, committed) = match result {
        Ok(r) => r,
        Err(e) => {
            // Each producer hears why (a database that is down: `store_unavailable`).
            tracing::error!("cannot begin a write transaction: {e}; {n} operations refused");
            for work in batch.into_iter().flatten() {
                (work(Err(&e)).finish)(None);
            }
            return;
        }
    };
    stats.commit_us.fetch_add(applied.elapsed().as_micros() as u64, Ordering::Relaxed);
    let fatal = done.iter().any(|d| d.fatal);
    let outcome = match committed {
        _ if fatal => Some(BatchFailure {
            message: "a storage error stopped the batch; nothing in it was committed".to_owned(),
            unavailable: done.iter().any(|d| d.unavailable),
        }),
        Err(e) => Some(BatchFailure { unavailable: matches!(e, StoreError::Unavailable(_)), message: e.to_string() }),
        Ok(()) => None,
    };
    for d in done {
        (d.finish)(outcome.as_ref());
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
