//! Result backends against real servers.
//!
//! * [`conformance`]: the promises every result backend keeps, one `async fn` each,
//!   instantiated per backend by [`backend_suite!`].
//! * [`redis_backend`]: what only the Redis backend promises (TTLs, PUBLISH, key names).
//! * [`redis_chord`]: the Redis chord join.
//! * [`rpc_backend`]: Celery's `rpc://` backend, replies over RabbitMQ.
//!
//! The server URLs come from `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`) and `CELERIAC_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672//`); an unreachable server fails the tests, naming
//! the URL. Every test uses fresh uuid task ids and queue names, and never flushes
//! anything.

#[path = "../support/amqp.rs"]
mod amqp_support;

mod conformance;
mod redis_backend;
mod redis_chord;
mod rpc_backend;
