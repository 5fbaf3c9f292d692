//! The one error type of the HTTP API: a status, a stable code and a message,
//! sent as `{"error": {"code": …, "message": …}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::pipeline::PipelineError;
use crate::registry::RegistryError;
use crate::runtime::ErrorCode;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// The JSON body of an error.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    #[schema(schema_with = super::openapi::error_code_schema)]
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, code: code.into(), message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        let status = match &e {
            PipelineError::Plugin { failure, .. } => match failure.code {
                // The plug-in rejected the request: the caller's to fix.
                ErrorCode::PluginError => StatusCode::BAD_REQUEST,
                ErrorCode::PluginRetryable => StatusCode::SERVICE_UNAVAILABLE,
                // The plug-in broke a limit or trapped.
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            PipelineError::DepthExceeded(_) | PipelineError::Invalid(_) => StatusCode::BAD_REQUEST,
            PipelineError::NotFound(_) | PipelineError::UnknownEntity(_) | PipelineError::UnknownMessage(_) => {
                StatusCode::NOT_FOUND
            }
            PipelineError::AlreadyExists(_) | PipelineError::Conflict(_) => StatusCode::CONFLICT,
            PipelineError::WriteLimit(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PipelineError::Denied(_) => StatusCode::FORBIDDEN,
            PipelineError::Store(s) => store_status(s),
        };
        let message = match &e {
            // The plug-in's own message comes first: it is what the user should read.
            PipelineError::Plugin { step, failure, .. } => format!("{} (step '{step}')", failure.message),
            other => other.to_string(),
        };
        ApiError::new(status, e.code(), message)
    }
}

/// The status of a store error: a missing thing is 404 wherever it comes from.
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(store_status(&e), e.code(), e.to_string())
    }
}

impl From<crate::admin::AdminError> for ApiError {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match e {
            AdminError::Pipeline(p) => p.into(),
            AdminError::Registry(r) => r.into(),
            AdminError::Store(s) => s.into(),
            AdminError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_error", e.to_string()),
            AdminError::Invalid { code, message } => ApiError::new(StatusCode::BAD_REQUEST, code, message),
            AdminError::Unavailable { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            AdminError::Denied(message) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(s) => s.into(),
            RegistryError::NotFound(m) => ApiError::not_found(m),
            RegistryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => ApiError::new(StatusCode::BAD_REQUEST, other.code(), other.to_string()),
        }
    }
}
