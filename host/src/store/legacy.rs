//! Job and step records as earlier schemas stored them, read once by the migration
//! that rewrites them in the current layout (`Store::check_schema`).

use serde::Deserialize;
use uuid::Uuid;

use crate::jobs::{JobStatus, OperationType, SystemJob};
use crate::model::{AssemblyHash, EntityReference, ExecutionContext, Parameters};

/// A job record of schemas 1 and 2: with its context, without `output` and the counters.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
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

/// A job record of schema 3: schema 2's and `output` (bincode lays a nested struct
/// out as its fields, in order).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct JobV3 {
    pub(super) v2: JobV2,
    pub(super) output: Parameters,
}

impl From<JobV3> for SystemJob {
    fn from(j: JobV3) -> SystemJob {
        SystemJob { output: j.output, ..SystemJob::from(j.v2) }
    }
}

/// A job in schema 2's layout, for the migration's tests.
#[cfg(test)]
impl From<&SystemJob> for JobV2 {
    fn from(j: &SystemJob) -> JobV2 {
        let j = j.clone();
        JobV2 {
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
        }
    }
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
            lease_expirations: 0,
            recurrence_runs: 0,
        }
    }
}

/// A step record of schemas 1 to 3: limits without `write_bytes`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct StepV3 {
    id: Uuid,
    name: String,
    plugin: String,
    message: String,
    entity: Option<String>,
    stage: u32,
    mode: u32,
    rank: i32,
    filtering_attributes: Vec<String>,
    configuration: Option<String>,
    images: Vec<super::rows::ImageRow>,
    limits: LimitsV3,
    enabled: bool,
    delete_job_on_success: bool,
    instance_reuse: u32,
    ordered_per_record: bool,
    created_at: i64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct LimitsV3 {
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    trace_bytes: Option<u64>,
    host_calls: Option<u64>,
    input_bytes: Option<u64>,
    output_bytes: Option<u64>,
}

impl From<StepV3> for crate::records::StepRecord {
    fn from(s: StepV3) -> Self {
        let l = s.limits;
        crate::records::StepRecord {
            id: s.id,
            name: s.name,
            plugin: s.plugin,
            message: s.message,
            entity: s.entity,
            stage: super::rows::stage_of(s.stage),
            mode: super::rows::mode_of(s.mode),
            rank: s.rank,
            filtering_attributes: s.filtering_attributes,
            configuration: s.configuration,
            images: s.images.into_iter().map(Into::into).collect(),
            limits: crate::runtime::LimitOverrides {
                fuel: l.fuel,
                memory_bytes: l.memory_bytes,
                timeout_ms: l.timeout_ms,
                trace_bytes: l.trace_bytes,
                host_calls: l.host_calls,
                input_bytes: l.input_bytes,
                output_bytes: l.output_bytes,
                write_bytes: None,
            },
            enabled: s.enabled,
            delete_job_on_success: s.delete_job_on_success,
            instance_reuse: s.instance_reuse,
            ordered_per_record: s.ordered_per_record,
            created_at: s.created_at,
        }
    }
}

/// A step as schema 3 stored it, for the migration's tests.
#[cfg(test)]
pub(super) fn step_v3(s: &crate::records::StepRecord) -> StepV3 {
    let l = &s.limits;
    StepV3 {
        id: s.id,
        name: s.name.clone(),
        plugin: s.plugin.clone(),
        message: s.message.clone(),
        entity: s.entity.clone(),
        stage: super::rows::stage_code(s.stage),
        mode: super::rows::mode_code(s.mode),
        rank: s.rank,
        filtering_attributes: s.filtering_attributes.clone(),
        configuration: s.configuration.clone(),
        images: s.images.iter().map(Into::into).collect(),
        limits: LimitsV3 {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout_ms: l.timeout_ms,
            trace_bytes: l.trace_bytes,
            host_calls: l.host_calls,
            input_bytes: l.input_bytes,
            output_bytes: l.output_bytes,
        },
        enabled: s.enabled,
        delete_job_on_success: s.delete_job_on_success,
        instance_reuse: s.instance_reuse,
        ordered_per_record: s.ordered_per_record,
        created_at: s.created_at,
    }
}
