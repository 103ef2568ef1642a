//! `raftctl bench`: closed-loop clients multiplexed over a few connections to the leader,
//! with latencies in an HDR histogram.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raftd::protocol::*;
use serde::Serialize;

use crate::{random_u64, Client, Conn, CtlError};

/// The workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOp {
    /// Writes only.
    Put,
    /// Linearizable reads only.
    Get,
    /// 90% reads, 10% writes.
    Mixed,
}

/// How to run a benchmark.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The workload.
    pub op: BenchOp,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Connections they share.
    pub conns: usize,
    /// Operations in all, unless a duration is given.
    pub ops: u64,
    /// Run for this long instead of a number of operations.
    pub duration: Option<Duration>,
    /// Bytes per value.
    pub value_size: usize,
    /// Keys written and read, uniformly.
    pub keys: u64,
    /// What every key starts with (`bench/`: the user's own keys are left alone).
    pub prefix: String,
}

/// What a benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Operations completed successfully.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Failures by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Wall time.
    pub secs: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

struct Shared {
    remaining: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    deadline: Option<Instant>,
}

impl Shared {
    fn take_one(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(deadline) = self.deadline {
            return Instant::now() < deadline;
        }
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
            .is_ok()
    }
}

struct Logical {
    /// The session its writes go in (0 until registered).
    session_id: u64,
    seq: u64,
    sent_at: Instant,
    rng: u64,
}

fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::NotLeader { .. } => "not_leader",
        ClientError::NoLeader => "no_leader",
        ClientError::Timeout => "timeout",
        ClientError::ProposalDropped => "proposal_dropped",
        ClientError::TooLarge { .. } => "too_large",
        ClientError::Refused(_) => "refused",
        ClientError::Stale { .. } => "stale",
        ClientError::SessionExpired { .. } => "session_expired",
        ClientError::NoSpace(_) => "no_space",
    }
}

struct ThreadResult {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    ops: u64,
    finished: Instant,
}

fn run_conn(
    mut conn: Conn,
    clients: usize,
    cfg: BenchConfig,
    shared: Arc<Shared>,
) -> Result<ThreadResult, CtlError> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = BTreeMap::new();
    let mut ops = 0u64;
    let value = vec![b'v'; cfg.value_size];
    let mut logical: Vec<Logical> = (0..clients)
        .map(|_| Logical { session_id: 0, seq: 0, sent_at: Instant::now(), rng: random_u64() | 1 })
        .collect();
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    let send = |conn: &mut Conn,
                l: &mut Logical,
                in_flight: &mut HashMap<u64, usize>,
                who: usize|
     -> Result<(), CtlError> {
        let r = next_rand(&mut l.rng);
        let key = format!("{}key{}", cfg.prefix, r % cfg.keys.max(1)).into_bytes();
        let write = match cfg.op {
            BenchOp::Put => true,
            BenchOp::Get => false,
            BenchOp::Mixed => (r >> 32) % 10 == 0,
        };
        let op = if write {
            Op::Put { key, value: value.clone() }
        } else {
            Op::Get { key, serializable: false }
        };
        if write {
            l.seq += 1;
        }
        let request_id = conn.request_id();
        l.sent_at = Instant::now();
        in_flight.insert(request_id, who);
        // Queued: the requests sent in answer to one read of responses leave in one write,
        // made when the connection next waits to read.
        conn.queue(&ClientRequest::Kv { request_id, session_id: l.session_id, seq: l.seq, op })
    };
    // Each logical client registers its session first (writes need one); registrations are
    // pipelined like the operations.
    let mut registering: HashMap<u64, usize> = HashMap::new();
    let register = |conn: &mut Conn, registering: &mut HashMap<u64, usize>, who: usize| {
        let request_id = conn.request_id();
        registering.insert(request_id, who);
        conn.queue(&ClientRequest::RegisterSession { request_id })
    };
    for (who, l) in logical.iter_mut().enumerate() {
        if !shared.take_one() {
            break;
        }
        if cfg.op == BenchOp::Get {
            send(&mut conn, l, &mut in_flight, who)?;
        } else {
            register(&mut conn, &mut registering, who)?;
        }
    }
    while !in_flight.is_empty() || !registering.is_empty() {
        let response: ClientResponse = conn.recv()?;
        let (request_id, result) = match response {
            ClientResponse::Kv { request_id, result } => (request_id, result),
            ClientResponse::Session { request_id, result } => {
                let Some(who) = registering.remove(&request_id) else { continue };
                match result {
                    Ok(session_id) => {
                        let l = &mut logical[who];
                        l.session_id = session_id;
                        l.seq = 0;
                        send(&mut conn, l, &mut in_flight, who)?;
                    }
                    // Without a session this client cannot write: it stops.
                    Err(e) => *errors.entry(error_kind(&e).to_string()).or_insert(0) += 1,
                }
                continue;
            }
            ClientResponse::Admin { .. } => continue,
        };
        let Some(who) = in_flight.remove(&request_id) else { continue };
        let l = &mut logical[who];
        if let Err(ClientError::SessionExpired { .. }) = result {
            // Evicted (more clients than --max-sessions, or idle past the TTL): counted, and
            // the client goes on in a new session.
            *errors.entry("session_expired".to_string()).or_insert(0) += 1;
            if shared.take_one() {
                register(&mut conn, &mut registering, who)?;
            }
            continue;
        }
        match result {
            Ok(_) => {
                let micros = l.sent_at.elapsed().as_micros().max(1) as u64;
                let _ = histogram.record(micros.min(60_000_000));
                ops += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => *errors.entry(error_kind(&e).to_string()).or_insert(0) += 1,
        }
        if shared.take_one() {
            send(&mut conn, l, &mut in_flight, who)?;
        }
    }
    Ok(ThreadResult { histogram, errors, ops, finished: Instant::now() })
}

