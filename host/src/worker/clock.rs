//! Wall-clock time as the protocol's timestamps count it (microseconds since the Unix
//! epoch), for ETAs, expiry and retry countdowns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// How long until `unix_micros`; zero when it has passed.
pub fn until(unix_micros: i64) -> Duration {
    let delta = unix_micros.saturating_sub(now_micros());
    Duration::from_micros(u64::try_from(delta).unwrap_or(0))
}

/// True when `unix_micros` is in the past.
pub fn has_passed(unix_micros: i64) -> bool {
    now_micros() > unix_micros
}
