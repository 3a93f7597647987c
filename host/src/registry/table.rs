//! One immutable snapshot of which component serves which task name.
//!
//! A swap builds a new table and publishes it whole, so a reader sees either the old or the
//! new mapping, never a mixture; tasks keep the `Arc<LoadedComponent>` they resolved, so a
//! swap or a removal never disturbs a task that has started.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LoadError, LoadedComponent};

/// Task name → component, and file → component, at one moment.
#[derive(Clone, Default)]
pub struct TaskTable {
    by_file: BTreeMap<PathBuf, Arc<LoadedComponent>>,
    by_name: HashMap<String, Arc<LoadedComponent>>,
}

impl TaskTable {
    /// The component serving `task_name`.
    pub fn resolve(&self, task_name: &str) -> Option<&Arc<LoadedComponent>> {
        self.by_name.get(task_name)
    }

    /// The component loaded from `path`.
    pub fn component_at(&self, path: &Path) -> Option<&Arc<LoadedComponent>> {
        self.by_file.get(path)
    }

    /// Every component, in file name order.
    pub fn components(&self) -> impl Iterator<Item = &Arc<LoadedComponent>> {
        self.by_file.values()
    }

    /// Every task name served, sorted.
    pub fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// This table with `component` serving its names in place of whatever its file served
    /// before; refused when another file serves one of its names.
    pub(crate) fn with(&self, component: Arc<LoadedComponent>) -> Result<TaskTable, LoadError> {
        for task in &component.tasks {
            if let Some(other) = self.by_name.get(&task.name)
                && other.path != component.path
            {
                return Err(LoadError::Duplicate {
                    name: task.name.clone(),
                    first: other.path.clone(),
                    second: component.path.clone(),
                });
            }
        }
        let mut next = self.without(&component.path);
        for task in &component.tasks {
            next.by_name
                .insert(task.name.clone(), Arc::clone(&component));
        }
        next.by_file.insert(component.path.clone(), component);
        Ok(next)
    }

    /// This table without the component loaded from `path` (and its names).
    pub(crate) fn without(&self, path: &Path) -> TaskTable {
        let mut next = self.clone();
        if let Some(gone) = next.by_file.remove(path) {
            for task in &gone.tasks {
                next.by_name.remove(&task.name);
            }
        }
        next
    }
}
