//! Bulk mail, campaign activity distribution and outgoing email, delivered to a real
//! SMTP server on 127.0.0.1 (aiosmtpd, `tests/smtp/sink.py`) by a real server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use plughost_test_support::TestServer;
use plughost_test_support::smtp::SmtpSink;
use serde_json::{Value, json};

use super::BIN;
use super::server::{query, server_with};

const FROM: &str = "Contoso News <news@contoso.example>";

fn mail_server(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestServer {
    let url = sink.url();
    let mut env = vec![("PLUGHOST_MAIL_SMTP", url.as_str()), ("PLUGHOST_MAIL_FROM", FROM)];
    env.extend_from_slice(extra);
    let s = server_with(&env);
    define_contact(&s);
    s
}

fn define_contact(s: &TestServer) {
    s.put(
        "/api/v1/metadata/entities/contact",
        &json!({"attributes": {"fullname": "text", "emailaddress1": "text", "telephone1": "text", "donotemail": "boolean", "donotphone": "boolean"}}),
    )
    .expect(200);
}

fn create(s: &TestServer, entity: &str, attributes: Value) -> String {
    s.post(&format!("/api/v1/entities/{entity}"), &attributes).expect(201)["id"].as_str().unwrap().to_owned()
}

fn reference(entity: &str, id: &str) -> Value {
    json!({"reference": {"logical_name": entity, "id": id}})
}

fn job(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/api/v1/jobs/{id}")).expect(200)
}

fn wait_until<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finished(s: &TestServer, id: &str) -> Value {
    wait_until(&format!("job {id}"), 60, || {
        let j = job(s, id);
        matches!(j["status"].as_str(), Some("Succeeded" | "Failed" | "Canceled")).then_some(j)
    })
}

/// Emails by status code, once every email is Sent or Failed.
fn settled_emails(s: &TestServer, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} emails sent or failed"), 60, || {
        let emails = query(s, "email");
        let done = emails.iter().filter(|e| matches!(e["attributes"]["statuscode"]["option"].as_i64(), Some(3 | 8)));
        (emails.len() == n && done.count() == n).then_some(emails)
    })
}

fn attr<'a>(record: &'a Value, name: &str) -> &'a Value {
    &record["attributes"][name]
}

#[test]
fn bulk_mail_renders_one_email_per_record_and_each_is_delivered_once_over_smtp() {
    let sink = SmtpSink::start("ok");
    let s = mail_server(&sink, &[]);
    let people = [("Ada Lovelace", Some("ada@example.com"), false), ("Alan Turing", Some("alan@example.com"), false)];
    for (name, email, opted_out) in people {
        create(&s, "contact", json!({"fullname": name, "emailaddress1": email, "donotemail": opted_out}));
    }
    create(&s, "contact", json!({"fullname": "Nobody"}));
    create(&s, "contact", json!({"fullname": "Quiet", "emailaddress1": "quiet@example.com", "donotemail": true}));
    create(&s, "contact", json!({"fullname": "Typo", "emailaddress1": "typo.example.com"}));
    create(
        &s,
        "template",
        json!({"name": "welcome", "entity": "contact", "subject": "Welcome, {{fullname}}", "body": "Dear {{ fullname }},\nthank you.\n"}),
    );

    let queued = s.run(&["mail", "bulk", "contact", "--template", "welcome", "--json"]).ok().json();
    assert_eq!(queued["operation_type"], "bulk_email");
    let done = finished(&s, queued["id"].as_str().unwrap());
    assert_eq!(done["status"], "Succeeded", "{done:#}");
    let out = &done["output"];
    assert_eq!((&out["Processed"], &out["Succeeded"], &out["Skipped"]), (&json!(5), &json!(2), &json!(3)), "{out:#}");
    let reasons: BTreeSet<&str> =
        out["Skips"]["entities"].as_array().unwrap().iter().map(|f| attr(f, "errorcode").as_str().unwrap()).collect();
    assert_eq!(reasons, BTreeSet::from(["invalid_address", "no_address", "opted_out"]));

    let got = sink.wait_for(2, 30);
    let emails = settled_emails(&s, 2);
    for email in &emails {
        let id = email["id"].as_str().unwrap();
        assert_eq!(attr(email, "statuscode"), &json!({"option": 3}), "{email:#}");
        assert!(attr(email, "senton")["datetime"].is_string(), "{email:#}");
        let message_id = format!("<{id}@contoso.example>");
        assert_eq!(attr(email, "messageid"), &json!(message_id));
        let m = got.iter().find(|m| m.message_id == message_id).expect("the email's message arrived");
        assert_eq!(m.to, vec![attr(email, "to").as_str().unwrap().to_owned()]);
        assert_eq!(m.from, "news@contoso.example");
        let name = if m.to[0].starts_with("ada") { "Ada Lovelace" } else { "Alan Turing" };
        assert_eq!(m.subject, format!("Welcome, {name}"));
        assert_eq!(m.body.replace("\r\n", "\n").trim_end(), format!("Dear {name},\nthank you."));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 2, "each email once");

    // Bad input is refused with a clear error, and nothing is queued.
    let jobs_before = s.get("/api/v1/jobs?limit=5000").expect(200).as_array().unwrap().len();
    for (body, code, why) in [
        (json!({"template": "nope", "query": {"entity_name": "contact"}}), "not_found", "no template 'nope'"),
        (json!({"template": "welcome", "query": {"entity_name": "account"}}), "invalid", "for contact records"),
        (
            json!({"template": "welcome", "query": {"entity_name": "contact"}, "address_attribute": "donotemail"}),
            "invalid",
            "no text attribute 'donotemail'",
        ),
        (json!({"template": "welcome", "query": {"entity_name": "contact"}, "sender": "nobody"}), "invalid", "sender"),
    ] {
        let r = s.post("/api/v1/mail/bulk", &body);
        assert_eq!(r.code(), code, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(why), "{body}: {}", r.body);
    }
    let bad = create(&s, "template", json!({"name": "bad", "subject": "Hi {{shoesize}}"}));
    let r = s.post("/api/v1/mail/bulk", &json!({"template": bad, "query": {"entity_name": "contact"}}));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("no attribute 'shoesize'"), "{}", r.body);
    assert_eq!(s.get("/api/v1/jobs?limit=5000").expect(200).as_array().unwrap().len(), jobs_before);
}

