//! The worker's run-time control API, [`WorkerHandle`]: chiefly revoking tasks, Celery's
//! `revoke(task_id, terminate, signal)` control command (spec celery-worker-behaviour.md
//! §3.9), and setting a task's rate limit (`rate_limit`). The remote-control handler calls
//! it for a broadcast; tests and embedders call it directly.
//!
//! Also owns the tasks running right now ([`RunningTasks`]), each with the kill switch that
//! a revoke with `terminate` flips.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::backend::{ExceptionInfo, ResultBackend, TaskMeta};
use crate::sandbox::KillSwitch;

use super::RevokedTasks;
use super::execution::store;
use super::rate_limit::{RateError, RateLimits};
use super::statedb::{StateDb, StateDbError};

/// Why a revoke was refused (nothing was revoked).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// Celery's `signum()` does not know the signal.
    #[error("unknown signal name: {0:?}")]
    UnknownSignal(String),
}

/// What a revoke did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The ids revoked, as asked.
    pub ids: Vec<String>,
    /// With `terminate`: the ids found running here and stopped; `None` without.
    pub terminated: Option<Vec<String>>,
}

impl Revoked {
    /// The `ok` text of Celery's reply: `tasks {'<id>', ...} flagged as revoked` (the
    /// repr of a Python set), or with terminate `terminate: <ids>` / `terminate: tasks
    /// unknown`.
    pub fn reply_text(&self) -> String {
        match &self.terminated {
            None => {
                let ids: Vec<String> = self.ids.iter().map(|id| format!("'{id}'")).collect();
                format!("tasks {{{}}} flagged as revoked", ids.join(", "))
            }
            Some(found) if found.is_empty() => "terminate: tasks unknown".to_owned(),
            Some(found) => format!("terminate: {}", found.join(", ")),
        }
    }
}

/// The worker's revoked ids, running tasks and rate limits, and the API to change them.
/// Cheap to clone; clones share them. Pass it to [`run_with`](super::run_with) so the
/// worker consults it.
pub struct WorkerHandle<R> {
    revoked: Arc<RevokedTasks>,
    running: Arc<RunningTasks>,
    rate_limits: Arc<RateLimits>,
    backend: Arc<R>,
    statedb: Option<Arc<StateDb>>,
}

impl<R> Clone for WorkerHandle<R> {
    fn clone(&self) -> Self {
        WorkerHandle {
            revoked: Arc::clone(&self.revoked),
            running: Arc::clone(&self.running),
            rate_limits: Arc::clone(&self.rate_limits),
            backend: Arc::clone(&self.backend),
            statedb: self.statedb.clone(),
        }
    }
}

impl<R: ResultBackend> WorkerHandle<R> {
    /// A handle that stores REVOKED states in `backend` and keeps revokes in memory only.
    pub fn new(backend: Arc<R>) -> Self {
        WorkerHandle {
            revoked: Arc::default(),
            running: Arc::default(),
            rate_limits: Arc::default(),
            backend,
            statedb: None,
        }
    }

    /// Like [`new`](Self::new), with the revoked ids restored from `statedb` and saved
    /// there after every revoke and at shutdown. Returns how many ids were restored.
    pub fn with_statedb(backend: Arc<R>, statedb: StateDb) -> Result<(Self, usize), StateDbError> {
        let mut handle = Self::new(backend);
        let restored = statedb.load_into(&handle.revoked)?;
        handle.statedb = Some(Arc::new(statedb));
        Ok((handle, restored))
    }

    /// The revoked ids (for `inspect revoked`).
    pub fn revoked(&self) -> &Arc<RevokedTasks> {
        &self.revoked
    }

    /// The tasks running now.
    pub fn running(&self) -> &Arc<RunningTasks> {
        &self.running
    }

    /// The per-task rate limits.
    pub(crate) fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// Celery's `rate_limit` control command: sets `task`'s rate limit (`"10/s"`, `"5/m"`,
    /// ...; `None` or `"0"` for none) over the one it declares, in this worker only.
    pub fn set_rate_limit(&self, task: &str, rate: Option<&str>) -> Result<(), RateError> {
        self.rate_limits.set(task, rate)
    }

    pub(crate) fn backend(&self) -> &Arc<R> {
        &self.backend
    }

