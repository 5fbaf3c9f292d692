//! The worker's HTTP client for the worker protocol: the worker token on every call,
//! retries with backoff while the server is unreachable or restarting, and a new
//! `hello` when the server no longer knows this worker (it restarted).

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::protocol::{Hello, PROTOCOL_VERSION, Welcome};
use crate::server::ErrorBody;

/// A failed call: the server's error code and message, or `unreachable`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: String,
    pub message: String,
}

impl RemoteError {
    fn new(code: &str, message: impl Into<String>) -> RemoteError {
        RemoteError { code: code.to_owned(), message: message.into() }
    }

    /// Worth trying again: the server was unreachable, restarting or overloaded.
    pub fn transient(&self) -> bool {
        matches!(self.code.as_str(), "unreachable" | "store_error" | "store_unavailable" | "http")
    }
}

/// How long a call keeps trying.
#[derive(Clone, Copy, Debug)]
pub enum Patience {
    /// One attempt.
    Once,
    /// Retries transient failures until this much time passed (or the worker stops).
    For(Duration),
}

pub struct Client {
    url: String,
    token: String,
    agent: ureq::Agent,
    hello: Hello,
    /// This worker's id at the server, from the last `hello`.
    id: RwLock<Uuid>,
    welcome: RwLock<Option<Welcome>>,
    /// Set on shutdown: retries end.
    pub(crate) stopping: AtomicBool,
    /// Held while saying hello again, so that threads which all met `unknown_worker`
    /// after a server restart introduce this worker once, not once each.
    rehello: std::sync::Mutex<()>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Client {
    pub fn new(url: &str, token: &str, hello: Hello, tls: ureq::tls::TlsConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent,
            hello,
            id: RwLock::new(Uuid::nil()),
            welcome: RwLock::new(None),
            stopping: AtomicBool::new(false),
            rehello: std::sync::Mutex::new(()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn id(&self) -> Uuid {
        *self.id.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Says hello (again); refuses a server of another protocol version.
    pub fn hello(&self) -> Result<Welcome, RemoteError> {
        let welcome: Welcome = self.send("POST", "/worker/hello", Some(&self.hello))?;
        if welcome.protocol != PROTOCOL_VERSION {
            return Err(RemoteError::new(
                "protocol_mismatch",
                format!(
                    "the server speaks worker protocol {} (plughost {}), this worker speaks {PROTOCOL_VERSION} (plughost {}): run the same plughost version on both",
                    welcome.protocol,
                    welcome.server_version,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        *self.id.write().unwrap_or_else(|p| p.into_inner()) = welcome.worker;
        *self.welcome.write().unwrap_or_else(|p| p.into_inner()) = Some(welcome.clone());
        Ok(welcome)
    }

    /// Calls `path` with the body `body(worker id)`, retrying as `patience` allows, and
    /// saying hello again when the server forgot this worker.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        patience: Patience,
        body: impl Fn(Uuid) -> Option<B>,
    ) -> Result<T, RemoteError> {
        self.retrying(path, patience, |worker| self.send(method, path, body(worker).as_ref()))
    }

    /// The raw body of `GET path` (an assembly's bytes), retrying as `patience` allows.
    pub fn get_raw(&self, path: &str, patience: Patience) -> Result<Vec<u8>, RemoteError> {
        self.retrying(path, patience, |_| self.send_raw::<()>("GET", path, None))
    }

    /// Runs `attempt` with this worker's id until it succeeds, fails for good, or
    /// `patience` runs out; says hello again when the server forgot this worker.
    fn retrying<T>(
        &self,
        path: &str,
        patience: Patience,
        attempt: impl Fn(Uuid) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let used = self.id();
            let error = match attempt(used) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let again = match patience {
                Patience::Once => false,
                Patience::For(d) => started.elapsed() < d && !self.stopping.load(Ordering::SeqCst),
            };
            if error.code == "unknown_worker" {
                // The server restarted: introduce ourselves again (unless another thread
                // just did) and retry at once.
                let _once = self.rehello.lock().unwrap_or_else(|p| p.into_inner());
                if self.id() != used {
                    continue;
                }
                match self.hello() {
                    Ok(_) => continue,
                    Err(e) if again && e.transient() => {}
                    Err(e) => return Err(e),
                }
            } else if !(again && error.transient()) {
                return Err(error);
            }
            tracing::debug!(path, "retrying after {error}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RemoteError> {
        let bytes = self.send_raw(method, path, body)?;
        let bytes = if bytes.is_empty() { b"null".to_vec() } else { bytes };
        serde_json::from_slice(&bytes).map_err(|e| {
            RemoteError::new("bad_response", format!("the server's answer to {path} is not understood: {e}"))
        })
    }

    /// The raw answer body of a successful call.
    pub fn send_raw<B: Serialize>(&self, method: &str, path: &str, body: Option<&B>) -> Result<Vec<u8>, RemoteError> {
        let url = format!("{}/api/v1{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let unreachable =
            |e: ureq::Error| RemoteError::new("unreachable", format!("cannot reach the server at {}: {e}", self.url));
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => {
                let json = serde_json::to_vec(b).map_err(|e| RemoteError::new("internal", e.to_string()))?;
                self.agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(&json[..])
            }
            (_, None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut resp = result.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| RemoteError::new("unreachable", format!("reading the server's answer to {path}: {e}")))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => RemoteError { code: e.error.code, message: e.error.message },
            Err(_) => {
                RemoteError::new("http", format!("the server answered {status}: {}", String::from_utf8_lossy(&bytes)))
            }
        })
    }
}
