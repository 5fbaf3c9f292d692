//! The workflow operations users call (CLI, HTTP), on [`Admin`]: create, update,
//! list, show, activate, deactivate, run on demand, and a run's log.
//!
//! **Invariants:** a definition is validated against the store (entities, plug-ins,
//! users, other workflows) before anything is written; it changes only while the
//! workflow is inactive; activation freezes it as a new version (user names in
//! `assign` steps resolved to ids) and reloads the step index, here and, through
//! the registry generation, in every process sharing the store.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Action, Catalog, Definition, LogEntry, Step, WorkflowRecord};
use crate::admin::{Admin, AdminError};
use crate::clock::now_ms;
use crate::jobs::{OperationType, SystemJob};
use crate::metadata::EntityDefinition;
use crate::pipeline::Who;
use crate::pipeline::workflow_job;
use crate::security::Principal;
use crate::store::{Store, StoreError};

type Result<T, E = AdminError> = std::result::Result<T, E>;

/// A workflow as listed and shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkflowView {
    pub id: Uuid,
    pub name: String,
    pub entity: String,
    pub owner: Uuid,
    pub active: bool,
    /// The last frozen version (0: never activated).
    pub version: u32,
    pub created_on: i64,
    pub modified_on: i64,
    /// The definition shown: the current one, or the version asked for.
    pub definition: serde_json::Value,
}

