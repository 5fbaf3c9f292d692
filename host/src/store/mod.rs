//! The durable store: one redb file under the data directory.
//!
//! **Invariant:** only this module touches redb tables. Values are encoded by
//! `codec` (format-version byte first); the schema version in `meta` is checked
//! at open, and a newer or unknown one is refused.

use std::path::{Path, PathBuf};

use redb::Database;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub(crate) mod baseline;
mod commit;
mod data;
mod identity;
mod jobs;
pub(crate) mod kv;
mod legacy;
mod pg;
mod queue;
mod rows;
mod runs;
mod workflows;

/// How a run ended (re-exported from `jobs`, where the job policy lives).
pub use crate::jobs::JobResult;
pub use commit::{ChangeSet, CommitError, CommitStats, Committer, LogRow, Receipt, RecordChange};
pub use data::{Snapshot, StoredRecord};
pub use identity::MAX_AUDIT_PAGE;
pub use jobs::{HOUSEKEEPER_TTL_MS, Housekeeper, Renewal};
pub use pg::{DEFAULT_CONNECTIONS, MIN_CONNECTIONS};
pub use queue::{
    CompletionOutcome, DEFAULT_MAX_LEASE_EXPIRATIONS, JobAction, JobCompletion, JobQueue, LeaseFilter, LeaseTicket,
    Outcomes, PURGE_BATCH, QueueCounts,
};
pub use runs::MAX_RUNS_PAGE;

use crate::codec::{self, CodecError};
use crate::model::AssemblyHash;
use crate::records::{AssemblyRecord, PluginRecord, Registration, StepRecord};
use crate::runtime::ArtifactIndex;
use kv::{ALL_TABLES, Read, Reads, Table, Write};

/// The layout of the tables below, the same on every engine. Bump it with a migration
/// when they change (`Store::check_schema`): 2 added `jobs_completed`, 3 the jobs'
/// `output` and `bulk_rows`, 4 job records without their context (it has its own
/// table) and with lease-expiration and recurrence-run counters, and the steps' write
/// limit; 5 ordered byte keys (`kv`), so that PostgreSQL holds the same tables; 6
/// users, keys, roles, the audit log, jobs by owner, and the steps' run-as user; 7
/// the workflow tables; 8 jobs by status and counts by type; 9 the mail entities and
/// the outbox; 10 lease entries that name a group of jobs (`jobs::LEASES`: an older
/// plughost would not recover those jobs, so it must refuse the store).
pub const SCHEMA_VERSION: u32 = 10;
/// redb's page cache: bounds the store's memory whatever the data size.
pub const CACHE_BYTES: usize = 128 << 20;
/// The store file's name inside the data directory.
pub const STORE_FILE: &str = "plughost.redb";

pub(super) const META: Table<String, Vec<u8>> = Table::new(ALL_TABLES[0]);
const ASSEMBLIES: Table<[u8; 32], Vec<u8>> = Table::new(ALL_TABLES[1]);
const ASSEMBLY_BYTES: Table<[u8; 32], Vec<u8>> = Table::new(ALL_TABLES[2]);
const PLUGINS: Table<String, Vec<u8>> = Table::new(ALL_TABLES[3]);
pub(super) const STEPS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[4]);
const ARTIFACTS: Table<String, [u8; 32]> = Table::new(ALL_TABLES[5]);
const ENTITY_DEFS: Table<String, Vec<u8>> = Table::new(ALL_TABLES[6]);
/// Records by (entity logical name, id).
pub(super) const RECORDS: Table<(String, u128), Vec<u8>> = Table::new(ALL_TABLES[7]);
const JOBS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[8]);
/// Each job's execution context, written once when the job is queued: the job
/// record itself is rewritten at every transition and stays small.
const JOB_CONTEXTS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[9]);
/// Meta key of the deletion service job's id.
const DELETION_SERVICE_JOB: &str = "deletion_service_job";
/// Meta key of the outgoing-mail job's id.
const OUTGOING_MAIL_JOB: &str = "outgoing_mail_job";
/// Meta key set when Pending Send emails were written while the outgoing-mail job
/// ran: its run may not have seen them, so it runs again at once.
const OUTGOING_MAIL_WOKEN: &str = "outgoing_mail_woken";
/// Meta key of whether the asynchronous service is paused.
const SERVICE_PAUSED: &str = "service_paused";
/// Meta key of the last job sequence number handed out.
const JOB_SEQUENCE: &str = "job_sequence";
/// Meta key of the process doing the queue's housekeeping ([`Housekeeper`]).
const HOUSEKEEPER: &str = "housekeeper";
/// Meta key of the layout version.
const SCHEMA_KEY: &str = "schema_version";
/// Meta key of the registry's generation: bumped by every registry change, so each
/// `plughost serve` on a shared store sees another's changes.
pub(super) const REGISTRY_GENERATION: &str = "registry_generation";

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
    /// The database server cannot be reached now (down, restarting, pool exhausted).
    #[error("{0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Db(String),
}

