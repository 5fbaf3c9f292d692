//! `plughost test FILE --context ctx.json [--data seed.json]`: run a plug-in once,
//! locally, and report what it did.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use plughost::memdata::{MemoryData, Write};
use plughost::model::{AssemblyHash, Entity, ExecutionContext, Stage};
use plughost::runtime::{ComponentError, Invocation, LimitOverrides, Limits, Origin};
use serde::Serialize;

use super::{CliError, Global, exit, read_file, read_json};

#[derive(clap::Args)]
pub(crate) struct Test {
    /// The component (.wasm) to run.
    file: PathBuf,
    /// The execution context, as JSON (every field optional; see README).
    #[arg(long)]
    context: Option<PathBuf>,
    /// Records the in-memory data set starts with: a JSON list of entities with ids.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Set the step configuration string passed to the plug-in.
    #[arg(long)]
    config: Option<String>,
    /// Override the context's stage.
    #[arg(long)]
    stage: Option<Stage>,
    /// A limit override, NAME=VALUE (as for `steps add --limit`).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    file: PathBuf,
    assembly: AssemblyHash,
    origin: Origin,
    #[serde(flatten)]
    invocation: Invocation,
    writes: Vec<Write>,
}

impl Test {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let bytes = read_file(&self.file, "component")?;
        let mut context: ExecutionContext = match &self.context {
            Some(path) => read_json(path, "context file")?,
            None => ExecutionContext::default(),
        };
        context.fill_primary_entity();
        if let Some(c) = self.config {
            context.configuration = Some(c);
        }
        if let Some(s) = self.stage {
            context.stage = s;
        }
        let seed: Vec<Entity> = match &self.data {
            Some(path) => read_json(path, "data file")?,
            None => Vec::new(),
        };
        let data = Arc::new(MemoryData::new(seed).map_err(|m| CliError::new("bad_data", m))?);
        let mut overrides = LimitOverrides::default();
        for l in &self.limits {
            overrides.set(l).map_err(|m| CliError::new("invalid", m))?;
        }
        let limits = Limits::default().with(&overrides);

        let (runtime, plugin) = load_component(g, &self.file, &bytes)?;
        let hash = plugin.hash;
        let invocation = runtime.invoke(&plugin, &context, &limits, data.clone());
        let failed = invocation.outcome.is_err();
        let report =
            Report { file: self.file, assembly: hash, origin: plugin.origin, invocation, writes: data.writes() };
        g.print(&report, || text(&report))?;
        Ok(if failed { ExitCode::from(exit::PLUGIN_FAILED) } else { ExitCode::SUCCESS })
    }
}

/// A runtime (with the data directory's compile cache when the store is free) and
/// the component `bytes`, read from `file`, loaded into it.
pub(crate) fn load_component(
    g: &Global,
    file: &std::path::Path,
    bytes: &[u8],
) -> Result<(plughost::runtime::Runtime, Arc<plughost::runtime::LoadedPlugin>), CliError> {
    let store = match g.open_store() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::info!("running without the compile cache: {}", e.message);
            None
        }
    };
    let runtime = g.runtime(store)?;
    let hash = AssemblyHash::of(bytes);
    let plugin = runtime.load(&hash, || Ok(bytes.to_vec())).map_err(|e| match e.downcast_ref::<ComponentError>() {
        Some(c) => CliError::new(c.code(), format!("{}: {c}", file.display())),
        None => CliError::new("load_failed", format!("{}: {e:#}", file.display())),
    })?;
    Ok((runtime, plugin))
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn text(r: &Report) -> String {
    let i = &r.invocation;
    let origin = match r.origin {
        Origin::Compiled => "compiled",
        Origin::DiskCache => "loaded from the compile cache",
    };
    let mut out = format!("plug-in   {} (assembly {}, {origin})\n", r.file.display(), r.assembly.short());
    match &i.outcome {
        Ok(result) => {
            out.push_str("outcome   succeeded\n");
            for (k, v) in &result.input_parameters {
                out.push_str(&format!("input     {k} = {}\n", json(v)));
            }
            for (k, v) in &result.output_parameters {
                out.push_str(&format!("output    {k} = {}\n", json(v)));
            }
            for (k, v) in &result.shared_variables {
                out.push_str(&format!("shared    {k} = {}\n", json(v)));
            }
        }
        Err(f) => out.push_str(&format!("outcome   failed [{}]: {}\n", f.code, f.message)),
    }
    for w in &r.writes {
        out.push_str(&format!("write     {}\n", json(w)));
    }
    out.push_str(&format!(
        "fuel      {}\nduration  {:.3} ms\nhost calls {}\n",
        i.fuel_used,
        i.duration_us as f64 / 1000.0,
        i.host_calls
    ));
    if i.trace.is_empty() {
        out.push_str("trace     (empty)\n");
    } else {
        out.push_str("trace\n");
        for line in i.trace.lines().take(200) {
            out.push_str(&format!("  | {line}\n"));
        }
        let n = i.trace.lines().count();
        if n > 200 {
            out.push_str(&format!("  | ... {} more lines (use --json for all)\n", n - 200));
        }
    }
    out
}
