//! Workflows in the pipeline: the triggers that queue runs in the change set of the
//! request that fired them, and a run's interpreter.
//!
//! One run of a workflow job executes steps from the position its output keeps,
//! each step's writes in a savepoint of one scope, until the workflow ends, reaches
//! a wait, fails, or has run [`STEPS_PER_RUN`] steps. Its writes, its log rows and
//! its new position commit together, in the transaction that completes the run
//! (`JobQueue::complete_all`): after a crash the run resumes at the first step whose
//! effects did not commit, and no step's effects exist twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use super::jobs::JobRun;
use super::{Pipeline, PipelineError, Request, Response, Scope, Who};
use crate::clock::now_ms;
use crate::jobs::{JobResult, OperationType, SystemJob, Watch};
use crate::model::{Entity, EntityReference, ExecutionContext, Mode, ParameterValue, Parameters, Stage, Value};
use crate::store::LogRow;
use crate::workflow::state::{self, Path, Resolve, RunState};
use crate::workflow::{
    Action, ActiveWorkflow, Definition, LOOP_CODE, LOOP_LIMIT, LogEntry, LogStatus, STEPS_PER_RUN, Step, StopStatus,
};

/// The message a run's context names for each way it started.
pub const TRIGGER_ON_DEMAND: &str = "OnDemand";
pub const TRIGGER_CHILD: &str = "Child";

/// A new run of `w` on `record`, queued for `who` (the run's user is `who.user`).
pub fn workflow_job(
    w: &ActiveWorkflow,
    record: Entity,
    trigger: &str,
    who: Who,
    chain: u32,
    correlation_id: Uuid,
) -> SystemJob {
    let mut input = Parameters::new();
    input.insert("WorkflowVersion".into(), ParameterValue::Value(Value::Integer(w.version.into())));
    let id = record.id;
    input.insert("Target".into(), ParameterValue::Entity(record));
    let context = ExecutionContext {
        message_name: trigger.to_owned(),
        primary_entity_name: w.definition.entity.clone(),
        primary_entity_id: id,
        stage: Stage::PostOperation,
        mode: Mode::Asynchronous,
        depth: chain,
        correlation_id,
        step_id: Some(w.id),
        initiating_user_id: who.initiating,
        user_id: who.user,
        operation_created_on: now_ms(),
        input_parameters: input,
        configuration: Some(w.json.to_string()),
        ..ExecutionContext::default()
    };
    let mut job = SystemJob::plugin_execution(&w.definition.name, w.id, None, context);
    job.operation_type = OperationType::Workflow;
    job.depth = chain;
    job
}

impl Scope {
    /// Queues a run of every active workflow that `request` (just done) triggers.
    pub(super) fn trigger_workflows(
        &self,
        request: &Request,
        ctx: &ExecutionContext,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) {
        let Some(workflows) = self.steps.workflows.get(&ctx.primary_entity_name) else { return };
        for w in workflows {
            let t = &w.definition.triggers;
            let fires = match request {
                Request::Create { .. } => t.create,
                Request::Update { record } => w.definition.fires_on_update(&|a: &str| {
                    record.attributes.get(a).is_some_and(|new| pre.and_then(|p| p.attributes.get(a)) != Some(new))
                }),
                Request::Delete { .. } => t.delete,
                _ => false,
            };
            let Some(record) = post.or(pre).filter(|_| fires) else { continue };
            // A triggered run runs as the workflow's owner (Dataverse's rule).
            let who = Who { initiating: ctx.initiating_user_id, user: w.owner };
            let chain = self.chain.load(Ordering::SeqCst) + 1;
            let trigger = ctx.message_name.as_str();
            self.overlay().jobs.push(workflow_job(w, record.clone(), trigger, who, chain, self.correlation_id));
        }
    }
}

/// What a step did, for its log row and the position.
#[derive(Default)]
struct Done {
    inputs: Parameters,
    outputs: Parameters,
    /// The branch a condition or wait took.
    branch: Option<usize>,
    child: Option<usize>,
}

enum StepEnd {
    Next(Done),
    Wait { until: Option<i64>, watch: Watch, first: bool },
    Stop(StopStatus, String),
}

enum StepError {
    Failed(String, String),
    Retry(String, String),
}

