//! Job and step records as earlier schemas stored them, read once by the migration
//! that rewrites them in the current layout (`Store::check_schema`).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::Deserialize;
use uuid::Uuid;

use super::StoreError;
use super::kv::{self, ALL_TABLES, TableId};
use crate::codec;
use crate::jobs::{JobStatus, OperationType, SystemJob};
use crate::model::{AssemblyHash, EntityReference, ExecutionContext, Parameters};

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

// The typed redb tables of schemas 1 to 4.
pub(super) const META_V4: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ASSEMBLIES_V4: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assemblies");
const ASSEMBLY_BYTES_V4: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assembly_bytes");
const PLUGINS_V4: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
pub(super) const STEPS_V4: TableDefinition<u128, &[u8]> = TableDefinition::new("steps");
const ARTIFACTS_V4: TableDefinition<&str, [u8; 32]> = TableDefinition::new("artifacts");
const ENTITY_DEFS_V4: TableDefinition<&str, &[u8]> = TableDefinition::new("entity_definitions");
const RECORDS_V4: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("records");
pub(super) const JOBS_V4: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
const JOB_CONTEXTS_V4: TableDefinition<u128, &[u8]> = TableDefinition::new("job_contexts");
pub(super) const READY_V4: TableDefinition<u64, u128> = TableDefinition::new("jobs_ready");
const POSTPONED_V4: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_postponed");
pub(super) const TOKENS_V4: TableDefinition<(&str, u64), u128> = TableDefinition::new("jobs_tokens");
const LEASES_V4: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_leases");
pub(super) const STEP_JOBS_V4: TableDefinition<(u128, u128), ()> = TableDefinition::new("jobs_by_step");
pub(super) const COMPLETED_V4: TableDefinition<(i64, u128), ()> = TableDefinition::new("jobs_completed");
const BULK_ROWS_V4: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("bulk_rows");
pub(super) const STATUS_COUNTS_V4: TableDefinition<u32, u64> = TableDefinition::new("jobs_status_counts");

