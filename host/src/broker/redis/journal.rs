//! The fetch journal: which delivery tags a fetch recorded as unacked, kept in Redis until
//! the worker has seen the fetch's reply.
//!
//! The fetch script pops messages and records them in `unacked` atomically, but its reply
//! can still be lost (Redis restarts, the connection drops) after the script ran. The
//! messages would then sit in `unacked`, delivered to nobody, until the visibility timeout
//! (an hour by default) brings them back. So each fetch also lists its tags under a key of
//! its own; the next fetch deletes the key of the last one whose reply arrived, and after a
//! fetch that failed the worker moves that fetch's tags back to the front of their queues
//! as soon as Redis answers again.

use std::sync::Mutex;
use std::time::Duration;

/// How long a journal key lives if its worker dies before deleting it. The visibility
/// timeout covers such messages anyway; this only bounds the garbage.
pub(super) const JOURNAL_TTL: Duration = Duration::from_secs(600);

/// The journal keys of one broker connection.
#[derive(Default)]
pub(super) struct FetchJournal {
    keys: Mutex<JournalKeys>,
}

#[derive(Default)]
struct JournalKeys {
    /// The last fetch whose reply arrived: its key is deleted by the next fetch.
    delivered: Option<String>,
    /// Fetches whose reply was lost: their tags go back to their queues.
    lost: Vec<String>,
}

impl FetchJournal {
    /// A fresh key for the next fetch's journal, `prefix` included.
    pub(super) fn new_key(prefix: &str) -> String {
        format!("{prefix}_celeriac.fetch.{}", uuid::Uuid::new_v4())
    }

    /// The key of the last fetch whose reply arrived, for the next fetch to delete.
    pub(super) fn delivered(&self) -> Option<String> {
        self.lock().delivered.clone()
    }

    /// Records how the fetch that wrote `key` ended.
    pub(super) fn fetched(&self, key: String, reply_arrived: bool) {
        let mut keys = self.lock();
        if reply_arrived {
            keys.delivered = Some(key);
        } else {
            keys.lost.push(key);
        }
    }

    /// Journals of fetches whose reply was lost, to recover before fetching again.
    pub(super) fn lost(&self) -> Vec<String> {
        self.lock().lost.clone()
    }

    /// `key`'s tags are back in their queues.
    pub(super) fn recovered(&self, key: &str) {
        self.lock().lost.retain(|lost| lost != key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalKeys> {
        // The guarded data is two plain collections: usable even if a holder panicked.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_fetch_replaces_the_last_one_and_a_lost_one_waits_for_recovery() {
        let journal = FetchJournal::default();
        assert_eq!(journal.delivered(), None);
        journal.fetched("a".into(), true);
        journal.fetched("b".into(), false);
        journal.fetched("c".into(), true);
        assert_eq!(journal.delivered().as_deref(), Some("c"));
        assert_eq!(journal.lost(), vec!["b".to_owned()]);
        journal.recovered("b");
        assert!(journal.lost().is_empty());
    }

    #[test]
    fn keys_are_prefixed_and_unique() {
        let first = FetchJournal::new_key("pre:");
        assert!(first.starts_with("pre:_celeriac.fetch."));
        assert_ne!(first, FetchJournal::new_key("pre:"));
    }
}
