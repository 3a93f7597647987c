//! One delivery from arrival to its final ack or reject: decode it, resolve its task,
//! discard it when revoked or expired, wait for its ETA and a free slot, ack it early or
//! late, and run it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backend::{ExceptionInfo, ResultBackend, TaskMeta};
use crate::broker::{Broker, Consumer, Delivery};
use crate::control::TrackedTask;
use crate::protocol::{self, Disposition, TaskMessage};

use super::clock;
use super::execution::{Settle, TaskRun, store};
use super::reconnect::retrying;
use super::run_loop::WorkerContext;

/// The shortest wait between two refreshes of an unacked entry.
const MIN_VISIBILITY_REFRESH: Duration = Duration::from_secs(1);

/// Handles one delivery; every path ends with the message acked, rejected or given back.
pub async fn handle<B: Broker, R: ResultBackend + 'static>(
    worker: Arc<WorkerContext<B, R>>,
    delivery: Delivery,
) {
    let consumer = &worker.consumer;
    let message = match protocol::decode(&delivery.raw()) {
        Ok(message) => message,
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
    let Some(component) = worker.registry.resolve(&message.task).cloned() else {
        reject_unregistered(&worker, &delivery, &message).await;
        return;
    };
    let options = component
        .task(&message.task)
        .map(|info| info.options.clone())
        .unwrap_or_default();
    let ignore_result = message
        .ignore_result
        .unwrap_or(options.ignore_result == Some(true));
    tracing::info!("Task {}[{}] received", message.task, message.id);
    if discard_if_revoked(&worker, &delivery, &message, ignore_result).await {
        return;
    }
    let tracked = worker.monitor.task_received(&message, &delivery);

    let due = wait_until_due(&worker, &message, &tracked);
    let Some(_slot) = keeping_visible(consumer, &delivery, due).await else {
        finish(consumer, &delivery, Settle::Reject { requeue: true }).await;
        return;
    };
    // An ETA may have outlived the expiry, or a revoke may have come meanwhile.
    if discard_if_revoked(&worker, &delivery, &message, ignore_result).await {
        return;
    }

    let acks_late = worker.config.acks_late || options.acks_late == Some(true);
    if !acks_late {
        finish(consumer, &delivery, Settle::Ack).await;
        tracked.acknowledged();
    }
    tracked.started();
    let run = TaskRun {
        worker: &worker,
        message: &message,
        delivery: &delivery,
        options: &options,
        ignore_result,
    };
    if options.track_started == Some(true) && !ignore_result {
        let started = TaskMeta::started(&message.id, std::process::id(), &worker.config.nodename);
        // STARTED is informative: the task runs even when it cannot be written.
        let _ = run.store(started).await;
    }
    let settle = if acks_late {
        keeping_visible(consumer, &delivery, run.execute(&component.prepared)).await
    } else {
        run.execute(&component.prepared).await
    };
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

/// Waits for the message's ETA (lending its prefetch slot meanwhile) and then for a free
/// task slot; `None` when the worker began to stop first.
async fn wait_until_due<B: Broker, R: ResultBackend>(
    worker: &WorkerContext<B, R>,
    message: &TaskMessage,
    tracked: &TrackedTask,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let mut stopping = worker.stopping.clone();
    let wait = async {
        if let Some(eta) = &message.eta {
            let delay = clock::until(eta.unix_micros());
            if !delay.is_zero() {
                let _hold = worker.consumer.hold_for_eta();
                tokio::time::sleep(delay).await;
            }
        }
        tracked.due();
        Arc::clone(&worker.slots).acquire_owned().await.ok()
    };
    let slot = tokio::select! {
        biased;
        _ = stopping.wait_for(|stop| *stop) => None,
        slot = wait => slot,
    };
    slot.filter(|_| !*worker.stopping.borrow())
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
        // Celery acks a revoked message whether or not REVOKED could be written.
        let _ = store(&*worker.backend, &meta).await;
    }
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
        }
    })
    .await;
    if let Err(err) = result {
        tracing::error!("cannot settle delivery {tag} ({settle:?}): {err}");
    }
}
