//! `plughost bench api`: durable Create requests per second and latency through a
//! real server on 127.0.0.1, with and without a synchronous plug-in, at 1 and 64
//! concurrent clients, measured in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plughost::jobs::JobStatus;
use serde::Serialize;

use super::{CliError, Global, table};

mod invoke;
mod mail;

#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// Durable Create requests through the HTTP API.
    Api(ApiBench),
    /// Durable system-job throughput against the bare-wasmtime baseline.
    Queue(QueueBench),
    /// Leasing cost with a small and a large backlog of waiting jobs.
    Lease(LeaseBench),
    /// Workflow runs per second (three steps, no waits) against plain async step jobs.
    Workflows(WorkflowBench),
    /// The dashboard's jobs page (first pages, filters, a deep page) and overview with
    /// 1,000 and with 1,000,000 jobs in the store, through a real server.
    Dashboard(DashboardBench),
    /// Emails rendered (bulk mail) and delivered (outgoing mail) per second to an SMTP
    /// sink on 127.0.0.1, against a bulk import and bare SMTP sends.
    Mail(mail::MailBench),
    /// What one invocation of each component costs (size, compile, a fresh and a
    /// kept instance), as ratios to the first: the example plug-ins of each language.
    Invoke(invoke::InvokeBench),
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
    /// Let the synchronous step reuse an instance for up to this many invocations
    /// (0: a fresh instance per request).
    #[arg(long, default_value_t = 0)]
    reuse: u32,
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
            Bench::Queue(b) => b.run(g),
            Bench::Lease(b) => b.run(g),
            Bench::Workflows(b) => b.run(g),
            Bench::Dashboard(b) => b.run(g),
            Bench::Mail(b) => b.run(g),
            Bench::Invoke(b) => b.run(g),
        }
    }
}

impl ApiBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let wasm = super::read_file(&self.plugin, "plug-in (build example-plugins/rust first, or pass --plugin)")?;
        let dir = tempfile::tempdir().map_err(|e| CliError::new("io", e.to_string()))?;
        let mut config = plughost::config::Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            // `--store URL`: the server's store is that PostgreSQL database.
            store: g.load_config()?.store,
            ..Default::default()
        };
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
        let steps = format!(
            r#"[{{"plugin": "account-number", "message": "Create", "entity": "account", "stage": "pre-operation", "instance_reuse": {}}}]"#,
            self.reuse
        );
        let reg = admin(agent.post(format!("{base}/assemblies")))
            .query("name", "account-number")
            .query("steps", &steps)
            .header("Content-Type", "application/wasm")
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
        let store = g.load_config()?.store.map_or("redb", |_| "postgres");
        let json = serde_json::json!({ "command": "plughost bench api", "store": store, "instance_reuse": self.reuse, "measurements": results });
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
                        .header("Authorization", "Bearer bench")
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

#[derive(clap::Args)]
pub(crate) struct QueueBench {
    /// The trivial plug-in run by every job (the hostile plug-in's "ok" mode).
    #[arg(long, default_value = "example-plugins/rust/target/wasm32-wasip2/release/hostile.wasm")]
    plugin: PathBuf,
    /// Jobs to pre-queue and drain.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Worker threads (and baseline threads).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
    workers: usize,
    /// Jobs each worker leases at once.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Let the step reuse an instance for up to this many jobs (0: a fresh instance per job).
    #[arg(long, default_value_t = 0)]
    reuse: u32,
    /// Where the benchmark's store lives (default: a temporary directory in the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also drain the same jobs with this many `plughost worker` processes over HTTP
    /// (against `plughost serve` with no workers of its own), in the same run.
    #[arg(long, default_value_t = 0)]
    remote_workers: usize,
    /// Also drain the same number of jobs with 1, then 2, ... up to this many
    /// `plughost serve` processes on the same PostgreSQL store (`--store`), each with
    /// `--workers` workers, in the same run, and again from this many down to 1 (each
    /// count's figure is the mean of its two drains).
    #[arg(long, default_value_t = 0)]
    instances: usize,
}

/// The server's writer during a remote drain.
#[derive(Serialize)]
struct RemoteWriter {
    commits: u64,
    operations_per_commit: f64,
    commit_share: f64,
    apply_share: f64,
}

/// A benchmark's plug-in bytes and its host: a store in a temporary directory under
/// `dir` (or the configured PostgreSQL store), which goes when the directory does.
fn bench_host(
    g: &Global,
    plugin: &std::path::Path,
    dir: Option<&std::path::Path>,
) -> Result<(Vec<u8>, tempfile::TempDir, plughost::config::Config, Arc<plughost::pipeline::Pipeline>), CliError> {
    let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
    let wasm = super::read_file(plugin, "plug-in (build example-plugins/rust first, or pass --plugin)")?;
    let tmp = tempfile::tempdir_in(dir.unwrap_or(std::path::Path::new("."))).map_err(|e| fail(&e))?;
    let config = plughost::config::Config { store: g.load_config()?.store, ..Default::default() };
    let pipeline = plughost::server::open_host(&config, tmp.path()).map_err(|e| fail(&e))?;
    Ok((wasm, tmp, config, pipeline))
}

