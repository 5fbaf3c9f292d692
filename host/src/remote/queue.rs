//! The server's job queue as a remote worker pool sees it: leases by long poll,
//! heartbeats, releases, and completions sent in batches by one sender thread (so the
//! pool's workers never wait on the network to go on running jobs).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver as Inbox, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::client::{Client, Patience, RemoteError};
use super::source::RemoteSource;
use crate::jobs::SystemJob;
use crate::pipeline::Pipeline;
use crate::protocol::{Heartbeat, LeaseRequest, Leased, Release, Renewed, WireCompletion, WireOutcome};
use crate::store::{CommitError, CompletionOutcome, JobCompletion, Outcomes, Renewal, StoreError};
use crate::worker::WorkQueue;

fn commit_error(e: RemoteError) -> CommitError {
    CommitError::Store(StoreError::Db(format!("{} ({})", e.message, e.code)))
}

type Group = (Vec<JobCompletion>, oneshot::Sender<Result<Outcomes, CommitError>>);

pub struct RemoteQueue {
    client: Arc<Client>,
    source: Arc<RemoteSource>,
    pipeline: Weak<Pipeline>,
    /// How long a lease request waits for work at the server.
    wait: Duration,
    lease_ms: u64,
    completions: Mutex<Sender<Group>>,
    /// Held jobs a heartbeat said were canceled or paused: what `take_interrupt` tells.
    interrupted: Mutex<HashSet<Uuid>>,
}

impl RemoteQueue {
    pub fn new(
        client: Arc<Client>,
        source: Arc<RemoteSource>,
        pipeline: &Arc<Pipeline>,
        wait: Duration,
        lease_ms: u64,
    ) -> Arc<RemoteQueue> {
        let (tx, rx) = channel::<Group>();
        let sender = client.clone();
        std::thread::Builder::new()
            .name("plughost-completions".into())
            .spawn(move || send_completions(&sender, &rx, lease_ms))
            .expect("spawn the completion sender");
        Arc::new(RemoteQueue {
            client,
            source,
            pipeline: Arc::downgrade(pipeline),
            wait,
            lease_ms,
            completions: Mutex::new(tx),
            interrupted: Mutex::default(),
        })
    }

    /// Reloads the registry when the server's changed: new steps, re-pointed
    /// plug-ins, and the compiled code of assemblies no plug-in runs any more dropped.
    fn follow_registry(&self, generation: u64) {
        if generation == self.source.generation.load(Ordering::SeqCst) {
            return;
        }
        let Some(pipeline) = self.pipeline.upgrade() else { return };
        let before = pipeline.plugin_assemblies();
        match pipeline.reload_steps() {
            Ok(()) => {
                let now: HashSet<_> = pipeline.plugin_assemblies().into_iter().collect();
                for gone in before.into_iter().filter(|h| !now.contains(h)) {
                    tracing::info!(assembly = %gone, "no plug-in runs this assembly any more: dropping its code");
                    pipeline.runtime().evict(&gone);
                }
            }
            Err(e) => tracing::warn!("reloading the registry failed ({e}); trying again at the next lease"),
        }
    }
}

