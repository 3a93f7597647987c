//! Celery's retry rules, as `Task.retry` and `celery/app/autoretry.py` apply them inside a
//! task: the effective `max_retries`, what happens when it is reached, exponential backoff
//! with full jitter, and which exceptions `autoretry_for` catches. Pure functions; the
//! randomness comes from the caller.

use serde_json::Value;

use crate::error::{Exception, RetryOptions, TaskError};
use crate::exceptions;
use crate::options::StaticOptions;

/// Celery's `Task.max_retries` default.
const DEFAULT_MAX_RETRIES: u32 = 3;
/// Celery's `Task.retry_backoff_max` default, in seconds.
const DEFAULT_BACKOFF_MAX: u32 = 600;

/// The request facts a retry decision needs.
pub(crate) struct RetryContext<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub retries: u32,
    pub options: &'a StaticOptions,
    /// The call's `args`/`kwargs` JSON, quoted in `MaxRetriesExceededError`.
    pub args: &'a str,
    pub kwargs: &'a str,
}

/// `max_retries` for this call: the per-call override, else the task's option, else 3;
/// `None` means unlimited (`retry_forever` without an override).
pub(crate) fn effective_max_retries(call: Option<u32>, options: &StaticOptions) -> Option<u32> {
    match call {
        Some(max) => Some(max),
        None if options.retry_forever => None,
        None => Some(options.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)),
    }
}

/// `self.retry(...)`: a retry request, or — once `request.retries` has reached the effective
/// maximum — the failure Celery raises instead: the given `exc` itself, else
/// `MaxRetriesExceededError`.
pub(crate) fn decide(ctx: &RetryContext<'_>, retry: RetryOptions) -> TaskError {
    let max = effective_max_retries(retry.max_retries, ctx.options);
    // Celery computes retries = request.retries + 1 and fails when that exceeds max.
    let exhausted = max.is_some_and(|max| ctx.retries >= max);
    if !exhausted {
        return TaskError::retry(retry);
    }
    match retry.exc {
        Some(exc) => TaskError::Raised(exc),
        None => TaskError::Raised(Exception::new(
            "MaxRetriesExceededError",
            "celery.exceptions",
            format!(
                "Can't retry {}[{}] args:{} kwargs:{}",
                ctx.name,
                ctx.id,
                python_args_repr(ctx.args),
                python_kwargs_repr(ctx.kwargs)
            ),
        )),
    }
}

/// Celery's `get_exponential_backoff_interval`: `min(maximum, factor * 2**retries)`, then a
/// uniformly random whole number of seconds in `[0, countdown]` when `jitter` is on
/// (`random` supplies the randomness).
pub(crate) fn backoff_countdown(
    factor: u32,
    retries: u32,
    maximum: u32,
    jitter: bool,
    random: u64,
) -> u64 {
    // 2**retries overflows quickly; anything that large is capped by `maximum` anyway.
    let growth = 1u64
        .checked_shl(retries)
        .filter(|g| *g <= u64::from(u32::MAX));
    let raw = growth.map_or(u64::MAX, |g| u64::from(factor.max(1)).saturating_mul(g));
    let countdown = raw.min(u64::from(maximum));
    if jitter {
        // `countdown + 1` cannot overflow: countdown <= u32::MAX.
        random % (countdown + 1)
    } else {
        countdown
    }
}

/// Whether `exc` is an instance of any class named in `autoretry_for`.
pub(crate) fn autoretry_matches(autoretry_for: &[&str], exc: &Exception) -> bool {
    autoretry_for
        .iter()
        .any(|class| exceptions::is_instance(exc, class))
}

/// What `autoretry_for` turns a raised `exc` into: `retry(exc=exc, countdown=backoff)`, with
/// the backoff only when `retry_backoff` is set (otherwise the default retry delay).
pub(crate) fn autoretry(ctx: &RetryContext<'_>, exc: Exception, random: u64) -> TaskError {
    let factor = ctx.options.retry_backoff.unwrap_or(0);
    let countdown = (factor > 0).then(|| {
        backoff_countdown(
            factor,
            ctx.retries,
            ctx.options.retry_backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
            ctx.options.retry_jitter.unwrap_or(true),
            random,
        ) as f64
    });
    decide(
        ctx,
        RetryOptions {
            countdown,
            exc: Some(exc),
            ..RetryOptions::default()
        },
    )
}

/// The args as Python prints the tuple in `MaxRetriesExceededError` (`(1, 2)`, `(1,)`).
fn python_args_repr(args_json: &str) -> String {
    match serde_json::from_str::<Vec<Value>>(args_json) {
        Ok(args) if args.len() == 1 => format!("({},)", exceptions::python_repr(&args[0])),
        Ok(args) => {
            let items: Vec<String> = args.iter().map(exceptions::python_repr).collect();
            format!("({})", items.join(", "))
        }
        // Only reachable when the call never bound; quoting the raw text is still useful.
        Err(_) => args_json.to_owned(),
    }
}

