//! Loading a tasks directory: validation, duplicate names, the compile cache, policies.

use std::path::Path;

use celeriac::registry::{ArtifactSource, CompileCache, LoadError, Registry};
use celeriac::sandbox::{Isolation, Outcome, Sandbox, SandboxLimits};

use crate::support::harness::{invocation, sandbox};
use crate::support::{celeriac_cli, guests};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("temp dir is writable");
}

#[tokio::test]
async fn every_component_of_the_directory_is_loaded_with_its_names() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.wasm",
        &guests::guest_component(&["a.one", "a.two"], "", "1"),
    );
    write(dir.path(), "b.wasm", &guests::ok_guest("b.one", "2"));
    write(dir.path(), "notes.txt", b"not a component");
    let registry = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(registry.task_names(), ["a.one", "a.two", "b.one"]);
    let component = registry.resolve("a.two").unwrap();
    assert_eq!(component.path, dir.path().join("a.wasm"));
    assert!(component.digest.starts_with("sha256:") && component.digest.len() == 7 + 64);
    assert!(registry.resolve("c.missing").is_none());
}

#[tokio::test]
async fn a_name_served_twice_is_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "first.wasm",
        &guests::ok_guest("tasks.add", "1"),
    );
    write(
        dir.path(),
        "second.wasm",
        &guests::ok_guest("tasks.add", "2"),
    );
    let err = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .err()
        .expect("duplicate refused");
    assert!(
        matches!(&err, LoadError::Duplicate { name, .. } if name == "tasks.add"),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("first.wasm") && message.contains("second.wasm"),
        "{message}"
    );
}

#[tokio::test]
async fn a_component_missing_an_export_is_refused_with_the_file_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken.wasm",
        &guests::missing_export_component(),
    );
    let err = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(message.contains("broken.wasm"), "{message}");
    assert!(
        message.contains("celeriac:task/task@0.2.0") && message.contains("run"),
        "{message}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "junk.wasm", b"\0asm garbage");
    let err = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, LoadError::Component { path, .. } if path.ends_with("junk.wasm")),
        "{err}"
    );
}

/// A tasks directory holding one component, and an empty compile cache directory.
struct CachedTasks {
    tasks: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
}

