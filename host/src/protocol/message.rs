//! Decoding one delivery into a [`TaskMessage`]: protocol v2, v1 and the hybrid of both
//! (spec §2.5–§2.7).
//!
//! Order: content type → decompress (`compression` header) → deserialize → recognise the
//! protocol → validate fields. `args_json`/`kwargs_json` are the exact text the client
//! wrote when the message is a JSON v2 message; otherwise they are written from the
//! decoded values by [`to_kombu_json`] (msgpack/YAML bytes appear as kombu bytes markers,
//! non-finite floats and huge integers as bare tokens, see [`kombu_json`](super::kombu_json)).

use serde_json::{Map, Value};

use super::DecodeError;
use super::content::{Compression, ContentType, Serializer};
use super::headers::{Headers, TASK_KEYS};
use super::kombu_json::{to_kombu_json, top_level_array_items};
use super::timestamp::Timestamp;

/// One delivery as a transport hands it over, with transport framing already removed.
#[derive(Clone, Copy, Debug)]
pub struct RawMessage<'a> {
    /// The body, still compressed if the `compression` header says so.
    pub body: &'a [u8],
    /// `content-type` (Redis envelope) / `content_type` (AMQP property).
    pub content_type: &'a str,
    /// `content-encoding`; informational here (JSON and YAML must be UTF-8).
    pub content_encoding: &'a str,
    /// The task headers: the Redis envelope's `headers`, AMQP's application headers.
    pub headers: &'a Headers,
    /// The `correlation_id` property.
    pub correlation_id: Option<&'a str>,
    /// The `reply_to` property.
    pub reply_to: Option<&'a str>,
    /// The `priority` property.
    pub priority: Option<u8>,
}

/// Which wire format the message used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// Protocol 2: metadata in headers, body `[args, kwargs, embed]`.
    V2,
    /// Protocol 1: metadata and arguments in one body dict, no headers.
    V1,
    /// A `task` header with a v1-style body dict (Celery's `hybrid_to_proto2`).
    Hybrid,
}

/// `timelimit`: hard first, then soft (spec §2.9), in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeLimit {
    /// The hard limit: the task is killed.
    pub hard: Option<f64>,
    /// The soft limit: the task is told.
    pub soft: Option<f64>,
}

/// The work-flow carried by a message (spec §2.3); signatures stay raw JSON dicts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embed {
    /// `link`: signatures applied on success.
    pub callbacks: Vec<Value>,
    /// `link_error`: signatures applied on failure.
    pub errbacks: Vec<Value>,
    /// Remaining chain steps, **next step last**.
    pub chain: Vec<Value>,
    /// The chord body this task is a header part of.
    pub chord: Option<Value>,
}

/// A decoded task message: everything the worker needs, whatever the protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMessage {
    /// The wire format it came in.
    pub protocol: ProtocolVersion,
    /// The task id.
    pub id: String,
    /// The registered task name to run.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// `args` as kombu JSON text, for the guest.
    pub args_json: String,
    /// `kwargs` as kombu JSON text, for the guest.
    pub kwargs_json: String,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
    /// Do not run before this instant.
    pub eta: Option<Timestamp>,
    /// Revoke (do not run) after this instant.
    pub expires: Option<Timestamp>,
    /// v1's `utc` flag: when false, a naive eta/expires is in the app's timezone (which
    /// this layer cannot know; [`Timestamp`] took it as UTC). Always true for v2.
    pub utc: bool,
    /// How many times the task has been retried.
    pub retries: u32,
    /// Hard and soft time limits from the message.
    pub timelimit: TimeLimit,
    /// Id of the first task of the work-flow.
    pub root_id: Option<String>,
    /// Id of the task that sent this message.
    pub parent_id: Option<String>,
    /// Group id (group and chord members).
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<u64>,
    /// Name to show in logs instead of `task`.
    pub shadow: Option<String>,
    /// `gen<pid>@<host>` of the sender.
    pub origin: Option<String>,
    /// `None`: use the task's own default.
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced (`Task.replace`).
    pub replaced_task_nesting: u32,
    /// Names of the stamps.
    pub stamped_headers: Vec<String>,
    /// Stamp name → value.
    pub stamps: Map<String, Value>,
    /// Python repr of the args, for logs.
    pub argsrepr: Option<String>,
    /// Python repr of the kwargs, for logs.
    pub kwargsrepr: Option<String>,
    /// The `reply_to` property.
    pub reply_to: Option<String>,
    /// The `correlation_id` property.
    pub correlation_id: Option<String>,
    /// The `priority` property.
    pub priority: Option<u8>,
    /// Headers (or v1 body keys) not read into the fields above, untouched: `lang`,
    /// `compression`, `redelivered`, custom `apply_async(headers=…)` entries, …
    pub extra_headers: Map<String, Value>,
}

