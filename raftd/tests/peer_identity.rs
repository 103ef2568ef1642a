//! Who may speak Raft (issue 14), on real processes: members only, under the data dir
//! incarnation the configuration recorded, one connection per id; a wiped disk never comes
//! back under its old identity; crafted frames from a member change nothing.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

fn wait_log(path: &std::path::Path, needle: &str, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
        assert!(Instant::now() < deadline, "{what}: no {needle:?} in {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hello_answer(addr: &str, hello: &Hello) -> HelloAck {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, hello).unwrap();
    read_frame(&mut s).unwrap()
}

#[test]
fn a_wiped_member_restarted_with_initial_cluster_refuses_to_start() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    cluster.put("acknowledged", "1");
    let victim = if leader == 3 { 2 } else { 3 };
    let node = cluster.node(victim);
    node.kill();
    let old = incarnation_of(&node.data_dir);
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    node.start();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = cluster.node(victim).child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the wiped node did not refuse: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&cluster.node(victim).log).unwrap();
    let expected = format!("node {victim}'s data dir was replaced");
    assert!(log.contains(&expected) && log.contains(&format!("expected {old:016x}")), "{log}");
    assert!(log.contains("raftctl member remove"), "the remedy is named: {log}");
    cluster.node(victim).child = None;
    cluster.put("after", "2");
    assert_eq!(cluster.get("acknowledged"), Some(b"1".to_vec()));
}

/// The reproduction of the issue: a wiped follower granted its vote and an acknowledged
/// write was lost. Here the wiped node (started with --join, as for a new member) cannot
/// speak Raft under its old id: with the leader gone it is no quorum with the other
/// follower, and when the leader returns every acknowledged write is there.
#[test]
fn a_wiped_member_started_with_join_never_votes_under_its_old_id() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    cluster.put("acknowledged", "1");
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let other = (1..=3).find(|&id| id != leader && id != victim).unwrap();
    let node = cluster.node(victim);
    node.kill();
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    let i = node.args.iter().position(|a| a == "--initial-cluster").unwrap();
    node.args.drain(i..i + 2);
    node.args.push("--join".into());
    node.start();
    let leader_log = cluster.node(leader).log.clone();
    wait_log(&leader_log, &format!("node {victim}'s data dir was replaced"), "leader");
    cluster.node(leader).kill();
    // Ten election timeouts and more (10 ticks of 20 ms each): no leader among the two.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(s) = cluster.node(other).client().and_then(|mut c| c.status()) {
            assert_ne!(s.role, "leader", "elected with the wiped node's vote: {}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.node(leader).start();
    assert_eq!(cluster.get("acknowledged"), Some(b"1".to_vec()));
}

#[test]
fn a_new_cluster_bootstraps_once_every_initial_member_started() {
    let mut cluster = TestCluster::start_some(3, &[1, 2], &[]);
    wait_log(&cluster.node(1).log.clone(), "waiting for initial members [3]", "node 1");
    assert!(cluster.node(1).client().is_err(), "no client port before bootstrapping");
    cluster.node(3).start();
    cluster.wait_for_leader();
    cluster.put("k", "v");
    for id in 1..=3 {
        let log = std::fs::read_to_string(&cluster.node(id).log).unwrap();
        assert!(log.contains("bootstrapped cluster"), "node {id}: {log}");
    }
}

