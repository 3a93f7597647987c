//! Python's view of Rust failures: the names Python gives I/O errors, the class tree of the
//! builtin exceptions (so `autoretry_for = ["OSError"]` catches `FileNotFoundError`), and
//! Python's `str`/`repr` of exception arguments. It owns no Celery rules.

use serde_json::Value;

use crate::error::Exception;

/// The builtin exception classes a task may raise, each with its base class. Only these are
/// known to be subclasses of something other than `Exception`; any other name (from any
/// module) is treated as a direct subclass of `Exception`, which is what the Python client
/// assumes for classes it does not have.
const BUILTIN_BASES: &[(&str, &str)] = &[
    ("Exception", "BaseException"),
    ("SystemExit", "BaseException"),
    ("KeyboardInterrupt", "BaseException"),
    ("GeneratorExit", "BaseException"),
    ("ArithmeticError", "Exception"),
    ("FloatingPointError", "ArithmeticError"),
    ("OverflowError", "ArithmeticError"),
    ("ZeroDivisionError", "ArithmeticError"),
    ("AssertionError", "Exception"),
    ("AttributeError", "Exception"),
    ("BufferError", "Exception"),
    ("EOFError", "Exception"),
    ("ImportError", "Exception"),
    ("ModuleNotFoundError", "ImportError"),
    ("LookupError", "Exception"),
    ("IndexError", "LookupError"),
    ("KeyError", "LookupError"),
    ("MemoryError", "Exception"),
    ("NameError", "Exception"),
    ("UnboundLocalError", "NameError"),
    ("OSError", "Exception"),
    ("BlockingIOError", "OSError"),
    ("ChildProcessError", "OSError"),
    ("ConnectionError", "OSError"),
    ("BrokenPipeError", "ConnectionError"),
    ("ConnectionAbortedError", "ConnectionError"),
    ("ConnectionRefusedError", "ConnectionError"),
    ("ConnectionResetError", "ConnectionError"),
    ("FileExistsError", "OSError"),
    ("FileNotFoundError", "OSError"),
    ("InterruptedError", "OSError"),
    ("IsADirectoryError", "OSError"),
    ("NotADirectoryError", "OSError"),
    ("PermissionError", "OSError"),
    ("ProcessLookupError", "OSError"),
    ("TimeoutError", "OSError"),
    ("ReferenceError", "Exception"),
    ("RuntimeError", "Exception"),
    ("NotImplementedError", "RuntimeError"),
    ("RecursionError", "RuntimeError"),
    ("StopIteration", "Exception"),
    ("SyntaxError", "Exception"),
    ("SystemError", "Exception"),
    ("TypeError", "Exception"),
    ("ValueError", "Exception"),
    ("UnicodeError", "ValueError"),
    ("UnicodeDecodeError", "UnicodeError"),
    ("UnicodeEncodeError", "UnicodeError"),
    ("UnicodeTranslateError", "UnicodeError"),
];

fn builtin_base(name: &str) -> Option<&'static str> {
    BUILTIN_BASES
        .iter()
        .find(|(class, _)| *class == name)
        .map(|(_, base)| *base)
}

/// Whether `exc` would be caught by `except <class_name>` in Python.
///
/// `class_name` is a builtin name (`OSError`, also spelled `builtins.OSError`; `IOError` and
/// `EnvironmentError` are its aliases), or any class as `Name` or `module.Name`, which then
/// matches only that exact class.
pub(crate) fn is_instance(exc: &Exception, class_name: &str) -> bool {
    let wanted = class_name.strip_prefix("builtins.").unwrap_or(class_name);
    let wanted = match wanted {
        "IOError" | "EnvironmentError" => "OSError",
        other => other,
    };
    if exc.exc_type == wanted || format!("{}.{}", exc.exc_module, exc.exc_type) == class_name {
        return true;
    }
    // Walk the builtin tree; a class we do not know derives from Exception.
    let mut current = if exc.exc_module == "builtins" {
        builtin_base(&exc.exc_type).unwrap_or("Exception")
    } else {
        "Exception"
    };
    // The tree is four levels deep at most; the bound guards against a cycle in the table.
    for _ in 0..BUILTIN_BASES.len() {
        if current == wanted {
            return true;
        }
        match builtin_base(current) {
            Some(base) => current = base,
            None => return false,
        }
    }
    false
}

/// The `OSError` subclass, errno and `strerror` Python on Linux reports for an I/O error.
/// Linux numbers are used, not the WASI ones `raw_os_error` carries, because the exception
/// is re-created by a Python client that knows the former.
fn os_error_kind(kind: std::io::ErrorKind) -> Option<(&'static str, i64, &'static str)> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::NotFound => ("FileNotFoundError", 2, "No such file or directory"),
        K::PermissionDenied => ("PermissionError", 13, "Permission denied"),
        K::AlreadyExists => ("FileExistsError", 17, "File exists"),
        K::IsADirectory => ("IsADirectoryError", 21, "Is a directory"),
        K::NotADirectory => ("NotADirectoryError", 20, "Not a directory"),
        K::DirectoryNotEmpty => ("OSError", 39, "Directory not empty"),
        K::ReadOnlyFilesystem => ("OSError", 30, "Read-only file system"),
        K::StorageFull => ("OSError", 28, "No space left on device"),
        K::InvalidInput => ("OSError", 22, "Invalid argument"),
        K::Unsupported => ("OSError", 95, "Operation not supported"),
        K::ConnectionRefused => ("ConnectionRefusedError", 111, "Connection refused"),
        K::ConnectionReset => ("ConnectionResetError", 104, "Connection reset by peer"),
        K::ConnectionAborted => (
            "ConnectionAbortedError",
            103,
            "Software caused connection abort",
        ),
        K::BrokenPipe => ("BrokenPipeError", 32, "Broken pipe"),
        K::TimedOut => ("TimeoutError", 110, "Connection timed out"),
        K::Interrupted => ("InterruptedError", 4, "Interrupted system call"),
        K::WouldBlock => ("BlockingIOError", 11, "Resource temporarily unavailable"),
        _ => return None,
    })
}

