//! `plughost store`: create or upgrade a store's schema, and copy an embedded store
//! into PostgreSQL.

use std::path::PathBuf;
use std::process::ExitCode;

use plughost::store::{SCHEMA_VERSION, Store, StoreLocation};

use super::{CliError, Global};

#[derive(clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Create or upgrade the schema of the configured store (`--store`, `store` in
    /// plughost.toml, PLUGHOST_STORE; else the data directory's file).
    Init,
    /// Copy an embedded store (a data directory) into an empty PostgreSQL database and
    /// verify that every table holds as many entries as the source.
    Copy {
        /// The data directory whose store to copy (no server may run on it).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database to copy into (`postgres://user@host:port/db`).
        #[arg(long)]
        to: String,
    },
}

impl StoreCommand {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        match self {
            StoreCommand::Init => {
                let store = g.open_store()?;
                let json = serde_json::json!({
                    "engine": store.engine_name(),
                    "store": store.path(),
                    "schema_version": SCHEMA_VERSION,
                });
                g.print(&json, || {
                    format!(
                        "{} store {} is at schema version {SCHEMA_VERSION}\n",
                        store.engine_name(),
                        store.path().display()
                    )
                })?;
            }
            StoreCommand::Copy { from, to } => {
                let location = StoreLocation::parse(&to, 2);
                if !matches!(location, StoreLocation::Postgres { .. }) {
                    return Err(CliError::new(
                        "invalid",
                        format!("--to must be a PostgreSQL address (postgres://user@host:port/db), not '{to}'"),
                    ));
                }
                let source = Store::open(&from)?;
                let target = Store::open_at(&location)?;
                let copied = source.copy_to(&target)?;
                let (expected, found) = (source.table_counts()?, target.table_counts()?);
                let mismatched: Vec<String> = expected
                    .iter()
                    .zip(&found)
                    .filter(|(a, b)| a != b)
                    .map(|((t, a), (_, b))| format!("{t}: {a} in the source, {b} in the copy"))
                    .collect();
                if !mismatched.is_empty() {
                    return Err(CliError::new(
                        "store_error",
                        format!("the copy does not match its source: {}", mismatched.join("; ")),
                    ));
                }
                let total: u64 = copied.iter().map(|(_, n)| n).sum();
                let json = serde_json::json!({
                    "from": source.path(),
                    "to": target.path(),
                    "entries": total,
                    "tables": copied.iter().map(|(t, n)| (t.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                });
                g.print(&json, || {
                    let mut out = format!(
                        "copied {total} entries from {} to {}, verified table by table:\n",
                        source.path().display(),
                        target.path().display()
                    );
                    for (t, n) in &copied {
                        out.push_str(&format!("  {t:<20} {n}\n"));
                    }
                    out
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
