//! Benchmarks only: see `benches/` and BENCHMARKS.md. Run with `cargo bench -p weir-benches`.
