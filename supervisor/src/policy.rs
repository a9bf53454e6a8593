//! Policies: what an operator decides once and every job obeys.
//!
//! TOML → [`RawPolicy`] (close to the file, `deny_unknown_fields` everywhere) → [`Policy`]
//! (validated once, every value a checked number or path).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{Dur, Size};

/// The policy compiled into the binary, used when no policy directory is installed.
pub const BUILTIN_DEFAULT: &str = include_str!("../../policies/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name:?} not found (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("policy {path}{}: {field}: {reason}", at.map(|(line, column)| format!(", line {line}, column {column}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
        /// Where the field is written (line and column, from 1), when it is.
        at: Option<(usize, usize)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A network namespace with only `lo`; Landlock also denies TCP bind and connect.
    None,
    /// A network namespace with only `lo`; TCP on it works (tests that start their own
    /// localhost servers).
    Loopback,
    /// A network namespace with only `lo`, and a proxy of the job's own on it as the only way
    /// out, to the names and addresses its rules allow (see [`crate::egress`]).
    Allowlist,
    /// The host's network.
    Host,
}

impl NetworkMode {
    /// How much of the network a mode opens: none < loopback < allowlist < host.
    pub fn rank(self) -> u8 {
        match self {
            NetworkMode::None => 0,
            NetworkMode::Loopback => 1,
            NetworkMode::Allowlist => 2,
            NetworkMode::Host => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Loopback => "loopback",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Host => "host",
        }
    }

