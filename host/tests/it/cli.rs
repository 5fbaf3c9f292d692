//! The `plughost` binary end to end: register, list, steps, test, unregister.

use plughost_test_support::{TestCommand, artifacts};

use super::BIN;

const CONTOSO: &str = r#"{"message_name": "Create", "stage": "pre-operation",
  "input_parameters": {"Target": {"entity": {"logical_name": "account", "attributes": {"name": "Contoso"}}}}}"#;

#[test]
fn register_list_show_and_unregister() {
    let t = TestCommand::new(BIN);
    let out = t
        .run(&[
            "register",
            artifacts::ACCOUNT_NUMBER,
            "--name",
            "account-number",
            "--step",
            "Create:account:pre-operation",
            "--config",
            "ACME-",
        ])
        .ok();
    assert!(out.stdout.contains("registered plug-in account-number -> assembly"), "{}", out.stdout);
    assert!(out.stdout.contains("(new,"), "{}", out.stdout);

    let again = t.run(&["register", artifacts::ACCOUNT_NUMBER, "--name", "account-number", "--json"]).ok().json();
    assert_eq!(again["assembly_is_new"], false);

    let plugins = t.run(&["plugins", "list", "--json"]).ok().json();
    assert_eq!(plugins.as_array().unwrap().len(), 1);
    assert_eq!(plugins[0]["name"], "account-number");

    let steps = t.run(&["steps", "list", "--json"]).ok().json();
    assert_eq!(steps[0]["message"], "Create");
    assert_eq!(steps[0]["stage"], "pre-operation");
    assert_eq!(steps[0]["configuration"], "ACME-");
    let id = steps[0]["id"].as_str().unwrap().to_owned();

    let shown = t.run(&["plugins", "show", "account-number"]).ok();
    assert!(shown.stdout.contains(&id), "{}", shown.stdout);
    assert!(shown.stdout.contains("plughost:plugin@0.1.0"), "{}", shown.stdout);

    // Removing the plug-in is refused while it has steps.
    let refused = t.run(&["unregister", "plugin", "account-number"]).expect_code(1);
    assert!(
        refused.stderr.contains("error[conflict]") && refused.stderr.contains("--with-steps"),
        "{}",
        refused.stderr
    );
    t.run(&["unregister", "step", &id[..8]]).ok();
    t.run(&["unregister", "plugin", "account-number"]).ok();
    assert_eq!(t.run(&["plugins", "list", "--json"]).ok().json(), serde_json::json!([]));
    let hash = again["assembly"]["hash"].as_str().unwrap();
    let cached = |t: &TestCommand| {
        std::fs::read_dir(t.data_dir().join("cache"))
            .map(|engines| engines.flatten().filter(|e| e.path().join(format!("{hash}.cwasm")).exists()).count())
            .unwrap_or(0)
    };
    assert_eq!(cached(&t), 1, "registration compiled the component into the cache");
    t.run(&["unregister", "assembly", &hash[..12]]).ok();
    assert_eq!(cached(&t), 0, "its compiled code went with it");
}

