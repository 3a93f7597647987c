//! One delivery from arrival to its final ack or reject: decode it, resolve its task,
//! discard it when revoked or expired, wait for its ETA, its rate limit and a free slot,
//! ack it early or late, and run it (killably, for a revoke with terminate).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backend::{ExceptionInfo, ResultBackend, TaskMeta};
use crate::broker::{Broker, Consumer, Delivery, Outgoing};
use crate::control::TrackedTask;
use crate::protocol::{self, Disposition, TaskMessage};
use crate::registry::TaskTable;

use super::canvas::{self, Target};
use super::clock;
use super::execution::{Settle, TaskRun, routing_key, store, with_request};
use super::reconnect::retrying;
use super::run_loop::WorkerContext;

/// The shortest wait between two refreshes of an unacked entry.
const MIN_VISIBILITY_REFRESH: Duration = Duration::from_secs(1);

/// Handles one delivery; every path ends with the message acked, rejected or given back.
///
/// The task table is taken when the run loop hands the delivery out, not when the spawned
/// task first runs, so deliveries meet a hot swap in the order they arrived: a stream of
/// tasks switches to a new version once and never back.
pub fn handle<B: Broker, R: ResultBackend + 'static>(
    worker: Arc<WorkerContext<B, R>>,
    delivery: Delivery,
) -> impl Future<Output = ()> + Send + 'static {
    let tasks = worker.registry.snapshot();
    handle_resolving_in(worker, delivery, tasks)
}

async fn handle_resolving_in<B: Broker, R: ResultBackend + 'static>(
    worker: Arc<WorkerContext<B, R>>,
    delivery: Delivery,
    tasks: Arc<TaskTable>,
) {
    let consumer = &worker.consumer;
    let message = match protocol::decode(&delivery.raw()) {
        Ok(message) => Arc::new(message),
        Err(err) => {
            tracing::error!(
                "{err} (delivery tag {}, queue {})",
                delivery.delivery_tag(),
                delivery.queue
            );
            let settle = match err.disposition() {
                Disposition::AckAndDrop => Settle::Ack,
                Disposition::RejectWithoutRequeue => Settle::Reject { requeue: false },
            };
            finish(consumer, &delivery, settle).await;
            return;
        }
    };
    let Some(target) = Target::resolve(&tasks, &message.task) else {
        reject_unregistered(&worker, &delivery, &message).await;
        return;
    };
    let options = target.options(&message.task);
    let ignore_result = message
        .ignore_result
        .unwrap_or(options.ignore_result == Some(true));
    tracing::info!("Task {}[{}] received", message.task, message.id);
    if discard_if_revoked(&worker, &delivery, &message, ignore_result).await {
        return;
    }
    let tracked = worker.monitor.task_received(&message, &delivery);

    let due = wait_until_due(&worker, &message, options.rate_limit.as_deref(), &tracked);
    let _slot = match keeping_visible(consumer, &delivery, due).await {
        Due::Run(slot) => slot,
        Due::Stopping => {
            finish(consumer, &delivery, Settle::GiveBack).await;
            return;
        }
        Due::HandOver => {
            hand_over(consumer, &delivery, &message).await;
            return;
        }
    };
    // Registered before the second check: a revoke adds the id before it looks for running
    // tasks, so a terminate cannot slip between the check and the start.
    let running = worker.running.start(&message.id);
    // An ETA may have outlived the expiry, or a revoke may have come meanwhile.
    if discard_if_revoked(&worker, &delivery, &message, ignore_result).await {
        return;
    }

    let acks_late = worker.config.acks_late || options.acks_late == Some(true);
    // An early ack goes out as the task starts, as Celery's does once the pool has taken
    // the job, without holding the task back until the broker has it: the ack round trip
    // overlaps the run instead of keeping the slot. Celery marks the request acknowledged
    // when it sends the ack, so `inspect active` never shows a started early-ack task
    // unacknowledged; so does this.
    if !acks_late {
        tracked.acknowledged();
    }
    let early_ack = async {
        if !acks_late {
            finish(consumer, &delivery, Settle::Ack).await;
        }
    };
    let run = TaskRun {
        worker: &worker,
        message: &message,
        delivery: &delivery,
        options: &options,
        ignore_result,
    };
    let run_to_settle = async {
        tracked.started();
        if options.track_started == Some(true) && !ignore_result {
            let started =
                TaskMeta::started(&message.id, std::process::id(), &worker.config.nodename);
            // STARTED is informative: the task runs even when it cannot be written.
            let _ = run.store(started).await;
        }
        // Boxed: the run's future is several KB, and each branch below would hold its own
        // copy inside this one, which is copied whole when the delivery is spawned.
        let execution = Box::pin(run.execute(&target, &running.kill));
        if acks_late {
            keeping_visible(consumer, &delivery, execution).await
        } else {
            execution.await
        }
    };
    let ((), settle) = tokio::join!(early_ack, run_to_settle);
    drop(running);
    if acks_late {
        if let Settle::Reject { requeue } = settle {
            worker
                .monitor
                .task_rejected(&message.id, &message.task, requeue);
        }
        finish(consumer, &delivery, settle).await;
    } else if settle == (Settle::Reject { requeue: true }) {
        tracing::warn!(
            "Task {}[{}] should go back to the queue, but its message was acked when it started",
            message.task,
            message.id
        );
    }
}

