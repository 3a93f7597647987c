//! YAML bodies read as `yaml.safe_load` reads them, into kombu JSON's representation.
//!
//! serde_norway builds the value, with two fixes for what it cannot see:
//!
//! * libyaml expands a core tag such as `!!binary` (how `yaml.safe_dump` writes `bytes`) to
//!   `tag:yaml.org,2002:binary`, and serde_norway passes such a node on as its plain text,
//!   so bytes would arrive as a base64 string. A `%TAG !! !` directive turns the core tags
//!   into local ones, which serde_norway hands to [`KombuValue`] by name. A body with its
//!   own directives or document markers (a line starting `%`, `---` or `...`;
//!   `yaml.safe_dump` writes none) cannot take the directive and is parsed as it is.
//! * `yaml.safe_load` turns *plain* scalars shaped like timestamps into `datetime`/`date`
//!   objects (a string of that shape is written quoted), but serde_norway does not say
//!   whether a scalar was plain. An event parser that does ([`saphyr_parser`]) finds them
//!   first, and each gets a local `!timestamp` tag in the text, which [`KombuValue`] turns
//!   into kombu's marker ([`super::yaml_timestamp`]). Mapping keys are left alone: a JSON
//!   key cannot be a marker.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::Value;

use super::kombu_json::KombuValue;
use super::yaml_timestamp::resolves_as_timestamp;

/// The local tag a plain timestamp gets; also what `!!timestamp` becomes under `%TAG !! !`.
pub const TIMESTAMP_TAG: &str = "timestamp";

/// Parses a YAML body into kombu JSON's representation.
pub fn from_yaml(text: &str) -> Result<Value, String> {
    let text = tag_plain_timestamps(text)?;
    let has_markers = text
        .lines()
        .any(|line| line.starts_with('%') || line.starts_with("---") || line.starts_with("..."));
    let parsed = if has_markers {
        serde_norway::from_str::<KombuValue>(&text)
    } else {
        serde_norway::from_str::<KombuValue>(&format!("%TAG !! !\n---\n{text}"))
    };
    parsed.map(|v| v.0).map_err(|err| err.to_string())
}

/// How deep serde_norway lets collections nest. A body nested deeper is refused by the
/// event pass: serde_norway reads all of a body's events before it checks the depth, which
/// takes seconds for a hostile body of a few megabytes of `[`.
const DEPTH_LIMIT: usize = 128;

/// `text` with `!timestamp ` written before every untagged plain scalar that PyYAML
/// resolves as a timestamp, except mapping keys. Text the event parser rejects is left as
/// it is, for serde_norway to report on; text nested too deep is an error.
fn tag_plain_timestamps(text: &str) -> Result<Cow<'_, str>, String> {
    let mut char_offsets = Vec::new();
    // For each open collection: `Some(next node is a key)` for a mapping, `None` for a
    // sequence.
    let mut open: Vec<Option<bool>> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Ok(Cow::Borrowed(text));
        };
        let is_key = matches!(open.last(), Some(Some(true)));
        let starts_node = matches!(
            event,
            Event::Scalar(..)
                | Event::Alias(_)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
        );
        if let (true, Some(Some(next_is_key))) = (starts_node, open.last_mut()) {
            *next_is_key = !*next_is_key;
        }
        if open.len() > DEPTH_LIMIT {
            return Err(format!("YAML nested deeper than {DEPTH_LIMIT} levels"));
        }
        match event {
            Event::Scalar(value, ScalarStyle::Plain, _, None)
                if !is_key && resolves_as_timestamp(&value) =>
            {
                char_offsets.push(span.start.index());
            }
            Event::SequenceStart(..) => open.push(None),
            Event::MappingStart(..) => open.push(Some(true)),
            Event::SequenceEnd | Event::MappingEnd => {
                open.pop();
            }
            _ => {}
        }
    }
    if char_offsets.is_empty() {
        return Ok(Cow::Borrowed(text));
    }
    let mut tagged = String::with_capacity(text.len() + char_offsets.len() * 12);
    let mut pending = char_offsets.into_iter().peekable();
    for (char_index, ch) in text.chars().enumerate() {
        if pending.next_if_eq(&char_index).is_some() {
            tagged.push('!');
            tagged.push_str(TIMESTAMP_TAG);
            tagged.push(' ');
        }
        tagged.push(ch);
    }
    Ok(Cow::Owned(tagged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn datetime(iso: &str) -> Value {
        json!({"__type__": "datetime", "__value__": iso})
    }

    fn date(iso: &str) -> Value {
        json!({"__type__": "date", "__value__": iso})
    }

    #[test]
    fn plain_timestamps_become_markers_and_quoted_ones_stay_strings() {
        // yaml.safe_dump(((datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), date(2024, 2, 29),
        //   "2024-01-02", "2024-01-02 03:04:05"), {"when": [date(2024, 2, 29)]}, None))
        let yaml = "- - 2024-01-02 03:04:05+00:00\n  - 2024-02-29\n  - '2024-01-02'\n  - '2024-01-02 03:04:05'\n- when:\n  - 2024-02-29\n- null\n";
        assert_eq!(
            from_yaml(yaml),
            Ok(json!([
                [
                    datetime("2024-01-02T03:04:05+00:00"),
                    date("2024-02-29"),
                    "2024-01-02",
                    "2024-01-02 03:04:05"
                ],
                {"when": [date("2024-02-29")]},
                null
            ]))
        );
    }

    #[test]
    fn flow_style_anchors_and_unicode_before_a_timestamp() {
        let yaml = "[\"é😀\", &a 2024-01-02, *a, {k: 2001-12-14t21:59:43.10-05:00}]";
        let stamp = date("2024-01-02");
        assert_eq!(
            from_yaml(yaml),
            Ok(json!([
                "é😀",
                stamp,
                stamp,
                {"k": datetime("2001-12-14T21:59:43.100000-05:00")}
            ]))
        );
    }

    #[test]
    fn explicit_tags_and_keys() {
        let yaml = "{2024-01-02: !!timestamp 2024-1-2, !!str 2024-01-03: x}";
        assert_eq!(
            from_yaml(yaml),
            Ok(json!({"2024-01-02": date("2024-01-02"), "2024-01-03": "x"}))
        );
    }

    #[test]
    fn an_impossible_date_fails_the_body_as_in_python() {
        let err = from_yaml("[2023-02-29]").expect_err("no such day");
        assert!(err.contains("not a valid date"), "{err}");
    }

    #[test]
    fn a_document_with_its_own_markers_still_gets_timestamps() {
        assert_eq!(
            from_yaml("%YAML 1.1\n---\n- 2024-01-02 03:04:05\n"),
            Ok(json!([datetime("2024-01-02T03:04:05")]))
        );
    }

    #[test]
    fn a_body_nested_too_deep_is_refused_before_serde_norway_reads_it() {
        let depth = DEPTH_LIMIT + 1;
        let nested = "[".repeat(depth) + &"]".repeat(depth);
        assert_eq!(
            from_yaml(&nested),
            Err(format!("YAML nested deeper than {DEPTH_LIMIT} levels"))
        );
        let within = "[".repeat(DEPTH_LIMIT) + &"]".repeat(DEPTH_LIMIT);
        assert!(from_yaml(&within).is_ok());
    }
}
