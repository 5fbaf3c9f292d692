//! The system-job queue's tables and every change to a job, inside a write
//! transaction.
//!
//! **Invariants:**
//! - Every job write goes through [`put_job`], which keeps the indexes equal to
//!   what the job records say, and checks the status transition.
//! - `ready` holds exactly the runnable jobs: WaitingForResources, due, and first
//!   of their dependency token's chain. Leasing is a range read of its first keys,
//!   O(log n) whatever the backlog.
//! - Each operation checks everything before it writes anything, so the group
//!   committer can skip a refused operation without undoing half of it.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{DELETION_SERVICE_JOB, JOB_CONTEXTS, JOB_SEQUENCE, JOBS, META, StoreError, get};
use crate::codec;
use crate::jobs::{JobState, JobStatus, SystemJob};

/// Runnable jobs by creation sequence.
pub(super) const READY: TableDefinition<u64, u128> = TableDefinition::new("jobs_ready");
/// Jobs waiting for their postpone-until time: (time, id).
pub(super) const POSTPONED: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_postponed");
/// Unfinished jobs with a dependency token, in creation order: (token, sequence) -> id.
pub(super) const TOKENS: TableDefinition<(&str, u64), u128> = TableDefinition::new("jobs_tokens");
/// Locked jobs by lease expiry: (expiry, id).
pub(super) const LEASES: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_leases");
/// Unfinished jobs by the step that queued them: (step, job).
pub(super) const STEP_JOBS: TableDefinition<(u128, u128), ()> = TableDefinition::new("jobs_by_step");
/// Completed jobs by completion time: (completed on, id). The deletion service
/// purges from its start.
pub(super) const COMPLETED: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_completed");
/// An import job's rows: (job, row index) -> encoded record. Deleted with the job.
pub(super) const BULK_ROWS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("bulk_rows");
/// How many jobs have each status code, for metrics without a scan.
pub(super) const STATUS_COUNTS: TableDefinition<u32, u64> = TableDefinition::new("jobs_status_counts");

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The job tables of one write transaction, opened once per operation.
pub(crate) struct Tables<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    jobs: redb::Table<'t, u128, &'static [u8]>,
    contexts: redb::Table<'t, u128, &'static [u8]>,
    ready: redb::Table<'t, u64, u128>,
    postponed: redb::Table<'t, (i64, u128), ()>,
    tokens: redb::Table<'t, (&'static str, u64), u128>,
    leases: redb::Table<'t, (i64, u128), ()>,
    step_jobs: redb::Table<'t, (u128, u128), ()>,
    completed: redb::Table<'t, (i64, u128), ()>,
    bulk_rows: redb::Table<'t, (u128, u64), &'static [u8]>,
    counts: redb::Table<'t, u32, u64>,
    /// Status-count changes, written once when the operation ends.
    deltas: [i64; JobStatus::ALL.len()],
}

fn slot(status: JobStatus) -> usize {
    JobStatus::ALL.iter().position(|s| *s == status).expect("every status is listed")
}

/// Runs an operation on the job tables, opened once, and writes the status counts
/// it changed at the end.
pub(crate) fn with_tables<T, E: From<StoreError>>(
    txn: &WriteTransaction,
    op: impl FnOnce(&mut Tables<'_>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let mut t = Tables::open(txn)?;
    let out = op(&mut t)?;
    for (i, delta) in t.deltas.into_iter().enumerate() {
        if delta != 0 {
            let code = JobStatus::ALL[i].code();
            let c = t.counts.get(code).map_err(err)?.map_or(0, |v| v.value());
            t.counts.insert(code, c.saturating_add_signed(delta)).map_err(err)?;
        }
    }
    Ok(out)
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            meta: txn.open_table(META).map_err(err)?,
            jobs: txn.open_table(JOBS).map_err(err)?,
            contexts: txn.open_table(JOB_CONTEXTS).map_err(err)?,
            ready: txn.open_table(READY).map_err(err)?,
            postponed: txn.open_table(POSTPONED).map_err(err)?,
            tokens: txn.open_table(TOKENS).map_err(err)?,
            leases: txn.open_table(LEASES).map_err(err)?,
            step_jobs: txn.open_table(STEP_JOBS).map_err(err)?,
            completed: txn.open_table(COMPLETED).map_err(err)?,
            bulk_rows: txn.open_table(BULK_ROWS).map_err(err)?,
            counts: txn.open_table(STATUS_COUNTS).map_err(err)?,
            deltas: [0; JobStatus::ALL.len()],
        })
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A job without its context (see [`fill_context`]): what every transition needs.
pub(crate) fn load(t: &Tables<'_>, id: Uuid) -> Result<Option<SystemJob>> {
    get(&t.jobs, id.as_u128())
}

