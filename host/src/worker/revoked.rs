//! The ids of revoked and expired tasks this worker remembers (Celery's `revoked`
//! LimitedSet, spec celery-worker-behaviour.md §3.9): a message whose id is here is
//! discarded instead of run.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Celery's `CELERY_WORKER_REVOKES_MAX` default.
pub const DEFAULT_MAX_REVOKED: usize = 50_000;
/// Celery's `CELERY_WORKER_REVOKE_EXPIRES` default: 3 hours.
pub const DEFAULT_REVOKE_EXPIRY: Duration = Duration::from_secs(10_800);

/// A bounded set of task ids, each forgotten after an expiry or, when full, oldest first.
#[derive(Debug)]
pub struct RevokedTasks {
    max: usize,
    expiry: Duration,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// id → (insertion number, when it was last added).
    added: HashMap<String, (u64, Instant)>,
    /// Insertion order, oldest first; an id re-added later has a stale entry here, which
    /// purging recognises by its insertion number.
    order: VecDeque<(u64, String)>,
    /// The next insertion number.
    next: u64,
}

impl Default for RevokedTasks {
    fn default() -> Self {
        RevokedTasks::new(DEFAULT_MAX_REVOKED, DEFAULT_REVOKE_EXPIRY)
    }
}

impl RevokedTasks {
    /// At most `max` ids (at least one), each kept for `expiry`.
    pub fn new(max: usize, expiry: Duration) -> Self {
        RevokedTasks {
            max: max.max(1),
            expiry,
            entries: Mutex::default(),
        }
    }

    /// Remembers `task_id` as revoked.
    pub fn insert(&self, task_id: &str) {
        self.insert_at(task_id, Instant::now());
    }

    /// True when `task_id` was revoked and not forgotten since.
    pub fn contains(&self, task_id: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .added
            .get(task_id)
            .is_some_and(|(_, added)| now.duration_since(*added) < self.expiry)
    }

    /// The remembered ids, oldest first.
    pub fn ids(&self) -> Vec<String> {
        let entries = self.lock();
        entries
            .order
            .iter()
            .filter(|(seq, id)| entries.added.get(id).is_some_and(|(s, _)| s == seq))
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn insert_at(&self, task_id: &str, now: Instant) {
        let mut entries = self.lock();
        let seq = entries.next;
        entries.next += 1;
        entries.added.insert(task_id.to_owned(), (seq, now));
        entries.order.push_back((seq, task_id.to_owned()));
        while let Some((oldest, id)) = entries.order.front().cloned() {
            let (current, expired) = match entries.added.get(&id) {
                Some((s, at)) => (*s == oldest, now.duration_since(*at) >= self.expiry),
                None => (false, true),
            };
            if current && !expired && entries.added.len() <= self.max {
                break;
            }
            entries.order.pop_front();
            if current {
                entries.added.remove(&id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ids_until_they_expire() {
        let revoked = RevokedTasks::new(10, Duration::from_secs(60));
        let start = Instant::now();
        revoked.insert_at("a", start);
        assert!(revoked.contains("a"));
        assert!(!revoked.contains("b"));
        revoked.insert_at("b", start + Duration::from_secs(61));
        assert_eq!(revoked.ids(), vec!["b".to_owned()]);
    }

    #[test]
    fn forgets_the_oldest_when_full() {
        let revoked = RevokedTasks::new(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            revoked.insert(id);
        }
        assert_eq!(revoked.ids(), vec!["b".to_owned(), "c".to_owned()]);
        assert!(!revoked.contains("a"));
    }

    #[test]
    fn re_adding_an_id_refreshes_it() {
        let revoked = RevokedTasks::new(2, Duration::from_secs(60));
        for id in ["a", "b", "a", "c"] {
            revoked.insert(id);
        }
        assert_eq!(revoked.ids(), vec!["a".to_owned(), "c".to_owned()]);
    }
}
