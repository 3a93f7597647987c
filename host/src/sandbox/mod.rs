//! Runs one task invocation in a fresh, limited WebAssembly instance.
//!
//! The sandbox owns the wasmtime `Engine` (pooling allocator, epoch interruption), the
//! `Linker` with WASI and the `context` imports, and [`Sandbox::run`], which instantiates a
//! prepared component, calls its `run` export and reports an [`Outcome`]. It knows nothing
//! of brokers, acks, retries or result backends: guest failures (a raised exception, a trap,
//! a time or memory limit) are outcomes, and `run` fails only when the host itself does.

mod bindings;
mod engine;
mod guest_state;
mod kill;
mod limits;
mod outcome;
mod output;
mod policy;
mod reuse;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

pub use bindings::types::{
    DeliveryInfo, Exception, LogLevel, Parameters, RejectRequest, Request, RetryRequest, TaskError,
    TaskInfo, TaskOptions,
};
pub use engine::EngineOptions;
pub use kill::KillSwitch;
pub use limits::SandboxLimits;
pub use outcome::{Abort, Outcome, RunReport};
pub use policy::{DirGrant, WasiPolicy};

use bindings::{Task, TaskPre};
use guest_state::GuestState;
use output::{GuestOutput, Stream, TaskLog};
use reuse::{AllWarmInstances, WarmInstances};

/// How long a component's `tasks` export may run when it loads; a component that takes
/// longer is refused rather than holding up the worker's start.
const DESCRIBE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for TaskOptions {
    /// Every option unset: the worker's defaults apply, as for a task whose author set none.
    fn default() -> Self {
        TaskOptions {
            max_retries: None,
            retry_forever: false,
            default_retry_delay: None,
            rate_limit: None,
            time_limit: None,
            soft_time_limit: None,
            acks_late: None,
            ignore_result: None,
            track_started: None,
            autoretry_for: Vec::new(),
            retry_backoff: None,
            retry_backoff_max: None,
            retry_jitter: None,
        }
    }
}

impl Request {
    /// `task` run as `id` on the worker `hostname`, with nothing else set: no work-flow ids,
    /// no retries, no delivery details, not eager.
    pub fn new(id: String, task: String, hostname: String) -> Self {
        Request {
            id,
            task,
            retries: 0,
            root_id: None,
            parent_id: None,
            group: None,
            group_index: None,
            eta: None,
            expires: None,
            hostname,
            origin: None,
            correlation_id: None,
            reply_to: None,
            delivery_info: DeliveryInfo {
                exchange: String::new(),
                routing_key: String::new(),
                priority: None,
                redelivered: false,
            },
            is_eager: false,
            inline_errback: false,
        }
    }
}

