//! Runs the real `celeriac` binary against the example components of
//! `scripts/build-examples.sh`, with a compile cache private to the test run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `target/release/celeriac`, next to this test binary's `deps/` directory.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("celeriac");
    assert!(
        binary.is_file(),
        "{} is missing: build it first (scripts/test.sh does)",
        binary.display()
    );
    binary
}

/// The directory the example components are built into.
pub fn example_tasks() -> PathBuf {
    let dir = workspace().join("target/wasm-tasks");
    assert!(
        dir.join("tasks.wasm").is_file(),
        "{} has no tasks.wasm: run scripts/build-examples.sh first",
        dir.display()
    );
    dir
}

/// Whether the Rust example was built; prints why not, loudly, when it was skipped.
pub fn rust_example_built() -> bool {
    let dir = workspace().join("target/wasm-tasks");
    if dir.join("rs_tasks.wasm").is_file() {
        return true;
    }
    let reason = std::fs::read_to_string(dir.join("RUST_SKIPPED")).expect(
        "rs_tasks.wasm is missing and no RUST_SKIPPED note explains why: run scripts/build-examples.sh",
    );
    eprintln!("!!!!! SKIPPED: the Rust example was not built: {reason}");
    false
}

fn cache_dir() -> PathBuf {
    workspace().join("target/test-compile-cache")
}

/// A `celeriac` command with a clean environment and the test compile cache.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("CELERY_") || key.starts_with("CELERIAC_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.env("CELERIAC_CACHE_DIR", cache_dir()).args(args);
    command
}

/// Compiles the example components into the cache once, so parallel tests do not all
/// compile the 20 MB Python component at the same time.
pub fn warm_cache() {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        let tasks = example_tasks();
        let output = command(&[
            "run",
            "--tasks",
            path_str(&tasks),
            "tasks.add",
            "--args",
            "[1, 1]",
        ])
        .output()
        .expect("celeriac runs");
        assert_eq!(
            describe(&output).0,
            Some(0),
            "warming the cache failed: {}",
            describe(&output).2
        );
    });
}

/// `(exit code, stdout, stderr)` for assertion messages.
pub fn describe(output: &Output) -> (Option<i32>, String, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A path as `&str` for command arguments.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
