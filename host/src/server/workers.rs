//! The worker routes (`/api/v1/worker/...`, the worker token only) and the list of
//! remote workers (`GET /api/v1/workers`, admin). Handlers translate between HTTP
//! and `crate::fleet`'s operations.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::api::{ApiResult, admin, bearer, constant_time_eq, json_body, raw_body};
use super::{ApiError, AppState};
use crate::protocol::{Leased, ReadAnswer, Registry, Renewed, Welcome, WireOutcome, WorkerInfo};

/// Largest body a worker may send (a batch of completions with their effects).
pub(super) const MAX_WORKER_BODY_BYTES: usize = 256 << 20;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
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
        .route_layer(middleware::from_fn_with_state(state.clone(), require_worker))
}

async fn require_worker(State(state): State<AppState>, request: HttpRequest, next: Next) -> HttpResponse {
    let presented = bearer(&request);
    if constant_time_eq(presented.as_bytes(), state.worker_token.as_bytes()) {
        return next.run(request).await;
    }
    let (status, message) = if constant_time_eq(presented.as_bytes(), state.admin_token.as_bytes()) {
        (StatusCode::FORBIDDEN, "the worker routes take the worker token, not the admin token")
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "worker routes need 'Authorization: Bearer WORKER_TOKEN' (the server's <data-dir>/worker-token, or its worker_token setting)",
        )
    };
    let code = if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" };
    ApiError::new(status, code, message).into_response()
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
