//! Building outgoing protocol v2 messages (retries, callbacks, chain steps), as
//! Celery's `AMQP.as_task_v2` lays them out (spec §2.1–§2.3, §6.3). Always JSON: a
//! Python worker accepts only JSON by default.

use serde_json::{Map, Value};

use super::content::Serializer;
use super::kombu_json::to_kombu_json;
use super::message::{Embed, TimeLimit};
use super::timestamp::Timestamp;

/// Celery never reads `lang`; Python clients send `"py"` and monitoring tools may group
/// by it, so celeriac sends the same rather than a value nobody expects.
const LANG: &str = "py";

/// How much of `argsrepr`/`kwargsrepr` Celery keeps.
const REPR_MAX_CHARS: usize = 1024;

/// Everything an outgoing task message says. Build with [`OutgoingTask::new`], then set
/// the public fields that apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutgoingTask {
    /// The task id (`headers.id`, `properties.correlation_id`).
    pub id: String,
    /// The task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// `countdown`/`eta`: the caller turns a countdown into an instant.
    pub eta: Option<Timestamp>,
    /// When the task expires.
    pub expires: Option<Timestamp>,
    /// Retry count (a retry sends the current one plus one).
    pub retries: u32,
    /// Hard and soft time limits.
    pub timelimit: TimeLimit,
    /// The work-flow's first task; `None` makes this message its own root.
    pub root_id: Option<String>,
    /// The task that sends this message.
    pub parent_id: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<u64>,
    /// Display name for logs.
    pub shadow: Option<String>,
    /// `gen<pid>@<host>` of this worker.
    pub origin: Option<String>,
    /// `None` lets the receiving worker use the task's default.
    pub ignore_result: Option<bool>,
    /// `Task.replace` depth.
    pub replaced_task_nesting: u32,
    /// Names of the stamps.
    pub stamped_headers: Vec<String>,
    /// Stamp name → value.
    pub stamps: Map<String, Value>,
    /// Callbacks, errbacks, chain (next step last) and chord.
    pub embed: Embed,
    /// `properties.reply_to`.
    pub reply_to: Option<String>,
    /// `properties.priority` (0 when unset, as kombu sends).
    pub priority: Option<u8>,
    /// Custom headers, merged at the top level; they never override the fields above.
    pub extra_headers: Map<String, Value>,
}

/// The message properties of an outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingProperties {
    /// The task id.
    pub correlation_id: String,
    /// Always `application/json`.
    pub content_type: &'static str,
    /// Always `utf-8`.
    pub content_encoding: &'static str,
    /// 0 unless set.
    pub priority: u8,
    /// The reply queue, if any.
    pub reply_to: Option<String>,
    /// 2: persistent, Celery's default.
    pub delivery_mode: u8,
}

/// An encoded message, ready for a transport to frame.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedMessage {
    /// The v2 headers.
    pub headers: Map<String, Value>,
    /// Properties.
    pub properties: OutgoingProperties,
    /// The JSON body `[args, kwargs, embed]`, uncompressed.
    pub body: Vec<u8>,
}

#[cfg(test)]
impl EncodedMessage {
    /// The message as a worker receiving it decodes it.
    pub(crate) fn decoded(&self) -> super::TaskMessage {
        super::decode(&super::RawMessage {
            body: &self.body,
            content_type: self.properties.content_type,
            content_encoding: self.properties.content_encoding,
            headers: &self.headers.clone().into(),
            correlation_id: Some(&self.properties.correlation_id),
            reply_to: self.properties.reply_to.as_deref(),
            priority: Some(self.properties.priority),
        })
        .expect("own messages decode")
    }
}

