//! The event pipeline through a real `plughost serve` process on 127.0.0.1.

use plughost_test_support::{TestServer, artifacts};
use serde_json::{Value, json};

use super::BIN;

/// A server with `account`, `task` and `audit` entities defined.
pub(crate) fn server() -> TestServer {
    server_with(&[])
}

/// The same, with extra environment (e.g. `PLUGHOST_WORKERS=0` to keep jobs queued).
pub(crate) fn server_with(env: &[(&str, &str)]) -> TestServer {
    let s = TestServer::start_with(BIN, env);
    define_entities(&s);
    s
}

/// Defines the `account`, `task` and `audit` entities.
pub(crate) fn define_entities(s: &TestServer) {
    s.put(
        "/api/v1/metadata/entities/account",
        &json!({"attributes": {"name": "text", "accountnumber": "text", "creditlimit": "money", "description": "text"}}),
    )
    .expect(200);
    s.put(
        "/api/v1/metadata/entities/task",
        &json!({"attributes": {"subject": "text", "regardingobjectid": "reference", "scheduledend": "datetime"}}),
    )
    .expect(200);
    s.put(
        "/api/v1/metadata/entities/audit",
        &json!({"attributes": {"message": "text", "stage": "integer", "depth": "integer", "before": "text", "after": "text", "note": "text"}}),
    )
    .expect(200);
}

pub(crate) fn register(s: &TestServer, wasm: &str, name: &str, steps: &[&str]) {
    let mut args = vec!["register", wasm, "--name", name, "--json"];
    for st in steps {
        args.extend(["--step", st]);
    }
    s.run(&args).ok();
}

pub(crate) fn add_step(s: &TestServer, spec: Value) -> Value {
    s.post("/api/v1/steps", &spec).expect(201)
}

pub(crate) fn query(s: &TestServer, entity: &str) -> Vec<Value> {
    let c = s.post("/api/v1/query", &json!({"entity_name": entity})).expect(200);
    c["entities"].as_array().unwrap().clone()
}

#[test]
fn a_pre_operation_plugin_changes_the_record_or_rejects_it() {
    let s = server();
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    let created =
        s.post("/api/v1/entities/account", &json!({"name": "Contoso", "creditlimit": {"money": "100.00"}})).expect(201);
    let id = created["id"].as_str().unwrap();
    let record = s.get(&format!("/api/v1/entities/account/{id}")).expect(200);
    assert_eq!(record["attributes"]["accountnumber"], "AC-2D052440");
    assert_eq!(record["attributes"]["creditlimit"], json!({"money": "100.00"}));
    assert!(record["attributes"]["createdon"]["datetime"].is_string());

    let rejected = s.post("/api/v1/entities/account", &json!({"name": ""}));
    assert_eq!(rejected.status, 400);
    assert_eq!(rejected.code(), "plugin_error");
    assert!(
        rejected.body["error"]["message"].as_str().unwrap().starts_with("An account needs a name"),
        "{}",
        rejected.body
    );
    let negative = s.post("/api/v1/entities/account", &json!({"name": "N", "creditlimit": {"money": "-1"}}));
    assert_eq!(negative.status, 400);
    assert_eq!(query(&s, "account").len(), 1, "nothing of a rejected request is stored");
}

#[test]
fn a_failing_post_operation_plugin_rolls_back_the_whole_request() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation"]);
    register(&s, artifacts::HOSTILE, "hostile", &[]);
    add_step(
        &s,
        json!({"plugin": "hostile", "message": "Create", "entity": "account", "stage": "post-operation", "rank": 2, "configuration": "trap"}),
    );
    let failed = s.post("/api/v1/entities/account", &json!({"name": "Fabrikam"}));
    assert_eq!(failed.status, 500);
    assert_eq!(failed.code(), "trap");
    assert!(query(&s, "account").is_empty());
    assert!(query(&s, "task").is_empty(), "the task the first step created is rolled back too");
}

#[test]
fn post_operation_writes_commit_with_the_request() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation"]);
    let id =
        s.post("/api/v1/entities/account", &json!({"name": "Fabrikam"})).expect(201)["id"].as_str().unwrap().to_owned();
    let tasks = query(&s, "task");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["attributes"]["subject"], "Follow up with Fabrikam");
    assert_eq!(tasks[0]["attributes"]["regardingobjectid"]["reference"]["id"], id);
}

