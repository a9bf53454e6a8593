//! A job's egress proxy: an HTTP proxy (CONNECT, and absolute-form requests for plain HTTP)
//! and a SOCKS5 proxy, on listening sockets made inside the job's network namespace and
//! served here, from the supervisor's, where it dials out.
//!
//! Each job has its own listeners, so whose connection it is comes from the socket it
//! arrived on, never from anything the job wrote. A name is checked against the rules,
//! resolved here (the job has no resolver), each address checked again (no loopback,
//! private, link-local… unless an address rule names it), and the connection goes to
//! exactly an address that passed. Every connection is logged: [`Log`], summed up in the
//! result record's `egress`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::info;

use super::rules::{check_name, special, Rules};

/// The most connections one job may have open through its proxy at once; more wait in the
/// listen backlog. Each costs the supervisor two descriptors.
const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request (the HTTP head, the SOCKS handshake).
const REQUEST_TIME: Duration = Duration::from_secs(30);
/// The longest HTTP request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long resolving a name may take, and connecting.
const RESOLVE_TIME: Duration = Duration::from_secs(10);
/// How many of one job's names may be resolved at once. Each takes a blocking thread until
/// the system's resolver answers, which the timeout above does not shorten: a job asking
/// for many slow names holds this many threads, not the daemon's whole pool.
const RESOLVING: usize = 4;
const CONNECT_TIME: Duration = Duration::from_secs(10);
/// Connections listed one by one in the record; past this only counted.
const MAX_LISTED: usize = 256;
/// The pipe each direction splices through, and the copy buffer where it cannot.
const PIPE: usize = 1 << 20;
const BUFFER: usize = 64 * 1024;

