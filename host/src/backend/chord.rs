//! The chord join (spec §7): recording a header part's result and, for the part that
//! completes the header, claiming the right to send the body, exactly once across every
//! worker sharing the chord (Python ones included).
//!
//! The Redis implementation re-implements Celery 5.7's three steps (`part_return`,
//! `claim_extend`, `cleanup`) with scripts of its own: only the key names, arguments and
//! effects must match Celery's, so a 5.7 Python worker and celeriac can share one chord.
//! It is also a superset of 5.6's join (`ZADD .j`, count against `.s` + `.t`), so a chord
//! applied by a 5.6 client works too.
//!
//! `.j` is a sorted set scored by group index (results in header order), or, as Celery
//! keeps it with `result_backend_transport_options={"result_chord_ordered": False}`, a
//! list in arrival order. Whichever worker records the first part decides; the others
//! follow the type they find, so a fleet with either setting shares chords.

use std::collections::HashMap;
use std::sync::LazyLock;

use ::redis::Script;
use ::redis::aio::ConnectionManager;
use serde_json::Value;

use crate::protocol::kombu_json::from_kombu_json;
use crate::protocol::python_repr;

use super::BackendError;

/// Prefix of the group keys (`celery-taskset-meta-<gid>` and its `.j .t .s .d .c`).
pub const GROUP_KEY_PREFIX: &str = "celery-taskset-meta-";

/// How long a claim holds before another worker may take over a stalled one: Celery's
/// `max(5, 2 × result_chord_join_timeout)` with the default 3 s join timeout.
const CLAIM_EXPIRES_SECS: u64 = 6;
/// How long `.c` stays `"done"` so late duplicates see the chord has fired.
const DONE_EXPIRES_SECS: u64 = 300;

/// One header task's return to its chord.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChordPart<'a> {
    /// The header's group id (`headers.group`).
    pub group_id: &'a str,
    /// The header task's id.
    pub task_id: &'a str,
    /// Its position in the header; `None` sorts last (`+inf`).
    pub group_index: Option<u64>,
    /// `SUCCESS`, `FAILURE` or `REVOKED`.
    pub state: &'a str,
    /// The result, or the exception dict for failures, as kombu JSON text.
    pub result_json: &'a str,
}

impl ChordPart<'_> {
    /// `[1, "<tid>", "<state>", <result>]`, as Celery's JSON serializer writes it.
    pub fn encoded(&self) -> String {
        format!(
            "[1, {}, {}, {}]",
            Value::from(self.task_id),
            Value::from(self.state),
            self.result_json.trim()
        )
    }

    /// The ZADD score: the group index, else `+inf`.
    pub fn score(&self) -> String {
        self.group_index
            .map_or_else(|| "+inf".to_owned(), |index| index.to_string())
    }
}

/// What recording a part led to.
#[derive(Clone, Debug, PartialEq)]
pub enum PartReturn {
    /// The backend has no native chord join (rpc://, as in Celery): nothing recorded.
    Unsupported,
    /// The chord fired already; this is a late duplicate.
    AlreadyDone,
    /// Recorded; the header is not complete (or another worker claimed the body).
    Waiting,
    /// This worker completed the header and must send the body.
    Claimed(ChordClaim),
}

/// The right to send a chord's body, with the header's results.
#[derive(Clone, Debug, PartialEq)]
pub struct ChordClaim {
    /// The header's group id.
    pub group_id: String,
    /// Proves the claim is ours (`.c` holds it).
    pub token: String,
    /// The header results, in group-index order (in arrival order when `.j` is a list).
    pub results: Vec<HeaderResult>,
    /// The header's result tuples when a member is itself a group: Celery's client then
    /// saves the header's `GroupResult` (`apply_chord`), and the body gets each nested
    /// group's results as a list, in this order. `None` for a flat header.
    pub layout: Option<Vec<Value>>,
}

impl ChordClaim {
    /// The body's argument, as Celery's join builds it, or the reason the chord fails
    /// (the `ChordError` text): the first failed part of a flat header is a
    /// "Dependency `<id>` raised `<exc>`"; a failure met while joining a nested header is a
    /// "Join error: `<exc>`", as `GroupResult.join_native` raises it.
    pub fn body_argument(&self) -> Result<Value, String> {
        let Some(layout) = &self.layout else {
            if let Some(failed) = self.results.iter().find(|result| result.failed()) {
                return Err(format!(
                    "Dependency {} raised {}",
                    failed.task_id,
                    exception_repr(&failed.value)
                ));
            }
            return Ok(Value::Array(
                self.results.iter().map(|r| r.value.clone()).collect(),
            ));
        };
        let parts: HashMap<&str, &HeaderResult> = self
            .results
            .iter()
            .map(|result| (result.task_id.as_str(), result))
            .collect();
        layout
            .iter()
            .map(|node| joined_value(node, &parts))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }
}

