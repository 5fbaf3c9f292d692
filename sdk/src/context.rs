//! The execution context a plug-in reads, and the changes it hands back.

use crate::{
    Entity, EntityReference, ExecutionContext, ExecutionResult, Mode, Parameter, ParameterValue, Stage, Value,
};

/// One event, as a plug-in sees it (Dataverse IPluginExecutionContext), plus the
/// changes the plug-in makes to it: changed input parameters (such as the
/// "Target" of a pre-operation step), output parameters and shared variables.
pub struct Context {
    inner: ExecutionContext,
    result: ExecutionResult,
}

impl Context {
    pub(crate) fn new(inner: ExecutionContext) -> Self {
        Context {
            inner,
            result: ExecutionResult {
                input_parameters: Vec::new(),
                output_parameters: Vec::new(),
                shared_variables: Vec::new(),
            },
        }
    }

    pub(crate) fn into_result(self) -> ExecutionResult {
        self.result
    }

    /// The whole context as the host sent it.
    pub fn raw(&self) -> &ExecutionContext {
        &self.inner
    }

    /// "Create", "Update", "Delete", ... or a custom message name.
    pub fn message(&self) -> &str {
        &self.inner.message_name
    }

    pub fn entity_name(&self) -> &str {
        &self.inner.primary_entity_name
    }

    pub fn entity_id(&self) -> Option<&str> {
        self.inner.primary_entity_id.as_deref()
    }

    pub fn stage(&self) -> Stage {
        self.inner.stage
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    pub fn depth(&self) -> u32 {
        self.inner.depth
    }

    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The user who started the chain of requests this run belongs to.
    pub fn initiating_user_id(&self) -> &str {
        &self.inner.initiating_user_id
    }

    /// The user this step runs as: the caller, or the step's run-as user. The
    /// organization service checks its calls against this user's privileges.
    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    /// The step's unsecure configuration string.
    pub fn configuration(&self) -> Option<&str> {
        self.inner.configuration.as_deref()
    }

    /// An input parameter, with this plug-in's own changes applied.
    pub fn input(&self, name: &str) -> Option<&ParameterValue> {
        find(&self.result.input_parameters, name).or_else(|| find(&self.inner.input_parameters, name))
    }

    /// The "Target" input parameter when it is a record (Create, Update).
    pub fn target(&self) -> Option<&Entity> {
        match self.input("Target")? {
            ParameterValue::Entity(e) => Some(e),
            _ => None,
        }
    }

    /// The "Target" input parameter when it is a reference (Delete, Retrieve).
    pub fn target_reference(&self) -> Option<&EntityReference> {
        match self.input("Target")? {
            ParameterValue::Reference(r) => Some(r),
            _ => None,
        }
    }

    /// Replaces the record being written (pre-validation and pre-operation steps).
    pub fn set_target(&mut self, target: Entity) {
        self.set_input("Target", ParameterValue::Entity(target));
    }

    pub fn set_input(&mut self, name: &str, value: ParameterValue) {
        upsert(&mut self.result.input_parameters, name, value);
    }

    /// An output parameter, with this plug-in's own changes applied.
    pub fn output(&self, name: &str) -> Option<&ParameterValue> {
        find(&self.result.output_parameters, name).or_else(|| find(&self.inner.output_parameters, name))
    }

    pub fn set_output(&mut self, name: &str, value: ParameterValue) {
        upsert(&mut self.result.output_parameters, name, value);
    }

    pub fn pre_image(&self, name: &str) -> Option<&Entity> {
        self.inner.pre_entity_images.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    pub fn post_image(&self, name: &str) -> Option<&Entity> {
        self.inner.post_entity_images.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    /// A shared variable, set by an earlier step of the pipeline or by this one.
    pub fn shared(&self, name: &str) -> Option<&Value> {
        self.result
            .shared_variables
            .iter()
            .chain(self.inner.shared_variables.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Sets a shared variable for the later steps of this pipeline.
    pub fn set_shared(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.result.shared_variables.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.result.shared_variables.push((name.to_owned(), value)),
        }
    }
}

fn find<'a>(params: &'a [Parameter], name: &str) -> Option<&'a ParameterValue> {
    params.iter().find(|p| p.name == name).map(|p| &p.value)
}

fn upsert(params: &mut Vec<Parameter>, name: &str, value: ParameterValue) {
    match params.iter_mut().find(|p| p.name == name) {
        Some(p) => p.value = value,
        None => params.push(Parameter { name: name.to_owned(), value }),
    }
}