impl CachedTasks {
    fn with(file_name: &str, component: &[u8]) -> Self {
        let tasks = tempfile::tempdir().unwrap();
        write(tasks.path(), file_name, component);
        CachedTasks {
            tasks,
            cache_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cache(&self) -> CompileCache {
        CompileCache::new(self.cache_dir.path())
    }

    async fn load(&self, sandbox: &Sandbox, cache: &CompileCache) -> Result<Registry, LoadError> {
        Registry::load_dir(sandbox, self.tasks.path(), Some(cache)).await
    }

    /// The compiled artifacts in the cache (not the lock files beside them).
    fn artifacts(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.cache_dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_waits_for_another_process_compiling_the_same_component_and_maps_its_artifact() {
    let dir = std::sync::Arc::new(CachedTasks::with("a.wasm", &guests::ok_guest("a.one", "1")));
    let (sandbox, cache) = (sandbox(), dir.cache());
    dir.load(&sandbox, &cache).await.unwrap();
    let [artifact] = &dir.artifacts()[..] else {
        panic!("one artifact expected: {:?}", dir.artifacts());
    };
    let compiled = std::fs::read(artifact).unwrap();
    std::fs::remove_file(artifact).unwrap();
    // Another process is compiling the component: it holds the entry's lock.
    let mut lock_path = artifact.clone().into_os_string();
    lock_path.push(".lock");
    let other_process = std::fs::File::open(&lock_path).unwrap();
    other_process.lock().unwrap();

    let loading = tokio::spawn({
        let dir = std::sync::Arc::clone(&dir);
        async move { dir.load(&sandbox, &cache).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !loading.is_finished(),
        "the load waits while the entry is locked"
    );
    std::fs::write(artifact, compiled).unwrap();
    drop(other_process);

    let registry = loading.await.unwrap().unwrap();
    assert_eq!(
        registry.components()[0].load.source,
        ArtifactSource::Cache,
        "the artifact the other process wrote is mapped, not compiled again"
    );
    assert_eq!(registry.task_names(), ["a.one"]);
}

#[tokio::test]
async fn compiled_components_come_from_the_cache_on_the_second_load() {
    let dir = CachedTasks::with("a.wasm", &guests::ok_guest("a.one", "1"));
    let (sandbox, cache) = (sandbox(), dir.cache());
    let first = dir.load(&sandbox, &cache).await.unwrap();
    let second = dir.load(&sandbox, &cache).await.unwrap();
    assert_eq!(first.components()[0].load.source, ArtifactSource::Compiled);
    assert_eq!(second.components()[0].load.source, ArtifactSource::Cache);
    assert_eq!(first.components()[0].digest, second.components()[0].digest);
    assert_eq!(dir.artifacts().len(), 1, "one artifact per component");
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_recompiled() {
    let dir = CachedTasks::with("a.wasm", &guests::ok_guest("a.one", "1"));
    let (sandbox, cache) = (sandbox(), dir.cache());
    dir.load(&sandbox, &cache).await.unwrap();
    for artifact in dir.artifacts() {
        std::fs::write(artifact, b"corrupt").unwrap();
    }
    let reloaded = dir.load(&sandbox, &cache).await.unwrap();
    assert_eq!(
        reloaded.components()[0].load.source,
        ArtifactSource::Compiled
    );
    assert_eq!(reloaded.task_names(), ["a.one"]);
}

#[tokio::test]
async fn a_child_process_compiles_into_the_cache_and_the_worker_maps_its_artifact() {
    let dir = CachedTasks::with("a.wasm", &guests::ok_guest("a.one", "7"));
    let cache = dir.cache().compiling_in_child(celeriac_cli::binary());
    let sandbox = sandbox();
    let first = dir.load(&sandbox, &cache).await.unwrap();
    // Only a child that succeeded, and whose artifact this engine accepted, counts as this.
    assert_eq!(
        first.components()[0].load.source,
        ArtifactSource::CompiledInChild
    );
    assert_eq!(
        dir.artifacts().len(),
        1,
        "the child's artifact, and nothing else"
    );
    let (invocation, _) = invocation("a.one", "[]", "{}", SandboxLimits::new());
    let ran = sandbox
        .run(&first.resolve("a.one").unwrap().prepared, invocation)
        .await
        .expect("the host does not fail");
    assert!(
        matches!(&ran.outcome, Outcome::Returned(r) if r == "7"),
        "{:?}",
        ran.outcome
    );

    let second = dir.load(&sandbox, &cache).await.unwrap();
    assert_eq!(second.components()[0].load.source, ArtifactSource::Cache);
}

#[tokio::test]
async fn a_failing_child_process_leaves_the_compile_to_the_worker() {
    let dir = CachedTasks::with("a.wasm", &guests::ok_guest("a.one", "1"));
    // Runs as `/bin/false compile-artifact --output …`: exits 1, writes nothing.
    let cache = dir.cache().compiling_in_child("/bin/false");
    let registry = dir.load(&sandbox(), &cache).await.unwrap();
    assert_eq!(
        registry.components()[0].load.source,
        ArtifactSource::Compiled
    );
    assert_eq!(registry.task_names(), ["a.one"]);
}

#[tokio::test]
async fn an_invalid_component_is_refused_with_its_own_error_when_a_child_compiles() {
    let dir = CachedTasks::with("junk.wasm", b"\0asm garbage");
    let cache = dir.cache().compiling_in_child(celeriac_cli::binary());
    let err = dir.load(&sandbox(), &cache).await.err().expect("refused");
    assert!(
        matches!(&err, LoadError::Component { path, .. } if path.ends_with("junk.wasm")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("not a valid WebAssembly component"),
        "{err}"
    );
}

#[tokio::test]
async fn the_policy_beside_a_component_sets_its_isolation() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.wasm", &guests::ok_guest("a.one", "1"));
    write(
        dir.path(),
        "a.toml",
        b"isolation = \"reuse\"\nmax_tasks_per_instance = 7\n",
    );
    let registry = Registry::load_dir(&sandbox(), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(
        registry.resolve("a.one").unwrap().prepared.isolation(),
        Isolation::Reuse {
            max_tasks_per_instance: 7
        }
    );
}
