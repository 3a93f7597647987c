//! Promises every result backend keeps, written once as `async fn`s over a [`Harness`].

use celeriac::backend::{ExceptionInfo, ExtendedFields, ResultBackend, StoreOutcome, TaskMeta};
use serde_json::{Value, json};

/// What a conformance case needs from a backend under test.
pub trait Harness {
    /// The backend type.
    type Backend: ResultBackend;
    /// A connected backend with default options.
    async fn backend() -> Self::Backend;
}

/// Instantiates every conformance case for one backend: `backend_suite!(module, Harness)`.
#[macro_export]
macro_rules! backend_suite {
    ($name:ident, $harness:ty) => {
        mod $name {
            $crate::backend_suite!(@cases $harness;
                success_document_has_celery_field_order,
                success_is_never_overwritten,
                failure_stores_exception_dict,
                extended_fields_come_before_task_id,
                group_and_parent_only_when_set,
                kombu_tokens_are_stored_verbatim,
                missing_task_reads_as_none,
            );
        }
    };
    (@cases $harness:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::conformance::$case::<$harness>().await;
            }
        )*
    };
}

/// A fresh task id.
pub fn task_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The keys of a JSON object document, in the order they appear in the text.
pub fn key_order(document: &str) -> Vec<String> {
    // `preserve_order` is not enabled for serde_json, so read the keys off the text: each
    // top-level key is a string at depth 1 followed by `:`.
    let bytes = document.as_bytes();
    let mut keys = Vec::new();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let start = i + 1;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let rest = document[i + 1..].trim_start();
                if depth == 1 && rest.starts_with(':') {
                    keys.push(document[start..i].to_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    keys
}

async fn stored<B: ResultBackend>(backend: &B, task_id: &str) -> String {
    backend
        .get(task_id)
        .await
        .expect("get succeeds")
        .unwrap_or_else(|| panic!("a document for {task_id}"))
}

/// Stores a document for a task that had none, checks it was written, and reads it back.
async fn store_new<B: ResultBackend>(backend: &B, meta: &TaskMeta) -> String {
    assert_eq!(
        backend.store(meta).await.expect("store"),
        StoreOutcome::Stored
    );
    stored(backend, meta.task_id()).await
}

fn parsed(document: &str) -> Value {
    celeriac::protocol::kombu_json::from_kombu_json(document).expect("a kombu JSON document")
}

/// SUCCESS has exactly Celery's fields, in Celery's order.
pub async fn success_document_has_celery_field_order<H: Harness>() {
    let backend = H::backend().await;
    let id = task_id();
    let meta = TaskMeta::success(&id, "4").expect("JSON");
    let doc = store_new(&backend, &meta).await;
    assert_eq!(
        key_order(&doc),
        [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "task_id"
        ]
    );
    let value = parsed(&doc);
    assert_eq!(value["status"], "SUCCESS");
    assert_eq!(value["result"], 4);
    assert_eq!(value["traceback"], Value::Null);
    assert_eq!(value["children"], json!([]));
    assert_eq!(value["task_id"], id.as_str());
    let date_done = value["date_done"].as_str().expect("date_done is set");
    assert!(date_done.ends_with("+00:00"), "{date_done}");
}

/// Once SUCCESS is stored, later FAILURE or STARTED writes leave it alone.
pub async fn success_is_never_overwritten<H: Harness>() {
    let backend = H::backend().await;
    let id = task_id();
    let success = TaskMeta::success(&id, "\"first\"").expect("JSON");
    backend.store(&success).await.expect("store");
    let args = [json!("late")];
    let failure = TaskMeta::failure(
        &id,
        ExceptionInfo {
            exc_type: "ValueError",
            exc_module: "builtins",
            exc_message: &args,
        },
        None,
    );
    assert_eq!(
        backend.store(&failure).await.expect("store"),
        StoreOutcome::KeptSuccess
    );
    let started = TaskMeta::started(&id, 1, "w@h");
    assert_eq!(
        backend.store(&started).await.expect("store"),
        StoreOutcome::KeptSuccess
    );
    let again = TaskMeta::success(&id, "\"second\"").expect("JSON");
    assert_eq!(
        backend.store(&again).await.expect("store"),
        StoreOutcome::KeptSuccess
    );
    assert_eq!(stored(&backend, &id).await, success.to_json());
}

/// FAILURE stores Celery's exception dict and the traceback text; STARTED before it is
/// overwritten.
pub async fn failure_stores_exception_dict<H: Harness>() {
    let backend = H::backend().await;
    let id = task_id();
    backend
        .store(&TaskMeta::started(&id, 42, "w1@vm"))
        .await
        .expect("store");
    let started = parsed(&stored(&backend, &id).await);
    assert_eq!(started["result"], json!({"pid": 42, "hostname": "w1@vm"}));
    assert_eq!(started["date_done"], Value::Null);

    let args = [json!("bad"), json!(42)];
    let exc = ExceptionInfo {
        exc_type: "ValueError",
        exc_module: "builtins",
        exc_message: &args,
    };
    let meta = TaskMeta::failure(&id, exc, Some("Traceback …\nValueError: ('bad', 42)\n"));
    let doc = store_new(&backend, &meta).await;
    assert!(
        doc.contains(r#""result": {"exc_type": "ValueError", "exc_message": ["bad", 42], "exc_module": "builtins"}"#),
        "{doc}"
    );
    let value = parsed(&doc);
    assert_eq!(value["status"], "FAILURE");
    assert_eq!(value["traceback"], "Traceback …\nValueError: ('bad', 42)\n");
    assert!(value["date_done"].is_string());
}

/// `result_extended` fields sit between `date_done` and `task_id`.
pub async fn extended_fields_come_before_task_id<H: Harness>() {
    let backend = H::backend().await;
    let id = task_id();
    let meta = TaskMeta::success(&id, "5")
        .expect("JSON")
        .with_extended(ExtendedFields {
            name: "proj.add".into(),
            args: json!([2, 3]),
            kwargs: json!({"z": 1}),
            worker: "w1@vm".into(),
            retries: 2,
            queue: "celery".into(),
        });
    let doc = store_new(&backend, &meta).await;
    assert_eq!(
        key_order(&doc),
        [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "name",
            "args",
            "kwargs",
            "worker",
            "retries",
            "queue",
            "task_id"
        ]
    );
    let value = parsed(&doc);
    assert_eq!(value["name"], "proj.add");
    assert_eq!(value["args"], json!([2, 3]));
    assert_eq!(value["kwargs"], json!({"z": 1}));
    assert_eq!(value["worker"], "w1@vm");
    assert_eq!(value["retries"], 2);
    assert_eq!(value["queue"], "celery");
}

/// `group_id` and `parent_id` are written only when the request has them.
pub async fn group_and_parent_only_when_set<H: Harness>() {
    let backend = H::backend().await;
    let (plain, child) = (task_id(), task_id());
    backend
        .store(&TaskMeta::success(&plain, "1").expect("JSON"))
        .await
        .expect("store");
    let meta = TaskMeta::success(&child, "12")
        .expect("JSON")
        .with_group_id("g-1")
        .with_parent_id("T-link")
        .with_children(&json!([[["c-1", null], null]]));
    backend.store(&meta).await.expect("store");
    let plain_keys = key_order(&stored(&backend, &plain).await);
    assert!(
        !plain_keys
            .iter()
            .any(|k| k == "group_id" || k == "parent_id"),
        "{plain_keys:?}"
    );
    let doc = stored(&backend, &child).await;
    assert_eq!(
        key_order(&doc),
        [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "group_id",
            "parent_id",
            "task_id"
        ]
    );
    let value = parsed(&doc);
    assert_eq!(value["group_id"], "g-1");
    assert_eq!(value["parent_id"], "T-link");
    assert_eq!(value["children"], json!([[["c-1", null], null]]));
}

/// NaN, Infinity and integers beyond 64 bits reach the store exactly as the guest wrote them.
pub async fn kombu_tokens_are_stored_verbatim<H: Harness>() {
    let backend = H::backend().await;
    let id = task_id();
    let result = r#"{"x": NaN, "big": 1180591620717411303424, "inf": [Infinity, -Infinity]}"#;
    backend
        .store(&TaskMeta::success(&id, result).expect("kombu JSON"))
        .await
        .expect("store");
    let doc = stored(&backend, &id).await;
    assert!(
        doc.contains(&format!(r#""result": {result}, "traceback""#)),
        "{doc}"
    );
}

/// An id nothing was stored for reads as `None` (PENDING to a client).
pub async fn missing_task_reads_as_none<H: Harness>() {
    let backend = H::backend().await;
    assert_eq!(backend.get(&task_id()).await.expect("get"), None);
}
