//! The `plughost` command line: one file per subcommand, each a clap struct whose
//! `run` calls the library.

mod backend;
mod bench;
mod bulk;
mod component;
mod entities;
mod jobs;
mod plugins;
mod register;
mod runs;
mod security;
mod serve;
mod service;
mod status;
mod steps;
mod store;
mod test;
mod unregister;
mod worker;
mod workflows;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use plughost::config::Config;
use plughost::runtime::Runtime;
use plughost::store::{Store, StoreError};

/// Exit codes, stable for scripts.
pub(crate) mod exit {
    /// A command failed: bad input, not found, a refused registration.
    pub(crate) const FAILURE: u8 = 1;
    /// The store is in use by another process.
    pub(crate) const STORE_LOCKED: u8 = 3;
    /// `plughost test`: the plug-in ran and failed (rejected, trapped, hit a limit).
    pub(crate) const PLUGIN_FAILED: u8 = 4;
}

#[derive(Parser)]
#[command(name = "plughost", version, about = "Run sandboxed WebAssembly plug-ins in response to data events")]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub(crate) struct Global {
    /// Where the store and the compile cache live.
    #[arg(long, global = true, env = "PLUGHOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to the server at this URL (default: the one this data directory's server
    /// recorded, else work on the store directly).
    #[arg(long, global = true, env = "PLUGHOST_SERVER")]
    server: Option<String>,
    /// The admin token for --server (default: the data directory's token file).
    #[arg(long, global = true, env = "PLUGHOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An API key to call the server with instead of the admin token (plughost keys create).
    #[arg(long, global = true, env = "PLUGHOST_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A TOML configuration file (default: plughost.toml in the data directory).
    #[arg(long, global = true, env = "PLUGHOST_CONFIG")]
    config_file: Option<PathBuf>,
    /// Where the store lives: a PostgreSQL address (`postgres://user@host:port/db`)
    /// instead of the data directory's embedded file (also `store` in plughost.toml,
    /// or PLUGHOST_STORE).
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Register a plug-in component (and optionally steps for it).
    Register(register::Register),
    /// Remove a plug-in, a step or an assembly.
    #[command(subcommand)]
    Unregister(unregister::Unregister),
    /// List and show registered plug-ins.
    #[command(subcommand)]
    Plugins(plugins::Plugins),
    /// Add, list, remove, enable and disable steps.
    #[command(subcommand)]
    Steps(steps::Steps),
    /// Run a plug-in once, locally, against a context and an in-memory data set.
    Test(test::Test),
    /// Build plug-in components from C or Go: C bindings for the world, and a
    /// component from a core module (with the WASI preview1 adapter).
    #[command(subcommand)]
    Component(component::Component),
    /// Recorded runs of steps set to record (`steps profile`): list, show, export, delete.
    #[command(subcommand)]
    Runs(runs::Runs),
    /// Replay a recorded run (by id, or an exported file) with a new build, offline,
    /// and show what differs.
    Replay(runs::ReplayCommand),
    /// Run the service: the data API, the admin API and the pipeline.
    Serve(serve::Serve),
    /// Create, read, update, delete and query records; define entities.
    #[command(subcommand)]
    Entities(entities::Entities),
    /// List and show system jobs.
    #[command(subcommand)]
    Jobs(jobs::Jobs),
    /// Bulk operations run as system jobs: delete by query, import a file.
    #[command(subcommand)]
    Bulk(bulk::Bulk),
    /// Bulk mail: one email per record a query selects, rendered from a template,
    /// delivered by the outgoing-mail job over `[mail] smtp`.
    #[command(subcommand)]
    Mail(bulk::Mail),
    /// Campaigns: distribute a campaign activity to the members of its lists.
    #[command(subcommand)]
    Campaigns(bulk::Campaigns),
    /// Show where the data lives and whether a server is running.
    Status(status::Status),
    /// Pause, resume and inspect the asynchronous service of a running server.
    #[command(subcommand)]
    Service(service::Service),
    /// Measure the service (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Run the asynchronous service in this process for a server elsewhere.
    Worker(worker::Worker),
    /// The remote workers serving a server.
    #[command(subcommand)]
    Workers(worker::Workers),
    /// Create or upgrade a store's schema; copy an embedded store into PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Users: create, list, disable, enable, and their roles.
    #[command(subcommand)]
    Users(security::Users),
    /// API keys: create (printed once), list, revoke.
    #[command(subcommand)]
    Keys(security::Keys),
    /// Security roles: list, create, grant privileges.
    #[command(subcommand)]
    Roles(security::Roles),
    /// The audit log of administrative actions.
    #[command(subcommand)]
    Audit(security::Audit),
    /// Who this command acts as: its key's user, roles and capabilities.
    Whoami(security::Whoami),
    /// Workflows: create, update, list, show, activate, deactivate, run, log.
    #[command(subcommand)]
    Workflows(workflows::Workflows),
}