/// v1 body keys that hold the payload rather than metadata.
const V1_PAYLOAD_KEYS: &[&str] = &[
    "args",
    "kwargs",
    "callbacks",
    "errbacks",
    "chord",
    "chain",
    "taskset",
    "utc",
];

/// Decodes one delivery. Never panics; the error says what the worker must do
/// ([`DecodeError::disposition`]).
pub fn decode(raw: &RawMessage<'_>) -> Result<TaskMessage, DecodeError> {
    let id_hint = raw
        .headers
        .get("id")
        .and_then(Value::as_str)
        .or(raw.correlation_id);
    let message_id = || id_hint.map(str::to_owned);

    let serializer = match ContentType::parse(raw.content_type) {
        ContentType::Accepted(serializer) => serializer,
        ContentType::Pickle => {
            return Err(DecodeError::PickleRefused {
                message_id: message_id(),
                content_type: raw.content_type.to_owned(),
            });
        }
        ContentType::Unknown => {
            return Err(DecodeError::UnknownContentType {
                message_id: message_id(),
                content_type: raw.content_type.to_owned(),
            });
        }
    };

    let decompressed;
    let body: &[u8] = match raw.headers.get("compression") {
        None | Some(Value::Null) => raw.body,
        Some(header) => {
            let compression = header
                .as_str()
                .and_then(Compression::from_header)
                .ok_or_else(|| DecodeError::UnknownCompression {
                    message_id: message_id(),
                    compression: header.to_string(),
                })?;
            decompressed =
                compression
                    .decompress(raw.body)
                    .map_err(|source| DecodeError::Decompress {
                        message_id: message_id(),
                        compression,
                        source,
                    })?;
            &decompressed
        }
    };

    let value = serializer
        .deserialize(body)
        .map_err(|reason| DecodeError::Deserialize {
            message_id: message_id(),
            content_type: serializer.content_type(),
            reason,
        })?;

    if raw.headers.contains_key("task") {
        match value {
            Value::Object(body_map) if body_map.contains_key("args") => {
                decode_hybrid(raw, body_map)
            }
            body_value => {
                // JSON v2 bodies keep the client's own text for args and kwargs.
                let json_text = match serializer {
                    Serializer::Json => std::str::from_utf8(body).ok(),
                    _ => None,
                };
                decode_v2(raw, body_value, json_text)
            }
        }
    } else {
        match value {
            Value::Object(body_map) if body_map.contains_key("task") => decode_v1(raw, body_map),
            _ => Err(DecodeError::UnknownMessage {
                message_id: raw.correlation_id.map(str::to_owned),
                reason: "no `task` header and the body is not a dict with `task`",
            }),
        }
    }
}

fn decode_v2(
    raw: &RawMessage<'_>,
    body: Value,
    json_text: Option<&str>,
) -> Result<TaskMessage, DecodeError> {
    let fields = Fields::read(raw.headers, raw)?;
    let invalid = |field, reason| fields.invalid(field, reason);
    let Value::Array(parts) = body else {
        return Err(invalid("body", "is not a list [args, kwargs, embed]"));
    };
    let Ok([args, kwargs, embed]) = <[Value; 3]>::try_from(parts) else {
        return Err(invalid("body", "does not have exactly three items"));
    };
    let Value::Array(args) = args else {
        return Err(invalid("args", "is not a list"));
    };
    let Value::Object(kwargs) = kwargs else {
        return Err(invalid("kwargs", "is not a mapping"));
    };
    let embed = match embed {
        Value::Null => Embed::default(),
        Value::Object(map) => read_embed(map).map_err(|(field, reason)| invalid(field, reason))?,
        _ => return Err(invalid("embed", "is neither a mapping nor null")),
    };
    let spans = json_text.and_then(|text| Some((text, top_level_array_items(text)?)));
    let (args_json, kwargs_json) = match spans {
        Some((text, items)) if items.len() == 3 => (
            text[items[0].clone()].to_owned(),
            text[items[1].clone()].to_owned(),
        ),
        _ => (
            to_kombu_json(&Value::Array(args.clone())),
            to_kombu_json(&Value::Object(kwargs.clone())),
        ),
    };
    Ok(fields.into_message(
        ProtocolVersion::V2,
        args,
        kwargs,
        args_json,
        kwargs_json,
        embed,
    ))
}

