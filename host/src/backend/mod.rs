//! Result backends: where a task's state and return value go, as Celery clients read them.
//!
//! `backend` owns the task meta document ([`TaskMeta`], spec §5.2) and the
//! [`ResultBackend`] trait that stores it, with two implementations: [`redis`] (spec §5.4)
//! and [`rpc`] (Celery's `rpc://`, replies over the AMQP broker).
//! It does not decide *which* state a task reached or which exception describes a failure:
//! `worker/` does that and hands this module finished values ([`ExceptionInfo`], result
//! JSON text). [`chord`] holds the chord join (spec §7); group meta (§5.6) is not here yet.
//!
//! The document is written as text, field by field, so that the field order is Python's
//! and a guest's kombu JSON result (`NaN`, `Infinity`, `2**70`) reaches the client exactly
//! as the guest wrote it.

pub mod chord;
pub mod redis;
pub mod rpc;

use std::fmt::Write as _;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::protocol::Timestamp;
use crate::protocol::kombu_json::{from_kombu_json, to_kombu_json};

pub use self::chord::{ChordClaim, ChordPart, HeaderResult, PartReturn};
pub use self::redis::{RedisBackend, RedisBackendConfig};
pub use self::rpc::RpcBackend;

/// Stores task meta documents where Celery clients look for them.
///
/// An implementation only moves documents; building them is [`TaskMeta`]'s job.
pub trait ResultBackend: Send + Sync {
    /// Stores `meta` under its task id and notifies waiting clients, unless a SUCCESS
    /// document is already stored for that id (it is never overwritten, spec §5.4).
    fn store(
        &self,
        meta: &TaskMeta,
    ) -> impl Future<Output = Result<StoreOutcome, BackendError>> + Send;

    /// The stored document of `task_id`, as raw JSON text; `None` when there is none
    /// (what a Celery client reports as PENDING).
    fn get(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<Option<String>, BackendError>> + Send;

    /// Records a chord header part and says whether this worker must now send the body
    /// (spec §7.3). Backends without a native chord join record nothing, as Celery's do
    /// (the default).
    fn chord_part_return(
        &self,
        part: &ChordPart<'_>,
    ) -> impl Future<Output = Result<PartReturn, BackendError>> + Send {
        let _ = part;
        std::future::ready(Ok(PartReturn::Unsupported))
    }

    /// Extends a claim right before the body is sent; false when it is no longer ours.
    fn chord_claim_extend(
        &self,
        claim: &ChordClaim,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        let _ = claim;
        std::future::ready(Ok(false))
    }

    /// Drops a fired chord's state, marking it done.
    fn chord_cleanup(
        &self,
        claim: &ChordClaim,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = claim;
        std::future::ready(Ok(()))
    }

    /// Writes the size of the chord whose header is group `group_id`, before its last
    /// header task is published (spec §6.5).
    fn set_chord_size(
        &self,
        group_id: &str,
        size: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        let _ = (group_id, size);
        std::future::ready(Ok(()))
    }
}

/// What [`ResultBackend::store`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The document was written and published.
    Stored,
    /// A SUCCESS document was already stored (a redelivered duplicate ran again); nothing
    /// was written.
    KeptSuccess,
    /// The backend had nowhere to send it (rpc://: the task's message carried no
    /// `reply_to`, so no client waits for it); nothing was written.
    NoDestination,
}

/// Errors of the result backend layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend URL cannot be used.
    #[error("invalid result backend URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The first connection to the server failed.
    #[error("cannot connect to result backend {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// A command failed while storing or reading the result of a task.
    #[error("result backend: {op} for task {task_id} failed: {source}")]
    Command {
        /// What was being done (`"store"`, `"get"`).
        op: &'static str,
        /// The task whose result it was.
        task_id: String,
        /// The client's error.
        #[source]
        source: ::redis::RedisError,
    },
    /// A value given to build a task meta document is not usable (not kombu JSON, an
    /// empty state name).
    #[error("task {task_id}: invalid {field} for the result backend: {reason}")]
    InvalidMeta {
        /// The task the document is for.
        task_id: String,
        /// The document field (`"result"`, `"status"`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Sending a result over the broker failed (rpc://).
    #[error("result backend: sending the result of task {task_id} failed: {source}")]
    Broker {
        /// The task whose result it was.
        task_id: String,
        /// The broker's error (boxed: it is large, and this path is rare).
        #[source]
        source: Box<crate::broker::BrokerError>,
    },
    /// The backend cannot do this.
    #[error("the {backend} result backend does not support {op}")]
    Unsupported {
        /// The operation (`"get"`).
        op: &'static str,
        /// The backend (`"rpc"`).
        backend: &'static str,
    },
    /// A stored document is not text.
    #[error("result backend: stored result of task {task_id} is not UTF-8")]
    NotUtf8 {
        /// The task whose stored document it is.
        task_id: String,
    },
}

