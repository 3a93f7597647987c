//! A sandbox, prepared components and invocations for tests, plus a recorder of what a
//! task reports.

use std::sync::{Arc, Mutex};

use celeriac::sandbox::{
    DeliveryInfo, EngineOptions, Invocation, Isolation, LogLevel, Prepared, Request, Sandbox,
    SandboxLimits, TaskEvents, WasiPolicy,
};

/// A sandbox with the default engine options.
pub fn sandbox() -> Sandbox {
    Sandbox::new(&EngineOptions::default()).expect("the default engine options are valid")
}

/// Compiles and prepares component bytes with no grants and a fresh instance per task.
pub fn prepare(sandbox: &Sandbox, component: &[u8]) -> Prepared {
    prepare_with(sandbox, component, WasiPolicy::default(), Isolation::Fresh)
}

/// Compiles and prepares component bytes with a policy and an isolation mode.
pub fn prepare_with(
    sandbox: &Sandbox,
    component: &[u8],
    policy: WasiPolicy,
    isolation: Isolation,
) -> Prepared {
    let compiled = sandbox.compile(component).expect("test component compiles");
    sandbox
        .prepare(&compiled, policy, isolation)
        .expect("test component fits the world")
}

/// Everything a task reported through its context.
#[derive(Default)]
pub struct Recorder {
    /// `(level, message)` of each log line.
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    /// `(state, meta)` of each update.
    pub states: Mutex<Vec<(String, String)>>,
}

impl TaskEvents for Recorder {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }
    fn update_state(&self, state: &str, meta_json: &str) {
        self.states
            .lock()
            .unwrap()
            .push((state.to_string(), meta_json.to_string()));
    }
}

/// A request as a broker delivery would carry it.
pub fn request(task: &str) -> Request {
    Request {
        id: "test-task-id".into(),
        task: task.into(),
        retries: 0,
        root_id: Some("test-task-id".into()),
        parent_id: None,
        group: None,
        group_index: None,
        eta: None,
        expires: None,
        hostname: "celeriac@test".into(),
        origin: None,
        correlation_id: None,
        reply_to: None,
        delivery_info: DeliveryInfo {
            exchange: String::new(),
            routing_key: "celery".into(),
            priority: None,
            redelivered: false,
        },
        is_eager: false,
        inline_errback: false,
    }
}

/// An invocation of `task` and the recorder that receives its reports.
pub fn invocation(
    task: &str,
    args: &str,
    kwargs: &str,
    limits: SandboxLimits,
) -> (Invocation, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let invocation = Invocation {
        request: request(task),
        args_json: args.into(),
        kwargs_json: kwargs.into(),
        limits,
        events: recorder.clone(),
    };
    (invocation, recorder)
}
