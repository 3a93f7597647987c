//! What the hot-swap tests and the swap benchmark drop into a watched tasks directory.

use std::path::Path;

use super::guests;

/// `tasks.echo` answering the JSON string `"<version>"` and declaring `version` in a
/// `version` custom section, so its result and the worker's log both name the version.
pub fn versioned_echo(version: &str) -> Vec<u8> {
    guests::with_declared_version(
        &guests::ok_guest("tasks.echo", &format!("\"{version}\"")),
        version,
    )
}

/// Writes `bytes` as `dir/name` the way the docs tell operators to: into a dot-named file in
/// the same directory, renamed into place.
pub fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, bytes).expect("tasks directory is writable");
    std::fs::rename(temp, dir.join(name)).expect("rename within the tasks directory");
}