impl BackendError {
    /// Whether the error is the connection's (refused, dropped, timed out): the operation
    /// may succeed after a reconnect, as opposed to one that fails the same way again.
    pub fn is_connection(&self) -> bool {
        match self {
            BackendError::Connect { .. } => true,
            BackendError::Command { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || source.is_unrecoverable_error()
            }
            BackendError::Broker { source, .. } => source.is_connection(),
            BackendError::InvalidUrl { .. }
            | BackendError::InvalidMeta { .. }
            | BackendError::Unsupported { .. }
            | BackendError::NotUtf8 { .. } => false,
        }
    }
}

/// A task state as stored in the `status` field (spec §5.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultState {
    /// The task body is about to run (`task_track_started`).
    Started,
    /// The task returned.
    Success,
    /// The task raised, or the worker failed it.
    Failure,
    /// The task will run again.
    Retry,
    /// The task was revoked, expired or terminated.
    Revoked,
    /// A state of the task's own (`update_state(state="PROGRESS")`).
    Custom(String),
}

impl ResultState {
    /// The state's name as Celery writes it.
    pub fn as_str(&self) -> &str {
        match self {
            ResultState::Started => "STARTED",
            ResultState::Success => "SUCCESS",
            ResultState::Failure => "FAILURE",
            ResultState::Retry => "RETRY",
            ResultState::Revoked => "REVOKED",
            ResultState::Custom(name) => name,
        }
    }

    /// The state named `name`; unknown names are [`ResultState::Custom`].
    pub fn from_name(name: &str) -> ResultState {
        match name {
            "STARTED" => ResultState::Started,
            "SUCCESS" => ResultState::Success,
            "FAILURE" => ResultState::Failure,
            "RETRY" => ResultState::Retry,
            "REVOKED" => ResultState::Revoked,
            other => ResultState::Custom(other.to_owned()),
        }
    }

    /// Whether a client stops waiting on it (Celery's `READY_STATES`).
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            ResultState::Success | ResultState::Failure | ResultState::Revoked
        )
    }
}

/// An exception as the backend encodes it (spec §5.3): built by `worker/` from its own
/// exception type, so this layer does not depend on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExceptionInfo<'a> {
    /// The class `__qualname__` (`exc_type`).
    pub exc_type: &'a str,
    /// The class `__module__` (`exc_module`).
    pub exc_module: &'a str,
    /// `exc.args` (`exc_message`); literal markers are written back as bare tokens.
    pub exc_message: &'a [Value],
}

impl ExceptionInfo<'_> {
    /// `{"exc_type": …, "exc_message": […], "exc_module": …}`, in Python's order.
    fn to_json(self) -> String {
        let mut out = String::from("{\"exc_type\": ");
        push_json_str(&mut out, self.exc_type);
        out.push_str(", \"exc_message\": ");
        out.push_str(&to_kombu_json(&Value::Array(self.exc_message.to_vec())));
        out.push_str(", \"exc_module\": ");
        push_json_str(&mut out, self.exc_module);
        out.push('}');
        out
    }
}

/// The `result_extended=True` fields of a task meta document.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtendedFields {
    /// The task name (`headers.task`, not the shadow name).
    pub name: String,
    /// The decoded positional arguments (a list).
    pub args: Value,
    /// The decoded keyword arguments (an object).
    pub kwargs: Value,
    /// The worker's node name (`celery@host`).
    pub worker: String,
    /// How many times the task was retried.
    pub retries: u32,
    /// `delivery_info.routing_key`: the queue name.
    pub queue: String,
}

