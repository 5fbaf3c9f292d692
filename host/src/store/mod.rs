//! The durable store: one redb file under the data directory.
//!
//! **Invariant:** only this module touches redb tables. Values are encoded by
//! `codec` (format-version byte first); the schema version in `meta` is checked
//! at open, and a newer or unknown one is refused.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub(crate) mod baseline;
mod commit;
mod data;
mod jobs;
mod legacy;
mod queue;
mod rows;

/// How a run ended (re-exported from `jobs`, where the job policy lives).
pub use crate::jobs::JobResult;
pub use commit::{ChangeSet, CommitError, CommitStats, Committer, Receipt, RecordChange};
pub use data::{Snapshot, StoredRecord};
pub use jobs::Renewal;
pub use queue::{
    CompletionOutcome, DEFAULT_MAX_LEASE_EXPIRATIONS, JobAction, JobCompletion, JobQueue, Outcomes, PURGE_BATCH,
    QueueCounts,
};

use crate::codec::{self, CodecError};
use crate::model::AssemblyHash;
use crate::records::{AssemblyRecord, PluginRecord, Registration, StepRecord};
use crate::runtime::ArtifactIndex;

/// The layout of the tables below. Bump it with a migration when they change
/// (`Store::check_schema`): 2 added `jobs_completed`, 3 the jobs' `output` and `bulk_rows`,
/// 4 job records without their context (it has its own table) and with lease-expiration and
/// recurrence-run counters, and the steps' write limit.
pub const SCHEMA_VERSION: u32 = 4;
/// redb's page cache: bounds the store's memory whatever the data size.
pub const CACHE_BYTES: usize = 128 << 20;
/// The store file's name inside the data directory.
pub const STORE_FILE: &str = "plughost.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ASSEMBLIES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assemblies");
const ASSEMBLY_BYTES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("assembly_bytes");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
pub(super) const STEPS: TableDefinition<u128, &[u8]> = TableDefinition::new("steps");
const ARTIFACTS: TableDefinition<&str, [u8; 32]> = TableDefinition::new("artifacts");
const ENTITY_DEFS: TableDefinition<&str, &[u8]> = TableDefinition::new("entity_definitions");
/// Records by (entity logical name, id).
const RECORDS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("records");
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
/// Each job's execution context, written once when the job is queued: the job
/// record itself is rewritten at every transition and stays small.
const JOB_CONTEXTS: TableDefinition<u128, &[u8]> = TableDefinition::new("job_contexts");
/// Meta key of the deletion service job's id.
const DELETION_SERVICE_JOB: &str = "deletion_service_job";
/// Meta key of whether the asynchronous service is paused.
const SERVICE_PAUSED: &str = "service_paused";
/// Meta key of the last job sequence number handed out.
const JOB_SEQUENCE: &str = "job_sequence";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "the store {0} is in use by another plughost process (a running `plughost serve`?): stop it, or use another --data-dir"
    )]
    Locked(PathBuf),
    #[error(
        "the store {path} is damaged or not a plughost store ({detail}): restore it from a backup or use another --data-dir"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the store {path} has schema version {found}, newer than this plughost supports ({SCHEMA_VERSION}): upgrade plughost"
    )]
    SchemaTooNew { path: PathBuf, found: u32 },
    #[error("cannot open the store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data could not be read: {0}")]
    Codec(#[from] CodecError),
    #[error("store error: {0}")]
    Db(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked(_) => "store_locked",
            StoreError::Corrupt { .. } | StoreError::Codec(_) => "store_corrupt",
            StoreError::SchemaTooNew { .. } => "store_too_new",
            StoreError::Io { .. } | StoreError::Db(_) => "store_error",
            StoreError::NotFound(_) => "not_found",
            StoreError::Invalid(_) => "invalid",
            StoreError::Conflict(_) => "conflict",
        }
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_error!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct Store {
    pub(crate) db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(STORE_FILE);
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() != std::io::ErrorKind::InvalidData =>
            {
                StoreError::Io { path: path.clone(), source }
            }
            other => StoreError::Corrupt { path: path.clone(), detail: other.to_string() },
        })?;
        let store = Store { db, path };
        store.check_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(&self) -> Result<()> {
        let corrupt = |detail: String| StoreError::Corrupt { path: self.path.clone(), detail };
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
            let found = match meta.get("schema_version")? {
                Some(v) => Some(codec::decode::<u32>(v.value()).map_err(|e| corrupt(e.to_string()))?),
                None => None,
            };
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew { path: self.path.clone(), found: v });
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v @ 1..=3) => {
                    let upgraded = jobs::upgrade_job_records(&txn, v)?;
                    let steps = jobs::upgrade_step_records(&txn)?;
                    let indexed = if v == 1 { jobs::index_completed(&txn)? } else { 0 };
                    tracing::info!(upgraded, steps, indexed, "store migrated from schema {v} to {SCHEMA_VERSION}");
                    meta.insert("schema_version", codec::encode(&SCHEMA_VERSION)?.as_slice())?;
                }
                Some(v) => return Err(corrupt(format!("unknown schema version {v}"))),
                None => {
                    meta.insert("schema_version", codec::encode(&SCHEMA_VERSION)?.as_slice())?;
                }
            }
            // Create every table, so readers never meet a missing one.
            txn.open_table(ASSEMBLIES)?;
            txn.open_table(ASSEMBLY_BYTES)?;
            txn.open_table(PLUGINS)?;
            txn.open_table(STEPS)?;
            txn.open_table(ARTIFACTS)?;
            txn.open_table(ENTITY_DEFS)?;
            txn.open_table(RECORDS)?;
            txn.open_table(JOBS)?;
            txn.open_table(JOB_CONTEXTS)?;
            txn.open_table(jobs::READY)?;
            txn.open_table(jobs::POSTPONED)?;
            txn.open_table(jobs::TOKENS)?;
            txn.open_table(jobs::LEASES)?;
            txn.open_table(jobs::STEP_JOBS)?;
            txn.open_table(jobs::STATUS_COUNTS)?;
            txn.open_table(jobs::COMPLETED)?;
            txn.open_table(jobs::BULK_ROWS)?;
        }
        txn.commit()?;
        Ok(())
    }

    // ---- registry ----

    pub fn assembly(&self, hash: &AssemblyHash) -> Result<Option<AssemblyRecord>> {
        let txn = self.db.begin_read()?;
        get_row(&txn.open_table(ASSEMBLIES)?, hash.0)
    }

    pub fn assembly_bytes(&self, hash: &AssemblyHash) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ASSEMBLY_BYTES)?;
        Ok(table.get(hash.0)?.map(|v| v.value().to_vec()))
    }

    pub fn assemblies(&self) -> Result<Vec<AssemblyRecord>> {
        let txn = self.db.begin_read()?;
        all_rows(&txn.open_table(ASSEMBLIES)?)
    }

    pub fn plugin(&self, name: &str) -> Result<Option<PluginRecord>> {
        let txn = self.db.begin_read()?;
        get_row(&txn.open_table(PLUGINS)?, name)
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        let txn = self.db.begin_read()?;
        all_rows(&txn.open_table(PLUGINS)?)
    }

    pub fn step(&self, id: Uuid) -> Result<Option<StepRecord>> {
        let txn = self.db.begin_read()?;
        get_row(&txn.open_table(STEPS)?, id.as_u128())
    }

    /// Every step, in rank order within (message, entity, stage).
    pub fn steps(&self) -> Result<Vec<StepRecord>> {
        let txn = self.db.begin_read()?;
        let mut steps: Vec<StepRecord> = all_rows(&txn.open_table(STEPS)?)?;
        steps.sort_by(|a, b| {
            (&a.message, &a.entity, a.stage, a.rank, a.created_at).cmp(&(
                &b.message,
                &b.entity,
                b.stage,
                b.rank,
                b.created_at,
            ))
        });
        Ok(steps)
    }

    /// Finds a step by full id, unique id prefix (at least 4 characters) or exact name.
    pub fn resolve_step(&self, key: &str) -> Result<StepRecord> {
        if let Ok(id) = Uuid::parse_str(key) {
            return self.step(id)?.ok_or_else(|| StoreError::NotFound(format!("no step with id {id}")));
        }
        let steps = self.steps()?;
        let by_prefix = key.len() >= 4;
        let matches: Vec<_> =
            steps.into_iter().filter(|s| s.name == key || (by_prefix && s.id.to_string().starts_with(key))).collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(StoreError::NotFound(format!("no step has the id or name '{key}': see `plughost steps list`"))),
            n => Err(StoreError::Conflict(format!("'{key}' matches {n} steps: give more of the id"))),
        }
    }

    /// Stores an assembly (if new) with its bytes, points the plug-in at it and
    /// adds steps, in one transaction.
    pub(crate) fn register(
        &self,
        assembly: AssemblyRecord,
        bytes: &[u8],
        mut plugin: PluginRecord,
        steps: Vec<StepRecord>,
    ) -> Result<Registration> {
        let txn = self.db.begin_write()?;
        let (assembly_is_new, previous_assembly) = {
            let mut assemblies = txn.open_table(ASSEMBLIES)?;
            let assembly_is_new = assemblies.get(assembly.hash.0)?.is_none();
            if assembly_is_new {
                assemblies.insert(assembly.hash.0, rows::encode(&assembly)?.as_slice())?;
                txn.open_table(ASSEMBLY_BYTES)?.insert(assembly.hash.0, bytes)?;
            }
            let mut plugins = txn.open_table(PLUGINS)?;
            let previous: Option<PluginRecord> = get_row(&plugins, plugin.name.as_str())?;
            if let Some(prev) = &previous {
                plugin.created_at = prev.created_at;
                if plugin.description.is_none() {
                    plugin.description = prev.description.clone();
                }
            }
            plugins.insert(plugin.name.as_str(), rows::encode(&plugin)?.as_slice())?;
            let mut table = txn.open_table(STEPS)?;
            for step in &steps {
                table.insert(step.id.as_u128(), rows::encode(step)?.as_slice())?;
            }
            (assembly_is_new, previous.map(|p| p.assembly).filter(|h| *h != assembly.hash))
        };
        txn.commit()?;
        Ok(Registration { assembly, assembly_is_new, plugin, previous_assembly, steps })
    }

    pub fn add_step(&self, step: &StepRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            if txn.open_table(PLUGINS)?.get(step.plugin.as_str())?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "no plug-in named '{}': register it first with `plughost register`",
                    step.plugin
                )));
            }
            txn.open_table(STEPS)?.insert(step.id.as_u128(), rows::encode(step)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn set_step_enabled(&self, id: Uuid, enabled: bool) -> Result<StepRecord> {
        self.update_step(id, |s| s.enabled = enabled)
    }

    fn update_step(&self, id: Uuid, change: impl FnOnce(&mut StepRecord)) -> Result<StepRecord> {
        let txn = self.db.begin_write()?;
        let step = {
            let mut table = txn.open_table(STEPS)?;
            let mut step: StepRecord =
                get_row(&table, id.as_u128())?.ok_or_else(|| StoreError::NotFound(format!("no step with id {id}")))?;
            change(&mut step);
            table.insert(id.as_u128(), rows::encode(&step)?.as_slice())?;
            step
        };
        txn.commit()?;
        Ok(step)
    }

    /// Removes a step and, in the same transaction, fails its queued jobs
    /// (`plugin_not_registered`); running ones fail when their worker completes them.
    pub fn remove_step(&self, id: Uuid) -> Result<StepRecord> {
        let txn = self.db.begin_write()?;
        let step = {
            let mut table = txn.open_table(STEPS)?;
            let removed =
                table.remove(id.as_u128())?.ok_or_else(|| StoreError::NotFound(format!("no step with id {id}")))?;
            rows::decode::<StepRecord>(removed.value())?
        };
        let what = format!("step '{}' ({})", step.name, step.id);
        jobs::orphan_step_jobs(&txn, step.id, &what, crate::clock::now_ms())?;
        txn.commit()?;
        Ok(step)
    }

    /// Whether the asynchronous service was paused (`service pause`); it stays paused
    /// across restarts until resumed, as Dataverse's stays stopped until started.
    pub fn service_paused(&self) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(get::<_, bool, _>(&txn.open_table(META)?, SERVICE_PAUSED)?.unwrap_or(false))
    }

    pub fn set_service_paused(&self, paused: bool) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(SERVICE_PAUSED, codec::encode(&paused)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Removes a plug-in. With steps registered it refuses, unless `with_steps`,
    /// which removes them too. Returns the removed steps.
    pub fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<(PluginRecord, Vec<StepRecord>)> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut plugins = txn.open_table(PLUGINS)?;
            let plugin: PluginRecord =
                get_row(&plugins, name)?.ok_or_else(|| StoreError::NotFound(format!("no plug-in named '{name}'")))?;
            let mut steps_table = txn.open_table(STEPS)?;
            let steps: Vec<StepRecord> =
                all_rows::<u128, StepRecord>(&steps_table)?.into_iter().filter(|s| s.plugin == name).collect();
            if !steps.is_empty() && !with_steps {
                return Err(StoreError::Conflict(format!(
                    "plug-in '{name}' has {} step(s): remove them first or pass --with-steps",
                    steps.len()
                )));
            }
            for s in &steps {
                steps_table.remove(s.id.as_u128())?;
            }
            plugins.remove(name)?;
            drop((plugins, steps_table));
            for s in &steps {
                let what =
                    format!("plug-in '{name}' (assembly {}) with its step '{}'", plugin.assembly.short(), s.name);
                jobs::orphan_step_jobs(&txn, s.id, &what, crate::clock::now_ms())?;
            }
            (plugin, steps)
        };
        txn.commit()?;
        Ok(result)
    }

    /// Removes an assembly no plug-in points at.
    pub fn unregister_assembly(&self, hash: &AssemblyHash) -> Result<AssemblyRecord> {
        let txn = self.db.begin_write()?;
        let record = {
            let users: Vec<String> = all_rows::<&str, PluginRecord>(&txn.open_table(PLUGINS)?)?
                .into_iter()
                .filter(|p| p.assembly == *hash)
                .map(|p| p.name)
                .collect();
            if !users.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "assembly {} is used by plug-in(s) {}: unregister them first",
                    hash.short(),
                    users.join(", ")
                )));
            }
            let mut assemblies = txn.open_table(ASSEMBLIES)?;
            let removed =
                assemblies.remove(hash.0)?.ok_or_else(|| StoreError::NotFound(format!("no assembly {hash}")))?;
            let record = rows::decode::<AssemblyRecord>(removed.value())?;
            txn.open_table(ASSEMBLY_BYTES)?.remove(hash.0)?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Finds an assembly by full hash or a unique prefix of at least 8 hex digits.
    pub fn resolve_assembly(&self, key: &str) -> Result<AssemblyRecord> {
        if let Ok(hash) = key.parse::<AssemblyHash>() {
            return self.assembly(&hash)?.ok_or_else(|| StoreError::NotFound(format!("no assembly {hash}")));
        }
        let matches: Vec<_> = if key.len() >= 8 {
            self.assemblies()?.into_iter().filter(|a| a.hash.to_string().starts_with(key)).collect()
        } else {
            Vec::new()
        };
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(StoreError::NotFound(format!("no assembly matches '{key}' (give at least 8 hex digits)"))),
            n => Err(StoreError::Conflict(format!("'{key}' matches {n} assemblies: give more digits"))),
        }
    }
}

