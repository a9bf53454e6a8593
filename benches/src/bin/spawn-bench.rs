//! Whole-process benchmarks of `toolbox run`, each against baselines measured in the same
//! run (interleaved, so drift hits every contender alike):
//!
//! - `spawn`: bare `/bin/true`, `toolbox run -- /bin/true`, and bubblewrap with a comparable
//!   view; medians, p90s, and toolbox's overhead over bare as a ratio of bubblewrap's.
//! - `flood`: 1 GiB of output through `toolbox run` (capped at 1 MiB) against a bare pipe
//!   (`head -c 1G /dev/zero | cat`); the throughput ratio and toolbox's peak RSS.
//!
//! - `daemon`: `toolbox serve` — 500 `/bin/true` jobs at concurrency 8 against 500
//!   bubblewrap runs 8 at a time (jobs/s, ratio, and the machine's CPU a job), and against
//!   the floor: the same jail with nothing else around it, made by this process with and
//!   without a fresh cgroup per job (`src/floor.rs`); one job's
//!   latency through the socket, warm and cold, against bare `/bin/true` and bubblewrap; the
//!   daemon's RSS idle and under 8 concurrent 1 GiB floods.
//!
//! - `exec`: one `/bin/true` exec'd into a running job's jail (`POST /v1/jobs/{id}/exec`)
//!   against one `/bin/true` as a new job, both through the socket, interleaved (medians,
//!   ratio); then the daemon's RSS holding 8 running and 50 ended detached jobs, each with
//!   its output (2 MB written, 1 MiB kept).
//!
//! Usage: spawn-bench spawn|flood|daemon|exec|all [--runs N] [--rounds N] [--toolbox PATH]
//!
//! `spawn` runs `--rounds` rounds of `--runs` interleaved runs each and reports every
//! round's ratio and their median: on a shared VM the machine's state drifts over minutes,
//! and one round can land on a noisy stretch.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toolbox_benches::floor::{Floor, SYSTEM_DIRS};

struct Options {
    runs: usize,
    rounds: usize,
    toolbox: PathBuf,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "all".into());
    let mut options = Options {
        runs: 200,
        rounds: 5,
        toolbox: default_toolbox(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => options.runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--rounds" => {
                options.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            "--toolbox" => {
                options.toolbox = args.next().map(PathBuf::from).expect("--toolbox PATH")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        options.toolbox.is_file(),
        "{} not found: build with cargo build --release",
        options.toolbox.display()
    );
    println!("toolbox: {}", options.toolbox.display());
    println!("host: {} cpus, {}", cpus(), kernel());
    match mode.as_str() {
        "spawn" => spawn(&options),
        "flood" => flood(&options),
        "daemon" => daemon(&options),
        "exec" => exec(&options),
        "all" => {
            spawn(&options);
            flood(&options);
            daemon(&options);
            exec(&options);
        }
        other => panic!("unknown mode {other} (spawn, flood, daemon, exec or all)"),
    }
}

fn default_toolbox() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("dir").join("toolbox")
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A workspace owned by nobody, like a job's.
/// A workspace of an unprivileged user's (65534), as an agent's checkout is: the job runs as
/// its owner. (A root-owned one would be idmapped for the job, which costs a user namespace
/// more; `scripts/bench-spawn.sh` does not measure that case.)
fn workspace() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toolbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("workspace");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown the workspace");
    dir
}

struct Contender {
    name: &'static str,
    argv: Vec<String>,
    times: Vec<Duration>,
}

fn run_once(argv: &[String]) -> Duration {
    let start = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let elapsed = start.elapsed();
    assert!(status.success(), "{argv:?} failed: {status}");
    elapsed
}

fn percentile(times: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() - 1) as f64 * p).round() as usize]
}

