//! Jobs the pipeline makes and runs: plug-in execution jobs, bulk jobs, jobs created
//! directly, and when they first run.

use std::sync::Arc;

use uuid::Uuid;

use crate::clock::now_ms;
use crate::jobs::SystemJob;
use crate::metadata::EntityDefinition;
use crate::model::{Entity, EntityReference, ExecutionContext, Mode, Parameters, Query, Stage};
use crate::query;
use crate::store::ChangeSet;

use super::{Pipeline, PipelineError, Request, Result, Scope};

impl Pipeline {
    /// A scope over the store as `job` sees it, running as `who` (default: the job's
    /// users), writing at most `write_bytes`; a store that cannot be read is a run to retry.
    pub(super) fn job_scope(
        self: &Arc<Self>,
        job: &SystemJob,
        who: Option<super::Who>,
        write_bytes: u64,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::result::Result<Arc<Scope>, Box<JobRun>> {
        let snapshot =
            self.source.view(Some(job)).map_err(|e| Box::new(JobRun::retry("store_error", e.to_string())))?;
        let who = who.unwrap_or(super::Who { initiating: job.context.initiating_user_id, user: job.context.user_id });
        Ok(Scope::new(self.clone(), snapshot, job.correlation_id, who, write_bytes, stop))
    }

    /// Runs one batch of a bulk job (see [`crate::bulk`]): its rows or records go
    /// through the pipeline as top-level requests, each in its own savepoint. The
    /// successful ones' effects and the new progress come back, to be committed with
    /// the run's completion. Blocks.
    pub fn run_bulk(self: &Arc<Self>, job: &SystemJob, stop: Arc<std::sync::atomic::AtomicBool>) -> JobRun {
        use crate::bulk::{BATCH, BulkSpec, Failure as RowFailure, ImportFormat, Progress, typed_row};
        let started = std::time::Instant::now();
        let spec = match BulkSpec::from_job(job) {
            Ok(s) => s,
            Err(m) => return JobRun::failed("invalid_job", m),
        };
        let scope = match self.job_scope(job, None, self.defaults.write_bytes, stop) {
            Ok(scope) => scope,
            Err(run) => return *run,
        };
        let failure = |row: Option<u64>, id: Option<Uuid>, e: &PipelineError| RowFailure {
            row,
            id,
            code: e.code().to_owned(),
            message: e.to_string(),
        };
        let mut progress = Progress::from_output(&job.output);
        let total = match &spec {
            BulkSpec::Import { rows, .. } => Some(*rows),
            BulkSpec::Delete { .. } => None,
        };
        let more = match spec {
            BulkSpec::Delete { query } => {
                let page = Query {
                    columns: Vec::new(),
                    orders: Vec::new(),
                    top: None,
                    page_size: Some(BATCH as u32),
                    paging_cookie: progress.after.map(|id| format!("id:{id}")),
                    ..query
                };
                // The job's user deletes what it may read: its own records at user level.
                let owner = match scope.authorize(scope.who, &Request::RetrieveMultiple { query: page.clone() }, None) {
                    Ok(owner) => owner,
                    Err(e) => return JobRun::failed(e.code(), e.to_string()),
                };
                let found = match scope.retrieve_multiple(&page, owner) {
                    Ok(found) => found,
                    Err(e) => return JobRun::failed(e.code(), e.to_string()),
                };
                for record in &found.entities {
                    let id = record.id.expect("stored records have ids");
                    let target = EntityReference { logical_name: page.entity_name.clone(), id };
                    progress
                        .record(scope.attempt(Request::Delete { target }).err().map(|e| failure(None, Some(id), &e)));
                    progress.after = Some(id);
                }
                found.more_records
            }
            BulkSpec::Import { entity, format, rows } => {
                let batch = match self.source.bulk_rows(job, progress.next_row, BATCH) {
                    Ok(batch) => batch,
                    Err(e) => return JobRun::retry("store_error", e.to_string()),
                };
                let def = match scope.definition(&entity) {
                    Ok(def) => def,
                    Err(e) => return JobRun::failed(e.code(), e.to_string()),
                };
                for (index, row) in batch {
                    let row = match format {
                        ImportFormat::Csv => typed_row(&def, row).map_err(PipelineError::Invalid),
                        ImportFormat::Jsonl => Ok(row),
                    };
                    let outcome = row.and_then(|record| scope.attempt(Request::Create { record }));
                    progress.record(outcome.err().map(|e| failure(Some(index + 1), None, &e)));
                    progress.next_row = index + 1;
                }
                progress.next_row < rows
            }
        };
        progress.done = !more;
        let mut output = progress.to_output();
        if let Some(rows) = total {
            // What `jobs watch` draws a bar against.
            output
                .insert("Total".into(), crate::model::ParameterValue::Value(crate::model::Value::Integer(rows as i64)));
        }
        JobRun {
            result: if more { crate::store::JobResult::Progress } else { crate::store::JobResult::Succeeded },
            effects: scope.into_changes(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: started.elapsed().as_micros() as u64,
            delete_on_success: false,
            output,
            message: Some(progress.summary()),
        }
    }
}

/// A job created directly rather than by an event (Dataverse: "directly by a Web
/// service call"): a run of an asynchronous step, once, later, or on a recurrence.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NewJob {
    /// The step: id, unique id prefix or name. It must be asynchronous.
    pub step: String,
    /// Input parameters for the plug-in.
    pub parameters: Parameters,
    /// An RRULE (FREQ=MINUTELY..YEARLY, INTERVAL, COUNT, UNTIL, BYDAY, BYMONTHDAY,
    /// BYMONTH, BYHOUR, BYMINUTE) and its start (RFC 3339 or UTC ms; default now).
    pub recurrence_pattern: Option<String>,
    #[serde(deserialize_with = "crate::model::flexible_time")]
    pub recurrence_start: Option<i64>,
    /// Do not start before this time (RFC 3339 or UTC ms).
    #[serde(deserialize_with = "crate::model::flexible_time")]
    pub postpone_until: Option<i64>,
    pub dependency_token: Option<String>,
}

impl Pipeline {
    /// Builds a job for a step from a [`NewJob`], queued by user `by` (it runs as the
    /// step's run-as user, else as `by`); refuses a bad pattern or step.
    pub fn new_job(&self, spec: NewJob, by: Uuid) -> Result<SystemJob> {
        let step = self.store().resolve_step(&spec.step)?;
        if step.mode != Mode::Asynchronous {
            return Err(PipelineError::Invalid(format!(
                "step '{}' is synchronous: jobs run asynchronous steps",
                step.name
            )));
        }
        let assembly = self.store().plugin(&step.plugin)?.map(|p| p.assembly);
        let context = ExecutionContext {
            message_name: step.message.clone(),
            primary_entity_name: step.entity.clone().unwrap_or_default(),
            stage: Stage::PostOperation,
            mode: Mode::Asynchronous,
            step_id: Some(step.id),
            configuration: step.configuration.clone(),
            input_parameters: spec.parameters,
            operation_created_on: now_ms(),
            initiating_user_id: by,
            user_id: step.run_as.unwrap_or(by),
            ..ExecutionContext::default()
        };
        let mut job = SystemJob::plugin_execution(&step.name, step.id, assembly, context);
        job.dependency_token = spec.dependency_token;
        schedule(&mut job, spec.postpone_until, spec.recurrence_pattern, spec.recurrence_start)?;
        Ok(job)
    }

