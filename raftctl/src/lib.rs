//! The client side of raftd's protocol: connections to a cluster's endpoints that follow
//! `NotLeader` redirects and retry writes with the same `(session_id, seq)`, so that a
//! retried write is applied once. A [`Client`] registers its session with the leader before
//! its first write (Raft thesis §6.3); a write refused with `SessionExpired` after an attempt
//! whose outcome is unknown is reported, never retried under a new session, since the earlier
//! attempt may have been applied.

#![warn(clippy::unwrap_used)]

pub mod backup;
pub mod bench;
pub mod certs;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use raftd::protocol::*;

/// The default endpoints: the local cluster's client ports.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";
/// Pause between retries while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What failed, and where.
#[derive(Debug)]
pub enum CtlError {
    /// A connection-level failure at an endpoint.
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// An endpoint refused this client for a reason no retry changes (a wrong token, TLS
    /// expected or not, another cluster, a certificate refused, an endpoint that is no
    /// address): the operation fails at once.
    Refused {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Nothing listens at the endpoint (connection refused).
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What the system said.
        reason: String,
    },
    /// The cluster answered with an error.
    Cluster(ClientError),
    /// Nothing answered in time.
    Timeout {
        /// What was tried last.
        last: String,
    },
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Endpoint { endpoint, reason }
            | CtlError::Refused { endpoint, reason }
            | CtlError::Unreachable { endpoint, reason } => write!(f, "{endpoint}: {reason}"),
            CtlError::Cluster(e) => write!(f, "{e}"),
            CtlError::Timeout { last } => write!(f, "timed out; last attempt: {last}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// How to reach a TLS client port: the CA to trust, and the client certificate to present
/// where the nodes ask for one.
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// The TLS configuration of `--cacert`, and `--cert` with `--key`.
pub fn tls_config(
    cacert: &std::path::Path,
    cert_key: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<TlsConfig, String> {
    raftd::tls::client_config(cacert, cert_key)
}

/// A connection's byte stream: TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The host of a `HOST:PORT` endpoint, as the name its certificate must hold.
fn server_name(endpoint: &str) -> Result<ServerName<'static>, String> {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// One greeted connection.
pub struct Conn {
    stream: Stream,
    endpoint: String,
    next_request_id: u64,
    /// Received bytes, reassembled into frames; one read can bring many responses.
    decoder: codec::FrameDecoder,
    /// Frames queued by [`Conn::queue`], written by [`Conn::flush`] (or before the next
    /// blocking read), so that many requests leave in one write.
    out: Vec<u8>,
}

fn io_error(endpoint: &str, e: impl fmt::Display) -> CtlError {
    CtlError::Endpoint { endpoint: endpoint.to_string(), reason: e.to_string() }
}

fn refused(endpoint: &str, e: impl fmt::Display) -> CtlError {
    CtlError::Refused { endpoint: endpoint.to_string(), reason: e.to_string() }
}

/// The time to connect to one endpoint and be greeted when others could be tried instead:
/// a hung endpoint (a paused process accepts connections and answers nothing) first in the
/// list costs this, not the whole timeout.
pub const ATTEMPT_TIMEOUT_MAX: Duration = Duration::from_secs(1);

impl Conn {
    /// Connects to `endpoint` (with TLS when `tls` is given) and greets it.
    pub fn open(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<&TlsConfig>,
        timeout: Duration,
    ) -> Result<Conn, CtlError> {
        Self::open_within(endpoint, token, tls, timeout, timeout)
    }

    /// [`Conn::open`], with `greet_timeout` to connect and be greeted.
    pub fn open_within(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<&TlsConfig>,
        greet_timeout: Duration,
        timeout: Duration,
    ) -> Result<Conn, CtlError> {
        raftd::resolve::check_host_port(endpoint)
            .map_err(|why| refused(endpoint, format!("not an endpoint: {why}")))?;
        let addr: SocketAddr = endpoint
            .to_socket_addrs()
            .map_err(|e| refused(endpoint, e))?
            .next()
            .ok_or_else(|| refused(endpoint, "no address"))?;
        let stream = TcpStream::connect_timeout(&addr, greet_timeout).map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                CtlError::Unreachable { endpoint: endpoint.to_string(), reason: e.to_string() }
            } else {
                io_error(endpoint, e)
            }
        })?;
        stream.set_read_timeout(Some(greet_timeout)).map_err(|e| io_error(endpoint, e))?;
        stream.set_write_timeout(Some(greet_timeout)).map_err(|e| io_error(endpoint, e))?;
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(config) => {
                let name = server_name(endpoint).map_err(|e| io_error(endpoint, e))?;
                let tls = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| io_error(endpoint, e))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(tls, stream)))
            }
        };
        let mut conn = Conn {
            stream,
            endpoint: endpoint.to_string(),
            next_request_id: 1,
            decoder: codec::FrameDecoder::new(codec::FRAME_SIZE_MAX_DEFAULT),
            out: Vec::new(),
        };
        let hello = Hello::client("", token.map(str::to_string));
        let ack = conn.send(&hello).and_then(|()| conn.recv::<HelloAck>());
        let ack = match (ack, &conn.stream) {
            (Ok(ack), _) => ack,
            (Err(CtlError::Endpoint { reason, .. }), Stream::Tls(s)) if s.conn.is_handshaking() => {
                // A certificate refused says so; anything else ending the handshake is most
                // likely a port without TLS.
                let hint = if reason.contains("certificate") || reason.contains("alert") {
                    ""
                } else {
                    " (a plaintext port ends it: drop --cacert for a node without TLS)"
                };
                return Err(refused(endpoint, format!("TLS handshake failed: {reason}{hint}")));
            }
            (Err(e), _) => return Err(e),
        };
        let greeted = |conn: Conn| -> Result<Conn, CtlError> {
            let socket = match &conn.stream {
                Stream::Plain(s) => s,
                Stream::Tls(s) => &s.sock,
            };
            socket.set_read_timeout(Some(timeout)).map_err(|e| io_error(endpoint, e))?;
            socket.set_write_timeout(Some(timeout)).map_err(|e| io_error(endpoint, e))?;
            Ok(conn)
        };
        match ack {
            HelloAck::Welcome { protocol, .. } if !ProtocolVersions::speaks(protocol) => {
                Err(refused(
                    endpoint,
                    format!(
                        "welcomed in wire protocol {protocol}, which this raftctl does not speak"
                    ),
                ))
            }
            HelloAck::Welcome { .. } => greeted(conn),
            HelloAck::Refused { reason } => Err(refused(endpoint, format!("refused: {reason}"))),
            HelloAck::Removed { node_id } => {
                Err(io_error(endpoint, format!("refused by node {node_id}: removed")))
            }
            other => Err(io_error(endpoint, format!("not a client port: answered {other:?}"))),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queues one frame, to be written by [`Conn::flush`] or before the next blocking read.
    pub fn queue<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CtlError> {
        codec::encode_into(&mut self.out, value, codec::FRAME_SIZE_MAX_DEFAULT)
            .map_err(|e| io_error(&self.endpoint, e))
    }

    /// Writes every queued frame.
    pub fn flush(&mut self) -> Result<(), CtlError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.out);
        self.out.clear();
        written.map_err(|e| io_error(&self.endpoint, e))
    }

    /// Writes one frame (and any queued before it).
    pub fn send<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CtlError> {
        self.queue(value)?;
        self.flush()
    }

    /// Reads one frame: one already received, or else (after writing what is queued) from
    /// the socket.
    pub fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, CtlError> {
        loop {
            match self.decoder.next_frame::<T>() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(io_error(&self.endpoint, e)),
            }
            self.flush()?;
            match self.decoder.read_from(&mut self.stream) {
                Ok(0) => return Err(io_error(&self.endpoint, "connection closed")),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.endpoint, e)),
            }
        }
    }

    /// A fresh request id.
    pub fn request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, request: ClientRequest) -> Result<ClientResponse, CtlError> {
        self.send(&request)?;
        self.recv()
    }
}

