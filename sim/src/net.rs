//! A simulated network for whole nodes: reliable, ordered byte streams between endpoints,
//! with latency, partitions and resets, driven by one seeded generator and the simulation's
//! clock. Each node sees it through [`SimNet`], an implementation of `raftd::net::Net`; test
//! clients are endpoints too ([`World::dial`]).
//!
//! A stream is TCP as a node sees it: bytes written arrive in order after a latency, or not
//! at all while the two ends are partitioned (held, as TCP's retransmissions would hold them,
//! and delivered when the partition heals), unless the connection is reset: then both ends
//! read an error. Readiness is level-triggered (a node reads until `WouldBlock` anyway):
//! every poll reports each registered stream with bytes to read or an end to see, each
//! stream waiting for writability that has room, and each listener with connections waiting.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mio::Token;
use raftd::net::{Net, NetEvent, Port, SyncDone, CLIENT_LISTENER, PEER_LISTENER, SYNC_DONE};

use wal::fs::SimFs;

use crate::Rng;

/// Bytes a stream holds in flight one way before its writer is told `WouldBlock`.
pub const STREAM_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Who holds one end of a stream: a node (by index) or a client of the test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// Node `i` (its index in the simulation, not its id).
    Node(usize),
    /// A test client.
    Client(usize),
}

/// One direction of a stream.
#[derive(Debug, Default)]
struct Flow {
    /// Chunks written, with when each arrives and how many file-system operations the
    /// writing node had done then (a crash at an operation takes back what it wrote later).
    in_flight: VecDeque<(Duration, Vec<u8>, u64)>,
    /// Arrived, not read yet.
    arrived: VecDeque<u8>,
    /// The writer closed its end (after what is in flight).
    closed: bool,
}

#[derive(Debug)]
struct Stream {
    /// The ends: 0 dialled, 1 accepted.
    ends: [Endpoint; 2],
    /// `flows[i]`: bytes toward end `i`.
    flows: [Flow; 2],
    /// Reset: both ends read an error.
    reset: bool,
    /// The dialling end's connection is established (the accepting end took it).
    accepted: bool,
    /// `dropped[i]`: end `i` was dropped by its holder.
    dropped: [bool; 2],
}

#[derive(Debug, Default)]
struct State {
    now: Duration,
    rng: Option<Rng>,
    latency_min: Duration,
    latency_max: Duration,
    /// Listening addresses, and whose port each is.
    listeners: BTreeMap<SocketAddr, (usize, Port)>,
    /// Streams dialled to each listener, not accepted yet.
    backlog: BTreeMap<(usize, Port), VecDeque<u64>>,
    streams: BTreeMap<u64, Stream>,
    next_stream: u64,
    /// Pairs of endpoints that cannot reach each other (smaller first).
    cut: BTreeSet<(Endpoint, Endpoint)>,
    /// Links that lose what goes one way only: (from, to).
    one_way: BTreeSet<(Endpoint, Endpoint)>,
    /// Registrations: (stream, end) -> (token, wants writable).
    registered: BTreeMap<(u64, usize), (Token, bool)>,
    /// Each node's disk, whose operation count stamps what the node writes.
    disks: BTreeMap<usize, SimFs>,
}

impl State {
    fn latency(&mut self) -> Duration {
        let rng = self.rng.as_mut().expect("seeded");
        let span = (self.latency_max - self.latency_min).as_micros() as u64;
        self.latency_min + Duration::from_micros(rng.below(span + 1))
    }

    /// No connection can be set up between `a` and `b`: cut both ways, or one way (the SYN
    /// or its answer is lost).
    fn is_cut(&self, a: Endpoint, b: Endpoint) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
            || self.one_way.contains(&(a, b))
            || self.one_way.contains(&(b, a))
    }

    /// Moves what has arrived by now (and is not held by a partition) to its reader.
    fn deliver(&mut self) {
        let now = self.now;
        let cut = &self.cut;
        let one_way = &self.one_way;
        for stream in self.streams.values_mut() {
            let [a, b] = stream.ends;
            if cut.contains(&(a.min(b), a.max(b))) {
                continue;
            }
            for (toward, flow) in stream.flows.iter_mut().enumerate() {
                // Bytes toward end `toward` come from the other end.
                let (writer, reader) = (stream.ends[1 - toward], stream.ends[toward]);
                if one_way.contains(&(writer, reader)) {
                    continue;
                }
                while flow.in_flight.front().is_some_and(|(at, _, _)| *at <= now) {
                    let (_, bytes, _) = flow.in_flight.pop_front().expect("checked");
                    flow.arrived.extend(bytes);
                }
            }
        }
    }
}

