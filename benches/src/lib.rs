//! toolbox benchmarks: see `src/bin/spawn-bench.rs` and `benches/hot_paths.rs`.