/// The benchmark step: the hostile plug-in's "ok" mode, asynchronous on Create of `bench`.
fn bench_step(
    pipeline: &Arc<plughost::pipeline::Pipeline>,
    wasm: &[u8],
    reuse: u32,
) -> Result<(plughost::registry::Registration, plughost::model::ExecutionContext), CliError> {
    use plughost::model::{ExecutionContext, Mode, Stage};
    let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
    let spec = plughost::registry::StepSpec {
        plugin: "bench".into(),
        message: "Create".into(),
        entity: Some("bench".into()),
        stage: Stage::PostOperation,
        mode: Mode::Asynchronous,
        configuration: Some("ok".into()),
        instance_reuse: reuse,
        ..Default::default()
    };
    let reg = plughost::registry::register(pipeline.store(), pipeline.runtime(), wasm, "bench", None, vec![spec])
        .map_err(|e| fail(&e))?;
    pipeline.reload_steps().map_err(|e| fail(&e))?;
    let context = ExecutionContext {
        configuration: Some("ok".into()),
        mode: Mode::Asynchronous,
        stage: Stage::PostOperation,
        step_id: Some(reg.steps[0].id),
        ..Default::default()
    };
    Ok((reg, context))
}

/// Queues `jobs` runs of the benchmark step, 10,000 per commit.
fn prequeue(
    pipeline: &plughost::pipeline::Pipeline,
    reg: &plughost::registry::Registration,
    context: &plughost::model::ExecutionContext,
    jobs: usize,
) -> Result<(), CliError> {
    let step = &reg.steps[0];
    let make =
        |_| plughost::jobs::SystemJob::plugin_execution(&step.name, step.id, Some(reg.assembly.hash), context.clone());
    let mut queued = 0;
    while queued < jobs {
        let n = (jobs - queued).min(10_000);
        pipeline
            .committer()
            .commit_blocking(plughost::store::ChangeSet { jobs: (0..n).map(make).collect(), ..Default::default() })
            .map_err(|e| CliError::new("bench", e.to_string()))?;
        queued += n;
    }
    Ok(())
}

