//! The state of one invocation's store and the host functions a guest may call:
//! the organization service, tracing, and WASI with nothing granted except
//! stdout and stderr, which go to the bounded trace log.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, plughost::plugin, wit};
use super::limits::Limits;
use super::service::{CallContext, OrganizationService, ServiceError};

/// Why the host stopped a guest; recorded when it happens, so the failure is
/// classified by its cause and not by how the guest reacted to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Breach {
    Trace,
    HostCalls,
    Memory,
    /// The work was canceled or paused ([`OrganizationService::stopped`]).
    Stopped,
}

/// The trace log shared by `tracing.trace`, stdout and stderr, bounded.
#[derive(Clone, Default)]
pub(crate) struct TraceLog(Arc<Mutex<TraceInner>>);

#[derive(Default)]
struct TraceInner {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl TraceLog {
    pub(crate) fn new(limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        TraceLog(Arc::new(Mutex::new(TraceInner { bytes: Vec::new(), limit, overflowed: false })))
    }

    /// Appends what fits; returns false (and remembers it) if something did not.
    fn append(&self, data: &[u8]) -> bool {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = t.limit.saturating_sub(t.bytes.len());
        let take = data.len().min(room);
        t.bytes.extend_from_slice(&data[..take]);
        if take < data.len() {
            t.overflowed = true;
        }
        !t.overflowed
    }

    /// Appends a line from the host after the invocation ended (e.g. a failure's
    /// backtrace), past the limit if need be: the guest no longer writes.
    pub(crate) fn append_host_note(&self, note: &str) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !t.bytes.is_empty() && !t.bytes.ends_with(b"\n") {
            t.bytes.push(b'\n');
        }
        let note = &note.as_bytes()[..note.len().min(8 << 10)];
        t.bytes.extend_from_slice(note);
        t.bytes.push(b'\n');
    }

    /// Empties the log (it is shared with the instance's stdout and stderr).
    fn clear(&self, limit: u64) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.bytes.clear();
        t.limit = usize::try_from(limit).unwrap_or(usize::MAX);
        t.overflowed = false;
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).overflowed
    }

    pub(crate) fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&t.bytes).into_owned()
    }
}

#[derive(Debug)]
struct TraceLimitExceeded;

impl std::fmt::Display for TraceLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("trace log limit exceeded")
    }
}

impl std::error::Error for TraceLimitExceeded {}

/// stdout or stderr of the guest, written into the trace log.
#[derive(Clone)]
struct TraceStream(TraceLog);

impl IsTerminal for TraceStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TraceStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for TraceStream {
    async fn ready(&mut self) {}
}

impl OutputStream for TraceStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.0.append(&bytes) { Ok(()) } else { Err(StreamError::Trap(TraceLimitExceeded.into())) }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for TraceStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.0.append(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::other(TraceLimitExceeded)))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Everything one invocation's store holds.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) trace: TraceLog,
    service: Arc<dyn OrganizationService>,
    caller: CallContext,
    max_memory: usize,
    max_host_calls: u64,
    max_payload: usize,
    pub(crate) host_calls: u64,
    pub(crate) breach: Option<Breach>,
    /// When the invocation's wall-clock budget ends: the epoch callback traps the
    /// guest here, and WASI's blocking waits end here.
    deadline: Instant,
}

