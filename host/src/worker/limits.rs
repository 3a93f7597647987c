//! Resolves the limits of one task from the worker's defaults, the task's options and the
//! message, in Celery's order of precedence.

use std::time::Duration;

use serde_json::Value;

use crate::sandbox::{SandboxLimits, TaskOptions};

/// The `timelimit` header of a message: `[hard, soft]` in seconds, each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeaderTimeLimits {
    /// Hard limit, seconds.
    pub hard: Option<f64>,
    /// Soft limit, seconds.
    pub soft: Option<f64>,
}

/// The limits of one task: the message's `timelimit` wins over the task's options, which win
/// over the worker's defaults (Celery's order). Non-positive or non-finite values are
/// ignored, as Celery treats a falsy limit as "none".
pub fn resolve_limits(
    worker: &SandboxLimits,
    options: &TaskOptions,
    header: HeaderTimeLimits,
) -> SandboxLimits {
    let pick = |header: Option<f64>, option: Option<f64>, worker: Option<Duration>| {
        header
            .and_then(seconds)
            .or_else(|| option.and_then(seconds))
            .or(worker)
    };
    let mut limits = worker.clone();
    limits.time_limit = pick(header.hard, options.time_limit, worker.time_limit);
    limits.soft_time_limit = pick(header.soft, options.soft_time_limit, worker.soft_time_limit);
    limits
}

/// A limit as Celery hands it to the exception and the log line: the number the message or
/// the task gave (whole numbers as integers, as Python clients and `@app.task(time_limit=2)`
/// give them), else the worker's `--time-limit` / `--soft-time-limit` flag, a float in
/// Celery's CLI. `resolved` is what [`resolve_limits`] chose.
pub fn limit_as_given(header: Option<f64>, option: Option<f64>, resolved: Duration) -> Value {
    let valid = |value: &f64| seconds(*value).is_some();
    match header.filter(valid).or_else(|| option.filter(valid)) {
        Some(given) if given.fract() == 0.0 && given < 9.0e15 => Value::from(given as i64),
        Some(given) => Value::from(given),
        None => Value::from(resolved.as_secs_f64()),
    }
}

fn seconds(value: f64) -> Option<Duration> {
    (value.is_finite() && value > 0.0).then(|| Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(time_limit: Option<f64>, soft_time_limit: Option<f64>) -> TaskOptions {
        TaskOptions {
            time_limit,
            soft_time_limit,
            ..TaskOptions::default()
        }
    }

    #[test]
    fn header_beats_task_option_beats_worker_default() {
        let worker = SandboxLimits::new()
            .time_limit(Some(Duration::from_secs(100)))
            .soft_time_limit(Some(Duration::from_secs(90)));
        let resolved = resolve_limits(
            &worker,
            &options(Some(10.0), None),
            HeaderTimeLimits {
                hard: None,
                soft: Some(2.0),
            },
        );
        assert_eq!(resolved.time_limit, Some(Duration::from_secs(10)));
        assert_eq!(resolved.soft_time_limit, Some(Duration::from_secs(2)));
        let resolved = resolve_limits(&worker, &options(None, None), HeaderTimeLimits::default());
        assert_eq!(resolved.time_limit, Some(Duration::from_secs(100)));
    }

    #[test]
    fn a_limit_reads_as_the_message_or_task_gave_it_else_as_the_flags_float() {
        let two = Duration::from_secs(2);
        assert_eq!(limit_as_given(Some(2.0), None, two), Value::from(2));
        assert_eq!(limit_as_given(Some(1.5), Some(9.0), two), Value::from(1.5));
        assert_eq!(limit_as_given(Some(0.0), Some(2.0), two), Value::from(2));
        assert_eq!(limit_as_given(None, None, two).to_string(), "2.0");
    }

    #[test]
    fn zero_or_negative_limits_mean_none() {
        let resolved = resolve_limits(
            &SandboxLimits::new(),
            &options(Some(0.0), Some(-1.0)),
            HeaderTimeLimits {
                hard: Some(f64::NAN),
                soft: None,
            },
        );
        assert_eq!(
            (resolved.time_limit, resolved.soft_time_limit),
            (None, None)
        );
    }
}