/// How a job's connections are judged.
#[derive(Debug, Clone)]
pub struct Judge {
    pub job_id: String,
    /// `Some(rules)` in mode `allowlist`; `None` in mode `none` (everything refused).
    pub rules: Option<Rules>,
    pub policy: String,
    /// For a refusal in mode `none`: what would give the job a network.
    pub hint: String,
}

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Addr(IpAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::Addr(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Target::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// Why a connection did not go through.
#[derive(Debug)]
struct Refusal {
    /// Stable: `no-network`, `not-allowed`, `address-refused`, `bad-request`, `tls-name`,
    /// `http-host`, `resolve-failed`, `connect-failed`.
    code: &'static str,
    /// A sentence: what was refused, why, and what would allow it.
    message: String,
    /// A few words for an HTTP reason phrase (what pip and git print of a refused
    /// CONNECT; curl shows only the status).
    short: String,
    /// The address it was refused at, when one was resolved.
    address: Option<IpAddr>,
}

impl Refusal {
    fn new(code: &'static str, message: String, short: String) -> Refusal {
        Refusal {
            code,
            message,
            short,
            address: None,
        }
    }

    /// Refused by the rules, not failed on the way.
    fn decision(&self) -> &'static str {
        match self.code {
            "resolve-failed" | "connect-failed" => "failed",
            _ => "refused",
        }
    }
}

/// One connection through the proxy, as the record lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Connection {
    /// When the request came (UTC).
    pub time: String,
    /// `connect` (HTTP CONNECT), `http` (a plain HTTP request), `socks`.
    pub via: &'static str,
    /// The name or address asked for.
    pub host: String,
    pub port: u16,
    /// The address connected to (or refused at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `allowed`, `refused` (by the rules), or `failed` (allowed, but it could not be
    /// resolved or connected to).
    pub decision: &'static str,
    /// The rule that allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused or failed: `no-network`, `not-allowed`, `address-refused`,
    /// `bad-request`, `tls-name`, `http-host`, `resolve-failed`, `connect-failed` (also the HTTP
    /// refusal's `X-Toolbox-Egress` header)…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// … and in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from the job to the far end, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// What a job's proxy did, for its record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Egress {
    pub allowed: u64,
    pub refused: u64,
    pub failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The first connections, in order.
    pub connections: Vec<Connection>,
    /// Connections past those listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub connections_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes through one connection, counted as they pass.
#[derive(Debug, Default)]
struct Bytes {
    up: AtomicU64,
    down: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    connection: Connection,
    started: Instant,
    bytes: Arc<Bytes>,
    /// Set when the connection is over.
    ended: Option<Duration>,
}

/// A job's connections as they happen.
#[derive(Debug, Default)]
pub struct Log {
    entries: Mutex<Vec<Entry>>,
    allowed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Totals, of listed and unlisted connections alike.
    bytes: Bytes,
    not_listed: AtomicU64,
}

impl Log {
    /// Note a decision; the index of its entry (if listed) to finish it by.
    fn note(&self, connection: Connection, bytes: Arc<Bytes>) -> Option<usize> {
        let counter = match connection.decision {
            "allowed" => &self.allowed,
            "refused" => &self.refused,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_LISTED {
            self.not_listed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        entries.push(Entry {
            connection,
            started: Instant::now(),
            bytes,
            ended: None,
        });
        Some(entries.len() - 1)
    }

    fn ended(&self, index: Option<usize>) {
        let Some(index) = index else { return };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(index) {
            entry.ended = Some(entry.started.elapsed());
        }
    }

    /// The summary, as it stands.
    pub fn summary(&self) -> Egress {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Egress {
            allowed: self.allowed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_up: self.bytes.up.load(Ordering::Relaxed),
            bytes_down: self.bytes.down.load(Ordering::Relaxed),
            connections: entries
                .iter()
                .map(|entry| {
                    let mut connection = entry.connection.clone();
                    connection.bytes_up = entry.bytes.up.load(Ordering::Relaxed);
                    connection.bytes_down = entry.bytes.down.load(Ordering::Relaxed);
                    connection.duration_ms = entry
                        .ended
                        .unwrap_or_else(|| entry.started.elapsed())
                        .as_millis() as u64;
                    connection
                })
                .collect(),
            connections_not_listed: self.not_listed.load(Ordering::Relaxed),
        }
    }
}

/// A job's proxy while it serves. Dropping it stops it, and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    tasks: Vec<JoinHandle<()>>,
    log: Arc<Log>,
}

impl Proxy {
    /// Serve the job's HTTP and SOCKS listeners (made in its network namespace) on the
    /// current tokio runtime.
    pub fn serve(
        http: std::net::TcpListener,
        socks: std::net::TcpListener,
        judge: Judge,
    ) -> std::io::Result<Proxy> {
        http.set_nonblocking(true)?;
        socks.set_nonblocking(true)?;
        let http = TcpListener::from_std(http)?;
        let socks = TcpListener::from_std(socks)?;
        let log = Arc::new(Log::default());
        let shared = Arc::new(Shared {
            judge,
            log: log.clone(),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            resolving: Arc::new(Semaphore::new(RESOLVING)),
        });
        let tasks = vec![
            tokio::spawn(accept(http, shared.clone(), Kind::Http)),
            tokio::spawn(accept(socks, shared, Kind::Socks)),
        ];
        Ok(Proxy { tasks, log })
    }

    /// Stop serving — every connection closes, the listeners with them — and say what it
    /// did.
    pub fn finish(self) -> Egress {
        for task in &self.tasks {
            task.abort();
        }
        self.log.summary()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    judge: Judge,
    log: Arc<Log>,
    permits: Arc<Semaphore>,
    resolving: Arc<Semaphore>,
}

/// A name's addresses, as the system's resolver gives them (blocking).
type Lookup = fn(&str, u16) -> std::io::Result<Vec<IpAddr>>;

fn system_lookup(name: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    Ok((name, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Resolve `name` on a blocking thread that holds one of the job's `resolving` permits
/// until it is done — past `within` too, which only ends the waiting (getaddrinfo cannot
/// be stopped). The wait for a permit counts in `within`. `None`: not in time.
async fn resolve(
    resolving: &Arc<Semaphore>,
    name: &str,
    port: u16,
    within: Duration,
    lookup: Lookup,
) -> Option<std::io::Result<Vec<IpAddr>>> {
    let name = name.to_string();
    let resolving = resolving.clone();
    let resolved = async move {
        let permit = resolving
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lookup(&name, port)
        })
        .await
        .map_err(std::io::Error::other)?
    };
    tokio::time::timeout(within, resolved).await.ok()
}

#[derive(Clone, Copy)]
enum Kind {
    Http,
    Socks,
}

/// Accept connections while the job lives (aborting this task drops the set, and with it
/// every connection).
async fn accept(listener: TcpListener, shared: Arc<Shared>, kind: Kind) {
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = shared.permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = loop {
            tokio::select! {
                accepted = listener.accept() => break accepted,
                Some(_) = connections.join_next() => {}
            }
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, say: try again in a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match kind {
                Kind::Http => http(stream, &shared).await,
                Kind::Socks => socks(stream, &shared).await,
            }
        });
    }
}

/// What a connection asked for, once judged.
struct Asked {
    via: &'static str,
    target: Target,
    port: u16,
}

impl Shared {
    fn connection(&self, asked: &Asked, decision: &'static str) -> Connection {
        Connection {
            time: crate::daemon::audit::rfc3339(SystemTime::now()),
            via: asked.via,
            host: asked.target.to_string(),
            port: asked.port,
            address: None,
            decision,
            rule: None,
            code: None,
            reason: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
        }
    }

    /// Log a refusal (or a failure).
    fn refused(&self, asked: &Asked, refusal: &Refusal) {
        let mut connection = self.connection(asked, refusal.decision());
        connection.address = refusal.address.map(|a| a.to_string());
        connection.code = Some(refusal.code);
        connection.reason = Some(refusal.message.clone());
        let index = self.note(connection, Arc::new(Bytes::default()));
        self.log.ended(index);
    }

    /// Into the job's log, and the supervisor's.
    fn note(&self, connection: Connection, bytes: Arc<Bytes>) -> Option<usize> {
        info!(
            job = %self.judge.job_id,
            "egress {} {}:{} ({}){}{}{}",
            connection.decision,
            connection.host,
            connection.port,
            connection.via,
            connection
                .address
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default(),
            connection
                .rule
                .as_deref()
                .map(|r| format!(" by rule {r}"))
                .unwrap_or_default(),
            connection
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        );
        self.log.note(connection, bytes)
    }

    /// Judge, resolve, check and connect: the upstream stream, the rule, and the address.
    async fn open(&self, asked: &Asked) -> Result<(TcpStream, String, IpAddr), Refusal> {
        let judge = &self.judge;
        let Some(rules) = &judge.rules else {
            return Err(Refusal::new(
                "no-network",
                format!(
                    "no network: policy \"{}\" gives this job network mode \"none\", so \
                     {}:{} cannot be reached; {}",
                    judge.policy, asked.target, asked.port, judge.hint
                ),
                format!(
                    "Forbidden by toolbox: policy \"{}\" gives this job no network",
                    judge.policy
                ),
            ));
        };
        let not_listed = format!(
            "Forbidden by toolbox: {}:{} is not on the allowlist of policy \"{}\"",
            asked.target, asked.port, judge.policy
        );
        let port = asked.port;
        let (rule, candidates) = match &asked.target {
            Target::Addr(addr) => {
                let Some(rule) = rules.for_addr(*addr, port) else {
                    return Err(Refusal::new(
                        "not-allowed",
                        format!(
                            "egress to {}:{port} refused: it is an address no rule of this job \
                             allows; an address is reached only through an address rule (like \
                             10.0.0.5:{port} or 192.168.0.0/16:*), and names through name \
                             rules. The job's rules (policy \"{}\"): {rules}",
                            asked.target, judge.policy
                        ),
                        not_listed,
                    ));
                };
                (rule.to_string(), vec![*addr])
            }
            Target::Name(name) => {
                let Some(rule) = rules.for_name(name, port) else {
                    return Err(Refusal::new(
                        "not-allowed",
                        format!(
                            "egress to {name}:{port} refused: no rule of this job allows it. \
                             The job's rules (policy \"{}\"): {rules}",
                            judge.policy
                        ),
                        not_listed,
                    ));
                };
                let resolved =
                    resolve(&self.resolving, name, port, RESOLVE_TIME, system_lookup).await;
                let addrs: Vec<IpAddr> = match resolved {
                    Some(Ok(addrs)) => addrs,
                    Some(Err(err)) => {
                        return Err(Refusal::new(
                            "resolve-failed",
                            format!("egress to {name}:{port}: {name} could not be resolved: {err}"),
                            format!("Bad Gateway: toolbox could not resolve {name}"),
                        ))
                    }
                    None => {
                        return Err(Refusal::new(
                            "resolve-failed",
                            format!(
                                "egress to {name}:{port}: {name} did not resolve within \
                                 {RESOLVE_TIME:?}"
                            ),
                            format!("Bad Gateway: toolbox could not resolve {name}"),
                        ))
                    }
                };
                let mut passed = Vec::new();
                let mut first_refused = None;
                for addr in addrs {
                    let addr = addr.to_canonical();
                    match special(addr) {
                        Some(kind) if rules.for_addr(addr, port).is_none() => {
                            first_refused.get_or_insert((addr, kind));
                        }
                        _ => {
                            if !passed.contains(&addr) {
                                passed.push(addr)
                            }
                        }
                    }
                }
                if passed.is_empty() {
                    let Some((addr, kind)) = first_refused else {
                        return Err(Refusal::new(
                            "resolve-failed",
                            format!("egress to {name}:{port}: {name} resolved to no address"),
                            format!("Bad Gateway: toolbox could not resolve {name}"),
                        ));
                    };
                    return Err(Refusal {
                        code: "address-refused",
                        message: format!(
                            "egress to {name}:{port} refused: {name} resolves to {addr}, a \
                             {kind} address, which only an address rule naming it may reach \
                             (rule {rule} allows the name, not that address)"
                        ),
                        short: format!(
                            "Forbidden by toolbox: {name} resolves to a {kind} address ({addr})"
                        ),
                        address: Some(addr),
                    });
                }
                (rule.to_string(), passed)
            }
        };
        let mut last_error = None;
        for addr in candidates {
            let connected = tokio::time::timeout(
                CONNECT_TIME,
                TcpStream::connect(SocketAddr::new(addr, port)),
            )
            .await;
            match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, rule, addr));
                }
                Ok(Err(err)) => last_error = Some((addr, err.to_string())),
                Err(_) => last_error = Some((addr, format!("no answer in {CONNECT_TIME:?}"))),
            }
        }
        let (addr, why) = last_error.unwrap_or_else(|| {
            (
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                "no address".into(),
            )
        });
        Err(Refusal {
            code: "connect-failed",
            message: format!(
                "egress to {}:{port}: {addr} could not be connected to: {why}",
                asked.target
            ),
            short: format!(
                "Bad Gateway: toolbox could not connect to {}:{port}",
                asked.target
            ),
            address: Some(addr),
        })
    }

    /// Log an allowed connection, and carry bytes both ways until either side is done.
    async fn relay(
        &self,
        asked: &Asked,
        rule: String,
        addr: IpAddr,
        client: TcpStream,
        upstream: TcpStream,
        first_up: &[u8],
    ) {
        let bytes = Arc::new(Bytes::default());
        let mut connection = self.connection(asked, "allowed");
        connection.address = Some(addr.to_string());
        connection.rule = Some(rule);
        let index = self.note(connection, bytes.clone());
        let totals = &self.log.bytes;
        let up = async {
            if !first_up.is_empty() {
                if write_all(&upstream, first_up).await.is_err() {
                    return;
                }
                count(&bytes.up, &totals.up, first_up.len());
            }
            let _ = pass(&client, &upstream, &bytes.up, &totals.up).await;
            let _ = nix::sys::socket::shutdown(upstream.as_raw_fd(), Shutdown::Write);
        };
        let down = async {
            let _ = pass(&upstream, &client, &bytes.down, &totals.down).await;
            let _ = nix::sys::socket::shutdown(client.as_raw_fd(), Shutdown::Write);
        };
        tokio::join!(up, down);
        self.log.ended(index);
    }
}

