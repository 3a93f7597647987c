//! Changing a running registry: files dropped into, replaced in and removed from a watched
//! tasks directory, installs with a digest, rollbacks, and declared versions.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::registry::{KEEP_DIR, LoadError, Registry, RegistryEvent, digest_of};
use tokio::sync::broadcast;

use crate::support::guests;
use crate::support::harness::sandbox;
use crate::support::hotswap::{drop_file, versioned_echo as echo};

/// How long a test waits for the watcher. The target is under a second; the margin is for
/// a loaded CI machine.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

async fn watched(dir: &Path) -> (Arc<Registry>, celeriac::registry::DirWatcher) {
    let registry = Arc::new(Registry::load_dir(&sandbox(), dir, None).await.unwrap());
    registry.keep_versions().await;
    let watcher = registry.watch().unwrap();
    (registry, watcher)
}

async fn next_event(events: &mut broadcast::Receiver<RegistryEvent>) -> RegistryEvent {
    tokio::time::timeout(NOTICE_TIMEOUT, events.recv())
        .await
        .expect("the registry noticed the change")
        .expect("no event lost")
}

fn version_serving(registry: &Registry, task: &str) -> Option<String> {
    registry.resolve(task).map(|c| c.version.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_file_swaps_its_names_while_holders_keep_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "echo.wasm", &echo("v1"));
    let (registry, _watcher) = watched(dir.path()).await;
    let mut events = registry.subscribe();
    let running = registry.resolve("tasks.echo").expect("v1 serves");
    assert_eq!(running.version, "v1");

    let dropped = Instant::now();
    drop_file(dir.path(), "echo.wasm", &echo("v2"));
    let event = next_event(&mut events).await;
    let noticed = dropped.elapsed();
    assert!(
        matches!(&event, RegistryEvent::Loaded { version, replaced: Some(old), tasks, .. }
            if version == "v2" && old == "v1" && tasks == &["tasks.echo"]),
        "{event:?}"
    );
    assert!(noticed < Duration::from_secs(2), "took {noticed:?}");
    assert_eq!(
        version_serving(&registry, "tasks.echo").as_deref(),
        Some("v2")
    );
    assert_eq!(running.version, "v1", "a task that resolved v1 keeps it");
    let versions = registry.versions();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        (versions[0].name.as_str(), versions[0].version.as_str()),
        ("tasks.echo", "v2")
    );
    assert_eq!(versions[0].digest, digest_of(&echo("v2")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_or_a_stolen_name_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "echo.wasm", &echo("v1"));
    let (registry, _watcher) = watched(dir.path()).await;
    let mut events = registry.subscribe();

    drop_file(dir.path(), "echo.wasm", b"\0asm not really");
    let event = next_event(&mut events).await;
    assert!(
        matches!(&event, RegistryEvent::Refused { file, .. } if file.ends_with("echo.wasm")),
        "{event:?}"
    );
    assert_eq!(
        version_serving(&registry, "tasks.echo").as_deref(),
        Some("v1")
    );

    drop_file(dir.path(), "thief.wasm", &echo("v9"));
    let event = next_event(&mut events).await;
    assert!(
        matches!(&event, RegistryEvent::Refused { file, reason }
            if file.ends_with("thief.wasm") && reason.contains("tasks.echo") && reason.contains("echo.wasm")),
        "{event:?}"
    );
    assert_eq!(
        version_serving(&registry, "tasks.echo").as_deref(),
        Some("v1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_named_files_are_ignored_until_renamed_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _watcher) = watched(dir.path()).await;
    let mut events = registry.subscribe();
    std::fs::write(dir.path().join(".new.wasm.tmp"), echo("v1")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a component").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        events.try_recv().is_err(),
        "nothing loaded from a temp file"
    );
    assert!(registry.task_names().is_empty());

    std::fs::rename(
        dir.path().join(".new.wasm.tmp"),
        dir.path().join("new.wasm"),
    )
    .unwrap();
    let event = next_event(&mut events).await;
    assert!(
        matches!(&event, RegistryEvent::Loaded { version, replaced: None, .. } if version == "v1"),
        "{event:?}"
    );
    assert_eq!(registry.task_names(), ["tasks.echo"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_file_unregisters_its_names_and_a_rollback_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "echo.wasm", &echo("v1"));
    let (registry, _watcher) = watched(dir.path()).await;
    let mut events = registry.subscribe();
    let running = registry.resolve("tasks.echo").unwrap();

    std::fs::remove_file(dir.path().join("echo.wasm")).unwrap();
    let event = next_event(&mut events).await;
    assert!(
        matches!(&event, RegistryEvent::Removed { version, tasks, .. }
            if version == "v1" && tasks == &["tasks.echo"]),
        "{event:?}"
    );
    assert!(registry.resolve("tasks.echo").is_none());
    assert_eq!(running.version, "v1", "running tasks keep their component");

    let back = registry.rollback("echo.wasm").await.unwrap();
    assert_eq!(back.version, "v1");
    assert_eq!(
        version_serving(&registry, "tasks.echo").as_deref(),
        Some("v1")
    );
    assert!(
        dir.path().join("echo.wasm").is_file(),
        "a rollback writes the file back, so a restart keeps it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn install_checks_the_digest_writes_the_file_and_rollback_toggles_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "echo.wasm", &echo("v1"));
    let registry = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .unwrap();
    registry.keep_versions().await;

    let v2 = echo("v2");
    let wrong = registry
        .install("echo.wasm", v2.clone(), &digest_of(b"something else"))
        .await
        .err()
        .expect("a wrong digest is refused");
    assert!(matches!(wrong, LoadError::DigestMismatch { .. }), "{wrong}");
    assert_eq!(
        version_serving(&registry, "tasks.echo").as_deref(),
        Some("v1")
    );
    assert_eq!(
        std::fs::read(dir.path().join("echo.wasm")).unwrap(),
        echo("v1")
    );

    let bad_name = registry
        .install("../echo.wasm", v2.clone(), &digest_of(&v2))
        .await
        .err()
        .expect("a path is refused");
    assert!(
        matches!(bad_name, LoadError::BadFileName { .. }),
        "{bad_name}"
    );

    let installed = registry
        .install("echo.wasm", v2.clone(), &digest_of(&v2))
        .await
        .unwrap();
    assert_eq!(installed.version, "v2");
    assert_eq!(std::fs::read(dir.path().join("echo.wasm")).unwrap(), v2);
    assert!(
        dir.path()
            .join(KEEP_DIR)
            .join("previous/echo.wasm")
            .is_file()
    );

    // By task name this time; then back again.
    assert_eq!(registry.rollback("tasks.echo").await.unwrap().version, "v1");
    assert_eq!(
        std::fs::read(dir.path().join("echo.wasm")).unwrap(),
        echo("v1")
    );
    assert_eq!(registry.rollback("echo.wasm").await.unwrap().version, "v2");

    let none = registry
        .rollback("other.wasm")
        .await
        .err()
        .expect("nothing kept");
    assert!(matches!(none, LoadError::NoPrevious { .. }), "{none}");
}

#[tokio::test]
async fn without_a_declared_version_the_digest_names_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guests::ok_guest("tasks.plain", "1");
    drop_file(dir.path(), "plain.wasm", &bytes);
    let registry = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .unwrap();
    let component = registry.resolve("tasks.plain").unwrap();
    let digest = digest_of(&bytes);
    assert_eq!(component.digest, digest);
    assert_eq!(component.version, digest["sha256:".len()..][..12]);
}
