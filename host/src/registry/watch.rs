//! Watches the tasks directory and hands each changed component file to
//! [`Registry::sync_file`] once it has settled.
//!
//! A file being copied in must never be loaded half-written. Three rules see to that:
//! dot-named files (`.tasks.wasm.tmp`, the temporary files of [`Registry::install`]) and
//! anything not ending in `.wasm` are ignored, so writing elsewhere and renaming into place
//! is always safe; a file is looked at only after [`SETTLE_DELAY`] without any event for it;
//! and its size and modification time must not have changed across that delay. A copy that
//! stalls longer than the delay may still be tried; it then fails to validate, is refused
//! with a log line, and the next write event tries again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{DIRECTORY_POLICY_FILE, Registry, file_name, is_component_file_name};

/// How long a file must stay untouched before it is loaded.
pub const SETTLE_DELAY: Duration = Duration::from_millis(250);

/// The tasks directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch tasks directory {dir}: {source}")]
pub struct WatchError {
    dir: PathBuf,
    source: notify::Error,
}

/// Watches while it lives; dropping it stops watching.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    applying: JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.applying.abort();
    }
}

/// A file's size and modification time; `None` while it does not exist.
type Stamp = Option<(u64, Option<SystemTime>)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.len(), meta.modified().ok()))
}

/// A file waiting to settle.
struct Settling {
    due: Instant,
    stamp: Stamp,
}

impl Registry {
    /// Starts watching the tasks directory: files added, replaced or removed there are
    /// loaded, swapped in or unregistered in the background, on the current tokio runtime.
    pub fn watch(self: &Arc<Self>) -> Result<DirWatcher, WatchError> {
        let watch_error = |source| WatchError {
            dir: self.dir.clone(),
            source,
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // The receiver only goes away when the watcher is dropped.
            let _ = events_tx.send(event);
        })
        .map_err(watch_error)?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        tracing::info!(
            "registry: watching {} for component changes",
            self.dir.display()
        );
        Ok(DirWatcher {
            _watcher: watcher,
            applying: tokio::spawn(apply_changes(Arc::clone(self), events)),
        })
    }

    /// The component files an event about `path` concerns.
    fn concerned_files(&self, path: &Path) -> Vec<PathBuf> {
        let name = file_name(path);
        if name == DIRECTORY_POLICY_FILE {
            // Any loaded component's policy may come from it.
            return self
                .snapshot()
                .components()
                .map(|c| c.path.clone())
                .collect();
        }
        if is_component_file_name(&name) {
            return vec![self.dir.join(name)];
        }
        match name.strip_suffix(".toml") {
            Some(stem) if !name.starts_with('.') => vec![self.dir.join(format!("{stem}.wasm"))],
            _ => Vec::new(),
        }
    }

    /// Every file that may have changed when events were lost: those on disk and those loaded.
    fn every_file(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.component_files().unwrap_or_default();
        files.extend(self.snapshot().components().map(|c| c.path.clone()));
        files
    }
}

/// Collects events, lets each file settle, then syncs it; one file at a time, so each change
/// builds on the last.
async fn apply_changes(
    registry: Arc<Registry>,
    mut events: mpsc::UnboundedReceiver<notify::Result<Event>>,
) {
    let mut settling: HashMap<PathBuf, Settling> = HashMap::new();
    let arm = |settling: &mut HashMap<PathBuf, Settling>, path: PathBuf| {
        let stamp = stamp(&path);
        settling.insert(
            path,
            Settling {
                due: Instant::now() + SETTLE_DELAY,
                stamp,
            },
        );
    };
    loop {
        let next_due = settling.values().map(|file| file.due).min();
        let wait = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => {
                let touched = match event {
                    None => return,
                    Some(Ok(event)) if event.need_rescan() => registry.every_file(),
                    // Opening and reading (the registry's own reads among them) change nothing.
                    Some(Ok(event)) if event.kind.is_access() => Vec::new(),
                    Some(Ok(event)) => event
                        .paths
                        .iter()
                        .flat_map(|path| registry.concerned_files(path))
                        .collect(),
                    Some(Err(err)) => {
                        tracing::warn!("registry: watching {}: {err}; rescanning", registry.dir.display());
                        registry.every_file()
                    }
                };
                for path in touched {
                    arm(&mut settling, path);
                }
            }
            () = wait => {
                let now = Instant::now();
                let due: Vec<PathBuf> = settling
                    .iter()
                    .filter(|(_, file)| file.due <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in due {
                    let Some(file) = settling.remove(&path) else { continue };
                    if stamp(&path) != file.stamp {
                        // Still being written without events (or the events are late).
                        arm(&mut settling, path);
                        continue;
                    }
                    // A refusal is logged and announced by the registry; nothing more to do.
                    let _ = registry.sync_file(&path).await;
                }
            }
        }
    }
}
