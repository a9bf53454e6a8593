//! The wire format of the job API: the request a client posts, the events it gets back, and
//! the errors it gets instead. Every check that can name a field does.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::engine::{Event, Stream};
use crate::job::{JobPlan, JobRequest};
use crate::policy::{NetworkMode, Policy};
use crate::units::{Dur, Size};

/// A request body, as posted to `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    pub argv: Vec<String>,
    /// The workspace: an absolute path to an existing directory the caller may write.
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The caller's own environment, as `toolbox run` forwards it: the policy's allowlist
    /// picks from it what the job inherits (git identity, locale, proxy variables…), and its
    /// PATH orders the job's, as for a local run. Nothing else of it reaches the job.
    #[serde(default)]
    pub caller_env: BTreeMap<String, String>,
    /// Text for the tool's standard input (else it reads /dev/null).
    pub stdin: Option<String>,
    /// The same, base64-encoded, for bytes that are not UTF-8.
    pub stdin_base64: Option<String>,
    pub policy: Option<String>,
    #[serde(default)]
    pub limits: LimitsBody,
    pub network: Option<NetworkMode>,
    /// Egress rules in place of the policy's (mode `allowlist`, which they imply): each
    /// within the policy's `[network] allow` or its `[overrides] allow`.
    pub allow: Option<Vec<crate::egress::Rule>>,
    #[serde(default)]
    pub mounts: Vec<MountBody>,
    /// Answer at once with the job's id; the job lives on without the connection, its
    /// output kept to be read by offset and its stdin a pipe the daemon holds.
    #[serde(default)]
    pub detach: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    pub timeout: Option<Dur>,
    pub grace: Option<Dur>,
    pub memory: Option<Size>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
    pub output: Option<Size>,
    /// No output for this long ends the job as its timeout would.
    pub idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountBody {
    pub path: PathBuf,
    pub mode: MountMode,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    Ro,
    Rw,
}

/// A refusal: the HTTP status, a stable code, the field at fault (if one is), and words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "bad_request",
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            field: None,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = field.clone().into();
        }
        serde_json::json!({ "error": error }).to_string()
    }
}

/// Who is on the other end of the socket (SO_PEERCRED), with their supplementary groups.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    #[serde(skip)]
    pub groups: Vec<u32>,
}

impl Peer {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether this peer may search (`x`) and, if asked, read (`r`) and write (`w`) `path`
    /// and search every directory above it, by the mode bits. Root may do anything.
    fn may(&self, path: &Path, read: bool, write: bool) -> bool {
        if self.uid == 0 {
            return true;
        }
        let allows = |meta: &std::fs::Metadata, want: u32| {
            let mode = meta.mode();
            let bits = if meta.uid() == self.uid {
                mode >> 6
            } else if self.in_group(meta.gid()) {
                mode >> 3
            } else {
                mode
            } & 0o7;
            bits & want == want
        };
        for dir in path.ancestors().skip(1) {
            match std::fs::metadata(dir) {
                Ok(meta) if allows(&meta, 0o1) => {}
                _ => return false,
            }
        }
        let want = 0o1 | if read { 0o4 } else { 0 } | if write { 0o2 } else { 0 };
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => allows(&meta, want),
            // A file: no search bit to ask for.
            Ok(meta) => allows(&meta, want & !0o1),
            Err(_) => false,
        }
    }
}

/// Parse a request body; a refusal names the field (`limits.pids`, `argv[2]`, ...).
pub fn parse_body(bytes: &[u8]) -> Result<JobBody, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let body: JobBody = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        if path == "." || path == "?" || path.is_empty() {
            ApiError::bad("body", format!("not a valid job request: {message}"))
        } else {
            ApiError::bad(path, message)
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad("body", format!("trailing data after the request: {e}")))?;
    Ok(body)
}

/// The caller's environment from a request (see [`JobBody::caller_env`]), taken out of it.
pub fn take_caller_env(body: &mut JobBody) -> Result<BTreeMap<String, String>, ApiError> {
    let env = std::mem::take(&mut body.caller_env);
    for (name, value) in &env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(ApiError::bad(
                format!("caller_env.{name}"),
                "is not an environment variable (a name without '=' or NUL, a value without NUL)",
            ));
        }
    }
    Ok(env)
}

