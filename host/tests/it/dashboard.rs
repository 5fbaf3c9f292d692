//! The dashboard at `/ui`: in a real headless Chromium against a real server
//! (screenshots under `target/ui-screenshots/`), and its defences over plain HTTP.

use std::time::{Duration, Instant};

use plughost_test_support::browser::Browser;
use plughost_test_support::{TestServer, artifacts};
use serde_json::{Value, json};

use super::queue::{completed, create, wait_jobs};
use super::server::{register, server_with};

fn shots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

fn job(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/api/v1/jobs/{id}")).expect(200)
}

fn jobs_where(s: &TestServer, query: &str) -> Vec<Value> {
    s.get(&format!("/api/v1/jobs?limit=5000&{query}")).expect(200).as_array().unwrap().clone()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server with a trapping asynchronous step and a working one, two failed jobs
/// to be, three postponed jobs and a recurring one.
fn seeded() -> (TestServer, String) {
    let s = server_with(&[("PLUGHOST_MAX_RETRIES", "0")]);
    register(&s, artifacts::HOSTILE, "hostile", &[]);
    register(&s, artifacts::FOLLOW_UP_TASK, "follow-up", &["Create:account:post-operation:async"]);
    s.post(
        "/api/v1/steps",
        &json!({"plugin": "hostile", "name": "trap", "message": "Create", "entity": "account", "stage": "post-operation",
                "mode": "asynchronous", "configuration": "trap"}),
    )
    .expect(201);
    let steps = s.get("/api/v1/steps").expect(200);
    let follow = steps.as_array().unwrap().iter().find(|st| st["plugin"] == "follow-up").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    create(&s, "A");
    wait_jobs(&s, |j| j.len() == 2 && completed(j));
    for _ in 0..3 {
        s.post("/api/v1/jobs", &json!({"step": follow, "postpone_until": "2099-01-01T00:00:00Z"})).expect(201);
    }
    s.post(
        "/api/v1/jobs",
        &json!({"step": follow, "recurrence_pattern": "FREQ=DAILY", "recurrence_start": "2099-01-01T00:00:00Z"}),
    )
    .expect(201);
    (s, follow)
}

#[test]
fn operators_manage_jobs_from_the_dashboard_in_a_real_browser() {
    let Some(b) = Browser::start(1280, 900) else { return };
    let (s, _) = seeded();
    let dir = shots();
    let ui = |path: &str| format!("{}{path}", s.url);

    // Log in: a page sends to the login, which sends back.
    b.goto(&ui("/ui/jobs"));
    assert!(b.url().contains("/ui/login?next="), "{}", b.url());
    b.screenshot(&dir.join("login.png"));
    b.type_text(&b.find("#key"), &s.token);
    b.click(&b.find("#login button[type=submit]"));
    b.wait_for("the jobs page", || b.url().ends_with("/ui/jobs").then_some(()));

    // The counts.
    b.goto(&ui("/ui/overview"));
    let cell = |key: &str| b.text_of(&format!("[data-cell=\"{key}\"]"));
    assert_eq!(cell("plugin_execution:Failed"), "1");
    assert_eq!(cell("plugin_execution:Succeeded"), "1");
    assert_eq!(cell("plugin_execution:Waiting"), "4");
    b.screenshot(&dir.join("overview.png"));
    // Live: another failure shows without a reload.
    create(&s, "B");
    b.wait_for("the live count", || (cell("plugin_execution:Failed") == "2").then_some(()));
    assert_eq!(b.text_of("#live"), "live");
    // A hidden tab closes its event stream: no update while hidden, live again when shown.
    let set_hidden = |hidden: bool| {
        let script = "Object.defineProperty(document, 'hidden', {value: arguments[0], configurable: true}); \
                      document.dispatchEvent(new Event('visibilitychange')); \
                      return document.getElementById('live').dataset.updated || '';";
        b.execute(script, json!([hidden]))
    };
    let before = set_hidden(true);
    assert_eq!(b.text_of("#live"), "paused while hidden");
    create(&s, "C");
    wait_until("the third failure", || jobs_where(&s, "status=Failed").len() == 3);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(b.execute("return document.getElementById('live').dataset.updated || '';", json!([])), before);
    assert_eq!(cell("plugin_execution:Failed"), "2", "no update while hidden");
    set_hidden(false);
    b.wait_for("the count after the tab shows again", || (cell("plugin_execution:Failed") == "3").then_some(()));
    assert_eq!(b.text_of("#live"), "live");

    // Filter the list.
    b.goto(&ui("/ui/jobs"));
    b.choose("#f-status", "Failed");
    b.click(&b.find("#filters button[type=submit]"));
    b.wait_for("the filtered list", || b.url().contains("status=Failed").then_some(()));
    let rows = b.find_all("table.jobs tbody tr");
    assert_eq!(rows.len(), 3, "{}", b.page_text());
    assert!(rows.iter().all(|r| b.text(r).contains("Failed")));
    assert!(b.text_of("#plan").contains("status"), "the page says which index it reads");
    b.screenshot(&dir.join("jobs-failed.png"));

    // Pause the service.
    b.goto(&ui("/ui/service"));
    b.click(&b.find("form[action='/ui/service/pause'] button"));
    b.wait_for("the paused service", || (b.text_of("#service-state") == "paused").then_some(()));
    assert_eq!(s.get("/api/v1/service").expect(200)["paused"], true);
    b.screenshot(&dir.join("service.png"));

    // Open a failed job and retry it: paused, it stays ready.
    b.goto(&ui("/ui/jobs?status=Failed"));
    b.click(&b.find("table.jobs tbody tr a[href^='/ui/jobs/']"));
    b.wait_for("the job page", || b.try_find("#trace"));
    let failed_id = b.url().rsplit('/').next().unwrap().to_owned();
    assert_eq!(job(&s, &failed_id)["status"], "Failed");
    assert!(b.text_of("#trace").contains("trapping on purpose"));
    b.screenshot(&dir.join("job-failed.png"));
    b.click(&b.find("form[action$='/retry'] button"));
    b.wait_for("the retry notice", || b.page_text().contains("retry: done").then_some(()));
    assert_eq!(job(&s, &failed_id)["status"], "WaitingForResources");

    // Cancel a waiting one.
    b.goto(&ui("/ui/jobs?status=Waiting"));
    b.click(&b.find("table.jobs tbody tr a[href^='/ui/jobs/']"));
    b.wait_for("the job page", || b.try_find("form[action$='/cancel'] button"));
    let waiting_id = b.url().rsplit('/').next().unwrap().to_owned();
    b.click(&b.find("form[action$='/cancel'] button"));
    b.wait_for("the cancel notice", || b.page_text().contains("cancel: done").then_some(()));
    assert_eq!(job(&s, &waiting_id)["status"], "Canceled");

    // The recurring page shows the recurring job.
    b.goto(&ui("/ui/recurring"));
    assert!(b.text_of("table.recurring").contains("FREQ=DAILY"));
    b.screenshot(&dir.join("recurring.png"));

    // A selection: pause one waiting job... refused (postponed, not recurring): the page says so.
    b.goto(&ui("/ui/jobs?status=Waiting&order=newest"));
    let boxes = b.find_all("input[name=id]");
    assert_eq!(boxes.len(), 3, "two postponed and the recurring one: {}", b.page_text());
    b.click(&boxes[1]);
    b.click(&boxes[2]);
    b.choose("#bulk select[name=action]", "cancel");
    b.click(&b.find("#apply-selected"));
    b.wait_for("the selection's notice", || b.page_text().contains("cancel: done for 2 jobs").then_some(()));
    assert_eq!(jobs_where(&s, "status=Waiting").len(), 1);

    // Every matching job, as a system job (it runs once the service resumes).
    b.goto(&ui("/ui/service"));
    b.click(&b.find("form[action='/ui/service/resume'] button"));
    b.wait_for("the running service", || (b.text_of("#service-state") == "running").then_some(()));
    b.goto(&ui("/ui/jobs?status=Waiting"));
    b.choose("#bulk select[name=action]", "cancel");
    b.click(&b.find("#apply-all"));
    // The list's type filter names "Bulk job action" too: wait for the job's own page.
    let action_id = b.wait_for("the action's job page", || {
        let url = b.url();
        let id = url.split("/ui/jobs/").nth(1)?.split('?').next()?.to_owned();
        (id.len() == 36 && b.page_text().contains("Bulk job action")).then_some(id)
    });
    wait_until("the bulk action to finish", || {
        let j = job(&s, &action_id);
        assert_ne!(j["status"], "Failed", "{j}");
        j["status"] == "Succeeded"
    });
    let done = job(&s, &action_id);
    assert_eq!((&done["output"]["Applied"], &done["output"]["Skipped"]), (&json!(1), &json!(0)), "{done}");
    assert_eq!(jobs_where(&s, "status=Waiting").len(), 0);

    // Plug-ins and steps, with each step's counts; workers.
    b.goto(&ui("/ui/plugins"));
    let steps = b.text_of("table.steps");
    assert!(steps.contains("trap") && steps.contains("hostile"), "{steps}");
    b.screenshot(&dir.join("plugins.png"));
    // Disable a step from the page.
    b.click(&b.find("table.steps form[action$='/disable'] button"));
    b.wait_for("the disable notice", || b.page_text().contains("disable: done").then_some(()));
    let steps = s.get("/api/v1/steps").expect(200);
    assert_eq!(steps.as_array().unwrap().iter().filter(|st| st["enabled"] == false).count(), 1, "{steps}");
    b.goto(&ui("/ui/workers"));
    assert!(b.page_text().contains("Worker threads"));
    b.screenshot(&dir.join("workers.png"));

    // Phone width: nothing wider than the screen (tables scroll in their box).
    b.set_size(390, 844);
    for (path, shot) in [("/ui/jobs", "jobs-phone.png"), ("/ui/overview", "overview-phone.png")] {
        b.goto(&ui(path));
        b.find("main h1");
        let fits = b.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", json!([]));
        assert_eq!(fits, true, "{path} is wider than a phone");
        b.screenshot(&dir.join(shot));
    }
    b.set_size(1280, 900);

    // A user who cannot manage jobs sees them read-only.
    s.run(&["users", "create", "viewer", "--role", "basic-user", "--json"]).ok();
    let key =
        s.run(&["keys", "create", "--user", "viewer", "--json"]).ok().json()["secret"].as_str().unwrap().to_owned();
    b.delete_cookies();
    b.goto(&ui("/ui/login"));
    b.type_text(&b.find("#key"), &key);
    b.click(&b.find("#login button[type=submit]"));
    b.wait_for("the overview", || b.url().ends_with("/ui/overview").then_some(()));
    b.goto(&ui("/ui/jobs"));
    assert!(b.page_text().contains("read-only"));
    assert!(b.try_find("#bulk").is_none(), "no actions for a read-only user");
    b.goto(&ui("/ui/service"));
    assert!(b.page_text().contains("forbidden"), "{}", b.page_text());
}

/// An HTTP client of the dashboard that keeps its session cookie.
struct Client {
    agent: ureq::Agent,
    base: String,
    cookie: String,
}

struct Answer {
    status: u16,
    location: String,
    cookie: String,
    body: String,
}

impl Client {
    fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
        Client { agent, base: base.to_owned(), cookie: String::new() }
    }

    fn send(&self, method: &str, path: &str, form: Option<&[(&str, &str)]>, headers: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "GET" => {
                let mut req = self.agent.get(&url).header("cookie", &self.cookie);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            _ => {
                let body = serde_urlencoded::to_string(form.unwrap_or(&[])).unwrap();
                let mut req = self
                    .agent
                    .post(&url)
                    .header("cookie", &self.cookie)
                    .header("content-type", "application/x-www-form-urlencoded");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.as_bytes())
            }
        }
        .expect("HTTP");
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let (location, cookie) = (header("location"), header("set-cookie"));
        Answer {
            status: r.status().as_u16(),
            location,
            cookie,
            body: r.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn login(&mut self, key: &str) -> Answer {
        let a = self.send("POST", "/ui/login", Some(&[("key", key), ("next", "/ui/jobs")]), &[]);
        if let Some(v) = a.cookie.split(';').next() {
            self.cookie = v.to_owned();
        }
        a
    }

    /// The session's CSRF token, from the forms of the page at `path`.
    fn csrf(&self, path: &str) -> String {
        let page = self.send("GET", path, None, &[]).body;
        let at = page.find("name=\"csrf\" value=\"").expect("a form with a token") + 19;
        page[at..at + 64].to_owned()
    }
}

#[test]
fn the_dashboard_session_is_a_strict_cookie_and_every_action_needs_its_csrf_token() {
    let s = server_with(&[]);
    let mut c = Client::new(&s.url);
    // Without a session: the login for a page, 401 for an action or the event stream.
    let a = c.send("GET", "/ui/jobs", None, &[]);
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/login?next=%2Fui%2Fjobs"));
    assert_eq!(c.send("GET", "/ui/events", None, &[]).status, 401);
    assert_eq!(c.send("POST", "/ui/service/pause", Some(&[]), &[]).status, 401);
    // A wrong key: no session.
    let bad = c.login("not-a-key");
    assert_eq!(bad.status, 401);
    assert!(bad.cookie.is_empty() && bad.body.contains("present a valid API key"), "{}", bad.body);
    // The right one: a strict, HttpOnly cookie for /ui only.
    let ok = c.login(&s.token);
    assert_eq!((ok.status, ok.location.as_str()), (303, "/ui/jobs"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(ok.cookie.contains(flag), "{}", ok.cookie);
    }
    let page = c.send("GET", "/ui/overview", None, &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Jobs by operation type and status"));
    // An action without the token, with a wrong one, or from a foreign origin changes nothing.
    assert_eq!(c.send("POST", "/ui/service/pause", Some(&[]), &[]).status, 403);
    assert_eq!(c.send("POST", "/ui/service/pause", Some(&[("csrf", &"0".repeat(64))]), &[]).status, 403);
    let token = c.csrf("/ui/service");
    let foreign = c.send("POST", "/ui/service/pause", Some(&[("csrf", &token)]), &[("origin", "https://evil.example")]);
    assert_eq!(foreign.status, 403);
    assert_eq!(s.get("/api/v1/service").expect(200)["paused"], false);
    // A JSON body is not a form.
    let json_post = c
        .agent
        .post(format!("{}/ui/service/pause", s.url))
        .header("cookie", &c.cookie)
        .header("content-type", "application/json")
        .send(b"{}".as_slice())
        .unwrap();
    assert_eq!(json_post.status().as_u16(), 415);
    // With it, the action is done and audited.
    let done = c.send("POST", "/ui/service/pause", Some(&[("csrf", &token)]), &[]);
    assert_eq!((done.status, done.location.as_str()), (303, "/ui/service"));
    assert_eq!(s.get("/api/v1/service").expect(200)["paused"], true);
    let audit = s.get("/api/v1/audit").expect(200);
    assert!(audit.to_string().contains("service.pause"), "{audit}");
    // Logging out ends the session.
    assert_eq!(c.send("POST", "/ui/logout", Some(&[("csrf", &token)]), &[]).status, 303);
    assert_eq!(c.send("GET", "/ui/jobs", None, &[]).status, 303);
}

#[test]
fn revoking_the_key_ends_its_dashboard_session_and_read_only_users_cannot_act() {
    let s = server_with(&[]);
    s.run(&["users", "create", "ops", "--role", "basic-user", "--json"]).ok();
    let key = s.run(&["keys", "create", "--user", "ops", "--json"]).ok().json();
    let mut c = Client::new(&s.url);
    assert_eq!(c.login(key["secret"].as_str().unwrap()).status, 303);
    let page = c.send("GET", "/ui/jobs", None, &[]);
    assert!(page.body.contains("read-only") && !page.body.contains("id=\"bulk\""), "{}", page.body);
    // The forms are not offered, and the actions are refused anyway.
    let token = c.csrf("/ui/jobs");
    let refused = c.send("POST", "/ui/service/pause", Some(&[("csrf", &token)]), &[]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bulk = c.send(
        "POST",
        "/ui/jobs/action",
        Some(&[("csrf", &token), ("action", "cancel"), ("scope", "all"), ("f_status", "Waiting")]),
        &[],
    );
    assert_eq!(bulk.status, 403, "{}", bulk.body);
    // Revoking the key ends the session at its next request.
    s.post(&format!("/api/v1/keys/{}/revoke", key["key"]["id"].as_str().unwrap()), &json!({})).expect(200);
    let after = c.send("GET", "/ui/jobs", None, &[]);
    assert_eq!(after.status, 303, "back to the login");
}

#[test]
fn the_cli_lists_jobs_by_type_plugin_record_and_name_like_the_dashboard() {
    let (s, _) = seeded();
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["jobs", "list", "--json"];
        all.extend_from_slice(args);
        let out = s.run(&all).ok().json();
        out.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&["--plugin", "hostile"]), vec!["trap"]);
    assert_eq!(ids(&["--name", "TRA"]), vec!["trap"], "any case");
    assert_eq!(ids(&["--type", "workflow"]), Vec::<String>::new());
    assert_eq!(ids(&["--type", "1", "--status", "Waiting"]).len(), 4, "three postponed and the recurring one");
    let account = s.get("/api/v1/entities/account").expect(200)["entities"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&["--record", &account]).len(), 2, "the two jobs of its Create");
    let bad = s.run(&["jobs", "list", "--type", "nope"]).expect_code(1);
    assert!(bad.stderr.contains("unknown operation type 'nope'"), "{}", bad.stderr);
    // Without a server, on the store itself: the same answers.
    let cli = s.kill();
    let _ = std::fs::remove_file(cli.data_dir().join("server.json"));
    let out = cli.run(&["jobs", "list", "--plugin", "hostile", "--json"]).ok().json();
    assert_eq!(out.as_array().unwrap().len(), 1);
}

#[test]
fn the_plugins_page_lists_recording_steps_and_their_runs() {
    let s = server_with(&[]);
    s.run(&["register", artifacts::ACCOUNT_NUMBER, "--name", "numbers"]).ok();
    let step = s
        .post(
            "/api/v1/steps",
            &json!({"plugin": "numbers", "message": "Create", "entity": "account", "stage": "pre-operation", "record_runs": 2}),
        )
        .expect(201);
    assert_eq!(s.post("/api/v1/entities/account", &json!({"name": ""})).status, 400);
    let run = s.get("/api/v1/runs").expect(200)[0]["id"].as_str().unwrap().to_owned();
    let mut c = Client::new(&s.url);
    c.login(&s.token);
    let page = c.send("GET", "/ui/plugins", None, &[]).body;
    let name = step["name"].as_str().unwrap();
    assert!(page.contains("Recorded runs") && page.contains(&run), "{page}");
    assert!(page.contains("plugin_error"), "the run's outcome is shown");
    let profiles = &page[page.find("Runs left to record").unwrap()..];
    let profiles = &profiles[..profiles.find("</table>").unwrap()];
    assert!(profiles.contains(name) && profiles.contains(">1<"), "one run left of two: {profiles}");
    // Unregistering the plug-in with its steps ends the recording; the runs stay.
    s.run(&["unregister", "plugin", "numbers", "--with-steps"]).ok();
    let page = c.send("GET", "/ui/plugins", None, &[]).body;
    let profiles = &page[page.find("Runs left to record").unwrap()..];
    let profiles = &profiles[..profiles.find("</table>").unwrap()];
    assert!(profiles.contains("class=\"empty\">none"), "no step records now: {profiles}");
    assert!(page.contains(&run));
}
