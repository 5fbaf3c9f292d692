//! Routes and handlers of `/api/v1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, FromRequestParts, Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};

use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::{self, Access};
use super::{ApiError, AppState};
use crate::admin::{Admin, AdminError, JobFilter, PluginDetails, ServiceAction, ServiceStatus, UnregisteredPlugin};
use crate::jobs::{JobView, SystemJob};
use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{Entity, EntityReference, Parameters, Value, parse_guid};
use crate::pipeline::{Caller, Request, Response};
use crate::registry::{AssemblyRecord, PluginRecord, Registration, StepRecord, StepSpec};
use crate::security::{Capability, Principal};
use crate::store::JobAction;

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// The whole HTTP surface. Every route but `/healthz`, the OpenAPI document (and
/// `/metrics` if configured public) needs an API key; each group needs its privilege
/// (`auth::Access`). Every route but the dashboard's is in the OpenAPI document.
pub fn app(state: AppState) -> Router {
    let mut metrics_route = ApiRouter::new().routes(routes!(metrics));
    if !state.config.http.public_metrics {
        metrics_route = metrics_route.route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    }
    let (api, mut doc) =
        ApiRouter::new().routes(routes!(healthz)).merge(metrics_route).merge(api_routes(&state)).split_for_parts();
    let (_, paths, document) = routes!(openapi_document);
    doc.paths.merge(paths);
    let doc = Arc::new(serde_json::to_value(super::openapi::finish(doc)).expect("the OpenAPI document serializes"));
    Router::new()
        .route("/api/v1/openapi.json", document.layer(Extension(doc)))
        .merge(api)
        .merge(super::ui::routes(&state))
        .fallback(|| async { ApiError::not_found("no such route: see the API reference in README.md") })
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .with_state(state)
}

/// The routes under `/api/v1`, each registered with its description
/// (`routes!`), behind authentication and each group's privilege.
fn api_routes(state: &AppState) -> ApiRouter {
    let need = |access: Access| middleware::from_fn(move |r: HttpRequest, n: Next| auth::require(access, r, n));
    let data = ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(retrieve, update, delete))
        .routes(routes!(query))
        .routes(routes!(custom_message))
        .routes(routes!(definitions))
        .routes(routes!(jobs, create_job))
        .routes(routes!(bulk_delete))
        .routes(routes!(bulk_import))
        .merge(super::mail::routes())
        .routes(routes!(job, delete_job))
        .routes(routes!(job_action))
        .routes(routes!(service));
    let data = limited(data, state.config.max_body_bytes, "max_body_bytes").route_layer(need(Access::Member));
    let uploads = ApiRouter::new().routes(routes!(register, assemblies));
    let uploads = limited(uploads, state.config.max_assembly_bytes, "max_assembly_bytes");
    let registration = ApiRouter::new()
        .routes(routes!(unregister_assembly))
        .routes(routes!(plugins))
        .routes(routes!(plugin, unregister_plugin))
        .routes(routes!(steps, add_step))
        .routes(routes!(step, remove_step))
        .routes(routes!(enable_step))
        .routes(routes!(disable_step))
        .routes(routes!(profile_step))
        .routes(routes!(runs))
        .routes(routes!(recorded_run, delete_run));
    let registration = limited(registration, state.config.max_body_bytes, "max_body_bytes")
        .merge(uploads)
        .route_layer(need(Access::Capability(Capability::Registration)));
    let customization = ApiRouter::new().routes(routes!(define_entity));
    let customization = limited(customization, state.config.max_body_bytes, "max_body_bytes")
        .route_layer(need(Access::Capability(Capability::Customization)));
    let service = ApiRouter::new()
        .routes(routes!(service_action))
        .routes(routes!(super::workers::list))
        .route_layer(need(Access::Capability(Capability::Service)));
    data.merge(registration)
        .merge(customization)
        .merge(service)
        .merge(super::identity::routes(state))
        .merge(limited(super::workflows::routes(state), state.config.max_body_bytes, "max_body_bytes"))
        .merge(super::workers::routes(state))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
}

/// A router whose routes describe themselves in the OpenAPI document.
pub(super) type ApiRouter = utoipa_axum::router::OpenApiRouter<AppState>;

