//! What a component may reach outside its sandbox: directories, environment variables,
//! network. Everything is denied unless the component's policy grants it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// The capabilities granted to a component's instances.
///
/// # Defaults
///
/// Nothing is ambient: no preopened directories, no environment variables, no arguments,
/// stdin closed, no sockets and no name lookup. Clocks and random numbers are always
/// available (tasks need them to sleep and to jitter retries). stdout and stderr are
/// captured into the task's log lines.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasiPolicy {
    /// Host directories the guest can open, each under a guest path.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the guest may open TCP/UDP sockets to any address and resolve names.
    #[serde(default)]
    pub network: bool,
}

/// One host directory made visible to the guest.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host. Relative paths are resolved against the directory of the
    /// policy file that granted it.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create and change files there (default: read-only).
    #[serde(default)]
    pub writable: bool,
}

impl WasiPolicy {
    /// Applies the grants to a fresh WASI builder; fails if a granted directory cannot be
    /// opened.
    pub(crate) fn apply(&self, builder: &mut WasiCtxBuilder) -> std::io::Result<()> {
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|err| {
                    std::io::Error::other(format!(
                        "cannot grant directory {} as {}: {err}",
                        dir.host.display(),
                        dir.guest
                    ))
                })?;
        }
        for (key, value) in &self.env {
            builder.env(key, value);
        }
        if self.network {
            builder.inherit_network().allow_ip_name_lookup(true);
        }
        Ok(())
    }

    /// Resolves relative directory grants against `base` (the policy file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for dir in &mut self.dirs {
            if dir.host.is_relative() {
                dir.host = base.join(&dir.host);
            }
        }
    }
}
