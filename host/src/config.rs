//! Service configuration: defaults, then a TOML file, then environment overrides.
//! `plughost serve` needs no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::{Limits, RuntimeConfig};

/// The address `plughost serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";
/// The config file looked for in the data directory.
pub const CONFIG_FILE: &str = "plughost.toml";
/// The file holding the admin token, created at first start.
pub const TOKEN_FILE: &str = "admin-token";
/// The file holding the worker token (remote workers' credential), created at first start.
pub const WORKER_TOKEN_FILE: &str = "worker-token";
/// The file a running server writes so the CLI can find it.
pub const SERVER_FILE: &str = "server.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// Serve plain HTTP on a non-loopback address (keys then cross the network in
    /// the clear: only behind a TLS-terminating proxy). Without it and without TLS,
    /// `serve` refuses.
    pub insecure: bool,
    /// HTTPS: the server's certificate and key, and the CA clients trust.
    pub tls: TlsSection,
    /// The admin bearer token; when unset, one is created in the data directory.
    pub admin_token: Option<String>,
    /// The worker token (`plughost worker --token`): lease, renew, complete and read
    /// for leased jobs, download assemblies, nothing else. When unset, one is created
    /// in the data directory (`worker-token`).
    pub worker_token: Option<String>,
    /// Largest request body of the data API, in bytes.
    pub max_body_bytes: usize,
    /// Largest component upload, in bytes.
    pub max_assembly_bytes: usize,
    /// Most change sets committed in one transaction.
    pub group_commit_max_batch: usize,
    pub runtime: RuntimeSection,
    /// Default limits of every step.
    pub limits: Limits,
    /// The asynchronous service's worker pool.
    pub workers: crate::worker::WorkerConfig,
    /// Connection timeouts and limits of the HTTP server.
    pub http: crate::server::HttpConfig,
    /// Where the store lives: unset, the embedded redb file in the data directory;
    /// `postgres://user@host:port/db`, a PostgreSQL database (shared by every
    /// `plughost serve` given the same address).
    pub store: Option<String>,
    /// Most connections to a PostgreSQL store this process opens.
    pub store_connections: usize,
    /// Outgoing email over SMTP (`[mail]`).
    pub mail: crate::mail::smtp::MailSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    pub max_memory_bytes: u64,
    pub max_instances: u32,
    pub pooling: bool,
}

/// `[tls]`: `serve` speaks HTTPS when `cert` and `key` are set; the CLI and
/// `plughost worker` trust `ca` (else the web PKI roots) for `https://` servers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain, PEM (PLUGHOST_TLS_CERT).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PLUGHOST_TLS_KEY).
    pub key: Option<PathBuf>,
    /// A CA certificate (PEM) to trust as a client (PLUGHOST_TLS_CA).
    pub ca: Option<PathBuf>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        let d = RuntimeConfig::default();
        RuntimeSection { max_memory_bytes: d.max_memory_bytes, max_instances: d.max_instances, pooling: d.pooling }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            insecure: false,
            tls: TlsSection::default(),
            admin_token: None,
            worker_token: None,
            max_body_bytes: 8 << 20,
            max_assembly_bytes: crate::runtime::MAX_COMPONENT_BYTES,
            group_commit_max_batch: 1024,
            runtime: RuntimeSection::default(),
            limits: Limits::default(),
            workers: crate::worker::WorkerConfig::default(),
            http: crate::server::HttpConfig::default(),
            store: None,
            store_connections: crate::store::DEFAULT_CONNECTIONS,
            mail: crate::mail::smtp::MailSettings::default(),
        }
    }
}

