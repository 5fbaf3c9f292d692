//! Records, entity definitions and system jobs: reads through a consistent
//! snapshot, and the metadata writes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::jobs::fill_context;
use super::kv::{Read, Reads};
use super::{ENTITY_DEFS, JOB_CONTEXTS, JOBS, RECORDS, Result, Store, StoreError, get};
use crate::codec;
use crate::jobs::{JobIndex, JobPage, JobQuery, SystemJob};
use crate::metadata::EntityDefinition;
use crate::model::{Entity, Value};

/// A record as stored: its attributes plus what the host maintains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Incremented by every write; optimistic concurrency checks it at commit.
    pub version: u64,
    /// UTC milliseconds.
    pub created_on: i64,
    pub modified_on: i64,
    pub attributes: BTreeMap<String, Value>,
}

impl StoredRecord {
    /// The record as callers and plug-ins see it, system attributes included.
    pub fn to_entity(&self, logical_name: &str, id: Uuid) -> Entity {
        let mut e = Entity::new(logical_name);
        e.id = Some(id);
        e.attributes = self.attributes.clone();
        e.attributes.insert("createdon".into(), Value::DateTime(self.created_on));
        e.attributes.insert("modifiedon".into(), Value::DateTime(self.modified_on));
        e
    }
}

/// A consistent read view of the store, unaffected by later commits.
pub struct Snapshot {
    txn: Read,
}

impl Snapshot {
    /// The principal of an enabled user as of this snapshot.
    pub fn principal(&self, user: Uuid) -> Result<Option<crate::security::Principal>> {
        super::identity::principal_in(&self.txn, user)
    }