/// The value of one result tuple of a saved `GroupResult`: a task's result, or the list
/// of a nested group's values.
fn joined_value(node: &Value, parts: &HashMap<&str, &HeaderResult>) -> Result<Value, String> {
    if let Some(Value::Array(members)) = node.get(1) {
        return members
            .iter()
            .map(|member| joined_value(member, parts))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    let task_id = node
        .get(0)
        .and_then(|id_and_parent| id_and_parent.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Join error: malformed header result {node}"))?;
    match parts.get(task_id) {
        Some(part) if part.failed() => Err(format!("Join error: {}", exception_repr(&part.value))),
        Some(part) => Ok(part.value.clone()),
        None => Err(format!(
            "Join error: no result recorded for header task {task_id}"
        )),
    }
}

/// One decoded entry of `.j`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderResult {
    /// The header task's id.
    pub task_id: String,
    /// Its state.
    pub state: String,
    /// Its result, or its exception dict.
    pub value: Value,
}

impl HeaderResult {
    /// Decodes `[1, tid, state, value]`; `None` for anything else.
    pub fn decode(text: &str) -> Option<HeaderResult> {
        let Value::Array(items) = from_kombu_json(text).ok()? else {
            return None;
        };
        let [_, task_id, state, value] = <[Value; 4]>::try_from(items).ok()?;
        Some(HeaderResult {
            task_id: task_id.as_str()?.to_owned(),
            state: state.as_str()?.to_owned(),
            value,
        })
    }

    /// FAILURE and REVOKED make the chord fail.
    pub fn failed(&self) -> bool {
        matches!(self.state.as_str(), "FAILURE" | "REVOKED")
    }
}

/// The keys of one chord.
struct ChordKeys {
    group: String,
}

impl ChordKeys {
    fn new(prefix: &str, group_id: &str) -> ChordKeys {
        ChordKeys {
            group: format!("{prefix}{GROUP_KEY_PREFIX}{group_id}"),
        }
    }

    fn suffixed(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.group)
    }
}

/// KEYS: .j .t .s .d group .c. ARGV: member id (`tid:score`), encoded part, score,
/// chord expiry, group-meta expiry, claim expiry, claim token, `1` to start `.j` as a
/// sorted set (`0`: a list).
/// Returns {readycount, totaldiff, size (-1 if unset), claimed, 1 if `.j` is a list}, or
/// {-1, 0, -1, 0, 0} when the chord fired already.
const PART_RETURN: &str = r#"
if redis.call('GET', KEYS[6]) == 'done' then return {-1, 0, -1, 0, 0} end
local kind = redis.call('TYPE', KEYS[1])['ok']
local listed = kind == 'list' or (kind == 'none' and ARGV[8] == '0')
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  if listed then
    redis.call('RPUSH', KEYS[1], ARGV[2])
  else
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  end
  redis.call('SADD', KEYS[4], ARGV[1])
end
local ready
if listed then
  ready = redis.call('LLEN', KEYS[1])
else
  ready = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
end
local expires = tonumber(ARGV[4])
if expires > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], expires) end
  local group_expires = tonumber(ARGV[5])
  if group_expires > 0 then redis.call('EXPIRE', KEYS[5], group_expires) end
end
local size = tonumber(redis.call('GET', KEYS[3]))
local total = tonumber(redis.call('GET', KEYS[2])) or 0
local claimed = 0
if size and ready == size + total then
  if redis.call('SET', KEYS[6], ARGV[7], 'NX', 'EX', ARGV[6]) then claimed = 1 end
end
return {ready, total, size or -1, claimed, listed and 1 or 0}
"#;

/// KEYS: .c .s. ARGV: token, seconds. Extends our claim, or takes it again if it lapsed
/// while the chord is still pending. Returns 1 if the claim is ours.
const CLAIM_EXTEND: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: .c .j .t .s .d. ARGV: token, seconds. If the claim is ours: drop the chord's
/// state and mark it done. Returns 1 if it was ours.
const CLEANUP: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
  return 1
end
return 0
"#;

