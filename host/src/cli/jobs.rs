//! `plughost jobs list|show`

use std::process::ExitCode;

use plughost::admin::JobFilter;
use plughost::jobs::{JobStatus, JobView, SystemJob};
use plughost::model::{ParameterValue, time_from_text};
use plughost::pipeline::NewJob;
use plughost::store::JobAction;

use super::backend::Backend;
use super::{CliError, Global, table};

#[derive(clap::Subcommand)]
pub(crate) enum Jobs {
    /// List system jobs, oldest first.
    List {
        /// Only jobs with this status (name or number, e.g. Waiting or 10).
        #[arg(long)]
        status: Option<JobStatus>,
        /// Only jobs of this step (id).
        #[arg(long)]
        step: Option<String>,
        /// Only jobs of this operation type (plugin_execution, workflow, bulk_delete,
        /// bulk_import, deletion_service, job_action, or its code).
        #[arg(long = "type")]
        operation_type: Option<String>,
        /// Only jobs queued by a step of this plug-in.
        #[arg(long)]
        plugin: Option<String>,
        /// Only jobs regarding records of this entity.
        #[arg(long)]
        entity: Option<String>,
        /// Only jobs regarding this record (id).
        #[arg(long)]
        record: Option<String>,
        /// Only jobs whose name contains this text (any case).
        #[arg(long)]
        name: Option<String>,
        /// Only jobs with this dependency token.
        #[arg(long)]
        token: Option<String>,
        /// Only jobs created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// At most this many jobs (default 500, at most 5000).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after this job id (the last one listed before).
        #[arg(long)]
        after: Option<String>,
        /// Newest first.
        #[arg(long)]
        newest: bool,
    },
    /// Show one job with its trace (by id or unique id prefix).
    Show { id: String },
    /// Follow a job until it completes, with a progress bar on a terminal (rows of a
    /// bulk job, steps of a workflow run); exits 0 if it succeeded, 1 if it failed,
    /// 5 if it was canceled.
    Watch {
        id: String,
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
    },
    /// Create a job for an asynchronous step: once, later (--postpone), or on a
    /// recurrence (--recurrence 'FREQ=DAILY;BYHOUR=2' [--start TIME]).
    Create {
        /// The step (id, id prefix or name).
        #[arg(long)]
        step: String,
        #[arg(long)]
        recurrence: Option<String>,
        /// When the recurrence starts (RFC 3339; default now).
        #[arg(long)]
        start: Option<String>,
        /// Do not start before this time (RFC 3339).
        #[arg(long)]
        postpone: Option<String>,
        /// Dependency token: jobs with the same token run one at a time in creation order.
        #[arg(long)]
        token: Option<String>,
    },
    /// Cancel a ready, waiting or running job.
    Cancel { id: String },
    /// Pause a ready job (it waits until resumed) or a running one.
    Pause { id: String },
    /// Resume a waiting job.
    Resume { id: String },
    /// Do not start a ready or waiting job before TIME (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    Postpone { id: String, until: String },
    /// Run a failed or canceled job again.
    Retry { id: String },
    /// Delete a job that is not running.
    Delete { id: String },
}

/// Parses an RFC 3339 time (or milliseconds) into UTC milliseconds.
fn time(text: &str) -> Result<i64, CliError> {
    time_from_text(text).map_err(|m| CliError::new("invalid", m))
}

/// Finds the one job whose id starts with `key` (4+ characters).
/// Exit code of `jobs watch` (and `--wait`) for a job that was canceled.
pub(crate) const EXIT_CANCELED: u8 = 5;

