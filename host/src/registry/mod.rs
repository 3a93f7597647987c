//! Task name → component: loads the `*.wasm` files of a tasks directory, checks each against
//! the world, asks it which Celery task names it serves, caches compiled artifacts, and swaps
//! components while the worker runs.
//!
//! The registry decides which component serves a name; it does not run tasks (that is the
//! sandbox) and knows nothing of messages. Every change (a file noticed by the watcher, an
//! [`Registry::install`] from a deploy, a [`Registry::rollback`]) goes through one lock,
//! compiles and validates off the async runtime, and then publishes a new [`TaskTable`] at
//! once: a task resolved before keeps the component it got and finishes on that version.

mod atomic_file;
mod cache;
mod compile_child;
mod keep;
mod load;
mod policy_file;
mod table;
mod version;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::sandbox::{Prepared, Sandbox, SandboxError, TaskInfo};

use keep::Keeper;
use load::{ComponentBytes, load_bytes, policy_for};

pub use cache::CompileCache;
pub use compile_child::{COMPILE_SUBCOMMAND, ServeError, serve_compile_request};
pub use keep::KEEP_DIR;
pub use load::{digest_of, load_component};
pub use policy_file::{ComponentPolicy, DIRECTORY_POLICY_FILE};
pub use table::TaskTable;
pub use watch::{DirWatcher, SETTLE_DELAY, WatchError};

/// How many registry events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 64;

/// Why a tasks directory or a component could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The tasks directory cannot be listed.
    #[error("cannot read tasks directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A component file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A component does not compile, does not fit the world, or its `tasks` export fails.
    #[error("{path}: {source}")]
    Component {
        /// The file.
        path: PathBuf,
        /// What the sandbox said.
        source: SandboxError,
    },
    /// A component's policy file is invalid.
    #[error("policy of {path}: {message}")]
    Policy {
        /// The component.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Two components serve the same task name.
    #[error("task {name:?} is served by both {first} and {second}")]
    Duplicate {
        /// The task name.
        name: String,
        /// The component loaded first.
        first: PathBuf,
        /// The component that also claims it.
        second: PathBuf,
    },
    /// A component lists no task at all.
    #[error("{path}: serves no task (its `tasks` export returned an empty list)")]
    NoTasks {
        /// The file.
        path: PathBuf,
    },
    /// Bytes offered for installation do not have the digest they came with.
    #[error("{path}: digest mismatch: expected {expected}, the bytes have {actual}")]
    DigestMismatch {
        /// Where they were to be installed.
        path: PathBuf,
        /// The digest that came with them.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A name offered for installation is not a plain `NAME.wasm` file name.
    #[error("{name:?} is not a component file name (NAME.wasm, no directories, no leading dot)")]
    BadFileName {
        /// The name.
        name: String,
    },
    /// An accepted component cannot be written into the tasks directory.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A rollback found no previous version kept for the file.
    #[error("no previous version of {name} is kept: {source}")]
    NoPrevious {
        /// The component file name (or the task name asked for).
        name: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A blocking load thread failed.
    #[error("loading {path} was interrupted: {message}")]
    Interrupted {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A loaded component: its identity, its tasks and what is needed to run them.
pub struct LoadedComponent {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// The version it declares (a `version` custom section), else the digest's first 12 hex
    /// digits.
    pub version: String,
    /// The Celery tasks it serves, with their options.
    pub tasks: Vec<TaskInfo>,
    /// Its policy.
    pub policy: ComponentPolicy,
    /// How long loading took, and whether the compiled artifact came from the cache.
    pub load: LoadTiming,
    /// Linked and validated, ready for the sandbox.
    pub prepared: Prepared,
}

impl LoadedComponent {
    /// Its version string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The options of one of its tasks.
    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|task| task.name == name)
    }

    /// Its file name, for log lines.
    pub fn file_name(&self) -> String {
        file_name(&self.path)
    }
}

/// What loading one component cost.
#[derive(Clone, Copy, Debug)]
pub struct LoadTiming {
    /// Reading, digesting, compiling or deserializing, linking and describing.
    pub total: Duration,
    /// Where the compiled code came from.
    pub source: ArtifactSource,
}

/// Where a loaded component's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// The compile cache.
    Cache,
    /// This process compiled it.
    Compiled,
    /// A child process compiled it into the cache (see [`CompileCache::compiling_in_child`]).
    CompiledInChild,
}

impl ArtifactSource {
    /// How the load log line says it.
    fn describe(self) -> &'static str {
        match self {
            ArtifactSource::Cache => "from the compile cache",
            ArtifactSource::Compiled => "compiled",
            ArtifactSource::CompiledInChild => "compiled in a child process",
        }
    }
}

