//! The step index (enabled steps by message, rebuilt when the registry changes) and
//! invoking a step's plug-in, in a kept instance when the step allows reuse.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use uuid::Uuid;

use super::Source;
use super::scope::Scope;
use crate::model::{AssemblyHash, ExecutionContext, Mode, Stage};
use crate::registry::StepRecord;
use crate::runs::{RecordedRun, Recorder};
use crate::runtime::{InstanceCache, Invocation, Limits, LoadedPlugin, OrganizationService, Reuse, Runtime};
use crate::workflow::ActiveWorkflow;

use super::Result;

/// The enabled steps, by message, with each plug-in's assembly: rebuilt when the
/// registry changes.
#[derive(Default)]
pub(super) struct StepIndex {
    pub(super) by_message: HashMap<String, Vec<StepRecord>>,
    /// Every step, enabled or not: what queued jobs refer to.
    pub(super) by_id: HashMap<Uuid, StepRecord>,
    pub(super) assemblies: HashMap<String, AssemblyHash>,
    /// Active workflows by their primary entity, and by name.
    pub(super) workflows: HashMap<String, Vec<ActiveWorkflow>>,
    pub(super) workflow_names: HashMap<String, ActiveWorkflow>,
    /// Steps set to record their runs, with the runs this process may still record
    /// (the store keeps no more than the step's budget, whoever records).
    pub(super) profiled: HashMap<Uuid, AtomicU32>,
}

impl StepIndex {
    pub(super) fn load(source: &dyn Source) -> Result<StepIndex> {
        let mut index = StepIndex::default();
        let super::Registered { plugins, steps, workflows, profiles } = source.registry()?;
        index.profiled = profiles.into_iter().map(|(id, n)| (id, AtomicU32::new(n))).collect();
        for w in workflows {
            index.workflows.entry(w.definition.entity.clone()).or_default().push(w.clone());
            index.workflow_names.insert(w.definition.name.clone(), w);
        }
        for p in plugins {
            index.assemblies.insert(p.name, p.assembly);
        }
        for s in steps {
            index.by_id.insert(s.id, s.clone());
            if s.enabled {
                index.by_message.entry(s.message.clone()).or_default().push(s);
            }
        }
        for steps in index.by_message.values_mut() {
            steps.sort_by_key(|s| (s.stage, s.rank, s.created_at));
        }
        Ok(index)
    }

    /// Steps for (message, entity, stage, mode), in rank order.
    pub(super) fn matching<'a>(
        &'a self,
        message: &str,
        entity: &'a str,
        stage: Stage,
        mode: Mode,
    ) -> impl Iterator<Item = &'a StepRecord> + 'a {
        self.by_message
            .get(message)
            .into_iter()
            .flatten()
            .filter(move |s| s.stage == stage && s.mode == mode && s.entity.as_deref().is_none_or(|e| e == entity))
    }
}

thread_local! {
    /// Instances kept for steps that opt in to reuse, per thread: an instance is
    /// never shared between threads, and nested invocations take their own.
    static KEPT: std::cell::RefCell<InstanceCache> = std::cell::RefCell::new(InstanceCache::default());
}

/// Invokes a step's plug-in, in a kept instance when the step allows reuse; when
/// the step is set to record, records the run into `scope`.
pub(super) fn invoke_step(
    runtime: &Runtime,
    step: &StepRecord,
    plugin: &LoadedPlugin,
    context: &ExecutionContext,
    limits: &Limits,
    scope: Arc<Scope>,
) -> Invocation {
    let records = scope
        .steps
        .profiled
        .get(&step.id)
        .is_some_and(|left| left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok());
    if !records {
        return invoke_plain(runtime, step, plugin, context, limits, scope);
    }
    let recorder = Recorder::new(scope.clone());
    let invocation = invoke_plain(runtime, step, plugin, context, limits, recorder.clone());
    let run = RecordedRun {
        format: crate::runs::RUN_FORMAT,
        id: Uuid::now_v7(),
        recorded_at: crate::clock::now_ms(),
        step_id: step.id,
        step: step.name.clone(),
        plugin: step.plugin.clone(),
        assembly: plugin.hash,
        job_id: context.operation_id,
        correlation_id: context.correlation_id,
        context: context.clone(),
        limits: *limits,
        calls: recorder.take_calls(),
        invocation: invocation.clone(),
    };
    scope.runs.lock().unwrap_or_else(|p| p.into_inner()).push(run);
    invocation
}

fn invoke_plain(
    runtime: &Runtime,
    step: &StepRecord,
    plugin: &LoadedPlugin,
    context: &ExecutionContext,
    limits: &Limits,
    service: Arc<dyn OrganizationService>,
) -> Invocation {
    if step.instance_reuse <= 1 {
        return runtime.invoke(plugin, context, limits, service);
    }
    // Take the cache out while the plug-in runs, so a nested invocation on this
    // thread finds an empty one instead of a borrowed one.
    let mut cache = KEPT.with(|k| std::mem::take(&mut *k.borrow_mut()));
    let invocation = runtime.invoke_reusing(
        Reuse { cache: &mut cache, key: step.id, max_uses: step.instance_reuse },
        plugin,
        context,
        limits,
        service,
    );
    KEPT.with(|k| *k.borrow_mut() = cache);
    invocation
}