/// Follows a job until it completes (see `Jobs::Watch`): a bar on stderr when it is a
/// terminal and the output is not JSON; then the outcome, and its exit code.
pub(crate) fn watch(g: &Global, backend: &dyn Backend, id: &str, interval_ms: u64) -> Result<ExitCode, CliError> {
    use std::io::IsTerminal;
    let mut job = resolve(backend, id)?;
    if job.state() != plughost::jobs::JobState::Completed && !backend.jobs_run() {
        return Err(CliError::new(
            "not_running",
            format!(
                "job {} is {} and no server runs for this data directory to work it: start `plughost serve`, then watch it",
                job.id,
                job.status.name()
            ),
        ));
    }
    let bar = match !g.json && std::io::stderr().is_terminal() {
        true => indicatif::ProgressBar::new_spinner(),
        false => indicatif::ProgressBar::hidden(),
    };
    let style = |template: &str| {
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    };
    let mut total = None;
    loop {
        let (done, of) = progress(&job);
        if of != total {
            total = of;
            match of {
                Some(n) => {
                    bar.set_length(n);
                    bar.set_style(style("{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})"));
                }
                None => bar.set_style(style("{spinner} {msg} {pos} ({elapsed})")),
            }
        }
        bar.set_position(done);
        bar.set_message(format!("{} {}", job.name, job.status.name()));
        bar.tick();
        if job.state() == plughost::jobs::JobState::Completed {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(interval_ms.max(20)));
        job = resolve(backend, &job.id.to_string())?;
    }
    bar.finish_and_clear();
    g.print(&JobView::of(&job), || {
        let detail = match (&job.error_code, &job.message) {
            (Some(c), Some(m)) => format!(": [{c}] {m}"),
            (None, Some(m)) => format!(": {m}"),
            _ => String::new(),
        };
        format!("job {} ({}) {}{detail}", job.id, job.name, job.status.name())
    })?;
    Ok(match job.status {
        JobStatus::Succeeded => ExitCode::SUCCESS,
        JobStatus::Canceled => ExitCode::from(EXIT_CANCELED),
        _ => ExitCode::FAILURE,
    })
}

/// How far a job is, and out of how many, where that is known: a bulk job's rows, a
/// workflow run's executed steps (no total), else nothing.
fn progress(job: &SystemJob) -> (u64, Option<u64>) {
    use plughost::jobs::OperationType;
    let int = |name: &str| match job.output.get(name) {
        Some(ParameterValue::Value(plughost::model::Value::Integer(i))) => Some((*i).max(0) as u64),
        _ => None,
    };
    match job.operation_type {
        OperationType::BulkImport
        | OperationType::BulkDelete
        | OperationType::BulkEmail
        | OperationType::ActivityPropagation => (int("Processed").unwrap_or(0), int("Total")),
        OperationType::Workflow => {
            let steps = plughost::workflow::state::RunState::from_output(&job.output).map_or(0, |s| s.log_seq);
            (u64::from(steps), None)
        }
        _ => (0, None),
    }
}

/// Prints a page of jobs: a table, or their JSON views.
pub(crate) fn print_list(g: &Global, jobs: &[SystemJob]) -> Result<(), CliError> {
    g.print(&jobs.iter().map(JobView::of).collect::<Vec<_>>(), || {
        if jobs.is_empty() {
            return "no system jobs".into();
        }
        let mut rows = vec![["ID", "NAME", "STATE", "STATUS", "REGARDING", "CREATED"].map(String::from).to_vec()];
        for j in jobs {
            rows.push(vec![
                j.id.to_string(),
                j.name.clone(),
                format!("{:?} ({})", j.state(), j.state().code()),
                format!("{} ({})", j.status.name(), j.status.code()),
                j.regarding.as_ref().map(|r| format!("{} {}", r.logical_name, r.id)).unwrap_or_default(),
                plughost::model::Value::DateTime(j.created_on).to_string(),
            ]);
        }
        table(rows)
    })
}

fn resolve(backend: &dyn Backend, key: &str) -> Result<SystemJob, CliError> {
    if key.len() < 4 {
        return Err(CliError::new("invalid", format!("'{key}' is too short: give 4+ characters of the job id")));
    }
    let filter = JobFilter { id_prefix: Some(key.to_owned()), limit: Some(2), ..JobFilter::default() };
    let mut matches = backend.jobs(&filter)?;
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(CliError::new("not_found", format!("no system job matches '{key}'"))),
        _ => Err(CliError::new("conflict", format!("'{key}' matches more than one job: give more of the id"))),
    }
}

