//! The server's side of the worker protocol (`crate::protocol`): the directory of
//! remote workers and the operations they call — hello, lease, heartbeat, complete,
//! release, reads for a leased job, the registry and assemblies. The HTTP handlers
//! (`server/workers.rs`) only translate.
//!
//! **Invariants:**
//! - A remote worker's completion goes through the same `JobQueue::complete_all` as
//!   an in-process worker's: fencing tokens, version checks and the job policy are
//!   the server's, and the retry policy is the server's configuration, not the
//!   worker's.
//! - A worker reads data only for a job it holds: every read names the job and its
//!   fencing token, checked against the store.
//! - Nothing about a worker is durable: a restarted server knows no worker, and a
//!   worker that calls with an unknown id says hello again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use crate::admin::{Admin, AdminError};
use crate::clock::now_ms;
use crate::jobs::RunOutcome;
use crate::model::AssemblyHash;
use crate::protocol::{
    Completions, Heartbeat, Hello, LeaseRequest, Leased, MAX_SCAN, MAX_WAIT_MS, PROTOCOL_VERSION, Read, ReadAnswer,
    ReadRequest, Registry, Release, Renewed, Welcome, WireCompletion, WireJob, WireOutcome, WorkerInfo,
};
use crate::runtime::Limits;
use crate::store::{CommitError, Outcomes, Renewal};
use crate::worker::WorkerConfig;

type Result<T, E = AdminError> = std::result::Result<T, E>;

/// Completions handed to the writer: their outcomes once durable.
type Submitted = tokio::sync::oneshot::Receiver<Result<Outcomes, CommitError>>;

/// Most jobs one lease request may ask for.
pub const MAX_LEASE: usize = 10_000;
/// A lost worker is listed (as lost) for ten leases, and at least this long; then it
/// is forgotten.
pub const FORGET_LOST_AFTER_MS: i64 = 10 * 60 * 1000;

/// The remote workers this server knows, and the job policy it gives them.
pub struct Fleet {
    workers: Mutex<HashMap<Uuid, WorkerInfo>>,
    lease_ms: u64,
    max_retries: u32,
    backoff_ms: i64,
    retention_secs: u64,
    limits: Limits,
}

impl Fleet {
    pub fn new(config: &WorkerConfig, limits: Limits) -> Fleet {
        Fleet {
            limits,
            workers: Mutex::default(),
            lease_ms: config.lease_ms,
            max_retries: config.max_retries,
            backoff_ms: config.backoff_ms,
            retention_secs: config.completed_job_retention_secs,
        }
    }

    fn with<T>(&self, worker: Uuid, f: impl FnOnce(&mut WorkerInfo) -> T) -> Result<T> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let info = workers.get_mut(&worker).ok_or_else(|| AdminError::Invalid {
            code: "unknown_worker",
            message: format!("this server does not know worker {worker} (it restarted?): say hello again"),
        })?;
        info.last_heartbeat = now_ms();
        Ok(f(info))
    }

    /// Every worker, lost ones marked; workers lost for long are forgotten.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.list_at(now_ms())
    }

    fn list_at(&self, now: i64) -> Vec<WorkerInfo> {
        let lease = i64::try_from(self.lease_ms).unwrap_or(i64::MAX);
        let forget = lease.saturating_mul(10).max(FORGET_LOST_AFTER_MS);
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|_, w| now.saturating_sub(w.last_heartbeat) <= forget);
        let mut out: Vec<WorkerInfo> = workers
            .values()
            .map(|w| WorkerInfo { lost: now.saturating_sub(w.last_heartbeat) > lease, ..w.clone() })
            .collect();
        out.sort_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)));
        out
    }
}