impl StoreError {
    /// The same error for another caller: its kind and message (a source error
    /// becomes its text).
    pub(crate) fn clone_for_reply(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
            StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            other => StoreError::Db(other.to_string()),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked(_) => "store_locked",
            StoreError::Corrupt { .. } | StoreError::Codec(_) => "store_corrupt",
            StoreError::SchemaTooNew { .. } => "store_too_new",
            StoreError::Io { .. } | StoreError::Db(_) => "store_error",
            StoreError::Unavailable(_) => "store_unavailable",
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

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded redb file in a data directory (the default).
    Dir(PathBuf),
    /// A PostgreSQL database (`postgres://user@host:port/db`), with the most
    /// connections to open.
    Postgres { url: String, connections: usize },
}

impl StoreLocation {
    /// Where it is, for people: the store file, or the address without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Dir(dir) => format!("{} (redb)", dir.join(STORE_FILE).display()),
            StoreLocation::Postgres { url, .. } => format!("{} (PostgreSQL)", pg::redact(url)),
        }
    }

    /// `postgres://` or `postgresql://` addresses are PostgreSQL; anything else is a
    /// data directory.
    pub fn parse(s: &str, connections: usize) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres { url: s.to_owned(), connections }
        } else {
            StoreLocation::Dir(PathBuf::from(s))
        }
    }
}

pub(crate) enum Engine {
    Redb(Database),
    Pg(pg::Pg),
}

