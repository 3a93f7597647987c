//! The filesystem policy: a task sees no file unless its component's policy grants a
//! directory, and then only inside it.

use std::path::Path;

use crate::support::celeriac_cli::{
    command, describe, example_tasks, path_str, rust_example_built, warm_cache,
};

/// A tasks directory holding the example component `file` and, if given, its policy.
fn tasks_dir_with(file: &str, policy: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = example_tasks().join(file);
    if std::fs::hard_link(&source, dir.path().join(file)).is_err() {
        std::fs::copy(&source, dir.path().join(file)).expect("copy the example component");
    }
    if let Some(policy) = policy {
        let stem = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file stem");
        std::fs::write(dir.path().join(format!("{stem}.toml")), policy).expect("write policy");
    }
    dir
}

fn read_file(tasks: &Path, task: &str, path: &str) -> (Option<i32>, String, String) {
    warm_cache();
    let args = serde_json::to_string(&[path]).expect("JSON");
    describe(
        &command(&["run", "--tasks", path_str(tasks), task, "--args", &args])
            .output()
            .expect("celeriac runs"),
    )
}

fn check_policy(file: &str, task: &str) {
    let data = tempfile::tempdir().expect("temp dir");
    std::fs::write(data.path().join("hello.txt"), "hello from the host").expect("write data");

    let denied = tasks_dir_with(file, None);
    let (code, stdout, stderr) = read_file(denied.path(), task, "/etc/passwd");
    assert_eq!(
        code,
        Some(1),
        "reading /etc/passwd without a grant must fail: {stdout}"
    );
    assert!(!stdout.contains("root:"), "{stdout}");
    assert!(
        stderr.contains("Error"),
        "a Python-style error names the failure: {stderr}"
    );

    let policy = format!(
        "dirs = [{{ host = {:?}, guest = \"/data\" }}]\n",
        data.path().display().to_string()
    );
    let granted = tasks_dir_with(file, Some(&policy));
    let (code, stdout, stderr) = read_file(granted.path(), task, "/data/hello.txt");
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), "\"hello from the host\""),
        "{stderr}"
    );
    for outside in [
        "/etc/passwd",
        "/data/../../../etc/passwd",
        "/data/../hello.txt",
    ] {
        let (code, stdout, _) = read_file(granted.path(), task, outside);
        assert_eq!(
            code,
            Some(1),
            "{outside} is outside the grant but was read: {stdout}"
        );
        assert!(!stdout.contains("root:"), "{stdout}");
    }
}

#[test]
fn python_read_file_sees_only_the_granted_directory() {
    check_policy("tasks.wasm", "tasks.read_file");
}

#[test]
fn rust_read_file_sees_only_the_granted_directory() {
    if !rust_example_built() {
        return;
    }
    check_policy("rs_tasks.wasm", "rs.read_file");
}
