//! Connections: framed, non-blocking byte streams of the node's [`Net`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use codec::{FrameDecoder, FrameEncoder};
use mio::Token;
use serde::Serialize;

use crate::net::Net;

/// Bytes a peer connection may have queued before the peer counts as unable to keep up (at
/// least two frames).
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Frames' worth of bytes a client connection may have queued before it is closed: a reply
/// as large as the largest frame must fit.
pub const CLIENT_QUEUE_FRAMES_MAX: usize = 2;
/// Bytes read from one connection before its complete frames are handled: reading stops
/// there once a whole frame is buffered, so that one busy connection does not hold the loop,
/// and resumes in the next iteration.
pub const READ_BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// Largest frame an inbound connection may send before its Hello is accepted: a Hello is a
/// few hundred bytes, and an unauthenticated connection must not make the node buffer more.
pub const HELLO_SIZE_MAX: usize = 16 * 1024;

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

/// A framed connection over a stream `S`.
pub struct Conn<S> {
    /// The socket.
    pub stream: S,
    /// Its purpose.
    pub kind: ConnKind,
    /// The remote address, for log lines.
    pub remote: SocketAddr,
    /// Received bytes being reassembled into frames.
    pub decoder: FrameDecoder,
    /// Frames waiting to be written.
    pub encoder: FrameEncoder,
    /// The capacity of the decoder while [`Conn::lend_decoder`] has it out: still this
    /// connection's memory, for [`Conn::buffer_bytes`].
    lent_decoder_bytes: usize,
    writable_registered: bool,
    /// When bytes last arrived (a connection silent for long may be stale).
    pub last_read: std::time::Instant,
    /// Bytes arrived since the last [`Conn::release_idle_buffers`].
    read_since_release_check: bool,
    /// Set when the connection must be closed after its output is flushed.
    pub closing: bool,
    /// When it was accepted or dialled (a handshake must complete within a timeout).
    pub opened_at: std::time::Instant,
    frame_size_max: usize,
    /// Bytes written and read since the last [`Conn::take_byte_counts`].
    written_bytes: u64,
    read_bytes: u64,
}

/// How reading a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Everything available was read.
    Open,
    /// Reading stopped at the budget with whole frames buffered; the socket may hold more,
    /// and (edge-triggered) will not say so again: read it again without waiting.
    More,
    /// The remote closed its side.
    Closed,
}

impl<S: Read + Write> Conn<S> {
    /// A connection over `stream`.
    pub fn new(
        stream: S,
        kind: ConnKind,
        remote: SocketAddr,
        frame_size_max: usize,
        now: std::time::Instant,
    ) -> Conn<S> {
        // Until it has identified itself, an inbound connection may send only a Hello.
        let inbound = !matches!(kind, ConnKind::OutboundPeer { .. });
        let read_limit = if inbound { HELLO_SIZE_MAX.min(frame_size_max) } else { frame_size_max };
        Conn {
            stream,
            kind,
            remote,
            decoder: FrameDecoder::new(read_limit),
            encoder: FrameEncoder::new(frame_size_max),
            lent_decoder_bytes: 0,
            writable_registered: false,
            last_read: now,
            read_since_release_check: false,
            closing: false,
            opened_at: now,
            frame_size_max,
            written_bytes: 0,
            read_bytes: 0,
        }
    }

    /// Whether the connection is inbound and its Hello not yet accepted.
    pub fn in_handshake(&self) -> bool {
        matches!(
            self.kind,
            ConnKind::InboundPeer { from: None } | ConnKind::Client { greeted: false }
        )
    }

    /// The connection identified itself: it may now send frames up to the frame limit.
    pub fn greeted(&mut self, kind: ConnKind) {
        self.kind = kind;
        self.decoder.set_frame_size_max(self.frame_size_max);
    }

    /// Takes the decoder out (an empty one with the same limit in its place), so that the
    /// frames it holds are handled where they lie, by code that needs the whole node, instead
    /// of each being copied out first. Given back with [`Conn::return_decoder`].
    pub fn lend_decoder(&mut self) -> FrameDecoder {
        let stand_in = FrameDecoder::new(self.decoder.frame_size_max());
        self.lent_decoder_bytes = self.decoder.capacity();
        std::mem::replace(&mut self.decoder, stand_in)
    }