impl From<PipelineError> for StepError {
    fn from(e: PipelineError) -> StepError {
        match e {
            PipelineError::Store(ref s) if matches!(s, crate::store::StoreError::Unavailable(_)) => {
                StepError::Retry(e.code().to_owned(), e.to_string())
            }
            e => StepError::Failed(e.code().to_owned(), e.to_string()),
        }
    }
}

impl From<JobResult> for StepError {
    /// A plug-in's failure (or a failed load) as a step's: only failures and retries
    /// come this way.
    fn from(r: JobResult) -> StepError {
        match r {
            JobResult::Retry { code, message } => StepError::Retry(code, message),
            JobResult::Failed { code, message } => StepError::Failed(code, message),
            other => StepError::Failed("internal".into(), format!("a plug-in's run ended with {other:?}")),
        }
    }
}

fn invalid(message: String) -> StepError {
    StepError::Failed("invalid".into(), message)
}

impl Pipeline {
    /// Runs a workflow job from its position (see the module). Blocks.
    pub fn run_workflow(self: &Arc<Self>, job: &SystemJob, stop: Arc<AtomicBool>) -> JobRun {
        let started = std::time::Instant::now();
        // The active version is parsed already, in the step index; an older one is
        // parsed from the run's context.
        let json = job.context.configuration.as_deref().unwrap_or_default();
        let active = self.steps.read().unwrap_or_else(|p| p.into_inner()).workflow_names.get(&job.name).cloned();
        let def = match active.filter(|w| Some(w.id) == job.step_id && *w.json == *json) {
            Some(w) => w.definition,
            None => match Definition::parse(json.as_bytes()) {
                Ok(d) => Arc::new(d),
                Err(m) => return JobRun::failed("invalid_job", m),
            },
        };
        let state = match RunState::from_output(&job.output) {
            Ok(s) => s,
            Err(m) => return JobRun::failed("invalid_job", m),
        };
        if state.log_seq == 0 && state.at.is_empty() && job.depth > LOOP_LIMIT {
            return JobRun::failed(
                LOOP_CODE,
                format!(
                    "workflow '{}' was started by a chain of {} workflow runs in one operation, more than {LOOP_LIMIT}: it keeps triggering itself, so it was stopped before its first step",
                    def.name, job.depth
                ),
            );
        }
        let scope = match self.job_scope(job, None, self.defaults.write_bytes, stop) {
            Ok(scope) => scope,
            Err(run) => return *run,
        };
        scope.chain.store(job.depth, Ordering::SeqCst);
        let mut run =
            Run { scope: scope.clone(), job, def: &def, state, log: Vec::new(), trace: String::new(), fuel: 0 };
        let end = run.go();
        let Run { state, log, trace, fuel: fuel_used, .. } = run;
        let message = |what: &str| Some(format!("{what} at step {}", state.position()));
        let message = match &end {
            JobResult::Succeeded => Some(format!("workflow '{}' completed", def.name)),
            JobResult::Progress => message("running"),
            JobResult::Wait { .. } => message("waiting"),
            JobResult::Retry { code, message } => return JobRun::retry(code, message.clone()),
            JobResult::Failed { .. } | JobResult::Canceled { .. } => None,
        };
        let result = end;
        let mut effects = scope.into_changes();
        effects.log = log;
        JobRun {
            result,
            effects,
            trace,
            fuel_used,
            duration_us: started.elapsed().as_micros() as u64,
            delete_on_success: def.delete_completed_runs,
            output: state.to_output(),
            message,
        }
    }
}

/// One run of a workflow job.
struct Run<'a> {
    scope: Arc<Scope>,
    job: &'a SystemJob,
    def: &'a Definition,
    state: RunState,
    log: Vec<LogRow>,
    trace: String,
    fuel: u64,
}

