//! Loads one component: digest, compile (or take from the cache) off the async runtime,
//! link against the world, and ask it which tasks it serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::sandbox::{LogLevel, Sandbox, TaskEvents};

use super::policy_file::{self, ComponentPolicy};
use super::version::version_of;
use super::{ArtifactSource, CompileCache, LoadError, LoadTiming, LoadedComponent};

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

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The policy that applies to the component file at `path`.
pub(crate) fn policy_for(path: &Path) -> Result<ComponentPolicy, LoadError> {
    policy_file::read_policy(path).map_err(|message| LoadError::Policy {
        path: path.to_path_buf(),
        message,
    })
}

/// A component file's bytes and their digest, as read at one moment.
pub(crate) struct ComponentBytes {
    /// Where the component is (or is about to be) installed.
    pub path: PathBuf,
    /// Its contents.
    pub bytes: Arc<[u8]>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// When reading began, so load timings cover it.
    pub started: Instant,
}

impl ComponentBytes {
    /// Bytes received from elsewhere, to be installed at `path`.
    pub(crate) fn new(path: PathBuf, bytes: Arc<[u8]>) -> Self {
        let started = Instant::now();
        ComponentBytes {
            digest: digest_of(&bytes),
            path,
            bytes,
            started,
        }
    }

    /// Reads and digests the file at `path` off the async runtime.
    pub(crate) async fn read(path: &Path) -> Result<Self, LoadError> {
        let owned = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&owned).map_err(|source| LoadError::Read {
                path: owned.clone(),
                source,
            })?;
            Ok(ComponentBytes::new(owned, Arc::from(bytes)))
        })
        .await
        .map_err(|err| LoadError::Interrupted {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?
    }
}

/// Loads the component file at `path`.
pub async fn load_component(
    sandbox: &Sandbox,
    path: &Path,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent, LoadError> {
    load_bytes(sandbox, &ComponentBytes::read(path).await?, cache).await
}

/// Loads `file.bytes` as the component at `file.path`: the policy and the identity come from
/// the path, the code from the bytes.
pub(crate) async fn load_bytes(
    sandbox: &Sandbox,
    file: &ComponentBytes,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent, LoadError> {
    let path = file.path.as_path();
    let policy = policy_for(path)?;
    let compiling = {
        let sandbox = sandbox.clone();
        let cache = cache.cloned();
        let bytes = Arc::clone(&file.bytes);
        let digest_hex = file.digest.trim_start_matches("sha256:").to_owned();
        tokio::task::spawn_blocking(move || {
            let version = version_of(&bytes, &digest_hex);
            let cached = || {
                cache
                    .as_ref()
                    .and_then(|cache| cache.load(sandbox.engine(), &digest_hex))
            };
            let from_cache = |component| {
                release_freed_memory();
                Ok((version.clone(), component, ArtifactSource::Cache))
            };
            if let Some(component) = cached() {
                return from_cache(component);
            }
            // Another process sharing the cache (a worker of `--processes`, a second worker on
            // the machine) may be compiling the same component: wait for it, then map its
            // artifact instead of compiling it again at the same time.
            let compile_lock = cache
                .as_ref()
                .and_then(|cache| cache.lock_compiling(sandbox.engine(), &digest_hex));
            if compile_lock.is_some()
                && let Some(component) = cached()
            {
                return from_cache(component);
            }
            let in_child = cache
                .as_ref()
                .and_then(|cache| cache.compile_in_child(sandbox.engine(), &digest_hex, &bytes));
            if let Some(component) = in_child {
                return Ok((version, component, ArtifactSource::CompiledInChild));
            }
            let mut component = sandbox.compile(&bytes)?;
            if let Some(cache) = &cache {
                cache.store(sandbox.engine(), &digest_hex, &component);
                // Served from the file it was just written to, the code is mapped from the
                // page cache rather than held in the compiler's anonymous memory.
                component = cached().unwrap_or(component);
            }
            release_freed_memory();
            Ok((version, component, ArtifactSource::Compiled))
        })
    };
    let component_error = |source| LoadError::Component {
        path: path.to_path_buf(),
        source,
    };
    let (version, component, source) = compiling
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
    Ok(LoadedComponent {
        path: path.to_path_buf(),
        digest: file.digest.clone(),
        version,
        tasks,
        policy,
        load: LoadTiming {
            total: file.started.elapsed(),
            source,
        },
        prepared,
    })
}

/// Returns the memory a load freed to the system. Compiling a large component (the Python
/// one, 18 MB) allocates a few hundred MB on the compiler's threads, and reading one
/// allocates its size again; glibc keeps what was freed in its arenas, so a worker that
/// had just compiled the Python component sat idle at ~350 MiB resident.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes their locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}
