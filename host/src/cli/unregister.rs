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
        let store = g.open_store()?;
        match self {
            Unregister::Plugin { name, with_steps } => {
                let (plugin, steps) = store.unregister_plugin(&name, with_steps)?;
                let json = serde_json::json!({ "plugin": plugin, "removed_steps": steps });
                g.print(&json, || {
                    let mut out = format!("unregistered plug-in {}\n", plugin.name);
                    for s in &steps {
                        out.push_str(&format!("removed step {} {}\n", s.id, s.name));
                    }
                    out
                })?;
            }
            Unregister::Step { step } => {
                let step = store.resolve_step(&step)?;
                let removed = store.remove_step(step.id)?;
                g.print(&removed, || format!("removed step {} {}", removed.id, removed.name))?;
            }
            Unregister::Assembly { hash } => {
                let record = store.resolve_assembly(&hash)?;
                let removed = store.unregister_assembly(&record.hash)?;
                // Compiled code for it is of no further use.
                if let Ok(dirs) = std::fs::read_dir(g.data_dir().join("cache")) {
                    for dir in dirs.flatten() {
                        let _ = std::fs::remove_file(dir.path().join(format!("{}.cwasm", removed.hash)));
                    }
                }
                g.print(&removed, || format!("unregistered assembly {}", removed.hash))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