/// The network all nodes and clients of one simulation share.
#[derive(Clone, Debug, Default)]
pub struct World {
    state: Rc<RefCell<State>>,
}

impl World {
    /// A network whose latencies are drawn from `rng` between the two bounds.
    pub fn new(rng: Rng, latency_min: Duration, latency_max: Duration) -> World {
        let state = State { rng: Some(rng), latency_min, latency_max, ..State::default() };
        World { state: Rc::new(RefCell::new(state)) }
    }

    /// Sets the simulation's time and delivers what arrived by then.
    pub fn set_now(&self, now: Duration) {
        let mut s = self.state.borrow_mut();
        s.now = now;
        s.deliver();
    }

    /// Node `node`'s view of the network, listening on the two addresses; `disk` is its disk.
    pub fn attach(
        &self,
        node: usize,
        peer: SocketAddr,
        client: SocketAddr,
        disk: &SimFs,
    ) -> SimNet {
        let mut s = self.state.borrow_mut();
        s.disks.insert(node, disk.clone());
        s.listeners.insert(peer, (node, Port::Peer));
        s.listeners.insert(client, (node, Port::Client));
        SimNet { world: self.clone(), node, addrs: [peer, client], sync: None }
    }

    /// Cuts (or heals) the link between two endpoints, both ways.
    pub fn set_cut(&self, a: Endpoint, b: Endpoint, cut: bool) {
        let mut s = self.state.borrow_mut();
        let key = (a.min(b), a.max(b));
        if cut {
            s.cut.insert(key);
        } else {
            s.cut.remove(&key);
            s.deliver();
        }
    }

    /// Loses (or heals) what goes from `from` to `to`, not the other way: bytes already
    /// flowing the other way keep arriving (a connection-level asymmetric partition, as a
    /// firewall rule on one direction makes), and no new connection gets through.
    pub fn set_one_way(&self, from: Endpoint, to: Endpoint, cut: bool) {
        let mut s = self.state.borrow_mut();
        if cut {
            s.one_way.insert((from, to));
        } else {
            s.one_way.remove(&(from, to));
            s.deliver();
        }
    }

    /// Takes back what node `node` wrote once its disk had done `ops` operations or more: it
    /// crashed just before its disk operation number `ops` (counted from 1), and what it wrote
    /// after operation `ops - 1` was never written.
    pub fn take_back_after(&self, node: usize, ops: u64) {
        let mut s = self.state.borrow_mut();
        for stream in s.streams.values_mut() {
            for (end, &holder) in stream.ends.iter().enumerate() {
                if holder == Endpoint::Node(node) {
                    stream.flows[1 - end].in_flight.retain(|&(_, _, stamp)| stamp < ops);
                }
            }
        }
    }

