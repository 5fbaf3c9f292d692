//! A real SMTP server for the mail tests: `tests/smtp/sink.py` on aiosmtpd (Debian
//! `python3-aiosmtpd`, which `tests/run-all.sh` installs), on 127.0.0.1, recording
//! every message it takes. Stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A message the sink took.
#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub message_id: String,
    pub subject: String,
    pub body: String,
}

pub struct SmtpSink {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// `mode`: `ok`, `greylist` (451 once per Message-ID, then 250), or
    /// `reject:TEXT` (550 for recipients containing TEXT).
    pub fn start(mode: &str) -> SmtpSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("received.jsonl");
        let port = crate::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/sink.py");
        // Debian's interpreter, where python3-aiosmtpd installs (not a pyenv one on PATH).
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&log)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 runs (the SMTP sink)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the sink's first line");
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP sink did not start: install Debian's python3-aiosmtpd (tests/run-all.sh does)"
        );
        SmtpSink { child, port, log, _dir: dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message taken so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Received {
                    from: s("from"),
                    to: v["to"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect(),
                    message_id: s("message_id"),
                    subject: s("subject"),
                    body: s("body"),
                }
            })
            .collect()
    }

    /// Waits up to `secs` until at least `n` messages arrived; returns them all.
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited {secs} s for {n} messages, the sink has {}",
                got.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
