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

use uuid::Uuid;

use super::kv::{ALL_TABLES, Read, Reads, Table, Write};
use super::{
    HOUSEKEEPER, JOB_CONTEXTS, JOB_SEQUENCE, JOBS, META, OUTGOING_MAIL_JOB, OUTGOING_MAIL_WOKEN, StoreError, get,
};
use crate::codec;
use crate::jobs::{JobState, JobStatus, MinuteStats, OperationType, StepStats, SystemJob};

/// Runnable jobs by creation sequence.
pub(super) const READY: Table<u64, u128> = Table::new(ALL_TABLES[10]);
/// Jobs waiting for their postpone-until time: (time, id).
pub(super) const POSTPONED: Table<(i64, u128), ()> = Table::new(ALL_TABLES[11]);
/// Unfinished jobs with a dependency token, in creation order: (token, sequence) -> id.
pub(super) const TOKENS: Table<(String, u64), u128> = Table::new(ALL_TABLES[12]);
/// Locked jobs by lease expiry, in groups: (expiry, group) -> the ids of the jobs an
/// operation (a lease, a renewal) gave that expiry, encoded; an empty value is the
/// job `group` alone (schema 9 and before wrote one entry per job). A lease writes
/// one entry for all the jobs it takes; a job that leaves that lease (completed,
/// released, renewed, recovered) is taken out of its entry by the operation that
/// moves it, once per entry and operation, and an entry left empty is deleted. So a
/// locked job is named by the entries at its expiry only, and the index holds what
/// the workers hold, not what they held lately. On PostgreSQL that is about two row
/// writes a job less than an entry per job (a quarter of a drain's).
pub(super) const LEASES: Table<(i64, u128), Vec<u8>> = Table::new(ALL_TABLES[13]);

/// The jobs of a lease entry ([`LEASES`]).
pub(super) fn lease_group(group: u128, value: &[u8]) -> Result<Vec<u128>> {
    if value.is_empty() {
        return Ok(vec![group]);
    }
    Ok(codec::decode(value)?)
}
/// Jobs by the step that queued them: (step, job). Every unfinished job has its
/// entry; a finished one keeps it until the job is deleted.
pub(super) const STEP_JOBS: Table<(u128, u128), ()> = Table::new(ALL_TABLES[14]);
/// Completed jobs by completion time: (completed on, id). The deletion service
/// purges from its start.
pub(super) const COMPLETED: Table<(i64, u128), ()> = Table::new(ALL_TABLES[15]);
/// An import job's rows: (job, row index) -> encoded record. Deleted with the job.
pub(super) const BULK_ROWS: Table<(u128, u64), Vec<u8>> = Table::new(ALL_TABLES[16]);
/// Schema 7 and before: how many jobs had each status code. Schema 8 counts by
/// operation type too ([`TYPE_COUNTS`]) and empties this table when it migrates.
pub(super) const STATUS_COUNTS: Table<u32, u64> = Table::new(ALL_TABLES[17]);
/// Jobs by status in id order: (status code, id), for every status but the locked
/// ones ([`in_status_index`]). The status filter of a listing pages it.
pub(super) const BY_STATUS: Table<(u32, u128), ()> = Table::new(ALL_TABLES[31]);

/// Whether a job of `status` has a `jobs_by_status` entry. Locked jobs (InProgress,
/// Pausing, Canceling) do not: they are few (what the workers hold) and all in
/// `jobs_leases`, which a listing of them reads instead. So leasing a job and
/// completing it write one status entry between them, not four.
pub(super) fn in_status_index(status: JobStatus) -> bool {
    status.state() != JobState::Locked
}
/// How many jobs have each operation type and status: (type code, status code) ->
/// count, for metrics and the dashboard without a scan.
pub(super) const TYPE_COUNTS: Table<(u32, u32), u64> = Table::new(ALL_TABLES[32]);
/// What each step's asynchronous runs did: step -> [`StepStats`], added to once per
/// completion batch.
pub(super) const STEP_STATS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[33]);
/// What the runs that ended in each minute did: minute (UTC ms / 60,000) ->
/// [`MinuteStats`], added to once per completion batch, kept for [`MINUTES_KEPT`].
pub(super) const MINUTES: Table<i64, Vec<u8>> = Table::new(ALL_TABLES[35]);
/// Minutes of run statistics kept (a day).
pub(crate) const MINUTES_KEPT: i64 = 24 * 60;
/// Jobs with a recurrence pattern, by id (few: the dashboard's recurring list).
pub(super) const RECURRING: Table<u128, ()> = Table::new(ALL_TABLES[34]);

type Result<T, E = StoreError> = std::result::Result<T, E>;

type Deltas = [[i64; JobStatus::ALL.len()]; OperationType::ALL.len()];

/// The job tables of one write transaction, with the count changes of the
/// operation under way.
pub(crate) struct Tables<'a, 't> {
    pub(crate) w: &'a Write<'t>,
    /// Count changes by operation type and status, written once when the operation ends.
    deltas: Deltas,
    /// Step statistics to add, written once when the operation ends.
    step_stats: Vec<(u128, StepStats)>,
    /// Per-minute run statistics to add, written once when the operation ends.
    minutes: Vec<(i64, MinuteStats)>,
    /// Jobs given a lease expiry, by expiry: one [`LEASES`] entry each, written
    /// when the operation ends.
    leased: Vec<(i64, Vec<u128>)>,
    /// Jobs that left the lease of an expiry, by expiry: taken out of its entries
    /// when the operation ends.
    unleased: Vec<(i64, Vec<u128>)>,
}

/// Adds `id` to the group of `at` in `groups`.
fn group_add(groups: &mut Vec<(i64, Vec<u128>)>, at: i64, id: u128) {
    match groups.iter_mut().find(|(a, _)| *a == at) {
        Some((_, ids)) => ids.push(id),
        None => groups.push((at, vec![id])),
    }
}

impl Tables<'_, '_> {
    fn count(&mut self, job: &SystemJob, delta: i64) {
        self.deltas[type_slot(job.operation_type)][slot(job.status)] += delta;
    }

