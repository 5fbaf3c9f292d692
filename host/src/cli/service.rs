//! `plughost service status|pause|resume`: the asynchronous service of a running server.

use std::process::ExitCode;

use super::{CliError, Global};

#[derive(clap::Subcommand)]
pub(crate) enum Service {
    /// Workers, whether they are paused, and job counts.
    Status,
    /// Stop leasing new jobs (running ones finish); the server keeps serving.
    Pause,
    /// Start leasing again.
    Resume,
}

impl Service {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let action = match self {
            Service::Status => None,
            Service::Pause => Some(plughost::admin::ServiceAction::Pause),
            Service::Resume => Some(plughost::admin::ServiceAction::Resume),
        };
        let status = g.backend()?.service(action)?;
        g.print(&status, || {
            let state = match (status.running, status.paused) {
                (false, _) => "not running (no server, or a server without workers or remote workers)",
                (true, true) => "paused",
                (true, false) => "running",
            };
            let counts: Vec<String> = status
                .counts
                .by_status
                .iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(s, c, n)| format!("{s} ({c}) {n}"))
                .collect();
            format!(
                "service   {state}\nworkers   {} in the server, {} remote\nrunnable  {}\njobs      {}\n",
                status.workers,
                status.remote_workers,
                status.counts.runnable,
                if counts.is_empty() { "none".into() } else { counts.join(", ") }
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