/// Errors of the host side of the sandbox. A guest misbehaving is never one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The engine could not be configured.
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(#[source] wasmtime::Error),
    /// A component failed to compile.
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// A component does not satisfy the `celeriac:task/task` world.
    #[error("does not fit the celeriac:task/task@0.2.0 world: {0:#}")]
    World(#[source] wasmtime::Error),
    /// A capability the policy grants could not be set up (e.g. a missing directory).
    #[error("cannot apply the component's policy: {0}")]
    Policy(#[source] std::io::Error),
    /// An instance could not be created for a reason other than the guest's limits
    /// (e.g. the instance pool is full).
    #[error("cannot instantiate the component: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
    /// The component's `tasks` export failed.
    #[error("its `tasks` export failed: {0}")]
    Describe(String),
    /// The epoch thread could not be started.
    #[error("cannot start the epoch thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Receives what a running task reports besides its result.
///
/// Called synchronously from the guest's thread: implementations hand the data on (a log
/// line, a channel send) and never block.
pub trait TaskEvents: Send + Sync {
    /// A log line from the task (its `context.log` calls, stdout and stderr).
    fn log(&self, level: LogLevel, message: &str);
    /// `update-state(state, meta)` from the task; `meta_json` is JSON text.
    fn update_state(&self, state: &str, meta_json: &str);
}

/// How instances of a component are used across tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// A fresh instance per task: nothing a task does can be seen by the next (default).
    #[default]
    Fresh,
    /// An instance serves up to `max_tasks_per_instance` tasks in turn, like Celery's
    /// `worker_max_tasks_per_child`. Faster for guests with a costly start (Python), but
    /// globals, caches and leaks survive from one task to the next. An instance that traps
    /// or hits a limit is always thrown away.
    Reuse {
        /// Tasks an instance serves before it is replaced.
        max_tasks_per_instance: u32,
    },
}

/// A component ready to run: linked, validated against the world, with its policy.
pub struct Prepared {
    pre: TaskPre<GuestState>,
    policy: WasiPolicy,
    isolation: Isolation,
    warm: Arc<WarmInstances>,
}

impl Prepared {
    /// The isolation this component runs with.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// Drops the instances kept warm for `isolation = "reuse"`: the next tasks start fresh
    /// ones; instances serving a task now are dropped when it ends.
    pub fn drop_warm_instances(&self) {
        self.warm.clear();
    }
}

/// One task to run.
pub struct Invocation {
    /// Celery's `self.request`.
    pub request: Request,
    /// Positional arguments, a JSON array.
    pub args_json: String,
    /// Keyword arguments, a JSON object.
    pub kwargs_json: String,
    /// The limits resolved for this task.
    pub limits: SandboxLimits,
    /// Where the task's logs and state updates go.
    pub events: Arc<dyn TaskEvents>,
}

/// The worker's WebAssembly runtime. Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    /// Shared by every instance; built once, read-only afterwards.
    linker: Arc<Linker<GuestState>>,
    /// The idle `reuse` instances of every component, dropped when the pool is full.
    warm: Arc<AllWarmInstances>,
    /// Instances the pool has room for.
    max_instances: u32,
}

impl Sandbox {
    /// Creates the engine and the linker, and starts the epoch thread.
    pub fn new(options: &EngineOptions) -> Result<Self, SandboxError> {
        let engine = engine::build_engine(options).map_err(SandboxError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(SandboxError::Engine)?;
        Task::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(SandboxError::Engine)?;
        engine::spawn_epoch_ticker(engine.weak(), options.epoch_tick)
            .map_err(SandboxError::Thread)?;
        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
            warm: Arc::default(),
            max_instances: options.max_instances,
        })
    }

    /// Tasks that can run at once: the pool's room, less one instance for loading a
    /// component. Idle `reuse` instances give way to running tasks.
    pub fn max_running_tasks(&self) -> usize {
        usize::try_from(self.max_instances.saturating_sub(1)).unwrap_or(usize::MAX)
    }

    /// The engine, for compiling and for the compile cache's key.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles component bytes, with the core modules that share its memory linked into
    /// one first (see [`crate::link`]; a component the linker leaves alone is compiled as
    /// it is). CPU-heavy: call it from a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, SandboxError> {
        compile_linked(bytes, |bytes| Component::new(&self.engine, bytes))
    }

    /// Compiles component bytes into an artifact that `Component::deserialize` of an engine
    /// with these settings accepts, without loading it. CPU-heavy, as [`Sandbox::compile`].
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, SandboxError> {
        compile_linked(bytes, |bytes| self.engine.precompile_component(bytes))
    }

    /// Links a compiled component and checks it against the world.
    pub fn prepare(
        &self,
        component: &Component,
        policy: WasiPolicy,
        isolation: Isolation,
    ) -> Result<Prepared, SandboxError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(SandboxError::World)?;
        let pre = TaskPre::new(instance_pre).map_err(SandboxError::World)?;
        Ok(Prepared {
            pre,
            policy,
            isolation,
            warm: self.warm.new_set(),
        })
    }

    /// Calls the component's `tasks` export in a throwaway instance.
    pub async fn describe(
        &self,
        prepared: &Prepared,
        events: Arc<dyn TaskEvents>,
    ) -> Result<Vec<TaskInfo>, SandboxError> {
        let limits = SandboxLimits::new().time_limit(Some(DESCRIBE_TIME_LIMIT));
        let (mut store, instance) = self.instantiate(prepared, &events, &limits).await?;
        let task = match instance {
            Ok(task) => task,
            Err(err) => {
                return Err(match classify_failure(store.data(), err) {
                    Ok(abort) => SandboxError::Describe(abort.to_string()),
                    Err(err) => err,
                });
            }
        };
        task.call_tasks(&mut store).await.map_err(|err| {
            SandboxError::Describe(match classify_failure(store.data(), err) {
                Ok(abort) => abort.to_string(),
                Err(err) => err.to_string(),
            })
        })
    }

    /// Runs one task and reports how it ended.
    pub async fn run(
        &self,
        prepared: &Prepared,
        invocation: Invocation,
    ) -> Result<RunReport, SandboxError> {
        self.run_killable(prepared, invocation, &KillSwitch::new())
            .await
    }

    /// Like [`run`](Self::run), but flipping `kill` ends the task at once with
    /// [`Abort::Terminated`]: its instance is dropped at the guest's next yield, or right
    /// away when it waits in a host call.
    pub async fn run_killable(
        &self,
        prepared: &Prepared,
        invocation: Invocation,
        kill: &KillSwitch,
    ) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let aborted = |abort| RunReport {
            outcome: Outcome::Aborted(abort),
            duration: started.elapsed(),
            peak_memory_bytes: 0,
            instantiate: None,
        };
        if kill.is_killed() {
            return Ok(aborted(Abort::Terminated));
        }
        // The epoch callback stops a guest that computes past its limit; this deadline
        // stops one that sits in a host call (a sleep) past it.
        let deadline = kill::first_deadline(&invocation.limits);
        tokio::select! {
            biased;
            () = kill.killed() => Ok(aborted(Abort::Terminated)),
            abort = kill::reached(deadline) => Ok(aborted(abort)),
            // Boxed: a guest call's futures are several KB, and inline they would be
            // copied with every task's future when a delivery is spawned.
            report = Box::pin(self.run_to_end(prepared, invocation, started)) => report,
        }
    }

    async fn run_to_end(
        &self,
        prepared: &Prepared,
        invocation: Invocation,
        started: Instant,
    ) -> Result<RunReport, SandboxError> {
        let argument_bytes = invocation.args_json.len() + invocation.kwargs_json.len();
        if argument_bytes > invocation.limits.max_argument_bytes {
            return Ok(RunReport {
                outcome: Outcome::Aborted(Abort::ArgumentsTooLarge {
                    size: argument_bytes,
                    limit: invocation.limits.max_argument_bytes,
                }),
                duration: started.elapsed(),
                peak_memory_bytes: 0,
                instantiate: None,
            });
        }
        match prepared.isolation {
            Isolation::Fresh => self.run_fresh(prepared, invocation, started).await,
            Isolation::Reuse {
                max_tasks_per_instance,
            } => {
                self.run_reused(prepared, invocation, started, max_tasks_per_instance)
                    .await
            }
        }
    }

    async fn run_fresh(
        &self,
        prepared: &Prepared,
        invocation: Invocation,
        started: Instant,
    ) -> Result<RunReport, SandboxError> {
        let instantiating = Instant::now();
        let (mut store, instance) = self
            .instantiate(prepared, &invocation.events, &invocation.limits)
            .await?;
        let instantiate = Some(instantiating.elapsed());
        let outcome = match instance {
            Ok(task) => call_run(&mut store, &task, &invocation).await?,
            Err(err) => Outcome::Aborted(classify_failure(store.data(), err)?),
        };
        store.data().log.flush();
        Ok(RunReport {
            outcome,
            duration: started.elapsed(),
            peak_memory_bytes: store.data().memory.peak_bytes,
            instantiate,
        })
    }

    async fn run_reused(
        &self,
        prepared: &Prepared,
        invocation: Invocation,
        started: Instant,
        max_tasks_per_instance: u32,
    ) -> Result<RunReport, SandboxError> {
        let mut instantiate = None;
        let mut warm = match prepared.warm.take() {
            Some(mut warm) => {
                warm.store
                    .data_mut()
                    .begin_task(invocation.events.clone(), &invocation.limits);
                warm
            }
            None => {
                let instantiating = Instant::now();
                let (store, instance) = self
                    .instantiate(prepared, &invocation.events, &invocation.limits)
                    .await?;
                instantiate = Some(instantiating.elapsed());
                match instance {
                    Ok(task) => prepared.warm.new_instance(store, task),
                    Err(err) => {
                        let outcome = Outcome::Aborted(classify_failure(store.data(), err)?);
                        store.data().log.flush();
                        return Ok(RunReport {
                            outcome,
                            duration: started.elapsed(),
                            peak_memory_bytes: store.data().memory.peak_bytes,
                            instantiate,
                        });
                    }
                }
            }
        };
        let outcome = call_run(&mut warm.store, &warm.task, &invocation).await?;
        warm.store.data().log.flush();
        let report = RunReport {
            outcome,
            duration: started.elapsed(),
            peak_memory_bytes: warm.store.data().memory.peak_bytes,
            instantiate,
        };
        // An instance that was interrupted may hold half-updated state: never reuse it.
        if !matches!(report.outcome, Outcome::Aborted(_)) {
            prepared.warm.give_back(warm, max_tasks_per_instance);
        }
        Ok(report)
    }

    /// A new store holding a new instance of `prepared` (or why it could not be made).
    ///
    /// When the instance pool is full, the idle `reuse` instances of every component are
    /// dropped to make room, and instantiation is tried once more: idle instances must never
    /// cost a task its run.
    async fn instantiate(
        &self,
        prepared: &Prepared,
        events: &Arc<dyn TaskEvents>,
        limits: &SandboxLimits,
    ) -> Result<(Store<GuestState>, wasmtime::Result<Task>), SandboxError> {
        let mut store = self.new_store(&prepared.policy, events.clone(), limits)?;
        let instance = prepared.pre.instantiate_async(&mut store).await;
        let pool_full = matches!(&instance, Err(err) if err.is::<PoolConcurrencyLimitError>());
        if !pool_full {
            return Ok((store, instance));
        }
        let dropped = self.warm.drop_idle();
        if dropped == 0 {
            return Ok((store, instance));
        }
        tracing::debug!(dropped, "instance pool full: dropped idle reuse instances");
        drop(store);
        let mut store = self.new_store(&prepared.policy, events.clone(), limits)?;
        let instance = prepared.pre.instantiate_async(&mut store).await;
        Ok((store, instance))
    }

    fn new_store(
        &self,
        policy: &WasiPolicy,
        events: Arc<dyn TaskEvents>,
        limits: &SandboxLimits,
    ) -> Result<Store<GuestState>, SandboxError> {
        let log = TaskLog::new(events.clone(), limits.max_log_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(log.clone(), Stream::Stdout))
            .stderr(GuestOutput::new(log.clone(), Stream::Stderr));
        policy.apply(&mut wasi).map_err(SandboxError::Policy)?;
        let mut store = Store::new(
            &self.engine,
            GuestState::new(wasi.build(), log, events, limits),
        );
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut context| {
            let state = context.data_mut();
            if let Some(abort) = state.clock.expired(Instant::now()) {
                state.interrupted = Some(abort);
                return Ok(UpdateDeadline::Interrupt);
            }
            // Let other tasks on this runtime thread make progress.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }
}

/// Calls `run` and turns every way it can end into an outcome.
async fn call_run(
    store: &mut Store<GuestState>,
    task: &Task,
    invocation: &Invocation,
) -> Result<Outcome, SandboxError> {
    let called = task
        .call_run(
            &mut *store,
            &invocation.request,
            &invocation.args_json,
            &invocation.kwargs_json,
        )
        .await;
    Ok(match called {
        Ok(Ok(result)) if result.len() > invocation.limits.max_result_bytes => {
            Outcome::Aborted(Abort::ResultTooLarge {
                size: result.len(),
                limit: invocation.limits.max_result_bytes,
            })
        }
        Ok(Ok(result)) => Outcome::Returned(result),
        Ok(Err(task_error)) => Outcome::Errored(task_error),
        Err(err) => Outcome::Aborted(classify_failure(store.data(), err)?),
    })
}

/// Names a failed instantiation or call: one of the guest's limits, a trap, or (`Err`) a
/// failure of the host.
fn classify_failure(state: &GuestState, err: wasmtime::Error) -> Result<Abort, SandboxError> {
    if let Some(abort) = &state.interrupted {
        return Ok(abort.clone());
    }
    if state.memory.denied {
        return Ok(Abort::MemoryLimit {
            limit_bytes: state.memory.limit_bytes(),
        });
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => Ok(Abort::StackOverflow),
        Some(trap) => Ok(Abort::Trap(trap.to_string())),
        None => Err(SandboxError::Instantiate(err)),
    }
}

/// Compiles `bytes` with the core modules that share its memory linked into one (a Python
/// component's CPython libraries; see [`crate::link`]), so a fresh instance's function table
/// is filled lazily. A component the linker leaves alone, or whose linked form does not
/// compile, is compiled as it is: linking changes speed, never behaviour.
fn compile_linked<T>(
    bytes: &[u8],
    compile: impl Fn(&[u8]) -> wasmtime::Result<T>,
) -> Result<T, SandboxError> {
    match crate::link::link(bytes) {
        Ok(Some(linked)) => match compile(&linked.component) {
            Ok(compiled) => {
                tracing::debug!(
                    modules = linked.modules,
                    immortal_objects = linked.immortal_objects,
                    "compiled with its shared-memory modules linked into one"
                );
                return Ok(compiled);
            }
            Err(err) => {
                tracing::warn!(error = %err, "the linked component does not compile; compiling it as it is")
            }
        },
        Ok(None) => {}
        Err(err) => tracing::debug!(error = %err, "compiling the component's modules as they are"),
    }
    compile(bytes).map_err(SandboxError::Compile)
}