/// Write all of `bytes` to a stream others may be reading from at once.
async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Carry one direction until EOF or an error, counting: through a pipe with splice(2), so
/// the bytes never come up to us (a userspace copy ran at half the direct rate on our
/// 2-CPU VMs, the proxy competing with both ends for the CPUs); by copying where splice
/// is not to be had.
async fn pass(
    from: &TcpStream,
    to: &TcpStream,
    connection: &AtomicU64,
    total: &AtomicU64,
) -> std::io::Result<()> {
    use nix::fcntl::{splice, SpliceFFlags};
    let Ok((pipe_r, pipe_w)) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
    else {
        return copy(from, to, connection, total).await;
    };
    crate::sys::set_pipe_size(&pipe_w, PIPE as i32);
    let capacity = crate::sys::pipe_size(pipe_w.as_fd()).max(4096);
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
    // The pipe fills from one socket while it drains into the other: neither end waits
    // for the other's turn. A pipe holds a number of buffers, not of bytes, and the
    // socket's may be small: it can be full short of its capacity. EAGAIN then says
    // nothing of the socket, whose readiness must stay as it is (`full`) — else, with
    // the rest of the stream already queued, no wakeup would ever come for it.
    let (mut held, mut eof, mut full, mut moved) = (0usize, false, false, false);
    loop {
        let mut progressed = false;
        if !eof && !full && held < capacity {
            let spliced = from.try_io(Interest::READABLE, || {
                match splice(from, None, &pipe_w, None, capacity - held, flags) {
                    Err(nix::errno::Errno::EAGAIN)
                        if held > 0 && crate::sys::queued(from.as_fd()).unwrap_or(0) > 0 =>
                    {
                        Ok(None)
                    }
                    spliced => spliced.map(Some).map_err(std::io::Error::from),
                }
            });
            match spliced {
                Ok(Some(n)) => {
                    eof = n == 0;
                    held += n;
                    progressed = true;
                    moved = true;
                }
                Ok(None) => full = true,
                Err(e) if would_block(&e) => {}
                // splice(2) is not to be had here: copy (only before anything moved).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !moved => {
                    return copy(from, to, connection, total).await;
                }
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            let spliced = to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, held, flags).map_err(std::io::Error::from)
            });
            match spliced {
                Ok(n) => {
                    held -= n;
                    full = false;
                    count(connection, total, n);
                    progressed = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if eof && held == 0 {
            return Ok(());
        }
        if !progressed {
            let fill = !eof && !full && held < capacity;
            tokio::select! {
                ready = from.readable(), if fill => ready?,
                ready = to.writable(), if held > 0 => ready?,
            }
        }
    }
}

