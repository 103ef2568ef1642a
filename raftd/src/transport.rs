//! Connections: framed, non-blocking TCP streams registered with the node's `mio::Poll`.

use std::io::{self, Write};
use std::net::SocketAddr;

use codec::{FrameDecoder, FrameEncoder};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde::Serialize;

/// Bytes a peer connection may have queued before the peer counts as unable to keep up.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes a client connection may have queued before it is closed.
pub const CLIENT_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What a connection is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// Accepted on the peer port; `from` once its Hello arrived.
    InboundPeer {
        /// The sending node.
        from: Option<u64>,
    },
    /// Dialled by this node to send to peer `to`.
    OutboundPeer {
        /// The receiving node.
        to: u64,
    },
    /// Accepted on the client port; `greeted` once its Hello was accepted.
    Client {
        /// Hello accepted.
        greeted: bool,
    },
}

/// A framed connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Its purpose.
    pub kind: ConnKind,
    /// The remote address, for log lines.
    pub remote: SocketAddr,
    /// Received bytes being reassembled into frames.
    pub decoder: FrameDecoder,
    /// Frames waiting to be written.
    pub encoder: FrameEncoder,
    writable_registered: bool,
    /// When bytes last arrived (a connection silent for long may be stale).
    pub last_read: std::time::Instant,
    /// Set when the connection must be closed after its output is flushed.
    pub closing: bool,
}

/// How reading a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Everything available was read.
    Open,
    /// The remote closed its side.
    Closed,
}

impl Conn {
    /// A connection over `stream`.
    pub fn new(
        stream: TcpStream,
        kind: ConnKind,
        remote: SocketAddr,
        frame_size_max: usize,
    ) -> Conn {
        // Latency over throughput: small frames go out at once.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            kind,
            remote,
            decoder: FrameDecoder::new(frame_size_max),
            encoder: FrameEncoder::new(frame_size_max),
            writable_registered: false,
            last_read: std::time::Instant::now(),
            closing: false,
        }
    }

    /// The byte limit of this connection's queue.
    pub fn queue_limit(&self) -> usize {
        match self.kind {
            ConnKind::Client { .. } => CLIENT_QUEUE_BYTES_MAX,
            _ => PEER_QUEUE_BYTES_MAX,
        }
    }

    /// Queues a frame; false when the queue is over its limit (the caller disconnects).
    pub fn send<T: Serialize>(&mut self, value: &T) -> Result<bool, codec::Error> {
        self.encoder.encode(value)?;
        Ok(self.encoder.pending_len() <= self.queue_limit())
    }

    /// Reads everything available into the decoder.
    pub fn read_available(&mut self) -> io::Result<ReadOutcome> {
        loop {
            match self.decoder.read_from(&mut self.stream) {
                Ok(0) => return Ok(ReadOutcome::Closed),
                Ok(_) => {
                    self.last_read = std::time::Instant::now();
                    // Stop reading once a frame's worth is buffered, to bound memory; the
                    // rest is read after these frames are handled.
                    if self.decoder.buffered_len() > 4 * 1024 * 1024 {
                        return Ok(ReadOutcome::Open);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much queued output as the socket takes, and asks for a writable event when
    /// some remains.
    pub fn flush(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        while self.encoder.pending_len() > 0 {
            match self.stream.write(self.encoder.pending()) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "socket wrote nothing"))
                }
                Ok(n) => self.encoder.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let want_writable = self.encoder.pending_len() > 0;
        if want_writable != self.writable_registered {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.stream, token, interest)?;
            self.writable_registered = want_writable;
        }
        Ok(())
    }

    /// Registers the connection; outbound connections also wait for writability (connect).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let outbound = matches!(self.kind, ConnKind::OutboundPeer { .. });
        let interest =
            if outbound { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        self.writable_registered = outbound;
        registry.register(&mut self.stream, token, interest)
    }
}
