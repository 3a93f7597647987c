//! Who the worker is on the wire (celery-worker-behaviour.md §1): its pid, its Lamport
//! clock, its UTC offset as Python counts it, its software identity, and the host figures
//! heartbeats and `stats` carry (load average, resource usage).

use std::sync::atomic::{AtomicU64, Ordering};

/// What `sw_ident` says: the worker implementation.
pub const SW_IDENT: &str = "celeriac";
/// What `sw_ver` says.
pub const SW_VER: &str = env!("CARGO_PKG_VERSION");

/// `platform.system()`: what `sw_sys` says.
pub fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// kombu's `LamportClock`: every event sent and every control request heard moves it on.
#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// Adds one and returns the new value (`forward()`).
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// `max(value, other) + 1` (`adjust()`), as after a peer's clock is heard.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = current.max(other) + 1;
            match self
                .0
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Celery's `utcoffset()`: whole hours **west** of UTC, floor-divided, so UTC+5:30 is -6.
pub fn utcoffset() -> i64 {
    hours_west(local_gmtoff_seconds())
}

/// Floor division of the seconds west of UTC by an hour, as Python's `//` does.
fn hours_west(seconds_east: i64) -> i64 {
    (-seconds_east).div_euclid(3600)
}

/// The local zone's offset east of UTC now, in seconds (0 when it cannot be read).
fn local_gmtoff_seconds() -> i64 {
    // SAFETY: `time` with a null pointer only returns the time; `localtime_r` writes into
    // the `tm` we own and reads the zone database, which is thread-safe in the `_r` form.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        // `c_long` is 32 bits wide on some targets.
        #[allow(clippy::useless_conversion)]
        i64::from(tm.tm_gmtoff)
    }
}

/// The 1, 5 and 15 minute load averages, rounded up to two decimals as Celery's
/// heartbeat does; zeros where the system does not say.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        if let Ok(value) = field.parse::<f64>() {
            *slot = (value * 100.0).ceil() / 100.0;
        }
    }
    out
}

/// `resource.getrusage(RUSAGE_SELF)` as Celery's `stats` shows it; `None` if unavailable.
pub fn rusage() -> Option<serde_json::Value> {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Some(serde_json::json!({
        "utime": seconds(usage.ru_utime),
        "stime": seconds(usage.ru_stime),
        "maxrss": usage.ru_maxrss,
        "ixrss": usage.ru_ixrss,
        "idrss": usage.ru_idrss,
        "isrss": usage.ru_isrss,
        "minflt": usage.ru_minflt,
        "majflt": usage.ru_majflt,
        "nswap": usage.ru_nswap,
        "inblock": usage.ru_inblock,
        "oublock": usage.ru_oublock,
        "msgsnd": usage.ru_msgsnd,
        "msgrcv": usage.ru_msgrcv,
        "nsignals": usage.ru_nsignals,
        "nvcsw": usage.ru_nvcsw,
        "nivcsw": usage.ru_nivcsw,
    }))
}

/// `time.monotonic()`: seconds on `CLOCK_MONOTONIC`, what mingle's revoked entries carry.
pub fn monotonic_seconds() -> f64 {
    // SAFETY: clock_gettime writes into the zeroed timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) != 0 {
            return 0.0;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utcoffset_counts_whole_hours_west_rounded_down() {
        assert_eq!(hours_west(0), 0);
        assert_eq!(hours_west(3600), -1); // Berlin in winter
        assert_eq!(hours_west(-5 * 3600), 5); // New York in winter
        assert_eq!(hours_west(5 * 3600 + 1800), -6); // India
    }

    #[test]
    fn lamport_clock_forwards_and_adjusts() {
        let clock = LamportClock::default();
        assert_eq!(clock.forward(), 1);
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12);
        assert_eq!(clock.value(), 12);
    }

    #[test]
    fn loadavg_is_three_non_negative_numbers() {
        let load = loadavg();
        assert!(load.iter().all(|v| *v >= 0.0 && v.is_finite()), "{load:?}");
    }
}
