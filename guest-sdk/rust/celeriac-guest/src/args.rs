//! Binding Celery's `args` (a JSON array) and `kwargs` (a JSON object) to a task function's
//! parameters, with Python's rules and Python's `TypeError` messages. The `#[task]` macro
//! describes the parameters ([`Param`]); this module does the rest at run time. It knows
//! nothing of the WIT types.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::TaskError;

/// One parameter of a task function, as the `#[task]` macro sees it.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// The parameter's name, which is also its keyword.
    pub name: &'static str,
    /// False for `Option<_>` parameters, which default to `None`.
    pub required: bool,
}

/// The arguments of one call, sorted into parameter slots.
#[derive(Debug)]
pub struct Bound {
    /// The function name, for error messages (`add() missing …`).
    func: &'static str,
    params: &'static [Param],
    /// One slot per parameter; `None` = not given (allowed only for optional parameters).
    slots: Vec<Option<Value>>,
    /// Positional arguments beyond the parameters, for an `Args` parameter.
    rest_args: Vec<Value>,
    /// Keyword arguments that name no parameter, for a `Kwargs` parameter.
    rest_kwargs: Map<String, Value>,
}

/// Parses the `args` JSON text; an empty text counts as no arguments.
pub(crate) fn parse_args(func: &str, text: &str) -> Result<Vec<Value>, TaskError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|err| {
        TaskError::type_error(format!(
            "{func}() argument list must be a JSON array: {err}"
        ))
    })
}

/// Parses the `kwargs` JSON text; an empty text counts as no keyword arguments.
pub(crate) fn parse_kwargs(func: &str, text: &str) -> Result<Map<String, Value>, TaskError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(text).map_err(|err| {
        TaskError::type_error(format!(
            "{func}() keyword arguments must be a JSON object: {err}"
        ))
    })
}

impl Bound {
    /// Sorts `args` and `kwargs` into `params`, failing the way CPython does, in its order:
    /// keyword problems first, then too many positional arguments, then missing ones.
    /// `var_args`/`var_kwargs` say whether the function collects extras (`*args`,
    /// `**kwargs`).
    pub fn bind(
        func: &'static str,
        params: &'static [Param],
        var_args: bool,
        var_kwargs: bool,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Bound, TaskError> {
        let given = args.len();
        let mut slots: Vec<Option<Value>> = vec![None; params.len()];
        let mut rest_args = Vec::new();
        for (index, value) in args.into_iter().enumerate() {
            match slots.get_mut(index) {
                Some(slot) => *slot = Some(value),
                None => rest_args.push(value),
            }
        }

        let mut rest_kwargs = Map::new();
        for (key, value) in kwargs {
            match params.iter().position(|p| p.name == key) {
                Some(index) if slots[index].is_some() => {
                    return Err(TaskError::type_error(format!(
                        "{func}() got multiple values for argument '{key}'"
                    )));
                }
                Some(index) => slots[index] = Some(value),
                None if var_kwargs => {
                    rest_kwargs.insert(key, value);
                }
                None => {
                    return Err(TaskError::type_error(format!(
                        "{func}() got an unexpected keyword argument '{key}'"
                    )));
                }
            }
        }

        if !var_args && given > params.len() {
            return Err(TaskError::type_error(too_many_message(func, params, given)));
        }

        let missing: Vec<&str> = params
            .iter()
            .zip(&slots)
            .filter(|(param, slot)| param.required && slot.is_none())
            .map(|(param, _)| param.name)
            .collect();
        if !missing.is_empty() {
            return Err(TaskError::type_error(missing_message(func, &missing)));
        }

        Ok(Bound {
            func,
            params,
            slots,
            rest_args,
            rest_kwargs,
        })
    }

    /// Deserializes parameter `index`. A parameter that was not given is deserialized from
    /// `null`, which is how an `Option<_>` becomes `None` (`bind` has already refused a
    /// missing required one).
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let value = self
            .slots
            .get_mut(index)
            .and_then(Option::take)
            .unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|err| {
            let name = self.params.get(index).map_or("?", |p| p.name);
            TaskError::type_error(format!("{}() argument '{name}': {err}", self.func))
        })
    }

    /// The positional arguments no parameter took (for an `Args` parameter).
    pub fn take_args(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.rest_args)
    }

    /// The keyword arguments no parameter took (for a `Kwargs` parameter).
    pub fn take_kwargs(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.rest_kwargs)
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `add() takes 2 positional arguments but 3 were given`, or `takes from 1 to 2 …` when some
/// parameters are optional.
fn too_many_message(func: &str, params: &[Param], given: usize) -> String {
    let required = params.iter().filter(|p| p.required).count();
    let takes = if required == params.len() {
        plural(params.len(), "positional argument")
    } else {
        format!("from {required} to {} positional arguments", params.len())
    };
    let was = if given == 1 { "was" } else { "were" };
    format!("{func}() takes {takes} but {given} {was} given")
}

