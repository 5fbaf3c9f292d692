//! Several `plughost serve` processes on one PostgreSQL database: each serves the
//! data API and runs workers; SIGKILL one at random under load, and every
//! acknowledged request is stored once and every job completes exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plughost_test_support::{TestCommand, TestServer, artifacts, postgres};
use serde_json::{Value, json};

use super::BIN;
use super::crash::{Lcg, assert_exactly_once, follow_up_setup, load, query_all, wait_all_succeeded};

const ENV: &[(&str, &str)] = &[("PLUGHOST_LEASE_MS", "1000"), ("PLUGHOST_WORKERS", "2")];

/// The database of a shared-store test (PostgreSQL is required under `CI=true`).
fn shared_database() -> Option<String> {
    let Some(pg) = postgres::server() else {
        eprintln!("PostgreSQL is not installed: the shared-store tests are not run");
        return None;
    };
    Some(pg.database())
}

#[test]
fn two_servers_on_one_database_killed_at_random_run_every_job_exactly_once() {
    let Some(url) = shared_database() else { return };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("shared-store crash seed {seed}");
    let mut rng = Lcg(seed);
    let a = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    let mut b = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    // Registered on one server; the other follows the shared registry within a second.
    follow_up_setup(&a, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = b.post("/api/v1/entities/account", &json!({"name": "probe"})).expect(201);
        let id = probe["id"].as_str().unwrap();
        let record = b.get(&format!("/api/v1/entities/account/{id}")).expect(200);
        if record["attributes"]["accountnumber"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the second server never saw the registration: {record:#}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Both servers run jobs: each one's workers take what its own requests queue at
    // once, and poll for the rest.
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.post("/api/v1/entities/account", &json!({"name": format!("warm-up {i}")})).expect(201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.get("/api/v1/jobs?limit=5000").expect(200).as_array().unwrap().iter().any(|j| j["status"] != "Succeeded") {
        assert!(Instant::now() < deadline, "the warm-up jobs did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (on_a, on_b) = (
        super::queue::metric(&a, "plughost_jobs_succeeded_total"),
        super::queue::metric(&b, "plughost_jobs_succeeded_total"),
    );
    assert!(on_a > 0 && on_b > 0, "both servers ran jobs: {on_a} and {on_b}");

    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let s = if i % 2 == 0 { &a } else { &b };
                load(s.url.clone(), s.token.clone(), stop.clone())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
        let cli = b.kill();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            acknowledged.extend(w.join().unwrap());
        }
        eprintln!("round {round}: one server killed with {} creates acknowledged so far", acknowledged.len());
        b = TestServer::start_in(BIN, cli, ENV);
    }

    let jobs = wait_all_succeeded(&a, Duration::from_secs(120));
    // Probes created before the second server saw the registration ran no step.
    let accounts: Vec<String> = query_all(&a, "account")
        .iter()
        .filter(|e| e["attributes"]["accountnumber"].is_string())
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(accounts.len() >= 50, "the load made too few accounts ({}) to mean anything", accounts.len());
    assert_exactly_once(&a, &accounts, &acknowledged, &jobs);
    // A pause on one server holds the other's workers too.
    a.post("/api/v1/service/pause", &json!({})).expect(200);
    std::thread::sleep(Duration::from_millis(1500));
    let status = b.get("/api/v1/service").expect(200);
    assert_eq!(status["paused"], true, "{status:#}");
}

#[test]
fn an_embedded_store_is_copied_into_postgresql_and_served_from_there() {
    let Some(url) = shared_database() else { return };
    let src = TestCommand::embedded(BIN);
    src.run(&["entities", "define", "account", "--attr", "name:text", "--attr", "accountnumber:text"]).ok();
    src.run(&[
        "entities",
        "define",
        "task",
        "--attr",
        "subject:text",
        "--attr",
        "regardingobjectid:reference",
        "--attr",
        "scheduledend:datetime",
    ])
    .ok();
    src.run(&[
        "register",
        artifacts::FOLLOW_UP_TASK,
        "--name",
        "follow-up",
        "--step",
        "Create:account:post-operation:async",
    ])
    .ok();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            src.run(&["--json", "entities", "create", "account", "--set", &format!("name=copied {i}")]).ok().json()
                    ["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
        })
        .collect();

    let copy =
        src.run(&["--json", "store", "copy", "--from", src.data_dir().to_str().unwrap(), "--to", &url]).ok().json();
    assert_eq!(copy["tables"]["records"], 3, "{copy:#}");
    assert_eq!(copy["tables"]["jobs"], 3, "the queued jobs move too: {copy:#}");
    let again = src.run(&["store", "copy", "--from", src.data_dir().to_str().unwrap(), "--to", &url]).expect_code(1);
    assert!(again.stderr.contains("already holds"), "a second copy is refused: {}", again.stderr);

    // A server on the copy has the records, the registration and the queued jobs, and runs them.
    let s = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    let accounts: Vec<String> = query_all(&s, "account").iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(accounts.len(), 3);
    assert!(ids.iter().all(|id| accounts.contains(id)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs: Vec<Value> = s.get("/api/v1/jobs").expect(200).as_array().unwrap().clone();
        if jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "Succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "the copied jobs did not run: {jobs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(query_all(&s, "task").len(), 3, "each copied job ran once");
    let init = s.run(&["--json", "store", "init"]).ok().json();
    assert_eq!(init["engine"], "postgres", "{init:#}");
    let status = s.run(&["--json", "status"]).ok().json();
    assert!(status["store"].as_str().is_some_and(|s| s.ends_with("(PostgreSQL)")), "{status:#}");
}

#[test]
fn housekeeping_passes_to_another_server_within_seconds_when_its_holder_dies() {
    let Some(url) = shared_database() else { return };
    let a = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    let b = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    let holder = |s: &TestServer| -> Option<String> {
        s.get("/api/v1/service").expect(200)["housekeeper"]["instance"].as_str().map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(h) = holder(&a) {
            break h;
        }
        assert!(Instant::now() < deadline, "no server took the housekeeping");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(holder(&b).as_deref(), Some(first.as_str()), "both see one housekeeper");
    let pid_of = |h: &str| h.rsplit(':').next().unwrap().parse::<u32>().unwrap();
    let (dead, survivor) = if pid_of(&first) == a.pid() { (a, b) } else { (b, a) };
    assert_eq!(pid_of(&first), dead.pid(), "the housekeeper is one of the two servers");
    let killed = Instant::now();
    drop(dead.kill());
    loop {
        if holder(&survivor).is_some_and(|h| pid_of(&h) == survivor.pid()) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "the survivor did not take the housekeeping over");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("housekeeping taken over {:?} after the kill", killed.elapsed());
}

/// Creates accounts until `stop`, carrying on through failures; returns the ids
/// acknowledged, how many were refused, and every refusal's error code.
fn steady_load(
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let req =
                agent.post(format!("{url}/api/v1/entities/account")).header("Authorization", format!("Bearer {token}"));
            match req.send_json(json!({"name": format!("steady {i}")})) {
                Ok(mut r) => {
                    let body: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                    if r.status() == 201 {
                        acked.push(body["id"].as_str().unwrap().to_owned());
                    } else {
                        refused.push(body["error"]["code"].as_str().unwrap_or("?").to_owned());
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => refused.push(format!("transport: {e}")),
            }
        }
        (acked, refused)
    })
}

#[test]
fn a_postgresql_restart_under_load_fails_requests_cleanly_and_the_service_carries_on() {
    let Some(pg) = postgres::private_server() else {
        eprintln!("PostgreSQL is not installed: the restart test is not run");
        return;
    };
    let url = pg.database();
    let s = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    follow_up_setup(&s, false);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3).map(|_| steady_load(s.url.clone(), s.token.clone(), stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(700));
    pg.restart();
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, r) = w.join().unwrap();
        acked.extend(a);
        refused.extend(r);
    }
    eprintln!("{} acknowledged, refused: {refused:?}; restart took {:?}", acked.len(), restarted.elapsed());
    for code in &refused {
        assert!(
            code == "store_unavailable" || code == "store_error",
            "a request failed with something else than a store error: {code}"
        );
    }
    // Carries on by itself: new requests succeed, and every job runs to completion.
    let after = s.post("/api/v1/entities/account", &json!({"name": "after the restart"})).expect(201);
    acked.push(after["id"].as_str().unwrap().to_owned());
    let jobs = wait_all_succeeded(&s, Duration::from_secs(60));
    let accounts: Vec<String> = query_all(&s, "account").iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_exactly_once(&s, &accounts, &acked, &jobs);
}

#[test]
fn a_key_revoked_on_one_server_stops_working_on_the_other_within_seconds() {
    let Some(url) = shared_database() else { return };
    let a = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    let b = TestServer::start_in(BIN, TestCommand::on_store(BIN, &url), ENV);
    // Each server's admin token is a key on the shared store: either works on both.
    b.call_as(&a.token, "GET", "/api/v1/users", None).expect(200);
    a.run(&["users", "create", "ann", "--role", "basic-user"]).ok();
    let key = a.run(&["keys", "create", "--user", "ann", "--json"]).ok().json();
    let (secret, id) = (key["secret"].as_str().unwrap().to_owned(), key["key"]["id"].as_str().unwrap().to_owned());
    b.call_as(&secret, "GET", "/api/v1/jobs", None).expect(200);
    a.run(&["keys", "revoke", &id]).ok();
    a.call_as(&secret, "GET", "/api/v1/jobs", None).expect(401);
    let revoked = Instant::now();
    while b.call_as(&secret, "GET", "/api/v1/jobs", None).status != 401 {
        assert!(revoked.elapsed() < Duration::from_secs(5), "the other server still accepts the revoked key");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the other server refused the revoked key {:?} after the revocation", revoked.elapsed());
}
