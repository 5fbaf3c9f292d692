//! Test support: paths of the compiled test guests, and a helper to run the
//! `plughost` binary against a private data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod browser;
pub mod smtp;

/// Paths of the guest components, built from `example-plugins/rust` by build.rs.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// A component in another language, built by its example's script on first use.
#[derive(Debug)]
pub struct OtherLanguage {
    pub script: &'static str,
    /// Arguments after the output path (a build variant, e.g. `--quickjs`).
    pub args: &'static [&'static str],
    pub out: &'static str,
    pub sources: &'static [&'static str],
    /// What the build needs, for the error message.
    pub needs: &'static str,
}

impl OtherLanguage {
    /// Builds the component unless it is newer than its sources, and returns its
    /// path. `plughost` is the binary the script may use (`PLUGHOST`: bindings and
    /// components for C and Go). One build per example at a time across test
    /// processes (a lock file per example directory beside the outputs).
    pub fn build(&self, plughost: &str) -> &'static str {
        let example = Path::new(self.script).parent().and_then(|d| d.file_name()).unwrap_or_default();
        let lock_path = Path::new(self.out).with_file_name(format!("{}.build.lock", example.to_string_lossy()));
        let lock = std::fs::File::create(&lock_path).unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
        lock.lock().unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
        let modified = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = modified(self.out)
            .is_some_and(|built| self.sources.iter().all(|s| modified(s).is_some_and(|m| m <= built)));
        if !fresh {
            let status = Command::new(self.script)
                .arg(self.out)
                .args(self.args)
                .env("PLUGHOST", plughost)
                .status()
                .expect("run an example's build.sh");
            assert!(status.success(), "building {} failed (it needs {})", self.script, self.needs);
        }
        self.out
    }
}

/// Reads a built guest component.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs the `plughost` binary with its own temporary data directory.
pub struct TestCommand {
    bin: PathBuf,
    data_dir: tempfile::TempDir,
    /// The PostgreSQL store of this test (`PLUGHOST_TEST_STORE=postgres`), given to
    /// every command and server as `PLUGHOST_STORE`.
    store: Option<String>,
}