/// Puts a loaded job's context back, for callers that run or show it.
pub(crate) fn fill_context(contexts: &impl ReadableTable<u128, &'static [u8]>, job: &mut SystemJob) -> Result<()> {
    if let Some(c) = get(contexts, job.id.as_u128())? {
        job.context = c;
    }
    Ok(())
}

fn is_due(job: &SystemJob, now: i64) -> bool {
    job.postpone_until.is_none_or(|t| t <= now)
}

/// The first unfinished job of `token`'s chain.
fn token_head(t: &Tables<'_>, token: &str) -> Result<Option<u128>> {
    let first = t.tokens.range((token, 0)..=(token, u64::MAX)).map_err(err)?.next();
    Ok(match first {
        Some(entry) => Some(entry.map_err(err)?.1.value()),
        None => None,
    })
}

/// Writes `new` in place of `old` (either may be absent: insert, delete) and keeps
/// every index in step. Refuses a transition the state table does not allow.
pub(crate) fn put_job(t: &mut Tables<'_>, old: Option<&SystemJob>, new: Option<&SystemJob>, now: i64) -> Result<()> {
    if let (Some(o), Some(n)) = (old, new)
        && o.status != n.status
        && !o.status.can_become(n.status)
    {
        return Err(StoreError::Conflict(format!("job {} cannot go from {} to {}", o.id, o.status, n.status)));
    }
    let (old_done, new_done) = (old.and_then(completed_key), new.and_then(completed_key));
    if old_done != new_done {
        if let Some(key) = old_done {
            t.completed.remove(key).map_err(err)?;
        }
        if let Some(key) = new_done {
            t.completed.insert(key, ()).map_err(err)?;
        }
    }
    if let Some(o) = old {
        let id = o.id.as_u128();
        // Only a ready job can be in the ready index.
        if o.status == JobStatus::WaitingForResources {
            t.ready.remove(o.sequence).map_err(err)?;
        }
        if let Some(at) = o.postpone_until {
            t.postponed.remove((at, id)).map_err(err)?;
        }
        if let Some(at) = o.lease_expiry {
            t.leases.remove((at, id)).map_err(err)?;
        }
        // Token and step entries exist while a job is unfinished: keep them when they stay.
        if in_chains(old) && !in_chains(new) {
            if let Some(token) = &o.dependency_token {
                t.tokens.remove((token.as_str(), o.sequence)).map_err(err)?;
            }
            if let Some(step) = o.step_id {
                t.step_jobs.remove((step.as_u128(), id)).map_err(err)?;
            }
        }
        t.deltas[slot(o.status)] -= 1;
    }
    match new {
        Some(n) => {
            // The context lives in its own table, written once; the record stays small.
            if old.is_none() {
                t.contexts.insert(n.id.as_u128(), codec::encode(&n.context)?.as_slice()).map_err(err)?;
            }
            // The record never holds the context (`SystemJob::context` is skipped).
            let record = codec::encode(n)?;
            t.jobs.insert(n.id.as_u128(), record.as_slice()).map_err(err)?;
            t.deltas[slot(n.status)] += 1;
        }
        None => {
            if let Some(o) = old {
                let id = o.id.as_u128();
                t.jobs.remove(id).map_err(err)?;
                t.contexts.remove(id).map_err(err)?;
                if o.operation_type == crate::jobs::OperationType::BulkImport {
                    t.bulk_rows.retain_in((id, 0)..=(id, u64::MAX), |_, _| false).map_err(err)?;
                }
            }
        }
    }
    if let Some(n) = new {
        let id = n.id.as_u128();
        if in_chains(new) && !in_chains(old) {
            if let Some(token) = &n.dependency_token {
                t.tokens.insert((token.as_str(), n.sequence), id).map_err(err)?;
                // A job re-entering its chain (a retried one) ahead of the current head
                // takes its place: the old head waits again.
                if token_head(t, token)? == Some(id) {
                    let behind = t.tokens.range((token.as_str(), n.sequence + 1)..=(token.as_str(), u64::MAX));
                    if let Some(entry) = behind.map_err(err)?.next() {
                        let previous_head = entry.map_err(err)?.0.value().1;
                        t.ready.remove(previous_head).map_err(err)?;
                    }
                }
            }
            if let Some(step) = n.step_id {
                t.step_jobs.insert((step.as_u128(), id), ()).map_err(err)?;
            }
        }
        if n.state() == JobState::Locked
            && let Some(at) = n.lease_expiry
        {
            t.leases.insert((at, id), ()).map_err(err)?;
        }
        let waits_for_time = matches!(n.status, JobStatus::WaitingForResources | JobStatus::Waiting) && !is_due(n, now)
            || n.status == JobStatus::Waiting && n.postpone_until.is_some();
        if waits_for_time && let Some(at) = n.postpone_until {
            t.postponed.insert((at, id), ()).map_err(err)?;
        }
        make_ready_if_runnable(t, n, now)?;
    }
    // A job leaving its token's chain lets the next one run.
    if let Some(token) = old.and_then(|o| o.dependency_token.as_ref())
        && new.is_none_or(|n| n.state() == JobState::Completed)
        && let Some(head) = token_head(t, token)?
        && let Some(next) = load(t, Uuid::from_u128(head))?
    {
        make_ready_if_runnable(t, &next, now)?;
    }
    Ok(())
}

