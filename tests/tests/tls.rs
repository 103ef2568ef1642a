//! TLS on every port (issue 18), on real processes: a TLS cluster serves a linearizable
//! workload; a peer whose certificate names another node, comes from another CA, or has
//! expired is refused with a clear log line; plaintext and TLS never mix silently; certificates
//! are reloaded on SIGHUP without dropping the node.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use faults::harness::{self, bin_dir, Cluster, Workload, DEADLINE};
use raftctl::certs::{Ca, Validity};
use raftctl::Conn;
use raftd::protocol::*;
use rustls::pki_types::ServerName;

const HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

fn hosts() -> Vec<String> {
    HOSTS.iter().map(|h| h.to_string()).collect()
}

/// Waits until node `id`'s log holds `needle`.
fn wait_log(cluster: &Cluster, id: u64, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = std::fs::read_to_string(&cluster.nodes[&id].log).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in node {id}'s log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_frame(out: &mut impl std::io::Write, value: &Hello) {
    let mut buf = Vec::new();
    codec::encode_into(&mut buf, value, codec::FRAME_SIZE_MAX_DEFAULT).unwrap();
    out.write_all(&buf).unwrap();
    out.flush().unwrap();
}

fn read_frame(input: &mut impl std::io::Read) -> std::io::Result<HelloAck> {
    let mut decoder = codec::FrameDecoder::new(codec::FRAME_SIZE_MAX_DEFAULT);
    loop {
        if let Some(value) = decoder.next_frame::<HelloAck>().map_err(std::io::Error::other)? {
            return Ok(value);
        }
        if decoder.read_from(input)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Opens TLS to `addr` expecting a certificate for `name`, presenting `cert`/`key` (issued
/// by whichever CA) and trusting `ca`; sends `hello` and returns the answer, or the error
/// that ended the connection.
fn hello_over_tls(
    addr: &str,
    name: &str,
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
    hello: &Hello,
) -> std::io::Result<HelloAck> {
    let config = raftd::tls::client_config(ca, cert_key).map_err(std::io::Error::other)?;
    let tls = rustls::ClientConnection::new(
        Arc::clone(&config),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .map_err(std::io::Error::other)?;
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(tls, socket);
    let mut buf = Vec::new();
    codec::encode_into(&mut buf, hello, codec::FRAME_SIZE_MAX_DEFAULT).unwrap();
    std::io::Write::write_all(&mut stream, &buf)?;
    std::io::Write::flush(&mut stream)?;
    read_frame(&mut stream)
}

fn peer_hello(cluster: &Cluster, node_id: u64) -> Hello {
    Hello {
        versions: ProtocolVersions::OURS,
        cluster_id: cluster.cluster_id(),
        node_id,
        role: Role::Peer,
        token: None,
        client_addr: None,
        peer_addr: None,
        incarnation: 7,
        cluster_incarnation: 0,
    }
}

fn put(client: &mut raftctl::Client, key: &str) {
    let op = Op::Put { key: key.as_bytes().to_vec(), value: b"1".to_vec() };
    client.kv(op).unwrap_or_else(|e| panic!("the cluster does not serve: {e}"));
}

fn node_name(cluster: &Cluster, id: u64) -> String {
    raftd::tls::node_name(id, &cluster.cluster_id())
}

#[test]
fn a_tls_cluster_serves_puts_and_linearizable_gets() {
    let cluster = Cluster::start_tls(3, &[], true);
    let workload = Workload::start(&cluster, 4, 5);
    workload.wait_ops(300);
    let summary = harness::verify(&cluster, workload).unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.known >= 300, "{} operations with a known outcome", summary.known);

    // raftctl itself, with the flags the README gives.
    let certs = cluster.certs_dir();
    let raftctl = |args: &[&str]| {
        std::process::Command::new(bin_dir().join("raftctl"))
            .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
            .arg(format!("--cacert={}", certs.join("ca.pem").display()))
            .arg(format!("--cert={}", certs.join("client.pem").display()))
            .arg(format!("--key={}", certs.join("client-key.pem").display()))
            .args(args)
            .output()
            .expect("raftctl runs")
    };
    let put = raftctl(&["put", "tls-key", "over tls"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let get = raftctl(&["get", "tls-key"]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "over tls");

    // Without a client certificate, the client port refuses the handshake.
    let addr = cluster.nodes[&1].client_addr.clone();
    let no_cert = raftctl::tls_config(&certs.join("ca.pem"), None).unwrap();
    let refused = Conn::open(&addr, None, Some(&no_cert), Duration::from_secs(10));
    assert!(refused.is_err(), "a client without a certificate was greeted");
    wait_log(&cluster, 1, "on the client port refused: TLS");

    // A plaintext client is told, in plaintext, that the port speaks TLS.
    let refused = Conn::open(&addr, None, None, Duration::from_secs(10));
    let message = refused.err().expect("a plaintext client was greeted").to_string();
    assert!(message.contains("the client port speaks TLS"), "{message}");
    wait_log(&cluster, 1, "a plaintext client on a TLS port");
}

#[test]
fn a_peer_hello_is_accepted_only_from_the_id_its_certificate_names() {
    let mut cluster = Cluster::start_tls(3, &[], false);
    cluster.wait_for_leader();
    let certs = cluster.certs_dir();
    let (ca, cert2, key2) =
        (certs.join("ca.pem"), certs.join("node-2.pem"), certs.join("node-2-key.pem"));
    let addr = cluster.nodes[&1].peer_addr.clone();
    // Node 2's certificate, a Hello as node 3: the CA is right, the identity is not.
    let ack = hello_over_tls(
        &addr,
        &node_name(&cluster, 1),
        &ca,
        Some((&cert2, &key2)),
        &peer_hello(&cluster, 3),
    )
    .expect("an answer");
    let expected = format!("the certificate does not name {}", node_name(&cluster, 3));
    match ack {
        HelloAck::Refused { reason } => assert!(reason.contains(&expected), "{reason}"),
        other => panic!("a Hello as node 3 with node 2's certificate was answered {other:?}"),
    }
    wait_log(&cluster, 1, &expected);

    // A node dialling peer 1 accepts only a certificate naming node 1: node 2's certificate
    // served at node 1's address is refused by the dialler.
    let name_check = hello_over_tls(
        &addr,
        &node_name(&cluster, 2),
        &ca,
        Some((&cert2, &key2)),
        &peer_hello(&cluster, 2),
    );
    let e = name_check.expect_err("node 1's certificate passed for node 2");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // A node started with another node's certificate refuses to start, naming why.
    cluster.kill(3);
    for arg in cluster.node(3).args.iter_mut() {
        *arg = arg.replace("node-3.pem", "node-2.pem").replace("node-3-key.pem", "node-2-key.pem");
    }
    cluster.restart(3);
    let code = cluster.node(3).wait_exit();
    assert_eq!(code, Some(1), "{}", cluster.logs());
    let log = std::fs::read_to_string(&cluster.nodes[&3].log).unwrap();
    assert!(
        log.contains("--peer-cert-file")
            && log.contains(&format!("does not name {}", node_name(&cluster, 3))),
        "{log}"
    );
}

#[test]
fn peer_certificates_of_another_ca_or_expired_are_refused() {
    let cluster = Cluster::start_tls(3, &[], false);
    cluster.wait_for_leader();
    let certs = cluster.certs_dir();
    let ca = certs.join("ca.pem");
    let addr = cluster.nodes[&1].peer_addr.clone();
    let name = node_name(&cluster, 1);
    let scratch = tempfile::tempdir().unwrap();

    // Another CA's certificate for node 3.
    let other = scratch.path().join("other");
    raftctl::certs::create(&other, &cluster.cluster_id(), &[3], &hosts(), 1).unwrap();
    let (cert, key) = (other.join("node-3.pem"), other.join("node-3-key.pem"));
    let result = hello_over_tls(&addr, &name, &ca, Some((&cert, &key)), &peer_hello(&cluster, 3));
    assert!(!matches!(result, Ok(HelloAck::Welcome { .. })), "{result:?}");
    let log = wait_log(&cluster, 1, "on the peer port refused: TLS: invalid peer certificate");
    assert!(log.contains("BadSignature") || log.contains("UnknownIssuer"), "{log}");

    // The right CA, but expired yesterday.
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = Validity { not_before: now - 10 * day, not_after: now - day };
    let (pem, key_pem) =
        Ca::load(&certs).unwrap().issue_node(3, &cluster.cluster_id(), &hosts(), expired).unwrap();
    let (cert, key) = (scratch.path().join("expired.pem"), scratch.path().join("expired-key.pem"));
    std::fs::write(&cert, pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let result = hello_over_tls(&addr, &name, &ca, Some((&cert, &key)), &peer_hello(&cluster, 3));
    assert!(!matches!(result, Ok(HelloAck::Welcome { .. })), "{result:?}");
    wait_log(&cluster, 1, "invalid peer certificate: certificate expired");

    // No certificate at all.
    let result = hello_over_tls(&addr, &name, &ca, None, &peer_hello(&cluster, 3));
    assert!(!matches!(result, Ok(HelloAck::Welcome { .. })), "{result:?}");

    // A plaintext Hello on the TLS peer port is answered in plaintext.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut plain, &peer_hello(&cluster, 3));
    match read_frame(&mut plain) {
        Ok(HelloAck::Refused { reason }) => assert!(reason.contains("the peer port speaks TLS")),
        other => panic!("a plaintext peer was answered {other:?}"),
    }
    // Through all of it the cluster kept serving.
    let leader = cluster.wait_for_leader();
    let mut client = cluster.client(vec![cluster.nodes[&leader].client_addr.clone()], DEADLINE);
    put(&mut client, "still");
}

#[test]
fn a_tls_client_on_a_plaintext_port_is_refused() {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_for_leader();
    let scratch = tempfile::tempdir().unwrap();
    raftctl::certs::create(scratch.path(), "raft", &[1], &hosts(), 1).unwrap();
    let tls = raftctl::tls_config(&scratch.path().join("ca.pem"), None).unwrap();
    let addr = cluster.nodes[&1].client_addr.clone();
    let e = Conn::open(&addr, None, Some(&tls), Duration::from_secs(10))
        .err()
        .expect("a TLS client was greeted by a plaintext port");
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    wait_log(&cluster, 1, "a TLS client connected from");
}

#[test]
fn certificates_are_reloaded_on_sighup_without_dropping_the_node() {
    let cluster = Cluster::start_tls(3, &[], false);
    let leader = cluster.wait_for_leader();
    let certs = cluster.certs_dir();
    let ca = certs.join("ca.pem");
    let addr = cluster.nodes[&1].client_addr.clone();
    let client_hello = Hello::client("", None);
    let greeted = |name: &str| {
        matches!(
            hello_over_tls(&addr, name, &ca, None, &client_hello),
            Ok(HelloAck::Welcome { .. })
        )
    };
    assert!(greeted("localhost"));
    assert!(!greeted("reloaded.test"), "the first certificate names no reloaded.test");
    // A connection made before the reload.
    let tls = cluster.client_tls.clone().unwrap();
    let mut before = Conn::open(&addr, None, Some(&tls), Duration::from_secs(10)).unwrap();

    // Node 1's new certificate, of the same CA, also names reloaded.test.
    let mut names = hosts();
    names.push("reloaded.test".to_string());
    let (pem, key) = Ca::load(&certs)
        .unwrap()
        .issue_node(1, &cluster.cluster_id(), &names, Validity::days(1))
        .unwrap();
    std::fs::write(certs.join("node-1-key.pem"), key).unwrap();
    std::fs::write(certs.join("node-1.pem"), pem).unwrap();
    cluster.nodes[&1].signal("-HUP");
    wait_log(&cluster, 1, "certificates and keys reloaded");
    let deadline = Instant::now() + DEADLINE;
    while !greeted("reloaded.test") {
        assert!(Instant::now() < deadline, "the new certificate is not served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = before.request_id();
    let reply = before.call(ClientRequest::Admin { request_id: id, request: AdminRequest::Status });
    assert!(matches!(reply, Ok(ClientResponse::Admin { .. })), "{reply:?}");

    // A reload from a broken file keeps what the node had.
    std::fs::write(certs.join("node-1-key.pem"), "not a key").unwrap();
    cluster.nodes[&1].signal("-HUP");
    wait_log(&cluster, 1, "reloading certificates failed, keeping the old ones");
    assert!(greeted("reloaded.test"));

    // The node kept its place: same leader (or one elected without node 1 being dropped),
    // and writes go through every node.
    let mut client = cluster.client(cluster.endpoints(), DEADLINE);
    put(&mut client, "after-reload");
    let _ = leader;
    assert!(cluster.nodes[&1].log.exists());
    cluster.wait_caught_up(1);
}