/// Check a parsed body for one peer and turn it into the engine's request, plus the stdin
/// bytes. Paths must be absolute, exist, and be reachable by the peer itself: the daemon is
/// root, and must not lend its own access to anybody.
pub fn to_request(
    body: JobBody,
    peer: &Peer,
    policy: &Policy,
    job_id: &str,
    stdin_cap: u64,
) -> Result<(JobRequest, Vec<u8>), ApiError> {
    check_argv(&body.argv)?;
    let cwd = body.cwd.ok_or_else(|| {
        ApiError::bad(
            "cwd",
            "is required over the socket: the absolute path of the workspace",
        )
    })?;
    check_path("cwd", &cwd)?;
    if !cwd.is_dir() {
        return Err(ApiError::bad(
            "cwd",
            format!("{} is not an existing directory", cwd.display()),
        ));
    }
    if !peer.may(&cwd, true, true) {
        return Err(ApiError::bad(
            "cwd",
            format!(
                "{}: you (uid {}) may not read and write it",
                cwd.display(),
                peer.uid
            ),
        ));
    }
    let mut env = Vec::new();
    for (name, value) in &body.env {
        let field = format!("env.{name}");
        if name.contains('\0') || value.contains('\0') {
            return Err(ApiError::bad(field, "contains a NUL byte"));
        }
        crate::policy::check_env_name(name).map_err(|e| ApiError::bad(&field, e))?;
        env.push(format!("{name}={value}"));
    }
    let stdin = stdin_bytes(body.stdin, body.stdin_base64, stdin_cap)?;
    let mut ro = Vec::new();
    let mut rw = Vec::new();
    for (i, mount) in body.mounts.iter().enumerate() {
        let field = format!("mounts[{i}].path");
        check_path(&field, &mount.path)?;
        let write = matches!(mount.mode, MountMode::Rw);
        if !mount.path.exists() {
            return Err(ApiError::bad(
                field,
                format!("{} does not exist", mount.path.display()),
            ));
        }
        if !peer.may(&mount.path, true, write) {
            return Err(ApiError::bad(
                field,
                format!(
                    "{}: you (uid {}) may not {} it",
                    mount.path.display(),
                    peer.uid,
                    if write { "read and write" } else { "read" }
                ),
            ));
        }
        if write {
            rw.push(mount.path.clone());
        } else {
            ro.push(mount.path.clone());
        }
    }
    let limits = &body.limits;
    if let Some(c) = limits.cpus {
        if c.is_nan() || c <= 0.0 {
            return Err(ApiError::bad(
                "limits.cpus",
                "must be a positive number of cores",
            ));
        }
    }
    // A peer whose primary group is root's runs under its own uid's group instead. A policy
    // that runs every job as one fixed id decides alone.
    let user = if policy.run_as == crate::policy::RunAs::Fixed {
        None
    } else if peer.uid == 0 {
        Some((policy.fallback_uid, Some(policy.fallback_gid)))
    } else if peer.gid == 0 {
        Some((peer.uid, None))
    } else {
        Some((peer.uid, Some(peer.gid)))
    };
    let request = JobRequest {
        id: Some(job_id.to_string()),
        argv: body.argv,
        cwd: Some(cwd),
        env,
        timeout: limits.timeout.map(|d| d.0),
        grace: limits.grace.map(|d| d.0),
        memory: limits.memory.map(|s| s.0),
        cpus: limits.cpus,
        pids: limits.pids,
        output: limits.output.map(|s| s.0),
        network: body.network,
        allow: body.allow,
        ro,
        rw,
        user,
    };
    Ok((request, stdin))
}

fn check_argv(argv: &[String]) -> Result<(), ApiError> {
    if argv.is_empty() {
        return Err(ApiError::bad(
            "argv",
            "must name a command: [\"ls\", \"-l\"]",
        ));
    }
    for (i, arg) in argv.iter().enumerate() {
        if i == 0 && arg.is_empty() {
            return Err(ApiError::bad("argv[0]", "is empty"));
        }
        if arg.contains('\0') {
            return Err(ApiError::bad(format!("argv[{i}]"), "contains a NUL byte"));
        }
    }
    Ok(())
}

/// The tool's stdin from a request's `stdin` or `stdin_base64`, at most `cap` bytes.
fn stdin_bytes(
    text: Option<String>,
    encoded: Option<String>,
    cap: u64,
) -> Result<Vec<u8>, ApiError> {
    let stdin = match (text, encoded) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "stdin",
                "give stdin or stdin_base64, not both",
            ))
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::bad("stdin_base64", format!("is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    if stdin.len() as u64 > cap {
        return Err(ApiError::bad(
            "stdin",
            format!("is {} bytes; this daemon takes at most {cap}", stdin.len()),
        ));
    }
    Ok(stdin)
}

