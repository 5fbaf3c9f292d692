//! Workflows' tables, on both engines (kv tables): definitions, frozen versions, the
//! run log, and the wait subscriptions that wake waiting runs.
//!
//! **Invariants:**
//! - A workflow job has wait subscriptions exactly while it is Waiting after a run
//!   that ended in a wait: [`subscribe`] writes them in the transaction that completes
//!   that run, and `put_job` drops them ([`unsubscribe`]) in the transaction that
//!   takes the job out of Waiting, whatever the reason (woken, timed out, resumed,
//!   canceled, deleted).
//! - A change to a watched record wakes its waiting runs in the transaction that
//!   commits the change ([`wake`]): no wake-up is lost between a change and a wait.
//! - A version, once frozen by activation, never changes.
//! - A job's log rows go when the job is deleted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commit::{ChangeSet, CommitError, LogRow, Receipt};
use super::data::StoredRecord;
use super::jobs::{Tables, load, put_job};
use super::kv::{ALL_TABLES, Reads, Table, Write};
use super::{Result, Store, StoreError, get};
use crate::codec;
use crate::jobs::{JobStatus, Watch};
use crate::workflow::{ActiveWorkflow, Definition, LogEntry, WorkflowRecord};

const WORKFLOWS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[25]);
const WORKFLOW_NAMES: Table<String, u128> = Table::new(ALL_TABLES[26]);
/// (workflow, version) -> the frozen definition's JSON.
const VERSIONS: Table<(u128, u32), Vec<u8>> = Table::new(ALL_TABLES[27]);
/// (job, seq) -> log row.
const LOG: Table<(u128, u32), Vec<u8>> = Table::new(ALL_TABLES[28]);
/// (entity, record) -> the runs waiting on it, with the attributes each watches.
const WAITS: Table<(String, u128), Vec<u8>> = Table::new(ALL_TABLES[29]);
/// job -> the record it waits on (to drop its subscription).
const WAIT_OF: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[30]);

/// The runs waiting on one record: (job, watched attributes; empty: only deletion).
type Waiters = Vec<(u128, Vec<String>)>;

#[derive(Serialize, Deserialize)]
struct WaitOf {
    entity: String,
    id: u128,
}