fn decode_hybrid(
    raw: &RawMessage<'_>,
    mut body: Map<String, Value>,
) -> Result<TaskMessage, DecodeError> {
    // Metadata from the body, overlaid by the message headers.
    let mut merged = Headers::default();
    for key in TASK_KEYS.iter().chain(&["lang", "meth"]) {
        if let Some(value) = body.remove(*key) {
            merged.insert((*key).to_owned(), value);
        }
    }
    merged.extend(raw.headers.iter().map(|(k, v)| (k.to_owned(), v.clone())));
    let fields = Fields::read(&merged, raw)?;
    decode_body_dict(fields, body, ProtocolVersion::Hybrid)
}

fn decode_v1(
    raw: &RawMessage<'_>,
    mut body: Map<String, Value>,
) -> Result<TaskMessage, DecodeError> {
    let mut payload: Map<String, Value> = V1_PAYLOAD_KEYS
        .iter()
        .filter_map(|key| body.remove(*key).map(|v| ((*key).to_owned(), v)))
        .collect();
    // v1 names the group `taskset`.
    if body.get("group").is_none_or(Value::is_null)
        && let Some(taskset) = payload.remove("taskset")
    {
        body.insert("group".to_owned(), taskset);
    }
    let fields = Fields::read(&Headers::from(body), raw)?;
    decode_body_dict(fields, payload, ProtocolVersion::V1)
}

/// The v1/hybrid payload: `args`, `kwargs`, `callbacks`, `errbacks`, `chord`, `utc`.
fn decode_body_dict(
    mut fields: Fields,
    mut body: Map<String, Value>,
    protocol: ProtocolVersion,
) -> Result<TaskMessage, DecodeError> {
    let args = match body.remove("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(args)) => args,
        Some(_) => return Err(fields.invalid("args", "is not a list")),
    };
    let kwargs = match body.remove("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(kwargs)) => kwargs,
        Some(_) => return Err(fields.invalid("kwargs", "is not a mapping")),
    };
    fields.utc = match body.remove("utc") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(utc)) => utc,
        Some(_) => return Err(fields.invalid("utc", "is not a boolean")),
    };
    // v1 has no chain field; v1 chains are nested callbacks.
    body.remove("chain");
    let embed = read_embed(body).map_err(|(field, reason)| fields.invalid(field, reason))?;
    let args_json = to_kombu_json(&Value::Array(args.clone()));
    let kwargs_json = to_kombu_json(&Value::Object(kwargs.clone()));
    Ok(fields.into_message(protocol, args, kwargs, args_json, kwargs_json, embed))
}

type FieldError = (&'static str, &'static str);

fn read_embed(mut map: Map<String, Value>) -> Result<Embed, FieldError> {
    Ok(Embed {
        callbacks: signature_list(map.remove("callbacks"), "callbacks")?,
        errbacks: signature_list(map.remove("errbacks"), "errbacks")?,
        chain: signature_list(map.remove("chain"), "chain")?,
        chord: match map.remove("chord") {
            None | Some(Value::Null) => None,
            Some(sig @ Value::Object(_)) => Some(sig),
            Some(_) => return Err(("chord", "is not a signature dict")),
        },
    })
}

/// A list of signature dicts; null or absent is empty, a lone dict is a one-item list.
fn signature_list(value: Option<Value>, field: &'static str) -> Result<Vec<Value>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(sig @ Value::Object(_)) => Ok(vec![sig]),
        Some(Value::Array(items)) if items.iter().all(Value::is_object) => Ok(items),
        Some(_) => Err((field, "is not a list of signature dicts")),
    }
}

/// The metadata fields, read from v2 headers or a v1/hybrid body dict.
struct Fields {
    id: String,
    task: String,
    eta: Option<Timestamp>,
    expires: Option<Timestamp>,
    utc: bool,
    retries: u32,
    timelimit: TimeLimit,
    root_id: Option<String>,
    parent_id: Option<String>,
    group: Option<String>,
    group_index: Option<u64>,
    shadow: Option<String>,
    origin: Option<String>,
    ignore_result: Option<bool>,
    replaced_task_nesting: u32,
    stamped_headers: Vec<String>,
    stamps: Map<String, Value>,
    argsrepr: Option<String>,
    kwargsrepr: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    priority: Option<u8>,
    extra: Map<String, Value>,
}

