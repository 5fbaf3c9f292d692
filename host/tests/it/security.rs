//! Who is calling, tried from outside against a real server: keys, roles per route,
//! records per owner (through the API, a query and a plug-in), run-as, revocation,
//! the audit log, and what a browser page or a DNS-rebinding attacker can do.

use plughost_test_support::{TestCommand, TestServer, artifacts};
use serde_json::{Value, json};

use super::BIN;
use super::server::{add_step, register, server_with};

/// A user with `roles` and a key of it, made through the CLI on the running server.
fn user_with_key(s: &TestServer, name: &str, roles: &[&str]) -> String {
    let mut args = vec!["users", "create", name, "--json"];
    for r in roles {
        args.extend(["--role", r]);
    }
    s.run(&args).ok();
    let key = s.run(&["keys", "create", "--user", name, "--label", "tests", "--json"]).ok().json();
    key["secret"].as_str().expect("a key's secret").to_owned()
}

fn names(reply: Value) -> Vec<String> {
    let mut out: Vec<String> = reply["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .filter_map(|e| e["attributes"]["name"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// A server with the probe's `acme_Whoami` and `acme_Peek` messages, and
/// `acme_PeekAsAdmin`, which runs as the admin user whoever calls it.
fn probe_server() -> TestServer {
    let s = server_with(&[("PLUGHOST_WORKERS", "0")]);
    register(&s, artifacts::PROBE, "probe", &[]);
    for (message, configuration, run_as) in
        [("acme_Whoami", "whoami", None), ("acme_Peek", "peek", None), ("acme_PeekAsAdmin", "peek", Some("admin"))]
    {
        let mut spec =
            json!({"plugin": "probe", "message": message, "stage": "main-operation", "configuration": configuration});
        if let Some(u) = run_as {
            spec["run_as"] = json!(u);
        }
        add_step(&s, spec);
    }
    s
}

#[test]
fn a_basic_user_reaches_only_its_own_records_through_the_api_a_query_and_a_plugin() {
    let s = probe_server();
    let ann = user_with_key(&s, "ann", &["basic-user"]);
    let bob = user_with_key(&s, "bob", &["basic-user"]);
    let create = |key: &str, name: &str| {
        s.call_as(key, "POST", "/api/v1/entities/account", Some(&json!({"name": name}))).expect(201)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ann_1 = create(&ann, "Ann 1");
    create(&ann, "Ann 2");
    let bob_1 = create(&bob, "Bob 1");

    // The record says who owns, created and modified it.
    let record = s.call_as(&ann, "GET", &format!("/api/v1/entities/account/{ann_1}"), None).expect(200);
    let ann_id = s
        .run(&["users", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ann")
        .unwrap()["id"]
        .clone();
    for attribute in ["ownerid", "createdby", "modifiedby"] {
        assert_eq!(record["attributes"][attribute]["reference"]["id"], ann_id, "{attribute}: {record}");
    }

    // Another user's record: not readable, writable or deletable, and nothing changes.
    let path = format!("/api/v1/entities/account/{bob_1}");
    for (method, body) in [("GET", None), ("PATCH", Some(json!({"name": "Taken"}))), ("DELETE", None)] {
        let r = s.call_as(&ann, method, &path, body.as_ref());
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{method}: {}", r.body);
        let m = r.body["error"]["message"].as_str().unwrap();
        assert!(m.contains("'ann'") && m.contains("account") && m.contains("user depth"), "{m}");
    }
    assert_eq!(s.get(&path).expect(200)["attributes"]["name"], "Bob 1");
    // Taking a record over needs organization-level write.
    let r = s.call_as(
        &ann,
        "PATCH",
        &format!("/api/v1/entities/account/{ann_1}"),
        Some(&json!({"ownerid": {"reference": {"logical_name": "systemuser", "id": uuid::Uuid::nil()}}})),
    );
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);

    // A query and a list see only the caller's records; the admin sees all.
    let q = json!({"entity_name": "account"});
    assert_eq!(names(s.call_as(&ann, "POST", "/api/v1/query", Some(&q)).expect(200)), ["Ann 1", "Ann 2"]);
    assert_eq!(names(s.call_as(&bob, "GET", "/api/v1/entities/account", None).expect(200)), ["Bob 1"]);
    assert_eq!(names(s.post("/api/v1/query", &q).expect(200)), ["Ann 1", "Ann 2", "Bob 1"]);

    // A plug-in running as the caller reads what the caller may read; a step that
    // runs as the admin reads everything, and knows who started the chain.
    let peek = |key: &str, message: &str| {
        s.call_as(
            key,
            "POST",
            &format!("/api/v1/messages/{message}"),
            Some(&json!({"parameters": {"Entity": "account"}})),
        )
        .expect(200)["parameters"]["Names"]
            .clone()
    };
    assert_eq!(peek(&ann, "acme_Peek"), "Ann 1,Ann 2");
    assert_eq!(peek(&bob, "acme_Peek"), "Bob 1");
    assert_eq!(peek(&ann, "acme_PeekAsAdmin"), "Ann 1,Ann 2,Bob 1");
    // The key's user, as the API and the CLI say.
    let me = s.call_as(&ann, "GET", "/api/v1/whoami", None).expect(200);
    assert_eq!(
        (me["user_id"].clone(), me["name"].clone(), me["roles"].clone()),
        (ann_id.clone(), json!("ann"), json!(["basic-user"]))
    );
    let me = s.run(&["--key", &ann, "whoami", "--json"]).ok().json();
    assert_eq!(me["name"], "ann");
    let who = s.call_as(&ann, "POST", "/api/v1/messages/acme_Whoami", Some(&json!({}))).expect(200);
    assert_eq!(who["parameters"]["UserId"], ann_id);
    assert_eq!(who["parameters"]["InitiatingUserId"], ann_id);

    // A bulk delete runs as its user: Ann's query of every account deletes hers only.
    let job =
        s.call_as(&ann, "POST", "/api/v1/bulk/delete", Some(&json!({"query": {"entity_name": "account"}}))).expect(201);
    let job_id = job["id"].as_str().unwrap().to_owned();
    // Users see their own jobs only; the admin sees all.
    let r = s.call_as(&bob, "GET", &format!("/api/v1/jobs/{job_id}"), None);
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.body);
    assert!(s.call_as(&bob, "GET", "/api/v1/jobs", None).expect(200).as_array().unwrap().is_empty());
    let mine = s.call_as(&ann, "GET", "/api/v1/jobs", None).expect(200);
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["createdby"], ann_id, "{mine}");
    assert_eq!(s.get(&format!("/api/v1/jobs/{job_id}")).expect(200)["id"], job_id.as_str());
    s.post("/api/v1/service/resume", &json!({})).expect(200);
    drop(s);
}

#[test]
fn a_bulk_delete_deletes_what_its_user_owns() {
    let s = server_with(&[]);
    let ann = user_with_key(&s, "ann", &["basic-user"]);
    s.post("/api/v1/entities/account", &json!({"name": "Admin's"})).expect(201);
    s.call_as(&ann, "POST", "/api/v1/entities/account", Some(&json!({"name": "Ann's"}))).expect(201);
    let job =
        s.call_as(&ann, "POST", "/api/v1/bulk/delete", Some(&json!({"query": {"entity_name": "account"}}))).expect(201);
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let j = s.call_as(&ann, "GET", &format!("/api/v1/jobs/{id}"), None).expect(200);
        if j["status"] == "Succeeded" {
            assert_eq!((j["output"]["Succeeded"].as_u64(), j["output"]["Failed"].as_u64()), (Some(1), Some(0)), "{j}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bulk delete did not finish: {j}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(names(s.post("/api/v1/query", &json!({"entity_name": "account"})).expect(200)), ["Admin's"]);
}

#[test]
fn every_route_checks_the_caller_key_and_role() {
    let s = probe_server();
    let admin = s.token.clone();
    let worker = std::fs::read_to_string(s.cli.data_dir().join("worker-token")).unwrap().trim().to_owned();
    let customizer = user_with_key(&s, "cus", &["system-customizer"]);
    let basic = user_with_key(&s, "bas", &["basic-user"]);
    let record =
        s.post("/api/v1/entities/account", &json!({"name": "Admin's"})).expect(201)["id"].as_str().unwrap().to_owned();
    let job = s.post("/api/v1/bulk/delete", &json!({"query": {"entity_name": "task"}})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let step = s.get("/api/v1/steps").expect(200)[0]["id"].as_str().unwrap().to_owned();
    let key_id = s.run(&["keys", "list", "--user", "bas", "--json"]).ok().json()[0]["id"].as_str().unwrap().to_owned();

    // (method, path, body, who may call it: A admin, C customizer, B basic user, W worker)
    let rec = format!("/api/v1/entities/account/{record}");
    let hello = json!({"protocol": plughost::protocol::PROTOCOL_VERSION, "name": "m", "host": "h", "pid": 1, "version": "0", "workers": 1});
    let routes: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("GET", "/metrics".into(), None, "ACBW"),
        ("POST", "/api/v1/entities/account".into(), Some(json!({"name": "N"})), "AB"),
        ("GET", rec.clone(), None, "A"),
        ("PATCH", rec.clone(), Some(json!({"name": "M"})), "A"),
        ("GET", "/api/v1/entities/account".into(), None, "AB"),
        ("POST", "/api/v1/query".into(), Some(json!({"entity_name": "account"})), "AB"),
        ("POST", "/api/v1/messages/acme_Whoami".into(), Some(json!({})), "AB"),
        ("GET", "/api/v1/assemblies".into(), None, "AC"),
        ("POST", "/api/v1/assemblies?name=junk".into(), Some(json!({"wasm": "not wasm"})), "AC"),
        ("DELETE", format!("/api/v1/assemblies/{}", "0".repeat(64)), None, "AC"),
        ("GET", "/api/v1/plugins".into(), None, "AC"),
        ("GET", "/api/v1/plugins/probe".into(), None, "AC"),
        ("DELETE", "/api/v1/plugins/nothing".into(), None, "AC"),
        ("GET", "/api/v1/steps".into(), None, "AC"),
        ("POST", "/api/v1/steps".into(), Some(json!({"plugin": "nothing", "message": "Create"})), "AC"),
        ("GET", format!("/api/v1/steps/{step}"), None, "AC"),
        ("POST", format!("/api/v1/steps/{step}/disable"), None, "AC"),
        ("POST", format!("/api/v1/steps/{step}/enable"), None, "AC"),
        ("DELETE", "/api/v1/steps/nothing".into(), None, "AC"),
        ("GET", "/api/v1/metadata/entities".into(), None, "ACB"),
        ("PUT", "/api/v1/metadata/entities/account".into(), Some(json!({"attributes": {"name": "text"}})), "AC"),
        ("GET", "/api/v1/jobs".into(), None, "ACB"),
        ("POST", "/api/v1/jobs".into(), Some(json!({"step": "nothing"})), "ACB"),
        ("GET", format!("/api/v1/jobs/{job}"), None, "A"),
        ("POST", format!("/api/v1/jobs/{job}/pause"), None, "A"),
        ("POST", "/api/v1/bulk/delete".into(), Some(json!({"query": {"entity_name": "nothing"}})), "ACB"),
        ("POST", "/api/v1/bulk/import?entity=account".into(), Some(json!({"csv": "name\nImported\n"})), "ACB"),
        ("POST", format!("/api/v1/jobs/{job}/resume"), None, "A"),
        ("GET", "/api/v1/service".into(), None, "ACB"),
        ("POST", "/api/v1/service/pause".into(), None, "A"),
        ("POST", "/api/v1/service/resume".into(), None, "A"),
        ("GET", "/api/v1/workers".into(), None, "A"),
        ("GET", "/api/v1/users".into(), None, "A"),
        ("POST", "/api/v1/users".into(), Some(json!({"name": "x!"})), "A"),
        ("POST", "/api/v1/users/bas/roles".into(), Some(json!({})), "A"),
        ("POST", "/api/v1/users/nobody/disable".into(), None, "A"),
        ("GET", "/api/v1/keys".into(), None, "A"),
        ("POST", "/api/v1/keys".into(), Some(json!({"user": "nobody"})), "A"),
        ("GET", "/api/v1/roles".into(), None, "A"),
        ("POST", "/api/v1/roles".into(), Some(json!({"name": "x!"})), "A"),
        ("POST", "/api/v1/roles/basic-user/grant".into(), Some(json!({})), "A"),
        ("GET", "/api/v1/audit".into(), None, "A"),
        ("GET", "/api/v1/whoami".into(), None, "ACBW"),
        ("GET", "/api/v1/worker/registry".into(), None, "W"),
        ("POST", "/api/v1/worker/hello".into(), Some(hello.clone()), "W"),
        ("GET", format!("/api/v1/worker/assemblies/{}", "0".repeat(64)), None, "W"),
        ("POST", "/api/v1/worker/heartbeat".into(), Some(json!({"worker": uuid::Uuid::nil(), "held": []})), "W"),
        ("DELETE", format!("/api/v1/jobs/{job}"), None, "A"),
        ("DELETE", rec.clone(), None, "A"),
        ("POST", format!("/api/v1/keys/{key_id}/revoke"), None, "A"),
    ];
    let callers = [('A', admin.as_str()), ('C', customizer.as_str()), ('B', basic.as_str()), ('W', worker.as_str())];
    let mut checked = 0;
    for (method, path, body, allowed) in &routes {
        let anonymous = s.raw(&[], method, path, b"");
        assert_eq!((anonymous.status, anonymous.code()), (401, "unauthorized"), "anonymous {method} {path}");
        // The last route revokes the basic user's key: call it last for the others.
        for (who, key) in callers.iter().rev() {
            // A connection per call: a refused request's body is not read, so its connection closes.
            let auth = format!("Bearer {key}");
            let r = match body {
                // An upload or an import: its own media type.
                Some(b) if b.get("wasm").is_some() || b.get("csv").is_some() => {
                    let (media, text) = match b.get("wasm") {
                        Some(w) => ("application/wasm", w.as_str().unwrap()),
                        None => ("text/csv", b["csv"].as_str().unwrap()),
                    };
                    s.raw(&[("Authorization", &auth), ("Content-Type", media)], method, path, text.as_bytes())
                }
                Some(b) => s.raw(
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    method,
                    path,
                    &serde_json::to_vec(b).unwrap(),
                ),
                None => s.raw(&[("Authorization", &auth)], method, path, b""),
            };
            if allowed.contains(*who) {
                assert!(
                    ![401, 403].contains(&r.status),
                    "{who} {method} {path} is allowed, got {} {}",
                    r.status,
                    r.body
                );
            } else {
                assert_eq!((r.status, r.code()), (403, "forbidden"), "{who} {method} {path}: {}", r.body);
                let m = r.body["error"]["message"].as_str().unwrap();
                assert!(
                    ["lacks", "may ", "does not reach", "no privilege"].iter().any(|w| m.contains(w)),
                    "{who} {method} {path}: the message names what is missing: {m}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * 4);
    assert_eq!(s.get_anonymous("/healthz").status, 200, "only /healthz needs no key");
    // The revoked key stops working at once.
    let r = s.call_as(&basic, "GET", "/api/v1/jobs", None);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("revoked"), "{}", r.body);
}

#[test]
fn keys_are_stored_hashed_and_revocations_and_disabled_users_apply_at_once() {
    let s = server_with(&[]);
    let key = user_with_key(&s, "ann", &["basic-user"]);
    s.call_as(&key, "GET", "/api/v1/entities/account", None).expect(200);
    // Disabled: refused at once; enabled again: accepted.
    s.run(&["users", "disable", "ann"]).ok();
    let r = s.call_as(&key, "GET", "/api/v1/entities/account", None);
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("disabled"), "{}", r.body);
    s.run(&["users", "enable", "ann"]).ok();
    s.call_as(&key, "GET", "/api/v1/entities/account", None).expect(200);
    let listed = s.run(&["keys", "list", "--json"]).ok().json();
    assert!(!listed.to_string().contains(&key), "a listing never shows a secret");
    let id = listed.as_array().unwrap().iter().find(|k| k["user"] == "ann").unwrap()["id"].as_str().unwrap().to_owned();
    s.run(&["keys", "revoke", &id]).ok();
    let r = s.call_as(&key, "GET", "/api/v1/entities/account", None);
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    // An expiring key works until its time, then not.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let expiring =
        s.run(&["keys", "create", "--user", "ann", "--expires", &soon.to_rfc3339(), "--json"]).ok().json()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
    s.call_as(&expiring, "GET", "/api/v1/entities/account", None).expect(200);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let r = s.call_as(&expiring, "GET", "/api/v1/entities/account", None);
    assert_eq!((r.status, r.code()), (401, "unauthorized"), "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("expired"), "{}", r.body);
    // A bad expiry is refused, and nothing is made.
    let bad = s.run(&["keys", "create", "--user", "ann", "--expires", "yesterday"]).expect_code(1);
    assert!(bad.stderr.contains("bad expiry"), "{}", bad.stderr);
    assert_eq!(s.run(&["keys", "list", "--user", "ann", "--json"]).ok().json().as_array().unwrap().len(), 2);
    if s.cli.store().is_none() {
        let mut s = s;
        s.terminate();
        let file = std::fs::read(s.cli.data_dir().join("plughost.redb")).unwrap();
        assert!(!file.windows(key.len()).any(|w| w == key.as_bytes()), "the key is not in the store file");
        let token = s.token.clone();
        assert!(!file.windows(token.len()).any(|w| w == token.as_bytes()), "nor is the admin token");
    }
}

#[test]
fn administrative_actions_are_audited_with_who_and_how_they_ended() {
    let s = server_with(&[]);
    let cus = user_with_key(&s, "cus", &["system-customizer"]);
    register(&s, artifacts::PROBE, "probe", &[]);
    s.call_as(&cus, "PUT", "/api/v1/metadata/entities/contact", Some(&json!({"attributes": {"name": "text"}})))
        .expect(200);
    s.call_as(&cus, "DELETE", "/api/v1/steps/nothing", None).expect(404);
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    let r = s.call_as(&cus, "GET", "/api/v1/audit", None);
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let log = s.run(&["audit", "list", "--json", "--limit", "100"]).ok().json();
    let entries = log.as_array().unwrap();
    let find =
        |action: &str| entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action} in {log}"));
    assert_eq!(find("register")["user"], "admin");
    assert_eq!(find("register")["target"], "probe");
    assert_eq!(find("entities.define")["user"], "cus");
    assert_eq!(find("steps.remove")["outcome"], "not_found");
    assert_eq!(find("service.pause")["outcome"], "ok");
    assert_eq!(find("users.create")["target"], "cus");
    assert_eq!(find("keys.create")["target"], "cus");
    // Newest first.
    assert_eq!(entries[0]["action"], "service.pause", "{log}");
}

#[test]
fn a_browser_page_and_a_rebinding_dns_name_cannot_use_the_api() {
    let s = server_with(&[]);
    let auth = format!("Bearer {}", s.token);
    let body = br#"{"name": "Planted"}"#;
    // A form-like cross-site POST: refused for its origin, and for its type.
    let r = s.raw(
        &[("Content-Type", "text/plain"), ("Origin", "http://evil.example"), ("Authorization", &auth)],
        "POST",
        "/api/v1/entities/account",
        body,
    );
    assert_eq!((r.status, r.code()), (403, "forbidden_origin"), "{}", r.body);
    let r =
        s.raw(&[("Content-Type", "text/plain"), ("Authorization", &auth)], "POST", "/api/v1/entities/account", body);
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"), "{}", r.body);
    let r = s.raw(
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Authorization", &auth)],
        "POST",
        "/api/v1/entities/account",
        body,
    );
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"), "{}", r.body);
    // A foreign Host (DNS rebinding) is refused even with a key, also for reads.
    let r = s.raw(&[("Host", "evil.example:7171"), ("Authorization", &auth)], "GET", "/api/v1/entities/account", b"");
    assert_eq!((r.status, r.code()), (421, "bad_host"), "{}", r.body);
    let r = s.raw(&[("Host", "evil.example")], "GET", "/healthz", b"");
    assert_eq!(r.status, 421);
    // A CORS preflight from a foreign origin gets no permission.
    let r = s.raw(
        &[("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")],
        "OPTIONS",
        "/api/v1/entities/account",
        b"",
    );
    assert_eq!(r.status, 403);
    // The caller cannot choose its user by a header.
    let r = s.raw(
        &[
            ("x-plughost-user", &uuid::Uuid::new_v4().to_string()),
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        "POST",
        "/api/v1/entities/account",
        body,
    );
    assert_eq!((r.status, r.code()), (400, "invalid"), "{}", r.body);
    // None of it stored anything.
    assert!(names(s.post("/api/v1/query", &json!({"entity_name": "account"})).expect(200)).is_empty());
    // The server's own origin and localhost names are fine.
    let own = s.url.clone();
    s.raw(
        &[("Origin", &own), ("Content-Type", "application/json"), ("Authorization", &auth)],
        "POST",
        "/api/v1/entities/account",
        body,
    )
    .expect(201);
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    s.raw(&[("Host", &format!("localhost:{port}")), ("Authorization", &auth)], "GET", "/api/v1/entities/account", b"")
        .expect(200);
}

#[test]
fn serving_plain_http_beyond_loopback_needs_insecure() {
    let cli = TestCommand::new(BIN);
    let refused = cli.run(&["serve", "--listen", "0.0.0.0:0"]).expect_code(1);
    assert!(
        refused.stderr.contains("not a loopback address") && refused.stderr.contains("--insecure"),
        "{}",
        refused.stderr
    );
    let cli2 = TestCommand::new(BIN);
    let mut s = TestServer::start_at(BIN, cli2, &[("PLUGHOST_INSECURE", "true")], "0.0.0.0:0");
    // Listening beyond loopback, any Host is answered (a proxy's name).
    let r = s.raw(&[("Host", "plughost.internal")], "GET", "/healthz", b"");
    assert_eq!(r.status, 200);
    s.terminate();
}

/// A CA and a certificate it signed for localhost and 127.0.0.1, made with openssl.
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output();
        let out = out.expect("openssl (Debian's openssl package) makes the test certificates");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=plughost test CA"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    let path = |f: &str| dir.join(f).display().to_string();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

#[test]
fn serve_speaks_https_from_a_configured_certificate_and_the_cli_trusts_its_ca() {
    let cli = TestCommand::new(BIN);
    let (ca, cert, key) = test_certificates(cli.data_dir());
    cli.write("plughost.toml", &format!("[tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n"));
    // With TLS, a non-loopback address needs no --insecure.
    let mut s = TestServer::start_at(BIN, cli, &[], "0.0.0.0:0");
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");
    // The CLI trusts the configured CA and reaches the server with the admin token.
    let users = s.run(&["--server", &https, "users", "list", "--json"]).ok().json();
    assert!(users.as_array().unwrap().iter().any(|u| u["name"] == "admin"), "{users}");
    // Without the CA the certificate is refused; plain HTTP gets no API.
    s.cli.write("plughost.toml", &format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"));
    let refused = s.run(&["--server", &https, "users", "list"]).expect_code(1);
    assert!(refused.stderr.contains("unreachable"), "{}", refused.stderr);
    let plain = s.run(&["--server", &format!("http://127.0.0.1:{port}"), "users", "list"]).expect_code(1);
    assert!(!plain.stdout.contains("admin"), "{}", plain.stdout);
    // A certificate without its key is a clear error at start.
    let broken = TestCommand::new(BIN);
    broken.write("plughost.toml", &format!("[tls]\ncert = {cert:?}\n"));
    let out = broken.run(&["serve", "--listen", "127.0.0.1:0"]).expect_code(1);
    assert!(out.stderr.contains("tls.cert and tls.key go together"), "{}", out.stderr);
    s.terminate();
}
