//! The request's write buffer with undo-journal savepoints, bounded in size.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::jobs::SystemJob;
use crate::store::StoredRecord;

/// A record in the overlay: the version it had in the snapshot, and its state now.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) base: Option<u64>,
    pub(super) state: Option<StoredRecord>,
}

/// The request's write buffer. Savepoints are an undo journal: a nested call that
/// fails undoes just its own writes, so a savepoint costs what it changes, not the
/// size of the buffer.
#[derive(Default)]
pub(super) struct Overlay {
    pub(super) records: BTreeMap<(String, Uuid), Slot>,
    pub(super) jobs: Vec<SystemJob>,
    /// Approximate bytes of the buffered records: bounded by the write limit.
    pub(super) bytes: u64,
    /// While a savepoint is open: each write's key and the slot it replaced.
    pub(super) journal: Vec<((String, Uuid), Option<Slot>)>,
    pub(super) open_savepoints: usize,
}

/// Where a savepoint began: the journal's and the job list's lengths.
pub(super) struct Savepoint {
    pub(super) journal: usize,
    pub(super) jobs: usize,
}

pub(super) fn record_bytes(state: Option<&StoredRecord>) -> u64 {
    state.map_or(0, |r| 32 + r.attributes.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>() as u64)
}

impl Overlay {
    pub(super) fn savepoint(&mut self) -> Savepoint {
        self.open_savepoints += 1;
        Savepoint { journal: self.journal.len(), jobs: self.jobs.len() }
    }

    /// Closes a savepoint; on failure, undoes every write made since it.
    pub(super) fn close(&mut self, savepoint: Savepoint, failed: bool) {
        self.open_savepoints -= 1;
        if failed {
            while self.journal.len() > savepoint.journal {
                let Some((key, previous)) = self.journal.pop() else { break };
                let now = self.records.get(&key).and_then(|s| s.state.as_ref()).map_or(0, |r| record_bytes(Some(r)));
                let then = previous.as_ref().map_or(0, |s| record_bytes(s.state.as_ref()));
                self.bytes = (self.bytes + then).saturating_sub(now);
                match previous {
                    Some(slot) => self.records.insert(key, slot),
                    None => self.records.remove(&key),
                };
            }
            self.jobs.truncate(savepoint.jobs);
        }
        if self.open_savepoints == 0 {
            // Nothing can be undone any more.
            self.journal.clear();
        }
    }
}
