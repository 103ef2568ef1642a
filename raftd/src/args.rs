//! raftd's command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::node::NodeConfig;
use crate::tls::{ClientTlsFiles, PeerTlsFiles, TlsSettings};

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadOnly {
    /// A heartbeat round to a quorum per batch of reads.
    Safe,
    /// The leader's lease (requires --check-quorum).
    LeaseBased,
}

/// A node of the replicated key-value store.
#[derive(Clone, Debug, Parser)]
#[command(name = "raftd", version = crate::VERSION, about, args_override_self = true)]
pub struct Args {
    /// A TOML file of flags (`listen-peer = "127.0.0.1:7001"`, `join = true`, ...): every flag
    /// but this one, by its name without the dashes. Flags given on the command line win over
    /// `RAFTD_<FLAG>` environment variables (`RAFTD_LISTEN_PEER`), which win over the file,
    /// which wins over the defaults. Unknown keys and variables are refused. Also
    /// `RAFTD_CONFIG_FILE`.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// This node's id (not 0).
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Directory of the write-ahead log and snapshots.
    #[arg(long, default_value = "raftd-data")]
    pub data_dir: PathBuf,
    /// Address for connections from other nodes: IP:PORT, or HOST:PORT resolved at startup.
    #[arg(long, default_value = "127.0.0.1:7001", value_parser = parse_listen_addr)]
    pub listen_peer: SocketAddr,
    /// Address for client and admin connections: IP:PORT, or HOST:PORT resolved at startup.
    #[arg(long, default_value = "127.0.0.1:7101", value_parser = parse_listen_addr)]
    pub listen_client: SocketAddr,
    /// Start a new cluster from this backup (`raftctl snapshot save`): every member of
    /// --initial-cluster is started with the same file and an empty data dir. Ignored once
    /// the data dir holds a cluster.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Address for Prometheus metrics (`/metrics`) and the health probe (`/health`) over
    /// plain HTTP: IP:PORT or HOST:PORT. Default: not served.
    #[arg(long, value_parser = parse_listen_addr)]
    pub listen_metrics: Option<SocketAddr>,
    /// Where other nodes reach this node's peer port, when not at --listen-peer (which
    /// may be 0.0.0.0). Default: this node's entry in --initial-cluster, else --listen-peer.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_peer: Option<String>,
    /// Where clients are redirected to reach this node, when not at --listen-client (which
    /// may be 0.0.0.0). Default: --listen-client.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_client: Option<String>,
    /// Peer addresses of the initial members, as ID=HOST:PORT,... (used only when the data
    /// dir is empty).
    #[arg(long, default_value = "", value_parser = parse_cluster)]
    pub initial_cluster: ClusterMap,
    /// Start with an empty data dir and wait to be added by a membership change.
    #[arg(long)]
    pub join: bool,
    /// The cluster's name; every node and the data dir must agree.
    #[arg(long, default_value = "raft")]
    pub cluster_id: String,
    /// Ticks without a leader before an election.
    #[arg(long, default_value_t = 10)]
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    #[arg(long, default_value_t = 1)]
    pub heartbeat_tick: usize,
    /// Milliseconds per tick.
    #[arg(long, default_value_t = 100)]
    pub tick_interval_ms: u64,
    /// Bytes of entries per append message.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    #[arg(long, default_value_t = 256)]
    pub max_inflight_msgs: usize,
    /// Bytes of uncommitted proposals the leader accepts (0: no limit).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_uncommitted_entries_size: u64,
    /// Bytes of committed entries applied per loop iteration (0: no limit).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_committed_size_per_ready: u64,
    /// A leader steps down without a quorum; followers ignore votes within a lease.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub check_quorum: bool,
    /// Run a pre-vote before elections.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub pre_vote: bool,
    /// How linearizable reads are confirmed.
    #[arg(long, value_enum, default_value_t = ReadOnly::Safe)]
    pub read_only_option: ReadOnly,
    /// Followers refuse proposals instead of forwarding them.
    #[arg(long)]
    pub disable_proposal_forwarding: bool,
    /// Snapshot and compact every this many applied entries (0: only on request). etcd's
    /// default; each snapshot writes the whole state, so more often costs write bandwidth.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_entries: u64,
    /// Log entries kept behind a snapshot, so that a follower slightly behind catches up
    /// from the log rather than by a snapshot.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,
    /// File holding the secret every client and operator must present (the client port).
    /// Requires --peer-token-file: protecting clients but not the Raft port is refused.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the secret every peer must present (the peer port); it must differ from
    /// the client secret, so that a client credential does not let anyone speak Raft.
    #[arg(long)]
    pub peer_token_file: Option<PathBuf>,
    /// Peer port TLS: this node's certificate (PEM). It must name the node as the DNS subject
    /// alternative name `node-<id>.<cluster-id>`, and serve for both server and client
    /// authentication: peers always authenticate each other. Requires --peer-key-file and
    /// --peer-trusted-ca-file.
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer port TLS: the private key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer port TLS: the CA certificate(s) that issued the other nodes' peer certificates
    /// (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Client port TLS: the certificate served to clients (PEM). Requires --key-file.
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client port TLS: the private key of --cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Client port TLS: the CA certificate(s) that issue client certificates (PEM); used with
    /// --client-cert-auth.
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client port TLS: every client must present a certificate issued by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Accept fault-injection admin requests (for tests).
    #[arg(long)]
    pub allow_fault_injection: bool,
    /// Tests only: also record in this directory what each sync made durable, so that a test
    /// can rebuild the data dir as a power cut would leave it (see `wal::fs::ShadowFs`).
    #[arg(long, hide = true)]
    pub shadow_dir: Option<PathBuf>,
    /// Milliseconds a client request may wait before it is answered Timeout.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Largest frame accepted from a socket, in bytes.
    #[arg(long, default_value_t = codec::FRAME_SIZE_MAX_DEFAULT)]
    pub frame_size_max: usize,
    /// Largest key-value request (the encoded command: value, key and a few bytes), in bytes;
    /// at most --frame-size-max less 1 MiB [default: 17 MiB (a 16 MiB value), or less to fit
    /// --frame-size-max]
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Size of each WAL segment file, in bytes.
    #[arg(long, default_value_t = wal::SEGMENT_SIZE_BYTES_DEFAULT)]
    pub segment_size_bytes: u64,
    /// The data dir's size at which its space alarm is raised (puts refused with NoSpace
    /// until it is below again), in bytes; 0: no quota.
    #[arg(long, default_value_t = crate::space::SPACE_QUOTA_BYTES_DEFAULT)]
    pub space_quota_bytes: u64,
    /// Free bytes kept on the data dir's file system: below this, the space alarm is raised
    /// [default: 4 WAL segments]
    #[arg(long)]
    pub space_reserve_bytes: Option<u64>,
    /// Client sessions the state machine keeps at most; registering one more forgets the
    /// least recently active, whose next write is refused with SessionExpired. Applied by
    /// every node from the next session registration this node proposes as leader.
    #[arg(long, default_value_t = crate::kv::SESSIONS_MAX_DEFAULT)]
    pub max_sessions: u64,
    /// Seconds without a write (by the leaders' clocks, replicated in the log) after which a
    /// client session expires. Takes effect like --max-sessions.
    #[arg(long, default_value_t = crate::kv::SESSION_TTL_MS_DEFAULT / 1000)]
    pub session_ttl_secs: u64,
    /// Bytes of values the sessions' kept replies may hold, all together (a compare-and-swap's
    /// reply holds the value it replaced); past it the least recently active sessions are
    /// forgotten. Takes effect like --max-sessions.
    #[arg(long, default_value_t = crate::kv::SESSION_REPLY_BYTES_MAX_DEFAULT)]
    pub max_session_reply_bytes: u64,
    /// Client connections kept at most; more are accepted and closed at once.
    #[arg(long, default_value_t = crate::node::CLIENT_CONNECTIONS_MAX_DEFAULT)]
    pub max_client_connections: usize,
    /// Connections whose Hello is not yet accepted, at most, on each port; more are accepted
    /// and closed at once.
    #[arg(long, default_value_t = crate::node::PENDING_HANDSHAKES_MAX_DEFAULT)]
    pub max_pending_handshakes: usize,
    /// Milliseconds a connection has to send its Hello before it is closed.
    #[arg(long, default_value_t = crate::node::HANDSHAKE_TIMEOUT_MS_DEFAULT)]
    pub handshake_timeout_ms: u64,
    /// Bytes all connections' buffers may hold together; past it, the client connections
    /// holding the most are closed (peers are kept). At least four times --frame-size-max.
    #[arg(long, default_value_t = crate::node::BUFFERED_BYTES_MAX_DEFAULT)]
    pub max_buffered_bytes: usize,
}

