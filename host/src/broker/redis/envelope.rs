//! kombu's Redis envelope (spec §3.2): the JSON text a message is stored as in a queue's
//! list, written for publishing and read into a [`Delivery`] when popped.
//!
//! Reading goes straight into typed fields instead of a JSON tree, the headers into
//! [`Headers`], and members kombu writes that the worker does not use are skipped without
//! being stored. Fields of the wrong type are read as absent, as when the envelope was read
//! from a tree; only a missing delivery tag, headers that are not a mapping and a body that
//! is not a string make the envelope malformed.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::clamp_priority;
use crate::broker::{BrokerError, Delivery, DeliveryInfo, Outgoing, Properties};
use crate::protocol::Headers;
use crate::protocol::kombu_json::parse_with_surrogate_repair;

/// The kombu envelope for `message`.
pub(super) fn build_envelope(
    exchange: &str,
    routing_key: &str,
    message: &Outgoing,
    priority: u8,
    delivery_mode: u8,
) -> String {
    let mut properties = Map::new();
    if let Some(id) = &message.correlation_id {
        properties.insert("correlation_id".into(), Value::from(id.as_str()));
    }
    if let Some(reply_to) = &message.reply_to {
        properties.insert("reply_to".into(), Value::from(reply_to.as_str()));
    }
    properties.insert("delivery_mode".into(), Value::from(delivery_mode));
    properties.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    properties.insert("priority".into(), Value::from(priority));
    properties.insert("body_encoding".into(), Value::from("base64"));
    properties.insert(
        "delivery_tag".into(),
        Value::from(uuid::Uuid::new_v4().to_string()),
    );
    json!({
        "body": BASE64.encode(&message.body),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": message.headers,
        "properties": properties,
    })
    .to_string()
}

/// The members of the envelope the worker reads.
#[derive(Deserialize)]
struct Envelope {
    /// Kept as read: its type is checked once the delivery tag is known.
    #[serde(default)]
    body: Value,
    #[serde(
        rename = "content-type",
        default,
        deserialize_with = "string_or_absent"
    )]
    content_type: Option<String>,
    #[serde(
        rename = "content-encoding",
        default,
        deserialize_with = "string_or_absent"
    )]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: ObjectMember<Headers>,
    properties: Option<EnvelopeProperties>,
}

/// A member that should be a JSON object, read straight into `T` when it is one. Null and
/// absence read as `None`; any other value too, but is remembered as the wrong type.
struct ObjectMember<T> {
    object: Option<T>,
    wrong_type: bool,
}

