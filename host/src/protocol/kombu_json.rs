//! Kombu's JSON dialect, read leniently and written back without loss.
//!
//! Python's `json.dumps` (what kombu uses) writes three tokens strict JSON forbids
//! (`NaN`, `Infinity`, `-Infinity`) and integers of any size (`2**70`). serde_json rejects
//! the first three and turns the others into lossy `f64`s, and turning on its
//! `arbitrary_precision` feature would change every other serde_json user in the host. So
//! this module keeps serde_json strict and represents each such token in a
//! [`serde_json::Value`] as a **literal marker**: an object with the single key
//! [`LITERAL_MARKER_KEY`] whose value is the token's exact text:
//!
//! ```json
//! {"__celeriac_literal__": "NaN"}
//! {"__celeriac_literal__": "1180591620717411303424"}
//! ```
//!
//! [`to_kombu_json`] writes markers back as the bare token, so `decode → encode` gives
//! Python the same values it sent. Python's `json.loads` (and so a Python guest) accepts the
//! bare tokens. Kombu's `__type__`/`__value__` markers (datetime, bytes, …) are plain
//! objects here and pass through untouched; they are the guest's business.
//!
//! msgpack and YAML bodies are read through [`KombuValue`], which applies the same
//! representation (non-finite floats and out-of-range integers become literal markers)
//! and turns binary strings into kombu's own bytes markers
//! (`{"__type__": "bytes", "__value__": "…"}` when UTF-8, `"base64"` otherwise), which is
//! what the same Python value would look like in kombu JSON.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use base64::Engine as _;
use serde::de::{
    Deserialize, Deserializer, EnumAccess, Error as _, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Number, Value};

/// The key of a literal marker object (see the module docs).
pub const LITERAL_MARKER_KEY: &str = "__celeriac_literal__";

/// Parses kombu JSON text into a [`Value`], mapping non-finite numbers and integers beyond
/// `i64`/`u64` to literal markers. Otherwise as strict as serde_json.
pub fn from_kombu_json(text: &str) -> Result<Value, serde_json::Error> {
    let strict = to_strict_json(text);
    parse_with_surrogate_repair(&strict)
}

/// Parses JSON text with serde_json; if that fails and the text holds lone surrogate
/// escapes, parses it again with each replaced by U+FFFD (see [`repair_lone_surrogates`]).
/// The common path costs nothing extra.
pub fn parse_with_surrogate_repair<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_json::Error> {
    serde_json::from_str(text).or_else(|err| match repair_lone_surrogates(text) {
        Cow::Owned(repaired) => serde_json::from_str(&repaired),
        Cow::Borrowed(_) => Err(err),
    })
}

