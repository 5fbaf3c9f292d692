//! kill -9 at random moments under load: no job lost, none completed twice, no
//! partial effects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plughost_test_support::{TestCommand, TestServer, artifacts};
use serde_json::{Value, json};

use super::BIN;
use super::server::{query, register};

const ENV: &[(&str, &str)] = &[("PLUGHOST_LEASE_MS", "1000"), ("PLUGHOST_WORKERS", "2")];

/// A tiny deterministic generator, seeded per run and printed, so a failure can be replayed.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Creates accounts until the server goes away or `stop` is set; returns how many were acknowledged.
pub(crate) fn load(url: String, token: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut acked = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && i < 200 {
            i += 1;
            let req =
                agent.post(format!("{url}/api/v1/entities/account")).header("Authorization", format!("Bearer {token}"));
            match req.send_json(json!({"name": format!("load {i}")})) {
                Ok(mut r) if r.status() == 201 => {
                    let body: Value = r.body_mut().read_json().unwrap();
                    acked.push(body["id"].as_str().unwrap().to_owned());
                }
                _ => break,
            }
        }
        acked
    })
}

#[test]
fn killed_at_random_moments_every_job_completes_exactly_once() {
    let seed = std::env::var("PLUGHOST_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test seed {seed} (set PLUGHOST_CRASH_SEED to replay)");
    let mut rng = Lcg(seed);

    let mut s = TestServer::start_in(BIN, TestCommand::new(BIN), ENV);
    follow_up_setup(&s, true);

    let mut acknowledged = Vec::new();
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4).map(|_| load(s.url.clone(), s.token.clone(), stop.clone())).collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(500)));
        let cli = s.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            acknowledged.extend(w.join().unwrap());
        }
        eprintln!("round {round}: killed with {} creates acknowledged so far", acknowledged.len());
        s = TestServer::start_in(BIN, cli, ENV);
    }

    // Let the last server finish everything (leases of killed workers expire and are recovered).
    let jobs = wait_all_succeeded(&s, Duration::from_secs(120));
    let accounts: Vec<String> = query_all(&s, "account").iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert!(accounts.len() >= 50, "the load generator made too few accounts ({}) to mean anything", accounts.len());
    assert_exactly_once(&s, &accounts, &acknowledged, &jobs);
    assert!(query(&s, "account").iter().all(|a| a["attributes"]["accountnumber"].as_str().is_some()));
}

/// Defines account and task and registers the follow-up task step (an async job per
/// account creating one task), with the account-number step first if `numbered`.
pub(crate) fn follow_up_setup(s: &TestServer, numbered: bool) {
    s.put("/api/v1/metadata/entities/account", &json!({"attributes": {"name": "text", "accountnumber": "text"}}))
        .expect(200);
    s.put(
        "/api/v1/metadata/entities/task",
        &json!({"attributes": {"subject": "text", "regardingobjectid": "reference", "scheduledend": "datetime"}}),
    )
    .expect(200);
    if numbered {
        register(s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    }
    register(s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
}

/// Waits until every job succeeded; returns them.
pub(crate) fn wait_all_succeeded(s: &TestServer, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let jobs = s.get("/api/v1/jobs?limit=5000").expect(200).as_array().unwrap().clone();
        if jobs.iter().all(|j| j["status"] == "Succeeded") {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not all succeed: {:?}",
            jobs.iter().map(|j| &j["status"]).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Under the follow-up step: every acknowledged account is stored, each stored account
/// has exactly one job, and each job's effect (a task regarding it) exists once.
pub(crate) fn assert_exactly_once(s: &TestServer, accounts: &[String], acknowledged: &[String], jobs: &[Value]) {
    for id in acknowledged {
        assert!(accounts.contains(id), "an acknowledged create was lost: {id}");
    }
    assert_eq!(jobs.len(), accounts.len(), "one job per committed account, no more, no less");
    let mut regarding: Vec<String> = query_all(s, "task")
        .iter()
        .map(|t| t["attributes"]["regardingobjectid"]["reference"]["id"].as_str().unwrap().to_owned())
        .collect();
    regarding.sort();
    let mut expected = accounts.to_vec();
    expected.sort();
    assert_eq!(regarding, expected, "every job's effect is present exactly once");
}

#[test]
fn an_import_killed_midway_imports_every_row_exactly_once() {
    let mut rng = Lcg(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let mut s = TestServer::start_in(BIN, TestCommand::new(BIN), ENV);
    s.put("/api/v1/metadata/entities/account", &json!({"attributes": {"name": "text", "accountnumber": "text"}}))
        .expect(200);
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    let rows = 3000;
    let csv: String = std::iter::once("name\n".to_owned()).chain((0..rows).map(|i| format!("row-{i}\n"))).collect();
    let job = s.post_raw("/api/v1/bulk/import?entity=account", csv.as_bytes()).expect(201);
    let id = job["id"].as_str().unwrap().to_owned();
    let mut midway = false;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
        let before = s.get(&format!("/api/v1/jobs/{id}")).expect(200);
        midway |= before["status"] != "Succeeded";
        let cli = s.kill();
        s = TestServer::start_in(BIN, cli, ENV);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let job = s.get(&format!("/api/v1/jobs/{id}")).expect(200);
        if job["status"] == "Succeeded" {
            break job;
        }
        assert!(Instant::now() < deadline, "the import did not finish: {job:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(midway, "the import finished before the first kill: make it longer");
    assert_eq!(done["output"]["Succeeded"], rows, "{done:#}");
    let names: std::collections::BTreeSet<String> =
        query_all(&s, "account").iter().map(|a| a["attributes"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names.len(), rows as usize, "every row once");
    assert_eq!(query_all(&s, "account").len(), rows as usize, "no row twice");
}

/// Every record of `entity`, page by page.
pub(crate) fn query_all(s: &TestServer, entity: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cookie = Value::Null;
    loop {
        let page = s
            .post("/api/v1/query", &json!({"entity_name": entity, "page_size": 1000, "paging_cookie": cookie}))
            .expect(200);
        all.extend(page["entities"].as_array().unwrap().iter().cloned());
        if page["more_records"] != true {
            return all;
        }
        cookie = page["paging_cookie"].clone();
    }
}