#[test]
fn steps_add_enable_disable_remove() {
    let t = TestCommand::new(BIN);
    t.run(&["register", artifacts::HOSTILE, "--name", "hostile"]).ok();
    let added = t
        .run(&[
            "steps",
            "add",
            "--plugin",
            "hostile",
            "--message",
            "Update",
            "--entity",
            "account",
            "--stage",
            "20",
            "--rank",
            "5",
            "--filter",
            "name,revenue",
            "--pre-image",
            "before:name",
            "--limit",
            "fuel=1000000",
            "--limit",
            "memory=32MiB",
            "--reuse",
            "100",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(added["filtering_attributes"], serde_json::json!(["name", "revenue"]));
    assert_eq!(added["limits"]["memory_bytes"], 32 << 20);
    assert_eq!(added["images"][0]["alias"], "before");
    let id = added["id"].as_str().unwrap();

    let disabled = t.run(&["steps", "disable", id, "--json"]).ok().json();
    assert_eq!(disabled["enabled"], false);
    let enabled = t.run(&["steps", "enable", id, "--json"]).ok().json();
    assert_eq!(enabled["enabled"], true);
    let shown = t.run(&["steps", "show", id]).ok();
    assert!(shown.stdout.contains("filter    name, revenue"), "{}", shown.stdout);

    // Dataverse's rules are enforced with a message that says what to do.
    let bad = t
        .run(&["steps", "add", "--plugin", "hostile", "--message", "Create", "--stage", "20", "--mode", "async"])
        .expect_code(1);
    assert!(bad.stderr.contains("post-operation"), "{}", bad.stderr);
    let unknown = t.run(&["steps", "add", "--plugin", "nobody", "--message", "Create", "--stage", "20"]).expect_code(1);
    assert!(unknown.stderr.contains("no plug-in named 'nobody'"), "{}", unknown.stderr);
    let bad_limit = t
        .run(&[
            "steps",
            "add",
            "--plugin",
            "hostile",
            "--message",
            "Create",
            "--stage",
            "20",
            "--limit",
            "memory=64GiB",
        ])
        .expect_code(1);
    assert!(bad_limit.stderr.contains("exceeds the host maximum"), "{}", bad_limit.stderr);

    t.run(&["steps", "remove", id]).ok();
    assert_eq!(t.run(&["steps", "list", "--json"]).ok().json(), serde_json::json!([]));
}

#[test]
fn test_runs_a_plugin_locally_and_reports_what_it_did() {
    let t = TestCommand::new(BIN);
    let ctx = t.write("ctx.json", CONTOSO);
    let out = t.run(&["test", artifacts::ACCOUNT_NUMBER, "--context", &ctx, "--json"]).ok().json();
    assert_eq!(
        out["outcome"]["succeeded"]["input_parameters"]["Target"]["entity"]["attributes"]["accountnumber"],
        "AC-2D052440"
    );
    assert_eq!(out["origin"], "compiled");
    assert!(out["fuel_used"].as_u64().unwrap() > 0);
    // A second process loads the compiled code from the cache.
    let again = t.run(&["test", artifacts::ACCOUNT_NUMBER, "--context", &ctx, "--json"]).ok().json();
    assert_eq!(again["origin"], "disk_cache");

    // A rejection exits 4 and shows the plug-in's message.
    let nameless = t.write("nameless.json", &CONTOSO.replace("Contoso", ""));
    let rejected = t.run(&["test", artifacts::ACCOUNT_NUMBER, "--context", &nameless]).expect_code(4);
    assert!(rejected.stdout.contains("failed [plugin_error]: An account needs a name"), "{}", rejected.stdout);
}

#[test]
fn test_records_the_writes_a_plugin_makes() {
    let t = TestCommand::new(BIN);
    let ctx = t.write(
        "ctx.json",
        r#"{"stage": "post-operation", "primary_entity_id": "6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01",
            "input_parameters": {"Target": {"entity": {"logical_name": "account", "attributes": {"name": "Fabrikam"}}}}}"#,
    );
    let out = t.run(&["test", artifacts::FOLLOW_UP_TASK, "--context", &ctx, "--json"]).ok().json();
    let write = &out["writes"][0];
    assert_eq!(write["operation"], "create");
    assert_eq!(write["record"]["logical_name"], "task");
    assert_eq!(write["record"]["attributes"]["subject"], "Follow up with Fabrikam");
    assert_eq!(
        write["record"]["attributes"]["regardingobjectid"]["reference"]["id"],
        "6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01"
    );
    assert!(out["trace"].as_str().unwrap().contains("created follow-up task"));
}

#[test]
fn hostile_plugins_fail_with_their_codes_through_the_cli() {
    let t = TestCommand::new(BIN);
    for (mode, extra, code) in [
        ("loop", "fuel=10000000", "out_of_fuel"),
        ("memory", "memory=16MiB", "memory_limit"),
        ("recursion", "fuel=10000000000", "stack_overflow"),
        ("trap", "fuel=10000000", "trap"),
        ("trace-flood", "trace=1KiB", "trace_limit"),
        ("huge-output", "output=1MiB", "output_too_large"),
        ("call-storm", "host_calls=100", "host_call_limit"),
    ] {
        let out =
            t.run(&["test", artifacts::HOSTILE, "--config", mode, "--limit", extra, "--json"]).expect_code(4).json();
        assert_eq!(out["outcome"]["failed"]["code"], code, "{mode}");
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let t = TestCommand::new(BIN);
    let garbage = t.write("garbage.wasm", "not wasm at all");
    let out = t.run(&["register", &garbage, "--name", "g"]).expect_code(1);
    assert!(out.stderr.contains("error[not_wasm]"), "{}", out.stderr);
    let out = t.run(&["register", artifacts::OTHER_WORLD, "--name", "o"]).expect_code(1);
    assert!(
        out.stderr.contains("error[wrong_world]") && out.stderr.contains("plughost:plugin/handler"),
        "{}",
        out.stderr
    );
    let out = t.run(&["register", artifacts::FUTURE_VERSION, "--name", "f"]).expect_code(1);
    assert!(out.stderr.contains("error[incompatible_wit_version]") && out.stderr.contains("0.2.0"), "{}", out.stderr);
    let out = t.run(&["register", artifacts::HOSTILE, "--name", "bad name!"]).expect_code(1);
    assert!(out.stderr.contains("is not a plug-in name"), "{}", out.stderr);
    let out = t.run(&["register", artifacts::HOSTILE, "--name", "h", "--step", "Create:account"]).expect_code(1);
    assert!(out.stderr.contains("MESSAGE:ENTITY:STAGE"), "{}", out.stderr);
    assert_eq!(t.run(&["plugins", "list", "--json"]).ok().json(), serde_json::json!([]), "nothing was stored");

    let bad_json = t.write("bad.json", "{ nope");
    let out = t.run(&["test", artifacts::HOSTILE, "--context", &bad_json]).expect_code(1);
    assert!(out.stderr.contains("error[bad_json]"), "{}", out.stderr);
    let bad_value = t.write("bad-value.json", r#"{"shared_variables": {"x": {"money": "1,5"}}}"#);
    let out = t.run(&["test", artifacts::HOSTILE, "--context", &bad_value]).expect_code(1);
    assert!(out.stderr.contains("not a decimal"), "{}", out.stderr);
    let missing = t.run(&["test", "/nonexistent.wasm"]).expect_code(1);
    assert!(missing.stderr.contains("cannot read component /nonexistent.wasm"), "{}", missing.stderr);
}