/// A task meta document (spec §5.2), ready to be written as Celery writes it.
///
/// Built with one constructor per state, then optional `with_*` fields. Every JSON-valued
/// field is held as kombu JSON text that was checked to be one JSON value, so
/// [`TaskMeta::to_json`] cannot produce a broken document.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMeta {
    /// The task id, written last.
    task_id: String,
    /// The `status` field.
    state: ResultState,
    /// The `result` field, kombu JSON text.
    result: String,
    /// The `traceback` field.
    traceback: Option<String>,
    /// The `children` field, kombu JSON text (`[]` by default).
    children: String,
    /// The `date_done` field: set for ready states only.
    date_done: Option<String>,
    /// The `group_id` field, written only when set.
    group_id: Option<String>,
    /// The `parent_id` field, written only when set.
    parent_id: Option<String>,
    /// The extended fields, written only when set.
    extended: Option<ExtendedFields>,
}

impl TaskMeta {
    /// A document with `state` and a `result` already known to be valid JSON text.
    fn with_state(task_id: &str, state: ResultState, result: String) -> TaskMeta {
        let date_done = state.is_ready().then(now_iso);
        TaskMeta {
            task_id: task_id.to_owned(),
            state,
            result,
            traceback: None,
            children: "[]".to_owned(),
            date_done,
            group_id: None,
            parent_id: None,
            extended: None,
        }
    }

    /// SUCCESS with the task's return value, the guest's kombu JSON text, stored verbatim
    /// (`NaN` and big integers included). Fails when the text is not one kombu JSON value.
    pub fn success(task_id: &str, result_json: &str) -> Result<TaskMeta, BackendError> {
        check_json(task_id, "result", result_json)?;
        Ok(TaskMeta::with_state(
            task_id,
            ResultState::Success,
            result_json.trim().to_owned(),
        ))
    }

    /// FAILURE with the exception dict of `exception` and its traceback text.
    pub fn failure(
        task_id: &str,
        exception: ExceptionInfo<'_>,
        traceback: Option<&str>,
    ) -> TaskMeta {
        let mut meta = TaskMeta::with_state(task_id, ResultState::Failure, exception.to_json());
        meta.traceback = traceback.map(str::to_owned);
        meta
    }

    /// STARTED with `{"pid": …, "hostname": …}` (the worker's process id and node name).
    pub fn started(task_id: &str, pid: u32, hostname: &str) -> TaskMeta {
        let mut result = format!("{{\"pid\": {pid}, \"hostname\": ");
        push_json_str(&mut result, hostname);
        result.push('}');
        TaskMeta::with_state(task_id, ResultState::Started, result)
    }

    /// RETRY with the exception that caused it, or `null` when there is none.
    pub fn retry(
        task_id: &str,
        exception: Option<ExceptionInfo<'_>>,
        traceback: Option<&str>,
    ) -> TaskMeta {
        let result = exception.map_or_else(|| "null".to_owned(), ExceptionInfo::to_json);
        let mut meta = TaskMeta::with_state(task_id, ResultState::Retry, result);
        meta.traceback = traceback.map(str::to_owned);
        meta
    }

    /// REVOKED with its exception (`worker/` builds the `TaskRevokedError`).
    pub fn revoked(task_id: &str, exception: ExceptionInfo<'_>) -> TaskMeta {
        TaskMeta::with_state(task_id, ResultState::Revoked, exception.to_json())
    }

    /// A state set by the task itself (`update_state`), e.g. `PROGRESS` with its meta as
    /// kombu JSON text. A built-in name gives that state; `date_done` follows
    /// [`ResultState::is_ready`]. Fails on an empty name or text that is not one kombu
    /// JSON value.
    pub fn custom(task_id: &str, state: &str, meta_json: &str) -> Result<TaskMeta, BackendError> {
        if state.is_empty() {
            return Err(BackendError::InvalidMeta {
                task_id: task_id.to_owned(),
                field: "status",
                reason: "empty state name".to_owned(),
            });
        }
        check_json(task_id, "result", meta_json)?;
        Ok(TaskMeta::with_state(
            task_id,
            ResultState::from_name(state),
            meta_json.trim().to_owned(),
        ))
    }

