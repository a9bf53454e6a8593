//! toolbox benchmarks: see `src/bin/spawn-bench.rs` and `benches/hot_paths.rs`.
#![allow(unsafe_code)]

pub mod floor;