impl Fields {
    /// Reads the fields from `headers` (or a v1 body dict), copying only what it keeps: the
    /// message's headers stay with the delivery, which may still be acked, requeued or
    /// handed over as it came.
    fn read(headers: &Headers, raw: &RawMessage<'_>) -> Result<Fields, DecodeError> {
        let invalid = |field, reason| DecodeError::InvalidTask {
            message_id: headers
                .get("id")
                .and_then(Value::as_str)
                .or(raw.correlation_id)
                .map(str::to_owned),
            task: headers
                .get("task")
                .and_then(Value::as_str)
                .map(str::to_owned),
            field,
            reason,
        };
        let get = |key: &'static str| headers.get(key).unwrap_or(&Value::Null);
        let id =
            required_str(get("id")).ok_or_else(|| invalid("id", "is missing or not a string"))?;
        let task = required_str(get("task"))
            .ok_or_else(|| invalid("task", "is missing or not a string"))?;
        let read_str = |key| opt_str(get(key)).map_err(|reason| invalid(key, reason));
        let read_ts = |key| match get(key) {
            Value::Null => Ok(None),
            Value::String(text) => Timestamp::parse(text)
                .map(Some)
                .ok_or_else(|| invalid(key, "is not an ISO 8601 timestamp")),
            _ => Err(invalid(key, "is not an ISO 8601 string")),
        };
        Ok(Fields {
            eta: read_ts("eta")?,
            expires: read_ts("expires")?,
            utc: true,
            retries: opt_u32(get("retries"))
                .map_err(|reason| invalid("retries", reason))?
                .unwrap_or(0),
            timelimit: read_timelimit(get("timelimit")).map_err(|r| invalid("timelimit", r))?,
            root_id: read_str("root_id")?,
            parent_id: read_str("parent_id")?,
            group: read_str("group")?,
            group_index: opt_u64(get("group_index")).map_err(|r| invalid("group_index", r))?,
            shadow: read_str("shadow")?,
            origin: read_str("origin")?,
            ignore_result: match get("ignore_result") {
                Value::Null => None,
                Value::Bool(b) => Some(*b),
                _ => return Err(invalid("ignore_result", "is not a boolean or null")),
            },
            replaced_task_nesting: opt_u32(get("replaced_task_nesting"))
                .map_err(|r| invalid("replaced_task_nesting", r))?
                .unwrap_or(0),
            stamped_headers: match get("stamped_headers") {
                Value::Null => Vec::new(),
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(invalid("stamped_headers", "is not a list of strings")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(invalid("stamped_headers", "is not a list of strings")),
            },
            stamps: match get("stamps") {
                Value::Null => Map::new(),
                Value::Object(stamps) => stamps.clone(),
                _ => return Err(invalid("stamps", "is not a mapping")),
            },
            argsrepr: read_str("argsrepr")?,
            kwargsrepr: read_str("kwargsrepr")?,
            reply_to: raw.reply_to.map(str::to_owned),
            correlation_id: raw.correlation_id.map(str::to_owned),
            priority: raw.priority,
            id,
            task,
            extra: headers.other().clone(),
        })
    }

    fn invalid(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::InvalidTask {
            message_id: Some(self.id.clone()),
            task: Some(self.task.clone()),
            field,
            reason,
        }
    }

    fn into_message(
        self,
        protocol: ProtocolVersion,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        args_json: String,
        kwargs_json: String,
        embed: Embed,
    ) -> TaskMessage {
        TaskMessage {
            protocol,
            id: self.id,
            task: self.task,
            args,
            kwargs,
            args_json,
            kwargs_json,
            embed,
            eta: self.eta,
            expires: self.expires,
            utc: self.utc,
            retries: self.retries,
            timelimit: self.timelimit,
            root_id: self.root_id,
            parent_id: self.parent_id,
            group: self.group,
            group_index: self.group_index,
            shadow: self.shadow,
            origin: self.origin,
            ignore_result: self.ignore_result,
            replaced_task_nesting: self.replaced_task_nesting,
            stamped_headers: self.stamped_headers,
            stamps: self.stamps,
            argsrepr: self.argsrepr,
            kwargsrepr: self.kwargsrepr,
            reply_to: self.reply_to,
            correlation_id: self.correlation_id,
            priority: self.priority,
            extra_headers: self.extra,
        }
    }
}

fn required_str(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn opt_str(value: &Value) -> Result<Option<String>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err("is not a string or null"),
    }
}

