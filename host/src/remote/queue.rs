//! The server's job queue as a remote worker pool sees it: leases by long poll,
//! heartbeats, releases, and completions sent in batches: with the next lease
//! request when one goes out (one round trip and one commit at the server, as an
//! in-process pool's completions share its lease's commit), else by one sender thread
//! (so the pool's workers never wait on the network to go on running jobs).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::client::{Client, Patience, RemoteError};
use super::source::RemoteSource;
use crate::jobs::SystemJob;
use crate::pipeline::Pipeline;
use crate::protocol::{Completions, Heartbeat, LeaseRequest, Leased, Release, Renewed, WireCompletion, WireOutcome};
use crate::store::{CommitError, CompletionOutcome, JobCompletion, Outcomes, Renewal, StoreError};
use crate::worker::WorkQueue;

fn commit_error(e: RemoteError) -> CommitError {
    CommitError::Store(super::source::store_error(e))
}

type Reply = oneshot::Sender<Result<Outcomes, CommitError>>;
type Group = (Vec<JobCompletion>, Reply);

/// Completion groups not sent yet: whoever goes first sends them, the next lease
/// request or, once the oldest has waited [`SEND_AFTER`] or [`SEND_AT`] are waiting,
/// the sender thread.
#[derive(Default)]
struct Outbox {
    state: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    groups: Vec<Group>,
    completions: usize,
    /// When the oldest waiting group arrived.
    since: Option<Instant>,
    closed: bool,
}

/// The sender thread sends completions once the oldest has waited this long (a slow
/// job's completion is not held back until the next lease)...
const SEND_AFTER: Duration = Duration::from_millis(20);
/// ... or once this many are waiting.
const SEND_AT: usize = 1024;

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns groups a failed lease request carried, to be sent again first.
    fn put_back(&self, wire: Vec<WireCompletion>, replies: Vec<(Reply, usize)>) {
        let mut wire = wire.into_iter();
        let mut groups: Vec<Group> = replies
            .into_iter()
            .map(|(reply, n)| (wire.by_ref().take(n).map(|c| c.into_completion(0, 0)).collect(), reply))
            .collect();
        let mut p = self.lock();
        p.completions += groups.iter().map(|(c, _)| c.len()).sum::<usize>();
        p.since = Some(p.since.map_or_else(Instant::now, |s| s.min(Instant::now())));
        groups.append(&mut p.groups);
        p.groups = groups;
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<Group> {
        let mut p = self.lock();
        p.completions = 0;
        p.since = None;
        std::mem::take(&mut p.groups)
    }
}

/// Flattens groups for the wire; returns the replies and each group's size.
fn unpack(groups: Vec<Group>) -> (Vec<WireCompletion>, Vec<(Reply, usize)>) {
    let mut wire = Vec::new();
    let mut replies = Vec::with_capacity(groups.len());
    for (completions, reply) in groups {
        replies.push((reply, completions.len()));
        wire.extend(completions.into_iter().map(WireCompletion::new));
    }
    (wire, replies)
}