impl Config {
    /// Loads `file` (or `<data_dir>/plughost.toml` if present), then applies
    /// `PLUGHOST_*` environment overrides.
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<Config, String> {
        let default_file = data_dir.join(CONFIG_FILE);
        let path = file.map(Path::to_path_buf).or_else(|| default_file.exists().then_some(default_file));
        let mut config = match &path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                Config::from_toml(&text).map_err(|e| format!("config {} is not valid: {e}", p.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration file's settings (no environment), checked.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.workers.validate()?;
        if self.store_connections < crate::store::MIN_CONNECTIONS {
            return Err(format!(
                "store_connections = {}: at least {} (a write and a read at once)",
                self.store_connections,
                crate::store::MIN_CONNECTIONS
            ));
        }
        self.mail.validate()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls.cert and tls.key go together: set both, or neither".into());
        }
        self.http.validate()
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        /// Each variable, if set, parsed into its setting; a bad value names the variable.
        macro_rules! from_env {
            ($($key:literal => $slot:expr),* $(,)?) => {$(
                if let Some(v) = var($key) {
                    $slot = v.parse().map_err(|_| format!("environment variable {}='{v}' is not valid", $key))?;
                }
            )*};
        }
        from_env! {
            "PLUGHOST_LISTEN" => self.listen,
            "PLUGHOST_MAX_BODY_BYTES" => self.max_body_bytes,
            "PLUGHOST_GROUP_COMMIT_MAX_BATCH" => self.group_commit_max_batch,
            "PLUGHOST_WORKERS" => self.workers.workers,
            "PLUGHOST_LEASE_MS" => self.workers.lease_ms,
            "PLUGHOST_MAX_LEASE_EXPIRATIONS" => self.workers.max_lease_expirations,
            "PLUGHOST_MAX_RETRIES" => self.workers.max_retries,
            "PLUGHOST_RETRY_BACKOFF_MS" => self.workers.backoff_ms,
            "PLUGHOST_COMPLETED_JOB_RETENTION_SECS" => self.workers.completed_job_retention_secs,
            "PLUGHOST_DELETION_SERVICE_RECURRENCE" => self.workers.deletion_service_recurrence,
            "PLUGHOST_HTTP_HEADER_TIMEOUT_MS" => self.http.header_timeout_ms,
            "PLUGHOST_HTTP_BODY_TIMEOUT_MS" => self.http.body_timeout_ms,
            "PLUGHOST_HTTP_MAX_CONNECTIONS" => self.http.max_connections,
            "PLUGHOST_POOLING" => self.runtime.pooling,
            "PLUGHOST_STORE_CONNECTIONS" => self.store_connections,
            "PLUGHOST_MAIL_MAX_PER_MINUTE" => self.mail.max_per_minute,
            "PLUGHOST_MAIL_RETRY_BACKOFF_MS" => self.mail.retry_backoff_ms,
            "PLUGHOST_MAIL_MAX_ATTEMPTS" => self.mail.max_attempts,
            "PLUGHOST_MAIL_INSECURE" => self.mail.insecure,
            "PLUGHOST_MAIL_RECURRENCE" => self.mail.recurrence,
        }
        for (name, slot) in [
            ("PLUGHOST_MAIL_SMTP", &mut self.mail.smtp),
            ("PLUGHOST_MAIL_FROM", &mut self.mail.from),
            ("PLUGHOST_MAIL_USERNAME", &mut self.mail.username),
            ("PLUGHOST_MAIL_PASSWORD", &mut self.mail.password),
        ] {
            if let Some(v) = var(name).filter(|v| !v.is_empty()) {
                *slot = Some(v);
            }
        }
        if let Some(v) = var("PLUGHOST_STORE").filter(|v| !v.is_empty()) {
            self.store = Some(v);
        }
        if let Some(v) = var("PLUGHOST_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = var("PLUGHOST_WORKER_TOKEN") {
            self.worker_token = Some(v);
        }
        for (name, slot) in [
            ("PLUGHOST_TLS_CERT", &mut self.tls.cert),
            ("PLUGHOST_TLS_KEY", &mut self.tls.key),
            ("PLUGHOST_TLS_CA", &mut self.tls.ca),
        ] {
            if let Some(v) = var(name).filter(|v| !v.is_empty()) {
                *slot = Some(PathBuf::from(v));
            }
        }
        Ok(())
    }

    /// Where the store lives (see [`Config::store`]).
    pub fn store_location(&self, data_dir: &Path) -> crate::store::StoreLocation {
        match &self.store {
            Some(s) => crate::store::StoreLocation::parse(s, self.store_connections),
            None => crate::store::StoreLocation::Dir(data_dir.to_owned()),
        }
    }

    pub fn runtime_config(&self, data_dir: &Path) -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: Some(data_dir.join("cache")),
            max_memory_bytes: self.runtime.max_memory_bytes,
            max_instances: self.runtime.max_instances,
            pooling: self.runtime.pooling,
        }
    }

    /// The admin token: configured, or read from (or created in) the data directory.
    pub fn admin_token(&self, data_dir: &Path) -> Result<String, String> {
        token(self.admin_token.as_deref(), &token_path(data_dir), "admin")
    }

    /// The worker token: configured, or read from (or created in) the data directory.
    /// It must differ from the admin token.
    pub fn worker_token(&self, data_dir: &Path) -> Result<String, String> {
        let t = token(self.worker_token.as_deref(), &data_dir.join(WORKER_TOKEN_FILE), "worker")?;
        if t == self.admin_token(data_dir)? {
            return Err("the worker token must differ from the admin token".into());
        }
        Ok(t)
    }
}

/// A configured token, else the one in `path`, else a new random one written there.
fn token(configured: Option<&str>, path: &Path, what: &str) -> Result<String, String> {
    if let Some(t) = configured {
        return Ok(t.to_owned());
    }
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        _ => {}
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    write_private(path, &token).map_err(|e| format!("cannot write the {what} token {}: {e}", path.display()))?;
    Ok(token)
}

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_the_file_and_bad_values_are_named() {
        let mut c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\n[limits]\nfuel = 5\nmemory_bytes = 1\ntimeout_ms = 1\ntrace_bytes = 1\nhost_calls = 1\ninput_bytes = 1\noutput_bytes = 1\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.fuel, 5);
        c.apply_env(|k| (k == "PLUGHOST_LISTEN").then(|| "127.0.0.1:9001".to_owned())).unwrap();
        assert_eq!(c.listen.port(), 9001);
        let err = c.apply_env(|k| (k == "PLUGHOST_MAX_BODY_BYTES").then(|| "lots".to_owned())).unwrap_err();
        assert!(err.contains("PLUGHOST_MAX_BODY_BYTES"));
        assert!(toml::from_str::<Config>("colour = 1").is_err());
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let e = Config::from_toml("store_connections = 1").unwrap_err();
        assert!(e.contains("store_connections = 1") && e.contains("at least 2"), "{e}");
        let e = Config::from_toml("[tls]\ncert = \"c.pem\"\n").unwrap_err();
        assert!(e.contains("tls.cert and tls.key go together"), "{e}");
        assert!(Config::from_toml("[tls]\nca = \"ca.pem\"\n").is_ok(), "a client may trust a CA alone");
    }

    #[test]
    fn the_admin_token_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::default();
        let t1 = c.admin_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        assert_eq!(c.admin_token(dir.path()).unwrap(), t1);
    }
}
