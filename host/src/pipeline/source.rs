//! Where the pipeline reads from: the local store (`plughost serve`, the CLI), or the
//! server over HTTP (a remote worker, `crate::remote`). The pipeline's rules are the
//! same for both; only reads and the registry come from the source.

use std::ops::ControlFlow;

use uuid::Uuid;

use crate::jobs::SystemJob;
use crate::metadata::EntityDefinition;
use crate::model::{AssemblyHash, Entity};
use crate::records::{PluginRecord, StepRecord};
use crate::security::Principal;
use crate::store::{Snapshot, Store, StoreError, StoredRecord};

/// The records and definitions one request or job run reads.
///
/// **Invariant:** within one view, a record read twice reads the same (repeatable
/// reads), so the version a write is checked against at commit is the version the
/// plug-in saw.
pub trait View: Send + Sync {
    fn record(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>, StoreError>;
    /// Calls `f` for the records of `entity` in id order, starting after `after`.
    fn scan(
        &self,
        entity: &str,
        after: Option<Uuid>,
        f: &mut dyn FnMut(Uuid, StoredRecord) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    fn definition(&self, entity: &str) -> Result<Option<EntityDefinition>, StoreError>;
    /// The principal of an enabled user (`None`: unknown or disabled).
    fn principal(&self, user: Uuid) -> Result<Option<Principal>, StoreError>;
}

/// What the pipeline needs besides a view: the registry and assemblies, and a bulk
/// job's rows.
pub trait Source: Send + Sync {
    /// A view for one request, or for one run of `job` (a remote source reads only
    /// while the job's lease holds).
    fn view(&self, job: Option<&SystemJob>) -> Result<Box<dyn View>, StoreError>;
    fn assembly_bytes(&self, hash: &AssemblyHash) -> anyhow::Result<Vec<u8>>;
    /// Every plug-in and step, and the active workflows.
    fn registry(&self) -> Result<Registered, StoreError>;
    /// Up to `max` of a bulk import's rows, from row `from` on.
    fn bulk_rows(&self, job: &SystemJob, from: u64, max: usize) -> Result<Vec<(u64, Entity)>, StoreError>;
}

/// What the step index is built from.
pub struct Registered {
    pub plugins: Vec<PluginRecord>,
    pub steps: Vec<StepRecord>,
    pub workflows: Vec<crate::workflow::ActiveWorkflow>,
    /// Steps set to record their runs, with the runs each has left.
    pub profiles: Vec<(Uuid, u32)>,
}

impl View for Snapshot {
    fn record(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>, StoreError> {
        Snapshot::record(self, entity, id)
    }

    fn scan(
        &self,
        entity: &str,
        after: Option<Uuid>,
        f: &mut dyn FnMut(Uuid, StoredRecord) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        Snapshot::scan(self, entity, after, f)
    }

    fn definition(&self, entity: &str) -> Result<Option<EntityDefinition>, StoreError> {
        Snapshot::definition(self, entity)
    }

    fn principal(&self, user: Uuid) -> Result<Option<Principal>, StoreError> {
        Snapshot::principal(self, user)
    }
}

impl Source for Store {
    fn view(&self, _job: Option<&SystemJob>) -> Result<Box<dyn View>, StoreError> {
        Ok(Box::new(self.snapshot()?))
    }

    fn assembly_bytes(&self, hash: &AssemblyHash) -> anyhow::Result<Vec<u8>> {
        Store::assembly_bytes(self, hash)?.ok_or_else(|| anyhow::anyhow!("assembly {hash} is missing from the store"))
    }

    fn registry(&self) -> Result<Registered, StoreError> {
        Ok(Registered {
            plugins: self.plugins()?,
            steps: self.steps()?,
            workflows: self.active_workflows()?,
            profiles: self.profiles()?,
        })
    }

    fn bulk_rows(&self, job: &SystemJob, from: u64, max: usize) -> Result<Vec<(u64, Entity)>, StoreError> {
        Store::bulk_rows(self, job.id, from, max)
    }
}
