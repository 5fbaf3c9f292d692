//! Who is calling, and the browser-facing defences, before any handler runs:
//! - `guard` (every route): a foreign `Host` is refused while listening on loopback
//!   (DNS rebinding), a foreign `Origin` is refused unless configured (CORS is off by
//!   default), and a body must declare the route's media type (so a page cannot post
//!   a "simple" `text/plain` or form request to the API; the dashboard's `/ui` forms
//!   are form posts that carry a CSRF token);
//! - `authenticate` (every API route): the caller is the user of its API key, never
//!   a request header; keys are checked against the store through a cache that follows
//!   the pipeline's security epoch;
//! - `require` (per route group): the privilege a route needs, or `403 forbidden`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};

use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::pipeline::Pipeline;
use crate::security::{Capability, Principal, key_hash};

/// Most keys remembered at once (past it the cache starts over).
const MAX_CACHED_KEYS: usize = 10_000;
/// The request header the caller's identity must never come from.
pub const USER_HEADER: &str = "x-plughost-user";

struct Cached {
    principal: Arc<Principal>,
    expires_on: Option<i64>,
}

/// Checks API keys, remembering the principals of recent ones until the pipeline's
/// security epoch moves (a change of users, keys or roles through this process at
/// once; on a shared store, another process's within a second: `Admin::follow_store`).
pub struct Authenticator {
    pipeline: Arc<Pipeline>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    epoch: AtomicU64,
}

impl Authenticator {
    pub fn new(pipeline: Arc<Pipeline>) -> Authenticator {
        let epoch = AtomicU64::new(pipeline.security_epoch());
        Authenticator { pipeline, cache: Mutex::new(HashMap::new()), epoch }
    }

    /// Drops the cache when the security epoch moved.
    fn follow(&self) {
        let e = self.pipeline.security_epoch();
        if self.epoch.swap(e, Ordering::SeqCst) != e {
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The principal of the key `secret`. Blocks (reads the store).
    pub fn authenticate(&self, secret: &str) -> Result<Arc<Principal>, ApiError> {
        self.authenticate_hash(&key_hash(secret))
    }

    /// The principal of the key whose hash is `hash` (a dashboard session keeps the
    /// hash, never the key). Blocks (reads the store).
    pub fn authenticate_hash(&self, hash: &[u8; 32]) -> Result<Arc<Principal>, ApiError> {
        self.follow();
        let hash = *hash;
        let now = now_ms();
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash)
            && c.expires_on.is_none_or(|e| e > now)
        {
            return Ok(c.principal.clone());
        }
        match self.pipeline.store().authenticate(&hash)? {
            Ok((key, principal)) => {
                let principal = Arc::new(principal);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= MAX_CACHED_KEYS {
                    cache.clear();
                }
                cache.insert(hash, Cached { principal: principal.clone(), expires_on: key.expires_on });
                Ok(principal)
            }
            Err(why) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{why}: present a valid API key (plughost keys create --user NAME)"),
            )),
        }
    }
}

/// What a route group needs of its caller.
#[derive(Clone, Copy, Debug)]
pub(super) enum Access {
    /// Any user of a role other than the worker's alone (data routes check each
    /// record in the pipeline; job routes show one's own jobs).
    Member,
    Capability(Capability),
}

impl Access {
    pub(super) fn check(self, p: &Principal) -> Result<(), ApiError> {
        let denied = |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
        match self {
            Access::Capability(c) => p.require(c).map_err(|d| denied(d.0)),
            Access::Member => {
                let member = p.privileges.any_data()
                    || Capability::ALL.iter().any(|c| *c != Capability::Worker && p.privileges.has(*c));
                if member {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "user '{}' may call the worker routes only (roles: {}); this route needs a user role",
                        p.name,
                        p.role_list()
                    )))
                }
            }
        }
    }
}

