//! The `celeriac` binary: every example task, in Python and in Rust, through `celeriac run`,
//! plus the filesystem policy, hot swap and fleet deploy.

#[path = "../support/amqp.rs"]
mod amqp_support;
#[path = "../support/mod.rs"]
mod support;

mod build;
mod deploy;
mod examples;
mod hotswap;
mod policy;
