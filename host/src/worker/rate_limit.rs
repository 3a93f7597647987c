//! Per-task rate limits (Celery's `rate_limit` task option, spec celery-worker-behaviour.md
//! §4.8): one token bucket per task name per worker, capacity 1, filled at the task's rate.
//! A message waiting for a token stays un-acked and keeps its prefetch slot, as in Celery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Why a rate could not be read.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("invalid rate limit {text:?}: {reason}")]
pub struct RateError {
    text: String,
    reason: &'static str,
}

/// Celery's `rate()`: `"N/s"`, `"N/m"`, `"N/h"` or a bare `N` (per second), N a float.
/// `Ok(None)` for no limit (`0`, an empty text).
pub fn parse_rate(text: &str) -> Result<Option<f64>, RateError> {
    let error = |reason| RateError {
        text: text.to_owned(),
        reason,
    };
    let (count, unit) = text.split_once('/').unwrap_or((text, "s"));
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| error("the count is not a number"))?;
    let per_second = match unit {
        "s" | "" => count,
        "m" => count / 60.0,
        "h" => count / 3600.0,
        _ => return Err(error("the unit is not s, m or h")),
    };
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(error("the rate is not a positive number"));
    }
    Ok((per_second > 0.0).then_some(per_second))
}

/// kombu's `TokenBucket` with capacity 1; waiters are served first come, first served.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    /// The async mutex queues waiters in order and is held while the first one sleeps for
    /// its token.
    tokens: tokio::sync::Mutex<Tokens>,
}

impl TokenBucket {
    /// A full bucket filling at `per_second` tokens a second.
    pub fn new(per_second: f64) -> Self {
        TokenBucket {
            per_second,
            tokens: tokio::sync::Mutex::new(Tokens {
                count: 1.0,
                counted: Instant::now(),
            }),
        }
    }

    /// Waits for a token and takes it.
    pub async fn take(&self) {
        let mut tokens = self.tokens.lock().await;
        let wait = tokens.take(Instant::now(), self.per_second);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The tokens of a bucket as counted at one instant.
#[derive(Debug)]
struct Tokens {
    count: f64,
    counted: Instant,
}

impl Tokens {
    /// Takes a token at `now`, filling at `per_second` up to one; returns how long the
    /// taker waits for it (zero when one is there).
    fn take(&mut self, now: Instant, per_second: f64) -> Duration {
        let elapsed = if now >= self.counted {
            (now - self.counted).as_secs_f64()
        } else {
            -(self.counted - now).as_secs_f64()
        };
        let count = (self.count + elapsed * per_second).min(1.0);
        if count >= 1.0 {
            *self = Tokens {
                count: count - 1.0,
                counted: now,
            };
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64((1.0 - count) / per_second);
        *self = Tokens {
            count: 0.0,
            counted: now + wait,
        };
        wait
    }
}

/// The buckets of one worker, by task name, made on first use.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// The rate text it was made from.
    rate: Option<String>,
    /// Set at run time (Celery's `rate_limit` control command): wins over the task's option.
    overridden: bool,
    bucket: Option<Arc<TokenBucket>>,
}

impl RateLimits {
    /// The bucket of `task`, whose declared rate limit is `rate`; `None` when unlimited. A
    /// new declaration (a component swapped for another version) gets a new bucket, unless
    /// the rate was set at run time. An invalid rate is logged and means no limit (Celery
    /// refuses it when the task is defined).
    pub fn bucket(&self, task: &str, rate: Option<&str>) -> Option<Arc<TokenBucket>> {
        let mut buckets = self.lock();
        if let Some(known) = buckets.get(task)
            && (known.overridden || known.rate.as_deref() == rate)
        {
            return known.bucket.clone();
        }
        let per_second = match rate.map(parse_rate).transpose() {
            Ok(per_second) => per_second.flatten(),
            Err(err) => {
                tracing::error!("Task {task}: {err}; running it without a rate limit");
                None
            }
        };
        let bucket = per_second.map(|rate| Arc::new(TokenBucket::new(rate)));
        buckets.insert(
            task.to_owned(),
            Bucket {
                rate: rate.map(str::to_owned),
                overridden: false,
                bucket: bucket.clone(),
            },
        );
        bucket
    }

    /// Sets the rate limit of `task` at run time, over its declared one (`None`, `"0"`: no
    /// limit), as Celery's `rate_limit` control command does.
    pub fn set(&self, task: &str, rate: Option<&str>) -> Result<(), RateError> {
        let per_second = rate.map(parse_rate).transpose()?.flatten();
        self.lock().insert(
            task.to_owned(),
            Bucket {
                rate: rate.map(str::to_owned),
                overridden: true,
                bucket: per_second.map(|rate| Arc::new(TokenBucket::new(rate))),
            },
        );
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_celery_reads_them() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("30/m"), Ok(Some(0.5)));
        assert_eq!(parse_rate("36/h"), Ok(Some(0.01)));
        assert_eq!(parse_rate("2.5"), Ok(Some(2.5)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert!(parse_rate("10/min").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn a_bucket_lets_one_through_at_once_then_one_per_interval() {
        let start = Instant::now();
        let mut tokens = Tokens {
            count: 1.0,
            counted: start,
        };
        let ms = Duration::from_millis;
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(10);
        assert_eq!(tokens.take(start, 5.0), Duration::ZERO);
        // Asked at once: the next token is 200 ms away.
        assert!(close(tokens.take(start, 5.0), ms(200)));
        // Asked before that token was due (a queue): 200 ms after it.
        assert!(close(tokens.take(start + ms(100), 5.0), ms(300)));
        // Idle for a while: a single token has built up, not more.
        assert_eq!(tokens.take(start + ms(5000), 5.0), Duration::ZERO);
        assert!(close(tokens.take(start + ms(5000), 5.0), ms(200)));
    }

    #[test]
    fn one_bucket_per_task_and_none_without_a_rate() {
        let limits = RateLimits::default();
        let a = limits.bucket("tasks.a", Some("5/s")).expect("limited");
        let again = limits.bucket("tasks.a", Some("5/s")).expect("limited");
        assert!(Arc::ptr_eq(&a, &again));
        assert!(limits.bucket("tasks.b", None).is_none());
        assert!(limits.bucket("tasks.c", Some("nope")).is_none());
        // A new version of the task declares another rate: a new bucket.
        let swapped = limits.bucket("tasks.a", Some("1/s")).expect("limited");
        assert!(!Arc::ptr_eq(&a, &swapped));
    }

    #[test]
    fn a_rate_set_at_run_time_wins_over_the_declared_one() {
        let limits = RateLimits::default();
        limits.set("tasks.a", Some("0")).expect("valid");
        assert!(limits.bucket("tasks.a", Some("5/s")).is_none());
        limits.set("tasks.a", Some("2/m")).expect("valid");
        assert!(limits.bucket("tasks.a", None).is_some());
        assert!(limits.set("tasks.a", Some("2/d")).is_err());
    }
}
