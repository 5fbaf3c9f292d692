//! `plughost bench invoke FILE...`: what one invocation of each component costs —
//! size, compile time, a fresh instance per call, a kept instance — with every
//! figure also as a ratio to the first file's, measured in the same run (the plug-ins
//! of different languages against the Rust one).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use plughost::memdata::MemoryData;
use plughost::model::{AssemblyHash, Entity, ExecutionContext, ParameterValue, Stage, Value};
use plughost::runtime::{InstanceCache, Limits, Reuse, Runtime, RuntimeConfig};
use serde::Serialize;

use super::super::{CliError, Global, read_file, read_json, table};

#[derive(clap::Args)]
pub(crate) struct InvokeBench {
    /// Components to measure; the first is the baseline of the ratios.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The execution context (default: a pre-operation Create of an account named Contoso).
    #[arg(long)]
    context: Option<PathBuf>,
    /// Invocations per measurement.
    #[arg(long, default_value_t = 300)]
    runs: usize,
}

#[derive(Serialize)]
struct Cost {
    file: PathBuf,
    bytes: usize,
    compile_ms: f64,
    /// `succeeded` or the failure's code (a failure costs as much to measure).
    outcome: String,
    fuel: u64,
    fresh_p50_us: f64,
    fresh_mean_us: f64,
    reused_p50_us: f64,
    /// Fresh-instance p50 over the baseline's.
    fresh_ratio: f64,
    reused_ratio: f64,
}

fn default_context() -> ExecutionContext {
    let target = Entity::new("account")
        .with("name", Value::Text("Contoso".into()))
        .with("creditlimit", Value::Money("1200.00".into()));
    let mut c = ExecutionContext {
        message_name: "Create".into(),
        primary_entity_name: "account".into(),
        stage: Stage::PreOperation,
        ..ExecutionContext::default()
    };
    c.input_parameters.insert("Target".into(), ParameterValue::Entity(target));
    c
}

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

impl InvokeBench {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let fail = |m: String| CliError::new("bench", m);
        let context = match &self.context {
            Some(path) => read_json(path, "context file")?,
            None => default_context(),
        };
        let runs = self.runs.max(1);
        let runtime = Runtime::new(RuntimeConfig::default(), None).map_err(|e| fail(format!("{e:#}")))?;
        let limits = Limits::default();
        let mut costs: Vec<Cost> = Vec::new();
        for file in &self.files {
            let bytes = read_file(file, "component")?;
            let started = Instant::now();
            let plugin = runtime
                .load(&AssemblyHash::of(&bytes), || Ok(bytes.clone()))
                .map_err(|e| fail(format!("{}: {e:#}", file.display())))?;
            let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
            let data = || Arc::new(MemoryData::default());
            let first = runtime.invoke(&plugin, &context, &limits, data());
            let outcome = match &first.outcome {
                Ok(_) => "succeeded".to_owned(),
                Err(f) => f.code.to_string(),
            };
            let mut fresh = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                runtime.invoke(&plugin, &context, &limits, data());
                fresh.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let mut cache = InstanceCache::default();
            let mut reused = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let reuse = Reuse { cache: &mut cache, key: uuid::Uuid::nil(), max_uses: u32::MAX };
                runtime.invoke_reusing(reuse, &plugin, &context, &limits, data());
                reused.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let fresh_mean_us = fresh.iter().sum::<f64>() / runs as f64;
            costs.push(Cost {
                file: file.clone(),
                bytes: bytes.len(),
                compile_ms,
                outcome,
                fuel: first.fuel_used,
                fresh_p50_us: p50(fresh),
                fresh_mean_us,
                reused_p50_us: p50(reused),
                fresh_ratio: 1.0,
                reused_ratio: 1.0,
            });
        }
        let (base_fresh, base_reused) = (costs[0].fresh_p50_us, costs[0].reused_p50_us);
        for c in &mut costs {
            c.fresh_ratio = c.fresh_p50_us / base_fresh;
            c.reused_ratio = c.reused_p50_us / base_reused;
        }
        g.print(&costs, || {
            let mut rows = vec![
                ["COMPONENT", "BYTES", "COMPILE MS", "OUTCOME", "FUEL", "FRESH P50 µs", "x", "KEPT P50 µs", "x"]
                    .map(String::from)
                    .to_vec(),
            ];
            for c in &costs {
                rows.push(vec![
                    c.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    c.bytes.to_string(),
                    format!("{:.0}", c.compile_ms),
                    c.outcome.clone(),
                    c.fuel.to_string(),
                    format!("{:.0}", c.fresh_p50_us),
                    format!("{:.1}", c.fresh_ratio),
                    format!("{:.0}", c.reused_p50_us),
                    format!("{:.1}", c.reused_ratio),
                ]);
            }
            format!("{runs} invocations each; ratios against {}\n{}", self.files[0].display(), table(rows))
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
