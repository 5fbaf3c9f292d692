//! `plughost serve`: the HTTP JSON API under `/api/v1` (data, custom messages,
//! registry, metadata, jobs), `/healthz`, and graceful shutdown.
//!
//! **Invariant:** handlers translate HTTP to library calls and back; no business
//! rule lives here. Pipeline work runs on blocking threads (plug-ins block).

mod api;
mod auth;
mod error;
mod identity;
mod listen;
mod mail;
mod openapi;
mod tls;
mod ui;
mod workers;
mod workflows;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::api::{DefineBody, IdBody, ImportQuery, MessageBody, PostponeBody, app};
pub use self::auth::{Authenticator, USER_HEADER};
pub use self::error::{ApiError, ErrorBody, ErrorDetail};
pub use self::identity::{NewRoleBody, NewUserBody, RolesBody};
pub use self::listen::HttpConfig;
pub use self::openapi::operations as openapi_operations;
pub use self::tls::client_config as tls_client_config;
pub use self::ui::{MAX_SESSIONS, SCAN_BUDGET, SESSION_COOKIE, SESSION_TTL_MS, Sessions};
use crate::admin::Admin;
use crate::config::{Config, SERVER_FILE};
use crate::pipeline::Pipeline;
use crate::runtime::{ArtifactIndex, Runtime};
use crate::security::{ADMIN_USER, SYSTEM_ADMINISTRATOR, WORKER_ROLE, WORKER_USER};
use crate::store::{Committer, JobQueue, Store};
use crate::worker::{WorkQueue, WorkerPool};

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The operations every handler calls.
    pub admin: Arc<Admin>,
    /// Checks API keys (the admin and worker tokens are keys too).
    pub auth: Arc<Authenticator>,
    /// Listening on loopback only: foreign `Host` headers are refused.
    pub loopback: bool,
    pub config: Arc<Config>,
    /// The dashboard's sessions.
    pub ui: Arc<ui::Sessions>,
    /// Becomes true when the server begins to shut down: long responses (the
    /// dashboard's event streams) end instead of holding the shutdown up.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// What a running server tells the CLI about itself (`<data dir>/server.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub url: String,
    pub pid: u32,
}

