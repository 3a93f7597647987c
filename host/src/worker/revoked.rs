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

    /// The remembered ids with how long ago each was added, oldest first (for the state db).
    pub fn with_ages(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let entries = self.lock();
        entries
            .order
            .iter()
            .filter_map(|(seq, id)| match entries.added.get(id) {
                Some((s, at)) if s == seq => Some((id.clone(), now.duration_since(*at))),
                _ => None,
            })
            .collect()
    }

    /// Remembers `task_id` as revoked `age` ago (restored from the state db); an id older
    /// than the expiry is left out. Restore oldest first to keep the order.
    pub fn insert_aged(&self, task_id: &str, age: Duration) {
        if age >= self.expiry {
            return;
        }
        if let Some(added) = Instant::now().checked_sub(age) {
            self.insert_at(task_id, added);
        }
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
    fn ages_survive_a_round_trip_and_old_ids_are_left_out() {
        let revoked = RevokedTasks::new(10, Duration::from_secs(60));
        revoked.insert_aged("old", Duration::from_secs(61));
        revoked.insert_aged("a", Duration::from_secs(30));
        revoked.insert("b");
        let saved = revoked.with_ages();
        assert_eq!(
            saved.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(saved[0].1 >= Duration::from_secs(30));
        let restored = RevokedTasks::new(10, Duration::from_secs(60));
        for (id, age) in &saved {
            restored.insert_aged(id, *age);
        }
        assert_eq!(restored.ids(), vec!["a".to_owned(), "b".to_owned()]);
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
