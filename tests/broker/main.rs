//! Broker transports against real servers: one conformance suite per transport
//! (`conformance.rs`, instantiated by `broker_suite!`), plus Redis wire details (`redis.rs`)
//! and RabbitMQ's (`amqp.rs`).

#[path = "../support/amqp.rs"]
mod amqp_support;

mod amqp;
mod conformance;
mod redis;
mod reply_cutter;
