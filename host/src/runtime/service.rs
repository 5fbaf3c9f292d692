//! The port through which a plug-in reaches data: the organization service the
//! runtime offers to guests, implemented elsewhere (the in-memory data set of
//! `plughost test`, the pipeline over the store).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Entity, EntityCollection, EntityReference, Parameters, Query};

/// Who is calling, from which invocation: what a call back into the pipeline
/// needs to run one level deeper.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The depth of the invocation making the call; the call itself runs at depth + 1.
    pub depth: u32,
    pub correlation_id: Uuid,
    pub initiating_user_id: Uuid,
    pub user_id: Uuid,
    pub step_id: Option<Uuid>,
}

/// Why a data call failed. Plug-ins see it as the WIT `service-error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ServiceError {
    NotFound(String),
    AlreadyExists(String),
    Invalid(String),
    Denied(String),
    DepthExceeded(String),
    Limit(String),
    Rejected(String),
    Failed(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, m) = match self {
            ServiceError::NotFound(m) => ("not found", m),
            ServiceError::AlreadyExists(m) => ("already exists", m),
            ServiceError::Invalid(m) => ("invalid", m),
            ServiceError::Denied(m) => ("denied", m),
            ServiceError::DepthExceeded(m) => ("depth exceeded", m),
            ServiceError::Limit(m) => ("limit", m),
            ServiceError::Rejected(m) => ("rejected", m),
            ServiceError::Failed(m) => ("failed", m),
        };
        write!(f, "{kind}: {m}")
    }
}

impl std::error::Error for ServiceError {}

/// Data access for plug-ins (Dataverse IOrganizationService).
///
/// Calls happen on the invoking thread while the plug-in waits; implementations
/// use interior mutability so that a nested invocation can share them.
pub trait OrganizationService: Send + Sync {
    fn create(&self, caller: &CallContext, record: Entity) -> Result<Uuid, ServiceError>;
    fn retrieve(
        &self,
        caller: &CallContext,
        target: EntityReference,
        columns: Vec<String>,
    ) -> Result<Entity, ServiceError>;
    fn update(&self, caller: &CallContext, record: Entity) -> Result<(), ServiceError>;
    fn delete(&self, caller: &CallContext, target: EntityReference) -> Result<(), ServiceError>;
    fn retrieve_multiple(&self, caller: &CallContext, query: Query) -> Result<EntityCollection, ServiceError>;
    fn execute(
        &self,
        caller: &CallContext,
        message: String,
        parameters: Parameters,
    ) -> Result<Parameters, ServiceError>;
    /// Whether the work this invocation does for was canceled or paused meanwhile:
    /// the runtime checks it every epoch tick and stops the plug-in (`stopped`).
    fn stopped(&self) -> bool {
        false
    }
}

/// A service with no data: every call is refused. For plug-ins run without a
/// data set.
#[derive(Debug, Default)]
pub struct NoData;

impl NoData {
    fn refuse<T>() -> Result<T, ServiceError> {
        Err(ServiceError::Denied("no data service is available to this invocation".into()))
    }
}

impl OrganizationService for NoData {
    fn create(&self, _: &CallContext, _: Entity) -> Result<Uuid, ServiceError> {
        Self::refuse()
    }
    fn retrieve(&self, _: &CallContext, _: EntityReference, _: Vec<String>) -> Result<Entity, ServiceError> {
        Self::refuse()
    }
    fn update(&self, _: &CallContext, _: Entity) -> Result<(), ServiceError> {
        Self::refuse()
    }
    fn delete(&self, _: &CallContext, _: EntityReference) -> Result<(), ServiceError> {
        Self::refuse()
    }
    fn retrieve_multiple(&self, _: &CallContext, _: Query) -> Result<EntityCollection, ServiceError> {
        Self::refuse()
    }
    fn execute(&self, _: &CallContext, _: String, _: Parameters) -> Result<Parameters, ServiceError> {
        Self::refuse()
    }
}