    /// Celery's revoke: remembers `ids` (a message with one of them is discarded, never
    /// run), stores REVOKED ("revoked") for each, and with `terminate` stops those running
    /// here at once; their REVOKED ("terminated") is stored when they end. `signal` (default
    /// SIGTERM) is checked and logged as Celery does, but every signal stops the task the
    /// same way: its instance is dropped.
    pub async fn revoke(
        &self,
        ids: &[String],
        terminate: bool,
        signal: Option<&str>,
    ) -> Result<Revoked, RevokeError> {
        let signum = if terminate {
            Some(signal_number(signal.unwrap_or("SIGTERM"))?)
        } else {
            None
        };
        // Remember the ids before looking for running tasks: a task that registers as
        // running after this sees the id when it checks the revoked set.
        for id in ids {
            self.revoked.insert(id);
        }
        let reason = [Value::from("revoked")];
        for id in ids {
            let meta = TaskMeta::revoked(
                id,
                ExceptionInfo {
                    exc_type: "TaskRevokedError",
                    exc_module: "celery.exceptions",
                    exc_message: &reason,
                },
            );
            // The revoke stands whether or not the state could be written.
            let _ = store(&*self.backend, &meta).await;
        }
        let terminated = match signum {
            Some(signum) => {
                let found = self.running.terminate(ids);
                for id in &found {
                    tracing::info!("Terminating {id} ({signum})");
                }
                Some(found)
            }
            None => {
                tracing::info!("Tasks flagged as revoked: {}", ids.join(", "));
                None
            }
        };
        self.persist().await;
        Ok(Revoked {
            ids: ids.to_vec(),
            terminated,
        })
    }

    /// Saves the revoked ids to the state db, if there is one.
    pub async fn persist(&self) {
        if let Some(db) = &self.statedb {
            db.save_in_background(&self.revoked).await;
        }
    }
}

/// Celery's `signals.signum`: a number, or an upper-case name with or without `SIG`.
fn signal_number(name: &str) -> Result<i32, RevokeError> {
    const SIGNALS: [(&str, i32); 15] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
    ];
    if let Ok(number) = name.parse::<i32>() {
        return Ok(number);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, number)| *number)
        .ok_or_else(|| RevokeError::UnknownSignal(name.to_owned()))
}

/// The tasks running on this worker, each with its kill switch.
#[derive(Debug, Default)]
pub struct RunningTasks {
    next: AtomicU64,
    /// run number → (task id, switch); the same id may run twice (a redelivery).
    entries: Mutex<HashMap<u64, (String, KillSwitch)>>,
}

impl RunningTasks {
    /// Registers a task about to run; it stays registered until the guard drops.
    pub fn start(self: &Arc<Self>, task_id: &str) -> RunningTask {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = KillSwitch::new();
        self.lock().insert(key, (task_id.to_owned(), kill.clone()));
        RunningTask {
            tasks: Arc::clone(self),
            key,
            kill,
        }
    }

    /// The ids running now.
    pub fn ids(&self) -> Vec<String> {
        self.lock().values().map(|(id, _)| id.clone()).collect()
    }

    /// Flips the switch of every running task whose id is in `ids`; returns those ids.
    fn terminate(&self, ids: &[String]) -> Vec<String> {
        let entries = self.lock();
        let mut found = Vec::new();
        for (id, kill) in entries.values() {
            if ids.contains(id) {
                kill.kill();
                if !found.contains(id) {
                    found.push(id.clone());
                }
            }
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, KillSwitch)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A registered running task; dropping it unregisters the task.
pub struct RunningTask {
    tasks: Arc<RunningTasks>,
    key: u64,
    /// Flipped by a revoke with terminate.
    pub kill: KillSwitch,
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        self.tasks.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_as_celery_reads_them() {
        assert_eq!(signal_number("SIGTERM").ok(), Some(15));
        assert_eq!(signal_number("KILL").ok(), Some(9));
        assert_eq!(signal_number("9").ok(), Some(9));
        assert!(matches!(
            signal_number("sigterm"),
            Err(RevokeError::UnknownSignal(_))
        ));
    }

    #[test]
    fn terminate_flips_only_the_named_running_tasks() {
        let running = Arc::new(RunningTasks::default());
        let a = running.start("a");
        let b = running.start("b");
        let found = running.terminate(&["a".to_owned(), "zzz".to_owned()]);
        assert_eq!(found, vec!["a".to_owned()]);
        assert!(a.kill.is_killed());
        assert!(!b.kill.is_killed());
        drop(a);
        assert_eq!(running.ids(), vec!["b".to_owned()]);
    }

    #[test]
    fn the_reply_text_is_celerys() {
        let revoked = |terminated| Revoked {
            ids: vec!["a".into(), "b".into()],
            terminated,
        };
        assert_eq!(
            revoked(None).reply_text(),
            "tasks {'a', 'b'} flagged as revoked"
        );
        assert_eq!(
            revoked(Some(vec![])).reply_text(),
            "terminate: tasks unknown"
        );
        assert_eq!(revoked(Some(vec!["a".into()])).reply_text(), "terminate: a");
    }
}
