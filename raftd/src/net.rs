//! The node's network, behind one trait so that the node runs over a simulated network as
//! well as over the machine's sockets (issue 17: the whole node under a simulator).
//!
//! The node sees two listening ports (peer and client), byte streams it accepts or dials, and
//! readiness events. [`MioNet`] is the machine's: non-blocking TCP sockets registered with one
//! `mio::Poll`, edge-triggered. An implementation must keep that contract: a stream is
//! reported readable (or writable) once when it becomes so, and the node reads (writes) until
//! `WouldBlock`; a listener is reported readable when connections wait, and the node accepts
//! until `WouldBlock`. A stream's `flush` returns `WouldBlock` while bytes it took still wait
//! for the socket (TLS records), and the node then asks for a writable event.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use log::{error, info};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::protocol::HelloAck;
use crate::tls::{TlsContext, TlsStream};

/// The token of the peer port's listener.
pub const PEER_LISTENER: Token = Token(0);
/// The token of the client port's listener.
pub const CLIENT_LISTENER: Token = Token(1);
/// The token of the event that says a sync of the log ended (see [`Net::start_sync`]).
pub const SYNC_DONE: Token = Token(2);
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
    /// The remote closed its side, or the connection failed: read to the end (a short read
    /// does not mean the end was seen).
    pub read_closed: bool,
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

    /// Starts a connection to peer `to` at `addr`; it is reported writable once connected
    /// (or failed: see [`Net::connect_error`]).
    fn connect(&mut self, addr: SocketAddr, to: u64) -> io::Result<Self::Stream>;

    /// Whether the connection accepted as `stream` on the peer port may speak for node `id`
    /// (with TLS: its certificate names it); the reason to refuse its Hello when not.
    fn check_peer_identity(&self, stream: &Self::Stream, id: u64) -> Result<(), String> {
        let _ = (stream, id);
        Ok(())
    }

    /// Why a dialled connection failed, if it did.
    fn connect_error(stream: &Self::Stream) -> io::Result<Option<io::Error>>;

    /// Whether a read of `stream` that returned less than the room it was given took all it
    /// held, so that reading again before the next readiness event would only find nothing
    /// (a plain stream socket: epoll(7); not a TLS stream, whose reads return the plaintext of
    /// the records already decrypted).
    fn drained_by_short_read(stream: &Self::Stream) -> bool;

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

    /// Runs `job`, a sync of the log, off the loop (one at a time): the loop goes on serving
    /// sockets and timers while the disk works. `poll` reports its end as an event of
    /// [`SYNC_DONE`]; [`Net::take_synced`] then hands it back with its outcome.
    fn start_sync(&mut self, job: wal::SyncJob);

    /// The sync that ended, if one did.
    fn take_synced(&mut self) -> Option<SyncDone>;

    /// Waits for the sync in flight to end (before anything else syncs the log, and on
    /// shutdown). None if none was in flight, or if it was lost (its thread died).
    fn wait_synced(&mut self) -> Option<SyncDone>;
}

/// A sync of the log that ended.
#[derive(Debug)]
pub struct SyncDone {
    /// The job, to be finished by the log.
    pub job: wal::SyncJob,
    /// Its outcome; an error is fatal.
    pub result: wal::Result<()>,
    /// How long the disk took.
    pub took: Duration,
}

/// The thread that runs the syncs of [`MioNet`], and wakes its poll when one ends.
struct Syncer {
    jobs: Option<mpsc::Sender<wal::SyncJob>>,
    done: mpsc::Receiver<SyncDone>,
    /// A sync run on the loop because the thread was gone.
    finished: Option<SyncDone>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(waker: mio::Waker) -> io::Result<Syncer> {
        let (jobs, jobs_rx) = mpsc::channel::<wal::SyncJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            while let Ok(job) = jobs_rx.recv() {
                let started = Instant::now();
                let result = job.run();
                let took = started.elapsed();
                if done_tx.send(SyncDone { job, result, took }).is_err() {
                    return;
                }
                if let Err(e) = waker.wake() {
                    error!("cannot wake the event loop after a sync: {e}");
                }
            }
        })?;
        Ok(Syncer { jobs: Some(jobs), done, finished: None, thread: Some(thread) })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread ends once the sync it runs (if any) does.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A stream of [`MioNet`]: TCP, or TLS over TCP.
pub enum MioStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: the rustls state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl MioStream {
    fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            MioStream::Plain(s) => s,
            MioStream::Tls(t) => t.socket_mut(),
        }
    }

    fn socket(&self) -> &TcpStream {
        match self {
            MioStream::Plain(s) => s,
            MioStream::Tls(t) => t.socket(),
        }
    }
}

impl Read for MioStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MioStream::Plain(s) => s.read(buf),
            MioStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for MioStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MioStream::Plain(s) => s.write(buf),
            MioStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MioStream::Plain(_) => Ok(()),
            MioStream::Tls(t) => t.flush(),
        }
    }
}

/// The machine's network: TCP (or TLS over TCP) on one `mio::Poll`.
pub struct MioNet {
    poll: Poll,
    events: Events,
    peer_listener: TcpListener,
    client_listener: TcpListener,
    tls: Option<TlsContext>,
    /// Set by SIGHUP: read the certificates again.
    reload: Arc<AtomicBool>,
    /// What a plaintext client of a TLS peer (0) or client (1) port is told, framed.
    plaintext_refusals: [Vec<u8>; 2],
    syncer: Syncer,
}

