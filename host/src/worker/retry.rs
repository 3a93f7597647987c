//! A task's `retry()`: when it runs again and the message that carries it there (Celery's
//! `Task.retry`, spec celery-worker-behaviour.md §4.2).

use crate::broker::Outgoing;
use crate::protocol::{OutgoingTask, TaskMessage, Timestamp};
use crate::sandbox::{RetryRequest, TaskOptions};

/// Celery's `default_retry_delay`: 3 minutes.
const DEFAULT_RETRY_DELAY_SECS: f64 = 180.0;
/// Celery's `max_retries` default.
const DEFAULT_MAX_RETRIES: u32 = 3;

/// The retry limit that applies, `None` for `max_retries=None` (retry forever).
pub fn max_retries(retry: &RetryRequest, options: &TaskOptions) -> Option<u32> {
    if options.retry_forever && retry.max_retries.is_none() {
        return None;
    }
    Some(
        retry
            .max_retries
            .or(options.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES),
    )
}

/// When the retry runs: the asked `eta`, else now + the countdown (the task's
/// `default_retry_delay` when none was asked).
pub fn retry_eta(retry: &RetryRequest, options: &TaskOptions, now_micros: i64) -> Timestamp {
    if let Some(eta) = retry.eta.as_deref().and_then(Timestamp::parse) {
        return eta;
    }
    let seconds = countdown(retry, options);
    Timestamp::from_unix_micros(now_micros.saturating_add((seconds * 1e6) as i64))
}

/// Celery's `Retry.humanize()`: `in 2s` for a countdown, `at <eta>` for an eta.
pub fn retry_when(retry: &RetryRequest, options: &TaskOptions) -> String {
    match retry
        .eta
        .as_deref()
        .filter(|eta| Timestamp::parse(eta).is_some())
    {
        // str(datetime) separates the date and the time with a space.
        Some(eta) => format!("at {}", eta.replacen('T', " ", 1)),
        None => {
            let seconds = countdown(retry, options);
            if seconds.fract() == 0.0 && seconds < 9.0e15 {
                format!("in {}s", seconds as i64)
            } else {
                format!("in {seconds}s")
            }
        }
    }
}

fn countdown(retry: &RetryRequest, options: &TaskOptions) -> f64 {
    retry
        .countdown
        .or(options.default_retry_delay)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(DEFAULT_RETRY_DELAY_SECS)
}

/// The copy of `message` that runs again at `eta`, one retry later, sent by `origin`. As in
/// Celery, the retry is published from inside the task, so its `parent_id` is the task's own
/// id.
pub fn retry_message(message: &TaskMessage, eta: Timestamp, origin: &str) -> Outgoing {
    let m = message;
    let task = OutgoingTask {
        id: m.id.clone(),
        task: m.task.clone(),
        args: m.args.clone(),
        kwargs: m.kwargs.clone(),
        eta: Some(eta),
        expires: m.expires.clone(),
        retries: m.retries + 1,
        timelimit: m.timelimit,
        root_id: m.root_id.clone(),
        parent_id: Some(m.id.clone()),
        group: m.group.clone(),
        group_index: m.group_index,
        shadow: m.shadow.clone(),
        origin: Some(origin.to_owned()),
        ignore_result: m.ignore_result,
        replaced_task_nesting: m.replaced_task_nesting,
        stamped_headers: m.stamped_headers.clone(),
        stamps: m.stamps.clone(),
        embed: m.embed.clone(),
        reply_to: m.reply_to.clone(),
        priority: m.priority,
        extra_headers: m.extra_headers.clone(),
    };
    Outgoing::from(task.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(countdown: Option<f64>, max_retries: Option<u32>) -> RetryRequest {
        RetryRequest {
            countdown,
            eta: None,
            max_retries,
            exc: None,
        }
    }

    #[test]
    fn countdown_wins_over_the_default_delay() {
        let options = TaskOptions {
            default_retry_delay: Some(5.0),
            ..TaskOptions::default()
        };
        let at = retry_eta(&retry(Some(2.0), None), &options, 1_000_000);
        assert_eq!(at.unix_micros(), 3_000_000);
        let at = retry_eta(&retry(None, None), &options, 1_000_000);
        assert_eq!(at.unix_micros(), 6_000_000);
        let at = retry_eta(&retry(None, None), &TaskOptions::default(), 0);
        assert_eq!(at.unix_micros(), 180_000_000);
    }

    #[test]
    fn the_retry_reads_in_seconds_or_at_a_time() {
        let options = TaskOptions::default();
        assert_eq!(retry_when(&retry(Some(2.0), None), &options), "in 2s");
        assert_eq!(retry_when(&retry(Some(0.1), None), &options), "in 0.1s");
        assert_eq!(retry_when(&retry(None, None), &options), "in 180s");
        let at = RetryRequest {
            eta: Some("2026-11-21T05:33:27.394329+00:00".into()),
            ..retry(None, None)
        };
        assert_eq!(
            retry_when(&at, &options),
            "at 2026-11-21 05:33:27.394329+00:00"
        );
    }

    fn decode(outgoing: &Outgoing) -> TaskMessage {
        crate::protocol::decode(&crate::protocol::RawMessage {
            body: &outgoing.body,
            content_type: &outgoing.content_type,
            content_encoding: &outgoing.content_encoding,
            headers: &outgoing.headers.clone().into(),
            correlation_id: outgoing.correlation_id.as_deref(),
            reply_to: outgoing.reply_to.as_deref(),
            priority: outgoing.priority,
        })
        .expect("own messages decode")
    }

    #[test]
    fn the_retry_is_its_own_parent() {
        let task = OutgoingTask::new("x".to_owned(), "tasks.t", vec![], Default::default());
        let message = decode(&Outgoing::from(task.encode()));
        assert_eq!(message.parent_id, None);
        let again = decode(&retry_message(
            &message,
            Timestamp::from_unix_micros(0),
            "gen1@h",
        ));
        assert_eq!(again.parent_id.as_deref(), Some("x"));
        assert_eq!(again.retries, 1);
    }

    #[test]
    fn max_retries_comes_from_the_call_then_the_task_then_celery() {
        let options = TaskOptions {
            max_retries: Some(7),
            ..TaskOptions::default()
        };
        assert_eq!(max_retries(&retry(None, Some(1)), &options), Some(1));
        assert_eq!(max_retries(&retry(None, None), &options), Some(7));
        assert_eq!(
            max_retries(&retry(None, None), &TaskOptions::default()),
            Some(3)
        );
        let forever = TaskOptions {
            retry_forever: true,
            ..TaskOptions::default()
        };
        assert_eq!(max_retries(&retry(None, None), &forever), None);
    }
}
