//! What applying a signature from the worker sends (Celery's `Signature.apply_async`,
//! `group.apply_async`, `_chain.run`, `_chord.run`; spec §6.2, §6.4, §6.5): a plan of
//! messages and chord sizes, in Celery's order, plus the result tuple the sending task
//! records among its `children`. Pure: [`super`] carries the plan out.

use serde_json::{Map, Value, json};

use crate::protocol::{OutgoingTask, Route, Sender, Signature, SignatureError};

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish `message` to `route`.
    Publish {
        /// Where it goes.
        route: Route,
        /// The task message.
        message: Box<OutgoingTask>,
    },
    /// Write the chord size of `group_id` (before the last header member goes out).
    ChordSize {
        /// The header's group id.
        group_id: String,
        /// How many header parts will return.
        size: u64,
    },
}

/// A plan and the result tuple of what it sends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// `AsyncResult.as_tuple()` / `GroupResult.as_tuple()` of the applied signature.
    pub result: Value,
}

/// Plans signature applications on behalf of one sending task.
pub struct Applier<'a> {
    /// The task that sends.
    pub sender: &'a Sender,
    /// Where signatures without routing options go.
    pub default_queue: &'a str,
    /// Now, for countdowns and expiries.
    pub now_micros: i64,
    /// Makes a fresh task or group id.
    pub new_id: &'a mut dyn FnMut() -> String,
}

/// `[[id, null], null]`: a task's result tuple without a parent.
pub fn task_tuple(id: &str) -> Value {
    json!([[id, null], null])
}

