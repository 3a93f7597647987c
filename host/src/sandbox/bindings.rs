//! Host bindings generated from `wit/task.wit`.
//!
//! Imports (`context`) are synchronous: they only hand data to the host and never wait.
//! Exports are called asynchronously so that a running guest yields to tokio at every epoch
//! tick instead of pinning a runtime thread.

wasmtime::component::bindgen!({
    world: "task",
    path: "../wit",
    exports: { default: async },
    additional_derives: [PartialEq],
});

pub use self::celeriac::task::context;
pub use self::celeriac::task::types;