#[test]
fn only_members_speak_raft_on_one_connection_each_and_never_move_an_address() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let addr = cluster.node(follower).peer_addr.clone();
    // A non-member, however well formed.
    match hello_answer(&addr, &peer_hello(&cluster.cluster_id, 9, 0x1234)) {
        HelloAck::Refused { reason } => assert!(reason.contains("not a member"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A member's id without its data dir: refused as replaced.
    match hello_answer(&addr, &peer_hello(&cluster.cluster_id, leader, 0x1234)) {
        HelloAck::Replaced { expected, found, .. } => {
            assert_eq!(expected, incarnation_of(&cluster.node(leader).data_dir));
            assert_eq!(found, 0x1234);
        }
        other => panic!("{other:?}"),
    }
    // The leader's id and incarnation while the leader is connected: a second connection,
    // refused; the address the configuration holds for it is kept. (The leader dials the
    // follower in its own time, after a backoff if it dialled during the bootstrap: wait
    // until the follower holds a write the leader sent it, so the connection exists.)
    let index = cluster.put("connected", "1");
    let deadline = Instant::now() + DEADLINE;
    while cluster.node(follower).wait_client().status().unwrap().applied < index {
        assert!(Instant::now() < deadline, "the follower never applied {index}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let incarnation = incarnation_of(&cluster.node(leader).data_dir);
    let hello = Hello {
        peer_addr: Some("127.0.0.1:1".into()),
        ..peer_hello(&cluster.cluster_id, leader, incarnation)
    };
    match hello_answer(&addr, &hello) {
        HelloAck::Refused { reason } => assert!(reason.contains("already connected"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let status = cluster.node(follower).wait_client().status().unwrap();
    let member = status.members.iter().find(|m| m.id == leader).unwrap();
    assert_eq!(member.peer_addr.as_deref(), Some(cluster.node(leader).peer_addr.as_str()));
    cluster.put("still", "serving");
}

const MESSAGE_TYPES: [raft::MessageType; 20] = {
    use raft::MessageType::*;
    [
        Hup,
        Beat,
        Propose,
        Append,
        AppendResponse,
        RequestVote,
        RequestVoteResponse,
        Snapshot,
        Heartbeat,
        HeartbeatResponse,
        Unreachable,
        SnapshotStatus,
        CheckQuorum,
        TransferLeader,
        TimeoutNow,
        ReadIndex,
        ReadIndexResp,
        RequestPreVote,
        RequestPreVoteResponse,
        TransferNotice,
    ]
};

/// Opens a peer connection as `speaker` and sends one frame; a frame that is refused closes
/// its connection, so every frame gets its own. Retries while the node still holds the
/// previous connection.
fn send_as(addr: &str, cluster_id: &str, speaker: u64, incarnation: u64, m: raft::Message) {
    send_frame_as(addr, cluster_id, speaker, incarnation, &[PeerFrame::Raft(m)]);
}

/// Opens a peer connection as `speaker` and sends `frames` on it.
fn send_frame_as(
    addr: &str,
    cluster_id: &str,
    speaker: u64,
    incarnation: u64,
    frames: &[PeerFrame],
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write_frame(&mut s, &peer_hello(cluster_id, speaker, incarnation)).unwrap();
            if let Ok(HelloAck::Welcome { .. }) = read_frame::<HelloAck>(&mut s) {
                for frame in frames {
                    let _ = write_frame(&mut s, frame);
                }
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never welcomed {speaker} again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_running(cluster: &mut TestCluster, ids: &[u64]) {
    for &id in ids {
        let child = cluster.node(id).child.as_mut().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "node {id} exited: {}", cluster.logs());
    }
}

/// Every message type, with absurd fields and with terms around the current one, from a
/// member's identity (its process killed, the test speaking for it): no node crashes, and
/// every acknowledged write survives.
#[test]
fn crafted_frames_of_every_type_from_a_member_leave_the_cluster_serving() {
    use raft::{Entry, Message, MessageType, Snapshot, SnapshotMetadata, TERM_JUMP_MAX};
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    for i in 0..20 {
        cluster.put(&format!("k{i}"), "v");
    }
    let status = cluster.node(leader).wait_client().status().unwrap();
    let (term, commit) = (status.term, status.commit);
    let speaker = (1..=3).find(|&id| id != leader).unwrap();
    let incarnation = incarnation_of(&cluster.node(speaker).data_dir);
    cluster.node(speaker).kill();
    let terms = [0, term - 1, term, term + 1, term + TERM_JUMP_MAX + 1, u64::MAX];
    let absurd = [0, 1, commit, commit + 1, u64::MAX, u64::MAX / 2, 1 << 40];
    let targets: Vec<u64> = (1..=3).filter(|&id| id != speaker).collect();
    let cluster_id = cluster.cluster_id.clone();
    let mut sent = 0;
    for &to in &targets {
        let addr = cluster.node(to).peer_addr.clone();
        for (n, &msg_type) in MESSAGE_TYPES.iter().enumerate() {
            for (k, &term) in terms.iter().enumerate() {
                let x = absurd[(k + n) % absurd.len()];
                let m = Message {
                    msg_type,
                    to,
                    from: speaker,
                    term,
                    log_term: absurd[(k + 1) % absurd.len()].min(term),
                    index: x,
                    entries: vec![Entry {
                        term: x.min(term),
                        index: x.saturating_add(1),
                        data: vec![0xff; 8].into(),
                        ..Entry::default()
                    }],
                    commit: absurd[(k + 2) % absurd.len()],
                    snapshot: (msg_type == MessageType::Snapshot).then(|| {
                        Box::new(Snapshot {
                            data: vec![1, 2, 3],
                            metadata: SnapshotMetadata { index: x, term: x, ..Default::default() },
                        })
                    }),
                    reject: k % 2 == 0,
                    reject_hint: x,
                    context: if k % 3 == 0 {
                        raft::Bytes::from_static(raft::CAMPAIGN_TRANSFER)
                    } else {
                        raft::Bytes::from(vec![0xee; 4])
                    },
                    sent_at: absurd[(k + 3) % absurd.len()],
                };
                send_as(&addr, &cluster_id, speaker, incarnation, m);
                sent += 1;
            }
        }
    }
    assert_eq!(sent, targets.len() * MESSAGE_TYPES.len() * terms.len());
    assert_running(&mut cluster, &targets);
    cluster.node(speaker).start();
    cluster.put("after", "1");
    for i in 0..20 {
        assert_eq!(cluster.get(&format!("k{i}")), Some(b"v".to_vec()), "k{i}");
    }
    assert_running(&mut cluster, &[1, 2, 3]);
}

/// A transfer campaign's vote request that the leader never asked for (Raft thesis §3.10
/// lets only the leader start one): the voters' leases hold, the term stays, the leader
/// keeps leading.
#[test]
fn a_transfer_campaign_the_leader_never_started_moves_nothing() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    cluster.put("before", "1");
    let term = cluster.node(leader).wait_client().status().unwrap().term;
    let speaker = (1..=3).find(|&id| id != leader).unwrap();
    let incarnation = incarnation_of(&cluster.node(speaker).data_dir);
    cluster.node(speaker).kill();
    let cluster_id = cluster.cluster_id.clone();
    let targets: Vec<u64> = (1..=3).filter(|&id| id != speaker).collect();
    for &to in &targets {
        let mut m = raft::Message {
            msg_type: raft::MessageType::RequestVote,
            to,
            from: speaker,
            term: term + 1,
            log_term: term,
            index: u64::MAX / 2,
            ..raft::Message::default()
        };
        m.context = raft::Bytes::from_static(raft::CAMPAIGN_TRANSFER);
        let addr = cluster.node(to).peer_addr.clone();
        send_as(&addr, &cluster_id, speaker, incarnation, m);
    }
    for &id in &targets {
        let log = cluster.node(id).log.clone();
        wait_log(&log, "holds a transfer campaign's", &format!("node {id}"));
        let status = cluster.node(id).wait_client().status().unwrap();
        assert_eq!((status.term, status.leader), (term, leader), "node {id}");
    }
    cluster.put("after", "1");
    assert_eq!(cluster.node(leader).wait_client().status().unwrap().term, term);
}

/// A non-member gets no further than its Hello, whatever follows it, and a frame sent in
/// place of a Hello is refused: the node keeps serving.
#[test]
fn frames_of_every_type_from_a_non_member_are_refused_at_the_door() {
    use std::io::Read;
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    cluster.put("before", "1");
    let term = cluster.node(leader).wait_client().status().unwrap().term;
    let cluster_id = cluster.cluster_id.clone();
    for id in 1..=3u64 {
        let addr = cluster.node(id).peer_addr.clone();
        for msg_type in MESSAGE_TYPES {
            let m = raft::Message {
                msg_type,
                to: id,
                from: 9,
                term: term + 1,
                log_term: term,
                index: u64::MAX / 2,
                commit: u64::MAX,
                context: raft::Bytes::from_static(raft::CAMPAIGN_TRANSFER),
                ..raft::Message::default()
            };
            // After a refused Hello: the connection is closed, the frame never read.
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write_frame(&mut s, &peer_hello(&cluster_id, 9, 0x99)).unwrap();
            let _ = write_frame(&mut s, &PeerFrame::Raft(m.clone()));
            match read_frame::<HelloAck>(&mut s) {
                Ok(HelloAck::Refused { reason }) => assert!(reason.contains("not a member")),
                other => panic!("{other:?}"),
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            // In place of a Hello.
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = write_frame(&mut s, &PeerFrame::Raft(m));
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    }
    assert_running(&mut cluster, &[1, 2, 3]);
    for id in 1..=3 {
        let status = cluster.node(id).wait_client().status().unwrap();
        assert_eq!((status.term, status.leader), (term, leader), "node {id}");
    }
    cluster.put("after", "1");
    assert_eq!(cluster.get("before"), Some(b"1".to_vec()));
}

/// Only the leader streams snapshots, one stream at a time, announced within
/// `SNAPSHOT_RECEIVE_BYTES_MAX`, chunk after chunk in order: a stream from a follower, one
/// announcing more, and chunks out of order are each refused and close their connection,
/// and nothing of them is kept.
#[test]
fn a_snapshot_stream_is_taken_only_from_the_leader_in_order_and_within_its_cap() {
    use raft::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
    // Long election timeouts (6-12 s): the receiver still follows the killed leader while the
    // test speaks for it.
    let mut cluster = TestCluster::start(3, &["--election-tick", "300"]);
    let leader = cluster.wait_for_leader();
    cluster.put("k", "v1");
    let mut others = (1..=3).filter(|&id| id != leader);
    let (receiver, follower) = (others.next().unwrap(), others.next().unwrap());
    let status = cluster.node(receiver).wait_client().status().unwrap();
    let leader_incarnation = incarnation_of(&cluster.node(leader).data_dir);
    let follower_incarnation = incarnation_of(&cluster.node(follower).data_dir);
    cluster.node(leader).kill();
    cluster.node(follower).kill();
    let chunk = |from: u64, offset: u64, total: u64, data: Vec<u8>| PeerFrame::SnapshotChunk {
        message: Message {
            msg_type: MessageType::Snapshot,
            to: receiver,
            from,
            term: status.term,
            snapshot: Some(Box::new(Snapshot {
                data: Vec::new(),
                metadata: SnapshotMetadata {
                    conf_state: ConfState { voters: vec![1, 2, 3], ..Default::default() },
                    index: status.last_index + 1000,
                    term: status.term,
                },
            })),
            ..Default::default()
        },
        offset,
        total,
        data: data.into(),
    };
    let addr = cluster.node(receiver).peer_addr.clone();
    let log = cluster.node(receiver).log.clone();
    let id = cluster.cluster_id.clone();
    send_frame_as(&addr, &id, follower, follower_incarnation, &[chunk(follower, 0, 8, vec![0; 8])]);
    wait_log(&log, &format!("a snapshot from {follower}, which is not the leader"), "follower");
    let over = raftd::node::SNAPSHOT_RECEIVE_BYTES_MAX + 1;
    send_frame_as(&addr, &id, leader, leader_incarnation, &[chunk(leader, 0, over, vec![0; 8])]);
    wait_log(&log, &format!("a snapshot of {over} bytes, more than"), "oversize");
    let frames = [chunk(leader, 0, 64, vec![0; 8]), chunk(leader, 32, 64, vec![0; 8])];
    send_frame_as(&addr, &id, leader, leader_incarnation, &frames);
    wait_log(&log, "snapshot chunk out of order", "out of order");
    assert_running(&mut cluster, &[receiver]);
    let after = cluster.node(receiver).wait_client().status().unwrap();
    assert!(after.snapshot_index < status.last_index + 1000, "no refused snapshot in force");
    cluster.node(leader).start();
    cluster.node(follower).start();
    cluster.put("k", "v2");
    assert_eq!(cluster.get("k"), Some(b"v2".to_vec()));
    assert_running(&mut cluster, &[1, 2, 3]);
}

/// A member removed and added back on a new disk: a process of its former data dir (whose
/// hello a partition held, or that had not stopped yet) is refused as removed, and never has
/// its incarnation recorded in place of the new disk's. Before, the id being a member again,
/// the old hello was welcomed and its incarnation recorded first: the new process was then
/// refused for good as a replaced data dir, while its promotion went through (the whole-node
/// simulator's seed 6064).
#[test]
fn a_removed_members_former_data_dir_never_takes_the_place_of_its_new_one() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let old = incarnation_of(&cluster.procs[victim as usize - 1].data_dir);
    cluster.node(victim).kill();
    let leader_proc = &cluster.procs[leader as usize - 1];
    let leader_peer = leader_proc.peer_addr.clone();
    let mut admin = leader_proc.client().unwrap();
    let reply = admin.admin(AdminRequest::Remove { id: victim }).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    cluster.put("while-removed", "1");
    // Its replacement: a new disk, at a new address, added as a learner before it starts.
    let dir = cluster.dir.path().join(format!("node-{victim}-new"));
    let mut new = joiner(&cluster, victim, &[]);
    let i = new.args.iter().position(|a| a == "--data-dir").unwrap();
    new.args[i + 1] = dir.display().to_string();
    new.data_dir = dir;
    let add = AdminRequest::AddLearner { id: victim, addr: new.peer_addr.clone() };
    let reply = admin.admin(add).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    // The former data dir's hello arrives now.
    let hello = peer_hello(&cluster.cluster_id, victim, old);
    match hello_answer(&leader_peer, &hello) {
        HelloAck::Removed { node_id } => assert_eq!(node_id, leader),
        other => panic!("a former data dir of node {victim} was answered {other:?}"),
    }
    // The new one gets in, is promoted and catches up.
    new.start();
    let reply = promote(&mut admin, victim);
    assert!(
        matches!(&reply, Ok(AdminReply::Membership { voters, .. }) if voters.contains(&victim)),
        "{reply:?}"
    );
    let commit = cluster.put("after", "2");
    let mut c = new.wait_client();
    let deadline = Instant::now() + DEADLINE;
    while c.status().unwrap().applied < commit {
        assert!(Instant::now() < deadline, "the new node {victim} never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut status = cluster.procs[leader as usize - 1].client().unwrap().status().unwrap();
    status.members.retain(|m| m.id == victim);
    assert_eq!(status.members[0].role, "voter", "{status:?}");
}