#[test]
fn a_campaign_activity_reaches_each_member_once_and_logs_every_outcome() {
    let sink = SmtpSink::start("ok");
    let s = mail_server(&sink, &[]);
    let mut c = BTreeMap::new();
    for (key, attrs) in [
        ("a", json!({"fullname": "Ann", "emailaddress1": "ann@example.com", "telephone1": "+1 555 0101"})),
        ("b", json!({"fullname": "Bob", "emailaddress1": "bob@example.com"})),
        (
            "c",
            json!({"fullname": "Cy", "emailaddress1": "cy@example.com", "telephone1": "+1 555 0103", "donotphone": true}),
        ),
        (
            "d",
            json!({"fullname": "Di", "emailaddress1": "di@example.com", "donotemail": true, "telephone1": "+1 555 0104"}),
        ),
        ("e", json!({"fullname": "Ed"})),
        ("f", json!({"fullname": "Flo", "emailaddress1": "flo@example.com"})),
    ] {
        c.insert(key, create(&s, "contact", attrs));
    }
    let list = |name: &str, members: &[&str]| {
        let id = create(&s, "list", json!({"name": name, "membertype": "contact"}));
        for m in members {
            create(
                &s,
                "listmember",
                json!({"listid": reference("list", &id), "entityid": reference("contact", &c[m])}),
            );
        }
        id
    };
    let first = list("first", &["a", "b", "d"]);
    let second = list("second", &["b", "c", "e"]);
    let dynamic = create(
        &s,
        "list",
        json!({"name": "flo", "membertype": "contact", "dynamic": true,
               "query": r#"{"conditions": [{"attribute": "fullname", "operator": "equal", "values": ["Flo"]}]}"#}),
    );
    let campaign = create(&s, "campaign", json!({"name": "Spring"}));
    let activity = |channel: &str, lists: &[&str]| {
        let id = create(
            &s,
            "campaignactivity",
            json!({"campaignid": reference("campaign", &campaign), "channel": channel,
                   "subject": "Spring offer for {{fullname}}", "body": "Hello {{fullname}}"}),
        );
        for l in lists {
            create(
                &s,
                "campaignactivityitem",
                json!({"campaignactivityid": reference("campaignactivity", &id), "listid": reference("list", l)}),
            );
        }
        id
    };
    let email_activity = activity("email", &[&first, &second, &dynamic]);
    let phone_activity = activity("phonecall", &[&first, &second]);

    let queued = s.run(&["campaigns", "distribute", &email_activity, "--json"]).ok().json();
    assert_eq!(queued["operation_type"], "activity_propagation");
    let done = finished(&s, queued["id"].as_str().unwrap());
    assert_eq!(done["status"], "Succeeded", "{done:#}");
    assert_eq!(
        (&done["output"]["Processed"], &done["output"]["Succeeded"], &done["output"]["Skipped"]),
        (&json!(6), &json!(4), &json!(2)),
        "b is on two lists: once; {:#}",
        done["output"]
    );
    let logs = query(&s, "bulkoperationlog");
    let outcome = |who: &str| {
        let rows: Vec<&Value> = logs
            .iter()
            .filter(|l| attr(l, "campaignactivityid")["reference"]["id"] == json!(email_activity))
            .filter(|l| attr(l, "regardingobjectid")["reference"]["id"] == json!(c[who]))
            .collect();
        assert_eq!(rows.len(), 1, "one log row for {who}: {rows:#?}");
        attr(rows[0], "outcome").as_str().unwrap().to_owned()
    };
    let outcomes: Vec<String> = ["a", "b", "c", "d", "e", "f"].iter().map(|w| outcome(w)).collect();
    assert_eq!(outcomes, ["created", "created", "created", "opted_out", "no_address", "created"]);
    let got = sink.wait_for(4, 30);
    let mut to: Vec<&str> = got.iter().map(|m| m.to[0].as_str()).collect();
    to.sort();
    assert_eq!(to, ["ann@example.com", "bob@example.com", "cy@example.com", "flo@example.com"]);
    assert!(got.iter().any(|m| m.subject == "Spring offer for Flo" && m.body.trim() == "Hello Flo"), "{got:#?}");
    let emails = settled_emails(&s, 4);
    assert!(emails.iter().all(|e| attr(e, "campaignactivityid")["reference"]["id"] == json!(email_activity)));
    let record = s.get(&format!("/api/v1/entities/campaignactivity/{email_activity}")).expect(200);
    assert!(attr(&record, "distributedon")["datetime"].is_string(), "{record:#}");

    // A phone call activity: no email, the members' numbers; opted out and numberless skipped.
    let queued = s.post(&format!("/api/v1/campaigns/activities/{phone_activity}/distribute"), &json!({})).expect(201);
    let done = finished(&s, queued["id"].as_str().unwrap());
    assert_eq!((&done["output"]["Succeeded"], &done["output"]["Skipped"]), (&json!(2), &json!(3)), "{done:#}");
    let calls = query(&s, "phonecall");
    let mut numbers: Vec<&str> = calls.iter().map(|p| attr(p, "phonenumber").as_str().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, ["+1 555 0101", "+1 555 0104"], "Ann and Di (who opted out of email only)");
    assert_eq!(query(&s, "email").len(), 4, "no email for a phone call activity");

    // An activity that targets no list is refused, and so is an unknown channel.
    let lonely = activity("email", &[]);
    let r = s.post(&format!("/api/v1/campaigns/activities/{lonely}/distribute"), &json!({}));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("targets no list"), "{}", r.body);
    let fax = activity("fax", &[&first]);
    let r = s.post(&format!("/api/v1/campaigns/activities/{fax}/distribute"), &json!({}));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("unknown channel 'fax'"), "{}", r.body);
}