/// One round over the endpoints: whether every one of them refused the connection.
struct Round {
    endpoints: usize,
    unreachable: Vec<String>,
}

impl Round {
    fn new(endpoints: usize) -> Round {
        Round { endpoints, unreachable: Vec::new() }
    }

    fn note(&mut self, e: &CtlError) {
        if let CtlError::Unreachable { .. } = e {
            self.unreachable.push(e.to_string());
        }
    }

    /// With `fail_fast`, an error when nothing listens at any endpoint.
    fn check(&self, fail_fast: bool) -> Result<(), CtlError> {
        if fail_fast && self.endpoints > 0 && self.unreachable.len() >= self.endpoints {
            return Err(CtlError::Unreachable {
                endpoint: "every endpoint".to_string(),
                reason: format!("nothing listens ({})", self.unreachable.join("; ")),
            });
        }
        Ok(())
    }
}

/// A random id for this client.
pub fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (std::process::id() as u64).rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.max(1)
}

/// A client of a cluster: tries the endpoints, follows redirects to the leader, retries.
pub struct Client {
    /// The endpoints to try.
    pub endpoints: Vec<String>,
    /// The time budget of one operation.
    pub timeout: Duration,
    token: Option<String>,
    tls: Option<TlsConfig>,
    /// Fail at once when nothing listens at any endpoint (the CLI), rather than wait for
    /// the cluster to come up within the timeout (tests that restart every node).
    pub fail_fast: bool,
    conns: HashMap<String, Conn>,
    leader: Option<String>,
    /// The session writes go in, once registered.
    session_id: Option<u64>,
    /// The last write's seq in the session.
    seq: u64,
}