pub struct Store {
    pub(crate) engine: Engine,
    /// The file, or the PostgreSQL address without its password: for messages.
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the embedded store in `data_dir`.
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
        Store::embedded(db, path)
    }

    /// A redb database made a store: its tables created or upgraded, its schema checked.
    fn embedded(db: Database, path: PathBuf) -> Result<Store> {
        legacy::prepare_redb(&db, &path)?;
        let store = Store { engine: Engine::Redb(db), path };
        store.check_schema()?;
        Ok(store)
    }

    /// A new embedded store held in memory (redb's in-memory backend): nothing touches
    /// the disk and everything is gone when it is dropped. For tests (the pipeline
    /// simulator); the same engine and code as the file store.
    pub fn in_memory() -> Result<Store> {
        let path = PathBuf::from("(in memory)");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Db(format!("cannot create an in-memory store: {e}")))?;
        Store::embedded(db, path)
    }

    /// Opens a PostgreSQL store, creating or upgrading its schema.
    pub fn open_postgres(url: &str, connections: usize) -> Result<Store> {
        let (pg, applied) = pg::Pg::open(url, connections)?;
        if applied > 0 {
            tracing::info!(applied, "PostgreSQL schema migrations applied");
        }
        let store = Store { path: PathBuf::from(pg.shown()), engine: Engine::Pg(pg) };
        store.check_schema()?;
        Ok(store)
    }

    /// Opens the store at `location`.
    pub fn open_at(location: &StoreLocation) -> Result<Store> {
        match location {
            StoreLocation::Dir(dir) => Store::open(dir),
            StoreLocation::Postgres { url, connections } => Store::open_postgres(url, *connections),
        }
    }

    /// The store file, or the PostgreSQL address (without password).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether several processes may open this store at once (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Pg(_))
    }

    /// Which engine holds the store: "redb" or "postgres".
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Redb(_) => "redb",
            Engine::Pg(_) => "postgres",
        }
    }

    /// A read transaction: one consistent snapshot.
    pub(crate) fn read(&self) -> Result<Read> {
        Ok(match &self.engine {
            Engine::Redb(db) => Read::Redb(redb::ReadableDatabase::begin_read(db)?),
            Engine::Pg(pg) => Read::Pg(Box::new(pg.begin_read()?)),
        })
    }

    /// Runs `f` in one write transaction and commits when it returns `Ok`.
    pub(crate) fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Write<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let (out, commit) = self.transact(|w| {
            let out = f(w);
            let ok = out.is_ok();
            (out, ok)
        })?;
        commit?;
        out
    }

    /// Runs `f` in one write transaction; commits if it says so. Returns what `f`
    /// returned and the commit's outcome (`Ok` when told not to commit).
    pub(crate) fn transact<T>(&self, f: impl FnOnce(&Write<'_>) -> (T, bool)) -> Result<(T, Result<()>)> {
        match &self.engine {
            Engine::Redb(db) => {
                let txn = db.begin_write()?;
                let (out, commit) = {
                    let w = Write::Redb(kv::RedbWrite::new(&txn));
                    f(&w)
                };
                if commit {
                    let done = txn.commit().map_err(StoreError::from);
                    Ok((out, done))
                } else {
                    drop(txn);
                    Ok((out, Ok(())))
                }
            }
            Engine::Pg(pg) => {
                let txn = pg.begin_write()?;
                let (out, commit) = f(&Write::Pg(&txn));
                if commit {
                    Ok((out, txn.commit()))
                } else {
                    txn.rollback();
                    Ok((out, Ok(())))
                }
            }
        }
    }

    fn check_schema(&self) -> Result<()> {
        let path = self.path.clone();
        self.write(|w| {
            let corrupt = |detail: String| StoreError::Corrupt { path: path.clone(), detail };
            let found = match w.get(&META, &SCHEMA_KEY.to_owned())? {
                Some(v) => Some(codec::decode::<u32>(&v).map_err(|e| corrupt(e.to_string()))?),
                None => None,
            };
            match found {
                Some(v) if v > SCHEMA_VERSION => Err(StoreError::SchemaTooNew { path: path.clone(), found: v }),
                Some(v) if v == SCHEMA_VERSION => Ok(()),
                Some(v @ 5..=9) => {
                    let steps = if v == 5 { upgrade_steps_to_6(w)? } else { 0 };
                    // Schema 7 added the workflow tables, empty: nothing to rewrite.
                    // Schema 8 indexes jobs by status and counts them by type.
                    let jobs = if v < 8 { jobs::upgrade_to_8(w)? } else { 0 };
                    // Schema 9 defines the mail entities and fills the outbox.
                    if v < 9 {
                        define_builtin_entities(w)?;
                        commit::rebuild_outbox(w)?;
                    }
                    // Schema 10 reads the one-job lease entries before it as they are.
                    tracing::info!(steps, jobs, "store migrated from schema {v} to {SCHEMA_VERSION}");
                    w.insert(&META, &SCHEMA_KEY.to_owned(), &codec::encode(&SCHEMA_VERSION)?)
                }
                Some(v) => Err(corrupt(format!("unknown schema version {v}"))),
                None => {
                    define_builtin_entities(w)?;
                    w.insert(&META, &SCHEMA_KEY.to_owned(), &codec::encode(&SCHEMA_VERSION)?)
                }
            }
        })
    }

    /// The process doing the queue's housekeeping now, if any process leased lately.
    pub fn housekeeper(&self) -> Result<Option<Housekeeper>> {
        let h: Option<Housekeeper> = get(&self.read()?, &META, &HOUSEKEEPER.to_owned())?;
        Ok(h.filter(|h| h.until > crate::clock::now_ms()))
    }

    /// The registry's generation: it changes with every registration change, on any
    /// process sharing the store.
    pub fn registry_generation(&self) -> Result<u64> {
        Ok(get::<_, u64>(&self.read()?, &META, &REGISTRY_GENERATION.to_owned())?.unwrap_or(0))
    }

    // ---- registry ----

    pub fn assembly(&self, hash: &AssemblyHash) -> Result<Option<AssemblyRecord>> {
        get_row(&self.read()?, &ASSEMBLIES, &hash.0)
    }

    pub fn assembly_bytes(&self, hash: &AssemblyHash) -> Result<Option<Vec<u8>>> {
        self.read()?.get(&ASSEMBLY_BYTES, &hash.0)
    }

    pub fn assemblies(&self) -> Result<Vec<AssemblyRecord>> {
        all_rows(&self.read()?, &ASSEMBLIES)
    }

    pub fn plugin(&self, name: &str) -> Result<Option<PluginRecord>> {
        get_row(&self.read()?, &PLUGINS, &name.to_owned())
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        all_rows(&self.read()?, &PLUGINS)
    }

    pub fn step(&self, id: Uuid) -> Result<Option<StepRecord>> {
        get_row(&self.read()?, &STEPS, &id.as_u128())
    }

    /// Every step, in rank order within (message, entity, stage).
    pub fn steps(&self) -> Result<Vec<StepRecord>> {
        let mut steps: Vec<StepRecord> = all_rows(&self.read()?, &STEPS)?;
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

    /// Runs a registry change in one transaction and bumps the registry generation
    /// with it.
    pub(super) fn change_registry<T>(&self, f: impl FnOnce(&Write<'_>) -> Result<T>) -> Result<T> {
        self.write(|w| {
            let out = f(w)?;
            runs::bump_registry_generation(w)?;
            Ok(out)
        })
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
        let (assembly_is_new, previous_assembly) = self.change_registry(|w| {
            let assembly_is_new = w.get(&ASSEMBLIES, &assembly.hash.0)?.is_none();
            if assembly_is_new {
                w.insert(&ASSEMBLIES, &assembly.hash.0, &rows::encode(&assembly)?)?;
                w.insert(&ASSEMBLY_BYTES, &assembly.hash.0, &bytes.to_vec())?;
            }
            let previous: Option<PluginRecord> = get_row(w, &PLUGINS, &plugin.name)?;
            if let Some(prev) = &previous {
                plugin.created_at = prev.created_at;
                if plugin.description.is_none() {
                    plugin.description = prev.description.clone();
                }
            }
            w.insert(&PLUGINS, &plugin.name, &rows::encode(&plugin)?)?;
            for step in &steps {
                w.insert(&STEPS, &step.id.as_u128(), &rows::encode(step)?)?;
            }
            Ok((assembly_is_new, previous.map(|p| p.assembly).filter(|h| *h != assembly.hash)))
        })?;
        Ok(Registration { assembly, assembly_is_new, plugin, previous_assembly, steps })
    }

    /// Adds a step; with `record_runs` > 0, set to record that many runs (in the
    /// same transaction).
    pub fn add_step(&self, step: &StepRecord, record_runs: u32) -> Result<()> {
        self.change_registry(|w| {
            if w.get(&PLUGINS, &step.plugin)?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "no plug-in named '{}': register it first with `plughost register`",
                    step.plugin
                )));
            }
            w.insert(&STEPS, &step.id.as_u128(), &rows::encode(step)?)?;
            if record_runs > 0 {
                w.insert(&runs::PROFILES, &step.id.as_u128(), &u64::from(record_runs))?;
            }
            Ok(())
        })
    }

    pub fn set_step_enabled(&self, id: Uuid, enabled: bool) -> Result<StepRecord> {
        self.update_step(id, |s| s.enabled = enabled)
    }

    fn update_step(&self, id: Uuid, change: impl FnOnce(&mut StepRecord)) -> Result<StepRecord> {
        self.change_registry(|w| {
            let mut step: StepRecord = get_row(w, &STEPS, &id.as_u128())?
                .ok_or_else(|| StoreError::NotFound(format!("no step with id {id}")))?;
            change(&mut step);
            w.insert(&STEPS, &id.as_u128(), &rows::encode(&step)?)?;
            Ok(step)
        })
    }

    /// Removes a step and, in the same transaction, fails its queued jobs
    /// (`plugin_not_registered`); running ones fail when their worker completes them.
    pub fn remove_step(&self, id: Uuid) -> Result<StepRecord> {
        self.change_registry(|w| {
            let step: StepRecord = get_row(w, &STEPS, &id.as_u128())?
                .ok_or_else(|| StoreError::NotFound(format!("no step with id {id}")))?;
            w.remove(&STEPS, &id.as_u128())?;
            w.remove(&runs::PROFILES, &id.as_u128())?;
            let what = format!("step '{}' ({})", step.name, step.id);
            jobs::orphan_step_jobs(w, step.id, &what, crate::clock::now_ms())?;
            Ok(step)
        })
    }

    /// Whether the asynchronous service was paused (`service pause`); it stays paused
    /// across restarts until resumed, as Dataverse's stays stopped until started.
    pub fn service_paused(&self) -> Result<bool> {
        Ok(get::<_, bool>(&self.read()?, &META, &SERVICE_PAUSED.to_owned())?.unwrap_or(false))
    }

    pub fn set_service_paused(&self, paused: bool) -> Result<()> {
        self.write(|w| w.insert(&META, &SERVICE_PAUSED.to_owned(), &codec::encode(&paused)?))
    }

    /// Removes a plug-in. With steps registered it refuses, unless `with_steps`,
    /// which removes them too. Returns the removed steps.
    pub fn unregister_plugin(&self, name: &str, with_steps: bool) -> Result<(PluginRecord, Vec<StepRecord>)> {
        self.change_registry(|w| {
            let plugin: PluginRecord = get_row(w, &PLUGINS, &name.to_owned())?
                .ok_or_else(|| StoreError::NotFound(format!("no plug-in named '{name}'")))?;
            let steps: Vec<StepRecord> =
                all_rows::<u128, StepRecord>(w, &STEPS)?.into_iter().filter(|s| s.plugin == name).collect();
            if !steps.is_empty() && !with_steps {
                return Err(StoreError::Conflict(format!(
                    "plug-in '{name}' has {} step(s): remove them first or pass --with-steps",
                    steps.len()
                )));
            }
            for s in &steps {
                w.remove(&STEPS, &s.id.as_u128())?;
                w.remove(&runs::PROFILES, &s.id.as_u128())?;
            }
            w.remove(&PLUGINS, &name.to_owned())?;
            for s in &steps {
                let what =
                    format!("plug-in '{name}' (assembly {}) with its step '{}'", plugin.assembly.short(), s.name);
                jobs::orphan_step_jobs(w, s.id, &what, crate::clock::now_ms())?;
            }
            Ok((plugin, steps))
        })
    }

    /// Removes an assembly no plug-in points at.
    pub fn unregister_assembly(&self, hash: &AssemblyHash) -> Result<AssemblyRecord> {
        self.change_registry(|w| {
            let users: Vec<String> = all_rows::<String, PluginRecord>(w, &PLUGINS)?
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
            let record: AssemblyRecord =
                get_row(w, &ASSEMBLIES, &hash.0)?.ok_or_else(|| StoreError::NotFound(format!("no assembly {hash}")))?;
            w.remove(&ASSEMBLIES, &hash.0)?;
            w.remove(&ASSEMBLY_BYTES, &hash.0)?;
            Ok(record)
        })
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

    /// Copies every table of `self` into `to`, which must be empty; returns the entries
    /// copied per table. Reads one snapshot; writes in chunks (so `to` should not be in
    /// use until it returns).
    pub fn copy_to(&self, to: &Store) -> Result<Vec<(&'static str, u64)>> {
        let from = self.read()?;
        let target = to.read()?;
        // A new store holds the meta row and the built-in entities: those are overwritten.
        let builtin: Vec<String> = crate::mail::builtin_entities().into_iter().map(|d| d.name).collect();
        let only_builtin = target.first(&ENTITY_DEFS, .., usize::MAX)?.iter().all(|(name, _)| builtin.contains(name));
        for t in ALL_TABLES {
            let fresh = t == ALL_TABLES[0] || (t == ALL_TABLES[6] && only_builtin);
            if !fresh && !target.first(&Table::<Vec<u8>, Vec<u8>>::new(t), .., 1)?.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "the target store {} already holds {}: copy into an empty store",
                    to.path.display(),
                    t.1
                )));
            }
        }
        drop(target);
        let mut counts = Vec::new();
        for t in ALL_TABLES {
            let mut n = 0u64;
            let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let flush = |chunk: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
                to.write(|w| chunk.iter().try_for_each(|(k, v)| w.put_raw(t, k, v)))?;
                chunk.clear();
                Ok(())
            };
            from.raw_scan(t, &kv::RawRange { lo: Vec::new(), hi: None }, false, &mut |k, v| {
                chunk.push((k.to_vec(), v.to_vec()));
                n += 1;
                if chunk.len() >= 2000 {
                    flush(&mut chunk)?;
                }
                Ok(std::ops::ControlFlow::Continue(()))
            })?;
            flush(&mut chunk)?;
            counts.push((t.1, n));
        }
        Ok(counts)
    }

    /// Up to `max` Pending Send emails after `after`, in id order (the outbox).
    pub fn outbox(&self, after: Option<Uuid>, max: usize) -> Result<Vec<Uuid>> {
        let from = after.map_or(0, |id| id.as_u128().saturating_add(1));
        Ok(self.read()?.first(&commit::OUTBOX, from.., max)?.into_iter().map(|(id, ())| Uuid::from_u128(id)).collect())
    }

    /// Entries per table (what `store copy` verifies).
    pub fn table_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let r = self.read()?;
        ALL_TABLES.iter().map(|t| Ok((t.1, r.len(&Table::<Vec<u8>, Vec<u8>>::new(*t))?))).collect()
    }
}