fn count(connection: &AtomicU64, total: &AtomicU64, n: usize) {
    connection.fetch_add(n as u64, Ordering::Relaxed);
    total.fetch_add(n as u64, Ordering::Relaxed);
}

/// Copy until EOF or an error, counting.
async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    connection: &AtomicU64,
    total: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        from.readable().await?;
        match from.try_read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                write_all(to, &buffer[..n]).await?;
                count(connection, total, n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

// --- What a tunnel to a name carries: TLS must ask for that name, and HTTP name it ---

/// The largest TLS record (2^14) and its header.
const MAX_RECORD: usize = 5 + (1 << 14);

/// What a tunnel's client sends first, as far as the proxy can tell.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// A TLS record (a handshake record's first byte).
    Tls,
    /// An HTTP/1 request line's method and space.
    Http,
    /// Something else, not looked into.
    Other,
    /// Too little yet to tell.
    Unknown,
}

fn opening(first: &[u8]) -> Opening {
    if first.first() == Some(&0x16) {
        return Opening::Tls;
    }
    // A method and a space, after any empty lines (which servers skip). Methods in use
    // are letters, and short. Any text protocol whose first word looks like one is judged
    // as HTTP, and fails that rather than slip by: TLS and SSH never start like that.
    let Some(start) = first.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
        return Opening::Unknown;
    };
    for (i, &b) in first[start..].iter().enumerate().take(17) {
        if b == b' ' {
            return if i > 0 { Opening::Http } else { Opening::Other };
        }
        if !b.is_ascii_alphabetic() {
            return Opening::Other;
        }
    }
    if first.len() - start > 16 {
        Opening::Other
    } else {
        Opening::Unknown
    }
}

/// Through a tunnel to a name, what the client sends must be for that name: else a tunnel
/// to an allowed name on a shared front (a CDN) would reach any other site behind it.
/// - TLS must ask for the name (SNI). A ClientHello without it, with it encrypted (ECH),
///   or cut across records is refused too.
/// - Plain HTTP/1 must name it in its `Host`; the request goes on with `Connection:
///   close` (as a plain request through the proxy does), so a second one on the tunnel
///   cannot name another. HTTP/2 without TLS (h2c) is refused: its host is compressed
///   inside frames the proxy does not read.
///
/// A tunnel to an address is not judged (no name to hold it to). A far end that speaks
/// first (SSH, SMTP) is not the client's to judge: nothing is read. What is read goes
/// into `first` (rewritten, for HTTP), to be sent on.
async fn tunnel_check(
    client: &mut TcpStream,
    upstream: &TcpStream,
    asked: &Asked,
    first: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let Target::Name(name) = &asked.target else {
        return Ok(());
    };
    if first.is_empty() {
        tokio::select! {
            ready = client.readable() => {
                if ready.is_err() {
                    return Ok(());
                }
            }
            _ = upstream.readable() => return Ok(()),
        }
    }
    let deadline = tokio::time::Instant::now() + REQUEST_TIME;
    // Read until what came can be judged: a whole TLS record, a whole HTTP head. A client
    // that stops short of one — it closes, runs past the size, or the time — is judged on
    // what it sent.
    let mut closed = false;
    let complete = loop {
        let kind = opening(first);
        let whole = match kind {
            Opening::Other => return Ok(()),
            Opening::Unknown => false,
            Opening::Tls => {
                first.len() >= 5
                    && first.len() >= 5 + usize::from(u16::from_be_bytes([first[3], first[4]]))
            }
            Opening::Http => head_end(first).is_some(),
        };
        if whole {
            break true;
        }
        let limit = match kind {
            Opening::Http => MAX_HEAD,
            _ => MAX_RECORD,
        };
        if first.len() >= limit {
            break false;
        }
        let mut chunk = [0u8; 4096];
        let want = (limit - first.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, client.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&chunk[..n]),
            Ok(_) => {
                closed = true;
                break false;
            }
            Err(_) => break false,
        }
    };
    let refuse = |why: String| {
        Refusal::new(
            "http-host",
            format!("egress to {name}:{} refused: {why}", asked.port),
            format!("Forbidden by toolbox: the HTTP request is not for {name}"),
        )
    };
    match opening(first) {
        Opening::Http => tunnel_http(first, complete, name, asked.port).map_err(refuse),
        Opening::Tls => tls_name(first, name, asked.port),
        Opening::Other => Ok(()),
        // Closed: what it sent is all the far end gets.
        Opening::Unknown if closed => Ok(()),
        // Still open, with too little to tell (empty lines, a word): it could go on with
        // an HTTP request, unread.
        Opening::Unknown => Err(refuse(format!(
            "in {REQUEST_TIME:?} and {} KiB it sent only what could be the start of an HTTP \
             request, too little to see the host it names",
            MAX_RECORD / 1024
        ))),
    }
}