#[test]
fn images_filtering_attributes_and_shared_variables() {
    let s = server();
    register(&s, artifacts::PROBE, "probe", &[]);
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "pre-operation", "configuration": "share"}),
    );
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "post-operation", "configuration": "audit",
               "filtering_attributes": ["name"],
               "images": [{"kind": "pre", "alias": "before", "attributes": ["name"]}, {"kind": "post", "alias": "after", "attributes": ["name"]}]}),
    );
    let id = s.post("/api/v1/entities/account", &json!({"name": "Old"})).expect(201)["id"].as_str().unwrap().to_owned();

    // Not a filtering attribute: the audit step does not fire.
    s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"creditlimit": 5})).expect(200);
    assert!(query(&s, "audit").is_empty());
    // The same name again is no change either.
    s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"name": "Old"})).expect(200);
    assert!(query(&s, "audit").is_empty());

    s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"name": "New"})).expect(200);
    let audits = query(&s, "audit");
    assert_eq!(audits.len(), 1);
    let a = &audits[0]["attributes"];
    assert_eq!(
        (a["message"].as_str(), a["before"].as_str(), a["after"].as_str()),
        (Some("Update"), Some("Old"), Some("New"))
    );
    assert_eq!(a["note"], "shared by probe");
    assert_eq!(a["stage"], 3, "post-operation");
    assert_eq!(a["depth"], 1);
}

#[test]
fn a_plugin_that_updates_its_own_record_hits_the_depth_limit() {
    let s = server();
    register(&s, artifacts::PROBE, "probe", &[]);
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "post-operation", "configuration": "update-self"}),
    );
    let id =
        s.post("/api/v1/entities/account", &json!({"name": "Loop"})).expect(201)["id"].as_str().unwrap().to_owned();
    let looped = s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"name": "Loop 2"}));
    assert_eq!(looped.status, 400, "{}", looped.body);
    assert_eq!(looped.code(), "infinite_loop");
    assert!(looped.body["error"]["message"].as_str().unwrap().contains("maximum of 8"), "{}", looped.body);
    let record = s.get(&format!("/api/v1/entities/account/{id}")).expect(200);
    assert_eq!(record["attributes"]["name"], "Loop", "the looping update was rolled back");
    assert!(record["attributes"].get("description").is_none());
}

#[test]
fn a_custom_message_is_implemented_by_a_main_operation_plugin() {
    let s = server();
    register(&s, artifacts::PROBE, "probe", &[]);
    add_step(
        &s,
        json!({"plugin": "probe", "message": "acme_Greet", "stage": "main-operation", "configuration": "greet"}),
    );
    let out = s.post("/api/v1/messages/acme_Greet", &json!({"parameters": {"Name": "Ada"}})).expect(200);
    assert_eq!(out["parameters"]["Greeting"], "Hello, Ada!");
    let missing = s.post("/api/v1/messages/acme_Greet", &json!({"parameters": {}}));
    assert_eq!((missing.status, missing.code()), (400, "plugin_error"));
    let unknown = s.post("/api/v1/messages/acme_Nothing", &json!({}));
    assert_eq!((unknown.status, unknown.code()), (404, "unknown_message"));
}

