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
//! The client is our own (`dbus.rs`), in the manner of youki's `dbus_native`: the handful
//! of messages this needs, marshalled and parsed by hand.
//! zbus 5 was tried first and measured: it panics on systemd's private socket (systemd
//! sends from the well-known name `org.freedesktop.systemd1`, which zbus insists must be a
//! unique name), and linked into `toolbox` it cost every run 2.1 MB of code, 2400
//! relocations and 24 page faults (~0.2 ms here) on every host, for a call only a login
//! shell on a systemd host makes. cgroups-rs's client goes through zbus on the system bus
//! only and does not wait for the job.

use std::time::{Duration, Instant};

use super::dbus::{method_call, Bus, Incoming, Reader, Value, Writer, SIGNAL};

/// How long systemd may take to start the scope. It takes milliseconds on a normal host and
/// about 1.5 s in our TCG test VM; under load it has been seen to take seconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

const PRIVATE_SOCKET: &str = "/run/systemd/private";
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

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
    Malformed(String),
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
    let mut bus = connect(deadline)?;
    let mut unit = scope.unit.clone();
    let job = loop {
        let serial = bus.next_serial();
        bus.send(&start_transient_unit(serial, scope, &unit))
            .map_err(|e| stalled(e, &scope.unit))?;
        match bus.reply(serial).map_err(|e| stalled(e, &scope.unit))? {
            Ok(reply) => {
                break Reader::new(&reply.body, reply.big_endian)
                    .string()
                    .ok_or_else(|| SystemdError::Malformed("StartTransientUnit's reply".into()))?
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
    let result = wait_job_removed(&mut bus, &job).map_err(|e| stalled(e, &scope.unit))?;
    if result == "done" {
        Ok(unit)
    } else {
        Err(SystemdError::JobFailed { unit, result })
    }
}

fn stalled(err: std::io::Error, unit: &str) -> SystemdError {
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => SystemdError::Timeout {
            unit: unit.to_string(),
        },
        std::io::ErrorKind::InvalidData => SystemdError::Malformed(err.to_string()),
        _ => SystemdError::Io(err.to_string()),
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

/// systemd's private socket first (as root, systemd's own tools do the same: no
/// dbus-daemon needed, and systemd sends its signals there unasked), else the system bus,
/// where systemd sends job signals only to those who asked (`AddMatch`) while someone is
/// subscribed (`Subscribe`).
fn connect(deadline: Instant) -> Result<Bus, SystemdError> {
    let private = match Bus::connect(PRIVATE_SOCKET, false, deadline) {
        Ok(bus) => return Ok(bus),
        Err(err) => err,
    };
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    let path = address
        .as_deref()
        .and_then(|a| a.strip_prefix("unix:path="))
        .map(|p| p.split(',').next().unwrap_or(p))
        .unwrap_or(SYSTEM_BUS);
    let subscribed = Bus::connect(path, true, deadline).and_then(|mut bus| {
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
        Ok(bus)
    });
    subscribed.map_err(|bus| SystemdError::Connect {
        private: private.to_string(),
        bus: bus.to_string(),
    })
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

/// Wait for the `JobRemoved` of `job` (it may have come already, while the call's reply was
/// awaited); its result.
fn wait_job_removed(bus: &mut Bus, job: &str) -> std::io::Result<String> {
    let mut seen = 0;
    loop {
        if let Some((_, result)) = bus.signals[seen..]
            .iter()
            .filter_map(job_removed)
            .find(|(j, _)| j == job)
        {
            return Ok(result);
        }
        seen = bus.signals.len();
        let message = bus.receive()?;
        if message.kind == SIGNAL {
            bus.signals.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::dbus::parse;

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
}