fn opt_u64(value: &Value) -> Result<Option<u64>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or("is not a non-negative integer"),
        _ => Err("is not an integer or null"),
    }
}

fn opt_u32(value: &Value) -> Result<Option<u32>, &'static str> {
    opt_u64(value)?
        .map(|n| u32::try_from(n).map_err(|_| "is too large"))
        .transpose()
}

fn read_timelimit(value: &Value) -> Result<TimeLimit, &'static str> {
    let limit = |item: &Value| match item {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_f64().map(Some).ok_or("has a non-numeric item"),
        _ => Err("has an item that is neither a number nor null"),
    };
    match value {
        Value::Null => Ok(TimeLimit::default()),
        Value::Array(items) if items.len() == 2 => Ok(TimeLimit {
            hard: limit(&items[0])?,
            soft: limit(&items[1])?,
        }),
        _ => Err("is not null or a [hard, soft] pair"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Disposition;
    use crate::protocol::kombu_json::marker;
    use base64::Engine as _;
    use serde_json::json;

    /// A delivery built from a Redis envelope, as the Redis transport will hand it over.
    struct Envelope {
        body: Vec<u8>,
        content_type: String,
        content_encoding: String,
        headers: Headers,
        properties: Value,
    }

    impl Envelope {
        fn parse(text: &str) -> Envelope {
            let env: Value = serde_json::from_str(text).expect("fixture is JSON");
            let body = env["body"].as_str().expect("body is a string");
            let properties = env["properties"].clone();
            let body = if properties["body_encoding"] == "base64" {
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .expect("base64 body")
            } else {
                body.as_bytes().to_vec()
            };
            Envelope {
                body,
                content_type: env["content-type"].as_str().unwrap_or_default().to_owned(),
                content_encoding: env["content-encoding"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                headers: env["headers"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into(),
                properties,
            }
        }

        fn raw(&self) -> RawMessage<'_> {
            RawMessage {
                body: &self.body,
                content_type: &self.content_type,
                content_encoding: &self.content_encoding,
                headers: &self.headers,
                correlation_id: self.properties["correlation_id"].as_str(),
                reply_to: self.properties["reply_to"].as_str(),
                priority: self.properties["priority"]
                    .as_u64()
                    .and_then(|p| u8::try_from(p).ok()),
            }
        }
    }

    fn fixture(name: &str) -> Envelope {
        let path = format!(
            "{}/../tests/fixtures/messages/5.7.0/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Envelope::parse(&std::fs::read_to_string(&path).expect("fixture exists"))
    }

    fn v2_headers(id: &str) -> Headers {
        let text = std::fs::read_to_string(format!(
            "{}/../tests/fixtures/messages/5.7.0/redis_envelope_add.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture exists");
        let mut headers = Envelope::parse(&text).headers;
        headers.insert("id".into(), json!(id));
        headers
    }

    fn decode_json(headers: &Headers, body: &str) -> Result<TaskMessage, DecodeError> {
        decode(&RawMessage {
            body: body.as_bytes(),
            content_type: "application/json",
            content_encoding: "utf-8",
            headers,
            correlation_id: None,
            reply_to: None,
            priority: None,
        })
    }

    #[test]
    fn every_fixture_decodes() {
        let dir = format!(
            "{}/../tests/fixtures/messages/5.7.0",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut decoded = 0;
        for entry in std::fs::read_dir(&dir).expect("fixture dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let envelope = Envelope::parse(&text);
            let message =
                decode(&envelope.raw()).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            assert_eq!(message.task, "proj.add", "{}", path.display());
            decoded += 1;
        }
        assert!(decoded >= 5, "only {decoded} fixtures in {dir}");
    }

    #[test]
    fn captured_redis_message_decodes_every_field() {
        let message = decode(&fixture("redis_envelope_add.json").raw()).expect("decodes");
        assert_eq!(message.protocol, ProtocolVersion::V2);
        assert_eq!(message.id, "11111111-1111-1111-1111-111111111111");
        assert_eq!(message.task, "proj.add");
        assert_eq!(message.args, vec![json!(2), json!(2)]);
        assert!(message.kwargs.is_empty());
        assert_eq!(message.args_json, "[2, 2]");
        assert_eq!(message.kwargs_json, "{}");
        assert_eq!(message.embed, Embed::default());
        assert_eq!(message.eta, None);
        assert_eq!(message.retries, 0);
        assert_eq!(message.timelimit, TimeLimit::default());
        assert_eq!(message.root_id.as_deref(), Some(message.id.as_str()));
        assert_eq!(message.parent_id, None);
        assert_eq!(message.origin.as_deref(), Some("gen19837@vm"));
        assert_eq!(message.ignore_result, Some(false));
        assert_eq!(message.argsrepr.as_deref(), Some("(2, 2)"));
        assert_eq!(
            message.reply_to.as_deref(),
            Some("2d970f97-5e90-35e4-8b55-dced593d30d1")
        );
        assert_eq!(message.correlation_id.as_deref(), Some(message.id.as_str()));
        assert_eq!(message.priority, Some(0));
        assert_eq!(
            message.extra_headers,
            json!({"lang": "py"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
    }

    #[test]
    fn link_and_link_error_become_callbacks_and_errbacks() {
        let message = decode(&fixture("v2_link_link_error.json").raw()).expect("decodes");
        assert_eq!(message.embed.callbacks.len(), 1);
        assert_eq!(message.embed.callbacks[0]["args"], json!([10]));
        assert_eq!(message.embed.errbacks[0]["task"], "proj.on_err");
        assert!(message.embed.chain.is_empty());
        assert_eq!(message.embed.chord, None);
    }

    #[test]
    fn chain_keeps_next_step_last_and_chord_body_is_kept() {
        let chain = decode(&fixture("v2_chain_first_step.json").raw()).expect("decodes");
        assert_eq!(chain.embed.chain.len(), 2);
        assert_eq!(chain.embed.chain[1]["options"]["task_id"], "a445");
        let chord = decode(&fixture("v2_chord_header_part.json").raw()).expect("decodes");
        assert_eq!(chord.group.as_deref(), Some("1d14"));
        assert_eq!(chord.group_index, Some(0));
        assert_eq!(
            chord
                .embed
                .chord
                .as_ref()
                .map(|c| c["options"]["task_id"].clone()),
            Some(json!("c-body"))
        );
    }

    #[test]
    fn v1_body_becomes_the_same_message() {
        let message = decode(&fixture("v1_countdown_link.json").raw()).expect("decodes");
        assert_eq!(message.protocol, ProtocolVersion::V1);
        assert_eq!(message.id, "V1");
        assert_eq!(message.args_json, "[1, 2]");
        assert_eq!(
            message.eta.as_ref().map(Timestamp::as_str),
            Some("2026-11-21T05:36:03.566635+00:00")
        );
        assert!(message.utc);
        assert_eq!(message.embed.callbacks[0]["args"], json!([3]));
        assert_eq!(message.group, None);
        assert!(
            message.extra_headers.is_empty(),
            "{:?}",
            message.extra_headers
        );
    }

    #[test]
    fn v1_taskset_is_the_group() {
        let body =
            r#"{"task": "t", "id": "x", "args": [], "kwargs": {}, "taskset": "g1", "utc": false}"#;
        let message = decode_json(&Headers::default(), body).expect("decodes");
        assert_eq!(message.group.as_deref(), Some("g1"));
        assert!(!message.utc);
    }

    #[test]
    fn hybrid_body_is_overlaid_by_headers() {
        let mut headers = Headers::default();
        headers.insert("task".into(), json!("proj.add"));
        headers.insert("id".into(), json!("from-header"));
        let body = r#"{"id": "from-body", "args": [1], "kwargs": {"k": 2}, "retries": 3, "callbacks": [{"task": "c"}]}"#;
        let message = decode_json(&headers, body).expect("decodes");
        assert_eq!(message.protocol, ProtocolVersion::Hybrid);
        assert_eq!(message.id, "from-header");
        assert_eq!(message.retries, 3);
        assert_eq!(message.kwargs_json, r#"{"k": 2}"#);
        assert_eq!(message.embed.callbacks.len(), 1);
    }

    #[test]
    fn json_args_keep_the_client_text_with_nan_and_big_integers() {
        let headers = v2_headers("big");
        let body = r#"[[NaN, 1180591620717411303424, "\u00e9"], {"x": -Infinity}, null]"#;
        let message = decode_json(&headers, body).expect("decodes");
        assert_eq!(
            message.args_json,
            r#"[NaN, 1180591620717411303424, "\u00e9"]"#
        );
        assert_eq!(message.kwargs_json, r#"{"x": -Infinity}"#);
        assert_eq!(message.args[0], marker("NaN"));
        assert_eq!(message.args[1], marker("1180591620717411303424"));
        assert_eq!(message.args[2], json!("é"));
    }

    #[test]
    fn msgpack_and_compressed_yaml_bodies_decode() {
        let headers = v2_headers("mp");
        let packed = rmp_serde::to_vec(&json!([[1, "a"], {"k": 2.5}, null])).expect("pack");
        let message = decode(&RawMessage {
            body: &packed,
            content_type: "application/x-msgpack",
            content_encoding: "binary",
            headers: &headers,
            correlation_id: None,
            reply_to: None,
            priority: None,
        })
        .expect("msgpack decodes");
        assert_eq!(message.args_json, r#"[1, "a"]"#);
        assert_eq!(message.kwargs_json, r#"{"k": 2.5}"#);

        let mut headers = v2_headers("yaml");
        headers.insert("compression".into(), json!("application/x-bz2"));
        let yaml =
            "- [1, 2]\n- {}\n- {callbacks: null, errbacks: null, chain: null, chord: null}\n";
        let packed = crate::protocol::Compression::Bzip2
            .compress(yaml.as_bytes())
            .expect("compress");
        let message = decode(&RawMessage {
            body: &packed,
            content_type: "application/x-yaml",
            content_encoding: "utf-8",
            headers: &headers,
            correlation_id: None,
            reply_to: None,
            priority: None,
        })
        .expect("compressed yaml decodes");
        assert_eq!(message.args, vec![json!(1), json!(2)]);
    }

    fn error_for(headers: &Headers, content_type: &str, body: &[u8]) -> DecodeError {
        decode(&RawMessage {
            body,
            content_type,
            content_encoding: "utf-8",
            headers,
            correlation_id: Some("corr"),
            reply_to: None,
            priority: None,
        })
        .expect_err("must not decode")
    }

    #[test]
    fn pickle_is_rejected_with_advice() {
        let err = error_for(
            &v2_headers("p1"),
            "application/x-python-serialize",
            b"\x80\x04.",
        );
        assert!(matches!(err, DecodeError::PickleRefused { .. }));
        assert_eq!(err.disposition(), Disposition::RejectWithoutRequeue);
        assert_eq!(err.message_id(), Some("p1"));
        let text = err.to_string();
        assert!(text.contains("task_serializer='json'"), "{text}");
        assert!(text.contains("p1"), "{text}");
    }

    #[test]
    fn unknown_content_type_is_rejected() {
        let err = error_for(&v2_headers("u1"), "application/bson", b"{}");
        assert!(matches!(err, DecodeError::UnknownContentType { .. }));
        assert_eq!(err.disposition(), Disposition::RejectWithoutRequeue);
    }

    #[test]
    fn undecodable_bodies_are_acked_and_dropped() {
        let err = error_for(&v2_headers("d1"), "application/json", b"[[1], {}, nul");
        assert!(matches!(err, DecodeError::Deserialize { .. }), "{err}");
        assert_eq!(err.disposition(), Disposition::AckAndDrop);
        assert_eq!(err.message_id(), Some("d1"));

        let mut headers = v2_headers("d2");
        headers.insert("compression".into(), json!("application/zstd"));
        let err = error_for(&headers, "application/json", b"[[], {}, null]");
        assert!(matches!(err, DecodeError::Decompress { .. }), "{err}");
        assert_eq!(err.disposition(), Disposition::AckAndDrop);

        headers.insert("compression".into(), json!("snappy"));
        let err = error_for(&headers, "application/json", b"[[], {}, null]");
        assert!(
            matches!(err, DecodeError::UnknownCompression { .. }),
            "{err}"
        );
        assert_eq!(err.disposition(), Disposition::AckAndDrop);
    }

    #[test]
    fn neither_v1_nor_v2_is_an_unknown_message() {
        let err = error_for(&Headers::default(), "application/json", b"[[1], {}, null]");
        assert!(matches!(err, DecodeError::UnknownMessage { .. }), "{err}");
        assert_eq!(err.disposition(), Disposition::RejectWithoutRequeue);
        assert_eq!(err.message_id(), Some("corr"));
    }

    #[test]
    fn malformed_v2_messages_are_invalid_tasks() {
        let cases: &[(&str, &str, Value, &str)] = &[
            ("body", "{}", Value::Null, "body"),
            ("two items", "[[], {}]", Value::Null, "body"),
            ("args", r#"[{}, {}, null]"#, Value::Null, "args"),
            ("kwargs", r#"[[], [], null]"#, Value::Null, "kwargs"),
            ("embed", r#"[[], {}, 3]"#, Value::Null, "embed"),
            (
                "callbacks",
                r#"[[], {}, {"callbacks": [1]}]"#,
                Value::Null,
                "callbacks",
            ),
            (
                "eta",
                "[[], {}, null]",
                json!({"eta": "next tuesday"}),
                "eta",
            ),
            (
                "expires",
                "[[], {}, null]",
                json!({"expires": 30}),
                "expires",
            ),
            (
                "timelimit",
                "[[], {}, null]",
                json!({"timelimit": [1]}),
                "timelimit",
            ),
            (
                "timelimit item",
                "[[], {}, null]",
                json!({"timelimit": ["1", null]}),
                "timelimit",
            ),
            ("id", "[[], {}, null]", json!({"id": null}), "id"),
            (
                "retries",
                "[[], {}, null]",
                json!({"retries": -1}),
                "retries",
            ),
        ];
        for (name, body, overrides, expected_field) in cases {
            let mut headers = v2_headers("bad");
            if let Value::Object(overrides) = overrides {
                headers.extend(overrides.clone());
            }
            let err = error_for(&headers, "application/json", body.as_bytes());
            match &err {
                DecodeError::InvalidTask { field, task, .. } => {
                    assert_eq!(field, expected_field, "{name}");
                    assert_eq!(task.as_deref(), Some("proj.add"), "{name}");
                }
                other => panic!("{name}: {other}"),
            }
            assert_eq!(
                err.disposition(),
                Disposition::RejectWithoutRequeue,
                "{name}"
            );
        }
    }

    #[test]
    fn timelimit_is_hard_then_soft() {
        let mut headers = v2_headers("tl");
        headers.insert("timelimit".into(), json!([10, 2.5]));
        let message = decode_json(&headers, "[[], {}, null]").expect("decodes");
        assert_eq!(
            message.timelimit,
            TimeLimit {
                hard: Some(10.0),
                soft: Some(2.5)
            }
        );
    }

    #[test]
    fn null_ignore_result_means_task_default() {
        let mut headers = v2_headers("ir");
        headers.insert("ignore_result".into(), Value::Null);
        headers.insert("x-custom".into(), json!("v"));
        let message = decode_json(&headers, "[[], {}, null]").expect("decodes");
        assert_eq!(message.ignore_result, None);
        assert_eq!(message.extra_headers.get("x-custom"), Some(&json!("v")));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn decode_never_panics_on_arbitrary_bodies(
                body in proptest::collection::vec(any::<u8>(), 0..256),
                content_type in prop_oneof![
                    Just("application/json"), Just("application/x-msgpack"),
                    Just("application/x-yaml"), Just("application/data"),
                ],
                compression in prop_oneof![
                    Just(None), Just(Some("application/x-gzip")), Just(Some("application/x-bz2")),
                    Just(Some("application/x-lzma")), Just(Some("application/x-brotli")),
                    Just(Some("application/zstd")),
                ],
                v2 in any::<bool>(),
            ) {
                let mut headers = if v2 { v2_headers("fuzz") } else { Headers::default() };
                if let Some(compression) = compression {
                    headers.insert("compression".into(), json!(compression));
                }
                let _ = decode(&RawMessage {
                    body: &body,
                    content_type,
                    content_encoding: "utf-8",
                    headers: &headers,
                    correlation_id: None,
                    reply_to: None,
                    priority: None,
                });
            }

            #[test]
            fn decode_never_panics_on_json_like_text(body in r#"[\[\]{}",:0-9a-zA-Z\\ .eE+-]{0,80}"#) {
                let headers = v2_headers("fuzz");
                let _ = decode_json(&headers, &body);
                let _ = decode_json(&Headers::default(), &body);
            }
        }
    }
}
