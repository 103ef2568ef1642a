//! Real raftd processes on 127.0.0.1 for fault tests: start, kill, restart, pause, partition,
//! and a concurrent workload that records a history for the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raftctl::{Client, CtlError};
use raftd::protocol::*;

use crate::checker::{Input, Operation, Output};
use crate::ports::free_ports;

/// A generous bound for conditions on a slow, loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// Milliseconds per tick in fault tests: elections take a few hundred milliseconds.
pub const TICK_MS: u64 = 20;

/// The directory holding `raftd`: next to the test binary's `target/<profile>/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // A test binary lives in target/<profile>/deps, the chaos binary in target/<profile>.
    let here = exe.parent().expect("a directory").to_path_buf();
    let dir = if here.join("raftd").exists() {
        here
    } else {
        here.parent().expect("target/<profile>").to_path_buf()
    };
    assert!(
        dir.join("raftd").exists(),
        "raftd is not built in {}: run `cargo build -p raftd` or `cargo test --workspace`",
        dir.display()
    );
    dir
}

/// One raftd process.
pub struct Node {
    /// Its id.
    pub id: u64,
    /// Its peer address.
    pub peer_addr: String,
    /// Its client address.
    pub client_addr: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Its flags (change them before a restart to restart differently).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let child = Command::new(bin_dir().join("raftd"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftd");
        self.child = Some(child);
    }

    /// Sends signal `sig` (as `kill` takes it: `-HUP`, `-STOP`).
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill");
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("node {} did not exit; its log ends:\n{}", self.id, tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The TLS flags of node `id` whose certificates `raftctl certs` wrote in `certs`: its
/// certificate on both ports.
pub fn tls_args(certs: &Path, id: u64) -> Vec<String> {
    let cert = certs.join(format!("node-{id}.pem")).display().to_string();
    let key = certs.join(format!("node-{id}-key.pem")).display().to_string();
    vec![
        format!("--peer-cert-file={cert}"),
        format!("--peer-key-file={key}"),
        format!("--peer-trusted-ca-file={}", certs.join("ca.pem").display()),
        format!("--cert-file={cert}"),
        format!("--key-file={key}"),
    ]
}

/// A cluster of raftd processes with fault injection allowed.
pub struct Cluster {
    /// Data dirs and logs.
    pub dir: tempfile::TempDir,
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Node>,
    /// How clients reach the client ports (None: plaintext).
    pub client_tls: Option<raftctl::TlsConfig>,
}

impl Cluster {
    /// Starts `n` nodes with `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(n, extra, false)
    }

    /// [`Cluster::start`] with every node recording what its syncs made durable
    /// (`--shadow-dir`), so that [`Cluster::power_cut`] can cut its power.
    pub fn start_shadowed(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(n, extra, true)
    }

    /// Where node `id` records what is durable, when shadowed.
    pub fn shadow_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("shadow-{id}"))
    }

    /// A power cut of node `id`: the process is killed, and its data dir rebuilt as the disk
    /// would be after losing power at that moment: only what its syncs made durable, plus
    /// each unsynced page for which `keep` says so. Start it again with [`Cluster::restart`].
    pub fn power_cut(&mut self, id: u64, keep: &mut dyn FnMut(u64) -> bool) -> wal::fs::PowerCut {
        self.kill(id);
        let data_dir = self.nodes[&id].data_dir.clone();
        wal::fs::power_cut_shadowed(&data_dir, &self.shadow_dir(id), keep)
            .expect("the data dir is rebuilt from its shadow")
    }

