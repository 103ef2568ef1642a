//! The node's network, behind one trait so that the node runs over a simulated network as
//! well as over the machine's sockets (issue 17: the whole node under a simulator).
//!
//! The node sees two listening ports (peer and client), byte streams it accepts or dials, and
//! readiness events. [`MioNet`] is the machine's: non-blocking TCP sockets registered with one
//! `mio::Poll`, edge-triggered. An implementation must keep that contract: a stream is
//! reported readable (or writable) once when it becomes so, and the node reads (writes) until
//! `WouldBlock`; a listener is reported readable when connections wait, and the node accepts
//! until `WouldBlock`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// The token of the peer port's listener.
pub const PEER_LISTENER: Token = Token(0);
/// The token of the client port's listener.
pub const CLIENT_LISTENER: Token = Token(1);
/// Readiness events taken from the system at most per poll.
const EVENTS_CAPACITY: usize = 1024;

/// One of the node's two listening ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    /// Connections from other nodes.
    Peer,
    /// Connections from clients and operators.
    Client,
}

/// A readiness event: `token` is a stream's, or [`PEER_LISTENER`] or [`CLIENT_LISTENER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetEvent {
    /// Whose.
    pub token: Token,
    /// Bytes (or connections) wait to be read (accepted), or the remote closed.
    pub readable: bool,
    /// The stream takes bytes again (or finished connecting).
    pub writable: bool,
}

/// What the node needs of a network.
pub trait Net {
    /// A connection's byte stream: non-blocking (`WouldBlock` when nothing is to be read or
    /// no room to write).
    type Stream: Read + Write;

    /// Waits for readiness at most `timeout`, and puts the events in `events` (cleared
    /// first).
    fn poll(&mut self, events: &mut Vec<NetEvent>, timeout: Option<Duration>) -> io::Result<()>;

    /// Takes one waiting connection from `port`'s listener (`WouldBlock`: none waits).
    fn accept(&mut self, port: Port) -> io::Result<(Self::Stream, SocketAddr)>;

    /// Starts a connection to `addr`; it is reported writable once connected (or failed:
    /// see [`Net::connect_error`]).
    fn connect(&mut self, addr: SocketAddr) -> io::Result<Self::Stream>;

    /// Why a dialled connection failed, if it did.
    fn connect_error(stream: &Self::Stream) -> io::Result<Option<io::Error>>;

    /// Reports `stream`'s readiness under `token`: readable always, writable if `writable`.
    fn register(
        &mut self,
        stream: &mut Self::Stream,
        token: Token,
        writable: bool,
    ) -> io::Result<()>;

    /// Changes whether `stream` is reported writable.
    fn reregister(
        &mut self,
        stream: &mut Self::Stream,
        token: Token,
        writable: bool,
    ) -> io::Result<()>;

    /// Stops reporting `stream` (before it is dropped).
    fn deregister(&mut self, stream: &mut Self::Stream);
}

/// The machine's network: TCP on one `mio::Poll`.
pub struct MioNet {
    poll: Poll,
    events: Events,
    peer_listener: TcpListener,
    client_listener: TcpListener,
}

impl MioNet {
    /// Listens on both ports: the peer port's socket is already bound (it served the
    /// bootstrap exchange), the client port's is bound here.
    pub fn new(
        peer_listener: std::net::TcpListener,
        listen_client: SocketAddr,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        peer_listener.set_nonblocking(true)?;
        let mut peer_listener = TcpListener::from_std(peer_listener);
        let mut client_listener = TcpListener::bind(listen_client)?;
        poll.registry().register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)?;
        Ok(MioNet {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            peer_listener,
            client_listener,
        })
    }

    fn interest(writable: bool) -> Interest {
        if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

impl Net for MioNet {
    type Stream = TcpStream;

    fn poll(&mut self, events: &mut Vec<NetEvent>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        events.extend(self.events.iter().map(|e| NetEvent {
            token: e.token(),
            readable: e.is_readable(),
            writable: e.is_writable(),
        }));
        Ok(())
    }

    fn accept(&mut self, port: Port) -> io::Result<(TcpStream, SocketAddr)> {
        let listener = match port {
            Port::Peer => &self.peer_listener,
            Port::Client => &self.client_listener,
        };
        let (stream, remote) = listener.accept()?;
        // Latency over throughput: small frames go out at once.
        let _ = stream.set_nodelay(true);
        Ok((stream, remote))
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn connect_error(stream: &TcpStream) -> io::Result<Option<io::Error>> {
        stream.take_error()
    }

    fn register(&mut self, stream: &mut TcpStream, token: Token, writable: bool) -> io::Result<()> {
        self.poll.registry().register(stream, token, Self::interest(writable))
    }

    fn reregister(
        &mut self,
        stream: &mut TcpStream,
        token: Token,
        writable: bool,
    ) -> io::Result<()> {
        self.poll.registry().reregister(stream, token, Self::interest(writable))
    }

    fn deregister(&mut self, stream: &mut TcpStream) {
        let _ = self.poll.registry().deregister(stream);
    }
}
