//! The store's tables as ordered key-value maps, the same on every engine.
//!
//! Everything above this module (records, the registry, the job queue and its
//! indexes) is written once against [`Read`] and [`Write`]; an engine only stores
//! ordered byte keys with byte values in numbered tables, in transactions:
//! - **redb** (the embedded default): one redb table per logical table.
//! - **PostgreSQL** (`pg.rs`): one `plughost_kv (t, k, v)` table; a write transaction
//!   holds the store's writer lock row, so write transactions are serial across every
//!   `plughost serve` on the database, as redb's are within one process.
//!
//! Keys are encoded so that byte order is key order: integers big-endian (signed
//! ones with the sign bit flipped), strings escaped and terminated, tuples as the
//! concatenation of their parts. A value is bytes (`codec`'s or a row's encoding) or
//! a fixed-width integer.
//!
//! **Invariant:** a scan's callback may read any table, but must not write the table
//! being scanned: collect first, then write (as redb requires too).

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Bound, ControlFlow, RangeBounds};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::StoreError;
use super::pg::{PgRead, PgWrite};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key that encodes to bytes in its own order.
pub(crate) trait Key: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(input: &mut &[u8]) -> Result<Self>;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        self.put(&mut out);
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Self> {
        let k = Self::take(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(corrupt_key());
        }
        Ok(k)
    }
}

fn corrupt_key() -> StoreError {
    StoreError::Db("a stored key does not decode".into())
}

fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>().ok_or_else(corrupt_key)?;
    *input = rest;
    Ok(*head)
}

macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn take(input: &mut &[u8]) -> Result<Self> {
                Ok(<$t>::from_be_bytes(take_array(input)?))
            }
        }
    )*};
}
unsigned_key!(u32, u64, u128);

impl Key for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*self as u64) ^ (1 << 63)).to_be_bytes());
    }
    fn take(input: &mut &[u8]) -> Result<Self> {
        Ok((u64::from_be_bytes(take_array(input)?) ^ (1 << 63)) as i64)
    }
}

impl Key for [u8; 32] {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn take(input: &mut &[u8]) -> Result<Self> {
        take_array(input)
    }
}

/// Strings: 0x00 is written as 0x00 0xFF and the end as 0x00 0x01, so a string sorts
/// before every longer string it starts, and a tuple's next part never bleeds in.
impl Key for String {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(self, out);
    }
    fn take(input: &mut &[u8]) -> Result<Self> {
        let mut bytes = Vec::new();
        loop {
            match input {
                [0, 0xFF, rest @ ..] => {
                    bytes.push(0);
                    *input = rest;
                }
                [0, 1, rest @ ..] => {
                    *input = rest;
                    return String::from_utf8(bytes).map_err(|_| corrupt_key());
                }
                [b, rest @ ..] if *b != 0 => {
                    bytes.push(*b);
                    *input = rest;
                }
                _ => return Err(corrupt_key()),
            }
        }
    }
}

pub(crate) fn put_str(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        if b == 0 {
            out.extend_from_slice(&[0, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Raw bytes: only as a whole key (it takes the rest of the input).
impl Key for Vec<u8> {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn take(input: &mut &[u8]) -> Result<Self> {
        let all = input.to_vec();
        *input = &[];
        Ok(all)
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(input: &mut &[u8]) -> Result<Self> {
        Ok((A::take(input)?, B::take(input)?))
    }
}

/// A stored value.
pub(crate) trait Value: Sized {
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]>;
    fn from_bytes(bytes: Vec<u8>) -> Result<Self>;
}

impl Value for Vec<u8> {
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        self.as_slice().into()
    }
    fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Ok(bytes)
    }
}

impl Value for () {
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        (&[][..]).into()
    }
    fn from_bytes(_: Vec<u8>) -> Result<Self> {
        Ok(())
    }
}

macro_rules! fixed_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
                self.encode().into()
            }
            fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
                <$t as Key>::decode(&bytes)
            }
        }
    )*};
}
fixed_value!(u64, u128, [u8; 32]);

