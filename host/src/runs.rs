//! Recorded runs and their replay (Dataverse's Plug-in Profiler).
//!
//! A step set to record (`steps profile`, `steps add --record-runs N`) keeps its next
//! runs: the execution context it got, every organization-service call it made with
//! the answer it got, and the outcome ([`RecordedRun`]). A recorded run is kept with
//! the job's completion (asynchronous steps) or right after the request (synchronous
//! ones), exported as JSON, and replayed offline against another build of the
//! plug-in ([`replay`]): the new build gets the same context and, for every call it
//! makes that the recording holds, the recorded answer; the rest is answered from the
//! records the recording saw, and its writes are kept, not made. The report says
//! what differs: outcome, writes, output parameters, trace.
//!
//! Limits: at most [`MAX_RECORD_RUNS`] runs per `profile` order; a run's JSON at most
//! [`MAX_RUN_BYTES`] (a bigger one is dropped, with a warning in the log).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::memdata::MemoryData;
use crate::model::{
    AssemblyHash, Entity, EntityCollection, EntityReference, ExecutionContext, ParameterValue, Parameters, Query,
};
use crate::runtime::{CallContext, Invocation, Limits, LoadedPlugin, OrganizationService, Runtime, ServiceError};

/// The layout of a recorded run's JSON; a replay refuses a newer one.
pub const RUN_FORMAT: u32 = 1;
/// Most runs one `steps profile` order records.
pub const MAX_RECORD_RUNS: u32 = 100;
/// Largest recorded run kept, as JSON.
pub const MAX_RUN_BYTES: usize = 16 << 20;

/// One organization-service call a plug-in made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Create { record: Entity },
    Retrieve { target: EntityReference, columns: Vec<String> },
    Update { record: Entity },
    Delete { target: EntityReference },
    RetrieveMultiple { query: Query },
    Execute { message: String, parameters: Parameters },
}

impl Call {
    /// Whether the call writes (what a replay keeps instead of making).
    pub fn is_write(&self) -> bool {
        matches!(self, Call::Create { .. } | Call::Update { .. } | Call::Delete { .. })
    }
}

/// What a successful call returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Created(Uuid),
    Retrieved(Entity),
    Done,
    Collection(EntityCollection),
    Parameters(Parameters),
}

/// A call and its answer (or its error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceCall {
    pub call: Call,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ServiceError>,
}

impl ServiceCall {
    fn new(call: Call, result: Result<Answer, ServiceError>) -> ServiceCall {
        match result {
            Ok(a) => ServiceCall { call, answer: Some(a), error: None },
            Err(e) => ServiceCall { call, answer: None, error: Some(e) },
        }
    }

    fn result(&self) -> Result<Answer, ServiceError> {
        match (&self.answer, &self.error) {
            (_, Some(e)) => Err(e.clone()),
            (Some(a), None) => Ok(a.clone()),
            (None, None) => Ok(Answer::Done),
        }
    }

    fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// One recorded run of a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRun {
    pub format: u32,
    pub id: Uuid,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: i64,
    pub step_id: Uuid,
    pub step: String,
    pub plugin: String,
    pub assembly: AssemblyHash,
    /// The system job the run was for (asynchronous steps).
    pub job_id: Option<Uuid>,
    pub correlation_id: Uuid,
    /// The context the plug-in got.
    pub context: ExecutionContext,
    pub limits: Limits,
    /// Every organization-service call, in order, with its answer.
    pub calls: Vec<ServiceCall>,
    /// Outcome, trace, fuel and time.
    pub invocation: Invocation,
}

/// A recorded run as listed (without its context and calls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: Uuid,
    pub recorded_at: i64,
    pub step_id: Uuid,
    pub step: String,
    pub plugin: String,
    pub assembly: AssemblyHash,
    pub job_id: Option<Uuid>,
    pub message: String,
    pub entity: String,
    /// `succeeded`, or the failure's code.
    pub outcome: String,
    pub calls: usize,
    pub duration_us: u64,
}

impl RecordedRun {
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id,
            recorded_at: self.recorded_at,
            step_id: self.step_id,
            step: self.step.clone(),
            plugin: self.plugin.clone(),
            assembly: self.assembly,
            job_id: self.job_id,
            message: self.context.message_name.clone(),
            entity: self.context.primary_entity_name.clone(),
            outcome: outcome_name(&self.invocation),
            calls: self.calls.len(),
            duration_us: self.invocation.duration_us,
        }
    }

    /// Reads an exported run, refusing a layout newer than this plughost's.
    pub fn from_json(bytes: &[u8]) -> Result<RecordedRun, String> {
        let run: RecordedRun = serde_json::from_slice(bytes).map_err(|e| format!("not a recorded run: {e}"))?;
        if run.format > RUN_FORMAT {
            return Err(format!(
                "the run was recorded in format {}, newer than this plughost reads ({RUN_FORMAT}): upgrade plughost",
                run.format
            ));
        }
        Ok(run)
    }

    /// The successful writes the run made.
    fn writes(&self) -> Vec<Call> {
        self.calls.iter().filter(|c| c.call.is_write() && c.succeeded()).map(|c| c.call.clone()).collect()
    }
}

