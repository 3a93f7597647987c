//! Compiling a component in a child process: the worker runs its own binary as
//! `celeriac compile-artifact --output PATH`, hands it the component on stdin, and then maps
//! the artifact the child left in the compile cache.
//!
//! Compiling the Python example (18 MB) allocates a few hundred MB on cranelift's threads,
//! and glibc keeps part of that in thread arenas: a worker that had compiled it idled at
//! 88–104 MiB resident, against ~32 MiB when it mapped the same artifact from the cache. A
//! child gives everything back when it exits, and a compile that runs out of memory takes
//! the child down, not the worker.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::sandbox::{EngineOptions, Sandbox, SandboxError};

use super::cache::write_artifact;

/// The name of the hidden subcommand the child runs.
pub const COMPILE_SUBCOMMAND: &str = "compile-artifact";

/// The most of the child's stderr a failure report quotes.
const STDERR_QUOTED: usize = 4096;

/// Why a child process did not leave an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ChildCompileError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component could not be handed over, or the child not waited for.
    #[error("cannot talk to the compiling process: {0}")]
    Pipe(#[source] std::io::Error),
    /// The child exited unsuccessfully or was killed.
    #[error("the compiling process failed ({status}): {stderr}")]
    Failed {
        /// How it ended.
        status: ExitStatus,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
}

impl ChildCompileError {
    /// Whether the child ended by a signal (the OOM killer's, for one) rather than by
    /// reporting an error, such as an invalid component, that compiling in the worker
    /// will report again.
    pub fn killed(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        matches!(self, ChildCompileError::Failed { status, .. } if status.signal().is_some())
    }
}

/// Why the child's side failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The component could not be read from stdin.
    #[error("cannot read the component from stdin: {0}")]
    Read(#[source] std::io::Error),
    /// The engine could not be built or the component did not compile.
    #[error(transparent)]
    Compile(#[from] SandboxError),
    /// The artifact could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The artifact's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs `program compile-artifact --output OUTPUT` with `component` on its stdin and waits
/// for it. Blocking: call it from a blocking thread.
pub fn compile_in_child(
    program: &Path,
    component: &[u8],
    output: &Path,
) -> Result<(), ChildCompileError> {
    let mut command = Command::new(program);
    command
        .arg(COMPILE_SUBCOMMAND)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    // SAFETY: prctl and signal are async-signal-safe and touch no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        // A worker stopped while it loads does not leave its compile running: the child
        // dies with the thread that waits for it. A Ctrl-C at the terminal reaches the
        // whole process group; the worker decides what it means, not its helper.
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                || libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| ChildCompileError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    // The child reads all of stdin before it writes anything, so writing first cannot
    // deadlock on a full stderr pipe.
    let fed = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(component),
        None => Ok(()),
    };
    let finished = child.wait_with_output().map_err(ChildCompileError::Pipe)?;
    if finished.status.success() {
        return fed.map_err(ChildCompileError::Pipe);
    }
    Err(ChildCompileError::Failed {
        status: finished.status,
        stderr: quoted_tail(&finished.stderr),
    })
}

/// The last [`STDERR_QUOTED`] bytes of `stderr`, trimmed, as text.
fn quoted_tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_QUOTED);
    String::from_utf8_lossy(&stderr[start..]).trim().to_owned()
}

/// The child's side: reads a component from stdin, compiles it with the worker's engine
/// settings, and writes the artifact to `output` (atomically, as the cache does).
pub fn serve_compile_request(output: &Path) -> Result<(), ServeError> {
    let mut component = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut component)
        .map_err(ServeError::Read)?;
    // Pool sizes do not change the compiled code; one instance keeps the child's address
    // space reservation small.
    let sandbox = Sandbox::new(&EngineOptions {
        max_instances: 1,
        ..EngineOptions::default()
    })?;
    let artifact = sandbox.precompile(&component)?;
    write_artifact(output, &artifact).map_err(|source| ServeError::Write {
        path: output.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Held while a test writes a script or starts a process: a process forked while a
    /// script is still open for writing would make running that script fail with ETXTBSY.
    static SPAWNING: Mutex<()> = Mutex::new(());

    #[test]
    fn a_failure_quotes_the_end_of_stderr() {
        let long = format!("{}the reason\n", "x".repeat(2 * STDERR_QUOTED));
        let quoted = quoted_tail(long.as_bytes());
        assert_eq!(quoted.len(), STDERR_QUOTED - 1);
        assert!(quoted.ends_with("the reason"));
        assert_eq!(quoted_tail(b"  short\n"), "short");
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error() {
        let _spawning = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
        let err = compile_in_child(
            Path::new("/nonexistent/celeriac"),
            b"",
            Path::new("/tmp/unused.cwasm"),
        )
        .unwrap_err();
        assert!(matches!(err, ChildCompileError::Spawn { .. }), "{err}");
        assert!(!err.killed());
    }

    #[test]
    fn a_child_killed_by_a_signal_is_told_apart_from_one_that_reported_an_error() {
        let _spawning = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
        let shell = |script: &str| {
            let dir = tempfile::tempdir().unwrap();
            let program = dir.path().join("compiler");
            std::fs::write(&program, format!("#!/bin/sh\ncat >/dev/null\n{script}\n")).unwrap();
            let mut permissions = std::fs::metadata(&program).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&program, permissions).unwrap();
            compile_in_child(&program, b"component", &dir.path().join("out")).unwrap_err()
        };
        let reported = shell("echo 'not a valid WebAssembly component' >&2; exit 2");
        assert!(!reported.killed());
        assert!(
            reported
                .to_string()
                .contains("not a valid WebAssembly component"),
            "{reported}"
        );
        let killed = shell("kill -9 $$");
        assert!(killed.killed(), "{killed}");
    }
}
