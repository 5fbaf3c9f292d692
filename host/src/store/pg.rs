//! The PostgreSQL engine under `kv`: ordered tables in one `plughost_kv` table, a
//! bounded connection pool, and the writer lock that makes write transactions serial
//! across every `plughost serve` on the database.
//!
//! - A read transaction is `REPEATABLE READ READ ONLY`: one snapshot, as redb's.
//! - A write transaction first locks the one row of `plughost_writer`; in READ
//!   COMMITTED each later statement then sees everything committed before it got the
//!   lock, so the store code runs exactly as on redb's single writer. Its writes wait
//!   in memory (reads see them) and go to the database in two statements at commit.
//! - Nothing here depends on advisory locks or LISTEN/NOTIFY (see
//!   `notes/scale-out.md`: engines that speak PostgreSQL's protocol may lack them).
//!
//! **Invariant:** a connection that failed is never reused; the pool opens a new one,
//! so the store carries on by itself once the database is back.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use super::StoreError;
use super::kv::{Entry, OwnWrite, RawRange, TableId, Visit};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Connections the pool opens at most, unless configured (`store_connections`).
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Fewest connections a pool may have: a write transaction and a read at once.
pub const MIN_CONNECTIONS: usize = 2;
/// How long a caller waits for a free connection before `store_unavailable`.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows a scan fetches per round trip at first; doubled up to `MAX_CHUNK`.
const FIRST_CHUNK: i64 = 128;
const MAX_CHUNK: i64 = 4096;

/// The schema, one migration per entry, applied in order and recorded in
/// `plughost_migrations`. Never edit an applied entry: add one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE plughost_kv (t int2 NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (t, k));
     CREATE TABLE plughost_writer (id int4 PRIMARY KEY);
     INSERT INTO plughost_writer VALUES (1);",
    // Room on each page for a row's new version: a job rewritten at every transition
    // is then updated in place of its page (HOT), without touching the index.
    "ALTER TABLE plughost_kv SET (fillfactor = 70);",
    // Every write transaction moves the writer row's version when it takes the lock, so
    // a batch applied while the one before it committed can tell whether anyone else
    // wrote in between, and which process wrote last (`PgWrite::lock`).
    "ALTER TABLE plughost_writer ADD COLUMN version int8 NOT NULL DEFAULT 0,
         ADD COLUMN writer text, ADD COLUMN previous_writer text;",
];

/// Prepared statements of one connection.
struct Statements {
    get: Statement,
    get_many: Statement,
    scan_to: Statement,
    scan_all: Statement,
    scan_to_rev: Statement,
    scan_all_rev: Statement,
    count: Statement,
    upsert: Statement,
    delete: Statement,
    lock: Statement,
    writer_free: Statement,
}

struct Conn {
    client: Client,
    sql: Statements,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

struct Pool {
    config: postgres::Config,
    /// The address without credentials, for messages.
    shown: String,
    /// This process's name in the writer row (random per pool).
    writer: String,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// A PostgreSQL store's connections.
#[derive(Clone)]
pub(crate) struct Pg {
    pool: Arc<Pool>,
}

/// A pooled connection; back to the pool on drop unless it failed.
pub(crate) struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    broken: bool,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            Some(c) if !self.broken && !c.client.is_closed() => state.idle.push(c),
            other => {
                state.open -= 1;
                discard(other.into_iter().collect());
            }
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        discard(std::mem::take(&mut state.idle));
    }
}

/// Closes connections on a thread of their own: a blocking client runs its own
/// runtime, which must not be dropped on a thread that drives async tasks (where
/// the last handle of a store may go).
fn discard(conns: Vec<Conn>) {
    if conns.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new().name("plughost-pg-close".into()).spawn(move || drop(conns));
}

impl Pooled {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a pooled connection until dropped")
    }

    /// Runs `f` on the connection; a failure marks it broken.
    fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> Result<T> {
        let shown = self.pool.shown.clone();
        let out = f(self.conn());
        out.map_err(|e| {
            self.broken = true;
            pg_error(&shown, &e)
        })
    }
}

/// A database error as a store error: an unreachable or restarting server is
/// `store_unavailable`, anything else `store_error`.
fn pg_error(shown: &str, e: &postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    let unavailable = e.is_closed()
        || e.as_db_error().is_none()
        || e.code().is_some_and(|c| {
            let c = c.code();
            // Class 08 (connection), 57P (operator intervention: shutdown, restart).
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        });
    if unavailable {
        StoreError::Unavailable(format!(
            "the PostgreSQL store at {shown} is unavailable ({detail}); retry once it is back"
        ))
    } else {
        StoreError::Db(format!("PostgreSQL at {shown}: {detail}"))
    }
}

