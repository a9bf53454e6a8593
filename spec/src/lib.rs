//! The contract between the toolbox supervisor and its exec shim.
//!
//! The supervisor validates a job once and turns it into a [`JailSpec`]: plain data, every
//! path absolute and every limit a number. The shim trusts it and only applies it. While it
//! works, the shim reports back over a status pipe with [`Status`] lines; the supervisor
//! never guesses what happened from an exit code.
#![deny(unsafe_code)]

use serde::{Deserialize, Serialize};

/// The file descriptors the shim is started with (stdin, stdout, stderr are 0, 1, 2).
pub mod fds {
    /// A pipe carrying the [`super::JailSpec`] (see [`super::JailSpec::encode`]), then, once
    /// the job's cgroup exists, the byte [`super::MADE`], and once it has its limits, the
    /// byte [`super::GO`]; EOF in the place of either means the job will not run. The shim
    /// is started before its spec is ready and waits on this pipe: its own start-up
    /// overlaps the supervisor's planning, and it builds the jail's root while the
    /// supervisor makes the cgroup (v1) and sets its limits.
    pub const SPEC: i32 = 3;
    /// Write end of the status pipe: one JSON [`super::Status`] per line.
    pub const STATUS: i32 = 4;
    /// Read end of a pipe whose write end only the supervisor holds: EOF means the
    /// supervisor is gone, and the job must die with it.
    pub const LIFELINE: i32 = 5;
    /// A `SOCK_SEQPACKET` socket the supervisor sends [`super::Control`] messages on, once
    /// the tool runs: more commands to run in the jail, and signals for them.
    pub const CONTROL: i32 = 6;
}

/// The job's egress proxy on its own `lo` (`127.0.0.1`): HTTP, then SOCKS5. The shim's
/// network helper makes a listening socket on each in the job's fresh network namespace and
/// sends both to the supervisor on [`fds::CONTROL`], as one message [`LISTENERS`] with the
/// two descriptors in that order (or [`LISTENERS_FAILED`] and why, with none); the
/// supervisor serves them (modes `none` and `allowlist`) or closes them, before the go.
pub const PROXY_PORTS: [u16; 2] = [3128, 1080];
pub const LISTENERS: &[u8] = b"listeners";
pub const LISTENERS_FAILED: &[u8] = b"listeners failed: ";

/// Signals the supervisor sends the shim (PID 1 of the jail), and what each means.
pub mod control {
    /// SIGTERM to every process of the job (the timeout and cancel path): SIGUSR1.
    pub const TERMINATE_ALL: i32 = 10;
    /// SIGKILL to every process of the job (after the grace period): SIGKILL to PID 1,
    /// which takes its whole pid namespace with it.
    pub const KILL_ALL: i32 = 9;
    // SIGINT, SIGTERM and SIGHUP are forwarded to the tool's process group.
}

/// Everything the shim needs to build one jail and exec one tool in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    pub job_id: String,
    /// `argv[0]` is looked up on the jail's `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// The tool's whole environment, already filtered.
    pub env: Vec<(String, String)>,
    /// Absolute path inside the jail; the tool starts there.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub network: Network,
    /// Applied in order; a mount's parent is always mounted before it.
    pub mounts: Vec<Mount>,
    /// The job's cgroup, read-only at `/sys/fs/cgroup` (binds of its directories, and the
    /// symlinks of co-mounted v1 hierarchies): applied after `mounts`, once [`MADE`] says
    /// the directories exist — on cgroup v1 the supervisor makes them while the shim builds
    /// the rest of the root.
    pub cgroup_view: Vec<Mount>,
    pub landlock: Landlock,
    /// A complete, already-compiled seccomp BPF program (hex on the wire: a few hundred
    /// instructions as JSON objects cost the shim more to parse than the rest of the spec).
    #[serde(with = "bpf_hex")]
    pub seccomp: Vec<SockFilter>,
    pub rlimits: Vec<Rlimit>,
    /// cgroup v1: the `tasks` file of the job's cgroup in each hierarchy. The cgroup does
    /// not exist yet when the spec arrives (see [`GO`]): PID 1 opens each parent directory
    /// before `pivot_root`, and on the go writes `0` to each file — moving only itself, one
    /// thread, skips the global lock a `cgroup.procs` write takes (an RCU grace period,
    /// ~15 ms) — then forks the tool, which is born there. Empty on cgroup v2, where the
    /// supervisor clones PID 1 straight into the job's cgroup.
    pub cgroup_tasks: Vec<String>,
    /// A workspace the tool may write though it is not its owner's (a root-owned checkout):
    /// its bind is idmapped, so the owner's files read as the tool's, and what the tool
    /// writes belongs to the owner on disk.
    pub idmap: Option<IdMap>,
    /// The CPUs the tool runs on (its affinity), or empty for those it inherits: as many as
    /// the job's CPU quota rounds up to, so what a runtime counts matches what it gets.
    pub cpus: Vec<u32>,
    /// The tool's stdin came over the control socket ([`Control::Stdin`]), ahead of the
    /// spec: a jail prepared before its job was known was started with /dev/null. PID 1
    /// reads it right after the spec and puts it in place of its own fd 0.
    #[serde(default)]
    pub stdin_passed: bool,
    /// Not a job's spec but a draft of the next one's (a daemon sends a jail it prepares
    /// the last job's): PID 1 lays out its mounts ahead, then reads the job's own spec,
    /// which follows on the same pipe, and keeps what it laid out only if that spec wants
    /// exactly the same.
    #[serde(default)]
    pub draft: bool,
}

