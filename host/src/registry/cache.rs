//! The on-disk cache of compiled components, keyed by the component's content digest and
//! the engine's settings, so a restart does not recompile an 18 MB Python component.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components (`*.cwasm`).
///
/// Artifacts are loaded with `Component::deserialize_file`, which trusts its input: the
/// cache directory must be writable only by the worker's user. Files are written to a
/// temporary name and renamed, so a crash never leaves a half-written artifact under a
/// real key.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
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
        CompileCache { dir: dir.into() }
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

    /// Writes a compiled component; failures only cost a recompile next time, so they are
    /// logged, not returned.
    pub(crate) fn store(&self, engine: &Engine, digest_hex: &str, component: &Component) {
        let path = self.path_for(engine, digest_hex);
        let written = component
            .serialize()
            .map_err(|err| std::io::Error::other(err.to_string()))
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.dir)?;
                let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
                std::io::Write::write_all(&mut temp, &bytes)?;
                // On disk before the rename, or a power cut could leave a truncated
                // artifact under the real key.
                temp.as_file().sync_data()?;
                drop_from_page_cache(temp.as_file());
                temp.persist(&path).map_err(|err| err.error)?;
                Ok(())
            });
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "cannot write compiled artifact to the cache");
        }
    }
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