/// The body of `POST /v1/jobs/{id}/exec`: a job request without what the job fixed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub argv: Vec<String>,
    /// Where in the jail it starts (default: the job's workspace).
    pub cwd: Option<PathBuf>,
    /// Set on top of the job's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub stdin: Option<String>,
    pub stdin_base64: Option<String>,
    #[serde(default)]
    pub limits: ExecLimitsBody,
    #[serde(default)]
    pub detach: bool,
}

/// The limits a command in a job may set: each at most the job's own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecLimitsBody {
    pub timeout: Option<Dur>,
    pub grace: Option<Dur>,
    pub output: Option<Size>,
    pub idle_timeout: Option<Dur>,
}

/// What a command exec'd into a job cannot change: the job's jail is what it is.
const FIXED_BY_JOB: [&str; 6] = ["policy", "network", "allow", "mounts", "caller_env", "user"];
const LIMITS_FIXED_BY_JOB: [&str; 3] = ["memory", "cpus", "pids"];

/// Parse an exec body; what the job fixed is refused by name before anything else.
pub fn parse_exec_body(bytes: &[u8], job_id: &str) -> Result<ExecBody, ApiError> {
    let fixed = |field: String| {
        ApiError::bad(
            field,
            format!(
                "is fixed by job {job_id:?}: a command exec'd into a job runs in the job's own jail (its policy, network, mounts, memory, CPUs and pids)"
            ),
        )
    };
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(bytes) {
        if let Some(name) = FIXED_BY_JOB.iter().find(|name| fields.contains_key(**name)) {
            return Err(fixed(name.to_string()));
        }
        if let Some(serde_json::Value::Object(limits)) = fields.get("limits") {
            if let Some(name) = LIMITS_FIXED_BY_JOB
                .iter()
                .find(|name| limits.contains_key(**name))
            {
                return Err(fixed(format!("limits.{name}")));
            }
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let body: ExecBody = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        if path == "." || path == "?" || path.is_empty() {
            ApiError::bad("body", format!("not a valid exec request: {message}"))
        } else {
            ApiError::bad(path, message)
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad("body", format!("trailing data after the request: {e}")))?;
    Ok(body)
}

/// The plan of a command exec'd into the job planned as `job`: the job's, with the
/// command's argv, directory, environment on top of the job's, and limits — each at most
/// the job's. Its stdin bytes beside it. (Its id is the caller's to give.)
pub fn exec_plan(body: ExecBody, job: &JobPlan) -> Result<(JobPlan, Vec<u8>), ApiError> {
    check_argv(&body.argv)?;
    let cwd = match body.cwd {
        Some(cwd) => {
            check_path("cwd", &cwd)?;
            cwd
        }
        None => job.workspace.clone(),
    };
    let mut env = job.env.clone();
    for (name, value) in body.env {
        let field = format!("env.{name}");
        if name.contains('\0') || value.contains('\0') {
            return Err(ApiError::bad(field, "contains a NUL byte"));
        }
        crate::policy::check_env_name(&name).map_err(|e| ApiError::bad(&field, e))?;
        match env.iter_mut().find(|(k, _)| *k == name) {
            Some(entry) => entry.1 = value,
            None => env.push((name, value)),
        }
    }
    let stdin = stdin_bytes(body.stdin, body.stdin_base64, job.limits.stdin)?;
    let tighter = |field: &str, asked: String, most: String| ApiError {
        status: 403,
        code: "policy_forbids",
        field: Some(format!("limits.{field}")),
        message: format!(
            "a command in a job may only tighten its limits: {asked} is over the job's {most}"
        ),
    };
    let mut limits = job.limits;
    let asked = &body.limits;
    if let Some(Dur(timeout)) = asked.timeout {
        if timeout > job.limits.timeout {
            return Err(tighter(
                "timeout",
                Dur(timeout).to_string(),
                Dur(job.limits.timeout).to_string(),
            ));
        }
        if timeout.is_zero() {
            return Err(ApiError::bad("limits.timeout", "must be longer than zero"));
        }
        limits.timeout = timeout;
    }
    if let Some(Dur(grace)) = asked.grace {
        if grace > job.limits.grace {
            return Err(tighter(
                "grace",
                Dur(grace).to_string(),
                Dur(job.limits.grace).to_string(),
            ));
        }
        limits.grace = grace;
    }
    if let Some(Size(output)) = asked.output {
        if output > job.limits.output {
            return Err(tighter(
                "output",
                Size(output).to_string(),
                Size(job.limits.output).to_string(),
            ));
        }
        if output < crate::policy::bounds::OUTPUT_MIN {
            return Err(ApiError::bad(
                "limits.output",
                format!(
                    "must be at least {}",
                    Size(crate::policy::bounds::OUTPUT_MIN)
                ),
            ));
        }
        limits.output = output;
    }
    let idle_timeout = match asked.idle_timeout {
        Some(Dur(idle)) if idle.is_zero() => {
            return Err(ApiError::bad(
                "limits.idle_timeout",
                "must be longer than zero (leave it out for none)",
            ))
        }
        Some(Dur(idle)) => Some(idle),
        None => None,
    };
    let plan = JobPlan {
        argv: body.argv,
        env,
        workspace: cwd,
        limits,
        idle_timeout,
        ..job.clone()
    };
    Ok((plan, stdin))
}

fn check_path(field: &str, path: &Path) -> Result<(), ApiError> {
    let text = path.as_os_str().as_encoded_bytes();
    if text.contains(&0) {
        return Err(ApiError::bad(field, "contains a NUL byte"));
    }
    if !path.is_absolute() {
        return Err(ApiError::bad(
            field,
            format!("{} is relative; give an absolute path", path.display()),
        ));
    }
    Ok(())
}

/// A policy name from a request: a plain name, looked up in the daemon's policy directory
/// only — never a path.
pub fn policy_name(name: Option<&str>) -> Result<&str, ApiError> {
    let name = name.unwrap_or("default");
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(ApiError::bad(
            "policy",
            format!("{name:?} is not a policy name (letters, digits, - and _)"),
        ))
    }
}

/// One event of the response stream, as a line of JSON. Output chunks are `text` when they
/// are UTF-8 and `base64` otherwise, so no byte is ever lost or altered.
pub fn event_line(event: &Event, pending: &mut [Vec<u8>; 2]) -> Option<String> {
    let value = match event {
        Event::Started { job_id } => serde_json::json!({ "type": "started", "job_id": job_id }),
        Event::Output { stream, data } => {
            let carry = &mut pending[*stream as usize];
            carry.extend_from_slice(data);
            let chunk = take_utf8(carry)?;
            output_json(*stream, &chunk)
        }
        Event::Truncated {
            stream,
            dropped,
            kept,
        } => serde_json::json!({
            "type": "truncated", "stream": stream.name(), "dropped_bytes": dropped, "kept_bytes": kept
        }),
    };
    Some(value.to_string())
}

/// Whatever is still held back at the end (an unfinished UTF-8 sequence), as a line.
pub fn flush_line(stream: Stream, pending: &mut Vec<u8>) -> Option<String> {
    if pending.is_empty() {
        return None;
    }
    let rest = std::mem::take(pending);
    Some(output_json(stream, &rest).to_string())
}

fn output_json(stream: Stream, bytes: &[u8]) -> serde_json::Value {
    let mut value = serde_json::json!({ "type": stream.name() });
    if let (serde_json::Value::Object(fields), serde_json::Value::Object(data)) =
        (&mut value, output_value(bytes))
    {
        fields.extend(data);
    }
    value
}

/// Output bytes as `{"text": ...}` when they are UTF-8, else `{"base64": ...}`.
pub fn output_value(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::json!({ "text": text }),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    }
}