impl ArtifactIndex for Store {
    fn artifact_digest(&self, key: &str) -> anyhow::Result<Option<[u8; 32]>> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ARTIFACTS)?.get(key)?.map(|v| v.value()))
    }

    fn record_artifact(&self, key: &str, digest: [u8; 32]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(ARTIFACTS)?.insert(key, digest)?;
        txn.commit()?;
        Ok(())
    }
}

pub(crate) fn get<'k, K, T, Tbl>(table: &Tbl, key: impl std::borrow::Borrow<K::SelfType<'k>>) -> Result<Option<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
    Tbl: ReadableTable<K, &'static [u8]>,
{
    match table.get(key)? {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

/// A registry record by key, decoded from its row (`rows`).
fn get_row<'k, K, T, Tbl>(table: &Tbl, key: impl std::borrow::Borrow<K::SelfType<'k>>) -> Result<Option<T>>
where
    K: redb::Key + 'static,
    T: rows::Stored,
    Tbl: ReadableTable<K, &'static [u8]>,
{
    match table.get(key)? {
        Some(v) => Ok(Some(rows::decode(v.value())?)),
        None => Ok(None),
    }
}

/// Every registry record of a table, decoded from its rows.
fn all_rows<K, T>(table: &impl ReadableTable<K, &'static [u8]>) -> Result<Vec<T>>
where
    K: redb::Key + 'static,
    T: rows::Stored,
{
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (_, v) = entry?;
        out.push(rows::decode(v.value())?);
    }
    Ok(out)
}
