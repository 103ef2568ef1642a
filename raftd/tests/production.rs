//! Issue 20, running under systemd: the sample config file (`docs/raftd.toml`) is accepted,
//! flags win over it, and the node tells `$NOTIFY_SOCKET` READY=1 once it serves and
//! STOPPING=1 on SIGTERM (`scripts/raftd.service` is `Type=notify`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within the deadline");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_sample_config_starts_a_node_that_notifies_systemd_when_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let ports = free_ports(3);
    let (peer, client, metrics) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
        format!("127.0.0.1:{}", ports[2]),
    );
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/raftd.toml");
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    // The sample as installed, with what differs on a test machine given as flags (which win
    // over the file), and the cluster's name given in the environment.
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftd"))
        .args(["--config-file", sample])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--listen-peer", &peer, "--listen-client", &client, "--advertise-client", &client])
        .args(["--listen-metrics", &metrics, "--initial-cluster", &format!("1={peer}")])
        .env("RAFTD_CLUSTER_ID", format!("sample{}", ports[0]))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = recv(&socket);
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    // Ready means serving: the client port answers at once.
    let mut c = Client::connect(&client).unwrap();
    let status = c.status().unwrap();
    assert_eq!((status.id, status.cluster_id.clone()), (1, format!("sample{}", ports[0])));
    // And the health probe of the unit's comments turns 200 once it leads.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut s = TcpStream::connect(&metrics).unwrap();
        write!(s, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(recv(&socket), "STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