impl Admin {
    /// Registers a worker process; refuses one that speaks another protocol.
    pub fn worker_hello(&self, hello: Hello) -> Result<Welcome> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(AdminError::Invalid {
                code: "protocol_mismatch",
                message: format!(
                    "the worker speaks worker protocol {} (plughost {}), this server speaks {PROTOCOL_VERSION} (plughost {}): run the same plughost version on both",
                    hello.protocol,
                    hello.version,
                    env!("CARGO_PKG_VERSION")
                ),
            });
        }
        let fleet = self.fleet();
        let id = Uuid::now_v7();
        let now = now_ms();
        let info = WorkerInfo {
            id,
            name: hello.name,
            host: hello.host,
            pid: hello.pid,
            version: hello.version,
            workers: hello.workers,
            started: now,
            last_heartbeat: now,
            leased: 0,
            done: 0,
            failures: 0,
            lost: false,
        };
        tracing::info!(worker = %id, name = %info.name, host = %info.host, "a remote worker said hello");
        fleet.workers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, info);
        Ok(Welcome {
            protocol: PROTOCOL_VERSION,
            worker: id,
            server_version: env!("CARGO_PKG_VERSION").into(),
            lease_ms: fleet.lease_ms,
            completed_job_retention_secs: fleet.retention_secs,
            limits: fleet.limits,
        })
    }

    /// Applies the completions a lease request carries and leases jobs to the worker,
    /// in one group commit when the writer allows; waits up to `wait_ms` for a job
    /// when none is runnable or the service is paused.
    pub fn worker_lease(&self, req: LeaseRequest<'_>) -> Result<Leased> {
        let fleet = self.fleet();
        let name = fleet.with(req.worker, |w| w.name.clone())?;
        let lease = Duration::from_millis(req.lease_ms.max(crate::worker::MIN_LEASE_MS));
        let max = req.max.clamp(1, MAX_LEASE);
        let completed = (!req.completions.is_empty()).then(|| self.submit_completions(req.completions.into_owned()));
        let mut jobs = Vec::new();
        if !self.is_paused() {
            jobs = self
                .queue()
                .lease_for(&name, max, lease, crate::store::LeaseFilter::NotMail)
                .map_err(AdminError::from)?;
        }
        let outcomes = match completed {
            Some(submitted) => self.settle_completions(req.worker, submitted)?,
            None => Vec::new(),
        };
        if jobs.is_empty() && req.wait_ms > 0 {
            // New jobs, or the service resuming, end the wait early.
            self.queue().wait_for_work(Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS)));
            if !self.is_paused() {
                jobs = self
                    .queue()
                    .lease_for(&name, max, lease, crate::store::LeaseFilter::NotMail)
                    .map_err(AdminError::from)?;
            }
        }
        fleet.with(req.worker, |w| w.leased += jobs.len() as u64)?;
        Ok(Leased {
            outcomes,
            jobs: jobs.into_iter().map(WireJob::new).collect(),
            generation: self.pipeline().generation(),
            paused: self.is_paused(),
        })
    }

    pub fn worker_heartbeat(&self, beat: Heartbeat) -> Result<Renewed> {
        self.fleet().with(beat.worker, |_| ())?;
        let lease = Duration::from_millis(beat.lease_ms.max(crate::worker::MIN_LEASE_MS));
        let renewals = if beat.held.is_empty() {
            Vec::new()
        } else {
            self.queue().renew(beat.held, lease).map_err(AdminError::from)?
        };
        let kept = renewals.iter().filter(|r| **r != Renewal::Lost).count() as u64;
        self.fleet().with(beat.worker, |w| w.leased = kept)?;
        Ok(Renewed { renewals, generation: self.pipeline().generation(), paused: self.is_paused() })
    }

    pub fn worker_release(&self, release: Release) -> Result<usize> {
        let n = release.jobs.len() as u64;
        self.fleet().with(release.worker, |w| w.leased = w.leased.saturating_sub(n))?;
        self.queue().release(release.jobs).map_err(AdminError::from)
    }

    /// Applies a worker's completions (effects included) in one group-committed
    /// operation and says what became of each.
    pub fn worker_complete(&self, done: Completions<'_>) -> Result<Vec<WireOutcome>> {
        self.fleet().with(done.worker, |_| ())?;
        let submitted = self.submit_completions(done.completions.into_owned());
        self.settle_completions(done.worker, submitted)
    }

    /// Hands completions to the writer under the server's retry policy, without waiting.
    fn submit_completions(&self, completions: Vec<WireCompletion>) -> (usize, Submitted) {
        let fleet = self.fleet();
        let n = completions.len();
        let completions =
            completions.into_iter().map(|c| c.into_completion(fleet.max_retries, fleet.backoff_ms)).collect();
        (n, self.queue().complete_all(completions))
    }

    /// Waits for submitted completions to be durable, counts them for the worker and
    /// says what became of each.
    fn settle_completions(&self, worker: Uuid, (n, submitted): (usize, Submitted)) -> Result<Vec<WireOutcome>> {
        let fleet = self.fleet();
        let n = n as u64;
        let outcomes = submitted.blocking_recv().unwrap_or(Err(CommitError::Stopped)).map_err(AdminError::from)?;
        let (mut ok, mut failed) = (0, 0);
        let outcomes: Vec<WireOutcome> = outcomes
            .into_iter()
            .map(|o| match o {
                Ok(o) => {
                    let o = WireOutcome::from(o);
                    match &o {
                        WireOutcome::Recorded { run: RunOutcome::Succeeded, .. } | WireOutcome::Deleted => ok += 1,
                        WireOutcome::Recorded { run: RunOutcome::Failed, .. } => failed += 1,
                        _ => {}
                    }
                    o
                }
                Err(e) => {
                    let e = AdminError::from(e);
                    WireOutcome::Error { code: e.code().to_owned(), message: e.to_string() }
                }
            })
            .collect();
        fleet.with(worker, |w| {
            w.leased = w.leased.saturating_sub(n);
            w.done += ok;
            w.failures += failed;
        })?;
        Ok(outcomes)
    }

    /// A read for a job the worker holds: refused unless the job is leased with that token.
    pub fn worker_read(&self, req: ReadRequest) -> Result<ReadAnswer> {
        let store = self.pipeline().store();
        // One snapshot: the lease check and the read see the same state.
        let snapshot = store.snapshot()?;
        if !snapshot.job_leased_with(req.job, req.token)? {
            return Err(AdminError::Invalid {
                code: "lease_lost",
                message: format!(
                    "job {} is not leased with fencing token {}: reads end with the lease",
                    req.job, req.token
                ),
            });
        }
        Ok(match req.read {
            Read::Record { entity, id } => ReadAnswer::Record(snapshot.record(&entity, id)?),
            Read::Scan { entity, after, max } => {
                let max = max.clamp(1, MAX_SCAN);
                let mut out = Vec::new();
                snapshot.scan(&entity, after, |id, rec| {
                    out.push((id, rec));
                    if out.len() >= max {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                })?;
                ReadAnswer::Records(out)
            }
            Read::Definition { entity } => ReadAnswer::Definition(snapshot.definition(&entity)?),
            Read::Rows { from, max } => ReadAnswer::Rows(store.bulk_rows(req.job, from, max.clamp(1, MAX_SCAN))?),
            Read::Principal { user } => ReadAnswer::Principal(snapshot.principal(user)?),
        })
    }

    pub fn worker_registry(&self) -> Result<Registry> {
        let generation = self.pipeline().generation();
        Ok(Registry {
            generation,
            plugins: self.pipeline().store().plugins()?,
            steps: self.pipeline().store().steps()?,
            workflows: self
                .pipeline()
                .store()
                .active_workflows()?
                .iter()
                .map(crate::protocol::WireWorkflow::new)
                .collect(),
            profiles: self.pipeline().store().profiles()?,
        })
    }

    /// An assembly's bytes, for a worker to compile (it checks the hash itself).
    pub fn worker_assembly(&self, hash: &str) -> Result<Vec<u8>> {
        let hash: AssemblyHash = hash.parse().map_err(AdminError::invalid)?;
        self.pipeline()
            .store()
            .assembly_bytes(&hash)?
            .ok_or_else(|| AdminError::not_found(format!("no assembly {hash}")))
    }

    pub fn remote_workers(&self) -> Vec<WorkerInfo> {
        self.fleet().list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, last_heartbeat: i64) -> WorkerInfo {
        WorkerInfo {
            id: Uuid::now_v7(),
            name: name.into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            workers: 1,
            started: 0,
            last_heartbeat,
            leased: 0,
            done: 0,
            failures: 0,
            lost: false,
        }
    }

    #[test]
    fn workers_not_heard_from_are_lost_then_forgotten() {
        let fleet = Fleet::new(&WorkerConfig { lease_ms: 1000, ..WorkerConfig::default() }, Default::default());
        let now = 100 * 60 * 1000;
        for w in [info("alive", now - 500), info("lost", now - 5_000), info("gone", now - FORGET_LOST_AFTER_MS - 1)] {
            fleet.workers.lock().unwrap().insert(w.id, w);
        }
        let listed: Vec<(String, bool)> = fleet.list_at(now).into_iter().map(|w| (w.name, w.lost)).collect();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.contains(&("alive".into(), false)) && listed.contains(&("lost".into(), true)), "{listed:?}");
        assert_eq!(fleet.workers.lock().unwrap().len(), 2, "the long-lost one is forgotten");
    }
}
