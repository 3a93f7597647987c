//! The sending side of a deploy: subscribes to its own replies, publishes the request, and
//! collects the answers until every worker it waits for has given its final one, or time is
//! up.
//!
//! Which workers it waits for: those named in the destination; without one, those that
//! answer `received` within [`DISCOVERY_WINDOW`] (a worker answers it as soon as the request
//! arrives, before any compiling), so the command ends as soon as the last of them is done
//! instead of always waiting out its timeout.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{Broker, BrokerError, Subscription};

use super::wire::{Action, Reply, Request, Status, reply_queue, request_exchange};

/// Without a destination, how long the sender listens for workers saying they received the
/// request (`celery inspect` waits 1 s for its replies).
pub const DISCOVERY_WINDOW: Duration = Duration::from_secs(2);

/// A request on its way, and the subscription its replies come back on.
pub struct Sent {
    replies: Subscription,
    ticket: String,
    destination: Vec<String>,
}

/// Publishes `action` for the workers named in `destination` (empty: every celeriac worker
/// on the broker), after subscribing to the replies so none is missed.
pub async fn send<B: Broker>(
    broker: &B,
    action: Action,
    destination: Vec<String>,
) -> Result<Sent, BrokerError> {
    let reply_to = uuid::Uuid::new_v4().to_string();
    let ticket = uuid::Uuid::new_v4().to_string();
    let replies = broker.subscribe_broadcast(&reply_queue(&reply_to)).await?;
    let request = Request {
        action,
        destination: destination.clone(),
        reply_to,
        ticket: ticket.clone(),
    };
    broker
        .publish_broadcast(&request_exchange(), "", &request.encode())
        .await?;
    Ok(Sent {
        replies,
        ticket,
        destination,
    })
}

/// What the workers answered.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    /// The final replies (ok or error), in the order they came.
    pub replies: Vec<Reply>,
    /// The workers waited for that gave no final answer in time, sorted.
    pub silent: Vec<String>,
}

impl Answers {
    /// True when at least one worker answered, every answer is ok, and nobody waited for
    /// is silent.
    pub fn all_ok(&self) -> bool {
        !self.replies.is_empty()
            && self.silent.is_empty()
            && self.replies.iter().all(|reply| reply.status == Status::Ok)
    }
}

impl Sent {
    /// Collects replies for up to `timeout`, handing each final one to `on_final` as it
    /// comes; stops early once every worker waited for has answered.
    pub async fn collect(mut self, timeout: Duration, mut on_final: impl FnMut(&Reply)) -> Answers {
        let start = Instant::now();
        let deadline = start + timeout;
        let discovery_end = start + DISCOVERY_WINDOW.min(timeout);
        let mut waited_for: BTreeSet<String> = self.destination.iter().cloned().collect();
        let mut answered: BTreeSet<String> = BTreeSet::new();
        let mut replies = Vec::new();
        loop {
            let discovering = self.destination.is_empty() && Instant::now() < discovery_end;
            if !discovering && waited_for.is_subset(&answered) {
                break;
            }
            let wake = if discovering { discovery_end } else { deadline };
            let heard = tokio::select! {
                heard = self.replies.next() => heard,
                () = tokio::time::sleep_until(wake) => {
                    if wake == deadline {
                        break;
                    }
                    continue;
                }
            };
            let Some(delivery) = heard else {
                tracing::warn!("deploy: the reply subscription was lost; answers may be missing");
                break;
            };
            let reply = match Reply::decode(&delivery) {
                Ok(reply) if reply.ticket == self.ticket => reply,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!("deploy: {err}; reply ignored");
                    continue;
                }
            };
            if self.destination.is_empty() {
                waited_for.insert(reply.nodename.clone());
            }
            if !reply.is_final() {
                tracing::info!("deploy: {} received the request", reply.nodename);
            } else if answered.insert(reply.nodename.clone()) {
                on_final(&reply);
                replies.push(reply);
            }
        }
        Answers {
            replies,
            silent: waited_for
                .into_iter()
                .filter(|node| !answered.contains(node))
                .collect(),
        }
    }
}