/// A logical table: its number (PostgreSQL's `t` column, an index here) and name
/// (redb's table), with the types of its keys and values.
pub(crate) struct Table<K, V> {
    pub(crate) id: TableId,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> Table<K, V> {
    pub(crate) const fn new(id: TableId) -> Table<K, V> {
        Table { id, _types: PhantomData }
    }
}

/// Every table, numbered. The numbers and names are part of the stored layout: never
/// renumber one; add new ones at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableId(pub(crate) u8, pub(crate) &'static str);

pub(crate) const ALL_TABLES: [TableId; 40] = [
    TableId(0, "meta"),
    TableId(1, "assemblies"),
    TableId(2, "assembly_bytes"),
    TableId(3, "plugins"),
    TableId(4, "steps"),
    TableId(5, "artifacts"),
    TableId(6, "entity_definitions"),
    TableId(7, "records"),
    TableId(8, "jobs"),
    TableId(9, "job_contexts"),
    TableId(10, "jobs_ready"),
    TableId(11, "jobs_postponed"),
    TableId(12, "jobs_tokens"),
    TableId(13, "jobs_leases"),
    TableId(14, "jobs_by_step"),
    TableId(15, "jobs_completed"),
    TableId(16, "bulk_rows"),
    TableId(17, "jobs_status_counts"),
    TableId(18, "users"),
    TableId(19, "user_names"),
    TableId(20, "roles"),
    TableId(21, "api_keys"),
    TableId(22, "api_key_ids"),
    TableId(23, "audit"),
    TableId(24, "jobs_by_owner"),
    TableId(25, "workflows"),
    TableId(26, "workflow_names"),
    TableId(27, "workflow_versions"),
    TableId(28, "workflow_log"),
    TableId(29, "workflow_waits"),
    TableId(30, "workflow_wait_of"),
    TableId(31, "jobs_by_status"),
    TableId(32, "jobs_type_counts"),
    TableId(33, "step_stats"),
    TableId(34, "jobs_recurring"),
    TableId(35, "job_minutes"),
    TableId(36, "mail_outbox"),
    TableId(37, "step_profiles"),
    TableId(38, "recorded_runs"),
    TableId(39, "recorded_run_summaries"),
];

/// redb's table for a logical table (a name apart from schema 4's typed tables).
pub(super) fn redb_table(id: TableId) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(REDB_NAMES[id.0 as usize])
}

const REDB_NAMES: [&str; 40] = [
    "kv:meta",
    "kv:assemblies",
    "kv:assembly_bytes",
    "kv:plugins",
    "kv:steps",
    "kv:artifacts",
    "kv:entity_definitions",
    "kv:records",
    "kv:jobs",
    "kv:job_contexts",
    "kv:jobs_ready",
    "kv:jobs_postponed",
    "kv:jobs_tokens",
    "kv:jobs_leases",
    "kv:jobs_by_step",
    "kv:jobs_completed",
    "kv:bulk_rows",
    "kv:jobs_status_counts",
    "kv:users",
    "kv:user_names",
    "kv:roles",
    "kv:api_keys",
    "kv:api_key_ids",
    "kv:audit",
    "kv:jobs_by_owner",
    "kv:workflows",
    "kv:workflow_names",
    "kv:workflow_versions",
    "kv:workflow_log",
    "kv:workflow_waits",
    "kv:workflow_wait_of",
    "kv:jobs_by_status",
    "kv:jobs_type_counts",
    "kv:step_stats",
    "kv:jobs_recurring",
    "kv:job_minutes",
    "kv:mail_outbox",
    "kv:step_profiles",
    "kv:recorded_runs",
    "kv:recorded_run_summaries",
];

/// Creates every table of a redb store (so readers never meet a missing one).
pub(crate) fn create_redb_tables(txn: &redb::WriteTransaction) -> Result<()> {
    for t in ALL_TABLES {
        txn.open_table(redb_table(t))?;
    }
    Ok(())
}

