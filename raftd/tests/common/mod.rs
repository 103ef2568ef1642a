//! Test support: real raftd processes on 127.0.0.1, and a blocking client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftd::protocol::*;

/// A generous bound for conditions on a slow, loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The faults crate's port allocator, one copy for both test suites.
#[path = "../../../tests/src/ports.rs"]
mod ports;
pub use ports::free_ports;

/// A blocking client speaking raftd's client protocol.
pub struct Client {
    stream: TcpStream,
    next_request_id: u64,
    /// The session writes go in: registered before the first write, or set by the test.
    pub session_id: Option<u64>,
    seq: u64,
}

impl Client {
    /// Connects and greets.
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let hello = Hello::client("", None);
        write_frame(&mut stream, &hello)?;
        let ack: HelloAck = read_frame(&mut stream)?;
        match ack {
            HelloAck::Welcome { .. } => {}
            HelloAck::Refused { reason } => return Err(std::io::Error::other(reason)),
            HelloAck::Removed { node_id } => {
                return Err(std::io::Error::other(format!("node {node_id}: removed")))
            }
            other => return Err(std::io::Error::other(format!("{other:?}"))),
        }
        Ok(Client { stream, next_request_id: 1, session_id: None, seq: 0 })
    }

    fn call(&mut self, request: ClientRequest) -> std::io::Result<ClientResponse> {
        write_frame(&mut self.stream, &request)?;
        read_frame(&mut self.stream)
    }

    /// Registers a session at this node (it must lead); later writes go in it, from seq 1.
    pub fn register_session(&mut self) -> std::io::Result<Result<u64, ClientError>> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        match self.call(ClientRequest::RegisterSession { request_id })? {
            ClientResponse::Session { request_id: r, result } if r == request_id => {
                if let Ok(id) = result {
                    self.session_id = Some(id);
                    self.seq = 0;
                }
                Ok(result)
            }
            other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
        }
    }

    /// A key-value operation; writes take the next seq, in a session registered first if
    /// there is none.
    pub fn kv(&mut self, op: Op) -> std::io::Result<Result<KvReply, ClientError>> {
        if op.is_write() {
            if self.session_id.is_none() {
                if let Err(e) = self.register_session()? {
                    return Ok(Err(e));
                }
            }
            self.seq += 1;
        }
        self.kv_with_seq(op, self.seq)
    }

    /// A key-value operation with an explicit seq (a retry).
    pub fn kv_with_seq(
        &mut self,
        op: Op,
        seq: u64,
    ) -> std::io::Result<Result<KvReply, ClientError>> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let session_id = if op.is_write() { self.session_id.unwrap_or(0) } else { 0 };
        match self.call(ClientRequest::Kv { request_id, session_id, seq, op })? {
            ClientResponse::Kv { request_id: r, result } if r == request_id => Ok(result),
            other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
        }
    }

    /// The connection, for tests that write frames themselves.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// An admin request.
    pub fn admin(
        &mut self,
        request: AdminRequest,
    ) -> std::io::Result<Result<AdminReply, ClientError>> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        match self.call(ClientRequest::Admin { request_id, request })? {
            ClientResponse::Admin { request_id: r, result } if r == request_id => Ok(result),
            other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
        }
    }

    /// The node's status.
    pub fn status(&mut self) -> std::io::Result<NodeStatus> {
        match self.admin(AdminRequest::Status)? {
            Ok(AdminReply::Status(s)) => Ok(*s),
            other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
        }
    }
}

pub fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        as u64;
    let mut x = t ^ (std::process::id() as u64).rotate_left(40) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

pub fn write_frame<T: serde::Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let mut buf = Vec::new();
    codec::encode_into(&mut buf, value, codec::FRAME_SIZE_MAX_DEFAULT)
        .map_err(std::io::Error::other)?;
    stream.write_all(&buf)
}