    pub fn record(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>> {
        get(&self.txn, &RECORDS, &(entity.to_owned(), id.as_u128()))
    }

    /// Calls `f` for the records of `entity` in id order, starting after `after`.
    pub fn scan(
        &self,
        entity: &str,
        after: Option<Uuid>,
        mut f: impl FnMut(Uuid, StoredRecord) -> ControlFlow<()>,
    ) -> Result<()> {
        let start = after.map_or(0, |a| a.as_u128().saturating_add(1));
        if after.is_some_and(|a| a.as_u128() == u128::MAX) {
            return Ok(());
        }
        let entity = entity.to_owned();
        self.txn.scan(&RECORDS, (entity.clone(), start)..=(entity, u128::MAX), false, |(_, id), v| {
            Ok(f(Uuid::from_u128(id), codec::decode(&v)?))
        })
    }

    /// Whether job `id` is leased with fencing token `token` in this snapshot: what a
    /// remote worker's reads for the job need.
    pub fn job_leased_with(&self, id: Uuid, token: u64) -> Result<bool> {
        let job: Option<SystemJob> = get(&self.txn, &JOBS, &id.as_u128())?;
        Ok(job.is_some_and(|j| j.is_leased_with(token)))
    }

    pub fn definition(&self, name: &str) -> Result<Option<EntityDefinition>> {
        super::get_row(&self.txn, &ENTITY_DEFS, &name.to_owned())
    }
}

impl Store {
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot { txn: self.read()? })
    }

    pub fn definitions(&self) -> Result<Vec<EntityDefinition>> {
        super::all_rows(&self.read()?, &ENTITY_DEFS)
    }

    /// Defines an entity, or adds attributes to an existing one.
    pub fn define_entity(&self, def: &EntityDefinition) -> Result<EntityDefinition> {
        def.validate().map_err(StoreError::Invalid)?;
        self.write(|w| merge_definition(w, def))
    }

    pub fn job(&self, id: Uuid) -> Result<Option<SystemJob>> {
        let txn = self.read()?;
        let mut job: Option<SystemJob> = get(&txn, &JOBS, &id.as_u128())?;
        if let Some(j) = &mut job {
            fill_context(&txn, j)?;
        }
        Ok(job)
    }

    /// A page of the jobs `query` selects, in id order (creation order), each with its
    /// context. Reads only as far as the page needs, however far that is.
    pub fn list_jobs(&self, query: &JobQuery) -> Result<Vec<SystemJob>> {
        Ok(self.list_jobs_page(query, None)?.jobs)
    }

    /// A page of the jobs `query` selects through the index it names
    /// ([`JobQuery::index`]), reading at most `budget` jobs: a filter the index does
    /// not cover may stop the page short, saying where to go on.
    pub fn list_jobs_page(&self, query: &JobQuery, budget: Option<usize>) -> Result<JobPage> {
        let limit = query.page_size().map_err(StoreError::Invalid)?;
        let (low, high) = id_bounds(query)?;
        let txn = self.read()?;
        let mut page = select_jobs(&txn, query, (low, high), limit, budget)?;
        page.jobs = self.with_contexts(&txn, std::mem::take(&mut page.jobs))?;
        Ok(page)
    }

    /// Job counts by operation type and status (kept by every job write: no scan).
    pub fn job_type_counts(&self) -> Result<Vec<(crate::jobs::OperationType, crate::jobs::JobStatus, u64)>> {
        super::jobs::type_counts(&self.read()?)
    }

    /// Every recurring job (with its context).
    pub fn recurring_jobs(&self) -> Result<Vec<SystemJob>> {
        let txn = self.read()?;
        let ids: Vec<u128> = txn.all(&super::jobs::RECURRING)?.into_iter().map(|(id, ())| id).collect();
        let jobs = txn.get_many(&JOBS, &ids)?.into_iter().flatten().map(|v| Ok(codec::decode(&v)?));
        let jobs = jobs.collect::<Result<Vec<SystemJob>>>()?;
        self.with_contexts(&txn, jobs)
    }

    /// Every step's statistics of asynchronous runs.
    pub fn step_stats(&self) -> Result<Vec<(Uuid, crate::jobs::StepStats)>> {
        let rows = self.read()?.all(&super::jobs::STEP_STATS)?;
        rows.into_iter().map(|(id, v)| Ok((Uuid::from_u128(id), codec::decode(&v)?))).collect()
    }

    /// Run statistics of the minutes from `since` (UTC ms), oldest first.
    pub fn job_minutes(&self, since: i64) -> Result<Vec<(i64, crate::jobs::MinuteStats)>> {
        let rows = self.read()?.all_in(&super::jobs::MINUTES, since.div_euclid(60_000)..)?;
        rows.into_iter().map(|(m, v)| Ok((m * 60_000, codec::decode(&v)?))).collect()
    }

    fn with_contexts(&self, txn: &super::kv::Read, mut out: Vec<SystemJob>) -> Result<Vec<SystemJob>> {
        for job in &mut out {
            fill_context(txn, job)?;
        }
        Ok(out)
    }

    /// Reads the contexts of jobs loaded without them.
    pub(crate) fn fill_contexts(&self, jobs: &mut [SystemJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<u128> = jobs.iter().map(|j| j.id.as_u128()).collect();
        let contexts = self.read()?.get_many(&JOB_CONTEXTS, &ids)?;
        for (job, context) in jobs.iter_mut().zip(contexts) {
            if let Some(c) = context {
                job.context = codec::decode(&c)?;
            }
        }
        Ok(())
    }

    /// Up to `max` rows of an import job from row `from` (0-based), with their indexes.
    pub fn bulk_rows(&self, job: Uuid, from: u64, max: usize) -> Result<Vec<(u64, Entity)>> {
        let id = job.as_u128();
        let rows = self.read()?.first(&super::jobs::BULK_ROWS, (id, from)..=(id, u64::MAX), max)?;
        rows.into_iter().map(|((_, i), v)| Ok((i, codec::decode(&v)?))).collect()
    }

    /// Job counts by status (kept by every job write: no scan), and how many are
    /// runnable (the ready index's length: kept by redb, counted entry by entry on
    /// PostgreSQL, so not for polling in a loop: see [`Store::status_counts`]).
    pub fn job_counts(&self) -> Result<crate::store::QueueCounts> {
        let txn = self.read()?;
        let by_status =
            super::jobs::status_counts(&txn)?.into_iter().map(|(s, n)| (s.name().to_owned(), s.code(), n)).collect();
        Ok(crate::store::QueueCounts { by_status, runnable: txn.len(&super::jobs::READY)? })
    }

    /// Job counts by status alone. Unlike [`Store::job_counts`] it reads no index,
    /// so polling it costs the same whatever the queue holds (on PostgreSQL, counting
    /// the ready jobs reads every one of them).
    pub fn status_counts(&self) -> Result<Vec<(crate::jobs::JobStatus, u64)>> {
        super::jobs::status_counts(&self.read()?)
    }
}

/// The ids a query can select: its id prefix, its created range, its paging.
pub(super) fn id_bounds(query: &JobQuery) -> Result<(u128, u128)> {
    let (mut low, mut high) = query.id_range().map_err(StoreError::Invalid)?;
    // Ids are UUIDv7 made when a job is queued: the created range bounds them (a
    // minute's margin for the time between the job's creation and its commit;
    // the injected clock skew moves `created_on` and not the id).
    let skew = crate::clock::skew();
    let margin = 60_000;
    if let Some(since) = query.since {
        low = low.max(v7_floor(since.saturating_sub(skew).saturating_sub(margin)));
    }
    if let Some(until) = query.until {
        high = high.min(v7_floor(until.saturating_sub(skew).saturating_add(margin)));
    }
    if let Some(after) = query.after.map(|a| a.as_u128()) {
        // The page goes on past `after`, in the direction of the listing.
        if query.newest_first {
            high = high.min(after.checked_sub(1).ok_or(StoreError::Invalid("nothing is before id 0".into()))?);
        } else {
            low = low.max(after.checked_add(1).ok_or(StoreError::Invalid("nothing is after the last id".into()))?);
        }
    }
    if let Some(before) = query.before {
        high = high.min(before.as_u128().saturating_sub(1));
    }
    Ok((low, high))
}