/// `add() missing 2 required positional arguments: 'x' and 'y'`.
fn missing_message(func: &str, missing: &[&str]) -> String {
    let quoted: Vec<String> = missing.iter().map(|name| format!("'{name}'")).collect();
    let names = match quoted.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
        [] => String::new(),
    };
    format!(
        "{func}() missing {} {}: {names}",
        missing.len(),
        if missing.len() == 1 {
            "required positional argument"
        } else {
            "required positional arguments"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exception;
    use serde_json::json;

    const XY: &[Param] = &[
        Param {
            name: "x",
            required: true,
        },
        Param {
            name: "y",
            required: true,
        },
    ];
    const X_OPT_Z: &[Param] = &[
        Param {
            name: "x",
            required: true,
        },
        Param {
            name: "z",
            required: false,
        },
    ];

    fn bind(
        params: &'static [Param],
        var_args: bool,
        var_kwargs: bool,
        args: Value,
        kwargs: Value,
    ) -> Result<Bound, TaskError> {
        let args = serde_json::from_value(args).expect("test args are an array");
        let kwargs = serde_json::from_value(kwargs).expect("test kwargs are an object");
        Bound::bind("f", params, var_args, var_kwargs, args, kwargs)
    }

    fn type_error_message(result: Result<Bound, TaskError>) -> String {
        match result {
            Err(TaskError::Raised(Exception {
                exc_type,
                exc_module,
                message,
                ..
            })) => {
                assert_eq!(
                    (exc_type.as_str(), exc_module.as_str()),
                    ("TypeError", "builtins")
                );
                message
            }
            other => panic!("expected a TypeError, got {other:?}"),
        }
    }

    #[test]
    fn positional_then_keyword() {
        let mut b = bind(XY, false, false, json!([2]), json!({"y": 3})).expect("binds");
        assert_eq!(b.take::<i64>(0).expect("x"), 2);
        assert_eq!(b.take::<i64>(1).expect("y"), 3);
    }

    #[test]
    fn all_by_keyword_in_any_order() {
        let mut b = bind(XY, false, false, json!([]), json!({"y": 3, "x": 1})).expect("binds");
        assert_eq!(
            (b.take::<i64>(0).expect("x"), b.take::<i64>(1).expect("y")),
            (1, 3)
        );
    }

    #[test]
    fn missing_option_is_none_and_given_option_is_some() {
        let mut b = bind(X_OPT_Z, false, false, json!([1]), json!({})).expect("binds");
        assert_eq!(b.take::<Option<String>>(1).expect("z"), None);
        let mut b = bind(X_OPT_Z, false, false, json!([1, "v"]), json!({})).expect("binds");
        assert_eq!(
            b.take::<Option<String>>(1).expect("z"),
            Some("v".to_owned())
        );
    }

    #[test]
    fn missing_required_argument_messages() {
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([1]), json!({}))),
            "f() missing 1 required positional argument: 'y'"
        );
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([]), json!({}))),
            "f() missing 2 required positional arguments: 'x' and 'y'"
        );
        const ABC: &[Param] = &[
            Param {
                name: "a",
                required: true,
            },
            Param {
                name: "b",
                required: true,
            },
            Param {
                name: "c",
                required: true,
            },
        ];
        assert_eq!(
            type_error_message(bind(ABC, false, false, json!([]), json!({}))),
            "f() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
    }

    #[test]
    fn too_many_positional_messages() {
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([1, 2, 3]), json!({}))),
            "f() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            type_error_message(bind(X_OPT_Z, false, false, json!([1, 2, 3]), json!({}))),
            "f() takes from 1 to 2 positional arguments but 3 were given"
        );
        assert_eq!(
            type_error_message(bind(&[], false, false, json!([1]), json!({}))),
            "f() takes 0 positional arguments but 1 was given"
        );
    }

    #[test]
    fn unknown_and_duplicate_keywords() {
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([1, 2]), json!({"z": 0}))),
            "f() got an unexpected keyword argument 'z'"
        );
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([1]), json!({"x": 0}))),
            "f() got multiple values for argument 'x'"
        );
    }

    #[test]
    fn keyword_errors_come_before_count_errors_as_in_cpython() {
        assert_eq!(
            type_error_message(bind(XY, false, false, json!([1, 2, 3]), json!({"q": 0}))),
            "f() got an unexpected keyword argument 'q'"
        );
    }

    #[test]
    fn extras_go_to_var_args_and_var_kwargs() {
        const X: &[Param] = &[Param {
            name: "x",
            required: true,
        }];
        let mut b =
            bind(X, true, true, json!([1, 2, 3]), json!({"k": "v", "x2": 0})).expect("binds");
        assert_eq!(b.take::<i64>(0).expect("x"), 1);
        assert_eq!(b.take_args(), vec![json!(2), json!(3)]);
        assert_eq!(Value::Object(b.take_kwargs()), json!({"k": "v", "x2": 0}));
    }

    #[test]
    fn raw_args_and_kwargs_receive_everything() {
        let mut b =
            bind(&[], true, true, json!([1, "two", null]), json!({"a": [1]})).expect("binds");
        assert_eq!(b.take_args(), vec![json!(1), json!("two"), json!(null)]);
        assert_eq!(Value::Object(b.take_kwargs()), json!({"a": [1]}));
    }

    #[test]
    fn wrong_type_is_a_type_error_naming_the_parameter() {
        let mut b = bind(XY, false, false, json!(["a", 2]), json!({})).expect("binds");
        let err = b.take::<i64>(0).expect_err("a string is not an i64");
        let TaskError::Raised(exc) = err else {
            panic!("expected a raised TypeError")
        };
        assert_eq!(exc.exc_type, "TypeError");
        assert!(
            exc.message
                .starts_with("f() argument 'x': invalid type: string \"a\""),
            "{}",
            exc.message
        );
    }

    #[test]
    fn explicit_null_for_a_required_parameter_is_a_type_error() {
        let mut b = bind(XY, false, false, json!([null, 2]), json!({})).expect("binds");
        assert!(matches!(b.take::<i64>(0), Err(TaskError::Raised(e)) if e.exc_type == "TypeError"));
    }

    #[test]
    fn malformed_json_is_a_type_error() {
        assert!(
            matches!(parse_args("f", "{}"), Err(TaskError::Raised(e)) if e.exc_type == "TypeError")
        );
        assert!(
            matches!(parse_kwargs("f", "[1]"), Err(TaskError::Raised(e)) if e.exc_type == "TypeError")
        );
        assert_eq!(
            parse_args("f", "").expect("empty is no args"),
            Vec::<Value>::new()
        );
        assert_eq!(
            parse_kwargs("f", " ").expect("empty is no kwargs"),
            Map::new()
        );
    }
}
