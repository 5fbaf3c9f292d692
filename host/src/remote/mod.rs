//! `plughost worker`: the asynchronous service in its own process, on any machine
//! that reaches the server. It runs the same worker pool and pipeline as `plughost
//! serve`, over the worker protocol (`crate::protocol`): jobs leased over HTTP,
//! reads through the server for the job being run, assemblies downloaded once by
//! hash and compiled into its own disk cache, completions (with their effects) sent
//! back in batches for the server to commit.
//!
//! **Invariants:** the worker keeps nothing durable but its compile cache; a job's
//! effects exist only once the server committed its completion, and a completion
//! from a lease that ended is refused there (fencing tokens), so a worker that dies,
//! hangs or is cut off never causes an effect twice.

mod client;
mod queue;
mod source;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use self::client::{Client, Patience, RemoteError};
pub use self::queue::RemoteQueue;
pub use self::source::{FileArtifacts, RemoteSource};
use crate::pipeline::Pipeline;
use crate::protocol::{Hello, PROTOCOL_VERSION};
use crate::runtime::{ArtifactIndex, Runtime, RuntimeConfig};
use crate::worker::{WorkQueue, WorkerConfig, WorkerPool};

/// How a worker process runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The server's base URL (`http://host:port`).
    pub server: String,
    pub token: String,
    pub name: String,
    pub workers: usize,
    /// Jobs leased at once per worker thread.
    pub batch: usize,
    /// Where compiled code is cached across restarts.
    pub cache_dir: PathBuf,
    pub runtime: RuntimeConfig,
    /// How long in-flight jobs get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long an idle lease request waits at the server for work.
    pub poll: Duration,
    /// What an `https://` server's certificate must chain to (`[tls] ca`).
    pub tls: ureq::tls::TlsConfig,
}

/// A worker's plug-in runtime: `runtime`'s settings, with compiled code cached in
/// `cache_dir` (digests in `cache_dir/index`), so a restart recompiles nothing.
pub fn worker_runtime(cache_dir: &std::path::Path, runtime: RuntimeConfig) -> anyhow::Result<Runtime> {
    let artifacts: Arc<dyn ArtifactIndex> = Arc::new(FileArtifacts::new(cache_dir.join("index"))?);
    Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir.to_owned()), ..runtime }, Some(artifacts))
}

/// A running worker process's parts.
pub struct RemoteWorker {
    pub name: String,
    pub client: Arc<Client>,
    pub pool: Arc<WorkerPool>,
    pub runtime: Arc<Runtime>,
    pub grace: Duration,
}

impl RemoteWorker {
    /// Starts the plug-in runtime, says hello to the server (retrying while it is
    /// unreachable, for up to `connect_for`), loads the registry and starts the pool:
    /// a worker the server lists is ready to lease.
    pub fn start(options: WorkerOptions, connect_for: Duration) -> anyhow::Result<RemoteWorker> {
        let runtime = Arc::new(worker_runtime(&options.cache_dir, options.runtime.clone())?);
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            name: options.name.clone(),
            host: crate::worker::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            workers: options.workers,
        };
        let client = Arc::new(Client::new(&options.server, &options.token, hello, options.tls.clone()));
        let started = std::time::Instant::now();
        let welcome = loop {
            match client.hello() {
                Ok(w) => break w,
                Err(e) if e.code == "unreachable" && started.elapsed() < connect_for => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => anyhow::bail!("{} ({})", e.message, e.code),
            }
        };
        let source = Arc::new(RemoteSource::new(client.clone()));
        let pipeline = Pipeline::remote(source.clone(), runtime, welcome.limits)?;
        let config = WorkerConfig {
            workers: options.workers.max(1),
            batch: options.batch.max(1),
            lease_ms: welcome.lease_ms,
            host_id: Some(options.name.clone()),
            completed_job_retention_secs: welcome.completed_job_retention_secs,
            shutdown_grace_ms: u64::try_from(options.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
            poll_ms: u64::try_from(options.poll.as_millis()).unwrap_or(u64::MAX),
            ..WorkerConfig::default()
        };
        let wait = options.poll.min(Duration::from_millis(welcome.lease_ms / 3));
        let queue: Arc<dyn WorkQueue> = RemoteQueue::new(client.clone(), source, &pipeline, wait, welcome.lease_ms);
        tracing::info!(server = %client.url(), worker = %client.id(), workers = config.workers, "worker started");
        let runtime = pipeline.runtime().clone();
        let pool = WorkerPool::start(pipeline, queue, config, false);
        Ok(RemoteWorker { name: options.name, client, pool, runtime, grace: options.shutdown_grace })
    }

    /// Stops leasing, lets running jobs finish within the grace period and releases
    /// the others; whether every job finished in time.
    /// What this process did: runs, and how it got the plug-ins' code.
    pub fn summary(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (s, rt) = (&self.pool.stats, self.runtime.stats());
        format!(
            "{} succeeded, {} failed, {} refused as stale; {} assemblies compiled, {} loaded from the compile cache",
            s.succeeded.load(Relaxed),
            s.failed.load(Relaxed),
            s.stale.load(Relaxed),
            rt.compiled,
            rt.disk_cache_hits
        )
    }

    pub fn shutdown(&self) -> bool {
        let all = self.pool.shutdown(self.grace);
        self.client.stopping.store(true, Ordering::SeqCst);
        all
    }
}