fn outcome_name(i: &Invocation) -> String {
    match &i.outcome {
        Ok(_) => "succeeded".into(),
        Err(f) => f.code.to_string(),
    }
}

// ---- recording ----

/// Passes every call to the service it wraps and keeps it with its answer.
pub struct Recorder {
    inner: Arc<dyn OrganizationService>,
    calls: Mutex<Vec<ServiceCall>>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn OrganizationService>) -> Arc<Recorder> {
        Arc::new(Recorder { inner, calls: Mutex::new(Vec::new()) })
    }

    /// The calls made so far.
    pub fn take_calls(&self) -> Vec<ServiceCall> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn keep<T>(
        &self,
        call: Call,
        result: Result<T, ServiceError>,
        answer: impl FnOnce(&T) -> Answer,
    ) -> Result<T, ServiceError> {
        let kept = ServiceCall::new(call, result.as_ref().map(answer).map_err(Clone::clone));
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(kept);
        result
    }
}

impl OrganizationService for Recorder {
    fn create(&self, caller: &CallContext, record: Entity) -> Result<Uuid, ServiceError> {
        let call = Call::Create { record: record.clone() };
        self.keep(call, self.inner.create(caller, record), |id| Answer::Created(*id))
    }
    fn retrieve(
        &self,
        caller: &CallContext,
        target: EntityReference,
        columns: Vec<String>,
    ) -> Result<Entity, ServiceError> {
        let call = Call::Retrieve { target: target.clone(), columns: columns.clone() };
        self.keep(call, self.inner.retrieve(caller, target, columns), |e| Answer::Retrieved(e.clone()))
    }
    fn update(&self, caller: &CallContext, record: Entity) -> Result<(), ServiceError> {
        let call = Call::Update { record: record.clone() };
        self.keep(call, self.inner.update(caller, record), |_| Answer::Done)
    }
    fn delete(&self, caller: &CallContext, target: EntityReference) -> Result<(), ServiceError> {
        let call = Call::Delete { target: target.clone() };
        self.keep(call, self.inner.delete(caller, target), |_| Answer::Done)
    }
    fn retrieve_multiple(&self, caller: &CallContext, query: Query) -> Result<EntityCollection, ServiceError> {
        let call = Call::RetrieveMultiple { query: query.clone() };
        self.keep(call, self.inner.retrieve_multiple(caller, query), |c| Answer::Collection(c.clone()))
    }
    fn execute(
        &self,
        caller: &CallContext,
        message: String,
        parameters: Parameters,
    ) -> Result<Parameters, ServiceError> {
        let call = Call::Execute { message: message.clone(), parameters: parameters.clone() };
        self.keep(call, self.inner.execute(caller, message, parameters), |p| Answer::Parameters(p.clone()))
    }
    fn stopped(&self) -> bool {
        self.inner.stopped()
    }
}

// ---- replay ----

/// Where a replayed call's answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The recording holds the same call: its answer.
    Recorded,
    /// A read the recording does not hold, answered from the records it saw; or a
    /// write, kept and not made.
    Offline,
}

/// A call the new build made during a replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayedCall {
    #[serde(flatten)]
    pub call: ServiceCall,
    pub source: Source,
}

/// Answers a replayed plug-in's calls from a recording.
struct Replayer {
    recorded: Vec<ServiceCall>,
    state: Mutex<(Vec<bool>, Vec<ReplayedCall>)>,
    /// The records the recording saw (its answers, the context's entities): what an
    /// unrecorded read is answered from.
    seen: MemoryData,
}

impl Replayer {
    fn new(run: &RecordedRun) -> Replayer {
        let seen = MemoryData::default();
        let mut remember = |e: &Entity| {
            if e.id.is_some() {
                seen.remember(e.clone());
            }
        };
        let context_entities = run.context.input_parameters.values().chain(run.context.output_parameters.values());
        for p in context_entities {
            match p {
                ParameterValue::Entity(e) => remember(e),
                ParameterValue::Entities(es) => es.iter().for_each(&mut remember),
                _ => {}
            }
        }
        run.context.pre_entity_images.values().chain(run.context.post_entity_images.values()).for_each(&mut remember);
        for c in &run.calls {
            match &c.answer {
                Some(Answer::Retrieved(e)) => remember(e),
                Some(Answer::Collection(c)) => c.entities.iter().for_each(&mut remember),
                _ => {}
            }
        }
        Replayer { recorded: run.calls.clone(), state: Mutex::new((vec![false; run.calls.len()], Vec::new())), seen }
    }

