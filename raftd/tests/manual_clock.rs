//! The node reads time only through its [`Clock`] (issue 17, first step toward running the
//! whole node under a simulator): on a clock that does not move, a one-node cluster never
//! ticks, so never elects itself however long it runs; moved past the election timeout, it
//! does, and its commands carry that clock's wall time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use raftd::args::Args;
use raftd::clock::ManualClock;
use raftd::node::Node;
use raftd::protocol::*;

#[test]
fn a_node_on_a_manual_clock_ticks_only_when_its_clock_moves() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let peer = format!("127.0.0.1:{}", ports[0]);
    let client = format!("127.0.0.1:{}", ports[1]);
    let data_dir = dir.path().join("node-1").display().to_string();
    let initial = format!("1={peer}");
    let args = Args::parse_from([
        "raftd",
        "--id",
        "1",
        "--data-dir",
        &data_dir,
        "--listen-peer",
        &peer,
        "--listen-client",
        &client,
        "--initial-cluster",
        &initial,
        "--tick-interval-ms",
        "20",
    ]);
    let config = args.to_config().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let shutdown = Arc::new(AtomicBool::new(false));
    let node = {
        let (clock, shutdown) = (clock.clone(), shutdown.clone());
        std::thread::spawn(move || Node::with_clock(config, shutdown, clock)?.run())
    };
    let mut c = {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(c) = Client::connect(&client) {
                break c;
            }
            assert!(Instant::now() < deadline, "the node never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Half a second of real time, 25 ticks' worth, and not one tick: no election (the term
    // stays the bootstrap's).
    let term = c.status().unwrap().term;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        let status = c.status().unwrap();
        assert_eq!((status.role.as_str(), status.term), ("follower", term), "{status:?}");
    }
    // The clock moves, tick by tick: it elects itself.
    let deadline = Instant::now() + DEADLINE;
    loop {
        clock.advance(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(2));
        if c.status().unwrap().role == "leader" {
            break;
        }
        assert!(Instant::now() < deadline, "never leader: {:?}", c.status());
    }
    let put = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() };
    assert!(c.kv(put).unwrap().is_ok());
    let status = c.status().unwrap();
    assert!(status.uptime_secs < 60, "uptime by the manual clock: {status:?}");
    shutdown.store(true, Ordering::Relaxed);
    node.join().unwrap().unwrap();
}
