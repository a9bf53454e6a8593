//! The daemon's policies: read from their directories at start and on SIGHUP, held in
//! memory. A file that does not load is reported and does not take the others down; a
//! policy whose file breaks on reload keeps its last good version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use tracing::{info, warn};

use super::api::ApiError;
use crate::policy::{self, Policy};

#[derive(Debug)]
pub struct PolicyStore {
    dirs: Vec<PathBuf>,
    /// By name: the policy, or why it cannot be used (a broken file with no good version).
    policies: RwLock<BTreeMap<String, Result<Policy, String>>>,
}

impl PolicyStore {
    /// Policies from `dir`, or from the usual search path (first found wins).
    pub fn open(dir: Option<PathBuf>) -> PolicyStore {
        let dirs = match dir {
            Some(dir) => vec![dir],
            None => policy::policy_dirs(),
        };
        let store = PolicyStore {
            dirs,
            policies: RwLock::new(BTreeMap::new()),
        };
        store.reload();
        store
    }

    /// Read every policy file again. Jobs that are running keep what they started with.
    pub fn reload(&self) {
        let mut found: BTreeMap<String, Result<Policy, String>> = BTreeMap::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            for path in files {
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                if found.contains_key(name) || super::api::policy_name(Some(name)).is_err() {
                    continue;
                }
                let loaded = Policy::load_file(name, &path).map_err(|e| e.to_string());
                found.insert(name.to_string(), loaded);
            }
        }
        if !found.contains_key("default") {
            found.insert(
                "default".into(),
                Policy::parse(
                    "default",
                    std::path::Path::new("<built-in default.toml>"),
                    policy::BUILTIN_DEFAULT,
                )
                .map_err(|e| e.to_string()),
            );
        }
        let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        for (name, loaded) in found {
            match (&loaded, policies.get(&name)) {
                (Err(err), Some(Ok(good))) => {
                    warn!(
                        policy = %name,
                        "{err}; keeping the last good version (sha256 {})",
                        good.sha256()
                    );
                    continue;
                }
                (Err(err), _) => warn!(policy = %name, "{err}; requests for it are refused"),
                (Ok(policy), _) => {
                    // Hashed once here, not by every job that uses it.
                    let sha256 = policy.sha256();
                    info!(policy = %name, sha256 = %sha256, "policy loaded");
                }
            }
            policies.insert(name, loaded);
        }
    }

    /// The policy named `name`, as it stands now.
    pub fn get(&self, name: &str) -> Result<Policy, ApiError> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        match policies.get(name) {
            Some(Ok(policy)) => Ok(policy.clone()),
            Some(Err(err)) => Err(ApiError {
                status: 400,
                code: "policy_broken",
                field: Some("policy".into()),
                message: format!("policy {name:?} cannot be used: {err}"),
            }),
            None => Err(ApiError::bad(
                "policy",
                format!(
                    "no policy named {name:?} (known: {})",
                    policies.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}
