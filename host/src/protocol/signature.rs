//! Celery signatures, the canvas dicts found in `embed` and in built-in task arguments
//! (spec §6.1): reading them, partial application and option merging (§6.2), where a
//! signature is published and the outgoing message a plain one becomes (§6.3, §2.8).

use serde_json::{Map, Value};

use super::encode::OutgoingTask;
use super::message::TimeLimit;
use super::timestamp::Timestamp;

/// Celery's `task_default_queue`: where a signature without routing options goes.
pub const DEFAULT_QUEUE: &str = "celery";

/// A signature that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not a JSON object.
    #[error("a signature must be an object, got {0}")]
    NotAnObject(String),
    /// No `task` name.
    #[error("signature without a task name")]
    NoTask,
    /// A field of the wrong JSON type.
    #[error("signature of {task}: {field} has the wrong type")]
    WrongType {
        /// The signature's task name.
        task: String,
        /// The field.
        field: &'static str,
    },
}

/// A signature dict: a task name, partial arguments, execution options and the kind of
/// canvas it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signature {
    /// The task name (`celery.chain`, `celery.group`, `celery.chord` for composites).
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments (a chain's or group's `tasks`, a chord's `header` and `body`).
    pub kwargs: Map<String, Value>,
    /// Execution options (§6.3); never holds `null` values.
    pub options: Map<String, Value>,
    /// `None` for a plain task; `chain`, `group`, `chord`, `xmap`, `xstarmap`, `chunks`.
    pub subtask_type: Option<String>,
    /// `.si()`: partial arguments from the parent are not prepended.
    pub immutable: bool,
}

/// Where a message is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `""`: the default exchange, the routing key names the queue.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

/// The task that publishes a message: its id and root become the message's parent and
/// root unless the signature names its own (spec §2.8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// The running task's id (`parent_id` of what it sends).
    pub task_id: Option<String>,
    /// The running task's root (its own id when it has none).
    pub root_id: Option<String>,
    /// `gen<pid>@<host>` of this worker.
    pub origin: String,
}

