//! How values appear in the worker's log lines, as Celery writes them.

/// `text` cut to at most `max` bytes (on a character boundary), with `...` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `exc.args` roughly as Python's repr writes them inside `Type(...)`.
pub fn python_args(args: &[serde_json::Value]) -> String {
    use serde_json::Value;
    args.iter()
        .map(|arg| match arg {
            Value::String(text) => format!("'{}'", text.replace('\'', "\\'")),
            Value::Null => "None".to_owned(),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncate_cuts_on_a_character_boundary() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("aé", 2), "a...");
    }

    #[test]
    fn python_args_reads_like_a_repr() {
        assert_eq!(
            python_args(&[json!("it's"), json!(null), json!(true), json!(1.5)]),
            r"'it\'s', None, True, 1.5"
        );
    }
}