/// Limits request bodies to `limit` bytes; a body that declares a larger length is
/// refused before it is read, saying its size, the limit and the setting.
fn limited(router: ApiRouter, limit: usize, setting: &'static str) -> ApiRouter {
    router.layer(DefaultBodyLimit::max(limit)).layer(middleware::from_fn(move |request: HttpRequest, next: Next| {
        refuse_oversize(limit, setting, request, next)
    }))
}

/// Refused bodies up to this size are read (and dropped) so the answer arrives.
const DRAIN_MAX: u64 = 1 << 20;

async fn refuse_oversize(limit: usize, setting: &'static str, request: HttpRequest, next: Next) -> HttpResponse {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            // A small body is read and dropped before the answer: closing a connection
            // with unread data resets it, and the client may lose the answer (a large
            // one is not worth reading: the client sees the reset).
            if n <= DRAIN_MAX {
                let _ = axum::body::to_bytes(request.into_body(), DRAIN_MAX as usize).await;
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is {n} bytes; the limit is {limit} bytes ({setting})"),
            )
            .into_response()
        }
        _ => next.run(request).await,
    }
}

/// This document (no key needed).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", summary = "The OpenAPI 3.1 document of this API", security(()),
    responses((status = 200, description = "the document", body = serde_json::Value)))]
async fn openapi_document(Extension(doc): Extension<Arc<serde_json::Value>>) -> Json<serde_json::Value> {
    Json(doc.as_ref().clone())
}

/// Runs blocking work (plug-ins, durable writes) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("worker failed: {e}")))
    })
}

/// A request body, or the error of one too large, too slow or unreadable.
pub(super) fn raw_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(cause) = source {
            if let Some(timeout) = cause.downcast_ref::<super::listen::BodyTimeout>() {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", timeout.to_string());
            }
            source = cause.source();
        }
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text())
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {}", e.body_text()),
            ),
        }
    })
}

/// Parses a JSON body with errors in the API's own shape.
pub(super) fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = raw_body(body)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not valid: {e}")))
}

/// The caller of a data request: the key's user (never a header), and the
/// correlation it joins.
fn caller(headers: &HeaderMap, who: &Arc<Principal>) -> ApiResult<Caller> {
    let guid = |name: &str| -> ApiResult<Option<Uuid>> {
        headers
            .get(name)
            .map(|v| {
                let s = v.to_str().map_err(|_| ApiError::bad_request(format!("header {name} is not text")))?;
                parse_guid(s).map_err(|m| ApiError::bad_request(format!("header {name}: {m}")))
            })
            .transpose()
    };
    Ok(Caller { user_id: who.user_id, correlation_id: guid("x-correlation-id")?, principal: Some(who.clone()) })
}

pub(super) fn guid_param(s: &str) -> ApiResult<Uuid> {
    parse_guid(s).map_err(ApiError::bad_request)
}

/// Runs an administrative operation on a blocking thread.
pub(super) async fn admin<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
) -> ApiResult<T> {
    let admin = state.admin.clone();
    blocking(move || Ok(op(&admin)?)).await
}

async fn run(state: &AppState, request: Request, caller: Caller) -> ApiResult<Response> {
    admin(state, move |a| a.execute(request, &caller)).await
}

/// The authenticated caller of a route (see `auth::authenticate`).
pub(super) type Who = Extension<Arc<Principal>>;

/// Runs an administrative operation for `who`, recorded in the audit log.
pub(super) async fn audited<T: Send + 'static>(
    state: &AppState,
    who: &Arc<Principal>,
    action: &'static str,
    target: impl Into<String>,
    op: impl FnOnce(&Admin) -> Result<T, AdminError> + Send + 'static,
) -> ApiResult<T> {
    let (who, target) = (who.clone(), target.into());
    admin(state, move |a| a.audited(&who, action, &target, op)).await
}

#[utoipa::path(get, path = "/healthz", tag = "service", summary = "Liveness and the runtime's figures (no key needed)", security(()),
    responses((status = 200, description = "ok", body = serde_json::Value)))]
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": state.admin.pipeline().runtime().stats(),
    }))
}

// ---- data ----

