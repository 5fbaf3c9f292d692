//! `plughost serve`: run the service until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::{CliError, Global};

#[derive(clap::Args)]
pub(crate) struct Serve {
    /// Address to listen on (default 127.0.0.1:7171; port 0 picks a free one).
    #[arg(long, env = "PLUGHOST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long, env = "PLUGHOST_INSECURE")]
    insecure: bool,
}

impl Serve {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let mut config = g.load_config()?;
        if let Some(addr) = self.listen {
            config.listen = addr;
        }
        config.insecure |= self.insecure;
        let data_dir = g.data_dir();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("plughost-io")
            .build()
            .map_err(|e| CliError::new("runtime", format!("cannot start tokio: {e}")))?;
        let served = rt.block_on(plughost::server::serve(config, data_dir, None));
        // Requests still running a plug-in after the drain end with the process; a
        // plug-in's own timeout bounds them anyway.
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        served.map_err(|e| match e.downcast::<plughost::store::StoreError>() {
            Ok(store) => CliError::from(store),
            Err(e) => CliError::new("serve_failed", format!("{e:#}")),
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