    fn answer(&self, caller: &CallContext, call: Call) -> Result<Answer, ServiceError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (used, log) = &mut *state;
        let found = self.recorded.iter().enumerate().position(|(i, c)| !used[i] && c.call == call);
        let (result, source) = match found {
            Some(i) => {
                used[i] = true;
                (self.recorded[i].result(), Source::Recorded)
            }
            None => (self.offline(caller, &call), Source::Offline),
        };
        log.push(ReplayedCall { call: ServiceCall::new(call, result.clone()), source });
        result
    }

    /// A call the recording does not hold.
    fn offline(&self, caller: &CallContext, call: &Call) -> Result<Answer, ServiceError> {
        let data = &self.seen;
        match call.clone() {
            Call::Retrieve { target, columns } => {
                data.retrieve(caller, target, columns).map(Answer::Retrieved).map_err(|_| {
                    ServiceError::NotFound("the recorded run did not see this record: a replay cannot read it".into())
                })
            }
            Call::RetrieveMultiple { query } => data.retrieve_multiple(caller, query).map(Answer::Collection),
            Call::Execute { message, .. } => Err(ServiceError::Failed(format!(
                "the recorded run did not call '{message}' with these parameters: a replay cannot answer it"
            ))),
            Call::Create { record } => data.create(caller, record).map(Answer::Created),
            // A record the recording did not read still existed on the server: the write is kept.
            Call::Update { record } => match data.update(caller, record) {
                Err(ServiceError::NotFound(_)) => Ok(Answer::Done),
                other => other.map(|()| Answer::Done),
            },
            Call::Delete { target } => match data.delete(caller, target) {
                Err(ServiceError::NotFound(_)) => Ok(Answer::Done),
                other => other.map(|()| Answer::Done),
            },
        }
    }
}

/// The replayer behind an `Arc`, as the runtime wants its service.
struct ReplayService(Arc<Replayer>);

impl OrganizationService for ReplayService {
    fn create(&self, caller: &CallContext, record: Entity) -> Result<Uuid, ServiceError> {
        match self.0.answer(caller, Call::Create { record })? {
            Answer::Created(id) => Ok(id),
            other => Err(mismatch(&other)),
        }
    }
    fn retrieve(
        &self,
        caller: &CallContext,
        target: EntityReference,
        columns: Vec<String>,
    ) -> Result<Entity, ServiceError> {
        match self.0.answer(caller, Call::Retrieve { target, columns })? {
            Answer::Retrieved(e) => Ok(e),
            other => Err(mismatch(&other)),
        }
    }
    fn update(&self, caller: &CallContext, record: Entity) -> Result<(), ServiceError> {
        self.0.answer(caller, Call::Update { record }).map(|_| ())
    }
    fn delete(&self, caller: &CallContext, target: EntityReference) -> Result<(), ServiceError> {
        self.0.answer(caller, Call::Delete { target }).map(|_| ())
    }
    fn retrieve_multiple(&self, caller: &CallContext, query: Query) -> Result<EntityCollection, ServiceError> {
        match self.0.answer(caller, Call::RetrieveMultiple { query })? {
            Answer::Collection(c) => Ok(c),
            other => Err(mismatch(&other)),
        }
    }
    fn execute(
        &self,
        caller: &CallContext,
        message: String,
        parameters: Parameters,
    ) -> Result<Parameters, ServiceError> {
        match self.0.answer(caller, Call::Execute { message, parameters })? {
            Answer::Parameters(p) => Ok(p),
            other => Err(mismatch(&other)),
        }
    }
}

fn mismatch(answer: &Answer) -> ServiceError {
    ServiceError::Failed(format!("the recording answered this call with {answer:?}: the recording is damaged"))
}

/// One way the replay differs from the recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// `outcome`, `writes`, `output_parameters` or `trace`.
    pub what: String,
    pub recorded: serde_json::Value,
    pub replayed: serde_json::Value,
}

/// What a replay did and how it differs from the recording.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replay {
    pub run: Uuid,
    pub recorded_assembly: AssemblyHash,
    pub replayed_assembly: AssemblyHash,
    pub invocation: Invocation,
    pub calls: Vec<ReplayedCall>,
    /// Recorded calls the new build did not make.
    pub unmade: Vec<ServiceCall>,
    /// Empty when the new build did the same as the recorded one.
    pub differences: Vec<Difference>,
}