/// A completed job's entry in the completion-time index.
fn completed_key(job: &SystemJob) -> Option<(i64, u128)> {
    (job.state() == JobState::Completed).then(|| (job.completed_on.unwrap_or(job.created_on), job.id.as_u128()))
}

/// Deletes up to `max` jobs that completed before `before`, oldest first; returns
/// how many.
pub(crate) fn purge_completed(t: &mut Tables<'_>, before: i64, max: usize, now: i64) -> Result<usize> {
    let ids = ids_before(&t.completed, before, max)?;
    for id in &ids {
        if let Some(old) = load(t, Uuid::from_u128(*id))? {
            put_job(t, Some(&old), None, now)?;
        }
    }
    Ok(ids.len())
}

/// Makes the deletion service job exist, unfinished, exactly when `pattern` is given:
/// creates it (first run now), or removes a waiting one when completed jobs are kept.
pub(crate) fn ensure_deletion_service(
    t: &mut Tables<'_>,
    pattern: Option<&str>,
    now: i64,
) -> Result<Option<SystemJob>> {
    let current = match get::<_, Uuid, _>(&t.meta, DELETION_SERVICE_JOB)? {
        Some(id) => load(t, id)?.filter(|j| j.state() != JobState::Completed),
        None => None,
    };
    match (current, pattern) {
        (Some(job), Some(_)) => Ok(Some(job)),
        (Some(job), None) => {
            // A running one finishes; the next start removes it.
            if job.state() != JobState::Locked {
                put_job(t, Some(&job), None, now)?;
            }
            Ok(None)
        }
        (None, Some(pattern)) => {
            let job = SystemJob::deletion_service(pattern, now);
            let (id, sequence) = enqueue(t, std::slice::from_ref(&job), now)?[0];
            t.meta.insert(DELETION_SERVICE_JOB, codec::encode(&id)?.as_slice()).map_err(err)?;
            Ok(Some(SystemJob { id, sequence, ..job }))
        }
        (None, None) => Ok(None),
    }
}