/// The idmapping of one bind (see [`JailSpec::idmap`]): `owner` on disk is `tool` in the
/// jail, and nothing else is mapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMap {
    /// The bind's `dst`.
    pub dst: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A new network namespace with only `lo`, brought up.
    Isolated,
    /// The host's network namespace.
    Host,
}

/// One piece of the jail's filesystem view. Paths are absolute; `src` is a host path,
/// `dst` a path inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mount {
    /// A recursive bind mount; read-only ones are also nosuid and nodev, recursively.
    Bind {
        src: String,
        dst: String,
        writable: bool,
    },
    /// A fresh tmpfs (nosuid, nodev).
    Tmpfs { dst: String, size: u64, mode: u32 },
    /// A copy of a small host file, made in the jail's own (read-only) root: cheaper than a
    /// bind mount, and nothing the tool does can reach the original.
    Copy { src: String, dst: String, mode: u32 },
    /// A fresh procfs for the jail's pid namespace.
    Proc { dst: String },
    /// A minimal `/dev`: null, zero, full, random, urandom, tty, the fd symlinks, a tmpfs
    /// `shm`, and a private devpts at `pts` (`ptmx` links to its multiplexer).
    Dev { dst: String },
    /// A symlink, as the host lays one out (`/bin -> usr/bin`).
    Symlink { target: String, dst: String },
}