impl Applier<'_> {
    /// Plans `sig.apply_async(partial, **options)`.
    pub fn apply(
        &mut self,
        sig: &Signature,
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Result<Applied, SignatureError> {
        match sig.subtask_type.as_deref() {
            Some("group") => self.group(sig, partial, options),
            Some("chain") => self.chain(sig, partial, options),
            Some("chord") => self.chord(sig, partial, options),
            _ => Ok(self.plain(sig, partial, options)),
        }
    }

    /// Plans several signatures applied together as one new group (link callbacks,
    /// errbacks; spec §8.1, §8.3).
    pub fn apply_as_group(
        &mut self,
        members: &[Signature],
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Result<Applied, SignatureError> {
        let group = Signature {
            task: "celery.group".into(),
            kwargs: tasks_kwargs(members),
            subtask_type: Some("group".into()),
            ..Signature::default()
        };
        self.group(&group, partial, options)
    }

    fn plain(
        &mut self,
        sig: &Signature,
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Applied {
        let sig = sig.with_partial_args(partial).with_options(options);
        let id = sig.task_id().map_or_else(|| (self.new_id)(), str::to_owned);
        let message = sig.to_message(&id, self.sender, self.now_micros);
        Applied {
            actions: vec![Action::Publish {
                route: sig.route(self.default_queue),
                message: Box::new(message),
            }],
            result: task_tuple(&id),
        }
    }

    fn group(
        &mut self,
        sig: &Signature,
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Result<Applied, SignatureError> {
        let mut opts = merged(&sig.options, options);
        // `group.apply_async(link=…)` is a TypeError in Celery; a group's callbacks are
        // on its members.
        opts.remove("link");
        opts.remove("link_error");
        let group_id = take_string(&mut opts, "task_id").unwrap_or_else(|| (self.new_id)());
        let members = flattened(&members_of(sig)?)?;
        let partial: Vec<Value> = partial.iter().chain(&sig.args).cloned().collect();
        let chord_size = opts
            .contains_key("chord")
            .then(|| members.iter().map(chord_size).sum::<Result<u64, _>>())
            .transpose()?;
        let mut actions = Vec::new();
        let mut results = Vec::new();
        for (index, member) in members.iter().enumerate() {
            let mut member_opts = opts.clone();
            member_opts.insert("group_id".into(), Value::from(group_id.clone()));
            member_opts.insert("group_index".into(), Value::from(index));
            let applied = self.apply(member, &partial, &member_opts)?;
            if let Some(size) = chord_size.filter(|_| index + 1 == members.len()) {
                actions.push(Action::ChordSize {
                    group_id: group_id.clone(),
                    size,
                });
            }
            actions.extend(applied.actions);
            results.push(applied.result);
        }
        Ok(Applied {
            actions,
            result: json!([[group_id, null], results]),
        })
    }

    fn chain(
        &mut self,
        sig: &Signature,
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Result<Applied, SignatureError> {
        let mut opts = merged(&sig.options, options);
        let mut steps = members_of(sig)?;
        let Some(last) = steps.len().checked_sub(1) else {
            return Ok(Applied::default());
        };
        // The chain's own id, group and chord belong to its last step (its result);
        // `link` goes there too, `link_error` to every step (`_chain.prepare_steps`).
        for key in ["task_id", "group_id", "group_index", "chord"] {
            if let Some(value) = opts.remove(key) {
                steps[last].options.insert(key.into(), value);
            }
        }
        if let Some(link) = opts.remove("link") {
            append_signatures(&mut steps[last].options, "link", &link);
        }
        let errbacks = opts.remove("link_error");
        let root_id = opts.get("root_id").cloned();
        let mut ids = Vec::with_capacity(steps.len());
        for step in &mut steps {
            if let Some(errbacks) = &errbacks {
                append_signatures(&mut step.options, "link_error", errbacks);
            }
            if step.task_id().is_none() {
                step.options
                    .insert("task_id".into(), Value::from((self.new_id)()));
            }
            if let Some(root_id) = &root_id {
                step.options
                    .entry("root_id")
                    .or_insert_with(|| root_id.clone());
            }
            ids.push(step.task_id().unwrap_or_default().to_owned());
        }
        let rest: Vec<Value> = steps[1..].iter().rev().map(Signature::to_value).collect();
        if !rest.is_empty() {
            opts.insert("chain".into(), Value::Array(rest));
        }
        let partial: Vec<Value> = partial.iter().chain(&sig.args).cloned().collect();
        let first = self.apply(&steps[0], &partial, &opts)?;
        // The chain's result is its last step, each step's parent the one before.
        let result = ids.iter().fold(Value::Null, |parent, id| {
            if parent.is_null() {
                task_tuple(id)
            } else {
                json!([[id, parent], null])
            }
        });
        Ok(Applied {
            actions: first.actions,
            result,
        })
    }

    fn chord(
        &mut self,
        sig: &Signature,
        partial: &[Value],
        options: &Map<String, Value>,
    ) -> Result<Applied, SignatureError> {
        let mut opts = merged(&sig.options, options);
        let wrong = |field| SignatureError::WrongType {
            task: sig.task.clone(),
            field,
        };
        let (header, header_id) = match sig.kwargs.get("header") {
            Some(Value::Array(members)) => (members_from(members)?, None),
            Some(group @ Value::Object(_)) => {
                let group = Signature::from_value(group)?;
                let id = group.task_id().map(str::to_owned);
                (members_of(&group)?, id)
            }
            _ => return Err(wrong("kwargs.header")),
        };
        let mut body = Signature::from_value(sig.kwargs.get("body").ok_or(wrong("kwargs.body"))?)?;
        let group_id = header_id.unwrap_or_else(|| (self.new_id)());
        let chord_id = take_string(&mut opts, "task_id");
        let body_id = body
            .task_id()
            .map(str::to_owned)
            .or(chord_id)
            .unwrap_or_else(|| (self.new_id)());
        // Chord-level options go to the body (the steps after the chord, its callbacks,
        // its routing), except a countdown or eta, which delays the header (Celery 5.7);
        // only some of them go to the header.
        for (key, value) in &opts {
            if key != "countdown" && key != "eta" {
                body.options.insert(key.clone(), value.clone());
            }
        }
        body.options
            .insert("task_id".into(), Value::from(body_id.clone()));
        body.options
            .insert("group_id".into(), Value::from(group_id.clone()));
        for key in ["chain", "chord", "link", "link_error"] {
            opts.remove(key);
        }
        let partial: Vec<Value> = partial.iter().chain(&sig.args).cloned().collect();
        if header.is_empty() {
            let applied = self.plain(&body, &[Value::Array(Vec::new())], &Map::new());
            return Ok(Applied {
                actions: applied.actions,
                result: json!([[body_id, [[group_id, null], []]], null]),
            });
        }
        opts.insert("chord".into(), body.to_value());
        opts.insert("task_id".into(), Value::from(group_id));
        let group = Signature {
            task: "celery.group".into(),
            kwargs: tasks_kwargs(&header),
            subtask_type: Some("group".into()),
            ..Signature::default()
        };
        let applied = self.group(&group, &partial, &opts)?;
        Ok(Applied {
            actions: applied.actions,
            result: json!([[body_id, applied.result], null]),
        })
    }
}

/// How many parts a chord header member returns (`_chord._descend`, spec §7.1).
pub fn chord_size(sig: &Signature) -> Result<u64, SignatureError> {
    match sig.subtask_type.as_deref() {
        Some("group") => members_of(sig)?.iter().map(chord_size).sum(),
        Some("chain") => members_of(sig)?.last().map_or(Ok(0), chord_size),
        Some("chord") => match sig.kwargs.get("body") {
            Some(body) => chord_size(&Signature::from_value(body)?),
            None => Ok(0),
        },
        _ => Ok(1),
    }
}

/// `{"tasks": [...]}`.
fn tasks_kwargs(members: &[Signature]) -> Map<String, Value> {
    let mut kwargs = Map::new();
    kwargs.insert(
        "tasks".into(),
        Value::Array(members.iter().map(Signature::to_value).collect()),
    );
    kwargs
}

/// A chain's or group's `kwargs.tasks`.
fn members_of(sig: &Signature) -> Result<Vec<Signature>, SignatureError> {
    match sig.kwargs.get("tasks") {
        Some(Value::Array(members)) => members_from(members),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(SignatureError::WrongType {
            task: sig.task.clone(),
            field: "kwargs.tasks",
        }),
    }
}

fn members_from(values: &[Value]) -> Result<Vec<Signature>, SignatureError> {
    values.iter().map(Signature::from_value).collect()
}

/// Members with nested groups replaced by their own members (Celery flattens them into
/// the outer group id).
fn flattened(members: &[Signature]) -> Result<Vec<Signature>, SignatureError> {
    let mut flat = Vec::with_capacity(members.len());
    for member in members {
        if member.subtask_type.as_deref() == Some("group") {
            flat.extend(flattened(&members_of(member)?)?);
        } else {
            flat.push(member.clone());
        }
    }
    Ok(flat)
}

/// `base` with `over` merged on top, `null` values dropped.
fn merged(base: &Map<String, Value>, over: &Map<String, Value>) -> Map<String, Value> {
    let mut out = base.clone();
    for (key, value) in over {
        if !value.is_null() {
            out.insert(key.clone(), value.clone());
        }
    }
    out
}

fn take_string(opts: &mut Map<String, Value>, key: &str) -> Option<String> {
    match opts.remove(key) {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// Adds the signatures of `extra` (one or a list) to the list option `key`.
fn append_signatures(options: &mut Map<String, Value>, key: &str, extra: &Value) {
    let mut list = match options.remove(key) {
        Some(Value::Array(items)) => items,
        Some(item @ Value::Object(_)) => vec![item],
        _ => Vec::new(),
    };
    match extra {
        Value::Array(items) => list.extend(items.iter().cloned()),
        item @ Value::Object(_) => list.push(item.clone()),
        _ => {}
    }
    options.insert(key.into(), Value::Array(list));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(value: Value) -> Signature {
        Signature::from_value(&value).expect("a valid signature")
    }

    fn plan(sig: &Signature, partial: &[Value], options: &Value) -> Applied {
        let sender = Sender {
            task_id: Some("parent".into()),
            root_id: Some("root".into()),
            origin: "gen1@host".into(),
        };
        let mut counter = 0;
        let mut new_id = || {
            counter += 1;
            format!("new-{counter}")
        };
        let mut applier = Applier {
            sender: &sender,
            default_queue: "celery",
            now_micros: 0,
            new_id: &mut new_id,
        };
        applier
            .apply(sig, partial, options.as_object().expect("options"))
            .expect("applies")
    }

    fn published(applied: &Applied) -> Vec<&OutgoingTask> {
        applied
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Publish { message, .. } => Some(&**message),
                Action::ChordSize { .. } => None,
            })
            .collect()
    }

    fn add(args: Value, id: &str) -> Value {
        json!({"task": "proj.add", "args": args, "kwargs": {}, "options": {"task_id": id},
               "subtask_type": null, "immutable": false})
    }

    #[test]
    fn a_chain_sends_its_first_step_with_the_rest_reversed() {
        let chain = sig(
            json!({"task": "celery.chain", "args": [], "kwargs": {"tasks": [
            add(json!([1]), "a"), add(json!([2]), "b"),
            {"task": "proj.add", "args": [5, 5], "options": {}, "immutable": true}]},
            "options": {"link_error": {"task": "proj.eb"}}, "subtask_type": "chain"}),
        );
        let applied = plan(&chain, &[json!(1)], &json!({}));
        let messages = published(&applied);
        assert_eq!(messages.len(), 1);
        let first = messages[0];
        assert_eq!(first.id, "a");
        assert_eq!(first.args, vec![json!(1), json!(1)]);
        let rest: Vec<&str> = first
            .embed
            .chain
            .iter()
            .map(|s| s["options"]["task_id"].as_str().expect("frozen id"))
            .collect();
        assert_eq!(
            rest,
            vec!["new-1", "b"],
            "next step last, fresh id for the third"
        );
        assert_eq!(first.embed.errbacks, vec![json!({"task": "proj.eb"})]);
        assert_eq!(
            first.embed.chain[0]["options"]["link_error"],
            json!([{"task": "proj.eb"}])
        );
        assert_eq!(
            applied.result,
            json!([["new-1", [["b", [["a", null], null]], null]], null])
        );
    }

    #[test]
    fn group_members_get_the_group_id_index_and_partial_arguments() {
        let group = sig(json!({"task": "celery.group", "kwargs": {"tasks": [
            add(json!([1]), "m0"), {"task": "celery.group", "subtask_type": "group",
              "kwargs": {"tasks": [add(json!([2]), "m1")]}}]},
            "options": {"task_id": "g"}, "subtask_type": "group"}));
        let applied = plan(&group, &[json!(7)], &json!({"parent_id": "p"}));
        let messages = published(&applied);
        let fields: Vec<_> = messages
            .iter()
            .map(|m| {
                (
                    m.id.as_str(),
                    m.group.as_deref(),
                    m.group_index,
                    m.args.clone(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                ("m0", Some("g"), Some(0), vec![json!(7), json!(1)]),
                ("m1", Some("g"), Some(1), vec![json!(7), json!(2)]),
            ]
        );
        assert_eq!(messages[0].parent_id.as_deref(), Some("p"));
        assert_eq!(
            applied.result,
            json!([["g", null], [[["m0", null], null], [["m1", null], null]]])
        );
    }

    #[test]
    fn a_chord_writes_its_size_before_the_last_header_member() {
        let chord = sig(json!({"task": "celery.chord", "kwargs": {
            "header": {"task": "celery.group", "subtask_type": "group", "options": {"task_id": "hg"},
                       "kwargs": {"tasks": [add(json!([1]), "h0"), add(json!([2]), "h1")]}},
            "body": {"task": "proj.tsum", "args": [], "kwargs": {}, "options": {}},
            "kwargs": {}},
            "options": {"task_id": "body-id"}, "subtask_type": "chord"}));
        let applied = plan(
            &chord,
            &[json!(2)],
            &json!({"chain": [add(json!([10]), "after")], "countdown": 5}),
        );
        let kinds: Vec<String> = applied
            .actions
            .iter()
            .map(|action| match action {
                Action::Publish { message, .. } => message.id.clone(),
                Action::ChordSize { group_id, size } => format!("size {group_id}={size}"),
            })
            .collect();
        assert_eq!(kinds, vec!["h0", "size hg=2", "h1"]);
        let messages = published(&applied);
        let body = messages[1]
            .embed
            .chord
            .as_ref()
            .expect("the body rides along");
        assert_eq!(body["options"]["task_id"], json!("body-id"));
        assert_eq!(body["options"]["group_id"], json!("hg"));
        assert_eq!(
            body["options"]["chain"][0]["options"]["task_id"],
            json!("after")
        );
        assert!(
            messages[1].embed.chain.is_empty(),
            "the chain is the body's, not the header's"
        );
        assert_eq!(messages[1].args, vec![json!(2), json!(2)]);
        assert!(
            messages[1].eta.is_some(),
            "a chord's countdown delays its header"
        );
        assert!(body["options"].get("countdown").is_none());
        assert_eq!(applied.result[0][0], json!("body-id"));
        assert_eq!(applied.result[0][1][0][0], json!("hg"));
    }

    #[test]
    fn an_empty_chord_sends_its_body_with_an_empty_list() {
        let chord = sig(
            json!({"task": "celery.chord", "subtask_type": "chord", "kwargs": {
            "header": [], "body": {"task": "proj.tsum", "options": {"task_id": "b"}}}}),
        );
        let applied = plan(&chord, &[], &json!({}));
        let messages = published(&applied);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].args, vec![json!([])]);
        assert_eq!(messages[0].id, "b");
    }

    #[test]
    fn chord_sizes_count_like_celery() {
        let group = sig(json!({"task": "celery.group", "subtask_type": "group",
            "kwargs": {"tasks": [{"task": "a"}, {"task": "b"}, {"task": "c"}]}}));
        assert_eq!(chord_size(&group), Ok(3));
        let chain = sig(json!({"task": "celery.chain", "subtask_type": "chain",
            "kwargs": {"tasks": [{"task": "a"}, group.to_value()]}}));
        assert_eq!(chord_size(&chain), Ok(3));
        assert_eq!(chord_size(&sig(json!({"task": "a"}))), Ok(1));
    }
}
