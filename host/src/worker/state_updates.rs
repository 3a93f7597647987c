//! `update_state` calls from a running guest, stored in the order the guest made them by a
//! task of their own, so a guest never waits on the result backend.
//!
//! The storing task starts with the first `update_state`: most tasks never call it, and
//! for them a spawned task and its hand-shake at the end would be pure overhead.

use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{ExtendedFields, ResultBackend, TaskMeta};
use crate::sandbox::{LogLevel, TaskEvents};

use super::TracingTaskEvents;
use super::execution::store;

/// What a task reports while it runs, in order.
enum Event {
    State { state: String, meta_json: String },
    Done(oneshot::Sender<()>),
}

/// Starts the storing task of one running task when it is first needed.
type StartStorer = Box<dyn FnOnce() -> mpsc::UnboundedSender<Event> + Send>;

/// The storing task of one running task, started by the first report.
struct Storer {
    /// Spawns it; `None` once it runs.
    start: Option<StartStorer>,
    /// Where its events go, once it runs.
    states: Option<mpsc::UnboundedSender<Event>>,
}

impl Storer {
    /// The running task's channel, starting the task first if need be.
    fn states(&mut self) -> Option<&mpsc::UnboundedSender<Event>> {
        if self.states.is_none()
            && let Some(start) = self.start.take()
        {
            self.states = Some(start());
        }
        self.states.as_ref()
    }
}

/// The [`TaskEvents`] a task runs with: logs go to `tracing`, states to the storing task.
pub struct ChannelEvents {
    log: TracingTaskEvents,
    /// std `Mutex`: taken by the guest's host calls and by [`StateUpdates::finish`],
    /// never across an `.await`.
    storer: Mutex<Storer>,
}

impl ChannelEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Storer> {
        // The guarded value is a channel end or its constructor: usable after a panic.
        self.storer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TaskEvents for ChannelEvents {
    fn log(&self, level: LogLevel, message: &str) {
        self.log.log(level, message);
    }

    fn update_state(&self, state: &str, meta_json: &str) {
        if let Some(states) = self.lock().states() {
            let _ = states.send(Event::State {
                state: state.to_owned(),
                meta_json: meta_json.to_owned(),
            });
        }
    }
}

/// The state updates of one running task.
pub struct StateUpdates {
    events: Arc<ChannelEvents>,
}

impl StateUpdates {
    /// Prepares to store the states `task_id` reports through the returned events; the
    /// storing task is spawned on the current runtime at the first report.
    pub fn start<R: ResultBackend + 'static>(
        backend: Arc<R>,
        log: TracingTaskEvents,
        extended: Option<ExtendedFields>,
    ) -> (Arc<ChannelEvents>, StateUpdates) {
        let task_id = log.task_id.clone();
        let runtime = Handle::current();
        let start: StartStorer = Box::new(move || {
            let (states, rx) = mpsc::unbounded_channel();
            runtime.spawn(store_in_order(rx, backend, task_id, extended));
            states
        });
        let events = Arc::new(ChannelEvents {
            log,
            storer: Mutex::new(Storer {
                start: Some(start),
                states: None,
            }),
        });
        let updates = StateUpdates {
            events: Arc::clone(&events),
        };
        (events, updates)
    }

    /// Waits until every state reported so far is stored, so the final state lands last.
    pub async fn finish(self) {
        let Some(states) = self.events.lock().states.clone() else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if states.send(Event::Done(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }
}

/// Stores each reported state in turn until told the task is done.
async fn store_in_order<R: ResultBackend>(
    mut events: mpsc::UnboundedReceiver<Event>,
    backend: Arc<R>,
    task_id: String,
    extended: Option<ExtendedFields>,
) {
    while let Some(event) = events.recv().await {
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
}
