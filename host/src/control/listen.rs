//! Hearing a broadcast queue for as long as a control task runs: subscribing, handing each
//! message to a handler, and subscribing again (with backoff) when the subscription is lost.
//! The pidbox and the deploy listener both run on it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::broker::{BroadcastQueue, Broker, BrokerError, Delivery};

/// The first wait before subscribing again after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait before subscribing again after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Hears `queue` through `broker` and awaits `handle` on each message, in order, until the
/// transport says it cannot broadcast (then returns). `what` names the listener in log
/// lines; `subscribed` is told once the first attempt is over, whatever its outcome;
/// `connected` is told each time the subscription comes up or goes down.
pub(super) async fn listen<B, H, F>(
    broker: &B,
    queue: &BroadcastQueue,
    what: &str,
    subscribed: oneshot::Sender<()>,
    connected: impl Fn(bool),
    mut handle: H,
) where
    B: Broker,
    H: FnMut(Delivery) -> F,
    F: Future<Output = ()>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut subscribed = Some(subscribed);
    loop {
        let subscription = broker.subscribe_broadcast(queue).await;
        if let Some(first) = subscribed.take() {
            let _ = first.send(());
        }
        match subscription {
            Ok(mut subscription) => {
                backoff = FIRST_BACKOFF;
                connected(true);
                while let Some(delivery) = subscription.next().await {
                    handle(delivery).await;
                }
                connected(false);
                tracing::warn!("{what}: subscription lost; subscribing again");
            }
            Err(BrokerError::Unsupported { transport, .. }) => {
                tracing::warn!("{what}: the {transport} transport cannot broadcast; {what} is off");
                return;
            }
            Err(err) => {
                tracing::error!(
                    "{what}: cannot subscribe: {err}; retrying in {:.1}s",
                    backoff.as_secs_f64()
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
