//! The consuming session's unsettled deliveries, and acks sent together.
//!
//! Every delivery handed out stays in the [`Ledger`], in delivery-tag order, until it is
//! acked or rejected. Acks asked for while another is being written wait for it and then
//! go out together: the run of them at the bottom of the ledger (no unsettled delivery
//! below) as one `basic.ack` with `multiple`, any above an unsettled delivery (one held
//! for its ETA, say) one by one, so `multiple` never takes in a message that was not done.
//! Rejects go through the same turn, so a reject is on the wire before any `multiple` ack
//! that would otherwise cover its tag.
//!
//! Each frame gets [`SETTLE_TIMEOUT`]: lapin drops a settle asked for on a channel that
//! is closing without ever answering it, and a turn waiting on that forever would stop
//! every later ack, and with them the worker (a RabbitMQ restart in the middle of an ack
//! did exactly that).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::broker::BrokerError;

use super::amqp_error;

/// How long writing one ack or reject may take. On an open connection it is a write to
/// the socket buffer, done in well under a millisecond.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One unsettled delivery.
struct Entry {
    /// The queue it came from (for errors).
    queue: Arc<str>,
    /// What acks or rejects it.
    acker: Acker,
    /// Its task is done and an ack was asked for, not yet sent.
    ack_wanted: bool,
}

/// The unsettled deliveries of the current session.
#[derive(Default)]
struct Deliveries {
    /// The session they belong to (see [`tag`]).
    session: u64,
    /// AMQP delivery tag → delivery.
    entries: BTreeMap<u64, Entry>,
}

/// Unsettled deliveries, and the turn settling them takes.
#[derive(Default)]
pub(super) struct Ledger {
    /// std `Mutex`: short critical sections, no `.await` inside.
    deliveries: Mutex<Deliveries>,
    /// Held while frames are written, so acks coalesce behind it and rejects keep their
    /// place in the order.
    turn: tokio::sync::Mutex<()>,
}

/// The delivery tag celeriac hands out: `<session>.<AMQP delivery tag>` (AMQP numbers
/// deliveries per channel from 1, so a new session's tags would repeat an old one's).
pub(super) fn tag(session: u64, delivery_tag: u64) -> String {
    format!("{session}.{delivery_tag}")
}

fn parse_tag(tag: &str) -> Option<(u64, u64)> {
    let (session, delivery_tag) = tag.split_once('.')?;
    Some((session.parse().ok()?, delivery_tag.parse().ok()?))
}

/// Frames one turn writes.
struct Plan {
    /// The highest tag of the run at the bottom and how many deliveries the run holds.
    bottom_run: Option<(Acker, Arc<str>, usize)>,
    /// Acks above an unsettled delivery, one each.
    singles: Vec<(Acker, Arc<str>)>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a delivery of `session` as unsettled; a new session's first delivery
    /// forgets the previous session's (the server requeued them when it closed).
    pub(super) fn record(&self, session: u64, queue: Arc<str>, delivery_tag: u64, acker: Acker) {
        let mut deliveries = self.lock();
        if deliveries.session != session {
            deliveries.session = session;
            deliveries.entries.clear();
        }
        deliveries.entries.insert(
            delivery_tag,
            Entry {
                queue,
                acker,
                ack_wanted: false,
            },
        );
    }

    /// Forgets every delivery (their session ended; the server requeued them).
    pub(super) fn clear(&self) {
        self.lock().entries.clear();
    }

    /// Whether `tag` was handed out and not yet settled.
    pub(super) fn contains(&self, tag: &str) -> bool {
        let deliveries = self.lock();
        parse_tag(tag).is_some_and(|(session, delivery_tag)| {
            session == deliveries.session && deliveries.entries.contains_key(&delivery_tag)
        })
    }