impl Mount {
    pub fn dst(&self) -> &str {
        match self {
            Mount::Bind { dst, .. }
            | Mount::Tmpfs { dst, .. }
            | Mount::Copy { dst, .. }
            | Mount::Proc { dst }
            | Mount::Dev { dst }
            | Mount::Symlink { dst, .. } => dst,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landlock {
    pub rules: Vec<LandlockRule>,
    /// Handle TCP bind and connect, and allow none but connects to `connect_ports`.
    pub deny_tcp: bool,
    /// With `deny_tcp`, the ports TCP connect is still allowed to (the job's egress proxy on
    /// its own `lo`).
    #[serde(default)]
    pub connect_ports: Vec<u16>,
    /// Scope signals and abstract unix sockets to the job's own domain.
    pub scoped: bool,
    /// Refuse to start the job below this ABI (0: run without Landlock if it is missing).
    pub min_abi: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockRule {
    /// A path inside the jail.
    pub path: String,
    pub access: FsAccess,
    /// Whether it is a directory (a file only takes the file rights of `access`).
    pub dir: bool,
}

/// The classes of filesystem access a view grants beneath a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsAccess {
    /// List directories, nothing else (the jail's root).
    List,
    /// List directories and read files.
    Read,
    /// Read, and execute files.
    ReadExec,
    /// Everything a workspace needs: read, write, create, remove, rename, execute.
    ReadWrite,
    /// Read, write and ioctl on device files (the `/dev` nodes).
    Device,
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: RlimitKind,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlimitKind {
    Core,
    Fsize,
    Nofile,
}

/// `Vec<SockFilter>` as one hex string, 16 digits an instruction (code, jt, jf, k).
mod bpf_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SockFilter;

    pub fn serialize<S: Serializer>(
        program: &[SockFilter],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = Vec::with_capacity(program.len() * 16);
        for insn in program {
            let word = (u64::from(insn.code) << 48)
                | (u64::from(insn.jt) << 40)
                | (u64::from(insn.jf) << 32)
                | u64::from(insn.k);
            for shift in (0..16).rev() {
                text.push(DIGITS[((word >> (shift * 4)) & 0xf) as usize]);
            }
        }
        serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<SockFilter>, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        if text.len() % 16 != 0 {
            return Err(serde::de::Error::custom(
                "seccomp program: not a whole number of instructions",
            ));
        }
        text.as_bytes()
            .chunks_exact(16)
            .map(|chunk| {
                let mut word = 0u64;
                for &digit in chunk {
                    let value = match digit {
                        b'0'..=b'9' => digit - b'0',
                        b'a'..=b'f' => digit - b'a' + 10,
                        _ => {
                            return Err(serde::de::Error::custom("seccomp program: bad hex digit"))
                        }
                    };
                    word = (word << 4) | u64::from(value);
                }
                Ok(SockFilter {
                    code: (word >> 48) as u16,
                    jt: (word >> 40) as u8,
                    jf: (word >> 32) as u8,
                    k: word as u32,
                })
            })
            .collect()
    }
}

/// A message on the control socket ([`fds::CONTROL`]), one per packet, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Run another command in the jail, as the tool runs (the same namespaces, root, cgroup,
    /// ids, rlimits, seccomp and Landlock), with only what [`ExecSpec`] says changed. The
    /// packet carries five descriptors: a memfd holding the [`ExecSpec`] as JSON, then the
    /// command's stdin, stdout and stderr, then the write end of a status pipe of its own,
    /// where it reports as the tool does on [`fds::STATUS`] and where PID 1 reports its end
    /// ([`Status::ToolExited`] or [`Status::ToolSignaled`]) before closing it. EOF there
    /// with no end reported: the job ended, and took the command with it.
    Exec { id: u64 },
    /// A signal to the process group of exec'd command `id` (its own session).
    Signal { id: u64, signal: i32 },
    /// The tool's stdin, the one descriptor the packet carries: sent before the spec to a
    /// jail prepared before its job was known (see [`JailSpec::stdin_passed`]).
    Stdin,
}

/// What an exec'd command changes of the job's [`JailSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Control, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl ExecSpec {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ExecSpec, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// One line on the status pipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    /// A jail setup step failed; the tool never ran.
    SetupFailed { step: String, error: String },
    /// Every restriction is in place; the tool is about to be exec'd.
    Enforced(Enforced),
    /// `execve` of the tool failed with this errno.
    ExecFailed { errno: i32, error: String },
    /// Sent just before the tool's end (and only when one is non-zero), for a job with a
    /// network namespace of its own: what of the network it tried and could not have.
    /// `no_route`: packets with no route (IPv4 and IPv6) — an address beyond `lo`.
    /// `udp_no_ports`: datagrams to a port of `lo` no one listened on (a resolver at
    /// 127.0.0.53 that is not in the jail).
    Network { no_route: u64, udp_no_ports: u64 },
    /// The tool (the jail's main process) exited. Sent once PID 1 has killed and reaped
    /// every other process of the jail and holds none of the job's output pipes: the job is
    /// over, and PID 1 exits next.
    ToolExited { code: i32 },
    /// The tool was killed by a signal (sent as [`Status::ToolExited`] is).
    ToolSignaled { signal: i32 },
}

/// What the shim really put in place, reported by the tool's own process just before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enforced {
    pub namespaces: Vec<String>,
    /// The kernel's Landlock ABI, or `None` when Landlock is unavailable.
    pub landlock_abi: Option<u32>,
    pub landlock_fs: bool,
    pub landlock_tcp: bool,
    pub landlock_scoped: bool,
    pub seccomp: bool,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
    pub uid: u32,
    pub gid: u32,
    /// The job runs in the root a prepared jail laid out for its draft (not one built for
    /// it): for the daemon's count of drafts that fit, never for the record.
    #[serde(default)]
    pub root_as_drafted: bool,
}

impl Status {
    /// One line, newline-terminated, short enough to be written atomically to a pipe.
    pub fn to_line(&self) -> Vec<u8> {
        let mut status = self.clone();
        // PIPE_BUF is 4096: keep every line under it so concurrent writers never interleave.
        match &mut status {
            Status::SetupFailed { step, error } => {
                truncate_utf8(step, 256);
                truncate_utf8(error, 2048);
            }
            Status::ExecFailed { error, .. } => truncate_utf8(error, 2048),
            _ => {}
        }
        let mut line = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }

    pub fn from_line(line: &[u8]) -> Result<Status, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// On the spec pipe, after the spec: the job's cgroup exists; bind it
/// ([`JailSpec::cgroup_view`]) and finish the root.
pub const MADE: u8 = b'm';

/// On the spec pipe, after [`MADE`]: the job's cgroup has its limits; join it (v1) and fork
/// the tool.
pub const GO: u8 = b'g';

/// The most a framed spec may claim to be (a real one is a few tens of KiB).
const MAX_SPEC: u64 = 16 << 20;

impl JailSpec {
    /// The spec as it goes on the spec pipe: its length (8 bytes, little-endian), then its
    /// JSON. Framed, so that the pipe can stay open for [`MADE`] and [`GO`].
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut frame = (json.len() as u64).to_le_bytes().to_vec();
        frame.extend_from_slice(&json);
        frame
    }