impl Store {
    /// Every workflow, by name.
    pub fn workflows(&self) -> Result<Vec<WorkflowRecord>> {
        let r = self.read()?;
        let mut out: Vec<WorkflowRecord> =
            r.all(&WORKFLOWS)?.into_iter().map(|(_, v)| Ok(codec::decode(&v)?)).collect::<Result<_>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A workflow by name.
    pub fn workflow(&self, name: &str) -> Result<Option<WorkflowRecord>> {
        by_name(&self.read()?, name)
    }

    /// A frozen version's definition (JSON).
    pub fn workflow_version(&self, id: Uuid, version: u32) -> Result<Option<String>> {
        get(&self.read()?, &VERSIONS, &(id.as_u128(), version))
    }

    /// The active workflows' frozen versions, parsed: what the step index triggers.
    pub fn active_workflows(&self) -> Result<Vec<ActiveWorkflow>> {
        let r = self.read()?;
        let mut out = Vec::new();
        for (_, v) in r.all(&WORKFLOWS)? {
            let w: WorkflowRecord = codec::decode(&v)?;
            if !w.active {
                continue;
            }
            let json: String = get(&r, &VERSIONS, &(w.id.as_u128(), w.version))?
                .ok_or_else(|| StoreError::Db(format!("workflow {} lacks its version {}", w.name, w.version)))?;
            let definition = Definition::parse(json.as_bytes())
                .map_err(|e| StoreError::Db(format!("workflow {} version {}: {e}", w.name, w.version)))?;
            out.push(ActiveWorkflow {
                id: w.id,
                version: w.version,
                owner: w.owner,
                definition: definition.into(),
                json: json.into(),
            });
        }
        Ok(out)
    }

    /// Stores a new workflow (inactive). Refuses a name in use.
    pub fn create_workflow(&self, record: &WorkflowRecord) -> Result<()> {
        self.write(|w| {
            if w.get(&WORKFLOW_NAMES, &record.name)?.is_some() {
                return Err(StoreError::Conflict(format!("a workflow named '{}' exists already", record.name)));
            }
            w.insert(&WORKFLOW_NAMES, &record.name, &record.id.as_u128())?;
            w.insert(&WORKFLOWS, &record.id.as_u128(), &codec::encode(record)?)
        })
    }

    /// Replaces an inactive workflow's definition; `check` sees the stored record
    /// first (in the transaction) and may refuse.
    pub fn update_workflow(
        &self,
        name: &str,
        f: impl FnOnce(&WorkflowRecord) -> Result<WorkflowRecord>,
    ) -> Result<WorkflowRecord> {
        self.change_registry(|w| {
            let old = by_name(w, name)?.ok_or_else(|| unknown(name))?;
            let new = f(&old)?;
            if new.active && !old.active {
                // Activation freezes the definition as the next version.
                w.insert(&VERSIONS, &(new.id.as_u128(), new.version), &codec::encode(&new.definition)?)?;
            }
            w.insert(&WORKFLOWS, &new.id.as_u128(), &codec::encode(&new)?)?;
            Ok(new)
        })
    }

    /// Deletes a workflow, its name and its frozen versions, after `check` accepts the
    /// stored record (in the transaction).
    pub fn delete_workflow(
        &self,
        name: &str,
        check: impl FnOnce(&WorkflowRecord) -> Result<()>,
    ) -> Result<WorkflowRecord> {
        self.change_registry(|w| {
            let old = by_name(w, name)?.ok_or_else(|| unknown(name))?;
            check(&old)?;
            let id = old.id.as_u128();
            w.remove(&WORKFLOW_NAMES, &old.name)?;
            w.remove(&WORKFLOWS, &id)?;
            w.remove_range(&VERSIONS, (id, 0)..=(id, u32::MAX))?;
            Ok(old)
        })
    }

    /// A run's log rows, in order.
    pub fn workflow_log(&self, job: Uuid) -> Result<Vec<LogEntry>> {
        let r = self.read()?;
        let id = job.as_u128();
        r.all_in(&LOG, (id, 0)..=(id, u32::MAX))?.into_iter().map(|(_, v)| Ok(codec::decode(&v)?)).collect()
    }
}

fn unknown(name: &str) -> StoreError {
    StoreError::NotFound(format!("no workflow is named '{name}': see `plughost workflows list`"))
}

fn by_name(r: &impl Reads, name: &str) -> Result<Option<WorkflowRecord>> {
    match r.get(&WORKFLOW_NAMES, &name.to_owned())? {
        Some(id) => get(r, &WORKFLOWS, &id),
        None => Ok(None),
    }
}

/// Writes a change set's log rows, each child job's id taken from the receipt.
pub(super) fn write_log(w: &Write<'_>, changes: &ChangeSet, receipt: &Receipt) -> Result<()> {
    for LogRow { job, entry, child } in &changes.log {
        let mut entry = entry.clone();
        if let Some(i) = child {
            entry.child_job = receipt.jobs.get(*i).map(|(id, _)| *id);
        }
        w.insert(&LOG, &(job.as_u128(), entry.seq), &codec::encode(&entry)?)?;
    }
    Ok(())
}

/// Wakes the runs waiting on records this change set updates (when a watched
/// attribute changed) and cancels those waiting on records it deletes. `before`
/// holds each change's record as it was, in the change set's order.
pub(super) fn wake(
    t: &mut Tables<'_, '_>,
    changes: &ChangeSet,
    before: &[Option<StoredRecord>],
    now: i64,
) -> Result<(), CommitError> {
    // `commit::prefetch` read the subscriptions ahead with the records.
    for (change, old) in changes.records.iter().zip(before).filter(|(_, b)| b.is_some()) {
        let Some(waiters) = get::<_, Waiters>(t.w, &WAITS, &(change.entity.clone(), change.id.as_u128()))? else {
            continue;
        };
        let old = old.as_ref().expect("filtered");
        for (job, attributes) in waiters {
            let fires = match &change.new {
                None => true,
                Some(new) => attributes.iter().any(|a| new.attributes.get(a) != old.attributes.get(a)),
            };
            if !fires {
                continue;
            }
            let Some(waiting) = load(t, Uuid::from_u128(job))? else { continue };
            if waiting.status != JobStatus::Waiting {
                continue;
            }
            let mut next = waiting.clone();
            match change.new {
                None => {
                    next.status = JobStatus::Canceled;
                    next.completed_on = Some(now);
                    next.message = Some(format!("canceled: {} {} it waited on was deleted", change.entity, change.id));
                }
                Some(_) => {
                    next.status = JobStatus::WaitingForResources;
                    next.postpone_until = None;
                }
            }
            put_job(t, Some(&waiting), Some(&next), now)?;
        }
    }
    Ok(())
}

/// Reads ahead the wait subscriptions of the records `changes` update or delete.
pub(super) fn prefetch_waits<'a>(
    w: &Write<'_>,
    changes: impl Iterator<Item = &'a super::commit::RecordChange>,
) -> Result<()> {
    let keys: Vec<(String, u128)> = changes.map(|c| (c.entity.clone(), c.id.as_u128())).collect();
    if keys.is_empty() {
        return Ok(());
    }
    w.prefetch(&WAITS, keys)
}

