//! A job request (from the command line, later the socket) checked against a policy and
//! resolved once into a [`JobPlan`]: everything the engine needs, every value checked.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::{self, Limits, NetworkMode, Policy};
use crate::view::{self, View};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no command given: put the command after --, as in: toolbox run -- ls -l")]
    EmptyCommand,
    #[error("{field} contains a NUL byte")]
    Nul { field: String },
    #[error("workspace {path}: {reason}")]
    Workspace { path: PathBuf, reason: String },
    #[error("{field} {path}: {reason}")]
    Path {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--{field}: {reason}")]
    Limit { field: &'static str, reason: String },
    /// A request that would loosen the policy past what it allows: refused, never clamped.
    #[error("{field} {requested}: policy {policy} allows {allowed}")]
    Override {
        /// The option as `toolbox run` spells it (`memory`, `net`, `rw`...).
        field: &'static str,
        requested: String,
        allowed: String,
        policy: String,
    },
    #[error("--env {entry:?}: {reason}")]
    Env { entry: String, reason: String },
    #[error("--user: {0}")]
    User(String),
    // Not a `source`: the message holds it already, and a chain would say it twice.
    #[error("filesystem view: {0}")]
    View(view::ViewError),
}

impl From<view::ViewError> for RequestError {
    fn from(err: view::ViewError) -> Self {
        RequestError::View(err)
    }
}

/// What a caller asks for; `None` means "what the policy says".
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// The job's id, when the caller picked one already (the daemon does, at admission).
    pub id: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `NAME=VALUE`, or `NAME` to pass the caller's value through.
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
    pub grace: Option<Duration>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
    pub output: Option<u64>,
    pub network: Option<NetworkMode>,
    /// Egress rules in place of the policy's `[network] allow` (mode `allowlist`, which they
    /// imply when no mode is asked for).
    pub allow: Option<Vec<crate::egress::Rule>>,
    pub ro: Vec<PathBuf>,
    pub rw: Vec<PathBuf>,
    /// uid, and optionally gid.
    pub user: Option<(u32, Option<u32>)>,
}

/// Who asks, as far as the plan depends on it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// The user behind sudo (SUDO_UID/SUDO_GID), if any.
    pub sudo: Option<(u32, u32)>,
    /// The caller's home (see [`crate::home::of_caller`]), for policies that show some of it.
    pub home: Option<PathBuf>,
    /// Whether the caller is root (`toolbox run`; root over the socket): only root may have
    /// a job write a workspace as its owner though the job runs as someone else.
    pub root: bool,
}

impl Caller {
    /// This process's caller: its environment, working directory and sudo user.
    pub fn current() -> std::io::Result<Caller> {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let id = |name: &str| env.get(name).and_then(|v| v.parse::<u32>().ok());
        let sudo = id("SUDO_UID").zip(id("SUDO_GID"));
        let uid = sudo.map_or_else(|| nix::unistd::getuid().as_raw(), |(uid, _)| uid);
        let home = crate::home::of_caller(uid, env.get("HOME").map(String::as_str));
        Ok(Caller {
            cwd: std::env::current_dir()?,
            env,
            sudo,
            home,
            root: nix::unistd::geteuid().is_root(),
        })
    }
}

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub job_id: String,
    pub policy: String,
    /// The policy's [`Policy::sha256`], computed when the record is written.
    pub policy_sha256: crate::policy::Sha256,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workspace: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub network: NetworkMode,
    /// What the job may reach in mode `allowlist` (empty in the others): a copy, so a
    /// policy reloaded while the job runs never changes it.
    pub egress: crate::egress::Rules,
    pub limits: Limits,
    /// The most the policy lets a request ask for: what an ending's explanation points to.
    pub max: Limits,
    /// Whether a request may give the job the host's network (what a refusal's
    /// explanation points to).
    pub host_network_allowed: bool,
    pub view: View,
    pub landlock_min_abi: u32,
    pub seccomp: crate::seccomp::Profile,
    /// The caller's own PATH, to say where a command the jail does not find is.
    pub caller_path: Option<String>,
    /// The workspace's owner mapped to the tool (see `JailSpec::idmap`).
    pub idmap: Option<toolbox_spec::IdMap>,
    /// No output for this long ends the job as a timeout would (the daemon's detached jobs).
    pub idle_timeout: Option<std::time::Duration>,
    /// Every byte of output as an event as it comes, the middle too: for a caller that keeps
    /// its own capped log of it (a detached job's). The record counts as for any job, and
    /// the kept tail is not sent again at the end.
    pub output_whole: bool,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn plan(
    policy: &Policy,
    request: JobRequest,
    caller: &Caller,
) -> Result<JobPlan, RequestError> {
    plan_with(policy, request, caller, None)
}