/// Rewrites job records of schemas 1 to 3 in the current layout, a chunk at a time:
/// schemas 1 and 2 lack `output`, schema 3 has it; all three hold the (empty)
/// context in the record and lack the counters.
pub(super) fn upgrade_job_records(txn: &WriteTransaction, from: u32) -> Result<u64> {
    const CHUNK: usize = 10_000;
    let mut jobs = txn.open_table(super::JOBS).map_err(err)?;
    let (mut start, mut n) = (0u128, 0u64);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        for entry in jobs.range(start..).map_err(err)?.take(CHUNK) {
            let (k, v) = entry.map_err(err)?;
            let job = if from >= 3 {
                SystemJob::from(codec::decode::<super::legacy::JobV3>(v.value())?)
            } else {
                SystemJob::from(codec::decode::<super::legacy::JobV2>(v.value())?)
            };
            // The earliest stores kept the context only in the record: keep it.
            let context = (job.context != crate::model::ExecutionContext::empty()).then(|| job.context.clone());
            chunk.push((k.value(), codec::encode(&job)?, context));
        }
        let mut contexts = txn.open_table(JOB_CONTEXTS).map_err(err)?;
        for (k, bytes, context) in &chunk {
            jobs.insert(*k, bytes.as_slice()).map_err(err)?;
            if let Some(c) = context
                && contexts.get(*k).map_err(err)?.is_none()
            {
                contexts.insert(*k, codec::encode(c)?.as_slice()).map_err(err)?;
            }
        }
        n += chunk.len() as u64;
        match chunk.last() {
            Some((k, _, _)) if chunk.len() == CHUNK && *k < u128::MAX => start = k + 1,
            _ => return Ok(n),
        }
    }
}

/// Rewrites step records of schemas 1 to 3 (limits without `write_bytes`).
pub(super) fn upgrade_step_records(txn: &WriteTransaction) -> Result<u64> {
    let mut steps = txn.open_table(super::STEPS).map_err(err)?;
    let mut rewritten = Vec::new();
    for entry in steps.iter().map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        let old: super::legacy::StepV3 = codec::decode(v.value())?;
        rewritten.push((k.value(), super::rows::encode(&crate::records::StepRecord::from(old))?));
    }
    for (k, bytes) in &rewritten {
        steps.insert(*k, bytes.as_slice()).map_err(err)?;
    }
    Ok(rewritten.len() as u64)
}

