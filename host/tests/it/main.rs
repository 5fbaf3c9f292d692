//! plughost's integration tests: one binary, real components compiled from
//! `example-plugins/rust`, a real redb file, the real `plughost` binary.

mod bulk;
mod cli;
mod crash;
mod dashboard;
mod http;
mod mail;
mod model;
mod openapi;
mod queue;
mod registry;
mod remote;
mod replay;
mod sandbox;
mod security;
mod server;
mod shared;
mod workflows;

use std::sync::Arc;

use plughost::model::{AssemblyHash, Entity, ExecutionContext, ParameterValue, Stage, Value};
use plughost::runtime::{LoadedPlugin, Runtime, RuntimeConfig};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_plughost");

/// A runtime with the production configuration (pooling allocator), no disk cache.
pub(crate) fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default(), None).expect("runtime")
}

pub(crate) fn load(rt: &Runtime, path: &str) -> Arc<LoadedPlugin> {
    let bytes = plughost_test_support::wasm(path);
    rt.load(&AssemblyHash::of(&bytes), || Ok(bytes.clone())).expect("load plug-in")
}

/// A Create of `account` with `attributes`, at `stage`.
pub(crate) fn create_context(stage: Stage, attributes: &[(&str, Value)]) -> ExecutionContext {
    let mut target = Entity::new("account");
    for (k, v) in attributes {
        target.attributes.insert((*k).to_owned(), v.clone());
    }
    let mut ctx = ExecutionContext { stage, primary_entity_name: "account".into(), ..Default::default() };
    ctx.input_parameters.insert("Target".into(), ParameterValue::Entity(target));
    ctx
}
