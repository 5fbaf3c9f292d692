//! The OpenAPI 3.1 document at `/api/v1/openapi.json`, tried against the router
//! that serves it.

use plughost_test_support::TestServer;

use super::BIN;

#[test]
fn the_openapi_document_lists_every_route_served_and_every_error_code() {
    let s = TestServer::start(BIN);
    let doc = s.get_anonymous("/api/v1/openapi.json").expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Every error code the API can give, as the enumeration of `code`.
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
        .as_array()
        .expect("an enumeration of error codes")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let catalogue: Vec<&str> = plughost::codes::CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, catalogue);
    let operations: Vec<(String, String)> =
        serde_json::from_value::<utoipa_free::Doc>(doc.clone()).map(|d| d.operations()).expect("paths");
    assert!(operations.len() >= 60, "{} operations", operations.len());
    // Operation ids are unique.
    let mut ids: Vec<&str> = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            ids.push(op["operationId"].as_str().expect("an operation id"));
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "duplicate operation ids: {ids:?}");
    // Every documented operation is served: no answer comes from the fallback or is
    // "method not allowed". (Path parameters get values no record has.)
    for (method, path) in &operations {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "00000000-0000-0000-0000-000000000000" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let body: &[u8] = if method == "GET" || method == "DELETE" { b"" } else { b"{}" };
        let reply = s.raw(
            &[("content-type", "application/json"), ("authorization", &format!("Bearer {}", s.token))],
            method,
            &concrete,
            body,
        );
        let fallback = reply.status == 404
            && reply.body["error"]["message"].as_str().is_some_and(|m| m.starts_with("no such route"));
        assert!(
            !fallback && reply.status != 405,
            "{method} {path} is documented but not served: {} {}",
            reply.status,
            reply.body
        );
    }
    // And a route that is not documented is not served.
    let missing = s.get("/api/v1/no-such-thing");
    assert_eq!(missing.status, 404);
}

/// The part of the document the test walks, without a dependency on utoipa.
mod utoipa_free {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Doc {
        paths: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    }

    impl Doc {
        pub(super) fn operations(&self) -> Vec<(String, String)> {
            let mut out = Vec::new();
            for (path, item) in &self.paths {
                for method in item.keys() {
                    out.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
            out
        }
    }
}
