//! `--statedb PATH`: the revoked ids a worker keeps across restarts (Celery's
//! `worker_state_db`, spec celery-worker-behaviour.md §3.9).
//!
//! Celery keeps a `shelve` with a zlib-compressed pickle of its LimitedSet; the format is
//! private to each worker, and ours is JSON:
//!
//! ```json
//! {"format": "celeriac-statedb", "version": 1,
//!  "revoked": [["<task id>", <unix seconds when it was revoked>], ...]}
//! ```
//!
//! Ids are listed oldest first. Entries older than the revoke expiry are dropped on load.
//! The file is rewritten (through a temporary file and a rename, so a crash leaves the old
//! or the new file, never half of one) after every revoke and at shutdown; Celery writes
//! only at exit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::RevokedTasks;

const FORMAT: &str = "celeriac-statedb";
const VERSION: u32 = 1;

/// Why the state db could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDbError {
    /// Reading or writing the file failed.
    #[error("state db {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a celeriac state db.
    #[error("state db {path} is not a celeriac state db: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Contents {
    format: String,
    version: u32,
    revoked: Vec<(String, f64)>,
}

/// The state db file of one worker.
#[derive(Debug)]
pub struct StateDb {
    path: PathBuf,
    /// One writer at a time, each writing what was current when it got the lock, so an
    /// older snapshot never replaces a newer one.
    writing: Mutex<()>,
}

impl StateDb {
    /// The state db at `path` (created on the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDb {
            path: path.into(),
            writing: Mutex::new(()),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the ids saved in the file to `revoked`; a missing file adds none. Returns how
    /// many ids were restored.
    pub fn load_into(&self, revoked: &RevokedTasks) -> Result<usize, StateDbError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(self.io(source)),
        };
        let contents: Contents = serde_json::from_slice(&text).map_err(|err| self.format(err))?;
        if contents.format != FORMAT || contents.version != VERSION {
            return Err(self.format(format!(
                "format {:?} version {}",
                contents.format, contents.version
            )));
        }
        let now = unix_seconds(SystemTime::now());
        let before = revoked.ids().len();
        for (id, revoked_at) in &contents.revoked {
            let age = (now - revoked_at).max(0.0);
            if age.is_finite() {
                revoked.insert_aged(id, Duration::from_secs_f64(age));
            }
        }
        Ok(revoked.ids().len().saturating_sub(before))
    }

    /// Writes the ids `revoked` holds now. Blocking file I/O: call it from a blocking
    /// thread (see [`save_in_background`](Self::save_in_background)).
    pub fn save(&self, revoked: &RevokedTasks) -> Result<(), StateDbError> {
        let _one_writer = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = unix_seconds(SystemTime::now());
        let contents = Contents {
            format: FORMAT.to_owned(),
            version: VERSION,
            revoked: revoked
                .with_ages()
                .into_iter()
                .map(|(id, age)| (id, now - age.as_secs_f64()))
                .collect(),
        };
        let text = serde_json::to_vec(&contents).map_err(|err| self.format(err))?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|err| self.io(err))?;
        std::io::Write::write_all(&mut file, &text).map_err(|err| self.io(err))?;
        file.as_file().sync_all().map_err(|err| self.io(err))?;
        file.persist(&self.path).map_err(|err| self.io(err.error))?;
        Ok(())
    }

    /// [`save`](Self::save) on a blocking thread; a failure is logged.
    pub async fn save_in_background(self: &Arc<Self>, revoked: &Arc<RevokedTasks>) {
        let (db, revoked) = (Arc::clone(self), Arc::clone(revoked));
        let saved = tokio::task::spawn_blocking(move || db.save(&revoked)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("cannot save the revoked ids: {err}"),
            Err(err) => tracing::error!("cannot save the revoked ids: {err}"),
        }
    }

    fn io(&self, source: std::io::Error) -> StateDbError {
        StateDbError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn format(&self, reason: impl ToString) -> StateDbError {
        StateDbError::Format {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_ids_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = StateDb::new(dir.path().join("worker.state"));
        let revoked = RevokedTasks::default();
        assert_eq!(db.load_into(&revoked).expect("no file yet"), 0);
        revoked.insert("a");
        revoked.insert("b");
        db.save(&revoked).expect("save");
        let restored = RevokedTasks::default();
        assert_eq!(db.load_into(&restored).expect("load"), 2);
        assert_eq!(restored.ids(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn expired_entries_are_dropped_and_foreign_files_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("worker.state");
        let long_ago = unix_seconds(SystemTime::now()) - 4.0 * 3600.0;
        std::fs::write(
            &path,
            format!(
                r#"{{"format":"celeriac-statedb","version":1,"revoked":[["old",{long_ago}]]}}"#
            ),
        )
        .expect("write");
        let revoked = RevokedTasks::default();
        assert_eq!(StateDb::new(&path).load_into(&revoked).expect("load"), 0);
        std::fs::write(&path, b"\x80\x03shelve").expect("write");
        let err = StateDb::new(&path).load_into(&revoked).unwrap_err();
        assert!(matches!(err, StateDbError::Format { .. }), "{err}");
    }
}
