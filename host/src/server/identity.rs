//! Users, keys, roles (`security` privilege) and the audit log (`audit`):
//! `/api/v1/users`, `/keys`, `/roles`, `/audit`. Every change is audited, and drops
//! the cached principals at once (`Admin`'s operations move the security epoch).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::api::ApiRouter;
use super::api::{ApiResult, Params, Who, admin, audited, json_body};
use super::auth::{self, Access};
use super::{ApiError, AppState};
use crate::accounts::{Grant, KeySpec};
use crate::security::{ApiKey, AuditEntry, Capability, NewKey, Principal, Role, User};
use utoipa_axum::routes;

pub(super) fn routes(_state: &AppState) -> ApiRouter {
    let need = |access: Access| middleware::from_fn(move |r, n: Next| auth::require(access, r, n));
    let security = ApiRouter::new()
        .routes(routes!(users, create_user))
        .routes(routes!(user_action))
        .routes(routes!(keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(roles, create_role))
        .routes(routes!(grant))
        .route_layer(need(Access::Capability(Capability::Security)));
    let audit = ApiRouter::new().routes(routes!(audit)).route_layer(need(Access::Capability(Capability::Audit)));
    // Any key may ask who it is (Dataverse's WhoAmI).
    security.merge(audit).routes(routes!(whoami))
}

/// The body of `POST /users`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewUserBody {
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The body of `POST /users/{name}/roles`.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RolesBody {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// The body of `POST /roles`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewRoleBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "security", summary = "The caller: user, roles, privileges", responses((status = 200, description = "the principal", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn whoami(Extension(who): Who) -> Json<Principal> {
    Json((*who).clone())
}

#[utoipa::path(get, path = "/api/v1/users", tag = "security", summary = "Users", responses((status = 200, description = "every user", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn users(State(state): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    admin(&state, |a| a.users()).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/users", tag = "security", summary = "Create a user", request_body(content = crate::server::NewUserBody, content_type = "application/json", description = "name and roles"), responses((status = 201, description = "the user", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn create_user(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let b: NewUserBody = json_body(body)?;
    let user = audited(&state, &who, "users.create", b.name.clone(), move |a| a.create_user(&b.name, &b.roles)).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/{action}", tag = "security", summary = "roles (body: roles), enable or disable a user", params(("name" = String, Path, description = "the user's name"), ("action" = String, Path, description = "roles, enable or disable")), responses((status = 200, description = "the user", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn user_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<User>> {
    match action.as_str() {
        "disable" => {
            audited(&state, &who, "users.disable", name.clone(), move |a| a.set_user_disabled(&name, true)).await
        }
        "enable" => {
            audited(&state, &who, "users.enable", name.clone(), move |a| a.set_user_disabled(&name, false)).await
        }
        "roles" => {
            let b: RolesBody = json_body(body)?;
            audited(&state, &who, "users.roles", name.clone(), move |a| a.change_user_roles(&name, &b.add, &b.remove))
                .await
        }
        other => Err(ApiError::not_found(format!("no user action '{other}': disable, enable or roles"))),
    }
    .map(Json)
}

#[derive(Deserialize)]
struct KeysQuery {
    user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "security", summary = "API keys (never their secrets)", responses((status = 200, description = "the keys", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn keys(State(state): State<AppState>, Params(q): Params<KeysQuery>) -> ApiResult<Json<Vec<ApiKey>>> {
    admin(&state, move |a| a.keys(q.user.as_deref())).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "security", summary = "Create an API key (the secret is in this answer only)", request_body(content = serde_json::Value, content_type = "application/json", description = "user, label, expires"), responses((status = 201, description = "the key and its secret", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn create_key(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    let spec: KeySpec = json_body(body)?;
    let key = audited(&state, &who, "keys.create", spec.user.clone(), move |a| a.create_key(&spec)).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "security", summary = "Revoke a key", params(("id" = String, Path, description = "the id (a GUID)")), responses((status = 200, description = "the key", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
) -> ApiResult<Json<ApiKey>> {
    let id = crate::model::parse_guid(&id).map_err(ApiError::bad_request)?;
    audited(&state, &who, "keys.revoke", id.to_string(), move |a| a.revoke_key(id)).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/roles", tag = "security", summary = "Roles", responses((status = 200, description = "every role", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn roles(State(state): State<AppState>) -> ApiResult<Json<Vec<Role>>> {
    admin(&state, |a| a.roles()).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/roles", tag = "security", summary = "Create a role", request_body(content = crate::server::NewRoleBody, content_type = "application/json", description = "name and description"), responses((status = 201, description = "the role", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn create_role(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Role>)> {
    let b: NewRoleBody = json_body(body)?;
    let role =
        audited(&state, &who, "roles.create", b.name.clone(), move |a| a.create_role(&b.name, &b.description)).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

#[utoipa::path(post, path = "/api/v1/roles/{name}/grant", tag = "security", summary = "Grant privileges and capabilities to a role", params(("name" = String, Path, description = "the role's name")), request_body(content = serde_json::Value, content_type = "application/json", description = "privileges and capabilities"), responses((status = 200, description = "the role", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn grant(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Role>> {
    let g: Grant = json_body(body)?;
    audited(&state, &who, "roles.grant", name.clone(), move |a| a.grant(&name, &g)).await.map(Json)
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<Uuid>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "security", summary = "The audit log, newest first", responses((status = 200, description = "audit entries", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn audit(State(state): State<AppState>, Params(q): Params<AuditQuery>) -> ApiResult<Json<Vec<AuditEntry>>> {
    admin(&state, move |a| a.audit_log(q.before, q.limit)).await.map(Json)
}
