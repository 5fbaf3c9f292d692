//! One request in flight (`Scope`): its snapshot, write buffer and jobs; the stage
//! runner that takes a message through its steps and core operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use crate::clock::now_ms;
use crate::jobs::SystemJob;
use crate::metadata::EntityDefinition;
use crate::model::{Entity, EntityCollection, ExecutionContext, ExecutionResult, Mode, ParameterValue, Stage, Value};
use crate::query;
use crate::registry::{CORE_MESSAGES, ImageKind, StepRecord};
use crate::runtime::{CallContext, ErrorCode, Failure, ServiceError};
use crate::security::{self, Action, Depth, Principal};
use crate::store::{ChangeSet, JobResult, RecordChange, StoreError, StoredRecord};

use super::jobs::unknown_entity;
use super::overlay::{Overlay, Slot, record_bytes};
use super::{MAX_DEPTH, Pipeline, PipelineError, Request, Response, Result, StepIndex, View, Who, invoke_step};
use crate::metadata::OWNER_ATTRIBUTE as OWNER;

/// One request in flight: its snapshot, its write buffer and its jobs. It is the
/// organization service the request's plug-ins call.
pub(super) struct Scope {
    pub(super) me: Weak<Scope>,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) steps: Arc<StepIndex>,
    pub(super) snapshot: Box<dyn View>,
    pub(super) overlay: Mutex<Overlay>,
    pub(super) correlation_id: Uuid,
    /// Who the request (or the job's run) is for.
    pub(super) who: Who,
    /// The principals this scope checked, by user id (`None`: unknown or disabled).
    pub(super) principals: Mutex<HashMap<Uuid, Option<Arc<Principal>>>>,
    /// Set when a call went deeper than [`MAX_DEPTH`], to name the root cause.
    pub(super) depth_exceeded: Mutex<Option<String>>,
    /// The most bytes the write buffer may hold now: the request's limit, tightened
    /// while a step runs to what it found plus that step's write limit.
    pub(super) write_caps: Mutex<Vec<u64>>,
    /// Set when a write broke the limit, to name the root cause.
    pub(super) write_exceeded: Mutex<Option<String>>,
    /// Set when a call found the store (or, on a remote worker, the server)
    /// unavailable, to name the root cause: a job run again later rather than failed.
    pub(super) unavailable: Mutex<Option<String>>,
    /// Set when the job this scope runs was canceled or paused: its plug-ins stop.
    pub(super) stop: Arc<AtomicBool>,
    /// Records this scope read from its snapshot (which cannot change under it), so a
    /// record read twice costs one read (a round trip on PostgreSQL).
    pub(super) seen: Mutex<HashMap<(String, Uuid), Option<StoredRecord>>>,
    /// Entity definitions this scope read (its snapshot's, so they cannot change under it).
    pub(super) definitions: Mutex<HashMap<String, EntityDefinition>>,
    /// How many workflow runs led to this scope's (0: none is a workflow run): a
    /// run its writes trigger is one more (the loop guard counts them).
    pub(super) chain: AtomicU32,
    /// Runs recorded in this scope (steps set to record), kept with its changes.
    pub(super) runs: Mutex<Vec<crate::runs::RecordedRun>>,
}

impl Scope {
    pub(super) fn new(
        pipeline: Arc<Pipeline>,
        snapshot: Box<dyn View>,
        correlation_id: Uuid,
        who: Who,
        write_bytes: u64,
        stop: Arc<AtomicBool>,
    ) -> Arc<Scope> {
        let steps = pipeline.steps.read().unwrap_or_else(|p| p.into_inner()).clone();
        Arc::new_cyclic(|me| Scope {
            me: me.clone(),
            pipeline,
            steps,
            snapshot,
            overlay: Mutex::new(Overlay::default()),
            correlation_id,
            who,
            principals: Mutex::new(HashMap::new()),
            depth_exceeded: Mutex::new(None),
            write_caps: Mutex::new(vec![write_bytes]),
            write_exceeded: Mutex::new(None),
            unavailable: Mutex::new(None),
            stop,
            chain: AtomicU32::new(0),
            definitions: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            runs: Mutex::new(Vec::new()),
        })
    }

