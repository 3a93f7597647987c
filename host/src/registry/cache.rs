//! The on-disk cache of compiled components, keyed by the component's content digest and
//! the engine's settings, so a restart does not recompile an 18 MB Python component.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::atomic_file::write_atomically;
use super::compile_child::{self, ChildCompileError};

/// A directory of precompiled components (`*.cwasm`).
///
/// Artifacts are loaded with `Component::deserialize_file`, which trusts its input: the
/// cache directory must be writable only by the worker's user. Files are written to a
/// temporary name and renamed, so a crash never leaves a half-written artifact under a
/// real key.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
    /// The `celeriac` binary that compiles what is missing, in a child process.
    compiler: Option<PathBuf>,
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash becomes a key that
/// is stable across runs (std's hashers are randomly seeded).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only the SHA-256 state is used; `finish` is never called for the key.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// A cache in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: dir.into(),
            compiler: None,
        }
    }

    /// Compiles what is missing from the cache in a child process that runs `program` (the
    /// `celeriac` binary) rather than in this one, so the compiler's memory goes back to the
    /// system when the child exits. Without this, components are compiled in the calling
    /// process.
    pub fn compiling_in_child(mut self, program: impl Into<PathBuf>) -> Self {
        self.compiler = Some(program.into());
        self
    }

    /// The default location: `$CELERIAC_CACHE_DIR`, else `$XDG_CACHE_HOME/celeriac`, else
    /// `~/.cache/celeriac`; `None` when none can be found.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CELERIAC_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("celeriac"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("celeriac"))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, engine: &Engine, digest_hex: &str) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // An artifact compiled before the linker changed holds other code for the same bytes.
        crate::link::LINKER_VERSION.hash(&mut hasher);
        let engine_key = hex::encode(hasher.0.finalize());
        self.dir
            .join(format!("{}-{}.cwasm", &digest_hex[..32], &engine_key[..16]))
    }

    /// A compiled component from the cache, if there is a usable one.
    pub(crate) fn load(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        let path = self.path_for(engine, digest_hex);
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file was written by `store` below from `Component::serialize` of this
        // engine configuration (the engine hash is part of its name), in a directory the
        // operator gives to the worker alone; wasmtime also checks its header and version.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "ignoring unusable compiled artifact");
                None
            }
        }
    }

    /// An exclusive lock on compiling `digest_hex` into this cache, held until the returned
    /// file is dropped; blocks while another process (or thread) holds it. The lock files
    /// (`<artifact>.lock`, empty) stay: removing one while another process waits on it
    /// would let a third lock a new file beside it. `None`, after a debug line, when the
    /// lock cannot be taken (a read-only cache): compiling twice is only slower.
    pub(crate) fn lock_compiling(
        &self,
        engine: &Engine,
        digest_hex: &str,
    ) -> Option<std::fs::File> {
        let mut path = self.path_for(engine, digest_hex).into_os_string();
        path.push(".lock");
        let locked = std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                std::fs::File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
            })
            .and_then(|file| file.lock().map(|()| file));
        match locked {
            Ok(file) => Some(file),
            Err(err) => {
                tracing::debug!(path = %Path::new(&path).display(), error = %err, "cannot lock the compile cache entry");
                None
            }
        }
    }

    /// Writes a compiled component; failures only cost a recompile next time, so they are
    /// logged, not returned.
    pub(crate) fn store(&self, engine: &Engine, digest_hex: &str, component: &Component) {
        let path = self.path_for(engine, digest_hex);
        let written = component
            .serialize()
            .map_err(|err| std::io::Error::other(err.to_string()))
            .and_then(|bytes| write_artifact(&path, &bytes));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "cannot write compiled artifact to the cache");
        }
    }

    /// Compiles `bytes` in a child process (see [`CompileCache::compiling_in_child`]) and
    /// maps the artifact it leaves here. `None` when no child is configured or the child
    /// failed: the caller then compiles in this process, which reports an invalid
    /// component's error as usual.
    pub(crate) fn compile_in_child(
        &self,
        engine: &Engine,
        digest_hex: &str,
        bytes: &[u8],
    ) -> Option<Component> {
        let program = self.compiler.as_deref()?;
        let path = self.path_for(engine, digest_hex);
        let started = Instant::now();
        match compile_child::compile_in_child(program, bytes, &path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "compiled in a child process");
                self.load(engine, digest_hex)
            }
            // An invalid component: compiling it here says why, in the load error.
            Err(err) if matches!(err, ChildCompileError::Failed { .. }) && !err.killed() => {
                tracing::debug!(error = %err, "child process did not compile the component");
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "compiling in a child process failed; compiling in the worker instead");
                None
            }
        }
    }
}

/// Writes an artifact where the cache looks for it: atomically, then evicted from the page
/// cache (see [`drop_from_page_cache`]).
pub(crate) fn write_artifact(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    write_atomically(path, artifact)?;
    drop_from_page_cache(&std::fs::File::open(path)?);
    Ok(())
}

/// Evicts a just-written artifact's pages from the page cache. Written pages sit there in
/// large folios, and a mapping maps a large folio whole when it faults on any page of it:
/// a worker serving the Python component from a file it had just written idled at ~42 MiB
/// resident, against ~30 MiB once those pages came back through ordinary read-ahead.
fn drop_from_page_cache(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on a file descriptor this function borrows; it changes no data.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}
