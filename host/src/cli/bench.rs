//! `plughost bench api`: durable Create requests per second and latency through a
//! real server on 127.0.0.1, with and without a synchronous plug-in, at 1 and 64
//! concurrent clients, measured in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CliError, Global, table};

#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// Durable Create requests through the HTTP API.
    Api(ApiBench),
}

#[derive(clap::Args)]
pub(crate) struct ApiBench {
    /// The synchronous plug-in to register on Create of account (pre-operation).
    #[arg(long, default_value = "example-plugins/rust/target/wasm32-wasip2/release/account_number.wasm")]
    plugin: PathBuf,
    /// Requests per measurement.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Requests per measurement with a single client (each waits for its own fsync).
    #[arg(long, default_value_t = 300)]
    single_client_requests: usize,
    /// Concurrent clients of the concurrent measurements.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

#[derive(Serialize)]
struct Measurement {
    scenario: &'static str,
    clients: usize,
    requests: usize,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Bench {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        match self {
            Bench::Api(b) => b.run(g),
        }
    }
}

impl ApiBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let wasm = super::read_file(&self.plugin, "plug-in (build example-plugins/rust first, or pass --plugin)")?;
        let dir = tempfile::tempdir().map_err(|e| CliError::new("io", e.to_string()))?;
        let mut config =
            plughost::config::Config { listen: "127.0.0.1:0".parse().expect("address"), ..Default::default() };
        config.admin_token = Some("bench".into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::new("runtime", e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let data_dir = dir.path().to_owned();
        let server = rt.spawn(plughost::server::serve(config, data_dir, Some(tx)));
        let addr = rt.block_on(rx).map_err(|_| CliError::new("serve_failed", "the benchmark server did not start"))?;
        let base = format!("http://{addr}/api/v1");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let admin = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| req.header("Authorization", "Bearer bench");
        for (entity, attrs) in [
            ("account", r#"{"attributes": {"name": "text", "accountnumber": "text"}}"#),
            ("contact", r#"{"attributes": {"name": "text"}}"#),
        ] {
            admin(agent.put(format!("{base}/metadata/entities/{entity}")))
                .header("Content-Type", "application/json")
                .send(attrs)
                .map_err(|e| CliError::new("bench", e.to_string()))?;
        }
        let steps =
            r#"[{"plugin": "account-number", "message": "Create", "entity": "account", "stage": "pre-operation"}]"#;
        let reg = admin(agent.post(format!("{base}/assemblies")))
            .query("name", "account-number")
            .query("steps", steps)
            .send(&wasm[..])
            .map_err(|e| CliError::new("bench", e.to_string()))?;
        if !reg.status().is_success() {
            return Err(CliError::new("bench", format!("registering the plug-in failed: {}", reg.status())));
        }

        let mut results = Vec::new();
        for (scenario, entity) in [("no plug-in", "contact"), ("one sync plug-in", "account")] {
            for (clients, requests) in [(1, self.single_client_requests), (self.clients, self.requests)] {
                results.push(measure(&base, scenario, entity, clients, requests)?);
            }
        }
        rt.block_on(async {
            server.abort();
        });
        let json = serde_json::json!({ "command": "plughost bench api", "measurements": results });
        g.print(&json, || {
            let mut rows =
                vec![["SCENARIO", "CLIENTS", "REQUESTS", "REQ/S", "P50 MS", "P99 MS"].map(String::from).to_vec()];
            for m in &results {
                rows.push(vec![
                    m.scenario.to_owned(),
                    m.clients.to_string(),
                    m.requests.to_string(),
                    format!("{:.0}", m.requests_per_second),
                    format!("{:.2}", m.p50_ms),
                    format!("{:.2}", m.p99_ms),
                ]);
            }
            table(rows)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `clients` threads send `requests` durable creates in all; latency per request.
fn measure(
    base: &str,
    scenario: &'static str,
    entity: &str,
    clients: usize,
    requests: usize,
) -> Result<Measurement, CliError> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/entities/{entity}");
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, url) = (next.clone(), url.clone());
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok(latencies);
                    }
                    let t = Instant::now();
                    let resp = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(format!(r#"{{"name": "bench {i}"}}"#))
                        .map_err(|e| e.to_string())?;
                    if resp.status().as_u16() != 201 {
                        return Err(format!("create answered {}", resp.status()));
                    }
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(requests);
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| CliError::new("bench", "a client thread panicked"))?
                .map_err(|m| CliError::new("bench", m))?,
        );
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Ok(Measurement {
        scenario,
        clients,
        requests: all.len(),
        requests_per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
