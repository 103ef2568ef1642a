//! Issue 20, upgrades: a peer or client of a wire protocol this build does not speak is
//! refused, on each port and while the node waits to bootstrap, with a message naming both
//! versions; the node keeps serving.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

/// The answer of the node at `addr` to `hello`, retried while it does not listen yet.
fn answer<T: serde::Serialize>(addr: &str, hello: &T) -> HelloAck {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let attempt = TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write_frame(&mut s, hello)?;
            read_frame::<HelloAck>(&mut s)
        });
        match attempt {
            Ok(ack) => return ack,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer from {addr}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn versions(min: u32, max: u32) -> ProtocolVersions {
    ProtocolVersions { magic: HELLO_MAGIC, min, max }
}

/// A Hello as builds before versioned handshakes encoded it (no versions first).
#[derive(serde::Serialize)]
struct UnversionedHello {
    cluster_id: String,
    node_id: u64,
    role: Role,
    token: Option<String>,
    client_addr: Option<String>,
    peer_addr: Option<String>,
    incarnation: u64,
    cluster_incarnation: u64,
}

fn assert_refused(ack: HelloAck, needles: &[&str]) {
    match ack {
        HelloAck::Refused { reason } => {
            for needle in needles {
                assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
            }
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_peer_or_client_of_another_wire_protocol_is_refused_naming_both_versions() {
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader();
    let ours = format!("{PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}");
    let newer = PROTOCOL_VERSION + 1;
    let newer_range = format!("{newer}..={newer}");
    let older = PROTOCOL_VERSION_MIN - 1;
    let older_range = format!("{older}..={older}");
    for p in &cluster.procs {
        // Clients: newer only, older only.
        let hello = Hello { versions: versions(newer, newer), ..Hello::client("", None) };
        assert_refused(answer(&p.client_addr, &hello), &[&newer_range, &ours, "node is too old"]);
        let hello = Hello { versions: versions(older, older), ..Hello::client("", None) };
        assert_refused(answer(&p.client_addr, &hello), &[&older_range, &ours, "peer is too old"]);
        // Peers.
        let hello =
            Hello { versions: versions(newer, newer), ..peer_hello(&cluster.cluster_id, 9, 1) };
        assert_refused(answer(&p.peer_addr, &hello), &[&newer_range, &ours]);
        // A build from before versioned handshakes.
        let old = UnversionedHello {
            cluster_id: cluster.cluster_id.clone(),
            node_id: 9,
            role: Role::Peer,
            token: None,
            client_addr: None,
            peer_addr: None,
            incarnation: 1,
            cluster_incarnation: 0,
        };
        assert_refused(answer(&p.peer_addr, &old), &["wire protocol 1", &ours]);
        // A range that overlaps ours is welcomed.
        let hello =
            Hello { versions: versions(PROTOCOL_VERSION, newer), ..Hello::client("", None) };
        match answer(&p.client_addr, &hello) {
            HelloAck::Welcome { protocol, .. } => assert_eq!(protocol, PROTOCOL_VERSION),
            other => panic!("{other:?}"),
        }
    }
    let logs = cluster.logs();
    assert!(logs.contains(&newer_range) && logs.contains(&ours), "refusals logged");
    cluster.put("still", "serving");
    assert_eq!(cluster.get("still"), Some(b"serving".to_vec()));
}

#[test]
fn a_node_waiting_to_bootstrap_refuses_another_wire_protocol() {
    // Node 1 of 3 alone: it waits for the others before bootstrapping.
    let cluster = TestCluster::start_some(3, &[1], &[]);
    let addr = cluster.procs[0].peer_addr.clone();
    let hello = Hello {
        versions: versions(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 1),
        ..peer_hello(&cluster.cluster_id, 2, 7)
    };
    assert_refused(answer(&addr, &hello), &["no version in common"]);
    // Its own version is answered as before: it waits to bootstrap.
    let hello = peer_hello(&cluster.cluster_id, 2, 7);
    assert!(matches!(answer(&addr, &hello), HelloAck::Bootstrapping { node_id: 1, .. }));
}