/// Bounds for the session flags: at least one session, kept at least a second; at most ten
/// million (about a gigabyte) and a year.
const SESSIONS_MAX_CEILING: u64 = 10_000_000;
const SESSION_TTL_SECS_CEILING: u64 = 365 * 24 * 3600;

/// Node id to peer address.
pub type ClusterMap = BTreeMap<u64, String>;

/// The largest node id: ids are shown in `--json` output, and JSON readers that hold numbers
/// as doubles (JavaScript) read integers exactly only up to 2^53 - 1.
pub const NODE_ID_MAX: u64 = (1 << 53) - 1;

/// Checks a node id: 1 to [`NODE_ID_MAX`].
pub(crate) fn check_node_id(id: u64) -> Result<(), String> {
    match id {
        0 => Err("node id 0 is reserved".into()),
        id if id > NODE_ID_MAX => Err(format!("node id {id} is above the largest, {NODE_ID_MAX}")),
        _ => Ok(()),
    }
}

/// Checks a peer address: `HOST:PORT` with a port other than 0, where `HOST` is an IP address
/// (`127.0.0.1:7004`, `[::1]:7004`) or a host name (`node4.example:7004`), resolved when the
/// node dials it (see [`crate::resolve`]). Nothing is resolved here.
pub(crate) fn check_peer_address(addr: &str) -> Result<(), String> {
    crate::resolve::check_host_port(addr).map_err(|why| format!("peer address {why}"))
}