impl Run<'_> {
    /// Runs steps; says how the run ended (a `Wait` always carries its watch).
    fn go(&mut self) -> JobResult {
        for _ in 0..STEPS_PER_RUN {
            let Some(step) = self.state.current(&self.def.steps) else { return JobResult::Succeeded };
            let started = now_ms();
            let savepoint = self.scope.overlay().savepoint();
            let outcome = self.step(step, started);
            self.scope.overlay().close(savepoint, outcome.is_err());
            match outcome {
                Ok(StepEnd::Next(done)) => {
                    self.row(step, started, LogStatus::Succeeded, None, &done);
                    if let Some(id) = &step.id {
                        self.state.outputs.insert(id.clone(), done.outputs);
                    }
                    match done.branch {
                        Some(b) => self.state.enter(&self.def.steps, b),
                        None => self.state.advance(&self.def.steps),
                    }
                }
                Ok(StepEnd::Wait { until, watch, first }) => {
                    if first {
                        self.row(step, started, LogStatus::Waiting, None, &Done::default());
                    }
                    return JobResult::Wait { until, watch: Some(watch) };
                }
                Ok(StepEnd::Stop(status, message)) => {
                    let log_status = match status {
                        StopStatus::Succeeded => LogStatus::Succeeded,
                        StopStatus::Canceled => LogStatus::Canceled,
                    };
                    let mut done = Done::default();
                    if !message.is_empty() {
                        done.outputs.insert("message".into(), ParameterValue::Value(Value::Text(message.clone())));
                    }
                    self.row(step, started, log_status, None, &done);
                    self.state.at = vec![u32::MAX];
                    return match status {
                        StopStatus::Succeeded => JobResult::Succeeded,
                        StopStatus::Canceled => JobResult::Canceled {
                            message: if message.is_empty() {
                                format!("workflow '{}' stopped itself as canceled", self.def.name)
                            } else {
                                message
                            },
                        },
                    };
                }
                Err(StepError::Retry(code, message)) => return JobResult::Retry { code, message },
                Err(StepError::Failed(code, message)) => {
                    let text = format!("{code}: {message}");
                    self.row(step, started, LogStatus::Failed, Some(text), &Done::default());
                    let at = self.state.position();
                    let message = format!("step {at} ({}) failed: {message}", step.action.kind());
                    return JobResult::Failed { code, message };
                }
            }
        }
        JobResult::Progress
    }

    fn row(&mut self, step: &Step, started: i64, status: LogStatus, error: Option<String>, done: &Done) {
        let entry = LogEntry {
            seq: self.state.log_seq,
            step: step.id.clone().unwrap_or_else(|| self.state.position()),
            kind: step.action.kind().to_owned(),
            status,
            started_on: started,
            completed_on: now_ms(),
            error,
            inputs: done.inputs.clone(),
            outputs: done.outputs.clone(),
            child_job: None,
        };
        self.state.log_seq += 1;
        self.log.push(LogRow { job: self.job.id, entry, child: done.child });
    }

    fn who(&self) -> Who {
        self.scope.who
    }

    fn primary(&self) -> Result<EntityReference, StepError> {
        let id = self.job.context.primary_entity_id.ok_or_else(|| invalid("the run names no record".into()))?;
        Ok(EntityReference { logical_name: self.def.entity.clone(), id })
    }

    /// The primary record now (with this run's writes); a run started by a delete
    /// sees the record as it was.
    fn record(&self) -> Result<Option<(Entity, u64)>, StepError> {
        let r = self.primary()?;
        if let Some(stored) = self.scope.read(&r.logical_name, r.id)? {
            let version = stored.version;
            return Ok(Some((stored.to_entity(&r.logical_name, r.id), version)));
        }
        if self.job.context.message_name == "Delete"
            && let Some(ParameterValue::Entity(e)) = self.job.context.input_parameters.get("Target")
        {
            return Ok(Some((e.clone(), 0)));
        }
        Ok(None)
    }

    fn write(&self, request: Request) -> Result<Response, StepError> {
        Ok(self.scope.attempt_at(request, 1, self.who()).map_err(|e| self.scope.root_cause(e))?)
    }

    fn step(&mut self, step: &Step, now: i64) -> Result<StepEnd, StepError> {
        let loaded = match self.record() {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(match self.primary() {
                Ok(r) => StepError::Failed("not_found".into(), format!("{} {} no longer exists", r.logical_name, r.id)),
                Err(e) => e,
            }),
            Err(e) => Err(e),
        };
        let facts =
            loaded.map(|(record, version)| Facts { scope: &self.scope, outputs: &self.state.outputs, record, version });
        let fill = |v: &Value, f: &Facts<'_>| state::fill(v, f).map_err(invalid);
        match &step.action {
            Action::Condition { branches } => {
                let f = facts?;
                for (b, branch) in branches.iter().enumerate() {
                    let taken = match &branch.when {
                        None => true,
                        Some(filter) => state::holds(filter, &f).map_err(invalid)?,
                    };
                    if taken {
                        return Ok(StepEnd::Next(branch_taken(b)));
                    }
                }
                Ok(StepEnd::Next(Done::default()))
            }
            Action::Wait { branches } => {
                let f = match facts {
                    Ok(f) => f,
                    // The record is gone: a wait on it can never end.
                    Err(StepError::Failed(code, _)) if code == "not_found" => {
                        return Ok(StepEnd::Stop(
                            StopStatus::Canceled,
                            "canceled: the record it waited on was deleted".into(),
                        ));
                    }
                    Err(e) => return Err(e),
                };
                let first = self.state.wait_started.is_none();
                let started = *self.state.wait_started.get_or_insert(now);
                let mut until: Option<i64> = None;
                let mut watched = Vec::new();
                for (b, branch) in branches.iter().enumerate() {
                    if let Some(filter) = &branch.until {
                        if state::holds(filter, &f).map_err(invalid)? {
                            self.state.wait_started = None;
                            return Ok(StepEnd::Next(branch_taken(b)));
                        }
                        watched.extend(state::watched(filter));
                    }
                    if let Some(t) = &branch.timeout
                        && let Some(deadline) = state::deadline(t, started, &f).map_err(invalid)?
                    {
                        if deadline <= now {
                            self.state.wait_started = None;
                            return Ok(StepEnd::Next(branch_taken(b)));
                        }
                        until = Some(until.map_or(deadline, |u| u.min(deadline)));
                    }
                }
                watched.sort();
                watched.dedup();
                let r = self.primary()?;
                let version = (f.version > 0).then_some(f.version);
                let watch = Watch { entity: r.logical_name, id: r.id, attributes: watched, version };
                Ok(StepEnd::Wait { until, watch, first })
            }
            Action::Create { entity, attributes } => {
                let f = facts?;
                let mut record = Entity::new(entity.clone());
                let def = self.scope.definition(entity)?;
                for (name, v) in attributes {
                    record.attributes.insert(name.clone(), adapt(&def, name, fill(v, &f)?));
                }
                let id = created(self.write(Request::Create { record: record.clone() })?)?;
                Ok(StepEnd::Next(Done {
                    inputs: as_inputs(&record),
                    outputs: created_outputs(entity, id),
                    ..Done::default()
                }))
            }
            Action::Update { target, entity, attributes } => {
                let f = facts?;
                let reference = match (target, entity) {
                    (Some(t), Some(e)) => reference_of(&fill(&Value::Text(t.clone()), &f)?, e)?,
                    _ => self.primary()?,
                };
                let def = self.scope.definition(&reference.logical_name)?;
                let mut record =
                    Entity { logical_name: reference.logical_name, id: Some(reference.id), ..Entity::default() };
                for (name, v) in attributes {
                    record.attributes.insert(name.clone(), adapt(&def, name, fill(v, &f)?));
                }
                self.write(Request::Update { record: record.clone() })?;
                Ok(StepEnd::Next(Done { inputs: as_inputs(&record), ..Done::default() }))
            }
            Action::Assign { owner } => {
                let f = facts?;
                let user = user_of(&fill(&Value::Text(owner.clone()), &f)?)?;
                let r = self.primary()?;
                let record = Entity::new(r.logical_name.clone())
                    .with(crate::metadata::OWNER_ATTRIBUTE, crate::security::user_ref(user));
                let record = Entity { id: Some(r.id), ..record };
                self.write(Request::Update { record: record.clone() })?;
                Ok(StepEnd::Next(Done { inputs: as_inputs(&record), ..Done::default() }))
            }
            Action::SetStatus { statecode, statuscode } => {
                let r = self.primary()?;
                let record = Entity { logical_name: r.logical_name, id: Some(r.id), ..Entity::default() }
                    .with("statecode", Value::Integer((*statecode).into()))
                    .with("statuscode", Value::Integer((*statuscode).into()));
                self.write(Request::Update { record: record.clone() })?;
                Ok(StepEnd::Next(Done { inputs: as_inputs(&record), ..Done::default() }))
            }
            Action::SendEmail { to, subject, body } => {
                let f = facts?;
                let text = |t: &str| state::fill_text(t, &f).map(Value::Text).map_err(invalid);
                let mut email = Entity::new("email")
                    .with("to", text(to)?)
                    .with("subject", text(subject)?)
                    .with("body", text(body)?);
                let def = self.scope.definition("email")?;
                if def.attribute_type("regardingobjectid") == Some(crate::metadata::AttributeType::Reference) {
                    email.attributes.insert("regardingobjectid".into(), Value::Reference(self.primary()?));
                }
                let id = created(self.write(Request::Create { record: email.clone() })?)?;
                Ok(StepEnd::Next(Done {
                    inputs: as_inputs(&email),
                    outputs: created_outputs("email", id),
                    ..Done::default()
                }))
            }
            Action::Child { workflow } => {
                let f = facts?;
                let Some(child) = self.scope.steps.workflow_names.get(workflow) else {
                    return Err(StepError::Failed(
                        "workflow_inactive".into(),
                        format!("child workflow '{workflow}' is not active"),
                    ));
                };
                let chain = self.job.depth + 1;
                let job =
                    workflow_job(child, f.record.clone(), TRIGGER_CHILD, self.who(), chain, self.job.correlation_id);
                let mut overlay = self.scope.overlay();
                overlay.jobs.push(job);
                let index = overlay.jobs.len() - 1;
                let mut done = Done { child: Some(index), ..Done::default() };
                done.inputs.insert("workflow".into(), ParameterValue::Value(Value::Text(workflow.clone())));
                Ok(StepEnd::Next(done))
            }
            Action::Stop { status, message } => {
                let message = match &facts {
                    Ok(f) => state::fill_text(message, f).map_err(invalid)?,
                    Err(_) => message.clone(),
                };
                Ok(StepEnd::Stop(*status, message))
            }
            Action::Activity { plugin, message, configuration, inputs } => {
                let f = facts?;
                let mut parameters = Parameters::new();
                for (name, v) in inputs {
                    parameters.insert(name.clone(), ParameterValue::Value(fill(v, &f)?));
                }
                drop(f);
                let outputs = self.activity(plugin, message.as_deref(), configuration.clone(), parameters.clone())?;
                Ok(StepEnd::Next(Done { inputs: parameters, outputs, ..Done::default() }))
            }
        }
    }

    /// Calls an activity's plug-in and returns its output parameters.
    fn activity(
        &mut self,
        plugin: &str,
        message: Option<&str>,
        configuration: Option<String>,
        inputs: Parameters,
    ) -> Result<Parameters, StepError> {
        let pipeline = &self.scope.pipeline;
        let Some(hash) = self.scope.steps.assemblies.get(plugin).copied() else {
            return Err(StepError::Failed(
                "plugin_not_registered".into(),
                format!("activity plug-in '{plugin}' is not registered"),
            ));
        };
        let loaded = pipeline.load_plugin(&hash).map_err(StepError::from)?;
        let r = self.primary()?;
        let context = ExecutionContext {
            message_name: message.unwrap_or("WorkflowActivity").to_owned(),
            primary_entity_name: r.logical_name,
            primary_entity_id: Some(r.id),
            stage: Stage::MainOperation,
            mode: Mode::Asynchronous,
            depth: 1,
            correlation_id: self.job.correlation_id,
            operation_id: Some(self.job.id),
            initiating_user_id: self.who().initiating,
            user_id: self.who().user,
            operation_created_on: now_ms(),
            input_parameters: inputs,
            configuration,
            ..ExecutionContext::default()
        };
        let limits = pipeline.defaults;
        let service: Arc<dyn crate::runtime::OrganizationService> = self.scope.clone();
        let invocation = pipeline.runtime.invoke(&loaded, &context, &limits, service);
        self.fuel += invocation.fuel_used;
        if !invocation.trace.is_empty() {
            self.trace.push_str(&invocation.trace);
        }
        match invocation.outcome {
            Ok(result) => Ok(result.output_parameters),
            Err(f) => Err(StepError::from(self.scope.job_failure(f))),
        }
    }
}

