//! The MCP tools: each one call, or a few, of the daemon's job API. The daemon decides
//! everything a job may do; this server only shapes requests and answers for a model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use toolbox::units::Dur;

use crate::daemon::{Daemon, Failure};
use crate::output::{ending, Gathered};

/// Most a tool waits for output before it answers (a client's own request timeout is
/// often a minute).
const MAX_WAIT: Duration = Duration::from_secs(30);

const INSTRUCTIONS: &str = "Runs shell commands in toolbox jails. Each command is a job: \
its own namespaces, a cgroup with memory, CPU, process and time limits, seccomp and Landlock, \
no privileges. The workspace directory is read-write; the rest of the filesystem is what the \
policy shows, mostly read-only; there is no network unless the policy grants it. Every process \
a job starts dies with it: nothing keeps running in the background after a job ends. Use `run` \
for a command that finishes, `start` for one that keeps running (a server, a watcher, an \
interactive program) and then `read_output`, `write_stdin` and `kill`; `run` or `start` with \
`job_id` runs another command inside that job's jail (reaching its localhost servers).";

const RUN: &str = "Run a command in a fresh jail and return its output and its result record \
(status, exit_code, duration, memory and CPU used, what isolation was enforced). Give `argv` \
(no shell) or `command` (run by `sh -c`, for pipes and redirections). The working directory is \
the workspace, read-write; the network is off unless the policy grants it; memory, CPU, \
processes and time are limited by the policy (the record's isolation.cgroup_limits says how \
much). Every process it starts, background ones too, is killed when the command ends. Output \
is capped: the head and the tail are kept, the middle cut and counted. A non-zero exit is a \
result, not an error. With `job_id`, it runs inside that running job's jail instead (same \
filesystem view, /tmp, localhost and limits). A command that may outlast your client's wait \
for an answer (a long build or test run) is better begun with `start` and followed with \
`read_output`.";

const START: &str = "Start a command that keeps running (a dev server, a watcher, a REPL) and \
return its job_id with the output of its first seconds (`wait`, default 2 s). It lives until \
it ends, its timeout, or `kill`; read more with `read_output`, answer it with `write_stdin`. \
Same inputs, jail and limits as `run`; with `job_id`, it starts inside that job's jail.";

const READ_OUTPUT: &str = "Read what a started job wrote since the last read, gathering for \
up to `wait` seconds (default 5, at most 30; answers as soon as the job ends). Returns the \
new output, whether it still runs, and its result record once it ended.";

const WRITE_STDIN: &str = "Write text to a started job's standard input (add \"\\n\" to \
end a line), optionally closing it (`close`: end of input), then return the output that \
followed within `wait` seconds (default 1).";

const KILL: &str = "End a job and everything it started (SIGTERM, then SIGKILL after its \
grace period), and return its final output and result record.";

const LIST_JOBS: &str = "List your jobs: running, queued, and started ones kept a while \
after they ended, with their ids, commands, states and ages.";

/// A duration: seconds, or text such as "30s", "5m", "500ms".
#[derive(Deserialize, JsonSchema, Clone, Debug)]
#[serde(untagged)]
pub enum Wait {
    Seconds(f64),
    Text(String),
}

impl Wait {
    /// As a duration, or why it is not one (text as the daemon reads it: `toolbox::units`).
    fn duration(&self, field: &str) -> Result<Duration, String> {
        match self {
            Wait::Seconds(s) if s.is_finite() && *s >= 0.0 && *s < 1e9 => {
                Ok(Duration::from_secs_f64(*s))
            }
            Wait::Seconds(s) => Err(format!("{field}: {s} is not a number of seconds")),
            Wait::Text(t) => t
                .parse::<Dur>()
                .map(|d| d.0)
                .map_err(|e| format!("{field}: {e}")),
        }
    }

    /// As the daemon writes durations (a timeout: more than zero), or why it is not one.
    fn to_daemon(&self, field: &str) -> Result<String, String> {
        match self.duration(field)? {
            d if d.is_zero() => Err(format!("{field}: a timeout of zero ends the job at once")),
            d => Ok(Dur(d).to_string()),
        }
    }

