//! Guarantee 2 (network): mode `none` gives a job only `lo` (up), and the host's loopback
//! services — TCP and abstract unix sockets — are unreachable. Each unreachable case has a
//! control (host mode, or no jail) showing the test would see a connection.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use toolbox_tests::{require_root, workspace, Run, Via};

/// A TCP server on the host's 127.0.0.1 that greets whoever connects, until `stop`.
struct HostServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<usize>,
}

impl HostServer {
    fn start() -> HostServer {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut accepted = 0;
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        accepted += 1;
                        let _ = conn.write_all(b"host-secret-service");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            accepted
        });
        HostServer { addr, stop, handle }
    }

    /// How many connections it accepted.
    fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("server thread")
    }
}

/// An abstract unix socket on the host (in the host's network namespace).
fn host_abstract(name: &str) -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let listener = UnixListener::bind_addr(&addr).expect("bind abstract");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

#[test]
fn mode_none_has_only_lo_and_it_is_up() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    for via in Via::ALL {
        let job = Run::probe(ws.path(), &["interfaces"]).via(via).run();
        let result = job.probe_json();
        assert_eq!(result["interfaces"], serde_json::json!(["lo"]), "{result}");
        assert_eq!(result["lo_up"], true, "{result}");
        assert!(job.record()["isolation"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .contains(&"net".into()));
    }
}

#[test]
fn host_loopback_tcp_is_unreachable_without_host_network() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let server = HostServer::start();
    let addr = server.addr.clone();
    for via in Via::ALL {
        let none = Run::probe(ws.path(), &["connect", &addr])
            .opts(&["--net", "none"])
            .via(via)
            .run()
            .probe_json();
        // The default policy's mode.
        let loopback = Run::probe(ws.path(), &["connect", &addr])
            .via(via)
            .run()
            .probe_json();
        // Control: the `network` policy (the host's network) gets the same probe through.
        let host = Run::probe(ws.path(), &["connect", &addr])
            .opts(&["--policy", "network"])
            .via(via)
            .run()
            .probe_json();
        assert_eq!(none["connected"], false, "{none}");
        assert_eq!(loopback["connected"], false, "{loopback}");
        assert_eq!(host["connected"], true, "control failed: {host}");
        assert_eq!(host["received"], "host-secret-service");
    }
    assert_eq!(
        server.finish(),
        Via::ALL.len(),
        "only the host-mode jobs may have connected"
    );
}

#[test]
fn host_abstract_unix_sockets_are_unreachable() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    let name = toolbox_tests::token("abstract");
    let listener = host_abstract(&name);
    // Another network namespace has its own abstract namespace: with no network, the
    // host's socket is out of reach on any kernel.
    for via in Via::ALL {
        let none = Run::probe(ws.path(), &["abstract", &name]).via(via).run();
        assert_eq!(
            none.probe_json()["connected"],
            false,
            "{:?}",
            none.probe_json()
        );
        assert!(
            listener.accept().is_err(),
            "a job without network reached the host's abstract socket"
        );
        // With the host's network, only Landlock's scoping (ABI 6) refuses it — and where the
        // kernel lacks it, the record must say so rather than claim it.
        let host = Run::probe(ws.path(), &["abstract", &name])
            .opts(&["--policy", "network"])
            .via(via)
            .run();
        let abi = host.record()["isolation"]["landlock_abi"]
            .as_u64()
            .unwrap_or(0);
        let scoped = host.record()["isolation"]["landlock_scoped"] == true;
        assert_eq!(scoped, abi >= 6, "{:?}", host.record());
        if scoped {
            assert_eq!(
                host.probe_json()["connected"],
                false,
                "{:?}",
                host.probe_json()
            );
            assert_eq!(host.probe_json()["errno"], libc::EPERM);
            assert!(
                listener.accept().is_err(),
                "a scoped job reached the host's abstract socket"
            );
        }
        // Where nothing scoped it, the host-mode job got through: take its connection, so
        // the next round starts with none waiting.
        while listener.accept().is_ok() {}
    }
    // Control: outside any jail, the probe connects.
    let control = std::process::Command::new(toolbox_tests::probe())
        .args(["abstract", &name])
        .output()
        .expect("probe");
    let control: serde_json::Value = serde_json::from_slice(&control.stdout).expect("json");
    assert_eq!(control["connected"], true, "control failed: {control}");
}