impl QueueBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        use plughost::store::{Committer, JobQueue, Store};

        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let (wasm, tmp, config, pipeline) = bench_host(g, &self.plugin, self.dir.as_deref())?;
        let store: Arc<Store> = pipeline.store().clone();
        if store.job_counts().map_err(|e| fail(&e))?.by_status.iter().any(|(_, _, n)| *n > 0) {
            return Err(CliError::new(
                "bench",
                format!(
                    "the store {} already holds jobs: give the benchmark an empty database",
                    store.path().display()
                ),
            ));
        }
        let (reg, context) = bench_step(&pipeline, &wasm, self.reuse)?;

        // 1. The bare-wasmtime baseline: same component, same engine, same thread count.
        let plugin = pipeline.runtime().load(&reg.assembly.hash, || Ok(wasm.clone())).map_err(|e| fail(&e))?;
        let per_thread = (self.jobs / self.workers).max(1);
        let timed = |f: &(dyn Fn() -> usize + Sync)| {
            let t = Instant::now();
            let n: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..self.workers).map(|_| s.spawn(f)).collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            n as f64 / t.elapsed().as_secs_f64()
        };
        let baseline =
            timed(&|| plughost::baselines::bare_wasmtime_calls(pipeline.runtime(), &plugin, &context, per_thread));
        // 2. plughost's invocation (limits, trace log, conversions, classification), no store.
        let limits = plughost::runtime::Limits::default();
        let invoke = timed(&|| {
            (0..per_thread)
                .filter(|_| {
                    pipeline
                        .runtime()
                        .invoke(&plugin, &context, &limits, Arc::new(plughost::runtime::NoData))
                        .outcome
                        .is_ok()
                })
                .count()
        });

        // 3. The durable queue: pre-queue, then drain with the worker pool.
        let committer: Committer = pipeline.committer().clone();
        prequeue(&pipeline, &reg, &context, self.jobs)?;
        let stats = committer.stats();
        let counted = || {
            use std::sync::atomic::Ordering::Relaxed;
            (
                stats.commits.load(Relaxed),
                stats.operations.load(Relaxed),
                stats.commit_us.load(Relaxed),
                stats.apply_us.load(Relaxed),
            )
        };
        let before = counted();
        let queue = JobQueue::new(store.clone(), committer.clone());
        let (elapsed, workers) = drain(&pipeline, &queue, self.workers, self.batch, self.jobs)?;
        let drained = self.jobs as f64 / elapsed;
        let after = counted();
        let (commits, operations, commit_us) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        let apply_us = after.3 - before.3;
        workers.shutdown(Duration::from_secs(5));
        // 4. The raw redb loop: the least durable work per job on this disk, same batch.
        let raw_dir = tempfile::tempdir_in(tmp.path()).map_err(|e| fail(&e))?;
        let raw = plughost::baselines::raw_redb_queue(raw_dir.path(), self.jobs, self.batch * self.workers, 256)
            .map_err(|e| fail(&e))?;
        // 5. The same drain by remote worker processes over HTTP.
        let engine = store.engine_name();
        drop((workers, queue, committer, store, pipeline));
        let remote = match self.remote_workers {
            0 => None,
            n => Some(self.remote_drain(&wasm, tmp.path(), n)?),
        };
        // Each count of processes' drains, for 1, 2, ... processes.
        let mut instances: Vec<Vec<f64>> = Vec::new();
        if self.instances > 0 {
            let Some(url) = config.store.clone() else {
                return Err(CliError::new("bench", "--instances needs a PostgreSQL store (--store URL)"));
            };
            // 1, 2, ..., N, then N, ..., 2, 1: every drain leaves its jobs in the
            // database, so a later drain runs on a bigger one; in this order each count
            // of processes meets, on average, the same database size.
            let order: Vec<usize> = (1..=self.instances).chain((1..=self.instances).rev()).collect();
            instances = vec![Vec::new(); self.instances];
            for (k, n) in order.into_iter().enumerate() {
                let dir = tmp.path().join(format!("instances-{k}-{n}"));
                instances[n - 1].push(self.instances_drain(&url, &wasm, &dir, n)?);
            }
        }
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;

        let json = serde_json::json!({
            "command": "plughost bench queue",
            "store": engine,
            "jobs": self.jobs,
            "workers": self.workers,
            "batch": self.batch,
            "instance_reuse": self.reuse,
            "baseline_calls_per_second": baseline,
            "invoke_calls_per_second": invoke,
            "queue_jobs_per_second": drained,
            "invoke_vs_baseline": invoke / baseline,
            "queue_vs_baseline": drained / baseline,
            "raw_redb_jobs_per_second": raw,
            "queue_vs_raw_redb": drained / raw,
            "drain_commits": commits,
            "drain_operations_per_commit": operations as f64 / commits.max(1) as f64,
            "drain_commit_share": commit_us as f64 / 1e6 / elapsed,
            "drain_apply_share": apply_us as f64 / 1e6 / elapsed,
            "remote_workers": self.remote_workers,
            "remote_jobs_per_second": remote.as_ref().map(|r| r.0),
            "remote_vs_in_process": remote.as_ref().map(|r| r.0 / drained),
            "remote_writer": remote.as_ref().map(|r| &r.1),
            "instances_jobs_per_second": instances.iter().enumerate().map(|(i, r)| ((i + 1).to_string(), mean(r))).collect::<std::collections::BTreeMap<_, _>>(),
            "instances_runs_jobs_per_second": instances.iter().enumerate().map(|(i, r)| ((i + 1).to_string(), r)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        g.print(&json, || {
            table(vec![
                vec!["MEASURE".into(), "PER SECOND".into(), "VS BASELINE".into()],
                vec!["bare wasmtime instantiate+call (baseline)".into(), format!("{baseline:.0}"), "1.00".into()],
                vec![
                    "plughost invoke (fresh instance, limits)".into(),
                    format!("{invoke:.0}"),
                    format!("{:.2}", invoke / baseline),
                ],
                vec![
                    format!("durable queue drain on {engine} (instance reuse {})", self.reuse),
                    format!("{drained:.0}"),
                    format!("{:.2}", drained / baseline),
                ],
                vec!["raw redb queue loop (no plug-in, no plughost)".into(), format!("{raw:.0}"), format!("{:.2}", raw / baseline)],
            ]) + &remote.as_ref().map_or(String::new(), |(r, w)| format!(
                "remote drain: {} `plughost worker` processes over HTTP: {r:.0} jobs/s, {:.2}x the in-process drain; server writer: {} commits of {:.1} operations, {:.0}% applying, {:.0}% committing\n",
                self.remote_workers,
                r / drained,
                w.commits,
                w.operations_per_commit,
                100.0 * w.apply_share,
                100.0 * w.commit_share
            )) + &instances.iter().enumerate().map(|(i, r)| format!(
                "{} `plughost serve` process(es) on the store, {} workers each: {:.0} jobs/s ({}), {:.2}x one\n",
                i + 1,
                self.workers,
                mean(r),
                r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / "),
                mean(r) / mean(&instances[0])
            )).collect::<String>() + &format!(
                "drain: {:.2}x the raw redb loop; {commits} commits of {:.1} operations; the writer spent {:.0}% of the time applying operations and {:.0}% committing\n",
                drained / raw,
                operations as f64 / commits.max(1) as f64,
                100.0 * apply_us as f64 / 1e6 / elapsed,
                100.0 * commit_us as f64 / 1e6 / elapsed
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Args)]
pub(crate) struct WorkflowBench {
    /// The plug-in of the plain step and of the workflow's activity (the hostile
    /// plug-in's "ok" mode).
    #[arg(long, default_value = "example-plugins/rust/target/wasm32-wasip2/release/hostile.wasm")]
    plugin: PathBuf,
    /// Workflow runs, and plain step jobs, to pre-queue and drain.
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
    workers: usize,
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Where the benchmark's store lives (default: a temporary directory in the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The benchmark's workflow: create a record, update the primary one, call an activity.
const BENCH_WORKFLOW: &str = r#"{"name": "bench-flow", "entity": "bench", "triggers": {"on_demand": true}, "steps": [
    {"type": "create", "entity": "benchtask", "attributes": {"subject": "for {{record.title}}", "regardingobjectid": "{{record.id}}"}},
    {"type": "update", "attributes": {"title": "{{record.title}} (seen)"}},
    {"type": "activity", "plugin": "bench", "configuration": "ok"}]}"#;

impl WorkflowBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        use plughost::jobs::SystemJob;
        use plughost::metadata::{AttributeType, EntityDefinition};
        use plughost::model::Value;
        use plughost::store::{ChangeSet, JobQueue, RecordChange, StoredRecord};
        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let (wasm, _tmp, _, pipeline) = bench_host(g, &self.plugin, self.dir.as_deref())?;
        let store = pipeline.store().clone();
        let committer = pipeline.committer().clone();
        let queue = JobQueue::new(store.clone(), committer.clone());
        let admin = plughost::admin::Admin::new(pipeline.clone(), queue.clone()).map_err(|e| fail(&e))?;
        for (name, attributes) in [
            ("bench", vec![("title", AttributeType::Text)]),
            ("benchtask", vec![("subject", AttributeType::Text), ("regardingobjectid", AttributeType::Reference)]),
        ] {
            let attributes = attributes.into_iter().map(|(a, t)| (a.to_owned(), t)).collect();
            admin.define_entity(&EntityDefinition { name: name.into(), attributes }).map_err(|e| fail(&e))?;
        }
        let (reg, context) = bench_step(&pipeline, &wasm, 0)?;

        // 1. Plain async step jobs: the baseline, measured in this run.
        prequeue(&pipeline, &reg, &context, self.runs)?;
        let (secs, pool) = drain(&pipeline, &queue, self.workers, self.batch, self.runs)?;
        pool.shutdown(Duration::from_secs(5));
        let steps_per_second = self.runs as f64 / secs;

        // 2. Workflow runs, one per record, each three steps.
        admin.workflow_create(BENCH_WORKFLOW.as_bytes(), plughost::security::SYSTEM_USER).map_err(|e| fail(&e))?;
        admin.workflow_set_active("bench-flow", true).map_err(|e| fail(&e))?;
        let flow =
            pipeline.active_workflow("bench-flow").ok_or_else(|| CliError::new("bench", "no active workflow"))?;
        let mut queued = 0;
        while queued < self.runs {
            let n = (self.runs - queued).min(5_000);
            let mut changes = ChangeSet::default();
            for i in 0..n {
                let id = uuid::Uuid::now_v7();
                let title = Value::Text(format!("record {}", queued + i));
                let stored = StoredRecord {
                    version: 1,
                    created_on: 0,
                    modified_on: 0,
                    attributes: [("title".to_owned(), title)].into(),
                };
                let record = stored.to_entity("bench", id);
                changes.records.push(RecordChange {
                    entity: "bench".into(),
                    id,
                    expected_version: None,
                    new: Some(stored),
                });
                let who = plughost::pipeline::Who::user(plughost::security::SYSTEM_USER);
                let job: SystemJob =
                    plughost::pipeline::workflow_job(&flow, record, "OnDemand", who, 1, uuid::Uuid::new_v4());
                changes.jobs.push(job);
            }
            committer.commit_blocking(changes).map_err(|e| fail(&e))?;
            queued += n;
        }
        let (secs, pool) = drain(&pipeline, &queue, self.workers, self.batch, self.runs)?;
        pool.shutdown(Duration::from_secs(5));
        let runs_per_second = self.runs as f64 / secs;
        let engine = store.engine_name();
        let json = serde_json::json!({
            "command": "plughost bench workflows",
            "store": engine,
            "runs": self.runs,
            "workers": self.workers,
            "plain_step_jobs_per_second": steps_per_second,
            "workflow_runs_per_second": runs_per_second,
            "workflow_steps_per_second": 3.0 * runs_per_second,
            "runs_vs_plain_jobs": runs_per_second / steps_per_second,
        });
        g.print(&json, || {
            table(vec![
                vec!["MEASURE".into(), "PER SECOND".into(), "VS PLAIN JOBS".into()],
                vec![
                    format!("plain async step jobs on {engine} (baseline)"),
                    format!("{steps_per_second:.0}"),
                    "1.00".into(),
                ],
                vec![
                    "workflow runs (create, update, activity)".into(),
                    format!("{runs_per_second:.0}"),
                    format!("{:.2}", runs_per_second / steps_per_second),
                ],
                vec![
                    "workflow steps".into(),
                    format!("{:.0}", 3.0 * runs_per_second),
                    format!("{:.2}", 3.0 * runs_per_second / steps_per_second),
                ],
            ])
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Drains the queue with an in-process worker pool until `jobs` jobs have completed
/// (any failure is an error); returns the seconds it took and the pool, still running.
pub(super) fn drain(
    pipeline: &Arc<plughost::pipeline::Pipeline>,
    queue: &plughost::store::JobQueue,
    workers: usize,
    batch: usize,
    jobs: usize,
) -> Result<(f64, Arc<plughost::worker::WorkerPool>), CliError> {
    use plughost::worker::{WorkerConfig, WorkerPool};
    let done_before: u64 = completed(queue)?;
    let started = Instant::now();
    let pool = WorkerPool::start(
        pipeline.clone(),
        Arc::new(queue.clone()),
        WorkerConfig { workers, batch, poll_ms: 5, ..WorkerConfig::default() },
        false,
    );
    loop {
        if completed(queue)? - done_before >= jobs as u64 {
            let failed = jobs_in(queue.store(), &[JobStatus::Failed])?;
            if failed > 0 {
                return Err(CliError::new("bench", format!("{failed} benchmark jobs failed")));
            }
            return Ok((started.elapsed().as_secs_f64(), pool));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many jobs have completed (succeeded or failed).
fn completed(queue: &plughost::store::JobQueue) -> Result<u64, CliError> {
    jobs_in(queue.store(), &[JobStatus::Succeeded, JobStatus::Failed])
}

/// How many jobs have one of `statuses`. Drains poll it every few ms: status counts
/// only (counting the ready index would read all of it on PostgreSQL).
fn jobs_in(store: &plughost::store::Store, statuses: &[JobStatus]) -> Result<u64, CliError> {
    let counts = store.status_counts().map_err(|e| CliError::new("bench", e.to_string()))?;
    Ok(counts.iter().filter(|(s, _)| statuses.contains(s)).map(|(_, n)| n).sum())
}

/// Stops the benchmark's child processes with SIGTERM and waits for each.
fn stop(children: &mut [std::process::Child]) {
    for c in children.iter_mut() {
        let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

impl QueueBench {
    /// Drains `self.jobs` jobs with `n` `plughost serve` processes on the PostgreSQL
    /// store `url`: jobs per second from the moment the paused service resumes on every
    /// process (each ran a few jobs first, so its compile cache is warm) until all are done.
    fn instances_drain(&self, url: &str, wasm: &[u8], dir: &std::path::Path, n: usize) -> Result<f64, CliError> {
        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let config = plughost::config::Config { store: Some(url.to_owned()), ..Default::default() };
        let pipeline = plughost::server::open_host(&config, dir).map_err(|e| fail(&e))?;
        let (reg, context) = bench_step(&pipeline, wasm, self.reuse)?;
        let store = pipeline.store().clone();
        store.set_service_paused(true).map_err(|e| fail(&e))?;
        let succeeded = || -> Result<u64, CliError> {
            let failed = jobs_in(&store, &[JobStatus::Failed])?;
            if failed > 0 {
                return Err(CliError::new("bench", format!("{failed} benchmark jobs failed")));
            }
            jobs_in(&store, &[JobStatus::Succeeded])
        };
        let exe = std::env::current_exe().map_err(|e| fail(&e))?;
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for i in 0..n {
            let data = dir.join(format!("serve-{i}"));
            let child = std::process::Command::new(&exe)
                .arg("--data-dir")
                .arg(&data)
                .args(["--store", url, "serve", "--listen", "127.0.0.1:0"])
                .env("PLUGHOST_WORKERS", self.workers.to_string())
                .env("PLUGHOST_ADMIN_TOKEN", "bench")
                .env("PLUGHOST_COMPLETED_JOB_RETENTION_SECS", "0")
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| fail(&e))?;
            children.push(child);
            let waited = Instant::now();
            let info = loop {
                if let Some(info) = plughost::server::ServerInfo::read(&data) {
                    break info;
                }
                if waited.elapsed() > Duration::from_secs(60) {
                    stop(&mut children);
                    return Err(CliError::new("bench", "a benchmark server did not start within 60 s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            urls.push(info.url);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let service = |action: &str| -> Result<(), CliError> {
            for u in &urls {
                agent
                    .post(format!("{u}/api/v1/service/{action}"))
                    .header("Authorization", "Bearer bench")
                    .send_empty()
                    .map_err(|e| fail(&e))?;
            }
            Ok(())
        };
        let drain = |jobs: usize| -> Result<f64, CliError> {
            let before = succeeded()?;
            prequeue(&pipeline, &reg, &context, jobs)?;
            let started = Instant::now();
            service("resume")?;
            while succeeded()? < before + jobs as u64 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let rate = jobs as f64 / started.elapsed().as_secs_f64();
            service("pause")?;
            Ok(rate)
        };
        let outcome = drain(self.workers * n * 64).and_then(|_| drain(self.jobs));
        stop(&mut children);
        outcome
    }

    /// Drains `self.jobs` jobs with `n` `plughost worker` processes against a server
    /// with no workers of its own; jobs per second from the moment the paused service
    /// resumes (every worker said hello, the compile cache is warm) until all are done.
    fn remote_drain(&self, wasm: &[u8], tmp: &std::path::Path, n: usize) -> Result<(f64, RemoteWriter), CliError> {
        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let dir = tmp.join("remote");
        std::fs::create_dir_all(&dir).map_err(|e| fail(&e))?;
        let mut config = plughost::config::Config::default();
        let hash = {
            let pipeline = plughost::server::open_host(&config, &dir).map_err(|e| fail(&e))?;
            let (reg, context) = bench_step(&pipeline, wasm, self.reuse)?;
            prequeue(&pipeline, &reg, &context, self.jobs)?;
            reg.assembly.hash
        };
        // The workers' compile cache, warmed as a worker's first start would.
        let cache = dir.join("worker-cache");
        plughost::remote::worker_runtime(&cache, config.runtime_config(&cache))
            .and_then(|runtime| runtime.load(&hash, || Ok(wasm.to_vec())).map(drop))
            .map_err(|e| fail(&e))?;
        config.listen = "127.0.0.1:0".parse().expect("address");
        config.workers.workers = 0;
        config.admin_token = Some("bench".into());
        config.worker_token = Some("bench-worker".into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::new("runtime", e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = rt.spawn(plughost::server::serve(config, dir.clone(), Some(tx)));
        let addr = rt.block_on(rx).map_err(|_| CliError::new("serve_failed", "the benchmark server did not start"))?;
        let base = format!("http://{addr}/api/v1");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let admin = |path: &str| -> Result<serde_json::Value, CliError> {
            let req = |p: &str| format!("{base}{p}");
            let mut resp = if path.starts_with("/service/") {
                agent.post(req(path)).header("Authorization", "Bearer bench").send_empty()
            } else {
                agent.get(req(path)).header("Authorization", "Bearer bench").call()
            }
            .map_err(|e| fail(&e))?;
            resp.body_mut().read_json().map_err(|e| fail(&e))
        };
        admin("/service/pause")?;
        let exe = std::env::current_exe().map_err(|e| fail(&e))?;
        // Each process as `plughost worker` runs by default: as many threads as cores.
        let per_process = self.workers;
        let mut children = Vec::new();
        for i in 0..n {
            let child = std::process::Command::new(&exe)
                .args(["--data-dir"])
                .arg(dir.join(format!("worker-{i}")))
                .args(["--server", &format!("http://{addr}"), "worker", "--worker-token", "bench-worker"])
                .args(["--workers", &per_process.to_string(), "--batch", &self.batch.to_string()])
                .args(["--name", &format!("bench-{i}"), "--cache-dir"])
                .arg(&cache)
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| fail(&e))?;
            children.push(child);
        }
        let waited = Instant::now();
        while admin("/workers")?.as_array().map_or(0, Vec::len) < n {
            if waited.elapsed() > Duration::from_secs(60) {
                stop(&mut children);
                return Err(CliError::new("bench", "the remote workers did not say hello within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let metrics = || -> Result<[u64; 4], CliError> {
            let text = agent
                .get(format!("http://{addr}/metrics"))
                .header("Authorization", "Bearer bench")
                .call()
                .map_err(|e| fail(&e))?
                .body_mut()
                .read_to_string()
                .map_err(|e| fail(&e))?;
            let value = |name: &str| {
                text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
            };
            Ok([
                value("plughost_group_commits_total"),
                value("plughost_group_commit_operations_total"),
                value("plughost_group_commit_microseconds_total"),
                value("plughost_group_commit_apply_microseconds_total"),
            ])
        };
        let before = metrics()?;
        let started = Instant::now();
        admin("/service/resume")?;
        let done = |status: &serde_json::Value, name: &str| -> u64 {
            status["counts"]["by_status"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s[0] == name))
                .and_then(|s| s[2].as_u64())
                .unwrap_or(0)
        };
        loop {
            let status = admin("/service")?;
            let (ok, failed) = (done(&status, "Succeeded"), done(&status, "Failed"));
            if failed > 0 {
                stop(&mut children);
                return Err(CliError::new("bench", format!("{failed} remote benchmark jobs failed")));
            }
            if ok as usize >= self.jobs {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = self.jobs as f64 / elapsed;
        let after = metrics()?;
        let [commits, operations, commit_us, apply_us] = [0, 1, 2, 3].map(|i| after[i] - before[i]);
        let writer = RemoteWriter {
            commits,
            operations_per_commit: operations as f64 / commits.max(1) as f64,
            commit_share: commit_us as f64 / 1e6 / elapsed,
            apply_share: apply_us as f64 / 1e6 / elapsed,
        };
        stop(&mut children);
        server.abort();
        rt.shutdown_timeout(Duration::from_secs(2));
        Ok((rate, writer))
    }
}

#[derive(clap::Args)]
pub(crate) struct LeaseBench {
    /// Waiting jobs in the queue for the second measurement.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,
    /// Lease-and-release cycles per measurement (64 jobs each).
    #[arg(long, default_value_t = 200)]
    cycles: usize,
    /// Where the benchmark's store lives (default: a temporary directory in the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

impl LeaseBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        use plughost::jobs::SystemJob;
        use plughost::model::ExecutionContext;
        use plughost::store::{ChangeSet, Committer, JobQueue, Store};

        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let tmp = tempfile::tempdir_in(self.dir.clone().unwrap_or_else(|| ".".into())).map_err(|e| fail(&e))?;
        let store = Arc::new(Store::open(tmp.path()).map_err(|e| fail(&e))?);
        let committer = Committer::start(store.clone(), 64);
        let queue = JobQueue::new(store.clone(), committer.clone());
        let enqueue = |n: usize| -> Result<(), CliError> {
            let mut done = 0;
            while done < n {
                let k = (n - done).min(20_000);
                let jobs = (0..k)
                    .map(|_| SystemJob::plugin_execution("bench", uuid::Uuid::nil(), None, ExecutionContext::default()))
                    .collect();
                committer.commit_blocking(ChangeSet { jobs, ..Default::default() }).map_err(|e| fail(&e))?;
                done += k;
            }
            Ok(())
        };
        let measure = |queue: &JobQueue| -> Result<f64, CliError> {
            let t = Instant::now();
            for _ in 0..self.cycles {
                let leased = queue.lease("bench", 64, Duration::from_secs(60)).map_err(|e| fail(&e))?;
                queue.release(leased.iter().map(|j| (j.id, j.fencing_token)).collect()).map_err(|e| fail(&e))?;
            }
            Ok(t.elapsed().as_secs_f64() * 1e6 / self.cycles as f64)
        };
        let small = 1000.min(self.backlog);
        enqueue(small)?;
        let rss_small = rss_kib();
        let us_small = measure(&queue)?;
        let filled = Instant::now();
        enqueue(self.backlog - small)?;
        let fill_s = filled.elapsed().as_secs_f64();
        let rss_large = rss_kib();
        let us_large = measure(&queue)?;
        let json = serde_json::json!({
            "command": "plughost bench lease",
            "small_backlog": small,
            "large_backlog": self.backlog,
            "lease_release_us_small": us_small,
            "lease_release_us_large": us_large,
            "ratio": us_large / us_small,
            "rss_kib_small": rss_small,
            "rss_kib_large": rss_large,
            "enqueue_seconds": fill_s,
        });
        g.print(&json, || {
            table(vec![
                vec!["BACKLOG".into(), "LEASE 64 + RELEASE (µs)".into(), "RSS (MiB)".into()],
                vec![small.to_string(), format!("{us_small:.0}"), (rss_small / 1024).to_string()],
                vec![self.backlog.to_string(), format!("{us_large:.0}"), (rss_large / 1024).to_string()],
            ]) + &format!(
                "ratio {:.2}; enqueueing {} jobs took {fill_s:.1} s\n",
                us_large / us_small,
                self.backlog - small
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Args)]
pub(crate) struct DashboardBench {
    /// Jobs in the store for the second measurement (the first has 1,000).
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Requests per page and store size.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Where the benchmark's store lives (default: a temporary directory in the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One page's latency at both store sizes.
#[derive(Serialize)]
struct PageTiming {
    page: &'static str,
    index: &'static str,
    small_p50_ms: f64,
    large_p50_ms: f64,
    large_p95_ms: f64,
    ratio: f64,
}

impl DashboardBench {
    fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        use plughost::jobs::{JobStatus, OperationType, SystemJob};
        use plughost::model::ExecutionContext;
        use plughost::store::{ChangeSet, JobQueue};
        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let tmp = tempfile::tempdir_in(self.dir.clone().unwrap_or_else(|| ".".into())).map_err(|e| fail(&e))?;
        let mut config = plughost::config::Config { store: g.load_config()?.store, ..Default::default() };
        config.workers.workers = 0;
        let pipeline = plughost::server::open_host(&config, tmp.path()).map_err(|e| fail(&e))?;
        let store = pipeline.store().clone();
        let committer = pipeline.committer().clone();
        store
            .ensure_token_key(
                plughost::security::ADMIN_USER,
                plughost::security::SYSTEM_ADMINISTRATOR,
                "bench",
                "bench-dashboard-key",
            )
            .map_err(|e| fail(&e))?;
        let queue = JobQueue::new(store.clone(), committer.clone());
        let admin = plughost::admin::Admin::new(pipeline.clone(), queue).map_err(|e| fail(&e))?;
        let state = plughost::server::AppState {
            admin: Arc::new(admin),
            auth: Arc::new(plughost::server::Authenticator::new(pipeline.clone())),
            loopback: true,
            config: Arc::new(config),
            ui: Arc::default(),
            stopping: tokio::sync::watch::channel(false).1,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| fail(&e))?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(|e| fail(&e))?;
        let addr = listener.local_addr().map_err(|e| fail(&e))?;
        let app = plughost::server::app(state);
        let server = rt.spawn(async move { axum::serve(listener, app).await });

        // 20 steps, the statuses of a store that has run a while, completions over two hours.
        let steps: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
        let now = plughost::clock::now_ms();
        let mut made = 0usize;
        let mut fill = |until: usize| -> Result<(), CliError> {
            while made < until {
                let n = (until - made).min(10_000);
                let jobs = (made..made + n)
                    .map(|i| {
                        let (status, done) = match i % 100 {
                            0..=3 => (JobStatus::Failed, true),
                            4 => (JobStatus::Canceled, true),
                            5..=7 => (JobStatus::Waiting, false),
                            8 | 9 => (JobStatus::WaitingForResources, false),
                            _ => (JobStatus::Succeeded, true),
                        };
                        let step = steps[i % steps.len()];
                        let mut job = SystemJob::plugin_execution(
                            &format!("bench step {}", i % steps.len()),
                            step,
                            None,
                            ExecutionContext::default(),
                        );
                        if i % 20 == 0 {
                            job.operation_type = OperationType::Workflow;
                        }
                        job.status = status;
                        if done {
                            job.completed_on = Some(now - (i as i64 * 7) % 7_200_000);
                            job.duration_us = 1_000 + (i as u64 * 37) % 50_000;
                        }
                        if status == JobStatus::Waiting {
                            job.postpone_until = Some(now + 365 * 86_400_000);
                        }
                        job
                    })
                    .collect();
                committer.commit_blocking(ChangeSet { jobs, ..Default::default() }).map_err(|e| fail(&e))?;
                made += n;
            }
            Ok(())
        };
        let base = format!("http://{addr}");
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
        let login = agent
            .post(format!("{base}/ui/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("key=bench-dashboard-key&next=%2Fui%2Fjobs")
            .map_err(|e| fail(&e))?;
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| CliError::new("bench", "the dashboard's login gave no session"))?
            .to_owned();
        let get = |path: &str| -> Result<Duration, CliError> {
            let t = Instant::now();
            let mut r = agent.get(format!("{base}{path}")).header("Cookie", &cookie).call().map_err(|e| fail(&e))?;
            let body = r.body_mut().read_to_string().map_err(|e| fail(&e))?;
            if r.status().as_u16() != 200 {
                return Err(CliError::new("bench", format!("{path} answered {}: {body}", r.status())));
            }
            Ok(t.elapsed())
        };
        let step = steps[3];
        let pages = |middle: uuid::Uuid| -> Vec<(&'static str, &'static str, String)> {
            vec![
                ("jobs, oldest first", "id", "/ui/jobs".into()),
                ("jobs, newest first", "id", "/ui/jobs?order=newest".into()),
                ("status Failed", "status", "/ui/jobs?status=Failed".into()),
                ("status Waiting, newest first", "status", "/ui/jobs?status=Waiting&order=newest".into()),
                ("one step", "step", format!("/ui/jobs?step={step}")),
                ("created in the last 10 minutes", "id", format!("/ui/jobs?since={}", now - 600_000)),
                (
                    "status Succeeded, a page in the middle",
                    "status",
                    format!("/ui/jobs?status=Succeeded&after={middle}"),
                ),
                (
                    "Failed workflows (type checked job by job)",
                    "status + check",
                    "/ui/jobs?status=Failed&type=workflow".into(),
                ),
                ("name contains (no index: stops at its budget)", "id + check", "/ui/jobs?name=no-such-name".into()),
                ("overview (counts, charts of the last hour)", "counts", "/ui/overview".into()),
            ]
        };
        let measure = |middle: uuid::Uuid| -> Result<Vec<(f64, f64)>, CliError> {
            pages(middle)
                .into_iter()
                .map(|(_, _, path)| {
                    get(&path)?; // warm
                    let mut times = (0..self.requests).map(|_| get(&path)).collect::<Result<Vec<_>, _>>()?;
                    times.sort();
                    let pct =
                        |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e3;
                    Ok((pct(0.5), pct(0.95)))
                })
                .collect()
        };
        let middle_of = |n: usize| -> Result<uuid::Uuid, CliError> {
            let query = plughost::jobs::JobQuery {
                status: Some(JobStatus::Succeeded),
                limit: Some(1),
                after: None,
                ..Default::default()
            };
            // The id of a Succeeded job about halfway: page through the index once.
            let mut after = None;
            let mut seen = 0;
            loop {
                let q = plughost::jobs::JobQuery { after, limit: Some(5000), ..query.clone() };
                let page = store.list_jobs(&q).map_err(|e| fail(&e))?;
                seen += page.len();
                after = page.last().map(|j| j.id);
                if seen >= n * 86 / 200 || page.len() < 5000 {
                    return after.ok_or_else(|| CliError::new("bench", "no succeeded job"));
                }
            }
        };
        let small = 1000.min(self.jobs);
        fill(small)?;
        let small_times = measure(middle_of(small)?)?;
        let filled = Instant::now();
        fill(self.jobs)?;
        let fill_s = filled.elapsed().as_secs_f64();
        let middle = middle_of(self.jobs)?;
        let large_times = measure(middle)?;
        server.abort();
        let timings: Vec<PageTiming> = pages(middle)
            .into_iter()
            .zip(small_times.iter().zip(&large_times))
            .map(|((page, index, _), (s, l))| PageTiming {
                page,
                index,
                small_p50_ms: s.0,
                large_p50_ms: l.0,
                large_p95_ms: l.1,
                ratio: l.0 / s.0,
            })
            .collect();
        let json = serde_json::json!({
            "command": "plughost bench dashboard",
            "store": store.engine_name(),
            "small": small,
            "large": self.jobs,
            "fill_seconds": fill_s,
            "requests": self.requests,
            "pages": timings,
        });
        g.print(&json, || {
            let mut rows = vec![
                ["PAGE", "INDEX", &format!("P50 MS ({small})"), &format!("P50 MS ({})", self.jobs), "P95 MS", "RATIO"]
                    .map(String::from)
                    .to_vec(),
            ];
            for t in &timings {
                rows.push(vec![
                    t.page.to_owned(),
                    t.index.to_owned(),
                    format!("{:.1}", t.small_p50_ms),
                    format!("{:.1}", t.large_p50_ms),
                    format!("{:.1}", t.large_p95_ms),
                    format!("{:.2}", t.ratio),
                ]);
            }
            table(rows)
        })?;
        rt.shutdown_timeout(Duration::from_secs(2));
        Ok(ExitCode::SUCCESS)
    }
}
