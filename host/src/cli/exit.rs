//! The exit codes of the `celeriac` binary.

/// The command did what was asked (for `run`: the task succeeded, or was ignored).
pub const SUCCESS: i32 = 0;
/// The task ran and failed (an exception, a limit, a reject, an unknown task name).
pub const TASK_FAILED: i32 = 1;
/// `deploy`: some worker refused, or a worker waited for did not answer in time (or none
/// answered at all).
pub const NOT_DEPLOYED: i32 = 1;
/// `worker`: it stopped on an error after it had started serving, or by a cold shutdown.
pub const WORKER_FAILED: i32 = 1;
/// Bad usage or set-up: invalid flags or JSON, an unloadable tasks directory, a failed build,
/// a worker that could not start (`worker --processes` does not restart one that exits so).
/// clap uses the same code for flag errors.
pub const USAGE: i32 = 2;