/// Subscribes a run that just went to Waiting to its record, unless the record
/// changed since the run evaluated its wait: then the run is ready again at once (or
/// canceled, if the record is gone). Returns the job as it should be written.
pub(super) fn subscribe(w: &Write<'_>, job: Uuid, watch: &Watch) -> Result<WaitDecision> {
    let current: Option<StoredRecord> = get(w, &super::RECORDS, &(watch.entity.clone(), watch.id.as_u128()))?;
    match current {
        None => return Ok(WaitDecision::Gone),
        Some(r) if Some(r.version) != watch.version => return Ok(WaitDecision::Changed),
        Some(_) => {}
    }
    let key = (watch.entity.clone(), watch.id.as_u128());
    let mut waiters: Waiters = get(w, &WAITS, &key)?.unwrap_or_default();
    waiters.retain(|(j, _)| *j != job.as_u128());
    waiters.push((job.as_u128(), watch.attributes.clone()));
    w.insert(&WAITS, &key, &codec::encode(&waiters)?)?;
    let of = WaitOf { entity: watch.entity.clone(), id: watch.id.as_u128() };
    w.insert(&WAIT_OF, &job.as_u128(), &codec::encode(&of)?)?;
    Ok(WaitDecision::Subscribed)
}

/// What [`subscribe`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WaitDecision {
    Subscribed,
    /// The record changed since the run looked: run again now.
    Changed,
    /// The record was deleted: the run is canceled.
    Gone,
}

/// Drops a job's wait subscription, if it has one.
pub(super) fn unsubscribe(w: &Write<'_>, job: Uuid) -> Result<()> {
    let Some(of) = get::<_, WaitOf>(w, &WAIT_OF, &job.as_u128())? else { return Ok(()) };
    w.remove(&WAIT_OF, &job.as_u128())?;
    let key = (of.entity, of.id);
    let mut waiters: Waiters = get(w, &WAITS, &key)?.unwrap_or_default();
    waiters.retain(|(j, _)| *j != job.as_u128());
    if waiters.is_empty() {
        w.remove(&WAITS, &key)?;
    } else {
        w.insert(&WAITS, &key, &codec::encode(&waiters)?)?;
    }
    Ok(())
}

