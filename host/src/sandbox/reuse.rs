//! Warm instances kept between tasks for components whose policy asks for
//! `isolation = "reuse"`.

use std::sync::Mutex;

use wasmtime::Store;

use super::bindings::Task;
use super::guest_state::GuestState;

/// One instance between tasks.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<GuestState>,
    pub(crate) task: Task,
    /// Tasks this instance has served.
    served: u32,
}

impl WarmInstance {
    pub(crate) fn new(store: Store<GuestState>, task: Task) -> Self {
        WarmInstance {
            store,
            task,
            served: 0,
        }
    }
}

/// Idle instances of one component.
#[derive(Default)]
pub(crate) struct WarmInstances {
    /// A std mutex: only pushed to and popped from, never held across an await.
    idle: Mutex<Vec<WarmInstance>>,
}

impl WarmInstances {
    pub(crate) fn take(&self) -> Option<WarmInstance> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
    }

    /// Keeps the instance for another task unless it has served its quota.
    pub(crate) fn give_back(&self, mut instance: WarmInstance, max_tasks_per_instance: u32) {
        instance.served += 1;
        if instance.served < max_tasks_per_instance {
            self.idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(instance);
        }
    }
}
