//! What follows a success (spec §8.1, Celery's `_dispatch_callbacks_and_chain` and
//! `mark_as_done`): the link callbacks and the next chain step, published before SUCCESS
//! is stored so the stored `children` list them; then the chord part.

use serde_json::{Map, Value};

use crate::backend::{ChordPart, ResultBackend};
use crate::broker::Broker;
use crate::protocol::Signature;
use crate::protocol::kombu_json::from_kombu_json;

use super::super::execution::TaskRun;
use super::{CanvasError, carry_out, chord, flatten, plan, sender_of};

/// Publishes the callbacks and the next chain step of a task that returned `result_json`,
/// and returns the `children` to store with its SUCCESS.
pub async fn after_success<B: Broker, R: ResultBackend>(
    run: &TaskRun<'_, B, R>,
    result_json: &str,
) -> Result<Value, CanvasError> {
    let message = run.message;
    let embed = &message.embed;
    if embed.callbacks.is_empty() && embed.chain.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    let partial = [from_kombu_json(result_json).map_err(CanvasError::Result)?];
    let sender = sender_of(message, &run.worker.config.nodename);
    let mut options = Map::new();
    options.insert("parent_id".into(), Value::from(message.id.clone()));
    options.insert("root_id".into(), sender.root_id.clone().into());
    let callbacks = embed
        .callbacks
        .iter()
        .map(Signature::from_value)
        .collect::<Result<Vec<_>, _>>()?;
    let plans = plan(run.worker, &sender, |applier| {
        let mut plans = Vec::new();
        if let [callback] = callbacks.as_slice() {
            plans.push(applier.apply(callback, &partial, &options)?);
        } else if !callbacks.is_empty() {
            // Several links: each group on its own, all the others as one new group.
            let (groups, others): (Vec<_>, Vec<_>) = callbacks
                .iter()
                .cloned()
                .partition(|sig| sig.subtask_type.as_deref() == Some("group"));
            for group in &groups {
                plans.push(applier.apply(group, &partial, &options)?);
            }
            if !others.is_empty() {
                plans.push(applier.apply_as_group(&others, &partial, &options)?);
            }
        }
        if let Some((next, rest)) = embed.chain.split_last() {
            let mut step_options = options.clone();
            if !rest.is_empty() {
                step_options.insert("chain".into(), Value::Array(rest.to_vec()));
            }
            plans.push(applier.apply(&Signature::from_value(next)?, &partial, &step_options)?);
        }
        Ok(plans)
    })?;
    let (actions, children) = flatten(plans);
    carry_out(run.worker, actions).await?;
    Ok(Value::Array(children))
}

/// Returns a succeeded chord header part to its chord (regardless of `ignore_result`).
pub async fn chord_part_succeeded<B: Broker, R: ResultBackend>(
    run: &TaskRun<'_, B, R>,
    result_json: &str,
) {
    let message = run.message;
    let (Some(body), Some(group_id)) = (&message.embed.chord, &message.group) else {
        return;
    };
    let part = ChordPart {
        group_id,
        task_id: &message.id,
        group_index: message.group_index,
        state: "SUCCESS",
        result_json,
    };
    let sender = sender_of(message, &run.worker.config.nodename);
    chord::part_return(run.worker, &sender, &part, body).await;
}