/// The frame telling a plaintext client of the TLS `port` why it is refused.
fn plaintext_refusal(port: &str) -> io::Result<Vec<u8>> {
    let reason = format!(
        "the {port} port speaks TLS: connect with TLS (raftctl --cacert, and --cert and --key \
         where client certificates are required)"
    );
    let mut frame = Vec::new();
    codec::encode_into(&mut frame, &HelloAck::Refused { reason }, codec::FRAME_SIZE_MAX_DEFAULT)
        .map_err(io::Error::other)?;
    Ok(frame)
}

impl MioNet {
    /// Listens on both ports: the peer port's socket is already bound (it served the
    /// bootstrap exchange), the client port's is bound here.
    /// `tls`: the ports that speak TLS, reloaded on SIGHUP.
    pub fn new(
        peer_listener: std::net::TcpListener,
        listen_client: SocketAddr,
        tls: Option<TlsContext>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        peer_listener.set_nonblocking(true)?;
        let mut peer_listener = TcpListener::from_std(peer_listener);
        let mut client_listener = TcpListener::bind(listen_client)?;
        poll.registry().register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)?;
        // SIGHUP reloads certificates (and, without TLS, is logged rather than ending the
        // process, its default).
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
        let syncer = Syncer::start(mio::Waker::new(poll.registry(), SYNC_DONE)?)?;
        Ok(MioNet {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            peer_listener,
            client_listener,
            tls,
            reload,
            plaintext_refusals: [plaintext_refusal("peer")?, plaintext_refusal("client")?],
            syncer,
        })
    }

    fn reload_tls(&mut self) {
        let Some(tls) = &mut self.tls else {
            info!("SIGHUP: no TLS certificates to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => info!("SIGHUP: certificates and keys reloaded; new connections use them"),
            Err(e) => error!("SIGHUP: reloading certificates failed, keeping the old ones: {e}"),
        }
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
    type Stream = MioStream;

    fn poll(&mut self, events: &mut Vec<NetEvent>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        if self.reload.swap(false, Ordering::Relaxed) {
            self.reload_tls();
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        events.extend(self.events.iter().map(|e| NetEvent {
            token: e.token(),
            readable: e.is_readable(),
            writable: e.is_writable(),
            read_closed: e.is_read_closed() || e.is_error(),
        }));
        Ok(())
    }

    fn accept(&mut self, port: Port) -> io::Result<(MioStream, SocketAddr)> {
        let listener = match port {
            Port::Peer => &self.peer_listener,
            Port::Client => &self.client_listener,
        };
        let (stream, remote) = listener.accept()?;
        // Latency over throughput: small frames go out at once.
        let _ = stream.set_nodelay(true);
        let (server, refusal) = match (&self.tls, port) {
            (Some(tls), Port::Peer) => (tls.accept_peer(), &self.plaintext_refusals[0]),
            (Some(tls), Port::Client) => (tls.accept_client(), &self.plaintext_refusals[1]),
            (None, _) => (None, &self.plaintext_refusals[0]),
        };
        let Some(server) = server else { return Ok((MioStream::Plain(stream), remote)) };
        let stream = TlsStream::server(server?, stream, refusal.clone());
        Ok((MioStream::Tls(Box::new(stream)), remote))
    }

    fn connect(&mut self, addr: SocketAddr, to: u64) -> io::Result<MioStream> {
        let client = self.tls.as_ref().and_then(|tls| tls.dial_peer(to)).transpose()?;
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        Ok(match client {
            None => MioStream::Plain(stream),
            Some(client) => MioStream::Tls(Box::new(TlsStream::client(client, stream))),
        })
    }

    fn check_peer_identity(&self, stream: &MioStream, id: u64) -> Result<(), String> {
        match (stream, &self.tls) {
            (MioStream::Tls(t), Some(tls)) => {
                crate::tls::check_peer_identity(t.connection(), id, tls.cluster_id())
            }
            _ => Ok(()),
        }
    }

    fn connect_error(stream: &MioStream) -> io::Result<Option<io::Error>> {
        stream.socket().take_error()
    }

    fn drained_by_short_read(stream: &MioStream) -> bool {
        matches!(stream, MioStream::Plain(_))
    }

    fn register(&mut self, stream: &mut MioStream, token: Token, writable: bool) -> io::Result<()> {
        self.poll.registry().register(stream.socket_mut(), token, Self::interest(writable))
    }

    fn reregister(
        &mut self,
        stream: &mut MioStream,
        token: Token,
        writable: bool,
    ) -> io::Result<()> {
        self.poll.registry().reregister(stream.socket_mut(), token, Self::interest(writable))
    }

    fn deregister(&mut self, stream: &mut MioStream) {
        let _ = self.poll.registry().deregister(stream.socket_mut());
    }

    fn start_sync(&mut self, job: wal::SyncJob) {
        let jobs = self.syncer.jobs.as_ref().expect("the sync thread runs until dropped");
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            // The thread is gone (a panic in the file system's code): sync here instead.
            let started = Instant::now();
            let result = job.run();
            self.syncer.finished = Some(SyncDone { job, result, took: started.elapsed() });
        }
    }

    fn take_synced(&mut self) -> Option<SyncDone> {
        self.syncer.finished.take().or_else(|| self.syncer.done.try_recv().ok())
    }

    fn wait_synced(&mut self) -> Option<SyncDone> {
        // (`recv` fails only if the thread panicked with the job.)
        self.syncer.finished.take().or_else(|| self.syncer.done.recv().ok())
    }
}
