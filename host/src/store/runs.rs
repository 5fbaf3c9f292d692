//! Recorded runs (`crate::runs`) and the steps set to record them.
//!
//! `step_profiles` holds, per step, how many more runs to record; `recorded_runs`
//! each run as its JSON export (the format `runs export` writes, versioned by its
//! own `format` field) and `recorded_run_summaries` what `runs list` shows, both by
//! run id (UUIDv7: time order). A run is kept only while its step's budget lasts,
//! checked in the transaction that keeps it, so concurrent workers and servers
//! record exactly the number asked for; the run that spends the budget removes the
//! profile and moves the registry generation, so every process stops recording.

use std::ops::ControlFlow;

use uuid::Uuid;

use super::kv::{ALL_TABLES, Reads, Table, Write};
use super::{META, REGISTRY_GENERATION, Result, STEPS, Store, StoreError};
use crate::codec;
use crate::runs::{MAX_RECORD_RUNS, MAX_RUN_BYTES, RecordedRun, RunSummary};

/// Runs left to record, by step id.
pub(super) const PROFILES: Table<u128, u64> = Table::new(ALL_TABLES[37]);
/// Recorded runs, by run id, as JSON.
const RUNS: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[38]);
/// Their summaries, by run id, as JSON.
const SUMMARIES: Table<u128, Vec<u8>> = Table::new(ALL_TABLES[39]);

/// Most summaries one `runs list` returns.
pub const MAX_RUNS_PAGE: usize = 1000;

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("a recorded run does not encode or decode: {e}"))
}

/// Moves the registry generation: processes that follow the store reload their steps.
pub(super) fn bump_registry_generation(w: &Write<'_>) -> Result<()> {
    let key = REGISTRY_GENERATION.to_owned();
    let generation = super::get::<_, u64>(w, &META, &key)?.unwrap_or(0) + 1;
    w.insert(&META, &key, &codec::encode(&generation)?)
}

/// Keeps each run whose step still has budget left; returns how many were kept.
pub(super) fn keep_runs(w: &Write<'_>, runs: &[RecordedRun]) -> Result<usize> {
    let mut kept = 0;
    for run in runs {
        let step = run.step_id.as_u128();
        let left = w.get(&PROFILES, &step)?.unwrap_or(0);
        if left == 0 {
            continue;
        }
        let body = serde_json::to_vec(run).map_err(json_error)?;
        if body.len() > MAX_RUN_BYTES {
            tracing::warn!(run = %run.id, step = %run.step, bytes = body.len(), "a recorded run is larger than {MAX_RUN_BYTES} bytes: not kept");
            continue;
        }
        let summary = serde_json::to_vec(&run.summary()).map_err(json_error)?;
        w.insert(&RUNS, &run.id.as_u128(), &body)?;
        w.insert(&SUMMARIES, &run.id.as_u128(), &summary)?;
        kept += 1;
        if left == 1 {
            w.remove(&PROFILES, &step)?;
            bump_registry_generation(w)?;
        } else {
            w.insert(&PROFILES, &step, &(left - 1))?;
        }
    }
    Ok(kept)
}

impl Store {
    /// Sets how many of a step's next runs to record (0: stop recording).
    pub fn set_profile(&self, step: Uuid, runs: u32) -> Result<()> {
        if runs > MAX_RECORD_RUNS {
            return Err(StoreError::Invalid(format!(
                "at most {MAX_RECORD_RUNS} runs can be recorded at a time; {runs} were asked for"
            )));
        }
        self.change_registry(|w| {
            if w.get(&STEPS, &step.as_u128())?.is_none() {
                return Err(StoreError::NotFound(format!("no step with id {step}")));
            }
            match runs {
                0 => w.remove(&PROFILES, &step.as_u128())?,
                n => w.insert(&PROFILES, &step.as_u128(), &u64::from(n))?,
            }
            Ok(())
        })
    }

    /// Steps set to record, with the runs each has left.
    pub fn profiles(&self) -> Result<Vec<(Uuid, u32)>> {
        let r = self.read()?;
        let all = r.first(&PROFILES, .., usize::MAX)?;
        Ok(all.into_iter().map(|(k, n)| (Uuid::from_u128(k), u32::try_from(n).unwrap_or(u32::MAX))).collect())
    }

    /// Keeps recorded runs of a request (in their own transaction): see [`keep_runs`].
    pub fn keep_runs(&self, runs: &[RecordedRun]) -> Result<usize> {
        if runs.is_empty() {
            return Ok(0);
        }
        self.write(|w| keep_runs(w, runs))
    }

    /// Up to `max` recorded runs, newest first, of `step` (or of every step), older than `before`.
    pub fn runs(&self, step: Option<Uuid>, before: Option<Uuid>, max: usize) -> Result<Vec<RunSummary>> {
        let max = max.min(MAX_RUNS_PAGE);
        let hi = before.map_or(u128::MAX, |b| b.as_u128());
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.read()?.scan(&SUMMARIES, ..hi, true, |_, v: Vec<u8>| {
            let s: RunSummary = serde_json::from_slice(&v).map_err(json_error)?;
            if step.is_none_or(|id| id == s.step_id) {
                out.push(s);
            }
            Ok(if out.len() >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        Ok(out)
    }

    /// One recorded run.
    pub fn run(&self, id: Uuid) -> Result<RecordedRun> {
        let body = self.read()?.get(&RUNS, &id.as_u128())?;
        let body = body.ok_or_else(|| StoreError::NotFound(format!("no recorded run with id {id}")))?;
        RecordedRun::from_json(&body).map_err(StoreError::Db)
    }

    /// Deletes one recorded run; returns its summary.
    pub fn delete_run(&self, id: Uuid) -> Result<RunSummary> {
        self.write(|w| {
            let v = w.get(&SUMMARIES, &id.as_u128())?;
            let v = v.ok_or_else(|| StoreError::NotFound(format!("no recorded run with id {id}")))?;
            let summary: RunSummary = serde_json::from_slice(&v).map_err(json_error)?;
            w.remove(&SUMMARIES, &id.as_u128())?;
            w.remove(&RUNS, &id.as_u128())?;
            Ok(summary)
        })
    }
}