static PART_RETURN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PART_RETURN));
static CLAIM_EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_EXTEND));
static CLEANUP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLEANUP));

/// The chord join on one Redis result backend connection.
pub(super) struct RedisChords<'a> {
    /// The backend's connection.
    pub conn: ConnectionManager,
    /// The normalized `global_keyprefix`.
    pub prefix: &'a str,
    /// `result_expires` in seconds (0: none), also the chord keys' expiry.
    pub expires: u64,
    /// Celery's `result_chord_ordered`: a chord this worker starts keeps its results in
    /// header order (a sorted set) rather than in arrival order (a list).
    pub ordered: bool,
}

impl RedisChords<'_> {
    fn error(
        &self,
        op: &'static str,
        group_id: &str,
    ) -> impl Fn(::redis::RedisError) -> BackendError {
        let task_id = format!("chord {group_id}");
        move |source| BackendError::Command {
            op,
            task_id: task_id.clone(),
            source,
        }
    }

    /// Records `part`, and claims the body when it completes the header.
    pub async fn part_return(&self, part: &ChordPart<'_>) -> Result<PartReturn, BackendError> {
        let keys = ChordKeys::new(self.prefix, part.group_id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let score = part.score();
        let mut conn = self.conn.clone();
        let (ready, _total, _size, claimed, listed): (i64, i64, i64, i64, i64) = PART_RETURN_SCRIPT
            .key(keys.suffixed("j"))
            .key(keys.suffixed("t"))
            .key(keys.suffixed("s"))
            .key(keys.suffixed("d"))
            .key(&keys.group)
            .key(keys.suffixed("c"))
            .arg(format!("{}:{score}", part.task_id))
            .arg(part.encoded())
            .arg(&score)
            .arg(self.expires)
            .arg(self.expires)
            .arg(CLAIM_EXPIRES_SECS)
            .arg(&token)
            .arg(u8::from(self.ordered))
            .invoke_async(&mut conn)
            .await
            .map_err(self.error("chord part return", part.group_id))?;
        if ready < 0 {
            return Ok(PartReturn::AlreadyDone);
        }
        if claimed != 1 {
            return Ok(PartReturn::Waiting);
        }
        let saved_group: Option<String> = ::redis::cmd("GET")
            .arg(&keys.group)
            .query_async(&mut conn)
            .await
            .map_err(self.error("chord group lookup", part.group_id))?;
        let layout = saved_group.and_then(|text| {
            let layout = saved_members(&text);
            if layout.is_none() {
                tracing::error!(
                    "chord {}: unreadable saved header {text:?}; joining it flat",
                    part.group_id
                );
            }
            layout
        });
        let read = if listed == 1 { "LRANGE" } else { "ZRANGE" };
        let entries: Vec<String> = ::redis::cmd(read)
            .arg(keys.suffixed("j"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(self.error("chord join", part.group_id))?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in &entries {
            match HeaderResult::decode(entry) {
                Some(result) => results.push(result),
                None => tracing::error!(
                    "chord {}: undecodable header result {entry:?}",
                    part.group_id
                ),
            }
        }
        Ok(PartReturn::Claimed(ChordClaim {
            group_id: part.group_id.to_owned(),
            token,
            results,
            layout,
        }))
    }

    /// Extends the claim before the body is sent; false if another worker holds it.
    pub async fn claim_extend(&self, claim: &ChordClaim) -> Result<bool, BackendError> {
        let keys = ChordKeys::new(self.prefix, &claim.group_id);
        let ours: i64 = CLAIM_EXTEND_SCRIPT
            .key(keys.suffixed("c"))
            .key(keys.suffixed("s"))
            .arg(&claim.token)
            .arg(CLAIM_EXPIRES_SECS)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.error("chord claim", &claim.group_id))?;
        Ok(ours == 1)
    }

    /// Drops the chord's keys and marks it done, if the claim is still ours.
    pub async fn cleanup(&self, claim: &ChordClaim) -> Result<(), BackendError> {
        let keys = ChordKeys::new(self.prefix, &claim.group_id);
        let _: i64 = CLEANUP_SCRIPT
            .key(keys.suffixed("c"))
            .key(keys.suffixed("j"))
            .key(keys.suffixed("t"))
            .key(keys.suffixed("s"))
            .key(keys.suffixed("d"))
            .arg(&claim.token)
            .arg(DONE_EXPIRES_SECS.max(2 * CLAIM_EXPIRES_SECS))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.error("chord cleanup", &claim.group_id))?;
        Ok(())
    }

    /// Celery 5.7's `set_chord_size`: clears a stale claim, then `SET .s <size> EX`.
    pub async fn set_size(&self, group_id: &str, size: u64) -> Result<(), BackendError> {
        let keys = ChordKeys::new(self.prefix, group_id);
        let mut pipe = ::redis::pipe();
        pipe.atomic().cmd("DEL").arg(keys.suffixed("c")).ignore();
        let set = pipe.cmd("SET").arg(keys.suffixed("s")).arg(size);
        if self.expires > 0 {
            set.arg("EX").arg(self.expires);
        }
        set.ignore();
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(self.error("chord size", group_id))
    }
}

