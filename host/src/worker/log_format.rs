//! How values appear in the worker's log lines, as Celery writes them.

use serde_json::Value;

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

/// `exc.args` as Python's repr writes them inside `Type(...)`.
pub fn python_args(args: &[Value]) -> String {
    args.iter().map(python_repr).collect::<Vec<_>>().join(", ")
}

/// A tuple's repr: `(1, 2)`, `(1,)`, `()`.
pub fn python_tuple(items: &[Value]) -> String {
    match items {
        [one] => format!("({},)", python_repr(one)),
        _ => format!("({})", python_args(items)),
    }
}

/// A JSON value as Python's repr writes the value it decodes to.
pub fn python_repr(value: &Value) -> String {
    match value {
        Value::String(text) => python_str_repr(text),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => number.to_string(),
        Value::Array(items) => format!("[{}]", python_args(items)),
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(key, value)| format!("{}: {}", python_str_repr(key), python_repr(value)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python's `repr(str)`: single quotes, unless the text holds a single quote and no double.
fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
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
            r#""it's", None, True, 1.5"#
        );
        assert_eq!(python_args(&[json!("a'\"b")]), r#"'a\'"b'"#);
    }

    #[test]
    fn containers_read_like_python() {
        assert_eq!(
            python_repr(&json!({"k": [1, null], "t": "x\n"})),
            r"{'k': [1, None], 't': 'x\n'}"
        );
        assert_eq!(python_tuple(&[json!(1)]), "(1,)");
        assert_eq!(python_tuple(&[json!(1), json!(2)]), "(1, 2)");
        assert_eq!(python_tuple(&[]), "()");
    }
}