/// Which version serves one task name (for `celeriac` output and remote-control answers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskVersion {
    /// The Celery task name.
    pub name: String,
    /// The serving component's version.
    pub version: String,
    /// The serving component's `sha256:<hex>` digest.
    pub digest: String,
    /// The serving component's file.
    pub file: PathBuf,
}

/// A change of the registry, for monitoring events and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A component was loaded and serves its tasks now.
    Loaded {
        /// Its file.
        file: PathBuf,
        /// Its version.
        version: String,
        /// Its digest.
        digest: String,
        /// The task names it serves.
        tasks: Vec<String>,
        /// The version the file served before, if any.
        replaced: Option<String>,
    },
    /// A component was refused; whatever served before keeps serving.
    Refused {
        /// Its file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A component's file went away; its names are no longer served.
    Removed {
        /// Its file.
        file: PathBuf,
        /// The version it served.
        version: String,
        /// The task names no longer served.
        tasks: Vec<String>,
    },
}

/// What [`Registry::sync_file`] did.
#[derive(Clone)]
pub enum Change {
    /// The file holds what is already served (or is absent and was never served).
    Unchanged,
    /// This component serves the file's names now.
    Loaded(Arc<LoadedComponent>),
    /// This component's file is gone and its names are no longer served.
    Removed(Arc<LoadedComponent>),
}

/// The tasks a worker serves, and the means to change them while it runs.
pub struct Registry {
    table: RwLock<Arc<TaskTable>>,
    dir: PathBuf,
    sandbox: Sandbox,
    cache: Option<CompileCache>,
    keeper: Keeper,
    /// Whether copies are kept for rollback (see [`Registry::keep_versions`]).
    keeping: AtomicBool,
    /// Serializes changes, so each one builds on the table the previous one published.
    changing: tokio::sync::Mutex<()>,
    events: broadcast::Sender<RegistryEvent>,
}

impl Registry {
    /// Loads every `*.wasm` file of `dir` (not recursive, dot-named files skipped), in name
    /// order. Any file that does not load is an error: a worker does not start half-served.
    pub async fn load_dir(
        sandbox: &Sandbox,
        dir: &Path,
        cache: Option<&CompileCache>,
    ) -> Result<Registry, LoadError> {
        let registry = Registry {
            table: RwLock::default(),
            dir: dir.to_path_buf(),
            sandbox: sandbox.clone(),
            cache: cache.cloned(),
            keeper: Keeper::new(dir),
            keeping: AtomicBool::new(false),
            changing: tokio::sync::Mutex::new(()),
            events: broadcast::channel(EVENT_BACKLOG).0,
        };
        let mut table = TaskTable::default();
        for path in registry.component_files()? {
            let file = ComponentBytes::read(&path).await?;
            let component = Arc::new(load_bytes(sandbox, &file, cache).await?);
            table = table.with(Arc::clone(&component))?;
            registry.announce(&component, None, &file).await;
        }
        *registry
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        Ok(registry)
    }