    /// [`Cluster::start`] with TLS on both ports: a CA and node certificates in
    /// [`Cluster::certs_dir`] (`raftctl certs`), clients trusting the CA, and with
    /// `client_cert_auth` every client presenting `client.pem`.
    pub fn start_tls(n: usize, extra: &[&str], client_cert_auth: bool) -> Cluster {
        Cluster::start_each(n, false, &mut |cluster, id| {
            let certs = cluster.certs_dir();
            let ids: Vec<u64> = (1..=n as u64).collect();
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            raftctl::certs::create(&certs, &cluster.cluster_id(), &ids, &hosts, 1)
                .expect("certificates");
            if cluster.client_tls.is_none() {
                let cert_key = (certs.join("client.pem"), certs.join("client-key.pem"));
                let cert_key = client_cert_auth.then_some((&*cert_key.0, &*cert_key.1));
                cluster.client_tls =
                    Some(raftctl::tls_config(&certs.join("ca.pem"), cert_key).expect("client TLS"));
            }
            let mut args = tls_args(&certs, id);
            if client_cert_auth {
                args.push("--client-cert-auth".to_string());
                args.push(format!("--trusted-ca-file={}", certs.join("ca.pem").display()));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
    }

    /// Where [`Cluster::start_tls`] keeps the certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The cluster's id: unique per cluster, since tests run in parallel and a node must never
    /// take another test's node (at a reused port) for a member of its own cluster.
    pub fn cluster_id(&self) -> String {
        format!(
            "faults{}",
            self.dir.path().file_name().map_or_else(String::new, |n| n.to_string_lossy().into())
        )
    }

    fn start_on(n: usize, extra: &[&str], shadowed: bool) -> Cluster {
        Cluster::start_each(n, shadowed, &mut |_, _| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Starts `n` nodes, node `id` with the flags `flags(id)` besides the usual ones.
    pub fn start_each_flags(n: usize, flags: &mut dyn FnMut(u64) -> Vec<String>) -> Cluster {
        Cluster::start_each(n, false, &mut |_, id| flags(id))
    }

    /// Starts `n` nodes, node `id` with the flags `flags(cluster, id)` besides the usual ones.
    fn start_each(
        n: usize,
        shadowed: bool,
        flags: &mut dyn FnMut(&mut Cluster, u64) -> Vec<String>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2 * n);
        let peers: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let initial: Vec<String> =
            peers.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let mut cluster = Cluster { dir, nodes: BTreeMap::new(), client_tls: None };
        for i in 0..n {
            let id = i as u64 + 1;
            let client_addr = format!("127.0.0.1:{}", ports[n + i]);
            let mut args = vec![format!("--initial-cluster={}", initial.join(","))];
            if shadowed {
                args.push(format!("--shadow-dir={}", cluster.shadow_dir(id).display()));
            }
            let more = flags(&mut cluster, id);
            args.extend(more);
            cluster.add_node(id, peers[i].clone(), client_addr, args);
        }
        cluster.wait_members_up();
        cluster
    }

    /// Waits until every node answers its status as a member of its own configuration: a
    /// node with an empty data dir first asks the others whether the cluster exists, and a
    /// leader may be elected by the others meanwhile (tests that then talk to every node, or
    /// damage one's log, need all of them up).
    fn wait_members_up(&self) {
        let deadline = Instant::now() + DEADLINE;
        for &id in self.nodes.keys() {
            while !self.status(id).is_some_and(|s| s.members.iter().any(|m| m.id == s.id)) {
                assert!(Instant::now() < deadline, "node {id} never came up:\n{}", self.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Creates and starts node `id` with these extra flags.
    pub fn add_node(
        &mut self,
        id: u64,
        peer_addr: String,
        client_addr: String,
        extra: Vec<String>,
    ) {
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let mut args = vec![
            format!("--id={id}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-peer={peer_addr}"),
            format!("--listen-client={client_addr}"),
            format!("--cluster-id={}", self.cluster_id()),
            format!("--tick-interval-ms={TICK_MS}"),
            "--allow-fault-injection".to_string(),
            "--request-timeout-ms=1500".to_string(),
            format!("--segment-size-bytes={}", 1 << 20),
        ];
        args.extend(extra);
        let log = self.dir.path().join(format!("node-{id}.log"));
        let mut node = Node { id, peer_addr, client_addr, data_dir, log, args, child: None };
        node.spawn();
        self.nodes.insert(id, node);
    }

    /// Free peer and client addresses for a new node.
    pub fn new_addrs() -> (String, String) {
        let ports = free_ports(2);
        (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]))
    }

    /// The node.
    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Every node's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client_addr.clone()).collect()
    }

    /// Stops node `id` and forgets it (after it was removed from the configuration).
    pub fn forget(&mut self, id: u64) {
        self.kill(id);
        self.nodes.remove(&id);
    }

    /// The leader's id by asking any node.
    pub fn leader(&self) -> u64 {
        self.wait_for_leader()
    }

    /// A membership change through the current leader, retried until it applies.
    pub fn change(&self, request: AdminRequest) -> AdminReply {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leader = self.wait_for_leader();
            match self.admin(leader, request.clone()) {
                Ok(reply) => return reply,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{request:?} never applied: {e}: {}",
                        self.logs()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped node again with its flags.
    pub fn restart(&mut self, id: u64) {
        self.node(id).spawn();
    }

    /// SIGSTOP: the process stops executing, sockets stay open.
    pub fn pause(&mut self, id: u64) {
        self.node(id).signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        self.node(id).signal("-CONT");
    }

    fn client_of(&self, id: u64) -> Client {
        self.client(vec![self.nodes[&id].client_addr.clone()], Duration::from_secs(2))
    }

    /// A client of `endpoints` (with the cluster's TLS settings).
    pub fn client(&self, endpoints: Vec<String>, timeout: Duration) -> Client {
        let mut client = Client::new(endpoints, timeout, None);
        client.set_tls(self.client_tls.clone());
        client
    }

    /// An admin request to node `id`.
    pub fn admin(&self, id: u64, request: AdminRequest) -> Result<AdminReply, CtlError> {
        let addr = self.nodes[&id].client_addr.clone();
        self.client_of(id).admin_at(&addr, request)
    }

    /// Node `id`'s status, if it answers.
    pub fn status(&self, id: u64) -> Option<NodeStatus> {
        match self.admin(id, AdminRequest::Status) {
            Ok(AdminReply::Status(s)) => Some(*s),
            _ => None,
        }
    }

    /// Waits until node `id` has applied the leader's commit index as it is now. (A node that
    /// joined late, or is still asking the others whether the cluster exists, may not have.)
    pub fn wait_caught_up(&self, id: u64) {
        let deadline = Instant::now() + DEADLINE;
        let commit = loop {
            if let Some(s) = self.status(self.wait_for_leader()) {
                break s.commit;
            }
            assert!(Instant::now() < deadline, "no leader answered its status");
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            let applied = self.status(id).map_or(0, |s| s.applied);
            if applied >= commit {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} applied {applied} of {commit}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts `a` off from `others` in both directions.
    pub fn isolate(&self, a: u64, others: &[u64]) {
        let fault = |drop: Vec<u64>| AdminRequest::Fault {
            drop_to: drop.clone(),
            drop_from: drop,
            delay_ms: 0,
        };
        self.admin(a, fault(others.to_vec())).expect("fault on the isolated node");
        for &o in others {
            let _ = self.admin(o, fault(vec![a]));
        }
    }

    /// Undoes every fault on every running node.
    pub fn heal(&self) {
        for &id in self.nodes.keys() {
            let _ = self.admin(id, AdminRequest::Heal);
        }
    }

    /// Waits until a leader is known by the running nodes that answer; its id.
    pub fn wait_for_leader(&self) -> u64 {
        self.wait_for_leader_among(&self.nodes.keys().copied().collect::<Vec<_>>())
    }

    /// Waits until one of `ids` leads and is recognized by the others among `ids` that answer.
    pub fn wait_for_leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // A node that is not (yet) in its own configuration, a joiner, has no say.
            let statuses: Vec<NodeStatus> = ids
                .iter()
                .filter_map(|&id| self.status(id))
                .filter(|s| s.members.iter().any(|m| m.id == s.id))
                .collect();
            let leaders: BTreeSet<u64> =
                statuses.iter().filter(|s| s.role == "leader").map(|s| s.id).collect();
            if leaders.len() == 1 {
                let leader = *leaders.iter().next().expect("one");
                if statuses.iter().all(|s| s.leader == leader) {
                    return leader;
                }
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = ids
                    .iter()
                    .map(|&id| match self.admin(id, AdminRequest::Status) {
                        Ok(AdminReply::Status(s)) => {
                            format!("{id}: {} of leader {} term {}", s.role, s.leader, s.term)
                        }
                        other => format!("{id}: {other:?}"),
                    })
                    .collect();
                panic!("no agreed leader among {ids:?}: {seen:?}{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node has applied the leader's commit index, then checks
    /// that they hold the same value for every key.
    pub fn assert_converged(&self, keys: &[String]) {
        let deadline = Instant::now() + DEADLINE;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        loop {
            let leader = self.wait_for_leader();
            let commit = self.status(leader).map_or(0, |s| s.commit);
            let applied: Vec<Option<u64>> =
                ids.iter().map(|&id| self.status(id).map(|s| s.applied)).collect();
            if applied.iter().all(|a| a.is_some_and(|a| a >= commit)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not converge: {applied:?} vs {commit}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for key in keys {
            let values: Vec<Option<Vec<u8>>> = ids
                .iter()
                .map(|&id| {
                    let mut c = self.client_of(id);
                    match c.kv(Op::Get { key: key.clone().into_bytes(), serializable: true }) {
                        Ok(KvReply { result: OpResult::Get(v), .. }) => v,
                        other => panic!("node {id} cannot read {key}: {other:?}"),
                    }
                })
                .collect();
            assert!(values.windows(2).all(|w| w[0] == w[1]), "nodes disagree on {key}: {values:?}");
        }
    }

    /// The tail of every node's log (whole logs are copied to `$FAULTS_DUMP_DIR` if set).
    pub fn logs(&self) -> String {
        if let Ok(dump) = std::env::var("FAULTS_DUMP_DIR") {
            let _ = std::fs::create_dir_all(&dump);
            for n in self.nodes.values() {
                let _ = std::fs::copy(&n.log, Path::new(&dump).join(format!("node-{}.log", n.id)));
            }
        }
        let mut out = String::new();
        for n in self.nodes.values() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            out.push_str(&format!("\n--- node {} ---\n", n.id));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Concurrent clients recording a history, and a monitor recording who leads each term.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    history: Arc<Mutex<Vec<Operation>>>,
    leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>,
    /// The keys used.
    pub keys: Vec<String>,
}

impl Workload {
    /// Starts `clients` closed-loop clients over `keys` keys, and a leader monitor.
    pub fn start(cluster: &Cluster, clients: usize, keys: usize) -> Workload {
        Workload::start_paced(cluster, clients, keys, Duration::ZERO)
    }

    /// Like [`Workload::start`], each client pausing `pace` between operations (long runs
    /// keep their history small enough to check).
    pub fn start_paced(cluster: &Cluster, clients: usize, keys: usize, pace: Duration) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> =
            Arc::new(Mutex::new(BTreeMap::new()));
        let keys: Vec<String> = (0..keys).map(|k| format!("key{k}")).collect();
        let epoch = Instant::now();
        let mut threads = Vec::new();
        for c in 0..clients as u64 {
            let (stop, history, keys) = (Arc::clone(&stop), Arc::clone(&history), keys.clone());
            let client = cluster.client(cluster.endpoints(), Duration::from_millis(1500));
            threads.push(std::thread::spawn(move || {
                client_loop(c, client, keys, epoch, pace, stop, history)
            }));
        }
        let (stop2, leaders2) = (Arc::clone(&stop), Arc::clone(&leaders));
        let mut client = cluster.client(cluster.endpoints(), Duration::from_millis(500));
        threads.push(std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for (_, status) in client.statuses() {
                    if let Ok(s) = status {
                        if s.role == "leader" {
                            leaders2.lock().expect("lock").entry(s.term).or_default().insert(s.id);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
        Workload { stop, threads, history, leaders, keys }
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.history.lock().expect("lock").len()
    }

    /// True before any operation completed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` more operations completed (bounded).
    pub fn wait_ops(&self, n: usize) {
        let target = self.len() + n;
        let deadline = Instant::now() + DEADLINE;
        while self.len() < target {
            assert!(Instant::now() < deadline, "the workload stalled at {} operations", self.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the clients; the history and who led each term.
    pub fn finish(self) -> (Vec<Operation>, BTreeMap<u64, BTreeSet<u64>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let history = std::mem::take(&mut *self.history.lock().expect("lock"));
        let leaders = std::mem::take(&mut *self.leaders.lock().expect("lock"));
        (history, leaders)
    }
}

fn client_loop(
    c: u64,
    mut client: Client,
    keys: Vec<String>,
    epoch: Instant,
    pace: Duration,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Operation>>>,
) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (c + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut last_seen: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = keys[(rng % keys.len() as u64) as usize].clone();
        n += 1;
        let value = format!("c{c}-{n}").into_bytes();
        let input = match (rng >> 32) % 10 {
            0..=3 => Input::Get,
            4..=6 => Input::Put(value.clone()),
            7 => Input::Delete,
            _ => {
                Input::Cas { expected: last_seen.get(&key).cloned().flatten(), new: value.clone() }
            }
        };
        let op = match &input {
            Input::Put(v) => Op::Put { key: key.clone().into_bytes(), value: v.clone() },
            Input::Get => Op::Get { key: key.clone().into_bytes(), serializable: false },
            Input::Delete => Op::Delete { key: key.clone().into_bytes() },
            Input::Cas { expected, new } => Op::Cas {
                key: key.clone().into_bytes(),
                expected: expected.clone(),
                new: new.clone(),
            },
        };
        let call = epoch.elapsed().as_nanos() as u64;
        let result = client.kv(op);
        let ret = epoch.elapsed().as_nanos() as u64;
        let output = match result {
            Ok(KvReply { result: OpResult::Put, .. }) => Output::Put,
            Ok(KvReply { result: OpResult::Get(v), .. }) => {
                last_seen.insert(key.clone(), v.clone());
                Output::Get(v)
            }
            Ok(KvReply { result: OpResult::Delete(existed), .. }) => Output::Delete(existed),
            Ok(KvReply { result: OpResult::Cas { swapped, previous }, .. }) => {
                last_seen.insert(key.clone(), if swapped { Some(value.clone()) } else { previous });
                Output::Cas(swapped)
            }
            // Refused before being proposed: it never happened. (NoSpace comes as such only
            // when no earlier attempt of the write may have been applied.)
            Err(CtlError::Cluster(
                ClientError::TooLarge { .. }
                | ClientError::Refused(_)
                | ClientError::Stale { .. }
                | ClientError::NoSpace(_),
            )) => {
                continue;
            }
            Err(_) => Output::Unknown,
        };
        history.lock().expect("lock").push(Operation {
            client: c,
            key: key.into_bytes(),
            input,
            output,
            call,
            ret,
        });
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Operations whose outcome is known.
    pub known: usize,
    /// Operations that timed out or lost their connection.
    pub unknown: usize,
    /// Terms in which a leader was seen.
    pub terms: usize,
}

/// Stops the workload, heals, waits for convergence, and checks: identical state on every
/// node, at most one leader per term, and a linearizable history (with a final read of every
/// key, so that every acknowledged write must be readable or superseded).
pub fn verify(cluster: &Cluster, workload: Workload) -> Result<Summary, String> {
    let keys = workload.keys.clone();
    let (mut history, leaders) = workload.finish();
    cluster.heal();
    cluster.assert_converged(&keys);
    for (term, ids) in &leaders {
        if ids.len() > 1 {
            return Err(format!("term {term} had leaders {ids:?}"));
        }
    }
    let leader = cluster.wait_for_leader();
    let mut client = cluster.client(vec![cluster.nodes[&leader].client_addr.clone()], DEADLINE);
    let base = history.iter().map(|o| o.ret.max(o.call)).max().unwrap_or(0) + 1;
    for key in &keys {
        let reply = client
            .kv(Op::Get { key: key.clone().into_bytes(), serializable: false })
            .map_err(|e| format!("final read of {key}: {e}"))?;
        let OpResult::Get(value) = reply.result else {
            return Err("a read returned no value".into());
        };
        history.push(Operation {
            client: u64::MAX,
            key: key.clone().into_bytes(),
            input: Input::Get,
            output: Output::Get(value),
            call: base,
            ret: base + 1,
        });
    }
    let known = history.iter().filter(|o| o.output != Output::Unknown).count();
    let unknown = history.len() - known;
    if known <= 20 {
        return Err(format!("too few completed operations to mean anything: {known}"));
    }
    match crate::checker::check(&history) {
        crate::checker::Verdict::Ok => Ok(Summary { known, unknown, terms: leaders.len() }),
        other => Err(other.to_string()),
    }
}