    /// Read one spec as [`JailSpec::encode`] frames it.
    pub fn read_from(reader: &mut impl std::io::Read) -> std::io::Result<JailSpec> {
        JailSpec::read_framed(reader).map(|(spec, _)| spec)
    }

    /// As [`JailSpec::read_from`], with the whole frame it came in, to pass on as it was.
    pub fn read_framed(reader: &mut impl std::io::Read) -> std::io::Result<(JailSpec, Vec<u8>)> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut length = [0u8; 8];
        reader.read_exact(&mut length)?;
        let json_length = u64::from_le_bytes(length);
        if json_length > MAX_SPEC {
            return Err(invalid(format!("a spec of {json_length} bytes")));
        }
        let mut frame = vec![0u8; 8 + json_length as usize];
        frame[..8].copy_from_slice(&length);
        reader.read_exact(&mut frame[8..])?;
        let spec = JailSpec::decode(&frame[8..]).map_err(|e| invalid(e.to_string()))?;
        Ok((spec, frame))
    }

    pub fn decode(bytes: &[u8]) -> Result<JailSpec, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip_and_stay_short() {
        let long = Status::SetupFailed {
            step: "mount".into(),
            error: "é".repeat(5000),
        };
        let line = long.to_line();
        assert!(line.len() < 4096, "{} bytes", line.len());
        assert_eq!(line.last(), Some(&b'\n'));
        match Status::from_line(&line[..line.len() - 1]).expect("parses") {
            Status::SetupFailed { step, error } => {
                assert_eq!(step, "mount");
                assert!(error.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn seccomp_programs_round_trip_as_hex() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Wrapper {
            #[serde(with = "bpf_hex")]
            program: Vec<SockFilter>,
        }
        let w = Wrapper {
            program: vec![
                SockFilter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                SockFilter {
                    code: 0x15,
                    jt: 1,
                    jf: 255,
                    k: 0xc000_003e,
                },
                SockFilter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                },
            ],
        };
        let json = serde_json::to_string(&w).expect("encode");
        assert_eq!(
            json,
            r#"{"program":"0020000000000004001501ffc000003e000600007fff0000"}"#
        );
        assert_eq!(serde_json::from_str::<Wrapper>(&json).expect("decode"), w);
        assert!(serde_json::from_str::<Wrapper>(r#"{"program":"0020"}"#).is_err());
        assert!(serde_json::from_str::<Wrapper>(r#"{"program":"zz20000000000004"}"#).is_err());
    }

    #[test]
    fn spec_refuses_unknown_fields() {
        let err = JailSpec::decode(br#"{"job_id":"x","bogus":1}"#).expect_err("refused");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn specs_are_framed_and_what_follows_waits_behind_them() {
        let spec = JailSpec {
            job_id: "j1".into(),
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1000,
            hostname: "toolbox".into(),
            network: Network::Isolated,
            mounts: vec![Mount::Proc {
                dst: "/proc".into(),
            }],
            cgroup_view: vec![Mount::Bind {
                src: "/sys/fs/cgroup/pids/toolbox-j1".into(),
                dst: "/sys/fs/cgroup/pids".into(),
                writable: false,
            }],
            landlock: Landlock {
                rules: Vec::new(),
                deny_tcp: true,
                connect_ports: vec![3128, 1080],
                scoped: true,
                min_abi: 0,
            },
            seccomp: Vec::new(),
            rlimits: Vec::new(),
            cgroup_tasks: vec!["/sys/fs/cgroup/pids/toolbox-j1/tasks".into()],
            idmap: Some(IdMap {
                dst: "/work".into(),
                owner_uid: 0,
                owner_gid: 0,
                uid: 65534,
                gid: 65534,
            }),
            cpus: vec![1],
            stdin_passed: true,
            draft: false,
        };
        let mut pipe = spec.encode();
        pipe.extend([MADE, GO]);
        let mut reader = pipe.as_slice();
        assert_eq!(JailSpec::read_from(&mut reader).expect("read"), spec);
        // Nothing past the spec is consumed: the cgroup's word and the go are still there.
        assert_eq!(reader, [MADE, GO]);

        // A truncated frame, and one claiming an absurd length, are refused.
        let frame = spec.encode();
        let cut = &frame[..frame.len() - 1];
        assert!(JailSpec::read_from(&mut &cut[..]).is_err());
        let huge = (1u64 << 40).to_le_bytes();
        let err = JailSpec::read_from(&mut &huge[..]).expect_err("refused");
        assert!(err.to_string().contains("bytes"), "{err}");
    }
}
