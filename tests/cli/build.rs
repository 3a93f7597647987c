//! `celeriac build`: an unmodified Celery module with a pure-Python dependency compiles and
//! runs, its build-time objects immortal and its randomness fresh at run time; a module whose
//! import fails is refused with the Python error.

use std::path::Path;

use crate::support::celeriac_cli::{command, describe, path_str};

const MODULE: &str = r#"
from celery import Celery, shared_task

import shouting

app = Celery("demo", broker="redis://127.0.0.1:6379/0")


@shared_task
def shout(text):
    print("shouting", text)
    return shouting.up(text)


@app.task(bind=True, name="demo.whoami")
def whoami(self):
    return {"id": self.request.id, "task": self.request.task, "eager": self.request.is_eager}


@app.task(name="demo.lucky")
def lucky():
    import random
    return random.random()


@app.task(name="demo.immortal")
def immortal():
    import sys
    return [sys._is_immortal(obj) for obj in (shouting, shouting.up, app, whoami, [])]
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_module_with_a_pure_python_dependency_builds_and_runs() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("src/demo_tasks.py");
    write(&source, MODULE);
    write(
        &work.path().join("deps/shouting/__init__.py"),
        "def up(text):\n    return text.upper() + '!'\n",
    );
    let tasks = work.path().join("tasks");
    std::fs::create_dir_all(&tasks).expect("mkdir");
    let output = tasks.join("demo.wasm");
    let deps = work.path().join("deps");

    let built = describe(
        &command(&[
            "build",
            path_str(&source),
            "-o",
            path_str(&output),
            "-p",
            path_str(&deps),
        ])
        .output()
        .expect("celeriac runs"),
    );
    assert_eq!(built.0, Some(0), "build failed: {}", built.2);
    assert!(output.metadata().expect("component written").len() > 1_000_000);

    let ran = describe(
        &command(&[
            "run",
            "--tasks",
            path_str(&tasks),
            "demo_tasks.shout",
            "--args",
            r#"["hi"]"#,
        ])
        .output()
        .expect("celeriac runs"),
    );
    assert_eq!((ran.0, ran.1.trim()), (Some(0), "\"HI!\""), "{}", ran.2);
    assert!(
        ran.2.contains("WARNING/MainProcess] demo_tasks.shout[") && ran.2.contains("shouting hi"),
        "print() reaches the log at WARNING: {}",
        ran.2
    );

    let ran = describe(
        &command(&["run", "--tasks", path_str(&tasks), "demo.whoami"])
            .output()
            .expect("celeriac runs"),
    );
    assert_eq!(ran.0, Some(0), "{}", ran.2);
    let request: serde_json::Value = serde_json::from_str(ran.1.trim()).expect("JSON result");
    assert_eq!(request["task"], "demo.whoami");
    assert_eq!(request["eager"], true);
    assert_eq!(
        request["id"].as_str().map(str::len),
        Some(36),
        "a uuid task id: {request}"
    );

    // The sandbox links the component with the snapshot's objects made immortal: the
    // interpreter no longer writes their reference counts. A list made by the task is not.
    let ran = describe(
        &command(&["run", "--tasks", path_str(&tasks), "demo.immortal"])
            .output()
            .expect("celeriac runs"),
    );
    assert_eq!(
        (ran.0, ran.1.trim()),
        (Some(0), "[true, true, true, true, false]"),
        "{}",
        ran.2
    );

    // Every instance starts from one snapshot, but not from its `random` state.
    let draws: Vec<f64> = (0..2)
        .map(|_| {
            let ran = describe(
                &command(&["run", "--tasks", path_str(&tasks), "demo.lucky"])
                    .output()
                    .expect("celeriac runs"),
            );
            assert_eq!(ran.0, Some(0), "{}", ran.2);
            ran.1.trim().parse().expect("a float")
        })
        .collect();
    assert_ne!(draws[0], draws[1], "fresh instances draw alike: {draws:?}");
}

#[test]
fn a_module_whose_import_fails_is_refused_with_the_python_error() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("needs_numpy.py");
    write(
        &source,
        "from celery import shared_task\nimport numpy\n\n@shared_task\ndef f():\n    return 1\n",
    );
    let output = work.path().join("needs_numpy.wasm");
    let (code, _, stderr) = describe(
        &command(&["build", path_str(&source), "-o", path_str(&output)])
            .output()
            .expect("celeriac runs"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("No module named 'numpy'"), "{stderr}");
    assert!(
        !output.exists(),
        "no component is written for a failed build"
    );
}
