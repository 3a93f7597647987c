//! `update_state` calls from a running guest, stored in the order the guest made them by a
//! task of their own, so a guest never waits on the result backend.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backend::{ExtendedFields, ResultBackend, TaskMeta};
use crate::sandbox::{LogLevel, TaskEvents};

use super::TracingTaskEvents;
use super::execution::store;

/// What a task reports while it runs, in order.
enum Event {
    State { state: String, meta_json: String },
    Done(oneshot::Sender<()>),
}

/// The [`TaskEvents`] a task runs with: logs go to `tracing`, states to the storing task.
pub struct ChannelEvents {
    log: TracingTaskEvents,
    states: mpsc::UnboundedSender<Event>,
}

impl TaskEvents for ChannelEvents {
    fn log(&self, level: LogLevel, message: &str) {
        self.log.log(level, message);
    }

    fn update_state(&self, state: &str, meta_json: &str) {
        let _ = self.states.send(Event::State {
            state: state.to_owned(),
            meta_json: meta_json.to_owned(),
        });
    }
}

/// The storing task of one running task.
pub struct StateUpdates {
    states: mpsc::UnboundedSender<Event>,
    storer: JoinHandle<()>,
}

impl StateUpdates {
    /// Starts storing the states `task_id` reports through the returned events.
    pub fn start<R: ResultBackend + 'static>(
        backend: Arc<R>,
        log: TracingTaskEvents,
        extended: Option<ExtendedFields>,
    ) -> (Arc<ChannelEvents>, StateUpdates) {
        let (states, mut rx) = mpsc::unbounded_channel();
        let task_id = log.task_id.clone();
        let storer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    Event::State { state, meta_json } => {
                        match TaskMeta::custom(&task_id, &state, &meta_json) {
                            Ok(meta) => {
                                let meta = match &extended {
                                    Some(fields) => meta.with_extended(fields.clone()),
                                    None => meta,
                                };
                                // A lost progress update is logged by `store`; the task goes on.
                                let _ = store(&*backend, &meta).await;
                            }
                            Err(err) => {
                                tracing::warn!("update_state of task {task_id} ignored: {err}");
                            }
                        }
                    }
                    Event::Done(done) => {
                        let _ = done.send(());
                        break;
                    }
                }
            }
        });
        let events = Arc::new(ChannelEvents {
            log,
            states: states.clone(),
        });
        (events, StateUpdates { states, storer })
    }

    /// Waits until every state reported so far is stored, so the final state lands last.
    pub async fn finish(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.states.send(Event::Done(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
        drop(self.storer);
    }
}
