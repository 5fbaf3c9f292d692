//! `plughost worker`: the asynchronous service for a server elsewhere, and `plughost
//! workers list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use plughost::protocol::WorkerInfo;
use plughost::remote::{RemoteWorker, WorkerOptions};

use super::{CliError, Global};

#[derive(clap::Args)]
pub(crate) struct Worker {
    /// The worker token (the server's <data-dir>/worker-token); `--token` works too.
    #[arg(long, env = "PLUGHOST_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Read the worker token from this file.
    #[arg(long, conflicts_with = "worker_token")]
    token_file: Option<PathBuf>,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Jobs leased at once per worker thread.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// This worker's name in `plughost workers list` (default: hostname-pid).
    #[arg(long)]
    name: Option<String>,
    /// Where compiled plug-ins are cached (default: <data-dir>/worker-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// How long running jobs get to finish after SIGTERM, in ms.
    #[arg(long, default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// How long to keep trying to reach the server at start, in ms.
    #[arg(long, default_value_t = 30_000)]
    connect_timeout_ms: u64,
}

impl Worker {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let server = g.server.clone().ok_or_else(|| {
            CliError::new("invalid", "plughost worker needs --server URL (or PLUGHOST_SERVER): the server to work for")
        })?;
        let token = match (&self.worker_token, &self.token_file, &g.token) {
            (Some(t), _, _) => t.clone(),
            (None, Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| CliError::new("invalid", format!("cannot read the worker token {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            (None, None, Some(t)) => t.clone(),
            (None, None, None) => {
                return Err(CliError::new(
                    "invalid",
                    "plughost worker needs the worker token: --token, --worker-token, --token-file or PLUGHOST_WORKER_TOKEN",
                ));
            }
        };
        let config = g.load_config()?;
        let cache_dir = self.cache_dir.unwrap_or_else(|| g.data_dir().join("worker-cache"));
        let workers = self.workers.unwrap_or(config.workers.workers).max(1);
        let name = self.name.unwrap_or_else(|| plughost::worker::WorkerConfig::default().host_id());
        let options = WorkerOptions {
            server,
            token,
            name,
            workers,
            batch: self.batch.max(1),
            runtime: config.runtime_config(&cache_dir),
            cache_dir,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            poll: Duration::from_millis(config.workers.poll_ms.max(50)),
            tls: plughost::server::tls_client_config(config.tls.ca.as_deref())
                .map_err(|m| CliError::new("bad_config", m))?,
        };
        let worker = RemoteWorker::start(options, Duration::from_millis(self.connect_timeout_ms))
            .map_err(|e| CliError::new("worker_failed", format!("{e:#}")))?;
        eprintln!(
            "plughost worker {} serving {} with {workers} workers (worker id {})",
            worker.name,
            worker.client.url(),
            worker.client.id()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::new("runtime", format!("cannot start tokio: {e}")))?;
        rt.block_on(plughost::server::shutdown_signal());
        if !worker.shutdown() {
            tracing::warn!(
                "some jobs were still running after the grace period; their leases will expire and they will run again"
            );
        }
        eprintln!("plughost worker stopped: {}", worker.summary());
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Subcommand)]
pub(crate) enum Workers {
    /// Every remote worker the server knows: name, host, pid, version, heartbeat, jobs.
    List,
}

impl Workers {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let Workers::List = self;
        let workers = g.backend()?.remote_workers()?;
        g.print(&workers, || text(&workers))?;
        Ok(ExitCode::SUCCESS)
    }
}

fn text(workers: &[WorkerInfo]) -> String {
    if workers.is_empty() {
        return "no remote workers\n".into();
    }
    let mut out = format!(
        "{:<24} {:<16} {:>7} {:<8} {:<25} {:>6} {:>8} {:>8} {}\n",
        "NAME", "HOST", "PID", "VERSION", "LAST HEARTBEAT", "LEASED", "DONE", "FAILED", "STATE"
    );
    for w in workers {
        out.push_str(&format!(
            "{:<24} {:<16} {:>7} {:<8} {:<25} {:>6} {:>8} {:>8} {}\n",
            w.name,
            w.host,
            w.pid,
            w.version,
            plughost::model::Value::DateTime(w.last_heartbeat).to_string(),
            w.leased,
            w.done,
            w.failures,
            if w.lost { "lost" } else { "alive" }
        ));
    }
    out
}