/// [`plan`], with a daemon's memo of the views it built.
pub fn plan_with(
    policy: &Policy,
    mut request: JobRequest,
    caller: &Caller,
    views: Option<&view::Memo>,
) -> Result<JobPlan, RequestError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(RequestError::EmptyCommand);
    }
    for (i, arg) in request.argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(RequestError::Nul {
                field: format!("argument {i}"),
            });
        }
    }
    let workspace = workspace(request.cwd.as_deref(), &caller.cwd)?;
    let ro = existing_paths("--ro", &request.ro, &caller.cwd, false)?;
    let rw = existing_paths("--rw", &request.rw, &caller.cwd, true)?;
    let limits = limits(policy, &request)?;
    let network = request.network.unwrap_or(if request.allow.is_some() {
        NetworkMode::Allowlist
    } else {
        policy.network
    });
    if !policy.allows_network(network) {
        let mut allowed = vec![policy.network];
        allowed.extend(&policy.overrides.network);
        return Err(override_error(
            policy,
            "net",
            format!("{network:?}").to_lowercase(),
            allowed
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(" or "),
        ));
    }
    let egress = egress_rules(policy, network, request.allow.take())?;
    for (field, paths, under) in [
        ("ro", &ro, &policy.overrides.allow_ro_under),
        ("rw", &rw, &policy.overrides.allow_rw_under),
    ] {
        for path in paths {
            if !under.iter().any(|dir| path.starts_with(dir)) {
                let allowed = if under.is_empty() {
                    "no extra paths".to_string()
                } else {
                    format!("only paths under {}", join_paths(under))
                };
                return Err(override_error(
                    policy,
                    field,
                    path.display().to_string(),
                    allowed,
                ));
            }
        }
    }

    let (uid, gid) = user(request.user, &workspace, caller, policy)?;
    // A writable workspace that belongs to root, whom the job never runs as, and that the
    // job could not write otherwise (a root-owned checkout in a container or a CI job):
    // idmapped, so the job writes there and its files belong to root on disk — only for a
    // root caller, who may write it anyway. (A directory anyone may write, like a shared 1777
    // one, stays as it is; a workspace of another user's is theirs to share.)
    let idmap = std::fs::metadata(&workspace)
        .ok()
        .filter(|meta| {
            let writable_anyway =
                meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && meta.gid() == gid);
            policy.workspace == policy::WorkspaceAccess::Rw
                && caller.root
                && meta.uid() == 0
                && uid != 0
                && !writable_anyway
        })
        .map(|meta| toolbox_spec::IdMap {
            dst: workspace.to_string_lossy().into_owned(),
            owner_uid: meta.uid(),
            owner_gid: meta.gid(),
            uid,
            gid,
        });
    // The caller's home, unless the policy shows none of it or the workspace holds it.
    let home = caller
        .home
        .as_deref()
        .filter(|home| policy.home != crate::home::Show::None && !home.starts_with(&workspace));
    let view = view::build_with(
        views,
        policy,
        &view::Extra {
            workspace: &workspace,
            ro: &ro,
            rw: &rw,
            home,
        },
    )?;
    let env = environment(
        policy,
        &request.env,
        caller,
        &workspace,
        home,
        &view,
        network,
    )?;
    Ok(JobPlan {
        job_id: request.id.clone().unwrap_or_else(new_job_id),
        policy: policy.name.clone(),
        policy_sha256: policy.sha256_later(),
        argv: request.argv,
        env,
        workspace,
        uid,
        gid,
        network,
        egress,
        limits,
        max: policy.overrides.max,
        host_network_allowed: policy.allows_network(NetworkMode::Host),
        idle_timeout: None,
        output_whole: false,
        view,
        landlock_min_abi: policy.landlock_min_abi,
        seccomp: policy.seccomp.clone(),
        caller_path: caller.env.get("PATH").cloned(),
        idmap,
    })
}

