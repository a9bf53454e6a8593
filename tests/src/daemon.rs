//! A real `toolbox serve` on a temporary socket, and a small HTTP/1.1 client for it (plain
//! std: the tests speak the protocol the way any client would, chunked encoding included).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{probe, toolbox, wait_for};

/// A daemon of our own. Dropping it stops it with SIGTERM (SIGKILL if it lingers).
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub dir: tempfile::TempDir,
    /// The cgroup unit it runs in, shared with a restart on the same socket.
    unit: String,
}

impl Daemon {
    /// Start `toolbox serve` with these extra options, and wait until it answers.
    pub fn start(options: &[&str]) -> Daemon {
        Daemon::start_with_env(options, &[])
    }

    /// The same, with these variables in the daemon's environment.
    pub fn start_with_env(options: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("toolbox-daemon-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("toolbox.sock");
        let audit = dir.path().join("audit.jsonl");
        Daemon::spawn(dir, socket, audit, options, env)
    }

    /// Start at a given socket and audit log (a restart over a crashed daemon's).
    pub fn start_at(
        dir: tempfile::TempDir,
        socket: PathBuf,
        audit: PathBuf,
        options: &[&str],
    ) -> Daemon {
        Daemon::spawn(dir, socket, audit, options, &[])
    }

    fn spawn(
        dir: tempfile::TempDir,
        socket: PathBuf,
        audit: PathBuf,
        options: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        // One cgroup per socket, as one systemd service: a restart shares its predecessor's.
        let unit = format!(
            "daemon-{}",
            socket
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut command = Command::new(toolbox());
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--audit-log")
            .arg(&audit)
            .args(options)
            .env("TOOLBOX_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("log file"));
        crate::in_unit(&mut command, &unit);
        let child = command.spawn().expect("start toolbox serve");
        let daemon = Daemon {
            child,
            socket,
            audit,
            dir,
            unit,
        };
        assert!(
            wait_for(Duration::from_secs(10), || UnixStream::connect(
                &daemon.socket
            )
            .is_ok()),
            "the daemon did not start listening; its log:\n{}",
            daemon.log()
        );
        daemon
    }

    /// Let any user reach the socket (its directory is 0700, the socket 0660): what keeps
    /// other users out is then the daemon's own allowlist.
    pub fn open_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666))
            .expect("chmod");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its children that are jails' shims (PID 1 of each jail, prepared or running).
    pub fn shims(&self) -> std::collections::BTreeSet<i32> {
        children(self.pid(), Some("toolbox-shim"))
    }

    /// One sample's value from `/metrics` (`name` with its labels, as the line starts), or
    /// 0 if it is not there.
    pub fn metric(&self, name: &str) -> u64 {
        let text = String::from_utf8(self.request("GET", "/metrics", None).body).expect("text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait (up to 30 s) until the pool holds a prepared jail for `network` (`isolated` or
    /// `host`).
    pub fn wait_for_warm(&self, network: &str) {
        self.wait_for_jails(network, "at least 1", |ready| ready > 0);
    }

    /// Wait (up to 30 s) until the pool holds `count` prepared jails for `network`: a full
    /// pool, for a count of what the daemon holds that does not depend on where its refill
    /// is.
    pub fn wait_for_pool(&self, network: &str, count: u64) {
        self.wait_for_jails(network, &count.to_string(), |ready| ready == count);
    }

    fn wait_for_jails(&self, network: &str, what: &str, enough: impl Fn(u64) -> bool) {
        let gauge = format!("toolbox_warm_jails{{network=\"{network}\"}}");
        assert!(
            crate::wait_for(Duration::from_secs(30), || enough(self.metric(&gauge))),
            "the pool did not hold {what} {network} jails; the daemon's log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The audit log's lines, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
            .collect()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(
            &self.socket,
            method,
            path,
            "application/json",
            body.map(str::as_bytes),
        )
    }

    /// A request with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(&body.to_string()))
    }

    /// Start a detached job; its id.
    pub fn detach(&self, body: &Value) -> String {
        let mut body = body.clone();
        body["detach"] = true.into();
        let response = self.post("/v1/jobs", &body);
        assert_eq!(
            response.status,
            201,
            "a detached start answers 201: {}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()["job_id"]
            .as_str()
            .expect("a job_id")
            .to_string()
    }

    /// `GET /v1/jobs/{id}/output` with this query.
    pub fn output(&self, id: &str, query: &str) -> Value {
        let response = self.request("GET", &format!("/v1/jobs/{id}/output?{query}"), None);
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()
    }

    /// Read a detached job's output from the start until `until` holds for what was read
    /// (or the job is done): stdout and stderr as read so far, and the last answer.
    pub fn read_output_until(
        &self,
        id: &str,
        mut until: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> (Vec<u8>, Vec<u8>, Value) {
        let mut got = [Vec::new(), Vec::new()];
        let mut next = [0u64, 0];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self.output(
                id,
                &format!("stdout_since={}&stderr_since={}&wait=5s", next[0], next[1]),
            );
            for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
                got[i].extend(chunk_bytes(&answer[stream]));
                next[i] = answer[stream]["next"].as_u64().expect("next");
            }
            if until(&got[0], &got[1])
                || answer["done"] == true
                || std::time::Instant::now() > deadline
            {
                let [out, err] = got;
                return (out, err, answer);
            }
        }
    }

    /// A detached job's record, once it has ended (waits up to a minute).
    pub fn record_of(&self, id: &str) -> Value {
        let mut last = Value::Null;
        let ended = wait_for(Duration::from_secs(60), || {
            last = self.request("GET", &format!("/v1/jobs/{id}"), None).json();
            last["state"] == "ended"
        });
        assert!(ended, "job {id} did not end: {last}");
        last["result"].clone()
    }

    /// Write `bytes` to a detached job's stdin (`query`: `close=true`, or empty).
    pub fn write_stdin(&self, id: &str, bytes: &[u8], query: &str) -> Response {
        request(
            &self.socket,
            "POST",
            &format!("/v1/jobs/{id}/stdin?{query}"),
            "application/octet-stream",
            Some(bytes),
        )
    }

    /// Post a job and read its whole event stream.
    pub fn job(&self, body: &Value) -> JobStream {
        let mut stream = self.submit(body);
        stream.read_to_end();
        stream
    }

    /// Post a job; the stream is read as the test asks.
    pub fn submit(&self, body: &Value) -> JobStream {
        JobStream::open(&self.socket, body)
    }

    /// SIGTERM, and wait for the daemon to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix_kill(self.pid(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix_kill(self.pid(), libc::SIGTERM);
            if !wait_for(Duration::from_secs(20), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Gone unless a restart on the same socket still runs in it.
        crate::remove_unit(&self.unit);
    }
}

/// The children of `parent` (only those named `comm`, if given), from `/proc`.
pub fn children(parent: i32, comm: Option<&str>) -> std::collections::BTreeSet<i32> {
    let parent = parent.to_string();
    let mut found = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((name, rest)) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
        else {
            continue;
        };
        // A zombie is not counted: it is gone but for its parent's wait.
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if comm.is_none_or(|comm| comm == name)
            && ppid == Some(parent.as_str())
            && !matches!(state, Some("Z" | "X"))
        {
            found.insert(pid);
        }
    }
    found
}

/// Whether process `pid` is there and has not exited.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z ") && !stat.contains(") X "))
}

#[allow(unsafe_code)]
pub fn nix_kill(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill takes two integers; the pid is a child of this test process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `field` of an error body.
    pub fn error_field(&self) -> Option<String> {
        self.json()["error"]["field"].as_str().map(String::from)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The bytes of one stream's part of an output answer, gaps left out.
pub fn chunk_bytes(stream: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    for chunk in stream["chunks"].as_array().expect("chunks") {
        if let Some(text) = chunk["text"].as_str() {
            bytes.extend_from_slice(text.as_bytes());
        } else if let Some(encoded) = chunk["base64"].as_str() {
            bytes.extend(base64_decode(encoded));
        }
    }
    bytes
}

/// One request as another user: made from a thread of its own that has taken `uid` and
/// `gid` (the raw system calls change the calling thread's credentials alone, so the rest
/// of the test stays root), which is what the daemon reads with SO_PEERCRED.
pub fn request_as(
    uid: u32,
    socket: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&[u8]>,
) -> Response {
    let (socket, method, path, content_type) = (
        socket.to_path_buf(),
        method.to_string(),
        path.to_string(),
        content_type.to_string(),
    );
    let body = body.map(<[u8]>::to_vec);
    as_user(uid, move || {
        request(&socket, &method, &path, &content_type, body.as_deref())
    })
}

/// Run `f` on a thread of its own that has taken `uid` and `gid` (the raw system calls
/// change the calling thread's credentials alone, so the rest of the test stays root):
/// whatever it connects to sees that user (SO_PEERCRED).
#[allow(unsafe_code)]
pub fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials; the thread ends
        // with `f`, and no other thread shares them.
        let changed = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
        };
        assert!(
            changed,
            "take uid {uid}: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("the thread of another user")
}

/// One request on a fresh connection, read to the end.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&[u8]>,
) -> Response {
    let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write_request(&mut stream, method, path, content_type, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut body = Vec::new();
    if is_chunked(&headers) {
        while let Some(chunk) = read_chunk(&mut reader) {
            body.extend(chunk);
        }
    } else if let Some(length) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        // Exactly the body, not to EOF: a daemon that refuses a request before reading all
        // of it (413) closes with the rest unread, and then the socket reports
        // ECONNRESET where EOF would be.
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("read body");
    } else {
        reader.read_to_end(&mut body).expect("read body");
    }
    crate::openapi::check(
        method,
        path,
        status,
        header_of(&headers, "content-type"),
        &body,
    );
    Response {
        status,
        headers,
        body,
    }
}

fn write_request(
    stream: &mut UnixStream,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: toolbox\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    if let Some(body) = body {
        // A body the daemon refuses early may not be read whole: the write may then fail.
        let _ = stream.write_all(body);
    }
}

fn read_head(reader: &mut BufReader<UnixStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    })
}