    /// Puts back the decoder [`Conn::lend_decoder`] took, with the limit set meanwhile (the
    /// connection may have identified itself in one of the frames).
    pub fn return_decoder(&mut self, mut decoder: FrameDecoder) {
        assert_eq!(self.decoder.buffered_len(), 0, "nothing is read while it is lent");
        decoder.set_frame_size_max(self.decoder.frame_size_max());
        self.decoder = decoder;
        self.lent_decoder_bytes = 0;
    }

    /// Bytes of memory its buffers hold.
    pub fn buffer_bytes(&self) -> usize {
        self.decoder.capacity() + self.lent_decoder_bytes + self.encoder.capacity()
    }

    /// Gives back the memory of buffers that hold nothing if nothing arrived since the last
    /// call (once a tick): an idle connection keeps none, and a busy one keeps its buffers
    /// rather than allocate and zero 64 KiB again at its next read. (Given back only after a
    /// longer idle time, buffers of many short-lived connections were all held at once, and
    /// the allocator kept the memory after they were freed.)
    pub fn release_idle_buffers(&mut self) {
        if std::mem::take(&mut self.read_since_release_check) {
            return;
        }
        self.decoder.release_if_idle();
        self.encoder.release_if_idle();
    }

    /// The byte limit of this connection's queue.
    pub fn queue_limit(&self) -> usize {
        let frames = self.frame_size_max.saturating_mul(CLIENT_QUEUE_FRAMES_MAX);
        match self.kind {
            ConnKind::Client { .. } => frames,
            _ => PEER_QUEUE_BYTES_MAX.max(frames),
        }
    }