/// Deletes a job's log rows (the job is being deleted).
pub(super) fn delete_log(w: &Write<'_>, job: Uuid) -> Result<()> {
    let id = job.as_u128();
    w.remove_range(&LOG, (id, 0)..=(id, u32::MAX))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::jobs::{JobResult, OperationType, SystemJob};
    use crate::model::{ExecutionContext, Value};
    use crate::store::{Committer, JobAction, JobCompletion, JobQueue, RecordChange};

    #[test]
    fn a_change_wakes_exactly_the_runs_that_watch_it_and_none_is_lost() {
        for (_dir, store) in crate::store::testing::stores() {
            waits_on(Arc::new(store));
        }
    }

    fn record(version: u64, status: &str, note: &str) -> StoredRecord {
        StoredRecord {
            version,
            created_on: 0,
            modified_on: 0,
            attributes: [
                ("status".to_owned(), Value::Text(status.into())),
                ("note".to_owned(), Value::Text(note.into())),
            ]
            .into(),
        }
    }

    fn waits_on(store: Arc<Store>) {
        let committer = Committer::start(store.clone(), 16);
        let queue = JobQueue::new(store.clone(), committer.clone());
        let id = Uuid::now_v7();
        let write = |expected: Option<u64>, new: Option<StoredRecord>| {
            let change = RecordChange { entity: "case".into(), id, expected_version: expected, new };
            committer.commit_blocking(ChangeSet { records: vec![change], ..ChangeSet::default() }).unwrap();
        };
        write(None, Some(record(1, "open", "")));
        let mut job = SystemJob::plugin_execution("wf", Uuid::nil(), None, ExecutionContext::default());
        job.operation_type = OperationType::Workflow;
        let job = queue.create(job).unwrap();
        let status = |store: &Store| store.job(job.id).unwrap().unwrap().status;
        // A run that waits on the record as it saw it (version `seen`).
        let wait = |seen: u64| {
            let leased = queue.lease("w", 10, Duration::from_secs(60)).unwrap();
            assert_eq!(leased.len(), 1, "the run is ready");
            let watch = Watch { entity: "case".into(), id, attributes: vec!["status".into()], version: Some(seen) };
            let c = JobCompletion {
                id: job.id,
                fencing_token: leased[0].fencing_token,
                result: JobResult::Wait { until: None, watch: Some(watch) },
                effects: ChangeSet::default(),
                trace: String::new(),
                fuel_used: 0,
                duration_us: 0,
                delete_on_success: false,
                max_retries: 0,
                backoff_ms: 0,
                purge_before: None,
                output: Default::default(),
                message: None,
            };
            queue.complete_all(vec![c]).blocking_recv().unwrap().unwrap().remove(0).unwrap()
        };
        let waiters =
            |store: &Store| get::<_, Waiters>(&store.read().unwrap(), &WAITS, &("case".into(), id.as_u128())).unwrap();

        wait(1);
        assert_eq!(status(&store), JobStatus::Waiting);
        assert_eq!(waiters(&store).unwrap().len(), 1);
        // A change to an attribute it does not watch leaves it waiting.
        write(Some(1), Some(record(2, "open", "called")));
        assert_eq!(status(&store), JobStatus::Waiting);
        // A change to the watched one wakes it, and its subscription goes.
        write(Some(2), Some(record(3, "resolved", "called")));
        assert_eq!(status(&store), JobStatus::WaitingForResources);
        assert_eq!(waiters(&store), None);

        // The race: the record changes after the run read it and before its wait
        // commits. The run is ready again at once instead of waiting for a change
        // that already happened.
        write(Some(3), Some(record(4, "reopened", "called")));
        wait(3);
        assert_eq!(status(&store), JobStatus::WaitingForResources, "no lost wake-up");
        assert_eq!(waiters(&store), None);

        // A user's cancel of a waiting run drops its subscription.
        wait(4);
        assert_eq!(status(&store), JobStatus::Waiting);
        queue.manage(job.id, JobAction::Cancel).unwrap();
        assert_eq!(waiters(&store), None);
        assert!(get::<_, WaitOf>(&store.read().unwrap(), &WAIT_OF, &job.id.as_u128()).unwrap().is_none());
        write(Some(4), Some(record(5, "open", "")));
        assert_eq!(status(&store), JobStatus::Canceled);

        // Deleting the record cancels the runs waiting on it.
        queue.manage(job.id, JobAction::Retry).unwrap();
        wait(5);
        write(Some(5), None);
        let gone = store.job(job.id).unwrap().unwrap();
        assert_eq!(gone.status, JobStatus::Canceled);
        assert!(gone.message.unwrap().contains("was deleted"));
        assert_eq!(waiters(&store), None);
    }
}
