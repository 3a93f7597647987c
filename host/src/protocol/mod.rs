//! Celery task messages on the wire: decoding what a client (or another worker) published
//! and encoding what this worker publishes (retries, callbacks, chain steps).
//!
//! `protocol` owns the bytes-to-values layer: content types and serializers (JSON in
//! kombu's dialect, msgpack, YAML; pickle refused), compressions, protocol v2 / v1 /
//! hybrid task messages, and the [`DecodeError`]s that tell the worker whether to ack or
//! reject a message it cannot use. It is pure: no I/O, no tokio, redis or lapin, and no
//! other celeriac module. Transports hand it plain bytes and headers (the Redis
//! transport base64-decodes its envelope first); the worker decides what to run and
//! where results go.
//!
//! * [`content`]: serializers by content type and compressions by header value.
//! * [`kombu_json`]: lenient kombu JSON (NaN, Infinity, big integers) without loss.
//! * [`message`]: [`decode`] a delivery into a [`TaskMessage`].
//! * [`encode`]: build an outgoing v2 message from an [`OutgoingTask`].
//! * [`headers`]: a delivery's [`Headers`], task keys held apart from the rest.
//! * [`signature`]: canvas signature dicts and the messages they become.
//! * [`timestamp`]: ISO 8601 `eta`/`expires` values.
//! * [`yaml`], [`yaml_timestamp`]: YAML bodies as `yaml.safe_load` reads them.

pub mod content;
pub mod encode;
pub mod headers;
pub mod kombu_json;
pub mod message;
pub mod python_repr;
pub mod signature;
pub mod timestamp;
pub mod yaml;
pub mod yaml_timestamp;

pub use content::{Compression, ContentType, Serializer};
pub use encode::{EncodedMessage, OutgoingProperties, OutgoingTask};
pub use headers::Headers;
pub use message::{Embed, ProtocolVersion, RawMessage, TaskMessage, TimeLimit, decode};
pub use signature::{Route, Sender, Signature, SignatureError};
pub use timestamp::Timestamp;

/// Why a delivery could not become a [`TaskMessage`]. Every variant names the message id
/// when it was known at the point of failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is pickled. Celery's default `accept_content` refuses it too.
    #[error(
        "message {id} refused: content type {content_type} (pickle) is never accepted, \
         since unpickling runs arbitrary code and celeriac runs no Python objects; set \
         task_serializer='json' (and accept_content=['json']) on the client",
        id = display_id(message_id)
    )]
    PickleRefused {
        /// The task id, when the headers carried one.
        message_id: Option<String>,
        /// The content type as received.
        content_type: String,
    },
    /// A content type no serializer handles.
    #[error(
        "message {id} refused: unknown content type {content_type:?} \
         (accepted: application/json, application/x-msgpack, application/x-yaml)",
        id = display_id(message_id)
    )]
    UnknownContentType {
        /// The task id, when the headers carried one.
        message_id: Option<String>,
        /// The content type as received.
        content_type: String,
    },
    /// The `compression` header names no known compression (or is not a string).
    #[error(
        "message {id} dropped: unknown compression {compression:?}",
        id = display_id(message_id)
    )]
    UnknownCompression {
        /// The task id, when the headers carried one.
        message_id: Option<String>,
        /// The header value, as JSON text.
        compression: String,
    },
    /// The body did not decompress.
    #[error(
        "message {id} dropped: body does not decompress as {compression}: {source}",
        id = display_id(message_id),
        compression = compression.mime_type()
    )]
    Decompress {
        /// The task id, when the headers carried one.
        message_id: Option<String>,
        /// The compression named by the header.
        compression: Compression,
        /// The decompressor's error.
        source: std::io::Error,
    },
    /// The body did not parse with the serializer of its content type.
    #[error(
        "message {id} dropped: body is not valid {content_type}: {reason}",
        id = display_id(message_id)
    )]
    Deserialize {
        /// The task id, when the headers carried one.
        message_id: Option<String>,
        /// The content type of the body.
        content_type: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Neither protocol v2 (`task` header) nor v1 (a body dict with `task`).
    #[error(
        "message {id} refused: not a Celery task message ({reason})",
        id = display_id(message_id)
    )]
    UnknownMessage {
        /// The correlation id, when the properties carried one.
        message_id: Option<String>,
        /// What was found instead.
        reason: &'static str,
    },
    /// A task message whose fields are malformed (Celery's `InvalidTaskError`).
    #[error(
        "message {id} refused: invalid task message for {task}: field {field} {reason}",
        id = display_id(message_id),
        task = task.as_deref().unwrap_or("<unknown task>")
    )]
    InvalidTask {
        /// The task id, when known.
        message_id: Option<String>,
        /// The task name, when known.
        task: Option<String>,
        /// The header or body field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What the worker must do with a message that failed to decode, as Celery does
/// (`celery/worker/consumer/consumer.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Ack it: it is gone (Celery's `on_decode_error`). Nothing is stored.
    AckAndDrop,
    /// Reject it without requeue (Celery's `on_invalid_task`, `on_unknown_message`).
    /// Nothing is stored.
    RejectWithoutRequeue,
}

impl DecodeError {
    /// How the worker disposes of the message.
    pub fn disposition(&self) -> Disposition {
        match self {
            DecodeError::UnknownCompression { .. }
            | DecodeError::Decompress { .. }
            | DecodeError::Deserialize { .. } => Disposition::AckAndDrop,
            DecodeError::PickleRefused { .. }
            | DecodeError::UnknownContentType { .. }
            | DecodeError::UnknownMessage { .. }
            | DecodeError::InvalidTask { .. } => Disposition::RejectWithoutRequeue,
        }
    }

    /// The message (task) id, when it was known.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            DecodeError::PickleRefused { message_id, .. }
            | DecodeError::UnknownContentType { message_id, .. }
            | DecodeError::UnknownCompression { message_id, .. }
            | DecodeError::Decompress { message_id, .. }
            | DecodeError::Deserialize { message_id, .. }
            | DecodeError::UnknownMessage { message_id, .. }
            | DecodeError::InvalidTask { message_id, .. } => message_id.as_deref(),
        }
    }
}

fn display_id(message_id: &Option<String>) -> &str {
    message_id.as_deref().unwrap_or("<no id>")
}