fn parse_cluster(s: &str) -> Result<ClusterMap, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) =
            part.split_once('=').ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
        check_node_id(id)?;
        check_peer_address(addr)?;
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(out)
}

/// How much faster than a follower's clock a leader's may run, in percent of the lease:
/// lease-based reads assume the machines' clock rates differ by less (NTP keeps them within
/// a small fraction of a percent).
pub const LEASE_CLOCK_DRIFT_PERCENT: u32 = 10;

/// The secret in `path` (trimmed), for the flag `flag`.
fn read_secret(flag: &str, path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else { return Ok(None) };
    let t = std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(Some(t))
}

/// The address to advertise: `given`, else the listen address when others can reach it.
fn advertised(
    flag: &str,
    given: Option<&str>,
    listen_flag: &str,
    listen: SocketAddr,
) -> Result<String, String> {
    match given {
        Some(addr) => match addr.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
                Err(format!("{flag} {addr}: not an address others can reach"))
            }
            Ok(a) => Ok(a.to_string()),
            Err(_) => match crate::resolve::check_host_port(addr) {
                Ok(()) => Ok(addr.to_string()),
                Err(why) => Err(format!("{flag}: {why}")),
            },
        },
        None if listen.ip().is_unspecified() || listen.port() == 0 => Err(format!(
            "{listen_flag} {listen} is not an address others can reach: give {flag} HOST:PORT"
        )),
        None => Ok(listen.to_string()),
    }
}

/// The prefix of raftd's environment variables.
pub const ENV_PREFIX: &str = "RAFTD_";

/// The flags raftd takes, by name (`listen-peer`), and whether each is a switch (`--join`).
fn flag_names() -> Vec<(String, bool)> {
    use clap::CommandFactory as _;
    Args::command()
        .get_arguments()
        .filter_map(|a| {
            let name = a.get_long()?.to_string();
            let switch = matches!(a.get_action(), ArgAction::SetTrue);
            (name != "help" && name != "version").then_some((name, switch))
        })
        .collect()
}

/// A flag's environment variable: `listen-peer` is `RAFTD_LISTEN_PEER`.
fn env_name(flag: &str) -> String {
    format!("{ENV_PREFIX}{}", flag.to_uppercase().replace('-', "_"))
}

/// `--flag=value` arguments for `value` given to `flag` (none for a switch set to false).
fn flag_args(flag: &str, switch: bool, value: &str, source: &str) -> Result<Vec<String>, String> {
    if !switch {
        return Ok(vec![format!("--{flag}={value}")]);
    }
    match value {
        "true" => Ok(vec![format!("--{flag}")]),
        "false" => Ok(Vec::new()),
        other => Err(format!("{source}: {flag} is a switch: true or false, not {other:?}")),
    }
}

