//! Workflows: `/api/v1/workflows` (reading and running: any user; changing:
//! `customization`), and a run's log at `/api/v1/jobs/{id}/log` (the jobs rule: one's
//! own runs, or every run with `manage_jobs`). Every change is audited.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiResult, Params, Who, admin, audited, guid_param, json_body, raw_body};
use super::auth::{self, Access};
use crate::jobs::JobView;
use crate::security::Capability;
use crate::workflow::LogEntry;
use crate::workflow::ops::WorkflowView;

pub(super) fn routes(_state: &AppState) -> Router<AppState> {
    let need = |access: Access| middleware::from_fn(move |r, n: Next| auth::require(access, r, n));
    let change = Router::new()
        .route("/workflows", post(create))
        .route("/workflows/{name}", axum::routing::put(update).delete(delete))
        .route("/workflows/{name}/activate", post(activate))
        .route("/workflows/{name}/deactivate", post(deactivate))
        .route_layer(need(Access::Capability(Capability::Customization)));
    let read = Router::new()
        .route("/workflows", get(list))
        .route("/workflows/{name}", get(show))
        .route("/workflows/{name}/run", post(run))
        .route("/jobs/{id}/log", get(log))
        .route_layer(need(Access::Member));
    change.merge(read)
}

/// The body of `POST /workflows/{name}/run`.
#[derive(Serialize, Deserialize)]
pub(super) struct RunBody {
    pub record: uuid::Uuid,
}

#[derive(Deserialize)]
struct ShowQuery {
    version: Option<u32>,
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkflowView>>> {
    admin(&state, |a| a.workflows()).await.map(Json)
}

async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(q): Params<ShowQuery>,
) -> ApiResult<Json<WorkflowView>> {
    admin(&state, move |a| a.workflow(&name, q.version)).await.map(Json)
}

async fn create(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<WorkflowView>)> {
    let bytes = raw_body(body)?;
    let owner = who.user_id;
    let name = crate::workflow::definition_name(&bytes).unwrap_or_default();
    let view = audited(&state, &who, "workflows.create", name, move |a| a.workflow_create(&bytes, owner)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WorkflowView>> {
    let bytes = raw_body(body)?;
    audited(&state, &who, "workflows.update", name.clone(), move |a| a.workflow_update(&name, &bytes)).await.map(Json)
}

async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.delete", name.clone(), move |a| a.workflow_delete(&name)).await.map(Json)
}

async fn activate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.activate", name.clone(), move |a| a.workflow_set_active(&name, true))
        .await
        .map(Json)
}

async fn deactivate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.deactivate", name.clone(), move |a| a.workflow_set_active(&name, false))
        .await
        .map(Json)
}

async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::response::Response)> {
    let b: RunBody = json_body(body)?;
    let by = who.clone();
    let job =
        audited(&state, &who, "workflows.run", name.clone(), move |a| a.workflow_run(&name, b.record, &by)).await?;
    Ok((StatusCode::CREATED, axum::response::IntoResponse::into_response(Json(JobView::of(&job)))))
}

async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<Vec<LogEntry>>> {
    let id = guid_param(&id)?;
    admin(&state, move |a| a.workflow_log(&who, id)).await.map(Json)
}