/// Where an HTTP head ends (after its blank line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Judge a tunnel's first HTTP request (`first`, which the caller read up to the end of its
/// head, or as far as it could: `complete`) against the tunnel's name, and rewrite it to
/// be sent on: origin form kept, `Connection: close`.
fn tunnel_http(first: &mut Vec<u8>, complete: bool, name: &str, port: u16) -> Result<(), String> {
    if !complete {
        return Err(format!(
            "it began an HTTP request and did not finish its head (within {} KiB and \
             {REQUEST_TIME:?}), which the proxy must read to see the host it names",
            MAX_HEAD / 1024
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut request = httparse::Request::new(&mut headers);
    let end = match request.parse(first) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Err("its HTTP request head is cut".into()),
        Err(_) if first.starts_with(b"PRI * HTTP/2") => {
            return Err(
                "it speaks HTTP/2 without TLS (h2c), whose host the proxy cannot read; use \
                 TLS, or HTTP/1"
                    .into(),
            )
        }
        Err(err) => {
            return Err(format!(
                "it began like an HTTP request but is not one ({err})"
            ))
        }
    };
    let method = request.method.unwrap_or_default();
    let path = request.path.unwrap_or_default();
    let hosts: Vec<String> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        .collect();
    let [host] = hosts.as_slice() else {
        return Err(format!(
            "its HTTP request has {} Host headers; it needs one, naming {name}",
            hosts.len()
        ));
    };
    // The port in it routes nothing on a front: the host is what must agree.
    let agrees = authority(host, Some(port))
        .is_ok_and(|(target, _)| target == Target::Name(name.to_string()));
    if !agrees {
        return Err(format!(
            "the tunnel is to {name}, but its HTTP request is for {host}; a tunnel reaches \
             only the name it was allowed for"
        ));
    }
    if !path.starts_with('/') && path != "*" {
        return Err(format!(
            "its HTTP request's target ({path}) is not a path on {name}"
        ));
    }
    let mut rewritten = forwarded_head(
        method,
        path,
        request.version.unwrap_or(1),
        request.headers,
        None,
    );
    rewritten.extend_from_slice(&first[end..]);
    *first = rewritten;
    Ok(())
}

/// Judge a ClientHello (`record`, read as far as the client sent it) against the tunnel's
/// name.
fn tls_name(record: &[u8], name: &str, port: u16) -> Result<(), Refusal> {
    let refuse = |why: String| {
        Refusal::new(
            "tls-name",
            format!("egress to {name}:{port} refused: {why}"),
            format!("Forbidden by toolbox: the TLS name is not {name}"),
        )
    };
    match client_hello_name(record) {
        Ok(Some(sni)) if sni == *name => Ok(()),
        Ok(Some(sni)) => Err(refuse(format!(
            "the tunnel is to {name}, but its TLS asks for {sni}; a tunnel reaches only the \
             name it was allowed for"
        ))),
        Ok(None) => Err(refuse(format!(
            "its TLS names no server (no SNI), so the tunnel could reach any site at \
             {name}'s address"
        ))),
        Err(why) => Err(refuse(why.to_string())),
    }
}

/// The server name of a TLS ClientHello in `record` (one whole record, header included):
/// `None` if it names none; an error if it is not one, is cut, or hides the name (ECH).
fn client_hello_name(record: &[u8]) -> Result<Option<String>, &'static str> {
    const CUT: &str = "its TLS ClientHello is cut or malformed";
    let take = |at: &mut usize, n: usize| -> Result<&[u8], &'static str> {
        let bytes = record.get(*at..*at + n).ok_or(CUT)?;
        *at += n;
        Ok(bytes)
    };
    let u8_at = |at: &mut usize| take(at, 1).map(|b| usize::from(b[0]));
    let u16_at =
        |at: &mut usize| take(at, 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let mut at = 0;
    let header = take(&mut at, 5)?;
    if header[0] != 0x16 {
        return Err("not a TLS handshake");
    }
    let handshake = take(&mut at, 4)?;
    if handshake[0] != 1 {
        return Err("its first TLS message is not a ClientHello");
    }
    let length = usize::from(handshake[1]) << 16
        | usize::from(handshake[2]) << 8
        | usize::from(handshake[3]);
    if 9 + length > record.len() {
        return Err("its TLS ClientHello spans records, which the proxy does not read");
    }
    take(&mut at, 2 + 32)?; // version, random
    let n = u8_at(&mut at)?;
    take(&mut at, n)?; // session id
    let n = u16_at(&mut at)?;
    take(&mut at, n)?; // cipher suites
    let n = u8_at(&mut at)?;
    take(&mut at, n)?; // compression methods
    if at == 9 + length {
        return Ok(None); // no extensions
    }
    let end = at + u16_at(&mut at)?;
    let mut name = None;
    while at < end {
        let kind = u16_at(&mut at)?;
        let n = u16_at(&mut at)?;
        let mut inner = at;
        take(&mut at, n)?;
        match kind {
            // server_name: a list of (type, name); host_name is type 0.
            0x0000 => {
                let list_end = inner + u16_at(&mut inner)?;
                while inner < list_end {
                    let kind = u8_at(&mut inner)?;
                    let n = u16_at(&mut inner)?;
                    let bytes = take(&mut inner, n)?;
                    if kind == 0 {
                        let text = std::str::from_utf8(bytes).map_err(|_| CUT)?;
                        name = Some(
                            check_name(text)
                                .map_err(|_| "its TLS server name is not a host name")?,
                        );
                    }
                }
            }
            // encrypted_client_hello
            0xfe0d => {
                return Err(
                    "its TLS ClientHello encrypts the server name (ECH), which the proxy must see",
                );
            }
            _ => {}
        }
    }
    Ok(name)
}

// --- HTTP ---

/// One client of the HTTP proxy: a CONNECT, or one plain HTTP request in absolute form.
async fn http(mut client: TcpStream, shared: &Shared) {
    let head = match tokio::time::timeout(REQUEST_TIME, read_head(&mut client)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            let refusal = Refusal::new(
                "bad-request",
                "the request head is over 16 KiB".into(),
                BAD_REQUEST.into(),
            );
            let _ = answer(&mut client, 431, &refusal).await;
            return;
        }
        _ => return,
    };
    let (request, rest) = match parse_request(&head) {
        Ok(parsed) => parsed,
        Err(message) => {
            let refusal = Refusal::new("bad-request", message, BAD_REQUEST.into());
            let _ = answer(&mut client, 400, &refusal).await;
            return;
        }
    };
    let asked = Asked {
        via: if request.connect { "connect" } else { "http" },
        target: request.target.clone(),
        port: request.port,
    };
    if let Some(message) = &request.refused {
        let refusal = Refusal::new("bad-request", message.clone(), BAD_REQUEST.into());
        shared.refused(&asked, &refusal);
        let _ = answer(&mut client, 400, &refusal).await;
        return;
    }
    match shared.open(&asked).await {
        Ok((upstream, rule, addr)) => {
            let first_up = if request.connect {
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut first = head[rest..].to_vec();
                if let Err(refusal) = tunnel_check(&mut client, &upstream, &asked, &mut first).await
                {
                    // The client has its 200 already: the tunnel just closes.
                    shared.refused(&asked, &refusal);
                    return;
                }
                first
            } else {
                // The request goes on in origin form, the connection closing after it: a
                // second request on it would go to this same address whatever it named.
                let mut forwarded = request.forwarded;
                forwarded.extend_from_slice(&head[rest..]);
                forwarded
            };
            shared
                .relay(&asked, rule, addr, client, upstream, &first_up)
                .await;
        }
        Err(refusal) => {
            shared.refused(&asked, &refusal);
            let status = match refusal.decision() {
                "failed" => 502,
                _ => 403,
            };
            let _ = answer(&mut client, status, &refusal).await;
        }
    }
}