    /// Counts a run that ended (succeeded or failed for good) at `now`.
    pub(crate) fn run_ended(&mut self, now: i64, succeeded: bool, duration_us: u64) {
        let minute = now.div_euclid(60_000);
        match self.minutes.iter_mut().find(|(m, _)| *m == minute) {
            Some((_, s)) => s.record(succeeded, duration_us),
            None => {
                let mut s = MinuteStats::default();
                s.record(succeeded, duration_us);
                self.minutes.push((minute, s));
            }
        }
    }

    /// Adds a run's figures to its step's statistics.
    pub(crate) fn step_ran(&mut self, step: Uuid, stats: StepStats) {
        let step = step.as_u128();
        match self.step_stats.iter_mut().find(|(s, _)| *s == step) {
            Some((_, s)) => s.add(&stats),
            None => self.step_stats.push((step, stats)),
        }
    }
}

fn slot(status: JobStatus) -> usize {
    JobStatus::ALL.iter().position(|s| *s == status).expect("every status is listed")
}

fn type_slot(t: OperationType) -> usize {
    OperationType::ALL.iter().position(|s| *s == t).expect("every operation type is listed")
}

/// Runs an operation on the job tables and writes the counts and step statistics
/// it changed at the end.
pub(crate) fn with_tables<T, E: From<StoreError>>(
    w: &Write<'_>,
    op: impl FnOnce(&mut Tables<'_, '_>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let mut t = Tables {
        w,
        deltas: [[0; JobStatus::ALL.len()]; OperationType::ALL.len()],
        step_stats: Vec::new(),
        minutes: Vec::new(),
        leased: Vec::new(),
        unleased: Vec::new(),
    };
    let out = op(&mut t)?;
    write_counts(w, &t.deltas)?;
    take_out_of_leases(w, &mut t.leased, t.unleased)?;
    for (at, ids) in &t.leased {
        // A key of its own (time-ordered, random below): entries never collide.
        w.insert(&LEASES, &(*at, Uuid::now_v7().as_u128()), &codec::encode(ids).map_err(StoreError::from)?)?;
    }
    w.prefetch(&STEP_STATS, t.step_stats.iter().map(|(s, _)| *s))?;
    for (step, add) in t.step_stats {
        let mut stats: StepStats = get(w, &STEP_STATS, &step)?.unwrap_or_default();
        stats.add(&add);
        w.insert(&STEP_STATS, &step, &codec::encode(&stats).map_err(StoreError::from)?)?;
    }
    for (minute, add) in t.minutes {
        let stored: Option<MinuteStats> = get(w, &MINUTES, &minute)?;
        if stored.is_none() {
            // A new minute: the day before it goes.
            w.remove_range(&MINUTES, ..minute - MINUTES_KEPT)?;
        }
        let mut stats = stored.unwrap_or_default();
        stats.add(&add);
        w.insert(&MINUTES, &minute, &codec::encode(&stats).map_err(StoreError::from)?)?;
    }
    Ok(out)
}

/// Takes the jobs of `unleased` out of their [`LEASES`] entries (and out of
/// `leased`, the entries of this operation not written yet), deleting entries left
/// empty: one read of each expiry's entries, one write of each entry that changed.
fn take_out_of_leases(w: &Write<'_>, leased: &mut [(i64, Vec<u128>)], unleased: Vec<(i64, Vec<u128>)>) -> Result<()> {
    for (at, mut gone) in unleased {
        gone.sort_unstable();
        let is_gone = |id: &u128| gone.binary_search(id).is_ok();
        if let Some((_, new)) = leased.iter_mut().find(|(a, _)| *a == at) {
            new.retain(|id| !is_gone(id));
        }
        let mut changed = Vec::new();
        w.scan(&LEASES, (at, 0)..=(at, u128::MAX), false, |key, v: Vec<u8>| {
            let group = lease_group(key.1, &v)?;
            if group.iter().any(is_gone) {
                changed.push((key, group.into_iter().filter(|id| !is_gone(id)).collect::<Vec<u128>>()));
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        for (key, kept) in changed {
            if kept.is_empty() {
                w.remove(&LEASES, &key)?;
            } else {
                w.insert(&LEASES, &key, &codec::encode(&kept).map_err(StoreError::from)?)?;
            }
        }
    }
    Ok(())
}

fn write_counts(w: &Write<'_>, deltas: &Deltas) -> Result<()> {
    // The changed counters in one read (one round trip on PostgreSQL).
    let changed = deltas.iter().enumerate().flat_map(|(ti, row)| {
        row.iter()
            .enumerate()
            .filter(|(_, d)| **d != 0)
            .map(move |(si, _)| (OperationType::ALL[ti].code(), JobStatus::ALL[si].code()))
    });
    w.prefetch(&TYPE_COUNTS, changed)?;
    for (ti, row) in deltas.iter().enumerate() {
        for (si, delta) in row.iter().enumerate() {
            if *delta != 0 {
                let key = (OperationType::ALL[ti].code(), JobStatus::ALL[si].code());
                let c = w.get(&TYPE_COUNTS, &key)?.unwrap_or(0);
                w.insert(&TYPE_COUNTS, &key, &c.saturating_add_signed(*delta))?;
            }
        }
    }
    Ok(())
}

/// Schema 8: builds the status index and the counts by type and status from the
/// jobs (the old counts by status alone are dropped).
pub(super) fn upgrade_to_8(w: &Write<'_>) -> Result<usize> {
    let mut jobs = Vec::new();
    w.scan(&JOBS, .., false, |id, v| {
        let job: SystemJob = codec::decode(&v)?;
        jobs.push((id, job.status, job.operation_type, job.recurrence_pattern.is_some()));
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    let mut deltas: Deltas = [[0; JobStatus::ALL.len()]; OperationType::ALL.len()];
    for (id, status, op, recurring) in &jobs {
        if in_status_index(*status) {
            w.insert(&BY_STATUS, &(status.code(), *id), &())?;
        }
        if *recurring {
            w.insert(&RECURRING, id, &())?;
        }
        deltas[type_slot(*op)][slot(*status)] += 1;
    }
    w.remove_range(&TYPE_COUNTS, ..)?;
    write_counts(w, &deltas)?;
    w.remove_range(&STATUS_COUNTS, ..)?;
    Ok(jobs.len())
}

/// A job without its context (see [`fill_context`]): what every transition needs.
pub(crate) fn load(t: &Tables<'_, '_>, id: Uuid) -> Result<Option<SystemJob>> {
    get(t.w, &JOBS, &id.as_u128())
}

/// Puts a loaded job's context back, for callers that run or show it.
pub(crate) fn fill_context(r: &impl Reads, job: &mut SystemJob) -> Result<()> {
    if let Some(c) = get(r, &JOB_CONTEXTS, &job.id.as_u128())? {
        job.context = c;
    }
    Ok(())
}

fn is_due(job: &SystemJob, now: i64) -> bool {
    job.postpone_until.is_none_or(|t| t <= now)
}

/// The first unfinished job of `token`'s chain.
fn token_head(t: &Tables<'_, '_>, token: &str) -> Result<Option<u128>> {
    let first = t.w.first(&TOKENS, (token.to_owned(), 0)..=(token.to_owned(), u64::MAX), 1)?;
    Ok(first.into_iter().next().map(|(_, id)| id))
}

/// Writes `new` in place of `old` (either may be absent: insert, delete) and keeps
/// every index in step. Refuses a transition the state table does not allow.
pub(crate) fn put_job(
    t: &mut Tables<'_, '_>,
    old: Option<&SystemJob>,
    new: Option<&SystemJob>,
    now: i64,
) -> Result<()> {
    if let (Some(o), Some(n)) = (old, new)
        && o.status != n.status
        && !o.status.can_become(n.status)
    {
        return Err(StoreError::Conflict(format!("job {} cannot go from {} to {}", o.id, o.status, n.status)));
    }
    let (old_done, new_done) = (old.and_then(completed_key), new.and_then(completed_key));
    if old_done != new_done {
        if let Some(key) = old_done {
            t.w.remove(&COMPLETED, &key)?;
        }
        if let Some(key) = new_done {
            t.w.insert(&COMPLETED, &key, &())?;
        }
    }
    if let Some(o) = old
        && o.state() == JobState::Locked
        && let Some(at) = o.lease_expiry
        && new.is_none_or(|n| n.state() != JobState::Locked || n.lease_expiry != Some(at))
    {
        group_add(&mut t.unleased, at, o.id.as_u128());
    }
    if let Some(o) = old {
        let id = o.id.as_u128();
        // Only a ready job can be in the ready index.
        if o.status == JobStatus::WaitingForResources {
            t.w.remove(&READY, &o.sequence)?;
        }
        if let Some(at) = o.postpone_until {
            t.w.remove(&POSTPONED, &(at, id))?;
        }
        // Token entries exist while a job is unfinished: keep them when they stay.
        if in_chains(old)
            && !in_chains(new)
            && let Some(token) = &o.dependency_token
        {
            t.w.remove(&TOKENS, &(token.clone(), o.sequence))?;
        }
        // A step's entry goes with the job (not when it finishes: one write less per
        // job; the step's list skips finished ones).
        if new.is_none()
            && let Some(step) = o.step_id
        {
            t.w.remove(&STEP_JOBS, &(step.as_u128(), id))?;
        }
        t.count(o, -1);
        if new.is_none_or(|n| n.status != o.status) && in_status_index(o.status) {
            t.w.remove(&BY_STATUS, &(o.status.code(), id))?;
        }
        if o.recurrence_pattern.is_some() && new.is_none_or(|n| n.recurrence_pattern.is_none()) {
            t.w.remove(&RECURRING, &id)?;
        }
        // A workflow run leaving Waiting stops watching its record.
        if o.operation_type == crate::jobs::OperationType::Workflow
            && o.status == JobStatus::Waiting
            && new.is_none_or(|n| n.status != JobStatus::Waiting)
        {
            super::workflows::unsubscribe(t.w, o.id)?;
        }
    }
    match new {
        Some(n) => {
            // The context lives in its own table, written once; the record stays small.
            if old.is_none() {
                t.w.insert(&JOB_CONTEXTS, &n.id.as_u128(), &codec::encode(&n.context)?)?;
                // Who queued it (`createdby`): users list their own jobs by this index.
                let owner = n.context.initiating_user_id;
                if owner != crate::security::SYSTEM_USER {
                    t.w.insert(&super::identity::JOBS_BY_OWNER, &(owner.as_u128(), n.id.as_u128()), &())?;
                }
            }
            // The record never holds the context (`SystemJob::context` is skipped).
            let record = codec::encode(n)?;
            t.w.insert(&JOBS, &n.id.as_u128(), &record)?;
            t.count(n, 1);
            if old.is_none_or(|o| o.status != n.status) && in_status_index(n.status) {
                t.w.insert(&BY_STATUS, &(n.status.code(), n.id.as_u128()), &())?;
            }
            if n.recurrence_pattern.is_some() && old.is_none_or(|o| o.recurrence_pattern.is_none()) {
                t.w.insert(&RECURRING, &n.id.as_u128(), &())?;
            }
        }
        None => {
            if let Some(o) = old {
                let id = o.id.as_u128();
                // The owner's index entry goes with the job (its context names the owner).
                if let Some(c) = get::<_, crate::model::ExecutionContext>(t.w, &JOB_CONTEXTS, &id)?
                    && c.initiating_user_id != crate::security::SYSTEM_USER
                {
                    t.w.remove(&super::identity::JOBS_BY_OWNER, &(c.initiating_user_id.as_u128(), id))?;
                }
                t.w.remove(&JOBS, &id)?;
                t.w.remove(&JOB_CONTEXTS, &id)?;
                match o.operation_type {
                    crate::jobs::OperationType::BulkImport => {
                        t.w.remove_range(&BULK_ROWS, (id, 0)..=(id, u64::MAX))?;
                    }
                    crate::jobs::OperationType::Workflow => super::workflows::delete_log(t.w, o.id)?,
                    _ => {}
                }
            }
        }
    }
    if let Some(n) = new {
        let id = n.id.as_u128();
        if in_chains(new)
            && !in_chains(old)
            && let Some(token) = &n.dependency_token
        {
            t.w.insert(&TOKENS, &(token.clone(), n.sequence), &id)?;
            // A job re-entering its chain (a retried one) ahead of the current head
            // takes its place: the old head waits again.
            if token_head(t, token)? == Some(id) {
                let behind = t.w.first(&TOKENS, (token.clone(), n.sequence + 1)..=(token.clone(), u64::MAX), 1)?;
                if let Some(((_, previous_head), _)) = behind.into_iter().next() {
                    t.w.remove(&READY, &previous_head)?;
                }
            }
        }
        // Every job of a step has its entry from its creation (a job may be created
        // finished: an import of history, the benchmarks).
        if (old.is_none() || in_chains(new) && !in_chains(old))
            && let Some(step) = n.step_id
        {
            t.w.insert(&STEP_JOBS, &(step.as_u128(), id), &())?;
        }
        if n.state() == JobState::Locked
            && let Some(at) = n.lease_expiry
            && old.is_none_or(|o| o.state() != JobState::Locked || o.lease_expiry != Some(at))
        {
            group_add(&mut t.leased, at, id);
        }
        let waits_for_time = matches!(n.status, JobStatus::WaitingForResources | JobStatus::Waiting) && !is_due(n, now)
            || n.status == JobStatus::Waiting && n.postpone_until.is_some();
        if waits_for_time && let Some(at) = n.postpone_until {
            t.w.insert(&POSTPONED, &(at, id), &())?;
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
pub(super) fn completed_key(job: &SystemJob) -> Option<(i64, u128)> {
    (job.state() == JobState::Completed).then(|| (job.completed_on.unwrap_or(job.created_on), job.id.as_u128()))
}

/// Deletes up to `max` jobs that completed before `before`, oldest first; returns
/// how many.
pub(crate) fn purge_completed(t: &mut Tables<'_, '_>, before: i64, max: usize, now: i64) -> Result<usize> {
    let ids = ids_before(t, &COMPLETED, before, max)?;
    // Each deletion reads the job and its context (whose user owns it): one round trip.
    t.w.prefetch(&JOBS, ids.iter().copied())?;
    t.w.prefetch(&JOB_CONTEXTS, ids.iter().copied())?;
    for id in &ids {
        if let Some(old) = load(t, Uuid::from_u128(*id))? {
            put_job(t, Some(&old), None, now)?;
        }
    }
    Ok(ids.len())
}

/// Makes a service job (the deletion service, the outgoing-mail job) whose id is kept
/// under meta key `key` exist, unfinished, exactly when `wanted` is given: queues
/// `wanted` if none exists, or removes a waiting one when it is no longer wanted.
pub(crate) fn ensure_service_job(
    t: &mut Tables<'_, '_>,
    key: &str,
    wanted: Option<SystemJob>,
    now: i64,
) -> Result<Option<SystemJob>> {
    let current = match get::<_, Uuid>(t.w, &META, &key.to_owned())? {
        Some(id) => load(t, id)?.filter(|j| j.state() != JobState::Completed),
        None => None,
    };
    match (current, wanted) {
        (Some(job), Some(_)) => Ok(Some(job)),
        (Some(job), None) => {
            // A running one finishes; the next start removes it.
            if job.state() != JobState::Locked {
                put_job(t, Some(&job), None, now)?;
            }
            Ok(None)
        }
        (None, Some(job)) => {
            let (id, sequence) = enqueue(t, std::slice::from_ref(&job), now)?[0];
            t.w.insert(&META, &key.to_owned(), &codec::encode(&id)?)?;
            Ok(Some(SystemJob { id, sequence, ..job }))
        }
        (None, None) => Ok(None),
    }
}

/// The outgoing-mail job's id, if it exists.
pub(crate) fn outgoing_mail_job(t: &Tables<'_, '_>) -> Result<Option<Uuid>> {
    get::<_, Uuid>(t.w, &META, &OUTGOING_MAIL_JOB.to_owned())
}

/// New Pending Send emails were written: the outgoing-mail job runs now rather than
/// at its next occurrence (one that runs now runs again when it ends). A paused one
/// (waiting with no time) stays paused.
pub(crate) fn wake_outgoing_mail(t: &mut Tables<'_, '_>, now: i64) -> Result<()> {
    let Some(id) = outgoing_mail_job(t)? else { return Ok(()) };
    let Some(old) = load(t, id)? else { return Ok(()) };
    match old.status {
        JobStatus::Waiting if old.postpone_until.is_some_and(|at| at > now) => {
            let new = SystemJob { status: JobStatus::WaitingForResources, postpone_until: Some(now), ..old.clone() };
            put_job(t, Some(&old), Some(&new), now)
        }
        JobStatus::InProgress => t.w.insert(&META, &OUTGOING_MAIL_WOKEN.to_owned(), &codec::encode(&true)?),
        _ => Ok(()),
    }
}

/// Whether Pending Send emails came while the outgoing-mail job ran (and forgets it).
pub(crate) fn take_outgoing_mail_woken(t: &mut Tables<'_, '_>) -> Result<bool> {
    let woken = get::<_, bool>(t.w, &META, &OUTGOING_MAIL_WOKEN.to_owned())?.unwrap_or(false);
    if woken {
        t.w.remove(&META, &OUTGOING_MAIL_WOKEN.to_owned())?;
    }
    Ok(woken)
}

/// Whether `job` is unfinished, so in its token's chain and its step's list.
fn in_chains(job: Option<&SystemJob>) -> bool {
    job.is_some_and(|j| j.state() != JobState::Completed)
}

fn make_ready_if_runnable(t: &mut Tables<'_, '_>, job: &SystemJob, now: i64) -> Result<()> {
    if job.status != JobStatus::WaitingForResources || !is_due(job, now) {
        return Ok(());
    }
    if let Some(token) = &job.dependency_token
        && token_head(t, token)? != Some(job.id.as_u128())
    {
        return Ok(());
    }
    t.w.insert(&READY, &job.sequence, &job.id.as_u128())?;
    Ok(())
}

/// Adds new jobs, giving them their ids and sequence numbers: both follow the order
/// of commits, so listing by id is listing in creation order.
pub(crate) fn enqueue(t: &mut Tables<'_, '_>, jobs: &[SystemJob], now: i64) -> Result<Vec<(Uuid, u64)>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut sequence: u64 = get(t.w, &META, &JOB_SEQUENCE.to_owned())?.unwrap_or(0);
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        sequence += 1;
        // Time-ordered (UUIDv7, monotonic in this process): new jobs land at the end
        // of the job tables, so a batch touches few pages.
        let job = SystemJob { id: Uuid::now_v7(), sequence, ..job.clone() };
        put_job(t, None, Some(&job), now)?;
        out.push((job.id, sequence));
    }
    t.w.insert(&META, &JOB_SEQUENCE.to_owned(), &codec::encode(&sequence)?)?;
    Ok(out)
}

/// The ids of up to `max` entries of a (time, id) index with a time before `time`, oldest first.
fn ids_before(t: &Tables<'_, '_>, index: &Table<(i64, u128), ()>, time: i64, max: usize) -> Result<Vec<u128>> {
    Ok(t.w.first(index, ..(time, 0), max)?.into_iter().map(|((_, id), ())| id).collect())
}

/// Stores an import job's rows under its id.
pub(crate) fn put_bulk_rows(t: &mut Tables<'_, '_>, job: Uuid, rows: &[crate::model::Entity]) -> Result<()> {
    for (i, row) in rows.iter().enumerate() {
        t.w.insert(&BULK_ROWS, &(job.as_u128(), i as u64), &codec::encode(row)?)?;
    }
    Ok(())
}

/// Makes due postponed jobs runnable (Waiting -> WaitingForResources), at most `max`.
fn promote_due(t: &mut Tables<'_, '_>, now: i64, max: usize) -> Result<()> {
    for id in ids_before(t, &POSTPONED, now.saturating_add(1), max)? {
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
/// Looks at the lease entries that expired, oldest first, until they name `max`
/// jobs: each is recovered, which takes it out of its entry (an entry left empty
/// goes). Returns how many jobs were recovered.
pub(crate) fn recover_expired(t: &mut Tables<'_, '_>, now: i64, max: usize, max_expirations: u32) -> Result<usize> {
    let mut expired = Vec::new();
    t.w.scan(&LEASES, ..(now, 0), false, |(at, group), ids: Vec<u8>| {
        expired.extend(lease_group(group, &ids)?.into_iter().map(|id| (at, id)));
        Ok(if expired.len() >= max { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) })
    })?;
    t.w.prefetch(&JOBS, expired.iter().map(|(_, id)| *id))?;
    let mut recovered = 0;
    for (at, id) in expired {
        match load(t, Uuid::from_u128(id))? {
            Some(old) if old.state() == JobState::Locked && old.lease_expiry == Some(at) => {
                // Leaving the lease takes it out of the entry.
                let new = crate::jobs::after_lease_expired(&old, max_expirations, now);
                put_job(t, Some(&old), Some(&new), now)?;
                recovered += 1;
            }
            // Named by an entry it no longer holds (builds before entries were kept
            // exact left them): take it out, or the entry would be read again forever.
            _ => group_add(&mut t.unleased, at, id),
        }
    }
    Ok(recovered)
}

/// Takes a locked job back from its worker without a result ([`crate::jobs::released`]).
pub(crate) fn release(t: &mut Tables<'_, '_>, old: &SystemJob, now: i64) -> Result<()> {
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
pub(crate) fn renew(t: &mut Tables<'_, '_>, held: &[(Uuid, u64)], lease_ms: i64, now: i64) -> Result<Vec<Renewal>> {
    let mut out = Vec::with_capacity(held.len());
    t.w.prefetch(&JOBS, held.iter().map(|(id, _)| id.as_u128()))?;
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

/// Which process does the queue's housekeeping, and until when (UTC ms).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Housekeeper {
    pub instance: String,
    pub until: i64,
}

/// How long a housekeeper's turn lasts without a renewal: another process takes over
/// this long after it stops leasing (it died).
pub const HOUSEKEEPER_TTL_MS: i64 = 5_000;

/// Whether `instance` does the housekeeping in this transaction: it does while its
/// turn lasts, or takes the turn when there is none or it ran out. The turn is a row
/// written in the serial write transactions themselves, so two processes never both
/// hold it; it is renewed when half of it is left.
fn is_housekeeper(t: &Tables<'_, '_>, instance: &str, now: i64) -> Result<bool> {
    let key = HOUSEKEEPER.to_owned();
    let current: Option<Housekeeper> = get(t.w, &META, &key)?;
    match current {
        Some(h) if h.instance != instance && h.until > now => Ok(false),
        Some(h) if h.instance == instance && h.until - now > HOUSEKEEPER_TTL_MS / 2 => Ok(true),
        _ => {
            let turn = Housekeeper { instance: instance.to_owned(), until: now + HOUSEKEEPER_TTL_MS };
            t.w.insert(&META, &key, &codec::encode(&turn)?)?;
            Ok(true)
        }
    }
}

/// Locks up to `max` runnable jobs for `host` until `now + lease_ms`, bumping each
/// job's fencing token. The process `instance` first does the housekeeping (due
/// postponed jobs, expired leases) if it is the housekeeper. The jobs come without
/// their contexts: the caller reads those after the commit, outside the writer
/// ([`crate::store::Store::fill_contexts`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lease(
    t: &mut Tables<'_, '_>,
    instance: &str,
    host: &str,
    max: usize,
    lease_ms: i64,
    max_expirations: u32,
    filter: super::queue::LeaseFilter,
    now: i64,
) -> Result<Vec<SystemJob>> {
    use super::queue::LeaseFilter;
    if is_housekeeper(t, instance, now)? {
        promote_due(t, now, max.max(64) * 4)?;
        recover_expired(t, now, max.max(64) * 4, max_expirations)?;
    }
    let ids: Vec<u128> = match filter {
        LeaseFilter::All => t.w.first(&READY, .., max)?.into_iter().map(|(_, id)| id).collect(),
        LeaseFilter::NotMail => {
            let skip = outgoing_mail_job(t)?.map(|id| id.as_u128());
            let mut ids: Vec<u128> = t.w.first(&READY, .., max + 1)?.into_iter().map(|(_, id)| id).collect();
            ids.retain(|id| Some(*id) != skip);
            ids.truncate(max);
            ids
        }
        LeaseFilter::OnlyMail => match outgoing_mail_job(t)? {
            Some(id) if max > 0 => match load(t, id)? {
                Some(job) if t.w.get(&READY, &job.sequence)? == Some(id.as_u128()) => vec![id.as_u128()],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
    };
    t.w.prefetch(&JOBS, ids.iter().copied())?;
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

/// Jobs queued by `step` and not finished.
pub(crate) fn unfinished_jobs_of_step(t: &Tables<'_, '_>, step: Uuid) -> Result<Vec<SystemJob>> {
    let s = step.as_u128();
    let ids: Vec<u128> = t.w.all_in(&STEP_JOBS, (s, 0)..=(s, u128::MAX))?.into_iter().map(|((_, id), ())| id).collect();
    t.w.prefetch(&JOBS, ids.iter().copied())?;
    let mut out = Vec::new();
    for id in ids {
        out.extend(load(t, Uuid::from_u128(id))?.filter(|j| in_chains(Some(j))));
    }
    Ok(out)
}

/// Fails the unfinished jobs of a step that no longer exists (`plugin_not_registered`).
/// Leased and running ones fail too: their lock ends, so their worker's completion is
/// refused as stale and its heartbeat learns the job is lost (and stops the plug-in).
pub(crate) fn orphan_step_jobs(w: &Write<'_>, step: Uuid, what: &str, now: i64) -> Result<usize> {
    with_tables(w, |t| orphan_step_jobs_in(t, step, what, now))
}

fn orphan_step_jobs_in(t: &mut Tables<'_, '_>, step: Uuid, what: &str, now: i64) -> Result<usize> {
    let mut failed = 0;
    for old in unfinished_jobs_of_step(t, step)? {
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
pub(crate) fn status_counts(r: &Read) -> Result<Vec<(JobStatus, u64)>> {
    let by_type = type_counts(r)?;
    Ok(JobStatus::ALL
        .into_iter()
        .map(|s| (s, by_type.iter().filter(|(_, st, _)| *st == s).map(|(_, _, n)| n).sum()))
        .collect())
}

/// Job counts by operation type and status (every pair, zeros included).
pub(crate) fn type_counts(r: &Read) -> Result<Vec<(OperationType, JobStatus, u64)>> {
    // One read of the whole (small) table: one round trip on PostgreSQL.
    let stored: std::collections::HashMap<(u32, u32), u64> = r.all(&TYPE_COUNTS)?.into_iter().collect();
    let mut out = Vec::with_capacity(OperationType::ALL.len() * JobStatus::ALL.len());
    for t in OperationType::ALL {
        for s in JobStatus::ALL {
            out.push((t, s, stored.get(&(t.code(), s.code())).copied().unwrap_or(0)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use redb::ReadableTable;

    use super::*;
    use crate::model::ExecutionContext;
    use crate::store::legacy::{self, COMPLETED_V4, JOBS_V4, META_V4, STEPS_V4};
    use crate::store::{STORE_FILE, Store, testing};

    /// Writes the schema-version row of a typed (schema 1 to 4) store.
    fn set_typed_version(txn: &redb::WriteTransaction, version: u32) {
        txn.open_table(META_V4).unwrap().insert("schema_version", codec::encode(&version).unwrap().as_slice()).unwrap();
    }

    #[test]
    fn a_schema_1_store_is_migrated_and_its_completed_jobs_are_purgeable() {
        let dir = tempfile::tempdir().unwrap();
        let job = || SystemJob::plugin_execution("old", Uuid::nil(), None, ExecutionContext::default());
        let kept_id = {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(|w| {
                    with_tables(w, |t| {
                        let queued = enqueue(t, &[job(), job()], 0)?;
                        let old = load(t, queued[0].0)?.unwrap();
                        let done = SystemJob { status: JobStatus::Canceled, completed_on: Some(5), ..old.clone() };
                        put_job(t, Some(&old), Some(&done), 0)?;
                        Ok::<_, StoreError>(queued[1].0.as_u128())
                    })
                })
                .unwrap()
        };
        // What a schema-1 store looked like: typed tables, no completion-time index, and
        // job records in the old layout (context inside, no output, no counters).
        let path = dir.path().join(STORE_FILE);
        legacy::downgrade_to_v4(&path);
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(COMPLETED_V4).unwrap();
            let mut jobs = txn.open_table(JOBS_V4).unwrap();
            let current: Vec<(u128, SystemJob)> = jobs
                .iter()
                .unwrap()
                .map(|e| e.unwrap())
                .map(|(k, v)| (k.value(), codec::decode(v.value()).unwrap()))
                .collect();
            for (k, job) in current {
                let old = codec::encode(&legacy::JobV2::from(&job)).unwrap();
                jobs.insert(k, old.as_slice()).unwrap();
            }
            drop(jobs);
            set_typed_version(&txn, 1);
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let read = store.read().unwrap();
        let version: u32 = crate::store::get(&read, &META, &"schema_version".to_owned()).unwrap().unwrap();
        assert_eq!(version, crate::store::SCHEMA_VERSION);
        assert_eq!(read.len(&JOBS).unwrap(), 2);
        drop(read);
        let (kept, purged) = store
            .write(|w| {
                with_tables(w, |t| {
                    let kept = purge_completed(t, 5, 100, 10)?;
                    Ok::<_, StoreError>((kept, purge_completed(t, 6, 100, 10)?))
                })
            })
            .unwrap();
        assert_eq!((kept, purged), (0, 1), "completed at 5: kept by a cut-off of 5, purged by 6");
        assert_eq!(store.read().unwrap().len(&JOBS).unwrap(), 1, "the waiting job stays");
        let job = store.job(Uuid::from_u128(kept_id)).unwrap().unwrap();
        assert!(
            job.output.is_empty() && job.status == JobStatus::WaitingForResources,
            "records read in the new layout"
        );
        assert_eq!(store.job_counts().unwrap().runnable, 1, "the ready index moved with the jobs");
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
            store
                .write(|w| {
                    with_tables(w, |t| {
                        let job = SystemJob::plugin_execution("old", step.id, None, ExecutionContext::default());
                        Ok::<_, StoreError>(enqueue(t, &[job], 0)?[0].0)
                    })
                })
                .unwrap()
        };
        let path = dir.path().join(STORE_FILE);
        legacy::downgrade_to_v4(&path);
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let mut jobs = txn.open_table(JOBS_V4).unwrap();
            let job: SystemJob = codec::decode(jobs.get(job_id.as_u128()).unwrap().unwrap().value()).unwrap();
            let v3 = legacy::JobV3 { v2: legacy::JobV2::from(&job), output: job.output };
            jobs.insert(job_id.as_u128(), codec::encode(&v3).unwrap().as_slice()).unwrap();
            drop(jobs);
            let v3 = codec::encode(&legacy::step_v3(&step)).unwrap();
            txn.open_table(STEPS_V4).unwrap().insert(step.id.as_u128(), v3.as_slice()).unwrap();
            set_typed_version(&txn, 3);
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.step(step.id).unwrap().unwrap(), step, "the step reads back with no write limit of its own");
        let job = store.job(job_id).unwrap().unwrap();
        assert_eq!((job.lease_expirations, job.recurrence_runs, job.name.as_str()), (0, 0, "old"));
        let db = match &store.engine {
            crate::store::Engine::Redb(db) => db,
            crate::store::Engine::Pg(_) => unreachable!("a redb store"),
        };
        let tables: Vec<String> = redb::ReadableDatabase::begin_read(db)
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        assert!(tables.iter().all(|t| t.starts_with("kv:")), "the typed tables are gone: {tables:?}");
    }

    /// What the status index and the counts should say: read from the jobs themselves
    /// (the counts as the last operation left them).
    fn check_indexes(t: &Tables<'_, '_>) {
        let jobs: Vec<SystemJob> =
            t.w.all(&JOBS).unwrap().into_iter().map(|(_, v)| codec::decode(&v).unwrap()).collect();
        let mut by_status: Vec<(u32, u128)> =
            jobs.iter().filter(|j| in_status_index(j.status)).map(|j| (j.status.code(), j.id.as_u128())).collect();
        by_status.sort();
        let indexed: Vec<(u32, u128)> = t.w.all(&BY_STATUS).unwrap().into_iter().map(|(k, ())| k).collect();
        assert_eq!(indexed, by_status, "the status index holds each job once, under its status");
        for (op, status, n) in type_counts_in(t.w) {
            let real = jobs.iter().filter(|j| j.operation_type == op && j.status == status).count() as u64;
            assert_eq!(n, real, "{op:?} {status:?}");
        }
        let recurring: Vec<u128> = t.w.all(&RECURRING).unwrap().into_iter().map(|(k, ())| k).collect();
        let mut real: Vec<u128> =
            jobs.iter().filter(|j| j.recurrence_pattern.is_some()).map(|j| j.id.as_u128()).collect();
        real.sort();
        assert_eq!(recurring, real);
    }

    fn type_counts_in(w: &Write<'_>) -> Vec<(OperationType, JobStatus, u64)> {
        let stored: std::collections::HashMap<(u32, u32), u64> = w.all(&TYPE_COUNTS).unwrap().into_iter().collect();
        let mut out = Vec::new();
        for t in OperationType::ALL {
            for s in JobStatus::ALL {
                out.push((t, s, stored.get(&(t.code(), s.code())).copied().unwrap_or(0)));
            }
        }
        out
    }

    #[test]
    fn the_status_index_and_the_counts_follow_every_change_and_a_schema_7_store_gains_them() {
        for (_dir, store) in testing::stores() {
            let ids = store
                .write(|w| {
                    with_tables(w, |t| {
                        let plugin = SystemJob::plugin_execution("p", Uuid::nil(), None, ExecutionContext::default());
                        let workflow = SystemJob { operation_type: OperationType::Workflow, ..plugin.clone() };
                        let recurring = SystemJob {
                            recurrence_pattern: Some("FREQ=DAILY".into()),
                            recurrence_start: Some(0),
                            postpone_until: Some(i64::MAX / 2),
                            ..plugin.clone()
                        };
                        let mut jobs = vec![plugin; 12];
                        jobs.extend(vec![workflow; 6]);
                        jobs.push(recurring);
                        let ids: Vec<Uuid> = enqueue(t, &jobs, 0)?.into_iter().map(|(id, _)| id).collect();
                        // Cancel four, fail two, pause two, delete one canceled one.
                        let mut moves = Vec::new();
                        moves.extend(ids[0..4].iter().map(|id| (*id, JobStatus::Canceled)));
                        moves.extend(ids[12..14].iter().map(|id| (*id, JobStatus::Failed)));
                        moves.extend(ids[4..6].iter().map(|id| (*id, JobStatus::Waiting)));
                        for (id, status) in moves {
                            let old = load(t, id)?.unwrap();
                            let done = status.code() >= 30;
                            let new = SystemJob { status, completed_on: done.then_some(1), ..old.clone() };
                            put_job(t, Some(&old), Some(&new), 0)?;
                        }
                        let gone = load(t, ids[0])?.unwrap();
                        put_job(t, Some(&gone), None, 0)?;
                        Ok::<_, StoreError>(ids)
                    })
                })
                .unwrap();
            store
                .write(|w| {
                    with_tables(w, |t| {
                        check_indexes(t);
                        Ok::<_, StoreError>(())
                    })
                })
                .unwrap();
            let counts = store.job_type_counts().unwrap();
            let count = |op, st| counts.iter().find(|(o, s, _)| *o == op && *s == st).unwrap().2;
            assert_eq!(count(OperationType::PluginExecution, JobStatus::Canceled), 3);
            assert_eq!(count(OperationType::Workflow, JobStatus::Failed), 2);
            assert_eq!(count(OperationType::PluginExecution, JobStatus::Waiting), 2, "the two paused");
            assert_eq!(store.recurring_jobs().unwrap().len(), 1);
            // A listing reads the status index, in id order, and pages on.
            let query = |status: JobStatus, limit| crate::jobs::JobQuery {
                status: Some(status),
                limit: Some(limit),
                ..Default::default()
            };
            let canceled = store.list_jobs_page(&query(JobStatus::Canceled, 2), None).unwrap();
            let got: Vec<Uuid> = canceled.jobs.iter().map(|j| j.id).collect();
            assert_eq!((got, canceled.scanned), (vec![ids[1], ids[2]], 2), "read only what the page needs");
            let next = crate::jobs::JobQuery { after: canceled.next_after, ..query(JobStatus::Canceled, 2) };
            let rest = store.list_jobs_page(&next, None).unwrap();
            assert_eq!(rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[3]]);
            assert!(rest.next_after.is_none(), "the last page says so");
            // A filter no index covers stops at its budget and says where to go on.
            let named = crate::jobs::JobQuery { name: Some("nothing like it".into()), ..Default::default() };
            let short = store.list_jobs_page(&named, Some(7)).unwrap();
            assert!(short.jobs.is_empty() && short.budget_spent && short.scanned == 7);
            assert_eq!(short.next_after, Some(ids[7]), "the 7th job read (the 1st was deleted)");
            assert_eq!(named.unindexed(), vec!["name"]);
            // A schema-7 store: no status index, counts by status alone.
            store
                .write(|w| {
                    w.remove_range(&BY_STATUS, ..)?;
                    w.remove_range(&TYPE_COUNTS, ..)?;
                    w.remove_range(&RECURRING, ..)?;
                    w.insert(&STATUS_COUNTS, &0, &99)?;
                    w.insert(&META, &crate::store::SCHEMA_KEY.to_owned(), &codec::encode(&7u32)?)
                })
                .unwrap();
            store.check_schema().unwrap();
            store
                .write(|w| {
                    with_tables(w, |t| {
                        check_indexes(t);
                        assert!(t.w.all(&STATUS_COUNTS)?.is_empty(), "the old counts are dropped");
                        Ok::<_, StoreError>(())
                    })
                })
                .unwrap();
        }
    }

    #[test]
    fn a_retried_job_takes_back_the_head_of_its_chain() {
        for (_dir, store) in testing::stores() {
            let ready =
                |t: &Tables<'_, '_>| -> Vec<u64> { t.w.all(&READY).unwrap().into_iter().map(|(k, _)| k).collect() };
            store
                .write(|w| {
                    with_tables(w, |t| {
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
                        let retried =
                            SystemJob { status: JobStatus::WaitingForResources, completed_on: None, ..failed.clone() };
                        put_job(t, Some(&failed), Some(&retried), 2)?;
                        assert_eq!(ready(t), vec![queued[0].1], "the retried job is the head again; the other waits");
                        Ok::<_, StoreError>(())
                    })
                })
                .unwrap();
        }
    }

    #[test]
    fn lease_entries_name_exactly_the_jobs_holding_their_lease() {
        for (_dir, store) in testing::stores() {
            let now = 1_000_000;
            let entries = |w: &Write<'_>| -> Result<Vec<(i64, Vec<u128>)>> {
                let mut out = Vec::new();
                for ((at, group), v) in w.all(&LEASES)? {
                    let mut named = lease_group(group, &v)?;
                    named.sort_unstable();
                    out.push((at, named));
                }
                Ok(out)
            };
            store
                .write(|w| {
                    let ids = with_tables(w, |t| {
                        let job = SystemJob::plugin_execution("leased", Uuid::nil(), None, ExecutionContext::default());
                        let queued = enqueue(t, &[job.clone(), job.clone(), job], now)?;
                        let leased = lease(t, "i", "h", 10, 1000, 3, super::super::queue::LeaseFilter::All, now)?;
                        assert_eq!(leased.len(), 3);
                        Ok::<_, StoreError>(queued.into_iter().map(|(id, _)| id.as_u128()).collect::<Vec<_>>())
                    })?;
                    assert_eq!(entries(w)?, [(now + 1000, ids.clone())], "one entry for the lease's three jobs");
                    with_tables(w, |t| {
                        // The first completes, the second is renewed: both leave the entry,
                        // and a new one names the renewed job.
                        let first = load(t, Uuid::from_u128(ids[0]))?.unwrap();
                        let done = SystemJob {
                            status: JobStatus::Succeeded,
                            completed_on: Some(now + 1),
                            lease_expiry: None,
                            ..first.clone()
                        };
                        put_job(t, Some(&first), Some(&done), now + 1)?;
                        let second = load(t, Uuid::from_u128(ids[1]))?.unwrap();
                        renew(t, &[(second.id, second.fencing_token)], 5000, now + 2)?;
                        Ok::<_, StoreError>(())
                    })?;
                    assert_eq!(entries(w)?, [(now + 1000, vec![ids[2]]), (now + 5002, vec![ids[1]])]);
                    // A schema-9 entry (one job, empty value) is read as that job, and one
                    // an earlier build left naming a finished job is dropped.
                    w.insert(&LEASES, &(now + 1000, ids[2]), &Vec::new())?;
                    w.insert(&LEASES, &(now + 1200, 7), &codec::encode(&vec![ids[0]])?)?;
                    with_tables(w, |t| {
                        // Past the first expiry: only the third job still holds such a lease.
                        assert_eq!(recover_expired(t, now + 1500, 100, 3)?, 1);
                        assert_eq!(load(t, Uuid::from_u128(ids[0]))?.unwrap().status, JobStatus::Succeeded);
                        let second = load(t, Uuid::from_u128(ids[1]))?.unwrap();
                        assert_eq!(second.status, JobStatus::InProgress, "renewed: still held");
                        assert_eq!(load(t, Uuid::from_u128(ids[2]))?.unwrap().status, JobStatus::WaitingForResources);
                        Ok::<_, StoreError>(())
                    })?;
                    assert_eq!(entries(w)?, [(now + 5002, vec![ids[1]])], "the expired entries are gone");
                    with_tables(w, |t| {
                        let second = load(t, Uuid::from_u128(ids[1]))?.unwrap();
                        release(t, &second, now + 3)
                    })?;
                    assert_eq!(entries(w)?, [], "a job released leaves no entry behind");
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        }
    }
}