/// The rules a job in mode `allowlist` runs with: the policy's, or the request's where each
/// lies within one of the policy's or its `[overrides] allow` (any, under a policy that
/// gives the host's network).
fn egress_rules(
    policy: &Policy,
    network: NetworkMode,
    asked: Option<Vec<crate::egress::Rule>>,
) -> Result<crate::egress::Rules, RequestError> {
    if network != NetworkMode::Allowlist {
        if asked.is_some() {
            return Err(RequestError::Limit {
                field: "allow",
                reason: format!(
                    "egress rules are for network mode allowlist, and this job's is {}",
                    network.name()
                ),
            });
        }
        return Ok(crate::egress::Rules::default());
    }
    let Some(asked) = asked else {
        return Ok(policy.allow.clone());
    };
    if policy.network != NetworkMode::Host {
        for rule in &asked {
            if !policy.allow.cover(rule) && !policy.overrides.allow.cover(rule) {
                let mut within = policy.allow.0.clone();
                within.extend(policy.overrides.allow.0.iter().cloned());
                return Err(override_error(
                    policy,
                    "allow",
                    rule.to_string(),
                    format!("only rules within {}", crate::egress::Rules(within)),
                ));
            }
        }
    }
    Ok(crate::egress::Rules(asked))
}

fn override_error(
    policy: &Policy,
    field: &'static str,
    requested: String,
    allowed: String,
) -> RequestError {
    RequestError::Override {
        field,
        requested,
        allowed,
        policy: policy.name.clone(),
    }
}

fn at_most(bound: impl std::fmt::Display) -> String {
    format!("at most {bound}")
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The job's limits: the policy's, with what the request asks. Tighter is always fine; looser
/// only up to the policy's `[overrides]`, and anything past that is refused, not clamped.
fn limits(policy: &Policy, request: &JobRequest) -> Result<Limits, RequestError> {
    use crate::units::{Dur, Size};
    let max = &policy.overrides.max;
    let mut limits = policy.limits;
    let refuse = |field: &'static str, requested: String, allowed: String| {
        Err(override_error(policy, field, requested, allowed))
    };
    if let Some(t) = request.timeout {
        if t > max.timeout {
            return refuse("timeout", Dur(t).to_string(), at_most(Dur(max.timeout)));
        }
        limits.timeout = t;
    }
    if let Some(g) = request.grace {
        if g > max.grace {
            return refuse("grace", Dur(g).to_string(), at_most(Dur(max.grace)));
        }
        limits.grace = g;
    }
    if let Some(m) = request.memory {
        if m > max.memory {
            return refuse("memory", Size(m).to_string(), at_most(Size(max.memory)));
        }
        limits.memory = m;
    }
    if let Some(c) = request.cpus {
        if c.is_nan() || c > max.cpus {
            return refuse("cpus", c.to_string(), at_most(max.cpus));
        }
        limits.cpus = c;
    }
    if let Some(p) = request.pids {
        if p > max.pids {
            return refuse("pids", p.to_string(), at_most(max.pids));
        }
        limits.pids = p;
    }
    if let Some(o) = request.output {
        if o > max.output {
            return refuse(
                "output-limit",
                Size(o).to_string(),
                at_most(Size(max.output)),
            );
        }
        limits.output = o;
    }
    limits
        .check()
        .map_err(|(field, reason)| RequestError::Limit { field, reason })?;
    Ok(limits)
}

