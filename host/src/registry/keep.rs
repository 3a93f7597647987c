//! Keeps, beside the tasks directory's components, a copy of the version each file serves and
//! of the one it served before, so a rollback works even after the file was overwritten in
//! place or removed, and across restarts.
//!
//! Layout, inside the tasks directory (dot-named, so the watcher never loads from it):
//! `.celeriac/serving/NAME.wasm` (+ `.sha256`) and `.celeriac/previous/NAME.wasm` (+ `.sha256`).
//! Keeping is best effort: a read-only tasks directory only costs the ability to roll back,
//! with a warning.

use std::path::{Path, PathBuf};

use super::atomic_file::write_atomically;

/// Name of the keeping directory inside the tasks directory.
pub const KEEP_DIR: &str = ".celeriac";

/// The copies kept for one tasks directory.
#[derive(Clone, Debug)]
pub(crate) struct Keeper {
    root: PathBuf,
}

impl Keeper {
    pub(crate) fn new(tasks_dir: &Path) -> Self {
        Keeper {
            root: tasks_dir.join(KEEP_DIR),
        }
    }

    fn slot(&self, which: &str, file_name: &str) -> PathBuf {
        self.root.join(which).join(file_name)
    }

    /// Records that `file_name` now serves `bytes` (digest `digest`): the copy of what it
    /// served before, if different, becomes the previous version.
    pub(crate) fn serving(&self, file_name: &str, digest: &str, bytes: &[u8]) {
        let serving = self.slot("serving", file_name);
        if read_digest(&serving).as_deref() == Some(digest) {
            return;
        }
        let kept = self
            .retire(file_name)
            .and_then(|()| write_atomically(&serving, bytes))
            .and_then(|()| write_atomically(&digest_path(&serving), digest.as_bytes()));
        if let Err(err) = kept {
            tracing::warn!(
                "registry: cannot keep a copy of {file_name} in {}: {err}; rollback to this \
                 version will be unavailable",
                self.root.display()
            );
        }
    }

    /// Records that `file_name` no longer serves anything: what it served becomes the
    /// previous version, so a rollback brings it back.
    pub(crate) fn removed(&self, file_name: &str) {
        if let Err(err) = self.retire(file_name) {
            tracing::warn!(
                "registry: cannot keep the removed {file_name} in {}: {err}",
                self.root.display()
            );
        }
    }

    /// The previous version of `file_name`, if one is kept.
    pub(crate) fn previous(&self, file_name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.slot("previous", file_name))
    }

    /// Moves the serving copy (if any) over the previous one.
    fn retire(&self, file_name: &str) -> std::io::Result<()> {
        let serving = self.slot("serving", file_name);
        if !serving.is_file() {
            return Ok(());
        }
        let previous = self.slot("previous", file_name);
        std::fs::create_dir_all(self.root.join("previous"))?;
        std::fs::rename(&serving, &previous)?;
        let serving_digest = digest_path(&serving);
        if serving_digest.is_file() {
            std::fs::rename(serving_digest, digest_path(&previous))?;
        }
        Ok(())
    }
}

fn digest_path(copy: &Path) -> PathBuf {
    let mut name = copy.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn read_digest(copy: &Path) -> Option<String> {
    if !copy.is_file() {
        return None;
    }
    std::fs::read_to_string(digest_path(copy))
        .ok()
        .map(|text| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_retires_the_serving_copy_and_removal_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = Keeper::new(dir.path());
        keeper.serving("a.wasm", "sha256:1", b"one");
        assert!(keeper.previous("a.wasm").is_err(), "nothing before v1");
        keeper.serving("a.wasm", "sha256:1", b"one");
        assert!(keeper.previous("a.wasm").is_err(), "same digest: no change");
        keeper.serving("a.wasm", "sha256:2", b"two");
        assert_eq!(keeper.previous("a.wasm").unwrap(), b"one");
        keeper.removed("a.wasm");
        assert_eq!(keeper.previous("a.wasm").unwrap(), b"two");
    }
}