    /// Whether the job's namespace has the proxy's listeners served (the way out in
    /// `allowlist`, the explanation in `none`).
    pub fn proxied(self) -> bool {
        matches!(self, NetworkMode::None | NetworkMode::Allowlist)
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;

    fn from_str(text: &str) -> Result<NetworkMode, String> {
        match text {
            "none" => Ok(NetworkMode::None),
            "loopback" => Ok(NetworkMode::Loopback),
            "allowlist" => Ok(NetworkMode::Allowlist),
            "host" => Ok(NetworkMode::Host),
            other => Err(format!(
                "{other:?} is not a network mode (none, loopback, allowlist or host)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceAccess {
    Rw,
    Ro,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub description: String,
    pub filesystem: RawFilesystem,
    pub network: RawNetwork,
    pub limits: RawLimits,
    pub env: RawEnv,
    pub user: RawUser,
    pub landlock: RawLandlock,
    #[serde(default)]
    pub seccomp: RawSeccomp,
    #[serde(default)]
    pub home: RawHome,
    #[serde(default)]
    pub overrides: RawOverrides,
}

/// What of the caller's home the job sees (see [`crate::home`]).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHome {
    #[serde(default)]
    pub show: crate::home::Show,
    /// For `show = "toolchains"`: the entries, relative to the home (default:
    /// [`crate::home::TOOLCHAINS`]).
    pub toolchains: Option<Vec<PathBuf>>,
}

/// The seccomp filter: a named base list, and syscalls to deny besides or allow anyway.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeccomp {
    pub profile: crate::seccomp::Base,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

/// How far a request may loosen the policy. Tightening is always allowed; what is not
/// listed here may not be loosened at all.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrides {
    pub timeout: Option<Dur>,
    pub grace: Option<Dur>,
    pub memory: Option<Size>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
    pub output: Option<Size>,
    pub file_size: Option<Size>,
    /// Network modes a request may pick besides the policy's own (and stricter ones).
    #[serde(default)]
    pub network: Vec<NetworkMode>,
    /// Egress rules a request may add to `[network] allow` (in mode `allowlist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<crate::egress::Rule>,
    /// Extra read-only binds (`--ro`, `mounts` ro) only beneath these.
    #[serde(default)]
    pub allow_ro_under: Vec<PathBuf>,
    /// Extra read-write binds (`--rw`, `mounts` rw) only beneath these.
    #[serde(default)]
    pub allow_rw_under: Vec<PathBuf>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    pub system: Vec<PathBuf>,
    pub etc: Vec<String>,
    #[serde(default)]
    pub ro: Vec<PathBuf>,
    #[serde(default)]
    pub rw: Vec<PathBuf>,
    pub workspace: WorkspaceAccess,
    pub tmp_size: Size,
    /// Private, writable tmpfs mounts besides /tmp (sized like it).
    #[serde(default)]
    pub tmpfs: Vec<PathBuf>,
    /// Paths of the view to hide: directories show empty, files read as /dev/null.
    #[serde(default)]
    pub masked: Vec<PathBuf>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub mode: NetworkMode,
    /// What a job in mode `allowlist` may reach (see [`crate::egress::rules`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<crate::egress::Rule>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub timeout: Dur,
    pub grace: Dur,
    pub memory: Size,
    pub cpus: f64,
    pub pids: u32,
    pub output: Size,
    pub stdin: Size,
    pub file_size: Size,
    pub open_files: u64,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnv {
    pub pass: Vec<String>,
    /// Passed too, but only when the job has the host's network (proxies, CA bundles).
    #[serde(default)]
    pub pass_with_network: Vec<String>,
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    #[serde(default)]
    pub run_as: RunAs,
    pub fallback_uid: u32,
    pub fallback_gid: u32,
}

/// Whom the tool runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunAs {
    /// Whoever owns the work: the workspace's owner (`toolbox run`; the user behind sudo if
    /// root owns it) or the caller (over the socket); the fallback ids when that is root.
    #[default]
    Owner,
    /// Always the fallback uid and gid, whoever asks.
    Fixed,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLandlock {
    pub min_abi: u32,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub system: Vec<PathBuf>,
    pub etc: Vec<String>,
    pub ro: Vec<PathBuf>,
    pub rw: Vec<PathBuf>,
    pub workspace: WorkspaceAccess,
    pub tmp_size: u64,
    pub tmpfs: Vec<PathBuf>,
    pub masked: Vec<PathBuf>,
    pub network: NetworkMode,
    /// What a job in mode `allowlist` may reach, unless its request narrows it.
    pub allow: crate::egress::Rules,
    pub limits: Limits,
    pub env_pass: Vec<String>,
    pub env_pass_with_network: Vec<String>,
    pub env_set: Vec<(String, String)>,
    pub home: crate::home::Show,
    /// The home entries `show = "toolchains"` binds, relative to the home.
    pub home_toolchains: Vec<PathBuf>,
    pub run_as: RunAs,
    pub fallback_uid: u32,
    pub fallback_gid: u32,
    pub landlock_min_abi: u32,
    pub seccomp: crate::seccomp::Profile,
    pub overrides: Overrides,
    /// SHA-256 of the resolved policy ([`Policy::show`]): which policy a job ran under,
    /// exactly, whatever the file looked like. See [`Policy::sha256`].
    digest: Digest,
}

/// A policy's SHA-256, computed the first time it is asked for: serializing the policy and
/// hashing it cost `toolbox run` ~0.15 ms before its jail could start, and only the job's
/// record needs it.
#[derive(Debug, Clone, Default)]
struct Digest(std::sync::OnceLock<String>);

impl PartialEq for Digest {
    /// The digest follows from the other fields: policies equal in those are equal.
    fn eq(&self, _: &Digest) -> bool {
        true
    }
}

/// A policy's SHA-256 as a job's plan carries it: the value, or the policy to compute it
/// from when the record is written.
#[derive(Clone)]
pub struct Sha256(Sha256Inner);

#[derive(Clone)]
enum Sha256Inner {
    Known(String),
    Later(std::sync::Arc<Policy>),
}

impl Sha256 {
    /// For a record nobody will see (`toolbox run` without `--json`): left empty, never
    /// computed.
    pub fn unseen() -> Sha256 {
        Sha256(Sha256Inner::Known(String::new()))
    }

    pub fn get(&self) -> &str {
        match &self.0 {
            Sha256Inner::Known(sha256) => sha256,
            Sha256Inner::Later(policy) => policy.sha256(),
        }
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Sha256Inner::Known(sha256) => f.write_str(sha256),
            Sha256Inner::Later(policy) => match policy.digest.0.get() {
                Some(sha256) => f.write_str(sha256),
                None => f.write_str("(not computed yet)"),
            },
        }
    }
}

/// The most a request may ask for; each at least the policy's own value.
#[derive(Debug, Clone, PartialEq)]
pub struct Overrides {
    pub max: Limits,
    pub network: Vec<NetworkMode>,
    /// Egress rules a request may ask for beyond the policy's `allow`.
    pub allow: crate::egress::Rules,
    pub allow_ro_under: Vec<PathBuf>,
    pub allow_rw_under: Vec<PathBuf>,
}

/// Every limit a job runs under, as numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub grace: Duration,
    pub memory: u64,
    /// CPU quota in cores (1.5 = one and a half cores).
    pub cpus: f64,
    pub pids: u32,
    /// Output cap per stream, in bytes.
    pub output: u64,
    /// The most a request over the socket may send as the tool's stdin, in bytes.
    pub stdin: u64,
    pub file_size: u64,
    pub open_files: u64,
}

/// Bounds no policy or request may leave: below them a job cannot even start a shell, above
/// them the number is a typo.
pub mod bounds {
    pub const MEMORY_MIN: u64 = 8 << 20;
    pub const MEMORY_MAX: u64 = 1 << 40;
    pub const CPUS_MAX: f64 = 1024.0;
    pub const PIDS_MIN: u32 = 1;
    pub const PIDS_MAX: u32 = 1 << 22;
    pub const OUTPUT_MIN: u64 = 1024;
    pub const OUTPUT_MAX: u64 = 1 << 30;
    pub const OPEN_FILES_MIN: u64 = 16;
    pub const OPEN_FILES_MAX: u64 = 1 << 20;
    pub const TIMEOUT_MAX_SECS: u64 = 7 * 86400;
}

/// Host paths no writable bind may be, or contain.
const SYSTEM_DIRS: [&str; 12] = [
    "/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys",
    "/dev",
];

impl Policy {
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let parse_error = |e: toml::de::Error| PolicyError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let raw: RawPolicy = if table.contains_key("extends") {
            let merged = extended(path, table, 0)?;
            serde::Deserialize::deserialize(toml::Value::Table(merged)).map_err(parse_error)?
        } else {
            // From the text, not the table: its errors say where.
            toml::from_str(text).map_err(parse_error)?
        };
        Policy::validate(name, path, raw).map_err(|err| match err {
            PolicyError::Invalid {
                path,
                field,
                reason,
                ..
            } => {
                let at = locate(text, &field);
                PolicyError::Invalid {
                    path,
                    field,
                    reason,
                    at,
                }
            }
            other => other,
        })
    }

    fn validate(name: &str, path: &Path, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let invalid = |field: &str, reason: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
            at: None,
        };
        for (field, paths) in [
            ("filesystem.system", &raw.filesystem.system),
            ("filesystem.ro", &raw.filesystem.ro),
            ("filesystem.rw", &raw.filesystem.rw),
            ("filesystem.tmpfs", &raw.filesystem.tmpfs),
            ("filesystem.masked", &raw.filesystem.masked),
        ] {
            for p in paths {
                check_host_path(p).map_err(|reason| invalid(field, reason))?;
            }
        }
        for p in &raw.filesystem.rw {
            check_writable(p).map_err(|reason| invalid("filesystem.rw", reason))?;
        }
        for p in &raw.filesystem.tmpfs {
            check_writable(p).map_err(|reason| invalid("filesystem.tmpfs", reason))?;
            if [Path::new("/tmp"), Path::new("/dev/shm")].contains(&p.as_path()) {
                return Err(invalid(
                    "filesystem.tmpfs",
                    format!("{} is the jail's own already", p.display()),
                ));
            }
        }
        for entry in &raw.filesystem.etc {
            let rel = Path::new(entry);
            if entry.is_empty()
                || rel.is_absolute()
                || rel.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(invalid(
                    "filesystem.etc",
                    format!("{entry:?} must be a plain path relative to /etc (like \"ssl/certs\")"),
                ));
            }
        }
        let limits = Limits {
            timeout: raw.limits.timeout.0,
            grace: raw.limits.grace.0,
            memory: raw.limits.memory.0,
            cpus: raw.limits.cpus,
            pids: raw.limits.pids,
            output: raw.limits.output.0,
            stdin: raw.limits.stdin.0,
            file_size: raw.limits.file_size.0,
            open_files: raw.limits.open_files,
        };
        limits
            .check()
            .map_err(|(field, reason)| invalid(&format!("limits.{field}"), reason))?;
        for var in raw
            .env
            .pass
            .iter()
            .chain(&raw.env.pass_with_network)
            .chain(raw.env.set.keys())
        {
            check_env_name(var).map_err(|reason| invalid("env", reason))?;
        }
        let o = &raw.overrides;
        let max = Limits {
            timeout: o.timeout.map_or(limits.timeout, |d| d.0),
            grace: o.grace.map_or(limits.grace, |d| d.0),
            memory: o.memory.map_or(limits.memory, |s| s.0),
            cpus: o.cpus.unwrap_or(limits.cpus),
            pids: o.pids.unwrap_or(limits.pids),
            output: o.output.map_or(limits.output, |s| s.0),
            stdin: limits.stdin,
            file_size: o.file_size.map_or(limits.file_size, |s| s.0),
            open_files: limits.open_files,
        };
        max.check()
            .map_err(|(field, reason)| invalid(&format!("overrides.{field}"), reason))?;
        for (field, below) in [
            ("timeout", max.timeout < limits.timeout),
            ("grace", max.grace < limits.grace),
            ("memory", max.memory < limits.memory),
            ("cpus", max.cpus < limits.cpus),
            ("pids", max.pids < limits.pids),
            ("output", max.output < limits.output),
            ("file_size", max.file_size < limits.file_size),
        ] {
            if below {
                return Err(invalid(
                    &format!("overrides.{field}"),
                    format!("is below limits.{field}: the most a request may ask for cannot be less than the policy's own"),
                ));
            }
        }
        for (field, paths) in [
            ("overrides.allow_ro_under", &o.allow_ro_under),
            ("overrides.allow_rw_under", &o.allow_rw_under),
        ] {
            for p in paths {
                check_host_path(p).map_err(|reason| invalid(field, reason))?;
            }
        }
        for p in &o.allow_rw_under {
            check_writable(p).map_err(|reason| invalid("overrides.allow_rw_under", reason))?;
        }
        let seccomp = crate::seccomp::Profile {
            base: raw.seccomp.profile,
            deny: raw.seccomp.deny.clone(),
            allow: raw.seccomp.allow.clone(),
        };
        seccomp.check().map_err(|reason| {
            let field = if raw
                .seccomp
                .allow
                .iter()
                .any(|n| reason.contains(&format!("{n:?}")))
            {
                "seccomp.allow"
            } else {
                "seccomp.deny"
            };
            invalid(field, reason)
        })?;
        let home_toolchains = raw
            .home
            .toolchains
            .clone()
            .unwrap_or_else(|| crate::home::TOOLCHAINS.iter().map(PathBuf::from).collect());
        for entry in &home_toolchains {
            crate::home::check_entry(entry).map_err(|reason| invalid("home.toolchains", reason))?;
        }
        if raw.user.fallback_uid == 0 || raw.user.fallback_gid == 0 {
            return Err(invalid(
                "user",
                "the fallback uid and gid must not be 0: tools never run as root".into(),
            ));
        }
        Ok(Policy {
            name: name.to_string(),
            description: raw.description,
            system: raw.filesystem.system,
            etc: raw.filesystem.etc,
            ro: raw.filesystem.ro,
            rw: raw.filesystem.rw,
            workspace: raw.filesystem.workspace,
            tmp_size: raw.filesystem.tmp_size.0,
            tmpfs: raw.filesystem.tmpfs,
            masked: raw.filesystem.masked,
            network: raw.network.mode,
            allow: crate::egress::Rules(raw.network.allow),
            limits,
            env_pass: raw.env.pass,
            env_pass_with_network: raw.env.pass_with_network,
            env_set: raw.env.set.into_iter().collect(),
            home: raw.home.show,
            home_toolchains,
            run_as: raw.user.run_as,
            fallback_uid: raw.user.fallback_uid,
            fallback_gid: raw.user.fallback_gid,
            landlock_min_abi: raw.landlock.min_abi,
            seccomp,
            overrides: Overrides {
                max,
                network: raw.overrides.network,
                allow: crate::egress::Rules(raw.overrides.allow),
                allow_ro_under: raw.overrides.allow_ro_under,
                allow_rw_under: raw.overrides.allow_rw_under,
            },
            digest: Digest::default(),
        })
    }

    /// SHA-256 of the resolved policy ([`Policy::show`]): which policy a job ran under,
    /// exactly, whatever the file looked like. Computed on first use.
    pub fn sha256(&self) -> &str {
        self.digest.0.get_or_init(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(self.resolved().as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        })
    }

    /// [`Policy::sha256`] as a job's plan carries it, computed only when read (unless it
    /// was already).
    pub fn sha256_later(&self) -> Sha256 {
        Sha256(match self.digest.0.get() {
            Some(sha256) => Sha256Inner::Known(sha256.clone()),
            None => Sha256Inner::Later(std::sync::Arc::new(self.clone())),
        })
    }

    /// The effective policy, every value resolved, in the file format it came in, headed by
    /// its name and hash.
    pub fn show(&self) -> String {
        format!(
            "# policy {} (sha256 {})\n{}",
            self.name,
            self.sha256(),
            self.resolved()
        )
    }

    /// The resolved policy as TOML: what [`Policy::sha256`] is the hash of.
    fn resolved(&self) -> String {
        let o = &self.overrides;
        let raw = RawPolicy {
            description: self.description.clone(),
            filesystem: RawFilesystem {
                system: self.system.clone(),
                etc: self.etc.clone(),
                ro: self.ro.clone(),
                rw: self.rw.clone(),
                workspace: self.workspace,
                tmp_size: Size(self.tmp_size),
                tmpfs: self.tmpfs.clone(),
                masked: self.masked.clone(),
            },
            network: RawNetwork {
                mode: self.network,
                allow: self.allow.0.clone(),
            },
            limits: RawLimits {
                timeout: Dur(self.limits.timeout),
                grace: Dur(self.limits.grace),
                memory: Size(self.limits.memory),
                cpus: self.limits.cpus,
                pids: self.limits.pids,
                output: Size(self.limits.output),
                stdin: Size(self.limits.stdin),
                file_size: Size(self.limits.file_size),
                open_files: self.limits.open_files,
            },
            env: RawEnv {
                pass: self.env_pass.clone(),
                pass_with_network: self.env_pass_with_network.clone(),
                set: self.env_set.iter().cloned().collect(),
            },
            user: RawUser {
                run_as: self.run_as,
                fallback_uid: self.fallback_uid,
                fallback_gid: self.fallback_gid,
            },
            landlock: RawLandlock {
                min_abi: self.landlock_min_abi,
            },
            seccomp: RawSeccomp {
                profile: self.seccomp.base,
                deny: self.seccomp.deny.clone(),
                allow: self.seccomp.allow.clone(),
            },
            home: RawHome {
                show: self.home,
                toolchains: Some(self.home_toolchains.clone()),
            },
            overrides: RawOverrides {
                timeout: Some(Dur(o.max.timeout)),
                grace: Some(Dur(o.max.grace)),
                memory: Some(Size(o.max.memory)),
                cpus: Some(o.max.cpus),
                pids: Some(o.max.pids),
                output: Some(Size(o.max.output)),
                file_size: Some(Size(o.max.file_size)),
                network: o.network.clone(),
                allow: o.allow.0.clone(),
                allow_ro_under: o.allow_ro_under.clone(),
                allow_rw_under: o.allow_rw_under.clone(),
            },
        };
        toml::to_string(&raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Whether a request may run in network mode `asked`: the policy's own, anything
    /// stricter, or a mode the policy's overrides list.
    pub fn allows_network(&self, asked: NetworkMode) -> bool {
        asked.rank() <= self.network.rank() || self.overrides.network.contains(&asked)
    }

    /// Find a policy by name (a file `NAME.toml` in the policy directories) or by path.
    pub fn load(name_or_path: &str) -> Result<Policy, PolicyError> {
        let as_path = Path::new(name_or_path);
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let name = as_path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(name_or_path);
            return Policy::load_file(name, as_path);
        }
        let dirs = policy_dirs();
        for dir in &dirs {
            let path = dir.join(format!("{name_or_path}.toml"));
            if path.is_file() {
                return Policy::load_file(name_or_path, &path);
            }
        }
        if name_or_path == "default" {
            return Policy::parse(
                "default",
                Path::new("<built-in default.toml>"),
                BUILTIN_DEFAULT,
            );
        }
        Err(PolicyError::NotFound {
            name: name_or_path.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    pub fn load_file(name: &str, path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(name, path, &text)
    }
}

/// A policy's table with what it `extends` beneath it: the base policy's tables, with this
/// one's values put over them key by key (a list replaces the base's list). The base is
/// looked for beside the policy's file, then in the policy directories, then built in.
fn extended(path: &Path, mut table: toml::Table, depth: usize) -> Result<toml::Table, PolicyError> {
    let invalid = |reason: String| PolicyError::Invalid {
        path: path.to_path_buf(),
        field: "extends".into(),
        reason,
        at: None,
    };
    let Some(base) = table.remove("extends") else {
        return Ok(table);
    };
    let Some(base) = base.as_str().filter(|b| {
        !b.is_empty()
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    }) else {
        return Err(invalid(format!(
            "{base} is not a policy's name (letters, digits, '-' and '_')"
        )));
    };
    if depth >= 8 {
        return Err(invalid(format!(
            "policies extend each other more than 8 deep, at {base:?}: a policy that extends \
             itself?"
        )));
    }
    let beside = path.parent().map(|dir| dir.join(format!("{base}.toml")));
    let found = beside
        .into_iter()
        .chain(policy_dirs().iter().map(|d| d.join(format!("{base}.toml"))))
        .find(|p| p.is_file());
    let (base_path, base_text) = match found {
        Some(base_path) => {
            let text = std::fs::read_to_string(&base_path).map_err(|source| PolicyError::Read {
                path: base_path.clone(),
                source,
            })?;
            (base_path, text)
        }
        None if base == "default" => (
            PathBuf::from("<built-in default.toml>"),
            BUILTIN_DEFAULT.to_string(),
        ),
        None => return Err(invalid(format!("no policy named {base:?} to extend"))),
    };
    let base_table: toml::Table = toml::from_str(&base_text).map_err(|e| PolicyError::Parse {
        path: base_path.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut merged = extended(&base_path, base_table, depth + 1)?;
    merge(&mut merged, table);
    Ok(merged)
}

/// Put `over`'s values over `under`'s, table by table.
fn merge(under: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (under.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => merge(below, above),
            (_, value) => {
                under.insert(key, value);
            }
        }
    }
}

impl Limits {
    /// Check every limit against [`bounds`]; the error names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        use bounds::*;
        if self.timeout.is_zero() || self.timeout.as_secs() > TIMEOUT_MAX_SECS {
            return Err((
                "timeout",
                format!("{:?} must be above 0 and at most 7 days", self.timeout),
            ));
        }
        if self.grace > Duration::from_secs(600) {
            return Err((
                "grace",
                format!("{:?} must be at most 10 minutes", self.grace),
            ));
        }
        if !(MEMORY_MIN..=MEMORY_MAX).contains(&self.memory) {
            return Err((
                "memory",
                format!("{} bytes must be between 8M and 1T", self.memory),
            ));
        }
        if !(self.cpus > 0.0 && self.cpus <= CPUS_MAX) {
            return Err((
                "cpus",
                format!("{} must be above 0 and at most 1024", self.cpus),
            ));
        }
        if !(PIDS_MIN..=PIDS_MAX).contains(&self.pids) {
            return Err((
                "pids",
                format!("{} must be between 1 and 4194304", self.pids),
            ));
        }
        if !(OUTPUT_MIN..=OUTPUT_MAX).contains(&self.output) {
            return Err((
                "output",
                format!("{} bytes must be between 1K and 1G", self.output),
            ));
        }
        if self.stdin > OUTPUT_MAX {
            return Err(("stdin", format!("{} bytes must be at most 1G", self.stdin)));
        }
        if self.file_size == 0 {
            return Err(("file_size", "must be above 0".into()));
        }
        if !(OPEN_FILES_MIN..=OPEN_FILES_MAX).contains(&self.open_files) {
            return Err((
                "open_files",
                format!("{} must be between 16 and 1048576", self.open_files),
            ));
        }
        Ok(())
    }
}

/// An absolute, normalized host path: no `..`, no `.`, no empty components.
pub fn check_host_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} must be an absolute path", path.display()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{} must not contain . or .. components",
            path.display()
        ));
    }
    Ok(())
}

