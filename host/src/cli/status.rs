//! `plughost status`: the data directory, the server, and what is registered.

use std::process::ExitCode;

use plughost::server::ServerInfo;

use super::{CliError, Global};

#[derive(clap::Args)]
pub(crate) struct Status {
    /// Also print the admin token.
    #[arg(long)]
    show_token: bool,
}

impl Status {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let data_dir = g.data_dir();
        let server = ServerInfo::read(&data_dir);
        let backend = g.backend()?;
        let plugins = backend.plugins()?.len();
        let steps = backend.steps()?.len();
        let by_status: Vec<(String, u64)> = backend
            .service(None)?
            .counts
            .by_status
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(s, _, n)| (s, n))
            .collect();
        let token = if self.show_token {
            let path = plughost::config::token_path(&data_dir);
            Some(
                g.load_config()?
                    .admin_token
                    .or_else(|| std::fs::read_to_string(path).ok().map(|t| t.trim().to_owned())),
            )
        } else {
            None
        };
        // What `plughost worker --token-file` reads (a configured worker_token has no file).
        let worker_token_file = Some(data_dir.join(plughost::config::WORKER_TOKEN_FILE)).filter(|p| p.exists());
        let store = g.load_config()?.store_location(&data_dir).describe();
        let json = serde_json::json!({
            "data_dir": data_dir,
            "store": store,
            "server": server,
            "plugins": plugins,
            "steps": steps,
            "jobs": by_status.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "admin_token": token.clone().flatten(),
            "worker_token_file": worker_token_file,
        });
        g.print(&json, || {
            let mut out = format!("data dir  {}\nstore     {store}\n", data_dir.display());
            match &server {
                Some(s) => out.push_str(&format!("server    {} (pid {})\n", s.url, s.pid)),
                None => out.push_str("server    not running\n"),
            }
            out.push_str(&format!("plug-ins  {plugins}\nsteps     {steps}\n"));
            let jobs: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out.push_str(&format!("jobs      {}\n", if jobs.is_empty() { "none".into() } else { jobs.join(", ") }));
            if let Some(f) = &worker_token_file {
                out.push_str(&format!("workers   plughost worker --server URL --token-file {}\n", f.display()));
            }
            match token {
                Some(Some(t)) => out.push_str(&format!("token     {t}\n")),
                Some(None) => out.push_str("token     none yet: `plughost serve` creates one\n"),
                None => {}
            }
            out
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
