//! `plughost register FILE --name N [--step MESSAGE:ENTITY:STAGE[:MODE]]...`

use std::path::PathBuf;
use std::process::ExitCode;

use plughost::model::{Mode, Stage};
use plughost::registry::StepSpec;

use super::{CliError, Global, kib, read_file};

#[derive(clap::Args)]
pub(crate) struct Register {
    /// The component (.wasm) to register.
    file: PathBuf,
    /// The plug-in's name; registering new bytes under an existing name upgrades it.
    #[arg(long)]
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// Add a step: MESSAGE:ENTITY:STAGE[:MODE], e.g. Create:account:pre-operation or
    /// Create:account:40:async. ENTITY '*' fires for every entity.
    #[arg(long = "step", value_name = "SPEC")]
    steps: Vec<String>,
    /// Configuration string for the steps added here.
    #[arg(long)]
    config: Option<String>,
    /// Rank for the steps added here (lower runs first).
    #[arg(long, default_value_t = 1)]
    rank: i32,
}

/// Parses MESSAGE:ENTITY:STAGE[:MODE].
pub(crate) fn parse_step(spec: &str) -> Result<StepSpec, CliError> {
    let bad = |why: &str| {
        CliError::new(
            "invalid",
            format!("step '{spec}' {why}: use MESSAGE:ENTITY:STAGE[:MODE], e.g. Create:account:pre-operation:sync"),
        )
    };
    let parts: Vec<&str> = spec.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(bad("has the wrong number of parts"));
    }
    let stage: Stage = parts[2].parse().map_err(|e: String| bad(&e))?;
    let mode: Mode = parts.get(3).map_or(Ok(Mode::Synchronous), |m| m.parse()).map_err(|e: String| bad(&e))?;
    let entity = match parts[1] {
        "" | "*" => None,
        e => Some(e.to_owned()),
    };
    Ok(StepSpec { message: parts[0].to_owned(), entity, stage, mode, ..Default::default() })
}

impl Register {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let bytes = read_file(&self.file, "component")?;
        let steps = self
            .steps
            .iter()
            .map(|s| {
                let mut spec = parse_step(s)?;
                spec.configuration = self.config.clone();
                spec.rank = self.rank;
                Ok(spec)
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let reg = g.backend()?.register(&bytes, &self.name, self.description, steps)?;
        g.print(&reg, || {
            let a = &reg.assembly;
            let mut out = format!(
                "registered plug-in {} -> assembly {} ({}, {}, {}@{})\n",
                reg.plugin.name,
                a.hash.short(),
                if reg.assembly_is_new { "new" } else { "already stored" },
                kib(a.size),
                plughost::runtime::WIT_PACKAGE,
                a.wit_version
            );
            if let Some(prev) = reg.previous_assembly {
                out.push_str(&format!("upgraded from assembly {}\n", prev.short()));
            }
            for s in &reg.steps {
                out.push_str(&format!("added step {} {}\n", s.id, s.name));
            }
            out
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_specs_parse() {
        let s = parse_step("Create:account:pre-operation").unwrap();
        assert_eq!(
            (s.message.as_str(), s.entity.as_deref(), s.stage, s.mode),
            ("Create", Some("account"), Stage::PreOperation, Mode::Synchronous)
        );
        let s = parse_step("Update:*:40:async").unwrap();
        assert_eq!((s.entity, s.stage, s.mode), (None, Stage::PostOperation, Mode::Asynchronous));
        assert!(parse_step("Create:account").is_err());
        assert!(parse_step("Create:account:99").unwrap_err().message.contains("unknown stage"));
    }
}