pub fn new_job_id() -> String {
    crate::sys::random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn workspace(requested: Option<&Path>, caller_cwd: &Path) -> Result<PathBuf, RequestError> {
    let given = match requested {
        Some(path) if path.is_absolute() => path.to_path_buf(),
        Some(path) => caller_cwd.join(path),
        None => caller_cwd.to_path_buf(),
    };
    let err = |reason: String| RequestError::Workspace {
        path: given.clone(),
        reason,
    };
    let path = given
        .canonicalize()
        .map_err(|e| err(format!("{e} (give an existing directory with -C)")))?;
    if !path.is_dir() {
        return Err(err("is not a directory".into()));
    }
    policy::check_writable(&path).map_err(|_| {
        err("is a system directory (or contains one); run toolbox from your project directory or pass -C DIR".into())
    })?;
    if path == Path::new("/tmp") || path == Path::new("/dev/shm") {
        return Err(err("is a shared temporary directory the jail replaces with its own; use a directory inside it".into()));
    }
    path.to_str()
        .ok_or_else(|| err("is not valid UTF-8".into()))?;
    Ok(path)
}

fn existing_paths(
    field: &'static str,
    paths: &[PathBuf],
    cwd: &Path,
    writable: bool,
) -> Result<Vec<PathBuf>, RequestError> {
    paths
        .iter()
        .map(|path| {
            let err = |reason: String| RequestError::Path {
                field,
                path: path.clone(),
                reason,
            };
            if !path.is_absolute() {
                return Err(err(format!(
                    "must be an absolute path (did you mean {}?)",
                    cwd.join(path).display()
                )));
            }
            policy::check_host_path(path).map_err(err)?;
            let real = path.canonicalize().map_err(|e| err(e.to_string()))?;
            if writable {
                policy::check_writable(&real).map_err(err)?;
            }
            Ok(real)
        })
        .collect()
}

/// The tool runs as the workspace's owner, else the user behind sudo, else the policy's
/// unprivileged fallback — never as root.
fn user(
    requested: Option<(u32, Option<u32>)>,
    workspace: &Path,
    caller: &Caller,
    policy: &Policy,
) -> Result<(u32, u32), RequestError> {
    if policy.run_as == policy::RunAs::Fixed {
        if let Some((uid, gid)) = requested {
            return Err(override_error(
                policy,
                "user",
                match gid {
                    Some(gid) => format!("{uid}:{gid}"),
                    None => uid.to_string(),
                },
                format!(
                    "only its fixed {}:{}",
                    policy.fallback_uid, policy.fallback_gid
                ),
            ));
        }
        return Ok((policy.fallback_uid, policy.fallback_gid));
    }
    if let Some((uid, gid)) = requested {
        if uid == 0 || gid == Some(0) {
            return Err(RequestError::User(
                "tools never run as root (uid or gid 0)".into(),
            ));
        }
        let gid = gid.unwrap_or_else(|| primary_gid(uid).unwrap_or(uid));
        return Ok((uid, gid));
    }
    let owner = std::fs::metadata(workspace)
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    Ok(if owner.0 != 0 {
        (owner.0, if owner.1 != 0 { owner.1 } else { owner.0 })
    } else if let Some((uid, gid)) = caller.sudo.filter(|(uid, gid)| *uid != 0 && *gid != 0) {
        (uid, gid)
    } else {
        (policy.fallback_uid, policy.fallback_gid)
    })
}

/// The primary group of `uid` from /etc/passwd (read directly: the binary is static, and
/// glibc's NSS does not work reliably in static programs).
fn primary_gid(uid: u32) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| fields.get(3)?.parse().ok())?
    })
}

