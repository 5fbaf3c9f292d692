//! Test support: paths of the compiled test guests, and a helper to run the
//! `plughost` binary against a private data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Paths of the guest components, built from `example-plugins/rust` by build.rs.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Reads a built guest component.
pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Runs the `plughost` binary with its own temporary data directory.
pub struct TestCommand {
    bin: PathBuf,
    data_dir: tempfile::TempDir,
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
        TestCommand { bin: bin.into(), data_dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Runs `plughost ARGS...` with the test's data directory.
    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = Command::new(&self.bin)
            .args(args)
            .env("PLUGHOST_DATA_DIR", self.data_dir.path())
            .env_remove("PLUGHOST_LOG")
            .output()
            .expect("run plughost");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Writes a file in the data directory's parent scratch space and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.data_dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    }
}
