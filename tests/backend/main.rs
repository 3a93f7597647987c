//! Result backends against real servers.
//!
//! * [`conformance`]: the promises every result backend keeps, one `async fn` each,
//!   instantiated per backend by [`backend_suite!`].
//! * [`redis_backend`]: what only the Redis backend promises (TTLs, PUBLISH, key names).
//!
//! The server URL comes from `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`); an unreachable server fails the tests, naming the URL.
//! Every test uses fresh uuid task ids and never flushes the database.

mod conformance;
mod redis_backend;
