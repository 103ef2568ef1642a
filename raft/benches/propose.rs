//! Benchmarks: committed proposals per second through an in-memory cluster.
fn main() {}