/// See [`Exception::from_io`].
pub(crate) fn from_io(err: &std::io::Error, filename: Option<&str>) -> Exception {
    if err.kind() == std::io::ErrorKind::InvalidData {
        // Rust reports undecodable text this way; Python raises UnicodeDecodeError, a
        // ValueError whose five-argument constructor the client could not re-create.
        return Exception::builtin("ValueError", err.to_string());
    }
    let Some((class, errno, strerror)) = os_error_kind(err.kind()) else {
        return Exception::builtin("OSError", err.to_string());
    };
    // Python: OSError(errno, strerror, filename).args == (errno, strerror); the filename
    // shows only in str(exc).
    let mut exc = Exception::with_args(
        class,
        "builtins",
        vec![Value::from(errno), Value::from(strerror)],
    );
    exc.message = match filename {
        Some(name) => format!(
            "[Errno {errno}] {strerror}: {}",
            python_repr(&Value::String(name.to_owned()))
        ),
        None => format!("[Errno {errno}] {strerror}"),
    };
    exc
}

/// Python's `str(exc)` for an exception with these `args`.
pub(crate) fn python_str_of_args(args: &[Value]) -> String {
    match args {
        [] => String::new(),
        [Value::String(s)] => s.clone(),
        [one] => python_repr(one),
        many => {
            let items: Vec<String> = many.iter().map(python_repr).collect();
            format!("({})", items.join(", "))
        }
    }
}

/// Python's `repr` of the value JSON decodes to.
pub(crate) fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => repr_str(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", repr_str(k), python_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn repr_str(s: &str) -> String {
    // Python prefers single quotes, and switches to double quotes only to avoid escaping.
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io;

    #[test]
    fn not_found_is_file_not_found_error_with_errno_2() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        let exc = from_io(&err, Some("/data/x.txt"));
        assert_eq!(exc.exc_type, "FileNotFoundError");
        assert_eq!(exc.exc_module, "builtins");
        assert_eq!(exc.args, vec![json!(2), json!("No such file or directory")]);
        assert_eq!(
            exc.message,
            "[Errno 2] No such file or directory: '/data/x.txt'"
        );
    }

    #[test]
    fn permission_denied_without_filename() {
        let exc = from_io(&io::Error::from(io::ErrorKind::PermissionDenied), None);
        assert_eq!(exc.exc_type, "PermissionError");
        assert_eq!(exc.message, "[Errno 13] Permission denied");
    }

    #[test]
    fn unknown_io_kinds_are_plain_os_errors_and_bad_utf8_is_value_error() {
        let exc = from_io(&io::Error::other("boom"), None);
        assert_eq!(
            (exc.exc_type.as_str(), exc.message.as_str()),
            ("OSError", "boom")
        );
        let exc = from_io(
            &io::Error::new(io::ErrorKind::InvalidData, "not utf-8"),
            None,
        );
        assert_eq!(exc.exc_type, "ValueError");
    }

    #[test]
    fn builtin_tree_matches_like_except_clauses() {
        let fnf = Exception::builtin("FileNotFoundError", "x");
        assert!(is_instance(&fnf, "FileNotFoundError"));
        assert!(is_instance(&fnf, "OSError"));
        assert!(is_instance(&fnf, "IOError"));
        assert!(is_instance(&fnf, "builtins.OSError"));
        assert!(is_instance(&fnf, "Exception"));
        assert!(is_instance(&fnf, "BaseException"));
        assert!(!is_instance(&fnf, "ValueError"));
        assert!(!is_instance(&fnf, "ConnectionError"));

        let key = Exception::builtin("KeyError", "k");
        assert!(is_instance(&key, "LookupError"));
        assert!(!is_instance(&key, "IndexError"));

        let exit = Exception::builtin("SystemExit", "1");
        assert!(!is_instance(&exit, "Exception"));
        assert!(is_instance(&exit, "BaseException"));
    }

    #[test]
    fn foreign_classes_match_by_name_or_qualified_name_or_exception() {
        let exc = Exception::new("Flaky", "myapp.errors", "try again");
        assert!(is_instance(&exc, "Flaky"));
        assert!(is_instance(&exc, "myapp.errors.Flaky"));
        assert!(is_instance(&exc, "Exception"));
        assert!(!is_instance(&exc, "other.Flaky"));
        assert!(!is_instance(&exc, "OSError"));
        // A foreign class that happens to share a builtin's name is not that builtin's child.
        let fake = Exception::new("KeyError", "myapp", "k");
        assert!(!is_instance(&fake, "LookupError"));
    }

    #[test]
    fn python_repr_of_json_values() {
        assert_eq!(python_repr(&json!(null)), "None");
        assert_eq!(
            python_repr(&json!([true, 1, 2.5, "a"])),
            "[True, 1, 2.5, 'a']"
        );
        assert_eq!(python_repr(&json!({"k": "it's"})), "{'k': \"it's\"}");
        assert_eq!(python_repr(&json!("a\nb\\")), "'a\\nb\\\\'");
        assert_eq!(python_str_of_args(&[json!("plain")]), "plain");
        assert_eq!(python_str_of_args(&[json!(5)]), "5");
    }
}
