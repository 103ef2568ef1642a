//! Peer addresses given as host names, resolved off the event loop.
//!
//! A member's address is `HOST:PORT`, where `HOST` is an IP address or a DNS name. An IP
//! address is used as it is. A name is resolved when the node dials it, by a resolver thread
//! (the system's resolver blocks, for seconds when a DNS server does not answer, and the loop
//! must not), and the answer is kept for [`RESOLVED_TTL`]: a member that moved to another
//! machine under the same name is found again at the next dial after that.
//!
//! The loop asks with [`Resolver::lookup`], which answers at once from what it holds or sends
//! the name to the thread and answers `Pending`; the thread's answers are taken in by
//! [`Resolver::collect`], once per loop iteration.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a resolved address is used before the name is resolved again.
pub const RESOLVED_TTL: Duration = Duration::from_secs(30);
/// Names waiting for the resolver thread at most; past it a lookup is refused until some
/// are answered (the names come from the configuration, so this is never reached by a
/// well-formed cluster).
pub const PENDING_LOOKUPS_MAX: usize = 1024;
/// Longest host name (RFC 1035), and longest label in it.
pub const HOST_NAME_LEN_MAX: usize = 253;
const LABEL_LEN_MAX: usize = 63;

/// What [`Resolver::lookup`] knows of an address.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Dial this.
    Ready(SocketAddr),
    /// The name is being resolved: ask again later.
    Pending,
    /// It does not resolve (or is not `HOST:PORT`): why.
    Failed(String),
}

/// Checks that `addr` is `HOST:PORT` with a non-zero port, where `HOST` is an IP address (IPv6
/// in brackets) or a DNS name; nothing is resolved.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return if a.port() == 0 { Err(format!("{addr:?} has port 0")) } else { Ok(()) };
    }
    let (host, port) =
        addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not HOST:PORT (no port)"))?;
    match port.parse::<u16>() {
        Ok(0) => return Err(format!("{addr:?} has port 0")),
        Ok(_) => {}
        Err(_) => return Err(format!("{addr:?} is not HOST:PORT ({port:?} is not a port)")),
    }
    check_host_name(host).map_err(|why| format!("{addr:?} is not HOST:PORT ({why})"))
}

/// Checks a DNS name: dot-separated labels of letters, digits, hyphens and underscores (which
/// container runtimes put in their names, and resolvers accept), 1 to 63 bytes each,
/// not starting or ending with a hyphen, 253 bytes at most, not all digits and dots (that is
/// an IP address, and one that did not parse).
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.len() > HOST_NAME_LEN_MAX {
        return Err(format!("the host name is longer than {HOST_NAME_LEN_MAX} bytes"));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= LABEL_LEN_MAX
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!("{label:?} is not a host name label"));
        }
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{host:?} is not an IP address"));
    }
    Ok(())
}

/// Resolves `addr` (`HOST:PORT`) with the system's resolver, blocking: the first IPv4
/// address, else the first address.
pub fn resolve_blocking(addr: &str) -> Result<SocketAddr, String> {
    let all: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

/// Host names resolved by a thread of its own, cached for [`RESOLVED_TTL`].
pub struct Resolver {
    to_thread: mpsc::Sender<String>,
    from_thread: mpsc::Receiver<(String, Result<SocketAddr, String>)>,
    /// Answers, with when they arrived.
    resolved: HashMap<String, (Result<SocketAddr, String>, Instant)>,
    /// Names sent to the thread and not answered yet.
    pending: std::collections::HashSet<String>,
}

impl Resolver {
    /// Starts the resolver thread.
    pub fn start() -> std::io::Result<Resolver> {
        let (to_thread, requests) = mpsc::channel::<String>();
        let (answers, from_thread) = mpsc::channel();
        std::thread::Builder::new().name("resolver".into()).spawn(move || {
            for name in requests {
                let answer = resolve_blocking(&name);
                if answers.send((name, answer)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Resolver {
            to_thread,
            from_thread,
            resolved: HashMap::new(),
            pending: Default::default(),
        })
    }

    /// The address to dial for `addr`, if known now.
    pub fn lookup(&mut self, addr: &str, now: Instant) -> Lookup {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Lookup::Ready(a);
        }
        if let Err(why) = check_host_port(addr) {
            return Lookup::Failed(why);
        }
        if let Some((answer, at)) = self.resolved.get(addr) {
            if now.saturating_duration_since(*at) < RESOLVED_TTL {
                return match answer {
                    Ok(a) => Lookup::Ready(*a),
                    Err(why) => Lookup::Failed(why.clone()),
                };
            }
        }
        if self.pending.contains(addr) {
            return Lookup::Pending;
        }
        if self.pending.len() >= PENDING_LOOKUPS_MAX {
            return Lookup::Failed(format!("{PENDING_LOOKUPS_MAX} names already being resolved"));
        }
        if self.to_thread.send(addr.to_string()).is_err() {
            return Lookup::Failed("the resolver thread is gone".into());
        }
        self.pending.insert(addr.to_string());
        Lookup::Pending
    }

    /// Takes in the thread's answers; returns the names answered.
    pub fn collect(&mut self, now: Instant) -> Vec<String> {
        let mut answered = Vec::new();
        while let Ok((name, answer)) = self.from_thread.try_recv() {
            self.pending.remove(&name);
            self.resolved.insert(name.clone(), (answer, now));
            answered.push(name);
        }
        answered
    }

    /// Forgets the answers older than [`RESOLVED_TTL`] (the names of removed members).
    pub fn expire(&mut self, now: Instant) {
        self.resolved.retain(|_, (_, at)| now.saturating_duration_since(*at) < RESOLVED_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_ips_and_names_and_refuses_the_rest() {
        for good in
            ["127.0.0.1:7001", "[::1]:7001", "localhost:7001", "node-1.example.com:1", "p_n_1:1"]
        {
            assert_eq!(check_host_port(good), Ok(()), "{good}");
        }
        let long = format!("{}.com:1", "a.".repeat(130));
        let label = format!("{}.com:1", "a".repeat(64));
        for bad in [
            "notanaddr",
            "host:0",
            "host:65536",
            "host:port",
            ":7001",
            "-node:1",
            "node-:1",
            "no de:1",
            "a..b:1",
            "300.1.1.1:1",
            "127.0.0.1:0",
            long.as_str(),
            label.as_str(),
        ] {
            assert!(check_host_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_are_resolved_by_the_thread_and_kept() {
        let mut r = Resolver::start().unwrap();
        let now = Instant::now();
        assert_eq!(r.lookup("127.0.0.1:9", now), Lookup::Ready("127.0.0.1:9".parse().unwrap()));
        assert_eq!(r.lookup("localhost:9", now), Lookup::Pending);
        assert_eq!(r.lookup("localhost:9", now), Lookup::Pending, "asked once");
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.collect(now).is_empty() {
            assert!(Instant::now() < deadline, "no answer from the resolver");
            std::thread::sleep(Duration::from_millis(5));
        }
        let Lookup::Ready(a) = r.lookup("localhost:9", now) else { panic!("resolved") };
        assert!(a.ip().is_loopback() && a.port() == 9, "{a}");
        // Past the TTL the name is resolved again.
        assert_eq!(r.lookup("localhost:9", now + RESOLVED_TTL), Lookup::Pending);
        assert!(matches!(r.lookup("bad name:1", now), Lookup::Failed(_)));
    }
}