/// The bearer token a request presents ("" without one).
pub(super) fn bearer(request: &HttpRequest) -> &str {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Authenticates an API request: its principal goes into the request's extensions.
pub(super) async fn authenticate(State(state): State<AppState>, mut request: HttpRequest, next: Next) -> HttpResponse {
    if request.headers().contains_key(USER_HEADER) {
        return ApiError::bad_request(format!(
            "the {USER_HEADER} header is not accepted: the caller is the user of its API key (a step runs as another user with --run-as)"
        ))
        .into_response();
    }
    let secret = bearer(&request).to_owned();
    if secret.is_empty() {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs 'Authorization: Bearer KEY' (plughost keys create --user NAME; the admin token is a key too)",
        )
        .into_response();
    }
    let auth = state.auth.clone();
    let principal = match tokio::task::spawn_blocking(move || auth.authenticate(&secret)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("authentication failed: {e}"))
                .into_response();
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Refuses a caller without `access` (after [`authenticate`]).
pub(super) async fn require(access: Access, request: HttpRequest, next: Next) -> HttpResponse {
    let Some(p) = request.extensions().get::<Arc<Principal>>() else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this route needs an API key").into_response();
    };
    if let Err(e) = access.check(p) {
        return e.into_response();
    }
    next.run(request).await
}

/// The host part of a `Host` header or an origin's authority (no port).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
}

/// The media types a route's body may have.
fn accepted_media(path: &str) -> &'static [&'static str] {
    match path {
        "/api/v1/assemblies" => &["application/wasm", "application/octet-stream"],
        "/api/v1/bulk/import" => {
            &["text/csv", "application/x-ndjson", "application/jsonl", "application/json", "application/octet-stream"]
        }
        // The dashboard's forms: each carries the session's CSRF token.
        p if p.starts_with("/ui/") => &["application/x-www-form-urlencoded"],
        _ => &["application/json"],
    }
}

/// The browser-facing defences (see the module's documentation).
pub(super) async fn guard(State(state): State<AppState>, request: HttpRequest, next: Next) -> HttpResponse {
    let browser = &state.config.http;
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    if state.loopback && !host.is_empty() {
        let name = host_name(&host).to_ascii_lowercase();
        let known = ["localhost", "127.0.0.1", "::1"].contains(&name.as_str())
            || browser.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&name));
        if !known {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "bad_host",
                format!(
                    "Host '{host}' is not this server: listening on loopback, it answers localhost, 127.0.0.1 and [::1] only (http.allowed_hosts adds names)"
                ),
            )
            .into_response();
        }
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    let mut cors = None;
    if let Some(origin) = &origin {
        let same = origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(&host));
        let listed = browser.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
        if !same && !listed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("requests from origin '{origin}' are refused: CORS is off unless http.cors_origins lists it"),
            )
            .into_response();
        }
        if listed {
            cors = HeaderValue::from_str(origin).ok();
        }
    }
    if request.method() == Method::OPTIONS
        && let Some(origin) = cors
    {
        return (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE")),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type")),
                (header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")),
                (header::VARY, HeaderValue::from_static("Origin")),
            ],
        )
            .into_response();
    }
    if matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
        let declared = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok());
        let empty = headers.get(header::CONTENT_LENGTH).is_some_and(|l| l.as_bytes() == b"0")
            || (!headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::TRANSFER_ENCODING));
        let accepted = accepted_media(request.uri().path());
        match declared {
            None if empty => {}
            declared => {
                let media =
                    declared.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).unwrap_or_default();
                if !accepted.contains(&media.as_str()) {
                    return ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        format!(
                            "a body of type '{}' is refused here: send {}",
                            declared.unwrap_or("(none)"),
                            accepted.join(" or ")
                        ),
                    )
                    .into_response();
                }
            }
        }
    }
    let mut response = next.run(request).await;
    if let Some(origin) = cors {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_ports() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("evil.example"), "evil.example");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }
}
