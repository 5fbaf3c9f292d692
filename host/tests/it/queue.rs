//! The asynchronous service through a real server: jobs run, retry, fail alone,
//! keep their dependency order, survive unregistration of their step, and are
//! managed by users.

use std::time::{Duration, Instant};

use plughost_test_support::{TestServer, artifacts};
use serde_json::{Value, json};

use super::server::{add_step, query, register, server, server_with};

/// Polls `/jobs` until `done` holds for the list, or panics after a minute.
pub(crate) fn wait_jobs(s: &TestServer, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = s.get("/api/v1/jobs?limit=5000").expect(200).as_array().unwrap().clone();
        if done(&jobs) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not settle: {:#}",
            json!(jobs.iter().map(|j| (&j["name"], &j["status"], &j["message"])).collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Listing in pages (either order, by cursor) and by id prefix gives exactly `all`.
fn assert_pages(s: &TestServer, all: &[Value]) {
    let ids: Vec<&str> = all.iter().map(|j| j["id"].as_str().unwrap()).collect();
    let sequences: Vec<u64> = all.iter().map(|j| j["sequence"].as_u64().unwrap()).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "listed in creation order");
    for (order, expected) in [("oldest", ids.clone()), ("newest", ids.iter().rev().copied().collect())] {
        let mut paged = Vec::new();
        let mut after = String::new();
        loop {
            let page = s.get(&format!("/api/v1/jobs?limit=700&order={order}{after}")).expect(200);
            let page = page.as_array().unwrap();
            paged.extend(page.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
            match page.last() {
                Some(last) if page.len() == 700 => after = format!("&after={}", last["id"].as_str().unwrap()),
                _ => break,
            }
        }
        assert_eq!(paged, expected, "{order} first");
    }
    // Jobs found by a prefix of their id: the whole id finds one.
    let one = s.get(&format!("/api/v1/jobs?id_prefix={}", ids[1234])).expect(200);
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["id"], ids[1234]);
    let prefix = &ids[1234][..30];
    let some = s.get(&format!("/api/v1/jobs?id_prefix={prefix}")).expect(200);
    let some: Vec<&str> = some.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert!(some.contains(&ids[1234]) && some.iter().all(|id| id.starts_with(prefix)), "{some:?}");
    assert!(
        s.get(&format!("/api/v1/jobs?id_prefix={}&limit=2", &ids[0][..2])).expect(200).as_array().unwrap().len() == 2
    );
    for (bad, why) in [
        ("limit=0", "limit 0"),
        ("limit=5001", "limit 5001"),
        ("id_prefix=xyz", "hex"),
        ("order=up", "order"),
        ("colour=red", "colour"),
    ] {
        let r = s.get(&format!("/api/v1/jobs?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(why), "{bad}: {}", r.body);
    }
}

pub(crate) fn completed(jobs: &[Value]) -> bool {
    jobs.iter().all(|j| matches!(j["status"].as_str(), Some("Succeeded" | "Failed" | "Canceled")))
}

pub(crate) fn create(s: &TestServer, name: &str) -> String {
    s.post("/api/v1/entities/account", &json!({"name": name})).expect(201)["id"].as_str().unwrap().to_owned()
}

#[test]
fn async_jobs_run_and_commit_their_effects_once() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    let ids: Vec<String> = (0..5).map(|i| create(&s, &format!("acc{i}"))).collect();
    let jobs = wait_jobs(&s, |j| j.len() == 5 && completed(j));
    for j in &jobs {
        assert_eq!(j["status"], "Succeeded", "{j}");
        assert!(j["trace"].as_str().unwrap().contains("created follow-up task"), "{j}");
        assert!(j["fuel_used"].as_u64().unwrap() > 0);
        assert_eq!(j["host_id"], Value::Null, "a completed job holds no lease");
    }
    let tasks = query(&s, "task");
    assert_eq!(tasks.len(), 5);
    let mut regarding: Vec<String> = tasks
        .iter()
        .map(|t| t["attributes"]["regardingobjectid"]["reference"]["id"].as_str().unwrap().to_owned())
        .collect();
    regarding.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(regarding, ids, "one task per account, exactly");
    // Each job keeps the plug-in's output: the id of the task it created.
    let mut created: Vec<&Value> = jobs.iter().map(|j| &j["output"]["followup_task_id"]["guid"]).collect();
    let mut task_ids: Vec<&Value> = tasks.iter().map(|t| &t["id"]).collect();
    created.sort_by_key(|v| v.to_string());
    task_ids.sort_by_key(|v| v.to_string());
    assert_eq!(created, task_ids, "{jobs:#?}");
    let metrics = s.get("/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap().to_owned();
    assert!(text.contains("plughost_jobs{status=\"Succeeded\",code=\"30\"} 5"), "{text}");
    let value = |name: &str| -> u64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
        line[name.len() + 1..].parse().unwrap()
    };
    assert_eq!(value("plughost_jobs_succeeded_total"), 5);
    let commits = value("plughost_group_commits_total");
    assert!(commits > 0 && value("plughost_group_commit_operations_total") >= commits, "{text}");
    // Only PostgreSQL's writer applies batches ahead of the lock (and may apply one again).
    let reapplied = value("plughost_group_commit_reapplied_total");
    if !plughost_test_support::postgres::selected() {
        assert_eq!(reapplied, 0, "{text}");
    }
}

#[test]
fn retryable_failures_back_off_then_fail_and_bad_plugins_fail_alone() {
    let s = server_with(&[("PLUGHOST_MAX_RETRIES", "2"), ("PLUGHOST_RETRY_BACKOFF_MS", "20")]);
    register(&s, artifacts::HOSTILE, "hostile", &[]);
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    for mode in ["retry", "trap", "loop"] {
        add_step(
            &s,
            json!({"plugin": "hostile", "name": mode, "message": "Create", "entity": "account", "stage": "post-operation",
                   "mode": "asynchronous", "configuration": mode, "limits": {"fuel": 100000000}}),
        );
    }
    create(&s, "A");
    let jobs = wait_jobs(&s, |j| j.len() == 4 && completed(j));
    let by_name = |n: &str| jobs.iter().find(|j| j["name"].as_str().unwrap().starts_with(n)).unwrap().clone();
    let retry = by_name("retry");
    assert_eq!((retry["status"].as_str(), retry["error_code"].as_str()), (Some("Failed"), Some("plugin_retryable")));
    assert_eq!(retry["retry_count"], 2);
    assert!(retry["message"].as_str().unwrap().contains("gave up after 2 retries"), "{retry}");
    let trap = by_name("trap");
    assert_eq!(trap["error_code"], "trap");
    assert!(trap["trace"].as_str().unwrap().contains("hostile: trapping on purpose"));
    assert_eq!(by_name("loop")["error_code"], "out_of_fuel");
    assert_eq!(by_name("follow-up")["status"], "Succeeded", "the other jobs are unaffected");
    assert_eq!(query(&s, "task").len(), 1);
}

#[test]
fn jobs_of_one_record_run_in_order_and_a_postponed_one_holds_back_the_rest() {
    let s = server();
    register(&s, artifacts::PROBE, "probe", &[]);
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Update", "entity": "account", "stage": "post-operation", "mode": "asynchronous",
               "configuration": "append", "ordered_per_record": true, "filtering_attributes": ["name"]}),
    );
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    let id = create(&s, "start");
    for name in ["a", "b", "c", "d"] {
        s.patch(&format!("/api/v1/entities/account/{id}"), &json!({"name": name})).expect(200);
    }
    let jobs = wait_jobs(&s, |j| j.len() == 4);
    assert!(jobs.iter().all(|j| j["dependency_token"] == format!("account:{id}")));
    // Postpone the first job a while: the later ones of the same record must wait for it.
    let first = jobs[0]["id"].as_str().unwrap();
    let until = chrono_ms() + 1500;
    let postponed = s.post(&format!("/api/v1/jobs/{first}/postpone"), &json!({"until": until})).expect(200);
    assert_eq!((postponed["status"].as_str(), postponed["postpone_until"].as_i64()), (Some("Waiting"), Some(until)));
    s.post("/api/v1/service/resume", &json!({})).expect(200);
    std::thread::sleep(Duration::from_millis(600));
    let early = s.get("/api/v1/jobs").expect(200);
    assert!(
        early.as_array().unwrap().iter().all(|j| j["status"] != "Succeeded"),
        "nothing ran before the postponed head: {early:#}"
    );
    wait_jobs(&s, |j| j.len() == 4 && j.iter().all(|j| j["status"] == "Succeeded"));
    let record = s.get(&format!("/api/v1/entities/account/{id}")).expect(200);
    assert_eq!(record["attributes"]["description"], "a,b,c,d", "jobs ran one at a time in change order");
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn users_cancel_pause_resume_retry_and_delete_jobs() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    let service = s.get("/api/v1/service").expect(200);
    assert_eq!(service["paused"], true);
    create(&s, "A");
    let job = wait_jobs(&s, |j| j.len() == 1)[0].clone();
    let id = job["id"].as_str().unwrap();
    let action = |a: &str| s.post(&format!("/api/v1/jobs/{id}/{a}"), &json!({}));
    assert_eq!(action("pause").expect(200)["status"], "Waiting");
    let refused = action("pause");
    assert_eq!((refused.status, refused.code()), (409, "conflict"));
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only ready or running jobs, and recurring jobs between occurrences, can be paused")
    );
    assert_eq!(action("resume").expect(200)["status"], "WaitingForResources");
    assert_eq!(action("cancel").expect(200)["status"], "Canceled");
    assert_eq!(action("retry").expect(200)["status"], "WaitingForResources");
    let unknown = action("explode");
    assert_eq!(unknown.status, 404);
    // The CLI manages jobs through the server too.
    let out = s.run(&["jobs", "cancel", &id[..8], "--json"]).ok().json();
    assert_eq!(out["status"], "Canceled");
    s.run(&["jobs", "retry", &id[..8]]).ok();
    s.run(&["service", "resume"]).ok();
    wait_jobs(&s, |j| j.len() == 1 && j[0]["status"] == "Succeeded");
    assert_eq!(query(&s, "task").len(), 1, "canceled and retried: the effect happened once");
    s.delete(&format!("/api/v1/jobs/{id}")).expect(204);
    assert_eq!(s.get("/api/v1/jobs").expect(200), json!([]));
}

