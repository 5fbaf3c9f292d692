//! Workflows through a real server (on each store backend): definitions and their
//! validation, branches, waits woken by the right change, timeouts on an injected
//! clock, versions, activities that fail, the loop guard, run-as, and kill -9 around
//! step commits.

use std::time::{Duration, Instant};

use plughost_test_support::{TestServer, artifacts};
use serde_json::{Value, json};

use super::BIN;
use super::crash::Lcg;
use super::server::{query, register};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../example-plugins/workflows/support-case.json");

/// Defines the example's entities and registers the plug-ins activities call.
fn setup(s: &TestServer) {
    for (entity, attributes) in [
        (
            "incident",
            json!({"title": "text", "priority": "text", "statecode": "option", "statuscode": "option",
                   "customeremail": "text", "resolution": "text", "counter": "integer", "due": "datetime"}),
        ),
        ("task", json!({"subject": "text", "regardingobjectid": "reference"})),
        ("email", json!({"to": "text", "subject": "text", "body": "text", "regardingobjectid": "reference"})),
    ] {
        s.put(&format!("/api/v1/metadata/entities/{entity}"), &json!({ "attributes": attributes })).expect(200);
    }
    register(s, artifacts::PROBE, "probe", &[]);
    register(s, artifacts::HOSTILE, "hostile", &[]);
}

fn wf_server(env: &[(&str, &str)]) -> TestServer {
    let s = TestServer::start_with(BIN, env);
    setup(&s);
    s
}

fn create_active(s: &TestServer, def: &Value) {
    s.post("/api/v1/workflows", def).expect(201);
    let name = def["name"].as_str().unwrap();
    let active = s.post(&format!("/api/v1/workflows/{name}/activate"), &json!({})).expect(200);
    assert_eq!(active["active"], true);
}

fn incident(s: &TestServer, attributes: Value) -> String {
    s.post("/api/v1/entities/incident", &attributes).expect(201)["id"].as_str().unwrap().to_owned()
}

/// The workflow runs regarding `record`, oldest first.
fn runs(s: &TestServer, record: &str) -> Vec<Value> {
    let all = s.get("/api/v1/jobs?limit=5000").expect(200);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["operation_type"] == "workflow" && j["regarding"]["id"] == record)
        .cloned()
        .collect()
}