/// The command line with the configuration file's flags and the environment's before the
/// given ones (`args_override_self`: the last occurrence wins, so given > environment > file).
pub fn layered_args(
    given: Vec<String>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let flags = flag_names();
    let mut program = given.into_iter();
    let mut out = vec![program.next().unwrap_or_else(|| "raftd".to_string())];
    let given: Vec<String> = program.collect();
    // The configuration file: from the command line, else the environment.
    let mut config_file = env.get(&env_name("config-file")).cloned();
    for (i, arg) in given.iter().enumerate() {
        if let Some(path) = arg.strip_prefix("--config-file=") {
            config_file = Some(path.to_string());
        } else if arg == "--config-file" {
            config_file = given.get(i + 1).cloned();
        }
    }
    if let Some(path) = &config_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--config-file {path}: {e}"))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("--config-file {path}: {e}"))?;
        for (key, value) in &table {
            let Some((_, switch)) = flags.iter().find(|(f, _)| f == key && f != "config-file")
            else {
                return Err(format!(
                    "--config-file {path}: unknown key {key:?} (keys are raftd's flags without \
                     the dashes: listen-peer, initial-cluster, ...)"
                ));
            };
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(format!(
                        "--config-file {path}: {key} is a {}, not a string, number or boolean",
                        other.type_str()
                    ))
                }
            };
            out.extend(flag_args(key, *switch, &value, &format!("--config-file {path}"))?);
        }
    }
    for (var, value) in env.range(ENV_PREFIX.to_string()..) {
        if !var.starts_with(ENV_PREFIX) {
            break;
        }
        if var == &env_name("config-file") {
            continue;
        }
        let Some((flag, switch)) = flags.iter().find(|(f, _)| &env_name(f) == var) else {
            return Err(format!(
                "unknown environment variable {var} (raftd's are {ENV_PREFIX}<FLAG>)"
            ));
        };
        out.extend(flag_args(flag, *switch, value, var)?);
    }
    out.extend(given);
    Ok(out)
}

/// A listen address: an IP address and port, or a host name and port resolved now (an
/// IPv4 address preferred, as when dialling).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    crate::resolve::check_host_port(s)?;
    let addrs: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(s).map_err(|e| format!("{s}: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s}: the name has no address"))
}