    /// A bulk delete job for `spec`, checked against the entity's definition.
    pub fn new_bulk_delete(&self, spec: BulkDelete, by: Uuid) -> Result<SystemJob> {
        let q = &spec.query;
        let def = self.store().snapshot()?.definition(&q.entity_name)?.ok_or_else(|| unknown_entity(&q.entity_name))?;
        check_query(q, &def)?;
        let mut job = crate::bulk::BulkSpec::Delete { query: spec.query }.job(spec.name);
        run_by(&mut job, by);
        schedule(&mut job, spec.postpone_until, spec.recurrence_pattern, spec.recurrence_start)?;
        Ok(job)
    }

    /// An import job and its rows, parsed from `bytes` (see [`crate::bulk::parse_import`]).
    pub fn new_import(
        &self,
        entity: &str,
        format: crate::bulk::ImportFormat,
        bytes: &[u8],
        name: Option<String>,
        by: Uuid,
    ) -> Result<(SystemJob, Vec<Entity>)> {
        let def = self.store().snapshot()?.definition(entity)?.ok_or_else(|| unknown_entity(entity))?;
        let rows = crate::bulk::parse_import(&def, format, bytes).map_err(PipelineError::Invalid)?;
        let spec = crate::bulk::BulkSpec::Import { entity: entity.to_owned(), format, rows: rows.len() as u64 };
        let mut job = spec.job(name);
        run_by(&mut job, by);
        Ok((job, rows))
    }
}

/// A bulk job runs as the user who queued it, each row checked against its privileges.
fn run_by(job: &mut SystemJob, by: Uuid) {
    job.context.initiating_user_id = by;
    job.context.user_id = by;
}

/// What `POST /bulk/delete` and `plughost bulk delete` ask for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// The records to delete: the query's entity and criteria (order and paging are ignored).
    pub query: Query,
    #[serde(default)]
    pub name: Option<String>,
    /// Do not start before this time (RFC 3339 or UTC milliseconds).
    #[serde(default, deserialize_with = "crate::model::flexible_time")]
    pub postpone_until: Option<i64>,
    /// Run again on this RRULE (e.g. nightly), from `recurrence_start` (default now).
    #[serde(default)]
    pub recurrence_pattern: Option<String>,
    #[serde(default, deserialize_with = "crate::model::flexible_time")]
    pub recurrence_start: Option<i64>,
}

