//! Task name → component: loads the `*.wasm` files of a tasks directory, checks each against
//! the world, asks it which Celery task names it serves, and caches compiled artifacts.
//!
//! The registry decides which component serves a name; it does not run tasks (that is the
//! sandbox) and knows nothing of messages.

mod cache;
mod policy_file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::sandbox::{LogLevel, Prepared, Sandbox, SandboxError, TaskEvents, TaskInfo};

pub use cache::CompileCache;
pub use policy_file::{ComponentPolicy, DIRECTORY_POLICY_FILE};

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
    /// A short version string: the first 12 hex digits of the digest.
    pub fn version(&self) -> &str {
        let hex = self.digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }

    /// The options of one of its tasks.
    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|task| task.name == name)
    }
}

/// What loading one component cost.
#[derive(Clone, Copy, Debug)]
pub struct LoadTiming {
    /// Reading, digesting, compiling or deserializing, linking and describing.
    pub total: Duration,
    /// Whether the compiled artifact came from the cache.
    pub from_cache: bool,
}

/// The tasks a worker serves.
#[derive(Default)]
pub struct Registry {
    components: Vec<Arc<LoadedComponent>>,
    by_name: HashMap<String, Arc<LoadedComponent>>,
}

impl Registry {
    /// Loads every `*.wasm` file of `dir` (not recursive), in name order.
    pub async fn load_dir(
        sandbox: &Sandbox,
        dir: &Path,
        cache: Option<&CompileCache>,
    ) -> Result<Registry, LoadError> {
        let mut paths = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut registry = Registry::default();
        for path in paths {
            let component = load_component(sandbox, &path, cache).await?;
            registry.insert(Arc::new(component))?;
        }
        Ok(registry)
    }

    fn insert(&mut self, component: Arc<LoadedComponent>) -> Result<(), LoadError> {
        for task in &component.tasks {
            if let Some(first) = self.by_name.get(&task.name) {
                return Err(LoadError::Duplicate {
                    name: task.name.clone(),
                    first: first.path.clone(),
                    second: component.path.clone(),
                });
            }
        }
        for task in &component.tasks {
            self.by_name.insert(task.name.clone(), component.clone());
        }
        self.components.push(component);
        Ok(())
    }

    /// The component serving `task_name`.
    pub fn resolve(&self, task_name: &str) -> Option<&Arc<LoadedComponent>> {
        self.by_name.get(task_name)
    }

    /// Every loaded component, in load order.
    pub fn components(&self) -> &[Arc<LoadedComponent>] {
        &self.components
    }

    /// Every task name served, sorted.
    pub fn task_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Logs what a component prints while it describes itself.
struct LoadLog {
    path: PathBuf,
}

impl TaskEvents for LoadLog {
    fn log(&self, level: LogLevel, message: &str) {
        tracing::debug!(component = %self.path.display(), ?level, "{message}");
    }
    fn update_state(&self, _state: &str, _meta_json: &str) {}
}

/// Loads one component: digest, compile (or take from the cache), link, describe.
pub async fn load_component(
    sandbox: &Sandbox,
    path: &Path,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent, LoadError> {
    let started = Instant::now();
    let policy = policy_file::read_policy(path).map_err(|message| LoadError::Policy {
        path: path.to_path_buf(),
        message,
    })?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let compiling = {
        let sandbox = sandbox.clone();
        let cache = cache.cloned();
        tokio::task::spawn_blocking(move || {
            let digest_hex = hex::encode(Sha256::digest(&bytes));
            if let Some(component) = cache
                .as_ref()
                .and_then(|cache| cache.load(sandbox.engine(), &digest_hex))
            {
                return Ok((digest_hex, component, true));
            }
            let component = sandbox.compile(&bytes)?;
            if let Some(cache) = &cache {
                cache.store(sandbox.engine(), &digest_hex, &component);
            }
            Ok((digest_hex, component, false))
        })
    };
    let component_error = |source| LoadError::Component {
        path: path.to_path_buf(),
        source,
    };
    let (digest_hex, component, from_cache) = compiling
        .await
        .map_err(|err| LoadError::Interrupted {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?
        .map_err(component_error)?;
    let prepared = sandbox
        .prepare(&component, policy.wasi.clone(), policy.isolation)
        .map_err(component_error)?;
    let tasks = sandbox
        .describe(
            &prepared,
            Arc::new(LoadLog {
                path: path.to_path_buf(),
            }),
        )
        .await
        .map_err(component_error)?;
    if tasks.is_empty() {
        return Err(LoadError::NoTasks {
            path: path.to_path_buf(),
        });
    }
    let load = LoadTiming {
        total: started.elapsed(),
        from_cache,
    };
    let loaded = LoadedComponent {
        path: path.to_path_buf(),
        digest: format!("sha256:{digest_hex}"),
        tasks,
        policy,
        load,
        prepared,
    };
    tracing::info!(
        component = %loaded.path.display(),
        version = loaded.version(),
        tasks = loaded.tasks.len(),
        duration_ms = load.total.as_millis() as u64,
        from_cache,
        "component loaded"
    );
    Ok(loaded)
}
