//! Results as task events carry them: Python's `repr()`, cut to Celery's maximum.

use serde_json::Value;

use crate::protocol::python_repr::python_repr;

/// The most characters of a result repr an event carries (`Task.resultrepr_maxsize`).
pub const RESULT_REPR_MAX: usize = 1024;

/// `repr()` of a result as a task event carries it: cut to [`RESULT_REPR_MAX`]
/// characters. `result_json` that is not JSON is shown as a string.
pub fn result_repr(result_json: &str) -> String {
    let text = match serde_json::from_str::<Value>(result_json) {
        Ok(value) => python_repr(&value),
        Err(_) => python_repr(&Value::from(result_json)),
    };
    match text.char_indices().nth(RESULT_REPR_MAX) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_cut_to_the_maximum() {
        assert_eq!(result_repr("5"), "5");
        let long = format!("\"{}\"", "x".repeat(2000));
        assert_eq!(result_repr(&long).chars().count(), RESULT_REPR_MAX);
    }
}