impl Pg {
    /// Connects to `url` (`postgres://user@host:port/db`), creating or upgrading the
    /// schema. Returns the engine and the migrations applied now.
    pub(crate) fn open(url: &str, max_connections: usize) -> Result<(Pg, usize)> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("'{}' is not a PostgreSQL address: {e}", redact(url))))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("plughost");
        if max_connections < MIN_CONNECTIONS {
            return Err(StoreError::Invalid(format!(
                "store_connections = {max_connections}: a PostgreSQL store needs at least {MIN_CONNECTIONS} (a write and a read at once)"
            )));
        }
        let pool = Pool {
            config,
            shown: redact(url),
            writer: uuid::Uuid::new_v4().simple().to_string(),
            max: max_connections,
            state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
            freed: Condvar::new(),
        };
        let pg = Pg { pool: Arc::new(pool) };
        let applied = pg.migrate()?;
        Ok((pg, applied))
    }

    pub(crate) fn shown(&self) -> &str {
        &self.pool.shown
    }

    fn connect(&self) -> Result<Conn> {
        let shown = &self.pool.shown;
        let mut client = self.pool.config.connect(NoTls).map_err(|e| pg_error(shown, &e))?;
        let sql = prepare(&mut client).map_err(|e| pg_error(shown, &e))?;
        Ok(Conn { client, sql })
    }

    /// A connection from the pool: an idle one, a new one while under the bound, or
    /// the next one freed.
    pub(crate) fn checkout(&self) -> Result<Pooled> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.idle.pop() {
                if conn.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Pooled { conn: Some(conn), pool: self.pool.clone(), broken: false });
            }
            if state.open < self.pool.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Pooled { conn: Some(conn), pool: self.pool.clone(), broken: false }),
                    Err(e) => {
                        self.pool.state.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "all {} connections to the PostgreSQL store at {} stayed busy for {}s: raise store_connections",
                    self.pool.max,
                    self.pool.shown,
                    CHECKOUT_TIMEOUT.as_secs()
                )));
            }
            state = self.pool.freed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Applies the migrations this database lacks, in one transaction (two instances
    /// starting together: the second waits on the first's table lock, then finds
    /// them applied).
    fn migrate(&self) -> Result<usize> {
        // Two processes creating the first table at once: one of them meets a unique
        // violation in the catalogue (SQLSTATE 23505) and tries again.
        let mut attempt = 0;
        loop {
            let race = std::cell::Cell::new(false);
            match self.migrate_once(&race) {
                Err(_) if race.get() && attempt < 5 => attempt += 1,
                other => return other,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One attempt; `race` is set when it failed on a unique violation.
    fn migrate_once(&self, race: &std::cell::Cell<bool>) -> Result<usize> {
        let shown = self.pool.shown.clone();
        let mut client = self.pool.config.connect(NoTls).map_err(|e| pg_error(&shown, &e))?;
        let e = |err: postgres::Error| {
            if err.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                race.set(true);
            }
            pg_error(&shown, &err)
        };
        let mut txn = client.transaction().map_err(e)?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS plughost_migrations (version int4 PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
             LOCK TABLE plughost_migrations IN EXCLUSIVE MODE;",
        )
        .map_err(e)?;
        let done: i32 =
            txn.query_one("SELECT coalesce(max(version), 0) FROM plughost_migrations", &[]).map_err(e)?.get(0);
        let known = MIGRATIONS.len() as i32;
        if done > known {
            return Err(StoreError::SchemaTooNew { path: shown.into(), found: done as u32 });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            txn.batch_execute(m).map_err(e)?;
            txn.execute("INSERT INTO plughost_migrations (version) VALUES ($1)", &[&(i as i32 + 1)]).map_err(e)?;
        }
        txn.commit().map_err(e)?;
        Ok((known - done) as usize)
    }

    /// A read transaction on one snapshot. It begins at its first read (PostgreSQL
    /// takes a repeatable-read snapshot at the first statement anyway), so a view
    /// nothing reads through costs no round trip.
    pub(crate) fn begin_read(&self) -> Result<PgRead> {
        Ok(PgRead { pg: self.clone(), conn: Mutex::new(None) })
    }

    /// Whether no write transaction holds the writer lock now (the row is free; taking
    /// it for the one statement costs a writer that comes meanwhile microseconds).
    pub(crate) fn writer_free(&self) -> Result<bool> {
        let mut conn = self.checkout()?;
        conn.run(|c| Ok(c.client.query_opt(&c.sql.writer_free, &[])?.is_some()))
    }

    /// Begins a write transaction: waits for the writer lock.
    pub(crate) fn begin_write(&self) -> Result<PgWrite> {
        let w = self.begin_unlocked(None)?;
        w.lock()?;
        Ok(w)
    }

    /// Begins a write transaction to run while the one that wrote `ahead` commits:
    /// it reads `ahead` over the database and takes the writer lock only at
    /// [`PgWrite::lock`], which tells whether anyone else wrote in between.
    pub(crate) fn begin_after(&self, ahead: Arc<Writes>) -> Result<PgWrite> {
        self.begin_unlocked(Some(ahead))
    }

    fn begin_unlocked(&self, ahead: Option<Arc<Writes>>) -> Result<PgWrite> {
        let mut conn = self.checkout()?;
        conn.run(|c| c.client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"))?;
        Ok(PgWrite {
            conn: RefCell::new(conn),
            pending: RefCell::default(),
            ahead: RefCell::new(ahead),
            read_ahead: RefCell::default(),
            version: Cell::new(None),
            after_other: Cell::new(false),
        })
    }
}

fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
    let scan = |client: &mut Client, bounded: bool, rev: bool| {
        let to = if bounded { " AND k < $3" } else { "" };
        let order = if rev { "DESC" } else { "ASC" };
        let limit = if bounded { "$4" } else { "$3" };
        client.prepare(&format!(
            "SELECT k, v FROM plughost_kv WHERE t = $1 AND k >= $2{to} ORDER BY k {order} LIMIT {limit}"
        ))
    };
    Ok(Statements {
        get: client.prepare("SELECT v FROM plughost_kv WHERE t = $1 AND k = $2")?,
        get_many: client.prepare("SELECT k, v FROM plughost_kv WHERE t = $1 AND k = ANY($2)")?,
        scan_to: scan(client, true, false)?,
        scan_all: scan(client, false, false)?,
        scan_to_rev: scan(client, true, true)?,
        scan_all_rev: scan(client, false, true)?,
        count: client.prepare("SELECT count(*) FROM plughost_kv WHERE t = $1")?,
        upsert: client.prepare(
            "INSERT INTO plughost_kv (t, k, v) SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[])
             ON CONFLICT (t, k) DO UPDATE SET v = EXCLUDED.v",
        )?,
        delete: client
            .prepare("DELETE FROM plughost_kv WHERE (t, k) IN (SELECT * FROM unnest($1::int2[], $2::bytea[]))")?,
        lock: client.prepare(
            "UPDATE plughost_writer SET version = version + 1, previous_writer = writer, writer = $1
             WHERE id = 1 RETURNING version, previous_writer",
        )?,
        writer_free: client.prepare("SELECT version FROM plughost_writer WHERE id = 1 FOR UPDATE SKIP LOCKED")?,
    })
}

/// The address without its password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// One chunk of a scan: rows in `window` (forward) fetched from the database.
fn fetch(
    c: &mut Conn,
    table: TableId,
    range: &RawRange,
    reverse: bool,
    limit: i64,
) -> Result<Vec<Entry>, postgres::Error> {
    let t = i16::from(table.0);
    let rows = match (&range.hi, reverse) {
        (Some(hi), false) => c.client.query(&c.sql.scan_to, &[&t, &range.lo, hi, &limit])?,
        (None, false) => c.client.query(&c.sql.scan_all, &[&t, &range.lo, &limit])?,
        (Some(hi), true) => c.client.query(&c.sql.scan_to_rev, &[&t, &range.lo, hi, &limit])?,
        (None, true) => c.client.query(&c.sql.scan_all_rev, &[&t, &range.lo, &limit])?,
    };
    Ok(rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect())
}

/// Scans `range` in chunks, merging `pending` (a write transaction's own writes;
/// `None` deletes) over what the database holds. The connection is held only while
/// a chunk is fetched, so `f` may read through the same transaction.
fn scan_merged(
    fetch_chunk: &mut dyn FnMut(&RawRange, i64) -> Result<Vec<Entry>>,
    pending: &dyn Fn(&RawRange) -> Vec<OwnWrite>,
    range: &RawRange,
    reverse: bool,
    f: &mut Visit<'_>,
) -> Result<()> {
    scan_chunked(fetch_chunk, pending, range, reverse, (FIRST_CHUNK, MAX_CHUNK), f)
}

/// [`scan_merged`] with chunk sizes (first, largest).
fn scan_chunked(
    fetch_chunk: &mut dyn FnMut(&RawRange, i64) -> Result<Vec<Entry>>,
    pending: &dyn Fn(&RawRange) -> Vec<OwnWrite>,
    range: &RawRange,
    reverse: bool,
    (first, largest): (i64, i64),
    f: &mut Visit<'_>,
) -> Result<()> {
    let mut rest = range.clone();
    let mut limit = first;
    loop {
        if rest.hi.as_deref().is_some_and(|hi| hi <= rest.lo.as_slice()) {
            return Ok(());
        }
        let rows = fetch_chunk(&rest, limit)?;
        let full = rows.len() as i64 == limit;
        // The part of `rest` this chunk covers, and what remains after it.
        let (window, next) = match (full, reverse) {
            (false, _) => (rest.clone(), None),
            (true, false) => {
                let mut after = rows.last().expect("a full chunk").0.clone();
                after.push(0);
                (
                    RawRange { lo: rest.lo.clone(), hi: Some(after.clone()) },
                    Some(RawRange { lo: after, hi: rest.hi.clone() }),
                )
            }
            (true, true) => {
                let last = rows.last().expect("a full chunk").0.clone();
                (
                    RawRange { lo: last.clone(), hi: rest.hi.clone() },
                    Some(RawRange { lo: rest.lo.clone(), hi: Some(last) }),
                )
            }
        };
        let mut own = pending(&window);
        if reverse {
            own.reverse();
        }
        let mut merged: Vec<OwnWrite> = Vec::with_capacity(rows.len() + own.len());
        let (mut a, mut b) = (rows.into_iter().peekable(), own.into_iter().peekable());
        loop {
            let take_db = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ka, _)), Some((kb, _))) => {
                    if ka == kb {
                        a.next();
                        false
                    } else {
                        (ka < kb) != reverse
                    }
                }
            };
            if take_db {
                let (k, v) = a.next().expect("peeked");
                merged.push((k, Some(v)));
            } else {
                merged.push(b.next().expect("peeked"));
            }
        }
        for (k, v) in merged {
            if let Some(v) = v
                && f(&k, &v)?.is_break()
            {
                return Ok(());
            }
        }
        match next {
            Some(n) => rest = n,
            None => return Ok(()),
        }
        limit = (limit * 2).min(largest);
    }
}

