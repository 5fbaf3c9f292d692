//! plughost: an open host for sandboxed WebAssembly plug-ins driven by data events.
//!
//! The modules, bottom-up: [`model`] (records, values, contexts), `codec` (the
//! binary encoding), [`runtime`] (wasmtime sandbox), [`store`] (redb),
//! [`registry`] (assemblies, plug-ins, steps), [`memdata`] (an in-memory data set
//! for local tests), and the `plughost` command line in `main.rs` and `cli/`.

pub mod accounts;
pub mod admin;
pub mod baselines;
pub mod bulk;
pub mod clock;
mod codec;
pub mod codes;
pub mod config;
pub mod fleet;
#[cfg(test)]
mod fuzz;
pub mod jobs;
pub mod mail;
pub mod memdata;
pub mod metadata;
pub mod model;
pub mod pipeline;
pub mod protocol;
pub mod query;
pub mod records;
pub mod recurrence;
pub mod registry;
pub mod remote;
pub mod runs;
pub mod runtime;
pub mod security;
pub mod server;
pub mod store;
pub mod worker;
pub mod workflow;

pub use codec::{CodecError, FORMAT_VERSION};
