//! A measurement baseline for `plughost bench queue`: the least redb work a durable
//! queue does per job, with none of plughost's (no decoding, no state machine, no
//! status counts), so a drain can be read against what this machine's disk and redb
//! allow. Only the store touches redb, so the loop lives here.

use std::path::Path;
use std::time::Instant;

use redb::{Database, ReadableTable, TableDefinition};

use super::StoreError;

const READY: TableDefinition<u64, u128> = TableDefinition::new("ready");
const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
const LEASES: TableDefinition<(i64, u128), ()> = TableDefinition::new("leases");
const DONE: TableDefinition<(i64, u128), ()> = TableDefinition::new("done");

/// Jobs per second of the minimal durable queue loop in a fresh database in `dir`:
/// `jobs` records of `record_bytes` with sequential keys and a ready index are
/// written first (not timed); then, `batch` jobs per durable commit, each job is
/// leased (ready entry removed, record read and rewritten, lease entry added) and,
/// in the next commit with the next batch's leases, completed (record read and
/// rewritten, lease entry removed, completion entry added): two record writes and
/// four index updates per job, as the queue's lease and completion do.
pub(crate) fn raw_queue_jobs_per_second(
    dir: &Path,
    jobs: usize,
    batch: usize,
    record_bytes: usize,
) -> Result<f64, StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Db(e.to_string());
    let db = Database::create(dir.join("raw-baseline.redb")).map_err(|e| err(&e))?;
    let record = vec![7u8; record_bytes];
    let base = 0x0190_0000_0000_0000_0000_0000_0000_0000u128;
    let txn = db.begin_write().map_err(|e| err(&e))?;
    {
        let mut ready = txn.open_table(READY).map_err(|e| err(&e))?;
        let mut records = txn.open_table(RECORDS).map_err(|e| err(&e))?;
        for i in 0..jobs as u64 {
            ready.insert(i, base + u128::from(i)).map_err(|e| err(&e))?;
            records.insert(base + u128::from(i), record.as_slice()).map_err(|e| err(&e))?;
        }
        txn.open_table(LEASES).map_err(|e| err(&e))?;
        txn.open_table(DONE).map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))?;

    let started = Instant::now();
    let mut leased: Vec<u128> = Vec::new();
    loop {
        let txn = db.begin_write().map_err(|e| err(&e))?;
        let next: Vec<u128>;
        {
            let mut ready = txn.open_table(READY).map_err(|e| err(&e))?;
            let mut records = txn.open_table(RECORDS).map_err(|e| err(&e))?;
            let mut leases = txn.open_table(LEASES).map_err(|e| err(&e))?;
            let mut done = txn.open_table(DONE).map_err(|e| err(&e))?;
            // Complete the previous batch.
            for id in &leased {
                let mut bytes = records.get(*id).map_err(|e| err(&e))?.map(|v| v.value().to_vec()).unwrap_or_default();
                bytes[0] = 2;
                records.insert(*id, bytes.as_slice()).map_err(|e| err(&e))?;
                leases.remove((1, *id)).map_err(|e| err(&e))?;
                done.insert((2, *id), ()).map_err(|e| err(&e))?;
            }
            // Lease the next one.
            let keys: Vec<(u64, u128)> = ready
                .iter()
                .map_err(|e| err(&e))?
                .take(batch)
                .map(|e| e.map(|(k, v)| (k.value(), v.value())))
                .collect::<Result<_, _>>()
                .map_err(|e| err(&e))?;
            next = keys.iter().map(|(_, id)| *id).collect();
            for (seq, id) in keys {
                ready.remove(seq).map_err(|e| err(&e))?;
                let mut bytes = records.get(id).map_err(|e| err(&e))?.map(|v| v.value().to_vec()).unwrap_or_default();
                bytes[0] = 1;
                records.insert(id, bytes.as_slice()).map_err(|e| err(&e))?;
                leases.insert((1, id), ()).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        if next.is_empty() {
            break;
        }
        leased = next;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}