/// bubblewrap with the view toolbox gives: the system directories read-only (symlinks as
/// the host lays them out), fresh /proc and /dev, a tmpfs /tmp, the workspace read-write.
fn bwrap_argv(ws: &Path) -> Option<Vec<String>> {
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let mut argv: Vec<String> = [bwrap, "--unshare-all", "--new-session", "--die-with-parent"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for dir in SYSTEM_DIRS {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(dir).expect("readlink");
                argv.extend([
                    "--symlink".into(),
                    target.to_string_lossy().into_owned(),
                    dir.into(),
                ]);
            }
            Ok(_) => argv.extend(["--ro-bind".into(), dir.into(), dir.into()]),
            Err(_) => {}
        }
    }
    let ws = ws.to_string_lossy().into_owned();
    argv.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--bind",
            &ws,
            &ws,
            "--chdir",
            &ws,
            "/bin/true",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Some(argv)
}

fn spawn(options: &Options) {
    let ws = workspace();
    let ws_str = ws.to_string_lossy().into_owned();
    let toolbox = options.toolbox.to_string_lossy().into_owned();
    let mut contenders = vec![
        Contender {
            name: "bare /bin/true",
            argv: vec!["/bin/true".into()],
            times: Vec::new(),
        },
        Contender {
            name: "toolbox run --local",
            argv: [&toolbox, "run", "--local", "-C", &ws_str, "--", "/bin/true"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            times: Vec::new(),
        },
    ];
    match bwrap_argv(&ws) {
        Some(argv) => contenders.push(Contender {
            name: "bubblewrap",
            argv,
            times: Vec::new(),
        }),
        None => {
            println!("bubblewrap not installed: no bwrap baseline (apt-get install bubblewrap)")
        }
    }
    // Warm up the page cache and the kernel's allocators.
    for contender in &contenders {
        for _ in 0..10 {
            run_once(&contender.argv);
        }
    }
    let mut ratios = Vec::new();
    println!(
        "\nspawn latency: {} rounds of {} interleaved runs each",
        options.rounds, options.runs
    );
    for round in 1..=options.rounds {
        let start = contenders[0].times.len();
        // Each run leaves work behind (a network namespace's teardown, RCU callbacks) that
        // lands on whatever runs next; rotating the order spreads that evenly, where a fixed
        // order would always hand one contender's leftovers to the same other one.
        let n = contenders.len();
        for i in 0..options.runs {
            for k in 0..n {
                let contender = &mut contenders[(i + k) % n];
                contender.times.push(run_once(&contender.argv));
            }
        }
        let median = |c: &Contender| percentile(&c.times[start..], 0.5);
        let bare = median(&contenders[0]);
        let line: Vec<String> = contenders
            .iter()
            .map(|c| format!("{} {:.2} ms", c.name, median(c)))
            .collect();
        let ratio = contenders
            .get(2)
            .map(|bwrap| (median(&contenders[1]) - bare) / (median(bwrap) - bare));
        if let Some(ratio) = ratio {
            ratios.push(ratio);
        }
        println!(
            "  round {round}: {}{}",
            line.join(", "),
            ratio.map(|r| format!("; ratio {r:.2}")).unwrap_or_default()
        );
    }
    println!("\nall rounds (ms):");
    println!("  {:<22} {:>8} {:>8} {:>8}", "", "median", "p90", "min");
    for c in &contenders {
        println!(
            "  {:<22} {:>8.2} {:>8.2} {:>8.2}",
            c.name,
            percentile(&c.times, 0.5),
            percentile(&c.times, 0.9),
            percentile(&c.times, 0.0)
        );
    }
    let bare = percentile(&contenders[0].times, 0.5);
    println!(
        "  toolbox overhead over bare: {:.2} ms",
        percentile(&contenders[1].times, 0.5) - bare
    );
    if let Some(bwrap) = contenders.get(2) {
        println!(
            "  bubblewrap overhead over bare: {:.2} ms",
            percentile(&bwrap.times, 0.5) - bare
        );
        ratios.sort_by(f64::total_cmp);
        println!(
            "  ratio (toolbox - bare) / (bwrap - bare): median of rounds {:.2} (rounds {:.2} .. {:.2}); below 1 means toolbox is faster, while also doing cgroups, seccomp and landlock",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    let _ = std::fs::remove_dir(&ws);
}

/// Run `argv` to its end; wall time and peak RSS in KiB (of the command itself). The child
/// is reaped by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn timed_with_rss(argv: &[&str]) -> (Duration, u64) {
    let start = Instant::now();
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills for our own child, which we reap here
    // in place of Child::wait.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        usage
    };
    let elapsed = start.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{argv:?} failed: {status}"
    );
    (elapsed, usage.ru_maxrss as u64)
}