/// A key range in encoded form: `lo` inclusive, `hi` exclusive (`None`: to the end).
#[derive(Clone, Debug)]
pub(crate) struct RawRange {
    pub(crate) lo: Vec<u8>,
    pub(crate) hi: Option<Vec<u8>>,
}

impl RawRange {
    fn of<K: Key>(range: &impl RangeBounds<K>) -> RawRange {
        // The next key after `k` in byte order is `k` followed by 0x00.
        let after = |k: &K| {
            let mut v = k.encode();
            v.push(0);
            v
        };
        let lo = match range.start_bound() {
            Bound::Included(k) => k.encode(),
            Bound::Excluded(k) => after(k),
            Bound::Unbounded => Vec::new(),
        };
        let hi = match range.end_bound() {
            Bound::Included(k) => Some(after(k)),
            Bound::Excluded(k) => Some(k.encode()),
            Bound::Unbounded => None,
        };
        RawRange { lo, hi }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        k >= self.lo.as_slice() && self.hi.as_deref().is_none_or(|hi| k < hi)
    }

    fn is_empty(&self) -> bool {
        self.hi.as_deref().is_some_and(|hi| hi <= self.lo.as_slice())
    }
}

/// What a raw scan calls for each entry.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>> + 'a;

/// A stored entry: encoded key and value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);
/// A write transaction's own write of a key: the value, or `None` for a delete.
pub(crate) type OwnWrite = (Vec<u8>, Option<Vec<u8>>);
type RedbTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;
/// A redb table opened at first use in a write transaction.
type Slot<'t> = RefCell<Option<RedbTable<'t>>>;
type RedbEntry<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);

/// A consistent read view (redb read transaction, PostgreSQL repeatable-read
/// transaction).
pub(crate) enum Read {
    Redb(redb::ReadTransaction),
    Pg(Box<PgRead>),
}

/// A write transaction: reads see its own writes.
pub(crate) enum Write<'t> {
    Redb(RedbWrite<'t>),
    Pg(&'t PgWrite),
}

/// redb's write transaction with its tables, each opened once.
pub(crate) struct RedbWrite<'t> {
    txn: &'t redb::WriteTransaction,
    tables: Vec<Slot<'t>>,
}

impl<'t> RedbWrite<'t> {
    pub(crate) fn new(txn: &'t redb::WriteTransaction) -> RedbWrite<'t> {
        RedbWrite { txn, tables: ALL_TABLES.iter().map(|_| RefCell::new(None)).collect() }
    }

    fn table(&self, id: TableId) -> Result<&Slot<'t>> {
        let cell = &self.tables[id.0 as usize];
        if cell.borrow().is_none() {
            *cell.borrow_mut() = Some(self.txn.open_table(redb_table(id))?);
        }
        Ok(cell)
    }
}

fn redb_scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    range: &RawRange,
    reverse: bool,
    f: &mut Visit<'_>,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let lo = Bound::Included(range.lo.as_slice());
    let hi = match &range.hi {
        Some(h) => Bound::Excluded(h.as_slice()),
        None => Bound::Unbounded,
    };
    let iter = table.range::<&[u8]>((lo, hi))?;
    let mut visit = |entry: Result<RedbEntry<'_>, redb::StorageError>| {
        let (k, v) = entry?;
        f(k.value(), v.value())
    };
    if reverse {
        for entry in iter.rev() {
            if visit(entry)?.is_break() {
                break;
            }
        }
    } else {
        for entry in iter {
            if visit(entry)?.is_break() {
                break;
            }
        }
    }
    Ok(())
}

