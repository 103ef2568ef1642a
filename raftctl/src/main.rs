//! `raftctl`: operate a raftd cluster from the shell.
//!
//! Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use raftctl::bench::{self, BenchConfig, BenchOp};
use raftctl::{parse_duration, Client, CtlError, DEFAULT_ENDPOINTS};
use raftd::protocol::*;
use serde_json::json;

/// Where `scripts/cluster.sh` lists the local cluster's client endpoints (relative to the
/// directory raftctl runs in).
const LOCAL_CLUSTER_ENDPOINTS: &str = ".cluster/endpoints";

/// Prints a line to stdout. When stdout is a pipe closed early (`raftctl status | head -1`),
/// the command ends quietly with success instead of panicking like `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("raftctl: writing to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

/// Operate a raftd cluster.
#[derive(Parser, Debug)]
#[command(name = "raftctl", version = raftd::VERSION, about)]
struct Cli {
    /// Client endpoints of the cluster's nodes, HOST:PORT,... [default: the endpoints in
    /// ./.cluster/endpoints (the local cluster of scripts/cluster.sh, nodes added included),
    /// else 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103]
    #[arg(long, env = "RAFT_ENDPOINTS", global = true)]
    endpoints: Option<String>,
    /// Time budget of one operation, e.g. 2s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the cluster's shared secret.
    #[arg(long, env = "RAFT_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Speak TLS, trusting the CA certificate(s) in this PEM file (the nodes' --cert-file
    /// must be issued by it and name the endpoint's host).
    #[arg(long, env = "RAFT_CACERT", value_name = "FILE", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for nodes started with --client-cert-auth; needs --key.
    #[arg(long, env = "RAFT_CERT", value_name = "FILE", global = true, requires = "tls_key")]
    cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        env = "RAFT_KEY",
        value_name = "FILE",
        global = true,
        requires = "cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every member's state, and the cluster's.
    Status,
    /// Set KEY to VALUE.
    Put {
        key: String,
        /// The value; read from stdin when left out (`raftctl put k < file`).
        value: Option<String>,
    },
    /// Read KEY (linearizable unless --serializable).
    Get {
        key: String,
        /// Answer from any node's state, possibly stale.
        #[arg(long)]
        serializable: bool,
    },
    /// Delete KEY.
    Del { key: String },
    /// Set KEY to NEW if its value is EXPECTED (exit 1 if not swapped).
    /// (With --absent: KEY NEW, set only if KEY is absent.)
    Cas {
        key: String,
        /// EXPECTED NEW, or NEW with --absent.
        #[arg(num_args = 1..=2, required = true, value_names = ["EXPECTED", "NEW"])]
        values: Vec<String>,
        /// Expect the key to be absent: then only NEW is given.
        #[arg(long)]
        absent: bool,
    },
    /// Hand leadership to voter ID.
    TransferLeader { id: u64 },
    /// Membership: list, add, add-learner, promote, remove.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Snapshot and compact now (on the leader, or --node); or save and check backups.
    #[command(args_conflicts_with_subcommands = true)]
    Snapshot {
        /// Take it on this node instead of the leader.
        #[arg(long)]
        node: Option<u64>,
        #[command(subcommand)]
        backup: Option<BackupCmd>,
    },
    /// Load the cluster and report throughput and latency.
    Bench {
        #[arg(long, value_enum, default_value_t = Workload::Put)]
        op: Workload,
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Connections the clients share.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Operations in all (ignored with --duration).
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        /// Run for this long instead, e.g. 30s.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Keys, chosen uniformly.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// What every key the benchmark writes starts with: PREFIXkey0, PREFIXkey1, ...
        #[arg(long, default_value = "bench/")]
        prefix: String,
    },
    /// Exit 0 when every member knows one leader and their configurations agree.
    Check,
    /// Compare the members' key-value data: a hash from each at the same applied index
    /// (asked again while writes move the indexes apart). Exit 1 when two differ.
    Hashkv,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `raftctl completion bash > /etc/bash_completion.d/raftctl`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a throwaway CA and certificates for trying TLS: ca.pem, node-<ID>.pem (naming
    /// node-<ID>.<CLUSTER-ID> and the hosts) and client.pem, each with its -key.pem. Files
    /// already in DIR are kept, and the CA there signs the new ones.
    Certs {
        /// Where to write them.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The cluster's --cluster-id.
        #[arg(long, default_value = "raft")]
        cluster_id: String,
        /// Node ids, ID,...
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Host names and IP addresses clients reach the nodes at, NAME,...
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Drop or delay a node's messages (nodes started with --allow-fault-injection).
    Fault {
        /// The node to change.
        #[arg(long)]
        node: u64,
        /// Drop its messages to these nodes, ID,...
        #[arg(long, value_delimiter = ',')]
        drop_to: Vec<u64>,
        /// Drop its messages from these nodes, ID,...
        #[arg(long, value_delimiter = ',')]
        drop_from: Vec<u64>,
        /// Delay every message it sends.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Undo faults (on --node, or on every node).
    Heal {
        #[arg(long)]
        node: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// The members and their addresses.
    List,
    /// Add a voter: as a learner, then promoted once it runs (started with --join) and the
    /// leader recorded its data dir's incarnation; without that, it stays a learner.
    Add { id: u64, addr: String },
    /// Add a learner (then start it with `raftd --join`).
    AddLearner { id: u64, addr: String },
    /// Promote a learner to voter: only once its data dir incarnation is recorded (it ran
    /// and reached the leader). A voter's incarnation is checked on every connection: a node
    /// whose data dir was wiped or replaced is refused under its old id, because it lost
    /// what it acknowledged. To replace a node's disk: member remove ID, wipe the data dir,
    /// member add-learner ID ADDR, start it with --join, member promote ID.
    Promote { id: u64 },
    /// Change the peer address the cluster holds for member ID (it moved; restart it there).
    Update { id: u64, addr: String },
    /// Remove a member (the leader hands over first).
    Remove {
        id: u64,
        /// Remove even if fewer live voters than a quorum would remain.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    Put,
    Get,
    Mixed,
}

/// An operation's failure: the message and the exit code.
struct Failure(String, u8);

impl From<CtlError> for Failure {
    fn from(e: CtlError) -> Failure {
        Failure(e.to_string(), 1)
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure(message.into(), 1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = match &cli.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("raftctl: --token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let given = match &cli.endpoints {
        Some(e) => e.clone(),
        None => std::fs::read_to_string(LOCAL_CLUSTER_ENDPOINTS)
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINTS.to_string()),
    };
    let endpoints: Vec<String> =
        given.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    if endpoints.is_empty() {
        eprintln!("raftctl: --endpoints is empty");
        return ExitCode::from(2);
    }
    let tls = match (&cli.cacert, &cli.cert, &cli.tls_key) {
        (None, None, None) => None,
        (None, _, _) => {
            eprintln!("raftctl: --cert and --key need --cacert (the CA the nodes' certificates come from)");
            return ExitCode::from(2);
        }
        (Some(ca), cert, key) => {
            let cert_key = cert.as_deref().zip(key.as_deref());
            match raftctl::tls_config(ca, cert_key) {
                Ok(config) => Some(config),
                Err(e) => {
                    eprintln!("raftctl: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let mut client = Client::new(endpoints, cli.timeout, token.clone());
    client.set_tls(tls);
    client.fail_fast = true;
    match run(&cli, &mut client, token.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("raftctl: {message}");
            ExitCode::from(code)
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cli: &Cli, client: &mut Client, token: Option<&str>) -> Result<(), Failure> {
    match &cli.command {
        Cmd::Status => status(cli, client),
        Cmd::Completion { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "raftctl", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Certs { dir, cluster_id, nodes, hosts, days } => {
            let created =
                raftctl::certs::create(dir, cluster_id, nodes, hosts, *days).map_err(fail)?;
            let written: Vec<String> =
                created.written.iter().map(|p| p.display().to_string()).collect();
            print(cli, json!({"written": written}), || {
                written.iter().map(|p| format!("wrote {p}")).collect::<Vec<_>>().join("\n")
            });
            Ok(())
        }
        Cmd::Put { key, value } => {
            let value = match value {
                Some(v) => v.clone().into_bytes(),
                None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    return Err(Failure(
                        "put takes KEY VALUE, or KEY with the value piped on stdin".into(),
                        2,
                    ))
                }
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .map_err(|e| fail(format!("reading the value from stdin: {e}")))?;
                    buf
                }
            };
            let reply = client.kv(Op::Put { key: key.clone().into_bytes(), value })?;
            print(cli, json!({"index": reply.index}), || format!("OK (index {})", reply.index));
            Ok(())
        }
        Cmd::Get { key, serializable } => {
            let reply = client
                .kv(Op::Get { key: key.clone().into_bytes(), serializable: *serializable })?;
            let OpResult::Get(value) = reply.result else { return Err(fail("unexpected reply")) };
            let text = value.as_deref().map(show);
            match text {
                Some(text) => {
                    print(cli, json!({"key": key, "value": text, "index": reply.index}), || {
                        text.clone()
                    });
                    Ok(())
                }
                // Told apart from an empty value: nothing on stdout (null in JSON), exit 1.
                None => {
                    if cli.json {
                        out!("{}", json!({"key": key, "value": null, "index": reply.index}));
                    }
                    Err(fail(format!("{key}: not found")))
                }
            }
        }
        Cmd::Del { key } => {
            let reply = client.kv(Op::Delete { key: key.clone().into_bytes() })?;
            let existed = matches!(reply.result, OpResult::Delete(true));
            print(cli, json!({"deleted": existed, "index": reply.index}), || {
                if existed {
                    format!("deleted (index {})", reply.index)
                } else {
                    format!("not found (index {})", reply.index)
                }
            });
            Ok(())
        }
        Cmd::Cas { key, values, absent } => {
            let (expected, new) = match (values.as_slice(), absent) {
                ([new], true) => (None, new),
                ([expected, new], false) => (Some(expected.clone().into_bytes()), new),
                (_, true) => return Err(Failure("cas --absent takes KEY NEW".into(), 2)),
                (_, false) => {
                    return Err(Failure(
                        "cas takes KEY EXPECTED NEW (or --absent KEY NEW)".into(),
                        2,
                    ))
                }
            };
            let op =
                Op::Cas { key: key.clone().into_bytes(), expected, new: new.clone().into_bytes() };
            let reply = client.kv(op)?;
            let OpResult::Cas { swapped, previous } = reply.result else {
                return Err(fail("unexpected reply"));
            };
            let previous = previous.as_deref().map(show);
            print(
                cli,
                json!({"swapped": swapped, "previous": previous, "index": reply.index}),
                || match (swapped, &previous) {
                    (true, _) => format!("swapped (index {})", reply.index),
                    (false, Some(value)) => format!("not swapped: the value is {value}"),
                    (false, None) => "not swapped: the key is absent".to_string(),
                },
            );
            if swapped {
                Ok(())
            } else {
                Err(fail("compare failed: not swapped"))
            }
        }
        Cmd::TransferLeader { id } => {
            client.admin_leader(AdminRequest::TransferLeader { to: *id })?;
            wait_for_leader(client, *id)?;
            print(cli, json!({"leader": id}), || format!("node {id} leads"));
            Ok(())
        }
        Cmd::Member(cmd) => member(cli, client, cmd),
        Cmd::Snapshot { backup: Some(cmd), .. } => backup(cli, client, cmd),
        Cmd::Snapshot { node, backup: None } => {
            let reply = match node {
                Some(id) => {
                    let endpoint = endpoint_of(client, *id)?;
                    client.admin_at(&endpoint, AdminRequest::Snapshot)?
                }
                None => {
                    // Not admin_leader: every node takes a snapshot when asked, so the first
                    // to answer would, and this one is the leader's.
                    let leader = leader_status(client)?;
                    let endpoint = leader
                        .members
                        .iter()
                        .find(|m| m.id == leader.id)
                        .and_then(|m| m.client_addr.clone())
                        .ok_or_else(|| fail("the leader did not give its client address"))?;
                    client.admin_at(&endpoint, AdminRequest::Snapshot)?
                }
            };
            let AdminReply::Snapshot { node, index } = reply else {
                return Err(fail(format!("unexpected reply {reply:?}")));
            };
            print(cli, json!({"node": node, "index": index}), || {
                format!("node {node}: snapshot at index {index}")
            });
            Ok(())
        }
        Cmd::Bench { op, clients, conns, ops, duration, value_size, keys, prefix } => {
            if *clients == 0 {
                return Err(Failure("--clients must be at least 1".into(), 2));
            }
            let cfg = BenchConfig {
                op: match op {
                    Workload::Put => BenchOp::Put,
                    Workload::Get => BenchOp::Get,
                    Workload::Mixed => BenchOp::Mixed,
                },
                clients: *clients,
                conns: *conns,
                ops: *ops,
                duration: *duration,
                value_size: *value_size,
                keys: *keys,
                prefix: prefix.clone(),
            };
            let result = bench::run(client, &cfg, token)?;
            let text = || {
                format!(
                    "{} ops in {:.2}s: {:.0} ops/s\nlatency p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us\nerrors: {}{}\nkeys: {prefix}key0 to {prefix}key{} (--prefix)",
                    result.ops, result.secs, result.ops_per_sec, result.p50_us, result.p90_us, result.p99_us, result.p999_us,
                    result.max_us, result.errors,
                    result.errors_by_kind.iter().map(|(k, n)| format!(", {n} {k}")).collect::<String>(),
                    keys.saturating_sub(1)
                )
            };
            print(cli, serde_json::to_value(&result).unwrap_or_default(), text);
            Ok(())
        }
        Cmd::Check => check(cli, client),
        Cmd::Hashkv => hashkv(cli, client),
        Cmd::Fault { node, drop_to, drop_from, delay_ms } => {
            let endpoint = endpoint_of(client, *node)?;
            let request = AdminRequest::Fault {
                drop_to: drop_to.clone(),
                drop_from: drop_from.clone(),
                delay_ms: *delay_ms,
            };
            client.admin_at(&endpoint, request)?;
            print(cli, json!({"node": node, "fault": true}), || {
                format!("fault injected on node {node}")
            });
            Ok(())
        }
        Cmd::Heal { node } => {
            let endpoints = match node {
                Some(id) => vec![endpoint_of(client, *id)?],
                None => client.endpoints.clone(),
            };
            for e in endpoints {
                client.admin_at(&e, AdminRequest::Heal)?;
            }
            print(cli, json!({"healed": true}), || "healed".to_string());
            Ok(())
        }
    }
}

/// Backups.
#[derive(Subcommand, Debug)]
enum BackupCmd {
    /// Save a consistent snapshot of everything the leader applied into FILE (written whole
    /// or not at all); restore it with `raftd --restore FILE --initial-cluster ...`.
    Save { file: std::path::PathBuf },
    /// Check a saved snapshot (its checksum and state machine) and describe it.
    Status { file: std::path::PathBuf },
}

fn backup(cli: &Cli, client: &mut Client, cmd: &BackupCmd) -> Result<(), Failure> {
    let (file, info) = match cmd {
        BackupCmd::Save { file } => (file, raftctl::backup::save(client, file)?),
        BackupCmd::Status { file } => {
            let bytes = std::fs::read(file)
                .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
            (file, raftctl::backup::inspect(file, &bytes).map_err(fail)?)
        }
    };
    let verb = if matches!(cmd, BackupCmd::Save { .. }) { "saved" } else { "checked" };
    print(
        cli,
        json!({
            "file": file.display().to_string(), "index": info.index, "term": info.term,
            "voters": info.voters, "learners": info.learners, "keys": info.keys,
            "hash": info.hash, "size": info.size,
            "cluster_incarnation": format!("{:016x}", info.cluster_incarnation),
        }),
        || {
            format!(
                "{verb} {}: index {}, term {}, {} keys (hash {}), {} bytes; taken from a cluster \
                 of voters {:?}, learners {:?} (incarnation {:016x})",
                file.display(),
                info.index,
                info.term,
                info.keys,
                info.hash,
                info.size,
                info.voters,
                info.learners,
                info.cluster_incarnation
            )
        },
    );
    Ok(())
}

fn print(cli: &Cli, value: serde_json::Value, text: impl FnOnce() -> String) {
    if cli.json {
        out!("{value}");
    } else {
        out!("{}", text());
    }
}

/// The endpoint of node `id`, from the members' statuses.
fn endpoint_of(client: &mut Client, id: u64) -> Result<String, Failure> {
    for (endpoint, status) in client.statuses() {
        if status.is_ok_and(|s| s.id == id) {
            return Ok(endpoint);
        }
    }
    Err(fail(format!("no endpoint answers as node {id}")))
}

/// The leader's own status (any node answers a status; ask the one it names as leader).
fn leader_status(client: &mut Client) -> Result<NodeStatus, Failure> {
    let any = match client.admin_leader(AdminRequest::Status)? {
        AdminReply::Status(s) => *s,
        other => return Err(fail(format!("unexpected reply {other:?}"))),
    };
    if any.role == "leader" {
        return Ok(any);
    }
    let addr = any
        .members
        .iter()
        .find(|m| m.id == any.leader && any.leader != 0)
        .and_then(|m| m.client_addr.clone())
        .ok_or_else(|| fail(format!("node {} knows no leader, or not its address", any.id)))?;
    match client.admin_at(&addr, AdminRequest::Status)? {
        AdminReply::Status(s) if s.role == "leader" => Ok(*s),
        AdminReply::Status(s) => {
            Err(fail(format!("node {} at {addr} is not the leader (it is {})", s.id, s.role)))
        }
        other => Err(fail(format!("unexpected reply {other:?}"))),
    }
}

/// Waits until node `id` leads the latest term any endpoint reports. (Any endpoint that knows
/// says so, the old leader among them: `--endpoints` need not list the new one.)
fn wait_for_leader(client: &mut Client, id: u64) -> Result<(), Failure> {
    let deadline = Instant::now() + client.timeout;
    loop {
        let statuses: Vec<NodeStatus> =
            client.statuses().into_iter().filter_map(|(_, s)| s.ok()).collect();
        let term = statuses.iter().map(|s| s.term).max().unwrap_or(0);
        if statuses.iter().any(|s| s.term == term && s.leader == id) {
            return Ok(());
        }
        let leaders: Vec<u64> =
            statuses.iter().filter(|s| s.role == "leader").map(|s| s.id).collect();
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "node {id} did not become leader in time (leaders now: {leaders:?})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(cli: &Cli, client: &mut Client) -> Result<(), Failure> {
    let statuses = client.statuses();
    let leader = leader_view(client, &statuses);
    let leader_commit = leader.as_ref().map(|l| l.commit);
    let mut warnings = leader.as_ref().map(out_of_contact).unwrap_or_default();
    warnings.extend(alarms(&statuses).into_iter().map(|a| format!("alarm {a}")));
    if cli.json {
        let nodes: Vec<serde_json::Value> = statuses
            .iter()
            .map(|(endpoint, s)| match s {
                Ok(s) => json!({
                    "endpoint": endpoint, "id": s.id, "role": s.role, "term": s.term, "leader": s.leader,
                    "commit": s.commit, "applied": s.applied, "lag": leader_commit.map(|c| c.saturating_sub(s.applied)),
                    "last_index": s.last_index, "snapshot_index": s.snapshot_index, "health": health(s, leader.as_ref()),
                    "uptime_secs": s.uptime_secs, "wal_syncs": s.wal_syncs,
                    "wal_sync_micros": s.wal_sync_micros, "wal_sync_max_micros": s.wal_sync_max_micros,
                    "alarms": s.alarms,
                }),
                Err(e) => json!({"endpoint": endpoint, "health": e.to_string()}),
            })
            .collect();
        let cluster = leader.as_ref().map(cluster_json);
        out!("{}", json!({"nodes": nodes, "cluster": cluster, "warnings": warnings}));
    } else {
        out!(
            "{:<4} {:<22} {:<13} {:>6} {:>6} {:>8} {:>8} {:>6}  HEALTH",
            "ID",
            "ADDRESS",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "LAG"
        );
        for (endpoint, s) in &statuses {
            match s {
                Ok(s) => out!(
                    "{:<4} {:<22} {:<13} {:>6} {:>6} {:>8} {:>8} {:>6}  {}",
                    s.id,
                    endpoint,
                    s.role,
                    s.term,
                    s.leader,
                    s.commit,
                    s.applied,
                    leader_commit
                        .map_or("-".to_string(), |c| c.saturating_sub(s.applied).to_string()),
                    health(s, leader.as_ref())
                ),
                Err(e) => out!(
                    "{:<4} {:<22} {:<13} {:>6} {:>6} {:>8} {:>8} {:>6}  {e}",
                    "?",
                    endpoint,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-"
                ),
            }
        }
        match &leader {
            Some(l) => {
                let (voters, learners, outgoing) = member_sets(l);
                out!(
                    "cluster: leader {}, term {}, voters {voters:?}, learners {learners:?}{}",
                    l.id,
                    l.term,
                    if l.joint {
                        format!(", joint with outgoing {outgoing:?}")
                    } else {
                        String::new()
                    }
                );
            }
            None => out!("cluster: no leader known"),
        }
        for w in &warnings {
            out!("warning: {w}");
        }
    }
    if statuses.iter().all(|(_, s)| s.is_err()) {
        return Err(fail("no endpoint answered"));
    }
    if leader.is_none() {
        return Err(fail("no leader known: the cluster takes no writes and no linearizable reads"));
    }
    Ok(())
}

/// Entries a member may trail the leader's commit index by and still count as healthy (a
/// loaded follower applies a few hundred behind).
const HEALTHY_LAG_ENTRIES_MAX: u64 = 1000;

/// A node's health as its own status and the leader's show it.
fn health(s: &NodeStatus, leader: Option<&NodeStatus>) -> String {
    if s.alarms.iter().any(|a| a.starts_with(&format!("NOSPACE on node {}:", s.id))) {
        return "NOSPACE".to_string();
    }
    if s.leader == 0 {
        return "no leader".to_string();
    }
    let Some(l) = leader else { return format!("leader {} unreachable", s.leader) };
    if s.leader != l.id {
        return format!("follows {}, leader is {}", s.leader, l.id);
    }
    let lag = l.commit.saturating_sub(s.applied);
    if lag > HEALTHY_LAG_ENTRIES_MAX {
        return format!("behind by {lag}");
    }
    "ok".to_string()
}

/// The leader's status: from the answers, or asked at the address the answers give for it.
fn leader_view(
    client: &mut Client,
    statuses: &[(String, Result<NodeStatus, CtlError>)],
) -> Option<NodeStatus> {
    let answered: Vec<&NodeStatus> = statuses.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    if let Some(l) = answered.iter().filter(|s| s.role == "leader").max_by_key(|s| s.term) {
        return Some((*l).clone());
    }
    let newest = answered.iter().filter(|s| s.leader != 0).max_by_key(|s| s.term)?;
    let addr = newest.members.iter().find(|m| m.id == newest.leader)?.client_addr.clone()?;
    match client.admin_at(&addr, AdminRequest::Status) {
        Ok(AdminReply::Status(s)) if s.role == "leader" => Some(*s),
        _ => None,
    }
}

/// Every alarm the nodes know of, once each: a node's own words for its alarm rather than
/// a peer's mention of it.
fn alarms(statuses: &[(String, Result<NodeStatus, CtlError>)]) -> Vec<String> {
    let mut all: Vec<String> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .flat_map(|s| s.alarms.clone())
        .collect();
    all.sort();
    all.dedup();
    let detailed: Vec<String> = all.iter().filter(|a| a.contains(':')).cloned().collect();
    all.retain(|a| a.contains(':') || !detailed.iter().any(|d| d.starts_with(&format!("{a}:"))));
    all
}

/// The members the leader is not in contact with (down, partitioned, or not started).
fn out_of_contact(leader: &NodeStatus) -> Vec<String> {
    leader
        .members
        .iter()
        .filter(|m| m.id != leader.id && m.recent_active == Some(false))
        .map(|m| format!("node {} ({}) is not in contact with the leader", m.id, m.role))
        .collect()
}

fn member_sets(s: &NodeStatus) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let pick = |role: &str| {
        s.members.iter().filter(|m| m.role == role).map(|m| m.id).collect::<Vec<u64>>()
    };
    (pick("voter"), pick("learner"), pick("outgoing voter"))
}

fn cluster_json(l: &NodeStatus) -> serde_json::Value {
    let (voters, learners, outgoing) = member_sets(l);
    json!({"leader": l.id, "term": l.term, "voters": voters, "learners": learners, "outgoing_voters": outgoing, "joint": l.joint})
}

fn member(cli: &Cli, client: &mut Client, cmd: &MemberCmd) -> Result<(), Failure> {
    let request = match cmd {
        MemberCmd::List => {
            let l = leader_status(client)?;
            if cli.json {
                let members: Vec<serde_json::Value> = l
                    .members
                    .iter()
                    .map(|m| json!({"id": m.id, "role": m.role, "peer_addr": m.peer_addr, "client_addr": m.client_addr}))
                    .collect();
                out!("{}", json!({"members": members}));
            } else {
                for m in &l.members {
                    out!(
                        "{:<4} {:<15} peer {:<22} client {}",
                        m.id,
                        m.role,
                        m.peer_addr.clone().unwrap_or_else(|| "?".into()),
                        m.client_addr.clone().unwrap_or_else(|| "?".into())
                    );
                }
            }
            return Ok(());
        }
        MemberCmd::Add { id, addr } => {
            client.admin_leader(AdminRequest::AddLearner { id: *id, addr: addr.clone() })?;
            let deadline = Instant::now() + client.timeout;
            loop {
                match client.admin_leader(AdminRequest::Promote { id: *id }) {
                    Ok(AdminReply::Membership { voters, learners }) => {
                        print(cli, json!({"voters": voters, "learners": learners}), || {
                            format!("voters {voters:?}, learners {learners:?}")
                        });
                        return Ok(());
                    }
                    Ok(other) => return Err(fail(format!("unexpected reply {other:?}"))),
                    // Until the leader has recorded the learner's data dir incarnation (a
                    // configuration change of its own, which holds off others while pending)
                    // and the learner has caught up.
                    Err(e)
                        if Instant::now() < deadline
                            && (e.to_string().contains("not recorded")
                                || e.to_string().contains("already pending")
                                || e.to_string().contains("not in sync")) =>
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => {
                        return Err(fail(format!(
                            "node {id} was added as a learner but not promoted ({e}); start it \
                             with --join, then: raftctl member promote {id}"
                        )))
                    }
                }
            }
        }
        MemberCmd::AddLearner { id, addr } => {
            AdminRequest::AddLearner { id: *id, addr: addr.clone() }
        }
        MemberCmd::Promote { id } => AdminRequest::Promote { id: *id },
        MemberCmd::Update { id, addr } => {
            AdminRequest::UpdateMember { id: *id, addr: addr.clone() }
        }
        MemberCmd::Remove { id, force } => {
            let l = leader_status(client)?;
            let voters: Vec<&MemberStatus> =
                l.members.iter().filter(|m| m.role == "voter").collect();
            let remaining: Vec<&&MemberStatus> = voters.iter().filter(|m| m.id != *id).collect();
            // A voter is live when it answers: the leader's view (recent_active) is reset
            // every election timeout and would make this flap.
            let live = remaining
                .iter()
                .filter(|m| {
                    m.id == l.id
                        || m.client_addr
                            .as_ref()
                            .is_some_and(|a| client.admin_at(a, AdminRequest::Status).is_ok())
                })
                .count();
            let quorum = remaining.len() / 2 + 1;
            if voters.iter().any(|m| m.id == *id) && live < quorum && !force {
                return Err(fail(format!(
                    "removing node {id} leaves {live} live voters of {}, fewer than a quorum ({quorum}); use --force",
                    remaining.len()
                )));
            }
            if l.id == *id {
                let target = remaining
                    .iter()
                    .filter(|m| {
                        m.client_addr
                            .as_ref()
                            .is_some_and(|a| client.admin_at(a, AdminRequest::Status).is_ok())
                    })
                    .max_by_key(|m| m.matched.unwrap_or(0))
                    .map(|m| m.id)
                    .ok_or_else(|| fail("no live voter to hand leadership to"))?;
                client.admin_leader(AdminRequest::TransferLeader { to: target })?;
                wait_for_leader(client, target)?;
            }
            AdminRequest::Remove { id: *id }
        }
    };
    match client.admin_leader(request)? {
        AdminReply::Membership { voters, learners } => {
            print(cli, json!({"voters": voters, "learners": learners}), || {
                format!("voters {voters:?}, learners {learners:?}")
            });
            Ok(())
        }
        other => Err(fail(format!("unexpected reply {other:?}"))),
    }
}

/// Every member's client endpoint: the endpoints given, and those the leader knows.
fn member_endpoints(client: &mut Client) -> Vec<String> {
    let mut endpoints = client.endpoints.clone();
    let statuses = client.statuses();
    if let Some(l) = leader_view(client, &statuses) {
        for m in &l.members {
            let Some(addr) = &m.client_addr else { continue };
            let answered_as = statuses.iter().find(|(_, s)| s.as_ref().is_ok_and(|s| s.id == m.id));
            if answered_as.is_none() && !endpoints.contains(addr) {
                endpoints.push(addr.clone());
            }
        }
    }
    endpoints
}

fn hashkv(cli: &Cli, client: &mut Client) -> Result<(), Failure> {
    let endpoints = member_endpoints(client);
    let deadline = Instant::now() + client.timeout;
    loop {
        let mut answers: Vec<(u64, u64, u64, u64)> = Vec::new();
        let mut failures = Vec::new();
        for e in &endpoints {
            match client.admin_at(e, AdminRequest::HashKv) {
                Ok(AdminReply::HashKv { node, applied, hash, keys }) => {
                    answers.push((node, applied, hash, keys))
                }
                Ok(other) => failures.push(format!("{e}: unexpected reply {other:?}")),
                Err(err) => failures.push(err.to_string()),
            }
        }
        answers.sort_unstable();
        answers.dedup_by_key(|a| a.0);
        let aligned = answers.windows(2).all(|w| w[0].1 == w[1].1);
        if (aligned && !answers.is_empty()) || Instant::now() >= deadline {
            let agree = aligned && answers.windows(2).all(|w| w[0].2 == w[1].2);
            let rows: Vec<serde_json::Value> = answers
                .iter()
                .map(|(node, applied, hash, keys)| {
                    json!({"node": node, "applied": applied, "hash": format!("{hash:016x}"), "keys": keys})
                })
                .collect();
            print(cli, json!({"members": rows, "agree": agree, "failures": failures}), || {
                let mut text: Vec<String> = answers
                    .iter()
                    .map(|(node, applied, hash, keys)| {
                        format!("node {node}: applied {applied}, hash {hash:016x}, {keys} keys")
                    })
                    .collect();
                text.extend(failures.iter().map(|f| format!("no answer: {f}")));
                text.join("\n")
            });
            return match (aligned, agree, failures.is_empty(), answers.len()) {
                (_, _, _, 0) => Err(fail("no member answered")),
                (false, _, _, _) => Err(fail(
                    "the members' applied indexes kept moving apart (writes in flight): compare \
                     again when the cluster is quieter",
                )),
                (true, false, _, _) => Err(fail("the members' data differ at the same index")),
                (true, true, false, _) => {
                    Err(fail("every member that answered agrees; some did not answer"))
                }
                (true, true, true, n) => {
                    if !cli.json {
                        out!("ok: {n} members agree");
                    }
                    Ok(())
                }
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check(cli: &Cli, client: &mut Client) -> Result<(), Failure> {
    let statuses = client.statuses();
    let mut problems = Vec::new();
    let mut leaders = Vec::new();
    let mut configs = Vec::new();
    for (endpoint, s) in &statuses {
        match s {
            Ok(s) => {
                if s.leader == 0 {
                    problems.push(format!("node {} at {endpoint} knows no leader", s.id));
                }
                leaders.push(s.leader);
                let (v, l, o) = member_sets(s);
                configs.push((v, l, o));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    leaders.sort_unstable();
    leaders.dedup();
    if leaders.len() > 1 {
        problems.push(format!("members disagree on the leader: {leaders:?}"));
    }
    // Members not among the endpoints count too: the leader says whom it hears from.
    match leader_view(client, &statuses) {
        Some(l) => problems.extend(out_of_contact(&l)),
        None => problems.push("no leader answered".to_string()),
    }
    configs.dedup();
    if configs.len() > 1 {
        problems.push(format!("members disagree on the configuration: {configs:?}"));
    }
    if problems.is_empty() {
        print(cli, json!({"ok": true, "leader": leaders.first()}), || {
            format!("ok: leader {}", leaders[0])
        });
        Ok(())
    } else {
        if cli.json {
            out!("{}", json!({"ok": false, "problems": problems}));
        }
        Err(fail(problems.join("; ")))
    }
}