fn flood(options: &Options) {
    const GIB: f64 = (1u64 << 30) as f64;
    let ws = workspace();
    let ws_str = ws.to_string_lossy().into_owned();
    let toolbox = options.toolbox.to_string_lossy().into_owned();
    // The bare pipe's rate depends on where the scheduler puts its two ends: on two CPUs it
    // ran at ~5 GB/s here, on one ~2 GB/s, and left free it lands on either from run to
    // run — which is why a ratio against it alone swung (0.6 to 1.4 the same day). So it is
    // also measured pinned both ways (with taskset, on two of the CPUs we may use).
    let cpus = allowed_cpus();
    let pinned = |a: usize, b: usize| {
        format!("taskset -c {a} head -c 1G /dev/zero | taskset -c {b} cat >/dev/null")
    };
    let mut bares: Vec<(&str, String)> = vec![(
        "bare pipe, placed freely:",
        "head -c 1G /dev/zero | cat >/dev/null".into(),
    )];
    if cpus.len() >= 2 && Command::new("taskset").arg("-V").output().is_ok() {
        bares.push(("bare pipe, two CPUs:", pinned(cpus[0], cpus[1])));
        bares.push(("bare pipe, one CPU:", pinned(cpus[0], cpus[0])));
    }
    let jailed = [
        toolbox.as_str(),
        "run",
        "--local",
        "-C",
        &ws_str,
        "--output-limit",
        "1M",
        "--",
        "head",
        "-c",
        "1G",
        "/dev/zero",
    ];
    let rounds = 5;
    let mut bare_times = vec![Vec::new(); bares.len()];
    let (mut toolbox_times, mut peak) = (Vec::new(), 0);
    for _ in 0..rounds {
        for ((_, script), times) in bares.iter().zip(&mut bare_times) {
            times.push(timed_with_rss(&["/bin/sh", "-c", script]).0);
        }
        let (time, rss) = timed_with_rss(&jailed);
        toolbox_times.push(time);
        peak = peak.max(rss);
    }
    let mb_per_s = |times: &[Duration]| GIB / (percentile(times, 0.5) / 1000.0) / 1e6;
    let toolbox_rate = mb_per_s(&toolbox_times);
    println!("\n1 GiB output flood, {rounds} interleaved runs each (median):");
    println!(
        "  toolbox run --output-limit 1M:      {:>7.0} MB/s",
        toolbox_rate
    );
    for ((label, _), times) in bares.iter().zip(&bare_times) {
        let rate = mb_per_s(times);
        println!(
            "  {label:<34} {rate:>7.0} MB/s; toolbox / this = {:.2}  (target: at least 0.8)",
            toolbox_rate / rate
        );
    }
    println!(
        "  toolbox peak RSS: {:.1} MiB  (target: under 32 MiB)",
        peak as f64 / 1024.0
    );
    let _ = std::fs::remove_dir(&ws);
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t we own, of the size we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// A `toolbox serve` of the benchmark's own, on a temporary socket.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl Daemon {
    fn start_with(toolbox: &Path, options: &[&str]) -> Daemon {
        let socket = std::env::temp_dir().join(format!(
            "toolbox-bench-{}-{}.sock",
            std::process::id(),
            options.join("").replace('/', "")
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(toolbox)
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(options)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toolbox serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, socket }
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid and a signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Post one job and read its stream to the end; panics unless it exited 0.
fn daemon_job(socket: &Path, body: &str) -> Duration {
    daemon_job_at(socket, "/v1/jobs", body)
}

/// One request on a fresh connection; the whole response, as text.
fn http(socket: &Path, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: toolbox\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// A JSON field's value as it appears in `text` (`"job_id":"abc"` → `abc`).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let at = text.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = text[at..].trim_start_matches('"');
    let end = rest.find(['"', ',', '}'])?;
    Some(&rest[..end])
}

/// Post a job (or an exec) at `path` and read its stream to the end; panics unless it
/// exited 0.
fn daemon_job_at(socket: &Path, path: &str, body: &str) -> Duration {
    let start = Instant::now();
    let text = http(socket, "POST", path, body);
    let elapsed = start.elapsed();
    assert!(
        text.contains("\"type\":\"exit\"") && text.contains("\"exit_code\":0"),
        "job failed: {text}"
    );
    elapsed
}

/// `count` runs of `job`, `parallel` at a time: jobs per second, and what each cost the
/// whole machine in CPU (every process's and the kernel's, ours and the launcher's
/// included), in milliseconds.
fn throughput(count: usize, parallel: usize, job: impl Fn() + Sync) -> (f64, f64) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let busy = machine_busy();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                    job();
                }
            });
        }
    });
    let rate = count as f64 / start.elapsed().as_secs_f64();
    (rate, (machine_busy() - busy) * 1000.0 / count as f64)
}