#[test]
fn mode_none_refuses_tcp_and_the_default_policy_lets_a_test_suite_run_its_own_server() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    for via in Via::ALL {
        let none = Run::probe(ws.path(), &["tcp-self"])
            .opts(&["--net", "none"])
            .via(via)
            .run();
        // Landlock's TCP rights (ABI 4) are what refuse it; a kernel without them must say so
        // in the record, and this one has them under CI.
        let tcp = none.record()["isolation"]["landlock_tcp"] == true;
        let abi = none.record()["isolation"]["landlock_abi"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(tcp, abi >= 4, "{:?}", none.record());
        if tcp {
            assert_eq!(none.probe_json()["bound"], false, "{:?}", none.probe_json());
            assert_eq!(none.probe_json()["errno"], libc::EACCES);
        }
        // The default policy: a server on the job's own lo, and a client of it.
        let default = Run::probe(ws.path(), &["tcp-self"]).via(via).run();
        assert_eq!(default.record()["isolation"]["network"], "loopback");
        let result = default.probe_json();
        assert_eq!(result["bound"], true, "{result}");
        assert_eq!(result["client"]["received"], "pong", "{result}");
        // Talking to itself on lo is no network refusal: nothing to explain.
        assert!(
            default.record().get("reason").is_none(),
            "{:?}",
            default.record()
        );
        assert!(!default.stderr.contains("[toolbox:"), "{}", default.stderr);
    }
}

#[test]
fn a_job_that_tries_the_network_its_policy_does_not_give_is_told_why() {
    if !require_root() {
        return;
    }
    let ws = workspace();
    // TEST-NET-1 (RFC 5737): no route from the job's namespace, whatever the host has.
    let job = Run::probe(ws.path(), &["connect", "192.0.2.1:80"]).run();
    assert_eq!(job.probe_json()["errno"], libc::ENETUNREACH, "{job:?}");
    assert_eq!(job.status(), "exited", "{job:?}");
    let reason = job.record()["reason"].as_str().expect("a reason");
    for words in [
        "no network",
        "had no route",
        "policy \"default\"",
        "mode \"loopback\"",
        "network mode \"host\"",
    ] {
        assert!(reason.contains(words), "{words:?} not in {reason:?}");
    }
    // Once, on stderr, after the output.
    assert_eq!(
        job.stderr.matches("[toolbox: no network").count(),
        1,
        "{}",
        job.stderr
    );
}

/// What the probe's `families` tries, by name, and what the filter must answer.
const ALLOWED_FAMILIES: [&str; 5] = [
    "unix",
    "inet",
    "inet6",
    "netlink_route",
    "netlink_sock_diag",
];
const NETLINK_REFUSED: [&str; 4] = [
    "netlink_generic",
    "netlink_audit",
    "netlink_uevent",
    "netlink_netfilter",
];

#[test]
fn jobs_open_sockets_only_of_the_families_a_network_namespace_holds() {
    if !require_root() {
        return;
    }
    // Control: outside any jail (root, the host's namespace) the kernel has some of the
    // refused families, so the answers below are the filter's, not the kernel's.
    let bare = std::process::Command::new(toolbox_tests::probe())
        .arg("families")
        .output()
        .expect("run the probe bare");
    let bare: serde_json::Value = serde_json::from_slice(&bare.stdout).expect("probe json");
    let opened_bare: Vec<&String> = bare["socket"]
        .as_object()
        .expect("sockets")
        .iter()
        .filter(|(name, errno)| *errno == 0 && !ALLOWED_FAMILIES.contains(&name.as_str()))
        .map(|(name, _)| name)
        .collect();
    assert!(
        opened_bare.len() >= 2,
        "control: the host opens few refused families: {bare}"
    );
    let ws = workspace();
    for via in Via::ALL {
        for mode in [&["--net", "none"][..], &[], &["--policy", "network"]] {
            let job = Run::probe(ws.path(), &["families"])
                .opts(mode)
                .via(via)
                .run();
            let result = job.probe_json();
            let sockets = result["socket"].as_object().expect("sockets");
            let pairs = result["socketpair"].as_object().expect("socketpairs");
            assert_eq!(sockets.len(), bare["socket"].as_object().expect("s").len());
            for (name, errno) in sockets {
                let pair = &pairs[name];
                if ALLOWED_FAMILIES.contains(&name.as_str()) {
                    assert_eq!(errno, 0, "{name} in {mode:?}: {result}");
                } else if NETLINK_REFUSED.contains(&name.as_str()) {
                    assert_eq!(errno, libc::EPROTONOSUPPORT, "{name} in {mode:?}: {result}");
                    assert_eq!(pair, libc::EPROTONOSUPPORT, "{name} pair: {result}");
                } else {
                    assert_eq!(errno, libc::EAFNOSUPPORT, "{name} in {mode:?}: {result}");
                    assert_eq!(pair, libc::EAFNOSUPPORT, "{name} pair: {result}");
                }
            }
            assert_eq!(pairs["unix"], 0, "{result}");
        }
    }
}