fn environment(
    policy: &Policy,
    requested: &[String],
    caller: &Caller,
    workspace: &Path,
    home: Option<&Path>,
    view: &view::View,
    network: NetworkMode,
) -> Result<Vec<(String, String)>, RequestError> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // Proxies and CA bundles only where there is a network to use them on.
    let with_network = if network == NetworkMode::Host {
        policy.env_pass_with_network.as_slice()
    } else {
        &[]
    };
    for name in policy.env_pass.iter().chain(with_network) {
        if let Some(value) = caller.env.get(name) {
            // A HOME the jail cannot show is worse than none: tools would fail writing there.
            if name == "HOME" && !Path::new(value).starts_with(workspace) {
                continue;
            }
            // The caller's PATH, less what the jail does not show, in the caller's order:
            // commands resolve as they do for the caller, or are not found.
            if name == "PATH" {
                let kept: Vec<&str> = value
                    .split(':')
                    .filter(|dir| {
                        !dir.is_empty() && (!dir.starts_with('/') || view.shows(Path::new(dir)))
                    })
                    .collect();
                if !kept.is_empty() {
                    env.insert(name.clone(), kept.join(":"));
                }
                continue;
            }
            env.insert(name.clone(), value.clone());
        }
    }
    // The caller's home, as the jail shows it.
    if let Some(home) = home.and_then(Path::to_str) {
        if policy.env_pass.iter().any(|name| name == "HOME") {
            env.insert("HOME".into(), home.to_string());
        }
    }
    for (name, value) in &policy.env_set {
        env.insert(name.clone(), value.clone());
    }
    // The job's proxy (the way out in `allowlist`, the explanation in `none`); `--env` may
    // still say otherwise, and then reaches nothing.
    if network.proxied() {
        for (name, value) in crate::egress::ENVIRONMENT {
            env.insert(name.into(), value.into());
        }
    }
    for entry in requested {
        let err = |reason: &str| RequestError::Env {
            entry: entry.clone(),
            reason: reason.to_string(),
        };
        if entry.contains('\0') {
            return Err(err("contains a NUL byte"));
        }
        match entry.split_once('=') {
            Some((name, value)) => {
                policy::check_env_name(name).map_err(|r| err(&r))?;
                env.insert(name.to_string(), value.to_string());
            }
            None => {
                policy::check_env_name(entry).map_err(|r| err(&r))?;
                if let Some(value) = caller.env.get(entry) {
                    env.insert(entry.clone(), value.clone());
                }
            }
        }
    }
    env.entry("HOME".into()).or_insert_with(|| "/tmp".into());
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    Ok(env.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BUILTIN_DEFAULT;

    fn policy() -> Policy {
        Policy::parse("default", Path::new("default.toml"), BUILTIN_DEFAULT).expect("valid")
    }

    fn caller(cwd: &Path) -> Caller {
        let env = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/root"),
            ("SECRET_TOKEN", "hunter2"),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Caller {
            env,
            cwd: cwd.to_path_buf(),
            sudo: None,
            home: None,
            root: true,
        }
    }

    fn request(argv: &[&str]) -> JobRequest {
        JobRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn the_environment_is_an_allowlist() {
        let ws = tempfile::tempdir().expect("tempdir");
        let mut req = request(&["env"]);
        req.env = vec!["EXTRA=1".into(), "SECRET_TOKEN".into()];
        let plan = plan(&policy(), req, &caller(ws.path())).expect("plan");
        let env: BTreeMap<_, _> = plan.env.into_iter().collect();
        assert_eq!(
            env.get("HOME").map(String::as_str),
            Some("/tmp"),
            "HOME outside the view is replaced"
        );
        assert_eq!(env.get("EXTRA").map(String::as_str), Some("1"));
        assert_eq!(
            env.get("SECRET_TOKEN").map(String::as_str),
            Some("hunter2"),
            "asked for by name"
        );
        assert_eq!(env.get("LANG").map(String::as_str), Some("C.UTF-8"));

        let plan = super::plan(&policy(), request(&["env"]), &caller(ws.path())).expect("plan");
        assert!(
            plan.env.iter().all(|(k, _)| k != "SECRET_TOKEN"),
            "not asked for: must not leak"
        );
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let ws = tempfile::tempdir().expect("tempdir");
        let c = caller(ws.path());
        let err = |req: JobRequest| plan(&policy(), req, &c).expect_err("refused").to_string();
        assert!(err(request(&[])).contains("no command"));
        let mut r = request(&["ls"]);
        r.cwd = Some("/nonexistent/dir".into());
        assert!(err(r).contains("/nonexistent/dir"));
        let mut r = request(&["ls"]);
        r.cwd = Some("/usr".into());
        assert!(err(r).contains("system directory"));
        let mut r = request(&["ls"]);
        r.ro = vec!["relative/path".into()];
        assert!(err(r).contains("must be an absolute path"));
        let mut r = request(&["ls"]);
        r.rw = vec!["/etc".into()];
        assert!(err(r).contains("must not be writable"));
        let mut r = request(&["ls"]);
        r.memory = Some(1024);
        assert!(err(r).contains("--memory"));
        let mut r = request(&["ls"]);
        r.user = Some((0, None));
        assert!(err(r).contains("never run as root"));
        let mut r = request(&["ls"]);
        r.env = vec!["1BAD=x".into()];
        assert!(err(r).contains("not a valid environment variable name"));
    }

    #[test]
    fn the_tool_never_runs_as_root() {
        let ws = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::chown(ws.path(), Some(0), Some(0)).ok();
        let mut c = caller(ws.path());
        let p = plan(&policy(), request(&["id"]), &c).expect("plan");
        if std::fs::metadata(ws.path()).map(|m| m.uid()).unwrap_or(1) == 0 {
            assert_eq!(
                (p.uid, p.gid),
                (65534, 65534),
                "root-owned workspace: the fallback id"
            );
            c.sudo = Some((1000, 1000));
            let p = plan(&policy(), request(&["id"]), &c).expect("plan");
            assert_eq!((p.uid, p.gid), (1000, 1000), "under sudo: the calling user");
        } else {
            assert_ne!(p.uid, 0);
        }
    }
}
