//! The daemon's job API, as this server uses it: HTTP/1.1 over the Unix socket, one
//! connection a request (hyper's client; a streamed job's connection is its lifetime).

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Why a call to the daemon did not give what was asked.
#[derive(Debug)]
pub enum Failure {
    /// Nothing answers at the socket.
    Unreachable { socket: PathBuf, error: String },
    /// The daemon refused the request, with its own code, message and field.
    Refused {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// The connection broke, or the answer was not what the API promises.
    Broken(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable { socket, error } => write!(
                f,
                "cannot reach the toolbox daemon at {} ({error}); start it (`toolbox serve`, \
                 or `systemctl start toolbox.socket`) or name its socket with `toolbox mcp \
                 --socket PATH` or $TOOLBOX_SOCKET",
                socket.display()
            ),
            Failure::Refused {
                status,
                code,
                message,
                field,
            } => {
                write!(f, "refused by the toolbox daemon ({status} {code}): ")?;
                if let Some(field) = field {
                    write!(f, "{field}: ")?;
                }
                write!(f, "{message}")
            }
            Failure::Broken(what) => write!(f, "the toolbox daemon's answer broke off: {what}"),
        }
    }
}

fn broken(what: impl fmt::Display) -> Failure {
    Failure::Broken(what.to_string())
}

/// Where the daemon listens.
#[derive(Clone, Debug)]
pub struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    pub fn new(socket: PathBuf) -> Daemon {
        Daemon { socket }
    }

    /// Send one request; the answer's body is left to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|err| Failure::Unreachable {
                    socket: self.socket.clone(),
                    error: err.to_string(),
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broken)?;
        // The connection is driven by a task of its own; dropping the answer's body closes
        // it, which for a streamed job is cancelling it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "toolbox")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(broken)?;
        sender.send_request(request).await.map_err(broken)
    }

    /// A request answered with JSON: the answer, or the daemon's refusal.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let response = self.send(method, path, "application/json", body).await?;
        json_answer(response).await
    }

    /// Raw bytes for a job's stdin.
    pub async fn write_stdin(
        &self,
        job_id: &str,
        data: &[u8],
        close: bool,
    ) -> Result<Value, Failure> {
        let path = format!("/v1/jobs/{job_id}/stdin?close={close}");
        let response = self
            .send(
                Method::POST,
                &path,
                "application/octet-stream",
                data.to_vec(),
            )
            .await?;
        json_answer(response).await
    }

    /// Start a streamed job (`/v1/jobs`, or a job's `/exec`): its events, as they come.
    pub async fn stream(&self, path: &str, body: &Value) -> Result<Events, Failure> {
        let response = self
            .send(
                Method::POST,
                path,
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        if response.status() != StatusCode::OK {
            return Err(json_answer(response).await.err().unwrap_or_else(|| {
                broken("a job request answered with something else than its events")
            }));
        }
        Ok(Events {
            body: response.into_body(),
            pending: Vec::new(),
        })
    }
}

/// The JSON of a 2xx answer; any other status is the daemon's refusal.
async fn json_answer(response: hyper::Response<Incoming>) -> Result<Value, Failure> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(broken)?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).map_err(|err| {
        broken(format!(
            "{status}: {err}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })?;
    if status.is_success() {
        return Ok(value);
    }
    let error = &value["error"];
    Err(Failure::Refused {
        status: status.as_u16(),
        code: error["code"].as_str().unwrap_or("unknown").to_string(),
        message: error["message"].as_str().unwrap_or("").to_string(),
        field: error["field"].as_str().map(String::from),
    })
}

/// A streamed job's events (NDJSON), one JSON object each.
pub struct Events {
    body: Incoming,
    pending: Vec<u8>,
}

impl Events {
    /// The next event; `None` when the stream ended (after `exit`, or broken off).
    pub async fn next(&mut self) -> Result<Option<Value>, Failure> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|err| broken(format!("an event that is not JSON: {err}")));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(err)) => return Err(broken(err)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
