//! Stopping a running invocation from outside the guest: a [`KillSwitch`] that a revoke with
//! `terminate` flips, and the deadlines that end a guest blocked in a host call (a WASI
//! sleep), which the epoch callback cannot reach because no guest code runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Abort, SandboxLimits};

/// Ends one invocation at once when flipped; clones flip the same switch. A switch flipped
/// before the invocation starts ends it before any guest code runs.
#[derive(Clone, Debug)]
pub struct KillSwitch(Arc<watch::Sender<bool>>);

impl Default for KillSwitch {
    fn default() -> Self {
        KillSwitch(Arc::new(watch::Sender::new(false)))
    }
}

impl KillSwitch {
    /// A switch not flipped yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the invocation: the sandbox drops its instance at the guest's next yield (at
    /// most one epoch tick) or at once when the guest waits in a host call.
    pub fn kill(&self) {
        self.0.send_replace(true);
    }

    /// True once [`kill`](Self::kill) was called.
    pub fn is_killed(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the switch is flipped.
    pub(crate) async fn killed(&self) {
        let mut flipped = self.0.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = flipped.wait_for(|killed| *killed).await;
    }
}

/// The first time limit of `limits` and the abort it causes, measured from the start of the
/// invocation; `None` without limits.
pub(crate) fn first_deadline(limits: &SandboxLimits) -> Option<(Duration, Abort)> {
    let soft = limits
        .soft_time_limit
        .map(|limit| (limit, Abort::SoftTimeLimit(limit)));
    let hard = limits
        .time_limit
        .map(|limit| (limit, Abort::TimeLimit(limit)));
    match (soft, hard) {
        (Some(soft), Some(hard)) if hard.0 <= soft.0 => Some(hard),
        (Some(soft), _) => Some(soft),
        (None, hard) => hard,
    }
}

/// Waits for `deadline`, or forever without one.
pub(crate) async fn reached(deadline: Option<(Duration, Abort)>) -> Abort {
    match deadline {
        Some((after, abort)) => {
            tokio::time::sleep(after).await;
            abort
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_comes_first_unless_the_hard_one_is_earlier() {
        let limits = SandboxLimits::new()
            .soft_time_limit(Some(Duration::from_secs(1)))
            .time_limit(Some(Duration::from_secs(2)));
        assert_eq!(
            first_deadline(&limits).map(|(_, abort)| abort),
            Some(Abort::SoftTimeLimit(Duration::from_secs(1)))
        );
        let hard_only = SandboxLimits::new().time_limit(Some(Duration::from_secs(2)));
        assert_eq!(
            first_deadline(&hard_only).map(|(_, abort)| abort),
            Some(Abort::TimeLimit(Duration::from_secs(2)))
        );
        assert_eq!(first_deadline(&SandboxLimits::new()), None);
    }

    #[tokio::test]
    async fn a_switch_flipped_early_is_seen_by_a_later_waiter() {
        let switch = KillSwitch::new();
        switch.clone().kill();
        assert!(switch.is_killed());
        tokio::time::timeout(Duration::from_secs(1), switch.killed())
            .await
            .expect("already flipped");
    }
}
