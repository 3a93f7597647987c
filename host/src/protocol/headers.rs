//! The headers of a delivered message.
//!
//! Every task message carries the same score of Celery headers, and the worker reads them
//! for every task. A JSON map would allocate each key and keep the entries in a tree only
//! to be searched by those same names, so [`Headers`] gives each key of the task protocol a
//! slot of its own and keeps only the others (`lang`, `compression`, custom
//! `apply_async(headers=…)` entries, the headers of control messages) in a map. Values stay
//! as sent: validating them is [`decode`](super::decode)'s job.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Header keys of the task protocol that [`TaskMessage`](super::TaskMessage) has fields for.
pub const TASK_KEYS: [&str; 18] = [
    "id",
    "task",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "shadow",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "argsrepr",
    "kwargsrepr",
];

fn task_slot(key: &str) -> Option<usize> {
    TASK_KEYS.iter().position(|known| *known == key)
}

/// A message's headers: key → JSON value, with the keys of [`TASK_KEYS`] held apart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    /// The values of [`TASK_KEYS`], by position; `None` where the key is absent.
    task: [Option<Value>; TASK_KEYS.len()],
    /// Every other key.
    other: Map<String, Value>,
}

impl Headers {
    /// The value of `key`, when present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match task_slot(key) {
            Some(slot) => self.task[slot].as_ref(),
            None => self.other.get(key),
        }
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        match task_slot(&key) {
            Some(slot) => self.task[slot].replace(value),
            None => self.other.insert(key, value),
        }
    }

    /// Every key and value: the task keys present, in [`TASK_KEYS`] order, then the others.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        let task = TASK_KEYS
            .iter()
            .zip(&self.task)
            .filter_map(|(key, value)| Some((*key, value.as_ref()?)));
        task.chain(self.other.iter().map(|(key, value)| (key.as_str(), value)))
    }

    /// The keys that are not [`TASK_KEYS`].
    pub fn other(&self) -> &Map<String, Value> {
        &self.other
    }

    /// The headers as one JSON map, e.g. to publish the message again.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(key, value)| (key.to_owned(), value.clone()))
            .collect()
    }
}

impl From<Map<String, Value>> for Headers {
    fn from(map: Map<String, Value>) -> Self {
        let mut headers = Headers::default();
        headers.extend(map);
        headers
    }
}

impl Extend<(String, Value)> for Headers {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

/// A key as read: a task key by slot (no allocation) or any other key.
enum Key {
    Task(usize),
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(task_slot(key).map_or_else(|| Key::Other(key.to_owned()), Key::Task))
            }
            fn visit_string<E: de::Error>(self, key: String) -> Result<Key, E> {
                Ok(task_slot(&key).map_or(Key::Other(key), Key::Task))
            }
        }
        input.deserialize_str(KeyVisitor)
    }
}

/// Reads the entries of a mapping into [`Headers`]; a key given twice keeps its last value,
/// as a JSON map does.
struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = Headers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of headers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Headers, A::Error> {
        let mut headers = Headers::default();
        while let Some(key) = entries.next_key::<Key>()? {
            let value = entries.next_value::<Value>()?;
            match key {
                Key::Task(slot) => headers.task[slot] = Some(value),
                Key::Other(key) => {
                    headers.other.insert(key, value);
                }
            }
        }
        Ok(headers)
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        input.deserialize_map(HeadersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Map<String, Value> {
        json!({"id": "i", "task": "t", "lang": "py", "retries": 2, "expires": null})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn task_keys_and_others_read_back_alike() {
        let headers: Headers = serde_json::from_value(Value::Object(sample())).expect("map");
        assert_eq!(headers.get("id"), Some(&json!("i")));
        assert_eq!(headers.get("lang"), Some(&json!("py")));
        assert_eq!(
            headers.get("expires"),
            Some(&Value::Null),
            "null is present"
        );
        assert_eq!(headers.get("eta"), None);
        assert!(headers.contains_key("retries"));
        assert_eq!(headers.iter().count(), 5);
        assert_eq!(headers.other().len(), 1, "only lang is not a task key");
    }

    #[test]
    fn map_round_trips() {
        let headers = Headers::from(sample());
        assert_eq!(headers.to_map(), sample());
        let parsed: Headers =
            serde_json::from_str(&Value::Object(sample()).to_string()).expect("text");
        assert_eq!(parsed, headers);
    }

    #[test]
    fn escaped_and_repeated_keys_are_read_like_a_json_map() {
        let parsed: Headers =
            serde_json::from_str(r#"{"t\u0061sk": "a", "task": "b", "x\"y": 1}"#).expect("text");
        assert_eq!(parsed.get("task"), Some(&json!("b")), "the last one wins");
        assert_eq!(parsed.get("x\"y"), Some(&json!(1)));
    }

    #[test]
    fn insert_replaces_and_iter_lists_everything() {
        let mut headers = Headers::default();
        assert_eq!(headers.iter().count(), 0);
        assert_eq!(headers.insert("task".into(), json!("a")), None);
        assert_eq!(headers.insert("task".into(), json!("b")), Some(json!("a")));
        headers.insert("clock".into(), json!(5));
        let listed: Vec<(&str, &Value)> = headers.iter().collect();
        assert_eq!(listed, [("task", &json!("b")), ("clock", &json!(5))]);
    }

    #[test]
    fn a_non_mapping_is_refused() {
        assert!(serde_json::from_str::<Headers>("[1, 2]").is_err());
        assert!(serde_json::from_str::<Headers>("\"id\"").is_err());
    }
}