/// A path that may be bound writable: not a system directory, nor inside one, nor one
/// containing one.
pub fn check_writable(path: &Path) -> Result<(), String> {
    for dir in SYSTEM_DIRS.iter().map(Path::new) {
        let inside = dir != Path::new("/") && path.starts_with(dir);
        if path == dir || dir.starts_with(path) || inside {
            return Err(format!(
                "{} must not be writable: it is, contains or lies inside the system directory {}",
                path.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

pub fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid environment variable name"))
    }
}

/// Where `table.key` is written in a policy file: the line and column of the key, or of the
/// table's header when the key is not written out. Plain TOML as policies are written (a
/// `[table]` header, then `key = ...` lines); `None` when it cannot tell.
fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    let (table, key) = field.split_once('.').unwrap_or(("", field));
    let mut in_table = table.is_empty();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let column = line.len() - trimmed.len() + 1;
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name.split(']').next().unwrap_or("").trim();
            in_table = name == table;
            if in_table {
                header = Some((i + 1, column));
            }
            continue;
        }
        if in_table {
            let written = trimmed
                .split('=')
                .next()
                .map(|k| k.trim().trim_matches('"'))
                .unwrap_or("");
            if trimmed.contains('=') && written == key {
                return Some((i + 1, column));
            }
        }
    }
    header
}