impl Replay {
    pub fn same(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Runs `plugin` against `run`'s context and recorded answers, offline.
pub fn replay(runtime: &Runtime, plugin: &LoadedPlugin, run: &RecordedRun) -> Replay {
    let replayer = Arc::new(Replayer::new(run));
    let invocation = runtime.invoke(plugin, &run.context, &run.limits, Arc::new(ReplayService(replayer.clone())));
    let (used, calls) = std::mem::take(&mut *replayer.state.lock().unwrap_or_else(|p| p.into_inner()));
    let unmade = run.calls.iter().zip(&used).filter(|(_, u)| !**u).map(|(c, _)| c.clone()).collect();
    let replayed_writes: Vec<Call> =
        calls.iter().filter(|c| c.call.call.is_write() && c.call.succeeded()).map(|c| c.call.call.clone()).collect();
    let mut differences = Vec::new();
    let mut differ = |what: &str, recorded: serde_json::Value, replayed: serde_json::Value| {
        if recorded != replayed {
            differences.push(Difference { what: what.into(), recorded, replayed });
        }
    };
    let outcome = |i: &Invocation| match &i.outcome {
        Ok(_) => serde_json::json!("succeeded"),
        Err(f) => serde_json::json!({"failed": f}),
    };
    differ("outcome", outcome(&run.invocation), outcome(&invocation));
    differ("writes", json(&run.writes()), json(&replayed_writes));
    let outputs = |i: &Invocation| i.outcome.as_ref().map(|r| r.output_parameters.clone()).unwrap_or_default();
    differ("output_parameters", json(&outputs(&run.invocation)), json(&outputs(&invocation)));
    differ("trace", json(&trace_lines(&run.invocation.trace)), json(&trace_lines(&invocation.trace)));
    Replay {
        run: run.id,
        recorded_assembly: run.assembly,
        replayed_assembly: plugin.hash,
        invocation,
        calls,
        unmade,
        differences,
    }
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn trace_lines(trace: &str) -> Vec<&str> {
    trace.lines().collect()
}

/// The lines of `after` not in `before` (`+`) and of `before` not in `after` (`-`),
/// in order (a longest-common-subsequence diff of up to 1,000 lines each).
pub fn line_diff(before: &[String], after: &[String]) -> Vec<String> {
    const MAX: usize = 1000;
    let (a, b) = (&before[..before.len().min(MAX)], &after[..after.len().min(MAX)]);
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

/// Counts of a replay's calls by where their answers came from.
pub fn call_sources(calls: &[ReplayedCall]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for c in calls {
        let k = match c.source {
            Source::Recorded => "recorded",
            Source::Offline => "offline",
        };
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_diff_names_what_went_and_what_came() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let d = line_diff(&s(&["a", "b", "c"]), &s(&["a", "x", "c", "d"]));
        assert_eq!(d, vec!["- b", "+ x", "+ d"]);
        assert!(line_diff(&s(&["a"]), &s(&["a"])).is_empty());
    }

    #[test]
    fn a_recorded_call_is_answered_once_and_then_offline() {
        let account = Entity::new("account").with("name", crate::model::Value::Text("A".into()));
        let mut account = account;
        account.id = Some(Uuid::new_v4());
        let target = account.reference().unwrap();
        let retrieve = Call::Retrieve { target: target.clone(), columns: vec![] };
        let run_calls = vec![ServiceCall::new(retrieve.clone(), Ok(Answer::Retrieved(account.clone())))];
        let replayer =
            Replayer { recorded: run_calls, state: Mutex::new((vec![false], Vec::new())), seen: MemoryData::default() };
        replayer.seen.remember(account.clone());
        let caller = CallContext {
            depth: 1,
            correlation_id: Uuid::nil(),
            initiating_user_id: Uuid::nil(),
            user_id: Uuid::nil(),
            step_id: None,
        };
        assert_eq!(replayer.answer(&caller, retrieve.clone()).unwrap(), Answer::Retrieved(account.clone()));
        // The second time, from the records seen; an update of an unseen record is kept.
        assert_eq!(replayer.answer(&caller, retrieve).unwrap(), Answer::Retrieved(account));
        let mut other = Entity::new("contact");
        other.id = Some(Uuid::new_v4());
        assert_eq!(replayer.answer(&caller, Call::Update { record: other }).unwrap(), Answer::Done);
        let missing = Call::Execute { message: "Nope".into(), parameters: Parameters::new() };
        assert!(matches!(replayer.answer(&caller, missing), Err(ServiceError::Failed(_))));
        let sources: Vec<Source> = replayer.state.lock().unwrap().1.iter().map(|c| c.source).collect();
        assert_eq!(sources, vec![Source::Recorded, Source::Offline, Source::Offline, Source::Offline]);
    }
}