impl Sandbox {
    pub(crate) fn new(limits: &Limits, service: Arc<dyn OrganizationService>, caller: CallContext) -> Self {
        let trace = TraceLog::new(limits.trace_bytes);
        // No preopens, no environment, no arguments, no network, no stdin.
        let wasi = WasiCtxBuilder::new()
            .stdout(TraceStream(trace.clone()))
            .stderr(TraceStream(trace.clone()))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            trace,
            service,
            caller,
            max_memory: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            max_host_calls: limits.host_calls,
            max_payload: usize::try_from(limits.input_bytes).unwrap_or(usize::MAX),
            host_calls: 0,
            breach: None,
            deadline: deadline(limits),
        }
    }

    /// Called at every epoch tick while the guest runs: stops it when its work was
    /// stopped (canceled or paused), traps it when its time is up.
    pub(crate) fn on_tick(&mut self) -> wasmtime::UpdateDeadline {
        if self.service.stopped() {
            self.breach.get_or_insert(Breach::Stopped);
            return wasmtime::UpdateDeadline::Interrupt;
        }
        if Instant::now() >= self.deadline {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        wasmtime::UpdateDeadline::Continue(1)
    }

    /// Prepares a kept instance's state for its next invocation: a fresh trace log,
    /// counters and limits, and this invocation's data service and caller.
    pub(crate) fn reset(&mut self, limits: &Limits, service: Arc<dyn OrganizationService>, caller: CallContext) {
        self.trace.clear(limits.trace_bytes);
        self.service = service;
        self.caller = caller;
        self.max_memory = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        self.max_host_calls = limits.host_calls;
        self.max_payload = usize::try_from(limits.input_bytes).unwrap_or(usize::MAX);
        self.host_calls = 0;
        self.breach = None;
        self.deadline = deadline(limits);
    }

    /// Lets go of the invocation's data service (and the snapshot it holds) while
    /// the instance waits for reuse.
    pub(crate) fn release_service(&mut self) {
        self.service = Arc::new(super::NoData);
    }

    /// Counts a host call; past the limit the guest traps.
    fn count_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.max_host_calls {
            self.breach.get_or_insert(Breach::HostCalls);
            wasmtime::bail!("host call limit of {} exceeded", self.max_host_calls);
        }
        Ok(())
    }

    fn check_payload(&self, size: usize) -> Result<(), ServiceError> {
        if size > self.max_payload {
            Err(ServiceError::Limit(format!(
                "payload of about {size} bytes exceeds the limit of {} bytes",
                self.max_payload
            )))
        } else {
            Ok(())
        }
    }
}

fn deadline(limits: &Limits) -> Instant {
    Instant::now() + Duration::from_millis(limits.timeout_ms)
}

/// The error that ends a blocking WASI wait at the invocation's deadline.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the invocation's deadline passed while it waited in WASI")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// `wasi:io/poll` with every blocking wait (`poll`, `pollable.block`) bounded by the
/// invocation's deadline, so a plug-in sleeping in WASI stops at its timeout like
/// one spinning in wasm (epoch interruption cannot stop a host call). Linked over
/// wasmtime-wasi's own, which waits without bound.
pub(crate) struct BoundedIo;

impl HasData for BoundedIo {
    type Data<'a> = BoundedTable<'a>;
}

pub(crate) struct BoundedTable<'a> {
    table: &'a mut ResourceTable,
    deadline: Instant,
}

impl Sandbox {
    pub(crate) fn bounded_io(&mut self) -> BoundedTable<'_> {
        BoundedTable { table: &mut self.table, deadline: self.deadline }
    }
}

/// Runs a WASI wait until `deadline`.
fn until<T>(deadline: Instant, wait: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    wasmtime_wasi::runtime::in_tokio(async move {
        match tokio::time::timeout(left, wait).await {
            Ok(result) => result,
            Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
        }
    })
}

impl sync_poll::Host for BoundedTable<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let table = &mut *self.table;
        until(self.deadline, async move { async_poll::Host::poll(table, pollables).await })
    }
}