impl Args {
    /// The TLS flags, checked: each port's files come together, and names built from the
    /// cluster id must be DNS names.
    fn tls_settings(&self) -> Result<TlsSettings, String> {
        let peer = match (&self.peer_cert_file, &self.peer_key_file, &self.peer_trusted_ca_file) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                Some(PeerTlsFiles { cert: cert.clone(), key: key.clone(), trusted_ca: ca.clone() })
            }
            _ => {
                return Err("peer TLS takes --peer-cert-file, --peer-key-file and \
                            --peer-trusted-ca-file together (peers always authenticate each \
                            other)"
                    .into())
            }
        };
        if peer.is_some() {
            let name = crate::tls::node_name(self.id, &self.cluster_id);
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
                || !self
                    .cluster_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(format!(
                    "--cluster-id {:?}: peer certificates name nodes as {name:?}, which must be \
                     a DNS name (letters, digits, '-' and '.')",
                    self.cluster_id
                ));
            }
        }
        let client = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                trusted_ca: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
            }),
            _ => return Err("client TLS takes --cert-file and --key-file together".into()),
        };
        match &client {
            None if self.client_cert_auth || self.trusted_ca_file.is_some() => {
                Err("--client-cert-auth and --trusted-ca-file need TLS on the client port: give \
                     --cert-file and --key-file"
                    .into())
            }
            Some(c) if c.client_cert_auth && c.trusted_ca.is_none() => {
                Err("--client-cert-auth needs --trusted-ca-file (the CA of the client \
                     certificates)"
                    .into())
            }
            Some(c) if !c.client_cert_auth && c.trusted_ca.is_some() => {
                Err("--trusted-ca-file is used only with --client-cert-auth: give both, or \
                     neither"
                    .into())
            }
            _ => Ok(TlsSettings { peer, client }),
        }
    }

    /// The node configuration, or a message naming the flag that is wrong.
    pub fn to_config(&self) -> Result<NodeConfig, String> {
        check_node_id(self.id).map_err(|e| format!("--id: {e}"))?;
        if self.join && !self.initial_cluster.is_empty() {
            return Err("--join and --initial-cluster exclude each other".into());
        }
        if self.restore.is_some() && self.initial_cluster.is_empty() {
            return Err("--restore starts a new cluster: give its --initial-cluster".into());
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.id) {
            return Err(format!("--initial-cluster must include this node's --id {}", self.id));
        }
        let advertise_peer = advertised(
            "--advertise-peer",
            self.advertise_peer
                .as_deref()
                .or(self.initial_cluster.get(&self.id).map(|a| a.as_str())),
            "--listen-peer",
            self.listen_peer,
        )?;
        let advertise_client = advertised(
            "--advertise-client",
            self.advertise_client.as_deref(),
            "--listen-client",
            self.listen_client,
        )?;
        if self.tick_interval_ms == 0 {
            return Err("--tick-interval-ms must be greater than 0".into());
        }
        let frame_size_min = 2 * crate::node::FRAME_OVERHEAD_BYTES_MAX;
        if self.frame_size_max > codec::FRAME_SIZE_MAX_CEILING
            || self.frame_size_max < frame_size_min
        {
            return Err(format!(
                "--frame-size-max must be within [{frame_size_min}, {}]",
                codec::FRAME_SIZE_MAX_CEILING
            ));
        }
        let request_room = self.frame_size_max - crate::node::FRAME_OVERHEAD_BYTES_MAX;
        let max_request_bytes = self
            .max_request_bytes
            .unwrap_or(crate::node::REQUEST_SIZE_MAX_DEFAULT.min(request_room));
        if max_request_bytes == 0 || max_request_bytes > request_room {
            return Err(format!(
                "--max-request-bytes must be within [1, {request_room}] (--frame-size-max less \
                 1 MiB for what travels with a request)"
            ));
        }
        if self.max_client_connections == 0 {
            return Err("--max-client-connections must be at least 1".into());
        }
        if self.max_pending_handshakes == 0 {
            return Err("--max-pending-handshakes must be at least 1".into());
        }
        if self.handshake_timeout_ms == 0 {
            return Err("--handshake-timeout-ms must be greater than 0".into());
        }
        let buffered_min = self.frame_size_max.saturating_mul(4);
        if self.max_buffered_bytes < buffered_min {
            return Err(format!(
                "--max-buffered-bytes must be at least {buffered_min} (four times --frame-size-max)"
            ));
        }
        if self.segment_size_bytes < wal::SEGMENT_SIZE_BYTES_MIN {
            return Err(format!(
                "--segment-size-bytes must be at least {}",
                wal::SEGMENT_SIZE_BYTES_MIN
            ));
        }
        if !(1..=SESSIONS_MAX_CEILING).contains(&self.max_sessions) {
            return Err(format!("--max-sessions must be within [1, {SESSIONS_MAX_CEILING}]"));
        }
        if !(1..=SESSION_TTL_SECS_CEILING).contains(&self.session_ttl_secs) {
            return Err(format!(
                "--session-ttl-secs must be within [1, {SESSION_TTL_SECS_CEILING}]"
            ));
        }
        let token = read_secret("--token-file", self.token_file.as_deref())?;
        let peer_token = read_secret("--peer-token-file", self.peer_token_file.as_deref())?;
        if token.is_some() && peer_token.is_none() {
            return Err("--token-file protects the client port only: give --peer-token-file \
                        (another secret) for the peer port"
                .into());
        }
        if token.is_some() && token == peer_token {
            return Err("--token-file and --peer-token-file hold the same secret: a client \
                        credential must not let anyone speak Raft"
                .into());
        }
        let tls = self.tls_settings()?;
        let raft = raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            max_uncommitted_entries_size: self.max_uncommitted_entries_size,
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            read_only_option: match self.read_only_option {
                ReadOnly::Safe => raft::ReadOnlyOption::Safe,
                ReadOnly::LeaseBased => raft::ReadOnlyOption::LeaseBased,
            },
            disable_proposal_forwarding: self.disable_proposal_forwarding,
            ..raft::Config::default()
        };
        let raft = raft::Config {
            lease_duration: match raft.read_only_option {
                raft::ReadOnlyOption::LeaseBased => raft.lease_duration_for(
                    Duration::from_millis(self.tick_interval_ms),
                    LEASE_CLOCK_DRIFT_PERCENT,
                ),
                raft::ReadOnlyOption::Safe => Duration::ZERO,
            },
            ..raft
        };
        raft.validate().map_err(|e| match e {
            raft::ConfigError::HeartbeatTickZero => {
                "--heartbeat-tick must be greater than 0".to_string()
            }
            raft::ConfigError::ElectionTickTooSmall { .. } => {
                format!(
                    "--election-tick ({}) must be greater than --heartbeat-tick ({})",
                    self.election_tick, self.heartbeat_tick
                )
            }
            raft::ConfigError::MaxInflightMsgsZero => {
                "--max-inflight-msgs must be greater than 0".to_string()
            }
            raft::ConfigError::LeaseDurationWithoutLeaseBased => {
                "--election-tick is too small for a lease (--read-only-option lease-based)"
                    .to_string()
            }
            raft::ConfigError::LeaseBasedWithoutCheckQuorum => {
                "--read-only-option lease-based requires --check-quorum true".to_string()
            }
            other => other.to_string(),
        })?;
        Ok(NodeConfig {
            id: self.id,
            cluster_id: self.cluster_id.clone(),
            data_dir: self.data_dir.clone(),
            listen_peer: self.listen_peer,
            listen_client: self.listen_client,
            listen_metrics: self.listen_metrics,
            advertise_peer,
            advertise_client,
            initial_cluster: self.initial_cluster.clone(),
            join: self.join,
            restore: self.restore.clone(),
            raft,
            election_seed: None,
            tick_interval: Duration::from_millis(self.tick_interval_ms),
            snapshot_entries: self.snapshot_entries,
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            token,
            peer_token,
            tls,
            allow_fault_injection: self.allow_fault_injection,
            shadow_dir: self.shadow_dir.clone(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            frame_size_max: self.frame_size_max,
            max_request_bytes,
            segment_size_bytes: self.segment_size_bytes,
            space_limits: crate::space::SpaceLimits {
                quota_bytes: self.space_quota_bytes,
                reserve_bytes: self.space_reserve_bytes.unwrap_or(
                    self.segment_size_bytes
                        .saturating_mul(crate::space::SPACE_RESERVE_SEGMENTS_DEFAULT),
                ),
            },
            session_limits: crate::kv::SessionLimits {
                max_sessions: self.max_sessions,
                ttl_ms: self.session_ttl_secs * 1000,
                max_reply_bytes: self.max_session_reply_bytes,
            },
            conn_limits: crate::node::ConnLimits {
                max_client_connections: self.max_client_connections,
                max_pending_handshakes: self.max_pending_handshakes,
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_buffered_bytes: self.max_buffered_bytes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, String> {
        let mut all = vec!["raftd"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).map_err(|e| e.to_string())?.to_config()
    }

    /// `given` after the configuration file holding `file` and the environment `env`.
    fn layered(file: Option<&str>, env: &[(&str, &str)], given: &[&str]) -> Result<Args, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["raftd".to_string()];
        if let Some(text) = file {
            let path = dir.path().join("raftd.toml");
            std::fs::write(&path, text).unwrap();
            argv.push(format!("--config-file={}", path.display()));
        }
        argv.extend(given.iter().map(|s| s.to_string()));
        let env: BTreeMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv = layered_args(argv, &env)?;
        Args::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let file = "cluster-id = \"file\"\nelection-tick = 20\nheartbeat-tick = 2\njoin = true\n\
                    check-quorum = false\n";
        let a = layered(Some(file), &[], &[]).unwrap();
        assert_eq!((a.cluster_id.as_str(), a.election_tick, a.heartbeat_tick), ("file", 20, 2));
        assert!(a.join && !a.check_quorum);
        let env = [("RAFTD_CLUSTER_ID", "env"), ("RAFTD_ELECTION_TICK", "30")];
        let a = layered(Some(file), &env, &[]).unwrap();
        assert_eq!((a.cluster_id.as_str(), a.election_tick, a.heartbeat_tick), ("env", 30, 2));
        let a = layered(Some(file), &env, &["--cluster-id", "flag"]).unwrap();
        assert_eq!((a.cluster_id.as_str(), a.election_tick), ("flag", 30));
        // Defaults stay where nothing is given.
        let a = layered(None, &[], &[]).unwrap();
        assert_eq!((a.cluster_id.as_str(), a.election_tick), ("raft", 10));
        // The file named by the environment.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "id = 7\n").unwrap();
        let env = BTreeMap::from([("RAFTD_CONFIG_FILE".to_string(), path.display().to_string())]);
        let argv = layered_args(vec!["raftd".into()], &env).unwrap();
        assert_eq!(Args::try_parse_from(argv).unwrap().id, 7);
    }

    #[test]
    fn unknown_keys_and_variables_are_refused() {
        let err = layered(Some("listen_peer = \"x\"\n"), &[], &[]).unwrap_err();
        assert!(err.contains("unknown key \"listen_peer\""), "{err}");
        let err = layered(Some("peers = [1, 2]\n"), &[], &[]).unwrap_err();
        assert!(err.contains("unknown key"), "{err}");
        let err = layered(Some("election-tick = [1]\n"), &[], &[]).unwrap_err();
        assert!(err.contains("array"), "{err}");
        let err = layered(Some("join = \"yes\"\n"), &[], &[]).unwrap_err();
        assert!(err.contains("switch"), "{err}");
        let err = layered(Some("not toml"), &[], &[]).unwrap_err();
        assert!(err.contains("--config-file"), "{err}");
        let err = layered(None, &[("RAFTD_LISTEN_PER", "x")], &[]).unwrap_err();
        assert!(err.contains("RAFTD_LISTEN_PER"), "{err}");
    }

    #[test]
    fn listen_addresses_take_host_names() {
        let c =
            parse(&["--listen-peer", "localhost:7001", "--listen-client", "[::1]:7101"]).unwrap();
        assert_eq!(c.listen_peer, "127.0.0.1:7001".parse().unwrap(), "IPv4 preferred");
        assert_eq!(c.listen_client, "[::1]:7101".parse().unwrap());
        assert!(parse(&["--listen-peer", "localhost"]).unwrap_err().contains("HOST:PORT"));
        let err = parse(&["--listen-peer", "no-such-host.invalid:7001"]).unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }

    #[test]
    fn defaults_are_valid_and_flags_are_named_in_errors() {
        let c = parse(&["--initial-cluster", "1=127.0.0.1:7001,2=127.0.0.1:7002"]).unwrap();
        assert_eq!(c.initial_cluster.len(), 2);
        assert!(c.raft.check_quorum && c.raft.pre_vote);
        let err = parse(&["--election-tick", "1"]).unwrap_err();
        assert!(err.contains("--election-tick"), "{err}");
        let err = parse(&["--initial-cluster", "2=127.0.0.1:7002"]).unwrap_err();
        assert!(err.contains("--initial-cluster"), "{err}");
        let err = parse(&["--initial-cluster", "x=1"]).unwrap_err();
        assert!(err.contains("--initial-cluster"), "{err}");
        let err =
            parse(&["--read-only-option", "lease-based", "--check-quorum", "false"]).unwrap_err();
        assert!(err.contains("--check-quorum"), "{err}");
        let err = parse(&["--join", "--initial-cluster", "1=127.0.0.1:7001"]).unwrap_err();
        assert!(err.contains("--join"), "{err}");
        assert!(parse(&["--id", "0"]).unwrap_err().contains("--id"));
        assert!(parse(&["--id", "18446744073709551615"]).unwrap_err().contains("--id"));
        let err = parse(&["--initial-cluster", "1=notanaddr"]).unwrap_err();
        assert!(err.contains("notanaddr"), "{err}");
        assert!(parse(&["--initial-cluster", "1=127.0.0.1:0"]).unwrap_err().contains("port 0"));
        assert_eq!(c.session_limits, crate::kv::SessionLimits::default());
        assert_eq!(c.max_request_bytes, crate::node::REQUEST_SIZE_MAX_DEFAULT);
        let small = parse(&["--frame-size-max", "4194304"]).unwrap();
        assert_eq!(small.max_request_bytes, 3 * 1024 * 1024, "the default fits the frame");
        let err = parse(&["--frame-size-max", "4194304", "--max-request-bytes", "4194304"]);
        assert!(err.unwrap_err().contains("--max-request-bytes"));
        assert!(parse(&["--frame-size-max", "65536"]).unwrap_err().contains("--frame-size-max"));
        assert!(parse(&["--max-sessions", "0"]).unwrap_err().contains("--max-sessions"));
        assert!(parse(&["--session-ttl-secs", "0"]).unwrap_err().contains("--session-ttl-secs"));
        let err = parse(&["--session-ttl-secs", "99999999999"]).unwrap_err();
        assert!(err.contains("--session-ttl-secs"), "{err}");
        let c = parse(&["--max-sessions", "5", "--session-ttl-secs", "60"]).unwrap();
        assert_eq!(c.session_limits.max_sessions, 5);
        assert_eq!(c.session_limits.ttl_ms, 60_000);
    }

    #[test]
    fn peers_and_clients_have_separate_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (dir.path().join("client"), dir.path().join("peer"));
        std::fs::write(&client, "c-secret\n").unwrap();
        std::fs::write(&peer, "p-secret\n").unwrap();
        let (c, p) = (client.to_str().unwrap(), peer.to_str().unwrap());
        let err = parse(&["--token-file", c]).unwrap_err();
        assert!(err.contains("--peer-token-file"), "the peer port is not left open: {err}");
        let err = parse(&["--token-file", c, "--peer-token-file", c]).unwrap_err();
        assert!(err.contains("same secret"), "{err}");
        let config = parse(&["--token-file", c, "--peer-token-file", p]).unwrap();
        assert_eq!(config.token.as_deref(), Some("c-secret"));
        assert_eq!(config.peer_token.as_deref(), Some("p-secret"));
        assert_eq!(parse(&["--peer-token-file", p]).unwrap().token, None);
    }

    #[test]
    fn nodes_listening_on_every_interface_advertise_a_reachable_address() {
        let c = parse(&["--initial-cluster", "1=127.0.0.1:7001"]).unwrap();
        assert_eq!(
            (c.advertise_peer.as_str(), c.advertise_client.as_str()),
            ("127.0.0.1:7001", "127.0.0.1:7101")
        );
        // Listening everywhere: the peer address comes from --initial-cluster, the client
        // address must be given.
        let wild = ["--listen-peer", "0.0.0.0:7001", "--listen-client", "0.0.0.0:7101"];
        let mut args = wild.to_vec();
        args.extend(["--initial-cluster", "1=10.0.0.1:7001"]);
        let err = parse(&args).unwrap_err();
        assert!(err.contains("--advertise-client"), "{err}");
        args.extend(["--advertise-client", "10.0.0.1:7101"]);
        let c = parse(&args).unwrap();
        assert_eq!(
            (c.advertise_peer.as_str(), c.advertise_client.as_str()),
            ("10.0.0.1:7001", "10.0.0.1:7101")
        );
        // A joiner has no --initial-cluster entry: it must say where peers reach it.
        let mut join = wild.to_vec();
        join.extend(["--join", "--advertise-client", "10.0.0.2:7101"]);
        assert!(parse(&join).unwrap_err().contains("--advertise-peer"));
        join.extend(["--advertise-peer", "10.0.0.2:7001"]);
        assert_eq!(parse(&join).unwrap().advertise_peer, "10.0.0.2:7001");
        let err = parse(&["--advertise-client", "0.0.0.0:7101"]).unwrap_err();
        assert!(err.contains("--advertise-client"), "{err}");
        let err = parse(&["--advertise-peer", "somewhere"]).unwrap_err();
        assert!(err.contains("--advertise-peer") && err.contains("HOST:PORT"), "{err}");
        // Host names are taken (resolved when dialled), in every peer address flag.
        let named = parse(&["--initial-cluster", "1=node1.example:7001,2=node2.example:7002"]);
        assert_eq!(named.unwrap().advertise_peer, "node1.example:7001");
        let named = parse(&["--advertise-peer", "node1.example:7001", "--advertise-client", "n:1"]);
        assert_eq!(named.unwrap().advertise_client, "n:1");
        let err = parse(&["--initial-cluster", "1=bad host:7001"]).unwrap_err();
        assert!(err.contains("not HOST:PORT"), "{err}");
    }
}
