//! Registrations: assemblies (by content hash), plug-ins (names pointing at an
//! assembly) and steps (a plug-in bound to an event), with the rules that make a
//! registration valid.
//!
//! **Invariant:** nothing is stored unless the whole registration is valid: the
//! component is validated and compiled first, then assembly, plug-in and steps
//! are written in one transaction.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::records::{AssemblyRecord, ImageKind, ImageSpec, PluginRecord, Registration, StepRecord};

use crate::clock::now_ms;
use crate::model::{AssemblyHash, Mode, Stage, check_name};
use crate::runtime::{ComponentError, LimitOverrides, Runtime};
use crate::store::{Store, StoreError};

/// Longest plug-in or step name.
pub const MAX_PLUGIN_NAME_LEN: usize = 64;
/// Longest step configuration string.
pub const MAX_CONFIGURATION_LEN: usize = 64 << 10;
/// Most instance reuses a step may ask for.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;

/// What a user asks for when adding a step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StepSpec {
    pub name: Option<String>,
    pub plugin: String,
    pub message: String,
    pub entity: Option<String>,
    pub stage: Stage,
    pub mode: Mode,
    pub rank: i32,
    pub filtering_attributes: Vec<String>,
    pub configuration: Option<String>,
    pub images: Vec<ImageSpec>,
    pub limits: LimitOverrides,
    pub disabled: bool,
    pub delete_job_on_success: bool,
    pub instance_reuse: u32,
    pub ordered_per_record: bool,
    /// The user (by name) the step runs as; unset: the caller.
    pub run_as: Option<String>,
    /// Record the step's next this many runs (`crate::runs`); 0: none.
    pub record_runs: u32,
}

/// The messages with a core operation of their own; every other message is a
/// custom message whose main operation (stage 30) a plug-in implements.
pub const CORE_MESSAGES: [&str; 5] = ["Create", "Update", "Delete", "Retrieve", "RetrieveMultiple"];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Component(e) => e.code(),
            RegistryError::Invalid(_) => "invalid",
            RegistryError::NotFound(_) => "not_found",
            RegistryError::Conflict(_) => "conflict",
            RegistryError::Store(e) => e.code(),
        }
    }
}

pub fn check_plugin_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PLUGIN_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "'{name}' is not a plug-in name: use 1 to {MAX_PLUGIN_NAME_LEN} letters, digits, '-', '_' or '.'"
        )))
    }
}

impl StepSpec {
    /// Checks the step against Dataverse's rules and the host's limits, and
    /// makes the record. The plug-in's existence is checked by the store.
    pub fn into_record(self, max_memory_bytes: u64) -> Result<StepRecord, RegistryError> {
        let invalid = |m: String| RegistryError::Invalid(m);
        check_plugin_name(&self.plugin)?;
        let message = self.message.trim().to_owned();
        if message.is_empty() || !message.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(format!(
                "'{message}' is not a message name: use letters, digits and '_' (e.g. Create)"
            )));
        }
        if self.record_runs > crate::runs::MAX_RECORD_RUNS {
            return Err(invalid(format!(
                "record_runs is {}; at most {} runs can be recorded at a time",
                self.record_runs,
                crate::runs::MAX_RECORD_RUNS
            )));
        }
        let core = CORE_MESSAGES.contains(&message.as_str());
        if let Some(entity) = &self.entity {
            check_name(entity).map_err(|m| invalid(format!("entity {m}")))?;
        }
        if self.stage == Stage::MainOperation && core {
            return Err(invalid(format!(
                "{message} has a core operation of its own: stage 30 (main-operation) is only for custom messages"
            )));
        }
        if self.mode == Mode::Asynchronous && self.stage != Stage::PostOperation {
            return Err(invalid("asynchronous steps run after the operation: use stage post-operation (40)".into()));
        }
        if !self.filtering_attributes.is_empty() && message != "Update" {
            return Err(invalid("filtering attributes apply only to Update steps".into()));
        }
        for a in &self.filtering_attributes {
            check_name(a).map_err(|m| invalid(format!("filtering attribute {m}")))?;
        }
        for image in &self.images {
            check_name(&image.alias.to_ascii_lowercase())
                .map_err(|_| invalid(format!("image alias '{}' must be letters, digits and '_'", image.alias)))?;
            for a in &image.attributes {
                check_name(a).map_err(|m| invalid(format!("image attribute {m}")))?;
            }
            match image.kind {
                ImageKind::Pre if message == "Create" => {
                    return Err(invalid("a Create step cannot have a pre-image: the record does not exist yet".into()));
                }
                ImageKind::Post if message == "Delete" => {
                    return Err(invalid("a Delete step cannot have a post-image: the record is gone".into()));
                }
                ImageKind::Post if self.stage != Stage::PostOperation => {
                    return Err(invalid("post-images exist only for post-operation (40) steps".into()));
                }
                _ => {}
            }
        }
        let mut aliases: Vec<_> = self.images.iter().map(|i| (i.kind, i.alias.as_str())).collect();
        aliases.sort();
        if aliases.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("two images of the same kind have the same alias".into()));
        }
        if self.configuration.as_ref().is_some_and(|c| c.len() > MAX_CONFIGURATION_LEN) {
            return Err(invalid(format!("the configuration string is longer than {MAX_CONFIGURATION_LEN} bytes")));
        }
        if self.ordered_per_record && self.mode != Mode::Asynchronous {
            return Err(invalid("ordering per record applies only to asynchronous steps".into()));
        }
        if self.instance_reuse > MAX_INSTANCE_REUSE {
            return Err(invalid(format!("instance reuse is at most {MAX_INSTANCE_REUSE} invocations")));
        }
        self.limits.validate(max_memory_bytes).map_err(invalid)?;
        let name = match self.name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => format!(
                "{}: {} of {} ({}{})",
                self.plugin,
                message,
                self.entity.as_deref().unwrap_or("any entity"),
                self.stage.name(),
                if self.mode == Mode::Asynchronous { ", async" } else { "" }
            ),
        };
        Ok(StepRecord {
            id: Uuid::new_v4(),
            name,
            plugin: self.plugin,
            message,
            entity: self.entity,
            stage: self.stage,
            mode: self.mode,
            rank: self.rank,
            filtering_attributes: self.filtering_attributes,
            configuration: self.configuration,
            images: self.images,
            limits: self.limits,
            enabled: !self.disabled,
            delete_job_on_success: self.delete_job_on_success,
            instance_reuse: self.instance_reuse,
            ordered_per_record: self.ordered_per_record,
            created_at: now_ms(),
            run_as: None,
        })
    }
}

