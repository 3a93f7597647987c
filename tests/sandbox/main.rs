//! Sandbox tests: hostile and well-behaved guests built from WAT at test time, run through
//! the real sandbox, asserting the exact outcome of each.

#[path = "../support/mod.rs"]
mod support;

mod hotswap;
mod isolation;
mod limits;
mod link;
mod outcomes;
mod pool;
mod registry;