impl WorkflowView {
    fn of(r: &WorkflowRecord, json: &str) -> WorkflowView {
        WorkflowView {
            id: r.id,
            name: r.name.clone(),
            entity: r.entity.clone(),
            owner: r.owner,
            active: r.active,
            version: r.version,
            created_on: r.created_on,
            modified_on: r.modified_on,
            definition: serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Validation's view of the store: one snapshot for every entity it asks about.
struct StoreCatalog<'a>(&'a Store, Option<crate::store::Snapshot>);

impl<'a> StoreCatalog<'a> {
    fn of(store: &'a Store) -> StoreCatalog<'a> {
        StoreCatalog(store, store.snapshot().ok())
    }
}

impl Catalog for StoreCatalog<'_> {
    fn entity(&self, name: &str) -> Option<EntityDefinition> {
        self.1.as_ref()?.definition(name).ok().flatten()
    }

    fn plugin_exists(&self, name: &str) -> bool {
        matches!(self.0.plugin(name), Ok(Some(_)))
    }

    fn workflow(&self, name: &str) -> Option<(String, bool, Vec<String>)> {
        let w = self.0.workflow(name).ok()??;
        let d = Definition::parse(w.definition.as_bytes()).ok()?;
        Some((w.entity, d.triggers.child, d.children()))
    }

    fn user_exists(&self, name: &str) -> bool {
        self.0.user(name).is_ok()
    }
}

fn invalid_definition(e: String) -> AdminError {
    AdminError::Invalid { code: "invalid_workflow", message: e }
}

impl Admin {
    /// Stores a new, inactive workflow owned by `owner` from its JSON definition.
    pub fn workflow_create(&self, json: &[u8], owner: Uuid) -> Result<WorkflowView> {
        let def = Definition::parse(json).map_err(invalid_definition)?;
        def.validate(&StoreCatalog::of(self.store())).map_err(invalid_definition)?;
        let now = now_ms();
        let record = WorkflowRecord {
            id: Uuid::now_v7(),
            name: def.name.clone(),
            entity: def.entity.clone(),
            owner,
            active: false,
            version: 0,
            definition: def.to_json(),
            created_on: now,
            modified_on: now,
        };
        self.store().create_workflow(&record)?;
        Ok(WorkflowView::of(&record, &record.definition))
    }

    /// Replaces an inactive workflow's definition (its name stays).
    pub fn workflow_update(&self, name: &str, json: &[u8]) -> Result<WorkflowView> {
        let def = Definition::parse(json).map_err(invalid_definition)?;
        if def.name != name {
            return Err(invalid_definition(format!(
                "the definition is named '{}', not '{name}': a workflow keeps its name",
                def.name
            )));
        }
        def.validate(&StoreCatalog::of(self.store())).map_err(invalid_definition)?;
        let record = self.store().update_workflow(name, |old| {
            if old.active {
                return Err(StoreError::Conflict(format!(
                    "workflow '{name}' is active: deactivate it before changing it (its runs keep version {})",
                    old.version
                )));
            }
            Ok(WorkflowRecord {
                entity: def.entity.clone(),
                definition: def.to_json(),
                modified_on: now_ms(),
                ..old.clone()
            })
        })?;
        Ok(WorkflowView::of(&record, &record.definition))
    }

    pub fn workflows(&self) -> Result<Vec<WorkflowView>> {
        Ok(self.store().workflows()?.iter().map(|w| WorkflowView::of(w, &w.definition)).collect())
    }

    /// A workflow, with its current definition or a frozen version's.
    pub fn workflow(&self, name: &str, version: Option<u32>) -> Result<WorkflowView> {
        let w = self.store().workflow(name)?.ok_or_else(|| unknown(name))?;
        match version {
            None => Ok(WorkflowView::of(&w, &w.definition)),
            Some(v) => {
                let json = self.store().workflow_version(w.id, v)?.ok_or_else(|| {
                    AdminError::not_found(format!("workflow '{name}' has no version {v} (its last is {})", w.version))
                })?;
                Ok(WorkflowView { version: v, ..WorkflowView::of(&w, &json) })
            }
        }
    }

    /// Activates (freezing the current definition as the next version) or deactivates
    /// a workflow. Runs already queued keep their version either way.
    pub fn workflow_set_active(&self, name: &str, active: bool) -> Result<WorkflowView> {
        let mut frozen = None;
        if active {
            let w = self.store().workflow(name)?.ok_or_else(|| unknown(name))?;
            let mut def = Definition::parse(w.definition.as_bytes()).map_err(invalid_definition)?;
            // What it names may have gone since it was written.
            def.validate(&StoreCatalog::of(self.store())).map_err(invalid_definition)?;
            resolve_users(self.store(), &mut def.steps)?;
            frozen = Some(def.to_json());
        }
        let record = self.store().update_workflow(name, |old| {
            if old.active == active {
                return Ok(old.clone());
            }
            let mut new = WorkflowRecord { active, modified_on: now_ms(), ..old.clone() };
            if let Some(json) = &frozen {
                new.version = old.version + 1;
                new.definition = json.clone();
            }
            Ok(new)
        })?;
        self.pipeline().reload_steps()?;
        Ok(WorkflowView::of(&record, &record.definition))
    }

    /// Deletes an inactive workflow and its frozen versions. Its runs go on: each
    /// carries the version it started with.
    pub fn workflow_delete(&self, name: &str) -> Result<WorkflowView> {
        let gone = self.store().delete_workflow(name, |w| {
            if w.active {
                return Err(StoreError::Conflict(format!(
                    "workflow '{name}' is active: deactivate it before deleting it"
                )));
            }
            Ok(())
        })?;
        Ok(WorkflowView::of(&gone, &gone.definition))
    }

    /// Starts a run of an active on-demand workflow on a record, as `who` (Dataverse:
    /// an on-demand run runs as the caller).
    pub fn workflow_run(&self, name: &str, record: Uuid, who: &Principal) -> Result<SystemJob> {
        let steps = self.pipeline().active_workflow(name).ok_or_else(|| match self.store().workflow(name) {
            Ok(Some(_)) => AdminError::Invalid {
                code: "workflow_inactive",
                message: format!("workflow '{name}' is not active: activate it first"),
            },
            _ => unknown(name),
        })?;
        if !steps.definition.triggers.on_demand {
            return Err(AdminError::Invalid {
                code: "workflow_not_on_demand",
                message: format!("workflow '{name}' cannot be run on demand (its triggers lack on_demand)"),
            });
        }
        let entity = &steps.definition.entity;
        let snapshot = self.store().snapshot()?;
        let stored = snapshot
            .record(entity, record)?
            .ok_or_else(|| AdminError::not_found(format!("{entity} with id {record} does not exist")))?;
        let by = Who { initiating: who.user_id, user: who.user_id };
        let job = workflow_job(
            &steps,
            stored.to_entity(entity, record),
            crate::pipeline::TRIGGER_ON_DEMAND,
            by,
            1,
            Uuid::new_v4(),
        );
        Ok(self.queue().create(job)?)
    }

    /// A run's log rows, for a user who may see the job.
    pub fn workflow_log(&self, who: &Principal, job: Uuid) -> Result<Vec<LogEntry>> {
        let j = self.job_of(who, job)?;
        if j.operation_type != OperationType::Workflow {
            return Err(AdminError::invalid(format!("system job {job} is not a workflow run")));
        }
        Ok(self.store().workflow_log(job)?)
    }
}

fn unknown(name: &str) -> AdminError {
    AdminError::not_found(format!("no workflow is named '{name}': see `plughost workflows list`"))
}

/// Replaces user names in `assign` steps by the users' ids (a frozen version names
/// users by id, as a run on a remote worker can read them).
fn resolve_users(store: &Store, steps: &mut [Step]) -> Result<()> {
    for s in steps {
        match &mut s.action {
            Action::Assign { owner } if !owner.contains("{{") && owner.parse::<Uuid>().is_err() => {
                *owner = store.user(owner)?.id.to_string();
            }
            Action::Condition { branches } => {
                for b in branches {
                    resolve_users(store, &mut b.steps)?;
                }
            }
            Action::Wait { branches } => {
                for b in branches {
                    resolve_users(store, &mut b.steps)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