/// The id of the user a step is to run as (an existing user), if one is named.
pub fn resolve_run_as(store: &Store, user: Option<&str>) -> Result<Option<Uuid>, RegistryError> {
    let Some(name) = user else { return Ok(None) };
    match store.user(name) {
        Ok(u) => Ok(Some(u.id)),
        Err(crate::store::StoreError::NotFound(_)) => {
            Err(RegistryError::Invalid(format!("run-as user '{name}' does not exist (plughost users create {name})")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Validates (compiling) `bytes`, then stores the assembly, points plug-in `name` at it and
/// adds `steps`, all in one transaction. Registering the same bytes again is one
/// assembly; registering new bytes under an existing name upgrades the plug-in.
pub fn register(
    store: &Store,
    runtime: &Runtime,
    bytes: &[u8],
    name: &str,
    description: Option<String>,
    steps: Vec<StepSpec>,
) -> Result<Registration, RegistryError> {
    check_plugin_name(name)?;
    let hash = AssemblyHash::of(bytes);
    let (info, compiled) = match store.assembly(&hash)? {
        Some(existing) => (existing, None),
        None => {
            let (component, info) = runtime.validate(bytes)?;
            let record = AssemblyRecord {
                hash,
                size: bytes.len() as u64,
                wit_version: info.wit_version,
                imports: info.imports,
                registered_at: now_ms(),
            };
            (record, Some(component))
        }
    };
    let steps = steps
        .into_iter()
        .map(|mut s| {
            s.plugin = name.to_owned();
            let run_as = resolve_run_as(store, s.run_as.as_deref())?;
            let mut record = s.into_record(runtime.config().max_memory_bytes)?;
            record.run_as = run_as;
            Ok::<_, RegistryError>(record)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let now = now_ms();
    let plugin = PluginRecord { name: name.to_owned(), assembly: hash, description, created_at: now, updated_at: now };
    let registration = store.register(info, bytes, plugin, steps)?;
    // Validation compiled it: keep that code (and cache it on disk), so the first
    // event does not compile it again.
    if let Some(component) = compiled
        && let Err(e) = runtime.adopt(&hash, component)
    {
        tracing::warn!("registered, but keeping the compiled code failed: {e:#}");
    }
    Ok(registration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(message: &str, stage: Stage, mode: Mode) -> StepSpec {
        StepSpec {
            plugin: "p".into(),
            message: message.into(),
            entity: Some("account".into()),
            stage,
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn steps_follow_dataverse_rules() {
        let max = 512 << 20;
        assert!(spec("Create", Stage::PreOperation, Mode::Synchronous).into_record(max).is_ok());
        let err = |s: StepSpec| s.into_record(max).unwrap_err().to_string();
        assert!(err(spec("Create", Stage::PreOperation, Mode::Asynchronous)).contains("post-operation"));
        assert!(err(spec("Create", Stage::MainOperation, Mode::Synchronous)).contains("custom messages"));
        assert!(spec("acme_Approve", Stage::MainOperation, Mode::Synchronous).into_record(max).is_ok());
        let mut s = spec("Create", Stage::PostOperation, Mode::Synchronous);
        s.filtering_attributes = vec!["name".into()];
        assert!(err(s).contains("only to Update"));
        let mut s = spec("Create", Stage::PostOperation, Mode::Synchronous);
        s.images = vec![ImageSpec { kind: ImageKind::Pre, alias: "pre".into(), attributes: vec![] }];
        assert!(err(s).contains("pre-image"));
        let mut s = spec("Update", Stage::PreOperation, Mode::Synchronous);
        s.images = vec![ImageSpec { kind: ImageKind::Post, alias: "post".into(), attributes: vec![] }];
        assert!(err(s).contains("post-operation"));
        let mut s = spec("Update", Stage::PreOperation, Mode::Synchronous);
        s.limits.memory_bytes = Some(1 << 40);
        assert!(err(s).contains("host maximum"));
    }

    #[test]
    fn plugin_names_are_checked() {
        assert!(check_plugin_name("account-number_v2.1").is_ok());
        assert!(check_plugin_name("").is_err());
        assert!(check_plugin_name("has space").is_err());
    }
}
