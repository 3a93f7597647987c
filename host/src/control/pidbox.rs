//! Kombu's pidbox on the worker side (celery-worker-behaviour.md §3.1–§3.4): the entities
//! a worker listens on, decoding a request, deciding whether it is for this node
//! (destination, glob or pcre pattern), and the reply message.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::broker::{BroadcastExchange, BroadcastQueue, Delivery, ExchangeKind, Outgoing};

/// The control namespace (`control_exchange`).
pub const NAMESPACE: &str = "celery";

/// `celery.pidbox` and the worker's own queue on it: `<nodename>.celery.pidbox`, with
/// kombu's TTL (`control_queue_ttl` 300 s) and expiry (`control_queue_expires` 10 s).
pub fn pidbox_queue(nodename: &str) -> BroadcastQueue {
    BroadcastQueue {
        exchange: BroadcastExchange {
            name: format!("{NAMESPACE}.pidbox"),
            kind: ExchangeKind::Fanout,
            durable: false,
        },
        queue: format!("{nodename}.{NAMESPACE}.pidbox"),
        binding_key: String::new(),
        message_ttl: Some(Duration::from_secs(300)),
        expires: Some(Duration::from_secs(10)),
    }
}

/// Where a reply goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The reply exchange (`reply.celery.pidbox`).
    pub exchange: String,
    /// The client's routing key.
    pub routing_key: String,
    /// The request's ticket, which the reply carries in its headers.
    pub ticket: String,
}

/// A decoded control request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The command (`ping`, `revoke`, ...).
    pub method: String,
    /// Its keyword arguments.
    pub arguments: Map<String, Value>,
    /// Node names it is for; empty: everyone (unless a pattern says otherwise).
    pub destination: Vec<String>,
    /// A node name pattern and its matcher (`glob`, `pcre`).
    pub pattern: Option<(String, String)>,
    /// Where to reply; `None` for a cast (act, reply nothing).
    pub reply_to: Option<ReplyTo>,
    /// The `clock` header, when the client sent one.
    pub clock: Option<u64>,
}

/// Why a pidbox message is not a request this worker can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Only JSON requests are read (the client's `task_serializer` must be json).
    #[error("control request in {0:?} ignored: only application/json is read")]
    ContentType(String),
    /// The body is not the request object.
    #[error("malformed control request: {0}")]
    Malformed(String),
}