/// The next chunk of a chunked body; `None` at its end (or if the connection died).
fn read_chunk(reader: &mut BufReader<UnixStream>) -> Option<Vec<u8>> {
    let mut size_line = String::new();
    if reader.read_line(&mut size_line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size_line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// The event stream of one posted job.
pub struct JobStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// What each line is checked against (see `openapi`), and the request it answers.
    line_schema: Option<(String, String)>,
    reader: Option<BufReader<UnixStream>>,
    pending: Vec<u8>,
    /// Every event read so far.
    pub events: Vec<Value>,
    /// The body of a refusal.
    pub refusal: Option<Value>,
}

impl JobStream {
    fn open(socket: &Path, body: &Value) -> JobStream {
        JobStream::open_at(socket, "/v1/jobs", body)
    }

    /// Post `body` to `path` (`/v1/jobs`, or a job's `/exec`) and open its stream.
    pub fn open_at(socket: &Path, path: &str, body: &Value) -> JobStream {
        let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let bytes = body.to_string();
        write_request(
            &mut stream,
            "POST",
            path,
            "application/json",
            Some(bytes.as_bytes()),
        );
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        let content_type = header_of(&headers, "content-type").map(str::to_string);
        let line_schema = if status == 200 {
            crate::openapi::stream_schema("POST", path, status, content_type.as_deref())
                .map(|pointer| (pointer, path.to_string()))
        } else {
            None
        };
        let mut job = JobStream {
            status,
            headers,
            line_schema,
            reader: Some(reader),
            pending: Vec::new(),
            events: Vec::new(),
            refusal: None,
        };
        if status != 200 {
            let mut body = Vec::new();
            if let Some(reader) = job.reader.as_mut() {
                if is_chunked(&job.headers) {
                    while let Some(chunk) = read_chunk(reader) {
                        body.extend(chunk);
                    }
                } else {
                    let _ = reader.read_to_end(&mut body);
                }
            }
            crate::openapi::check("POST", path, status, content_type.as_deref(), &body);
            job.refusal = serde_json::from_slice(&body).ok();
            job.reader = None;
        }
        job
    }

    /// The next event, or `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Some((pointer, path)) = &self.line_schema {
                    crate::openapi::check_line(pointer, &line[..line.len() - 1], "POST", path);
                }
                let event: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!(
                        "an event line is not JSON ({e}): {}",
                        String::from_utf8_lossy(&line)
                    )
                });
                self.events.push(event.clone());
                return Some(event);
            }
            let chunk = read_chunk(self.reader.as_mut()?)?;
            self.pending.extend(chunk);
        }
    }

    /// Read until an event of this type (returned), or the end.
    pub fn until(&mut self, kind: &str) -> Option<Value> {
        while let Some(event) = self.next_event() {
            if event["type"] == kind {
                return Some(event);
            }
        }
        None
    }

    pub fn read_to_end(&mut self) {
        while self.next_event().is_some() {}
    }

    /// Hang up on the daemon.
    pub fn disconnect(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
        }
    }

    /// The `exit` event (the result record).
    pub fn exit(&self) -> &Value {
        self.events
            .iter()
            .find(|e| e["type"] == "exit")
            .unwrap_or_else(|| panic!("no exit event in {:?}", self.events))
    }

    /// All of one stream's output, decoded.
    pub fn output(&self, stream: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.events.iter().filter(|e| e["type"] == stream) {
            if let Some(text) = event["text"].as_str() {
                out.extend_from_slice(text.as_bytes());
            } else if let Some(encoded) = event["base64"].as_str() {
                out.extend(base64_decode(encoded));
            }
        }
        out
    }

    pub fn job_id(&self) -> Option<String> {
        self.events
            .iter()
            .find_map(|e| e["job_id"].as_str().map(String::from))
    }
}

