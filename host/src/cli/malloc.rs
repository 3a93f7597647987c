//! glibc's malloc settings for a long-running worker, set once before anything allocates.
//!
//! glibc raises its mmap threshold to the size of the largest block freed so far (up to
//! 32 MiB), and the trim threshold to twice that. Loading the Python component reads and
//! frees buffers of 20 MB, so afterwards such buffers come from the arenas, and a thread's
//! arena keeps up to 64 MiB of free memory at its top for good: `malloc_trim` returns free
//! blocks, but not a thread arena's top. A worker that had loaded the Python component
//! idled at ~85 MiB resident instead of ~30. Fixed thresholds turn that off: blocks of
//! `MMAP_THRESHOLD` and more are mapped and unmapped on their own, and an arena returns
//! free memory at its top beyond `TRIM_THRESHOLD`.

use std::ffi::OsString;

/// Blocks this large or larger bypass the arenas. Per-task buffers (messages, results,
/// fetch batches) stay well below it.
const MMAP_THRESHOLD: usize = 1024 * 1024;

/// Free memory an arena keeps at its top before giving it back: room for the working set
/// of a drain to breathe without returning and refaulting pages on every task.
const TRIM_THRESHOLD: usize = 8 * 1024 * 1024;

/// Fixes the thresholds, unless the operator set either of them (`GLIBC_TUNABLES`, or
/// glibc's older `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`), which then stays
/// in charge.
pub fn set_thresholds() {
    if operator_tuned(std::env::vars_os()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator parameters, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Whether the environment already sets either threshold.
fn operator_tuned(mut vars: impl Iterator<Item = (OsString, OsString)>) -> bool {
    vars.any(|(name, value)| match name.to_str() {
        Some("GLIBC_TUNABLES") => {
            let value = value.to_string_lossy();
            value.contains("glibc.malloc.mmap_threshold")
                || value.contains("glibc.malloc.trim_threshold")
        }
        Some("MALLOC_MMAP_THRESHOLD_" | "MALLOC_TRIM_THRESHOLD_") => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned(vars: &[(&str, &str)]) -> bool {
        operator_tuned(vars.iter().map(|(n, v)| (n.into(), v.into())))
    }

    #[test]
    fn an_operators_malloc_tunables_win() {
        assert!(tuned(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.trim_threshold=0"
        )]));
        assert!(tuned(&[(
            "GLIBC_TUNABLES",
            "glibc.pthread.rseq=0:glibc.malloc.mmap_threshold=1"
        )]));
        assert!(tuned(&[
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_TRIM_THRESHOLD_", "0")
        ]));
        assert!(tuned(&[("MALLOC_MMAP_THRESHOLD_", "65536")]));
    }

    #[test]
    fn other_settings_leave_the_thresholds_to_us() {
        assert!(!tuned(&[]));
        assert!(!tuned(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]));
        assert!(!tuned(&[
            ("MALLOC_ARENA_MAX", "2"),
            ("CELERY_BROKER_URL", "redis://")
        ]));
    }
}
