//! Redis requests grouped into one round trip, shared by the broker's acks and the result
//! backend's stores: every item waiting when a flush starts goes out in one call of the
//! flush function, and each caller gets its own item's outcome. An item arriving while a
//! flush is in flight waits for the next one; an idle worker's item goes out at once.
//! Under load Redis then runs one request per batch instead of one per task.

use std::future::Future;

use redis::RedisError;
use tokio::sync::{mpsc, oneshot};

/// One item waiting for its flush, and where its outcome goes.
struct Pending<T, O> {
    item: T,
    done: oneshot::Sender<Result<O, RedisError>>,
}

/// Hands items to a flushing task. The task ends when every clone of this is dropped.
pub struct Batcher<T, O> {
    pending: mpsc::UnboundedSender<Pending<T, O>>,
    /// What the flushing task does, for the error of a call made after it stopped.
    name: &'static str,
}

impl<T, O> Clone for Batcher<T, O> {
    fn clone(&self) -> Self {
        Batcher {
            pending: self.pending.clone(),
            name: self.name,
        }
    }
}

impl<T: Send + 'static, O: Send + 'static> Batcher<T, O> {
    /// Starts the flushing task named `name` on the current tokio runtime. `flush` writes
    /// up to `max` items in one round trip and answers with one outcome per item, in order.
    pub fn start<F, Fut>(name: &'static str, max: usize, flush: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, RedisError>> + Send + 'static,
    {
        let (pending, queued) = mpsc::unbounded_channel();
        tokio::spawn(flush_forever(queued, max, flush));
        Batcher { pending, name }
    }

    /// Writes `item` together with every other item queued meanwhile; its outcome, or the
    /// error that failed the whole batch.
    pub async fn submit(&self, item: T) -> Result<O, RedisError> {
        let (done, flushed) = oneshot::channel();
        if self.pending.send(Pending { item, done }).is_err() {
            return Err(stopped(self.name));
        }
        flushed.await.unwrap_or_else(|_| Err(stopped(self.name)))
    }
}

async fn flush_forever<T, O, F, Fut>(
    mut queued: mpsc::UnboundedReceiver<Pending<T, O>>,
    max: usize,
    mut flush: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, RedisError>>,
{
    let mut batch = Vec::with_capacity(max);
    while queued.recv_many(&mut batch, max).await > 0 {
        let (items, callers): (Vec<T>, Vec<_>) = batch
            .drain(..)
            .map(|pending| (pending.item, pending.done))
            .unzip();
        let count = items.len();
        match flush(items).await {
            Ok(outcomes) if outcomes.len() == count => {
                for (caller, outcome) in callers.into_iter().zip(outcomes) {
                    let _ = caller.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                let error = RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "a batch was answered for a different number of items",
                    format!("{} for {count}", outcomes.len()),
                ));
                fail_all(callers, &error);
            }
            Err(error) => fail_all(callers, &error),
        }
    }
}

fn fail_all<O>(callers: Vec<oneshot::Sender<Result<O, RedisError>>>, error: &RedisError) {
    for caller in callers {
        let _ = caller.send(Err(error.clone()));
    }
}

/// The error of a call made while its owner is being dropped.
fn stopped(name: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        format!("the {name} task has stopped"),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn items_queued_during_a_flush_go_out_together_in_order() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, held) = tokio::sync::watch::channel(false);
        let seen = Arc::clone(&batches);
        let batcher = Batcher::start("test", 3, move |items: Vec<u32>| {
            seen.lock().expect("not poisoned").push(items.clone());
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|released| *released).await;
                Ok(items.iter().map(|item| item * 10).collect())
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        while batches.lock().expect("not poisoned").is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=5)
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(true).expect("the flusher listens");
        assert_eq!(first.await.expect("joined").expect("flushed"), 10);
        for (item, outcome) in (2..=5).zip(rest) {
            assert_eq!(outcome.await.expect("joined").expect("flushed"), item * 10);
        }
        let batches = batches.lock().expect("not poisoned").clone();
        assert_eq!(batches[0], vec![1], "an idle batcher flushes at once");
        assert_eq!(
            batches[1..].concat(),
            vec![2, 3, 4, 5],
            "the rest in order, at most three a flush: {batches:?}"
        );
        assert!(batches[1..].iter().all(|batch| batch.len() <= 3));
    }

    #[tokio::test]
    async fn a_failed_or_miscounted_flush_fails_every_caller_of_that_batch() {
        let batcher = Batcher::start("test", 8, |items: Vec<u32>| async move {
            match items[..] {
                [0] => Err(RedisError::from((redis::ErrorKind::Io, "down"))),
                _ => Ok(vec![true]),
            }
        });
        assert!(batcher.submit(0).await.is_err(), "the flush failed");
        assert!(batcher.submit(7).await.expect("one item, one outcome"));
        // On this single-threaded runtime both are queued before the flusher runs.
        let both: Vec<_> = [1, 2]
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .into_iter()
            .collect();
        for outcome in both {
            let err = outcome
                .await
                .expect("joined")
                .expect_err("one outcome for two");
            assert!(err.to_string().contains("1 for 2"), "{err}");
        }
    }
}