/// Checks a query's shape and that its criteria name attributes of its entity.
pub(super) fn check_query(q: &Query, def: &EntityDefinition) -> Result<()> {
    query::validate(q).map_err(PipelineError::Invalid)?;
    for c in q.criteria.conditions.iter().chain(q.criteria.groups.iter().flat_map(|g| &g.conditions)) {
        if def.attribute_type(&c.attribute).is_none() {
            return Err(PipelineError::Invalid(format!("{} has no attribute '{}'", q.entity_name, c.attribute)));
        }
    }
    Ok(())
}

pub(super) fn unknown_entity(entity: &str) -> PipelineError {
    PipelineError::UnknownEntity(format!(
        "unknown entity '{entity}': define it first (plughost entities define {entity} --attr NAME:TYPE)"
    ))
}

/// Sets when a new job first runs: not before `postpone_until`, and on a recurrence
/// from its first occurrence; a job that must wait starts Suspended/Waiting.
pub(super) fn schedule(
    job: &mut SystemJob,
    postpone_until: Option<i64>,
    pattern: Option<String>,
    start: Option<i64>,
) -> Result<()> {
    job.postpone_until = postpone_until;
    if let Some(pattern) = pattern {
        let start = start.unwrap_or_else(now_ms);
        // Occurrences fall on whole seconds: the start's own second is the first.
        let first = crate::recurrence::next_after(&pattern, start, start - start.rem_euclid(1000) - 1)
            .map_err(PipelineError::Invalid)?
            .ok_or_else(|| {
                PipelineError::Invalid(format!("the recurrence '{pattern}' has no occurrence after its start"))
            })?;
        job.postpone_until = Some(job.postpone_until.map_or(first, |p| p.max(first)));
        job.recurrence_pattern = Some(pattern);
        job.recurrence_start = Some(start);
    }
    if job.postpone_until.is_some_and(|t| t > now_ms()) {
        job.status = crate::jobs::JobStatus::Waiting;
    }
    Ok(())
}

/// What running a job came to, ready to be completed.
#[derive(Debug)]
pub struct JobRun {
    pub result: crate::store::JobResult,
    pub effects: ChangeSet,
    pub trace: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub delete_on_success: bool,
    /// The plug-in's output parameters, kept on the job.
    pub output: Parameters,
    /// A summary for the job's message (bulk jobs' progress).
    pub message: Option<String>,
}

impl JobRun {
    /// A run with nothing to report but success.
    pub fn succeeded() -> JobRun {
        JobRun::ended(crate::store::JobResult::Succeeded)
    }

    pub(super) fn failed(code: &str, message: String) -> JobRun {
        JobRun::ended(crate::store::JobResult::Failed { code: code.into(), message })
    }

    pub fn retry(code: &str, message: String) -> JobRun {
        JobRun::ended(crate::store::JobResult::Retry { code: code.into(), message })
    }

    /// The completion that reports this run of `job` (leased with its fencing token),
    /// under a retry policy; `purge_before` is the deletion service's cut-off.
    pub fn completion(
        self,
        job: &crate::jobs::SystemJob,
        retry: crate::jobs::RetryPolicy,
        purge_before: Option<i64>,
    ) -> crate::store::JobCompletion {
        crate::store::JobCompletion {
            id: job.id,
            fencing_token: job.fencing_token,
            result: self.result,
            effects: self.effects,
            trace: self.trace,
            fuel_used: self.fuel_used,
            duration_us: self.duration_us,
            delete_on_success: self.delete_on_success,
            max_retries: retry.max_retries,
            backoff_ms: retry.backoff_ms,
            purge_before,
            output: self.output,
            message: self.message,
        }
    }

    pub(super) fn ended(result: crate::store::JobResult) -> JobRun {
        JobRun {
            result,
            effects: ChangeSet::default(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: 0,
            delete_on_success: false,
            output: Parameters::new(),
            message: None,
        }
    }
}