/// A read transaction (repeatable read) on a pooled connection, taken at its first read.
pub(crate) struct PgRead {
    pg: Pg,
    conn: Mutex<Option<Pooled>>,
}

impl Drop for PgRead {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = conn
            && !conn.broken
            && conn.run(|c| c.client.batch_execute("ROLLBACK")).is_err()
        {
            conn.broken = true;
        }
    }
}

/// The connection of a read transaction that has begun.
struct Begun<'a>(std::sync::MutexGuard<'a, Option<Pooled>>);

impl Begun<'_> {
    fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>) -> Result<T> {
        self.0.as_mut().expect("begun").run(f)
    }
}

impl PgRead {
    fn lock(&self) -> Result<Begun<'_>> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let mut conn = self.pg.checkout()?;
            conn.run(|c| c.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))?;
            *guard = Some(conn);
        }
        Ok(Begun(guard))
    }

    pub(crate) fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = i16::from(table.0);
        self.lock()?.run(|c| Ok(c.client.query_opt(&c.sql.get, &[&t, &key])?.map(|r| r.get(0))))
    }

    pub(crate) fn scan(&self, table: TableId, range: &RawRange, reverse: bool, f: &mut Visit<'_>) -> Result<()> {
        scan_merged(
            &mut |r, limit| self.lock()?.run(|c| fetch(c, table, r, reverse, limit)),
            &|_| Vec::new(),
            range,
            reverse,
            f,
        )
    }

    /// The values of `keys` in one round trip (absent keys are left out).
    pub(crate) fn get_many(&self, table: TableId, keys: Vec<Vec<u8>>) -> Result<Vec<Entry>> {
        let t = i16::from(table.0);
        let rows = self.lock()?.run(|c| c.client.query(&c.sql.get_many, &[&t, &keys]))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub(crate) fn len(&self, table: TableId) -> Result<u64> {
        let t = i16::from(table.0);
        self.lock()?.run(|c| Ok(c.client.query_one(&c.sql.count, &[&t])?.get::<_, i64>(0) as u64))
    }
}