    /// As a `wait` here: at most [`MAX_WAIT`].
    fn to_duration(&self, field: &str) -> Result<Duration, String> {
        Ok(self.duration(field)?.min(MAX_WAIT))
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No network at all.
    None,
    /// Only the job's own loopback (its own localhost servers).
    Loopback,
    /// Out only through the job's proxy, to the host names and addresses the policy (or
    /// `allow`) lists.
    Allowlist,
    /// The host's network, if the policy allows it.
    Host,
}

/// The inputs `run` and `start` share, and what each adds.
macro_rules! command_input {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $type:ty,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize, JsonSchema, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The command as an argument vector, run without a shell: ["pytest", "-q"].
            /// Give this or `command`.
            pub argv: Option<Vec<String>>,
            /// A shell command line, run by `sh -c`: "make test 2>&1 | tail -50". Give this
            /// or `argv`.
            pub command: Option<String>,
            /// The working directory: absolute, or relative to the workspace (the default).
            pub cwd: Option<String>,
            /// Environment variables to set, on top of what the policy passes.
            pub env: Option<BTreeMap<String, String>>,
            /// Text for the command's standard input (else it reads end of input at once).
            pub stdin: Option<String>,
            /// Wall-clock limit, in seconds or as "30s", "10m"; at most what the policy
            /// allows (default: the policy's). Then SIGTERM, then SIGKILL.
            pub timeout: Option<Wait>,
            /// The daemon's policy to run under, by name (default "default").
            pub policy: Option<String>,
            /// The network: none, loopback (its own localhost only), allowlist (out through
            /// a proxy to listed hosts only), or host, as far as the policy allows.
            pub network: Option<Network>,
            /// Egress rules in place of the policy's, implying network "allowlist", each
            /// within what the policy allows: ["pypi.org", "*.github.com", "10.0.0.5:8080"]
            /// (port 443 unless one is named).
            pub allow: Option<Vec<String>>,
            /// Run inside this running job's jail (from `start`) instead of a fresh one:
            /// the same files, /tmp, localhost and limits.
            pub job_id: Option<String>,
            $($(#[$fmeta])* pub $field: $type,)*
        }

        impl $name {
            /// The command, and what this tool adds to it.
            fn split(self) -> (Command, ($($type,)*)) {
                let command = Command {
                    argv: self.argv,
                    command: self.command,
                    cwd: self.cwd,
                    env: self.env,
                    stdin: self.stdin,
                    timeout: self.timeout,
                    policy: self.policy,
                    network: self.network,
                    allow: self.allow,
                    job_id: self.job_id,
                };
                (command, ($(self.$field,)*))
            }
        }
    };
}

/// What `run` and `start` ask to run, and where.
pub struct Command {
    argv: Option<Vec<String>>,
    command: Option<String>,
    cwd: Option<String>,
    env: Option<BTreeMap<String, String>>,
    stdin: Option<String>,
    timeout: Option<Wait>,
    policy: Option<String>,
    network: Option<Network>,
    allow: Option<Vec<String>>,
    job_id: Option<String>,
}

command_input!(
    /// `run`'s inputs.
    RunInput {}
);

command_input!(
    /// `start`'s inputs.
    StartInput {
        /// How long to gather the first output before answering, in seconds (default 2, at
        /// most 30); the answer comes at once if the command ends.
        wait: Option<Wait>,
    }
);

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// The job, as `start` or `list_jobs` named it.
    pub job_id: String,
    /// How long to gather output, in seconds (default 5, at most 30).
    pub wait: Option<Wait>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct WriteInput {
    /// The job, as `start` named it.
    pub job_id: String,
    /// Text to write, as it is (a line needs its "\n").
    #[serde(default)]
    pub data: String,
    /// Close the job's standard input after the text (end of input).
    #[serde(default)]
    pub close: bool,
    /// How long to gather the output that follows, in seconds (default 1, at most 30).
    pub wait: Option<Wait>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct KillInput {
    /// The job to end.
    pub job_id: String,
}

/// What the server remembers between calls: where each job's reading got to, and which
/// jobs it started (ended with the server, so none outlives the session).
#[derive(Default)]
struct State {
    cursors: HashMap<String, (u64, u64)>,
    started: Vec<String>,
}

#[derive(Clone)]
pub struct Toolbox {
    daemon: Daemon,
    workspace: PathBuf,
    state: Arc<Mutex<State>>,
    tool_router: ToolRouter<Toolbox>,
}

/// A refused request or a failed call, as the model sees it: a tool error naming what was
/// wrong.
fn tool_error(message: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.to_string())])
}