impl ArtifactIndex for Store {
    fn artifact_digest(&self, key: &str) -> anyhow::Result<Option<[u8; 32]>> {
        Ok(self.read()?.get(&ARTIFACTS, &key.to_owned())?)
    }

    fn record_artifact(&self, key: &str, digest: [u8; 32]) -> anyhow::Result<()> {
        Ok(self.write(|w| w.insert(&ARTIFACTS, &key.to_owned(), &digest))?)
    }
}

/// Schema 6 appended the steps' `run_as` (`None`: one zero byte) to their rows; a
/// row that already has it (re-encoded by an older migration) stays.
fn upgrade_steps_to_6(w: &Write<'_>) -> Result<usize> {
    let mut n = 0;
    for (id, v) in w.all(&STEPS)? {
        if rows::decode::<StepRecord>(&v).is_ok() {
            continue;
        }
        let mut upgraded = v;
        upgraded.push(0);
        rows::decode::<StepRecord>(&upgraded)?;
        w.insert(&STEPS, &id, &upgraded)?;
        n += 1;
    }
    Ok(n)
}

/// A value by key, decoded by `codec`.
pub(crate) fn get<K: kv::Key, T: DeserializeOwned>(
    r: &impl Reads,
    table: &Table<K, Vec<u8>>,
    key: &K,
) -> Result<Option<T>> {
    match r.get(table, key)? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

/// A registry record by key, decoded from its row (`rows`).
fn get_row<K: kv::Key, T: rows::Stored>(r: &impl Reads, table: &Table<K, Vec<u8>>, key: &K) -> Result<Option<T>> {
    match r.get(table, key)? {
        Some(v) => Ok(Some(rows::decode(&v)?)),
        None => Ok(None),
    }
}

/// Every registry record of a table, decoded from its rows.
fn all_rows<K: kv::Key, T: rows::Stored>(r: &impl Reads, table: &Table<K, Vec<u8>>) -> Result<Vec<T>> {
    r.all(table)?.into_iter().map(|(_, v)| Ok(rows::decode(&v)?)).collect()
}

/// Stores for the store's own tests: the conformance of both engines.
#[cfg(test)]
pub(crate) mod testing {
    use super::Store;

    /// A fresh store on each engine: redb in a temporary directory, and PostgreSQL (a
    /// new database on the tests' server) when it is installed; under `CI=true` a
    /// missing PostgreSQL fails the test.
    pub(crate) fn stores() -> Vec<(tempfile::TempDir, Store)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut out = vec![(tempfile::tempdir().expect("temp dir"), Store::open(dir.path()).expect("open redb"))];
        out[0].0 = dir;
        if let Some(pg) = plughost_test_support::postgres::server() {
            let url = pg.database();
            out.push((tempfile::tempdir().expect("temp dir"), Store::open_postgres(&url, 4).expect("open postgres")));
        }
        out
    }
}