    /// Sets `children`: the result tuples of the messages this task sent (spec §5.2).
    pub fn with_children(mut self, children: &Value) -> TaskMeta {
        self.children = to_kombu_json(children);
        self
    }

    /// Sets `group_id` (`headers.group`).
    pub fn with_group_id(mut self, group_id: &str) -> TaskMeta {
        self.group_id = Some(group_id.to_owned());
        self
    }

    /// Sets `parent_id` (`headers.parent_id`).
    pub fn with_parent_id(mut self, parent_id: &str) -> TaskMeta {
        self.parent_id = Some(parent_id.to_owned());
        self
    }

    /// Sets the `result_extended=True` fields.
    pub fn with_extended(mut self, extended: ExtendedFields) -> TaskMeta {
        self.extended = Some(extended);
        self
    }

    /// Replaces `date_done` (set to now for ready states) with `at`; ignored for states
    /// that are not ready, whose `date_done` is always `null`.
    pub fn with_date_done(mut self, at: &Timestamp) -> TaskMeta {
        if self.state.is_ready() {
            self.date_done = Some(at.as_str().to_owned());
        }
        self
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The state.
    pub fn state(&self) -> &ResultState {
        &self.state
    }

    /// The document as Python's `json.dumps` lays it out, fields in spec §5.2 order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128 + self.result.len());
        out.push_str("{\"status\": ");
        push_json_str(&mut out, self.state.as_str());
        out.push_str(", \"result\": ");
        out.push_str(&self.result);
        out.push_str(", \"traceback\": ");
        push_opt_json_str(&mut out, self.traceback.as_deref());
        out.push_str(", \"children\": ");
        out.push_str(&self.children);
        out.push_str(", \"date_done\": ");
        push_opt_json_str(&mut out, self.date_done.as_deref());
        if let Some(group_id) = &self.group_id {
            out.push_str(", \"group_id\": ");
            push_json_str(&mut out, group_id);
        }
        if let Some(parent_id) = &self.parent_id {
            out.push_str(", \"parent_id\": ");
            push_json_str(&mut out, parent_id);
        }
        if let Some(ext) = &self.extended {
            out.push_str(", \"name\": ");
            push_json_str(&mut out, &ext.name);
            out.push_str(", \"args\": ");
            out.push_str(&to_kombu_json(&ext.args));
            out.push_str(", \"kwargs\": ");
            out.push_str(&to_kombu_json(&ext.kwargs));
            out.push_str(", \"worker\": ");
            push_json_str(&mut out, &ext.worker);
            // Writing to a String cannot fail.
            let _ = write!(out, ", \"retries\": {}", ext.retries);
            out.push_str(", \"queue\": ");
            push_json_str(&mut out, &ext.queue);
        }
        out.push_str(", \"task_id\": ");
        push_json_str(&mut out, &self.task_id);
        out.push('}');
        out
    }
}

/// Checks that `text` is exactly one kombu JSON value.
fn check_json(task_id: &str, field: &'static str, text: &str) -> Result<(), BackendError> {
    from_kombu_json(text)
        .map(drop)
        .map_err(|err| BackendError::InvalidMeta {
            task_id: task_id.to_owned(),
            field,
            reason: format!("not JSON: {err}"),
        })
}

/// Appends `text` as a JSON string.
fn push_json_str(out: &mut String, text: &str) {
    out.push_str(&Value::from(text).to_string());
}

/// Appends `text` as a JSON string, or `null`.
fn push_opt_json_str(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => push_json_str(out, text),
        None => out.push_str("null"),
    }
}