fn python_kwargs_repr(kwargs_json: &str) -> String {
    match serde_json::from_str::<Value>(kwargs_json) {
        Ok(value @ Value::Object(_)) => exceptions::python_repr(&value),
        _ if kwargs_json.trim().is_empty() => "{}".to_owned(),
        _ => kwargs_json.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(retries: u32, options: &StaticOptions) -> RetryContext<'_> {
        RetryContext {
            name: "rs.t",
            id: "T-1",
            retries,
            options,
            args: "[1, \"a\"]",
            kwargs: "{\"k\": true}",
        }
    }

    fn countdown(options: RetryOptions) -> RetryOptions {
        RetryOptions {
            countdown: Some(0.1),
            ..options
        }
    }

    #[test]
    fn max_retries_defaults_to_three() {
        let opts = StaticOptions::DEFAULT;
        assert_eq!(effective_max_retries(None, &opts), Some(3));
        assert!(matches!(
            decide(&ctx(2, &opts), countdown(Default::default())),
            TaskError::Retry(_)
        ));
        let TaskError::Raised(exc) = decide(&ctx(3, &opts), countdown(Default::default())) else {
            panic!("the fourth retry must fail");
        };
        assert_eq!(exc.exc_type, "MaxRetriesExceededError");
        assert_eq!(exc.exc_module, "celery.exceptions");
        assert_eq!(
            exc.message,
            "Can't retry rs.t[T-1] args:(1, 'a') kwargs:{'k': True}"
        );
    }

    #[test]
    fn exhausted_retry_reraises_the_given_exception() {
        let opts = StaticOptions {
            max_retries: Some(1),
            ..StaticOptions::DEFAULT
        };
        let exc = Exception::builtin("KeyError", "k");
        let retry = RetryOptions {
            exc: Some(exc.clone()),
            ..Default::default()
        };
        assert_eq!(
            decide(&ctx(1, &opts), retry.clone()),
            TaskError::Raised(exc)
        );
        assert_eq!(
            decide(&ctx(0, &opts), retry.clone()),
            TaskError::retry(retry)
        );
    }

    #[test]
    fn per_call_max_retries_wins_and_retry_forever_never_fails() {
        let forever = StaticOptions {
            retry_forever: true,
            ..StaticOptions::DEFAULT
        };
        assert_eq!(effective_max_retries(None, &forever), None);
        assert!(matches!(
            decide(&ctx(10_000, &forever), RetryOptions::default()),
            TaskError::Retry(_)
        ));
        // An explicit per-call maximum applies even to a retry-forever task.
        assert_eq!(effective_max_retries(Some(2), &forever), Some(2));
        let five = StaticOptions {
            max_retries: Some(5),
            ..StaticOptions::DEFAULT
        };
        let retry = RetryOptions {
            max_retries: Some(8),
            ..Default::default()
        };
        assert!(matches!(
            decide(&ctx(7, &five), retry.clone()),
            TaskError::Retry(_)
        ));
        assert!(matches!(
            decide(&ctx(8, &five), retry),
            TaskError::Raised(_)
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let no_jitter: Vec<u64> = (0..6)
            .map(|r| backoff_countdown(1, r, 600, false, 0))
            .collect();
        assert_eq!(no_jitter, vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(backoff_countdown(3, 2, 600, false, 0), 12);
        assert_eq!(backoff_countdown(1, 20, 600, false, 0), 600);
        assert_eq!(backoff_countdown(1, 200, 600, false, 0), 600);
        assert_eq!(
            backoff_countdown(u32::MAX, 31, u32::MAX, false, 0),
            u64::from(u32::MAX)
        );
        // A factor of 0 counts as 1, as Celery's int(max(1.0, retry_backoff)).
        assert_eq!(backoff_countdown(0, 3, 600, false, 0), 8);
    }

    #[test]
    fn jitter_picks_within_zero_and_the_countdown() {
        // countdown 8 → randrange(9): random % 9.
        assert_eq!(backoff_countdown(1, 3, 600, true, 9 * 1000 + 4), 4);
        assert_eq!(backoff_countdown(1, 3, 600, true, 8), 8);
        assert_eq!(backoff_countdown(1, 3, 600, true, 9), 0);
        for random in [0, 1, 7, u64::MAX, 123_456_789] {
            assert!(backoff_countdown(1, 10, 600, true, random) <= 600);
        }
    }

    #[test]
    fn autoretry_uses_backoff_only_when_enabled() {
        let exc = Exception::builtin("ZeroDivisionError", "division by zero");
        let plain = StaticOptions {
            autoretry_for: &["ArithmeticError"],
            ..StaticOptions::DEFAULT
        };
        assert!(autoretry_matches(plain.autoretry_for, &exc));
        let TaskError::Retry(retry) = autoretry(&ctx(0, &plain), exc.clone(), 0) else {
            panic!("first autoretry must retry");
        };
        assert_eq!(retry.countdown, None);
        assert_eq!(retry.exc.as_ref(), Some(&exc));

        let backoff = StaticOptions {
            retry_backoff: Some(2),
            retry_jitter: Some(false),
            ..plain
        };
        let TaskError::Retry(retry) = autoretry(&ctx(2, &backoff), exc.clone(), 0) else {
            panic!("third autoretry must retry");
        };
        assert_eq!(retry.countdown, Some(8.0));
        // Past max_retries (3) the original exception is the task's failure.
        assert_eq!(
            autoretry(&ctx(3, &backoff), exc.clone(), 0),
            TaskError::Raised(exc)
        );
    }

    #[test]
    fn autoretry_matching_uses_the_class_tree() {
        let fnf = Exception::builtin("FileNotFoundError", "x");
        assert!(autoretry_matches(&["KeyError", "OSError"], &fnf));
        assert!(!autoretry_matches(&["KeyError"], &fnf));
        assert!(!autoretry_matches(&[], &fnf));
    }
}
