//! The worker routes (`/api/v1/worker/...`, the worker token only) and the list of
//! remote workers (`GET /api/v1/workers`, admin). Handlers translate between HTTP
//! and `crate::fleet`'s operations.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::api::{ApiResult, admin, json_body, raw_body};
use crate::protocol::{Leased, ReadAnswer, Registry, Renewed, Welcome, WireOutcome, WorkerInfo};

/// Largest body a worker may send (a batch of completions with their effects).
pub(super) const MAX_WORKER_BODY_BYTES: usize = 256 << 20;

pub(super) fn routes(_state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/worker/hello", post(hello))
        .route("/worker/lease", post(lease))
        .route("/worker/heartbeat", post(heartbeat))
        .route("/worker/release", post(release))
        .route("/worker/complete", post(complete))
        .route("/worker/read", post(read))
        .route("/worker/registry", get(registry))
        .route("/worker/assemblies/{hash}", get(assembly))
        .layer(DefaultBodyLimit::max(MAX_WORKER_BODY_BYTES))
        .route_layer(middleware::from_fn(|r, n: Next| {
            super::auth::require(super::auth::Access::Capability(crate::security::Capability::Worker), r, n)
        }))
}

async fn hello(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Welcome>> {
    let hello = json_body(body)?;
    admin(&state, move |a| a.worker_hello(hello)).await.map(Json)
}

async fn lease(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Leased>> {
    // The request may carry a batch of completions: parse it off the async threads.
    let bytes = raw_body(body)?;
    admin(&state, move |a| a.worker_lease(parse(&bytes)?)).await.map(Json)
}

async fn heartbeat(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Renewed>> {
    let beat = json_body(body)?;
    admin(&state, move |a| a.worker_heartbeat(beat)).await.map(Json)
}

async fn release(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<usize>> {
    let release = json_body(body)?;
    admin(&state, move |a| a.worker_release(release)).await.map(Json)
}

async fn complete(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Vec<WireOutcome>>> {
    let bytes = raw_body(body)?;
    // Large batches: parse off the async threads too.
    admin(&state, move |a| a.worker_complete(parse(&bytes)?)).await.map(Json)
}

async fn read(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<ReadAnswer>> {
    let req = json_body(body)?;
    admin(&state, move |a| a.worker_read(req)).await.map(Json)
}

async fn registry(State(state): State<AppState>) -> ApiResult<Json<Registry>> {
    admin(&state, |a| a.worker_registry()).await.map(Json)
}

async fn assembly(State(state): State<AppState>, Path(hash): Path<String>) -> ApiResult<HttpResponse> {
    let bytes = admin(&state, move |a| a.worker_assembly(&hash)).await?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

pub(super) async fn list(State(state): State<AppState>) -> Json<Vec<WorkerInfo>> {
    Json(state.admin.remote_workers())
}

/// A JSON body parsed on a blocking thread, with the API's `bad_json` error.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::admin::AdminError> {
    serde_json::from_slice(bytes).map_err(|e| crate::admin::AdminError::Invalid {
        code: "bad_json",
        message: format!("the body is not valid: {e}"),
    })
}