/// Builds the completion-time index of a store written before it existed (schema 1).
pub(super) fn index_completed(txn: &WriteTransaction) -> Result<u64> {
    let jobs = txn.open_table(super::JOBS).map_err(err)?;
    let mut completed = txn.open_table(COMPLETED).map_err(err)?;
    let mut n = 0;
    for entry in jobs.iter().map_err(err)? {
        let job: SystemJob = codec::decode(entry.map_err(err)?.1.value())?;
        if let Some(key) = completed_key(&job) {
            completed.insert(key, ()).map_err(err)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether `job` is unfinished, so in its token's chain and its step's list.
fn in_chains(job: Option<&SystemJob>) -> bool {
    job.is_some_and(|j| j.state() != JobState::Completed)
}

fn make_ready_if_runnable(t: &mut Tables<'_>, job: &SystemJob, now: i64) -> Result<()> {
    if job.status != JobStatus::WaitingForResources || !is_due(job, now) {
        return Ok(());
    }
    if let Some(token) = &job.dependency_token
        && token_head(t, token)? != Some(job.id.as_u128())
    {
        return Ok(());
    }
    t.ready.insert(job.sequence, job.id.as_u128()).map_err(err)?;
    Ok(())
}

/// Adds new jobs, giving them their ids and sequence numbers: both follow the order
/// of commits, so listing by id is listing in creation order.
pub(crate) fn enqueue(t: &mut Tables<'_>, jobs: &[SystemJob], now: i64) -> Result<Vec<(Uuid, u64)>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut sequence: u64 = get(&t.meta, JOB_SEQUENCE)?.unwrap_or(0);
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        sequence += 1;
        // Time-ordered (UUIDv7, monotonic in this process): new jobs land at the end
        // of the job tables, so a batch touches few pages.
        let job = SystemJob { id: Uuid::now_v7(), sequence, ..job.clone() };
        put_job(t, None, Some(&job), now)?;
        out.push((job.id, sequence));
    }
    t.meta.insert(JOB_SEQUENCE, codec::encode(&sequence)?.as_slice()).map_err(err)?;
    Ok(out)
}

/// The ids of up to `max` entries of a (time, id) index with a time before `time`, oldest first.
fn ids_before(index: &redb::Table<'_, (i64, u128), ()>, time: i64, max: usize) -> Result<Vec<u128>> {
    let mut ids = Vec::new();
    for entry in index.range(..(time, 0)).map_err(err)?.take(max) {
        ids.push(entry.map_err(err)?.0.value().1);
    }
    Ok(ids)
}

/// Stores an import job's rows under its id.
pub(crate) fn put_bulk_rows(t: &mut Tables<'_>, job: Uuid, rows: &[crate::model::Entity]) -> Result<()> {
    for (i, row) in rows.iter().enumerate() {
        t.bulk_rows.insert((job.as_u128(), i as u64), codec::encode(row)?.as_slice()).map_err(err)?;
    }
    Ok(())
}

/// Makes due postponed jobs runnable (Waiting -> WaitingForResources), at most `max`.
fn promote_due(t: &mut Tables<'_>, now: i64, max: usize) -> Result<()> {
    for id in ids_before(&t.postponed, now.saturating_add(1), max)? {
        let Some(old) = load(t, Uuid::from_u128(id))? else { continue };
        let mut new = old.clone();
        if new.status == JobStatus::Waiting {
            new.status = JobStatus::WaitingForResources;
        }
        put_job(t, Some(&old), Some(&new), now)?;
    }
    Ok(())
}

/// Returns jobs whose lease expired to the queue (their worker died or hung), or
/// fails those whose lease expired too often ([`crate::jobs::after_lease_expired`]).
pub(crate) fn recover_expired(t: &mut Tables<'_>, now: i64, max: usize, max_expirations: u32) -> Result<usize> {
    let expired = ids_before(&t.leases, now, max)?;
    for id in &expired {
        if let Some(old) = load(t, Uuid::from_u128(*id))? {
            let new = crate::jobs::after_lease_expired(&old, max_expirations, now);
            put_job(t, Some(&old), Some(&new), now)?;
        }
    }
    Ok(expired.len())
}

/// Takes a locked job back from its worker without a result ([`crate::jobs::released`]).
pub(crate) fn release(t: &mut Tables<'_>, old: &SystemJob, now: i64) -> Result<()> {
    put_job(t, Some(old), Some(&crate::jobs::released(old, now)), now)
}

/// What renewing one lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Renewal {
    /// Still this worker's, running on: the lease now ends later.
    Renewed,
    /// Still this worker's, but a user asked to cancel or pause it (Canceling or
    /// Pausing): the lease was renewed; a worker that has not started it releases it.
    Interrupted,
    /// No longer this worker's (its lease expired and it was recovered, or it was
    /// deleted): do not run it.
    Lost,
}

/// Extends the leases of locked jobs still held with these fencing tokens to
/// `now + lease_ms` (a worker's heartbeat).
pub(crate) fn renew(t: &mut Tables<'_>, held: &[(Uuid, u64)], lease_ms: i64, now: i64) -> Result<Vec<Renewal>> {
    let mut out = Vec::with_capacity(held.len());
    for (id, token) in held {
        let Some(old) = load(t, *id)? else {
            out.push(Renewal::Lost);
            continue;
        };
        if !old.is_leased_with(*token) {
            out.push(Renewal::Lost);
            continue;
        }
        let new = SystemJob { lease_expiry: Some(now.saturating_add(lease_ms)), ..old.clone() };
        put_job(t, Some(&old), Some(&new), now)?;
        out.push(if old.status == JobStatus::InProgress { Renewal::Renewed } else { Renewal::Interrupted });
    }
    Ok(out)
}

/// Locks up to `max` runnable jobs for `host` until `now + lease_ms`, bumping each
/// job's fencing token. The jobs come without their contexts: the caller reads those
/// after the commit, outside the writer ([`crate::store::Store::fill_contexts`]).
pub(crate) fn lease(
    t: &mut Tables<'_>,
    host: &str,
    max: usize,
    lease_ms: i64,
    max_expirations: u32,
    now: i64,
) -> Result<Vec<SystemJob>> {
    promote_due(t, now, max.max(64) * 4)?;
    recover_expired(t, now, max.max(64) * 4, max_expirations)?;
    let ids: Vec<u128> = {
        let mut v = Vec::with_capacity(max);
        for entry in t.ready.iter().map_err(err)?.take(max) {
            v.push(entry.map_err(err)?.1.value());
        }
        v
    };
    let mut leased = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(old) = load(t, Uuid::from_u128(id))? else { continue };
        let mut new = old.clone();
        new.status = JobStatus::InProgress;
        new.started_on = Some(now);
        new.host_id = Some(host.to_owned());
        new.lease_expiry = Some(now + lease_ms);
        new.fencing_token += 1;
        put_job(t, Some(&old), Some(&new), now)?;
        leased.push(new);
    }
    Ok(leased)
}

