//! What a node measures, served as Prometheus text on `/metrics`, and its health on `/health`
//! (`--listen-metrics`).
//!
//! The loop records into atomics (a relaxed add or store, no lock on the write path) and a
//! small thread answers HTTP from them, so that a scrape never waits for the loop and a busy
//! loop never waits for a scrape. Gauges that the loop would otherwise compute per request
//! (term, indexes, leadership, quorum) are published at each tick.
//!
//! Names follow Prometheus conventions: `raft_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` on counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};

/// Upper bounds of the latency histograms' buckets, in microseconds (then +Inf): from 100 µs
/// to 10 s, as etcd's disk histograms span.
pub const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Largest HTTP request head read from a scraper.
const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time a scraper has to send its whole request, and then to take the answer.
const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests answered at once, each on a thread of its own; more connections are closed at
/// once (a client holding connections open cannot keep `/health` from answering).
const HTTP_CONNECTIONS_MAX: usize = 16;

/// A latency histogram with [`LATENCY_BUCKETS_MICROS`] buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is +Inf).
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Appends the histogram's series (`labels`: `key="value"` pairs, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = match LATENCY_BUCKETS_MICROS.get(i) {
                Some(&micros) => format!("{}", micros as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The count is the buckets' total, so that it always equals the `+Inf` bucket.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The client operations whose latency is measured apart (in `Metrics::requests` at their
/// discriminant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A put.
    Put = 0,
    /// A linearizable or serializable get.
    Get,
    /// A delete.
    Delete,
    /// A compare-and-swap.
    Cas,
    /// A session registration.
    Session,
    /// An operator request.
    Admin,
}

impl Operation {
    const ALL: [Operation; 6] = [
        Operation::Put,
        Operation::Get,
        Operation::Delete,
        Operation::Cas,
        Operation::Session,
        Operation::Admin,
    ];

    fn name(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::Cas => "cas",
            Operation::Session => "session",
            Operation::Admin => "admin",
        }
    }
}

/// What the node measures of one peer.
#[derive(Debug, Default)]
struct PeerCounters {
    sent_bytes: u64,
    received_bytes: u64,
    round_trip: Histogram,
}

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// This node's id.
    pub id: AtomicU64,
    /// 1 when a leader is known.
    pub has_leader: AtomicBool,
    /// 1 on the leader.
    pub is_leader: AtomicBool,
    /// On the leader, whether a quorum of voters was recently active (elsewhere: false).
    pub quorum_active: AtomicBool,
    /// Times the known leader changed to another node.
    pub leader_changes: AtomicU64,
    /// The current term.
    pub term: AtomicU64,
    /// The commit index.
    pub commit_index: AtomicU64,
    /// The applied index.
    pub applied_index: AtomicU64,
    /// Client writes (and session registrations) applied and answered.
    pub proposals_committed: AtomicU64,
    /// Client writes refused or failed after they were accepted for proposal.
    pub proposals_failed: AtomicU64,
    /// Client writes proposed and not answered yet.
    pub proposals_pending: AtomicU64,
    /// WAL fsyncs.
    pub wal_fsync: Histogram,
    /// Snapshots taken (written and put in force).
    pub snapshot: Histogram,
    /// The last snapshot file's size.
    pub snapshot_size_bytes: AtomicU64,
    /// Client connections open.
    pub client_connections: AtomicU64,
    /// Peer connections open (both directions).
    pub peer_connections: AtomicU64,
    /// 1 while the space alarm is raised (writes refused with `NoSpace`).
    pub no_space: AtomicBool,
    /// Bytes the data dir holds, as last measured.
    pub data_dir_bytes: AtomicU64,
    /// Bytes free on the data dir's file system, as last measured.
    pub data_dir_free_bytes: AtomicU64,
    /// Client request latency by operation (in [`Operation::ALL`]'s order).
    requests: [Histogram; 6],
    peers: Mutex<BTreeMap<u64, PeerCounters>>,
}

impl Metrics {
    /// A node's metrics, all zero.
    pub fn new(id: u64) -> Arc<Metrics> {
        let metrics = Metrics::default();
        metrics.id.store(id, Relaxed);
        Arc::new(metrics)
    }

    /// Records a client request's latency.
    pub fn request(&self, op: Operation, elapsed: Duration) {
        self.requests[op as usize].observe(elapsed);
    }

