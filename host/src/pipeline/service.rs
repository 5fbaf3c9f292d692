//! The organization service a request's plug-ins call: each call re-enters the
//! pipeline one level deeper, through the same write buffer.

use uuid::Uuid;

use crate::model::{Entity, EntityCollection, EntityReference, Parameters, Query};
use crate::runtime::{CallContext, OrganizationService, ServiceError};

use super::{Request, Response, Scope};

impl OrganizationService for Scope {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn create(&self, caller: &CallContext, record: Entity) -> std::result::Result<Uuid, ServiceError> {
        match self.nested(caller, Request::Create { record })? {
            Response::Created(id) => Ok(id),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn retrieve(
        &self,
        caller: &CallContext,
        target: EntityReference,
        columns: Vec<String>,
    ) -> std::result::Result<Entity, ServiceError> {
        match self.nested(caller, Request::Retrieve { target, columns })? {
            Response::Retrieved(e) => Ok(e),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn update(&self, caller: &CallContext, record: Entity) -> std::result::Result<(), ServiceError> {
        self.nested(caller, Request::Update { record }).map(|_| ())
    }

    fn delete(&self, caller: &CallContext, target: EntityReference) -> std::result::Result<(), ServiceError> {
        self.nested(caller, Request::Delete { target }).map(|_| ())
    }

    fn retrieve_multiple(
        &self,
        caller: &CallContext,
        query: Query,
    ) -> std::result::Result<EntityCollection, ServiceError> {
        match self.nested(caller, Request::RetrieveMultiple { query })? {
            Response::Collection(c) => Ok(c),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }

    fn execute(
        &self,
        caller: &CallContext,
        message: String,
        parameters: Parameters,
    ) -> std::result::Result<Parameters, ServiceError> {
        match self.nested(caller, Request::Custom { message, target: None, parameters })? {
            Response::Custom(p) => Ok(p),
            other => Err(ServiceError::Failed(format!("unexpected response {other:?}"))),
        }
    }
}
