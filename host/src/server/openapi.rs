//! The API's OpenAPI 3.1 document (`GET /api/v1/openapi.json`): each handler
//! describes itself (`#[utoipa::path]`), and the API's routers are
//! `utoipa_axum::OpenApiRouter`s that register a handler's route and its
//! description together, so the document lists exactly the routes served.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr};
use utoipa::{Modify, PartialSchema, ToSchema};

use super::ErrorBody;

/// The error answers every route may give: `{"error": {"code", "message"}}`.
pub(super) struct ApiErrors;

impl utoipa::IntoResponses for ApiErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        let answer = |what: &str| {
            let content =
                ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))));
            RefOr::T(ResponseBuilder::new().description(what).content("application/json", content.build()).build())
        };
        [
            ("400", "the request is not valid (code: invalid, bad_json, bad_body, ...)"),
            ("401", "no key, or a key that is not valid (code: unauthorized)"),
            ("403", "the key's roles do not allow it (code: forbidden)"),
            ("404", "no such record, job, step, plug-in or route (code: not_found)"),
            ("409", "the action conflicts with the current state (code: conflict, ...)"),
            ("413", "the body is larger than the route's limit (code: payload_too_large)"),
            ("415", "the body's media type is not the route's (code: unsupported_media_type)"),
            ("500", "a plug-in broke a limit, or the host failed (code: trap, out_of_fuel, internal, ...)"),
            ("503", "the store is unavailable, or a plug-in asks to retry (code: store_error, plugin_retryable)"),
        ]
        .into_iter()
        .map(|(status, what)| (status.to_owned(), answer(what)))
        .collect()
    }
}

/// Every error code, as the `code` field's enumeration.
pub(super) fn error_code_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("A stable error code: the README's \"Error codes\" table says what each means."))
        .enum_values(Some(crate::codes::CODES.iter().map(|(code, _)| *code)))
        .build()
        .into()
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`plughost keys create --user NAME`; the admin token is one)"))
                    .build(),
            ),
        );
        components.schemas.insert("ErrorBody".into(), ErrorBody::schema());
        let mut schemas = Vec::new();
        ErrorBody::schemas(&mut schemas);
        components.schemas.extend(schemas);
        api.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// The document's frame: title, version, security; the routers add the paths.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "plughost API",
        description = "The HTTP API of `plughost serve`: data, custom messages, registration, metadata, system jobs, workflows, identities and the worker protocol. Every route but /healthz and this document needs `Authorization: Bearer KEY`."
    ),
    modifiers(&Security)
)]
pub(super) struct Frame;

/// The finished document: OpenAPI 3.1, the host's version.
pub(super) fn finish(mut api: OpenApi) -> OpenApi {
    use utoipa::OpenApi as _;
    let frame = Frame::openapi();
    api.openapi = utoipa::openapi::OpenApiVersion::Version31;
    api.info = frame.info;
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    api.security = frame.security;
    let mut components = frame.components.unwrap_or_default();
    if let Some(c) = api.components.take() {
        components.schemas.extend(c.schemas);
        components.responses.extend(c.responses);
    }
    api.components = Some(components);
    api
}

/// Every operation of the document, as (method, path): what the tests walk.
pub fn operations(api: &OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &api.paths.paths {
        let ops: [(&str, &Option<Operation>); 5] = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, op) in ops {
            if op.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// Every API route is registered with `routes!` (route and description at
    /// once): a plain `.route(` would serve a route the document does not list.
    #[test]
    fn every_api_route_is_registered_with_its_description() {
        let sources = [
            ("api.rs", include_str!("api.rs")),
            ("identity.rs", include_str!("identity.rs")),
            ("workflows.rs", include_str!("workflows.rs")),
            ("workers.rs", include_str!("workers.rs")),
        ];
        for (name, text) in sources {
            for (i, line) in text.lines().enumerate() {
                let allowed = line.contains("\"/api/v1/openapi.json\"");
                assert!(
                    !line.contains(".route(\"") || allowed,
                    "{name}:{}: a route outside the OpenAPI document: {line}",
                    i + 1
                );
            }
        }
    }
}
