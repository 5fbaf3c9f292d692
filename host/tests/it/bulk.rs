//! Bulk operations through a real server: an import and a delete run as system jobs,
//! row by row through the pipeline, in batches, with a per-row failure report.

use plughost_test_support::artifacts;
use serde_json::{Value, json};

use super::queue::{completed, wait_jobs};
use super::server::{query, register, server};

fn job(s: &plughost_test_support::TestServer, id: &str) -> Value {
    s.get(&format!("/api/v1/jobs/{id}")).expect(200)
}

#[test]
fn an_import_runs_every_row_through_the_pipeline_and_reports_the_failures() {
    let s = server();
    register(&s, artifacts::ACCOUNT_NUMBER, "account-number", &["Create:account:pre-operation"]);
    // 450 rows: three batches. Row 5 and row 300 have no name (the plug-in refuses
    // them); row 10 has a credit limit that is not a number.
    let mut csv = String::from("name,creditlimit\n");
    for row in 1..=450 {
        let name = if row == 5 || row == 300 { String::new() } else { format!("row-{row}") };
        let limit = if row == 10 { "lots".to_owned() } else { format!("{row}.50") };
        csv.push_str(&format!("{name},{limit}\n"));
    }
    let file = s.cli.write("accounts.csv", &csv);
    let queued = s.run(&["bulk", "import", &file, "--entity", "account", "--json"]).ok().json();
    assert_eq!(queued["operation_type"], "bulk_import");
    assert_eq!(queued["name"], "Import of 450 account rows");
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_jobs(&s, completed);

    let done = job(&s, &id);
    assert_eq!(done["status"], "Succeeded", "{done:#}");
    let output = &done["output"];
    assert_eq!((&output["Processed"], &output["Succeeded"], &output["Failed"]), (&json!(450), &json!(447), &json!(3)));
    assert_eq!(output["Done"], true);
    let failures = output["Failures"]["entities"].as_array().unwrap_or_else(|| panic!("{output:#}"));
    let rows: Vec<&Value> = failures.iter().map(|f| &f["attributes"]["row"]).collect();
    assert_eq!(rows, vec![&json!(5), &json!(10), &json!(300)], "{failures:#?}");
    assert_eq!(failures[0]["attributes"]["errorcode"], "plugin_error");
    assert!(failures[1]["attributes"]["message"].as_str().unwrap().contains("column 'creditlimit'"), "{failures:#?}");
    assert_eq!(done["message"], "done: 450 processed, 447 succeeded, 3 failed");

    let accounts = query(&s, "account");
    assert_eq!(accounts.len(), 447, "every good row exactly once");
    assert!(accounts.iter().all(|a| a["attributes"]["accountnumber"].is_string()), "the sync plug-in ran on each");
    let row7 = accounts.iter().find(|a| a["attributes"]["name"] == "row-7").unwrap();
    assert_eq!(row7["attributes"]["creditlimit"], json!({"money": "7.50"}));

    // JSON lines through the API.
    let lines = b"{\"name\": \"jsonl-1\", \"creditlimit\": {\"money\": \"1.00\"}}\n\n{\"name\": \"jsonl-2\"}\n";
    let queued = s.post_raw("/api/v1/bulk/import?entity=account&format=jsonl&name=lines", lines).expect(201);
    assert_eq!(queued["name"], "lines");
    wait_jobs(&s, completed);
    assert_eq!(job(&s, queued["id"].as_str().unwrap())["output"]["Succeeded"], 2);

    // A bad file is refused whole, and nothing is queued.
    let jobs_before = s.get("/api/v1/jobs").expect(200).as_array().unwrap().len();
    for (query, body, code, why) in [
        ("entity=account", &b"name,colour\nA,red\n"[..], "invalid", "column 'colour'"),
        ("entity=account&format=jsonl", b"[1, 2]\n", "invalid", "line 1"),
        ("entity=account&format=xml", b"<a/>", "invalid", "unknown import format"),
        ("entity=nothing", b"name\nA\n", "unknown_entity", "unknown entity 'nothing'"),
        ("entity=account", b"name\n", "invalid", "no rows"),
    ] {
        let r = s.post_raw(&format!("/api/v1/bulk/import?{query}"), body);
        assert_eq!(r.code(), code, "{query}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(why), "{query}: {}", r.body);
    }
    assert_eq!(s.get("/api/v1/jobs").expect(200).as_array().unwrap().len(), jobs_before);
}

#[test]
fn a_bulk_delete_removes_what_its_query_selects_through_the_pipeline() {
    let s = server();
    let mut csv = String::from("name\n");
    for row in 0..250 {
        csv.push_str(&format!("{}-{row}\n", if row % 2 == 0 { "old" } else { "keep" }));
    }
    let file = s.cli.write("accounts.csv", &csv);
    s.run(&["bulk", "import", &file, "--entity", "account"]).ok();
    wait_jobs(&s, completed);
    assert_eq!(query(&s, "account").len(), 250);

    // 125 match: a batch of 200 takes them all, but the job pages by id until the end.
    let queued = s.run(&["bulk", "delete", "account", "--where", "name:like:old-%", "--json"]).ok().json();
    assert_eq!(queued["operation_type"], "bulk_delete");
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_jobs(&s, completed);
    let done = job(&s, &id);
    assert_eq!(done["status"], "Succeeded", "{done:#}");
    assert_eq!((&done["output"]["Succeeded"], &done["output"]["Failed"]), (&json!(125), &json!(0)));
    let left = query(&s, "account");
    assert_eq!(left.len(), 125);
    assert!(left.iter().all(|a| a["attributes"]["name"].as_str().unwrap().starts_with("keep-")));

    // A recurring bulk delete runs now, then waits for its next occurrence, ready to start over.
    let recurring = s
        .post(
            "/api/v1/bulk/delete",
            &json!({"query": {"entity_name": "account", "criteria": {"conditions": [{"attribute": "name", "operator": "like", "values": ["keep-1%"]}]}},
                    "recurrence_pattern": "FREQ=DAILY", "name": "nightly"}),
        )
        .expect(201);
    let rid = recurring["id"].as_str().unwrap().to_owned();
    wait_jobs(&s, |j| {
        j.iter().any(|j| j["id"] == rid.as_str() && j["status"] == "Waiting" && j["output"]["Done"] == true)
    });
    let again = job(&s, &rid);
    assert!(again["output"]["Succeeded"].as_i64().unwrap() > 0, "{again:#}");
    assert!(query(&s, "account").iter().all(|a| !a["attributes"]["name"].as_str().unwrap().starts_with("keep-1")));

    // Bad requests are refused with the reason, and queue nothing.
    for (body, why) in [
        (
            json!({"query": {"entity_name": "account", "criteria": {"conditions": [{"attribute": "colour", "operator": "equal", "values": ["red"]}]}}}),
            "no attribute 'colour'",
        ),
        (json!({"query": {"entity_name": "account"}, "recurrence_pattern": "FREQ=SOMETIMES"}), "FREQ"),
        (json!({"query": {"entity_name": "nothing"}}), "unknown entity"),
        (json!({"query": {"entity_name": "account"}, "colour": 1}), "colour"),
    ] {
        let r = s.post("/api/v1/bulk/delete", &body);
        assert!(r.status == 400 || r.status == 404, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(why), "{body}: {}", r.body);
    }
}