impl Jobs {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        let act = |id: &str, action: JobAction| -> Result<(), CliError> {
            let job = resolve(backend.as_ref(), id)?;
            let after = backend.manage_job(job.id, action)?;
            g.print(&after.as_ref().map(JobView::of), || match &after {
                Some(j) => format!("job {} is now {:?} / {} ({})", j.id, j.state(), j.status.name(), j.status.code()),
                None => format!("deleted job {}", job.id),
            })
        };
        match self {
            Jobs::Create { step, recurrence, start, postpone, token } => {
                let spec = NewJob {
                    step,
                    recurrence_pattern: recurrence,
                    recurrence_start: start.as_deref().map(time).transpose()?,
                    postpone_until: postpone.as_deref().map(time).transpose()?,
                    dependency_token: token,
                    ..NewJob::default()
                };
                let job = backend.create_job(spec)?;
                g.print(&JobView::of(&job), || {
                    format!("created job {} ({}), {}", job.id, job.name, job.status.name())
                })?;
            }
            Jobs::Cancel { id } => act(&id, JobAction::Cancel)?,
            Jobs::Pause { id } => act(&id, JobAction::Pause)?,
            Jobs::Resume { id } => act(&id, JobAction::Resume)?,
            Jobs::Retry { id } => act(&id, JobAction::Retry)?,
            Jobs::Delete { id } => act(&id, JobAction::Delete)?,
            Jobs::Postpone { id, until } => act(&id, JobAction::Postpone(time(&until)?))?,
            Jobs::List {
                status,
                step,
                operation_type,
                plugin,
                entity,
                record,
                name,
                token,
                since,
                limit,
                after,
                newest,
            } => {
                let filter = JobFilter {
                    status: status.map(|s| s.name().to_owned()),
                    step,
                    operation_type,
                    plugin,
                    entity,
                    record,
                    name,
                    token,
                    since: since.as_deref().map(time).transpose()?.map(|t| t.to_string()),
                    limit,
                    after,
                    order: newest.then(|| "newest".to_owned()),
                    ..JobFilter::default()
                };
                print_list(g, &backend.jobs(&filter)?)?;
            }
            Jobs::Watch { id, interval_ms } => return watch(g, backend.as_ref(), &id, interval_ms),
            Jobs::Show { id } => {
                let job = resolve(backend.as_ref(), &id)?;
                // A workflow run shows its log (one row per executed step).
                let log = match job.operation_type {
                    plughost::jobs::OperationType::Workflow => Some(backend.workflow_log(job.id)?),
                    _ => None,
                };
                g.print(&JobView::of(&job), || {
                    let mut out = format!(
                        "job       {}\nname      {}\nstatus    {:?} ({}) / {} ({})\ncreated   {}\n",
                        job.id,
                        job.name,
                        job.state(),
                        job.state().code(),
                        job.status.name(),
                        job.status.code(),
                        plughost::model::Value::DateTime(job.created_on)
                    );
                    if let Some(r) = &job.regarding {
                        out.push_str(&format!("regarding {} {}\n", r.logical_name, r.id));
                    }
                    if let Some(pattern) = &job.recurrence_pattern {
                        out.push_str(&format!("recurs    {pattern} ({} runs so far)\n", job.recurrence_runs));
                    }
                    if let Some(t) = job.postpone_until {
                        out.push_str(&format!("not before {}\n", plughost::model::Value::DateTime(t)));
                    }
                    if job.lease_expirations > 0 {
                        out.push_str(&format!("leases    expired {} times\n", job.lease_expirations));
                    }
                    match (&job.error_code, &job.message) {
                        (Some(c), Some(m)) => out.push_str(&format!("error     [{c}] {m}\n")),
                        (None, Some(m)) => out.push_str(&format!("message   {m}\n")),
                        _ => {}
                    }
                    for (name, value) in &job.output {
                        if log.is_some() && name == plughost::workflow::state::STATE_PARAMETER {
                            continue;
                        }
                        match value {
                            ParameterValue::Entities(rows) => {
                                out.push_str(&format!("output    {name}: {}\n", rows.len()));
                                for row in rows {
                                    let cells: Vec<String> =
                                        row.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                                    out.push_str(&format!("  - {}\n", cells.join(", ")));
                                }
                            }
                            other => {
                                let shown = serde_json::to_string(other).unwrap_or_default();
                                out.push_str(&format!("output    {name} = {shown}\n"));
                            }
                        }
                    }
                    if let Some(rows) = &log {
                        out.push_str("workflow log\n");
                        out.push_str(&super::workflows::log_text(rows));
                    }
                    if !job.trace.is_empty() {
                        out.push_str("trace\n");
                        for line in job.trace.lines() {
                            out.push_str(&format!("  | {line}\n"));
                        }
                    }
                    out
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