/// Replaces every `\uXXXX` escape of a lone UTF-16 surrogate with `\ufffd`. Python's json
/// writes such escapes for a `str` holding a lone surrogate (`"\ud800"`); serde_json, and
/// Rust strings, cannot hold one, and dropping the whole message would be worse than
/// delivering U+FFFD in its place. Returns the input untouched when there is none.
pub fn repair_lone_surrogates(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut lone = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let end = skip_string(bytes, i);
            lone.extend(lone_surrogate_escapes(bytes, i + 1, end));
            i = end;
        } else {
            i += 1;
        }
    }
    if lone.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for at in lone {
        out.push_str(&text[copied..at]);
        out.push_str("\\ufffd");
        copied = at + 6;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Where, in the string literal body `bytes[start..end]`, a `\uXXXX` escape encodes a
/// surrogate that is not half of a high-then-low pair.
fn lone_surrogate_escapes(bytes: &[u8], start: usize, end: usize) -> Vec<usize> {
    let mut lone = Vec::new();
    let mut pending_high: Option<usize> = None;
    let mut i = start;
    while i < end {
        let escape = (bytes[i] == b'\\').then(|| bytes.get(i + 1)).flatten();
        let code = match escape {
            Some(b'u') => bytes
                .get(i + 2..i + 6)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match code {
            Some(0xD800..=0xDBFF) => lone.extend(pending_high.replace(i)),
            Some(0xDC00..=0xDFFF) if pending_high.take().is_some() => {}
            Some(0xDC00..=0xDFFF) => lone.push(i),
            _ => lone.extend(pending_high.take()),
        }
        i += match (code, escape) {
            (Some(_), _) => 6,
            (None, Some(_)) => 2,
            (None, None) => 1,
        };
    }
    lone.extend(pending_high);
    lone
}

/// Rewrites the tokens strict JSON rejects (outside strings) into literal markers. Returns
/// the input untouched (no copy) when there is none, which is the common case.
///
/// Malformed input is not diagnosed here: whatever this pass leaves alone, serde_json
/// rejects afterwards.
pub fn to_strict_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // Everything before `copied` has already been moved to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'"' {
            i = skip_string(bytes, i);
            continue;
        }
        // Byte-wise so that a stray non-ASCII byte outside a string never splits a char.
        let rest = &bytes[i..];
        let token_len = if rest.starts_with(b"NaN") {
            3
        } else if rest.starts_with(b"Infinity") {
            8
        } else if rest.starts_with(b"-Infinity") {
            9
        } else if byte == b'-' || byte.is_ascii_digit() {
            let len = number_len(bytes, i);
            let token = &text[i..i + len];
            if is_integer_literal(token) && !fits_serde_number(token) {
                len
            } else {
                // An ordinary number: step over all of it so its digits are not rescanned.
                i += len.max(1);
                continue;
            }
        } else {
            i += 1;
            continue;
        };
        let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 32));
        out.push_str(&text[copied..i]);
        push_marker(out, &text[i..i + token_len]);
        i += token_len;
        copied = i;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

/// The byte ranges of the items of a top-level JSON array, trimmed of whitespace, or
/// `None` when `text` is not an array. Meant for text that already parsed (after
/// [`to_strict_json`]), so that a v2 body's `args` and `kwargs` can be handed on as the
/// exact text the client wrote, without re-serialising.
pub fn top_level_array_items(text: &str) -> Option<Vec<Range<usize>>> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes[start] != b'[' {
        return None;
    }
    let mut items = Vec::new();
    let mut depth = 1usize;
    let mut item_start = start + 1;
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    push_trimmed(text, item_start..i, &mut items);
                    return Some(items);
                }
            }
            b',' if depth == 1 => {
                push_trimmed(text, item_start..i, &mut items);
                item_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Writes `value` as kombu JSON: literal markers become bare tokens again.
pub fn to_kombu_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// Whether `value` is a literal marker, and if so its token.
pub fn literal_marker(value: &Value) -> Option<&str> {
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let token = map.get(LITERAL_MARKER_KEY)?.as_str()?;
    // Only tokens that are valid kombu JSON are written bare; anything else stays an object
    // so the output is always parseable.
    let valid = matches!(token, "NaN" | "Infinity" | "-Infinity") || is_integer_literal(token);
    valid.then_some(token)
}

/// A literal marker for `token`.
pub fn marker(token: &str) -> Value {
    let mut map = Map::with_capacity(1);
    map.insert(
        LITERAL_MARKER_KEY.to_owned(),
        Value::String(token.to_owned()),
    );
    Value::Object(map)
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            if let Some(token) = literal_marker(value) {
                out.push_str(token);
                return;
            }
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // Serialising a `str` cannot fail: serde_json only fails on non-string map keys and
    // writer errors, and a String writer has none.
    out.push_str(&serde_json::to_string(s).expect("serialising a str to a String never fails"));
}

fn push_marker(out: &mut String, token: &str) {
    out.push_str("{\"");
    out.push_str(LITERAL_MARKER_KEY);
    out.push_str("\": \"");
    out.push_str(token);
    out.push_str("\"}");
}

fn push_trimmed(text: &str, range: Range<usize>, items: &mut Vec<Range<usize>>) {
    let slice = &text[range.clone()];
    let leading = slice.len() - slice.trim_start().len();
    let trailing = slice.len() - slice.trim_end().len();
    if leading + trailing < slice.len() {
        items.push(range.start + leading..range.end - trailing);
    }
}

/// The index just past the string starting at the quote `start` (or the end of input).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The length of the run of number characters at `start`.
fn number_len(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        .count()
}

/// `-?(0|[1-9][0-9]*)`: a JSON integer.
fn is_integer_literal(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

fn fits_serde_number(integer: &str) -> bool {
    integer.parse::<i64>().is_ok() || integer.parse::<u64>().is_ok()
}

/// A [`Value`] deserialized from any self-describing format (msgpack, YAML) with kombu
/// JSON's representation: see the module docs.
#[derive(Debug)]
pub struct KombuValue(pub Value);

impl<'de> Deserialize<'de> for KombuValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(KombuValueVisitor)
            .map(KombuValue)
    }
}