    /// The runs recorded so far (taken: kept once).
    pub(super) fn take_runs(&self) -> Vec<crate::runs::RecordedRun> {
        std::mem::take(&mut *self.runs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn caps(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.write_caps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What broke the write limit, if a write did.
    pub(super) fn write_limit_hit(&self) -> Option<String> {
        self.write_exceeded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why a call found the store unavailable, if one did.
    fn unavailable(&self) -> Option<String> {
        self.unavailable.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A failure caused by an infinite loop, a broken write limit or an unavailable
    /// store shows up as a plug-in failing on the error it got: report the cause.
    pub(super) fn root_cause(&self, e: PipelineError) -> PipelineError {
        if let PipelineError::Plugin { .. } = &e {
            if let Some(depth) = self.depth_exceeded.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return PipelineError::DepthExceeded(format!("{depth}; then {e}"));
            }
            if let Some(hit) = self.write_limit_hit() {
                return PipelineError::WriteLimit(format!("{hit}; then {e}"));
            }
            if let Some(cause) = self.unavailable() {
                return PipelineError::Store(StoreError::Unavailable(format!("{cause}; then {e}")));
            }
        }
        e
    }

    /// What a job's plug-in failing with `f` in this scope comes to: failed for good
    /// after breaking the write limit, run again later after finding the store
    /// unavailable (it failed on the error it got), else as the plug-in said.
    pub(super) fn job_failure(&self, f: Failure) -> JobResult {
        if let Some(hit) = self.write_limit_hit() {
            let message = format!("{hit}; then the plug-in failed: {}", f.message);
            return JobResult::Failed { code: "write_limit".into(), message };
        }
        if let Some(cause) = self.unavailable() {
            let message = format!("{cause}; then the plug-in failed: {}", f.message);
            return JobResult::Retry { code: "store_unavailable".into(), message };
        }
        if f.code.is_retryable() {
            JobResult::Retry { code: f.code.to_string(), message: f.message }
        } else {
            JobResult::Failed { code: f.code.to_string(), message: f.message }
        }
    }

    /// Runs `request` at `depth` for `who`; if it fails, the overlay is as it was before.
    pub(super) fn attempt_at(&self, request: Request, depth: u32, who: Who) -> Result<Response> {
        let savepoint = self.overlay().savepoint();
        let result = self.run(request, depth, BTreeMap::new(), who);
        self.overlay().close(savepoint, result.is_err());
        result.map(|(response, _)| response)
    }

    /// Runs one top-level request of a batch (a bulk job's row), naming the root
    /// cause of a failure as a request would.
    pub(super) fn attempt(&self, request: Request) -> Result<Response> {
        self.attempt_at(request, 1, self.who).map_err(|e| self.root_cause(e))
    }

    pub(super) fn into_changes(self: Arc<Self>) -> ChangeSet {
        let overlay = std::mem::take(&mut *self.overlay());
        let records = overlay
            .records
            .into_iter()
            .filter(|(_, slot)| match (slot.base, &slot.state) {
                (None, None) => false,
                (Some(v), Some(s)) => s.version != v,
                _ => true,
            })
            .map(|((entity, id), slot)| RecordChange { entity, id, expected_version: slot.base, new: slot.state })
            .collect();
        ChangeSet { records, jobs: overlay.jobs, log: Vec::new(), runs: self.take_runs() }
    }

    /// The current state of a record: the overlay's, else the snapshot's.
    pub(super) fn read(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>> {
        if let Some(slot) = self.overlay().records.get(&(entity.to_owned(), id)) {
            return Ok(slot.state.clone());
        }
        let key = (entity.to_owned(), id);
        if let Some(r) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(r.clone());
        }
        let r = self.snapshot.record(entity, id)?;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(key, r.clone());
        Ok(r)
    }

    /// Buffers a record's new state; refuses a write that would take the buffer past
    /// the write limit (`write_limit`).
    pub(super) fn write(&self, entity: &str, id: Uuid, state: Option<StoredRecord>) -> Result<()> {
        self.write_known(entity, id, state, None)
    }

    /// [`Scope::write`], given the record's stored version when the caller knows it
    /// (`Some(None)`: a new record under an id this scope made, which nothing else can hold).
    pub(super) fn write_known(
        &self,
        entity: &str,
        id: Uuid,
        state: Option<StoredRecord>,
        stored: Option<Option<u64>>,
    ) -> Result<()> {
        let key = (entity.to_owned(), id);
        // (The overlay's guard must not live into `read`, which takes it again.)
        let buffered = self.overlay().records.contains_key(&key);
        let base = match (buffered, stored) {
            (true, _) => None,
            (false, Some(known)) => Some(known),
            (false, None) => Some(self.read(entity, id)?.map(|r| r.version)),
        };
        let cap = self.caps().last().copied().unwrap_or(u64::MAX);
        let new_bytes = record_bytes(state.as_ref());
        let mut o = self.overlay();
        let old_bytes = o.records.get(&key).map_or(0, |s| record_bytes(s.state.as_ref()));
        let total = (o.bytes + new_bytes).saturating_sub(old_bytes);
        if new_bytes > old_bytes && total > cap {
            let m = format!(
                "writing {entity} {id} (about {new_bytes} bytes) would take the request's pending writes to about {total} bytes, past the write limit of {cap} bytes"
            );
            drop(o);
            self.write_exceeded.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(m.clone());
            return Err(PipelineError::WriteLimit(m));
        }
        if o.open_savepoints > 0 {
            let previous = o.records.get(&key).cloned();
            o.journal.push((key.clone(), previous));
        }
        match o.records.get_mut(&key) {
            Some(slot) => slot.state = state,
            None => {
                o.records.insert(key, Slot { base: base.flatten(), state });
            }
        }
        o.bytes = total;
        Ok(())
    }

    pub(super) fn definition(&self, entity: &str) -> Result<EntityDefinition> {
        if let Some(d) = self.definitions.lock().unwrap_or_else(|p| p.into_inner()).get(entity) {
            return Ok(d.clone());
        }
        let d = self.snapshot.definition(entity)?.ok_or_else(|| unknown_entity(entity))?;
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).insert(entity.to_owned(), d.clone());
        Ok(d)
    }

    /// Runs one message at `depth` for `who`; returns the response and the shared variables.
    pub(super) fn run(
        &self,
        request: Request,
        depth: u32,
        shared: BTreeMap<String, Value>,
        who: Who,
    ) -> Result<(Response, BTreeMap<String, Value>)> {
        if depth > MAX_DEPTH {
            let m = format!(
                "{} would run at depth {depth}, deeper than the maximum of {MAX_DEPTH}: plug-ins are calling each other in an infinite loop",
                request.message()
            );
            self.depth_exceeded.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(m.clone());
            return Err(PipelineError::DepthExceeded(m));
        }
        let message = request.message().to_owned();
        let mut ctx = ExecutionContext {
            message_name: message.clone(),
            depth,
            correlation_id: self.correlation_id,
            initiating_user_id: who.initiating,
            user_id: who.user,
            operation_created_on: now_ms(),
            shared_variables: shared,
            ..ExecutionContext::default()
        };
        // Inputs, the primary entity, and the record as it was (for pre-images and filters).
        let mut pre_state: Option<Entity> = None;
        // The primary entity's definition, read once for the whole message.
        let definition = match &request {
            Request::Create { record } | Request::Update { record } => Some(self.definition(&record.logical_name)?),
            Request::Delete { target } | Request::Retrieve { target, .. } => {
                Some(self.definition(&target.logical_name)?)
            }
            Request::RetrieveMultiple { query } => Some(self.definition(&query.entity_name)?),
            Request::Custom { .. } => None,
        };
        match &request {
            Request::Create { record } => {
                ctx.primary_entity_name = record.logical_name.clone();
                ctx.primary_entity_id = record.id;
                ctx.input_parameters.insert("Target".into(), ParameterValue::Entity(record.clone()));
            }
            Request::Update { record } => {
                let id = record.id.ok_or_else(|| PipelineError::Invalid("an update needs the record's id".into()))?;
                let current =
                    self.read(&record.logical_name, id)?.ok_or_else(|| not_found(&record.logical_name, id))?;
                pre_state = Some(current.to_entity(&record.logical_name, id));
                ctx.primary_entity_name = record.logical_name.clone();
                ctx.primary_entity_id = Some(id);
                ctx.input_parameters.insert("Target".into(), ParameterValue::Entity(record.clone()));
            }
            Request::Delete { target } | Request::Retrieve { target, .. } => {
                let current = self
                    .read(&target.logical_name, target.id)?
                    .ok_or_else(|| not_found(&target.logical_name, target.id))?;
                pre_state = Some(current.to_entity(&target.logical_name, target.id));
                ctx.primary_entity_name = target.logical_name.clone();
                ctx.primary_entity_id = Some(target.id);
                ctx.input_parameters.insert("Target".into(), ParameterValue::Reference(target.clone()));
                if let Request::Retrieve { columns, .. } = &request {
                    ctx.input_parameters
                        .insert("ColumnSet".into(), ParameterValue::Value(Value::Text(columns.join(","))));
                }
            }
            Request::RetrieveMultiple { query } => {
                ctx.primary_entity_name = query.entity_name.clone();
                ctx.input_parameters.insert("Query".into(), ParameterValue::Query(query.clone()));
            }
            Request::Custom { target, parameters, .. } => {
                if let Some(t) = target {
                    ctx.primary_entity_name = t.logical_name.clone();
                    ctx.primary_entity_id = Some(t.id);
                    ctx.input_parameters.insert("Target".into(), ParameterValue::Reference(t.clone()));
                }
                ctx.input_parameters.extend(parameters.clone());
            }
        }
        // Checked before any plug-in runs: a denied request triggers nothing.
        let owner_filter = self.authorize(who, &request, pre_state.as_ref())?;
        let entity = ctx.primary_entity_name.clone();
        // The steps of (stage, mode) that fire for this request, in rank order.
        let firing = |stage: Stage, mode: Mode| -> Vec<StepRecord> {
            self.steps
                .matching(&message, &entity, stage, mode)
                .filter(|s| update_filter_fires(s, &request, pre_state.as_ref()))
                .cloned()
                .collect()
        };

        for stage in [Stage::PreValidation, Stage::PreOperation] {
            for step in &firing(stage, Mode::Synchronous) {
                self.run_step(step, &mut ctx, stage, pre_state.as_ref(), None)?;
            }
        }

        let post_state = self.core_operation(&request, definition.as_ref(), &mut ctx, owner_filter)?;

        for step in &firing(Stage::PostOperation, Mode::Synchronous) {
            self.run_step(step, &mut ctx, Stage::PostOperation, pre_state.as_ref(), post_state.as_ref())?;
        }
        for step in &firing(Stage::PostOperation, Mode::Asynchronous) {
            self.queue_job(step, &ctx, pre_state.as_ref(), post_state.as_ref());
        }
        self.trigger_workflows(&request, &ctx, pre_state.as_ref(), post_state.as_ref());
        Ok((response(&request, &ctx), ctx.shared_variables))
    }

    /// The core operation (or stage 30 for custom messages); returns the record after it.
    pub(super) fn core_operation(
        &self,
        request: &Request,
        definition: Option<&EntityDefinition>,
        ctx: &mut ExecutionContext,
        owner_filter: Option<Uuid>,
    ) -> Result<Option<Entity>> {
        let user = ctx.user_id;
        let check = |target: &mut Entity| {
            definition.expect("data messages have a definition").check_record(target).map_err(PipelineError::Invalid)
        };
        let target_entity = |ctx: &ExecutionContext| -> Result<Entity> {
            match ctx.input_parameters.get("Target") {
                Some(ParameterValue::Entity(e)) => Ok(e.clone()),
                _ => Err(PipelineError::Invalid("the Target parameter must be a record".into())),
            }
        };
        let now = now_ms();
        match request {
            Request::Create { record } => {
                let mut target = target_entity(ctx)?;
                if target.logical_name != record.logical_name {
                    return Err(PipelineError::Invalid("a plug-in changed the Target's entity".into()));
                }
                check(&mut target)?;
                // The owner: the caller, unless the record names another (which needs
                // organization-level create: Dataverse's assign).
                let owner = security::user_of(target.attributes.get(OWNER)).unwrap_or(user);
                if owner != user {
                    self.need(
                        user,
                        &target.logical_name,
                        Action::Create,
                        Depth::Organization,
                        "to create a record another user owns",
                    )?;
                }
                target.attributes.insert(OWNER.into(), security::user_ref(owner));
                target.attributes.insert("createdby".into(), security::user_ref(user));
                target.attributes.insert("modifiedby".into(), security::user_ref(user));
                // Sequential ids, as Dataverse gives: new records land at the end of the
                // table instead of dirtying a random page each.
                // An id the caller gave may be taken; one made here cannot be.
                let (id, known) = match target.id {
                    Some(id) => (id, None),
                    None => (Uuid::now_v7(), Some(None)),
                };
                if known.is_none() && self.read(&target.logical_name, id)?.is_some() {
                    return Err(PipelineError::AlreadyExists(format!(
                        "{} with id {id} already exists",
                        target.logical_name
                    )));
                }
                let stored =
                    StoredRecord { version: 1, created_on: now, modified_on: now, attributes: target.attributes };
                let after = stored.to_entity(&target.logical_name, id);
                self.write_known(&target.logical_name, id, Some(stored), known)?;
                ctx.primary_entity_id = Some(id);
                ctx.output_parameters.insert("id".into(), ParameterValue::Value(Value::Guid(id)));
                Ok(Some(after))
            }
            Request::Update { record } => {
                let mut target = target_entity(ctx)?;
                let id = record.id.expect("checked before");
                if target.logical_name != record.logical_name || target.id.is_some_and(|t| t != id) {
                    return Err(PipelineError::Invalid("a plug-in changed which record the Target is".into()));
                }
                check(&mut target)?;
                let mut stored =
                    self.read(&target.logical_name, id)?.ok_or_else(|| not_found(&target.logical_name, id))?;
                if let Some(new_owner) = target.attributes.get(OWNER)
                    && security::user_of(Some(new_owner)) != security::user_of(stored.attributes.get(OWNER))
                {
                    self.need(
                        user,
                        &target.logical_name,
                        Action::Write,
                        Depth::Organization,
                        "to assign a record to another user",
                    )?;
                }
                target.attributes.insert("modifiedby".into(), security::user_ref(user));
                stored.attributes.extend(target.attributes);
                stored.version += 1;
                stored.modified_on = now;
                let after = stored.to_entity(&target.logical_name, id);
                self.write(&target.logical_name, id, Some(stored))?;
                Ok(Some(after))
            }
            Request::Delete { target } => {
                self.write(&target.logical_name, target.id, None)?;
                Ok(None)
            }
            Request::Retrieve { target, columns } => {
                let stored = self
                    .read(&target.logical_name, target.id)?
                    .ok_or_else(|| not_found(&target.logical_name, target.id))?;
                let entity = query::project(stored.to_entity(&target.logical_name, target.id), columns);
                ctx.output_parameters.insert("BusinessEntity".into(), ParameterValue::Entity(entity.clone()));
                Ok(Some(entity))
            }
            Request::RetrieveMultiple { .. } => {
                let q = match ctx.input_parameters.get("Query") {
                    Some(ParameterValue::Query(q)) => q.clone(),
                    _ => return Err(PipelineError::Invalid("the Query parameter must be a query".into())),
                };
                let collection = self.retrieve_multiple(&q, owner_filter)?;
                ctx.output_parameters
                    .insert("BusinessEntityCollection".into(), ParameterValue::Entities(collection.entities));
                ctx.output_parameters
                    .insert("MoreRecords".into(), ParameterValue::Value(Value::Boolean(collection.more_records)));
                if let Some(cookie) = collection.paging_cookie {
                    ctx.output_parameters.insert("PagingCookie".into(), ParameterValue::Value(Value::Text(cookie)));
                }
                Ok(None)
            }
            Request::Custom { message, .. } => {
                let steps: Vec<StepRecord> = self
                    .steps
                    .matching(message, &ctx.primary_entity_name, Stage::MainOperation, Mode::Synchronous)
                    .cloned()
                    .collect();
                if steps.is_empty() || CORE_MESSAGES.contains(&message.as_str()) {
                    return Err(PipelineError::UnknownMessage(format!(
                        "no plug-in implements message '{message}': register a main-operation (30) step for it"
                    )));
                }
                for step in &steps {
                    self.run_step(step, ctx, Stage::MainOperation, None, None)?;
                }
                Ok(None)
            }
        }
    }
}

impl Scope {
    /// Runs one synchronous step and folds its result into the context.
    pub(super) fn run_step(
        &self,
        step: &StepRecord,
        ctx: &mut ExecutionContext,
        stage: Stage,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) -> Result<()> {
        let step_ctx = self.step_context(step, ctx, stage, pre, post);
        let failed = |failure: Failure| PipelineError::Plugin { step: step.name.clone(), step_id: step.id, failure };
        let Some(hash) = self.steps.assemblies.get(&step.plugin) else {
            return Err(failed(Failure::new(
                ErrorCode::InstantiationFailed,
                format!("plug-in '{}' is not registered", step.plugin),
            )));
        };
        let hash = *hash;
        let plugin = self
            .pipeline
            .runtime
            .load(&hash, || self.pipeline.source.assembly_bytes(&hash))
            .map_err(|e| failed(Failure::new(ErrorCode::InstantiationFailed, format!("{e:#}"))))?;
        let me = self.me.upgrade().expect("a scope outlives its invocations");
        let limits = self.pipeline.defaults.with(&step.limits);
        // While the step runs, its writes may add at most its own write limit.
        let cap = {
            let buffered = self.overlay().bytes;
            let mut caps = self.caps();
            let outer = caps.last().copied().unwrap_or(u64::MAX);
            caps.push(outer.min(buffered.saturating_add(limits.write_bytes)));
            caps.len()
        };
        let invocation = invoke_step(&self.pipeline.runtime, step, &plugin, &step_ctx, &limits, me);
        self.caps().truncate(cap - 1);
        tracing::debug!(step = %step.name, correlation_id = %ctx.correlation_id, fuel = invocation.fuel_used, "step ran");
        let result: ExecutionResult = invocation.outcome.map_err(failed)?;
        // A pre-stage plug-in changes the request through its input parameters.
        if matches!(stage, Stage::PreValidation | Stage::PreOperation | Stage::MainOperation) {
            ctx.input_parameters.extend(result.input_parameters);
        }
        ctx.output_parameters.extend(result.output_parameters);
        ctx.shared_variables.extend(result.shared_variables);
        Ok(())
    }

    pub(super) fn step_context(
        &self,
        step: &StepRecord,
        ctx: &ExecutionContext,
        stage: Stage,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) -> ExecutionContext {
        let mut c = ctx.clone();
        c.stage = stage;
        c.mode = step.mode;
        c.step_id = Some(step.id);
        c.configuration = step.configuration.clone();
        // Dataverse's impersonating user: the step runs as it; the initiating user stays.
        if let Some(run_as) = step.run_as {
            c.user_id = run_as;
        }
        for image in &step.images {
            let (source, images) = match image.kind {
                ImageKind::Pre => (pre, &mut c.pre_entity_images),
                ImageKind::Post => (post, &mut c.post_entity_images),
            };
            if let Some(e) = source {
                images.insert(image.alias.clone(), query::project(e.clone(), &image.attributes));
            }
        }
        c
    }

    pub(super) fn queue_job(
        &self,
        step: &StepRecord,
        ctx: &ExecutionContext,
        pre: Option<&Entity>,
        post: Option<&Entity>,
    ) {
        let context = self.step_context(step, ctx, Stage::PostOperation, pre, post);
        let mut job =
            SystemJob::plugin_execution(&step.name, step.id, self.steps.assemblies.get(&step.plugin).copied(), context);
        if step.ordered_per_record
            && let Some(r) = &job.regarding
        {
            job.dependency_token = Some(format!("{}:{}", r.logical_name, r.id));
        }
        self.overlay().jobs.push(job);
    }

    /// Runs a nested request for a plug-in; on failure, undoes what it wrote.
    pub(super) fn nested(&self, caller: &CallContext, request: Request) -> std::result::Result<Response, ServiceError> {
        let who = Who { initiating: caller.initiating_user_id, user: caller.user_id };
        self.attempt_at(request, caller.depth + 1, who).map_err(|e| {
            if let PipelineError::Store(StoreError::Unavailable(m)) = &e {
                self.unavailable.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(m.clone());
            }
            e.to_service_error()
        })
    }
}

impl Scope {
    /// The principal of `user` as this request sees it (read once per scope).
    pub(super) fn principal(&self, user: Uuid) -> Result<Arc<Principal>> {
        if let Some(p) = self.principals.lock().unwrap_or_else(|p| p.into_inner()).get(&user) {
            return p.clone().ok_or_else(|| unknown_user(user));
        }
        let p = match self.pipeline.cached_principal(user) {
            Some(p) => Some(p),
            None => {
                let p = self.snapshot.principal(user)?.map(Arc::new);
                if let Some(p) = &p {
                    self.pipeline.remember_principal(p.clone());
                }
                p
            }
        };
        self.principals.lock().unwrap_or_else(|p| p.into_inner()).insert(user, p.clone());
        p.ok_or_else(|| unknown_user(user))
    }

    /// Refuses unless `user` holds `action` on `entity` at `depth` or deeper.
    fn need(&self, user: Uuid, entity: &str, action: Action, depth: Depth, why: &str) -> Result<()> {
        let p = self.principal(user)?;
        match p.privileges.depth(entity, action) {
            Some(d) if d >= depth => Ok(()),
            _ => Err(PipelineError::Denied(format!(
                "{} ({why}: '{}' on {entity} at {} depth)",
                p.denied(entity, action),
                action.name(),
                depth.name()
            ))),
        }
    }

    /// Checks `who`'s privileges for `request` (the record's owner, for a user-level
    /// privilege). For a query at user level, gives the owner its results are kept to.
    pub(super) fn authorize(&self, who: Who, request: &Request, pre: Option<&Entity>) -> Result<Option<Uuid>> {
        let p = self.principal(who.user)?;
        let record_check = |entity: &str, action: Action| -> Result<()> {
            match p.privileges.depth(entity, action) {
                Some(Depth::Organization) => Ok(()),
                Some(Depth::User) if pre.and_then(|e| security::user_of(e.attributes.get(OWNER))) == Some(who.user) => {
                    Ok(())
                }
                _ => Err(PipelineError::Denied(p.denied(entity, action).0)),
            }
        };
        match request {
            Request::Create { record } => match p.privileges.depth(&record.logical_name, Action::Create) {
                Some(_) => Ok(None),
                None => Err(PipelineError::Denied(p.denied(&record.logical_name, Action::Create).0)),
            },
            Request::Update { record } => record_check(&record.logical_name, Action::Write).map(|()| None),
            Request::Delete { target } => record_check(&target.logical_name, Action::Delete).map(|()| None),
            Request::Retrieve { target, .. } => record_check(&target.logical_name, Action::Read).map(|()| None),
            Request::RetrieveMultiple { query } => match p.privileges.depth(&query.entity_name, Action::Read) {
                Some(Depth::Organization) => Ok(None),
                Some(Depth::User) => Ok(Some(who.user)),
                None => Err(PipelineError::Denied(p.denied(&query.entity_name, Action::Read).0)),
            },
            Request::Custom { message, .. } => match p.privileges.any_data() {
                true => Ok(None),
                false => Err(PipelineError::Denied(format!(
                    "user '{}' holds no privilege on records, which custom message '{message}' needs (roles: {})",
                    p.name,
                    p.role_list()
                ))),
            },
        }
    }
}

fn unknown_user(user: Uuid) -> PipelineError {
    PipelineError::Denied(format!("user {user} does not exist or is disabled"))
}

pub(super) fn not_found(entity: &str, id: Uuid) -> PipelineError {
    PipelineError::NotFound(format!("{entity} with id {id} does not exist"))
}

/// An Update step with filtering attributes fires only when one of them changes.
pub(super) fn update_filter_fires(step: &StepRecord, request: &Request, before: Option<&Entity>) -> bool {
    let Request::Update { record } = request else { return true };
    if step.filtering_attributes.is_empty() {
        return true;
    }
    step.filtering_attributes.iter().any(|a| match record.attributes.get(a) {
        Some(new) => before.and_then(|b| b.attributes.get(a)).is_none_or(|old| old != new),
        None => false,
    })
}

pub(super) fn response(request: &Request, ctx: &ExecutionContext) -> Response {
    let out = &ctx.output_parameters;
    match request {
        Request::Create { .. } => Response::Created(ctx.primary_entity_id.expect("a created record has an id")),
        Request::Update { .. } => Response::Updated,
        Request::Delete { .. } => Response::Deleted,
        Request::Retrieve { .. } => match out.get("BusinessEntity") {
            Some(ParameterValue::Entity(e)) => Response::Retrieved(e.clone()),
            _ => Response::Retrieved(Entity::default()),
        },
        Request::RetrieveMultiple { .. } => {
            let entities = match out.get("BusinessEntityCollection") {
                Some(ParameterValue::Entities(es)) => es.clone(),
                _ => Vec::new(),
            };
            let more_records = matches!(out.get("MoreRecords"), Some(ParameterValue::Value(Value::Boolean(true))));
            let paging_cookie = match out.get("PagingCookie") {
                Some(ParameterValue::Value(Value::Text(c))) => Some(c.clone()),
                _ => None,
            };
            Response::Collection(EntityCollection { entities, more_records, paging_cookie })
        }
        Request::Custom { .. } => Response::Custom(out.clone()),
    }
}