#[derive(Deserialize)]
struct CreateQuery {
    id: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdBody {
    pub id: Uuid,
}

#[utoipa::path(post, path = "/api/v1/entities/{entity}", tag = "data", summary = "Create a record through the pipeline", params(("entity" = String, Path, description = "the entity's logical name")), request_body(content = serde_json::Value, content_type = "application/json", description = "the attributes"), responses((status = 201, description = "created; Location names the record", body = crate::server::IdBody), crate::server::openapi::ApiErrors))]
async fn create(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    Params(q): Params<CreateQuery>,
    headers: HeaderMap,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let attributes: BTreeMap<String, Value> = json_body(body)?;
    let mut record = Entity::new(entity.clone());
    record.id = q.id.as_deref().map(guid_param).transpose()?;
    record.attributes = attributes;
    record.validate().map_err(ApiError::bad_request)?;
    match run(&state, Request::Create { record }, caller(&headers, &who)?).await? {
        Response::Created(id) => {
            let location = format!("/api/v1/entities/{entity}/{id}");
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(IdBody { id })))
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected pipeline response {r:?}"))
}

#[derive(Deserialize)]
struct Columns {
    columns: Option<String>,
}

fn split_columns(c: Option<String>) -> Vec<String> {
    c.map(|c| c.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

#[utoipa::path(get, path = "/api/v1/entities/{entity}/{id}", tag = "data", summary = "Retrieve a record", params(("entity" = String, Path, description = "the entity's logical name"), ("id" = String, Path, description = "the id (a GUID)")), responses((status = 200, description = "the record", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn retrieve(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    Params(c): Params<Columns>,
    headers: HeaderMap,
    Extension(who): Who,
) -> ApiResult<Json<Entity>> {
    let target = EntityReference { logical_name: entity, id: guid_param(&id)? };
    match run(&state, Request::Retrieve { target, columns: split_columns(c.columns) }, caller(&headers, &who)?).await? {
        Response::Retrieved(e) => Ok(Json(e)),
        other => Err(unexpected(&other)),
    }
}

#[utoipa::path(patch, path = "/api/v1/entities/{entity}/{id}", tag = "data", summary = "Update a record through the pipeline", params(("entity" = String, Path, description = "the entity's logical name"), ("id" = String, Path, description = "the id (a GUID)")), request_body(content = serde_json::Value, content_type = "application/json", description = "the attributes to change"), responses((status = 200, description = "updated", body = crate::server::IdBody), crate::server::openapi::ApiErrors))]
async fn update(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<IdBody>> {
    let attributes: BTreeMap<String, Value> = json_body(body)?;
    let id = guid_param(&id)?;
    let mut record = Entity::new(entity);
    record.id = Some(id);
    record.attributes = attributes;
    record.validate().map_err(ApiError::bad_request)?;
    run(&state, Request::Update { record }, caller(&headers, &who)?).await?;
    Ok(Json(IdBody { id }))
}

#[utoipa::path(delete, path = "/api/v1/entities/{entity}/{id}", tag = "data", summary = "Delete a record through the pipeline", params(("entity" = String, Path, description = "the entity's logical name"), ("id" = String, Path, description = "the id (a GUID)")), responses((status = 204, description = "deleted"), crate::server::openapi::ApiErrors))]
async fn delete(
    State(state): State<AppState>,
    Path((entity, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(who): Who,
) -> ApiResult<StatusCode> {
    let target = EntityReference { logical_name: entity, id: guid_param(&id)? };
    run(&state, Request::Delete { target }, caller(&headers, &who)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    top: Option<u32>,
    page_size: Option<u32>,
    cookie: Option<String>,
    columns: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/entities/{entity}", tag = "data", summary = "List records (paged: cookie)", params(("entity" = String, Path, description = "the entity's logical name")), responses((status = 200, description = "an entity collection", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn list(
    State(state): State<AppState>,
    Path(entity): Path<String>,
    Params(l): Params<ListQuery>,
    headers: HeaderMap,
    Extension(who): Who,
) -> ApiResult<Json<crate::model::EntityCollection>> {
    let query = crate::model::Query {
        entity_name: entity,
        columns: split_columns(l.columns),
        criteria: Default::default(),
        orders: Vec::new(),
        top: l.top,
        page_size: Some(l.page_size.unwrap_or(100)),
        paging_cookie: l.cookie,
    };
    query_response(&state, query, &headers, &who).await
}

#[utoipa::path(post, path = "/api/v1/query", tag = "data", summary = "RetrieveMultiple with a query", request_body(content = serde_json::Value, content_type = "application/json", description = "a query: entity_name, criteria, orders, top, page_size, paging_cookie"), responses((status = 200, description = "an entity collection", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<crate::model::EntityCollection>> {
    query_response(&state, json_body(body)?, &headers, &who).await
}

async fn query_response(
    state: &AppState,
    query: crate::model::Query,
    headers: &HeaderMap,
    who: &Arc<Principal>,
) -> ApiResult<Json<crate::model::EntityCollection>> {
    match run(state, Request::RetrieveMultiple { query }, caller(headers, who)?).await? {
        Response::Collection(c) => Ok(Json(c)),
        other => Err(unexpected(&other)),
    }
}

/// The body of a custom message call.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MessageBody {
    pub target: Option<EntityReference>,
    pub parameters: Parameters,
}

#[utoipa::path(post, path = "/api/v1/messages/{message}", tag = "data", summary = "Run a custom message", params(("message" = String, Path, description = "the message name")), request_body(content = serde_json::Value, content_type = "application/json", description = "target and parameters"), responses((status = 200, description = "the output parameters", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn custom_message(
    State(state): State<AppState>,
    Path(message): Path<String>,
    headers: HeaderMap,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MessageBody>> {
    let body: MessageBody = json_body(body)?;
    let request = Request::Custom { message, target: body.target, parameters: body.parameters };
    match run(&state, request, caller(&headers, &who)?).await? {
        Response::Custom(parameters) => Ok(Json(MessageBody { target: None, parameters })),
        other => Err(unexpected(&other)),
    }
}

// ---- registry ----

#[derive(Deserialize)]
struct RegisterQuery {
    name: String,
    description: Option<String>,
    /// Steps to add in the same transaction: a JSON list of step specs.
    steps: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/assemblies", tag = "registration", summary = "Register a component (and steps) by content hash", params(("name" = String, Query, description = "the plug-in name"), ("description" = Option<String>, Query, description = "what it does"), ("steps" = Option<String>, Query, description = "a JSON list of step specs")), request_body(content = Vec<u8>, content_type = "application/wasm", description = "the component's bytes"), responses((status = 201, description = "what was registered", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn register(
    State(state): State<AppState>,
    Params(q): Params<RegisterQuery>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Registration>)> {
    let bytes = raw_body(body)?;
    let steps: Vec<StepSpec> = match &q.steps {
        Some(json) => serde_json::from_str(json).map_err(|e| ApiError::bad_request(format!("steps: {e}")))?,
        None => Vec::new(),
    };
    let target = q.name.clone();
    let reg =
        audited(&state, &who, "register", target, move |a| a.register(&bytes, &q.name, q.description, steps)).await?;
    Ok((StatusCode::CREATED, Json(reg)))
}

#[utoipa::path(get, path = "/api/v1/assemblies", tag = "registration", summary = "Registered assemblies", responses((status = 200, description = "every assembly", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn assemblies(State(state): State<AppState>) -> ApiResult<Json<Vec<AssemblyRecord>>> {
    admin(&state, |a| a.assemblies()).await.map(Json)
}

#[utoipa::path(delete, path = "/api/v1/assemblies/{hash}", tag = "registration", summary = "Unregister an assembly no plug-in uses", params(("hash" = String, Path, description = "the blake3 hash (hex)")), responses((status = 200, description = "the removed assembly", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn unregister_assembly(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<AssemblyRecord>> {
    audited(&state, &who, "unregister.assembly", hash.clone(), move |a| a.unregister_assembly(&hash)).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/plugins", tag = "registration", summary = "Registered plug-ins", responses((status = 200, description = "every plug-in", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn plugins(State(state): State<AppState>) -> ApiResult<Json<Vec<PluginRecord>>> {
    admin(&state, |a| a.plugins()).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/plugins/{name}", tag = "registration", summary = "A plug-in with its assembly and steps", params(("name" = String, Path, description = "the plug-in name")), responses((status = 200, description = "the plug-in", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn plugin(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<PluginDetails>> {
    admin(&state, move |a| a.plugin(&name)).await.map(Json)
}

#[derive(Deserialize)]
struct UnregisterPluginQuery {
    #[serde(default)]
    with_steps: bool,
}

#[utoipa::path(delete, path = "/api/v1/plugins/{name}", tag = "registration", summary = "Unregister a plug-in (with_steps: and its steps, failing their queued jobs)", params(("name" = String, Path, description = "the plug-in name")), responses((status = 200, description = "what was removed", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn unregister_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(q): Params<UnregisterPluginQuery>,
    Extension(who): Who,
) -> ApiResult<Json<UnregisteredPlugin>> {
    audited(&state, &who, "unregister.plugin", name.clone(), move |a| a.unregister_plugin(&name, q.with_steps))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/steps", tag = "registration", summary = "Registered steps", responses((status = 200, description = "every step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn steps(State(state): State<AppState>) -> ApiResult<Json<Vec<StepRecord>>> {
    admin(&state, |a| a.steps()).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/steps", tag = "registration", summary = "Register a step", request_body(content = serde_json::Value, content_type = "application/json", description = "a step spec"), responses((status = 201, description = "the step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn add_step(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<StepRecord>)> {
    let spec: StepSpec = json_body(body)?;
    let target = format!("{} {} {}", spec.plugin, spec.message, spec.entity.as_deref().unwrap_or("*"));
    let record = audited(&state, &who, "steps.add", target, move |a| a.add_step(spec)).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

#[utoipa::path(get, path = "/api/v1/steps/{step}", tag = "registration", summary = "A step", params(("step" = String, Path, description = "id, unique id prefix or name")), responses((status = 200, description = "the step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn step(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<StepRecord>> {
    admin(&state, move |a| a.step(&key)).await.map(Json)
}

#[utoipa::path(delete, path = "/api/v1/steps/{step}", tag = "registration", summary = "Remove a step (its queued jobs fail)", params(("step" = String, Path, description = "id, unique id prefix or name")), responses((status = 200, description = "the removed step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn remove_step(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<StepRecord>> {
    audited(&state, &who, "steps.remove", key.clone(), move |a| a.remove_step(&key)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/steps/{step}/enable", tag = "registration", summary = "Enable a step", params(("step" = String, Path, description = "id, unique id prefix or name")), responses((status = 200, description = "the step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn enable_step(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<StepRecord>> {
    audited(&state, &who, "steps.enable", key.clone(), move |a| a.set_step_enabled(&key, true)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/steps/{step}/disable", tag = "registration", summary = "Disable a step", params(("step" = String, Path, description = "id, unique id prefix or name")), responses((status = 200, description = "the step", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn disable_step(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<StepRecord>> {
    audited(&state, &who, "steps.disable", key.clone(), move |a| a.set_step_enabled(&key, false)).await.map(Json)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    /// Runs to record (0: stop recording).
    runs: u32,
}

#[utoipa::path(post, path = "/api/v1/steps/{step}/profile", tag = "registration", summary = "Record a step's next runs for replay (runs: 0 stops)", params(("step" = String, Path, description = "id, unique id prefix or name")), request_body(content = serde_json::Value, content_type = "application/json", description = "{\"runs\": N}, at most 100"), responses((status = 200, description = "the step's profile", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn profile_step(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<crate::admin::StepProfile>> {
    let body: ProfileBody = json_body(body)?;
    audited(&state, &who, "steps.profile", key.clone(), move |a| a.profile_step(&key, body.runs)).await.map(Json)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    step: Option<String>,
    before: Option<uuid::Uuid>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/runs", tag = "registration", summary = "Recorded runs, newest first", params(("step" = Option<String>, Query, description = "only this step's (id, prefix or name)"), ("before" = Option<String>, Query, description = "older than this run id"), ("limit" = Option<usize>, Query, description = "at most this many (default 50, up to 1000)")), responses((status = 200, description = "run summaries", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn runs(
    State(state): State<AppState>,
    Params(q): Params<RunsQuery>,
) -> ApiResult<Json<Vec<crate::runs::RunSummary>>> {
    admin(&state, move |a| a.runs(q.step.as_deref(), q.before, q.limit.unwrap_or(50))).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "registration", summary = "A recorded run, as `runs export` writes it", params(("id" = String, Path, description = "the run id (a GUID)")), responses((status = 200, description = "the run", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn recorded_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::runs::RecordedRun>> {
    let id = guid_param(&id)?;
    admin(&state, move |a| a.run(id)).await.map(Json)
}

#[utoipa::path(delete, path = "/api/v1/runs/{id}", tag = "registration", summary = "Delete a recorded run", params(("id" = String, Path, description = "the run id (a GUID)")), responses((status = 200, description = "the deleted run's summary", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn delete_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<crate::runs::RunSummary>> {
    let id = guid_param(&id)?;
    audited(&state, &who, "runs.delete", id.to_string(), move |a| a.delete_run(id)).await.map(Json)
}

// ---- metadata ----

#[utoipa::path(get, path = "/api/v1/metadata/entities", tag = "metadata", summary = "Entity definitions", responses((status = 200, description = "every definition", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn definitions(State(state): State<AppState>) -> ApiResult<Json<Vec<EntityDefinition>>> {
    admin(&state, |a| a.definitions()).await.map(Json)
}

/// The body of `PUT /metadata/entities/{name}`: attributes to add.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct DefineBody {
    /// Attribute name -> type (text, integer, decimal, money, boolean, datetime, guid, reference, ...).
    #[schema(value_type = BTreeMap<String, String>)]
    pub attributes: BTreeMap<String, AttributeType>,
}

#[utoipa::path(put, path = "/api/v1/metadata/entities/{name}", tag = "metadata", summary = "Define an entity or add attributes", params(("name" = String, Path, description = "the entity's logical name")), request_body(content = crate::server::DefineBody, content_type = "application/json", description = "attributes to add"), responses((status = 200, description = "the definition", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn define_entity(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<EntityDefinition>> {
    let body: DefineBody = json_body(body)?;
    let def = EntityDefinition { name: name.clone(), attributes: body.attributes };
    audited(&state, &who, "entities.define", name, move |a| a.define_entity(&def)).await.map(Json)
}

/// Query parameters whose errors are JSON, like every other error of the API.
pub(super) struct Params<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

// ---- jobs ----

/// Jobs as the API shows them: with Dataverse's state and status numbers.
pub(super) struct Jobs<T>(pub(super) T);

impl IntoResponse for Jobs<SystemJob> {
    fn into_response(self) -> HttpResponse {
        Json(JobView::of(&self.0)).into_response()
    }
}

impl IntoResponse for Jobs<Option<SystemJob>> {
    fn into_response(self) -> HttpResponse {
        Json(self.0.as_ref().map(JobView::of)).into_response()
    }
}

impl IntoResponse for Jobs<Vec<SystemJob>> {
    fn into_response(self) -> HttpResponse {
        Json(self.0.iter().map(JobView::of).collect::<Vec<_>>()).into_response()
    }
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", summary = "List system jobs (filters, keyset paging with after)", params(crate::admin::JobFilter), responses((status = 200, description = "a page of jobs", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn jobs(
    State(state): State<AppState>,
    Params(filter): Params<JobFilter>,
    Extension(who): Who,
) -> ApiResult<Jobs<Vec<SystemJob>>> {
    admin(&state, move |a| a.jobs_of(&who, &filter)).await.map(Jobs)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", summary = "A system job", params(("id" = String, Path, description = "the id (a GUID)")), responses((status = 200, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn job(State(state): State<AppState>, Path(id): Path<String>, Extension(who): Who) -> ApiResult<Jobs<SystemJob>> {
    let id = guid_param(&id)?;
    admin(&state, move |a| a.job_of(&who, id)).await.map(Jobs)
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", summary = "Queue a job for an asynchronous step (recurrence, postpone, token)", request_body(content = serde_json::Value, content_type = "application/json", description = "step, parameters, recurrence_pattern, recurrence_start, postpone_until, dependency_token"), responses((status = 201, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn create_job(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Jobs<SystemJob>)> {
    let spec: crate::pipeline::NewJob = json_body(body)?;
    let by = who.user_id;
    let job = audited(&state, &who, "jobs.create", spec.step.clone(), move |a| a.create_job(spec, by)).await?;
    Ok((StatusCode::CREATED, Jobs(job)))
}

#[utoipa::path(post, path = "/api/v1/bulk/delete", tag = "jobs", summary = "Queue a bulk delete of the records a query selects", request_body(content = serde_json::Value, content_type = "application/json", description = "query and name"), responses((status = 201, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn bulk_delete(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Jobs<SystemJob>)> {
    let spec: crate::pipeline::BulkDelete = json_body(body)?;
    let by = who.user_id;
    let target = spec.query.entity_name.clone();
    Ok((
        StatusCode::CREATED,
        Jobs(audited(&state, &who, "bulk.delete", target, move |a| a.bulk_delete(spec, by)).await?),
    ))
}

/// The query of `POST /bulk/import`; the body is the file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    pub entity: String,
    /// `csv` (default) or `jsonl`.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/bulk/import", tag = "jobs", summary = "Queue an import of a CSV or JSON-lines file", params(crate::server::ImportQuery), request_body(content = Vec<u8>, content_type = "text/csv", description = "the file"), responses((status = 201, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn bulk_import(
    State(state): State<AppState>,
    Params(q): Params<ImportQuery>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Jobs<SystemJob>)> {
    let bytes = raw_body(body)?;
    let by = who.user_id;
    let target = q.entity.clone();
    let job = audited(&state, &who, "bulk.import", target, move |a| {
        a.bulk_import(&q.entity, q.format.as_deref(), &bytes, q.name, by)
    })
    .await?;
    Ok((StatusCode::CREATED, Jobs(job)))
}

/// The body of `POST /jobs/{id}/postpone`.
#[derive(Serialize, Deserialize)]
pub struct PostponeBody {
    /// RFC 3339 time or UTC milliseconds.
    pub until: serde_json::Value,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/{action}", tag = "jobs", summary = "cancel, pause, resume, postpone (body: until) or retry a job", params(("id" = String, Path, description = "the id (a GUID)"), ("action" = String, Path, description = "cancel, pause, resume, postpone or retry")), responses((status = 200, description = "the job after the action", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn job_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Jobs<Option<SystemJob>>> {
    let id = guid_param(&id)?;
    let until = if action == "postpone" {
        let body: PostponeBody = json_body(body)?;
        Some(crate::model::time_from_json(&body.until).map_err(|m| ApiError::bad_request(format!("until: {m}")))?)
    } else {
        None
    };
    let name: &'static str = match action.as_str() {
        "cancel" => "jobs.cancel",
        "pause" => "jobs.pause",
        "resume" => "jobs.resume",
        "postpone" => "jobs.postpone",
        "retry" => "jobs.retry",
        _ => "jobs.action",
    };
    let action = JobAction::parse(&action, until).map_err(ApiError::not_found)?;
    audited(&state, &who.clone(), name, id.to_string(), move |a| a.manage_job_of(&who, id, action)).await.map(Jobs)
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", summary = "Delete a job that is not running", params(("id" = String, Path, description = "the id (a GUID)")), responses((status = 204, description = "deleted"), crate::server::openapi::ApiErrors))]
async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
) -> ApiResult<StatusCode> {
    let id = guid_param(&id)?;
    audited(&state, &who.clone(), "jobs.delete", id.to_string(), move |a| a.manage_job_of(&who, id, JobAction::Delete))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/service", tag = "service", summary = "The asynchronous service's state and job counts", responses((status = 200, description = "the service", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn service(State(state): State<AppState>) -> ApiResult<Json<ServiceStatus>> {
    admin(&state, |a| a.service(None)).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/service/{action}", tag = "service", summary = "Pause or resume the asynchronous service", params(("action" = String, Path, description = "pause or resume")), responses((status = 200, description = "the service", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn service_action(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<ServiceStatus>> {
    let parsed: ServiceAction = action.parse().map_err(ApiError::not_found)?;
    let name = if parsed == ServiceAction::Pause { "service.pause" } else { "service.resume" };
    audited(&state, &who, name, "asynchronous service", move |a| a.service(Some(parsed))).await.map(Json)
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "service", summary = "Prometheus metrics (public if http.public_metrics)",
    responses((status = 200, description = "the text exposition format", body = String, content_type = "text/plain"), super::openapi::ApiErrors))]