impl sync_poll::HostPollable for BoundedTable<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        let table = &mut *self.table;
        until(self.deadline, async move { async_poll::HostPollable::ready(table, pollable).await })
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        until(self.deadline, async move { async_poll::HostPollable::block(table, pollable).await })
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime::ResourceLimiter for Sandbox {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.breach.get_or_insert(Breach::Memory);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Largest table a guest may grow to (function references).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

fn service_error_to_wit(e: ServiceError) -> wit::ServiceError {
    match e {
        ServiceError::NotFound(m) => wit::ServiceError::NotFound(m),
        ServiceError::AlreadyExists(m) => wit::ServiceError::AlreadyExists(m),
        ServiceError::Invalid(m) => wit::ServiceError::Invalid(m),
        ServiceError::Denied(m) => wit::ServiceError::Denied(m),
        ServiceError::DepthExceeded(m) => wit::ServiceError::DepthExceeded(m),
        ServiceError::Limit(m) => wit::ServiceError::Limit(m),
        ServiceError::Rejected(m) => wit::ServiceError::Rejected(m),
        ServiceError::Failed(m) => wit::ServiceError::Failed(m),
    }
}

/// Runs one organization-service call: counts it, converts the guest's input
/// (a malformed input is the guest's error, not a trap), calls the service.
fn call<I, T, W>(
    sb: &mut Sandbox,
    input: impl FnOnce() -> Result<I, String>,
    size: impl FnOnce(&I) -> usize,
    run: impl FnOnce(&dyn OrganizationService, &CallContext, I) -> Result<T, ServiceError>,
    out: impl FnOnce(T) -> W,
) -> wasmtime::Result<Result<W, wit::ServiceError>> {
    sb.count_call()?;
    let result = input()
        .map_err(ServiceError::Invalid)
        .and_then(|i| sb.check_payload(size(&i)).map(|()| i))
        .and_then(|i| run(sb.service.as_ref(), &sb.caller, i));
    Ok(result.map(out).map_err(service_error_to_wit))
}

impl plugin::types::Host for Sandbox {}

impl plugin::organization_service::Host for Sandbox {
    fn create(&mut self, record: wit::Entity) -> wasmtime::Result<Result<String, wit::ServiceError>> {
        call(
            self,
            || bindings::entity_from_wit(record),
            |e| e.approx_size(),
            |s, c, e| s.create(c, e),
            |id| id.to_string(),
        )
    }

    fn retrieve(
        &mut self,
        target: wit::EntityReference,
        columns: Vec<String>,
    ) -> wasmtime::Result<Result<wit::Entity, wit::ServiceError>> {
        let size = columns.iter().map(String::len).sum();
        call(
            self,
            || bindings::reference_from_wit(target),
            |_| size,
            |s, c, r| s.retrieve(c, r, columns),
            |e| bindings::entity_to_wit(&e),
        )
    }

    fn update(&mut self, record: wit::Entity) -> wasmtime::Result<Result<(), wit::ServiceError>> {
        call(self, || bindings::entity_from_wit(record), |e| e.approx_size(), |s, c, e| s.update(c, e), |()| ())
    }

    fn delete(&mut self, target: wit::EntityReference) -> wasmtime::Result<Result<(), wit::ServiceError>> {
        call(self, || bindings::reference_from_wit(target), |_| 0, |s, c, r| s.delete(c, r), |()| ())
    }

    fn retrieve_multiple(
        &mut self,
        q: wit::Query,
    ) -> wasmtime::Result<Result<wit::EntityCollection, wit::ServiceError>> {
        call(
            self,
            || bindings::query_from_wit(q),
            |q| q.approx_size(),
            |s, c, q| s.retrieve_multiple(c, q),
            |r| bindings::collection_to_wit(&r),
        )
    }

    fn execute(
        &mut self,
        message: String,
        parameters: Vec<wit::Parameter>,
    ) -> wasmtime::Result<Result<Vec<wit::Parameter>, wit::ServiceError>> {
        call(
            self,
            || bindings::parameters_from_wit(parameters),
            |p| p.iter().map(|(k, v)| k.len() + v.approx_size()).sum(),
            |s, c, p| s.execute(c, message, p),
            |r| bindings::parameters_to_wit(&r),
        )
    }
}

impl plugin::tracing::Host for Sandbox {
    fn trace(&mut self, message: String) -> wasmtime::Result<()> {
        self.count_call()?;
        let mut line = message.into_bytes();
        line.push(b'\n');
        if !self.trace.append(&line) {
            self.breach.get_or_insert(Breach::Trace);
            return Err(TraceLimitExceeded.into());
        }
        Ok(())
    }
}
