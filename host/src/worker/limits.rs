//! Resolves the limits of one task from the worker's defaults, the task's options and the
//! message, in Celery's order of precedence.

use std::time::Duration;

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