/// The seconds every CPU has spent busy since boot (all of `/proc/stat`'s first line but
/// idle and iowait).
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// One run of a contender in a throughput round.
type Job<'a> = Box<dyn Fn() + Sync + 'a>;

fn daemon(options: &Options) {
    let ws = workspace();
    // With a pool of prepared jails, as for 8 slots on 2 CPUs.
    let daemon = Daemon::start_with(&options.toolbox, &["--warm", "4"]);
    std::thread::sleep(Duration::from_millis(200));
    let idle_kib = daemon.status_kib("VmRSS:");
    let body = format!(r#"{{"argv":["/bin/true"],"cwd":"{}"}}"#, ws.display());
    let bwrap = bwrap_argv(&ws);
    for _ in 0..20 {
        daemon_job(&daemon.socket, &body);
    }

    let jobs = 500;
    println!("\ndaemon throughput: {jobs} /bin/true jobs, 8 at a time, 3 interleaved rounds");
    // The floor: the same jail made by a resident process with nothing else around it
    // (src/floor.rs), with and without a fresh cgroup per job.
    let floors: Vec<(&str, Floor)> = [("floor", true), ("floor without cgroups", false)]
        .into_iter()
        .filter_map(|(name, cgroups)| match Floor::new(&ws, cgroups) {
            Ok(floor) => Some((name, floor)),
            Err(error) => {
                println!("  no {name} here: {error}");
                None
            }
        })
        .collect();
    // On 2 CPUs the rate is the machine's CPU a job: that is measured too (busy CPU over
    // the round, the clients' included), the steadier figure of the two.
    let mut contenders: Vec<(&str, Job)> = vec![(
        "toolbox serve",
        Box::new(|| {
            daemon_job(&daemon.socket, &body);
        }),
    )];
    if let Some(argv) = &bwrap {
        contenders.push((
            "bubblewrap",
            Box::new(move || {
                run_once(argv);
            }),
        ));
    }
    for (name, floor) in &floors {
        contenders.push((name, Box::new(|| floor.job())));
    }
    let mut rates = vec![Vec::new(); contenders.len()];
    let mut cpus = vec![Vec::new(); contenders.len()];
    for round in 1..=3 {
        let mut line = Vec::new();
        for (k, (name, job)) in contenders.iter().enumerate() {
            let (rate, cpu) = throughput(jobs, 8, job);
            rates[k].push(rate);
            cpus[k].push(cpu);
            line.push(format!("{name} {rate:.0} jobs/s, {cpu:.2} ms"));
        }
        if bwrap.is_some() {
            let ratios: Vec<String> = contenders
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != 1)
                .map(|(k, (name, _))| {
                    format!("{name} {:.2}", rates[k][round - 1] / rates[1][round - 1])
                })
                .collect();
            line.push(format!("÷ bubblewrap's rate: {}", ratios.join(", ")));
        }
        println!("  round {round}: {}", line.join("; "));
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if bwrap.is_some() {
        for (k, (name, _)) in contenders.iter().enumerate().filter(|(k, _)| *k != 1) {
            let ratios: Vec<f64> = rates[k].iter().zip(&rates[1]).map(|(a, b)| a / b).collect();
            println!(
                "  {name}: median {:.0} jobs/s, {:.2} ms of the machine's CPU a job; ÷ bubblewrap -P8 ({:.0} jobs/s, {:.2} ms): median of rounds {:.2} (rounds {:.2} .. {:.2})",
                median(&rates[k]),
                median(&cpus[k]),
                median(&rates[1]),
                median(&cpus[1]),
                median(&ratios),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
        }
    }
    drop(contenders);
    drop(floors);

    // One job at a time: through the socket with the pool (warm) and without (a second
    // daemon, `--warm 0`), against bare /bin/true and bubblewrap, interleaved.
    let cold = Daemon::start_with(&options.toolbox, &["--warm", "0"]);
    for _ in 0..20 {
        daemon_job(&cold.socket, &body);
    }
    let rounds = 3;
    let runs = options.runs.max(100);
    println!(
        "\none /bin/true job through the socket, {rounds} rounds of {runs} interleaved runs each:"
    );
    let bare = ["/bin/true".to_string()];
    let (mut warm_ratios, mut cold_ratios) = (Vec::new(), Vec::new());
    let mut all: [Vec<Duration>; 4] = Default::default();
    for round in 1..=rounds {
        let mut times: [Vec<Duration>; 4] = Default::default();
        for i in 0..runs {
            for k in 0..4 {
                let which = (i + k) % 4;
                let took = match which {
                    0 => run_once(&bare),
                    1 => daemon_job(&daemon.socket, &body),
                    2 => daemon_job(&cold.socket, &body),
                    _ => match &bwrap {
                        Some(argv) => run_once(argv),
                        None => continue,
                    },
                };
                times[which].push(took);
            }
        }
        let median: Vec<f64> = times.iter().map(|t| percentile(t, 0.5)).collect();
        let over = |ms: f64| ms - median[0];
        let line = if bwrap.is_some() {
            warm_ratios.push(over(median[1]) / over(median[3]));
            cold_ratios.push(over(median[2]) / over(median[3]));
            format!(
                ", bubblewrap {:.2} ms; overhead vs bubblewrap's: warm {:.2}, cold {:.2}",
                median[3],
                over(median[1]) / over(median[3]),
                over(median[2]) / over(median[3])
            )
        } else {
            String::new()
        };
        println!(
            "  round {round}: bare {:.2} ms, warm {:.2} ms, cold {:.2} ms{line}",
            median[0], median[1], median[2]
        );
        for (all, times) in all.iter_mut().zip(times) {
            all.extend(times);
        }
    }
    let bare_ms = percentile(&all[0], 0.5);
    for (name, times) in [
        ("through the socket, warm", &all[1]),
        ("through the socket, cold", &all[2]),
        ("bubblewrap", &all[3]),
    ] {
        if !times.is_empty() {
            println!(
                "  {name:<26} median {:.2} ms (overhead {:.2} ms), p99 {:.2} ms",
                percentile(times, 0.5),
                percentile(times, 0.5) - bare_ms,
                percentile(times, 0.99)
            );
        }
    }
    if !warm_ratios.is_empty() {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "  overhead ratio vs bubblewrap's, median of rounds: warm {:.2} (target: at most 0.3), cold {:.2}",
            median(&mut warm_ratios),
            median(&mut cold_ratios)
        );
    }
    drop(cold);

    let flood = format!(
        r#"{{"argv":["head","-c","1G","/dev/zero"],"cwd":"{}","limits":{{"output":"1M"}}}}"#,
        ws.display()
    );
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| daemon_job(&daemon.socket, &flood));
        }
    });
    let floods = start.elapsed();
    println!(
        "\ndaemon RSS: idle {:.1} MiB; peak {:.1} MiB after 8 concurrent 1 GiB floods ({:.1} s; target: under 64 MiB)",
        idle_kib as f64 / 1024.0,
        daemon.status_kib("VmHWM:") as f64 / 1024.0,
        floods.as_secs_f64()
    );
    drop(daemon);
    let _ = std::fs::remove_dir(&ws);
}

