//! `plughost plugins list|show`

use std::process::ExitCode;

use super::{CliError, Global, kib, table};

#[derive(clap::Subcommand)]
pub(crate) enum Plugins {
    /// List registered plug-ins.
    List,
    /// Show one plug-in with its assembly and steps.
    Show { name: String },
}

impl Plugins {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        match self {
            Plugins::List => {
                let plugins = backend.plugins()?;
                let steps = backend.steps()?;
                g.print(&plugins, || {
                    if plugins.is_empty() {
                        return "no plug-ins registered: add one with `plughost register FILE --name NAME`".into();
                    }
                    let mut rows = vec![vec!["NAME".into(), "ASSEMBLY".into(), "STEPS".into(), "DESCRIPTION".into()]];
                    for p in &plugins {
                        let n = steps.iter().filter(|s| s.plugin == p.name).count();
                        rows.push(vec![
                            p.name.clone(),
                            p.assembly.short(),
                            n.to_string(),
                            p.description.clone().unwrap_or_default(),
                        ]);
                    }
                    table(rows)
                })?;
            }
            Plugins::Show { name } => {
                let details = backend.plugin(&name)?;
                let (plugin, assembly, steps) = (&details.plugin, &details.assembly, &details.steps);
                g.print(&details, || {
                    let mut out = format!("plug-in   {}\n", plugin.name);
                    if let Some(d) = &plugin.description {
                        out.push_str(&format!("about     {d}\n"));
                    }
                    out.push_str(&format!("assembly  {}\n", plugin.assembly));
                    if let Some(a) = &assembly {
                        out.push_str(&format!(
                            "          {}, world {}@{}\n",
                            kib(a.size),
                            plughost::runtime::WIT_PACKAGE,
                            a.wit_version
                        ));
                        out.push_str(&format!("          imports {}\n", a.imports.join(", ")));
                    }
                    out.push_str(&format!("steps     {}\n", steps.len()));
                    for s in steps {
                        out.push_str(&format!(
                            "  {}  {}{}\n",
                            s.id,
                            s.name,
                            if s.enabled { "" } else { " [disabled]" }
                        ));
                    }
                    out
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