async fn metrics(State(state): State<AppState>) -> ApiResult<HttpResponse> {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = admin(&state, |a| a.counts()).await?;
    let mut out = String::new();
    out.push_str("# HELP plughost_jobs System jobs by status.\n# TYPE plughost_jobs gauge\n");
    for (name, code, n) in &counts.by_status {
        out.push_str(&format!("plughost_jobs{{status=\"{name}\",code=\"{code}\"}} {n}\n"));
    }
    let (gauge, counter) = ("gauge", "counter");
    let mut rows = vec![("plughost_jobs_runnable", gauge, "Jobs ready to run now.", counts.runnable)];
    let remote = state.admin.remote_workers();
    rows.extend([
        (
            "plughost_remote_workers",
            gauge,
            "Remote worker processes heard from within a lease.",
            remote.iter().filter(|w| !w.lost).count() as u64,
        ),
        (
            "plughost_remote_jobs_succeeded_total",
            counter,
            "Job runs remote workers completed that succeeded (workers listed now).",
            remote.iter().map(|w| w.done).sum(),
        ),
        (
            "plughost_remote_jobs_failed_total",
            counter,
            "Job runs remote workers completed that failed for good (workers listed now).",
            remote.iter().map(|w| w.failures).sum(),
        ),
    ]);
    if let Some(w) = state.admin.workers() {
        let st = &w.stats;
        rows.extend([
            ("plughost_jobs_succeeded_total", counter, "Job runs that succeeded.", st.succeeded.load(Relaxed)),
            ("plughost_jobs_failed_total", counter, "Job runs that failed for good.", st.failed.load(Relaxed)),
            ("plughost_jobs_retried_total", counter, "Retryable failures scheduled again.", st.retried.load(Relaxed)),
            ("plughost_jobs_canceled_total", counter, "Jobs canceled while they ran.", st.canceled.load(Relaxed)),
            (
                "plughost_job_leases_renewed_total",
                counter,
                "Leases renewed by the heartbeat.",
                st.renewed.load(Relaxed),
            ),
            (
                "plughost_jobs_requeued_total",
                counter,
                "Jobs re-run after a concurrent change.",
                st.requeued.load(Relaxed),
            ),
            ("plughost_jobs_stale_total", counter, "Completions dropped for a lost lease.", st.stale.load(Relaxed)),
            ("plughost_job_fuel_total", counter, "Fuel used by jobs.", st.fuel_used.load(Relaxed)),
            ("plughost_job_run_microseconds_total", counter, "Time jobs spent running.", st.run_us.load(Relaxed)),
        ]);
    }
    let cs = state.admin.pipeline().committer().stats();
    let rt = state.admin.pipeline().runtime().stats();
    rows.extend([
        ("plughost_group_commits_total", counter, "Durable write transactions.", cs.commits.load(Relaxed)),
        (
            "plughost_group_commit_operations_total",
            counter,
            "Operations (requests, leases, completion batches) committed; per commit, the batch size.",
            cs.operations.load(Relaxed),
        ),
        (
            "plughost_group_commit_microseconds_total",
            counter,
            "Time making batches durable.",
            cs.commit_us.load(Relaxed),
        ),
        (
            "plughost_group_commit_apply_microseconds_total",
            counter,
            "Time the writer spent applying operations (with the commit time: how busy it is).",
            cs.apply_us.load(Relaxed),
        ),
        (
            "plughost_group_commit_reapplied_total",
            counter,
            "PostgreSQL: batches applied again because another transaction wrote while they were applied ahead of the commit before them.",
            cs.reapplied.load(Relaxed),
        ),
        (
            "plughost_group_commit_carried_total",
            counter,
            "PostgreSQL: operations left to the next batch when a batch applied again under the writer lock was cut short.",
            cs.carried.load(Relaxed),
        ),
        ("plughost_invocations_total", counter, "Plug-in invocations.", rt.invocations),
        ("plughost_compiled_total", counter, "Components compiled (not loaded from the cache).", rt.compiled),
    ]);
    for (name, kind, help, v) in rows {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
