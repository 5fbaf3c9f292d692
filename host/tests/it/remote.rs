//! Remote workers (`plughost worker`) as real processes on 127.0.0.1, serving a real
//! `plughost serve` with no workers of its own: jobs and their effects exactly as
//! in-process, and the faults the worker protocol must survive (SIGKILL, SIGSTOP,
//! server restarts, unregistration, SIGTERM, wrong credentials).

use std::time::{Duration, Instant};

use plughost_test_support::{TestCommand, TestServer, TestWorker, artifacts, free_port};
use serde_json::{Value, json};

use super::BIN;
use super::queue::{completed, create, create_job, hostile_server, metric, settled_metric, wait_job, wait_jobs};
use super::server::{add_step, define_entities, query, register, server_with};

const NO_LOCAL_WORKERS: (&str, &str) = ("PLUGHOST_WORKERS", "0");

fn worker(s: &TestServer, name: &str, args: &[&str]) -> TestWorker {
    TestWorker::start(BIN, &s.url, s.cli.data_dir(), name, args)
}

/// The remote workers the server lists, once `ready` holds for them.
fn wait_workers(s: &TestServer, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let workers = s.get("/api/v1/workers").expect(200).as_array().unwrap().clone();
        if ready(&workers) {
            return workers;
        }
        assert!(Instant::now() < deadline, "workers did not get there: {workers:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn succeeded(jobs: &[Value]) -> usize {
    jobs.iter().filter(|j| j["status"] == "Succeeded").count()
}

/// Asserts that all `n` jobs succeeded, naming each one that did not and why.
fn assert_all_succeeded(jobs: &[Value], n: usize) {
    let others: Vec<String> = jobs
        .iter()
        .filter(|j| j["status"] != "Succeeded")
        .map(|j| {
            format!(
                "{} {} {}: {} {} (retries {}, expired leases {}, host {}, token {})",
                j["name"],
                j["id"],
                j["status"],
                j["error_code"],
                j["message"],
                j["retry_count"],
                j["lease_expirations"],
                j["host_id"],
                j["fencing_token"]
            )
        })
        .collect();
    assert!(jobs.len() == n && others.is_empty(), "{} jobs of {n}; not succeeded:\n{}", jobs.len(), others.join("\n"));
}

/// Two async steps on Create of account: the follow-up task (an effect to count) and
/// a slow one (spinning `spin_ms`), so workers hold leased jobs for a while.
fn follow_up_and_slow_steps(s: &TestServer, spin_ms: u64) {
    register(s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    register(s, artifacts::HOSTILE, "hostile", &[]);
    add_step(
        s,
        json!({"plugin": "hostile", "name": "slow", "message": "Create", "entity": "account", "stage": "post-operation",
               "mode": "asynchronous", "configuration": format!("spin:{spin_ms}")}),
    );
}

/// Whether `w` compiled the assembly `hash` into its compile cache.
fn compiled(w: &TestWorker, hash: &str) -> bool {
    let cache = w.data_dir.join("worker-cache");
    std::fs::read_dir(&cache).into_iter().flatten().flatten().any(|engine| {
        std::fs::read_dir(engine.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().starts_with(hash))
    })
}

/// The assembly a registered plug-in runs.
fn assembly(s: &TestServer, plugin: &str) -> String {
    s.get(&format!("/api/v1/plugins/{plugin}")).expect(200)["plugin"]["assembly"].as_str().unwrap().to_owned()
}

/// Exactly one follow-up task per account: the jobs' effects exist once each.
fn assert_one_task_per_account(s: &TestServer, accounts: &[String]) {
    let mut regarding: Vec<String> = query(s, "task")
        .iter()
        .map(|t| t["attributes"]["regardingobjectid"]["reference"]["id"].as_str().unwrap().to_owned())
        .collect();
    regarding.sort();
    let mut accounts = accounts.to_vec();
    accounts.sort();
    assert_eq!(regarding, accounts, "one task per account, exactly");
}

#[test]
fn remote_workers_run_jobs_and_their_effects_as_in_process() {
    let s = server_with(&[NO_LOCAL_WORKERS]);
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    register(&s, artifacts::PROBE, "probe", &[]);
    // An ordered async step that reads its record and writes it back, and a synchronous
    // step its write triggers: both run on the worker, the second one level deeper.
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "post-operation", "mode": "asynchronous",
               "configuration": "append", "ordered_per_record": true, "filtering_attributes": ["name"]}),
    );
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "post-operation",
               "configuration": "audit", "filtering_attributes": ["description"]}),
    );
    let accounts: Vec<String> = (0..10).map(|i| create(&s, &format!("acc{i}"))).collect();
    assert!(s.get("/api/v1/jobs").expect(200).as_array().unwrap().iter().all(|j| j["status"] == "WaitingForResources"));
    let _w1 = worker(&s, "w1", &["--workers", "1"]);
    let _w2 = worker(&s, "w2", &["--workers", "1"]);
    let jobs = wait_jobs(&s, |j| j.len() == 10 && completed(j));
    for j in &jobs {
        assert_eq!(j["status"], "Succeeded", "{j}");
        assert!(j["trace"].as_str().unwrap().contains("created follow-up task"), "{j}");
        assert!(j["fuel_used"].as_u64().unwrap() > 0, "{j}");
        assert!(j["output"]["followup_task_id"]["guid"].is_string(), "{j}");
    }
    assert_one_task_per_account(&s, &accounts);

    let id = &accounts[0];
    for name in ["a", "b", "c"] {
        s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"name": name})).expect(200);
    }
    wait_jobs(&s, |j| j.len() == 13 && completed(j) && succeeded(j) == 13);
    let record = s.get(&format!("/api/v1/entities/account/{id}")).expect(200);
    assert_eq!(record["attributes"]["description"], "a,b,c", "read through the server, written in change order");
    let nested: Vec<Value> = query(&s, "audit").into_iter().filter(|a| a["attributes"]["depth"] == 2).collect();
    assert_eq!(nested.len(), 3, "the job's write ran the synchronous step on the worker, one level deeper");

    let workers =
        wait_workers(&s, |w| w.len() == 2 && w.iter().map(|w| w["done"].as_u64().unwrap()).sum::<u64>() == 13);
    let mut names: Vec<&str> = workers.iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["w1", "w2"]);
    assert!(workers.iter().all(|w| w["lost"] == false && w["pid"].as_u64().unwrap() > 0 && w["failures"] == 0));
    let listed = s.run(&["workers", "list", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let text = s.run(&["workers", "list"]).ok();
    assert!(text.stdout.contains("w1") && text.stdout.contains("alive"), "{}", text.stdout);
    // The service is running while remote workers are; /metrics counts their runs.
    assert_eq!(s.get("/api/v1/service").expect(200)["running"], true);
    assert_eq!(metric(&s, "plughost_remote_workers"), 2);
    assert_eq!(settled_metric(&s, "plughost_remote_jobs_succeeded_total", 13), 13);
}

#[test]
fn a_worker_killed_mid_batch_loses_nothing_and_does_nothing_twice() {
    let s = server_with(&[NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1000")]);
    follow_up_and_slow_steps(&s, 150);
    let accounts: Vec<String> = (0..12).map(|i| create(&s, &format!("acc{i}"))).collect();
    let mut w1 = worker(&s, "w1", &["--workers", "1", "--batch", "512"]);
    // w1 leases the whole backlog; kill it once it has done part of it.
    let jobs = wait_jobs(&s, |j| j.len() == 24 && succeeded(j) >= 3);
    assert!(jobs.iter().any(|j| j["status"] == "InProgress" && j["host_id"] == "w1"), "w1 holds the rest");
    w1.kill();
    let _w2 = worker(&s, "w2", &["--workers", "1"]);
    let jobs = wait_jobs(&s, |j| j.len() == 24 && completed(j));
    assert_all_succeeded(&jobs, 24);
    assert_one_task_per_account(&s, &accounts);
}

#[test]
fn a_frozen_worker_finds_its_jobs_recovered_and_its_late_completions_refused() {
    let s = server_with(&[NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1000")]);
    follow_up_and_slow_steps(&s, 300);
    let accounts: Vec<String> = (0..6).map(|i| create(&s, &format!("acc{i}"))).collect();
    let w1 = worker(&s, "w1", &["--workers", "1"]);
    wait_jobs(&s, |j| j.iter().any(|j| j["status"] == "InProgress" && j["host_id"] == "w1"));
    // Cut off (SIGSTOP) for several leases: the server recovers its jobs meanwhile.
    w1.freeze();
    let lost = wait_workers(&s, |w| w.iter().any(|w| w["name"] == "w1" && w["lost"] == true));
    assert!(lost.iter().any(|w| w["name"] == "w1"), "a worker not heard from for a lease is lost");
    let _w2 = worker(&s, "w2", &["--workers", "1"]);
    let jobs = wait_jobs(&s, |j| j.len() == 12 && completed(j));
    assert_all_succeeded(&jobs, 12);
    // Back after its leases ended: what it finishes now is refused as stale.
    w1.thaw();
    std::thread::sleep(Duration::from_millis(1500));
    let workers = wait_workers(&s, |w| w.len() == 2);
    let done: u64 = workers.iter().map(|w| w["done"].as_u64().unwrap()).sum();
    assert_eq!(done, 12, "each job counted once, by the worker whose completion was kept: {workers:#?}");
    assert_one_task_per_account(&s, &accounts);
    assert!(wait_jobs(&s, |j| j.len() == 12).iter().all(|j| j["status"] == "Succeeded"));
}

#[test]
fn workers_ride_out_server_restarts_by_sigterm_and_sigkill() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A lease the killed server granted but never answered (committed, reply lost) is
    // recovered when it expires: keep that short.
    let env = [NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1000")];
    let mut s = TestServer::start_at(BIN, TestCommand::new(BIN), &env, &listen);
    define_entities(&s);
    follow_up_and_slow_steps(&s, 100);
    let accounts: Vec<String> = (0..10).map(|i| create(&s, &format!("acc{i}"))).collect();
    let _w1 = worker(&s, "w1", &["--workers", "1", "--batch", "4"]);
    let _w2 = worker(&s, "w2", &["--workers", "1", "--batch", "4"]);
    wait_jobs(&s, |j| succeeded(j) >= 4);
    assert_eq!(s.terminate(), Some(0), "SIGTERM: the server drains and exits");
    let cli = std::mem::replace(&mut s.cli, TestCommand::new(BIN));
    std::thread::sleep(Duration::from_millis(300));
    let s = TestServer::start_at(BIN, cli, &env, &listen);
    wait_jobs(&s, |j| succeeded(j) >= 10);
    let cli = s.kill();
    std::thread::sleep(Duration::from_millis(300));
    let s = TestServer::start_at(BIN, cli, &env, &listen);
    let jobs = wait_jobs(&s, |j| j.len() == 20 && completed(j));
    assert_all_succeeded(&jobs, 20);
    assert_one_task_per_account(&s, &accounts);
    wait_workers(&s, |w| w.len() == 2 && w.iter().all(|w| w["lost"] == false));
}

#[test]
fn a_worker_that_needs_code_while_the_server_is_down_waits_for_it() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1000")];
    let s = TestServer::start_at(BIN, TestCommand::new(BIN), &env, &listen);
    define_entities(&s);
    follow_up_and_slow_steps(&s, 1500);
    let (hostile, follow_up) = (assembly(&s, "hostile"), assembly(&s, "follow-up"));
    let accounts = [create(&s, "acc0")];
    // One lease takes both jobs; the slow one runs first, so the worker needs the
    // follow-up plug-in's code only once it is done.
    let w1 = worker(&s, "w1", &["--workers", "1", "--batch", "4"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !compiled(&w1, &hostile) {
        assert!(Instant::now() < deadline, "the worker did not compile the slow plug-in: {:?}", walk(&w1.data_dir));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!compiled(&w1, &follow_up), "the follow-up job ran before the slow one");
    // Down for longer than the slow job's run: the worker asks for the code meanwhile.
    let cli = s.kill();
    std::thread::sleep(Duration::from_millis(2500));
    let s = TestServer::start_at(BIN, cli, &env, &listen);
    let jobs = wait_jobs(&s, |j| j.len() == 2 && completed(j));
    assert_all_succeeded(&jobs, 2);
    assert!(compiled(&w1, &follow_up));
    assert_one_task_per_account(&s, &accounts);
}

#[test]
fn unregistering_a_plugin_fails_its_leased_jobs_and_the_worker_drops_its_code() {
    let s = server_with(&[NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1000")]);
    follow_up_and_slow_steps(&s, 300);
    let hostile = assembly(&s, "hostile");
    let accounts: Vec<String> = (0..6).map(|i| create(&s, &format!("acc{i}"))).collect();
    let w1 = worker(&s, "w1", &["--workers", "1"]);
    wait_jobs(&s, |j| j.iter().any(|j| j["name"].as_str().unwrap().starts_with("slow") && j["status"] == "InProgress"));
    let compiled = |hash: &str| compiled(&w1, hash);
    // Leased jobs are InProgress before they start: wait for the code the first one compiled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !compiled(&hostile) {
        assert!(
            Instant::now() < deadline,
            "the worker did not compile the plug-in into its cache: {:?}",
            walk(&w1.data_dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.run(&["unregister", "plugin", "hostile", "--with-steps"]).ok();
    let jobs = wait_jobs(&s, |j| j.len() == 12 && completed(j));
    let (slow, other): (Vec<&Value>, Vec<&Value>) =
        jobs.iter().partition(|j| j["name"].as_str().unwrap().starts_with("slow"));
    assert!(other.iter().all(|j| j["status"] == "Succeeded"), "the other jobs keep running: {other:#?}");
    assert!(slow.iter().all(|j| j["status"] == "Succeeded" || j["error_code"] == "plugin_not_registered"), "{slow:#?}");
    let orphaned: Vec<&&Value> = slow.iter().filter(|j| j["error_code"] == "plugin_not_registered").collect();
    assert!(!orphaned.is_empty(), "{slow:#?}");
    assert!(orphaned.iter().any(|j| j["message"].as_str().unwrap().contains("while this job ran")), "{orphaned:#?}");
    assert_one_task_per_account(&s, &accounts);
    let deadline = Instant::now() + Duration::from_secs(20);
    while compiled(&hostile) {
        assert!(Instant::now() < deadline, "the worker kept the unregistered plug-in's compiled code");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_a_worker_finish_or_release_its_jobs_and_exit_0() {
    let s = hostile_server(&[NO_LOCAL_WORKERS], &["spin:700"]);
    let ids: Vec<String> = (0..4).map(|_| create_job(&s, "spin:700")).collect();
    let mut w1 = worker(&s, "w1", &["--workers", "1"]);
    wait_job(&s, &ids[0], |j| j["status"] == "InProgress");
    // Leased jobs are InProgress before they start: give the first one time to start.
    std::thread::sleep(Duration::from_millis(250));
    w1.terminate();
    assert_eq!(w1.wait_exit(Duration::from_secs(20)), Some(0), "{}", w1.log());
    let first = wait_job(&s, &ids[0], |j| j["status"] != "InProgress");
    assert_eq!(first["status"], "Succeeded", "the running job finished within the grace period");
    for id in &ids[1..] {
        let j = wait_job(&s, id, |j| j["status"] != "InProgress");
        assert_eq!((j["status"].as_str(), &j["host_id"]), (Some("WaitingForResources"), &Value::Null), "released: {j}");
    }
    assert!(w1.log().contains("1 assemblies compiled, 0 loaded from the compile cache"), "{}", w1.log());
    // The same worker again (same data directory): its compile cache serves the plug-in.
    let mut again = worker(&s, "w1", &["--workers", "1"]);
    for id in &ids {
        wait_job(&s, id, |j| j["status"] == "Succeeded");
    }
    again.terminate();
    assert_eq!(again.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        again.log().contains(
            "3 succeeded, 0 failed, 0 refused as stale; 0 assemblies compiled, 1 loaded from the compile cache"
        ),
        "{}",
        again.log()
    );
}

#[test]
fn pausing_the_service_puts_back_the_jobs_a_remote_worker_has_not_started() {
    let s = hostile_server(&[NO_LOCAL_WORKERS, ("PLUGHOST_LEASE_MS", "1500")], &["spin:600"]);
    let ids: Vec<String> = (0..4).map(|_| create_job(&s, "spin:600")).collect();
    let _w1 = worker(&s, "w1", &["--workers", "1"]);
    wait_job(&s, &ids[0], |j| j["status"] == "InProgress");
    std::thread::sleep(Duration::from_millis(250));
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    // The worker learns it from its next heartbeat (every third of the lease).
    assert_eq!(
        wait_job(&s, &ids[0], |j| j["status"] != "InProgress")["status"],
        "Succeeded",
        "the running one finishes"
    );
    for id in &ids[1..] {
        let j = wait_job(&s, id, |j| j["status"] != "InProgress");
        assert_eq!(j["status"], "WaitingForResources", "put back, not run: {j}");
    }
    s.post("/api/v1/service/resume", &json!({})).expect(200);
    for id in &ids {
        wait_job(&s, id, |j| j["status"] == "Succeeded");
    }
}

#[test]
fn a_job_canceled_while_it_runs_stops_in_process_and_on_a_remote_worker() {
    for remote in [false, true] {
        let workers = if remote { "0" } else { "1" };
        let s = hostile_server(&[("PLUGHOST_WORKERS", workers), ("PLUGHOST_LEASE_MS", "1000")], &["spin:12000"]);
        let _w = remote.then(|| worker(&s, "w1", &["--workers", "1"]));
        let id = create_job(&s, "spin:12000");
        wait_job(&s, &id, |j| j["status"] == "InProgress");
        std::thread::sleep(Duration::from_millis(300));
        s.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).expect(200);
        let j = wait_job(&s, &id, |j| j["status"] == "Canceled");
        let ran = j["duration_us"].as_u64().unwrap_or(0);
        assert!(ran < 8_000_000, "remote {remote}: the plug-in was stopped, not run to its end: {j}");
    }
}

#[test]
fn workers_need_their_own_token_and_the_same_protocol() {
    let s = server_with(&[NO_LOCAL_WORKERS]);
    let worker_token = std::fs::read_to_string(s.cli.data_dir().join("worker-token")).unwrap().trim().to_owned();
    let call = |path: &str, token: Option<&str>, body: &Value| -> (u16, Value) {
        // A connection of its own: a refused request's body is not read, so the server closes it.
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent.post(format!("{}{path}", s.url));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send_json(body).unwrap();
        (resp.status().as_u16(), resp.body_mut().read_json().unwrap_or(Value::Null))
    };
    let protocol = plughost::protocol::PROTOCOL_VERSION;
    let hello = json!({"protocol": protocol, "name": "t", "host": "h", "pid": 1, "version": "0", "workers": 1});
    let (status, body) = call("/api/v1/worker/hello", None, &hello);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) = call("/api/v1/worker/hello", Some(&s.token), &hello);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "the admin token is not a worker's");
    let (status, body) = call(
        "/api/v1/worker/hello",
        Some(&worker_token),
        &json!({"protocol": 999, "name": "t", "host": "h", "pid": 1, "version": "9.9.9", "workers": 1}),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("protocol_mismatch")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("protocol 999") && message.contains(&format!("speaks {protocol}")), "{message}");
    // The worker token reaches no admin route and no data outside a leased job.
    let (status, body) = call("/api/v1/jobs", Some(&worker_token), &json!({"step": "x"}));
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = call("/api/v1/worker/hello", Some(&worker_token), &hello);
    assert_eq!(status, 200);
    let (status, body) = call(
        "/api/v1/worker/read",
        Some(&worker_token),
        &json!({"job": uuid_zero(), "token": 1, "read": {"read": "definition", "entity": "account"}}),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("lease_lost")), "{body}");
    // A worker started with a wrong token stops at once, saying why.
    let out = std::process::Command::new(BIN)
        .args(["--data-dir"])
        .arg(s.cli.data_dir().join("wrong"))
        .args(["--server", &s.url, "worker", "--worker-token", "wrong", "--connect-timeout-ms", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the key is not known"), "{stderr}");
}

fn uuid_zero() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
