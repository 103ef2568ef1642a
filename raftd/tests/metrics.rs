//! Issue 20, metrics and health: `/metrics` scraped and parsed during a workload on a real
//! cluster, `/health` following the leader and its quorum, and the sample dashboard and
//! alert rules naming only metrics that exist.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use raftd::protocol::*;

/// GET `path` from `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(std::io::Error::other("no head"))?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// One sample: its name, its labels as written, and its value.
type Samples = BTreeMap<(String, String), f64>;

/// Parses the Prometheus text format strictly: every sample line is `name{labels} value`
/// with a value that parses, every sample's family has a TYPE, no sample is given twice.
fn parse(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "unknown type in {line:?}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "{line:?} twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                (name, labels.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}")))
            }
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types.get(family).unwrap_or_else(|| panic!("no TYPE for {line:?}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "a counter not named _total: {line:?}");
        }
        let key = (name.to_string(), labels.to_string());
        assert!(samples.insert(key, value).is_none(), "{line:?} given twice");
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &str) -> f64 {
    *samples
        .get(&(name.to_string(), labels.to_string()))
        .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
}

fn scrape(addr: &str) -> Samples {
    let (code, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

/// Starts a cluster of three whose nodes serve metrics: their metrics addresses.
fn cluster_with_metrics() -> (TestCluster, Vec<String>) {
    let mut cluster = TestCluster::start_some(3, &[], &[]);
    let ports = free_ports(3);
    let mut addrs = Vec::new();
    for (p, port) in cluster.procs.iter_mut().zip(ports) {
        let addr = format!("127.0.0.1:{port}");
        p.args.extend(["--listen-metrics".to_string(), addr.clone()]);
        addrs.push(addr);
        p.start();
    }
    (cluster, addrs)
}

fn wait_health(addr: &str, code: u16) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match http_get(addr, "/health") {
            Ok((c, body)) if c == code => return body,
            other => {
                assert!(Instant::now() < deadline, "/health at {addr} never {code}: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn metrics_are_scraped_and_parsed_during_a_workload_and_health_follows_the_quorum() {
    let (mut cluster, addrs) = cluster_with_metrics();
    // Served while the node waits for the others: not healthy yet.
    let leader = cluster.wait_for_leader();
    for addr in &addrs {
        wait_health(addr, 200);
    }
    // A workload from a thread while the test scrapes.
    let workload = {
        let addr = cluster.procs[leader as usize - 1].client_addr.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&addr).unwrap();
            for seq in 1..=300u64 {
                let op =
                    Op::Put { key: format!("k{}", seq % 17).into_bytes(), value: vec![7; 256] };
                c.kv(op).unwrap().unwrap();
                if seq % 10 == 0 {
                    let op = Op::Get { key: b"k1".to_vec(), serializable: false };
                    c.kv(op).unwrap().unwrap();
                }
            }
        })
    };
    let leader_addr = &addrs[leader as usize - 1];
    let mut scrapes = 0;
    while !workload.is_finished() {
        parse(&http_get(leader_addr, "/metrics").unwrap().1);
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    workload.join().unwrap();
    assert!(scrapes > 0);
    // Gauges are published each tick: wait until the leader's shows the workload applied.
    let deadline = Instant::now() + DEADLINE;
    let samples = loop {
        let s = scrape(leader_addr);
        if value(&s, "raft_proposals_committed_total", "") >= 301.0
            && value(&s, "raft_applied_index", "") >= 301.0
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the workload never showed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(value(&samples, "raft_is_leader", ""), 1.0);
    assert_eq!(value(&samples, "raft_has_leader", ""), 1.0);
    assert_eq!(value(&samples, "raft_quorum_active", ""), 1.0);
    assert_eq!(value(&samples, "raft_healthy", ""), 1.0);
    assert!(value(&samples, "raft_term", "") >= 1.0);
    assert!(
        value(&samples, "raft_commit_index", "") >= value(&samples, "raft_applied_index", "") - 0.5
    );
    assert_eq!(value(&samples, "raft_proposals_failed_total", ""), 0.0);
    assert!(value(&samples, "raft_wal_fsync_duration_seconds_count", "") >= 1.0);
    let puts = "operation=\"put\"";
    let put_count = value(&samples, "raft_client_request_duration_seconds_count", puts);
    assert_eq!(put_count, 300.0);
    let put_inf = value(
        &samples,
        "raft_client_request_duration_seconds_bucket",
        "operation=\"put\",le=\"+Inf\"",
    );
    assert_eq!(put_inf, put_count, "the +Inf bucket counts every observation");
    assert!(value(&samples, "raft_client_request_duration_seconds_sum", puts) > 0.0);
    assert_eq!(
        value(&samples, "raft_client_request_duration_seconds_count", "operation=\"get\""),
        30.0
    );
    assert!(value(&samples, "raft_client_connections", "") >= 0.0);
    assert!(value(&samples, "raft_peer_connections", "") >= 2.0);
    assert!(value(&samples, "process_resident_memory_bytes", "") > 1e6);
    assert_eq!(value(&samples, "raft_no_space_alarm", ""), 0.0);
    for peer in (1..=3u64).filter(|&p| p != leader) {
        let label = format!("peer=\"{peer}\"");
        assert!(value(&samples, "raft_peer_sent_bytes_total", &label) > 300.0 * 256.0);
        assert!(value(&samples, "raft_peer_received_bytes_total", &label) > 0.0);
        assert!(value(&samples, "raft_peer_round_trip_seconds_count", &label) >= 1.0);
    }
    // Followers: a leader known, not the leader, the log applied.
    for (i, addr) in addrs.iter().enumerate() {
        if i as u64 + 1 == leader {
            continue;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = scrape(addr);
            assert_eq!(value(&s, "raft_is_leader", ""), 0.0);
            if value(&s, "raft_applied_index", "") >= 301.0 {
                assert_eq!(value(&s, "raft_has_leader", ""), 1.0);
                assert!(value(&s, "raft_leader_changes_total", "") >= 1.0);
                break;
            }
            assert!(Instant::now() < deadline, "follower {addr} never applied the workload");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A snapshot is counted, timed and sized.
    let mut admin = Client::connect(&cluster.procs[leader as usize - 1].client_addr).unwrap();
    admin.admin(AdminRequest::Snapshot).unwrap().unwrap();
    let s = scrape(leader_addr);
    assert_eq!(value(&s, "raft_snapshot_duration_seconds_count", ""), 1.0);
    assert!(value(&s, "raft_snapshot_size_bytes", "") > 17.0 * 256.0);
    // Unknown paths are told apart.
    assert_eq!(http_get(leader_addr, "/nothing").unwrap().0, 404);
    // The two followers gone: the leader loses its quorum, and /health says so.
    for id in (1..=3u64).filter(|&p| p != leader) {
        cluster.node(id).kill();
    }
    let body = wait_health(leader_addr, 503);
    assert!(body.contains("\"health\":\"false\""), "{body}");
    let s = scrape(leader_addr);
    assert_eq!(value(&s, "raft_healthy", ""), 0.0);
}

/// The metric names in the sample alert rules and dashboard, each served.
#[test]
fn the_sample_dashboard_and_alert_rules_name_only_served_metrics() {
    let (cluster, addrs) = cluster_with_metrics();
    cluster.wait_for_leader();
    cluster.put("x", "1");
    let (_, body) = http_get(&addrs[0], "/metrics").unwrap();
    let families: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["docs/grafana-dashboard.json", "docs/prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut named = 0;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let is_metric = word.starts_with("raft_") || word.starts_with("process_");
            if !is_metric {
                continue;
            }
            named += 1;
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|f| families.contains(*f))
                .unwrap_or(word);
            assert!(families.contains(family), "{file} names {word}, which is not served");
        }
        assert!(named >= 5, "{file} names {named} metrics");
    }
}