/// The member result tuples of a saved group meta document,
/// `{"result": [[gid, parent], [member tuples…]], …}`.
fn saved_members(text: &str) -> Option<Vec<Value>> {
    match from_kombu_json(text)
        .ok()?
        .get_mut("result")?
        .get_mut(1)?
        .take()
    {
        Value::Array(members) => Some(members),
        _ => None,
    }
}

/// Python's `repr` of an exception dict (`ValueError('hdr', 42)`), for ChordError texts.
pub fn exception_repr(value: &Value) -> String {
    let exc_type = value
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let args = match value.get("exc_message") {
        Some(Value::Array(args)) => args.clone(),
        Some(other) => vec![other.clone()],
        None => Vec::new(),
    };
    python_repr::exception_repr(exc_type, &args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_part_is_encoded_as_celery_encodes_it() {
        let part = ChordPart {
            group_id: "g",
            task_id: "t1",
            group_index: Some(3),
            state: "SUCCESS",
            result_json: "4",
        };
        assert_eq!(part.encoded(), r#"[1, "t1", "SUCCESS", 4]"#);
        assert_eq!(part.score(), "3");
        let unindexed = ChordPart {
            group_index: None,
            ..part
        };
        assert_eq!(unindexed.score(), "+inf");
    }

    #[test]
    fn header_results_decode_and_failures_are_recognised() {
        let ok = HeaderResult::decode(r#"[1, "t1", "SUCCESS", [1, 2]]"#).expect("decodes");
        assert_eq!(ok.task_id, "t1");
        assert_eq!(ok.value, json!([1, 2]));
        assert!(!ok.failed());
        let bad = HeaderResult::decode(
            r#"[1, "t2", "FAILURE", {"exc_type": "ValueError", "exc_message": ["hdr", 42], "exc_module": "builtins"}]"#,
        )
        .expect("decodes");
        assert!(bad.failed());
        assert_eq!(exception_repr(&bad.value), "ValueError('hdr', 42)");
        assert_eq!(HeaderResult::decode("[1, 2]"), None);
        let claim = |results: Vec<HeaderResult>, layout: Option<Value>| ChordClaim {
            group_id: "g".into(),
            token: "t".into(),
            results,
            layout: layout.map(|layout| layout.as_array().cloned().expect("a list")),
        };
        assert_eq!(
            claim(vec![ok.clone(), ok.clone()], None).body_argument(),
            Ok(json!([[1, 2], [1, 2]]))
        );
        assert_eq!(
            claim(vec![ok.clone(), bad.clone()], None).body_argument(),
            Err("Dependency t2 raised ValueError('hdr', 42)".to_owned())
        );
        let nested = json!([
            [
                ["g2", [["c1", null], null]],
                [[["t1", null], null], [["t3", null], null]]
            ],
            [["t4", null], null]
        ]);
        let part = |id: &str, value: Value| HeaderResult {
            task_id: id.into(),
            state: "SUCCESS".into(),
            value,
        };
        let parts = vec![
            part("t3", json!(22)),
            part("t4", json!(6)),
            part("t1", json!(12)),
        ];
        assert_eq!(
            claim(parts, Some(nested.clone())).body_argument(),
            Ok(json!([[12, 22], 6]))
        );
        let failing = vec![
            part("t4", json!(6)),
            part("t1", json!(12)),
            HeaderResult {
                task_id: "t3".into(),
                ..bad
            },
        ];
        assert_eq!(
            claim(failing, Some(nested)).body_argument(),
            Err("Join error: ValueError('hdr', 42)".to_owned())
        );
        assert_eq!(
            saved_members(r#"{"result": [["g", null], [[["t4", null], null]]]}"#),
            Some(vec![json!([["t4", null], null])])
        );
    }
}
