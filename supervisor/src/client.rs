//! The client side of the job API: `toolbox run` through a daemon, and `toolbox ps`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::daemon::DEFAULT_SOCKET;
use crate::record::exit;

/// Which daemon `toolbox run` should use: the one named (`--socket`, then
/// `$TOOLBOX_SOCKET`), else the default one if it answers; `None` runs in-process.
pub fn daemon_socket(named: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = named {
        return Some(path);
    }
    if let Some(path) = std::env::var_os("TOOLBOX_SOCKET").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_SOCKET);
    std::os::unix::net::UnixStream::connect(default)
        .is_ok()
        .then(|| default.to_path_buf())
}

/// A response: its status, and its body to read as it comes (chunked or not).
struct Response {
    status: u16,
    chunked: bool,
    /// Bytes of the body still to come when not chunked (`None`: until the end).
    remaining: Option<u64>,
    done: bool,
    reader: BufReader<UnixStream>,
}

impl Response {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The next piece of the body; `None` at its end.
    async fn next_bytes(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line).await? == 0 {
                anyhow::bail!("the daemon closed the connection mid-response");
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size line {size_line:?}"))?;
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            return Ok(Some(chunk));
        }
        let want = self
            .remaining
            .map_or(64 * 1024, |n| n.min(64 * 1024) as usize);
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0; want];
        let n = self.reader.read(&mut buf).await?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        buf.truncate(n);
        if let Some(left) = self.remaining.as_mut() {
            *left -= n as u64;
        }
        Ok(Some(buf))
    }

    async fn body(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(bytes) = self.next_bytes().await? {
            body.extend(bytes);
        }
        Ok(body)
    }
}

/// One request on a connection of its own (HTTP/1.1, `Connection: close`). Plain code over
/// the socket: the client side needs no HTTP library, and `toolbox run` stays small.
async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect to the toolbox daemon at {}", socket.display()))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: toolbox\r\nConnection: close\r\n");
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    stream
        .write_all(head.as_bytes())
        .await
        .context("send the request to the toolbox daemon")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .context("read the daemon's answer")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("the daemon answered {line:?}, not HTTP"))?;
    let (mut chunked, mut remaining) = (false, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 {
            anyhow::bail!("the daemon closed the connection mid-header");
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                remaining = value.parse().ok();
            }
        }
    }
    Ok(Response {
        status,
        chunked,
        remaining,
        done: false,
        reader,
    })
}

