//! Recorded runs and replay (the profiler) through a real server: a step set to
//! record keeps its runs (failing ones too), they export as JSON, and a new build
//! replays one offline, in another data directory, showing what differs.

use plughost_test_support::{TestCommand, TestServer, artifacts};
use serde_json::{Value, json};

use super::BIN;
use super::queue::wait_jobs;
use super::server::{add_step, register, server};

fn runs(s: &TestServer, query: &str) -> Vec<Value> {
    s.get(&format!("/api/v1/runs{query}")).expect(200).as_array().unwrap().clone()
}

fn finished(jobs: &[Value], n: usize) -> bool {
    jobs.len() == n && jobs.iter().all(|j| j["status"] == "Succeeded" || j["status"] == "Failed")
}

#[test]
fn a_failing_async_run_is_recorded_exported_and_replayed_to_success_with_the_fix() {
    let s = server();
    register(&s, artifacts::FOLLOW_UP_TASK_V1, "follow-up", &[]);
    let step = add_step(
        &s,
        json!({"plugin": "follow-up", "message": "Create", "entity": "account", "stage": "post-operation",
               "mode": "asynchronous", "record_runs": 2}),
    );
    let step_id = step["id"].as_str().unwrap().to_owned();
    // Bad budgets are refused and change nothing.
    let too_many = s.post(&format!("/api/v1/steps/{step_id}/profile"), &json!({"runs": 101}));
    assert_eq!((too_many.status, too_many.code()), (400, "invalid"), "{}", too_many.body);
    assert_eq!(s.post("/api/v1/steps/nope/profile", &json!({"runs": 1})).status, 404);
    let refused = s.post(
        "/api/v1/steps",
        &json!({"plugin": "follow-up", "message": "Update", "stage": "post-operation", "record_runs": 1000}),
    );
    assert_eq!(refused.status, 400);
    assert_eq!(s.get("/api/v1/steps").expect(200).as_array().unwrap().len(), 1);

    s.post("/api/v1/entities/account", &json!({"name": "Contoso"})).expect(201);
    s.post("/api/v1/entities/account", &json!({"description": "nameless"})).expect(201);
    let jobs = wait_jobs(&s, |j| finished(j, 2));
    assert_eq!(jobs.iter().filter(|j| j["status"] == "Failed").count(), 1, "{jobs:#?}");
    // The budget is spent: a third run is not recorded.
    s.post("/api/v1/entities/account", &json!({"name": "Fabrikam"})).expect(201);
    wait_jobs(&s, |j| finished(j, 3));
    let recorded = runs(&s, &format!("?step={step_id}"));
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
    let outcomes: Vec<&str> = recorded.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert!(outcomes.contains(&"succeeded") && outcomes.contains(&"plugin_error"), "{outcomes:?}");
    let failed = recorded.iter().find(|r| r["outcome"] == "plugin_error").unwrap();
    let run_id = failed["id"].as_str().unwrap().to_owned();
    assert!(failed["job_id"].is_string());

    // The run holds the context, the retrieve with the server's answer, and the outcome.
    let run = s.get(&format!("/api/v1/runs/{run_id}")).expect(200);
    assert_eq!(run["context"]["message_name"], "Create");
    let calls = run["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["call"]["retrieve"]["target"]["logical_name"], "account");
    assert_eq!(calls[0]["answer"]["retrieved"]["attributes"]["description"], Value::Null, "only the asked columns");
    assert!(run["invocation"]["outcome"]["failed"]["message"].as_str().unwrap().contains("has no name"));
    assert!(run["invocation"]["trace"].as_str().unwrap().contains("read back account"));

    // Exported, and replayed on "a laptop": another data directory, no server, no store.
    let exported = s.run(&["runs", "export", &run_id]).ok().stdout;
    let laptop = TestCommand::embedded(BIN);
    let file = laptop.write("run.json", &exported);
    let same = laptop.run(&["replay", &file, "--with", artifacts::FOLLOW_UP_TASK_V1, "--json"]).expect_code(4).json();
    assert_eq!(same["differences"], json!([]), "the recorded build does what it did: {same:#}");
    assert_eq!(same["calls"][0]["source"], "recorded");

    let fixed = laptop.run(&["replay", &file, "--with", artifacts::FOLLOW_UP_TASK, "--json"]).ok().json();
    let differs: Vec<&str> =
        fixed["differences"].as_array().unwrap().iter().map(|d| d["what"].as_str().unwrap()).collect();
    assert_eq!(differs, vec!["outcome", "writes", "output_parameters", "trace"], "{fixed:#}");
    let writes = &fixed["differences"][1];
    assert_eq!(writes["recorded"], json!([]));
    assert_eq!(writes["replayed"][0]["create"]["record"]["attributes"]["subject"], "Follow up with the new account");
    assert_eq!(fixed["calls"][0]["source"], "offline", "the fix's create is kept, not made");
    assert_eq!(fixed["unmade"].as_array().unwrap().len(), 1, "the fix no longer reads the account back");
    assert!(fixed["invocation"]["outcome"]["succeeded"].is_object());
    // Nothing was written on the server by the replays.
    assert_eq!(
        s.post("/api/v1/query", &json!({"entity_name": "task"})).expect(200)["entities"].as_array().unwrap().len(),
        2
    );

    let text = laptop.run(&["replay", &file, "--with", artifacts::FOLLOW_UP_TASK]).ok().stdout;
    for expected in
        ["recorded  failed [plugin_error]", "replayed  succeeded", "differs   outcome", "+ created follow-up task"]
    {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    // By id through the server, and a file that is not a run.
    s.run(&["replay", &run_id, "--with", artifacts::FOLLOW_UP_TASK]).ok();
    let bad = laptop.write("bad.json", "{\"format\": 1}");
    let refused = laptop.run(&["replay", &bad, "--with", artifacts::FOLLOW_UP_TASK, "--json"]).expect_code(1);
    assert!(refused.stderr.contains("not a recorded run"), "{}", refused.stderr);

    s.delete(&format!("/api/v1/runs/{run_id}")).expect(200);
    assert_eq!(s.get(&format!("/api/v1/runs/{run_id}")).status, 404);
    assert_eq!(runs(&s, "").len(), 1);
}

#[test]
fn a_synchronous_step_records_a_rejected_request_and_stops_when_told() {
    let s = server();
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    let step = s.get("/api/v1/steps").expect(200)[0]["id"].as_str().unwrap().to_owned();
    let profiled = s.run(&["steps", "profile", &step, "--runs", "5", "--json"]).ok().json();
    assert_eq!(profiled["runs_left"], 5);
    assert_eq!(s.post("/api/v1/entities/account", &json!({"name": ""})).status, 400);
    s.post("/api/v1/entities/account", &json!({"name": "Contoso"})).expect(201);
    let recorded = runs(&s, "");
    let outcomes: Vec<&str> = recorded.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["succeeded", "plugin_error"], "newest first; the rejected request's run is kept");
    assert!(recorded.iter().all(|r| r["job_id"].is_null()));

    s.run(&["steps", "profile", &step, "--off"]).ok();
    s.post("/api/v1/entities/account", &json!({"name": "Fabrikam"})).expect(201);
    assert_eq!(runs(&s, "").len(), 2, "no run is recorded once profiling is off");
    let listed = s.run(&["runs", "list"]).ok().stdout;
    assert!(listed.contains("plugin_error") && listed.contains("account-number"), "{listed}");
}

#[test]
fn a_remote_worker_records_runs_with_its_completions() {
    let s = super::server::server_with(&[("PLUGHOST_WORKERS", "0")]);
    register(&s, artifacts::FOLLOW_UP_TASK_V1, "follow-up", &[]);
    add_step(
        &s,
        json!({"plugin": "follow-up", "message": "Create", "entity": "account", "stage": "post-operation",
               "mode": "asynchronous", "record_runs": 3}),
    );
    let _worker = plughost_test_support::TestWorker::start(BIN, &s.url, s.cli.data_dir(), "w1", &[]);
    for name in ["A", "B"] {
        s.post("/api/v1/entities/account", &json!({"name": name})).expect(201);
    }
    s.post("/api/v1/entities/account", &json!({})).expect(201);
    wait_jobs(&s, |j| finished(j, 3));
    let recorded = runs(&s, "");
    assert_eq!(recorded.len(), 3, "{recorded:#?}");
    let run = s.get(&format!("/api/v1/runs/{}", recorded[0]["id"].as_str().unwrap())).expect(200);
    assert_eq!(run["calls"][0]["call"]["retrieve"]["target"]["logical_name"], "account", "{run:#}");
    assert_eq!(recorded.iter().filter(|r| r["outcome"] == "plugin_error").count(), 1);
}