#[test]
fn unregistering_a_step_fails_exactly_its_queued_jobs() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    register(&s, artifacts::PROBE, "probe", &[]);
    let doomed = add_step(
        &s,
        json!({"plugin": "probe", "message": "Create", "entity": "account", "stage": "post-operation", "mode": "asynchronous", "configuration": "audit"}),
    );
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, token) = (s.url.clone(), s.token.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                for i in 0..125 {
                    let r = agent
                        .post(format!("{url}/api/v1/entities/account"))
                        .header("Authorization", format!("Bearer {token}"))
                        .send_json(json!({"name": format!("w{w}-{i}")}))
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let waiting = s.get("/api/v1/jobs?status=WaitingForResources&limit=5000").expect(200);
    assert_eq!(waiting.as_array().unwrap().len(), 2000);
    assert_pages(&s, waiting.as_array().unwrap());
    // Unregister with the server running and 1,000 of its jobs queued; let the workers go meanwhile.
    s.post("/api/v1/service/resume", &json!({})).expect(200);
    s.delete(&format!("/api/v1/steps/{}", doomed["id"].as_str().unwrap())).expect(200);
    let jobs = wait_jobs(&s, |j| j.len() == 2000 && completed(j));
    let doomed_id = doomed["id"].as_str().unwrap();
    let (mine, others): (Vec<&Value>, Vec<&Value>) = jobs.iter().partition(|j| j["step_id"] == doomed_id);
    assert_eq!(mine.len(), 1000);
    let ran_before = mine.iter().filter(|j| j["status"] == "Succeeded").count();
    for j in mine.iter().filter(|j| j["status"] != "Succeeded") {
        assert_eq!(
            (j["status"].as_str(), j["error_code"].as_str()),
            (Some("Failed"), Some("plugin_not_registered")),
            "{j}"
        );
        assert!(j["message"].as_str().unwrap().contains("was unregistered"), "{j}");
    }
    assert!(ran_before < 1000, "the unregistration came before the workers finished");
    assert!(others.iter().all(|j| j["status"] == "Succeeded"), "every other job ran");
    assert_eq!(query(&s, "task").len(), 1000);
    assert_eq!(query(&s, "audit").len(), ran_before, "no effects from a failed orphan");
    // The server is still serving.
    create(&s, "after");
}

/// A counter of `/metrics`.
pub(crate) fn metric(s: &TestServer, name: &str) -> u64 {
    let text = s.get("/metrics").body.as_str().unwrap().to_owned();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
    line[name.len() + 1..].parse().unwrap()
}

/// A counter of outcomes once it reached `expected` (or its value after ten seconds):
/// a pool counts a run when it learns that its completion is durable, which may be
/// just after the job shows its new status.
pub(crate) fn settled_metric(s: &TestServer, name: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(s, name);
        if value == expected || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/api/v1/jobs/{id}")).expect(200)
}

/// Polls one job until `done` holds for it, or panics after a minute.
pub(crate) fn wait_job(s: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(s, id);
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job did not get there: {j:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_recurring_job_runs_once_for_missed_occurrences_and_never_past_its_count() {
    let s = server();
    register(&s, artifacts::PROBE, "probe", &[]);
    let step = add_step(
        &s,
        json!({"plugin": "probe", "name": "tick", "message": "acme_Tick", "stage": "post-operation", "mode": "asynchronous", "configuration": "audit"}),
    );
    // Bad patterns are refused at creation, naming the bad part, and create nothing.
    for (pattern, part) in [
        ("FREQ=SECONDLY", "FREQ=SECONDLY"),
        ("FREQ=DAILY;BYSETPOS=1", "BYSETPOS"),
        ("BYHOUR=3", "needs FREQ"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY=0"),
        ("FREQ=DAILY;COUNT=0", "COUNT=0"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0"),
        ("FREQ=DAILY;UNTIL=20200101T000000Z", "before the recurrence start"),
    ] {
        let bad = s.post("/api/v1/jobs", &json!({"step": "tick", "recurrence_pattern": pattern}));
        assert_eq!(bad.status, 400, "{pattern}");
        assert!(bad.body["error"]["message"].as_str().unwrap().contains(part), "{pattern}: {}", bad.body);
    }
    assert_eq!(s.get("/api/v1/jobs").expect(200), json!([]));

    // Every minute, three times, starting ten minutes ago (an RFC 3339 start): the
    // missed occurrences run once, then it waits for the next minute after now.
    let start = chrono_ms() - 10 * 60_000;
    let start_text = chrono::DateTime::from_timestamp_millis(start).unwrap().to_rfc3339();
    let created = s
        .post(
            "/api/v1/jobs",
            &json!({"step": step["id"], "recurrence_pattern": "FREQ=MINUTELY;COUNT=3", "recurrence_start": start_text}),
        )
        .expect(201);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["recurrence_start"], start, "an RFC 3339 time is taken as well as milliseconds");
    let after_first = wait_job(&s, &id, |j| j["recurrence_runs"] == 1 && j["status"] == "Waiting");
    let next = after_first["postpone_until"].as_i64().unwrap();
    assert!(
        next > chrono_ms() && next <= chrono_ms() + 60_000,
        "next: the first occurrence after now: {after_first:#}"
    );
    assert_eq!((after_first["statecode"].as_u64(), after_first["statuscode"].as_u64()), (Some(1), Some(10)));
    assert_eq!(query(&s, "audit").len(), 1, "one run for ten missed occurrences");

    // Resume runs it now, then it goes on after now: the series is not replayed.
    s.post(&format!("/api/v1/jobs/{id}/resume"), &json!({})).expect(200);
    let after_second = wait_job(&s, &id, |j| j["recurrence_runs"] == 2 && j["status"] == "Waiting");
    assert!(after_second["postpone_until"].as_i64().unwrap() > chrono_ms());
    let shown = s.run(&["jobs", "resume", &id[..13], "--json"]).ok().json();
    assert_eq!((shown["status"].as_str(), shown["statuscode"].as_u64()), (Some("WaitingForResources"), Some(0)));
    let done = wait_job(&s, &id, |j| j["status"] == "Succeeded");
    assert_eq!(done["recurrence_runs"], 3, "COUNT=3: three runs, then it completes");
    assert_eq!(query(&s, "audit").len(), 3);
    // Retrying a used-up series would run it a fourth time: refused.
    let refused = s.post(&format!("/api/v1/jobs/{id}/retry"), &json!({}));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(settled_metric(&s, "plughost_jobs_succeeded_total", 3), 3, "each successful occurrence is a success");
    assert_eq!(metric(&s, "plughost_jobs_retried_total"), 0, "waiting for the next occurrence is not a retry");

    // A daily job at an hour that is not this one waits, Suspended/Waiting, until then
    // (at this hour, today's occurrence could be due now).
    let hour = (chrono_ms() / 3_600_000 + 12) % 24;
    let pattern = format!("FREQ=DAILY;BYHOUR={hour}");
    let later = s.run(&["jobs", "create", "--step", "tick", "--recurrence", &pattern, "--json"]).ok().json();
    assert_eq!((later["status"].as_str(), later["statecode"].as_u64()), (Some("Waiting"), Some(1)));
    assert!(later["postpone_until"].as_i64().unwrap() > chrono_ms());
    // A job for a step that does not exist is not found (404), not a server error.
    let missing = s.post("/api/v1/jobs", &json!({"step": "no-such-step"}));
    assert_eq!((missing.status, missing.code()), (404, "not_found"), "{}", missing.body);
    // Times are RFC 3339 or milliseconds everywhere.
    let postponed =
        s.post("/api/v1/jobs", &json!({"step": "tick", "postpone_until": "2099-01-01T00:00:00Z"})).expect(201);
    assert_eq!(postponed["postpone_until"], 4_070_908_800_000i64);
    let bad_time = s.post("/api/v1/jobs", &json!({"step": "tick", "postpone_until": "next tuesday"}));
    assert_eq!(bad_time.status, 400);
    assert!(s.get("/api/v1/jobs?since=2020-01-01T00:00:00Z").expect(200).as_array().unwrap().len() >= 3);
}

#[test]
fn removing_a_step_fails_its_queued_jobs_at_once_and_a_pause_survives_a_restart() {
    let mut s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    register(&s, artifacts::PROBE, "probe", &[]);
    let doomed = add_step(
        &s,
        json!({"plugin": "probe", "name": "doomed", "message": "Create", "entity": "account", "stage": "post-operation", "mode": "asynchronous", "configuration": "audit"}),
    );
    s.run(&["service", "pause"]).ok();
    create(&s, "A");
    let queued = wait_jobs(&s, |j| j.len() == 2);
    assert!(queued.iter().all(|j| j["status"] == "WaitingForResources"));
    s.run(&["steps", "remove", "doomed"]).ok();
    // In the transaction that removed the step: no worker is needed for it.
    let jobs = s.get("/api/v1/jobs").expect(200);
    let orphan = jobs.as_array().unwrap().iter().find(|j| j["step_id"] == doomed["id"]).unwrap();
    assert_eq!(
        (orphan["status"].as_str(), orphan["error_code"].as_str()),
        (Some("Failed"), Some("plugin_not_registered"))
    );
    assert!(orphan["message"].as_str().unwrap().contains("step 'doomed'"), "{orphan}");

    // Paused, the service stays paused across a restart until resumed.
    assert_eq!(s.terminate(), Some(0));
    let cli = s.kill();
    let s = TestServer::start_in(super::BIN, cli, &[]);
    let status = s.run(&["service", "status", "--json"]).ok().json();
    assert_eq!(status["paused"], true, "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let follow_up = |s: &TestServer| {
        s.get("/api/v1/jobs")
            .expect(200)
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["step_id"] != doomed["id"])
            .unwrap()
            .clone()
    };
    assert_eq!(follow_up(&s)["status"], "WaitingForResources", "a paused service runs nothing");
    s.run(&["service", "resume"]).ok();
    wait_jobs(&s, |j| j.iter().any(|j| j["status"] == "Succeeded"));
    assert_eq!(query(&s, "task").len(), 1);
}

/// A server with the hostile plug-in and one asynchronous step per configuration,
/// each run by `jobs create`.
pub(crate) fn hostile_server(env: &[(&str, &str)], modes: &[&str]) -> TestServer {
    let s = server_with(env);
    register(&s, artifacts::HOSTILE, "hostile", &[]);
    for mode in modes {
        add_step(
            &s,
            json!({"plugin": "hostile", "name": mode, "message": "acme_Work", "stage": "post-operation", "mode": "asynchronous", "configuration": mode}),
        );
    }
    s
}

pub(crate) fn create_job(s: &TestServer, step: &str) -> String {
    s.post("/api/v1/jobs", &json!({"step": step})).expect(201)["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_job_may_run_longer_than_its_lease_and_completes_once() {
    let s = hostile_server(&[("PLUGHOST_LEASE_MS", "1000"), ("PLUGHOST_WORKERS", "1")], &["spin:2500", "spin:400"]);
    let long = create_job(&s, "spin:2500");
    let done = wait_job(&s, &long, |j| j["status"] == "Succeeded");
    assert!(done["duration_us"].as_u64().unwrap() >= 2_500_000, "{done}");
    // Eight jobs of 0.4 s leased at once by one worker: 3.2 s behind a 1 s lease.
    let ids: Vec<String> = (0..8).map(|_| create_job(&s, "spin:400")).collect();
    for id in &ids {
        wait_job(&s, id, |j| j["status"] == "Succeeded");
    }
    assert_eq!(metric(&s, "plughost_jobs_stale_total"), 0, "no run was lost to an expired lease");
    assert_eq!(settled_metric(&s, "plughost_invocations_total", 9), 9, "each job ran exactly once");
    assert!(metric(&s, "plughost_job_leases_renewed_total") > 0, "the heartbeat renewed leases");
    // A lease too short for the heartbeat is refused.
    let config = s.cli.write("short.toml", "[workers]\nlease_ms = 200\n");
    let bad = s.cli.run(&["status", "--config-file", &config]).expect_code(1);
    assert!(bad.stderr.contains("workers.lease_ms = 200 is shorter than the minimum"), "{}", bad.stderr);
}

#[test]
fn no_leased_job_waits_behind_a_slow_one_while_a_worker_is_idle() {
    let s = hostile_server(&[("PLUGHOST_WORKERS", "2")], &["spin:5000", "ok"]);
    s.run(&["service", "pause"]).ok();
    let slow = create_job(&s, "spin:5000");
    let quick: Vec<String> = (0..3).map(|_| create_job(&s, "ok")).collect();
    s.run(&["service", "resume"]).ok();
    for id in &quick {
        wait_job(&s, id, |j| j["status"] == "Succeeded");
    }
    assert_eq!(job(&s, &slow)["status"], "InProgress", "the quick jobs did not wait for the slow one");
    wait_job(&s, &slow, |j| j["status"] == "Succeeded");
}

#[test]
fn a_leased_job_canceled_before_it_starts_does_not_run() {
    let s = hostile_server(&[("PLUGHOST_WORKERS", "1")], &["spin:3000", "ok"]);
    s.run(&["service", "pause"]).ok();
    let slow = create_job(&s, "spin:3000");
    let behind = create_job(&s, "ok");
    s.run(&["service", "resume"]).ok();
    // Both are leased (InProgress); the one worker runs the slow one first.
    wait_job(&s, &behind, |j| j["status"] == "InProgress");
    assert_eq!(job(&s, &slow)["status"], "InProgress");
    assert_eq!(s.post(&format!("/api/v1/jobs/{behind}/cancel"), &json!({})).expect(200)["status"], "Canceling");
    let canceled = wait_job(&s, &behind, |j| j["status"] == "Canceled");
    wait_job(&s, &slow, |j| j["status"] == "Succeeded");
    assert_eq!((canceled["fuel_used"].as_u64(), canceled["trace"].as_str()), (Some(0), Some("")), "{canceled}");
    assert_eq!(metric(&s, "plughost_invocations_total"), 1, "only the slow job ran");
}

#[test]
fn sigterm_finishes_or_releases_in_flight_jobs_and_the_next_start_carries_on() {
    // The default lease (minutes): a job left locked at shutdown would stall this test.
    let mut s = server();
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    s.post("/api/v1/service/pause", &json!({})).expect(200);
    for i in 0..400 {
        create(&s, &format!("a{i}"));
    }
    s.post("/api/v1/service/resume", &json!({})).expect(200);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(s.terminate(), Some(0), "a clean exit");
    let cli = s.kill();
    let s = TestServer::start_in(super::BIN, cli, &[]);
    let jobs = wait_jobs(&s, |j| j.len() == 400 && j.iter().all(|j| j["status"] == "Succeeded"));
    assert!(jobs.iter().all(|j| j["host_id"].is_null()));
    assert_eq!(query(&s, "task").len(), 400, "every job's effect exactly once");
}

#[test]
fn canceling_or_pausing_a_running_job_discards_its_effects() {
    let s = server_with(&[("PLUGHOST_WORKERS", "1")]);
    register(&s, artifacts::PROBE, "probe", &[]);
    add_step(
        &s,
        json!({"plugin": "probe", "message": "Create", "entity": "account", "stage": "post-operation", "mode": "asynchronous", "configuration": "slow-audit"}),
    );
    let running = |s: &TestServer| {
        wait_jobs(s, |j| j.iter().any(|j| j["status"] == "InProgress"))
            .into_iter()
            .find(|j| j["status"] == "InProgress")
            .unwrap()
    };
    create(&s, "cancel me");
    let job = running(&s);
    let id = job["id"].as_str().unwrap();
    assert_eq!(s.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).expect(200)["status"], "Canceling");
    wait_jobs(&s, |j| j.iter().any(|j| j["status"] == "Canceled"));
    assert!(query(&s, "audit").is_empty(), "a canceled run leaves no effects");

    create(&s, "pause me");
    let job = running(&s);
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("/api/v1/jobs/{id}/pause"), &json!({})).expect(200)["status"], "Pausing");
    wait_jobs(&s, |j| j.iter().any(|j| j["id"] == id.as_str() && j["status"] == "Waiting"));
    assert!(query(&s, "audit").is_empty(), "a paused run leaves no effects");
    assert_eq!(s.post(&format!("/api/v1/jobs/{id}/resume"), &json!({})).expect(200)["status"], "WaitingForResources");
    wait_jobs(&s, |j| j.iter().any(|j| j["id"] == id.as_str() && j["status"] == "Succeeded"));
    assert_eq!(query(&s, "audit").len(), 1, "resumed, it ran once");
    let counted: Vec<u64> = [("succeeded", 1), ("failed", 0), ("retried", 0), ("canceled", 1)]
        .iter()
        .map(|(m, n)| settled_metric(&s, &format!("plughost_jobs_{m}_total"), *n))
        .collect();
    assert_eq!(counted, vec![1, 0, 0, 1], "a pause is no retry, a cancel no failure");
}

#[test]
fn the_deletion_service_purges_old_completed_jobs_on_its_recurrence() {
    const ON: [(&str, &str); 2] =
        [("PLUGHOST_COMPLETED_JOB_RETENTION_SECS", "1"), ("PLUGHOST_DELETION_SERVICE_RECURRENCE", "FREQ=MINUTELY")];
    let mut s = server_with(&ON);
    let is_service = |j: &Value| j["operation_type"] == "deletion_service";
    // Created at start, run at once (nothing to delete yet), then waiting for its next minute.
    let first = wait_jobs(&s, |j| j.len() == 1 && j[0]["status"] == "Waiting");
    let service = first[0].clone();
    assert!(is_service(&service) && service["name"] == "Deletion Service", "{service:#}");
    assert!(service["message"].as_str().unwrap().starts_with("deleted 0 jobs"), "{service:#}");
    assert!(service["postpone_until"].as_i64().unwrap() > chrono_ms());

    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    for i in 0..3 {
        create(&s, &format!("old{i}"));
    }
    wait_jobs(&s, |j| j.iter().filter(|j| !is_service(j) && j["status"] == "Succeeded").count() == 3);
    std::thread::sleep(Duration::from_millis(1100));
    // One more that completes within the retention, and one still waiting: both stay.
    create(&s, "recent");
    let id = service["id"].as_str().unwrap();
    let jobs = wait_jobs(&s, |j| j.iter().filter(|j| !is_service(j) && j["status"] == "Succeeded").count() == 4);
    let recent = jobs.iter().filter(|j| !is_service(j)).map(|j| j["id"].clone()).next_back().unwrap();
    let step = s.get("/api/v1/steps").expect(200)[0]["id"].as_str().unwrap().to_owned();
    let waiting = s.run(&["jobs", "create", "--step", &step, "--postpone", "2099-01-01T00:00:00Z", "--json"]);
    let waiting = waiting.ok().json()["id"].clone();
    // Resuming the service's job runs it now instead of at its next minute.
    s.post(&format!("/api/v1/jobs/{id}/resume"), &json!({})).expect(200);
    let after = wait_jobs(&s, |j| j.len() == 3 && j.iter().any(|j| is_service(j) && j["status"] == "Waiting"));
    let ids: Vec<&Value> = after.iter().filter(|j| !is_service(j)).map(|j| &j["id"]).collect();
    assert_eq!(ids, vec![&recent, &waiting], "only the old completed jobs are gone");
    let service = after.iter().find(|j| is_service(j)).unwrap();
    assert!(service["message"].as_str().unwrap().starts_with("deleted 3 jobs completed before"), "{service:#}");
    assert_eq!(service["output"]["deleted"], json!(3), "{service:#}");
    let shown = s.run(&["jobs", "show", id]).ok().stdout;
    assert!(shown.contains("message   deleted 3 jobs") && shown.contains("output    deleted = 3"), "{shown}");
    assert_eq!(query(&s, "task").len(), 4, "deleting jobs leaves their effects");
    let metrics = s.get("/metrics").body.as_str().unwrap().to_owned();
    assert!(metrics.contains("plughost_jobs{status=\"Succeeded\",code=\"30\"} 1"), "counts follow: {metrics}");

    // A restart keeps the one service job; a restart that keeps every job removes it.
    assert_eq!(s.terminate(), Some(0));
    let cli = s.kill();
    let mut s = TestServer::start_in(super::BIN, cli, &ON);
    let services =
        |s: &TestServer| s.get("/api/v1/jobs").expect(200).as_array().unwrap().iter().filter(|j| is_service(j)).count();
    assert_eq!(services(&s), 1);
    assert_eq!(s.terminate(), Some(0));
    let cli = s.kill();
    let s = TestServer::start_in(super::BIN, cli, &[]);
    assert_eq!(services(&s), 0);

    // A bad recurrence is refused with the setting named.
    let config = s.cli.write("bad.toml", "[workers]\ndeletion_service_recurrence = \"FREQ=SOMETIMES\"\n");
    let bad = s.cli.run(&["status", "--config-file", &config]).expect_code(1);
    assert!(bad.stderr.contains("workers.deletion_service_recurrence 'FREQ=SOMETIMES'"), "{}", bad.stderr);
}