pub fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut payload)?;
    codec::decode_payload(&payload).map_err(std::io::Error::other)
}

/// The data dir incarnation of a node's data dir (from its WAL identity file, version 2).
pub fn incarnation_of(data_dir: &std::path::Path) -> u64 {
    let bytes = std::fs::read(data_dir.join("wal").join("IDENTITY")).unwrap();
    u64::from_le_bytes(bytes[24..32].try_into().unwrap())
}

/// A peer's hello for the cluster named `cluster_id`.
pub fn peer_hello(cluster_id: &str, node_id: u64, incarnation: u64) -> Hello {
    Hello {
        versions: ProtocolVersions::OURS,
        cluster_id: cluster_id.into(),
        node_id,
        role: Role::Peer,
        token: None,
        client_addr: None,
        peer_addr: None,
        incarnation,
        cluster_incarnation: 0,
    }
}

/// Promotes learner `id`, retrying while its incarnation is not recorded yet.
pub fn promote(admin: &mut Client, id: u64) -> Result<AdminReply, ClientError> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match admin.admin(AdminRequest::Promote { id }).unwrap() {
            // Until the leader records the learner's incarnation (a configuration change of
            // its own, which holds off others while pending) and the learner caught up.
            Err(ClientError::Refused(why))
                if why.contains("not recorded")
                    || why.contains("already pending")
                    || why.contains("not in sync") =>
            {
                assert!(Instant::now() < deadline, "node {id}'s incarnation never recorded: {why}");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A node `id` of `cluster` that starts empty with `--join` (not started).
pub fn joiner(cluster: &TestCluster, id: u64, extra: &[&str]) -> Proc {
    let ports = free_ports(2);
    let peer_addr = format!("127.0.0.1:{}", ports[0]);
    let client_addr = format!("127.0.0.1:{}", ports[1]);
    let data_dir = cluster.dir.path().join(format!("node-{id}"));
    let mut args: Vec<String> = vec![
        "--id".into(),
        id.to_string(),
        "--join".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-peer".into(),
        peer_addr.clone(),
        "--listen-client".into(),
        client_addr.clone(),
        "--cluster-id".into(),
        cluster.cluster_id.clone(),
        "--tick-interval-ms".into(),
        "20".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc {
        id,
        peer_addr,
        client_addr,
        data_dir,
        log: cluster.dir.path().join(format!("node-{id}.log")),
        child: None,
        args,
        fd_limit: None,
    }
}

/// One raftd process.
pub struct Proc {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub args: Vec<String>,
    /// Start the process with this limit on open file descriptors.
    pub fd_limit: Option<u64>,
}

impl Proc {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match self.fd_limit {
            // Through the shell, whose ulimit sets the limit the exec'd raftd inherits.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_raftd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_raftd")),
        };
        let child = command
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {} did not exit on SIGTERM", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> std::io::Result<Client> {
        Client::connect(&self.client_addr)
    }

    /// A client, once the process listens (it may have just started).
    pub fn wait_client(&self) -> Client {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.client() {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "node {} never listened: {e}", self.id)
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local cluster of raftd processes with their own ports and data dirs.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// Unique per cluster: tests run in parallel, and a node must never take another test's
    /// node (at a reused port) for a member of its own cluster.
    pub cluster_id: String,
    pub procs: Vec<Proc>,
}

impl TestCluster {
    /// Starts `n` nodes with `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> TestCluster {
        let all: Vec<u64> = (1..=n as u64).collect();
        TestCluster::start_some(n, &all, extra)
    }

    /// A cluster of `n` nodes of which only `started` are started.
    pub fn start_some(n: usize, started: &[u64], extra: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let cluster_id = format!("test{}", dir.path().file_name().unwrap().to_string_lossy());
        let ports = free_ports(2 * n);
        let peers: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let initial: Vec<String> =
            peers.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let initial = initial.join(",");
        let mut procs = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let client_addr = format!("127.0.0.1:{}", ports[n + i]);
            let data_dir = dir.path().join(format!("node-{id}"));
            let mut args: Vec<String> = vec![
                "--id".into(),
                id.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-peer".into(),
                peers[i].clone(),
                "--listen-client".into(),
                client_addr.clone(),
                "--initial-cluster".into(),
                initial.clone(),
                "--cluster-id".into(),
                cluster_id.clone(),
                "--tick-interval-ms".into(),
                "20".into(),
                "--segment-size-bytes".into(),
                (1 << 20).to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let log = dir.path().join(format!("node-{id}.log"));
            let mut p = Proc {
                id,
                peer_addr: peers[i].clone(),
                client_addr,
                data_dir,
                log,
                child: None,
                args,
                fd_limit: None,
            };
            if started.contains(&id) {
                p.start();
            }
            procs.push(p);
        }
        TestCluster { dir, cluster_id, procs }
    }

    pub fn node(&mut self, id: u64) -> &mut Proc {
        &mut self.procs[id as usize - 1]
    }

    /// Waits until the running nodes agree on a leader; returns its id.
    pub fn wait_for_leader(&self) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut leaders = Vec::new();
            let mut running = 0;
            let mut answered = 0;
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                running += 1;
                if let Ok(s) = p.client().and_then(|mut c| c.status()) {
                    answered += 1;
                    if s.leader != 0 {
                        leaders.push(s.leader);
                    }
                }
            }
            leaders.sort_unstable();
            leaders.dedup();
            // Every running node serves (none still waits to bootstrap) and agrees.
            if leaders.len() == 1 && running > 0 && answered == running {
                let leader = leaders[0];
                if let Ok(s) = self.procs[leader as usize - 1].client().and_then(|mut c| c.status())
                {
                    if s.role == "leader" {
                        return leader;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {DEADLINE:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Registers a session through whichever node leads, retrying until one answers.
    pub fn register_session(&self) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                let Ok(mut c) = p.client() else { continue };
                if let Ok(Ok(id)) = c.register_session() {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no session registered: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Write `seq` of session `session_id` through whichever node leads, retried (same
    /// `(session_id, seq)`) until the cluster gives a definite answer: a reply, or an error
    /// other than a redirect, a missing leader or a timeout.
    pub fn write_in(&self, session_id: u64, seq: u64, op: Op) -> Result<KvReply, ClientError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                let Ok(mut c) = p.client() else { continue };
                c.session_id = Some(session_id);
                match c.kv_with_seq(op.clone(), seq) {
                    Ok(Err(
                        ClientError::NotLeader { .. }
                        | ClientError::NoLeader
                        | ClientError::Timeout
                        | ClientError::ProposalDropped,
                    ))
                    | Err(_) => {}
                    Ok(answer) => return answer,
                }
            }
            assert!(Instant::now() < deadline, "write {seq} in {session_id}: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts through whichever node leads, retrying on redirects in one session; returns the
    /// applied index.
    pub fn put(&self, key: &str, value: &str) -> u64 {
        let session_id = self.register_session();
        let op = Op::Put { key: key.into(), value: value.into() };
        match self.write_in(session_id, 1, op) {
            Ok(reply) => reply.index,
            Err(e) => panic!("put {key}: {e}: {}", self.logs()),
        }
    }

    /// A linearizable get through any node that answers.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            for p in self.procs.iter().filter(|p| p.child.is_some()) {
                let Ok(mut c) = p.client() else { continue };
                if let Ok(Ok(KvReply { result: OpResult::Get(v), .. })) =
                    c.kv(Op::Get { key: key.into(), serializable: false })
                {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "get {key} did not succeed: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("\n--- node {} ---\n", p.id));
            // How it started (its incarnations, how it bootstrapped), then the tail.
            for line in text.lines().filter(|l| l.contains("starting:") || l.contains("bootstrap"))
            {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str("...\n");
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