/// Selects a page of the jobs `query` selects within `(low, high)`, reading at most
/// `budget` jobs (without their contexts).
pub(super) fn select_jobs(
    r: &impl Reads,
    query: &JobQuery,
    (low, high): (u128, u128),
    limit: usize,
    budget: Option<usize>,
) -> Result<JobPage> {
    let mut page = JobPage::default();
    if low > high {
        return Ok(page);
    }
    let budget = budget.unwrap_or(usize::MAX);
    let mut last = None;
    let mut take = |id: u128, job: SystemJob| {
        page.scanned += 1;
        last = Some(id);
        if query.matches(&job) {
            page.jobs.push(job);
            if page.jobs.len() == limit {
                return ControlFlow::Break(());
            }
        }
        if page.scanned >= budget {
            page.budget_spent = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    let newest = query.newest_first;
    match (query.index(), query.owner, query.step, query.status) {
        (JobIndex::Owner, Some(owner), ..) => {
            scan_index(r, &super::identity::JOBS_BY_OWNER, owner.as_u128(), low, high, newest, &mut take)?
        }
        (JobIndex::Step, _, Some(step), _) => {
            scan_index(r, &super::jobs::STEP_JOBS, step.as_u128(), low, high, newest, &mut take)?
        }
        (JobIndex::Status, _, _, Some(status)) if super::jobs::in_status_index(status) => {
            scan_index(r, &super::jobs::BY_STATUS, status.code(), low, high, newest, &mut take)?
        }
        // Locked jobs are few (what the workers hold) and all in the lease index:
        // read it whole, in id order.
        (JobIndex::Status, ..) => {
            let mut ids = Vec::new();
            for ((_, group), v) in r.all(&super::jobs::LEASES)? {
                ids.extend(super::jobs::lease_group(group, &v)?.into_iter().filter(|id| (low..=high).contains(id)));
            }
            ids.sort_unstable();
            ids.dedup();
            if newest {
                ids.reverse();
            }
            for (id, job) in ids.iter().zip(r.fetch_many(&JOBS, &ids)?) {
                if let Some(v) = job
                    && take(*id, codec::decode(&v)?).is_break()
                {
                    break;
                }
            }
        }
        _ => r.scan(&JOBS, low..=high, newest, |id, v| Ok(take(id, codec::decode(&v)?)))?,
    }
    if page.jobs.len() == limit || page.budget_spent {
        page.next_after = last.map(Uuid::from_u128);
    }
    Ok(page)
}

/// The smallest UUIDv7 of millisecond `ms` (as a u128).
fn v7_floor(ms: i64) -> u128 {
    let ms = ms.clamp(0, (1 << 48) - 1) as u128;
    ms << 80
}

/// Pages an index of (key, job id) entries for one key in id order, handing each
/// job to `take` until it breaks; whether the index ended first.
fn scan_index<P: super::kv::Key + Clone>(
    txn: &impl Reads,
    index: &super::kv::Table<(P, u128), ()>,
    key: P,
    low: u128,
    high: u128,
    newest_first: bool,
    take: &mut impl FnMut(u128, SystemJob) -> ControlFlow<()>,
) -> Result<()> {
    const CHUNK: usize = 256;
    let (mut low, mut high) = (low, high);
    loop {
        let mut ids = Vec::with_capacity(CHUNK);
        txn.scan(index, (key.clone(), low)..=(key.clone(), high), newest_first, |(_, id), ()| {
            ids.push(id);
            Ok(if ids.len() >= CHUNK { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        let Some(&last) = ids.last() else { return Ok(()) };
        let full = ids.len() == CHUNK;
        for (id, job) in ids.iter().zip(txn.fetch_many(&JOBS, &ids)?) {
            if let Some(v) = job
                && take(*id, codec::decode(&v)?).is_break()
            {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
        match newest_first {
            true if last > low => high = last - 1,
            false if last < high => low = last + 1,
            _ => return Ok(()),
        }
    }
}

/// Adds `def`'s attributes to the stored definition of its entity (creating it).
pub(super) fn merge_definition(w: &super::kv::Write<'_>, def: &EntityDefinition) -> Result<EntityDefinition> {
    let mut current: EntityDefinition = super::get_row(w, &ENTITY_DEFS, &def.name)?
        .unwrap_or_else(|| EntityDefinition { name: def.name.clone(), attributes: BTreeMap::new() });
    current.merge(def).map_err(StoreError::Conflict)?;
    current.validate().map_err(StoreError::Invalid)?;
    w.insert(&ENTITY_DEFS, &def.name, &super::rows::encode(&current)?)?;
    Ok(current)
}