/// Start a detached job; its id.
fn detach(socket: &Path, body: &str) -> String {
    let answer = http(socket, "POST", "/v1/jobs", body);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "detach failed: {answer}"
    );
    field(&answer, "job_id").expect("job_id").to_string()
}

fn exec(options: &Options) {
    let ws = workspace();
    let daemon = Daemon::start_with(
        &options.toolbox,
        &["--keep-ended", "64", "--max-detached", "64"],
    );
    let ws_str = ws.display().to_string();
    let host = detach(
        &daemon.socket,
        &format!(r#"{{"argv":["sleep","3600"],"cwd":"{ws_str}","detach":true}}"#),
    );
    let job = format!(r#"{{"argv":["/bin/true"],"cwd":"{ws_str}"}}"#);
    let exec_path = format!("/v1/jobs/{host}/exec");
    let exec_body = r#"{"argv":["/bin/true"]}"#;
    for _ in 0..20 {
        daemon_job(&daemon.socket, &job);
        daemon_job_at(&daemon.socket, &exec_path, exec_body);
    }
    let (mut new_times, mut exec_times) = (Vec::new(), Vec::new());
    for _ in 0..options.runs.max(200) {
        new_times.push(daemon_job(&daemon.socket, &job));
        exec_times.push(daemon_job_at(&daemon.socket, &exec_path, exec_body));
    }
    let (new_median, exec_median) = (percentile(&new_times, 0.5), percentile(&exec_times, 0.5));
    println!(
        "\none /bin/true through the socket, {} interleaved runs each:",
        new_times.len()
    );
    println!(
        "  a new job:                    median {new_median:.2} ms, p99 {:.2} ms",
        percentile(&new_times, 0.99)
    );
    println!(
        "  exec'd into a running job:    median {exec_median:.2} ms, p99 {:.2} ms",
        percentile(&exec_times, 0.99)
    );
    println!("  ratio exec / new job: {:.2}", exec_median / new_median);
    http(&daemon.socket, "DELETE", &format!("/v1/jobs/{host}"), "");

    // Output each job holds: 2 MB written, of which the 1 MiB cap keeps half a MiB of head
    // and half a MiB of tail.
    let write = "head -c 2000000 /dev/zero | tr '\\\\0' x";
    let ended: Vec<String> = (0..50)
        .map(|_| {
            detach(
                &daemon.socket,
                &format!(r#"{{"argv":["sh","-c","{write}"],"cwd":"{ws_str}","detach":true}}"#),
            )
        })
        .collect();
    let running: Vec<String> = (0..8)
        .map(|_| {
            detach(
                &daemon.socket,
                &format!(
                    r#"{{"argv":["sh","-c","{write}; exec sleep 3600"],"cwd":"{ws_str}","detach":true}}"#
                ),
            )
        })
        .collect();
    let done = |id: &str, state: &str| {
        let answer = http(&daemon.socket, "GET", &format!("/v1/jobs/{id}"), "");
        field(&answer, "state") == Some(state) && field(&answer, "stdout_bytes") == Some("2000000")
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(ended.iter().all(|id| done(id, "ended"))
        && running.iter().all(|id| done(id, "running")))
    {
        assert!(
            Instant::now() < deadline,
            "the detached jobs did not get there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = http(&daemon.socket, "GET", "/metrics", "");
    let held = metrics
        .lines()
        .find_map(|l| l.strip_prefix("toolbox_detached_output_bytes "))
        .unwrap_or("?")
        .to_string();
    println!(
        "\ndaemon RSS with 8 running and 50 ended detached jobs holding their output: {:.1} MiB (output held: {:.1} MiB; peak RSS {:.1} MiB)",
        daemon.status_kib("VmRSS:") as f64 / 1024.0,
        held.parse::<f64>().unwrap_or(0.0) / 1048576.0,
        daemon.status_kib("VmHWM:") as f64 / 1024.0,
    );
    for id in &running {
        http(&daemon.socket, "DELETE", &format!("/v1/jobs/{id}"), "");
    }
    drop(daemon);
    let _ = std::fs::remove_dir(&ws);
}
