//! celeriac: a Celery worker whose tasks are WebAssembly components.
//!
//! # Layout
//!
//! Modules in dependency order; each uses only those above it.
//!
//! * [`protocol`]: Celery task messages on the wire: decode, encode, serializers,
//!   compression. Pure: no I/O, no other celeriac module.
//! * [`broker`]: the `Broker` trait and its transports (kombu's Redis transport on the wire,
//!   RabbitMQ).
//! * [`backend`]: the `ResultBackend` trait, Celery's Redis result backend and its `rpc://`
//!   backend.
//! * [`connect`]: brokers and backends from URLs, and the enums that run the worker on any.
//! * [`url`]: broker and backend URL helpers shared by the transports; [`redis_url`]:
//!   Redis clients from Celery's `redis://` and `rediss://` URLs.
//! * [`sandbox`]: runs one task invocation in a fresh, limited wasmtime instance and reports
//!   an outcome. Knows nothing of brokers.
//! * [`registry`]: task name → component; loads a tasks directory, validates components,
//!   caches compiled artifacts on disk.
//! * [`worker`]: turns outcomes into Celery states and exceptions, and (with the broker
//!   issues) runs the consumer loop.
//! * [`control`]: beside the worker: monitoring events, heartbeats, remote control
//!   (pidbox) and fleet deploy; the worker reports its tasks into control's `Monitor`.
//!
//! The `celeriac` binary (`src/main.rs`, `src/cli/`) is the command line on top.
#![deny(missing_docs)]

pub mod backend;
pub mod broker;
pub mod connect;
pub mod control;
pub mod link;
pub mod protocol;
mod redis_batch;
pub mod redis_url;
pub mod registry;
pub mod sandbox;
pub mod url;
pub mod worker;