    /// Acks `tag`, together with the acks asked for meanwhile. An unknown tag (settled
    /// already, or of a session that ended) is done. Returns once the ack is written,
    /// by this call's turn or by an earlier one that took it along.
    pub(super) async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        {
            let mut deliveries = self.lock();
            match find(&mut deliveries, tag) {
                Some(entry) => entry.ack_wanted = true,
                None => return Ok(()),
            }
        }
        let _turn = self.turn.lock().await;
        let plan = {
            let mut deliveries = self.lock();
            if find(&mut deliveries, tag).is_none() {
                return Ok(()); // an earlier turn wrote it
            }
            plan_acks(&mut deliveries)
        };
        // No ack can cover another here, so they may be written in any order: together.
        let bottom_run = plan.bottom_run.map(|(acker, queue, count)| {
            let options = BasicAckOptions {
                multiple: count > 1,
            };
            (acker, queue, options)
        });
        let singles = plan
            .singles
            .into_iter()
            .map(|(acker, queue)| (acker, queue, BasicAckOptions::default()));
        let written = join_all(bottom_run.into_iter().chain(singles).map(
            |(acker, queue, options)| async move {
                let written = tokio::time::timeout(SETTLE_TIMEOUT, acker.ack(options)).await;
                write(&acker, &queue, "basic.ack", written)
            },
        ))
        .await;
        written.into_iter().collect()
    }

    /// Rejects `tag` (back to its queue with `requeue`), in turn with the acks.
    pub(super) async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        let _turn = self.turn.lock().await;
        let Some(Entry { queue, acker, .. }) = remove(&mut self.lock(), tag) else {
            return Ok(());
        };
        let rejected = acker.reject(BasicRejectOptions { requeue });
        let written = tokio::time::timeout(SETTLE_TIMEOUT, rejected).await;
        write(&acker, &queue, "basic.reject", written)
    }
}

fn find<'a>(deliveries: &'a mut Deliveries, tag: &str) -> Option<&'a mut Entry> {
    let (session, delivery_tag) = parse_tag(tag)?;
    if session != deliveries.session {
        return None;
    }
    deliveries.entries.get_mut(&delivery_tag)
}

fn remove(deliveries: &mut Deliveries, tag: &str) -> Option<Entry> {
    let (session, delivery_tag) = parse_tag(tag)?;
    if session != deliveries.session {
        return None;
    }
    deliveries.entries.remove(&delivery_tag)
}

/// Takes every wanted ack out of the ledger: the run at the bottom, and the others.
fn plan_acks(deliveries: &mut Deliveries) -> Plan {
    let run: Vec<u64> = deliveries
        .entries
        .iter()
        .take_while(|(_, entry)| entry.ack_wanted)
        .map(|(&delivery_tag, _)| delivery_tag)
        .collect();
    let mut bottom_run = None;
    for (index, delivery_tag) in run.iter().enumerate() {
        if let Some(entry) = deliveries.entries.remove(delivery_tag)
            && index + 1 == run.len()
        {
            bottom_run = Some((entry.acker, entry.queue, run.len()));
        }
    }
    let above: Vec<u64> = deliveries
        .entries
        .iter()
        .filter(|(_, entry)| entry.ack_wanted)
        .map(|(&delivery_tag, _)| delivery_tag)
        .collect();
    let singles = above
        .iter()
        .filter_map(|delivery_tag| deliveries.entries.remove(delivery_tag))
        .map(|entry| (entry.acker, entry.queue))
        .collect();
    Plan {
        bottom_run,
        singles,
    }
}

/// The outcome of writing one frame: a lapin error, no answer in time, or the channel
/// gone before it (the server requeues the message, so the worker must learn the session
/// ended).
fn write(
    acker: &Acker,
    queue: &str,
    op: &'static str,
    written: Result<lapin::Result<bool>, tokio::time::error::Elapsed>,
) -> Result<(), BrokerError> {
    let written = written.map_err(|_| BrokerError::TimedOut {
        op,
        target: queue.to_owned(),
        after: SETTLE_TIMEOUT,
    })?;
    let done = written.map_err(amqp_error(op, queue))?;
    if !done && acker.poisoned() {
        return Err(BrokerError::ConsumerLost {
            queue: queue.to_owned(),
            reason: format!("the channel closed before {op}; the message goes back to its queue"),
        });
    }
    Ok(())
}
