//! `celeriac build`: compiles a Celery task module (Python) into a task component.
//!
//! The module is compiled unmodified: the Python guest SDK (`guest-sdk/python`: a stand-in
//! `celery` package plus `celeriac_sdk`, the glue that exports the `task` world) and
//! `wit/task.wit` are embedded in this binary, written to a temporary directory next to a
//! generated entry module, and handed to componentize-py:
//!
//! ```text
//! componentize-py -d <tmp>/wit -w task componentize celeriac_entry \
//!     -p <tmp>/sdk -p <source's dir> [-p <dep dir>]... -o OUT.wasm
//! ```
//!
//! componentize-py imports the entry module at build time (which imports the task module and
//! so registers its tasks) and snapshots the interpreter, so only modules that are imported
//! end up in the component. Dependencies must be pure Python: C extension modules cannot be
//! loaded by the CPython inside a component.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

/// The componentize-py release the SDK is written and tested against.
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Where `scripts/install-guest-tools.sh` installs componentize-py, relative to the workspace.
const TOOL_IN_WORKSPACE: &str = "target/guest-tools/py/bin/componentize-py";

/// The generated module componentize-py is pointed at.
const ENTRY_MODULE: &str = "celeriac_entry";

/// The world in `wit/task.wit` that task components target.
const WORLD: &str = "task";

const TASK_WIT: &str = include_str!("../../../wit/task.wit");

/// Embeds the SDK's Python files, by path relative to `guest-sdk/python`.
macro_rules! sdk_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../guest-sdk/python/", $path)))),*]
    };
}

/// Every Python file of the guest SDK (a test checks this list against the directory).
const SDK_FILES: &[(&str, &str)] = sdk_files![
    "celery/__init__.py",
    "celery/_state.py",
    "celery/app/__init__.py",
    "celery/app/base.py",
    "celery/app/task.py",
    "celery/canvas.py",
    "celery/exceptions.py",
    "celery/local.py",
    "celery/schedules.py",
    "celery/signals.py",
    "celery/states.py",
    "celery/utils/__init__.py",
    "celery/utils/log.py",
    "celery/utils/time.py",
    "celeriac_sdk/__init__.py",
    "celeriac_sdk/codec.py",
    "celeriac_sdk/errors.py",
    "celeriac_sdk/host.py",
    "celeriac_sdk/immortal.py",
    "celeriac_sdk/log.py",
    "celeriac_sdk/world.py",
];

/// Module names a task module cannot have: the SDK's, componentize-py's and the entry's.
const RESERVED_MODULES: &[&str] = &[
    "celery",
    "celeriac_sdk",
    ENTRY_MODULE,
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
];

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The Python task module, e.g. tasks.py
    pub source: std::path::PathBuf,
    /// Where to write the component
    #[arg(short = 'o', long)]
    pub output: std::path::PathBuf,
    /// Extra directories searched for pure-Python dependencies (repeatable)
    #[arg(short = 'p', long = "path")]
    pub paths: Vec<std::path::PathBuf>,
    /// The componentize-py executable [default: target/guest-tools/py/bin/componentize-py beside the binary's workspace, then PATH]
    #[arg(long, env = "CELERIAC_COMPONENTIZE_PY")]
    pub componentize_py: Option<std::path::PathBuf>,
}

pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (module, module_dir) = task_module(&args.source)?;
    let mut search_path = vec![module_dir];
    for dir in &args.paths {
        let dir = absolute(dir)?;
        if !dir.is_dir() {
            bail!("dependency path {} is not a directory", dir.display());
        }
        search_path.push(dir);
    }
    let output = absolute(&args.output)?;
    if let Some(parent) = output.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the output directory {}", parent.display()))?;
    }
    let tool = find_componentize_py(args.componentize_py.as_deref())?;
    check_version(&tool);

    let work = tempfile::Builder::new()
        .prefix("celeriac-build-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let sdk_dir = work.path().join("sdk");
    let wit_dir = work.path().join("wit");
    write_sdk(&sdk_dir, &module)?;
    write_file(&wit_dir.join("task.wit"), TASK_WIT)?;

    let mut command = Command::new(&tool);
    command
        .arg("-d")
        .arg(&wit_dir)
        .arg("-w")
        .arg(WORLD)
        .arg("componentize")
        .arg(ENTRY_MODULE)
        .arg("-p")
        .arg(&sdk_dir);
    for dir in &search_path {
        command.arg("-p").arg(dir);
    }
    command
        .arg("-o")
        .arg(&output)
        .current_dir(work.path())
        // componentize-py reports errors with anyhow; its Rust backtrace only buries the
        // Python traceback that matters.
        .env("RUST_LIB_BACKTRACE", "0");
    tracing::debug!(?command, "running componentize-py");

    let result = command.output().map_err(|err| spawn_error(&tool, err))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let stdout = String::from_utf8_lossy(&result.stdout);
        let details = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        let details = details.trim_end();
        bail!(
            "componentize-py failed ({}) building {}:\n{}",
            result.status,
            args.source.display(),
            if details.is_empty() {
                "(no output)"
            } else {
                details
            }
        );
    }
    tracing::debug!(stdout = %String::from_utf8_lossy(&result.stdout).trim(), "componentize-py done");

    let size = fs::metadata(&output)
        .with_context(|| format!("componentize-py did not write {}", output.display()))?
        .len();
    println!(
        "built {} from {} in {:.1}s ({:.1} MB)",
        args.output.display(),
        args.source.display(),
        started.elapsed().as_secs_f64(),
        size as f64 / 1_000_000.0
    );
    Ok(())
}

/// The module name to import and the directory to put on the Python path.
///
/// `tasks.py` is imported as `tasks` from its directory; a package directory `proj/`
/// (with an `__init__.py`) as `proj` from its parent.
fn task_module(source: &Path) -> anyhow::Result<(String, PathBuf)> {
    let source = absolute(source)?;
    let (name, dir) = if source.is_dir() {
        if !source.join("__init__.py").is_file() {
            bail!(
                "{} is a directory without __init__.py; give the task module (a .py file) or a package",
                source.display()
            );
        }
        (source.file_name(), source.parent())
    } else if source.is_file() {
        if source.extension() != Some(OsStr::new("py")) {
            bail!(
                "{} is not a Python module (expected a .py file)",
                source.display()
            );
        }
        (source.file_stem(), source.parent())
    } else {
        bail!("task module {} does not exist", source.display());
    };
    let name = name
        .and_then(OsStr::to_str)
        .with_context(|| format!("{} has no usable module name", source.display()))?;
    check_module_name(name)?;
    let dir = dir
        .with_context(|| format!("{} has no parent directory", source.display()))?
        .to_path_buf();
    Ok((name.to_owned(), dir))
}

fn check_module_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric());
    if !valid {
        bail!("{name:?} is not a valid Python module name (rename the file)");
    }
    if RESERVED_MODULES.contains(&name) {
        bail!("the task module cannot be named {name:?}: the SDK uses that name (rename the file)");
    }
    Ok(())
}

/// The entry module: imports the task module (registering its tasks), then the exports.
fn entry_module(module: &str) -> String {
    format!(
        "# Generated by `celeriac build`.\n\
         import {module}  # noqa: F401  (the task module: importing it registers its tasks)\n\
         from celeriac_sdk.world import WitWorld  # noqa: F401  (the component's exports)\n"
    )
}