impl ServerInfo {
    pub fn read(data_dir: &Path) -> Option<ServerInfo> {
        let text = std::fs::read_to_string(data_dir.join(SERVER_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Opens the store and the runtime and starts the writer: everything `serve` and
/// one-shot CLI data commands need.
pub fn open_host(config: &Config, data_dir: &Path) -> anyhow::Result<Arc<Pipeline>> {
    // The data directory holds the tokens and the compile cache whatever the store.
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", data_dir.display()))?;
    let store = Arc::new(Store::open_at(&config.store_location(data_dir))?);
    let runtime =
        Arc::new(Runtime::new(config.runtime_config(data_dir), Some(store.clone() as Arc<dyn ArtifactIndex>))?);
    let committer = Committer::start(store.clone(), config.group_commit_max_batch);
    Ok(Pipeline::new(store, runtime, committer, config.limits)?)
}

/// Runs the server until SIGINT or SIGTERM; `ready` receives the bound address.
pub async fn serve(
    config: Config,
    data_dir: PathBuf,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let deletion_service = config.workers.deletion_service().map_err(anyhow::Error::msg)?.map(str::to_owned);
    let pipeline = tokio::task::block_in_place(|| open_host(&config, &data_dir))?;
    let queue = JobQueue::new(pipeline.store().clone(), pipeline.committer().clone())
        .with_max_lease_expirations(config.workers.max_lease_expirations);
    tokio::task::block_in_place(|| queue.ensure_deletion_service(deletion_service.as_deref()))?;
    // With `[mail] smtp`, the outgoing-mail job exists and this process's pool sends.
    let mut config = config;
    if config.mail.smtp.is_some() {
        let mailer = crate::mail::smtp::Mailer::new(&config.mail).map_err(anyhow::Error::msg)?;
        tracing::info!(smtp = %mailer.shown_url(), "outgoing mail enabled");
        config.workers.mailer = Some(Arc::new(mailer));
    }
    let recurrence = config.mail.smtp.is_some().then(|| config.mail.recurrence.clone());
    tokio::task::block_in_place(|| queue.ensure_outgoing_mail(recurrence.as_deref()))?;
    let admin_token = config.admin_token(&data_dir).map_err(anyhow::Error::msg)?;
    let worker_token = config.worker_token(&data_dir).map_err(anyhow::Error::msg)?;
    // The tokens are keys: the admin token of the first System Administrator, the
    // worker token of the worker user.
    tokio::task::block_in_place(|| {
        let store = pipeline.store();
        // Labelled by this instance: a new token here revokes this instance's old one,
        // never another instance's on a shared store.
        let instance = format!("{}:{}", crate::worker::hostname(), data_dir.display());
        store.ensure_token_key(
            ADMIN_USER,
            SYSTEM_ADMINISTRATOR,
            &format!("admin token of {instance}"),
            &admin_token,
        )?;
        store.ensure_token_key(WORKER_USER, WORKER_ROLE, &format!("worker token of {instance}"), &worker_token)
    })?;
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    if !config.listen.ip().is_loopback() && tls.is_none() && !config.insecure {
        anyhow::bail!(
            "refusing to serve plain HTTP on {}, which is not a loopback address: API keys would cross the network in the clear. Configure [tls] cert and key (HTTPS), or, behind a TLS-terminating proxy, pass --insecure (insecure = true)",
            config.listen
        );
    }
    if !config.listen.ip().is_loopback() && tls.is_none() {
        tracing::warn!(listen = %config.listen, "serving plain HTTP on a non-loopback address (--insecure)");
        eprintln!(
            "plughost: WARNING: plain HTTP on {} (--insecure): keys cross the network in the clear",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {}: {e} (is another server running? use --listen)", config.listen)
    })?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let info = ServerInfo { url: format!("{scheme}://{addr}"), pid: std::process::id() };
    let info_path = data_dir.join(SERVER_FILE);
    std::fs::write(&info_path, serde_json::to_vec(&info)?)?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "plughost is serving");
    eprintln!("plughost serving on {} (data in {})", info.url, data_dir.display());
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let mut admin = tokio::task::block_in_place(|| Admin::new(pipeline.clone(), queue.clone()))?
        .with_worker_config(&config.workers, config.limits);
    let workers = if config.workers.workers > 0 {
        let queue: Arc<dyn WorkQueue> = Arc::new(queue.clone());
        Some(WorkerPool::start(pipeline.clone(), queue, config.workers.clone(), admin.is_paused()))
    } else if config.workers.mailer.is_some() {
        // Remote workers run the jobs; the outgoing mail needs this process's SMTP
        // settings: one thread that leases only the outgoing-mail job.
        let queue: Arc<dyn WorkQueue> = Arc::new(queue.leasing(crate::store::LeaseFilter::OnlyMail));
        let config = crate::worker::WorkerConfig { workers: 1, batch: 1, ..config.workers.clone() };
        Some(WorkerPool::start(pipeline.clone(), queue, config, admin.is_paused()))
    } else {
        None
    };
    let grace = std::time::Duration::from_millis(config.workers.shutdown_grace_ms);
    let http = config.http.clone();
    if let Some(w) = &workers {
        admin = admin.with_workers(w.clone(), config.workers.workers);
    }
    let auth = Arc::new(Authenticator::new(pipeline.clone()));
    let loopback = addr.ip().is_loopback();
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let state = AppState {
        admin: Arc::new(admin),
        auth,
        loopback,
        config: Arc::new(config),
        ui: Arc::new(ui::Sessions::default()),
        stopping,
    };
    if pipeline.store().is_shared() {
        // Other `serve` processes on the same database change the registry and the
        // service state: follow them (correctness of jobs never depends on this).
        let admin = state.admin.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let admin = admin.clone();
                match tokio::task::spawn_blocking(move || admin.follow_store()).await {
                    Ok(Err(e)) => tracing::warn!("cannot follow the shared store: {e}"),
                    Err(e) => tracing::warn!("following the shared store stopped: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        });
    }
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    listen::serve(listener, app(state), &http, shutdown, grace, tls).await;
    if let Some(w) = workers {
        // Stop leasing; in-flight jobs finish within the grace period, unstarted ones go back.
        let all = tokio::task::spawn_blocking(move || w.shutdown(grace)).await.unwrap_or(false);
        if !all {
            tracing::warn!(
                "some jobs were still running after the grace period; their leases will expire and they will run again"
            );
        }
    }
    let _ = std::fs::remove_file(&info_path);
    tracing::info!("plughost stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("plughost: shutting down");
}