/// Take everything from `buffer` except an unfinished UTF-8 sequence at its very end (kept
/// for the next chunk, so a character split across reads stays text). Bytes that are not
/// UTF-8 at all go out as they are (the caller encodes them).
fn take_utf8(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let keep = match std::str::from_utf8(buffer) {
        Ok(_) => 0,
        // error_len None: the input ended inside a sequence that may still complete.
        Err(e) if e.error_len().is_none() => buffer.len() - e.valid_up_to(),
        Err(_) => 0,
    };
    if keep == buffer.len() {
        return None;
    }
    let rest = buffer.split_off(buffer.len() - keep);
    Some(std::mem::replace(buffer, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: 1,
            groups: vec![],
        }
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let err = parse_body(br#"{"argv":["ls"],"colour":1}"#).expect_err("unknown");
        assert_eq!(err.status, 400);
        assert!(err.message.contains("colour"), "{err:?}");
        let err = parse_body(br#"{"argv":["ls"],"limits":{"pids":"many"}}"#).expect_err("type");
        assert_eq!(err.field.as_deref(), Some("limits.pids"), "{err:?}");
        let err = parse_body(b"not json").expect_err("garbage");
        assert_eq!(err.field.as_deref(), Some("body"));
        let err = parse_body(br#"{"argv":["ls"]} {}"#).expect_err("trailing");
        assert_eq!(err.field.as_deref(), Some("body"));
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let policy = Policy::parse(
            "default",
            Path::new("default.toml"),
            crate::policy::BUILTIN_DEFAULT,
        )
        .expect("policy");
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = dir.path().display().to_string();
        let check = |json: String| {
            let body = parse_body(json.as_bytes()).expect("parses");
            to_request(body, &peer(0), &policy, "abc", 1024).map(|_| ())
        };
        let field = |json: String| check(json).expect_err("refused").field;
        assert_eq!(field(r#"{"argv":[]}"#.into()).as_deref(), Some("argv"));
        assert_eq!(
            field(format!(r#"{{"argv":["a\u0000b"],"cwd":"{cwd}"}}"#)).as_deref(),
            Some("argv[0]")
        );
        assert_eq!(
            field(r#"{"argv":["ls"],"cwd":"rel"}"#.into()).as_deref(),
            Some("cwd")
        );
        assert_eq!(
            field(r#"{"argv":["ls"],"cwd":"/nonexistent/x"}"#.into()).as_deref(),
            Some("cwd")
        );
        assert_eq!(field(r#"{"argv":["ls"]}"#.into()).as_deref(), Some("cwd"));
        assert_eq!(
            field(format!(
                r#"{{"argv":["ls"],"cwd":"{cwd}","env":{{"1X":"y"}}}}"#
            ))
            .as_deref(),
            Some("env.1X")
        );
        assert_eq!(
            field(format!(
                r#"{{"argv":["ls"],"cwd":"{cwd}","stdin":"{}"}}"#,
                "x".repeat(2000)
            ))
            .as_deref(),
            Some("stdin")
        );
        assert!(check(format!(
            r#"{{"argv":["ls"],"cwd":"{cwd}","limits":{{"pids":8,"timeout":"5s"}}}}"#
        ))
        .is_ok());
    }

    #[test]
    fn a_peer_cannot_borrow_the_daemons_access() {
        let dir = tempfile::tempdir().expect("tempdir");
        let locked = dir.path().join("locked");
        let inner = locked.join("inner");
        std::fs::create_dir_all(&inner).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // inner is world-writable, but nobody else may pass through locked to reach it.
        assert!(!peer(54321).may(&inner, true, true));
        assert!(peer(0).may(&inner, true, true));
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        assert!(peer(54321).may(&inner, true, true));
    }

    #[test]
    fn policy_names_are_never_paths() {
        assert_eq!(policy_name(None), Ok("default"));
        assert_eq!(policy_name(Some("build")), Ok("build"));
        for bad in ["../etc/x", "/tmp/p.toml", "", "a.toml"] {
            assert_eq!(
                policy_name(Some(bad)).expect_err(bad).field.as_deref(),
                Some("policy")
            );
        }
    }

    #[test]
    fn output_stays_lossless_and_keeps_split_characters_whole() {
        let mut pending = [Vec::new(), Vec::new()];
        let euro = "€".as_bytes();
        let first = Event::Output {
            stream: Stream::Stdout,
            data: [b"a".as_slice(), &euro[..1]].concat(),
        };
        let line = event_line(&first, &mut pending).expect("line");
        assert_eq!(line, r#"{"type":"stdout","text":"a"}"#);
        let second = Event::Output {
            stream: Stream::Stdout,
            data: euro[1..].to_vec(),
        };
        let line = event_line(&second, &mut pending).expect("line");
        assert_eq!(line, r#"{"type":"stdout","text":"€"}"#);
        let binary = Event::Output {
            stream: Stream::Stderr,
            data: vec![0xff, 0x00, 0xfe],
        };
        let line = event_line(&binary, &mut pending).expect("line");
        assert_eq!(line, r#"{"type":"stderr","base64":"/wD+"}"#);
    }
}
