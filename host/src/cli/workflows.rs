//! `plughost workflows`: create, update, list, show, activate, deactivate, run a
//! workflow on a record, and show a run's log.

use std::path::PathBuf;
use std::process::ExitCode;

use plughost::clock::format_time;
use plughost::workflow::{LogEntry, LogStatus};

use super::{CliError, Global};

#[derive(clap::Subcommand)]
pub(crate) enum Workflows {
    /// Create a workflow from a JSON definition (see docs/workflows.md); it starts
    /// inactive unless --activate.
    Create {
        file: PathBuf,
        #[arg(long)]
        activate: bool,
    },
    /// Replace an inactive workflow's definition (the file names the workflow).
    Update {
        file: PathBuf,
    },
    List,
    /// A workflow and its definition (or a frozen version's).
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Freeze the definition as a new version and start triggering runs.
    Activate {
        name: String,
    },
    /// Stop triggering runs (runs already queued or waiting go on with their version).
    Deactivate {
        name: String,
    },
    /// Start a run of an on-demand workflow on a record; prints the job.
    Run {
        name: String,
        #[arg(long)]
        record: uuid::Uuid,
    },
    /// The log of a run: one row per executed step.
    Log {
        job: uuid::Uuid,
    },
    /// A workflow's runs (system jobs), oldest first.
    Runs {
        name: String,
        /// Only runs with this status (name or number).
        #[arg(long)]
        status: Option<plughost::jobs::JobStatus>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete an inactive workflow (its runs keep the version they carry).
    Delete {
        name: String,
    },
}

impl Workflows {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let b = g.backend()?;
        let read = |file: &PathBuf| {
            std::fs::read(file).map_err(|e| CliError::new("io", format!("cannot read {}: {e}", file.display())))
        };
        let view = match self {
            Workflows::List => {
                let all = b.workflows()?;
                return g
                    .print(&all, || {
                        if all.is_empty() {
                            return "no workflows: create one with `plughost workflows create FILE`\n".into();
                        }
                        all.iter()
                            .map(|w| {
                                format!(
                                    "{:<28} {:<16} {:<8} v{}\n",
                                    w.name,
                                    w.entity,
                                    if w.active { "active" } else { "inactive" },
                                    w.version
                                )
                            })
                            .collect()
                    })
                    .map(|()| ExitCode::SUCCESS);
            }
            Workflows::Runs { name, status, limit } => {
                let w = b.workflow(&name, None)?;
                let filter = plughost::admin::JobFilter {
                    step: Some(w.id.to_string()),
                    status: status.map(|s| s.name().to_owned()),
                    limit,
                    ..Default::default()
                };
                super::jobs::print_list(g, &b.jobs(&filter)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            Workflows::Delete { name } => {
                let gone = b.workflow_delete(&name)?;
                return g
                    .print(&gone, || format!("deleted workflow {} ({})", gone.name, gone.id))
                    .map(|()| ExitCode::SUCCESS);
            }
            Workflows::Log { job } => {
                let rows = b.workflow_log(job)?;
                return g.print(&rows, || log_text(&rows)).map(|()| ExitCode::SUCCESS);
            }
            Workflows::Run { name, record } => {
                let job = b.workflow_run(&name, record)?;
                return g
                    .print(&plughost::jobs::JobView::of(&job), || {
                        format!("queued run {} of workflow '{name}' on record {record}", job.id)
                    })
                    .map(|()| ExitCode::SUCCESS);
            }
            Workflows::Create { file, activate } => {
                let created = b.workflow_save(&read(&file)?, false)?;
                if activate { b.workflow_set_active(&created.name, true)? } else { created }
            }
            Workflows::Update { file } => b.workflow_save(&read(&file)?, true)?,
            Workflows::Show { name, version } => b.workflow(&name, version)?,
            Workflows::Activate { name } => b.workflow_set_active(&name, true)?,
            Workflows::Deactivate { name } => b.workflow_set_active(&name, false)?,
        };
        g.print(&view, || {
            format!(
                "workflow {} ({}) on {}: {}, version {}\n{}\n",
                view.name,
                view.id,
                view.entity,
                if view.active { "active" } else { "inactive" },
                view.version,
                serde_json::to_string_pretty(&view.definition).unwrap_or_default()
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A run's log as a table.
pub(crate) fn log_text(rows: &[LogEntry]) -> String {
    if rows.is_empty() {
        return "no steps ran yet\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let status = match r.status {
            LogStatus::Succeeded => "Succeeded",
            LogStatus::Failed => "Failed",
            LogStatus::Canceled => "Canceled",
            LogStatus::Waiting => "Waiting",
        };
        out.push_str(&format!(
            "{:>3} {:<16} {:<11} {:<10} {} ({} ms)",
            r.seq,
            r.step,
            r.kind,
            status,
            format_time(r.started_on),
            r.completed_on - r.started_on
        ));
        if !r.outputs.is_empty() {
            let shown: Vec<String> = r
                .outputs
                .iter()
                .map(|(k, v)| match v {
                    plughost::model::ParameterValue::Value(v) => format!("{k}={v}"),
                    other => format!("{k}={}", serde_json::to_string(other).unwrap_or_default()),
                })
                .collect();
            out.push_str(&format!("  {}", shown.join(" ")));
        }
        if let Some(child) = r.child_job {
            out.push_str(&format!("  child job: {child}"));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("\n      error: {e}"));
        }
        out.push('\n');
    }
    out
}