/// Typed reads, the same for a read and a write transaction.
pub(crate) trait Reads {
    fn raw_get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn raw_scan(&self, table: TableId, range: &RawRange, reverse: bool, f: &mut Visit<'_>) -> Result<()>;

    fn get<K: Key, V: Value>(&self, table: &Table<K, V>, key: &K) -> Result<Option<V>> {
        self.raw_get(table.id, &key.encode())?.map(V::from_bytes).transpose()
    }

    /// Calls `f` for the entries in `range`, in key order (or reversed), until it breaks.
    fn scan<K: Key, V: Value>(
        &self,
        table: &Table<K, V>,
        range: impl RangeBounds<K>,
        reverse: bool,
        mut f: impl FnMut(K, V) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        self.raw_scan(table.id, &RawRange::of(&range), reverse, &mut |k, v| {
            f(K::decode(k)?, V::from_bytes(v.to_vec())?)
        })
    }

    /// The first `max` entries in `range`, in key order.
    fn first<K: Key, V: Value>(
        &self,
        table: &Table<K, V>,
        range: impl RangeBounds<K>,
        max: usize,
    ) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.scan(table, range, false, |k, v| {
            out.push((k, v));
            Ok(if out.len() >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        Ok(out)
    }

    /// The values of `keys`, in their order (`None`: absent): one round trip on a
    /// PostgreSQL snapshot.
    fn fetch_many<K: Key, V: Value>(&self, table: &Table<K, V>, keys: &[K]) -> Result<Vec<Option<V>>> {
        keys.iter().map(|k| self.get(table, k)).collect()
    }

    /// Every entry in `range`.
    fn all_in<K: Key, V: Value>(&self, table: &Table<K, V>, range: impl RangeBounds<K>) -> Result<Vec<(K, V)>> {
        self.first(table, range, usize::MAX)
    }

    /// Every entry of a table.
    fn all<K: Key, V: Value>(&self, table: &Table<K, V>) -> Result<Vec<(K, V)>> {
        self.first(table, .., usize::MAX)
    }
}

impl Reads for Read {
    fn raw_get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Read::Redb(txn) => Ok(txn.open_table(redb_table(table))?.get(key)?.map(|v| v.value().to_vec())),
            Read::Pg(r) => r.get(table, key),
        }
    }

    fn raw_scan(&self, table: TableId, range: &RawRange, reverse: bool, f: &mut Visit<'_>) -> Result<()> {
        match self {
            Read::Redb(txn) => redb_scan(&txn.open_table(redb_table(table))?, range, reverse, f),
            Read::Pg(r) => r.scan(table, range, reverse, f),
        }
    }

    fn fetch_many<K: Key, V: Value>(&self, table: &Table<K, V>, keys: &[K]) -> Result<Vec<Option<V>>> {
        self.get_many(table, keys)
    }
}

impl Read {
    /// The values of `keys`, in their order (`None`: absent): one round trip on
    /// PostgreSQL.
    pub(crate) fn get_many<K: Key, V: Value>(&self, table: &Table<K, V>, keys: &[K]) -> Result<Vec<Option<V>>> {
        match self {
            Read::Redb(_) => keys.iter().map(|k| self.get(table, k)).collect(),
            Read::Pg(r) => {
                let encoded: Vec<Vec<u8>> = keys.iter().map(Key::encode).collect();
                let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
                    r.get_many(table.id, encoded.clone())?.into_iter().collect();
                encoded.iter().map(|k| found.remove(k).map(V::from_bytes).transpose()).collect()
            }
        }
    }

    /// How many entries a table has.
    pub(crate) fn len<K, V>(&self, table: &Table<K, V>) -> Result<u64> {
        match self {
            Read::Redb(txn) => Ok(txn.open_table(redb_table(table.id))?.len()?),
            Read::Pg(r) => r.len(table.id),
        }
    }
}

impl Reads for Write<'_> {
    fn raw_get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Write::Redb(w) => {
                let cell = w.table(table)?.borrow();
                let t = cell.as_ref().expect("opened");
                Ok(t.get(key)?.map(|v| v.value().to_vec()))
            }
            Write::Pg(w) => w.get(table, key),
        }
    }

    fn raw_scan(&self, table: TableId, range: &RawRange, reverse: bool, f: &mut Visit<'_>) -> Result<()> {
        match self {
            Write::Redb(w) => {
                let cell = w.table(table)?.borrow();
                redb_scan(cell.as_ref().expect("opened"), range, reverse, f)
            }
            Write::Pg(w) => w.scan(table, range, reverse, f),
        }
    }
}