/// Polls until `record` has a run for which `done` holds; returns it.
fn wait_run(s: &TestServer, record: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = runs(s, record).into_iter().find(|r| done(r)) {
            return r;
        }
        assert!(Instant::now() < deadline, "no run got there: {:#?}", runs(s, record));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log(s: &TestServer, job: &Value) -> Vec<Value> {
    s.get(&format!("/api/v1/jobs/{}/log", job["id"].as_str().unwrap())).expect(200).as_array().unwrap().clone()
}

fn steps_of(log: &[Value]) -> Vec<(String, String)> {
    log.iter().map(|r| (r["kind"].as_str().unwrap().to_owned(), r["status"].as_str().unwrap().to_owned())).collect()
}

fn pair(kind: &str, status: &str) -> (String, String) {
    (kind.to_owned(), status.to_owned())
}

fn status(run: &Value) -> &str {
    run["status"].as_str().unwrap()
}

fn regarding(s: &TestServer, entity: &str, record: &str) -> Vec<Value> {
    query(s, entity).into_iter().filter(|t| t["attributes"]["regardingobjectid"]["reference"]["id"] == record).collect()
}

#[test]
fn definitions_are_checked_with_clear_errors_and_nothing_is_stored_on_error() {
    let s = wf_server(&[]);
    let base = |steps: Value| json!({"name": "w", "entity": "incident", "triggers": {"create": true}, "steps": steps});
    let update = |attributes: Value| json!([{"type": "update", "attributes": attributes}]);
    for (def, why) in [
        (json!({"name": "w"}), "missing field `entity`"),
        (json!({"name": "W!", "entity": "incident", "triggers": {"create": true}, "steps": []}), "not a workflow name"),
        (
            json!({"name": "w", "entity": "ticket", "triggers": {"create": true}, "steps": update(json!({"title": "x"}))}),
            "unknown entity 'ticket'",
        ),
        (json!({"name": "w", "entity": "incident", "steps": update(json!({"title": "x"}))}), "has no trigger"),
        (base(update(json!({"colour": "red"}))), "incident has no attribute 'colour'"),
        (base(update(json!({"counter": "many"}))), "attribute 'counter' expects integer"),
        (
            base(
                json!([{"type": "update", "attributes": {"title": "{{steps.later.id}}"}}, {"id": "later", "type": "create", "entity": "task", "attributes": {}}]),
            ),
            "names step 'later', which no earlier step is",
        ),
        (base(json!([{"type": "update", "attributes": {"title": "{{record.nothing}}"}}])), "no attribute 'nothing'"),
        (base(json!([{"type": "frobnicate"}])), "unknown variant `frobnicate`"),
        (base(json!([{"type": "wait", "branches": [{"timeout": {"after": "2w"}}]}])), "bad duration '2w'"),
        (base(json!([{"type": "wait", "branches": [{"steps": []}]}])), "exactly one of 'until' and 'timeout'"),
        (
            base(json!([{"type": "condition", "branches": [{"steps": []}, {"when": {"conditions": []}}]}])),
            "only the last branch may be the default",
        ),
        (base(json!([{"type": "activity", "plugin": "nobody"}])), "unknown plug-in 'nobody'"),
        (base(json!([{"type": "assign", "owner": "nobody"}])), "unknown user 'nobody'"),
        (base(json!([{"type": "child", "workflow": "nothing"}])), "unknown workflow 'nothing'"),
        (
            base(json!([{"type": "stop"}, {"id": "x", "type": "stop"}, {"id": "x", "type": "stop"}])),
            "step id 'x' is used twice",
        ),
    ] {
        let r = s.post("/api/v1/workflows", &def);
        assert_eq!((r.status, r.code()), (400, "invalid_workflow"), "{def}: {}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{def}: {message}");
    }
    assert_eq!(s.get("/api/v1/workflows").expect(200), json!([]), "nothing was stored");

    // A cycle of child workflows: a starts b, b starts a.
    let child = |name: &str, steps: Value| json!({"name": name, "entity": "incident", "triggers": {"child": true}, "steps": steps});
    s.post("/api/v1/workflows", &child("a", json!([{"type": "stop"}]))).expect(201);
    s.post("/api/v1/workflows", &child("b", json!([{"type": "child", "workflow": "a"}]))).expect(201);
    let r = s.put("/api/v1/workflows/a", &child("a", json!([{"type": "child", "workflow": "b"}])));
    assert_eq!(r.code(), "invalid_workflow", "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("cycle: a -> b -> a"), "{}", r.body);
    // Only an inactive workflow changes; activating freezes versions.
    s.post("/api/v1/workflows/a/activate", &json!({})).expect(200);
    let r = s.put("/api/v1/workflows/a", &child("a", json!([{"type": "stop", "message": "v2"}])));
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("deactivate it"), "{}", r.body);
    s.post("/api/v1/workflows/a/deactivate", &json!({})).expect(200);
    s.put("/api/v1/workflows/a", &child("a", json!([{"type": "stop", "message": "v2"}]))).expect(200);
    let shown = s.post("/api/v1/workflows/a/activate", &json!({})).expect(200);
    assert_eq!(shown["version"], 2);
    let v1 = s.get("/api/v1/workflows/a?version=1").expect(200);
    assert_eq!(v1["definition"]["steps"], json!([{"type": "stop", "status": "succeeded", "message": ""}]));
    assert_eq!(s.get("/api/v1/workflows/a?version=9").code(), "not_found");
    assert_eq!(s.get("/api/v1/workflows/none").code(), "not_found");
    // On demand needs the trigger; the CLI says so too.
    let id = incident(&s, json!({"title": "x"}));
    let r = s.post("/api/v1/workflows/a/run", &json!({"record": id}));
    assert_eq!(r.code(), "workflow_not_on_demand", "{}", r.body);
    let listed = s.run(&["workflows", "list"]).ok().stdout;
    assert!(listed.contains("a") && listed.contains("active   v2"), "{listed}");
}

#[test]
fn the_support_case_example_branches_waits_for_the_right_change_and_calls_its_activity() {
    let s = wf_server(&[]);
    let file = EXAMPLE.to_owned();
    let created = s.run(&["workflows", "create", &file, "--activate", "--json"]).ok().json();
    assert_eq!((&created["active"], &created["version"]), (&json!(true), &json!(1)));

    // Branch truth table: only a high-priority case gets a task.
    let high = incident(&s, json!({"title": "Printer", "priority": "HIGH", "customeremail": "c@example.com"}));
    let low = incident(&s, json!({"title": "Mouse", "priority": "low"}));
    let none = incident(&s, json!({"title": "Screen"}));
    for id in [&high, &low, &none] {
        wait_run(&s, id, |r| status(r) == "Waiting");
    }
    assert_eq!(regarding(&s, "task", &high).len(), 1);
    assert_eq!(regarding(&s, "task", &low).len() + regarding(&s, "task", &none).len(), 0);
    let run = runs(&s, &high).remove(0);
    assert_eq!(
        steps_of(&log(&s, &run)),
        vec![pair("condition", "Succeeded"), pair("create", "Succeeded"), pair("wait", "Waiting")]
    );
    let deadline = run["postpone_until"].as_i64().unwrap() - run["created_on"].as_i64().unwrap();
    assert!((2 * 86_400_000 - 60_000..=2 * 86_400_000 + 60_000).contains(&deadline), "the 2-day timeout: {run:#}");

    // A change to an attribute the wait does not watch does not wake it; a watched one
    // that does not satisfy the condition wakes it, and it waits again.
    s.patch(&format!("/api/v1/entities/incident/{high}"), &json!({"title": "Printer (jammed)"})).expect(200);
    s.patch(&format!("/api/v1/entities/incident/{high}"), &json!({"statecode": {"option": 2}})).expect(200);
    std::thread::sleep(Duration::from_millis(300));
    let run = wait_run(&s, &high, |r| status(r) == "Waiting");
    assert_eq!(log(&s, &run).len(), 3, "re-checked and still waiting: {:#?}", log(&s, &run));
    assert_eq!(regarding(&s, "email", &high).len(), 0);

    // Resolved: the wait ends, the mail is created, the activity's output is used.
    s.patch(
        &format!("/api/v1/entities/incident/{high}"),
        &json!({"statecode": {"option": 1}, "resolution": "new drum"}),
    )
    .expect(200);
    let done = wait_run(&s, &high, |r| status(r) == "Succeeded");
    let rows = log(&s, &done);
    assert_eq!(
        steps_of(&rows),
        vec![
            pair("condition", "Succeeded"),
            pair("create", "Succeeded"),
            pair("wait", "Waiting"),
            pair("wait", "Succeeded"),
            pair("send_email", "Succeeded"),
            pair("activity", "Succeeded"),
            pair("update", "Succeeded"),
        ]
    );
    assert_eq!(rows[5]["outputs"]["Greeting"], "Hello, Printer (jammed)!");
    let mails = regarding(&s, "email", &high);
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0]["attributes"]["to"], "c@example.com");
    assert_eq!(mails[0]["attributes"]["body"], "Resolution: new drum");
    let record = s.get(&format!("/api/v1/entities/incident/{high}")).expect(200);
    assert_eq!(record["attributes"]["resolution"], "Hello, Printer (jammed)! (closed by workflow)");
    assert_eq!(regarding(&s, "task", &high).len(), 1, "no step ran twice");
    // `jobs show` includes the log.
    let shown = s.run(&["jobs", "show", done["id"].as_str().unwrap()]).ok().stdout;
    assert!(shown.contains("workflow log") && shown.contains("send_email"), "{shown}");

    // Deleting a record cancels the runs waiting on it.
    s.delete(&format!("/api/v1/entities/incident/{low}")).expect(204);
    let canceled = wait_run(&s, &low, |r| status(r) == "Canceled");
    assert!(canceled["message"].as_str().unwrap().contains("was deleted"), "{canceled:#}");

    // On demand: a second run on the same record.
    let queued = s.post("/api/v1/workflows/support-case/run", &json!({"record": none})).expect(201);
    assert_eq!(queued["operation_type"], "workflow");
    wait_run(&s, &none, |r| r["id"] == queued["id"] && status(r) == "Waiting");
    assert_eq!(runs(&s, &none).len(), 2);
}

