//! The `celeriac` binary: every example task, in Python and in Rust, through `celeriac run`,
//! plus the filesystem policy.

#[path = "../support/mod.rs"]
mod support;

mod build;
mod examples;
mod hotswap;
mod policy;
