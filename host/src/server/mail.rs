//! Bulk mail and campaign activity distribution: `/api/v1/mail/bulk` and
//! `/api/v1/campaigns/activities/{id}/distribute` (any user: each email or activity is
//! created with the caller's privileges when the job runs). Both are audited.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiResult, ApiRouter, Jobs, Who, audited, guid_param, json_body};
use crate::jobs::SystemJob;
use utoipa_axum::routes;

pub(super) fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(bulk_mail)).routes(routes!(distribute))
}

#[utoipa::path(post, path = "/api/v1/mail/bulk", tag = "mail", summary = "Queue a bulk mail: one Pending Send email per record a query selects, from a template", request_body(content = serde_json::Value, content_type = "application/json", description = "template (id or name), query, address_attribute, sender, name"), responses((status = 201, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn bulk_mail(
    State(state): State<AppState>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Jobs<SystemJob>)> {
    let spec: crate::mail::BulkMail = json_body(body)?;
    let by = who.user_id;
    let target = spec.query.entity_name.clone();
    let job = audited(&state, &who, "mail.bulk", target, move |a| a.bulk_mail(spec, by)).await?;
    Ok((StatusCode::CREATED, Jobs(job)))
}

/// The body of `POST /campaigns/activities/{id}/distribute` (may be empty).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DistributeBody {
    #[serde(default)]
    pub name: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/campaigns/activities/{id}/distribute", tag = "mail", summary = "Queue the distribution of a campaign activity to the members of its lists", params(("id" = String, Path, description = "the campaign activity's id")), request_body(content = serde_json::Value, content_type = "application/json", description = "name (optional)"), responses((status = 201, description = "the job", body = serde_json::Value), crate::server::openapi::ApiErrors))]
async fn distribute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Jobs<SystemJob>)> {
    let activity = guid_param(&id)?;
    let body: DistributeBody = match &body {
        Ok(b) if b.is_empty() => DistributeBody::default(),
        _ => json_body(body)?,
    };
    let by = who.user_id;
    let job = audited(&state, &who, "campaigns.distribute", activity.to_string(), move |a| {
        a.distribute_campaign_activity(activity, body.name, by)
    })
    .await?;
    Ok((StatusCode::CREATED, Jobs(job)))
}
