//! Fleet deploy: one command sends a component through the broker and every celeriac
//! worker (or those named) installs it, or returns to the version it kept before.
//!
//! * [`wire`]: the request and reply messages, the exchanges and the size limits;
//! * `serve`: the worker side: hears its own queue on the deploy exchange, answers
//!   `received` at once, then unpacks, has the registry check the digest, write the file
//!   and swap it in, and answers `ok` or `error`;
//! * [`send`]: the sending side: publishes a request and collects the replies.
//!
//! The digest is the only gate: [`crate::registry::Registry::install`] loads nothing whose
//! SHA-256 differs from the one the request carries. It guards against corruption, not
//! against a sender with access to the broker, who can deploy whatever it likes (as it can
//! revoke tasks or shut workers down through the pidbox); `--without-deploy` turns the
//! listener off.

mod send;
mod serve;
pub mod wire;

pub use send::{Answers, Sent, send};
pub(super) use serve::serve;
pub use wire::{Action, MAX_COMPONENT_BYTES, MAX_PACKED_BYTES, Package, Reply, Status};