/// A filled value in the shape its attribute takes, where nothing is lost: a
/// reference's id for a guid attribute, any value's text for a text attribute.
fn adapt(def: &crate::metadata::EntityDefinition, attribute: &str, v: Value) -> Value {
    use crate::metadata::AttributeType as T;
    match (def.attribute_type(attribute), v) {
        (Some(T::Guid), Value::Reference(r)) => Value::Guid(r.id),
        (
            Some(T::Text),
            v @ (Value::Integer(_)
            | Value::Decimal(_)
            | Value::Money(_)
            | Value::Guid(_)
            | Value::Reference(_)
            | Value::DateTime(_)
            | Value::Boolean(_)
            | Value::Float(_)
            | Value::OptionSet(_)),
        ) => Value::Text(state::text_of(&v)),
        (_, v) => v,
    }
}

fn branch_taken(b: usize) -> Done {
    let mut done = Done { branch: Some(b), ..Done::default() };
    done.outputs.insert("branch".into(), ParameterValue::Value(Value::Integer(b as i64)));
    done
}

fn created(response: Response) -> Result<Uuid, StepError> {
    match response {
        Response::Created(id) => Ok(id),
        other => Err(invalid(format!("a create answered {other:?}"))),
    }
}

fn created_outputs(entity: &str, id: Uuid) -> Parameters {
    let mut out = Parameters::new();
    out.insert("id".into(), ParameterValue::Value(Value::Guid(id)));
    out.insert(
        "reference".into(),
        ParameterValue::Value(Value::Reference(EntityReference { logical_name: entity.to_owned(), id })),
    );
    out
}