/// Answers each group with its share of `outcomes` (or the error).
fn answer(replies: Vec<(Reply, usize)>, sent: usize, outcomes: Result<Vec<WireOutcome>, CommitError>) {
    let mut outcomes = match outcomes {
        Ok(o) if o.len() == sent => Ok(o.into_iter()),
        Ok(o) => Err(CommitError::Store(StoreError::Db(format!(
            "the server answered {} outcomes for {sent} completions",
            o.len()
        )))),
        Err(e) => Err(e),
    };
    for (reply, n) in replies {
        let part = match &mut outcomes {
            Ok(iter) => Ok(iter.by_ref().take(n).map(outcome).collect()),
            Err(e) => Err(CommitError::Store(StoreError::Db(e.to_string()))),
        };
        let _ = reply.send(part);
    }
}
pub struct RemoteQueue {
    client: Arc<Client>,
    source: Arc<RemoteSource>,
    pipeline: Weak<Pipeline>,
    /// How long a lease request waits for work at the server.
    wait: Duration,
    outbox: Arc<Outbox>,
    /// Whether the server said the service is paused, in its last answer.
    server_paused: AtomicBool,
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
        let outbox = Arc::new(Outbox::default());
        let (sender, out) = (client.clone(), outbox.clone());
        std::thread::Builder::new()
            .name("plughost-completions".into())
            .spawn(move || send_completions(&sender, &out, lease_ms))
            .expect("spawn the completion sender");
        Arc::new(RemoteQueue {
            client,
            source,
            pipeline: Arc::downgrade(pipeline),
            wait,
            outbox,
            server_paused: AtomicBool::new(false),
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
        let (completions, replies) = unpack(self.outbox.take());
        let sent = completions.len();

        let asked = Instant::now();
        let leased: Result<Leased, CommitError> = self
            .client
            .call("POST", "/worker/lease", Patience::Once, |worker| {
                Some(LeaseRequest { worker, max, lease_ms, wait_ms, completions: Cow::Borrowed(&completions) })
            })
            .map_err(commit_error);
        let leased = match leased {
            Ok(l) => l,
            Err(e) => {
                // Not lost: the sender thread retries them (a copy the server applied
                // before the answer was lost is refused as stale).
                self.outbox.put_back(completions, replies);
                return Err(e);
            }
        };
        tracing::debug!(took = ?asked.elapsed(), jobs = leased.jobs.len(), paused = leased.paused, sent, "leased");
        answer(replies, sent, Ok(leased.outcomes));
        self.follow_registry(leased.generation);
        self.server_paused.store(leased.paused, Ordering::SeqCst);
        if leased.jobs.is_empty() && leased.paused {
            // The service is paused and the server answered early: do not ask again at once.
            std::thread::sleep(self.wait.saturating_sub(asked.elapsed()));
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
        self.server_paused.store(renewed.paused, Ordering::SeqCst);
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
        let mut out = self.outbox.lock();
        if out.closed {
            let _ = tx.send(Err(CommitError::Stopped));
        } else {
            out.completions += completions.len();
            out.since.get_or_insert_with(Instant::now);
            out.groups.push((completions, tx));
            self.outbox.ready.notify_one();
        }
        rx
    }

    fn take_interrupt(&self, id: Uuid) -> bool {
        self.interrupted.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    fn notify(&self) {}

    fn paused(&self) -> Option<bool> {
        Some(self.server_paused.load(Ordering::SeqCst))
    }

    /// The lease request itself waited at the server.
    fn wait_for_work(&self, _timeout: Duration) {}
}

/// Sends every completion group waiting as one request, until the queue is dropped.
/// A completion is worth sending for as long as its lease may hold; after that the
/// server would drop it as stale, and the job runs again elsewhere.
fn send_completions(client: &Client, outbox: &Outbox, lease_ms: u64) {
    loop {
        {
            let mut out = outbox.lock();
            loop {
                match out.since {
                    _ if out.closed && out.groups.is_empty() => return,
                    Some(since) if out.closed || out.completions >= SEND_AT || since.elapsed() >= SEND_AFTER => break,
                    Some(since) => {
                        let left = SEND_AFTER.saturating_sub(since.elapsed());
                        out = outbox.ready.wait_timeout(out, left).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    None => out = outbox.ready.wait(out).unwrap_or_else(|p| p.into_inner()),
                }
            }
        }
        let groups = outbox.take();
        if groups.is_empty() {
            continue;
        }
        let (wire, replies) = unpack(groups);
        let answer_ = client
            .call("POST", "/worker/complete", Patience::For(Duration::from_millis(lease_ms)), |worker| {
                Some(Completions { worker, completions: Cow::Borrowed(&wire) })
            })
            .map_err(commit_error);
        answer(replies, wire.len(), answer_);
    }
}

impl Drop for RemoteQueue {
    fn drop(&mut self) {
        self.outbox.lock().closed = true;
        self.outbox.ready.notify_all();
    }
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
