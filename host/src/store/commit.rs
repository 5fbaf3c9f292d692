//! Group commit: one writer thread owns the data write transactions. Producers
//! send change sets; the writer applies everything queued (up to a bound) in ONE
//! durable transaction and answers each producer only after that commit returns.
//!
//! **Invariant:** a change set is applied whole or not at all. Its version checks
//! run before any of its writes, against the state left by the change sets
//! before it in the same batch, so a conflicting set is simply skipped.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use redb::WriteTransaction;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{JOB_SEQUENCE, JOBS, META, RECORDS, Store, StoreError, StoredRecord, get};
use crate::codec;
use crate::jobs::SystemJob;

/// How many change sets may wait for the writer before producers block.
const QUEUE_BOUND: usize = 4096;

/// One record written by a change set.
#[derive(Clone, Debug)]
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
    /// New system jobs; the writer assigns their sequence numbers.
    pub jobs: Vec<SystemJob>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.jobs.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another request changed a record this one read: run it again.
    #[error("{entity} {id} was changed by another request")]
    Conflict { entity: String, id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store's writer has stopped")]
    Stopped,
}

/// What a committed change set produced.
#[derive(Clone, Debug, Default)]
pub struct Receipt {
    /// The sequence numbers given to the change set's jobs, in order.
    pub job_sequences: Vec<u64>,
}

struct Pending {
    changes: ChangeSet,
    reply: oneshot::Sender<Result<Receipt, CommitError>>,
}

/// The handle producers commit through. Cloning it is cheap.
#[derive(Clone)]
pub struct Committer {
    tx: SyncSender<Pending>,
    _writer: Arc<WriterThread>,
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
    /// Starts the writer thread for `store`, committing at most `max_batch` change sets at once.
    pub fn start(store: Arc<Store>, max_batch: usize) -> Committer {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BOUND);
        let thread = std::thread::Builder::new()
            .name("plughost-writer".into())
            .spawn(move || writer(&store, &rx, max_batch.max(1)))
            .expect("spawn the writer thread");
        Committer { tx, _writer: Arc::new(WriterThread(Some(thread))) }
    }

    /// Queues `changes` and returns a receiver for the outcome, sent once durable.
    pub fn submit(&self, changes: ChangeSet) -> oneshot::Receiver<Result<Receipt, CommitError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(p)) = self.tx.send(Pending { changes, reply }) {
            let _ = p.reply.send(Err(CommitError::Stopped));
        }
        rx
    }

    /// Commits `changes` and waits for the durable outcome (for blocking threads).
    pub fn commit_blocking(&self, changes: ChangeSet) -> Result<Receipt, CommitError> {
        self.submit(changes).blocking_recv().unwrap_or(Err(CommitError::Stopped))
    }

    /// Commits `changes` and waits for the durable outcome.
    pub async fn commit(&self, changes: ChangeSet) -> Result<Receipt, CommitError> {
        self.submit(changes).await.unwrap_or(Err(CommitError::Stopped))
    }
}

fn writer(store: &Store, rx: &Receiver<Pending>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let results = commit_batch(store, &batch);
        for (pending, result) in batch.into_iter().zip(results) {
            let _ = pending.reply.send(result);
        }
    }
}

/// Applies each change set that passes its checks, then commits once.
fn commit_batch(store: &Store, batch: &[Pending]) -> Vec<Result<Receipt, CommitError>> {
    let failed = |e: StoreError| batch.iter().map(|_| Err(CommitError::Store(StoreError::Db(e.to_string())))).collect();
    let txn = match store.db.begin_write() {
        Ok(t) => t,
        Err(e) => return failed(e.into()),
    };
    let mut results = Vec::with_capacity(batch.len());
    for p in batch {
        match apply(&txn, &p.changes) {
            Ok(r) => results.push(Ok(r)),
            Err(CommitError::Store(e)) => return failed(e),
            Err(e) => results.push(Err(e)),
        }
    }
    match txn.commit() {
        Ok(()) => results,
        Err(e) => failed(e.into()),
    }
}

fn apply(txn: &WriteTransaction, changes: &ChangeSet) -> Result<Receipt, CommitError> {
    let mut records = txn.open_table(RECORDS).map_err(StoreError::from)?;
    // Check every version before writing anything.
    for c in &changes.records {
        let current: Option<StoredRecord> = get(&records, (c.entity.as_str(), c.id.as_u128()))?;
        if current.map(|r| r.version) != c.expected_version {
            return Err(CommitError::Conflict { entity: c.entity.clone(), id: c.id });
        }
    }
    for c in &changes.records {
        let key = (c.entity.as_str(), c.id.as_u128());
        match &c.new {
            Some(r) => {
                records.insert(key, codec::encode(r).map_err(StoreError::from)?.as_slice()).map_err(StoreError::from)?
            }
            None => records.remove(key).map_err(StoreError::from)?,
        };
    }
    let mut receipt = Receipt::default();
    if !changes.jobs.is_empty() {
        let mut meta = txn.open_table(META).map_err(StoreError::from)?;
        let mut sequence: u64 = get(&meta, JOB_SEQUENCE)?.unwrap_or(0);
        let mut jobs = txn.open_table(JOBS).map_err(StoreError::from)?;
        for job in &changes.jobs {
            sequence += 1;
            let mut job = job.clone();
            job.sequence = sequence;
            jobs.insert(job.id.as_u128(), codec::encode(&job).map_err(StoreError::from)?.as_slice())
                .map_err(StoreError::from)?;
            receipt.job_sequences.push(sequence);
        }
        meta.insert(JOB_SEQUENCE, codec::encode(&sequence).map_err(StoreError::from)?.as_slice())
            .map_err(StoreError::from)?;
    }
    Ok(receipt)
}
