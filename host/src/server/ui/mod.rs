//! The dashboard at `/ui`: server-rendered pages over the same `Admin` operations
//! as the API, with a little plain JavaScript (live counts by server-sent events,
//! select-all). Assets are embedded in the binary.
//!
//! **Invariants:**
//! - A page or action needs a session: an API key exchanged at `/ui/login` for a
//!   random session id in a cookie (HttpOnly, SameSite=Strict, Path=/ui, Secure
//!   under TLS). The session remembers the key's hash, never the key, and each
//!   request authenticates it again, so revoking the key or its roles ends it.
//! - Every action is a POST carrying the session's CSRF token in its form; the
//!   guard refuses foreign origins before it.
//! - Actions go through `api::audited` like the API's, and the pages offer only the
//!   actions the user's privileges allow (read-only without `manage_jobs`); the
//!   operations check again.

mod charts;
mod html;
mod pages;

pub use self::pages::SCAN_BUDGET;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::auth::Access;
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::security::{Principal, key_hash};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "plughost_session";
/// A session ends this long after login.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Most sessions held at once (past it the oldest are dropped).
pub const MAX_SESSIONS: usize = 10_000;
/// Largest form the dashboard accepts.
const MAX_FORM_BYTES: usize = 256 * 1024;

struct Stored {
    key: [u8; 32],
    csrf: String,
    expires: i64,
}

/// The dashboard's sessions, in memory: a restart logs everyone out, and each
/// `serve` instance on a shared store has its own.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Stored>>,
}

/// The session of a request (after [`session`]).
#[derive(Clone)]
pub(super) struct Session {
    pub(super) principal: Arc<Principal>,
    pub(super) csrf: String,
    id: String,
}

/// A random token: 244 bits from the operating system's generator.
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl Sessions {
    fn open(&self, key: [u8; 32]) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let now = now_ms();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(id.clone(), Stored { key, csrf: csrf.clone(), expires: now + SESSION_TTL_MS });
        (id, csrf)
    }

    fn find(&self, id: &str) -> Option<([u8; 32], String)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > now_ms()).map(|s| (s.key, s.csrf.clone()))
    }

    fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The dashboard's routes (the guard and the fallback are the app's).
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/overview") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/overview") }))
        .route("/ui/overview", get(pages::overview))
        .route("/ui/events", get(pages::events))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/action", post(pages::jobs_action))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/{action}", post(pages::job_action))
        .route("/ui/recurring", get(pages::recurring))
        .route("/ui/plugins", get(pages::plugins))
        .route("/ui/steps/{id}/{action}", post(pages::step_action))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/service", get(pages::service))
        .route("/ui/service/{action}", post(pages::service_action))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), session));
    Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/assets/{file}", get(asset))
        .merge(pages)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn(headers))
}

/// Pages are never cached and never framed; scripts and styles come from here only.
async fn headers(request: HttpRequest, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("assets/app.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn cookie(request: &HttpRequest) -> Option<String> {
    request.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';')
            .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
    })
}

/// Finds the request's session and its user, or sends a page request to the login.
async fn session(State(state): State<AppState>, mut request: HttpRequest, next: Next) -> Response {
    let found = cookie(&request).and_then(|id| state.ui.find(&id).map(|(key, csrf)| (id, key, csrf)));
    let to_login = |request: &HttpRequest| {
        if request.method() == axum::http::Method::GET && request.uri().path() != "/ui/events" {
            let next = request.uri().path_and_query().map_or("/ui/overview", |p| p.as_str());
            Redirect::to(&format!("/ui/login?next={}", html::url(next))).into_response()
        } else {
            UiError(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in again: the session has ended"))
                .into_response()
        }
    };
    let Some((id, key, csrf)) = found else { return to_login(&request) };
    let auth = state.auth.clone();
    let principal = match tokio::task::spawn_blocking(move || auth.authenticate_hash(&key)).await {
        Ok(Ok(p)) => p,
        _ => {
            state.ui.close(&id);
            return to_login(&request);
        }
    };
    if let Err(e) = Access::Member.check(&principal) {
        return UiError(e).into_response();
    }
    request.extensions_mut().insert(principal.clone());
    request.extensions_mut().insert(Session { principal, csrf, id });
    next.run(request).await
}

/// An error as a page.
pub(super) struct UiError(pub(super) ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<crate::admin::AdminError> for UiError {
    fn from(e: crate::admin::AdminError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Error · plughost</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head><body><main>\
<h1>{status}</h1><p class=\"notice bad\" role=\"alert\"><code>{code}</code> {message}</p>\
<p><a href=\"/ui/overview\">Back to the dashboard</a></p></main></body></html>",
            status = self.0.status,
            code = html::esc(&self.0.code),
            message = html::esc(&self.0.message),
        );
        (self.0.status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
    }
}

pub(super) type UiResult<T> = Result<T, UiError>;

/// A form body: its fields in order (a name may repeat).
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    pub(super) fn parse(body: Result<Bytes, BytesRejection>) -> UiResult<Form> {
        let bytes = super::api::raw_body(body)?;
        serde_urlencoded::from_bytes(&bytes)
            .map(Form)
            .map_err(|e| UiError(ApiError::bad_request(format!("the form does not decode: {e}"))))
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub(super) fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Refuses a form without the session's CSRF token.
    pub(super) fn check(&self, session: &Session) -> UiResult<()> {
        let sent = self.get("csrf").unwrap_or("");
        if sent.len() == session.csrf.len() && constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(UiError(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "the form's CSRF token is missing or wrong: reload the page and try again",
            )))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A path inside the dashboard to go back to, or the overview.
pub(super) fn back_to(path: Option<&str>) -> String {
    match path {
        Some(p) if p.starts_with("/ui/") && !p.starts_with("//") && !p.contains(['\r', '\n', '\\']) => p.to_owned(),
        _ => "/ui/overview".to_owned(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

fn login_html(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| html::notice("bad", &html::esc(e))).unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Log in · plughost</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head><body class=\"login\"><main>\
<h1>plughost</h1>{error}<form method=\"post\" action=\"/ui/login\" id=\"login\">{next}\
<label for=\"key\">API key</label><input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
<p class=\"hint\">A key from <code>plughost keys create --user NAME</code>, or the admin token.</p>\
<button type=\"submit\">Log in</button></form></main></body></html>",
        next = html::hidden("next", next),
    )
}

async fn login_page(super::api::Params(q): super::api::Params<LoginQuery>) -> Response {
    axum::response::Html(login_html(&back_to(q.next.as_deref()), None)).into_response()
}

async fn login(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> UiResult<Response> {
    let form = Form::parse(body)?;
    let next = back_to(form.get("next"));
    let secret = form.get("key").unwrap_or("").trim().to_owned();
    let auth = state.auth.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let p = auth.authenticate(&secret)?;
        Access::Member.check(&p)?;
        Ok::<_, ApiError>(key_hash(&secret))
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())));
    let key = match checked {
        Ok(k) => k,
        Err(e) => {
            let page = login_html(&next, Some(&e.message));
            return Ok((StatusCode::UNAUTHORIZED, axum::response::Html(page)).into_response());
        }
    };
    let (id, _) = state.ui.open(key);
    let secure = if state.config.tls.cert.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL_MS / 1000
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
}

async fn logout(
    State(state): State<AppState>,
    axum::Extension(session): axum::Extension<Session>,
    body: Result<Bytes, BytesRejection>,
) -> UiResult<Response> {
    Form::parse(body)?.check(&session)?;
    state.ui.close(&session.id);
    let cookie = format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response())
}
