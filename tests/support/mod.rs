//! Support code shared by the integration-test targets (`#[path = "../support/mod.rs"] mod support;`).
#![allow(dead_code)]

pub mod celeriac_cli;
pub mod guests;
pub mod harness;
pub mod hotswap;
pub mod redis_worker;