/// How waiting for a message's turn ended.
enum Due {
    /// Its ETA has come and a task slot is free.
    Run(tokio::sync::OwnedSemaphorePermit),
    /// The worker began to stop first.
    Stopping,
    /// Its ETA lies beyond what the broker lets a delivery stay unacked
    /// ([`Capabilities::unacked_limit`](crate::broker::Capabilities::unacked_limit)).
    HandOver,
}

/// Waits for the message's ETA (lending its prefetch slot meanwhile), then for a token of
/// the task's rate limit (keeping the slot, as Celery does), then for a free task slot. An
/// ETA wait that would outlast the broker's unacked limit ends at three quarters of it,
/// leaving room for the server's periodic check.
async fn wait_until_due<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    message: &TaskMessage,
    rate_limit: Option<&str>,
    tracked: &TrackedTask,
) -> Due {
    let mut stopping = worker.stopping.clone();
    let hold_limit = worker
        .consumer
        .broker()
        .capabilities()
        .unacked_limit
        .map(|limit| limit * 3 / 4);
    let wait = async {
        if let Some(eta) = &message.eta {
            let delay = clock::until(eta.unix_micros());
            if !delay.is_zero() {
                let _hold = worker.consumer.hold_for_eta();
                match hold_limit {
                    Some(limit) if delay > limit => {
                        tokio::time::sleep(limit).await;
                        return Due::HandOver;
                    }
                    _ => tokio::time::sleep(delay).await,
                }
            }
        }
        if let Some(bucket) = worker.rate_limits.bucket(&message.task, rate_limit) {
            bucket.take().await;
        }
        tracked.due();
        match Arc::clone(&worker.slots).acquire_owned().await {
            Ok(slot) => Due::Run(slot),
            Err(_) => Due::Stopping,
        }
    };
    let due = tokio::select! {
        biased;
        _ = stopping.wait_for(|stop| *stop) => Due::Stopping,
        due = wait => due,
    };
    if *worker.stopping.borrow() {
        Due::Stopping
    } else {
        due
    }
}

/// Republishes a message still waiting for its ETA, unchanged, and acks the delivery, so
/// RabbitMQ's `consumer_timeout` never closes the channel over it (Celery #6760, where the
/// worker loses its connection and every prefetched message). The copy comes back to a
/// worker, which holds it again. If it cannot be published, the message goes back with a
/// requeue instead: redelivered at once, but never lost.
async fn hand_over<B: Broker>(consumer: &Consumer<B>, delivery: &Delivery, message: &TaskMessage) {
    let copy = Outgoing::copy_of(delivery);
    let exchange = &delivery.properties.delivery_info.exchange;
    match consumer
        .broker()
        .publish(exchange, routing_key(delivery), &copy)
        .await
    {
        Ok(()) => {
            tracing::info!(
                "Task {}[{}] waits for its ETA longer than the broker keeps a message unacked: \
                 sent back to the queue to wait there",
                message.task,
                message.id
            );
            finish(consumer, delivery, Settle::Ack).await;
        }
        Err(err) => {
            tracing::warn!(
                "Task {}[{}] could not be republished to wait for its ETA ({err}): requeued",
                message.task,
                message.id
            );
            finish(consumer, delivery, Settle::Reject { requeue: true }).await;
        }
    }
}