/// A key with its table's number.
type TableKey = (u8, Vec<u8>);

/// A write transaction's writes, sent at commit: `None` deletes.
pub(crate) type Writes = BTreeMap<TableKey, Option<Vec<u8>>>;

/// A write transaction; its writes wait in `pending`. It holds the writer lock from
/// [`PgWrite::lock`] (at once, unless begun with [`Pg::begin_after`]).
pub(crate) struct PgWrite {
    conn: RefCell<Pooled>,
    pending: RefCell<Writes>,
    /// The writes of the transaction committing ahead of this one, read under
    /// `pending` and over the database (which holds them once that one committed).
    ahead: RefCell<Option<Arc<Writes>>>,
    /// Values read ahead in one round trip ([`PgWrite::prefetch`]); `None`: absent.
    /// Safe to keep for the transaction: no one else writes while it holds the writer
    /// lock, and one that read before taking it checks that no one did.
    read_ahead: RefCell<std::collections::HashMap<TableKey, Option<Vec<u8>>>>,
    /// The writer row's version this transaction set when it took the lock.
    version: Cell<Option<i64>>,
    /// The write transaction before it (in the writer row) was another process's.
    after_other: Cell<bool>,
}

/// A write transaction on its way to commit ([`PgWrite::send`]).
pub(crate) struct PgCommit {
    conn: Pooled,
}

