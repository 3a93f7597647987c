//! Write Celery tasks in Rust that run inside the celeriac worker's WebAssembly sandbox.
//!
//! A task module is a `cdylib` crate built for `wasm32-wasip2`. Each task is a plain function
//! marked with [`#[task]`](macro@task); [`export_tasks!`] then lists the functions the
//! component serves and exports them through the `celeriac:task` WIT world (`wit/task.wit`,
//! compiled into this crate, so a task crate needs no WIT file of its own).
//!
//! ```no_run
//! use celeriac_guest::{export_tasks, task, Task, TaskError, RetryOptions};
//!
//! #[task(name = "tasks.add")]
//! fn add(x: i64, y: i64) -> i64 { x + y }
//!
//! #[task(name = "tasks.fetch", max_retries = 5, autoretry_for = ["ConnectionError"])]
//! fn fetch(task: &Task, key: String, default: Option<String>) -> Result<String, TaskError> {
//!     task.info(format!("looking up {key}"));
//!     default.ok_or_else(|| task.retry_with(RetryOptions { countdown: Some(2.0), ..Default::default() }))
//! }
//!
//! export_tasks!(add, fetch);
//! ```
//!
//! # How calls are bound
//!
//! Celery sends `args` (a JSON array) and `kwargs` (a JSON object). Parameters are filled the
//! way Python fills them: by position from `args`, then by name from `kwargs`. A missing
//! `Option<_>` parameter is `None`; a missing required one, an unknown keyword, a value given
//! twice or too many positional arguments raise `TypeError` with Python's wording. Each
//! value is deserialized with serde into the parameter's (owned) type; a value that does not
//! fit raises `TypeError` too. Parameters typed [`Args`] and [`Kwargs`] collect the rest, as
//! `*args` and `**kwargs` do. A first parameter `task: &Task` makes the task *bound*
//! (Celery's `bind=True`).
//!
//! # Errors, retries and panics
//!
//! A task returns a value (any `Serialize` type, sent back as JSON) or a
//! `Result<T, E>` whose error converts into [`TaskError`]: a raised [`Exception`], a retry, a
//! reject or an ignore. [`Task::retry_with`] applies Celery's `max_retries` rule, and
//! `autoretry_for` with `retry_backoff`/`retry_jitter` is applied by this crate after the
//! function returns, as Celery applies it inside the task.
//!
//! `wasm32-wasip2` builds with `panic = "abort"`, so a panic cannot be caught and turned into
//! an exception: the panic message is logged at CRITICAL through the context import, then
//! the instance traps and the worker stores `WorkerLostError`. Return a [`TaskError`]
//! instead of panicking wherever the failure is expected.
//!
//! # Layout
//!
//! - `bindings`: the `wit_bindgen::generate!` output for the `task` world (hidden).
//! - `error`: [`TaskError`], [`Exception`], [`RetryOptions`].
//! - `exceptions`: Python names for Rust failures (io errors, the builtin class tree).
//! - `args`: binding Celery `args`/`kwargs` to parameters.
//! - `options`: the static description of a task the `#[task]` macro generates.
//! - `retry`: Celery's retry rules (max retries, backoff, jitter, autoretry matching).
//! - `task`: [`Task`], what a bound task sees of its request and the host.
//! - `dispatch`: the `tasks`/`run` exports behind [`export_tasks!`].
#![deny(missing_docs)]

mod args;
mod dispatch;
mod error;
mod exceptions;
mod options;
mod retry;
mod task;

/// The bindings `wit-bindgen` generates for the `task` world of `wit/task.wit`.
///
/// Public only because the export macro expands in the task crate and must reach the
/// generated glue; nothing in here is part of the SDK's API.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../../../wit",
        additional_derives: [PartialEq],
        // The export macro runs in the user's crate: it must be `pub`, and it must find these
        // bindings through `$crate` so the user's crate needs neither the WIT file nor a
        // `wit-bindgen` dependency of its own.
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "$crate::bindings",
    });
}

pub use celeriac_guest_macros::{export_tasks, task};
pub use error::{Exception, RetryOptions, TaskError, TaskResult};
pub use task::Task;

/// Celery's `self.request`, as the host passes it to `run`.
pub use bindings::celeriac::task::types::Request;

/// Where the message came from (Celery's `request.delivery_info`).
pub use bindings::celeriac::task::types::DeliveryInfo;

/// Log levels of [`Task::log`], mapped by the host onto Python's logging levels.
pub use bindings::celeriac::task::types::LogLevel;

/// Re-exported so that task crates can build JSON values (`celeriac_guest::serde_json::json!`)
/// with the same version the SDK uses.
pub use serde_json;

/// A parameter of this type receives the positional arguments not bound to other
/// parameters, like Python's `*args`. With no other parameters it receives all of them.
pub type Args = Vec<serde_json::Value>;

/// A parameter of this type receives the keyword arguments not bound to other parameters,
/// like Python's `**kwargs`.
pub type Kwargs = serde_json::Map<String, serde_json::Value>;

/// What the macros expand to; not part of the API and may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::{Bound, Param};
    pub use crate::bindings::Guest;
    pub use crate::bindings::celeriac::task::types as wit;
    pub use crate::dispatch::{names_unique, run, tasks, to_json};
    pub use crate::options::{StaticOptions, TaskSpec};

    /// A request as a worker would send it, for the SDK's own tests.
    pub fn sample_request(task: &str, retries: u32) -> wit::Request {
        wit::Request {
            id: "T-1".to_owned(),
            task: task.to_owned(),
            retries,
            root_id: None,
            parent_id: None,
            group: None,
            group_index: None,
            eta: None,
            expires: None,
            hostname: "celery@test".to_owned(),
            origin: None,
            correlation_id: None,
            reply_to: None,
            delivery_info: wit::DeliveryInfo {
                exchange: String::new(),
                routing_key: "celery".to_owned(),
                priority: None,
                redelivered: false,
            },
            is_eager: false,
            inline_errback: false,
        }
    }
}
