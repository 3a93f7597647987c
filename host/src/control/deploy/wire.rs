//! The deploy messages on the wire: the exchanges, the size limits, a request (a packed
//! component to install, or a rollback) and a worker's reply, each with its encoding and
//! decoding. No I/O.
//!
//! A request is a broadcast message on [`DEPLOY_EXCHANGE`]: its body is the component,
//! zstd-compressed (nothing for a rollback), and its headers say what to do:
//! `celeriac-deploy` (the wire version, 1), `method` (`install` or `rollback`), `file`,
//! `digest` and `size` (install), `name` (rollback), `destination` (node names; empty:
//! every worker), `reply-to` (the routing key of the sender's replies) and `ticket`.
//! A reply is a JSON object published on [`REPLY_EXCHANGE`] with the request's `reply-to`
//! as its routing key.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::broker::{BroadcastExchange, BroadcastQueue, Delivery, ExchangeKind, Outgoing};
use crate::registry::digest_of;

/// The fanout exchange deploy requests travel on. Only celeriac workers bind a queue to it,
/// so Python workers sharing the broker never receive a component they cannot use.
pub const DEPLOY_EXCHANGE: &str = "celeriac.deploy";

/// The topic exchange replies travel on, routed by the sender's `reply-to` key.
pub const REPLY_EXCHANGE: &str = "celeriac.deploy.reply";

/// The most compressed bytes one request carries: 12 MiB. It keeps the message under
/// RabbitMQ's default `max_message_size` (16 MiB) and, base64-encoded in kombu's Redis
/// envelope (×4/3), under Redis' `client-output-buffer-limit pubsub` hard limit (32 MB).
pub const MAX_PACKED_BYTES: usize = 12 << 20;

/// The largest component a request may unpack to: 64 MiB, so a small message cannot
/// expand into an arbitrarily large allocation on every worker.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// zstd level for packing: the 18 MB Python example shrinks to about a third in well under a
/// second; higher levels cost seconds for a few percent.
const COMPRESSION_LEVEL: i32 = 9;

/// The version of this wire format, in the `celeriac-deploy` header.
const WIRE_VERSION: u64 = 1;

/// How long a request waits in a worker's queue before RabbitMQ drops it: a deploy that
/// old has been given up on by its sender.
const REQUEST_TTL: Duration = Duration::from_secs(60);

/// How long a worker's (or a sender's) queue outlives its consumer (kombu's pidbox value).
const QUEUE_EXPIRES: Duration = Duration::from_secs(10);

/// Why a deploy message cannot be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The component is larger than a worker accepts.
    #[error("{file} is {size} bytes; the most a deploy installs is {max} bytes")]
    ComponentTooLarge {
        /// The component file name.
        file: String,
        /// Its size.
        size: usize,
        /// [`MAX_COMPONENT_BYTES`].
        max: usize,
    },
    /// The component does not compress enough to fit in one message.
    #[error(
        "{file} compresses to {size} bytes; the most one deploy message carries is {max} bytes"
    )]
    PackedTooLarge {
        /// The component file name.
        file: String,
        /// Its compressed size.
        size: usize,
        /// [`MAX_PACKED_BYTES`].
        max: usize,
    },
    /// Compressing or decompressing failed, or the bytes are not the size announced.
    #[error("{file}: {message}")]
    Packing {
        /// The component file name.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A message on the deploy or reply exchange is not one this version reads.
    #[error("malformed deploy message: {0}")]
    Malformed(String),
}

/// A component packed for the wire: its name, digest and size, and its bytes compressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The file name it is installed under in each worker's tasks directory (`NAME.wasm`).
    pub file: String,
    /// `sha256:<hex>` of the uncompressed component, which each worker checks before
    /// loading it.
    pub digest: String,
    /// The uncompressed size.
    pub size: usize,
    /// The zstd-compressed component.
    pub compressed: Vec<u8>,
}

