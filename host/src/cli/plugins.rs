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
        let store = g.open_store()?;
        match self {
            Plugins::List => {
                let plugins = store.plugins()?;
                let steps = store.steps()?;
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
                let plugin = store.plugin(&name)?.ok_or_else(|| {
                    CliError::new("not_found", format!("no plug-in named '{name}': see `plughost plugins list`"))
                })?;
                let assembly = store.assembly(&plugin.assembly)?;
                let steps: Vec<_> = store.steps()?.into_iter().filter(|s| s.plugin == name).collect();
                let json = serde_json::json!({ "plugin": plugin, "assembly": assembly, "steps": steps });
                g.print(&json, || {
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
                    for s in &steps {
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