    /// Adds bytes sent to and received from `peer`.
    pub fn peer_bytes(&self, peer: u64, sent: u64, received: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let counters = peers.entry(peer).or_default();
        counters.sent_bytes += sent;
        counters.received_bytes += received;
    }

    /// Records a round trip to `peer` (a heartbeat and its answer).
    pub fn peer_round_trip(&self, peer: u64, elapsed: Duration) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.entry(peer).or_default().round_trip.observe(elapsed);
    }

    /// Forgets a peer that left the configuration.
    pub fn forget_peer(&self, peer: u64) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
    }

    /// Whether the node is healthy, and if not, why: it must know a leader, and a leader must
    /// hear from a quorum.
    pub fn health(&self) -> Result<(), &'static str> {
        if !self.has_leader.load(Relaxed) {
            return Err("no leader is known");
        }
        if self.is_leader.load(Relaxed) && !self.quorum_active.load(Relaxed) {
            return Err("the leader does not hear from a quorum");
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let _ = writeln!(
            out,
            "# HELP raft_info The build and the node's id.\n# TYPE raft_info gauge\n\
             raft_info{{id=\"{}\",version=\"{}\",wire_protocol=\"{}\"}} 1",
            self.id.load(Relaxed),
            env!("CARGO_PKG_VERSION"),
            crate::protocol::PROTOCOL_VERSION
        );
        let flag = |b: &AtomicBool| u64::from(b.load(Relaxed));
        gauge(
            &mut out,
            "raft_has_leader",
            "1 when this node knows a leader.",
            flag(&self.has_leader),
        );
        gauge(&mut out, "raft_is_leader", "1 when this node is the leader.", flag(&self.is_leader));
        gauge(
            &mut out,
            "raft_quorum_active",
            "On the leader, 1 when a quorum of voters was recently active.",
            flag(&self.quorum_active),
        );
        let healthy = u64::from(self.health().is_ok());
        gauge(&mut out, "raft_healthy", "1 when /health answers 200.", healthy);
        counter(
            &mut out,
            "raft_leader_changes_total",
            "Times the known leader changed.",
            self.leader_changes.load(Relaxed),
        );
        gauge(&mut out, "raft_term", "The current term.", self.term.load(Relaxed));
        gauge(&mut out, "raft_commit_index", "The commit index.", self.commit_index.load(Relaxed));
        gauge(
            &mut out,
            "raft_applied_index",
            "The applied index.",
            self.applied_index.load(Relaxed),
        );
        counter(
            &mut out,
            "raft_proposals_committed_total",
            "Client writes and session registrations applied and answered.",
            self.proposals_committed.load(Relaxed),
        );
        counter(
            &mut out,
            "raft_proposals_failed_total",
            "Client writes that failed after they were accepted for proposal.",
            self.proposals_failed.load(Relaxed),
        );
        gauge(
            &mut out,
            "raft_proposals_pending",
            "Client writes proposed and not answered yet.",
            self.proposals_pending.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP raft_wal_fsync_duration_seconds WAL fsync latency.\n\
             # TYPE raft_wal_fsync_duration_seconds histogram"
        );
        self.wal_fsync.render(&mut out, "raft_wal_fsync_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP raft_snapshot_duration_seconds Time to take a snapshot and put it in force \
             (its count: snapshots taken).\n# TYPE raft_snapshot_duration_seconds histogram"
        );
        self.snapshot.render(&mut out, "raft_snapshot_duration_seconds", "");
        gauge(
            &mut out,
            "raft_snapshot_size_bytes",
            "The last snapshot file's size.",
            self.snapshot_size_bytes.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP raft_client_request_duration_seconds Client request latency, from its \
             arrival to its answer, by operation.\n\
             # TYPE raft_client_request_duration_seconds histogram"
        );
        for (op, histogram) in Operation::ALL.iter().zip(&self.requests) {
            let labels = format!("operation=\"{}\"", op.name());
            histogram.render(&mut out, "raft_client_request_duration_seconds", &labels);
        }
        {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP raft_peer_sent_bytes_total Bytes sent to each peer.\n\
                 # TYPE raft_peer_sent_bytes_total counter"
            );
            for (id, p) in peers.iter() {
                let _ =
                    writeln!(out, "raft_peer_sent_bytes_total{{peer=\"{id}\"}} {}", p.sent_bytes);
            }
            let _ = writeln!(
                out,
                "# HELP raft_peer_received_bytes_total Bytes received from each peer.\n\
                 # TYPE raft_peer_received_bytes_total counter"
            );
            for (id, p) in peers.iter() {
                let _ = writeln!(
                    out,
                    "raft_peer_received_bytes_total{{peer=\"{id}\"}} {}",
                    p.received_bytes
                );
            }
            let _ = writeln!(
                out,
                "# HELP raft_peer_round_trip_seconds Round trip to each peer (a heartbeat and \
                 its answer, measured on the leader).\n\
                 # TYPE raft_peer_round_trip_seconds histogram"
            );
            for (id, p) in peers.iter() {
                p.round_trip.render(
                    &mut out,
                    "raft_peer_round_trip_seconds",
                    &format!("peer=\"{id}\""),
                );
            }
        }
        gauge(
            &mut out,
            "raft_client_connections",
            "Client connections open.",
            self.client_connections.load(Relaxed),
        );
        gauge(
            &mut out,
            "raft_peer_connections",
            "Peer connections open, both directions.",
            self.peer_connections.load(Relaxed),
        );
        gauge(
            &mut out,
            "raft_no_space_alarm",
            "1 while writes are refused for want of disk space (NoSpace).",
            flag(&self.no_space),
        );
        gauge(
            &mut out,
            "raft_data_dir_bytes",
            "Bytes the data dir holds.",
            self.data_dir_bytes.load(Relaxed),
        );
        gauge(
            &mut out,
            "raft_data_dir_free_bytes",
            "Bytes free on the data dir's file system.",
            self.data_dir_free_bytes.load(Relaxed),
        );
        if let Some(rss) = resident_memory_bytes() {
            gauge(&mut out, "process_resident_memory_bytes", "Resident memory.", rss);
        }
        out
    }
}