fn as_inputs(record: &Entity) -> Parameters {
    record.attributes.iter().map(|(k, v)| (k.clone(), ParameterValue::Value(v.clone()))).collect()
}

fn reference_of(v: &Value, entity: &str) -> Result<EntityReference, StepError> {
    match v {
        Value::Reference(r) if r.logical_name == entity => Ok(r.clone()),
        Value::Guid(id) => Ok(EntityReference { logical_name: entity.to_owned(), id: *id }),
        Value::Text(t) => t
            .parse()
            .map(|id| EntityReference { logical_name: entity.to_owned(), id })
            .map_err(|_| invalid(format!("update target '{t}' is not a record id"))),
        other => Err(invalid(format!("update target {other} is not a reference to {entity}"))),
    }
}

fn user_of(v: &Value) -> Result<Uuid, StepError> {
    match v {
        Value::Reference(r) if r.logical_name == crate::security::USER_ENTITY => Ok(r.id),
        Value::Guid(id) => Ok(*id),
        Value::Text(t) => t.parse().map_err(|_| invalid(format!("assign: '{t}' is not a user id"))),
        other => Err(invalid(format!("assign: {other} is not a user"))),
    }
}

/// The values a step's templates and conditions read.
struct Facts<'a> {
    scope: &'a Scope,
    outputs: &'a std::collections::BTreeMap<String, Parameters>,
    record: Entity,
    version: u64,
}