#[test]
fn a_wait_times_out_when_the_clock_passes_its_limit() {
    let s = wf_server(&[]);
    let def = json!({"name": "escalate", "entity": "incident", "triggers": {"create": true}, "steps": [
        {"type": "wait", "branches": [
            {"until": {"conditions": [{"attribute": "statecode", "operator": "equal", "values": [{"option": 1}]}]}, "steps": [
                {"type": "update", "attributes": {"resolution": "resolved in time"}}]},
            {"timeout": {"attribute": "due", "offset": "-1h"}, "steps": [
                {"type": "update", "attributes": {"priority": "urgent"}}]}]}]});
    create_active(&s, &def);
    let due = "2030-01-01T12:00:00Z";
    let id = incident(&s, json!({"title": "x", "due": {"datetime": due}}));
    let waiting = wait_run(&s, &id, |r| status(r) == "Waiting");
    assert_eq!(waiting["postpone_until"].as_i64().unwrap(), 1_893_499_200_000 - 3_600_000, "due minus an hour");

    // The same store, served with the clock four years ahead: the limit has passed.
    let cli = s.kill();
    let skew = (1_893_499_200_000i64 - chrono_now()).to_string();
    let s = TestServer::start_in(BIN, cli, &[("PLUGHOST_CLOCK_SKEW_MS", &skew)]);
    let done = wait_run(&s, &id, |r| status(r) == "Succeeded");
    let record = s.get(&format!("/api/v1/entities/incident/{id}")).expect(200);
    assert_eq!(record["attributes"]["priority"], "urgent");
    assert!(record["attributes"].get("resolution").is_none_or(Value::is_null));
    assert_eq!(log(&s, &done)[1]["outputs"]["branch"], 1, "the timeout branch");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn waiting_runs_keep_their_version_through_a_deactivation_and_a_new_version() {
    let s = wf_server(&[]);
    let def = |label: &str| {
        json!({"name": "label", "entity": "incident", "triggers": {"create": true}, "steps": [
            {"type": "wait", "branches": [{"until": {"conditions": [{"attribute": "priority", "operator": "equal", "values": ["go"]}]}}]},
            {"type": "update", "attributes": {"resolution": label}}]})
    };
    create_active(&s, &def("v1"));
    let first = incident(&s, json!({"title": "first"}));
    wait_run(&s, &first, |r| status(r) == "Waiting");
    s.post("/api/v1/workflows/label/deactivate", &json!({})).expect(200);
    let unseen = incident(&s, json!({"title": "no workflow while inactive"}));
    s.put("/api/v1/workflows/label", &def("v2")).expect(200);
    s.post("/api/v1/workflows/label/activate", &json!({})).expect(200);
    let second = incident(&s, json!({"title": "second"}));
    wait_run(&s, &second, |r| status(r) == "Waiting");
    for id in [&first, &second] {
        s.patch(&format!("/api/v1/entities/incident/{id}"), &json!({"priority": "go"})).expect(200);
        wait_run(&s, id, |r| status(r) == "Succeeded");
    }
    let resolution =
        |id: &str| s.get(&format!("/api/v1/entities/incident/{id}")).expect(200)["attributes"]["resolution"].clone();
    assert_eq!(resolution(&first), "v1", "a run keeps the version it started with");
    assert_eq!(resolution(&second), "v2");
    assert!(runs(&s, &unseen).is_empty(), "an inactive workflow starts nothing");
    // Its runs, listed; deleting it needs it inactive, and leaves its runs.
    let listed = s.run(&["--json", "workflows", "runs", "label", "--status", "Succeeded"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed:#}");
    let r = s.delete("/api/v1/workflows/label");
    assert_eq!((r.status, r.code()), (409, "conflict"), "{}", r.body);
    s.run(&["workflows", "deactivate", "label"]).ok();
    let gone = s.run(&["workflows", "delete", "label"]).ok().stdout;
    assert!(gone.contains("deleted workflow label"), "{gone}");
    assert_eq!(s.get("/api/v1/workflows/label").code(), "not_found");
    assert_eq!(runs(&s, &first).len(), 1, "its runs stay");
    s.post("/api/v1/workflows", &def("v3")).expect(201);
}

#[test]
fn a_trapping_activity_fails_the_run_and_earlier_steps_stay_once() {
    let s = wf_server(&[]);
    let def = json!({"name": "fragile", "entity": "incident", "triggers": {"create": true}, "steps": [
        {"id": "before", "type": "create", "entity": "task", "attributes": {"subject": "before", "regardingobjectid": "{{record.id}}"}},
        {"type": "activity", "plugin": "hostile", "configuration": "trap"},
        {"type": "create", "entity": "task", "attributes": {"subject": "after", "regardingobjectid": "{{record.id}}"}}]});
    create_active(&s, &def);
    let id = incident(&s, json!({"title": "x"}));
    let failed = wait_run(&s, &id, |r| status(r) == "Failed");
    assert_eq!(failed["error_code"], "trap", "{failed:#}");
    assert!(failed["message"].as_str().unwrap().contains("step 1 (activity) failed"), "{failed:#}");
    let rows = log(&s, &failed);
    assert_eq!(steps_of(&rows), vec![pair("create", "Succeeded"), pair("activity", "Failed")]);
    assert!(rows[1]["error"].as_str().unwrap().starts_with("trap"), "{rows:#?}");
    let tasks: Vec<Value> = regarding(&s, "task", &id);
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    assert_eq!(tasks[0]["attributes"]["subject"], "before");
}

#[test]
fn a_workflow_that_keeps_triggering_itself_is_stopped_by_the_loop_guard() {
    let s = wf_server(&[]);
    // Each run changes the attribute that triggers it.
    let def = json!({"name": "echo", "entity": "incident", "triggers": {"create": true, "update": ["title"]}, "steps": [
        {"type": "update", "attributes": {"title": "{{record.title}}x"}}]});
    create_active(&s, &def);
    let id = incident(&s, json!({"title": "loop"}));
    let stopped = wait_run(&s, &id, |r| status(r) == "Failed");
    assert_eq!(stopped["error_code"], "workflow_loop", "{stopped:#}");
    std::thread::sleep(Duration::from_millis(300));
    let all = runs(&s, &id);
    assert_eq!(all.len(), 17, "16 runs, and the 17th stopped before its first step");
    assert_eq!(all.iter().filter(|r| status(r) == "Succeeded").count(), 16);
    assert!(log(&s, &stopped).is_empty());
}

#[test]
fn triggered_runs_run_as_the_owner_and_on_demand_runs_as_the_caller() {
    let s = wf_server(&[]);
    let admin = s.get("/api/v1/whoami").expect(200)["user_id"].as_str().unwrap().to_owned();
    s.run(&["users", "create", "ann", "--role", "basic-user"]).ok();
    let key = s.run(&["keys", "create", "--user", "ann"]).ok().stdout.lines().next().unwrap().to_owned();
    let ann = s.call_as(&key, "GET", "/api/v1/whoami", None).expect(200)["user_id"].as_str().unwrap().to_owned();
    let def = json!({"name": "note", "entity": "incident", "triggers": {"create": true, "on_demand": true}, "steps": [
        {"type": "create", "entity": "task", "attributes": {"subject": "{{now}}", "regardingobjectid": "{{record.id}}"}}]});
    create_active(&s, &def);
    let id = s.call_as(&key, "POST", "/api/v1/entities/incident", Some(&json!({"title": "ann's"}))).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let triggered = wait_run(&s, &id, |r| status(r) == "Succeeded");
    assert_eq!(triggered["createdby"], ann.as_str(), "ann's create queued it");
    let queued = s.call_as(&key, "POST", "/api/v1/workflows/note/run", Some(&json!({"record": id}))).expect(201);
    wait_run(&s, &id, |r| r["id"] == queued["id"] && status(r) == "Succeeded");
    let mut creators: Vec<String> = regarding(&s, "task", &id)
        .iter()
        .map(|t| t["attributes"]["createdby"]["reference"]["id"].as_str().unwrap().to_owned())
        .collect();
    creators.sort();
    let mut expected = vec![admin.clone(), ann.clone()];
    expected.sort();
    assert_eq!(creators, expected, "one task as the workflow's owner, one as the caller");
    // Ann cannot change workflows, and sees only her own runs' logs.
    let r = s.call_as(&key, "POST", "/api/v1/workflows/note/deactivate", Some(&json!({})));
    assert_eq!(r.code(), "forbidden");
    let admins_run = incident(&s, json!({"title": "admin's"}));
    let other = wait_run(&s, &admins_run, |r| status(r) == "Succeeded");
    let r = s.call_as(&key, "GET", &format!("/api/v1/jobs/{}/log", other["id"].as_str().unwrap()), None);
    assert_eq!(r.code(), "forbidden", "{}", r.body);
}

#[test]
fn killed_around_step_commits_no_step_of_a_run_happens_twice() {
    let seed = std::env::var("PLUGHOST_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("workflow crash test seed {seed} (set PLUGHOST_CRASH_SEED to replay)");
    let mut rng = Lcg(seed);
    let env: &[(&str, &str)] = &[("PLUGHOST_LEASE_MS", "1000"), ("PLUGHOST_WORKERS", "2")];
    let mut s = wf_server(env);
    // Three steps that each leave a task, with a pause between them (a short timed
    // wait commits the steps before it) and slow activities to be killed in.
    let task = |subject: &str| json!({"type": "create", "entity": "task", "attributes": {"subject": subject, "regardingobjectid": "{{record.id}}"}});
    let pause = json!({"type": "wait", "branches": [{"timeout": {"after": "1s"}}]});
    let slow = json!({"type": "activity", "plugin": "hostile", "configuration": "spin:150"});
    let def = json!({"name": "durable", "entity": "incident", "triggers": {"create": true}, "steps": [
        task("one"), slow, pause, task("two"), slow, pause, task("three")]});
    create_active(&s, &def);
    let mut records = Vec::new();
    for round in 0..4 {
        for i in 0..5 {
            records.push(incident(&s, json!({"title": format!("r{round}-{i}")})));
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
        let cli = s.kill();
        eprintln!("round {round}: killed with {} records", records.len());
        s = TestServer::start_in(BIN, cli, env);
    }
    for id in &records {
        let done = wait_run(&s, id, |r| status(r) == "Succeeded");
        let mut subjects: Vec<String> =
            regarding(&s, "task", id).iter().map(|t| t["attributes"]["subject"].as_str().unwrap().to_owned()).collect();
        subjects.sort();
        assert_eq!(subjects, vec!["one", "three", "two"], "record {id}: every step's effect exactly once");
        let kinds: Vec<String> = log(&s, &done).iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "create").count(), 3, "one log row per step: {kinds:?}");
        assert_eq!(kinds.iter().filter(|k| *k == "activity").count(), 2, "{kinds:?}");
        assert_eq!(runs(&s, id).len(), 1);
    }
}

#[test]
fn a_remote_worker_runs_workflows_and_their_children_and_its_writes_trigger_them() {
    let s = wf_server(&[("PLUGHOST_WORKERS", "0")]);
    let child = json!({"name": "stamp", "entity": "incident", "triggers": {"child": true}, "steps": [
        {"type": "update", "attributes": {"resolution": "stamped by {{record.title}}"}}]});
    create_active(&s, &child);
    let parent = json!({"name": "parent", "entity": "incident", "triggers": {"create": true}, "steps": [
        {"id": "greet", "type": "activity", "plugin": "probe", "configuration": "greet", "message": "Greet", "inputs": {"Name": "{{record.title}}"}},
        {"type": "wait", "branches": [{"until": {"conditions": [{"attribute": "priority", "operator": "equal", "values": ["go"]}]}}]},
        {"type": "child", "workflow": "stamp"},
        {"type": "update", "attributes": {"customeremail": "{{steps.greet.Greeting}}"}}]});
    create_active(&s, &parent);
    // The child's write, made on the worker, triggers a third workflow there.
    let follower = json!({"name": "follower", "entity": "incident", "triggers": {"update": ["resolution"]}, "steps": [
        {"type": "update", "attributes": {"priority": "seen"}}]});
    create_active(&s, &follower);
    let w = plughost_test_support::TestWorker::start(BIN, &s.url, s.cli.data_dir(), "wf-worker", &[]);
    let id = incident(&s, json!({"title": "remote"}));
    let waiting = wait_run(&s, &id, |r| r["name"] == "parent" && status(r) == "Waiting");
    assert_eq!(log(&s, &waiting)[0]["outputs"]["Greeting"], "Hello, remote!");
    s.patch(&format!("/api/v1/entities/incident/{id}"), &json!({"priority": "go"})).expect(200);
    let done = wait_run(&s, &id, |r| r["name"] == "parent" && status(r) == "Succeeded");
    let stamped = wait_run(&s, &id, |r| r["name"] == "stamp" && status(r) == "Succeeded");
    let rows = log(&s, &done);
    let child_row = rows.iter().find(|r| r["kind"] == "child").unwrap();
    assert_eq!(child_row["child_job"], stamped["id"], "the log names the child's job");
    let record = s.get(&format!("/api/v1/entities/incident/{id}")).expect(200);
    assert_eq!(record["attributes"]["customeremail"], "Hello, remote!");
    assert_eq!(record["attributes"]["resolution"], "stamped by remote");
    wait_run(&s, &id, |r| r["name"] == "follower" && status(r) == "Succeeded");
    let record = s.get(&format!("/api/v1/entities/incident/{id}")).expect(200);
    assert_eq!(record["attributes"]["priority"], "seen");
    w.terminate();
}

#[test]
fn status_changes_and_deletes_start_the_workflows_that_ask_for_them() {
    let s = wf_server(&[]);
    let task = |subject: &str| json!({"type": "create", "entity": "task", "attributes": {"subject": subject, "regardingobjectid": "{{record.id}}"}});
    create_active(
        &s,
        &json!({"name": "on-status", "entity": "incident", "triggers": {"status_change": true},
        "steps": [task("status {{record.statecode}}")]}),
    );
    create_active(
        &s,
        &json!({"name": "on-delete", "entity": "incident", "triggers": {"delete": true},
        "steps": [task("deleted {{record.title}}")]}),
    );
    create_active(
        &s,
        &json!({"name": "set-status", "entity": "incident", "triggers": {"on_demand": true},
        "delete_completed_runs": true, "steps": [{"type": "set_status", "statecode": 1, "statuscode": 5}]}),
    );
    let id = incident(&s, json!({"title": "gone soon"}));
    s.patch(&format!("/api/v1/entities/incident/{id}"), &json!({"title": "renamed"})).expect(200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(runs(&s, &id).is_empty(), "neither a create nor another attribute's change starts them");
    // A set_status step changes the status, which starts the status workflow.
    s.post("/api/v1/workflows/set-status/run", &json!({"record": id})).expect(201);
    wait_run(&s, &id, |r| r["name"] == "on-status" && status(r) == "Succeeded");
    assert!(runs(&s, &id).iter().all(|r| r["name"] != "set-status"), "its succeeded run was deleted");
    let record = s.get(&format!("/api/v1/entities/incident/{id}")).expect(200);
    assert_eq!(
        (&record["attributes"]["statecode"], &record["attributes"]["statuscode"]),
        (&json!({"option": 1}), &json!({"option": 5}))
    );
    s.delete(&format!("/api/v1/entities/incident/{id}")).expect(204);
    wait_run(&s, &id, |r| r["name"] == "on-delete" && status(r) == "Succeeded");
    let mut subjects: Vec<String> =
        regarding(&s, "task", &id).iter().map(|t| t["attributes"]["subject"].as_str().unwrap().to_owned()).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["deleted renamed", "status 1"], "the delete's run saw the record as it was");
}

#[test]
fn assign_stop_and_related_record_conditions() {
    let s = wf_server(&[]);
    s.run(&["users", "create", "bob", "--role", "basic-user"]).ok();
    let bob = s.run(&["users", "list", "--json"]).ok().json();
    let bob = bob.as_array().unwrap().iter().find(|u| u["name"] == "bob").unwrap()["id"].as_str().unwrap().to_owned();
    // On a task: if the case it is about is urgent, assign the task to bob and stop
    // as succeeded; otherwise stop as canceled, naming the case.
    let def = json!({"name": "triage", "entity": "task", "triggers": {"create": true}, "steps": [
        {"type": "condition", "branches": [
            {"when": {"conditions": [{"attribute": "regardingobjectid.priority", "operator": "equal", "values": ["urgent"]}]},
             "steps": [{"type": "assign", "owner": "bob"}, {"type": "stop", "message": "assigned"}]},
            {"steps": [{"type": "stop", "status": "canceled", "message": "not urgent: {{record.regardingobjectid.title}}"}]}]},
        {"type": "update", "attributes": {"subject": "never reached"}}]});
    create_active(&s, &def);
    let frozen = s.get("/api/v1/workflows/triage?version=1").expect(200);
    assert_eq!(
        frozen["definition"]["steps"][0]["branches"][0]["steps"][0]["owner"],
        bob.as_str(),
        "frozen with bob's id"
    );
    let case = |priority: &str| incident(&s, json!({"title": format!("{priority} case"), "priority": priority}));
    let task = |case: &str| {
        let reference = json!({"reference": {"logical_name": "incident", "id": case}});
        s.post("/api/v1/entities/task", &json!({"subject": "t", "regardingobjectid": reference})).expect(201)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let urgent = task(&case("urgent"));
    let calm = task(&case("low"));
    let assigned = wait_run(&s, &urgent, |r| status(r) == "Succeeded");
    let owner = s.get(&format!("/api/v1/entities/task/{urgent}")).expect(200)["attributes"]["ownerid"].clone();
    assert_eq!(owner["reference"]["id"], bob.as_str());
    assert_eq!(
        steps_of(&log(&s, &assigned)),
        vec![pair("condition", "Succeeded"), pair("assign", "Succeeded"), pair("stop", "Succeeded")]
    );
    let canceled = wait_run(&s, &calm, |r| status(r) == "Canceled");
    assert_eq!(canceled["message"], "not urgent: low case");
    let untouched = s.get(&format!("/api/v1/entities/task/{calm}")).expect(200);
    assert_eq!(untouched["attributes"]["subject"], "t", "nothing after a stop runs");
}

#[test]
fn jobs_watch_follows_a_job_to_its_outcome_and_exit_code() {
    let s = wf_server(&[]);
    // A bulk import, waited for: the outcome line, no bar when not on a terminal.
    let csv: String = std::iter::once("title\n".to_owned()).chain((0..300).map(|i| format!("case {i}\n"))).collect();
    let file = s.cli.write("cases.csv", &csv);
    let done = s.run(&["bulk", "import", &file, "--entity", "incident", "--wait"]).ok().stdout;
    assert!(done.contains("Succeeded") && done.contains("300 processed"), "{done}");
    assert!(!done.contains('\r') && !done.contains('['), "no progress bar off a terminal: {done:?}");
    let json = s.run(&["--json", "bulk", "import", &file, "--entity", "incident", "--wait"]).ok().json();
    assert_eq!(
        (&json["status"], &json["output"]["Total"], &json["output"]["Processed"]),
        (&json!("Succeeded"), &json!(300), &json!(300))
    );
    // A run that fails: exit code 1, with its error.
    create_active(
        &s,
        &json!({"name": "fails", "entity": "incident", "triggers": {"on_demand": true}, "steps": [
        {"type": "activity", "plugin": "hostile", "configuration": "trap"}]}),
    );
    let id = incident(&s, json!({"title": "x"}));
    let run = s.post("/api/v1/workflows/fails/run", &json!({"record": id})).expect(201);
    let out = s.run(&["jobs", "watch", run["id"].as_str().unwrap()]).expect_code(1).stdout;
    assert!(out.contains("Failed: [trap]"), "{out}");
    // A run canceled while it waits: exit code 5.
    create_active(
        &s,
        &json!({"name": "waits", "entity": "incident", "triggers": {"on_demand": true}, "steps": [
        {"type": "wait", "branches": [{"timeout": {"after": "1d"}}]}]}),
    );
    let run = s.post("/api/v1/workflows/waits/run", &json!({"record": id})).expect(201);
    let job = run["id"].as_str().unwrap().to_owned();
    wait_run(&s, &id, |r| r["id"] == job.as_str() && status(r) == "Waiting");
    let watcher = {
        let cli = s.cli.run_async(&["jobs", "watch", &job]);
        std::thread::sleep(Duration::from_millis(300));
        cli
    };
    s.post(&format!("/api/v1/jobs/{job}/cancel"), &json!({})).expect(200);
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stdout));
}