/// Makes a redb file current: a store of schemas 1 to 4 (typed tables) is migrated to
/// schema 5 (`kv`'s byte-keyed tables) in one transaction; every table is created.
pub(super) fn prepare_redb(db: &Database, path: &Path) -> Result<()> {
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_owned(), detail };
    let typed = db.begin_read()?.list_tables().map_err(err)?.any(|t| t.name() == META_V4.name());
    let txn = db.begin_write()?;
    if typed {
        let found = match txn.open_table(META_V4)?.get("schema_version")? {
            Some(v) => codec::decode::<u32>(v.value()).map_err(|e| corrupt(e.to_string()))?,
            None => return Err(corrupt("a store without a schema version".into())),
        };
        if !(1..=4).contains(&found) {
            return Err(corrupt(format!("unknown schema version {found} in the typed tables")));
        }
        let (mut upgraded, mut steps, mut indexed) = (0, 0, 0);
        if found <= 3 {
            // Tables a store of that age may lack.
            txn.open_table(JOB_CONTEXTS_V4)?;
            txn.open_table(BULK_ROWS_V4)?;
            upgraded = upgrade_job_records(&txn, found)?;
            steps = upgrade_step_records(&txn)?;
            if found == 1 {
                indexed = index_completed(&txn)?;
            }
        }
        let moved = rekey_all(&txn)?;
        kv::create_redb_tables(&txn)?;
        txn.open_table(kv::redb_table(ALL_TABLES[0]))?.insert(
            kv::Key::encode(&"schema_version".to_owned()).as_slice(),
            // Schema 5's layout; `Store::check_schema` takes it on from there.
            codec::encode(&5u32)?.as_slice(),
        )?;
        tracing::info!(upgraded, steps, indexed, moved, "store migrated from schema {found} to 5");
    } else {
        kv::create_redb_tables(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// Moves one typed table's entries into its byte-keyed table and deletes it.
fn rekey<K, V, NK, NV>(
    txn: &WriteTransaction,
    old: TableDefinition<K, V>,
    new: TableId,
    convert: impl for<'a> Fn(K::SelfType<'a>, V::SelfType<'a>) -> (NK, NV),
) -> Result<u64>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    NK: kv::Key,
    NV: kv::Value,
{
    if !txn.list_tables().map_err(err)?.any(|t| t.name() == old.name()) {
        return Ok(0);
    }
    let mut n = 0;
    {
        let from = txn.open_table(old)?;
        let mut to = txn.open_table(kv::redb_table(new))?;
        for entry in from.iter()? {
            let (k, v) = entry?;
            let (nk, nv) = convert(k.value(), v.value());
            to.insert(nk.encode().as_slice(), nv.to_bytes().as_ref())?;
            n += 1;
        }
    }
    txn.delete_table(old).map_err(err)?;
    Ok(n)
}

fn rekey_all(txn: &WriteTransaction) -> Result<u64> {
    let t = ALL_TABLES;
    let bytes = |v: &[u8]| v.to_vec();
    Ok(rekey(txn, META_V4, t[0], |k, v| (k.to_owned(), bytes(v)))?
        + rekey(txn, ASSEMBLIES_V4, t[1], |k, v| (k, bytes(v)))?
        + rekey(txn, ASSEMBLY_BYTES_V4, t[2], |k, v| (k, bytes(v)))?
        + rekey(txn, PLUGINS_V4, t[3], |k, v| (k.to_owned(), bytes(v)))?
        + rekey(txn, STEPS_V4, t[4], |k, v| (k, bytes(v)))?
        + rekey(txn, ARTIFACTS_V4, t[5], |k, v| (k.to_owned(), v))?
        + rekey(txn, ENTITY_DEFS_V4, t[6], |k, v| (k.to_owned(), bytes(v)))?
        + rekey(txn, RECORDS_V4, t[7], |k, v| ((k.0.to_owned(), k.1), bytes(v)))?
        + rekey(txn, JOBS_V4, t[8], |k, v| (k, bytes(v)))?
        + rekey(txn, JOB_CONTEXTS_V4, t[9], |k, v| (k, bytes(v)))?
        + rekey(txn, READY_V4, t[10], |k, v| (k, v))?
        + rekey(txn, POSTPONED_V4, t[11], |k, ()| (k, ()))?
        + rekey(txn, TOKENS_V4, t[12], |k, v| ((k.0.to_owned(), k.1), v))?
        + rekey(txn, LEASES_V4, t[13], |k, ()| (k, ()))?
        + rekey(txn, STEP_JOBS_V4, t[14], |k, ()| (k, ()))?
        + rekey(txn, COMPLETED_V4, t[15], |k, ()| (k, ()))?
        + rekey(txn, BULK_ROWS_V4, t[16], |k, v| (k, bytes(v)))?
        + rekey(txn, STATUS_COUNTS_V4, t[17], |k, v| (k, v))?)
}

/// Turns a current redb store back into schema 4's typed tables: the migration
/// tests build stores of earlier schemas from it.
#[cfg(test)]
pub(super) fn downgrade_to_v4(path: &Path) {
    use kv::{Key, Value};
    fn back<K: redb::Key + 'static, V: redb::Value + 'static, NK: Key, NV: Value>(
        txn: &WriteTransaction,
        new: TableId,
        old: TableDefinition<K, V>,
        put: impl Fn(&mut redb::Table<'_, K, V>, NK, NV),
    ) {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = {
            let t = txn.open_table(kv::redb_table(new)).unwrap();
            t.iter().unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).collect()
        };
        let mut to = txn.open_table(old).unwrap();
        for (k, v) in entries {
            put(&mut to, NK::decode(&k).unwrap(), NV::from_bytes(v).unwrap());
        }
        drop(to);
        txn.delete_table(kv::redb_table(new)).unwrap();
    }
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    let t = ALL_TABLES;
    back(&txn, t[0], META_V4, |to, k: String, v: Vec<u8>| drop(to.insert(k.as_str(), v.as_slice())));
    back(&txn, t[1], ASSEMBLIES_V4, |to, k: [u8; 32], v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[2], ASSEMBLY_BYTES_V4, |to, k: [u8; 32], v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[3], PLUGINS_V4, |to, k: String, v: Vec<u8>| drop(to.insert(k.as_str(), v.as_slice())));
    back(&txn, t[4], STEPS_V4, |to, k: u128, v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[5], ARTIFACTS_V4, |to, k: String, v: [u8; 32]| drop(to.insert(k.as_str(), v)));
    back(&txn, t[6], ENTITY_DEFS_V4, |to, k: String, v: Vec<u8>| drop(to.insert(k.as_str(), v.as_slice())));
    back(&txn, t[7], RECORDS_V4, |to, k: (String, u128), v: Vec<u8>| {
        drop(to.insert((k.0.as_str(), k.1), v.as_slice()))
    });
    back(&txn, t[8], JOBS_V4, |to, k: u128, v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[9], JOB_CONTEXTS_V4, |to, k: u128, v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[10], READY_V4, |to, k: u64, v: u128| drop(to.insert(k, v)));
    back(&txn, t[11], POSTPONED_V4, |to, k: (i64, u128), (): ()| drop(to.insert(k, ())));
    back(&txn, t[12], TOKENS_V4, |to, k: (String, u64), v: u128| drop(to.insert((k.0.as_str(), k.1), v)));
    back(&txn, t[13], LEASES_V4, |to, k: (i64, u128), (): ()| drop(to.insert(k, ())));
    back(&txn, t[14], STEP_JOBS_V4, |to, k: (u128, u128), (): ()| drop(to.insert(k, ())));
    back(&txn, t[15], COMPLETED_V4, |to, k: (i64, u128), (): ()| drop(to.insert(k, ())));
    back(&txn, t[16], BULK_ROWS_V4, |to, k: (u128, u64), v: Vec<u8>| drop(to.insert(k, v.as_slice())));
    back(&txn, t[17], STATUS_COUNTS_V4, |to, k: u32, v: u64| drop(to.insert(k, v)));
    txn.open_table(META_V4).unwrap().insert("schema_version", codec::encode(&4u32).unwrap().as_slice()).unwrap();
    txn.commit().unwrap();
}

/// Rewrites job records of schemas 1 to 3 in the current layout, a chunk at a time:
/// schemas 1 and 2 lack `output`, schema 3 has it; all three hold the (empty)
/// context in the record and lack the counters.
pub(super) fn upgrade_job_records(txn: &WriteTransaction, from: u32) -> Result<u64> {
    const CHUNK: usize = 10_000;
    let mut jobs = txn.open_table(JOBS_V4).map_err(err)?;
    let (mut start, mut n) = (0u128, 0u64);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        for entry in jobs.range(start..).map_err(err)?.take(CHUNK) {
            let (k, v) = entry.map_err(err)?;
            let job = if from >= 3 {
                SystemJob::from(codec::decode::<JobV3>(v.value())?)
            } else {
                SystemJob::from(codec::decode::<JobV2>(v.value())?)
            };
            // The earliest stores kept the context only in the record: keep it.
            let context = (job.context != crate::model::ExecutionContext::empty()).then(|| job.context.clone());
            chunk.push((k.value(), codec::encode(&job)?, context));
        }
        let mut contexts = txn.open_table(JOB_CONTEXTS_V4).map_err(err)?;
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
    let mut steps = txn.open_table(STEPS_V4).map_err(err)?;
    let mut rewritten = Vec::new();
    for entry in steps.iter().map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        let old: StepV3 = codec::decode(v.value())?;
        rewritten.push((k.value(), super::rows::encode(&crate::records::StepRecord::from(old))?));
    }
    for (k, bytes) in &rewritten {
        steps.insert(*k, bytes.as_slice()).map_err(err)?;
    }
    Ok(rewritten.len() as u64)
}

/// Builds the completion-time index of a store written before it existed (schema 1).
pub(super) fn index_completed(txn: &WriteTransaction) -> Result<u64> {
    let jobs = txn.open_table(JOBS_V4).map_err(err)?;
    let mut completed = txn.open_table(COMPLETED_V4).map_err(err)?;
    let mut n = 0;
    for entry in jobs.iter().map_err(err)? {
        let job: SystemJob = codec::decode(entry.map_err(err)?.1.value())?;
        if let Some(key) = super::jobs::completed_key(&job) {
            completed.insert(key, ()).map_err(err)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A job record of schemas 1 and 2: with its context, without `output` and the counters.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct JobV2 {
    id: Uuid,
    sequence: u64,
    name: String,
    operation_type: OperationType,
    status: JobStatus,
    created_on: i64,
    started_on: Option<i64>,
    completed_on: Option<i64>,
    postpone_until: Option<i64>,
    dependency_token: Option<String>,
    recurrence_pattern: Option<String>,
    recurrence_start: Option<i64>,
    correlation_id: Uuid,
    depth: u32,
    step_id: Option<Uuid>,
    assembly: Option<AssemblyHash>,
    regarding: Option<EntityReference>,
    context: ExecutionContext,
    host_id: Option<String>,
    lease_expiry: Option<i64>,
    fencing_token: u64,
    retry_count: u32,
    error_code: Option<String>,
    message: Option<String>,
    trace: String,
    fuel_used: u64,
    duration_us: u64,
}

/// A job record of schema 3: schema 2's and `output` (bincode lays a nested struct
/// out as its fields, in order).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct JobV3 {
    pub(super) v2: JobV2,
    pub(super) output: Parameters,
}

impl From<JobV3> for SystemJob {
    fn from(j: JobV3) -> SystemJob {
        SystemJob { output: j.output, ..SystemJob::from(j.v2) }
    }
}

/// A job in schema 2's layout, for the migration's tests.
#[cfg(test)]
impl From<&SystemJob> for JobV2 {
    fn from(j: &SystemJob) -> JobV2 {
        let j = j.clone();
        JobV2 {
            id: j.id,
            sequence: j.sequence,
            name: j.name,
            operation_type: j.operation_type,
            status: j.status,
            created_on: j.created_on,
            started_on: j.started_on,
            completed_on: j.completed_on,
            postpone_until: j.postpone_until,
            dependency_token: j.dependency_token,
            recurrence_pattern: j.recurrence_pattern,
            recurrence_start: j.recurrence_start,
            correlation_id: j.correlation_id,
            depth: j.depth,
            step_id: j.step_id,
            assembly: j.assembly,
            regarding: j.regarding,
            context: j.context,
            host_id: j.host_id,
            lease_expiry: j.lease_expiry,
            fencing_token: j.fencing_token,
            retry_count: j.retry_count,
            error_code: j.error_code,
            message: j.message,
            trace: j.trace,
            fuel_used: j.fuel_used,
            duration_us: j.duration_us,
        }
    }
}

impl From<JobV2> for SystemJob {
    fn from(j: JobV2) -> SystemJob {
        SystemJob {
            id: j.id,
            sequence: j.sequence,
            name: j.name,
            operation_type: j.operation_type,
            status: j.status,
            created_on: j.created_on,
            started_on: j.started_on,
            completed_on: j.completed_on,
            postpone_until: j.postpone_until,
            dependency_token: j.dependency_token,
            recurrence_pattern: j.recurrence_pattern,
            recurrence_start: j.recurrence_start,
            correlation_id: j.correlation_id,
            depth: j.depth,
            step_id: j.step_id,
            assembly: j.assembly,
            regarding: j.regarding,
            context: j.context,
            host_id: j.host_id,
            lease_expiry: j.lease_expiry,
            fencing_token: j.fencing_token,
            retry_count: j.retry_count,
            error_code: j.error_code,
            message: j.message,
            trace: j.trace,
            fuel_used: j.fuel_used,
            duration_us: j.duration_us,
            output: Parameters::new(),
            lease_expirations: 0,
            recurrence_runs: 0,
        }
    }
}

/// A step record of schemas 1 to 3: limits without `write_bytes`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct StepV3 {
    id: Uuid,
    name: String,
    plugin: String,
    message: String,
    entity: Option<String>,
    stage: u32,
    mode: u32,
    rank: i32,
    filtering_attributes: Vec<String>,
    configuration: Option<String>,
    images: Vec<super::rows::ImageRow>,
    limits: LimitsV3,
    enabled: bool,
    delete_job_on_success: bool,
    instance_reuse: u32,
    ordered_per_record: bool,
    created_at: i64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct LimitsV3 {
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    trace_bytes: Option<u64>,
    host_calls: Option<u64>,
    input_bytes: Option<u64>,
    output_bytes: Option<u64>,
}

impl From<StepV3> for crate::records::StepRecord {
    fn from(s: StepV3) -> Self {
        let l = s.limits;
        crate::records::StepRecord {
            id: s.id,
            name: s.name,
            plugin: s.plugin,
            message: s.message,
            entity: s.entity,
            stage: super::rows::stage_of(s.stage),
            mode: super::rows::mode_of(s.mode),
            rank: s.rank,
            filtering_attributes: s.filtering_attributes,
            configuration: s.configuration,
            images: s.images.into_iter().map(Into::into).collect(),
            limits: crate::runtime::LimitOverrides {
                fuel: l.fuel,
                memory_bytes: l.memory_bytes,
                timeout_ms: l.timeout_ms,
                trace_bytes: l.trace_bytes,
                host_calls: l.host_calls,
                input_bytes: l.input_bytes,
                output_bytes: l.output_bytes,
                write_bytes: None,
            },
            enabled: s.enabled,
            delete_job_on_success: s.delete_job_on_success,
            instance_reuse: s.instance_reuse,
            ordered_per_record: s.ordered_per_record,
            created_at: s.created_at,
            run_as: None,
        }
    }
}

/// A step as schema 3 stored it, for the migration's tests.
#[cfg(test)]
pub(super) fn step_v3(s: &crate::records::StepRecord) -> StepV3 {
    let l = &s.limits;
    StepV3 {
        id: s.id,
        name: s.name.clone(),
        plugin: s.plugin.clone(),
        message: s.message.clone(),
        entity: s.entity.clone(),
        stage: super::rows::stage_code(s.stage),
        mode: super::rows::mode_code(s.mode),
        rank: s.rank,
        filtering_attributes: s.filtering_attributes.clone(),
        configuration: s.configuration.clone(),
        images: s.images.iter().map(Into::into).collect(),
        limits: LimitsV3 {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout_ms: l.timeout_ms,
            trace_bytes: l.trace_bytes,
            host_calls: l.host_calls,
            input_bytes: l.input_bytes,
            output_bytes: l.output_bytes,
        },
        enabled: s.enabled,
        delete_job_on_success: s.delete_job_on_success,
        instance_reuse: s.instance_reuse,
        ordered_per_record: s.ordered_per_record,
        created_at: s.created_at,
    }
}