impl PgWrite {
    /// Takes the writer lock (waiting for it) and moves the writer row's version;
    /// returns the new version. Every write transaction does, so a transaction that
    /// read over the writes of the one ahead of it finds the version one above that
    /// one's exactly when nobody else wrote in between.
    pub(crate) fn lock(&self) -> Result<i64> {
        let mut conn = self.conn.borrow_mut();
        let me = conn.pool.writer.clone();
        let row = conn.run(|c| c.client.query_one(&c.sql.lock, &[&me]))?;
        let (v, previous): (i64, Option<String>) = (row.get(0), row.get(1));
        self.version.set(Some(v));
        self.after_other.set(previous.is_some_and(|p| p != me));
        Ok(v)
    }

    /// Whether the write transaction just before this one (by the writer row) was
    /// another process's, once locked.
    pub(crate) fn after_other(&self) -> bool {
        self.after_other.get()
    }

    /// The version set by [`PgWrite::lock`], once locked.
    pub(crate) fn version(&self) -> Option<i64> {
        self.version.get()
    }

    /// Forgets everything written and read so far (and the writes ahead), to apply
    /// the operations again on what the database holds.
    pub(crate) fn restart(&self) {
        self.pending.borrow_mut().clear();
        self.read_ahead.borrow_mut().clear();
        self.ahead.borrow_mut().take();
    }

    /// What this transaction has written, over the writes ahead, in `window` of `table`.
    fn own_writes(&self, table: u8, window: &RawRange) -> Vec<OwnWrite> {
        let lo = Bound::Included((table, window.lo.clone()));
        let hi = match &window.hi {
            Some(h) => Bound::Excluded((table, h.clone())),
            None => Bound::Excluded((table + 1, Vec::new())),
        };
        let pending = self.pending.borrow();
        let own = pending.range((lo.clone(), hi.clone())).map(|((_, k), v)| (k.clone(), v.clone()));
        match &*self.ahead.borrow() {
            None => own.collect(),
            Some(ahead) => {
                let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
                    ahead.range((lo, hi)).map(|((_, k), v)| (k.clone(), v.clone())).collect();
                merged.extend(own);
                merged.into_iter().collect()
            }
        }
    }

