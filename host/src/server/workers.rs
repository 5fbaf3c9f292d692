//! The worker routes (`/api/v1/worker/...`, the worker token only) and the list of
//! remote workers (`GET /api/v1/workers`, admin). Handlers translate between HTTP
//! and `crate::fleet`'s operations.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};

use super::AppState;
use super::api::ApiRouter;
use super::api::{ApiResult, admin, json_body, raw_body};
use crate::protocol::{Leased, ReadAnswer, Registry, Renewed, Welcome, WireOutcome, WorkerInfo};
use utoipa_axum::routes;

/// Largest body a worker may send (a batch of completions with their effects).
pub(super) const MAX_WORKER_BODY_BYTES: usize = 256 << 20;

pub(super) fn routes(_state: &AppState) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(hello))
        .routes(routes!(lease))
        .routes(routes!(heartbeat))
        .routes(routes!(release))
        .routes(routes!(complete))
        .routes(routes!(read))
        .routes(routes!(registry))
        .routes(routes!(assembly))
        .layer(DefaultBodyLimit::max(MAX_WORKER_BODY_BYTES))
        .route_layer(middleware::from_fn(|r, n: Next| {
            super::auth::require(super::auth::Access::Capability(crate::security::Capability::Worker), r, n)
        }))
}

#[utoipa::path(post, path = "/api/v1/worker/hello", tag = "worker protocol", summary = "A remote worker introduces itself (worker token)", request_body(content = serde_json::Value, content_type = "application/json", description = "the worker's hello"), responses((status = 200, description = "welcome", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn hello(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Welcome>> {
    let hello = json_body(body)?;
    admin(&state, move |a| a.worker_hello(hello)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/worker/lease", tag = "worker protocol", summary = "Lease jobs (with earlier completions)", request_body(content = serde_json::Value, content_type = "application/json", description = "lease request"), responses((status = 200, description = "leased jobs", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn lease(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Leased>> {
    // The request may carry a batch of completions: parse it off the async threads.
    let bytes = raw_body(body)?;
    admin(&state, move |a| a.worker_lease(parse(&bytes)?)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/worker/heartbeat", tag = "worker protocol", summary = "Renew leases", request_body(content = serde_json::Value, content_type = "application/json", description = "held jobs"), responses((status = 200, description = "renewals", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn heartbeat(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<Renewed>> {
    let beat = json_body(body)?;
    admin(&state, move |a| a.worker_heartbeat(beat)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/worker/release", tag = "worker protocol", summary = "Give back unstarted jobs", request_body(content = serde_json::Value, content_type = "application/json", description = "jobs to release"), responses((status = 200, description = "how many", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn release(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<usize>> {
    let release = json_body(body)?;
    admin(&state, move |a| a.worker_release(release)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/worker/complete", tag = "worker protocol", summary = "Complete jobs with their effects", request_body(content = serde_json::Value, content_type = "application/json", description = "completions"), responses((status = 200, description = "each completion's outcome", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn complete(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Vec<WireOutcome>>> {
    let bytes = raw_body(body)?;
    // Large batches: parse off the async threads too.
    admin(&state, move |a| a.worker_complete(parse(&bytes)?)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/worker/read", tag = "worker protocol", summary = "Read records for a leased job", request_body(content = serde_json::Value, content_type = "application/json", description = "a read"), responses((status = 200, description = "the answer", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn read(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> ApiResult<Json<ReadAnswer>> {
    let req = json_body(body)?;
    admin(&state, move |a| a.worker_read(req)).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/worker/registry", tag = "worker protocol", summary = "Plug-ins, steps and active workflows", responses((status = 200, description = "the registry", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn registry(State(state): State<AppState>) -> ApiResult<Json<Registry>> {
    admin(&state, |a| a.worker_registry()).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/worker/assemblies/{hash}", tag = "worker protocol", summary = "An assembly's bytes", params(("hash" = String, Path, description = "the blake3 hash (hex)")), responses((status = 200, description = "the component", body = Vec<u8>), crate::server::openapi::ApiErrors))]
async fn assembly(State(state): State<AppState>, Path(hash): Path<String>) -> ApiResult<HttpResponse> {
    let bytes = admin(&state, move |a| a.worker_assembly(&hash)).await?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

#[utoipa::path(get, path = "/api/v1/workers", tag = "service", operation_id = "remote_workers", summary = "Remote workers", responses((status = 200, description = "every remote worker heard from lately", body = serde_json::Value), crate::server::openapi::ApiErrors))]
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