/// Jobs queued by `step` and not finished, at most `max`.
pub(crate) fn jobs_of_step(t: &Tables<'_>, step: Uuid, max: usize) -> Result<Vec<SystemJob>> {
    let ids: Vec<u128> = {
        let s = step.as_u128();
        let mut v = Vec::new();
        for entry in t.step_jobs.range((s, 0)..=(s, u128::MAX)).map_err(err)?.take(max) {
            v.push(entry.map_err(err)?.0.value().1);
        }
        v
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(load(t, Uuid::from_u128(id))?);
    }
    Ok(out)
}

/// Fails the unfinished jobs of a step that no longer exists (`plugin_not_registered`).
/// Leased and running ones fail too: their lock ends, so their worker's completion is
/// refused as stale and its heartbeat learns the job is lost (and stops the plug-in).
pub(crate) fn orphan_step_jobs(txn: &WriteTransaction, step: Uuid, what: &str, now: i64) -> Result<usize> {
    with_tables(txn, |t| orphan_step_jobs_in(t, step, what, now))
}

fn orphan_step_jobs_in(t: &mut Tables<'_>, step: Uuid, what: &str, now: i64) -> Result<usize> {
    let mut failed = 0;
    for old in jobs_of_step(t, step, usize::MAX)? {
        let when = if old.state() == JobState::Locked { "ran" } else { "was queued" };
        let mut new = old.clone();
        new.status = JobStatus::Failed;
        new.completed_on = Some(now);
        new.lease_expiry = None;
        new.error_code = Some("plugin_not_registered".into());
        new.message = Some(format!("{what} was unregistered while this job {when}"));
        put_job(t, Some(&old), Some(&new), now)?;
        failed += 1;
    }
    Ok(failed)
}

/// Counts by status code.
pub(crate) fn status_counts(txn: &redb::ReadTransaction) -> Result<Vec<(JobStatus, u64)>> {
    let t = txn.open_table(STATUS_COUNTS).map_err(err)?;
    let mut out = Vec::new();
    for s in JobStatus::ALL {
        out.push((s, t.get(s.code()).map_err(err)?.map_or(0, |v| v.value())));
    }
    Ok(out)
}