/// Read up to the end of the head (`\r\n\r\n`); `None` if it runs past [`MAX_HEAD`]. What
/// came after the head stays at the end of the buffer (see [`parse_request`]).
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if head_end(&head[searched_from..]).is_some() {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// A parsed proxy request.
#[derive(Debug)]
struct Request {
    connect: bool,
    target: Target,
    port: u16,
    /// For a plain request: the head to send on (origin form, `Connection: close`).
    forwarded: Vec<u8>,
    /// Why it is refused though it parsed (a `Host` that disagrees with the URL).
    refused: Option<String>,
}

/// Parse a request head: the request, and where what followed the head starts.
fn parse_request(bytes: &[u8]) -> Result<(Request, usize), String> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut request = httparse::Request::new(&mut headers);
    let end = match request.parse(bytes) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Err("an incomplete request head".into()),
        Err(err) => return Err(format!("not an HTTP request: {err}")),
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let version = request.version.unwrap_or(1);
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = authority(target, None)?;
        let request = Request {
            connect: true,
            target: host,
            port,
            forwarded: Vec::new(),
            refused: None,
        };
        return Ok((request, end));
    }
    let Some(rest) = strip_prefix_ignore_case(target, "http://") else {
        return Err(if strip_prefix_ignore_case(target, "https://").is_some() {
            format!("{target}: an https:// URL goes through CONNECT, not a plain request")
        } else {
            format!(
                "{method} {target}: this is the job's egress proxy; send requests to it with \
                 an absolute URL (http://host/path) or CONNECT host:port, as HTTP_PROXY makes \
                 tools do"
            )
        });
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority_text, path) = rest.split_at(split);
    let (host, port) = authority(authority_text, Some(80))?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('/') => p.split('#').next().unwrap_or("/").to_string(),
        p => format!("/{}", p.split('#').next().unwrap_or_default()),
    };
    let mut refused = None;
    let mut saw_host = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("host") {
            saw_host = true;
            let value = String::from_utf8_lossy(header.value);
            let agrees =
                authority(value.trim(), Some(80)).is_ok_and(|(h, p)| h == host && p == port);
            if !agrees {
                refused = Some(format!(
                    "the Host header ({}) disagrees with the URL's host ({host}:{port}); \
                     a request goes where its URL says, and only there",
                    value.trim()
                ));
            }
        }
    }
    let shown = match port {
        80 => host.to_string(),
        _ => format!("{host}:{port}"),
    };
    let missing_host = (!saw_host).then_some(shown.as_str());
    let forwarded = forwarded_head(method, &path, version, request.headers, missing_host);
    let request = Request {
        connect: false,
        target: host,
        port,
        forwarded,
        refused,
    };
    Ok((request, end))
}

