//! Prometheus metrics of one worker: tasks by name and final state, run time, peak guest
//! memory, time from arrival to start (queue wait), tasks in flight and prefetched, and
//! the components loaded. Rendered in the text exposition format for `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::registry::Registry as TaskRegistry;

/// A task name label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    name: String,
}

/// A task name and the state it ended in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    name: String,
    state: String,
}

/// A loaded component.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
    version: String,
}

type HistogramFamily = Family<TaskLabel, Histogram, fn() -> Histogram>;

fn runtime_histogram() -> Histogram {
    // 1 ms .. about 9 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn instantiate_histogram() -> Histogram {
    // 1 µs .. about 8 s: a small guest instantiates in microseconds, Python in a millisecond.
    Histogram::new(exponential_buckets(1e-6, 2.0, 24))
}

fn memory_histogram() -> Histogram {
    // 64 KiB .. 4 GiB.
    Histogram::new(exponential_buckets(65_536.0, 2.0, 17))
}

/// The worker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tasks: Family<OutcomeLabels, Counter>,
    runtime: HistogramFamily,
    instantiate: HistogramFamily,
    memory: HistogramFamily,
    queue_wait: Histogram,
    in_flight: Gauge,
    prefetched: Gauge,
    components: Family<ComponentLabels, Gauge>,
    component_load: Family<ComponentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("celeriac");
        let tasks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tasks",
            "Tasks ended, by name and final state (SUCCESS, FAILURE, RETRY, REJECTED, REVOKED)",
            tasks.clone(),
        );
        let runtime: HistogramFamily = Family::new_with_constructor(runtime_histogram);
        registry.register(
            "task_runtime_seconds",
            "Time a task ran in the sandbox, instantiation included",
            runtime.clone(),
        );
        let instantiate: HistogramFamily = Family::new_with_constructor(instantiate_histogram);
        registry.register(
            "sandbox_instantiate_seconds",
            "Time creating a fresh sandbox instance for a task took (not counted when a warm \
             instance of an isolation = \"reuse\" component served it)",
            instantiate.clone(),
        );
        let memory: HistogramFamily = Family::new_with_constructor(memory_histogram);
        registry.register(
            "task_peak_memory_bytes",
            "Most linear memory a task's instance held at once",
            memory.clone(),
        );
        let queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "task_queue_wait_seconds",
            "Time from a task's arrival at the worker to its start (ETA wait included)",
            queue_wait.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("tasks_in_flight", "Tasks running now", in_flight.clone());
        let prefetched = Gauge::default();
        registry.register(
            "tasks_prefetched",
            "Tasks received and not started (waiting for a slot or their ETA)",
            prefetched.clone(),
        );
        let components = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_info",
            "Task components loaded (1 per component and version)",
            components.clone(),
        );
        let component_load = Family::default();
        registry.register(
            "component_load_seconds",
            "Time loading (compiling or reading from the cache) each component took",
            component_load.clone(),
        );
        Metrics {
            registry,
            tasks,
            runtime,
            instantiate,
            memory,
            queue_wait,
            in_flight,
            prefetched,
            components,
            component_load,
        }
    }
}

impl Metrics {
    /// Counts a task of `name` that ended in `state`.
    pub fn task_ended(&self, name: &str, state: &str) {
        self.tasks
            .get_or_create(&OutcomeLabels {
                name: name.to_owned(),
                state: state.to_owned(),
            })
            .inc();
    }

    /// Records one run of a task of `name`: its run time, the peak memory of its instance
    /// and, when a fresh instance was made for it, how long that took.
    pub fn task_ran(
        &self,
        name: &str,
        runtime: Duration,
        peak_memory_bytes: usize,
        instantiate: Option<Duration>,
    ) {
        let label = TaskLabel {
            name: name.to_owned(),
        };
        self.runtime
            .get_or_create(&label)
            .observe(runtime.as_secs_f64());
        self.memory
            .get_or_create(&label)
            .observe(peak_memory_bytes as f64);
        if let Some(instantiate) = instantiate {
            self.instantiate
                .get_or_create(&label)
                .observe(instantiate.as_secs_f64());
        }
    }

    /// Records how long a task waited between arrival and start.
    pub fn task_waited(&self, wait: Duration) {
        self.queue_wait.observe(wait.as_secs_f64());
    }

    /// Records the components of `registry`.
    pub fn components_loaded(&self, registry: &TaskRegistry) {
        self.components.clear();
        self.component_load.clear();
        for component in registry.components() {
            let labels = ComponentLabels {
                component: component
                    .path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                version: component.version().to_owned(),
            };
            self.components.get_or_create(&labels).set(1);
            self.component_load
                .get_or_create(&labels)
                .set(component.load.total.as_secs_f64());
        }
    }

    /// The text exposition, with the gauges set to `in_flight` and `prefetched`.
    pub fn render(&self, in_flight: usize, prefetched: usize) -> String {
        self.in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.prefetched
            .set(i64::try_from(prefetched).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_with_their_labels() {
        let metrics = Metrics::default();
        metrics.task_ended("tasks.add", "SUCCESS");
        metrics.task_ended("tasks.add", "SUCCESS");
        metrics.task_ran(
            "tasks.add",
            Duration::from_millis(3),
            1 << 20,
            Some(Duration::from_micros(900)),
        );
        metrics.task_ran("tasks.add", Duration::from_millis(1), 1 << 20, None);
        metrics.task_waited(Duration::from_millis(1));
        let text = metrics.render(1, 2);
        assert!(
            text.contains(r#"celeriac_tasks_total{name="tasks.add",state="SUCCESS"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"celeriac_task_runtime_seconds_count{name="tasks.add"} 2"#));
        assert!(
            text.contains(r#"celeriac_sandbox_instantiate_seconds_count{name="tasks.add"} 1"#),
            "a run on a warm instance is not an instantiation: {text}"
        );
        assert!(text.contains("celeriac_tasks_in_flight 1"));
        assert!(text.contains("celeriac_tasks_prefetched 2"));
        assert!(text.contains("celeriac_task_queue_wait_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
