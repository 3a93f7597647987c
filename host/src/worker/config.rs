//! How a worker runs: its queues, slots, prefetch, ack mode and limits, and the error it
//! gives for a configuration that cannot work.

use std::time::Duration;

use crate::control::ControlConfig;
use crate::sandbox::SandboxLimits;

/// How the worker loop runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queues to consume, first queue first.
    pub queues: Vec<String>,
    /// Tasks running at once.
    pub concurrency: usize,
    /// Unacked deliveries held per running slot (prefetch = concurrency × this).
    pub prefetch_multiplier: u32,
    /// The node name (`celery@host`), the `hostname` of every request.
    pub nodename: String,
    /// Ack after the result is stored rather than when the task starts.
    pub acks_late: bool,
    /// Write the `result_extended` fields into stored results.
    pub result_extended: bool,
    /// Limits every task runs with, refined per task by options and headers.
    pub limits: SandboxLimits,
    /// How long a warm shutdown waits for running tasks.
    pub shutdown_timeout: Duration,
    /// How long the final fetch at shutdown may take; at least the broker's fetch wait.
    pub drain_timeout: Duration,
    /// Celery's `task_default_queue`: where callbacks, chain steps and errbacks without
    /// routing options go.
    pub default_queue: String,
    /// Events and remote control.
    pub control: ControlConfig,
}

impl WorkerConfig {
    /// Celery's defaults on `queues` with `concurrency` slots: prefetch multiplier 4, early
    /// acks, default limits, 60 s warm-shutdown timeout, default queue `celery`.
    pub fn new(queues: Vec<String>, concurrency: usize, nodename: impl Into<String>) -> Self {
        WorkerConfig {
            queues,
            concurrency,
            prefetch_multiplier: 4,
            nodename: nodename.into(),
            acks_late: false,
            result_extended: false,
            limits: SandboxLimits::new(),
            shutdown_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(2),
            default_queue: crate::protocol::signature::DEFAULT_QUEUE.to_owned(),
            control: ControlConfig::default(),
        }
    }

    /// How many unacked deliveries the worker holds: concurrency × prefetch multiplier.
    pub fn prefetch(&self) -> u32 {
        u32::try_from(self.concurrency)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.prefetch_multiplier)
    }

    /// Refuses a configuration the loop cannot run with.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        if self.queues.is_empty() {
            return Err(WorkerError::Config("no queue to consume".into()));
        }
        Ok(())
    }
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration cannot work.
    #[error("invalid worker configuration: {0}")]
    Config(String),
}