struct KombuValueVisitor;

impl<'de> Visitor<'de> for KombuValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value representable in kombu JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(small) => Value::Number(small.into()),
            Err(_) => match u64::try_from(v) {
                Ok(small) => Value::Number(small.into()),
                Err(_) => marker(&v.to_string()),
            },
        })
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(match u64::try_from(v) {
            Ok(small) => Value::Number(small.into()),
            Err(_) => marker(&v.to_string()),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(match Number::from_f64(v) {
            Some(n) => Value::Number(n),
            None if v.is_nan() => marker("NaN"),
            None if v > 0.0 => marker("Infinity"),
            None => marker("-Infinity"),
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_marker(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        KombuValue::deserialize(d).map(|v| v.0)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        KombuValue::deserialize(d).map(|v| v.0)
    }

    /// A tagged YAML node. serde_norway hands over only local tags (`!name`), so YAML is
    /// parsed with the `!!` handle redefined as `!` (see `protocol::yaml`)
    /// and the core tags `yaml.safe_dump` writes arrive here: `binary` becomes a kombu bytes
    /// marker, as `yaml.safe_load` gives `bytes`; `str` keeps the scalar's text;
    /// `timestamp` (also what `protocol::yaml` tags plain timestamps with) becomes kombu's
    /// `datetime` or `date` marker; any other tag (`set`, ...) keeps the node's value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, node) = data.variant::<String>()?;
        match tag.as_str() {
            "binary" => {
                let text: String = node.newtype_variant()?;
                let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|err| A::Error::custom(format!("invalid !!binary value: {err}")))?;
                Ok(bytes_marker(&bytes))
            }
            "str" => node.newtype_variant::<String>().map(Value::String),
            super::yaml::TIMESTAMP_TAG => {
                let text: String = node.newtype_variant()?;
                super::yaml_timestamp::tagged_timestamp_marker(&text).map_err(A::Error::custom)
            }
            _ => node.newtype_variant::<KombuValue>().map(|v| v.0),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(KombuValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some((KombuValue(key), KombuValue(value))) = access.next_entry()? {
            // JSON keys are strings; Python's json.dumps stringifies scalar keys the same way.
            let key = match key {
                Value::String(s) => s,
                Value::Null => "null".to_owned(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => match literal_marker(&other) {
                    Some(token) => token.to_owned(),
                    None => {
                        return Err(serde::de::Error::custom(
                            "a map key that is a list, a map or bytes has no JSON form",
                        ));
                    }
                },
            };
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Kombu's marker for a `bytes` value: `bytes` when it is UTF-8, `base64` otherwise.
pub fn bytes_marker(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => type_marker("bytes", text.to_owned()),
        Err(_) => type_marker(
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    }
}

/// Kombu's marker for a value JSON has no type for: `{"__type__": kind, "__value__": value}`.
pub fn type_marker(kind: &str, value: String) -> Value {
    let mut map = Map::with_capacity(2);
    map.insert("__type__".to_owned(), Value::String(kind.to_owned()));
    map.insert("__value__".to_owned(), Value::String(value));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lone_surrogates_become_replacement_characters_and_pairs_stay() {
        let text = r#"["\ud800", "a\udc00b", "\ud83d\ude00", "\\ud800", "\ud800\ud800x", "é"]"#;
        let value = super::from_kombu_json(text).expect("repaired");
        assert_eq!(
            value,
            serde_json::json!([
                "\u{fffd}",
                "a\u{fffd}b",
                "😀",
                "\\ud800",
                "\u{fffd}\u{fffd}x",
                "é"
            ])
        );
        assert!(matches!(
            super::repair_lone_surrogates(r#"["\ud83d\ude00", "plain"]"#),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn strict_json_is_borrowed_untouched() {
        let text = r#"[[1, -2.5e3, "NaN Infinity"], {"a": 18446744073709551615}, null]"#;
        assert!(matches!(to_strict_json(text), Cow::Borrowed(_)));
    }

    #[test]
    fn non_finite_tokens_become_markers_and_round_trip() {
        let text = r#"[NaN, Infinity, -Infinity, "NaN", 1]"#;
        let value = from_kombu_json(text).expect("lenient parse");
        assert_eq!(
            value,
            json!([
                marker("NaN"),
                marker("Infinity"),
                marker("-Infinity"),
                "NaN",
                1
            ])
        );
        assert_eq!(to_kombu_json(&value), text);
    }

    #[test]
    fn big_integers_keep_every_digit() {
        let text = "[1180591620717411303424, -9223372036854775809, 18446744073709551615]";
        let value = from_kombu_json(text).expect("lenient parse");
        assert_eq!(value[0], marker("1180591620717411303424"));
        assert_eq!(value[1], marker("-9223372036854775809"));
        assert_eq!(value[2], json!(18446744073709551615u64));
        assert_eq!(to_kombu_json(&value), text);
    }

    #[test]
    fn escaped_quotes_inside_strings_do_not_confuse_the_scan() {
        let text = r#"["a\"NaN", NaN]"#;
        let value = from_kombu_json(text).expect("lenient parse");
        assert_eq!(value, json!(["a\"NaN", marker("NaN")]));
    }

    #[test]
    fn malformed_tokens_are_still_rejected() {
        assert!(from_kombu_json("[NaNx]").is_err());
        assert!(from_kombu_json("[Inf]").is_err());
        assert!(from_kombu_json("[0123]").is_err());
    }

    #[test]
    fn a_marker_with_an_invalid_token_is_written_as_an_object() {
        let value = json!({LITERAL_MARKER_KEY: "1; DROP"});
        assert_eq!(
            to_kombu_json(&value),
            r#"{"__celeriac_literal__": "1; DROP"}"#
        );
    }

    #[test]
    fn top_level_items_are_exact_slices() {
        let text = r#" [ [1, "]", {"a": [2]}] , {"k": "v,w"},null ] "#;
        let items = top_level_array_items(text).expect("an array");
        let slices: Vec<&str> = items.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            slices,
            [r#"[1, "]", {"a": [2]}]"#, r#"{"k": "v,w"}"#, "null"]
        );
        assert_eq!(top_level_array_items("[]"), Some(vec![]));
        assert_eq!(top_level_array_items("{}"), None);
    }

    #[test]
    fn bytes_become_kombu_markers() {
        assert_eq!(
            bytes_marker(b"abc"),
            json!({"__type__": "bytes", "__value__": "abc"})
        );
        assert_eq!(
            bytes_marker(&[0xff, 0x00]),
            json!({"__type__": "base64", "__value__": "/wA="})
        );
    }
}