/// The process's resident memory, from `/proc/self/statm`.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    #[allow(unsafe_code)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Serves `/metrics` and `/health` from `listener` on a thread of its own, one request at a
/// time (a scraper waits at most for the one before it).
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        info!("metrics and health on http://{addr}/metrics and /health");
        let busy = Arc::new(AtomicU64::new(0));
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if busy.fetch_add(1, Relaxed) >= HTTP_CONNECTIONS_MAX as u64 {
                        busy.fetch_sub(1, Relaxed);
                        continue;
                    }
                    let (metrics, done) = (Arc::clone(&metrics), Arc::clone(&busy));
                    let spawned =
                        std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
                            if let Err(e) = answer(stream, &metrics) {
                                log::debug!("metrics request: {e}");
                            }
                            done.fetch_sub(1, Relaxed);
                        });
                    if let Err(e) = spawned {
                        warn!("metrics: cannot start a thread for a request: {e}");
                        busy.fetch_sub(1, Relaxed);
                    }
                }
                Err(e) => {
                    warn!("metrics listener: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(())
}

/// Answers one HTTP/1.x request and closes the connection.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_write_timeout(Some(HTTP_IO_TIMEOUT))?;
    let deadline = std::time::Instant::now() + HTTP_IO_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        // One deadline for the whole request, not per read: a byte every few seconds does not
        // hold the connection.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HTTP_REQUEST_BYTES_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "");
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    match path {
        "/metrics" => {
            let body = metrics.render();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        "/health" | "/healthz" | "/readyz" => {
            let alarm = if metrics.no_space.load(Relaxed) { "[\"NOSPACE\"]" } else { "[]" };
            match metrics.health() {
                Ok(()) => {
                    let body =
                        format!("{{\"health\":\"true\",\"reason\":\"\",\"alarms\":{alarm}}}\n");
                    respond(&mut stream, "200 OK", "application/json", &body)
                }
                Err(reason) => {
                    let body = format!(
                        "{{\"health\":\"false\",\"reason\":\"{reason}\",\"alarms\":{alarm}}}\n"
                    );
                    respond(&mut stream, "503 Service Unavailable", "application/json", &body)
                }
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "/metrics or /health\n"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(90));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.00319\n"), "{out}");
    }

    #[test]
    fn health_needs_a_leader_and_on_the_leader_a_quorum() {
        let m = Metrics::new(1);
        assert!(m.health().is_err());
        m.has_leader.store(true, Relaxed);
        assert!(m.health().is_ok());
        m.is_leader.store(true, Relaxed);
        assert_eq!(m.health(), Err("the leader does not hear from a quorum"));
        m.quorum_active.store(true, Relaxed);
        assert!(m.health().is_ok());
    }
}
