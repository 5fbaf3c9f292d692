//! Job records as earlier schemas stored them, read once by the migration that
//! rewrites them in the current layout (`Store::check_schema`).

use serde::Deserialize;
use uuid::Uuid;

use crate::jobs::{JobStatus, OperationType, SystemJob};
use crate::model::{AssemblyHash, EntityReference, ExecutionContext, Parameters};

/// A job record of schemas 1 and 2: the current one without `output`.
#[derive(Deserialize)]
pub(super) struct JobV2 {
    id: Uuid,
    sequence: u64,
    name: String,
    operation_type: OperationType,
    status: JobStatus,
    created_on: i64,
    started_on: Option<i64>,
    completed_on: Option<i64>,
    postpone_until: Option<i64>,
    dependency_token: Option<String>,
    recurrence_pattern: Option<String>,
    recurrence_start: Option<i64>,
    correlation_id: Uuid,
    depth: u32,
    step_id: Option<Uuid>,
    assembly: Option<AssemblyHash>,
    regarding: Option<EntityReference>,
    context: ExecutionContext,
    host_id: Option<String>,
    lease_expiry: Option<i64>,
    fencing_token: u64,
    retry_count: u32,
    error_code: Option<String>,
    message: Option<String>,
    trace: String,
    fuel_used: u64,
    duration_us: u64,
}

impl From<JobV2> for SystemJob {
    fn from(j: JobV2) -> SystemJob {
        SystemJob {
            id: j.id,
            sequence: j.sequence,
            name: j.name,
            operation_type: j.operation_type,
            status: j.status,
            created_on: j.created_on,
            started_on: j.started_on,
            completed_on: j.completed_on,
            postpone_until: j.postpone_until,
            dependency_token: j.dependency_token,
            recurrence_pattern: j.recurrence_pattern,
            recurrence_start: j.recurrence_start,
            correlation_id: j.correlation_id,
            depth: j.depth,
            step_id: j.step_id,
            assembly: j.assembly,
            regarding: j.regarding,
            context: j.context,
            host_id: j.host_id,
            lease_expiry: j.lease_expiry,
            fencing_token: j.fencing_token,
            retry_count: j.retry_count,
            error_code: j.error_code,
            message: j.message,
            trace: j.trace,
            fuel_used: j.fuel_used,
            duration_us: j.duration_us,
            output: Parameters::new(),
        }
    }
}
