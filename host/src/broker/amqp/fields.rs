//! Message properties and headers between Celery's JSON values and AMQP's field tables,
//! encoded as py-amqp encodes them (spec §4.2), so a Python worker reads what celeriac
//! publishes and celeriac reads what a Python client publishes.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

use crate::broker::{BrokerError, Delivery, DeliveryInfo, Outgoing, Properties};
use crate::protocol::Headers;

/// The longest AMQP short string (names, routing keys, most properties).
pub const MAX_SHORT: usize = 255;

/// Persistent delivery (`delivery_mode` 2), Celery's `task_default_delivery_mode`.
pub const PERSISTENT: u8 = 2;

/// Transient delivery (`delivery_mode` 1), what the rpc:// backend sends results with.
pub const TRANSIENT: u8 = 1;

/// `text` as a short string, or [`BrokerError::TooLong`] naming `what` it is.
pub fn short(what: &'static str, text: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text).map_err(|_| BrokerError::TooLong {
        what,
        len: text.len(),
        max: MAX_SHORT,
    })
}

/// The properties Celery publishes a message with: its content type and encoding,
/// headers, `delivery_mode`, priority, `correlation_id`, `reply_to`, and `expiration`
/// (milliseconds, as kombu writes it) when the message has one.
pub fn properties(message: &Outgoing, delivery_mode: u8) -> Result<BasicProperties, BrokerError> {
    let mut properties = BasicProperties::default()
        .with_content_type(short("content_type", &message.content_type)?)
        .with_content_encoding(short("content_encoding", &message.content_encoding)?)
        .with_headers(table_from_json(&message.headers)?)
        .with_delivery_mode(delivery_mode)
        .with_priority(message.priority.unwrap_or(0));
    if let Some(id) = &message.correlation_id {
        properties = properties.with_correlation_id(short("correlation_id", id)?);
    }
    if let Some(reply_to) = &message.reply_to {
        properties = properties.with_reply_to(short("reply_to", reply_to)?);
    }
    if let Some(ttl) = message.expiration {
        properties = properties.with_expiration(expiration(ttl));
    }
    Ok(properties)
}

/// kombu's `expiration`: whole milliseconds as text.
fn expiration(ttl: Duration) -> ShortString {
    ShortString::from(ttl.as_millis().to_string())
}

/// A delivery from lapin as the [`crate::broker`] layer hands it out, under `delivery_tag`.
pub fn delivery(queue: &str, delivery_tag: String, message: lapin::message::Delivery) -> Delivery {
    let props = &message.properties;
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    Delivery {
        queue: queue.to_owned(),
        content_type: text(props.content_type()).unwrap_or_default(),
        content_encoding: text(props.content_encoding()).unwrap_or_default(),
        headers: props
            .headers()
            .as_ref()
            .map(|table| Headers::from(json_from_table(table)))
            .unwrap_or_default(),
        properties: Properties {
            correlation_id: text(props.correlation_id()),
            reply_to: text(props.reply_to()),
            priority: *props.priority(),
            delivery_tag,
            delivery_info: DeliveryInfo {
                exchange: message.exchange.as_str().to_owned(),
                routing_key: message.routing_key.as_str().to_owned(),
            },
        },
        redelivered: message.redelivered,
        body: message.data,
    }
}

/// A JSON object as a field table: strings as long strings, integers as 32-bit when they
/// fit and 64-bit otherwise (py-amqp's `I` and `L`), floats as doubles, `null` as void,
/// arrays and objects nested.
pub fn table_from_json(map: &Map<String, Value>) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    for (key, value) in map {
        table.insert(short("header name", key)?, value_from_json(value)?);
    }
    Ok(table)
}

fn value_from_json(value: &Value) -> Result<AMQPValue, BrokerError> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => number(n),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(value_from_json)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(map) => AMQPValue::FieldTable(table_from_json(map)?),
    })
}

fn number(n: &Number) -> AMQPValue {
    match n.as_i64() {
        Some(i) => match i32::try_from(i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(i),
        },
        // Beyond i64 (a u64 above i64::MAX, or a float): AMQP has no wider integer.
        None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// A field table as a JSON object (the inverse of [`table_from_json`], plus the types
/// other clients send: unsigned and short integers, floats, decimals, timestamps as
/// seconds, byte arrays and short strings as text).
pub fn json_from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .into_iter()
        .map(|(key, value)| (key.as_str().to_owned(), json_from_value(value)))
        .collect()
}

fn json_from_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Void => Value::Null,
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Timestamp(seconds) => Value::from(*seconds),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(json_from_value).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(json_from_table(table)),
    }
}

/// A float as JSON; NaN and infinities, which JSON cannot hold, become `null`.
fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn celery_headers_round_trip() {
        let headers = json!({
            "lang": "py", "task": "proj.add", "id": "x", "shadow": null, "eta": null,
            "retries": 0, "timelimit": [null, 30.5], "group_index": 3,
            "stamps": {"s": ["a", 1]}, "ignore_result": false, "big": 5_000_000_000i64,
        });
        let map = headers.as_object().expect("an object");
        let table = table_from_json(map).expect("encodes");
        assert_eq!(
            table.inner().get("retries"),
            Some(&AMQPValue::LongInt(0)),
            "py-amqp's 'I' for small integers"
        );
        assert_eq!(
            table.inner().get("big"),
            Some(&AMQPValue::LongLongInt(5_000_000_000))
        );
        assert_eq!(table.inner().get("shadow"), Some(&AMQPValue::Void));
        assert_eq!(Value::Object(json_from_table(&table)), headers);
    }

    #[test]
    fn other_clients_types_read_as_json() {
        let mut table = FieldTable::default();
        table.insert("u".into(), AMQPValue::ShortUInt(7));
        table.insert(
            "d".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 2,
                value: 150,
            }),
        );
        table.insert("nan".into(), AMQPValue::Double(f64::NAN));
        table.insert("s".into(), AMQPValue::ShortString("short".into()));
        assert_eq!(
            Value::Object(json_from_table(&table)),
            json!({"u": 7, "d": 1.5, "nan": null, "s": "short"})
        );
    }

    #[test]
    fn long_header_name_is_refused() {
        let mut map = Map::new();
        map.insert("k".repeat(300), Value::Null);
        let err = table_from_json(&map).expect_err("too long");
        assert!(
            matches!(err, BrokerError::TooLong { len: 300, .. }),
            "{err}"
        );
        assert!(!err.is_connection());
    }

    #[test]
    fn properties_carry_expiration_in_milliseconds() {
        let message = Outgoing {
            correlation_id: Some("id".into()),
            expiration: Some(Duration::from_millis(30_000)),
            ..Outgoing::default()
        };
        let props = properties(&message, PERSISTENT).expect("valid");
        assert_eq!(
            props.expiration().as_ref().map(ShortString::as_str),
            Some("30000")
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(*props.priority(), Some(0));
        assert_eq!(props.reply_to(), &None);
    }
}