impl OutgoingTask {
    /// A message for `task` with id `id` and the given arguments; every other field is
    /// at Celery's default (no eta, no expiry, 0 retries, no limits, no work-flow).
    pub fn new(
        id: impl Into<String>,
        task: impl Into<String>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Self {
        OutgoingTask {
            id: id.into(),
            task: task.into(),
            args,
            kwargs,
            ..OutgoingTask::default()
        }
    }

    /// Lays the message out as protocol v2 with a kombu JSON body.
    pub fn encode(&self) -> EncodedMessage {
        let args = Value::Array(self.args.clone());
        let kwargs = Value::Object(self.kwargs.clone());
        let args_text = to_kombu_json(&args);
        let kwargs_text = to_kombu_json(&kwargs);

        let opt_str = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
        let opt_ts = |value: &Option<Timestamp>| {
            value
                .as_ref()
                .map_or(Value::Null, |ts| Value::String(ts.as_str().to_owned()))
        };
        let opt_f64 = |value: Option<f64>| {
            value
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number)
        };
        let mut headers = self.extra_headers.clone();
        let known = [
            ("lang", Value::String(LANG.to_owned())),
            ("task", Value::String(self.task.clone())),
            ("id", Value::String(self.id.clone())),
            ("shadow", opt_str(&self.shadow)),
            ("eta", opt_ts(&self.eta)),
            ("expires", opt_ts(&self.expires)),
            ("group", opt_str(&self.group)),
            (
                "group_index",
                self.group_index.map_or(Value::Null, Value::from),
            ),
            ("retries", Value::from(self.retries)),
            (
                "timelimit",
                Value::Array(vec![
                    opt_f64(self.timelimit.hard),
                    opt_f64(self.timelimit.soft),
                ]),
            ),
            (
                "root_id",
                Value::String(self.root_id.clone().unwrap_or_else(|| self.id.clone())),
            ),
            ("parent_id", opt_str(&self.parent_id)),
            ("argsrepr", Value::String(truncate(&args_text))),
            ("kwargsrepr", Value::String(truncate(&kwargs_text))),
            ("origin", opt_str(&self.origin)),
            (
                "ignore_result",
                self.ignore_result.map_or(Value::Null, Value::Bool),
            ),
            (
                "replaced_task_nesting",
                Value::from(self.replaced_task_nesting),
            ),
            (
                "stamped_headers",
                if self.stamped_headers.is_empty() {
                    Value::Null
                } else {
                    Value::from(self.stamped_headers.clone())
                },
            ),
            ("stamps", Value::Object(self.stamps.clone())),
        ];
        for (key, value) in known {
            headers.insert(key.to_owned(), value);
        }

        let list = |items: &Vec<Value>| {
            if items.is_empty() {
                Value::Null
            } else {
                Value::Array(items.clone())
            }
        };
        // Written by hand to keep Python's key order (serde_json's Map sorts keys); the
        // order means nothing to a reader but makes captures easy to compare.
        let chord = self.embed.chord.clone().unwrap_or(Value::Null);
        let body = format!(
            "[{args_text}, {kwargs_text}, {{\"callbacks\": {}, \"errbacks\": {}, \"chain\": {}, \"chord\": {}}}]",
            to_kombu_json(&list(&self.embed.callbacks)),
            to_kombu_json(&list(&self.embed.errbacks)),
            to_kombu_json(&list(&self.embed.chain)),
            to_kombu_json(&chord),
        );

        EncodedMessage {
            headers,
            properties: OutgoingProperties {
                correlation_id: self.id.clone(),
                content_type: Serializer::Json.content_type(),
                content_encoding: Serializer::Json.content_encoding(),
                priority: self.priority.unwrap_or(0),
                reply_to: self.reply_to.clone(),
                delivery_mode: 2,
            },
            body: body.into_bytes(),
        }
    }
}