#[test]
fn async_steps_queue_one_job_per_step_per_committed_change() {
    let s = server_with(&[("PLUGHOST_WORKERS", "0")]);
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    register(
        &s,
        artifacts::FOLLOW_UP_TASK,
        "follow-up",
        &["Create:account:post-operation:async", "Create:task:post-operation:async"],
    );
    add_step(
        &s,
        json!({"plugin": "follow-up", "message": "Create", "entity": "account", "stage": "post-operation", "mode": "asynchronous", "disabled": true}),
    );
    let mut ids = Vec::new();
    for name in ["A", "B", "C"] {
        ids.push(
            s.post("/api/v1/entities/account", &json!({"name": name})).expect(201)["id"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(s.post("/api/v1/entities/account", &json!({"name": ""})).status, 400);
    let jobs = s.get("/api/v1/jobs").expect(200);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 3, "one job per committed create, none for the rejected one, none for the disabled step");
    for (job, id) in jobs.iter().zip(&ids) {
        assert_eq!(job["status"], "WaitingForResources");
        assert_eq!(job["regarding"]["id"], *id);
        assert_eq!(job["context"]["mode"], "asynchronous");
        assert_eq!(job["context"]["output_parameters"]["id"], json!({"guid": id}));
    }
    let sequences: Vec<u64> = jobs.iter().map(|j| j["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, vec![1, 2, 3]);
    // The CLI sees the same jobs through the running server.
    let listed = s.run(&["jobs", "list", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[test]
fn concurrent_writers_share_commits_and_every_record_is_right() {
    let s = server();
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    let s = std::sync::Arc::new(s);
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    s.post("/api/v1/entities/account", &json!({"name": format!("w{w}-{i}")})).expect(201);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let all = s.post("/api/v1/query", &json!({"entity_name": "account", "page_size": 5000})).expect(200);
    let all = all["entities"].as_array().unwrap();
    assert_eq!(all.len(), 320);
    let mut names: Vec<&str> = all.iter().map(|e| e["attributes"]["name"].as_str().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 320);
    assert!(all.iter().all(|e| e["attributes"]["accountnumber"].as_str().unwrap().starts_with("AC-")));
}

#[test]
fn paging_walks_every_record_once() {
    let s = server();
    for i in 0..25 {
        s.post("/api/v1/entities/account", &json!({"name": format!("n{i:02}")})).expect(201);
    }
    let mut seen = Vec::new();
    let mut cookie: Option<String> = None;
    loop {
        let mut q = json!({"entity_name": "account", "page_size": 10, "columns": ["name"]});
        if let Some(c) = &cookie {
            q["paging_cookie"] = json!(c);
        }
        let page = s.post("/api/v1/query", &q).expect(200);
        seen.extend(
            page["entities"].as_array().unwrap().iter().map(|e| e["attributes"]["name"].as_str().unwrap().to_owned()),
        );
        match page["paging_cookie"].as_str() {
            Some(c) => cookie = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..25).map(|i| format!("n{i:02}")).collect::<Vec<_>>());
    let ordered = s
        .post("/api/v1/query", &json!({"entity_name": "account", "orders": [{"attribute": "name", "descending": true}], "top": 3,
                                        "criteria": {"conditions": [{"attribute": "name", "operator": "like", "values": ["n1%"]}]}}))
        .expect(200);
    let names: Vec<&str> =
        ordered["entities"].as_array().unwrap().iter().map(|e| e["attributes"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["n19", "n18", "n17"]);
}

#[test]
fn bad_requests_get_clear_json_errors_and_change_nothing() {
    let s = TestServer::start_with(BIN, &[("PLUGHOST_MAX_BODY_BYTES", "4096")]);
    s.put("/api/v1/metadata/entities/account", &json!({"attributes": {"name": "text", "size": "integer"}})).expect(200);
    let cases = [
        (s.post_raw("/api/v1/entities/account", b"{not json"), 400, "bad_json"),
        (s.post("/api/v1/entities/account", &json!({"name": "x".repeat(10_000)})), 413, "payload_too_large"),
        (s.post("/api/v1/entities/nothing", &json!({"name": "A"})), 404, "unknown_entity"),
        (s.post("/api/v1/entities/account", &json!({"colour": "red"})), 400, "invalid"),
        (s.post("/api/v1/entities/account", &json!({"size": "big"})), 400, "invalid"),
        (s.post("/api/v1/entities/account", &json!({"size": {"money": "1,5"}})), 400, "bad_json"),
        (s.get("/api/v1/entities/account/not-a-guid"), 400, "invalid"),
        (s.get("/api/v1/entities/account/6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01"), 404, "not_found"),
        (s.get("/api/v1/nowhere"), 404, "not_found"),
        (s.get_anonymous("/api/v1/plugins"), 401, "unauthorized"),
        (s.put("/api/v1/metadata/entities/account", &json!({"attributes": {"name": "integer"}})), 409, "conflict"),
        (
            s.raw(
                &[("Authorization", &format!("Bearer {}", s.token)), ("Content-Type", "application/wasm")],
                "POST",
                "/api/v1/assemblies?name=junk",
                b"not wasm",
            ),
            400,
            "not_wasm",
        ),
    ];
    for (i, (reply, status, code)) in cases.into_iter().enumerate() {
        assert_eq!((reply.status, reply.code()), (status, code), "case {i}: {}", reply.body);
        assert!(!reply.body["error"]["message"].as_str().unwrap_or("").is_empty(), "case {i} has a message");
    }
    assert!(query(&s, "account").is_empty());
    assert_eq!(s.get("/api/v1/plugins").expect(200), json!([]));
}

#[test]
fn the_cli_works_through_the_server_and_sigterm_stops_it_cleanly() {
    let mut s = server();
    // The server holds the store; the CLI finds it through the data directory.
    s.run(&["register", artifacts::ACCOUNT_NUMBER, "--name", "account-number", "--step", "Create:account:20"]).ok();
    let created = s.run(&["entities", "create", "account", "--set", "name=Contoso", "--json"]).ok().json();
    let id = created["id"].as_str().unwrap();
    let got = s.run(&["entities", "get", "account", id, "--json"]).ok().json();
    assert_eq!(got["attributes"]["accountnumber"], "AC-2D052440");
    let rejected = s.run(&["entities", "create", "account", "--set", "name="]).expect_code(1);
    assert!(rejected.stderr.contains("error[plugin_error]: An account needs a name"), "{}", rejected.stderr);
    let listed = s.run(&["entities", "query", "account", "--where", "name:like:Con%", "--json"]).ok().json();
    assert_eq!(listed["entities"].as_array().unwrap().len(), 1);
    let status = s.run(&["status", "--json"]).ok().json();
    assert_eq!(status["server"]["url"], s.url);

    let server_file = s.cli.data_dir().join("server.json");
    assert!(server_file.exists());
    assert_eq!(s.terminate(), Some(0));
    assert!(!server_file.exists(), "a stopped server removes its address file");
}

/// Registers `wasm` as a pre-operation Create step of `account` with `config`; then
/// `good` is stored with `attribute` = `expected`, and `bad` is refused with
/// `plugin_error` naming `why`, and not stored.
fn assert_pre_operation_step(
    s: &TestServer,
    wasm: &str,
    config: &str,
    good: Value,
    expected: (&str, &str),
    bad: Value,
    why: &str,
) {
    s.run(&["register", wasm, "--name", "guest", "--step", "Create:account:pre-operation", "--config", config]).ok();
    let id = s.post("/api/v1/entities/account", &good).expect(201)["id"].as_str().unwrap().to_owned();
    let record = s.get(&format!("/api/v1/entities/account/{id}")).expect(200);
    assert_eq!(record["attributes"][expected.0], expected.1);
    let refused = s.post("/api/v1/entities/account", &bad);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.code(), "plugin_error");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains(why), "{}", refused.body);
    assert_eq!(query(s, "account").len(), 1, "the refused record was not stored");
}

#[test]
fn a_python_plugin_runs_in_the_pipeline_like_a_rust_one() {
    assert_pre_operation_step(
        &server(),
        artifacts::CREDIT_CHECK_PY.build(BIN),
        "5000",
        json!({"name": "Contoso", "creditlimit": {"money": "1200.00"}}),
        ("description", "credit checked (max 5000) in Python"),
        json!({"name": "Fabrikam", "creditlimit": {"money": "9000"}}),
        "above the maximum of 5000",
    );
}

#[test]
fn a_javascript_plugin_runs_in_the_pipeline_like_a_rust_one() {
    assert_pre_operation_step(
        &server(),
        artifacts::NAME_NORMALIZER_JS.build(BIN),
        "20",
        json!({"name": "  contoso   LTD "}),
        ("name", "Contoso Ltd"),
        json!({"name": "a name much longer than twenty"}),
        "at most 20 are allowed",
    );
}

#[test]
fn the_quickjs_build_of_the_javascript_plugin_runs_like_the_default_one() {
    assert_pre_operation_step(
        &server(),
        artifacts::NAME_NORMALIZER_QUICKJS.build(BIN),
        "20",
        json!({"name": "  contoso   LTD "}),
        ("name", "Contoso Ltd"),
        json!({"name": "a name much longer than twenty"}),
        "at most 20 are allowed",
    );
}

#[test]
fn a_c_plugin_runs_in_the_pipeline_like_a_rust_one() {
    // Duplicate detection: the second Contoso is refused after a query through the service.
    assert_pre_operation_step(
        &server(),
        artifacts::DUPLICATE_CHECK_C.build(BIN),
        "no duplicate (checked in C)",
        json!({"name": "Contoso"}),
        ("description", "no duplicate (checked in C)"),
        json!({"name": "Contoso"}),
        "An account named 'Contoso' exists already",
    );
}

#[test]
fn a_go_plugin_runs_in_the_pipeline_like_a_rust_one() {
    assert_pre_operation_step(
        &server(),
        artifacts::NAME_POLICY_GO.build(BIN),
        "4",
        json!({"name": "Contoso"}),
        ("name", "Contoso"),
        json!({"name": "Abc"}),
        "needs at least 4 characters",
    );
}
