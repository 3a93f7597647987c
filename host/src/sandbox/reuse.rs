//! Warm instances kept between tasks for components whose policy asks for
//! `isolation = "reuse"`, and the sandbox-wide list of them that lets a full instance pool
//! take back idle ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

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

/// Locks ignoring poison: the lists stay consistent whatever panicked while holding them.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        lock(&self.idle).pop()
    }

    /// Drops every idle instance, and each busy one when its task ends.
    pub(crate) fn clear(&self) {
        let mut idle = lock(&self.idle);
        self.generation.fetch_add(1, Ordering::AcqRel);
        idle.clear();
    }

    /// Drops the idle instances (busy ones are kept when their task ends); how many.
    fn drop_idle(&self) -> usize {
        let idle = std::mem::take(&mut *lock(&self.idle));
        idle.len()
    }

    /// Keeps the instance for another task unless it has served its quota or was made
    /// before the last [`WarmInstances::clear`].
    pub(crate) fn give_back(&self, mut instance: WarmInstance, max_tasks_per_instance: u32) {
        instance.served += 1;
        let mut idle = lock(&self.idle);
        if instance.served < max_tasks_per_instance
            && instance.generation == self.generation.load(Ordering::Acquire)
        {
            idle.push(instance);
        }
    }
}

/// The [`WarmInstances`] of every prepared component of a sandbox.
#[derive(Default)]
pub(crate) struct AllWarmInstances {
    sets: Mutex<Vec<Weak<WarmInstances>>>,
}

impl AllWarmInstances {
    /// The idle-instance list of a newly prepared component.
    pub(crate) fn new_set(&self) -> Arc<WarmInstances> {
        let set = Arc::new(WarmInstances::default());
        let mut sets = lock(&self.sets);
        sets.retain(|set| set.strong_count() > 0);
        sets.push(Arc::downgrade(&set));
        set
    }

    /// Drops the idle instances of every component, returning their pool slots; how many.
    pub(crate) fn drop_idle(&self) -> usize {
        let live: Vec<Arc<WarmInstances>> =
            lock(&self.sets).iter().filter_map(Weak::upgrade).collect();
        live.iter().map(|set| set.drop_idle()).sum()
    }
}