/// The error message of a refusal, or the body as it came.
fn refusal(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            let message = error.get("message")?.as_str()?.to_string();
            Some(match error.get("field").and_then(|f| f.as_str()) {
                Some(field) => format!("{field}: {message}"),
                None => message,
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Run a job through the daemon: stream its output to ours, cancel it on Ctrl-C or SIGTERM,
/// and return the exit code `toolbox run` exits with.
pub async fn run(socket: &Path, body: serde_json::Value, json: bool) -> i32 {
    match run_inner(socket, body, json).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("toolbox: {err:#}");
            exit::TOOLBOX_FAILED
        }
    }
}

async fn run_inner(socket: &Path, body: serde_json::Value, json: bool) -> anyhow::Result<i32> {
    // Before the request: the job may start before its answer's head arrives, and a Ctrl-C
    // must find the handlers in place by then.
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut response = request(socket, "POST", "/v1/jobs", Some(body.to_string())).await?;
    if !response.is_success() {
        let status = response.status;
        let bytes = response.body().await.unwrap_or_default();
        anyhow::bail!("the daemon refused the job ({status}): {}", refusal(&bytes));
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let tell_queue = std::io::stderr().is_terminal();
    let mut pending = Vec::new();
    let mut job_id: Option<String> = None;
    // Whether the tool's stderr, as written so far, ends a line.
    let mut stderr_at_line_start = true;
    // The signal that made us cancel: the exit status says so, as in-process.
    let mut cancelled_by: Option<i32> = None;
    // The stream is read by a task of its own: a signal arriving mid-chunk must not cut a
    // read short (reading is not cancel-safe; a channel receive is).
    let (chunks, mut received) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let next = response.next_bytes().await;
            let end = !matches!(next, Ok(Some(_)));
            if chunks.send(next).await.is_err() || end {
                return;
            }
        }
    });
    // Dropped on every return: hanging up on the daemon, which cancels a job still running.
    let _reader = AbortOnDrop(reader);
    loop {
        let bytes = tokio::select! {
            bytes = received.recv() => bytes.unwrap_or(Ok(None)),
            _ = int.recv(), if cancelled_by.is_none() => {
                cancelled_by = Some(libc::SIGINT);
                if job_id.is_none() {
                    // Before the daemon named the job: closing the connection cancels it.
                    return Ok(exit::SIGNAL_BASE + libc::SIGINT);
                }
                cancel(socket, job_id.as_deref()).await;
                continue
            }
            _ = term.recv(), if cancelled_by.is_none() => {
                cancelled_by = Some(libc::SIGTERM);
                if job_id.is_none() {
                    return Ok(exit::SIGNAL_BASE + libc::SIGTERM);
                }
                cancel(socket, job_id.as_deref()).await;
                continue
            }
        };
        let Some(data) = bytes.context("read the job's stream")? else {
            anyhow::bail!("the daemon closed the stream before the job's result");
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: serde_json::Value =
                serde_json::from_slice(&line).context("the daemon sent a line that is not JSON")?;
            let kind = event.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let bytes = || -> Vec<u8> {
                if let Some(text) = event.get("text").and_then(|t| t.as_str()) {
                    text.as_bytes().to_vec()
                } else if let Some(encoded) = event.get("base64").and_then(|t| t.as_str()) {
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                }
            };
            match kind {
                "queued" => {
                    job_id = event
                        .get("job_id")
                        .and_then(|v| v.as_str())
                        .map(String::from);
                    if tell_queue {
                        let position = event.get("position").and_then(|p| p.as_u64()).unwrap_or(0);
                        let _ = stderr
                            .write_all(
                                format!("toolbox: waiting for a slot (position {position})\n")
                                    .as_bytes(),
                            )
                            .await;
                    }
                }
                "started" => {
                    job_id = event
                        .get("job_id")
                        .and_then(|v| v.as_str())
                        .map(String::from);
                }
                "stdout" => {
                    let _ = stdout.write_all(&bytes()).await;
                }
                "stderr" => {
                    let data = bytes();
                    if let Some(last) = data.last() {
                        stderr_at_line_start = *last == b'\n';
                    }
                    let _ = stderr.write_all(&data).await;
                }
                "truncated" => {
                    let stream = event
                        .get("stream")
                        .and_then(|s| s.as_str())
                        .unwrap_or("output");
                    let dropped = event
                        .get("dropped_bytes")
                        .and_then(|n| n.as_u64())
                        .unwrap_or(0);
                    let kept = event
                        .get("kept_bytes")
                        .and_then(|n| n.as_u64())
                        .unwrap_or(0);
                    let marker = format!(
                        "\n[toolbox: {dropped} bytes of {stream} dropped here; the last {kept} bytes follow]\n"
                    );
                    let _ = match stream {
                        "stderr" => stderr.write_all(marker.as_bytes()).await,
                        _ => stdout.write_all(marker.as_bytes()).await,
                    };
                }
                "exit" => {
                    let _ = stdout.flush().await;
                    let _ = stderr.flush().await;
                    if let Some(error) = event.get("error").and_then(|e| e.as_str()) {
                        eprintln!("toolbox: {error}");
                    } else if let Some(reason) = event.get("reason").and_then(|r| r.as_str()) {
                        let newline = if stderr_at_line_start { "" } else { "\n" };
                        eprintln!("{newline}[toolbox: {reason}]");
                    }
                    if json {
                        let mut record = event.clone();
                        if let Some(object) = record.as_object_mut() {
                            object.shift_remove("type");
                        }
                        eprintln!("{record}");
                    }
                    let code = event
                        .get("exit_code")
                        .and_then(|c| c.as_i64())
                        .unwrap_or(exit::TOOLBOX_FAILED as i64);
                    return Ok(match cancelled_by {
                        Some(signal) if event["status"] == "cancelled" => {
                            exit::SIGNAL_BASE + signal
                        }
                        _ => code as i32,
                    });
                }
                _ => {}
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn cancel(socket: &Path, job_id: Option<&str>) {
    let Some(id) = job_id else {
        // Not started yet, so no id: hanging up cancels it (see run_inner).
        return;
    };
    if let Err(err) = request(socket, "DELETE", &format!("/v1/jobs/{id}"), None).await {
        eprintln!("toolbox: cancel job {id}: {err:#}");
    }
}

/// `toolbox ps`: the daemon's running and queued jobs, one a line.
pub async fn ps(socket: &Path, json: bool) -> anyhow::Result<()> {
    let mut response = request(socket, "GET", "/v1/jobs", None).await?;
    let bytes = response.body().await?;
    if !response.is_success() {
        anyhow::bail!(
            "the daemon refused ({}): {}",
            response.status,
            refusal(&bytes)
        );
    }
    if json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let listing: serde_json::Value = serde_json::from_slice(&bytes)?;
    let mut out = format!(
        "{:<12}  {:>6}  {:<8}  {:>9}  {:>5}  COMMAND\n",
        "JOB", "UID", "STATE", "ELAPSED", "QUEUE"
    );
    for job in listing["jobs"].as_array().into_iter().flatten() {
        let argv: Vec<&str> = job["argv"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let elapsed = job["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        out.push_str(&format!(
            "{:<12}  {:>6}  {:<8}  {:>8.1}s  {:>5}  {}\n",
            job["job_id"].as_str().unwrap_or("?"),
            job["peer_uid"].as_u64().unwrap_or(0),
            job["state"].as_str().unwrap_or("?"),
            elapsed,
            job["position"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            argv.join(" ")
        ));
    }
    print!("{out}");
    Ok(())
}