impl Package {
    /// Digests and compresses `component` to be installed as `file`. CPU-bound: call it off
    /// the async runtime.
    pub fn pack(file: &str, component: &[u8]) -> Result<Package, WireError> {
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(WireError::ComponentTooLarge {
                file: file.to_owned(),
                size: component.len(),
                max: MAX_COMPONENT_BYTES,
            });
        }
        let compressed = zstd::bulk::compress(component, COMPRESSION_LEVEL).map_err(|err| {
            WireError::Packing {
                file: file.to_owned(),
                message: format!("cannot compress: {err}"),
            }
        })?;
        if compressed.len() > MAX_PACKED_BYTES {
            return Err(WireError::PackedTooLarge {
                file: file.to_owned(),
                size: compressed.len(),
                max: MAX_PACKED_BYTES,
            });
        }
        Ok(Package {
            file: file.to_owned(),
            digest: digest_of(component),
            size: component.len(),
            compressed,
        })
    }

    /// The component, decompressed into at most the announced size (itself at most
    /// [`MAX_COMPONENT_BYTES`]). Its digest is not checked here: the registry checks it
    /// before loading. CPU-bound: call it off the async runtime.
    pub fn unpack(&self) -> Result<Vec<u8>, WireError> {
        let packing = |message: String| WireError::Packing {
            file: self.file.clone(),
            message,
        };
        if self.size > MAX_COMPONENT_BYTES {
            return Err(WireError::ComponentTooLarge {
                file: self.file.clone(),
                size: self.size,
                max: MAX_COMPONENT_BYTES,
            });
        }
        let component = zstd::bulk::decompress(&self.compressed, self.size)
            .map_err(|err| packing(format!("cannot decompress: {err}")))?;
        if component.len() != self.size {
            return Err(packing(format!(
                "unpacks to {} bytes, not the {} announced",
                component.len(),
                self.size
            )));
        }
        Ok(component)
    }
}

/// What a request asks each worker to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install this component (through [`crate::registry::Registry::install`]).
    Install(Package),
    /// Go back to the previous version kept of a component file (`tasks.wasm`) or of the
    /// file serving a task name ([`crate::registry::Registry::rollback`]).
    Rollback {
        /// The file or task name.
        name: String,
    },
}

impl Action {
    /// A short description for log lines: `install tasks.wasm (sha256:…)`, `rollback x`.
    pub fn describe(&self) -> String {
        match self {
            Action::Install(package) => format!("install {} ({})", package.file, package.digest),
            Action::Rollback { name } => format!("rollback {name}"),
        }
    }
}

/// A deploy request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// The node names it is for; empty: every celeriac worker on the broker.
    pub destination: Vec<String>,
    /// The routing key replies go to on [`REPLY_EXCHANGE`].
    pub reply_to: String,
    /// Identifies this request in the replies.
    pub ticket: String,
}

impl Request {
    /// Whether the worker `nodename` should carry it out.
    pub fn is_for(&self, nodename: &str) -> bool {
        self.destination.is_empty() || self.destination.iter().any(|name| name == nodename)
    }

    /// The broadcast message.
    pub fn encode(&self) -> Outgoing {
        let mut headers = Map::new();
        headers.insert("celeriac-deploy".into(), Value::from(WIRE_VERSION));
        headers.insert("reply-to".into(), Value::from(self.reply_to.as_str()));
        headers.insert("ticket".into(), Value::from(self.ticket.as_str()));
        headers.insert("destination".into(), Value::from(self.destination.clone()));
        let body = match &self.action {
            Action::Install(package) => {
                headers.insert("method".into(), Value::from("install"));
                headers.insert("file".into(), Value::from(package.file.as_str()));
                headers.insert("digest".into(), Value::from(package.digest.as_str()));
                headers.insert("size".into(), Value::from(package.size));
                package.compressed.clone()
            }
            Action::Rollback { name } => {
                headers.insert("method".into(), Value::from("rollback"));
                headers.insert("name".into(), Value::from(name.as_str()));
                Vec::new()
            }
        };
        Outgoing {
            body,
            content_type: "application/zstd".to_owned(),
            content_encoding: "binary".to_owned(),
            headers,
            ..Outgoing::default()
        }
    }