impl Request {
    /// Decodes a pidbox delivery.
    pub fn decode(delivery: &Delivery) -> Result<Request, RequestError> {
        if delivery.content_type != "application/json" {
            return Err(RequestError::ContentType(delivery.content_type.clone()));
        }
        let body: Value = serde_json::from_slice(&delivery.body)
            .map_err(|e| RequestError::Malformed(e.to_string()))?;
        let Value::Object(mut body) = body else {
            return Err(RequestError::Malformed("not an object".into()));
        };
        let method = match body.remove("method") {
            Some(Value::String(method)) => method,
            _ => return Err(RequestError::Malformed("no method".into())),
        };
        let arguments = match body.remove("arguments") {
            Some(Value::Object(arguments)) => arguments,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(RequestError::Malformed("arguments is not an object".into())),
        };
        let destination = match body.remove("destination") {
            Some(Value::Array(names)) => names
                .into_iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(name)) => vec![name],
            _ => Vec::new(),
        };
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_owned));
        let pattern = match (text(body.remove("pattern")), text(body.remove("matcher"))) {
            (Some(pattern), Some(matcher)) => Some((pattern, matcher)),
            _ => None,
        };
        let ticket = text(body.remove("ticket"));
        let reply_to = match (body.remove("reply_to"), ticket) {
            (Some(Value::Object(reply_to)), Some(ticket)) => {
                let field = |name: &str| reply_to.get(name).and_then(Value::as_str);
                match (field("exchange"), field("routing_key")) {
                    (Some(exchange), Some(routing_key)) => Some(ReplyTo {
                        exchange: exchange.to_owned(),
                        routing_key: routing_key.to_owned(),
                        ticket,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(Request {
            method,
            arguments,
            destination,
            pattern,
            reply_to,
            clock: delivery.headers.get("clock").and_then(Value::as_u64),
        })
    }

    /// kombu's `Node.handle_message` filter: a non-empty destination must name this node;
    /// otherwise a pattern must match it; otherwise everyone handles it. A matcher other
    /// than `glob` or `pcre` is "not for me" (Python fails on it and sends nothing).
    pub fn is_for(&self, nodename: &str) -> bool {
        if !self.destination.is_empty() {
            return self.destination.iter().any(|d| d == nodename);
        }
        match &self.pattern {
            None => true,
            Some((pattern, matcher)) => match matcher.as_str() {
                "glob" => glob_match(pattern, nodename),
                "pcre" => pcre_prefix_match(pattern, nodename),
                other => {
                    tracing::error!("Control command error: MatcherNotInstalled({other:?})");
                    false
                }
            },
        }
    }
}

/// The reply to a request: `{nodename: result}` as JSON with the ticket and a clock in
/// the headers.
pub fn reply_message(nodename: &str, result: Value, ticket: &str, clock: u64) -> Outgoing {
    let mut body = Map::new();
    body.insert(nodename.to_owned(), result);
    let mut headers = Map::new();
    headers.insert("ticket".into(), Value::from(ticket));
    headers.insert("clock".into(), Value::from(clock));
    Outgoing::json(Value::Object(body).to_string().into_bytes(), headers)
}

/// Python's `fnmatch.fnmatch` (case-sensitive on POSIX): `*`, `?`, `[seq]`, `[!seq]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_from(&pattern, &text)
}

fn glob_from(pattern: &[char], text: &[char]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some('*') => (0..=text.len()).any(|skip| glob_from(&pattern[1..], &text[skip..])),
        Some('?') => !text.is_empty() && glob_from(&pattern[1..], &text[1..]),
        Some('[') => match (class_end(pattern), text.first()) {
            (Some(end), Some(c)) => {
                class_matches(&pattern[1..end], *c) && glob_from(&pattern[end + 1..], &text[1..])
            }
            (Some(_), None) => false,
            // An unclosed `[` is a literal.
            (None, Some('[')) => glob_from(&pattern[1..], &text[1..]),
            (None, _) => false,
        },
        Some(c) => text.first() == Some(c) && glob_from(&pattern[1..], &text[1..]),
    }
}

/// The index of the `]` closing the class that starts `pattern` (a `]` right after `[` or
/// `[!` belongs to the class).
fn class_end(pattern: &[char]) -> Option<usize> {
    let mut i = 1;
    if pattern.get(i) == Some(&'!') {
        i += 1;
    }
    if pattern.get(i) == Some(&']') {
        i += 1;
    }
    (i..pattern.len()).find(|&j| pattern[j] == ']')
}

fn class_matches(class: &[char], c: char) -> bool {
    let (negated, class) = match class.first() {
        Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == '-' {
            found |= class[i] <= c && c <= class[i + 2];
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    found != negated
}

/// `re.match(pattern, nodename)` for the patterns control clients use: without a regex
/// engine, a pattern is matched as a literal prefix after `.*` is read as `*` and `.` as
/// `?` (glob), anchored at the start only.
fn pcre_prefix_match(pattern: &str, nodename: &str) -> bool {
    let pattern = pattern
        .strip_suffix('$')
        .map_or_else(|| format!("{}*", pcre_as_glob(pattern)), pcre_as_glob);
    glob_match(&pattern, nodename)
}

fn pcre_as_glob(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern
        .strip_prefix('^')
        .unwrap_or(pattern)
        .chars()
        .peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push('*');
            }
            '.' => out.push('?'),
            '\\' => {
                if let Some(escaped) = chars.next() {
                    out.push(escaped);
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{DeliveryInfo, Properties};
    use serde_json::json;

    fn delivery(body: Value) -> Delivery {
        Delivery {
            queue: "w1@vm.celery.pidbox".into(),
            body: body.to_string().into_bytes(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers: json!({"clock": 3, "expires": 0})
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into(),
            properties: Properties {
                delivery_tag: "t".into(),
                delivery_info: DeliveryInfo::default(),
                ..Properties::default()
            },
            redelivered: false,
        }
    }

    #[test]
    fn decodes_the_captured_ping() {
        let request = Request::decode(&delivery(json!({
            "method": "ping", "arguments": {}, "destination": null, "pattern": null,
            "matcher": null, "ticket": "b43567fa",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "a3ca3746"}
        })))
        .expect("a request");
        assert_eq!(request.method, "ping");
        assert!(request.destination.is_empty());
        assert_eq!(
            request.reply_to,
            Some(ReplyTo {
                exchange: "reply.celery.pidbox".into(),
                routing_key: "a3ca3746".into(),
                ticket: "b43567fa".into()
            })
        );
        assert_eq!(request.clock, Some(3));
        assert!(request.is_for("w1@vm"));
    }

    #[test]
    fn a_cast_has_no_reply_to() {
        let request = Request::decode(&delivery(json!({
            "method": "revoke", "arguments": {"task_id": "x"}, "destination": ["w1@vm"]
        })))
        .expect("a request");
        assert_eq!(request.reply_to, None);
        assert!(request.is_for("w1@vm"));
        assert!(!request.is_for("w2@vm"));
    }

    #[test]
    fn non_json_and_garbage_are_refused() {
        let mut pickled = delivery(json!({}));
        pickled.content_type = "application/x-python-serialize".into();
        assert!(matches!(
            Request::decode(&pickled),
            Err(RequestError::ContentType(_))
        ));
        assert!(matches!(
            Request::decode(&delivery(json!([1]))),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn patterns_follow_fnmatch_and_re_match() {
        let with = |pattern: &str, matcher: &str| Request {
            method: "ping".into(),
            arguments: Map::new(),
            destination: vec![],
            pattern: Some((pattern.into(), matcher.into())),
            reply_to: None,
            clock: None,
        };
        assert!(with("w1@*", "glob").is_for("w1@vm"));
        assert!(!with("w2@*", "glob").is_for("w1@vm"));
        assert!(with("w[0-9]@v?", "glob").is_for("w1@vm"));
        assert!(!with("w[!1]@vm", "glob").is_for("w1@vm"));
        assert!(
            with("w1", "pcre").is_for("w1@vm"),
            "re.match anchors at the start only"
        );
        assert!(with("w.@.*", "pcre").is_for("w1@vm"));
        assert!(!with("w1@vm$", "pcre").is_for("w1@vmx"));
        assert!(!with("x", "pcre").is_for("w1@vm"));
        assert!(!with("w1@vm", "nosuch").is_for("w1@vm"));
    }

    #[test]
    fn replies_are_keyed_by_nodename_with_the_ticket() {
        let out = reply_message("w1@vm", json!({"ok": "pong"}), "tick", 5);
        let body: Value = serde_json::from_slice(&out.body).expect("json");
        assert_eq!(body, json!({"w1@vm": {"ok": "pong"}}));
        assert_eq!(out.headers["ticket"], "tick");
        assert_eq!(out.headers["clock"], 5);
    }

    #[test]
    fn the_worker_queue_is_named_after_the_node() {
        let queue = pidbox_queue("w1@vm");
        assert_eq!(queue.queue, "w1@vm.celery.pidbox");
        assert_eq!(queue.exchange.name, "celery.pidbox");
        assert_eq!(queue.exchange.kind, ExchangeKind::Fanout);
    }
}
