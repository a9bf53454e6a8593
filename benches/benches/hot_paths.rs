//! In-process hot paths of the supervisor: what every job pays before its shim runs, and
//! what every byte of output costs.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use toolbox::output::Capper;
use toolbox::policy::{Policy, BUILTIN_DEFAULT};

fn output_capping(c: &mut Criterion) {
    let chunk = vec![b'x'; 128 * 1024];
    let mut group = c.benchmark_group("output");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    // Past the head: every chunk goes through the tail ring (the 1 GiB flood case).
    group.bench_function("capper_push_128k_past_head", |b| {
        let mut capper = Capper::new(1 << 20);
        for _ in 0..16 {
            capper.push(&chunk);
        }
        b.iter(|| black_box(capper.push(black_box(&chunk)).len()));
    });
    group.finish();
}

fn planning(c: &mut Criterion) {
    c.bench_function("policy_parse_default", |b| {
        b.iter(|| {
            Policy::parse(
                "default",
                Path::new("default.toml"),
                black_box(BUILTIN_DEFAULT),
            )
            .map(|p| p.limits.pids)
        })
    });
    c.bench_function("seccomp_compile", |b| {
        b.iter(|| toolbox::seccomp::compile().map(|p| p.len()))
    });
    let policy =
        Policy::parse("default", Path::new("default.toml"), BUILTIN_DEFAULT).expect("valid");
    let ws = std::env::temp_dir();
    // The caller's home, as `toolbox run` shows it under the default policy (its toolchains).
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    c.bench_function("view_build", |b| {
        b.iter(|| {
            toolbox::view::build(
                &policy,
                &toolbox::view::Extra {
                    workspace: &ws,
                    ro: &[],
                    rw: &[],
                    home: home.as_deref(),
                },
            )
            .map(|v| v.mounts.len())
        })
    });
}

criterion_group!(benches, output_capping, planning);
criterion_main!(benches);