    /// Reads a message heard on the deploy exchange.
    pub fn decode(delivery: Delivery) -> Result<Request, WireError> {
        let headers = &delivery.headers;
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| WireError::Malformed(format!("no {name:?} header")))
        };
        match headers.get("celeriac-deploy").and_then(Value::as_u64) {
            Some(WIRE_VERSION) => {}
            other => {
                return Err(WireError::Malformed(format!(
                    "wire version {other:?}; this worker reads {WIRE_VERSION}"
                )));
            }
        }
        let destination = match headers.get("destination") {
            Some(Value::Array(names)) => names
                .iter()
                .map(|name| {
                    name.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| WireError::Malformed("a destination is not a string".into()))
                })
                .collect::<Result<_, _>>()?,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(WireError::Malformed("destination is not a list".into())),
        };
        let action = match text("method")?.as_str() {
            "install" => {
                let size = headers
                    .get("size")
                    .and_then(Value::as_u64)
                    .and_then(|size| usize::try_from(size).ok())
                    .ok_or_else(|| WireError::Malformed("no \"size\" header".into()))?;
                Action::Install(Package {
                    file: text("file")?,
                    digest: text("digest")?,
                    size,
                    compressed: delivery.body,
                })
            }
            "rollback" => Action::Rollback {
                name: text("name")?,
            },
            other => return Err(WireError::Malformed(format!("unknown method {other:?}"))),
        };
        Ok(Request {
            action,
            destination,
            reply_to: text("reply-to")?,
            ticket: text("ticket")?,
        })
    }
}

/// Where a worker stands with a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It heard the request and is carrying it out; a final reply follows.
    Received,
    /// The component serves now.
    Ok,
    /// It refused or failed; what served before keeps serving.
    Error,
}

/// A worker's reply to a request: first `received`, then `ok` or `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The worker's node name.
    pub nodename: String,
    /// The request's ticket.
    pub ticket: String,
    /// Where it stands.
    pub status: Status,
    /// The component file concerned (what the request named, until it is known).
    pub file: String,
    /// The digest: the serving component's when ok, else the one the request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The serving component's version, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The task names it serves, when ok.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Why it failed, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// The reply message (JSON).
    pub fn encode(&self) -> Outgoing {
        // A struct of strings always serializes.
        Outgoing::json(serde_json::to_vec(self).unwrap_or_default(), Map::new())
    }

    /// Reads a message heard on the reply exchange.
    pub fn decode(delivery: &Delivery) -> Result<Reply, WireError> {
        serde_json::from_slice(&delivery.body).map_err(|err| WireError::Malformed(err.to_string()))
    }

    /// Whether this is a final answer (ok or error) rather than a receipt.
    pub fn is_final(&self) -> bool {
        self.status != Status::Received
    }
}

/// The exchange requests are published on; it reaches every queue bound to it.
pub fn request_exchange() -> BroadcastExchange {
    BroadcastExchange {
        name: DEPLOY_EXCHANGE.to_owned(),
        kind: ExchangeKind::Fanout,
        durable: false,
    }
}

/// The reply exchange.
pub fn reply_exchange() -> BroadcastExchange {
    BroadcastExchange {
        name: REPLY_EXCHANGE.to_owned(),
        kind: ExchangeKind::Topic,
        durable: false,
    }
}

/// The worker's own queue on the deploy exchange, `<nodename>.celeriac.deploy`, like its
/// pidbox queue.
pub fn worker_queue(nodename: &str) -> BroadcastQueue {
    BroadcastQueue {
        exchange: request_exchange(),
        queue: format!("{nodename}.{DEPLOY_EXCHANGE}"),
        binding_key: String::new(),
        message_ttl: Some(REQUEST_TTL),
        expires: Some(QUEUE_EXPIRES),
    }
}

