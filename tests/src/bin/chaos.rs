//! `chaos`: random faults against a real cluster under load for as long as asked, then the
//! same checks as the fault tests. Run through `scripts/chaos.sh`.
//!
//! Usage: chaos [--duration 10m] [--nodes 5] [--seed S]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use faults::harness::{self, Cluster, Workload};
use raftd::protocol::AdminRequest;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn parse_args() -> Result<(Duration, usize, u64), String> {
    let mut duration = Duration::from_secs(600);
    let mut nodes = 5;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--duration" => duration = raftctl::parse_duration(&value)?,
            "--nodes" => nodes = value.parse().map_err(|_| format!("--nodes {value:?}"))?,
            "--seed" => seed = value.parse().map_err(|_| format!("--seed {value:?}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if nodes < 3 {
        return Err("--nodes must be at least 3".into());
    }
    Ok((duration, nodes, seed.max(1)))
}

fn main() -> ExitCode {
    let (duration, n, seed) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}\nusage: chaos [--duration 10m] [--nodes 5] [--seed S]");
            return ExitCode::from(2);
        }
    };
    println!("chaos: {n} nodes for {duration:?}, seed {seed}");
    let mut rng = Rng(seed);
    // Snapshots far more often than the default, so that faults land during snapshots
    // (frozen state machine, files written in the background) and restarted nodes catch up
    // through them.
    let mut cluster =
        Cluster::start(n, &["--snapshot-entries=5000", "--snapshot-catchup-entries=1000"]);
    cluster.wait_for_leader();
    let workload = Workload::start_paced(&cluster, 6, 100, Duration::from_millis(5));
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let hold = Duration::from_millis(300 + rng.below(2500));
        let leader = cluster.wait_for_leader();
        let victim = ids[rng.below(ids.len() as u64) as usize];
        let others: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
        let kind = match rng.below(7) {
            0 => {
                cluster.kill(victim);
                std::thread::sleep(hold);
                cluster.restart(victim);
                "kill -9 and restart"
            }
            1 => {
                cluster.pause(leader);
                std::thread::sleep(hold);
                cluster.resume(leader);
                "pause the leader"
            }
            2 => {
                cluster.isolate(leader, &others);
                std::thread::sleep(hold);
                cluster.heal();
                "isolate the leader"
            }
            3 => {
                let (a, b) = (others[0], others[others.len() - 1]);
                let cut = |x: u64| AdminRequest::Fault {
                    drop_to: vec![x],
                    drop_from: vec![x],
                    delay_ms: 0,
                };
                let _ = cluster.admin(a, cut(b));
                let _ = cluster.admin(b, cut(a));
                std::thread::sleep(hold);
                cluster.heal();
                "bridge partition"
            }
            4 => {
                for _ in 0..5 {
                    let _ = cluster.admin(
                        leader,
                        AdminRequest::Fault {
                            drop_to: vec![victim],
                            drop_from: vec![victim],
                            delay_ms: 0,
                        },
                    );
                    std::thread::sleep(hold / 10);
                    cluster.heal();
                    std::thread::sleep(hold / 10);
                }
                "flapping link"
            }
            5 => {
                let _ = cluster.admin(
                    leader,
                    AdminRequest::Fault { drop_to: others.clone(), drop_from: vec![], delay_ms: 0 },
                );
                std::thread::sleep(hold);
                cluster.heal();
                "outbound loss"
            }
            _ => {
                for node in cluster.nodes.values() {
                    for addr in [&node.peer_addr, &node.client_addr] {
                        if let Ok(mut s) = TcpStream::connect(addr) {
                            let garbage: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
                            let _ = s.write_all(&garbage);
                        }
                    }
                }
                "bad input"
            }
        };
        *faults.entry(kind).or_insert(0) += 1;
        // Let the cluster recover before the next fault.
        cluster.wait_for_leader();
        std::thread::sleep(Duration::from_millis(200));
    }
    let total_faults: u64 = faults.values().sum();
    match harness::verify(&cluster, workload) {
        Ok(summary) => {
            println!(
                "chaos: PASS. {} operations completed ({} with unknown outcome), {} faults injected ({:?}), {} terms with a leader, history linearizable",
                summary.known, summary.unknown, total_faults, faults, summary.terms
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("chaos: FAIL after {total_faults} faults ({faults:?}), seed {seed}:\n{e}");
            ExitCode::from(1)
        }
    }
}
