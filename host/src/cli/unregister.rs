//! `plughost unregister plugin|step|assembly ...`

use std::process::ExitCode;

use super::{CliError, Global};

#[derive(clap::Subcommand)]
pub(crate) enum Unregister {
    /// Remove a plug-in (refused while it has steps, unless --with-steps).
    Plugin {
        name: String,
        /// Remove its steps too.
        #[arg(long)]
        with_steps: bool,
    },
    /// Remove a step, by id, unique id prefix or name.
    Step { step: String },
    /// Remove an assembly no plug-in uses, by hash or unique prefix (8+ hex digits).
    Assembly { hash: String },
}

impl Unregister {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        match self {
            Unregister::Plugin { name, with_steps } => {
                let removed = backend.unregister_plugin(&name, with_steps)?;
                g.print(&removed, || {
                    let mut out = format!("unregistered plug-in {}\n", removed.plugin.name);
                    for s in &removed.removed_steps {
                        out.push_str(&format!("removed step {} {}\n", s.id, s.name));
                    }
                    out
                })?;
            }
            Unregister::Step { step } => {
                let removed = backend.remove_step(&step)?;
                g.print(&removed, || format!("removed step {} {}", removed.id, removed.name))?;
            }
            Unregister::Assembly { hash } => {
                let removed = backend.unregister_assembly(&hash)?;
                g.print(&removed, || format!("unregistered assembly {}", removed.hash))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
