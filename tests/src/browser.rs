//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`): a `chromedriver` on a free 127.0.0.1 port, one session,
//! both stopped when dropped. Under `CI=true` a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Browser {
    /// Starts the browser at `width` x `height`; `None` when it is not installed and
    /// the run is not under `CI=true`.
    pub fn start(width: u32, height: u32) -> Option<Browser> {
        let driver = find_program(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        // The program itself, not Debian's wrapper script.
        let chromium = find_program(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "headless Chromium is required under CI=true: apt-get install -y chromium chromium-driver"
            );
            eprintln!(
                "Chromium is not installed (apt-get install -y chromium chromium-driver): the browser tests are not run"
            );
            return None;
        };
        let port = crate::free_port();
        let child = Command::new(driver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser { driver: child, base, session: String::new(), agent, _profile: profile };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", browser._profile.path().display())]
            }
        }}});
        let v = browser.call("POST", "/session", Some(caps));
        browser.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        Some(browser)
    }

    /// One WebDriver command; panics on an error answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut r = result.map_err(|e| json!(e.to_string()))?;
        let ok = r.status().is_success();
        let v: Value = r.body_mut().read_json().map_err(|e| json!(e.to_string()))?;
        if ok { Ok(v["value"].clone()) } else { Err(v["value"].clone()) }
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.session_path("/url"), None).as_str().unwrap_or("").to_owned()
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.call("POST", &self.session_path("/window/rect"), Some(json!({"width": width, "height": height})));
    }

    /// The first element `css` selects, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> Element {
        self.wait_for(&format!("an element {css}"), || self.try_find(css))
    }

    pub fn try_find(&self, css: &str) -> Option<Element> {
        let body = json!({"using": "css selector", "value": css});
        self.try_call("POST", &self.session_path("/element"), Some(body))
            .ok()
            .and_then(|v| v[ELEMENT].as_str().map(|s| Element(s.to_owned())))
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({"using": "css selector", "value": css});
        let v = self.call("POST", &self.session_path("/elements"), Some(body));
        v.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned()))).collect()
    }

    pub fn click(&self, e: &Element) {
        self.call("POST", &self.session_path(&format!("/element/{}/click", e.0)), Some(json!({})));
    }

    pub fn type_text(&self, e: &Element, text: &str) {
        self.call("POST", &self.session_path(&format!("/element/{}/clear", e.0)), Some(json!({})));
        self.call("POST", &self.session_path(&format!("/element/{}/value", e.0)), Some(json!({"text": text})));
    }

    /// The text of the first element `css` selects, once there is one (a page that
    /// is loading may replace it: that is retried).
    pub fn text_of(&self, css: &str) -> String {
        self.wait_for(&format!("the text of {css}"), || {
            let e = self.try_find(css)?;
            self.try_call("GET", &self.session_path(&format!("/element/{}/text", e.0)), None)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        })
    }

    pub fn text(&self, e: &Element) -> String {
        self.call("GET", &self.session_path(&format!("/element/{}/text", e.0)), None).as_str().unwrap_or("").to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call("POST", &self.session_path("/execute/sync"), Some(json!({"script": script, "args": args})))
    }

    /// Sets a `<select>`'s value (by CSS) as a user choosing it would.
    pub fn choose(&self, css: &str, value: &str) {
        self.find(css);
        let script = "const s = document.querySelector(arguments[0]); s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value;";
        let v = self.execute(script, json!([css, value]));
        assert_eq!(v, json!(value), "{css} has no option {value}");
    }

    /// Waits up to 10 s until `check` gives something.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = check() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {what} on {}; the page says:\n{}",
                self.url(),
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's text.
    pub fn page_text(&self) -> String {
        self.execute("return document.body.innerText;", json!([])).as_str().unwrap_or("").to_owned()
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let data = self.call("GET", &self.session_path("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or("")).expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    pub fn delete_cookies(&self) {
        self.call("DELETE", &self.session_path("/cookie"), None);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
