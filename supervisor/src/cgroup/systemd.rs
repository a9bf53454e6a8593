//! Asking systemd for a cgroup of toolbox's own: a transient scope with `Delegate=yes` that
//! toolbox itself is moved into (`StartTransientUnit` with `PIDs=[own pid]`). The one D-Bus
//! call toolbox makes, bounded by a deadline, its failure explained.
//!
//! As root it talks to systemd directly on `/run/systemd/private` (peer to peer: no
//! dbus-daemon needed, no `Hello`, and systemd sends every signal there unasked), falling
//! back to the system bus (`Hello`, then `AddMatch` and `Subscribe`: through dbus-daemon
//! systemd sends job signals only while someone subscribed). The wait for the job's
//! `JobRemoved` is armed before the call, so an answer cannot slip past; only the result
//! `done` counts. The unit goes away when its last process — toolbox — exits
//! (`CollectMode=inactive-or-failed` even if it failed).
//!
//! The client is our own, in the manner of youki's `dbus_native`: the handful of messages
//! this needs, marshalled and parsed by hand (D-Bus specification, "Message Protocol").
//! zbus 5 was tried first and measured: it panics on systemd's private socket (systemd
//! sends from the well-known name `org.freedesktop.systemd1`, which zbus insists must be a
//! unique name), and linked into `toolbox` it cost every run 2.1 MB of code, 2400
//! relocations and 24 page faults (~0.2 ms here) on every host, for a call only a login
//! shell on a systemd host makes. cgroups-rs's client goes through zbus on the system bus
//! only and does not wait for the job.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long systemd may take to start the scope. It takes milliseconds on a normal host and
/// about 1.5 s in our TCG test VM; under load it has been seen to take seconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

const PRIVATE_SOCKET: &str = "/run/systemd/private";
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// Bounds on what we accept from the other end: systemd's answers here are tiny.
const MAX_HEADER: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("reach systemd: {PRIVATE_SOCKET}: {private}; the system bus: {bus}")]
    Connect { private: String, bus: String },
    #[error("StartTransientUnit {unit}: {name}: {message}")]
    Refused {
        unit: String,
        name: String,
        message: String,
    },
    #[error("systemd's job for {unit} ended {result:?}, not \"done\" (journalctl -u {unit} may say why)")]
    JobFailed { unit: String, result: String },
    #[error("systemd did not start {unit} within {DEADLINE:?}")]
    Timeout { unit: String },
    #[error("talk to systemd: {0}")]
    Io(String),
    #[error("a malformed message from systemd: {0}")]
    Malformed(&'static str),
}

/// A transient scope to move a process into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The unit name, `*.scope`.
    pub unit: String,
    /// The slice it goes in (a unit name such as `user-1000.slice`).
    pub slice: String,
    pub description: String,
    pub pid: u32,
}

/// Start `scope` with `scope.pid` in it, and wait until systemd says the job is done.
/// Returns the unit name it got: if the name is taken (a scope of that name still holds a
/// process), a suffix makes another.
pub fn start_scope(scope: &Scope) -> Result<String, SystemdError> {
    let deadline = Instant::now() + DEADLINE;
    let mut bus = match Bus::connect(PRIVATE_SOCKET, true, deadline) {
        Ok(bus) => bus,
        Err(private) => {
            let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
            let path = address
                .as_deref()
                .and_then(|a| a.strip_prefix("unix:path="))
                .map(|p| p.split(',').next().unwrap_or(p))
                .unwrap_or(SYSTEM_BUS);
            Bus::connect(path, false, deadline).map_err(|bus| SystemdError::Connect {
                private: private.to_string(),
                bus: bus.to_string(),
            })?
        }
    };
    let mut unit = scope.unit.clone();
    let job = loop {
        let serial = bus.next_serial();
        bus.send(&start_transient_unit(serial, scope, &unit))
            .map_err(|e| stalled(e, &scope.unit))?;
        match bus.reply(serial).map_err(|e| stalled(e, &scope.unit))? {
            Ok(reply) => {
                break Reader::new(&reply.body, reply.big_endian)
                    .string()
                    .ok_or(SystemdError::Malformed("StartTransientUnit's reply"))?
            }
            Err((name, _)) if name.ends_with(".UnitExists") && unit == scope.unit => {
                unit = format!(
                    "{}-{:x}.scope",
                    scope.unit.trim_end_matches(".scope"),
                    nanos()
                );
            }
            Err((name, message)) => {
                return Err(SystemdError::Refused {
                    unit,
                    name,
                    message,
                })
            }
        }
    };
    let result = bus.job_removed(&job).map_err(|e| stalled(e, &scope.unit))?;
    if result == "done" {
        Ok(unit)
    } else {
        Err(SystemdError::JobFailed { unit, result })
    }
}