/// Merges the built-in entities ([`crate::mail::builtin_entities`]) into the
/// definitions: a user's entity of the same name keeps its own attributes, and one
/// whose attribute has another type refuses the migration, naming it.
fn define_builtin_entities(w: &Write<'_>) -> Result<()> {
    for def in crate::mail::builtin_entities() {
        data::merge_definition(w, &def).map_err(|e| match e {
            StoreError::Conflict(m) => StoreError::Invalid(format!(
                "the built-in entity {} cannot be defined: {m}; rename the attribute with an older plughost first",
                def.name
            )),
            other => other,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod schema_9_tests {
    use super::*;
    use crate::metadata::{AttributeType, EntityDefinition};

    #[test]
    fn a_schema_8_store_gains_the_mail_entities_beside_its_own_and_a_conflict_is_named() {
        for (_dir, store) in testing::stores() {
            let builtin = crate::mail::builtin_entities();
            assert!(
                builtin.iter().all(|b| store.definitions().unwrap().iter().any(|d| d == b)),
                "a new store has them"
            );
            // A schema-8 store with its own `email` (one more attribute) and a `list` whose
            // `name` is a number.
            store
                .write(|w| {
                    w.remove_range(&ENTITY_DEFS, ..)?;
                    let email = EntityDefinition {
                        name: "email".into(),
                        attributes: [
                            ("subject".to_owned(), AttributeType::Text),
                            ("priority".to_owned(), AttributeType::Integer),
                        ]
                        .into(),
                    };
                    let list = EntityDefinition {
                        name: "list".into(),
                        attributes: [("name".to_owned(), AttributeType::Integer)].into(),
                    };
                    data::merge_definition(w, &email)?;
                    data::merge_definition(w, &list)?;
                    // Two emails of the user's entity, one of them Pending Send already.
                    for (id, status) in [(1u128, 6), (2, 3)] {
                        let record = StoredRecord {
                            version: 1,
                            created_on: 0,
                            modified_on: 0,
                            attributes: [("statuscode".to_owned(), crate::model::Value::OptionSet(status))].into(),
                        };
                        w.insert(&RECORDS, &("email".to_owned(), id), &codec::encode(&record)?)?;
                    }
                    w.insert(&META, &SCHEMA_KEY.to_owned(), &codec::encode(&8u32)?)
                })
                .unwrap();
            let e = store.check_schema().unwrap_err().to_string();
            assert!(e.contains("built-in entity list") && e.contains("'name'"), "{e}");
            let version: u32 = get(&store.read().unwrap(), &META, &SCHEMA_KEY.to_owned()).unwrap().unwrap();
            assert_eq!(version, 8, "nothing of the migration stays");
            store.write(|w| w.remove(&ENTITY_DEFS, &"list".to_owned())).unwrap();
            store.check_schema().unwrap();
            let defs = store.definitions().unwrap();
            let email = defs.iter().find(|d| d.name == "email").unwrap();
            assert_eq!(email.attributes.get("priority"), Some(&AttributeType::Integer), "the user's attribute stays");
            assert_eq!(email.attributes.get("statuscode"), Some(&AttributeType::Option));
            assert!(builtin.iter().all(|b| defs.iter().any(|d| d.name == b.name)));
            assert_eq!(store.outbox(None, 10).unwrap(), vec![Uuid::from_u128(1)], "the outbox holds the pending one");
            assert!(store.outbox(Some(Uuid::from_u128(1)), 10).unwrap().is_empty());
        }
    }
}
