//! Members named by host name (issue 16, item 5): addresses are `HOST:PORT`, and a name is
//! resolved when the node dials it, off the event loop.

mod common;

use common::*;
use raftd::protocol::*;

/// Before, every address had to be an IP address: `--initial-cluster 1=node1:7001` and
/// `member add-learner 4 node4:7004` were refused. A cluster whose members are all named
/// `localhost:PORT` elects, serves, and adds and promotes a member given by name.
#[test]
fn a_cluster_of_host_names_serves_and_adds_a_member_by_name() {
    let mut cluster = TestCluster::start_some(3, &[], &[]);
    for p in &mut cluster.procs {
        for arg in p.args.iter_mut().filter(|a| a.contains("=127.0.0.1:")) {
            *arg = arg.replace("127.0.0.1", "localhost");
        }
        assert!(p.args.iter().any(|a| a.starts_with("1=localhost:")), "{:?}", p.args);
        p.start();
    }
    let leader = cluster.wait_for_leader();
    cluster.put("named", "1");
    assert_eq!(cluster.get("named"), Some(b"1".to_vec()));

    let mut admin = cluster.procs[leader as usize - 1].wait_client();
    let mut learner = joiner(&cluster, 4, &[]);
    learner.start();
    let name = learner.peer_addr.replace("127.0.0.1", "localhost");
    let reply = admin.admin(AdminRequest::AddLearner { id: 4, addr: name.clone() }).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    // Promoted only once it caught up: the leader reached it by its name.
    let reply = promote(&mut admin, 4);
    assert!(
        matches!(&reply, Ok(AdminReply::Membership { voters, .. }) if voters.contains(&4)),
        "{reply:?}: {}",
        cluster.logs()
    );
    cluster.procs.push(learner);
    let index = cluster.put("after", "2");
    // The new member applies it: the leader reaches it at its name.
    let mut c = cluster.procs[3].wait_client();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let status = c.status().unwrap();
        if status.applied >= index {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}: {}", cluster.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = c.kv(Op::Get { key: b"after".to_vec(), serializable: true }).unwrap().unwrap();
    assert_eq!(got.result, OpResult::Get(Some(b"2".to_vec())));
    assert_eq!(cluster.get("after"), Some(b"2".to_vec()));
}
