//! Broker transports against real servers: one conformance suite per transport
//! (`conformance.rs`, instantiated by `broker_suite!`), plus Redis wire details (`redis.rs`).

mod conformance;
mod redis;