#[test]
fn a_greylisting_server_gets_the_message_again_and_a_rejected_one_fails_alone() {
    let sink = SmtpSink::start("greylist,reject:bounce");
    let s = mail_server(&sink, &[("PLUGHOST_MAIL_RETRY_BACKOFF_MS", "300")]);
    // Emails written Pending Send by hand wake the outgoing-mail job.
    for to in ["one@example.com", "bounce@example.com", "two@example.com"] {
        create(
            &s,
            "email",
            json!({"to": to, "subject": format!("for {to}"), "body": "hi", "statuscode": {"option": 6}}),
        );
    }
    let emails = settled_emails(&s, 3);
    let by_to = |to: &str| emails.iter().find(|e| attr(e, "to") == &json!(to)).unwrap();
    for to in ["one@example.com", "two@example.com"] {
        let e = by_to(to);
        assert_eq!(attr(e, "statuscode"), &json!({"option": 3}), "{e:#}");
        assert_eq!(attr(e, "attempts"), &json!(2), "greylisted once, then taken: {e:#}");
    }
    let bounced = by_to("bounce@example.com");
    assert_eq!(attr(bounced, "statuscode"), &json!({"option": 8}), "{bounced:#}");
    let error = attr(bounced, "error").as_str().unwrap();
    assert!(error.contains("550") && error.contains("no such user"), "the server's reply: {error}");
    let got = sink.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    let mail_job = s.get("/api/v1/jobs?type=outgoing_activity").expect(200);
    let mail_job = &mail_job.as_array().unwrap()[0];
    assert_eq!(mail_job["name"], "Outgoing e-mail");
    assert_eq!(mail_job["recurrence_pattern"], "FREQ=MINUTELY");
}

