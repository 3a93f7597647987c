//! The static description of one task that `#[task]` generates: [`TaskSpec`] (name, options,
//! the call glue) and [`StaticOptions`], a `const`-friendly mirror of the WIT
//! `task-options`. This module only describes tasks; `dispatch` runs them.

use crate::args::Bound;
use crate::bindings::celeriac::task::types as wit;
use crate::error::TaskError;
use crate::task::Task;

/// The options of `#[task(...)]`, each `None` meaning "the worker's default", as an unset
/// option does in Celery. Field meanings are those of the WIT `task-options` record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StaticOptions {
    /// `max_retries`; `None` = 3.
    pub max_retries: Option<u32>,
    /// `max_retries=None`: retry without a limit.
    pub retry_forever: bool,
    /// `default_retry_delay` in seconds; `None` = 180.
    pub default_retry_delay: Option<f64>,
    /// `rate_limit`, Celery syntax ("10/s").
    pub rate_limit: Option<&'static str>,
    /// `time_limit` in seconds.
    pub time_limit: Option<f64>,
    /// `soft_time_limit` in seconds.
    pub soft_time_limit: Option<f64>,
    /// `acks_late`.
    pub acks_late: Option<bool>,
    /// `ignore_result`.
    pub ignore_result: Option<bool>,
    /// `track_started`.
    pub track_started: Option<bool>,
    /// `autoretry_for`: exception class names (see `exceptions::is_instance`).
    pub autoretry_for: &'static [&'static str],
    /// `retry_backoff` factor in seconds; `None` or 0 = off.
    pub retry_backoff: Option<u32>,
    /// `retry_backoff_max` in seconds; `None` = 600.
    pub retry_backoff_max: Option<u32>,
    /// `retry_jitter`; `None` = true.
    pub retry_jitter: Option<bool>,
}

impl StaticOptions {
    /// Every option unset.
    pub const DEFAULT: StaticOptions = StaticOptions {
        max_retries: None,
        retry_forever: false,
        default_retry_delay: None,
        rate_limit: None,
        time_limit: None,
        soft_time_limit: None,
        acks_late: None,
        ignore_result: None,
        track_started: None,
        autoretry_for: &[],
        retry_backoff: None,
        retry_backoff_max: None,
        retry_jitter: None,
    };

    pub(crate) fn to_wit(self) -> wit::TaskOptions {
        // Destructured so that a new option does not compile until it is passed on.
        let StaticOptions {
            max_retries,
            retry_forever,
            default_retry_delay,
            rate_limit,
            time_limit,
            soft_time_limit,
            acks_late,
            ignore_result,
            track_started,
            autoretry_for,
            retry_backoff,
            retry_backoff_max,
            retry_jitter,
        } = self;
        wit::TaskOptions {
            max_retries,
            retry_forever,
            default_retry_delay,
            rate_limit: rate_limit.map(str::to_owned),
            time_limit,
            soft_time_limit,
            acks_late,
            ignore_result,
            track_started,
            autoretry_for: autoretry_for.iter().map(|s| (*s).to_owned()).collect(),
            retry_backoff,
            retry_backoff_max,
            retry_jitter,
        }
    }
}

impl Default for StaticOptions {
    fn default() -> Self {
        StaticOptions::DEFAULT
    }
}

/// The glue `#[task]` generates around a function: binds the arguments, calls it and
/// serializes what it returns.
pub type CallFn = fn(&Task, &mut Bound) -> Result<String, TaskError>;

/// One task as `#[task]` describes it.
#[derive(Clone, Copy, Debug)]
pub struct TaskSpec {
    /// The Celery task name.
    pub name: &'static str,
    /// The Rust function name, used in Python-style `TypeError` messages.
    pub func: &'static str,
    /// The function's parameters (after `task: &Task`, without `Args`/`Kwargs`).
    pub params: &'static [crate::args::Param],
    /// Whether an `Args` parameter collects extra positional arguments.
    pub var_args: bool,
    /// Whether a `Kwargs` parameter collects extra keyword arguments.
    pub var_kwargs: bool,
    /// Whether a first `task: &Task` parameter makes it bound: like Celery's `bind=True`
    /// tasks, it is then never called inline as an errback.
    pub bound: bool,
    /// The `#[task(...)]` options.
    pub options: StaticOptions,
    /// Calls the function with bound arguments.
    pub call: CallFn,
}
