//! The data a wasmtime `Store` holds for one instance: WASI context, memory accounting,
//! time limits, the task's log, and the `context` imports the guest calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::{context, types};
use super::output::TaskLog;
use super::{Abort, SandboxLimits, TaskEvents};

/// Store data of one instance.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryAccount,
    pub(crate) clock: TaskClock,
    pub(crate) log: TaskLog,
    /// Receives `update-state` calls of the task currently running.
    events: Arc<dyn TaskEvents>,
    /// Largest `update-state` meta accepted, in bytes.
    max_meta_bytes: usize,
    /// Set by the epoch callback when it interrupts the guest, so the trap can be named.
    pub(crate) interrupted: Option<Abort>,
}

impl GuestState {
    pub(crate) fn new(
        wasi: WasiCtx,
        log: TaskLog,
        events: Arc<dyn TaskEvents>,
        limits: &SandboxLimits,
    ) -> Self {
        GuestState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryAccount::new(limits.memory_bytes),
            clock: TaskClock::start(limits),
            log,
            events,
            max_meta_bytes: limits.max_result_bytes,
            interrupted: None,
        }
    }

    /// Prepares a reused instance for its next task.
    pub(crate) fn begin_task(&mut self, events: Arc<dyn TaskEvents>, limits: &SandboxLimits) {
        self.log.reset(events.clone(), limits.max_log_bytes);
        self.events = events;
        self.clock = TaskClock::start(limits);
        self.memory.limit_bytes = limits.memory_bytes;
        self.memory.denied = false;
        self.max_meta_bytes = limits.max_result_bytes;
        self.interrupted = None;
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for GuestState {}

impl context::Host for GuestState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        self.log.log(level, &message);
    }

    fn update_state(&mut self, state: String, meta: String) {
        if meta.len() > self.max_meta_bytes {
            self.log.log(
                types::LogLevel::Error,
                &format!(
                    "celeriac: update_state({state}) dropped: meta of {} bytes exceeds the {}-byte limit",
                    meta.len(),
                    self.max_meta_bytes
                ),
            );
            return;
        }
        self.events.update_state(&state, &meta);
    }

    fn time_left_ms(&mut self) -> Option<u64> {
        self.clock
            .time_left(Instant::now())
            .map(|left| left.as_millis() as u64)
    }
}

/// Linear memory held by one instance, against its cap.
pub(crate) struct MemoryAccount {
    limit_bytes: usize,
    held_bytes: usize,
    pub(crate) peak_bytes: usize,
    /// A growth was refused: a trap that follows is reported as a memory limit.
    pub(crate) denied: bool,
}

impl MemoryAccount {
    fn new(limit_bytes: usize) -> Self {
        MemoryAccount {
            limit_bytes,
            held_bytes: 0,
            peak_bytes: 0,
            denied: false,
        }
    }

    pub(crate) fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }
}

/// Most table elements an instance may hold; guards against a table-growth bomb.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryAccount {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.held_bytes - current.min(self.held_bytes) + desired;
        if total > self.limit_bytes {
            // Refuse rather than trap: memory.grow returns -1 and a guest language that can
            // raise MemoryError (Python) does so; one that cannot traps and is reported as a
            // memory limit.
            self.denied = true;
            return Ok(false);
        }
        self.held_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Wall-clock deadlines of the running task.
pub(crate) struct TaskClock {
    soft: Option<(Instant, Duration)>,
    hard: Option<(Instant, Duration)>,
}

impl TaskClock {
    fn start(limits: &SandboxLimits) -> Self {
        let now = Instant::now();
        TaskClock {
            soft: limits.soft_time_limit.map(|limit| (now + limit, limit)),
            hard: limits.time_limit.map(|limit| (now + limit, limit)),
        }
    }

    /// The limit that has passed at `now`, if any; the hard one wins.
    pub(crate) fn expired(&self, now: Instant) -> Option<Abort> {
        match (self.hard, self.soft) {
            (Some((at, limit)), _) if now >= at => Some(Abort::TimeLimit(limit)),
            (_, Some((at, limit))) if now >= at => Some(Abort::SoftTimeLimit(limit)),
            _ => None,
        }
    }

    /// Time until the first limit, if any.
    pub(crate) fn time_left(&self, now: Instant) -> Option<Duration> {
        [self.soft, self.hard]
            .into_iter()
            .flatten()
            .map(|(at, _)| at.saturating_duration_since(now))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_cap_is_refused_and_remembered() {
        let mut account = MemoryAccount::new(10 << 20);
        assert!(account.memory_growing(0, 4 << 20, None).unwrap());
        assert!(account.memory_growing(4 << 20, 8 << 20, None).unwrap());
        assert!(!account.denied);
        assert!(!account.memory_growing(8 << 20, 12 << 20, None).unwrap());
        assert!(account.denied);
        assert_eq!(account.peak_bytes, 8 << 20);
    }

    #[test]
    fn memories_are_summed_against_one_cap() {
        let mut account = MemoryAccount::new(10 << 20);
        assert!(account.memory_growing(0, 6 << 20, None).unwrap());
        assert!(
            !account.memory_growing(0, 6 << 20, None).unwrap(),
            "a second memory shares the cap"
        );
    }

    #[test]
    fn hard_limit_wins_over_soft_when_both_passed() {
        let limits = SandboxLimits::new()
            .soft_time_limit(Some(Duration::from_millis(10)))
            .time_limit(Some(Duration::from_millis(20)));
        let clock = TaskClock::start(&limits);
        let start = Instant::now();
        assert_eq!(clock.expired(start), None);
        assert_eq!(
            clock.expired(start + Duration::from_millis(15)),
            Some(Abort::SoftTimeLimit(Duration::from_millis(10)))
        );
        assert_eq!(
            clock.expired(start + Duration::from_millis(25)),
            Some(Abort::TimeLimit(Duration::from_millis(20)))
        );
        assert!(clock.time_left(start).unwrap() <= Duration::from_millis(10));
    }
}