    pub(crate) fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = (table.0, key.to_vec());
        if let Some(v) = self.pending.borrow().get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = self.ahead.borrow().as_ref().and_then(|a| a.get(&k)) {
            return Ok(v.clone());
        }
        if let Some(v) = self.read_ahead.borrow().get(&k) {
            return Ok(v.clone());
        }
        let t = i16::from(table.0);
        self.conn.borrow_mut().run(|c| Ok(c.client.query_opt(&c.sql.get, &[&t, &key])?.map(|r| r.get(0))))
    }

    pub(crate) fn scan(&self, table: TableId, range: &RawRange, reverse: bool, f: &mut Visit<'_>) -> Result<()> {
        scan_merged(
            &mut |r, limit| self.conn.borrow_mut().run(|c| fetch(c, table, r, reverse, limit)),
            &|window| self.own_writes(table.0, window),
            range,
            reverse,
            f,
        )
    }

    /// Reads the values of `keys` in one round trip, for the gets that follow.
    pub(crate) fn prefetch(&self, table: TableId, keys: Vec<Vec<u8>>) -> Result<()> {
        let t = i16::from(table.0);
        let rows = self.conn.borrow_mut().run(|c| c.client.query(&c.sql.get_many, &[&t, &keys]))?;
        let mut ahead = self.read_ahead.borrow_mut();
        for k in keys {
            ahead.insert((table.0, k), None);
        }
        for r in rows {
            ahead.insert((table.0, r.get::<_, Vec<u8>>(0)), Some(r.get(1)));
        }
        Ok(())
    }

    /// Records a write (`None` deletes), sent at commit.
    pub(crate) fn put(&self, table: TableId, key: &[u8], value: Option<&[u8]>) {
        self.pending.borrow_mut().insert((table.0, key.to_vec()), value.map(<[u8]>::to_vec));
    }

    /// Sends the writes and commits.
    pub(crate) fn commit(self) -> Result<()> {
        let (writes, commit) = self.send();
        commit.commit(&writes)
    }

    /// Ends the transaction's work here: its writes (for the transaction after it to
    /// read ahead), and the commit, which may run on another thread. Must hold the lock.
    pub(crate) fn send(self) -> (Arc<Writes>, PgCommit) {
        debug_assert!(self.version.get().is_some(), "a write transaction commits holding the writer lock");
        (Arc::new(self.pending.into_inner()), PgCommit { conn: self.conn.into_inner() })
    }

    /// Ends the transaction without writing.
    pub(crate) fn rollback(self) {
        let mut conn = self.conn.into_inner();
        if conn.run(|c| c.client.batch_execute("ROLLBACK")).is_err() {
            conn.broken = true;
        }
    }
}

impl PgCommit {
    /// Writes `writes` (what [`PgWrite::send`] returned) and commits.
    pub(crate) fn commit(mut self, writes: &Writes) -> Result<()> {
        let (mut ut, mut uk, mut uv, mut dt, mut dk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((t, k), v) in writes {
            match v {
                Some(v) => {
                    ut.push(i16::from(*t));
                    uk.push(k.as_slice());
                    uv.push(v.as_slice());
                }
                None => {
                    dt.push(i16::from(*t));
                    dk.push(k.as_slice());
                }
            }
        }
        self.conn.run(|c| {
            if !dk.is_empty() {
                c.client.execute(&c.sql.delete, &[&dt as &(dyn ToSql + Sync), &dk])?;
            }
            if !uk.is_empty() {
                c.client.execute(&c.sql.upsert, &[&ut as &(dyn ToSql + Sync), &uk, &uv])?;
            }
            c.client.batch_execute("COMMIT")
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;

    #[test]
    fn an_address_is_shown_without_its_password() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn a_merged_scan_overlays_own_writes_in_both_directions() {
        let db: Vec<(Vec<u8>, Vec<u8>)> = (0u8..10).step_by(2).map(|i| (vec![i], vec![i])).collect();
        let own: Vec<OwnWrite> =
            vec![(vec![1], Some(vec![101])), (vec![4], None), (vec![6], Some(vec![106])), (vec![11], Some(vec![111]))];
        for reverse in [false, true] {
            let mut fetch_chunk = |r: &RawRange, limit: i64| -> Result<Vec<Entry>> {
                let mut rows: Vec<_> = db.iter().filter(|(k, _)| r.contains(k)).cloned().collect();
                if reverse {
                    rows.reverse();
                }
                rows.truncate(limit as usize);
                Ok(rows)
            };
            let pending = |w: &RawRange| own.iter().filter(|(k, _)| w.contains(k)).cloned().collect::<Vec<_>>();
            let mut seen = Vec::new();
            let range = RawRange { lo: vec![], hi: None };
            scan_chunked(&mut fetch_chunk, &pending, &range, reverse, (2, 2), &mut |k, v| {
                seen.push((k[0], v[0]));
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
            let mut want = vec![(0, 0), (1, 101), (2, 2), (6, 106), (8, 8), (11, 111)];
            if reverse {
                want.reverse();
            }
            assert_eq!(seen, want, "reverse: {reverse}");
        }
    }
}