/// Whether an attempt of a write may have been applied.
fn attempt_outcome_unknown(e: &ClientError) -> bool {
    // NotLeader, NoLeader, TooLarge and Refused are answered before proposing, and
    // ProposalDropped when the proposal was not appended; a timeout says nothing.
    matches!(e, ClientError::Timeout)
}

impl Client {
    /// A client of these endpoints.
    pub fn new(endpoints: Vec<String>, timeout: Duration, token: Option<String>) -> Client {
        Client {
            endpoints,
            timeout,
            token,
            tls: None,
            fail_fast: false,
            conns: HashMap::new(),
            leader: None,
            session_id: None,
            seq: 0,
        }
    }

    /// Speaks TLS to every endpoint, with `tls` (None: plaintext).
    pub fn set_tls(&mut self, tls: Option<TlsConfig>) {
        self.tls = tls;
        self.conns.clear();
    }

    /// The TLS configuration in use.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    fn conn(&mut self, endpoint: &str) -> Result<&mut Conn, CtlError> {
        if !self.conns.contains_key(endpoint) {
            let greet_timeout = if self.endpoints.len() > 1 {
                self.timeout.min(ATTEMPT_TIMEOUT_MAX)
            } else {
                self.timeout
            };
            let conn = Conn::open_within(
                endpoint,
                self.token.as_deref(),
                self.tls.as_ref(),
                greet_timeout,
                self.timeout,
            )?;
            self.conns.insert(endpoint.to_string(), conn);
        }
        Ok(self.conns.get_mut(endpoint).expect("inserted above"))
    }

    /// Sends `request` to `endpoint`, dropping the connection on failure.
    pub fn call_at(
        &mut self,
        endpoint: &str,
        request: impl FnOnce(u64) -> ClientRequest,
    ) -> Result<ClientResponse, CtlError> {
        let conn = self.conn(endpoint)?;
        let id = conn.request_id();
        let result = conn.call(request(id));
        if result.is_err() {
            self.conns.remove(endpoint);
        }
        result
    }

    /// The order to try endpoints in: the known leader first.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self.leader.iter().cloned().collect();
        out.extend(self.endpoints.iter().filter(|e| Some(*e) != self.leader.as_ref()).cloned());
        out
    }

    /// The session writes go in, if one is registered.
    pub fn session_id(&self) -> Option<u64> {
        self.session_id
    }

    /// Registers a new session with the leader, following redirects until `deadline`; later
    /// writes go in it, from seq 1.
    pub fn register_session(&mut self, deadline: Instant) -> Result<u64, CtlError> {
        let mut last = String::from("no endpoint tried");
        loop {
            let candidates = self.candidates();
            let mut unreachable = Round::new(candidates.len());
            for endpoint in candidates {
                let response = self
                    .call_at(&endpoint, |request_id| ClientRequest::RegisterSession { request_id });
                match response {
                    Ok(ClientResponse::Session { result: Ok(session_id), .. }) => {
                        self.leader = Some(endpoint);
                        self.session_id = Some(session_id);
                        self.seq = 0;
                        return Ok(session_id);
                    }
                    Ok(ClientResponse::Session { result: Err(e), .. }) => match e {
                        ClientError::NotLeader { leader_addr: Some(ref addr), .. } => {
                            last = format!("{endpoint}: {e}");
                            self.leader = Some(addr.clone());
                            break;
                        }
                        ClientError::NotLeader { .. }
                        | ClientError::NoLeader
                        | ClientError::Timeout
                        | ClientError::ProposalDropped => last = format!("{endpoint}: {e}"),
                        other => return Err(CtlError::Cluster(other)),
                    },
                    Ok(other) => last = format!("{endpoint}: unexpected response {other:?}"),
                    Err(e @ CtlError::Refused { .. }) => return Err(e),
                    Err(e) => {
                        if self.leader.as_deref() == Some(endpoint.as_str()) {
                            self.leader = None;
                        }
                        unreachable.note(&e);
                        last = e.to_string();
                    }
                }
            }
            unreachable.check(self.fail_fast)?;
            if Instant::now() >= deadline {
                return Err(CtlError::Timeout { last });
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// Runs an operation against the leader, following redirects and retrying until the
    /// timeout. Writes keep their `(session_id, seq)` across retries. A write refused with
    /// `SessionExpired` is retried in a new session only when no earlier attempt of it can
    /// have been applied; otherwise the error is returned, since the write may have been
    /// applied once already.
    pub fn kv(&mut self, op: Op) -> Result<KvReply, CtlError> {
        let deadline = Instant::now() + self.timeout;
        if !op.is_write() {
            return self.kv_attempts(0, 0, op, deadline).map_err(|(e, _)| e);
        }
        loop {
            let session_id = match self.session_id {
                Some(id) => id,
                None => self.register_session(deadline)?,
            };
            self.seq += 1;
            match self.kv_attempts(session_id, self.seq, op.clone(), deadline) {
                Ok(reply) => return Ok(reply),
                Err((CtlError::Cluster(ClientError::SessionExpired { .. }), false)) => {
                    // Not applied by any attempt: safe to write again in a new session.
                    self.session_id = None;
                }
                Err((e @ CtlError::Cluster(ClientError::SessionExpired { .. }), true)) => {
                    self.session_id = None;
                    return Err(e);
                }
                Err((CtlError::Cluster(e @ ClientError::NoSpace(_)), true)) => {
                    // Refused now, but an earlier attempt may have been applied.
                    return Err(CtlError::Timeout {
                        last: format!("{e}, and an earlier attempt's outcome is unknown"),
                    });
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Sends `op` as `(session_id, seq)` until an answer or `deadline`. An error comes with
    /// whether an attempt's outcome is unknown (it may have been applied).
    fn kv_attempts(
        &mut self,
        session_id: u64,
        seq: u64,
        op: Op,
        deadline: Instant,
    ) -> Result<KvReply, (CtlError, bool)> {
        let mut last = String::from("no endpoint tried");
        let mut unknown = false;
        loop {
            let candidates = self.candidates();
            let mut unreachable = Round::new(candidates.len());
            for endpoint in candidates {
                match self.conn(&endpoint) {
                    Ok(_) => {}
                    Err(e @ CtlError::Refused { .. }) => return Err((e, unknown)),
                    Err(e) => {
                        // Not connected: this attempt sent nothing.
                        unreachable.note(&e);
                        last = e.to_string();
                        continue;
                    }
                }
                let op = op.clone();
                let response = self.call_at(&endpoint, |request_id| ClientRequest::Kv {
                    request_id,
                    session_id,
                    seq,
                    op,
                });
                match response {
                    Ok(ClientResponse::Kv { result: Ok(reply), .. }) => {
                        self.leader = Some(endpoint);
                        return Ok(reply);
                    }
                    Ok(ClientResponse::Kv { result: Err(e), .. }) => {
                        unknown |= attempt_outcome_unknown(&e);
                        match e {
                            ClientError::NotLeader { leader_addr: Some(ref addr), .. } => {
                                last = format!("{endpoint}: {e}");
                                self.leader = Some(addr.clone());
                                break;
                            }
                            ClientError::NotLeader { .. }
                            | ClientError::NoLeader
                            | ClientError::Timeout
                            | ClientError::ProposalDropped => {
                                last = format!("{endpoint}: {e}");
                            }
                            other => return Err((CtlError::Cluster(other), unknown)),
                        }
                    }
                    Ok(other) => {
                        unknown = true;
                        last = format!("{endpoint}: unexpected response {other:?}");
                    }
                    Err(e) => {
                        // The request may have reached the node before the connection failed.
                        unknown = true;
                        if self.leader.as_deref() == Some(endpoint.as_str()) {
                            self.leader = None;
                        }
                        last = e.to_string();
                    }
                }
            }
            unreachable.check(self.fail_fast).map_err(|e| (e, unknown))?;
            if Instant::now() >= deadline {
                return Err((CtlError::Timeout { last }, unknown));
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// Sends an admin request to one endpoint.
    pub fn admin_at(
        &mut self,
        endpoint: &str,
        request: AdminRequest,
    ) -> Result<AdminReply, CtlError> {
        match self.call_at(endpoint, |request_id| ClientRequest::Admin { request_id, request })? {
            ClientResponse::Admin { result, .. } => result.map_err(CtlError::Cluster),
            other => Err(io_error(endpoint, format!("unexpected response {other:?}"))),
        }
    }

    /// Sends an admin request to the leader, following redirects until the timeout.
    pub fn admin_leader(&mut self, request: AdminRequest) -> Result<AdminReply, CtlError> {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no endpoint tried");
        loop {
            let candidates = self.candidates();
            let mut unreachable = Round::new(candidates.len());
            for endpoint in candidates {
                match self.admin_at(&endpoint, request.clone()) {
                    Ok(reply) => {
                        self.leader = Some(endpoint);
                        return Ok(reply);
                    }
                    Err(CtlError::Cluster(ClientError::NotLeader {
                        leader_addr: Some(addr),
                        ..
                    })) => {
                        last = format!("{endpoint}: not the leader");
                        self.leader = Some(addr);
                        break;
                    }
                    Err(CtlError::Cluster(
                        e @ (ClientError::NoLeader | ClientError::NotLeader { .. }),
                    )) => {
                        last = format!("{endpoint}: {e}");
                    }
                    Err(e @ (CtlError::Cluster(_) | CtlError::Refused { .. })) => return Err(e),
                    Err(e) => {
                        unreachable.note(&e);
                        last = e.to_string();
                    }
                }
            }
            unreachable.check(self.fail_fast)?;
            if Instant::now() >= deadline {
                return Err(CtlError::Timeout { last });
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// The endpoint of the leader, as the last request to it found.
    pub fn leader_endpoint(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Every endpoint's status (or why it did not answer).
    pub fn statuses(&mut self) -> Vec<(String, Result<NodeStatus, CtlError>)> {
        let endpoints = self.endpoints.clone();
        endpoints
            .into_iter()
            .map(|e| {
                let status = match self.admin_at(&e, AdminRequest::Status) {
                    Ok(AdminReply::Status(s)) => Ok(*s),
                    Ok(other) => Err(io_error(&e, format!("unexpected reply {other:?}"))),
                    Err(err) => Err(err),
                };
                (e, status)
            })
            .collect()
    }
}

/// Parses `2s`, `500ms` or `1m` (a unit is required: `2` could mean either).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let Some(at) = s.find(|c: char| !c.is_ascii_digit() && c != '.') else {
        return Err(format!("{s:?} has no unit: give 2s, 500ms or 1m"));
    };
    let (number, unit) = s.split_at(at);
    let value: f64 =
        number.parse().map_err(|_| format!("{s:?} is not a duration like 2s or 500ms"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("3").unwrap_err().contains("no unit"));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