fn io(err: std::io::Error) -> SystemdError {
    SystemdError::Io(err.to_string())
}

fn stalled(err: std::io::Error, unit: &str) -> SystemdError {
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => SystemdError::Timeout {
            unit: unit.to_string(),
        },
        std::io::ErrorKind::InvalidData => SystemdError::Malformed("see the D-Bus specification"),
        _ => io(err),
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The call `StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux)`.
fn start_transient_unit(serial: u32, scope: &Scope, unit: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(unit);
    // Mode "fail": never replace a job already queued for this name.
    w.string("fail");
    w.array(8, |w| {
        w.property("Description", Value::Str(&scope.description));
        w.property("Slice", Value::Str(&scope.slice));
        // The subtree is toolbox's: it makes its leaf and its jobs' cgroups there.
        w.property("Delegate", Value::Bool(true));
        w.property("PIDs", Value::U32s(&[scope.pid]));
        // Not ordered after anything, not stopped before shutdown's end: it lives and dies
        // with toolbox.
        w.property("DefaultDependencies", Value::Bool(false));
        w.property("CollectMode", Value::Str("inactive-or-failed"));
    });
    w.array(8, |_| {});
    method_call(
        serial,
        Some(SYSTEMD),
        SYSTEMD_PATH,
        MANAGER,
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        &w.buf,
    )
}

enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    U32s(&'a [u32]),
}

/// Marshalling, little-endian. Alignment is relative to the start of `buf`, which is the
/// start of the message or of its body (itself 8-aligned in the message).
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        while self.buf.len() % n != 0 {
            self.buf.push(0);
        }
    }

    fn byte(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A string or an object path.
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    fn signature(&mut self, s: &str) {
        self.byte(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    /// An array whose elements align to `align`: its byte length, padding, the elements.
    fn array(&mut self, align: usize, elements: impl FnOnce(&mut Writer)) {
        self.align(4);
        let at = self.buf.len();
        self.u32(0);
        self.align(align);
        let start = self.buf.len();
        elements(self);
        let len = (self.buf.len() - start) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// One `(sv)` of a property list.
    fn property(&mut self, name: &str, value: Value<'_>) {
        self.align(8);
        self.string(name);
        match value {
            Value::Str(s) => {
                self.signature("s");
                self.string(s);
            }
            Value::Bool(b) => {
                self.signature("b");
                self.u32(u32::from(b));
            }
            Value::U32s(list) => {
                self.signature("au");
                self.array(4, |w| list.iter().for_each(|v| w.u32(*v)));
            }
        }
    }

    /// A header field whose value is a string-like type (`s`, `o`) or a signature (`g`).
    fn field(&mut self, code: u8, kind: &str, value: &str) {
        self.align(8);
        self.byte(code);
        self.signature(kind);
        if kind == "g" {
            self.signature(value);
        } else {
            self.string(value);
        }
    }
}

/// A method call message, as the specification lays it out.
fn method_call(
    serial: u32,
    destination: Option<&str>,
    path: &str,
    interface: &str,
    member: &str,
    signature: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.byte(b'l');
    w.byte(1); // METHOD_CALL
    w.byte(0);
    w.byte(1); // protocol version
    w.u32(body.len() as u32);
    w.u32(serial);
    w.array(8, |w| {
        w.field(1, "o", path);
        w.field(2, "s", interface);
        w.field(3, "s", member);
        if let Some(destination) = destination {
            w.field(6, "s", destination);
        }
        if !signature.is_empty() {
            w.field(8, "g", signature);
        }
    });
    w.align(8);
    w.buf.extend_from_slice(body);
    w.buf
}

/// Reading what the other end sent, either byte order.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], big_endian: bool) -> Self {
        Reader {
            buf,
            pos: 0,
            big_endian,
        }
    }

    fn align(&mut self, n: usize) {
        self.pos = self.pos.div_ceil(n) * n;
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.align(4);
        let bytes: [u8; 4] = self.buf.get(self.pos..self.pos + 4)?.try_into().ok()?;
        self.pos += 4;
        Some(if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    }

    fn text(&mut self, len: usize) -> Option<String> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        if self.buf.get(self.pos + len) != Some(&0) {
            return None;
        }
        self.pos += len + 1;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// A string or an object path.
    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Option<String> {
        let len = usize::from(self.byte()?);
        self.text(len)
    }
}

/// One message received, as far as we look at it.
#[derive(Debug, Default)]
struct Incoming {
    kind: u8,
    reply_serial: Option<u32>,
    interface: Option<String>,
    member: Option<String>,
    error_name: Option<String>,
    body: Vec<u8>,
    big_endian: bool,
}

/// The job and result of a `JobRemoved(u id, o job, s unit, s result)` signal.
fn job_removed(message: &Incoming) -> Option<(String, String)> {
    if message.kind != SIGNAL
        || message.interface.as_deref() != Some(MANAGER)
        || message.member.as_deref() != Some("JobRemoved")
    {
        return None;
    }
    let mut r = Reader::new(&message.body, message.big_endian);
    let (_id, job, _unit, result) = (r.u32()?, r.string()?, r.string()?, r.string()?);
    Some((job, result))
}

const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Parse a whole message (fixed header, header fields, body).
fn parse(fixed: &[u8; 16], rest: &[u8]) -> std::io::Result<Incoming> {
    let big_endian = match fixed[0] {
        b'l' => false,
        b'B' => true,
        _ => return Err(invalid("byte order")),
    };
    let mut message = fixed.to_vec();
    message.extend_from_slice(rest);
    let mut r = Reader::new(&message, big_endian);
    r.pos = 4;
    let body_len = r.u32().ok_or(invalid("length"))? as usize;
    let _serial = r.u32();
    let fields_len = r.u32().ok_or(invalid("fields"))? as usize;
    let fields_end = 16 + fields_len;
    let mut incoming = Incoming {
        kind: fixed[1],
        big_endian,
        ..Incoming::default()
    };
    while r.pos < fields_end {
        r.align(8);
        if r.pos >= fields_end {
            break;
        }
        let code = r.byte().ok_or(invalid("field code"))?;
        let kind = r.signature().ok_or(invalid("field signature"))?;
        match kind.as_str() {
            "s" | "o" => {
                let value = r.string().ok_or(invalid("field value"))?;
                match code {
                    2 => incoming.interface = Some(value),
                    3 => incoming.member = Some(value),
                    4 => incoming.error_name = Some(value),
                    _ => {}
                }
            }
            "u" => {
                let value = r.u32().ok_or(invalid("field value"))?;
                if code == 5 {
                    incoming.reply_serial = Some(value);
                }
            }
            "g" => {
                r.signature().ok_or(invalid("field value"))?;
            }
            "y" => {
                r.byte().ok_or(invalid("field value"))?;
            }
            _ => return Err(invalid("field type")),
        }
    }
    let body_start = fields_end.div_ceil(8) * 8;
    incoming.body = message
        .get(body_start..body_start + body_len)
        .ok_or(invalid("body"))?
        .to_vec();
    Ok(incoming)
}

/// A connection to systemd: its private socket, or the system bus.
struct Bus {
    stream: UnixStream,
    serial: u32,
    deadline: Instant,
    /// `JobRemoved` signals that came while we waited for a reply: (job, result).
    removed: Vec<(String, String)>,
}

impl Bus {
    fn connect(path: &str, direct: bool, deadline: Instant) -> std::io::Result<Bus> {
        let stream = UnixStream::connect(path)?;
        let mut bus = Bus {
            stream,
            serial: 0,
            deadline,
            removed: Vec::new(),
        };
        bus.authenticate()?;
        if !direct {
            let hello = bus.call(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                "",
                &[],
            )?;
            bus.expect_reply(hello, "Hello")?;
            let mut rule = Writer::default();
            rule.string(&format!(
                "type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}',member='JobRemoved'"
            ));
            let add = bus.call(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                &rule.buf,
            )?;
            bus.expect_reply(add, "AddMatch")?;
            let subscribe = bus.call(Some(SYSTEMD), SYSTEMD_PATH, MANAGER, "Subscribe", "", &[])?;
            bus.expect_reply(subscribe, "Subscribe")?;
        }
        Ok(bus)
    }

    /// SASL EXTERNAL with our uid (the socket's credentials say the rest), then BEGIN.
    fn authenticate(&mut self) -> std::io::Result<()> {
        let uid = nix::unistd::Uid::effective().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        self.stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let line = self.line()?;
        if !line.starts_with("OK ") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("authentication refused: {line}"),
            ));
        }
        self.stream.write_all(b"BEGIN\r\n")
    }

    fn remaining(&self) -> std::io::Result<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    }

    /// One line of the authentication exchange, read a byte at a time: nothing after it
    /// may be consumed.
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            self.stream.set_read_timeout(Some(self.remaining()?))?;
            if self.stream.read(&mut byte)? == 0 || line.len() > 512 {
                return Err(invalid("authentication"));
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    fn call(
        &mut self,
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: &[u8],
    ) -> std::io::Result<u32> {
        let serial = self.next_serial();
        self.send(&method_call(
            serial,
            destination,
            path,
            interface,
            member,
            signature,
            body,
        ))?;
        Ok(serial)
    }

    fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    fn send(&mut self, message: &[u8]) -> std::io::Result<()> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        self.stream.write_all(message)
    }

    fn receive(&mut self) -> std::io::Result<Incoming> {
        let mut fixed = [0u8; 16];
        self.read_exact(&mut fixed)?;
        let number = |at: usize| {
            let bytes = [fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]];
            if fixed[0] == b'B' {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        let (body_len, fields_len) = (number(4) as usize, number(12) as usize);
        if fields_len > MAX_HEADER || body_len > MAX_BODY {
            return Err(invalid("too large"));
        }
        let mut rest = vec![0u8; (16 + fields_len).div_ceil(8) * 8 - 16 + body_len];
        self.read_exact(&mut rest)?;
        parse(&fixed, &rest)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            self.stream.set_read_timeout(Some(self.remaining()?))?;
            match self.stream.read(&mut buf[done..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// The reply to call `serial`: its body, or the error's name and message. Job signals
    /// that arrive meanwhile are kept for [`Bus::job_removed`].
    #[allow(clippy::type_complexity)]
    fn reply(&mut self, serial: u32) -> std::io::Result<Result<Incoming, (String, String)>> {
        loop {
            let message = self.receive()?;
            if message.kind == SIGNAL {
                self.keep_job_removed(&message);
                continue;
            }
            if message.reply_serial != Some(serial) {
                continue;
            }
            if message.kind == METHOD_RETURN {
                return Ok(Ok(message));
            }
            if message.kind == ERROR {
                let name = message.error_name.clone().unwrap_or_default();
                let text = Reader::new(&message.body, message.big_endian)
                    .string()
                    .unwrap_or_default();
                return Ok(Err((name, text)));
            }
        }
    }

    fn expect_reply(&mut self, serial: u32, what: &str) -> std::io::Result<()> {
        match self.reply(serial)? {
            Ok(_) => Ok(()),
            Err((name, message)) => {
                Err(std::io::Error::other(format!("{what}: {name}: {message}")))
            }
        }
    }

    fn keep_job_removed(&mut self, message: &Incoming) {
        if let Some((job, result)) = job_removed(message) {
            self.removed.push((job, result));
        }
    }

    /// Wait for `JobRemoved` of `job`; its result.
    fn job_removed(&mut self, job: &str) -> std::io::Result<String> {
        loop {
            if let Some((_, result)) = self.removed.iter().find(|(j, _)| j == job) {
                return Ok(result.clone());
            }
            let message = self.receive()?;
            if message.kind == SIGNAL {
                self.keep_job_removed(&message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The call as jeepney 0.9 (an independent pure-Python D-Bus implementation) marshals
    /// it: `new_method_call(..., "StartTransientUnit", "ssa(sv)a(sa(sv))", ...)
    /// .serialise(serial=7)`.
    const START_TRANSIENT_UNIT: &str = "6c0100011801000007000000b600000001016f00190000002f6f72672f667265656465736b746f702f73797374656d64310000000000000002017300200000006f72672e667265656465736b746f702e73797374656d64312e4d616e616765720000000000000000030173001200000053746172745472616e7369656e74556e697400000000000006017300180000006f72672e667265656465736b746f702e73797374656d6431000000000000000008016700107373612873762961287361287376292900000014000000746f6f6c626f782d72756e2d34322e73636f706500000000040000006661696c00000000e3000000000000000b0000004465736372697074696f6e000173000021000000746f6f6c626f782072756e20287069642034322920616e6420697473206a6f62730000000000000005000000536c696365000173000000000f000000757365722d313030302e736c69636500000000000800000044656c656761746500016200010000000000000004000000504944730002617500000000040000002a0000001300000044656661756c74446570656e64656e636965730001620000000000000b000000436f6c6c6563744d6f6465000173000012000000696e6163746976652d6f722d6661696c6564000000000000";

    /// A `JobRemoved` signal as systemd sends it on its private socket — from the
    /// well-known name, not a unique one — marshalled by jeepney.
    const JOB_REMOVED: &str = "6c0400015100000009000000a200000001016f00190000002f6f72672f667265656465736b746f702f73797374656d64310000000000000002017300200000006f72672e667265656465736b746f702e73797374656d64312e4d616e616765720000000000000000030173000a0000004a6f6252656d6f76656400000000000007017300180000006f72672e667265656465736b746f702e73797374656d643100000000000000000801670004756f7373000000000000007b000000210000002f6f72672f667265656465736b746f702f73797374656d64312f6a6f622f31323300000014000000746f6f6c626f782d72756e2d34322e73636f70650000000004000000646f6e6500";

    #[test]
    fn start_transient_unit_is_marshalled_as_another_implementation_does() {
        let scope = Scope {
            unit: "toolbox-run-42.scope".into(),
            slice: "user-1000.slice".into(),
            description: "toolbox run (pid 42) and its jobs".into(),
            pid: 42,
        };
        let message = start_transient_unit(7, &scope, &scope.unit);
        assert_eq!(hex(&message), START_TRANSIENT_UNIT);
    }

    #[test]
    fn a_job_removed_signal_from_systemds_private_socket_is_read() {
        let bytes = unhex(JOB_REMOVED);
        let fixed: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        let message = parse(&fixed, &bytes[16..]).expect("parse");
        assert_eq!(
            job_removed(&message),
            Some((
                "/org/freedesktop/systemd1/job/123".to_string(),
                "done".to_string()
            ))
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let bytes = unhex(JOB_REMOVED);
        let fixed: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        // Cut anywhere: an error, never a panic or a read past the end.
        for cut in 16..bytes.len() {
            let _ = parse(&fixed, &bytes[16..cut]);
        }
        let mut wrong = fixed;
        wrong[0] = b'x';
        assert!(parse(&wrong, &bytes[16..]).is_err());
        // A string whose length runs past the body.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x7f, b'a', 0], false);
        assert_eq!(r.string(), None);
    }
}
