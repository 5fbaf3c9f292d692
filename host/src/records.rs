//! The registration records: assemblies, plug-ins and steps as the registry, the
//! pipeline and the API see them. A leaf module: the store and the registry both use
//! it, neither through the other. The store keeps them as its own row types
//! (`store/rows.rs`), so these may change shape without changing what is on disk.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{AssemblyHash, Mode, Stage};
use crate::runtime::LimitOverrides;

/// An immutable component, stored by the blake3 hash of its bytes (PluginAssembly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssemblyRecord {
    pub hash: AssemblyHash,
    pub size: u64,
    /// The plug-in world version it was built against.
    pub wit_version: String,
    pub imports: Vec<String>,
    /// UTC milliseconds.
    pub registered_at: i64,
}

/// A named registration of an assembly (PluginType). Upgrading a plug-in is
/// pointing it at another assembly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: String,
    pub assembly: AssemblyHash,
    pub description: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    Pre,
    Post,
}

/// An entity image a step asks for: the record before or after the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub kind: ImageKind,
    /// The name the plug-in looks the image up by.
    pub alias: String,
    /// Attributes to include; empty means all.
    pub attributes: Vec<String>,
}

/// Binds a plug-in to an event (SdkMessageProcessingStep).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: Uuid,
    pub name: String,
    pub plugin: String,
    pub message: String,
    /// The primary entity; `None` fires for every entity.
    pub entity: Option<String>,
    pub stage: Stage,
    pub mode: Mode,
    /// Order within a stage; lower runs first.
    pub rank: i32,
    /// Update steps fire only when one of these changed; empty means always.
    pub filtering_attributes: Vec<String>,
    pub configuration: Option<String>,
    pub images: Vec<ImageSpec>,
    pub limits: LimitOverrides,
    pub enabled: bool,
    /// Asynchronous steps: delete the system job when it succeeds.
    pub delete_job_on_success: bool,
    /// Run up to this many invocations in one instance (0 = a fresh instance every time).
    pub instance_reuse: u32,
    /// Asynchronous steps: the jobs this step queues for one record run one at a
    /// time, in the order of the changes (a dependency token per record).
    pub ordered_per_record: bool,
    pub created_at: i64,
    /// The user the step runs as (Dataverse's impersonating user); `None`: the caller.
    #[serde(default)]
    pub run_as: Option<Uuid>,
}

/// What `register` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    pub assembly: AssemblyRecord,
    /// False when the same bytes were registered before.
    pub assembly_is_new: bool,
    pub plugin: PluginRecord,
    /// The assembly the plug-in pointed at before, when this re-pointed it.
    pub previous_assembly: Option<AssemblyHash>,
    pub steps: Vec<StepRecord>,
}
