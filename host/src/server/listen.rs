//! Accepting connections: HTTP/1.1 with a header timeout (which is also the idle
//! timeout of a kept-alive connection), a body timeout, a bound on open
//! connections, and graceful shutdown.
//!
//! **Invariant:** no connection stays open waiting for a client longer than the
//! configured timeouts, and at most `max_connections` are open at once; past it new
//! connections wait in the listen backlog until one closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connection settings (`[http]` in the configuration).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a connection may take to send a request's headers, counted from
    /// when the server starts waiting for them: on a new connection, and between
    /// requests on a kept-alive one (so it is also the idle timeout).
    pub header_timeout_ms: u64,
    /// How long a request's body may take to arrive, counted from its headers.
    pub body_timeout_ms: u64,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Host names (without port) answered besides localhost, 127.0.0.1 and [::1] while
    /// listening on loopback (a defence against DNS rebinding). On other addresses
    /// every host is answered.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example`) allowed to call the API from a browser (CORS);
    /// empty: none but the server's own.
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` without a key.
    pub public_metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            max_connections: 1024,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            public_metrics: false,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout_ms == 0 || self.body_timeout_ms == 0 {
            return Err("http.header_timeout_ms and http.body_timeout_ms must be at least 1".into());
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS.min(u32::MAX as usize) {
            return Err(format!("http.max_connections = {} is out of range", self.max_connections));
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets
/// open requests finish for up to `drain`, and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let body_timeout = Duration::from_millis(config.body_timeout_ms);
    let app = app.layer(axum::middleware::map_request(move |req: axum::extract::Request| async move {
        req.map(|body| Body::new(TimeoutBody::new(body, body_timeout)))
    }));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopper = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stopper.send(true);
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(config.header_timeout_ms));
    let mut stopped = stop_rx.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the connection limit is never closed"),
            _ = async { stopped.wait_for(|s| *s).await.map(|_| ()) } => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: go on.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = async { stopped.wait_for(|s| *s).await.map(|_| ()) } => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, stop) = (builder.clone(), app.clone(), stop_rx.clone());
        let handshake = Duration::from_millis(config.header_timeout_ms);
        match tls.clone() {
            None => {
                tokio::spawn(connection(builder, stream, app, stop, permit));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // The handshake counts against the header timeout: a silent client is cut off.
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(builder, tls, app, stop, permit).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, limit.acquire_many(all)).await.is_err() {
        tracing::warn!("some connections were still open after {} ms; closing them", drain.as_millis());
    }
}

/// Serves one connection (plain or TLS) until it closes, or until shutdown: then the
/// request in flight finishes and an idle connection closes at once.
async fn connection<I>(
    builder: hyper::server::conn::http1::Builder,
    io: I,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection closed: {e}");
            }
        }
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The error a request body gets when it arrives too slowly.
#[derive(Debug)]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {} ms", self.0.as_millis())
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails once `timeout` has passed since the request began.
struct TimeoutBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl TimeoutBody {
    fn new(inner: Body, timeout: Duration) -> TimeoutBody {
        TimeoutBody { inner, sleep: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

impl http_body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