/// A standard-alphabet base64 decoder (the tests check the daemon's encoding with their own).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for group in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let take = group.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// A job body running `argv` in `workspace`, with the probe bound in read-only.
pub fn job_body(workspace: &Path, argv: &[&str]) -> Value {
    serde_json::json!({
        "argv": argv,
        "cwd": workspace,
        "mounts": [{ "path": probe(), "mode": "ro" }],
    })
}

/// Post a job to the daemon at `socket`; the stream is read as the test asks.
pub fn request_stream(socket: &Path, body: &Value) -> JobStream {
    JobStream::open(socket, body)
}

/// `toolbox serve` started the way systemd's socket activation starts it: `listener` as
/// fd 3, LISTEN_FDS=1 and LISTEN_PID set to the daemon's own pid.
#[allow(unsafe_code)]
pub fn spawn_activated(listener: &std::os::unix::net::UnixListener, log: &Path) -> Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    // The shell's pid is the daemon's after exec.
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --socket /proc/never-bound.sock")
        .arg(toolbox())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"));
    // SAFETY: dup2 is async-signal-safe; it places the listener at fd 3 without
    // close-on-exec, which is how systemd hands sockets over.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, 3) == 3
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.spawn().expect("spawn the activated daemon")
}

/// A socket-activated daemon; dropping it stops it.
pub struct Activated {
    pub child: Child,
}

impl Activated {
    pub fn stop(&mut self) {
        let _ = nix_kill(self.child.id() as i32, libc::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