impl Resolve for Facts<'_> {
    fn resolve(&self, path: &Path) -> Result<Value, String> {
        Ok(match path {
            Path::Now => Value::DateTime(now_ms()),
            Path::Record(a) if a == "id" => self.record.id.map_or(Value::Null, |id| {
                Value::Reference(EntityReference { logical_name: self.record.logical_name.clone(), id })
            }),
            Path::Record(a) => self.record.attributes.get(a).cloned().unwrap_or(Value::Null),
            Path::Step(id, name) => match self.outputs.get(id).and_then(|o| o.get(name)) {
                Some(ParameterValue::Value(v)) => v.clone(),
                Some(ParameterValue::Reference(r)) => Value::Reference(r.clone()),
                Some(ParameterValue::Entity(e)) => e.reference().map_or(Value::Null, Value::Reference),
                _ => Value::Null,
            },
            Path::Related(lookup, a) => {
                let Some(Value::Reference(r)) = self.record.attributes.get(lookup) else { return Ok(Value::Null) };
                let related = self.scope.read(&r.logical_name, r.id).map_err(|e| e.to_string())?;
                match related {
                    None => Value::Null,
                    Some(_) if a == "id" => Value::Guid(r.id),
                    Some(s) => s.attributes.get(a).cloned().unwrap_or(Value::Null),
                }
            }
        })
    }
}