    /// Bytes written and read since the last call: (written, read).
    pub fn take_byte_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.written_bytes), std::mem::take(&mut self.read_bytes))
    }

    /// Queues a frame; false when the queue is over its limit (the caller disconnects).
    pub fn send<T: Serialize>(&mut self, value: &T) -> Result<bool, codec::Error> {
        self.encoder.encode(value)?;
        Ok(self.encoder.pending_len() <= self.queue_limit())
    }

    /// Reads everything available into the decoder (`now`: when, for [`Conn::last_read`]).
    /// With `short_read_drains` (the stream is drained by a short read, and the remote has
    /// not closed: see [`crate::net::Net::drained_by_short_read`]) a read that returns less
    /// than it was offered ends it, without the read that would only say `WouldBlock` (half
    /// the reads of a busy node).
    pub fn read_available(
        &mut self,
        now: std::time::Instant,
        short_read_drains: bool,
    ) -> io::Result<ReadOutcome> {
        loop {
            match self.decoder.read_from_short(&mut self.stream) {
                Ok((0, _)) => return Ok(ReadOutcome::Closed),
                Ok((n, short)) => {
                    self.read_bytes += n as u64;
                    self.last_read = now;
                    self.read_since_release_check = true;
                    // Past the budget, stop once a whole frame is buffered: the frames are
                    // handled, and the rest is read in the next iteration. A frame larger
                    // than the budget is read to its end first (the decoder refuses one above
                    // the frame limit as soon as its prefix arrives).
                    if self.decoder.buffered_len() > READ_BUDGET_BYTES && self.decoder.has_frame() {
                        return Ok(ReadOutcome::More);
                    }
                    if short && short_read_drains {
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
    pub fn flush<N: Net<Stream = S>>(&mut self, net: &mut N, token: Token) -> io::Result<()> {
        while self.encoder.pending_len() > 0 {
            match self.stream.write(self.encoder.pending()) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "socket wrote nothing"))
                }
                Ok(n) => {
                    self.written_bytes += n as u64;
                    self.encoder.consume(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.flush_stream(net, token)
    }

    /// Writes what the stream itself holds for the socket (a TLS stream's encrypted records,
    /// handshake answers among them: reading may queue some), leaving queued frames for
    /// [`Conn::flush`], and asks for a writable event while anything remains.
    pub fn flush_stream<N: Net<Stream = S>>(
        &mut self,
        net: &mut N,
        token: Token,
    ) -> io::Result<()> {
        let stream_pending = match self.stream.flush() {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e),
        };
        let want_writable = self.encoder.pending_len() > 0 || stream_pending;
        if want_writable != self.writable_registered {
            net.reregister(&mut self.stream, token, want_writable)?;
            self.writable_registered = want_writable;
        }
        Ok(())
    }

    /// Registers the connection; outbound connections also wait for writability (connect).
    pub fn register<N: Net<Stream = S>>(&mut self, net: &mut N, token: Token) -> io::Result<()> {
        let outbound = matches!(self.kind, ConnKind::OutboundPeer { .. });
        self.writable_registered = outbound;
        net.register(&mut self.stream, token, outbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A non-blocking stream holding `held` bytes (then `WouldBlock`, or the end once
    /// `closed`), counting the reads made of it.
    struct Held {
        held: Vec<u8>,
        closed: bool,
        reads: usize,
    }

    impl Read for Held {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.held.is_empty() {
                return match self.closed {
                    true => Ok(0),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                };
            }
            let n = buf.len().min(self.held.len());
            buf[..n].copy_from_slice(&self.held[..n]);
            self.held.drain(..n);
            Ok(n)
        }
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(held: usize, closed: bool) -> Conn<Held> {
        let stream = Held { held: vec![0; held], closed, reads: 0 };
        let remote = "127.0.0.1:1".parse().unwrap();
        let now = std::time::Instant::now();
        let kind = ConnKind::OutboundPeer { to: 2 };
        Conn::new(stream, kind, remote, codec::FRAME_SIZE_MAX_DEFAULT, now)
    }

    /// Lent out while its frames are dispatched, the decoder's buffer still counts as the
    /// connection's (the shedding of clients over `--max-buffered-bytes` may run then), and
    /// a limit raised meanwhile (a Hello accepted) goes back with it.
    #[test]
    fn a_lent_decoder_still_counts_and_takes_back_the_limit_set_meanwhile() {
        let now = std::time::Instant::now();
        let mut c = conn(100, false);
        c.read_available(now, true).unwrap();
        let before = c.buffer_bytes();
        assert!(before >= 100);
        let lent = c.lend_decoder();
        assert_eq!(c.buffer_bytes(), before, "counted while lent");
        c.decoder.set_frame_size_max(1234);
        c.return_decoder(lent);
        assert_eq!((c.buffer_bytes(), c.decoder.frame_size_max()), (before, 1234));
        assert_eq!(c.decoder.buffered_len(), 100, "the bytes came back with it");
    }

    /// A short read of a stream that a short read drains ends the reading: no second read
    /// only to be told `WouldBlock`; one that filled its room reads again.
    #[test]
    fn a_short_read_ends_the_reading_when_it_drains_the_stream() {
        let now = std::time::Instant::now();
        let mut c = conn(100, false);
        assert_eq!(c.read_available(now, true).unwrap(), ReadOutcome::Open);
        assert_eq!((c.stream.reads, c.decoder.buffered_len()), (1, 100));

        let mut c = conn(100, false);
        assert_eq!(c.read_available(now, false).unwrap(), ReadOutcome::Open);
        assert_eq!(c.stream.reads, 2, "not known to drain: read until WouldBlock");

        // More than one read's room: the full reads go on, the short one ends it.
        let mut c = conn(300 * 1024, false);
        assert_eq!(c.read_available(now, true).unwrap(), ReadOutcome::Open);
        assert_eq!(c.decoder.buffered_len(), 300 * 1024);
        let reads = c.stream.reads;
        assert!(reads >= 2 && c.stream.held.is_empty(), "{reads} reads");
        assert!(c.stream.read(&mut [0]).is_err(), "and nothing was left");
    }

    /// When the remote closed (the caller passes `short_read_drains` false), reading goes on
    /// past a short read to the end of the stream.
    #[test]
    fn a_closed_stream_is_read_to_its_end() {
        let now = std::time::Instant::now();
        let mut c = conn(100, true);
        assert_eq!(c.read_available(now, false).unwrap(), ReadOutcome::Closed);
        assert_eq!((c.stream.reads, c.decoder.buffered_len()), (2, 100));
    }
}