/// Runs the benchmark against the cluster's leader.
pub fn run(
    client: &mut Client,
    cfg: &BenchConfig,
    token: Option<&str>,
) -> Result<BenchResult, CtlError> {
    // Find the leader's client address: writes and linearizable reads go there.
    let status = match client.admin_leader(AdminRequest::Status)? {
        AdminReply::Status(s) => *s,
        other => return Err(CtlError::Timeout { last: format!("unexpected {other:?}") }),
    };
    // Any node answers a status; the leader's client address is in its member list.
    let leader = status
        .members
        .iter()
        .find(|m| m.id == status.leader && status.leader != 0)
        .and_then(|m| m.client_addr.clone())
        .ok_or_else(|| CtlError::Timeout {
            last: "no leader, or its client address is unknown".into(),
        })?;
    let conns = cfg.conns.clamp(1, cfg.clients.max(1));
    let shared = Arc::new(Shared {
        remaining: AtomicU64::new(cfg.ops),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        deadline: cfg.duration.map(|d| Instant::now() + d),
    });
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..conns {
        let share = cfg.clients / conns + usize::from(i < cfg.clients % conns);
        let conn = Conn::open(&leader, token, client.tls(), client.timeout)?;
        let (cfg, shared) = (cfg.clone(), Arc::clone(&shared));
        handles.push(std::thread::spawn(move || run_conn(conn, share, cfg, shared)));
    }
    let progress = std::io::stderr().is_terminal();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if progress {
            let done = shared.done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            eprint!("\r{done} ops in {secs:.1}s ({:.0} ops/s)   ", done as f64 / secs.max(1e-9));
        }
    }
    if progress {
        eprintln!();
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut ops = 0;
    // The run ends when the last connection finished, not when this thread noticed.
    let mut end = start;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| CtlError::Timeout { last: "a bench thread panicked".into() })??;
        end = end.max(r.finished);
        histogram.add(&r.histogram).expect("same bounds");
        for (k, v) in r.errors {
            *errors_by_kind.entry(k).or_insert(0) += v;
        }
        ops += r.ops;
    }
    let secs = end.duration_since(start).as_secs_f64();
    let errors = errors_by_kind.values().sum();
    Ok(BenchResult {
        ops,
        errors,
        errors_by_kind,
        secs,
        ops_per_sec: ops as f64 / secs.max(1e-9),
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    })
}