/// The sender's queue for the replies routed by `reply_to`.
pub fn reply_queue(reply_to: &str) -> BroadcastQueue {
    BroadcastQueue {
        exchange: reply_exchange(),
        queue: format!("{REPLY_EXCHANGE}.{reply_to}"),
        binding_key: reply_to.to_owned(),
        message_ttl: None,
        expires: Some(QUEUE_EXPIRES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Properties;

    fn delivered(message: Outgoing) -> Delivery {
        Delivery {
            queue: "w1@vm.celeriac.deploy".into(),
            body: message.body,
            content_type: message.content_type,
            content_encoding: message.content_encoding,
            headers: message.headers.into(),
            properties: Properties::default(),
            redelivered: false,
        }
    }

    #[test]
    fn a_packed_component_round_trips_with_its_digest() {
        let component = b"\0asm component bytes ".repeat(1000);
        let package = Package::pack("echo.wasm", &component).expect("packs");
        assert_eq!(package.digest, digest_of(&component));
        assert!(package.compressed.len() < component.len() / 10);
        let request = Request {
            action: Action::Install(package),
            destination: vec!["w1@vm".into()],
            reply_to: "r".into(),
            ticket: "t".into(),
        };
        let decoded = Request::decode(delivered(request.encode())).expect("decodes");
        assert_eq!(decoded, request);
        assert!(decoded.is_for("w1@vm"));
        assert!(!decoded.is_for("w2@vm"));
        let Action::Install(package) = decoded.action else {
            panic!("an install");
        };
        assert_eq!(package.unpack().expect("unpacks"), component);
    }

    #[test]
    fn a_rollback_for_everyone_round_trips() {
        let request = Request {
            action: Action::Rollback {
                name: "echo.wasm".into(),
            },
            destination: vec![],
            reply_to: "r".into(),
            ticket: "t".into(),
        };
        let decoded = Request::decode(delivered(request.encode())).expect("decodes");
        assert_eq!(decoded, request);
        assert!(decoded.is_for("anyone@vm"));
    }

    #[test]
    fn a_package_that_lies_about_its_size_is_refused_without_a_large_allocation() {
        let mut package = Package::pack("x.wasm", &[7u8; 4096]).expect("packs");
        package.size = 16;
        assert!(matches!(package.unpack(), Err(WireError::Packing { .. })));
        package.size = MAX_COMPONENT_BYTES + 1;
        assert!(matches!(
            package.unpack(),
            Err(WireError::ComponentTooLarge { .. })
        ));
        package.size = 8192;
        assert!(matches!(package.unpack(), Err(WireError::Packing { .. })));
    }

    #[test]
    fn oversized_components_are_refused_before_sending() {
        let big = vec![0u8; MAX_COMPONENT_BYTES + 1];
        assert!(matches!(
            Package::pack("big.wasm", &big),
            Err(WireError::ComponentTooLarge { .. })
        ));
    }

    #[test]
    fn other_messages_are_not_requests() {
        let mut message = Request {
            action: Action::Rollback { name: "x".into() },
            destination: vec![],
            reply_to: "r".into(),
            ticket: "t".into(),
        }
        .encode();
        message
            .headers
            .insert("celeriac-deploy".into(), Value::from(2));
        assert!(matches!(
            Request::decode(delivered(message.clone())),
            Err(WireError::Malformed(_))
        ));
        message
            .headers
            .insert("celeriac-deploy".into(), Value::from(1));
        message
            .headers
            .insert("method".into(), Value::from("format"));
        assert!(matches!(
            Request::decode(delivered(message)),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply {
            nodename: "w1@vm".into(),
            ticket: "t".into(),
            status: Status::Ok,
            file: "echo.wasm".into(),
            digest: Some("sha256:ab".into()),
            version: Some("v2".into()),
            tasks: vec!["tasks.echo".into()],
            error: None,
        };
        let decoded = Reply::decode(&delivered(reply.encode())).expect("decodes");
        assert_eq!(decoded, reply);
        assert!(decoded.is_final());
        let body: Value = serde_json::from_slice(&reply.encode().body).expect("json");
        assert_eq!(body["status"], "ok");
        assert!(body.get("error").is_none());
    }
}