#[test]
fn killed_mid_delivery_no_email_is_rendered_twice_and_a_message_repeats_at_most_once() {
    let sink = SmtpSink::start("ok");
    // 20 messages a second: the kill lands mid-delivery. The killed server's lease on
    // the outgoing-mail job runs out after a second and a half.
    let env = [("PLUGHOST_MAIL_MAX_PER_MINUTE", "1200"), ("PLUGHOST_LEASE_MS", "1500")];
    let s = mail_server(&sink, &env);
    const N: usize = 120;
    let rows: String =
        (0..N).map(|i| format!("{{\"fullname\": \"P{i}\", \"emailaddress1\": \"p{i}@example.com\"}}\n")).collect();
    let file = s.cli.write("people.jsonl", &rows);
    s.run(&["bulk", "import", &file, "--entity", "contact", "--wait"]).ok();
    create(&s, "template", json!({"name": "t", "subject": "Hi {{fullname}}", "body": "-"}));
    s.run(&["mail", "bulk", "contact", "--template", "t"]).ok();
    sink.wait_for(20, 60);
    let cli = s.kill();
    let before = sink.received().len();
    assert!(before < N, "killed mid-delivery ({before} of {N} sent)");
    let url = sink.url();
    let s = TestServer::start_in(
        BIN,
        cli,
        &[("PLUGHOST_MAIL_SMTP", url.as_str()), ("PLUGHOST_MAIL_FROM", FROM), env[0], env[1]],
    );
    let emails = settled_emails(&s, N);
    assert_eq!(emails.len(), N, "each email rendered once");
    let got = sink.received();
    let ids: BTreeSet<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), N, "every email delivered");
    assert!(got.len() <= N + 1, "at most the message in flight at the kill went twice: {} for {N}", got.len());
    for e in &emails {
        assert_eq!(attr(e, "statuscode"), &json!({"option": 3}), "{e:#}");
        assert!(ids.contains(attr(e, "messageid").as_str().unwrap()));
    }
}

#[test]
fn with_remote_workers_a_worker_renders_and_only_the_server_sends() {
    let sink = SmtpSink::start("ok");
    // The server runs no jobs of its own but the outgoing mail (its SMTP settings).
    let s = mail_server(&sink, &[("PLUGHOST_WORKERS", "0")]);
    let _worker = plughost_test_support::TestWorker::start(BIN, &s.url, s.cli.data_dir(), "mail-w", &[]);
    for i in 0..3 {
        create(&s, "contact", json!({"fullname": format!("R{i}"), "emailaddress1": format!("r{i}@example.com")}));
    }
    create(&s, "template", json!({"name": "t", "subject": "Hi {{fullname}}", "body": "-"}));
    let queued =
        s.post("/api/v1/mail/bulk", &json!({"template": "t", "query": {"entity_name": "contact"}})).expect(201);
    let done = finished(&s, queued["id"].as_str().unwrap());
    assert_eq!((&done["status"], &done["output"]["Succeeded"]), (&json!("Succeeded"), &json!(3)), "{done:#}");
    settled_emails(&s, 3);
    assert_eq!(sink.wait_for(3, 30).len(), 3);
    // A distribution on the worker too: it reads the activity, its lists and members there.
    let list = create(&s, "list", json!({"name": "all", "membertype": "contact", "dynamic": true, "query": "{}"}));
    let activity = create(&s, "campaignactivity", json!({"channel": "email", "subject": "Again {{fullname}}"}));
    create(
        &s,
        "campaignactivityitem",
        json!({"campaignactivityid": reference("campaignactivity", &activity), "listid": reference("list", &list)}),
    );
    let queued = s.post(&format!("/api/v1/campaigns/activities/{activity}/distribute"), &json!({})).expect(201);
    let done = finished(&s, queued["id"].as_str().unwrap());
    assert_eq!((&done["status"], &done["output"]["Succeeded"]), (&json!("Succeeded"), &json!(3)), "{done:#}");
    settled_emails(&s, 6);
    assert_eq!(sink.wait_for(6, 30).len(), 6);
    let mail_job = &s.get("/api/v1/jobs?type=outgoing_activity").expect(200)[0];
    assert_eq!(
        (&mail_job["retry_count"], &mail_job["error_code"]),
        (&json!(0), &Value::Null),
        "never leased by the worker: {mail_job:#}"
    );
}