/// A request head to send on: the request line in origin form, the headers but the
/// hop-by-hop and proxy ones, `host` as a `Host` header if given, and `Connection: close`,
/// so that a second request on the connection cannot go elsewhere.
fn forwarded_head(
    method: &str,
    path: &str,
    version: u8,
    headers: &[httparse::Header<'_>],
    host: Option<&str>,
) -> Vec<u8> {
    const HOP: [&str; 4] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
    ];
    let mut forwarded = format!("{method} {path} HTTP/1.{version}\r\n").into_bytes();
    for header in headers {
        if HOP.iter().any(|h| header.name.eq_ignore_ascii_case(h)) {
            continue;
        }
        forwarded.extend_from_slice(header.name.as_bytes());
        forwarded.extend_from_slice(b": ");
        forwarded.extend_from_slice(header.value);
        forwarded.extend_from_slice(b"\r\n");
    }
    if let Some(host) = host {
        forwarded.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    forwarded.extend_from_slice(b"Connection: close\r\n\r\n");
    forwarded
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `host:port`, `[v6]:port`, or without the port where there is a default.
fn authority(text: &str, default_port: Option<u16>) -> Result<(Target, u16), String> {
    let bad = |why: &str| format!("{text:?} is not a host and port: {why}");
    if text.contains('@') {
        return Err(bad("credentials in the authority are not taken"));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| bad("no ']'"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after ']'"))?,
            ),
        };
        let addr: std::net::Ipv6Addr = inside.parse().map_err(|_| bad("not an IPv6 address"))?;
        (Target::Addr(IpAddr::V6(addr)), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let target = match host.parse::<std::net::Ipv4Addr>() {
            Ok(v4) => Target::Addr(IpAddr::V4(v4)),
            Err(_) => Target::Name(check_name(host).map_err(|why| bad(&why))?),
        };
        (target, port)
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("not a port"))?,
        None => default_port.ok_or_else(|| bad("no port"))?,
    };
    Ok((host, port))
}

const BAD_REQUEST: &str = "Bad Request (toolbox's egress proxy)";

/// Answer a refusal: the status, its few words as the reason phrase, the code in
/// `X-Toolbox-Egress`, the sentence as the body; and close.
async fn answer(client: &mut TcpStream, status: u16, refusal: &Refusal) -> std::io::Result<()> {
    // A reason phrase is visible ASCII and spaces.
    let phrase: String = refusal
        .short
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let body = format!("toolbox: {}\n", refusal.message);
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Toolbox-Egress: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.code,
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

// --- SOCKS5 (RFC 1928), names resolved here ---

/// SOCKS5 reply codes.
const SOCKS_GENERAL_FAILURE: u8 = 1;
const SOCKS_NOT_ALLOWED: u8 = 2;
const SOCKS_HOST_UNREACHABLE: u8 = 4;
const SOCKS_COMMAND_NOT_SUPPORTED: u8 = 7;
const SOCKS_ADDRESS_NOT_SUPPORTED: u8 = 8;

async fn socks(mut client: TcpStream, shared: &Shared) {
    let asked = match tokio::time::timeout(REQUEST_TIME, socks_request(&mut client)).await {
        Ok(Ok(Ok(asked))) => asked,
        Ok(Ok(Err(code))) => {
            let _ = socks_reply(&mut client, code).await;
            return;
        }
        _ => return,
    };
    let asked = match asked {
        Ok(asked) => asked,
        Err((asked, why)) => {
            let refusal = Refusal::new("bad-request", why, BAD_REQUEST.into());
            shared.refused(&asked, &refusal);
            let _ = socks_reply(&mut client, SOCKS_NOT_ALLOWED).await;
            return;
        }
    };
    match shared.open(&asked).await {
        Ok((upstream, rule, addr)) => {
            if socks_reply(&mut client, 0).await.is_err() {
                return;
            }
            let mut first = Vec::new();
            if let Err(refusal) = tunnel_check(&mut client, &upstream, &asked, &mut first).await {
                shared.refused(&asked, &refusal);
                return;
            }
            shared
                .relay(&asked, rule, addr, client, upstream, &first)
                .await;
        }
        Err(refusal) => {
            shared.refused(&asked, &refusal);
            let code = match refusal.code {
                "connect-failed" => SOCKS_HOST_UNREACHABLE,
                "resolve-failed" => SOCKS_HOST_UNREACHABLE,
                _ => SOCKS_NOT_ALLOWED,
            };
            let _ = socks_reply(&mut client, code).await;
        }
    }
}

/// The handshake and the request. The outer error is a reply code to send (a request the
/// log has no host for); the inner one a request to log as refused, with why.
type SocksAsked = Result<Result<Asked, (Asked, String)>, u8>;

async fn socks_request(client: &mut TcpStream) -> std::io::Result<SocksAsked> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    if greeting[0] != 5 {
        // SOCKS4 and anything else: not spoken here.
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        client.write_all(&[5, 0xff]).await?;
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    client.write_all(&[5, 0]).await?;
    let mut head = [0u8; 4];
    client.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(Err(SOCKS_GENERAL_FAILURE));
    }
    let target = match head[3] {
        1 => {
            let mut octets = [0u8; 4];
            client.read_exact(&mut octets).await?;
            Ok(Target::Addr(IpAddr::from(octets)))
        }
        4 => {
            let mut octets = [0u8; 16];
            client.read_exact(&mut octets).await?;
            Ok(Target::Addr(IpAddr::from(octets)))
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            let text = String::from_utf8_lossy(&name).into_owned();
            // An address written as a name is judged as the address.
            match text.parse::<IpAddr>() {
                Ok(addr) => Ok(Target::Addr(addr)),
                Err(_) => check_name(&text)
                    .map(Target::Name)
                    .map_err(|why| (text, why)),
            }
        }
        _ => return Ok(Err(SOCKS_ADDRESS_NOT_SUPPORTED)),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    if head[1] != 1 {
        // Only CONNECT: no BIND, no UDP ASSOCIATE.
        return Ok(Err(SOCKS_COMMAND_NOT_SUPPORTED));
    }
    Ok(Ok(match target {
        Ok(target) => Ok(Asked {
            via: "socks",
            target,
            port,
        }),
        Err((text, why)) => Err((
            Asked {
                via: "socks",
                target: Target::Name(text.escape_debug().to_string()),
                port,
            },
            why,
        )),
    }))
}

async fn socks_reply(client: &mut TcpStream, code: u8) -> std::io::Result<()> {
    client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    if code != 0 {
        client.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn parse(text: &str) -> Result<Request, String> {
        parse_request(text.as_bytes()).map(|(request, _)| request)
    }

    #[test]
    fn connect_requests_name_a_host_and_port() {
        let r = parse("CONNECT PyPI.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").expect("ok");
        assert!(r.connect);
        assert_eq!(r.target, Target::Name("pypi.org".into()));
        assert_eq!(r.port, 443);
        let r = parse("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").expect("ok");
        assert_eq!(r.target, Target::Addr("::1".parse().expect("ip")));
        let r = parse("CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n").expect("ok");
        assert_eq!(r.target, Target::Addr("10.0.0.1".parse().expect("ip")));
        for bad in [
            "CONNECT pypi.org HTTP/1.1\r\n\r\n",
            "CONNECT user@pypi.org:443 HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org:0 HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n",
            "CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_requests_go_on_in_origin_form_and_close() {
        let text =
            "GET http://Example.com:8080/a/b?c=d#frag HTTP/1.1\r\nHost: example.com:8080\r\n\
                    Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\
                    Proxy-Authorization: Basic x\r\nAccept: */*\r\n\r\n";
        let r = parse(text).expect("ok");
        assert!(!r.connect);
        assert_eq!(r.target, Target::Name("example.com".into()));
        assert_eq!(r.port, 8080);
        assert!(r.refused.is_none());
        assert_eq!(
            String::from_utf8_lossy(&r.forwarded),
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        // No path, no Host: both supplied.
        let r = parse("GET http://10.1.2.3 HTTP/1.0\r\n\r\n").expect("ok");
        assert_eq!(
            String::from_utf8_lossy(&r.forwarded),
            "GET / HTTP/1.0\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n"
        );
        // The body, after the head, stays where it was.
        let body =
            "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc";
        let (_, end) = parse_request(body.as_bytes()).expect("ok");
        assert_eq!(&body[end..], "abc");
    }

    #[test]
    fn a_host_header_that_disagrees_with_the_url_is_refused() {
        for host in [
            "evil.example",
            "a.example:81",
            "169.254.169.254",
            "a.example.evil",
        ] {
            let text = format!("GET http://a.example/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let r = parse(&text).expect("parses");
            let refused = r.refused.expect("refused");
            assert!(refused.contains("disagrees"), "{refused}");
        }
        for host in ["a.example", "A.EXAMPLE", "a.example:80", "a.example."] {
            let text = format!("GET http://a.example/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(parse(&text).expect("parses").refused.is_none(), "{host}");
        }
    }

    /// A ClientHello record with these extensions (type, body).
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 3, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        (0, list)
    }

    #[test]
    fn a_client_hello_s_server_name_is_read_and_ech_or_a_cut_one_refused() {
        let alpn = (16u16, vec![0, 3, 2, b'h', b'2']);
        let hello = client_hello(&[alpn.clone(), sni("PyPI.org"), (43, vec![2, 3, 4])]);
        assert_eq!(client_hello_name(&hello), Ok(Some("pypi.org".into())));
        assert_eq!(client_hello_name(&client_hello(&[alpn])), Ok(None));
        let ech = client_hello(&[sni("cover.example"), (0xfe0d, vec![0; 8])]);
        assert!(client_hello_name(&ech).is_err_and(|e| e.contains("ECH")));
        // Cut anywhere: refused, never a panic.
        for end in 0..hello.len() {
            assert!(client_hello_name(&hello[..end]).is_err(), "cut at {end}");
        }
        let mut other = hello.clone();
        other[5] = 2; // a ServerHello
        assert!(client_hello_name(&other).is_err());
        assert!(client_hello_name(&client_hello(&[sni("10.0.0.1")])).is_err());
    }

    #[test]
    fn what_a_tunnel_opens_with_is_told_apart() {
        let hello = client_hello(&[sni("a.example")]);
        assert_eq!(opening(&hello[..1]), Opening::Tls);
        let many_empty_lines = format!("{}GET / HTTP/1.1", "\r\n".repeat(100));
        for http in [
            "GET ",
            "\r\nGET / HTTP/1.1",
            "get /",
            "OPTIONS * HTTP/1.1",
            &many_empty_lines,
        ] {
            assert_eq!(opening(http.as_bytes()), Opening::Http, "{http:?}");
        }
        for other in [
            "SSH-2.0-OpenSSH_9.2\r\n",
            " GET",
            "\x00\x01",
            "ABCDEFGHIJKLMNOPQ ",
        ] {
            assert_eq!(opening(other.as_bytes()), Opening::Other, "{other:?}");
        }
        for unknown in ["", "GE", "\r\n", "POST", &"\r\n".repeat(1000)] {
            assert_eq!(opening(unknown.as_bytes()), Opening::Unknown, "{unknown:?}");
        }
    }

    fn tunnel(text: &str, complete: bool) -> Result<String, String> {
        let mut first = text.as_bytes().to_vec();
        tunnel_http(&mut first, complete, "a.example", 80)
            .map(|()| String::from_utf8_lossy(&first).into_owned())
    }

    #[test]
    fn a_tunnel_s_http_must_name_its_host_and_goes_on_closing() {
        let sent = tunnel(
            "GET /x HTTP/1.1\r\nHost: A.example:80\r\nConnection: keep-alive\r\n\r\nrest",
            true,
        )
        .expect("agrees");
        assert_eq!(
            sent,
            "GET /x HTTP/1.1\r\nHost: A.example:80\r\nConnection: close\r\n\r\nrest"
        );
        // The port in Host routes nothing; the host is what must agree.
        assert!(tunnel("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", true).is_ok());
        for (text, why) in [
            (
                "GET / HTTP/1.1\r\nHost: b.example\r\n\r\n",
                "is for b.example",
            ),
            (
                "\r\nget / HTTP/1.1\r\nHost: b.example\r\n\r\n",
                "is for b.example",
            ),
            (
                "GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
                "is for 10.0.0.1",
            ),
            ("GET / HTTP/1.0\r\n\r\n", "0 Host headers"),
            (
                "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
                "2 Host headers",
            ),
            (
                "GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                "not a path",
            ),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c"),
            ("GET / HTTP/1.1\r\nHost: a.exa", "did not finish"),
            ("SET key value\r\n\r\n", "not one"),
        ] {
            let complete = head_end(text.as_bytes()).is_some();
            let err = tunnel(text, complete).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    static RESOLVING_NOW: AtomicUsize = AtomicUsize::new(0);
    static RESOLVING_MOST: AtomicUsize = AtomicUsize::new(0);

    fn slow_lookup(_: &str, _: u16) -> std::io::Result<Vec<IpAddr>> {
        let now = RESOLVING_NOW.fetch_add(1, Ordering::SeqCst) + 1;
        RESOLVING_MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        RESOLVING_NOW.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1))])
    }

    fn slower_lookup(_: &str, _: u16) -> std::io::Result<Vec<IpAddr>> {
        std::thread::sleep(Duration::from_secs(1));
        Ok(Vec::new())
    }

    #[test]
    fn a_job_resolves_a_few_names_at_once_and_a_timeout_does_not_free_a_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let resolving = Arc::new(Semaphore::new(RESOLVING));
            // Three times as many names as may be resolved at once, with time for all.
            let mut set = JoinSet::new();
            for i in 0..3 * RESOLVING {
                let resolving = resolving.clone();
                set.spawn(async move {
                    let name = format!("n{i}.test");
                    let within = Duration::from_secs(60);
                    resolve(&resolving, &name, 443, within, slow_lookup).await
                });
            }
            while let Some(done) = set.join_next().await {
                assert!(done.expect("task").expect("in time").is_ok());
            }
            let most = RESOLVING_MOST.load(Ordering::SeqCst);
            assert!((1..=RESOLVING).contains(&most), "{most} at once");
            // Given up on, the lookup still runs, and still holds its permit.
            let within = Duration::from_millis(20);
            let late = resolve(&resolving, "slow.test", 443, within, slower_lookup);
            assert!(late.await.is_none());
            assert_eq!(resolving.available_permits(), RESOLVING - 1);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while resolving.available_permits() < RESOLVING {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the permit never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    #[test]
    fn requests_that_are_not_for_a_proxy_are_told_how() {
        let err =
            parse("GET /simple/ HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n").expect_err("origin");
        assert!(err.contains("egress proxy"), "{err}");
        let err = parse("GET https://pypi.org/ HTTP/1.1\r\n\r\n").expect_err("https");
        assert!(err.contains("CONNECT"), "{err}");
    }
}