/// What one run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with everything the command printed unless it exited with `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    pub fn ok(self) -> Run {
        self.expect_code(0)
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl TestCommand {
    /// `bin` is the path of the plughost binary (`env!("CARGO_BIN_EXE_plughost")`).
    pub fn new(bin: &str) -> TestCommand {
        let store = postgres::selected()
            .then(|| postgres::server().expect("PLUGHOST_TEST_STORE=postgres needs PostgreSQL installed").database());
        TestCommand { bin: bin.into(), data_dir: tempfile::tempdir().expect("temp dir"), store }
    }

    /// A data directory of its own on a given PostgreSQL store (several servers on
    /// one database).
    pub fn on_store(bin: &str, url: &str) -> TestCommand {
        TestCommand { bin: bin.into(), data_dir: tempfile::tempdir().expect("temp dir"), store: Some(url.to_owned()) }
    }

    /// A data directory with its embedded store, whatever the run selected.
    pub fn embedded(bin: &str) -> TestCommand {
        TestCommand { bin: bin.into(), data_dir: tempfile::tempdir().expect("temp dir"), store: None }
    }

    /// The PostgreSQL store this test runs on, if the run selected it.
    pub fn store(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// Sets the store variables of a command to run.
    fn with_store(&self, cmd: &mut Command) {
        cmd.env("PLUGHOST_DATA_DIR", self.data_dir.path());
        match &self.store {
            Some(url) => cmd.env("PLUGHOST_STORE", url),
            None => cmd.env_remove("PLUGHOST_STORE"),
        };
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Runs `plughost ARGS...` with the test's data directory.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env_remove("PLUGHOST_LOG");
        self.with_store(&mut cmd);
        let out: Output = cmd.output().expect("run plughost");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `plughost ARGS...` without waiting for it (its output is piped).
    pub fn run_async(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_remove("PLUGHOST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        self.with_store(&mut cmd);
        cmd.spawn().expect("start plughost")
    }

    /// Writes a file in the data directory's parent scratch space and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.data_dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    }
}

/// A real `plughost serve` child process on an ephemeral port, with its own data
/// directory; stopped with SIGTERM when dropped.
pub struct TestServer {
    child: std::process::Child,
    pub url: String,
    pub token: String,
    pub cli: TestCommand,
    agent: ureq::Agent,
}

/// An HTTP answer: status and JSON body (`null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    /// Panics with the body unless the status is `status`.
    pub fn expect(self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "HTTP status; body: {}", self.body);
        self.body
    }

    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestServer {
    /// Starts a server and waits until it answers.
    pub fn start(bin: &str) -> TestServer {
        Self::start_with(bin, &[])
    }

    /// Starts a server with extra environment variables.
    pub fn start_with(bin: &str, env: &[(&str, &str)]) -> TestServer {
        Self::start_in(bin, TestCommand::new(bin), env)
    }

    /// Starts a server on the data directory of `cli` (e.g. again, after a crash).
    pub fn start_in(bin: &str, cli: TestCommand, env: &[(&str, &str)]) -> TestServer {
        Self::start_at(bin, cli, env, "127.0.0.1:0")
    }

    /// Starts a server listening on `listen` (a fixed port, to restart it where its
    /// remote workers look for it).
    pub fn start_at(bin: &str, cli: TestCommand, env: &[(&str, &str)], listen: &str) -> TestServer {
        let _ = std::fs::remove_file(cli.data_dir().join("server.json"));
        let mut cmd = Command::new(bin);
        cli.with_store(&mut cmd);
        cmd.args(["serve", "--listen", listen])
            // The deletion service's recurring job would sit in every job list; the
            // tests of it turn it on.
            .env("PLUGHOST_COMPLETED_JOB_RETENTION_SECS", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start plughost serve");
        let info = cli.data_dir().join("server.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&info)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break json["url"].as_str().expect("url").to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "the server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let token = std::fs::read_to_string(cli.data_dir().join("admin-token")).expect("admin token").trim().to_owned();
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        TestServer { child, url, token, cli, agent }
    }

    /// Kills the server with SIGKILL (no chance to clean up) and returns its data directory.
    pub fn kill(mut self) -> TestCommand {
        // Only signal a child that has not been reaped: its pid is ours until then.
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        let placeholder =
            TestCommand { bin: self.cli.bin.clone(), data_dir: tempfile::tempdir().expect("temp dir"), store: None };
        std::mem::replace(&mut self.cli, placeholder)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut resp = result.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Reply { status, body }
    }

    /// A request to `path` (under the server's URL) with the admin token.
    pub fn get(&self, path: &str) -> Reply {
        self.call_as(&self.token, "GET", path, None)
    }

    pub fn get_anonymous(&self, path: &str) -> Reply {
        Self::reply(self.agent.get(format!("{}{path}", self.url)).call())
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.call_as(&self.token, "POST", path, Some(body))
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        self.raw(
            &[("Authorization", &format!("Bearer {}", self.token)), ("Content-Type", "application/json")],
            "POST",
            path,
            body,
        )
    }

    pub fn patch(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.call_as(&self.token, "PATCH", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.call_as(&self.token, "PUT", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call_as(&self.token, "DELETE", path, None)
    }

    /// A request with API key `key` (a JSON body when given).
    pub fn call_as(&self, key: &str, method: &str, path: &str, body: Option<&serde_json::Value>) -> Reply {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {key}"));
        let result = match body {
            Some(b) => {
                req = req.header("Content-Type", "application/json");
                self.agent.run(req.body(serde_json::to_vec(b).expect("json")).expect("request"))
            }
            // A bodiless POST says so (Content-Length: 0), as the CLI's do.
            None if matches!(method, "POST" | "PUT" | "PATCH") => {
                self.agent.run(req.body(Vec::new()).expect("request"))
            }
            None => self.agent.run(req.body(()).expect("request")),
        };
        Self::reply(result)
    }

    /// A request exactly as given: these headers, this body (none when empty).
    pub fn raw(&self, headers: &[(&str, &str)], method: &str, path: &str, body: &[u8]) -> Reply {
        let mut req = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // A connection of its own: a refused request's body may be left unread.
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let result = if body.is_empty() && !matches!(method, "POST" | "PUT" | "PATCH") {
            agent.run(req.body(()).expect("request"))
        } else {
            agent.run(req.body(body.to_vec()).expect("request"))
        };
        Self::reply(result)
    }

    /// Runs the CLI against this server's data directory.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cli.run(args)
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait for the server");
        status.code()
    }

    fn signal(&self, signal: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

/// A free port on 127.0.0.1 (free when asked; a server started on it at once gets it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// A real `plughost worker` child process serving a [`TestServer`], with its own data
/// directory and compile cache; its stderr goes to `<its data dir>/worker.log`.
/// Killed with SIGKILL when dropped.
pub struct TestWorker {
    child: std::process::Child,
    pub name: String,
    pub data_dir: PathBuf,
}

impl TestWorker {
    /// Starts `plughost worker --server <url> --worker-token <the server's> --name NAME`
    /// plus `args`.
    pub fn start(bin: &str, url: &str, server_data_dir: &Path, name: &str, args: &[&str]) -> TestWorker {
        let data_dir = server_data_dir.join("workers").join(name);
        std::fs::create_dir_all(&data_dir).expect("worker data dir");
        let log = std::fs::File::create(data_dir.join("worker.log")).expect("worker log");
        let child = Command::new(bin)
            .args(["--data-dir"])
            .arg(&data_dir)
            .args(["--server", url, "worker", "--name", name, "--token-file"])
            .arg(server_data_dir.join("worker-token"))
            .args(args)
            .env_remove("PLUGHOST_ADMIN_TOKEN")
            .env_remove("PLUGHOST_WORKER_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start plughost worker");
        TestWorker { child, name: name.to_owned(), data_dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the worker wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("worker.log")).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `timeout` for the worker to exit; its exit code, or `None` if it
    /// still runs (or died of a signal).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGTERM: the worker stops leasing, finishes or releases its jobs, and exits.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGSTOP: the process freezes (as if cut off from the server).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`TestWorker::freeze`].
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A PostgreSQL server for the tests: started once per test process with `initdb` and
/// `pg_ctl` (as the `postgres` user when running as root, which PostgreSQL refuses),
/// listening only on 127.0.0.1 on a free port, in a temporary directory; stopped and
/// removed by a watchdog when the test process exits, however it exits.
pub mod postgres {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Server {
        bin: PathBuf,
        port: u16,
        /// The cluster's directory (`data` inside), removed when it stops.
        dir: PathBuf,
        /// Prefix of this process's database names.
        prefix: String,
        /// A server of one test (stopped when dropped), not the shared one.
        private: bool,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if self.private {
                let _ = as_owner(&self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-m", "immediate", "stop"])
                    .output();
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }

    /// Where Debian keeps the server programs (off PATH).
    fn server_bin() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop()
    }

    fn is_root() -> bool {
        Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    /// Runs a server program, as `postgres` when we are root.
    fn as_owner(program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// The shared server, started on first use; `None` when PostgreSQL is not
    /// installed and the run is not under `CI=true` (there it is a failure).
    pub fn server() -> Option<&'static Server> {
        static SERVER: OnceLock<Option<Server>> = OnceLock::new();
        SERVER.get_or_init(|| start(false)).as_ref()
    }

    /// A server of the calling test's own (to restart it), stopped when dropped.
    pub fn private_server() -> Option<Server> {
        start(true)
    }

    fn start(private: bool) -> Option<Server> {
        let Some(bin) = server_bin() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is required under CI=true: apt-get install -y postgresql"
            );
            eprintln!("PostgreSQL is not installed (apt-get install -y postgresql): its tests are not run");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("plughost-pg-").tempdir().expect("temp dir").keep();
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().expect("chown");
            assert!(status.success(), "chown the PostgreSQL directory to postgres");
        }
        let data = dir.join("data");
        let out = as_owner(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = super::free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c max_connections=300 -c shared_buffers=128MB",
            dir.display()
        );
        let out = as_owner(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        // The watchdog stops the server once this process is gone.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser} {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runuser = if is_root() { "runuser -u postgres --" } else { "" },
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        // Never waited for: it outlives this process on purpose, in a session of its
        // own, so a signal to the test's process group (a `timeout`) spares it.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("setsid")
            .args(["sh", "-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
        Some(Server { bin, port, dir, prefix: format!("t{}_", std::process::id()), private })
    }

    impl Server {
        /// A new empty database; returns its address.
        pub fn database(&self) -> String {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!("{}{}", self.prefix, NEXT.fetch_add(1, Ordering::Relaxed));
            let out = Command::new(self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", &name])
                .output()
                .expect("run createdb");
            assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
            self.url(&name)
        }

        pub fn url(&self, db: &str) -> String {
            format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// Restarts the server (`pg_ctl restart -m fast`: sessions are ended, what
        /// they had not committed rolls back).
        pub fn restart(&self) {
            let out = as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-m", "fast", "-w", "-t", "60", "restart"])
                // The new server must not hold our pipes open (it logs to the file).
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .output()
                .expect("run pg_ctl restart");
            assert!(out.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        /// Runs SQL as the superuser in database `db` (e.g. to look at or break things).
        pub fn psql(&self, db: &str, sql: &str) -> String {
            let out = Command::new(self.bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-Atc", sql])
                .output()
                .expect("run psql");
            assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    }

    /// Whether this run's end-to-end tests use PostgreSQL (`PLUGHOST_TEST_STORE=postgres`).
    pub fn selected() -> bool {
        std::env::var("PLUGHOST_TEST_STORE").as_deref() == Ok("postgres")
    }
}
