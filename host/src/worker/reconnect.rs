//! Retrying a broker or backend call that failed because the connection dropped: the
//! clients reconnect by themselves, so a short backoff usually rides out a server restart
//! without losing a result or leaving a message to the visibility timeout.

use std::future::Future;
use std::time::Duration;

use crate::backend::BackendError;
use crate::broker::BrokerError;

/// Waits between attempts: 0.1 s doubling to 2 s, about 7 s in all.
const BACKOFF: [Duration; 6] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_secs(2),
];

/// An error that may say the connection (not the request) failed.
pub trait ConnectionError: std::fmt::Display {
    /// True when trying again on a new connection may succeed.
    fn is_connection(&self) -> bool;
}

impl ConnectionError for BrokerError {
    fn is_connection(&self) -> bool {
        BrokerError::is_connection(self)
    }
}

impl ConnectionError for BackendError {
    fn is_connection(&self) -> bool {
        BackendError::is_connection(self)
    }
}

/// Runs `attempt` until it succeeds, fails for another reason than the connection, or the
/// backoff runs out; `what` names the call in the warning logged before each retry.
pub async fn retrying<T, E, F, Fut>(what: impl Fn() -> String, mut attempt: F) -> Result<T, E>
where
    E: ConnectionError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waits = BACKOFF.iter();
    loop {
        match attempt().await {
            Err(err) if err.is_connection() => match waits.next() {
                Some(wait) => {
                    tracing::warn!(
                        "{}: {err}; trying again in {:.1}s",
                        what(),
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(err),
            },
            done => return done,
        }
    }
}
