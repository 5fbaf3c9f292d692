//! Baselines for `plughost bench`, measured in the same run as what they are
//! compared with: bare wasmtime (what a plug-in call costs with none of plughost's
//! work) and a raw redb loop (what a durable queue's per-job writes cost with none of
//! plughost's). Not an API for hosts: it exists so the benchmarks live in the repo.

use std::path::Path;

use crate::model::ExecutionContext;
use crate::runtime::{LoadedPlugin, Runtime};
use crate::store::StoreError;

/// `iterations` bare instantiate-and-call cycles of `plugin` with `runtime`'s engine;
/// returns how many succeeded.
pub fn bare_wasmtime_calls(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    context: &ExecutionContext,
    iterations: usize,
) -> usize {
    runtime.baseline_calls(plugin, context, iterations)
}

/// Jobs per second of the minimal durable queue loop on redb in `dir` (see
/// `store::baseline`).
pub fn raw_redb_queue(dir: &Path, jobs: usize, batch: usize, record_bytes: usize) -> Result<f64, StoreError> {
    crate::store::baseline::raw_queue_jobs_per_second(dir, jobs, batch, record_bytes)
}
