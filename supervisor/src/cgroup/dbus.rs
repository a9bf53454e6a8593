//! The D-Bus wire format and a connection, as much of them as toolbox's one call to systemd
//! needs (D-Bus specification, "Message Protocol"): method calls marshalled little-endian,
//! replies and signals parsed in either byte order, SASL EXTERNAL, every read and write
//! bounded by a deadline, and nothing read past what a message says it holds. What the
//! other end sends is checked, never trusted: a malformed message is an error, not a panic.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Bounds on what we accept from the other end: systemd's answers are tiny.
const MAX_HEADER: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

pub enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    U32s(&'a [u32]),
}

/// Marshalling, little-endian. Alignment is relative to the start of `buf`, which is the
/// start of the message or of its body (itself 8-aligned in the message).
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn align(&mut self, n: usize) {
        while self.buf.len() % n != 0 {
            self.buf.push(0);
        }
    }

    pub fn byte(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A string or an object path.
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    pub fn signature(&mut self, s: &str) {
        self.byte(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    /// An array whose elements align to `align`: its byte length, padding, the elements.
    pub fn array(&mut self, align: usize, elements: impl FnOnce(&mut Writer)) {
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
    pub fn property(&mut self, name: &str, value: Value<'_>) {
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
    pub fn field(&mut self, code: u8, kind: &str, value: &str) {
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
pub fn method_call(
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
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], big_endian: bool) -> Self {
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

    pub fn u32(&mut self) -> Option<u32> {
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
    pub fn string(&mut self) -> Option<String> {
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
pub struct Incoming {
    pub kind: u8,
    pub reply_serial: Option<u32>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub body: Vec<u8>,
    pub big_endian: bool,
}

pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Parse a whole message (fixed header, header fields, body).
pub fn parse(fixed: &[u8; 16], rest: &[u8]) -> std::io::Result<Incoming> {
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

/// A connection: peer to peer (a service's private socket), or to a bus. Every read and
/// write is bounded by one deadline.
pub struct Bus {
    stream: UnixStream,
    serial: u32,
    deadline: Instant,
    /// Signals that came while a reply was awaited, for the caller to look through.
    pub signals: Vec<Incoming>,
}

impl Bus {
    /// Connect to the socket at `path` and authenticate; to a bus (`hello`), say Hello.
    pub fn connect(path: &str, hello: bool, deadline: Instant) -> std::io::Result<Bus> {
        let stream = UnixStream::connect(path)?;
        let mut bus = Bus {
            stream,
            serial: 0,
            deadline,
            signals: Vec::new(),
        };
        bus.authenticate()?;
        if hello {
            let serial = bus.call(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                "",
                &[],
            )?;
            bus.expect_reply(serial, "Hello")?;
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

    pub fn call(
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

    pub fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    pub fn send(&mut self, message: &[u8]) -> std::io::Result<()> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        self.stream.write_all(message)
    }

    pub fn receive(&mut self) -> std::io::Result<Incoming> {
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

    /// The reply to call `serial`: its body, or the error's name and message. Signals that
    /// arrive meanwhile are kept in [`Bus::signals`].
    #[allow(clippy::type_complexity)]
    pub fn reply(&mut self, serial: u32) -> std::io::Result<Result<Incoming, (String, String)>> {
        loop {
            let message = self.receive()?;
            if message.kind == SIGNAL {
                self.signals.push(message);
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

    pub fn expect_reply(&mut self, serial: u32, what: &str) -> std::io::Result<()> {
        match self.reply(serial)? {
            Ok(_) => Ok(()),
            Err((name, message)) => {
                Err(std::io::Error::other(format!("{what}: {name}: {message}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        // A JobRemoved signal (see systemd.rs), cut anywhere: an error, never a panic or a
        // read past the end.
        let mut w = Writer::default();
        w.u32(123);
        w.string("/org/freedesktop/systemd1/job/123");
        let body = w.buf;
        let bytes = method_call(9, None, "/a", "b.c", "D", "uo", &body);
        let fixed: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        assert!(parse(&fixed, &bytes[16..]).is_ok());
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