impl<T> Default for ObjectMember<T> {
    fn default() -> Self {
        ObjectMember {
            object: None,
            wrong_type: false,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectMember<T> {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        struct AnyValue<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for AnyValue<T> {
            type Value = ObjectMember<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, entries: A) -> Result<Self::Value, A::Error> {
                let object = T::deserialize(MapAccessDeserializer::new(entries))?;
                Ok(ObjectMember {
                    object: Some(object),
                    wrong_type: false,
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ObjectMember::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(wrong_type())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(wrong_type())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(wrong_type())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(wrong_type())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(wrong_type())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(wrong_type())
            }
        }
        fn wrong_type<T>() -> ObjectMember<T> {
            ObjectMember {
                object: None,
                wrong_type: true,
            }
        }
        input.deserialize_any(AnyValue(PhantomData))
    }
}

/// The members of `properties.delivery_info` the worker reads.
#[derive(Default, Deserialize)]
struct EnvelopeDeliveryInfo {
    #[serde(default, deserialize_with = "string_or_absent")]
    exchange: Option<String>,
    #[serde(default, deserialize_with = "string_or_absent")]
    routing_key: Option<String>,
    #[serde(default, deserialize_with = "bool_or_absent")]
    redelivered: Option<bool>,
}

#[derive(Deserialize)]
struct EnvelopeProperties {
    #[serde(default, deserialize_with = "string_or_absent")]
    delivery_tag: Option<String>,
    #[serde(default, deserialize_with = "string_or_absent")]
    correlation_id: Option<String>,
    #[serde(default, deserialize_with = "string_or_absent")]
    reply_to: Option<String>,
    #[serde(default, deserialize_with = "u64_or_absent")]
    priority: Option<u64>,
    #[serde(default, deserialize_with = "string_or_absent")]
    body_encoding: Option<String>,
    #[serde(default)]
    delivery_info: ObjectMember<EnvelopeDeliveryInfo>,
}

fn string_or_absent<'de, D: Deserializer<'de>>(input: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(input)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

fn bool_or_absent<'de, D: Deserializer<'de>>(input: D) -> Result<Option<bool>, D::Error> {
    Ok(Value::deserialize(input)?.as_bool())
}

fn u64_or_absent<'de, D: Deserializer<'de>>(input: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(input)?.as_u64())
}

/// Parses a popped envelope from `queue` into a [`Delivery`].
pub(super) fn parse_envelope(queue: &str, text: &str) -> Result<Delivery, BrokerError> {
    let malformed = |tag: Option<&str>, reason: String| BrokerError::MalformedEnvelope {
        queue: queue.to_owned(),
        delivery_tag: tag.map(str::to_owned),
        reason,
    };
    let envelope: Envelope = parse_with_surrogate_repair(text)
        .map_err(|e| malformed(None, format!("not a kombu envelope: {e}")))?;
    let Some(properties) = envelope.properties else {
        return Err(malformed(None, "no properties object".into()));
    };
    let Some(tag) = properties.delivery_tag else {
        return Err(malformed(None, "no delivery_tag".into()));
    };
    if envelope.headers.wrong_type {
        return Err(malformed(Some(&tag), "headers is not an object".into()));
    }
    let headers = envelope.headers.object.unwrap_or_default();
    let Value::String(body_text) = envelope.body else {
        return Err(malformed(Some(&tag), "body is not a string".into()));
    };
    let body = match properties.body_encoding.as_deref() {
        Some("base64") => BASE64
            .decode(&body_text)
            .map_err(|e| malformed(Some(&tag), format!("body is not base64: {e}")))?,
        _ => body_text.into_bytes(),
    };
    let info = properties.delivery_info.object.unwrap_or_default();
    let redelivered = info.redelivered.unwrap_or(false)
        || headers
            .get("redelivered")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    Ok(Delivery {
        queue: queue.to_owned(),
        body,
        content_type: envelope.content_type.unwrap_or_default(),
        content_encoding: envelope.content_encoding.unwrap_or_default(),
        properties: Properties {
            correlation_id: properties.correlation_id,
            reply_to: properties.reply_to,
            priority: properties.priority.map(clamp_priority),
            delivery_tag: tag,
            delivery_info: DeliveryInfo {
                exchange: info.exchange.unwrap_or_default(),
                routing_key: info.routing_key.unwrap_or_default(),
            },
        },
        headers,
        redelivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_envelope_reads_captured_message() {
        let text = r#"{"body": "W1syLCAyXSwge30sIHt9XQ==", "content-encoding": "utf-8",
            "content-type": "application/json", "headers": {"id": "x", "redelivered": true},
            "properties": {"correlation_id": "x", "reply_to": "r", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 5,
            "body_encoding": "base64", "delivery_tag": "t1"}}"#;
        let d = parse_envelope("celery", text).expect("valid envelope");
        assert_eq!(d.body, b"[[2, 2], {}, {}]");
        assert_eq!(d.content_type, "application/json");
        assert_eq!(d.content_encoding, "utf-8");
        assert_eq!(d.headers.get("id"), Some(&json!("x")));
        assert_eq!(d.properties.delivery_tag, "t1");
        assert_eq!(d.properties.correlation_id.as_deref(), Some("x"));
        assert_eq!(d.properties.reply_to.as_deref(), Some("r"));
        assert_eq!(d.properties.priority, Some(5));
        assert_eq!(d.properties.delivery_info.routing_key, "celery");
        assert!(d.redelivered);
    }

    #[test]
    fn redelivered_is_read_from_delivery_info_or_headers() {
        let envelope = |info: &str, headers: &str| {
            format!(
                r#"{{"body": "", "headers": {headers}, "properties": {{"delivery_tag": "t",
                "delivery_info": {info}}}}}"#
            )
        };
        let redelivered = |info, headers| {
            parse_envelope("q", &envelope(info, headers))
                .expect("valid envelope")
                .redelivered
        };
        assert!(redelivered(r#"{"redelivered": true, "exchange": 5}"#, "{}"));
        assert!(redelivered("{}", r#"{"redelivered": true}"#));
        assert!(!redelivered(r#"{"redelivered": "yes"}"#, "null"));
        assert!(!redelivered("[true]", r#"{"redelivered": false}"#));
    }

    #[test]
    fn parse_envelope_reads_what_it_wrote() {
        let message = Outgoing {
            body: b"[[1], {}, {}]".to_vec(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers: json!({"task": "t", "id": "i"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            correlation_id: Some("i".into()),
            ..Outgoing::default()
        };
        let text = build_envelope("ex", "rk", &message, 3, 2);
        let d = parse_envelope("q", &text).expect("own envelope");
        assert_eq!(d.body, message.body);
        assert_eq!(d.headers.to_map(), message.headers);
        assert_eq!(d.properties.priority, Some(3));
        assert_eq!(d.properties.delivery_info.exchange, "ex");
        assert_eq!(d.properties.delivery_info.routing_key, "rk");
        assert!(!d.redelivered);
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_absent() {
        let text = r#"{"body": "[]", "content-type": 7, "headers": null,
            "properties": {"delivery_tag": "t", "priority": "high", "reply_to": [],
            "delivery_info": "?"}}"#;
        let d = parse_envelope("q", text).expect("lenient");
        assert_eq!(
            d.body, b"[]",
            "no body_encoding: the body is the text itself"
        );
        assert_eq!(d.content_type, "");
        assert_eq!(d.headers, Headers::default());
        assert_eq!(d.properties.priority, None);
        assert_eq!(d.properties.reply_to, None);
        assert_eq!(d.properties.delivery_info.routing_key, "");
    }

    #[test]
    fn parse_envelope_rejects_garbage_with_queue() {
        let err = parse_envelope("q", "not json").expect_err("garbage");
        assert!(matches!(err, BrokerError::MalformedEnvelope { ref queue, .. } if queue == "q"));
        assert!(!err.is_connection());
        let err = parse_envelope("q", r#"{"properties": {"delivery_tag": "t"}, "body": 1}"#)
            .expect_err("body not a string");
        assert!(
            matches!(err, BrokerError::MalformedEnvelope { delivery_tag: Some(ref t), .. } if t == "t")
        );
        let err = parse_envelope("q", r#"{"properties": {"delivery_tag": 5}, "body": ""}"#)
            .expect_err("no usable tag");
        assert!(matches!(
            err,
            BrokerError::MalformedEnvelope {
                delivery_tag: None,
                ..
            }
        ));
        for headers in ["[1, {}]", "\"h\"", "7"] {
            let text = format!(
                r#"{{"body": "", "headers": {headers}, "properties": {{"delivery_tag": "t"}}}}"#
            );
            let err = parse_envelope("q", &text).expect_err("headers not a mapping");
            assert!(
                matches!(err, BrokerError::MalformedEnvelope { delivery_tag: Some(ref t), ref reason, .. }
                    if t == "t" && reason.contains("headers")),
                "{headers}: {err}"
            );
        }
        let err = parse_envelope("q", r#"{"body": "", "headers": []}"#).expect_err("no properties");
        assert!(matches!(
            err,
            BrokerError::MalformedEnvelope {
                delivery_tag: None,
                ..
            }
        ));
    }
}
