//! Warm instances kept between tasks for components whose policy asks for
//! `isolation = "reuse"`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Store;

use super::bindings::Task;
use super::guest_state::GuestState;

/// One instance between tasks.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<GuestState>,
    pub(crate) task: Task,
    /// Tasks this instance has served.
    served: u32,
    /// The [`WarmInstances::generation`] it was made in.
    generation: u64,
}

/// Idle instances of one component.
#[derive(Default)]
pub(crate) struct WarmInstances {
    /// A std mutex: only pushed to and popped from, never held across an await.
    idle: Mutex<Vec<WarmInstance>>,
    /// Bumped by [`WarmInstances::clear`]: instances made before are not kept again.
    generation: AtomicU64,
}

impl WarmInstances {
    /// A new instance, to be handed back with [`WarmInstances::give_back`] after its task.
    pub(crate) fn new_instance(&self, store: Store<GuestState>, task: Task) -> WarmInstance {
        WarmInstance {
            store,
            task,
            served: 0,
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    pub(crate) fn take(&self) -> Option<WarmInstance> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
    }

    /// Drops every idle instance, and each busy one when its task ends.
    pub(crate) fn clear(&self) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        idle.clear();
    }

    /// Keeps the instance for another task unless it has served its quota or was made
    /// before the last [`WarmInstances::clear`].
    pub(crate) fn give_back(&self, mut instance: WarmInstance, max_tasks_per_instance: u32) {
        instance.served += 1;
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if instance.served < max_tasks_per_instance
            && instance.generation == self.generation.load(Ordering::Acquire)
        {
            idle.push(instance);
        }
    }
}
