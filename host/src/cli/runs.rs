//! `plughost runs list|show|export|delete` and `plughost replay`: the runs recorded
//! for steps set to record (`steps profile`), and replaying one against a new build.

use std::path::PathBuf;
use std::process::ExitCode;

use plughost::runs::{Call, RecordedRun, Replay, RunSummary, call_sources, line_diff};
use uuid::Uuid;

use super::test::load_component;
use super::{CliError, Global, exit, read_file, table};

#[derive(clap::Subcommand)]
pub(crate) enum Runs {
    /// List recorded runs, newest first.
    List {
        /// Only this step's runs (id, unique id prefix or name).
        #[arg(long)]
        step: Option<String>,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one recorded run: its context, calls and outcome.
    Show { id: Uuid },
    /// Write one recorded run as JSON (for `plughost replay FILE` elsewhere).
    Export { id: Uuid },
    /// Delete one recorded run.
    Delete { id: Uuid },
}

/// Run a new build of a plug-in against a recorded run's context and data answers,
/// offline, and show what differs: outcome, writes, output parameters, trace.
#[derive(clap::Args)]
pub(crate) struct ReplayCommand {
    /// A recorded run's id (read from the server or store), or an exported run's file.
    run: String,
    /// The component (.wasm) to replay the run with.
    #[arg(long = "with", value_name = "FILE")]
    with: PathBuf,
}

impl Runs {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        match self {
            Runs::List { step, limit } => {
                let runs = backend.runs(step.as_deref(), limit)?;
                g.print(&runs, || list(&runs))?;
            }
            Runs::Show { id } => {
                let run = backend.run(id)?;
                g.print(&run, || show(&run))?;
            }
            Runs::Export { id } => {
                let run = backend.run(id)?;
                let json = serde_json::to_string_pretty(&run).map_err(|e| CliError::new("internal", e.to_string()))?;
                println!("{json}");
            }
            Runs::Delete { id } => {
                let s = backend.delete_run(id)?;
                g.print(&s, || format!("deleted run {} of step {}", s.id, s.step))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ReplayCommand {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let path = PathBuf::from(&self.run);
        let run = if path.is_file() {
            RecordedRun::from_json(&read_file(&path, "recorded run")?).map_err(|m| CliError::new("bad_run", m))?
        } else {
            let id = Uuid::parse_str(&self.run).map_err(|_| {
                CliError::new("invalid", format!("'{}' is neither a file nor a recorded run's id", self.run))
            })?;
            g.backend()?.run(id)?
        };
        let bytes = read_file(&self.with, "component")?;
        let (runtime, plugin) = load_component(g, &self.with, &bytes)?;
        let replay = plughost::runs::replay(&runtime, &plugin, &run);
        let failed = replay.invocation.outcome.is_err();
        g.print(&replay, || report(&run, &replay))?;
        Ok(if failed { ExitCode::from(exit::PLUGIN_FAILED) } else { ExitCode::SUCCESS })
    }
}

fn when(ms: i64) -> String {
    plughost::model::Value::DateTime(ms).to_string()
}

fn list(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "no recorded runs: set a step to record with `plughost steps profile STEP`".into();
    }
    let mut rows =
        vec![["ID", "RECORDED", "STEP", "EVENT", "ASSEMBLY", "OUTCOME", "CALLS", "MS"].map(String::from).to_vec()];
    for r in runs {
        rows.push(vec![
            r.id.to_string(),
            when(r.recorded_at),
            r.step.clone(),
            format!("{} {}", r.message, r.entity),
            r.assembly.short(),
            r.outcome.clone(),
            r.calls.to_string(),
            format!("{:.1}", r.duration_us as f64 / 1000.0),
        ]);
    }
    table(rows)
}

fn outcome_line(i: &plughost::runtime::Invocation) -> String {
    match &i.outcome {
        Ok(_) => "succeeded".into(),
        Err(f) => format!("failed [{}]: {}", f.code, f.message),
    }
}

fn j(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn call_line(c: &Call) -> String {
    match c {
        Call::Create { record } => format!("create {}", j(record)),
        Call::Retrieve { target, columns } => {
            format!("retrieve {} {} columns {}", target.logical_name, target.id, j(columns))
        }
        Call::Update { record } => format!("update {}", j(record)),
        Call::Delete { target } => format!("delete {} {}", target.logical_name, target.id),
        Call::RetrieveMultiple { query } => format!("retrieve_multiple {}", j(query)),
        Call::Execute { message, parameters } => format!("execute {message} {}", j(parameters)),
    }
}

fn show(r: &RecordedRun) -> String {
    let mut out = format!(
        "run       {}\nrecorded  {}\nstep      {} ({})\nplug-in   {} (assembly {})\nevent     {} of {} (stage {}, depth {})\n",
        r.id,
        when(r.recorded_at),
        r.step,
        r.step_id,
        r.plugin,
        r.assembly.short(),
        r.context.message_name,
        r.context.primary_entity_name,
        r.context.stage.code(),
        r.context.depth,
    );
    if let Some(job) = r.job_id {
        out.push_str(&format!("job       {job}\n"));
    }
    out.push_str(&format!("outcome   {}\n", outcome_line(&r.invocation)));
    for c in &r.calls {
        let answer = match &c.error {
            Some(e) => format!(" -> error {e}"),
            None => String::new(),
        };
        out.push_str(&format!("call      {}{answer}\n", call_line(&c.call)));
    }
    for line in r.invocation.trace.lines() {
        out.push_str(&format!("  | {line}\n"));
    }
    out
}

fn report(run: &RecordedRun, r: &Replay) -> String {
    let mut out = format!(
        "run       {} (step {}, recorded with assembly {})\nreplayed  with assembly {}\n",
        run.id,
        run.step,
        r.recorded_assembly.short(),
        r.replayed_assembly.short()
    );
    out.push_str(&format!("recorded  {}\nreplayed  {}\n", outcome_line(&run.invocation), outcome_line(&r.invocation)));
    let sources = call_sources(&r.calls);
    out.push_str(&format!(
        "calls     {} answered from the recording, {} offline; {} recorded calls not made\n",
        sources.get("recorded").unwrap_or(&0),
        sources.get("offline").unwrap_or(&0),
        r.unmade.len()
    ));
    if r.same() {
        out.push_str("same      outcome, writes, output parameters and trace are as recorded\n");
        return out;
    }
    for d in &r.differences {
        out.push_str(&format!("differs   {}\n", d.what));
        let lines = |v: &serde_json::Value| -> Vec<String> {
            match v {
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
                other => vec![other.to_string()],
            }
        };
        for line in line_diff(&lines(&d.recorded), &lines(&d.replayed)) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}