/// Now, as Celery writes `date_done` in UTC.
fn now_iso() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Timestamp::from_unix_micros(micros).as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DONE: &str = "2026-11-21T05:32:24.584738+00:00";

    fn done() -> Timestamp {
        Timestamp::parse(DONE).expect("a valid constant timestamp")
    }

    #[test]
    fn success_document_matches_captured_celery_text() {
        let meta = TaskMeta::success("T-simple", "4")
            .expect("4 is JSON")
            .with_date_done(&done());
        assert_eq!(
            meta.to_json(),
            r#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-11-21T05:32:24.584738+00:00", "task_id": "T-simple"}"#
        );
    }

    #[test]
    fn success_keeps_kombu_tokens_verbatim() {
        let meta =
            TaskMeta::success("t", "[NaN, -Infinity, 1180591620717411303424]").expect("kombu JSON");
        assert!(
            meta.to_json()
                .contains(r#""result": [NaN, -Infinity, 1180591620717411303424],"#)
        );
    }

    #[test]
    fn success_with_invalid_json_is_refused() {
        let err = TaskMeta::success("t", "1, \"x\": 2").expect_err("two values");
        assert!(matches!(
            err,
            BackendError::InvalidMeta {
                field: "result",
                ..
            }
        ));
        assert!(!err.is_connection());
    }

    #[test]
    fn failure_document_matches_captured_celery_text() {
        let args = [json!("bad"), json!(42)];
        let meta = TaskMeta::failure(
            "T-boom",
            ExceptionInfo {
                exc_type: "ValueError",
                exc_module: "builtins",
                exc_message: &args,
            },
            Some("Traceback (most recent call last):\nValueError: ('bad', 42)\n"),
        )
        .with_date_done(&done());
        assert_eq!(
            meta.to_json(),
            r#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad", 42], "exc_module": "builtins"}, "traceback": "Traceback (most recent call last):\nValueError: ('bad', 42)\n", "children": [], "date_done": "2026-11-21T05:32:24.584738+00:00", "task_id": "T-boom"}"#
        );
    }

    #[test]
    fn started_extended_document_matches_captured_celery_text() {
        let meta = TaskMeta::started("E-1", 23401, "w1@vm").with_extended(ExtendedFields {
            name: "proj.add".into(),
            args: json!([2, 3]),
            kwargs: json!({}),
            worker: "w1@vm".into(),
            retries: 0,
            queue: "celery".into(),
        });
        assert_eq!(
            meta.to_json(),
            r#"{"status": "STARTED", "result": {"pid": 23401, "hostname": "w1@vm"}, "traceback": null, "children": [], "date_done": null, "name": "proj.add", "args": [2, 3], "kwargs": {}, "worker": "w1@vm", "retries": 0, "queue": "celery", "task_id": "E-1"}"#
        );
    }

    #[test]
    fn parent_and_group_come_before_task_id() {
        let meta = TaskMeta::success("c", "12")
            .expect("JSON")
            .with_date_done(&done())
            .with_group_id("g")
            .with_parent_id("T-link");
        assert!(
            meta.to_json()
                .ends_with(r#""group_id": "g", "parent_id": "T-link", "task_id": "c"}"#)
        );
    }

    #[test]
    fn ready_states_have_date_done_others_null() {
        let now = TaskMeta::success("t", "1").expect("JSON").to_json();
        let done = stored_date_done(&now).expect("a date for SUCCESS");
        assert!(done.ends_with("+00:00"), "{done}");
        assert!(Timestamp::parse(&done).is_some(), "{done}");

        let retry = TaskMeta::retry("t", None, None);
        assert!(retry.to_json().contains(r#""result": null"#));
        assert_eq!(stored_date_done(&retry.to_json()), None);
        let progress = TaskMeta::custom("t", "PROGRESS", r#"{"done": 3}"#).expect("a custom state");
        assert_eq!(progress.state(), &ResultState::Custom("PROGRESS".into()));
        assert_eq!(stored_date_done(&progress.to_json()), None);
        let args = [json!("revoked")];
        let revoked = TaskMeta::revoked(
            "t",
            ExceptionInfo {
                exc_type: "TaskRevokedError",
                exc_module: "celery.exceptions",
                exc_message: &args,
            },
        );
        assert!(stored_date_done(&revoked.to_json()).is_some());
    }

    #[test]
    fn custom_with_empty_state_is_refused() {
        assert!(matches!(
            TaskMeta::custom("t", "", "{}"),
            Err(BackendError::InvalidMeta {
                field: "status",
                ..
            })
        ));
    }

    fn stored_date_done(doc: &str) -> Option<String> {
        let value = from_kombu_json(doc).expect("a valid document");
        value.get("date_done")?.as_str().map(str::to_owned)
    }
}