impl WorkQueue for RemoteQueue {
    fn lease(&self, _host: &str, max: usize, lease: Duration) -> Result<Vec<SystemJob>, CommitError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let wait_ms = u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX);
        let leased: Leased = self
            .client
            .call("POST", "/worker/lease", Patience::Once, |worker| {
                Some(LeaseRequest { worker, max, lease_ms, wait_ms })
            })
            .map_err(commit_error)?;
        self.follow_registry(leased.generation);
        if leased.jobs.is_empty() && leased.paused {
            // The service is paused: the server answered at once; do not ask again at once.
            std::thread::sleep(self.wait);
        }
        Ok(leased.jobs.into_iter().map(|j| j.into_job()).collect())
    }

    fn renew(&self, held: Vec<(Uuid, u64)>, lease: Duration) -> Result<Vec<Renewal>, CommitError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let renewed: Renewed = self
            .client
            .call("POST", "/worker/heartbeat", Patience::Once, |worker| {
                Some(Heartbeat { worker, held: held.clone(), lease_ms })
            })
            .map_err(commit_error)?;
        self.follow_registry(renewed.generation);
        let mut interrupted = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        for ((id, _), r) in held.iter().zip(&renewed.renewals) {
            if *r == Renewal::Interrupted {
                interrupted.insert(*id);
            }
        }
        Ok(renewed.renewals)
    }

    fn release(&self, leased: Vec<(Uuid, u64)>) -> Result<usize, CommitError> {
        self.client
            .call("POST", "/worker/release", Patience::For(Duration::from_secs(5)), |worker| {
                Some(Release { worker, jobs: leased.clone() })
            })
            .map_err(commit_error)
    }

    fn complete_all(&self, completions: Vec<JobCompletion>) -> oneshot::Receiver<Result<Outcomes, CommitError>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut interrupted = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
            for c in &completions {
                interrupted.remove(&c.id);
            }
        }
        if let Err(e) = self.completions.lock().unwrap_or_else(|p| p.into_inner()).send((completions, tx)) {
            let _ = e.0.1.send(Err(CommitError::Stopped));
        }
        rx
    }

    fn take_interrupt(&self, id: Uuid) -> bool {
        self.interrupted.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    fn notify(&self) {}

    /// The lease request itself waited at the server.
    fn wait_for_work(&self, _timeout: Duration) {}
}

impl RemoteQueue {
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

/// Sends every completion group waiting as one request, until the pool is gone.
/// A completion is worth sending for as long as its lease may hold; after that the
/// server would drop it as stale, and the job runs again elsewhere.
fn send_completions(client: &Client, rx: &Inbox<Group>, lease_ms: u64) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let sizes: Vec<usize> = groups.iter().map(|(c, _)| c.len()).collect();
        let mut replies = Vec::with_capacity(groups.len());
        let mut wire = Vec::new();
        for (completions, reply) in groups {
            wire.extend(completions.into_iter().map(WireCompletion::new));
            replies.push(reply);
        }
        let answer: Result<Vec<WireOutcome>, RemoteError> =
            client.call("POST", "/worker/complete", Patience::For(Duration::from_millis(lease_ms)), |worker| {
                Some(CompletionsOut { worker, completions: &wire })
            });
        let mut outcomes = match answer {
            Ok(o) if o.len() == wire.len() => Ok(o.into_iter()),
            Ok(o) => Err(CommitError::Store(StoreError::Db(format!(
                "the server answered {} outcomes for {} completions",
                o.len(),
                wire.len()
            )))),
            Err(e) => Err(commit_error(e)),
        };
        for (reply, n) in replies.into_iter().zip(sizes) {
            let part = match &mut outcomes {
                Ok(iter) => Ok(iter.by_ref().take(n).map(outcome).collect()),
                Err(e) => Err(CommitError::Store(StoreError::Db(e.to_string()))),
            };
            let _ = reply.send(part);
        }
    }
}

/// [`crate::protocol::Completions`] as sent: borrowed, so a retry re-sends without copying.
#[derive(serde::Serialize)]
struct CompletionsOut<'a> {
    worker: Uuid,
    completions: &'a [WireCompletion],
}

fn outcome(o: WireOutcome) -> Result<CompletionOutcome, CommitError> {
    Ok(match o {
        WireOutcome::Recorded { status, run } => CompletionOutcome::Recorded { status, run },
        WireOutcome::Deleted => CompletionOutcome::Deleted,
        WireOutcome::Stale => CompletionOutcome::Stale,
        WireOutcome::Requeued => CompletionOutcome::Requeued,
        WireOutcome::Error { code, message } => {
            return Err(CommitError::Store(StoreError::Db(format!("{message} ({code})"))));
        }
    })
}