/// Runs `work` while refreshing the delivery's unacked entry every third of the visibility
/// timeout, so a restore sweep does not hand the message to another worker meanwhile.
async fn keeping_visible<B: Broker, F: Future>(
    consumer: &Consumer<B>,
    delivery: &Delivery,
    work: F,
) -> F::Output {
    let Some(timeout) = consumer.broker().capabilities().visibility_timeout else {
        return work.await;
    };
    let every = (timeout / 3).max(MIN_VISIBILITY_REFRESH);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = refresh.tick() => {
                let tag = delivery.delivery_tag();
                if let Err(err) = consumer.broker().extend_visibility(tag).await {
                    tracing::warn!("cannot keep delivery {tag} from being restored: {err}");
                }
            }
        }
    }
}

/// Celery's `Request.revoked()`: a message whose id is revoked or whose `expires` has
/// passed is acked without running, with REVOKED stored. True when it was discarded.
async fn discard_if_revoked<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    delivery: &Delivery,
    message: &TaskMessage,
    ignore_result: bool,
) -> bool {
    let expired = message
        .expires
        .as_ref()
        .is_some_and(|expires| clock::has_passed(expires.unix_micros()));
    if expired {
        worker.revoked.insert(&message.id);
    } else if !worker.revoked.contains(&message.id) {
        return false;
    }
    tracing::info!("Discarding revoked task: {}[{}]", message.task, message.id);
    worker
        .monitor
        .task_revoked(&message.id, &message.task, expired, None);
    if !ignore_result {
        let reason = [Value::from(if expired { "expired" } else { "revoked" })];
        let meta = TaskMeta::revoked(
            &message.id,
            ExceptionInfo {
                exc_type: "TaskRevokedError",
                exc_module: "celery.exceptions",
                exc_message: &reason,
            },
        );
        let meta = with_request(worker, message, delivery, meta);
        // Celery acks a revoked message whether or not REVOKED could be written.
        let _ = store(&*worker.backend, &meta).await;
    }
    let reason = if expired { "expired" } else { "revoked" };
    canvas::chord_part_revoked(worker, message, reason).await;
    finish(&worker.consumer, delivery, Settle::Ack).await;
    true
}

/// Celery's NotRegistered path: FAILURE stored, message rejected without requeue.
async fn reject_unregistered<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    delivery: &Delivery,
    message: &TaskMessage,
) {
    tracing::error!(
        "Received unregistered task of type '{}' (id {}). The message has been rejected.",
        message.task,
        message.id
    );
    let args = [Value::from(message.task.clone())];
    worker.monitor.task_unregistered(&message.id, &message.task);
    let meta = TaskMeta::failure(
        &message.id,
        ExceptionInfo {
            exc_type: "NotRegistered",
            exc_module: "celery.exceptions",
            exc_message: &args,
        },
        None,
    );
    let _ = store(&*worker.backend, &meta).await;
    finish(
        &worker.consumer,
        delivery,
        Settle::Reject { requeue: false },
    )
    .await;
}

/// Acks or rejects `delivery`, riding out a dropped connection, and logs a failure (the
/// message then comes back by itself: on reconnect, or after the visibility timeout).
pub async fn finish<B: Broker>(consumer: &Consumer<B>, delivery: &Delivery, settle: Settle) {
    let tag = delivery.delivery_tag();
    let what = || format!("settling delivery {tag} ({settle:?})");
    let result = retrying(what, || async move {
        match settle {
            Settle::Ack => consumer.ack(tag).await,
            Settle::Reject { requeue } => consumer.reject(tag, requeue).await,
            Settle::GiveBack => consumer.give_back(tag).await,
        }
    })
    .await;
    if let Err(err) = result {
        tracing::error!("cannot settle delivery {tag} ({settle:?}): {err}");
    }
}
