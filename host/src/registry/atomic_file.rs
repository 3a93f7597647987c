//! Writing a file so that readers see either the old contents or the new, never a part.

use std::io::Write;
use std::path::Path;

/// Writes through a dot-named temporary file in the same directory, flushed to disk, and
/// renames it into place: neither a crash, a power cut nor the directory watcher ever sees
/// a half-written file under `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}