fn answer(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

/// Variables every command gets unless the request sets them: a model reads no pager and
/// no colour codes (as Codex sets them).
const QUIET_ENV: [(&str, &str); 4] = [
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("NO_COLOR", "1"),
    ("TERM", "dumb"),
];

#[tool_router]
impl Toolbox {
    pub fn new(daemon: Daemon, workspace: PathBuf) -> Toolbox {
        Toolbox {
            daemon,
            workspace,
            state: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The jobs this server started that may still run.
    pub fn started(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.started.clone())
            .unwrap_or_default()
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// The daemon request for `run` or `start`, and the path it goes to.
    fn request(&self, request: Command) -> Result<(String, Value), String> {
        let Command {
            argv,
            command,
            cwd,
            env,
            stdin,
            timeout,
            policy,
            network,
            allow,
            job_id,
        } = request;
        let argv = match (argv, command) {
            (Some(argv), None) if !argv.is_empty() => argv,
            (None, Some(command)) if !command.trim().is_empty() => {
                vec!["sh".into(), "-c".into(), command]
            }
            (Some(_), Some(_)) => return Err("give `argv` or `command`, not both".into()),
            _ => return Err("give the command: `argv` (an array) or `command` (a string)".into()),
        };
        let mut body = Map::new();
        body.insert("argv".into(), json!(argv));
        let mut vars: BTreeMap<String, String> = QUIET_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.extend(env.unwrap_or_default());
        body.insert("env".into(), json!(vars));
        if let Some(stdin) = stdin {
            body.insert("stdin".into(), json!(stdin));
        }
        if let Some(timeout) = timeout {
            body.insert(
                "limits".into(),
                json!({ "timeout": timeout.to_daemon("timeout")? }),
            );
        }
        if let Some(policy) = policy {
            body.insert("policy".into(), json!(policy));
        }
        if let Some(network) = network {
            body.insert(
                "network".into(),
                json!(format!("{network:?}").to_lowercase()),
            );
        }
        if let Some(allow) = allow {
            body.insert("allow".into(), json!(allow));
        }
        match job_id {
            // Inside a job: its own directory unless one is named (relative: to its workspace,
            // which is the same path as ours when this server started it).
            Some(id) => {
                if let Some(cwd) = cwd {
                    body.insert("cwd".into(), json!(self.absolute(&cwd)));
                }
                Ok((
                    format!("/v1/jobs/{}/exec", path_segment(&id)?),
                    Value::Object(body),
                ))
            }
            None => {
                let cwd = cwd.map_or_else(|| self.workspace.clone(), |c| self.absolute(&c));
                body.insert("cwd".into(), json!(cwd));
                Ok(("/v1/jobs".into(), Value::Object(body)))
            }
        }
    }

    fn absolute(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.workspace.join(path)
        }
    }

    #[tool(
        name = "run",
        description = RUN,
        annotations(
            title = "Run a command in a jail",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn run(
        &self,
        Parameters(input): Parameters<RunInput>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let (command, ()) = input.split();
        let (path, body) = match self.request(command) {
            Ok(request) => request,
            Err(message) => return Ok(tool_error(message)),
        };
        let mut events = match self.daemon.stream(&path, &body).await {
            Ok(events) => events,
            Err(failure) => return Ok(tool_error(failure)),
        };
        let progress = ctx.meta.get_progress_token();
        let mut sent = 0u32;
        let mut gathered = Gathered::default();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                // The client gave up on the call: hanging up cancels the job (the daemon
                // ends a streamed job whose client left, whole process tree and all).
                _ = ctx.ct.cancelled() => {
                    drop(events);
                    return Err(ErrorData::internal_error("cancelled by the client; the job was cancelled", None));
                }
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Ok(tool_error(
                        "the toolbox daemon closed the job's stream before its result (was it restarted?)",
                    ))
                }
                Err(failure) => return Ok(tool_error(failure)),
            };
            let message = match event["type"].as_str() {
                Some("exit") => {
                    let mut record = event;
                    if let Some(object) = record.as_object_mut() {
                        object.shift_remove("type");
                    }
                    let mut text = gathered.text();
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&ending(&record));
                    if record["status"] == "setup_error" {
                        let mut result = tool_error(format!(
                            "the job could not be set up: {}",
                            record["error"].as_str().unwrap_or("(no reason given)")
                        ));
                        result.structured_content = Some(record);
                        return Ok(result);
                    }
                    let mut structured = gathered.structured();
                    structured["result"] = record;
                    return Ok(answer(text, structured));
                }
                Some("queued") => Some(format!(
                    "waiting for a slot (position {})",
                    event["position"].as_u64().unwrap_or(0)
                )),
                Some("started") => Some(format!(
                    "started job {}",
                    event["job_id"].as_str().unwrap_or("?")
                )),
                _ => gathered.take_event(&event).map(|(stream, bytes)| {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    if stream == "stderr" {
                        format!("[stderr] {text}")
                    } else {
                        text
                    }
                }),
            };
            if let (Some(token), Some(message)) = (&progress, message) {
                sent += 1;
                let _ = ctx
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(sent))
                            .with_message(message),
                    )
                    .await;
            }
        }
    }

    #[tool(
        name = "start",
        description = START,
        annotations(
            title = "Start a long-running command in a jail",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn start(
        &self,
        Parameters(input): Parameters<StartInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let (command, (wait,)) = input.split();
        let wait = match waiting(wait, 2) {
            Ok(wait) => wait,
            Err(message) => return Ok(tool_error(message)),
        };
        let (path, mut body) = match self.request(command) {
            Ok(request) => request,
            Err(message) => return Ok(tool_error(message)),
        };
        body["detach"] = json!(true);
        let started = match self.daemon.call(Method::POST, &path, Some(&body)).await {
            Ok(started) => started,
            Err(failure) => return Ok(tool_error(failure)),
        };
        let Some(id) = started["job_id"].as_str().map(String::from) else {
            return Ok(tool_error(
                "the toolbox daemon started a job but named no job_id",
            ));
        };
        if let Ok(mut state) = self.state.lock() {
            state.started.push(id.clone());
            state.cursors.insert(id.clone(), (0, 0));
        }
        Ok(self.gather(&id, wait).await)
    }

    #[tool(
        name = "read_output",
        description = READ_OUTPUT,
        annotations(
            title = "Read a job's new output",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn read_output(
        &self,
        Parameters(input): Parameters<ReadInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let wait = match waiting(input.wait, 5) {
            Ok(wait) => wait,
            Err(message) => return Ok(tool_error(message)),
        };
        Ok(self.gather(&input.job_id, wait).await)
    }

    #[tool(
        name = "write_stdin",
        description = WRITE_STDIN,
        annotations(
            title = "Write to a job's standard input",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn write_stdin(
        &self,
        Parameters(input): Parameters<WriteInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let wait = match waiting(input.wait, 1) {
            Ok(wait) => wait,
            Err(message) => return Ok(tool_error(message)),
        };
        let id = match path_segment(&input.job_id) {
            Ok(id) => id,
            Err(message) => return Ok(tool_error(message)),
        };
        if let Err(failure) = self
            .daemon
            .write_stdin(&id, input.data.as_bytes(), input.close)
            .await
        {
            return Ok(tool_error(failure));
        }
        Ok(self.gather(&input.job_id, wait).await)
    }

    #[tool(
        name = "kill",
        description = KILL,
        annotations(
            title = "End a job",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn kill(
        &self,
        Parameters(input): Parameters<KillInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let id = match path_segment(&input.job_id) {
            Ok(id) => id,
            Err(message) => return Ok(tool_error(message)),
        };
        match self
            .daemon
            .call(Method::DELETE, &format!("/v1/jobs/{id}"), None)
            .await
        {
            // Ended already: its record is what there is to say.
            Ok(_) | Err(Failure::Refused { status: 409, .. }) => {}
            Err(failure) => return Ok(tool_error(failure)),
        }
        // Until it ended (its grace at most, then SIGKILL), gathering what it wrote last.
        let result = self.gather(&input.job_id, MAX_WAIT).await;
        if result.is_error == Some(true) {
            // Not a detached job (another client's streamed one): no output to read here.
            return Ok(answer(
                format!("job {id} is being cancelled"),
                json!({ "job_id": id, "state": "cancelling" }),
            ));
        }
        Ok(result)
    }

    #[tool(
        name = "list_jobs",
        description = LIST_JOBS,
        annotations(
            title = "List jobs",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_jobs(&self) -> Result<CallToolResult, ErrorData> {
        let listing = match self.daemon.call(Method::GET, "/v1/jobs", None).await {
            Ok(listing) => listing,
            Err(failure) => return Ok(tool_error(failure)),
        };
        let mut text = String::new();
        for job in listing["jobs"].as_array().into_iter().flatten() {
            let argv: Vec<&str> = job["argv"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let state = match &job["result"] {
                Value::Object(_) => ending(&job["result"]),
                _ => job["state"].as_str().unwrap_or("?").to_string(),
            };
            text.push_str(&format!(
                "{}  {}  {:.1} s  {}{}\n",
                job["job_id"].as_str().unwrap_or("?"),
                state,
                job["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                argv.join(" "),
                job["exec_of"]
                    .as_str()
                    .map(|of| format!("  (inside {of})"))
                    .unwrap_or_default()
            ));
        }
        if text.is_empty() {
            text.push_str("no jobs\n");
        }
        Ok(answer(text, listing))
    }

    /// A detached job's output from where the last read stopped, gathered for `wait` or
    /// until it ends; with its record once it ended.
    async fn gather(&self, job_id: &str, wait: Duration) -> CallToolResult {
        let id = match path_segment(job_id) {
            Ok(id) => id,
            Err(message) => return tool_error(message),
        };
        let deadline = Instant::now() + wait;
        let mut gathered = Gathered::default();
        let mut state;
        loop {
            let (stdout_since, stderr_since) = self
                .state
                .lock()
                .ok()
                .and_then(|s| s.cursors.get(job_id).copied())
                .unwrap_or((0, 0));
            let left = deadline.saturating_duration_since(Instant::now());
            let path = format!(
                "/v1/jobs/{id}/output?stdout_since={stdout_since}&stderr_since={stderr_since}&wait={}ms",
                left.as_millis()
            );
            let output = match self.daemon.call(Method::GET, &path, None).await {
                Ok(output) => output,
                Err(failure) => return tool_error(failure),
            };
            gathered.take_chunks("stdout", &output["stdout"]);
            gathered.take_chunks("stderr", &output["stderr"]);
            let next = (
                output["stdout"]["next"].as_u64().unwrap_or(stdout_since),
                output["stderr"]["next"].as_u64().unwrap_or(stderr_since),
            );
            if let Ok(mut s) = self.state.lock() {
                s.cursors.insert(job_id.to_string(), next);
            }
            let done = output["done"] == true;
            state = match output["state"].as_str() {
                _ if done => "ended".to_string(),
                Some(state) => state.to_string(),
                None => "running".to_string(),
            };
            if done || Instant::now() >= deadline {
                break;
            }
        }
        let mut text = gathered.text();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let mut structured = gathered.structured();
        structured["job_id"] = json!(job_id);
        structured["state"] = json!(state);
        if state == "ended" {
            match self
                .daemon
                .call(Method::GET, &format!("/v1/jobs/{id}"), None)
                .await
            {
                Ok(job) => {
                    text.push_str(&ending(&job["result"]));
                    structured["result"] = job["result"].clone();
                }
                Err(failure) => text.push_str(&format!("[ended; its record: {failure}]")),
            }
        } else {
            text.push_str(&format!(
                "[job {job_id} is {state}: read_output for more, write_stdin to answer it, kill to end it]"
            ));
        }
        answer(text, structured)
    }
}

/// A tool's `wait`, or its default; why not, if it is not a duration.
fn waiting(wait: Option<Wait>, default_seconds: u64) -> Result<Duration, String> {
    Ok(wait
        .map(|w| w.to_duration("wait"))
        .transpose()?
        .unwrap_or(Duration::from_secs(default_seconds)))
}

/// A job id as one path segment, or why it cannot be one.
fn path_segment(id: &str) -> Result<String, String> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "job_id {id:?} is not a job id (as `start` or `list_jobs` gave it)"
        ));
    }
    Ok(id.to_string())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Toolbox {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("toolbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_or_timeout_is_seconds_or_the_daemons_durations() {
        let text = |t: &str| Wait::Text(t.into());
        assert_eq!(
            text("500ms").to_duration("wait"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(text("2m").to_duration("wait"), Ok(MAX_WAIT));
        assert_eq!(Wait::Seconds(0.0).to_duration("wait"), Ok(Duration::ZERO));
        assert_eq!(Wait::Seconds(1.5).to_daemon("timeout"), Ok("1500ms".into()));
        assert_eq!(text("1h").to_daemon("timeout"), Ok("1h".into()));
        assert!(
            matches!(text("soon").to_duration("wait"), Err(e) if e.starts_with("wait: \"soon\""))
        );
        assert!(Wait::Seconds(-1.0).to_daemon("timeout").is_err());
        assert!(Wait::Seconds(0.0).to_daemon("timeout").is_err());
    }
}
