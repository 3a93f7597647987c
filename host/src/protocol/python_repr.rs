//! Python's `repr()` of the values JSON decodes to, as a Python worker prints them in log
//! lines, events, control replies and exception texts (`{'a': 1}`, `ValueError('x')`,
//! `(1,)`).

use serde_json::Value;

/// `repr(value)` for the Python value the JSON decodes to.
pub fn python_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

/// `repr(ExcType(*args))`: `ValueError('boom')`, `KeyError('k')`, `Exception()`.
pub fn exception_repr(exc_type: &str, args: &[Value]) -> String {
    format!("{exc_type}({})", python_args(args))
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, key);
                out.push_str(": ");
                write_repr(out, item);
            }
            out.push('}');
        }
    }
}

/// Python's float repr: always a `.` or exponent, `inf`/`nan` spelled as Python does.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let text = f.to_string();
    if text.contains(['.', 'e', 'E']) {
        text
    } else {
        format!("{text}.0")
    }
}

/// Python's str repr: single quotes unless the text holds one and no double quote.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_print_as_python_does() {
        assert_eq!(python_repr(&json!(5)), "5");
        assert_eq!(python_repr(&json!("x")), "'x'");
        assert_eq!(python_repr(&json!({"a": 1})), "{'a': 1}");
        assert_eq!(python_repr(&json!(null)), "None");
        assert_eq!(
            python_repr(&json!([true, 1.0, "it's"])),
            "[True, 1.0, \"it's\"]"
        );
        assert_eq!(python_repr(&json!("a\nb")), "'a\\nb'");
        assert_eq!(
            python_repr(&json!({"k": [1, null], "t": "x\n"})),
            r"{'k': [1, None], 't': 'x\n'}"
        );
    }

    #[test]
    fn args_tuples_and_exceptions_print_as_python_does() {
        assert_eq!(
            python_args(&[json!("it's"), json!(null), json!(true), json!(1.5)]),
            r#""it's", None, True, 1.5"#
        );
        assert_eq!(python_args(&[json!("a'\"b")]), r#"'a\'"b'"#);
        assert_eq!(python_tuple(&[json!(1)]), "(1,)");
        assert_eq!(python_tuple(&[json!(1), json!(2)]), "(1, 2)");
        assert_eq!(python_tuple(&[]), "()");
        assert_eq!(
            exception_repr("ValueError", &[json!("boom")]),
            "ValueError('boom')"
        );
        assert_eq!(exception_repr("Exception", &[]), "Exception()");
    }
}