fn write_sdk(dir: &Path, module: &str) -> anyhow::Result<()> {
    for (path, text) in SDK_FILES {
        write_file(&dir.join(path), text)?;
    }
    write_file(
        &dir.join(format!("{ENTRY_MODULE}.py")),
        &entry_module(module),
    )
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The componentize-py to run: the explicit one (a path, or a name looked up on PATH), else
/// the workspace's `target/guest-tools` install found above the current directory or the
/// executable, else `componentize-py` on PATH.
fn find_componentize_py(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(tool) = explicit {
        if tool.components().count() == 1
            && let Some(found) = on_path(tool.as_os_str())
        {
            return absolute(&found);
        }
        if tool.is_file() {
            // Absolute: the tool runs with the temporary directory as its working directory.
            return absolute(tool);
        }
        bail!(
            "componentize-py not found at {} (from --componentize-py / CELERIAC_COMPONENTIZE_PY); {}",
            tool.display(),
            INSTALL_HINT
        );
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        starts.push(exe_dir);
    }
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir.join(TOOL_IN_WORKSPACE);
            if candidate.is_file() {
                tracing::debug!(path = %candidate.display(), "found componentize-py");
                return Ok(candidate);
            }
        }
    }
    let found = on_path(OsStr::new("componentize-py")).with_context(|| {
        format!("componentize-py not found (looked for {TOOL_IN_WORKSPACE} above the current directory and the celeriac binary, then on PATH); {INSTALL_HINT}")
    })?;
    absolute(&found)
}

const INSTALL_HINT: &str = "install it with `scripts/install-guest-tools.sh` (a venv in target/guest-tools/py with componentize-py==0.25.1), pass --componentize-py PATH, or set CELERIAC_COMPONENTIZE_PY";

fn on_path(name: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn spawn_error(tool: &Path, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("cannot run {}: not found; {INSTALL_HINT}", tool.display())
    } else {
        anyhow::Error::new(err).context(format!("cannot run {}", tool.display()))
    }
}

/// Warns when componentize-py is not the release the SDK is tested with.
fn check_version(tool: &Path) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text.split_whitespace().last().unwrap_or_default();
            if version != COMPONENTIZE_PY_VERSION {
                tracing::warn!(
                    found = %text.trim(),
                    expected = COMPONENTIZE_PY_VERSION,
                    "componentize-py is not the tested release; `scripts/install-guest-tools.sh` installs it"
                );
            }
        }
        Ok(_) | Err(_) => {
            tracing::debug!(tool = %tool.display(), "componentize-py --version failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded list must name every SDK file, or a build would miss a module.
    #[test]
    fn sdk_files_match_the_directory() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/python");
        let mut on_disk = Vec::new();
        for package in ["celery", "celeriac_sdk"] {
            collect_py(&root, &root.join(package), &mut on_disk);
        }
        on_disk.sort();
        let mut embedded: Vec<String> = SDK_FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    fn collect_py(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name() != Some(OsStr::new("__pycache__")) {
                    collect_py(root, &path, out);
                }
            } else if path.extension() == Some(OsStr::new("py")) {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_str().unwrap().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn module_names() {
        assert!(check_module_name("tasks").is_ok());
        assert!(check_module_name("_my_tasks2").is_ok());
        assert!(check_module_name("my-tasks").is_err());
        assert!(check_module_name("2tasks").is_err());
        assert!(check_module_name("celery").is_err());
        assert!(check_module_name(ENTRY_MODULE).is_err());
    }

    #[test]
    fn task_module_from_file_and_package() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasks.py");
        fs::write(&file, "").unwrap();
        let (name, parent) = task_module(&file).unwrap();
        assert_eq!((name.as_str(), parent.as_path()), ("tasks", dir.path()));

        let package = dir.path().join("proj");
        fs::create_dir(&package).unwrap();
        assert!(task_module(&package).is_err());
        fs::write(package.join("__init__.py"), "").unwrap();
        let (name, parent) = task_module(&package).unwrap();
        assert_eq!((name.as_str(), parent.as_path()), ("proj", dir.path()));

        assert!(task_module(&dir.path().join("missing.py")).is_err());
        let text = dir.path().join("tasks.txt");
        fs::write(&text, "").unwrap();
        assert!(task_module(&text).is_err());
    }

    #[test]
    fn entry_imports_the_module_then_the_exports() {
        let entry = entry_module("tasks");
        let import = entry.find("import tasks").unwrap();
        let world = entry
            .find("from celeriac_sdk.world import WitWorld")
            .unwrap();
        assert!(import < world);
    }

    #[test]
    fn missing_tool_says_how_to_install() {
        let err = find_componentize_py(Some(Path::new("/nonexistent/componentize-py")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scripts/install-guest-tools.sh"), "{err}");
    }
}