impl Signature {
    /// Reads a signature dict. `null` arguments, keyword arguments and options count as
    /// empty, and options whose value is `null` are dropped, as Celery does.
    pub fn from_value(value: &Value) -> Result<Signature, SignatureError> {
        let Value::Object(dict) = value else {
            return Err(SignatureError::NotAnObject(truncated(value)));
        };
        let task = match dict.get("task") {
            Some(Value::String(task)) if !task.is_empty() => task.clone(),
            _ => return Err(SignatureError::NoTask),
        };
        let wrong = |field| SignatureError::WrongType {
            task: task.clone(),
            field,
        };
        let args = match dict.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(args)) => args.clone(),
            Some(_) => return Err(wrong("args")),
        };
        let object = |field: &'static str| match dict.get(field) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map.clone()),
            Some(_) => Err(wrong(field)),
        };
        let kwargs = object("kwargs")?;
        let mut options = object("options")?;
        options.retain(|_, value| !value.is_null());
        let subtask_type = match dict.get("subtask_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind)) => Some(kind.clone()),
            Some(_) => return Err(wrong("subtask_type")),
        };
        let immutable = dict
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Signature {
            task,
            args,
            kwargs,
            options,
            subtask_type,
            immutable,
        })
    }

    /// The signature dict, as embedded in a message (`chain`, `chord`, callbacks).
    pub fn to_value(&self) -> Value {
        let mut dict = Map::new();
        dict.insert("task".into(), Value::from(self.task.clone()));
        dict.insert("args".into(), Value::Array(self.args.clone()));
        dict.insert("kwargs".into(), Value::Object(self.kwargs.clone()));
        dict.insert("options".into(), Value::Object(self.options.clone()));
        dict.insert(
            "subtask_type".into(),
            self.subtask_type.clone().map_or(Value::Null, Value::from),
        );
        dict.insert("immutable".into(), Value::Bool(self.immutable));
        Value::Object(dict)
    }

    /// A string option.
    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options.get(key).and_then(Value::as_str)
    }

    /// The id it was frozen with (`options.task_id`).
    pub fn task_id(&self) -> Option<&str> {
        self.option_str("task_id")
    }

    /// A clone with `partial` prepended to its arguments, unless it is immutable
    /// (`Signature.clone(args)`).
    pub fn with_partial_args(&self, partial: &[Value]) -> Signature {
        let mut clone = self.clone();
        if !self.immutable && !partial.is_empty() {
            clone.args = partial.iter().chain(&self.args).cloned().collect();
        }
        clone
    }

    /// Merges `options` over its own, keeping a `group_id` it already has (§6.2).
    pub fn with_options(mut self, options: &Map<String, Value>) -> Signature {
        for (key, value) in options {
            if value.is_null() || (key == "group_id" && self.options.contains_key(key)) {
                continue;
            }
            self.options.insert(key.clone(), value.clone());
        }
        self
    }

    /// Where the message goes: an `exchange` option with its `routing_key` (else the
    /// queue name); otherwise the default exchange to the `queue` option, else
    /// `default_queue` (Celery publishes to the queue's own exchange, which routes to the
    /// same queue).
    pub fn route(&self, default_queue: &str) -> Route {
        let queue = match self.options.get("queue") {
            Some(Value::String(name)) => Some(name.as_str()),
            Some(Value::Object(queue)) => queue.get("name").and_then(Value::as_str),
            _ => None,
        }
        .unwrap_or(default_queue);
        let exchange = match self.options.get("exchange") {
            Some(Value::String(name)) => Some(name.as_str()),
            Some(Value::Object(exchange)) => exchange.get("name").and_then(Value::as_str),
            _ => None,
        };
        match exchange {
            Some(exchange) if !exchange.is_empty() => Route {
                exchange: exchange.to_owned(),
                routing_key: self.option_str("routing_key").unwrap_or(queue).to_owned(),
            },
            _ => Route {
                exchange: String::new(),
                routing_key: queue.to_owned(),
            },
        }
    }

    /// The message a plain signature becomes with id `id`, sent by `sender` at
    /// `now_micros` (countdown and expiry seconds count from then).
    pub fn to_message(&self, id: &str, sender: &Sender, now_micros: i64) -> OutgoingTask {
        let opts = &self.options;
        let string = |key: &str| self.option_str(key).map(str::to_owned);
        let seconds_from_now = |seconds: f64| {
            Timestamp::from_unix_micros(now_micros.saturating_add((seconds * 1e6) as i64))
        };
        let instant = |key: &str| match opts.get(key)? {
            Value::String(text) => Timestamp::parse(text),
            Value::Number(seconds) => seconds.as_f64().map(seconds_from_now),
            _ => None,
        };
        let mut task = OutgoingTask::new(id, &self.task, self.args.clone(), self.kwargs.clone());
        task.eta = opts
            .get("countdown")
            .and_then(Value::as_f64)
            .map(seconds_from_now)
            .or_else(|| instant("eta"));
        task.expires = instant("expires");
        task.retries = opts
            .get("retries")
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        task.timelimit = TimeLimit {
            hard: opts.get("time_limit").and_then(Value::as_f64),
            soft: opts.get("soft_time_limit").and_then(Value::as_f64),
        };
        task.parent_id = string("parent_id").or_else(|| sender.task_id.clone());
        task.root_id = string("root_id")
            .or_else(|| sender.root_id.clone())
            .or_else(|| sender.task_id.clone());
        task.group = string("group_id");
        task.group_index = opts.get("group_index").and_then(Value::as_u64);
        task.shadow = string("shadow");
        task.origin = Some(sender.origin.clone());
        task.ignore_result = opts.get("ignore_result").and_then(Value::as_bool);
        task.replaced_task_nesting = opts
            .get("replaced_task_nesting")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        if let Some(Value::Array(names)) = opts.get("stamped_headers") {
            for name in names.iter().filter_map(Value::as_str) {
                task.stamped_headers.push(name.to_owned());
                let stamp = opts.get(name).cloned().unwrap_or(Value::Null);
                task.stamps.insert(name.to_owned(), stamp);
            }
        }
        if let Some(Value::Object(headers)) = opts.get("headers") {
            task.extra_headers = headers.clone();
        }
        task.embed.callbacks = signature_list(opts.get("link"));
        task.embed.errbacks = signature_list(opts.get("link_error"));
        task.embed.chain = signature_list(opts.get("chain"));
        task.embed.chord = opts.get("chord").filter(|c| c.is_object()).cloned();
        task.reply_to = string("reply_to");
        task.priority = opts
            .get("priority")
            .and_then(Value::as_u64)
            .map(|p| u8::try_from(p.min(255)).unwrap_or(u8::MAX));
        task
    }
}

/// `link`/`link_error`/`chain` options: one signature or a list of them.
fn signature_list(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.iter().filter(|i| i.is_object()).cloned().collect(),
        Some(item @ Value::Object(_)) => vec![item.clone()],
        _ => Vec::new(),
    }
}