/// How many jobs are runnable now.
pub(crate) fn ready_len(txn: &redb::ReadTransaction) -> Result<u64> {
    txn.open_table(READY).map_err(err)?.len().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExecutionContext;
    use crate::store::Store;

    #[test]
    fn a_schema_1_store_is_migrated_and_its_completed_jobs_are_purgeable() {
        let dir = tempfile::tempdir().unwrap();
        let job = || SystemJob::plugin_execution("old", Uuid::nil(), None, ExecutionContext::default());
        let kept_id = {
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db.begin_write().unwrap();
            let kept_id = with_tables(&txn, |t| {
                let queued = enqueue(t, &[job(), job()], 0)?;
                let old = load(t, queued[0].0)?.unwrap();
                let done = SystemJob { status: JobStatus::Canceled, completed_on: Some(5), ..old.clone() };
                put_job(t, Some(&old), Some(&done), 0)?;
                Ok::<_, StoreError>(queued[1].0.as_u128())
            })
            .unwrap();
            // What a schema-1 store looked like: no completion-time index, and job
            // records in the old layout (context inside, no output, no counters).
            txn.delete_table(COMPLETED).unwrap();
            let mut jobs = txn.open_table(JOBS).unwrap();
            let current: Vec<(u128, SystemJob)> = jobs
                .iter()
                .unwrap()
                .map(|e| e.unwrap())
                .map(|(k, v)| (k.value(), codec::decode(v.value()).unwrap()))
                .collect();
            for (k, job) in current {
                let old = codec::encode(&super::super::legacy::JobV2::from(&job)).unwrap();
                jobs.insert(k, old.as_slice()).unwrap();
            }
            drop(jobs);
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", codec::encode(&1u32).unwrap().as_slice()).unwrap();
            drop(meta);
            txn.commit().unwrap();
            kept_id
        };
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        let version: u32 = get(&txn.open_table(META).unwrap(), "schema_version").unwrap().unwrap();
        assert_eq!(version, crate::store::SCHEMA_VERSION);
        let (kept, purged) = with_tables(&txn, |t| {
            let kept = purge_completed(t, 5, 100, 10)?;
            Ok::<_, StoreError>((kept, purge_completed(t, 6, 100, 10)?))
        })
        .unwrap();
        assert_eq!((kept, purged), (0, 1), "completed at 5: kept by a cut-off of 5, purged by 6");
        assert_eq!(txn.open_table(JOBS).unwrap().len().unwrap(), 1, "the waiting job stays");
        let job: SystemJob = get(&txn.open_table(JOBS).unwrap(), kept_id).unwrap().unwrap();
        assert!(
            job.output.is_empty() && job.status == JobStatus::WaitingForResources,
            "records read in the new layout"
        );
    }

    #[test]
    fn a_schema_3_store_gains_the_job_counters_and_the_step_write_limit() {
        let dir = tempfile::tempdir().unwrap();
        let step = crate::registry::StepSpec {
            plugin: "p".into(),
            message: "Create".into(),
            entity: Some("account".into()),
            limits: crate::runtime::LimitOverrides { fuel: Some(77), ..Default::default() },
            ..Default::default()
        }
        .into_record(512 << 20)
        .unwrap();
        let job_id = {
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db.begin_write().unwrap();
            let job_id = with_tables(&txn, |t| {
                let job = SystemJob::plugin_execution("old", step.id, None, ExecutionContext::default());
                Ok::<_, StoreError>(enqueue(t, &[job], 0)?[0].0)
            })
            .unwrap();
            let mut jobs = txn.open_table(JOBS).unwrap();
            let job: SystemJob = codec::decode(jobs.get(job_id.as_u128()).unwrap().unwrap().value()).unwrap();
            let v3 = super::super::legacy::JobV3 { v2: super::super::legacy::JobV2::from(&job), output: job.output };
            jobs.insert(job_id.as_u128(), codec::encode(&v3).unwrap().as_slice()).unwrap();
            drop(jobs);
            let v3 = codec::encode(&super::super::legacy::step_v3(&step)).unwrap();
            txn.open_table(super::super::STEPS).unwrap().insert(step.id.as_u128(), v3.as_slice()).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", codec::encode(&3u32).unwrap().as_slice()).unwrap();
            drop(meta);
            txn.commit().unwrap();
            job_id
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.step(step.id).unwrap().unwrap(), step, "the step reads back with no write limit of its own");
        let job = store.job(job_id).unwrap().unwrap();
        assert_eq!((job.lease_expirations, job.recurrence_runs, job.name.as_str()), (0, 0, "old"));
    }

    #[test]
    fn a_retried_job_takes_back_the_head_of_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        let ready = |t: &Tables<'_>| -> Vec<u64> { t.ready.iter().unwrap().map(|e| e.unwrap().0.value()).collect() };
        with_tables(&txn, |t| {
            let job = SystemJob {
                dependency_token: Some("account:1".into()),
                ..SystemJob::plugin_execution("chain", Uuid::nil(), None, ExecutionContext::default())
            };
            let queued = enqueue(t, &[job.clone(), job], 0)?;
            assert_eq!(ready(t), vec![queued[0].1], "only the head is runnable");
            let first = load(t, queued[0].0)?.unwrap();
            let failed = SystemJob { status: JobStatus::Failed, completed_on: Some(1), ..first.clone() };
            put_job(t, Some(&first), Some(&failed), 1)?;
            assert_eq!(ready(t), vec![queued[1].1], "the next one runs once the head failed");
            let retried = SystemJob { status: JobStatus::WaitingForResources, completed_on: None, ..failed.clone() };
            put_job(t, Some(&failed), Some(&retried), 2)?;
            assert_eq!(ready(t), vec![queued[0].1], "the retried job is the head again; the other waits");
            Ok::<_, StoreError>(())
        })
        .unwrap();
    }
}
