//! Resource limits applied to every task invocation, and their defaults.

use std::time::Duration;

/// Limits for one task invocation. Built with [`SandboxLimits::new`] and the setters; the
/// worker resolves per-task values (message header, task options, flags) into one of these.
///
/// # Defaults
///
/// * memory: 256 MiB in total across the instance's linear memories;
/// * hard time limit: none (Celery's default); soft time limit: none;
/// * result: 16 MiB of JSON; arguments: 16 MiB of JSON (args and kwargs together);
/// * log output (stdout, stderr and `context.log` together): 1 MiB per task, the rest is
///   dropped with one note saying so.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxLimits {
    /// Total linear memory an instance may hold, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time after which the instance is killed (Celery's `time_limit`).
    pub time_limit: Option<Duration>,
    /// Wall-clock time after which the instance is interrupted with SoftTimeLimitExceeded
    /// (Celery's `soft_time_limit`).
    pub soft_time_limit: Option<Duration>,
    /// Largest result, in bytes of JSON text, that a task may return.
    pub max_result_bytes: usize,
    /// Largest `args` + `kwargs`, in bytes of JSON text, that a task may be given.
    pub max_argument_bytes: usize,
    /// Most log output a task may produce; the rest is dropped.
    pub max_log_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl SandboxLimits {
    /// The defaults listed on the type.
    pub fn new() -> Self {
        SandboxLimits {
            memory_bytes: 256 << 20,
            time_limit: None,
            soft_time_limit: None,
            max_result_bytes: 16 << 20,
            max_argument_bytes: 16 << 20,
            max_log_bytes: 1 << 20,
        }
    }

    /// Sets the memory cap in bytes (default 256 MiB).
    pub fn memory_bytes(mut self, bytes: usize) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Sets the hard time limit (default none).
    pub fn time_limit(mut self, limit: Option<Duration>) -> Self {
        self.time_limit = limit;
        self
    }

    /// Sets the soft time limit (default none).
    pub fn soft_time_limit(mut self, limit: Option<Duration>) -> Self {
        self.soft_time_limit = limit;
        self
    }

    /// Sets the result size cap (default 16 MiB).
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// Sets the argument size cap (default 16 MiB).
    pub fn max_argument_bytes(mut self, bytes: usize) -> Self {
        self.max_argument_bytes = bytes;
        self
    }

    /// Sets the log output cap (default 1 MiB).
    pub fn max_log_bytes(mut self, bytes: usize) -> Self {
        self.max_log_bytes = bytes;
        self
    }

    /// Checks that the limits make sense together; the message names the options.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_bytes == 0 {
            return Err("memory_limit must be above zero".into());
        }
        if let (Some(soft), Some(hard)) = (self.soft_time_limit, self.time_limit)
            && soft >= hard
        {
            return Err(format!(
                "soft_time_limit ({}s) must be below time_limit ({}s)",
                soft.as_secs_f64(),
                hard.as_secs_f64()
            ));
        }
        for (name, limit) in [
            ("time_limit", self.time_limit),
            ("soft_time_limit", self.soft_time_limit),
        ] {
            if limit.is_some_and(|d| d.is_zero()) {
                return Err(format!("{name} must be above zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_at_or_above_hard_limit_is_refused() {
        let limits = SandboxLimits::new()
            .time_limit(Some(Duration::from_secs(1)))
            .soft_time_limit(Some(Duration::from_secs(1)));
        let err = limits.validate().unwrap_err();
        assert!(
            err.contains("soft_time_limit (1s) must be below time_limit (1s)"),
            "{err}"
        );
    }

    #[test]
    fn zero_time_limit_is_refused() {
        let err = SandboxLimits::new()
            .time_limit(Some(Duration::ZERO))
            .validate()
            .unwrap_err();
        assert_eq!(err, "time_limit must be above zero");
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SandboxLimits::new().validate(), Ok(()));
    }
}