impl Cli {
    pub(crate) fn run(self) -> Result<ExitCode, CliError> {
        let g = self.global;
        match self.command {
            Command::Register(c) => c.run(&g),
            Command::Unregister(c) => c.run(&g),
            Command::Plugins(c) => c.run(&g),
            Command::Steps(c) => c.run(&g),
            Command::Test(c) => c.run(&g),
            Command::Runs(c) => c.run(&g),
            Command::Component(c) => c.run(&g),
            Command::Replay(c) => c.run(&g),
            Command::Serve(c) => c.run(&g),
            Command::Entities(c) => c.run(&g),
            Command::Jobs(c) => c.run(&g),
            Command::Bulk(c) => c.run(&g),
            Command::Mail(c) => c.run(&g),
            Command::Campaigns(c) => c.run(&g),
            Command::Status(c) => c.run(&g),
            Command::Bench(c) => c.run(&g),
            Command::Service(c) => c.run(&g),
            Command::Worker(c) => c.run(&g),
            Command::Workers(c) => c.run(&g),
            Command::Store(c) => c.run(&g),
            Command::Users(c) => c.run(&g),
            Command::Keys(c) => c.run(&g),
            Command::Roles(c) => c.run(&g),
            Command::Audit(c) => c.run(&g),
            Command::Whoami(c) => c.run(&g),
            Command::Workflows(c) => c.run(&g),
        }
    }
}

impl Global {
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| match dirs::data_dir() {
            Some(d) => d.join("plughost"),
            None => PathBuf::from("plughost-data"),
        })
    }

    pub(crate) fn open_store(&self) -> Result<Arc<Store>, CliError> {
        Ok(Arc::new(Store::open_at(&self.load_config()?.store_location(&self.data_dir()))?))
    }

    pub(crate) fn load_config(&self) -> Result<Config, CliError> {
        let mut config =
            Config::load(self.config_file.as_deref(), &self.data_dir()).map_err(|m| CliError::new("bad_config", m))?;
        if let Some(store) = &self.store {
            config.store = Some(store.clone());
        }
        Ok(config)
    }

    /// The server if one runs (or `--server`), else the store in this process.
    pub(crate) fn backend(&self) -> Result<Box<dyn backend::Backend>, CliError> {
        let credential = self.key.clone().or_else(|| self.token.clone());
        backend::connect(self.server.as_deref(), credential, &self.data_dir(), self.load_config()?)
    }

    /// A runtime that caches compiled code in the data directory, when a store is given.
    pub(crate) fn runtime(&self, store: Option<Arc<Store>>) -> Result<Runtime, CliError> {
        cli_runtime(&self.load_config()?, &self.data_dir(), store)
    }

    /// Prints `value` as JSON, or `text()` otherwise.
    pub(crate) fn print<T: serde::Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> Result<(), CliError> {
        let out = if self.json {
            serde_json::to_string_pretty(value).map_err(|e| CliError::new("internal", e.to_string()))?
        } else {
            text()
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", out.trim_end());
        Ok(())
    }
}

/// The runtime of a one-shot command, configured like the server's but without the
/// instance pool (one command, few invocations: on-demand allocation starts faster).
/// Compiled code is cached in the data directory when a store is given.
pub(crate) fn cli_runtime(
    config: &Config,
    data_dir: &std::path::Path,
    store: Option<Arc<Store>>,
) -> Result<Runtime, CliError> {
    let mut rc = config.runtime_config(data_dir);
    rc.pooling = false;
    if store.is_none() {
        rc.cache_dir = None;
    }
    let index = store.map(|s| s as Arc<dyn plughost::runtime::ArtifactIndex>);
    Runtime::new(rc, index).map_err(|e| CliError::new("runtime", format!("cannot start the plug-in runtime: {e:#}")))
}

/// An error with a stable code, printed as `error[code]: message`.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) exit: u8,
}

impl CliError {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into(), exit: exit::FAILURE }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        let exit = if matches!(e, StoreError::Locked(_)) { exit::STORE_LOCKED } else { exit::FAILURE };
        CliError { code: e.code().into(), message: e.to_string(), exit }
    }
}

impl From<plughost::pipeline::PipelineError> for CliError {
    fn from(e: plughost::pipeline::PipelineError) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

impl From<plughost::admin::AdminError> for CliError {
    fn from(e: plughost::admin::AdminError) -> Self {
        use plughost::admin::AdminError;
        match e {
            AdminError::Store(s) => s.into(),
            AdminError::Registry(r) => r.into(),
            other => CliError::new(other.code(), other.to_string()),
        }
    }
}

impl From<plughost::registry::RegistryError> for CliError {
    fn from(e: plughost::registry::RegistryError) -> Self {
        if let plughost::registry::RegistryError::Store(s) = e {
            return s.into();
        }
        CliError::new(e.code(), e.to_string())
    }
}

/// Lays rows out in aligned columns; the first row is the header.
pub(crate) fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| if i + 1 == row.len() { cell.clone() } else { format!("{cell:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Reads a file a user named, with an error that says which one.
pub(crate) fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::new("io", format!("cannot read {what} {}: {e}", path.display())))
}

/// Parses a JSON file a user named.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> Result<T, CliError> {
    let bytes = read_file(path, what)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::new("bad_json", format!("{what} {} is not valid: {e}", path.display())))
}

pub(crate) fn kib(bytes: u64) -> String {
    if bytes >= 10 << 20 { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes.div_ceil(1024)) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
