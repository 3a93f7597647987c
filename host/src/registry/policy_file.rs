//! Reads a component's policy: `NAME.toml` beside `NAME.wasm`, or a `[component.NAME]`
//! table in the tasks directory's `celeriac.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sandbox::{DirGrant, Isolation, WasiPolicy};

/// Name of the directory-wide policy file.
pub const DIRECTORY_POLICY_FILE: &str = "celeriac.toml";

/// Tasks an instance serves under `isolation = "reuse"` when the policy does not say.
const DEFAULT_MAX_TASKS_PER_INSTANCE: u32 = 1000;

/// A component's policy as written in TOML. Every field is optional; absent means denied
/// (or, for isolation, a fresh instance per task).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    #[serde(default)]
    dirs: Vec<DirGrant>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    isolation: IsolationName,
    max_tasks_per_instance: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum IsolationName {
    #[default]
    Fresh,
    Reuse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryPolicy {
    #[serde(default)]
    component: BTreeMap<String, PolicyTable>,
}

/// What a component may do, and how its instances are used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComponentPolicy {
    /// Capabilities granted to its instances.
    pub wasi: WasiPolicy,
    /// Fresh instance per task, or reuse.
    pub isolation: Isolation,
    /// The file the policy came from, if any.
    pub source: Option<PathBuf>,
}

/// Finds and reads the policy of the component at `wasm_path`. The file beside the
/// component wins over `celeriac.toml`; with neither, everything is denied.
pub(crate) fn read_policy(wasm_path: &Path) -> Result<ComponentPolicy, String> {
    let stem = wasm_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let dir = wasm_path.parent().unwrap_or(Path::new("."));
    let beside = wasm_path.with_extension("toml");
    if beside.is_file() {
        let table: PolicyTable = read_toml(&beside)?;
        return into_policy(table, dir, &beside);
    }
    let shared = dir.join(DIRECTORY_POLICY_FILE);
    if shared.is_file() {
        let mut file: DirectoryPolicy = read_toml(&shared)?;
        if let Some(table) = file.component.remove(stem) {
            return into_policy(table, dir, &shared);
        }
    }
    Ok(ComponentPolicy::default())
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    toml::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))
}

fn into_policy(table: PolicyTable, base: &Path, source: &Path) -> Result<ComponentPolicy, String> {
    let PolicyTable {
        dirs,
        env,
        network,
        isolation,
        max_tasks_per_instance,
    } = table;
    let isolation = match (isolation, max_tasks_per_instance) {
        (IsolationName::Fresh, None) => Isolation::Fresh,
        (IsolationName::Fresh, Some(_)) => {
            return Err(format!(
                "{}: max_tasks_per_instance only applies with isolation = \"reuse\"",
                source.display()
            ));
        }
        (IsolationName::Reuse, Some(0)) => {
            return Err(format!(
                "{}: max_tasks_per_instance must be at least 1",
                source.display()
            ));
        }
        (IsolationName::Reuse, max) => Isolation::Reuse {
            max_tasks_per_instance: max.unwrap_or(DEFAULT_MAX_TASKS_PER_INSTANCE),
        },
    };
    let mut wasi = WasiPolicy { dirs, env, network };
    wasi.resolve_paths(base);
    Ok(ComponentPolicy {
        wasi,
        isolation,
        source: Some(source.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_policy_file_denies_everything() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(dir.path(), "tasks.wasm", "");
        assert_eq!(read_policy(&wasm).unwrap(), ComponentPolicy::default());
    }

    #[test]
    fn file_beside_the_component_wins_and_resolves_relative_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(dir.path(), "tasks.wasm", "");
        write(
            dir.path(),
            "tasks.toml",
            "dirs = [{ host = \"data\", guest = \"/data\" }]\nenv = { MODE = \"test\" }\n",
        );
        write(
            dir.path(),
            DIRECTORY_POLICY_FILE,
            "[component.tasks]\nnetwork = true\n",
        );
        let policy = read_policy(&wasm).unwrap();
        assert_eq!(policy.wasi.dirs[0].host, dir.path().join("data"));
        assert_eq!(policy.wasi.dirs[0].guest, "/data");
        assert!(!policy.wasi.dirs[0].writable);
        assert_eq!(policy.wasi.env["MODE"], "test");
        assert!(
            !policy.wasi.network,
            "celeriac.toml is not merged in when a file sits beside"
        );
    }

    #[test]
    fn directory_file_applies_by_component_name() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(dir.path(), "tasks.wasm", "");
        write(
            dir.path(),
            DIRECTORY_POLICY_FILE,
            "[component.tasks]\nisolation = \"reuse\"\nmax_tasks_per_instance = 50\n[component.other]\nnetwork = true\n",
        );
        let policy = read_policy(&wasm).unwrap();
        assert_eq!(
            policy.isolation,
            Isolation::Reuse {
                max_tasks_per_instance: 50
            }
        );
        assert!(!policy.wasi.network);
    }

    #[test]
    fn unknown_keys_and_contradictions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = write(dir.path(), "tasks.wasm", "");
        write(dir.path(), "tasks.toml", "netwrok = true\n");
        assert!(
            read_policy(&wasm)
                .unwrap_err()
                .contains("unknown field `netwrok`")
        );
        write(dir.path(), "tasks.toml", "max_tasks_per_instance = 3\n");
        assert!(
            read_policy(&wasm)
                .unwrap_err()
                .contains("only applies with isolation = \"reuse\"")
        );
    }
}
