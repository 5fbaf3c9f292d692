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
use crate::jobs::{JobQuery, SystemJob};
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
        self.write(|w| {
            let mut current: EntityDefinition = super::get_row(w, &ENTITY_DEFS, &def.name)?
                .unwrap_or_else(|| EntityDefinition { name: def.name.clone(), attributes: BTreeMap::new() });
            current.merge(def).map_err(StoreError::Conflict)?;
            current.validate().map_err(StoreError::Invalid)?;
            w.insert(&ENTITY_DEFS, &def.name, &super::rows::encode(&current)?)?;
            Ok(current)
        })
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
    /// context. Reads only as far as the page needs.
    pub fn list_jobs(&self, query: &JobQuery) -> Result<Vec<SystemJob>> {
        let limit = query.page_size().map_err(StoreError::Invalid)?;
        let (mut low, mut high) = query.id_range().map_err(StoreError::Invalid)?;
        if let Some(after) = query.after.map(|a| a.as_u128()) {
            // The page goes on past `after`, in the direction of the listing.
            if query.newest_first {
                high = high.min(after.checked_sub(1).ok_or(StoreError::Invalid("nothing is before id 0".into()))?);
            } else {
                low = low.max(after.checked_add(1).ok_or(StoreError::Invalid("nothing is after the last id".into()))?);
            }
        }
        let mut out = Vec::new();
        if low > high {
            return Ok(out);
        }
        let txn = self.read()?;
        let mut take = |job: SystemJob| {
            if query.matches(&job) {
                out.push(job);
                if out.len() == limit {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        };
        match query.owner {
            // One user's jobs: its index, in the same id order.
            Some(owner) => {
                let owner = owner.as_u128();
                let mut ids = Vec::new();
                txn.scan(
                    &super::identity::JOBS_BY_OWNER,
                    (owner, low)..=(owner, high),
                    query.newest_first,
                    |(_, id), ()| {
                        ids.push(id);
                        Ok(if ids.len() >= 256 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
                    },
                )?;
                // Pages of the index until the page of jobs is full or the index ends.
                while let Some(&last) = ids.last() {
                    let full = ids.len() >= 256;
                    for id in std::mem::take(&mut ids) {
                        if let Some(v) = txn.get(&JOBS, &id)?
                            && take(codec::decode(&v)?).is_break()
                        {
                            return self.with_contexts(&txn, out);
                        }
                    }
                    if !full {
                        break;
                    }
                    let range = match query.newest_first {
                        true if last > low => (owner, low)..=(owner, last - 1),
                        false if last < high => (owner, last + 1)..=(owner, high),
                        _ => break,
                    };
                    txn.scan(&super::identity::JOBS_BY_OWNER, range, query.newest_first, |(_, id), ()| {
                        ids.push(id);
                        Ok(if ids.len() >= 256 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
                    })?;
                }
            }
            None => txn.scan(&JOBS, low..=high, query.newest_first, |_, v| Ok(take(codec::decode(&v)?)))?,
        }
        self.with_contexts(&txn, out)
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

    /// Job counts by status (kept by every job write: no scan), and how many are runnable.
    pub fn job_counts(&self) -> Result<crate::store::QueueCounts> {
        let txn = self.read()?;
        let by_status =
            super::jobs::status_counts(&txn)?.into_iter().map(|(s, n)| (s.name().to_owned(), s.code(), n)).collect();
        Ok(crate::store::QueueCounts { by_status, runnable: txn.len(&super::jobs::READY)? })
    }
}
