//! Workflows: `/api/v1/workflows` (reading and running: any user; changing:
//! `customization`), and a run's log at `/api/v1/jobs/{id}/log` (the jobs rule: one's
//! own runs, or every run with `manage_jobs`). Every change is audited.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::ApiRouter;
use super::api::{ApiResult, Params, Who, admin, audited, guid_param, json_body, raw_body};
use super::auth::{self, Access};
use crate::jobs::JobView;
use crate::security::Capability;
use crate::workflow::LogEntry;
use crate::workflow::ops::WorkflowView;
use utoipa_axum::routes;

pub(super) fn routes(_state: &AppState) -> ApiRouter {
    let need = |access: Access| middleware::from_fn(move |r, n: Next| auth::require(access, r, n));
    let change = ApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(update, delete))
        .routes(routes!(activate))
        .routes(routes!(deactivate))
        .route_layer(need(Access::Capability(Capability::Customization)));
    let read = ApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(run))
        .routes(routes!(log))
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

#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows", operation_id = "workflow_list", summary = "Workflows", responses((status = 200, description = "every workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkflowView>>> {
    admin(&state, |a| a.workflows()).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/workflows/{name}", tag = "workflows", operation_id = "workflow_show", summary = "A workflow (version: an activated version)", params(("name" = String, Path, description = "the workflow's name")), responses((status = 200, description = "the workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(q): Params<ShowQuery>,
) -> ApiResult<Json<WorkflowView>> {
    admin(&state, move |a| a.workflow(&name, q.version)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows", operation_id = "workflow_create", summary = "Create a workflow from its definition", request_body(content = serde_json::Value, content_type = "application/json", description = "a definition (docs/workflow.schema.json)"), responses((status = 201, description = "the workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
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

#[utoipa::path(put, path = "/api/v1/workflows/{name}", tag = "workflows", operation_id = "workflow_update", summary = "Replace an inactive workflow's definition", params(("name" = String, Path, description = "the workflow's name")), request_body(content = serde_json::Value, content_type = "application/json", description = "a definition"), responses((status = 200, description = "the workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WorkflowView>> {
    let bytes = raw_body(body)?;
    audited(&state, &who, "workflows.update", name.clone(), move |a| a.workflow_update(&name, &bytes)).await.map(Json)
}

#[utoipa::path(delete, path = "/api/v1/workflows/{name}", tag = "workflows", operation_id = "workflow_delete", summary = "Delete an inactive workflow", params(("name" = String, Path, description = "the workflow's name")), responses((status = 200, description = "the deleted workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.delete", name.clone(), move |a| a.workflow_delete(&name)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/workflows/{name}/activate", tag = "workflows", operation_id = "workflow_activate", summary = "Activate: freeze a version and run it on its triggers", params(("name" = String, Path, description = "the workflow's name")), responses((status = 200, description = "the workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn activate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.activate", name.clone(), move |a| a.workflow_set_active(&name, true))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/workflows/{name}/deactivate", tag = "workflows", operation_id = "workflow_deactivate", summary = "Deactivate (runs under way go on)", params(("name" = String, Path, description = "the workflow's name")), responses((status = 200, description = "the workflow", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn deactivate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<WorkflowView>> {
    audited(&state, &who, "workflows.deactivate", name.clone(), move |a| a.workflow_set_active(&name, false))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/workflows/{name}/run", tag = "workflows", operation_id = "workflow_run", summary = "Run an on-demand workflow on a record", params(("name" = String, Path, description = "the workflow's name")), request_body(content = serde_json::Value, content_type = "application/json", description = "record"), responses((status = 201, description = "the run's job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
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

#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = "workflows", operation_id = "workflow_log", summary = "A workflow run's log", params(("id" = String, Path, description = "the id (a GUID)")), responses((status = 200, description = "log rows", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<Vec<LogEntry>>> {
    let id = guid_param(&id)?;
    admin(&state, move |a| a.workflow_log(&who, id)).await.map(Json)
}