/// Where named policies are looked up, in order.
pub fn policy_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("TOOLBOX_POLICY_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from("/etc/toolbox/policies"));
    // Running from a checkout: target/<profile>/toolbox → <checkout>/policies.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            let candidate = dir.join("policies");
            if candidate.join("default.toml").is_file() {
                dirs.push(candidate);
                break;
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_policy() -> Policy {
        Policy::parse("default", Path::new("default.toml"), BUILTIN_DEFAULT)
            .expect("the shipped default policy is valid")
    }

    #[test]
    fn shipped_default_policy_is_valid() {
        let policy = default_policy();
        assert_eq!(policy.network, NetworkMode::Loopback);
        assert_eq!(policy.limits.memory, 2 << 30);
        assert_eq!(policy.limits.output, 1 << 20);
        assert!(policy.etc.iter().all(|e| e != "shadow" && e != "gshadow"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_a_location() {
        let bad = BUILTIN_DEFAULT.replace("[limits]", "[limits]\nbogus = 1");
        let err = Policy::parse("x", Path::new("x.toml"), &bad)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("line"),
            "{err}"
        );

        let bad = BUILTIN_DEFAULT.replace("memory = \"2G\"", "memory = \"lots\"");
        let err = Policy::parse("x", Path::new("x.toml"), &bad)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("not a size") && err.contains("line"), "{err}");
    }

    #[test]
    fn writable_system_dirs_are_refused() {
        for path in [
            "/",
            "/usr",
            "/usr/local/src",
            "/etc",
            "/etc/ssl",
            "/proc/sys",
            "/lib",
        ] {
            assert!(check_writable(Path::new(path)).is_err(), "{path} accepted");
        }
        for path in [
            "/srv/work",
            "/home/alice/project",
            "/tmp/x",
            "/var/tmp/build",
        ] {
            assert!(check_writable(Path::new(path)).is_ok(), "{path} refused");
        }
        assert!(check_host_path(Path::new("relative")).is_err());
        assert!(check_host_path(Path::new("/a/../etc")).is_err());
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn every_shipped_policy_shows_as_a_file_that_parses_back_to_itself() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for name in [
            "default", "strict", "network", "build", "pypi", "npm", "crates", "github",
        ] {
            let path = dir.join(format!("{name}.toml"));
            let policy = Policy::load_file(name, &path).expect("loads");
            let shown = policy.show();
            let again = Policy::parse(name, Path::new("shown.toml"), &shown).expect("parses back");
            assert_eq!(again, policy, "{name}: show() is not the same policy");
            assert_eq!(again.sha256().len(), 64);
        }
        let default = Policy::load_file("default", &dir.join("default.toml")).expect("default");
        let strict = Policy::load_file("strict", &dir.join("strict.toml")).expect("strict");
        assert_ne!(default.sha256(), strict.sha256());
    }

    #[test]
    fn a_policy_extends_another_table_by_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = BUILTIN_DEFAULT.replace("mode = \"loopback\"", "mode = \"none\"");
        std::fs::write(dir.path().join("base.toml"), base).expect("write");
        let child = "extends = \"base\"\ndescription = \"child\"\n[network]\nmode = \"allowlist\"\nallow = [\"pypi.org\"]\n[limits]\npids = 99\n";
        let path = dir.path().join("child.toml");
        std::fs::write(&path, child).expect("write");
        let policy = Policy::load_file("child", &path).expect("loads");
        assert_eq!(policy.description, "child");
        assert_eq!(policy.network, NetworkMode::Allowlist);
        assert_eq!(policy.allow.to_string(), "pypi.org:443");
        assert_eq!(policy.limits.pids, 99);
        // The rest is the base's.
        let default =
            Policy::parse("default", Path::new("default.toml"), BUILTIN_DEFAULT).expect("default");
        assert_eq!(policy.limits.memory, default.limits.memory);
        assert_eq!(policy.etc, default.etc);
        // A policy that extends itself, and one that extends nothing there is.
        for (text, words) in [
            ("extends = \"loop\"\n", "more than 8 deep"),
            (
                "extends = \"nothing-here\"\n",
                "no policy named \"nothing-here\"",
            ),
            ("extends = \"../etc/passwd\"\n", "is not a policy's name"),
            ("extends = 3\n", "is not a policy's name"),
        ] {
            let path = dir.path().join("loop.toml");
            std::fs::write(&path, text).expect("write");
            let err = Policy::load_file("loop", &path)
                .expect_err(text)
                .to_string();
            assert!(err.contains("extends") && err.contains(words), "{err}");
        }
        // Extending the built-in default, with no file of it anywhere near.
        let path = dir.path().join("plain.toml");
        std::fs::write(&path, "extends = \"default\"\n[limits]\npids = 7\n").expect("write");
        assert_eq!(
            Policy::load_file("plain", &path)
                .expect("loads")
                .limits
                .pids,
            7
        );
    }
}