/// The first [`REPR_MAX_CHARS`] characters of `text`.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(REPR_MAX_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::kombu_json::marker;
    use crate::protocol::message::ProtocolVersion;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_retry_message_round_trips() {
        let mut kwargs = Map::new();
        kwargs.insert("big".into(), marker("1180591620717411303424"));
        let mut task = OutgoingTask::new(
            "r-1",
            "proj.fetch",
            vec![json!("key"), marker("NaN")],
            kwargs,
        );
        task.eta = Timestamp::parse("2026-11-21T05:32:26+00:00");
        task.expires = Some(Timestamp::from_unix_micros(1_795_239_200_000_000));
        task.retries = 1;
        task.timelimit = TimeLimit {
            hard: Some(10.0),
            soft: None,
        };
        task.root_id = Some("root".into());
        task.parent_id = Some("parent".into());
        task.group = Some("g".into());
        task.group_index = Some(3);
        task.origin = Some("gen1@host".into());
        task.ignore_result = Some(true);
        task.stamped_headers = vec!["s".into()];
        task.stamps.insert("s".into(), json!("v"));
        task.embed.callbacks = vec![
            json!({"task": "proj.cb", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}),
        ];
        task.embed.chain = vec![json!({"task": "proj.next"})];
        task.embed.chord = Some(json!({"task": "proj.body"}));
        task.reply_to = Some("reply".into());
        task.priority = Some(5);
        task.extra_headers.insert("x-custom".into(), json!("v"));
        task.extra_headers
            .insert("id".into(), json!("must not win"));

        let encoded = task.encode();
        assert_eq!(encoded.headers["argsrepr"], json!(r#"["key", NaN]"#));
        assert_eq!(encoded.properties.correlation_id, "r-1");
        assert_eq!(encoded.properties.content_type, "application/json");
        assert_eq!(encoded.properties.delivery_mode, 2);

        let message = encoded.decoded();
        assert_eq!(message.protocol, ProtocolVersion::V2);
        assert_eq!(message.id, "r-1");
        assert_eq!(message.task, "proj.fetch");
        assert_eq!(message.args, task.args);
        assert_eq!(message.kwargs, task.kwargs);
        assert_eq!(message.args_json, r#"["key", NaN]"#);
        assert_eq!(message.kwargs_json, r#"{"big": 1180591620717411303424}"#);
        assert_eq!(message.eta, task.eta);
        assert_eq!(message.expires, task.expires);
        assert_eq!(message.retries, 1);
        assert_eq!(message.timelimit, task.timelimit);
        assert_eq!(message.root_id.as_deref(), Some("root"));
        assert_eq!(message.parent_id.as_deref(), Some("parent"));
        assert_eq!(message.group.as_deref(), Some("g"));
        assert_eq!(message.group_index, Some(3));
        assert_eq!(message.origin.as_deref(), Some("gen1@host"));
        assert_eq!(message.ignore_result, Some(true));
        assert_eq!(message.stamped_headers, task.stamped_headers);
        assert_eq!(message.stamps, task.stamps);
        assert_eq!(message.embed, task.embed);
        assert_eq!(message.reply_to.as_deref(), Some("reply"));
        assert_eq!(message.priority, Some(5));
        assert_eq!(message.extra_headers.get("x-custom"), Some(&json!("v")));
        assert_eq!(message.extra_headers.get("lang"), Some(&json!("py")));
    }

    #[test]
    fn a_top_level_message_is_its_own_root_with_python_defaults() {
        let encoded =
            OutgoingTask::new("t", "proj.add", vec![json!(2), json!(2)], Map::new()).encode();
        assert_eq!(
            String::from_utf8(encoded.body.clone()).expect("UTF-8"),
            r#"[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
        assert_eq!(encoded.headers["root_id"], json!("t"));
        assert_eq!(encoded.headers["timelimit"], json!([null, null]));
        assert_eq!(encoded.headers["ignore_result"], Value::Null);
        assert_eq!(encoded.headers["stamped_headers"], Value::Null);
        assert_eq!(encoded.properties.priority, 0);
    }

    #[test]
    fn argsrepr_is_truncated_to_1024_chars() {
        let encoded =
            OutgoingTask::new("t", "x", vec![json!("é".repeat(2000))], Map::new()).encode();
        let repr = encoded.headers["argsrepr"].as_str().expect("string");
        assert_eq!(repr.chars().count(), 1024);
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Every finite f64, at full precision: the workspace enables serde_json's
            // `float_roundtrip`, so a float survives encode and decode exactly.
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }),
            Just(marker("NaN")),
            ".{0,12}".prop_map(Value::String),
            "-?[1-9][0-9]{20,30}".prop_map(|digits| marker(&digits)),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // No regression files: this tree keeps none outside the protocol module.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn encode_then_decode_round_trips(
            args in proptest::collection::vec(json_value(), 0..4),
            kwargs in proptest::collection::btree_map(".{0,6}", json_value(), 0..4),
            retries in any::<u32>(),
        ) {
            let kwargs: Map<String, Value> = kwargs.into_iter().collect();
            let mut task = OutgoingTask::new("p", "proj.prop", args, kwargs);
            task.retries = retries;
            let message = task.encode().decoded();
            prop_assert_eq!(&message.args, &task.args);
            prop_assert_eq!(&message.kwargs, &task.kwargs);
            prop_assert_eq!(message.retries, retries);
        }
    }
}