    /// The `*.wasm` files of the tasks directory, sorted, dot-named ones left out (they are
    /// files being written, by the convention [`Registry::install`] and the docs follow).
    fn component_files(&self) -> Result<Vec<PathBuf>, LoadError> {
        let read_dir_error = |source| LoadError::ReadDir {
            dir: self.dir.clone(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            if is_component_file_name(&file_name(&path)) && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// From now on, keeps a copy of the version each component file serves and of the one
    /// before, in the tasks directory's [`KEEP_DIR`], so [`Registry::rollback`] can return to
    /// it even after the file was overwritten or removed. A worker calls this; a one-off
    /// `celeriac run` does not, and leaves the directory alone.
    pub async fn keep_versions(&self) {
        let _changing = self.changing.lock().await;
        self.keeping.store(true, Ordering::Relaxed);
        for component in self.components() {
            // The file may have changed since it was loaded: keep only what is served.
            match ComponentBytes::read(&component.path).await {
                Ok(file) if file.digest == component.digest => self.keep_serving(&file).await,
                _ => tracing::warn!(
                    "registry: {} changed since it was loaded; its version {} cannot be kept \
                     for rollback",
                    component.file_name(),
                    component.version
                ),
            }
        }
    }

    /// Keeps `file` as the version its file name serves, off the runtime; best effort.
    async fn keep_serving(&self, file: &ComponentBytes) {
        if !self.keeping.load(Ordering::Relaxed) {
            return;
        }
        let keeper = self.keeper.clone();
        let (name, digest, bytes) = (
            file_name(&file.path),
            file.digest.clone(),
            Arc::clone(&file.bytes),
        );
        // Failures are logged by the keeper; they never delay or undo serving.
        let _ = tokio::task::spawn_blocking(move || keeper.serving(&name, &digest, &bytes)).await;
    }

    /// The tasks directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The table in force now. Resolve several names against one snapshot to see one
    /// consistent version of the registry.
    pub fn snapshot(&self) -> Arc<TaskTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The component serving `task_name` now.
    pub fn resolve(&self, task_name: &str) -> Option<Arc<LoadedComponent>> {
        self.snapshot().resolve(task_name).cloned()
    }

    /// Every loaded component, in file name order.
    pub fn components(&self) -> Vec<Arc<LoadedComponent>> {
        self.snapshot().components().cloned().collect()
    }

    /// Every task name served, sorted.
    pub fn task_names(&self) -> Vec<String> {
        self.snapshot().task_names()
    }

    /// Which version serves each task name, sorted by name.
    pub fn versions(&self) -> Vec<TaskVersion> {
        let table = self.snapshot();
        let mut versions: Vec<TaskVersion> = table
            .components()
            .flat_map(|component| {
                component.tasks.iter().map(|task| TaskVersion {
                    name: task.name.clone(),
                    version: component.version.clone(),
                    digest: component.digest.clone(),
                    file: component.path.clone(),
                })
            })
            .collect();
        versions.sort_by(|a, b| a.name.cmp(&b.name));
        versions
    }

    /// Registry changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Brings the registry in line with the file at `path` as it is on disk now: loads it
    /// when new or changed, unregisters its names when it is gone. A refusal is logged and
    /// announced as an event, and returned; whatever served before keeps serving.
    pub async fn sync_file(&self, path: &Path) -> Result<Change, LoadError> {
        let _changing = self.changing.lock().await;
        let table = self.snapshot();
        let current = table.component_at(path).cloned();
        if !path.is_file() {
            let Some(gone) = current else {
                return Ok(Change::Unchanged);
            };
            self.publish(table.without(path));
            self.retire(&gone).await;
            return Ok(Change::Removed(gone));
        }
        let file = match ComponentBytes::read(path).await {
            Ok(file) => file,
            Err(err) => return Err(self.refuse(path, err, current.as_deref())),
        };
        if let Some(current) = &current
            && current.digest == file.digest
            && policy_for(path).is_ok_and(|policy| policy == current.policy)
        {
            return Ok(Change::Unchanged);
        }
        self.swap_in(file, current, false).await.map(Change::Loaded)
    }

    /// Installs `bytes` as `file_name` in the tasks directory, if their SHA-256 is
    /// `expected_digest` (`sha256:<hex>` or bare hex): compiles and validates them first,
    /// then writes the file (so a restart keeps it) and swaps it in. This is what a fleet
    /// deploy calls on each worker.
    pub async fn install(
        &self,
        file_name: &str,
        bytes: Vec<u8>,
        expected_digest: &str,
    ) -> Result<Arc<LoadedComponent>, LoadError> {
        if !is_component_file_name(file_name) || file_name.contains(['/', '\\']) {
            return Err(LoadError::BadFileName {
                name: file_name.to_owned(),
            });
        }
        let path = self.dir.join(file_name);
        // Digesting a large component takes a while: off the runtime.
        let digesting = path.clone();
        let file =
            tokio::task::spawn_blocking(move || ComponentBytes::new(digesting, Arc::from(bytes)))
                .await
                .map_err(|err| LoadError::Interrupted {
                    path: path.clone(),
                    message: err.to_string(),
                })?;
        let _changing = self.changing.lock().await;
        let current = self.snapshot().component_at(&path).cloned();
        let expected = format!("sha256:{}", expected_digest.trim_start_matches("sha256:"));
        if file.digest != expected {
            let err = LoadError::DigestMismatch {
                path,
                expected,
                actual: file.digest.clone(),
            };
            return Err(self.refuse(&file.path, err, current.as_deref()));
        }
        self.swap_in(file, current, true).await
    }

    /// Goes back to the version kept from before the last change of a component file:
    /// `name` is its file name (`tasks.wasm`) or one of the task names it serves now. A
    /// second rollback returns to the version rolled back from.
    pub async fn rollback(&self, name: &str) -> Result<Arc<LoadedComponent>, LoadError> {
        let file_name = match self.resolve(name) {
            Some(component) if !name.ends_with(".wasm") => component.file_name(),
            _ => name.to_owned(),
        };
        let keeper = self.keeper.clone();
        let wanted = file_name.clone();
        let previous = tokio::task::spawn_blocking(move || keeper.previous(&wanted))
            .await
            .map_err(|err| LoadError::Interrupted {
                path: self.dir.join(&file_name),
                message: err.to_string(),
            })?
            .map_err(|source| LoadError::NoPrevious {
                name: name.to_owned(),
                source,
            })?;
        let digest = digest_of(&previous);
        self.install(&file_name, previous, &digest).await
    }

    /// Reloads from disk what the remote `pool_restart` command names: every component of
    /// the tasks directory, or only those whose file name or one of whose task names is in
    /// `only`. Changed files are swapped in, new ones loaded, removed ones unregistered
    /// (as the watcher would, for a worker started with `--no-watch`), and instances kept
    /// warm by `isolation = "reuse"` are dropped, as a Celery pool restart replaces its
    /// child processes. Returns each file's outcome; refusals are logged and announced.
    pub async fn reload(&self, only: &[String]) -> Vec<(PathBuf, Result<Change, LoadError>)> {
        let served = self.components();
        let mut paths: Vec<PathBuf> = match self.component_files() {
            Ok(paths) => paths,
            Err(err) => return vec![(self.dir.clone(), Err(err))],
        };
        for component in &served {
            if !paths.contains(&component.path) {
                paths.push(component.path.clone());
            }
        }
        let named = |path: &PathBuf| {
            only.is_empty()
                || only.contains(&file_name(path))
                || served.iter().any(|component| {
                    &component.path == path
                        && component.tasks.iter().any(|task| only.contains(&task.name))
                })
        };
        let mut outcomes = Vec::new();
        for path in paths.into_iter().filter(named) {
            let outcome = self.sync_file(&path).await;
            if let Ok(Change::Unchanged) = outcome
                && let Some(component) = self.snapshot().component_at(&path)
            {
                component.prepared.drop_warm_instances();
            }
            outcomes.push((path, outcome));
        }
        outcomes
    }

    /// Compiles and validates `file`, checks its names against the other files', writes it
    /// into the tasks directory when `write` (an install), and publishes it. Holds the
    /// `changing` lock (taken by the caller).
    async fn swap_in(
        &self,
        file: ComponentBytes,
        current: Option<Arc<LoadedComponent>>,
        write: bool,
    ) -> Result<Arc<LoadedComponent>, LoadError> {
        let refuse = |err: LoadError| self.refuse(&file.path, err, current.as_deref());
        let component = Arc::new(
            load_bytes(&self.sandbox, &file, self.cache.as_ref())
                .await
                .map_err(refuse)?,
        );
        let next = self
            .snapshot()
            .with(Arc::clone(&component))
            .map_err(refuse)?;
        if write {
            let (path, bytes) = (file.path.clone(), Arc::clone(&file.bytes));
            tokio::task::spawn_blocking(move || atomic_file::write_atomically(&path, &bytes))
                .await
                .map_err(|err| LoadError::Interrupted {
                    path: file.path.clone(),
                    message: err.to_string(),
                })
                .and_then(|written| {
                    written.map_err(|source| LoadError::Write {
                        path: file.path.clone(),
                        source,
                    })
                })
                .map_err(refuse)?;
        }
        self.publish(next);
        self.announce(&component, current.as_deref(), &file).await;
        Ok(component)
    }

    fn publish(&self, table: TaskTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// Logs a component that serves now, keeps a copy for rollback, and tells subscribers.
    async fn announce(
        &self,
        component: &LoadedComponent,
        replaced: Option<&LoadedComponent>,
        file: &ComponentBytes,
    ) {
        let names = component
            .tasks
            .iter()
            .map(|task| format!("{} → {}", task.name, component.version))
            .collect::<Vec<_>>()
            .join(", ");
        let how = component.load.source.describe();
        let millis = component.load.total.as_millis();
        match replaced {
            Some(old) => {
                let dropped: Vec<&str> = old
                    .tasks
                    .iter()
                    .filter(|task| component.task(&task.name).is_none())
                    .map(|task| task.name.as_str())
                    .collect();
                let dropped = if dropped.is_empty() {
                    String::new()
                } else {
                    format!("; no longer served: {}", dropped.join(", "))
                };
                tracing::info!(
                    "registry: {} swapped {} → {}: {names}{dropped} ({how} in {millis} ms;                      running tasks finish on {})",
                    component.file_name(),
                    old.version,
                    component.version,
                    old.version,
                );
            }
            None => tracing::info!(
                "registry: {} loaded: {names} ({how} in {millis} ms)",
                component.file_name()
            ),
        }
        self.keep_serving(file).await;
        let _ = self.events.send(RegistryEvent::Loaded {
            file: component.path.clone(),
            version: component.version.clone(),
            digest: component.digest.clone(),
            tasks: component
                .tasks
                .iter()
                .map(|task| task.name.clone())
                .collect(),
            replaced: replaced.map(|old| old.version.clone()),
        });
    }

    /// Logs and announces a removed component and keeps it as the previous version.
    async fn retire(&self, gone: &LoadedComponent) {
        let names: Vec<String> = gone.tasks.iter().map(|task| task.name.clone()).collect();
        tracing::warn!(
            "registry: {} removed: {} no longer served (version {}; running tasks finish on it)",
            gone.file_name(),
            names.join(", "),
            gone.version
        );
        if self.keeping.load(Ordering::Relaxed) {
            let keeper = self.keeper.clone();
            let file_name = gone.file_name();
            let _ = tokio::task::spawn_blocking(move || keeper.removed(&file_name)).await;
        }
        let _ = self.events.send(RegistryEvent::Removed {
            file: gone.path.clone(),
            version: gone.version.clone(),
            tasks: names,
        });
    }

    /// Logs and announces a refused file; returns the error for the caller.
    fn refuse(&self, path: &Path, err: LoadError, serving: Option<&LoadedComponent>) -> LoadError {
        let keeps = match serving {
            Some(old) => format!("version {} keeps serving", old.version),
            None => "nothing was loaded from it".to_owned(),
        };
        tracing::error!("registry: refused {}: {err}; {keeps}", path.display());
        let _ = self.events.send(RegistryEvent::Refused {
            file: path.to_path_buf(),
            reason: err.to_string(),
        });
        err
    }
}

/// The last component of `path`, lossily as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `NAME.wasm`, not dot-named (dot-named files are being written).
fn is_component_file_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > ".wasm".len() && name.ends_with(".wasm")
}
