//! `plughost jobs list|show`

use std::process::ExitCode;

use plughost::jobs::JobStatus;

use super::{CliError, Global, table};

#[derive(clap::Subcommand)]
pub(crate) enum Jobs {
    /// List system jobs, oldest first.
    List {
        /// Only jobs with this status (name or number, e.g. Waiting or 10).
        #[arg(long)]
        status: Option<JobStatus>,
    },
    /// Show one job with its trace (by id or unique id prefix).
    Show { id: String },
}

impl Jobs {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let jobs = g.backend()?.jobs()?;
        match self {
            Jobs::List { status } => {
                let jobs: Vec<_> = jobs.into_iter().filter(|j| status.is_none_or(|s| j.status == s)).collect();
                g.print(&jobs, || {
                    if jobs.is_empty() {
                        return "no system jobs".into();
                    }
                    let mut rows =
                        vec![["ID", "NAME", "STATE", "STATUS", "REGARDING", "CREATED"].map(String::from).to_vec()];
                    for j in &jobs {
                        rows.push(vec![
                            j.id.to_string()[..8].to_owned(),
                            j.name.clone(),
                            format!("{:?} ({})", j.state(), j.state().code()),
                            format!("{} ({})", j.status.name(), j.status.code()),
                            j.regarding
                                .as_ref()
                                .map(|r| format!("{} {}", r.logical_name, &r.id.to_string()[..8]))
                                .unwrap_or_default(),
                            plughost::model::Value::DateTime(j.created_on).to_string(),
                        ]);
                    }
                    table(rows)
                })?;
            }
            Jobs::Show { id } => {
                let matches: Vec<_> = jobs.into_iter().filter(|j| j.id.to_string().starts_with(&id)).collect();
                let job = match (matches.len(), id.len() >= 4) {
                    (1, true) => matches.into_iter().next().expect("one"),
                    (0, _) | (_, false) => {
                        return Err(CliError::new(
                            "not_found",
                            format!("no system job matches '{id}' (give 4+ characters of the id)"),
                        ));
                    }
                    (n, _) => {
                        return Err(CliError::new("conflict", format!("'{id}' matches {n} jobs: give more of the id")));
                    }
                };
                g.print(&job, || {
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
                    if let (Some(c), Some(m)) = (&job.error_code, &job.message) {
                        out.push_str(&format!("error     [{c}] {m}\n"));
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
