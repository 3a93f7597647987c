//! Task log lines and state updates from a running guest, written through `tracing` with the
//! task's id and name, as Celery's task logger does.

use crate::sandbox::{LogLevel, TaskEvents};

/// Longest `update_state` meta shown in a log line.
const MAX_META_IN_LOG: usize = 200;

/// Writes a task's logs with its name and id.
pub struct TracingTaskEvents {
    /// The task name, for the log prefix.
    pub task_name: String,
    /// The task id, for the log prefix.
    pub task_id: String,
}

impl TaskEvents for TracingTaskEvents {
    fn log(&self, level: LogLevel, message: &str) {
        let (name, id) = (&self.task_name, &self.task_id);
        match level {
            LogLevel::Debug => {
                tracing::debug!(target: "celeriac::task", task_name = %name, task_id = %id, "{name}[{id}]: {message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "celeriac::task", task_name = %name, task_id = %id, "{name}[{id}]: {message}")
            }
            LogLevel::Warning => {
                tracing::warn!(target: "celeriac::task", task_name = %name, task_id = %id, "{name}[{id}]: {message}")
            }
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(target: "celeriac::task", task_name = %name, task_id = %id, "{name}[{id}]: {message}")
            }
        }
    }

    fn update_state(&self, state: &str, meta_json: &str) {
        let shown = match meta_json.char_indices().nth(MAX_META_IN_LOG) {
            Some((cut, _)) => format!("{}...", &meta_json[..cut]),
            None => meta_json.to_string(),
        };
        tracing::info!(
            target: "celeriac::task",
            task_name = %self.task_name,
            task_id = %self.task_id,
            state,
            "{}[{}]: state {state}: {shown}",
            self.task_name,
            self.task_id
        );
    }
}