/// At most 200 characters of `value`'s JSON, for error messages.
fn truncated(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(value: Value) -> Signature {
        Signature::from_value(&value).expect("a valid signature")
    }

    fn sender() -> Sender {
        Sender {
            task_id: Some("parent".into()),
            root_id: Some("root".into()),
            origin: "gen1@host".into(),
        }
    }

    #[test]
    fn partial_arguments_are_prepended_unless_immutable() {
        let partial = [json!(2)];
        let add = sig(json!({"task": "proj.add", "args": [10], "kwargs": {}, "options": {}}));
        assert_eq!(
            add.with_partial_args(&partial).args,
            vec![json!(2), json!(10)]
        );
        let fixed = sig(json!({"task": "proj.add", "args": [5, 5], "immutable": true}));
        assert_eq!(
            fixed.with_partial_args(&partial).args,
            vec![json!(5), json!(5)]
        );
    }

    #[test]
    fn null_fields_count_as_empty_and_null_options_are_dropped() {
        let s = sig(json!({"task": "t", "args": null, "kwargs": null,
                           "options": {"queue": null, "task_id": "x"}, "subtask_type": null}));
        assert!(s.args.is_empty() && s.kwargs.is_empty());
        assert_eq!(
            s.options,
            json!({"task_id": "x"}).as_object().cloned().expect("map")
        );
        assert_eq!(
            Signature::from_value(&json!({"args": []})),
            Err(SignatureError::NoTask)
        );
        assert!(matches!(
            Signature::from_value(&json!({"task": "t", "args": {}})),
            Err(SignatureError::WrongType { field: "args", .. })
        ));
    }

    #[test]
    fn merging_options_keeps_an_existing_group_id() {
        let s = sig(json!({"task": "t", "options": {"group_id": "mine", "queue": "a"}}));
        let over = json!({"group_id": "theirs", "queue": "b", "parent_id": "p"});
        let merged = s.with_options(over.as_object().expect("map"));
        assert_eq!(merged.option_str("group_id"), Some("mine"));
        assert_eq!(merged.option_str("queue"), Some("b"));
        assert_eq!(merged.option_str("parent_id"), Some("p"));
    }

    #[test]
    fn routes_follow_queue_then_exchange_options() {
        let plain = sig(json!({"task": "t"}));
        assert_eq!(
            plain.route(DEFAULT_QUEUE),
            Route {
                exchange: String::new(),
                routing_key: "celery".into()
            }
        );
        let queued = sig(json!({"task": "t", "options": {"queue": "q"}}));
        assert_eq!(queued.route(DEFAULT_QUEUE).routing_key, "q");
        let exchanged = sig(json!({"task": "t", "options": {"exchange": "x", "routing_key": "k"}}));
        assert_eq!(
            exchanged.route(DEFAULT_QUEUE),
            Route {
                exchange: "x".into(),
                routing_key: "k".into()
            }
        );
    }

    #[test]
    fn a_frozen_signature_becomes_the_message_celery_sends() {
        let s = sig(json!({
            "task": "proj.add", "args": [1], "kwargs": {"k": 1},
            "options": {"task_id": "frozen", "reply_to": "client", "group_id": "g",
                        "group_index": 2, "countdown": 2, "expires": 10,
                        "time_limit": 5, "soft_time_limit": 3, "priority": 7,
                        "link": {"task": "proj.cb"}, "link_error": [{"task": "proj.eb"}],
                        "chain": [{"task": "proj.last"}], "chord": {"task": "proj.body"},
                        "headers": {"x-h": 1}, "stamped_headers": ["s"], "s": "v"},
            "subtask_type": null, "immutable": false}));
        let message = s.to_message("frozen", &sender(), 1_000_000);
        assert_eq!(message.id, "frozen");
        assert_eq!(message.parent_id.as_deref(), Some("parent"));
        assert_eq!(message.root_id.as_deref(), Some("root"));
        assert_eq!(message.group.as_deref(), Some("g"));
        assert_eq!(message.group_index, Some(2));
        assert_eq!(message.eta.map(|t| t.unix_micros()), Some(3_000_000));
        assert_eq!(message.expires.map(|t| t.unix_micros()), Some(11_000_000));
        assert_eq!(message.timelimit.hard, Some(5.0));
        assert_eq!(message.timelimit.soft, Some(3.0));
        assert_eq!(message.priority, Some(7));
        assert_eq!(message.reply_to.as_deref(), Some("client"));
        assert_eq!(message.embed.callbacks, vec![json!({"task": "proj.cb"})]);
        assert_eq!(message.embed.errbacks, vec![json!({"task": "proj.eb"})]);
        assert_eq!(message.embed.chain, vec![json!({"task": "proj.last"})]);
        assert_eq!(message.embed.chord, Some(json!({"task": "proj.body"})));
        assert_eq!(message.extra_headers.get("x-h"), Some(&json!(1)));
        assert_eq!(message.stamps.get("s"), Some(&json!("v")));
        assert_eq!(message.origin.as_deref(), Some("gen1@host"));
    }

    #[test]
    fn a_signature_naming_its_parent_and_root_keeps_them() {
        let s = sig(json!({"task": "t", "options": {"parent_id": "p0", "root_id": "r0"}}));
        let message = s.to_message("id", &sender(), 0);
        assert_eq!(message.parent_id.as_deref(), Some("p0"));
        assert_eq!(message.root_id.as_deref(), Some("r0"));
    }

    #[test]
    fn to_value_round_trips() {
        let s = sig(json!({"task": "t", "args": [1], "kwargs": {"a": 2},
                           "options": {"task_id": "i"}, "subtask_type": "group", "immutable": true}));
        assert_eq!(Signature::from_value(&s.to_value()), Ok(s));
    }
}