impl Write<'_> {
    fn raw_insert(&self, table: TableId, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Write::Redb(w) => {
                let mut cell = w.table(table)?.borrow_mut();
                cell.as_mut().expect("opened").insert(key, value)?;
                Ok(())
            }
            Write::Pg(w) => {
                w.put(table, key, Some(value));
                Ok(())
            }
        }
    }

    fn raw_remove(&self, table: TableId, key: &[u8]) -> Result<()> {
        match self {
            Write::Redb(w) => {
                let mut cell = w.table(table)?.borrow_mut();
                cell.as_mut().expect("opened").remove(key)?;
                Ok(())
            }
            Write::Pg(w) => {
                w.put(table, key, None);
                Ok(())
            }
        }
    }

    pub(crate) fn insert<K: Key, V: Value>(&self, table: &Table<K, V>, key: &K, value: &V) -> Result<()> {
        self.raw_insert(table.id, &key.encode(), &value.to_bytes())
    }

    pub(crate) fn remove<K: Key, V>(&self, table: &Table<K, V>, key: &K) -> Result<()> {
        self.raw_remove(table.id, &key.encode())
    }

    /// Removes every entry in `range`; returns how many.
    pub(crate) fn remove_range<K: Key, V>(&self, table: &Table<K, V>, range: impl RangeBounds<K>) -> Result<usize> {
        let range = RawRange::of(&range);
        let mut keys = Vec::new();
        self.raw_scan(table.id, &range, false, &mut |k, _| {
            keys.push(k.to_vec());
            Ok(ControlFlow::Continue(()))
        })?;
        for k in &keys {
            self.raw_remove(table.id, k)?;
        }
        Ok(keys.len())
    }

    /// Reads these keys ahead in one round trip, for the gets that follow (a batch of
    /// jobs): PostgreSQL would make each get a round trip; redb needs nothing.
    pub(crate) fn prefetch<K: Key, V>(&self, table: &Table<K, V>, keys: impl IntoIterator<Item = K>) -> Result<()> {
        match self {
            Write::Redb(_) => Ok(()),
            Write::Pg(w) => w.prefetch(table.id, keys.into_iter().map(|k| k.encode()).collect()),
        }
    }

    /// Copies raw entries in (a store copy).
    pub(crate) fn put_raw(&self, table: TableId, key: &[u8], value: &[u8]) -> Result<()> {
        self.raw_insert(table, key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_keys_sort_as_their_values() {
        let mut ints = vec![i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let mut enc: Vec<_> = ints.iter().map(Key::encode).collect();
        enc.sort();
        assert_eq!(enc.iter().map(|b| i64::decode(b).unwrap()).collect::<Vec<_>>(), ints);
        ints.reverse();
        let strs = ["", "a", "a\0", "a\0b", "ab", "b"].map(String::from);
        let mut pairs: Vec<(String, u64)> = strs.iter().flat_map(|s| [(s.clone(), 2), (s.clone(), 1)]).collect();
        let mut enc: Vec<_> = pairs.iter().map(Key::encode).collect();
        enc.sort();
        pairs.sort();
        assert_eq!(enc.iter().map(|b| <(String, u64)>::decode(b).unwrap()).collect::<Vec<_>>(), pairs);
        assert!(String::decode(&[b'a', 0]).is_err(), "an unterminated string is refused");
    }

    #[test]
    fn a_range_in_bytes_keeps_its_bounds() {
        let r = RawRange::of(&(5u64..=7));
        assert!(r.contains(&5u64.encode()) && r.contains(&7u64.encode()) && !r.contains(&8u64.encode()));
        let r = RawRange::of(&(("a".to_owned(), 0u128)..=("a".to_owned(), u128::MAX)));
        assert!(r.contains(&("a".to_owned(), 9u128).encode()));
        assert!(!r.contains(&("ab".to_owned(), 0u128).encode()), "another entity's keys are outside");
    }
}