    /// Holds what node `node` wrote once its disk had done `ops` operations or more until
    /// `until`: it wrote it after a sync that lasted until then (it reaches the wire no sooner).
    pub fn hold_after(&self, node: usize, ops: u64, until: Duration) {
        let mut s = self.state.borrow_mut();
        for stream in s.streams.values_mut() {
            for (end, &holder) in stream.ends.iter().enumerate() {
                if holder == Endpoint::Node(node) {
                    for chunk in &mut stream.flows[1 - end].in_flight {
                        if chunk.2 >= ops {
                            chunk.0 = chunk.0.max(until);
                        }
                    }
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        let mut s = self.state.borrow_mut();
        s.cut.clear();
        s.one_way.clear();
        s.deliver();
    }

    /// Resets every stream between the two endpoints (a middlebox or a kernel that gave up).
    pub fn reset_between(&self, a: Endpoint, b: Endpoint) {
        let mut s = self.state.borrow_mut();
        for stream in s.streams.values_mut() {
            let [x, y] = stream.ends;
            if (x, y) == (a, b) || (x, y) == (b, a) {
                stream.reset = true;
            }
        }
    }

    /// A test client's stream to `addr` (refused if nobody listens there or the link is cut).
    pub fn dial(&self, client: usize, addr: SocketAddr) -> io::Result<SimStream> {
        self.connect(Endpoint::Client(client), addr)
    }

    fn connect(&self, from: Endpoint, addr: SocketAddr) -> io::Result<SimStream> {
        let mut s = self.state.borrow_mut();
        let Some(&(node, port)) = s.listeners.get(&addr) else {
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        };
        if s.is_cut(from, Endpoint::Node(node)) {
            // The SYN is lost; TCP would retry, then give up: a refusal stands for both.
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let id = s.next_stream;
        s.next_stream += 1;
        let stream = Stream {
            ends: [from, Endpoint::Node(node)],
            flows: [Flow::default(), Flow::default()],
            reset: false,
            accepted: false,
            dropped: [false, false],
        };
        s.streams.insert(id, stream);
        s.backlog.entry((node, port)).or_default().push_back(id);
        Ok(SimStream { world: self.clone(), id, end: 0 })
    }

    /// Forgets node `node`'s listeners (its process is gone).
    fn detach(&self, node: usize) {
        let mut s = self.state.borrow_mut();
        s.listeners.retain(|_, &mut (n, _)| n != node);
        for port in [Port::Peer, Port::Client] {
            if let Some(waiting) = s.backlog.remove(&(node, port)) {
                for id in waiting {
                    if let Some(st) = s.streams.get_mut(&id) {
                        st.reset = true;
                    }
                }
            }
        }
    }
}

/// One end of a simulated stream.
#[derive(Debug)]
pub struct SimStream {
    world: World,
    id: u64,
    /// 0: the dialling end, 1: the accepting end.
    end: usize,
}

impl Read for SimStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.world.state.borrow_mut();
        let stream = s.streams.get_mut(&self.id).expect("a held stream exists");
        if stream.reset {
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        let flow = &mut stream.flows[self.end];
        if flow.arrived.is_empty() {
            if flow.closed && flow.in_flight.is_empty() {
                return Ok(0);
            }
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let n = buf.len().min(flow.arrived.len());
        for (slot, byte) in buf.iter_mut().zip(flow.arrived.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for SimStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.world.state.borrow_mut();
        let at = s.now + s.latency();
        let stream = s.streams.get_mut(&self.id).expect("a held stream exists");
        if stream.reset || stream.dropped[1 - self.end] {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let flow = &mut stream.flows[1 - self.end];
        let held =
            flow.arrived.len() + flow.in_flight.iter().map(|(_, b, _)| b.len()).sum::<usize>();
        let room = STREAM_WINDOW_BYTES.saturating_sub(held);
        if room == 0 {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let n = buf.len().min(room);
        // Never earlier than what was written before it: the stream keeps its order.
        let at = flow.in_flight.back().map_or(at, |(last, _, _)| at.max(*last));
        let ops = match stream.ends[self.end] {
            Endpoint::Node(node) => s.disks.get(&node).map_or(0, SimFs::op_count),
            Endpoint::Client(_) => 0,
        };
        let stream = s.streams.get_mut(&self.id).expect("a held stream exists");
        stream.flows[1 - self.end].in_flight.push_back((at, buf[..n].to_vec(), ops));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        let mut s = self.world.state.borrow_mut();
        s.registered.remove(&(self.id, self.end));
        let gone = match s.streams.get_mut(&self.id) {
            Some(stream) => {
                stream.dropped[self.end] = true;
                stream.flows[1 - self.end].closed = true;
                stream.dropped == [true, true]
            }
            None => false,
        };
        if gone {
            s.streams.remove(&self.id);
        }
    }
}

/// The longest a sync of a node's log takes in the simulation (the node goes on meanwhile).
pub const SYNC_LATENCY_MAX: Duration = Duration::from_millis(3);

/// A node's network in the simulation.
#[derive(Debug)]
pub struct SimNet {
    world: World,
    node: usize,
    addrs: [SocketAddr; 2],
    /// The sync in flight and when the disk finishes it: it runs then (so the writes made
    /// meanwhile may be covered too, as on a real disk).
    sync: Option<(Duration, wal::SyncJob)>,
}

impl Drop for SimNet {
    fn drop(&mut self) {
        self.world.detach(self.node);
    }
}

impl Net for SimNet {
    type Stream = SimStream;

    fn poll(&mut self, events: &mut Vec<NetEvent>, _timeout: Option<Duration>) -> io::Result<()> {
        // The simulation does not wait: the driver moves time between turns.
        events.clear();
        let s = self.world.state.borrow();
        if self.sync.as_ref().is_some_and(|(due, _)| *due <= s.now) {
            events.push(NetEvent {
                token: SYNC_DONE,
                readable: true,
                writable: false,
                read_closed: false,
            });
        }
        for (i, port) in [Port::Peer, Port::Client].into_iter().enumerate() {
            if s.backlog.get(&(self.node, port)).is_some_and(|q| !q.is_empty()) {
                let token = [PEER_LISTENER, CLIENT_LISTENER][i];
                events.push(NetEvent {
                    token,
                    readable: true,
                    writable: false,
                    read_closed: false,
                });
            }
        }
        for (&(id, end), &(token, wants_writable)) in &s.registered {
            let Some(stream) = s.streams.get(&id) else { continue };
            if stream.ends[end] != Endpoint::Node(self.node) {
                continue;
            }
            let flow = &stream.flows[end];
            let readable = stream.reset || !flow.arrived.is_empty() || flow.closed;
            let connected = end == 1 || stream.accepted;
            let writable = wants_writable && (stream.reset || connected);
            if readable || writable {
                let read_closed = stream.reset || flow.closed;
                events.push(NetEvent { token, readable, writable, read_closed });
            }
        }
        Ok(())
    }

    fn accept(&mut self, port: Port) -> io::Result<(SimStream, SocketAddr)> {
        let mut s = self.world.state.borrow_mut();
        let id = s
            .backlog
            .get_mut(&(self.node, port))
            .and_then(VecDeque::pop_front)
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let stream = s.streams.get_mut(&id).expect("a waiting stream exists");
        stream.accepted = true;
        let remote = match stream.ends[0] {
            Endpoint::Node(n) => SocketAddr::from(([127, 0, 1, n as u8], 50_000)),
            Endpoint::Client(c) => SocketAddr::from(([127, 0, 2, c as u8], 50_000)),
        };
        Ok((SimStream { world: self.world.clone(), id, end: 1 }, remote))
    }

    fn connect(&mut self, addr: SocketAddr, _to: u64) -> io::Result<SimStream> {
        if self.addrs.contains(&addr) {
            // Never dialled by a node; refuse rather than loop back.
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        self.world.connect(Endpoint::Node(self.node), addr)
    }

    /// A read takes all that arrived (and readiness is reported for as long as anything is
    /// there).
    fn drained_by_short_read(_: &SimStream) -> bool {
        true
    }

    fn connect_error(stream: &SimStream) -> io::Result<Option<io::Error>> {
        let s = stream.world.state.borrow();
        let reset = s.streams.get(&stream.id).is_none_or(|st| st.reset);
        Ok(reset.then(|| io::Error::from(io::ErrorKind::ConnectionRefused)))
    }

    fn register(&mut self, stream: &mut SimStream, token: Token, writable: bool) -> io::Result<()> {
        self.world.state.borrow_mut().registered.insert((stream.id, stream.end), (token, writable));
        Ok(())
    }

    fn reregister(
        &mut self,
        stream: &mut SimStream,
        token: Token,
        writable: bool,
    ) -> io::Result<()> {
        self.register(stream, token, writable)
    }

    fn deregister(&mut self, stream: &mut SimStream) {
        self.world.state.borrow_mut().registered.remove(&(stream.id, stream.end));
    }

    /// The disk takes 0 to [`SYNC_LATENCY_MAX`], drawn from the world's generator.
    fn start_sync(&mut self, job: wal::SyncJob) {
        assert!(self.sync.is_none(), "one sync at a time");
        let mut s = self.world.state.borrow_mut();
        let rng = s.rng.as_mut().expect("seeded");
        let took = Duration::from_micros(rng.below(SYNC_LATENCY_MAX.as_micros() as u64 + 1));
        let due = s.now + took;
        self.sync = Some((due, job));
    }

    fn take_synced(&mut self) -> Option<SyncDone> {
        let now = self.world.state.borrow().now;
        if self.sync.as_ref().is_none_or(|(due, _)| *due > now) {
            return None;
        }
        self.wait_synced()
    }

    fn wait_synced(&mut self) -> Option<SyncDone> {
        let (_, job) = self.sync.take()?;
        let result = job.run();
        Some(SyncDone { job, result, took: Duration::ZERO })
    }
}
