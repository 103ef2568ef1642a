//! Length-prefixed frames of serde values on a byte stream.
//!
//! Everything `raftd` says to its peers and clients travels as frames. The encoding inside a
//! frame is bincode 2 (standard configuration: little-endian, variable-length integers), kept
//! behind this crate's API so that it can be swapped in one place.
//!
//! # Frame layout
//!
//! ```text
//! offset  size  field
//! 0       4     payload length N, u32 little-endian (FRAME_LEN_SIZE)
//! 4       N     payload: one value, bincode-encoded
//! ```
//!
//! # Use
//!
//! ```
//! use codec::{FrameDecoder, FrameEncoder};
//!
//! let mut encoder = FrameEncoder::new(codec::FRAME_SIZE_MAX_DEFAULT);
//! encoder.encode(&("put", 42u64)).expect("encodes");
//! encoder.encode(&("get", 7u64)).expect("encodes");
//! // Several frames leave in one write; a partial write consumes what was written.
//! let wire = encoder.pending().to_vec();
//! encoder.consume(wire.len());
//!
//! let mut decoder = FrameDecoder::new(codec::FRAME_SIZE_MAX_DEFAULT);
//! for byte in &wire {
//!     decoder.feed(std::slice::from_ref(byte)); // Whatever a non-blocking read returned.
//! }
//! assert_eq!(decoder.next_frame::<(String, u64)>().unwrap(), Some(("put".into(), 42)));
//! assert_eq!(decoder.next_frame::<(String, u64)>().unwrap(), Some(("get".into(), 7)));
//! assert_eq!(decoder.next_frame::<(String, u64)>().unwrap(), None);
//! ```
//!
//! # Contract
//!
//! The decoder never blocks and never allocates for a declared length above its
//! `frame_size_max`: such a frame is [`Error::FrameTooLarge`] and the caller closes the
//! connection. Inside a payload, a declared length makes the decoder allocate at most 32
//! times the payload's length (at least 4 KiB), or serde's cautious 1 MiB for a sequence. A payload that does not decode as the expected type is [`Error::Malformed`];
//! nothing here panics on bytes from a socket.

#![warn(clippy::unwrap_used)]

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bytes of the length prefix.
pub const FRAME_LEN_SIZE: usize = 4;
/// The default largest payload accepted or produced: 32 MiB (room for a 16 MiB value and
/// what travels with it).
pub const FRAME_SIZE_MAX_DEFAULT: usize = 32 * 1024 * 1024;
/// The largest `frame_size_max` that may be configured (the prefix is a u32, and bincode's
/// allocation guard is fixed at compile time to this).
pub const FRAME_SIZE_MAX_CEILING: usize = 256 * 1024 * 1024;
/// How much a decoder reads from a socket at a time.
const READ_CHUNK_SIZE: usize = 64 * 1024;

/// The result of a codec operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame declares (or a value encodes to) more bytes than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The declared or encoded payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload does not decode as the expected type.
    #[error("malformed frame payload: {reason}")]
    Malformed {
        /// What the decoder found wrong.
        reason: String,
    },
    /// The payload decoded, but bytes were left over.
    #[error("frame payload has {extra} trailing bytes after the value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The value could not be encoded.
    #[error("cannot encode value: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_SIZE_MAX_CEILING>()
}

/// How many bytes bincode's allocation guard counts at most per payload byte: it counts the
/// in-memory size of each primitive decoded (8 for a `u64` that a varint encodes in one byte;
/// 16 for a `u128`) and the declared length of each string or byte vector.
const GUARD_BYTES_PER_PAYLOAD_BYTE: usize = 16;

/// Decodes `payload` with bincode's allocation guard set from the payload's own length: the
/// smallest power of two, from 4 KiB, at least [`GUARD_BYTES_PER_PAYLOAD_BYTE`] times it. A
/// length declared inside the payload (a string, a byte vector) is allocated before its bytes
/// are read, so with the guard at the 256 MiB ceiling a 5-byte payload declaring a 255 MiB
/// string allocated 255 MiB; now what one payload can make the decoder allocate for such
/// lengths is at most 32 times its length (at least 4 KiB), and a sequence preallocates at
/// most serde's cautious 1 MiB. The guard is a compile-time constant in bincode 2, hence the
/// buckets.
///
/// Decoded borrowing: a value whose byte strings are `&[u8]` (or `&str`) points into
/// `payload` instead of copying out of it; owned fields are allocated as usual.
fn decode_limited<'de, T: Deserialize<'de>>(
    payload: &'de [u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    let guard = payload.len().saturating_mul(GUARD_BYTES_PER_PAYLOAD_BYTE);
    macro_rules! bucket {
        ($($shift:literal),*) => {
            $(
                if guard <= 1 << $shift {
                    let config = bincode::config::standard().with_limit::<{ 1 << $shift }>();
                    return bincode::serde::borrow_decode_from_slice(payload, config);
                }
            )*
        };
    }
    bucket!(12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28);
    // Values stored elsewhere than a stream (a snapshot image of gigabytes) go beyond the
    // frame ceiling; their guard still follows their length.
    bucket!(30, 32, 34, 36, 38);
    Err(bincode::error::DecodeError::LimitExceeded)
}

/// Appends what bincode writes to a `Vec` directly: through `std::io::Write` each varint
/// went through an `io::Result` and the writer's bookkeeping (a tenth of a write's encoding).
struct Append<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Append<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends one frame holding `value` to `buf`, without allocating when `buf` has room.
pub fn encode_into<T: Serialize>(
    buf: &mut Vec<u8>,
    value: &T,
    frame_size_max: usize,
) -> Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN_SIZE]);
    if let Err(e) = bincode::serde::encode_into_writer(value, Append(buf), bincode_config()) {
        buf.truncate(start);
        return Err(Error::Encode { reason: e.to_string() });
    }
    let len = buf.len() - start - FRAME_LEN_SIZE;
    if len > frame_size_max {
        buf.truncate(start);
        return Err(Error::FrameTooLarge { len, max: frame_size_max });
    }
    buf[start..start + FRAME_LEN_SIZE].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes one value without a length prefix (for values stored elsewhere than a stream,
/// such as log entries).
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| Error::Encode { reason: e.to_string() })
}

/// The bytes [`encode_value`] would produce for `value`, counted without producing them: a
/// buffer for a large value (a snapshot image) is then allocated once, at its size, instead
/// of doubled and copied as it fills.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode_config())
        .map_err(|e| Error::Encode { reason: e.to_string() })?;
    Ok(size.bytes_written)
}

/// Writes one value, without a length prefix, to `out` as it is encoded (a value too large to
/// hold twice: a snapshot image going to its file). An error from `out` is returned as
/// [`Error::Encode`] naming it.
pub fn encode_value_to_writer<T: Serialize>(value: &T, out: &mut dyn Write) -> Result<()> {
    bincode::serde::encode_into_std_write(value, &mut &mut *out, bincode_config())
        .map(drop)
        .map_err(|e| Error::Encode { reason: e.to_string() })
}

/// Appends one value, without a length prefix, to `out`.
pub fn encode_value_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    bincode::serde::encode_into_writer(value, Append(out), bincode_config())
        .map_err(|e| Error::Encode { reason: e.to_string() })
}

/// Decodes exactly one value from a frame's payload.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decode_payload_borrowed(payload)
}

/// Decodes exactly one value from a frame's payload, its `&[u8]` fields borrowed from it (a
/// request whose key and value are checked and passed on without a copy).
pub fn decode_payload_borrowed<'de, T: Deserialize<'de>>(payload: &'de [u8]) -> Result<T> {
    let (value, used) =
        decode_limited(payload).map_err(|e| Error::Malformed { reason: e.to_string() })?;
    if used != payload.len() {
        return Err(Error::TrailingBytes { extra: payload.len() - used });
    }
    Ok(value)
}

/// Decodes a value from the start of `payload`, ignoring what follows it: the fixed prefix of
/// a message whose rest may be of another version (a handshake's protocol versions).
pub fn decode_prefix<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decode_limited(payload)
        .map(|(value, _)| value)
        .map_err(|e| Error::Malformed { reason: e.to_string() })
}

/// Encodes frames into a reusable buffer that is written out to a socket, possibly in parts.
#[derive(Debug)]
pub struct FrameEncoder {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written out.
    written: usize,
    frame_size_max: usize,
}

impl FrameEncoder {
    /// An empty encoder producing frames of at most `frame_size_max` payload bytes.
    pub fn new(frame_size_max: usize) -> FrameEncoder {
        assert!(frame_size_max <= FRAME_SIZE_MAX_CEILING, "frame_size_max above the ceiling");
        FrameEncoder { buf: Vec::new(), written: 0, frame_size_max }
    }

    /// Appends one frame.
    pub fn encode<T: Serialize>(&mut self, value: &T) -> Result<()> {
        encode_into(&mut self.buf, value, self.frame_size_max)
    }

    /// The bytes waiting to be written, in order.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// Bytes waiting to be written.
    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Bytes of memory the buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the buffer's memory back when nothing is pending (an idle connection).
    pub fn release_if_idle(&mut self) {
        if self.pending_len() == 0 && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.written = 0;
        }
    }

    /// Marks `n` pending bytes as written. The buffer's memory is kept for the next frames.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.pending_len(), "consumed {n} of {} pending bytes", self.pending_len());
        self.written += n;
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        }
    }
}

/// Reassembles frames from whatever a non-blocking read returned.
///
/// Invariant: `buf[start..end]` holds bytes received and not yet taken out as frames; the
/// whole of `buf` is initialized, so reads go straight into `buf[end..]` without zeroing.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frame_size_max: usize,
}

impl FrameDecoder {
    /// An empty decoder accepting payloads of at most `frame_size_max` bytes.
    pub fn new(frame_size_max: usize) -> FrameDecoder {
        assert!(frame_size_max <= FRAME_SIZE_MAX_CEILING, "frame_size_max above the ceiling");
        FrameDecoder { buf: Vec::new(), start: 0, end: 0, frame_size_max }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `reader` into the decoder's own buffer, without an intermediate copy
    /// or zeroing. Returns what `read` returned: 0 at end of stream; `WouldBlock` when a
    /// non-blocking socket has nothing.
    pub fn read_from(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        self.read_from_short(reader).map(|(n, _)| n)
    }

    /// [`FrameDecoder::read_from`], and whether the read was short: it returned less than the
    /// room it was given (on a plain stream socket, everything the kernel held was taken, and
    /// another read would find nothing; see epoll(7)).
    pub fn read_from_short(&mut self, reader: &mut impl Read) -> io::Result<(usize, bool)> {
        self.reserve(READ_CHUNK_SIZE);
        let room = self.buf.len() - self.end;
        let n = reader.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok((n, n < room))
    }

    /// Bytes received and not yet taken out as frames.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// The bytes received and not yet taken as frames.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Bytes of memory the buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the buffer's memory back when it holds no received bytes (an idle connection).
    pub fn release_if_idle(&mut self) {
        if self.start == self.end && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Changes the largest payload accepted from now on (a connection allowed larger frames
    /// once it has identified itself).
    pub fn set_frame_size_max(&mut self, frame_size_max: usize) {
        assert!(frame_size_max <= FRAME_SIZE_MAX_CEILING, "frame_size_max above the ceiling");
        self.frame_size_max = frame_size_max;
    }

    /// The largest payload accepted.
    pub fn frame_size_max(&self) -> usize {
        self.frame_size_max
    }

    /// Whether [`FrameDecoder::next_payload`] has something to return: a whole frame, or a
    /// length prefix above the limit (an error).
    pub fn has_frame(&self) -> bool {
        let available = &self.buf[self.start..self.end];
        let Some(prefix) = available.get(..FRAME_LEN_SIZE) else {
            return false;
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        len > self.frame_size_max || available.len() >= FRAME_LEN_SIZE + len
    }

    /// Takes out the next complete frame's payload, if one has fully arrived. A declared
    /// length above `frame_size_max` is an error, checked before anything is allocated for it.
    pub fn next_payload(&mut self) -> Result<Option<&[u8]>> {
        let available = &self.buf[self.start..self.end];
        if available.len() < FRAME_LEN_SIZE {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_LEN_SIZE];
        prefix.copy_from_slice(&available[..FRAME_LEN_SIZE]);
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.frame_size_max {
            return Err(Error::FrameTooLarge { len, max: self.frame_size_max });
        }
        if available.len() < FRAME_LEN_SIZE + len {
            return Ok(None);
        }
        let begin = self.start + FRAME_LEN_SIZE;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    /// Takes out and decodes the next complete frame, if one has fully arrived.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.next_payload()? {
            Some(payload) => decode_payload(payload).map(Some),
            None => Ok(None),
        }
    }

    /// Makes room for `additional` bytes after `end`: first by moving unconsumed bytes to the
    /// front, then by growing, so the buffer stays the size of one frame plus one read. An
    /// idle buffer grown large (a big frame went through) is given back.
    fn reserve(&mut self, additional: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK_SIZE {
                self.buf = Vec::new();
            }
        }
        if self.buf.len() - self.end >= additional {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < additional {
            self.buf.resize(self.end + additional, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Put { key: String, value: Vec<u8> },
        Batch(Vec<(u64, bool)>),
        Empty,
    }

    /// A seedable generator for the property tests (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn random_msg(rng: &mut Rng) -> Msg {
        match rng.below(4) {
            0 => Msg::Ping(rng.next()),
            1 => Msg::Put {
                key: format!("k{}", rng.below(1000)),
                value: (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            },
            2 => Msg::Batch((0..rng.below(20)).map(|_| (rng.next(), rng.below(2) == 1)).collect()),
            _ => Msg::Empty,
        }
    }

    fn stream_of(msgs: &[Msg]) -> Vec<u8> {
        let mut buf = Vec::new();
        for m in msgs {
            encode_into(&mut buf, m, FRAME_SIZE_MAX_DEFAULT).unwrap();
        }
        buf
    }

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = decoder.next_frame::<Msg>().unwrap() {
            out.push(m);
        }
        out
    }

    /// Appended straight into a `Vec`, a value is the bytes bincode's own encoder makes.
    #[test]
    fn values_appended_to_a_vec_are_bincodes_bytes() {
        let value = (u64::MAX, 300u32, "key", vec![7u8; 300], Some(-5i64), [1u16, 2, 3]);
        let reference = bincode::serde::encode_to_vec(value.clone(), bincode_config()).unwrap();
        let mut out = vec![9];
        encode_value_into(&value, &mut out).unwrap();
        assert_eq!((out[0], &out[1..]), (9, &reference[..]), "appended after what was there");
        let mut framed = Vec::new();
        encode_into(&mut framed, &value, FRAME_SIZE_MAX_DEFAULT).unwrap();
        assert_eq!(&framed[FRAME_LEN_SIZE..], &reference[..]);
        assert_eq!(encode_value(&value).unwrap(), reference);
    }

    #[test]
    fn every_split_point_yields_the_same_messages() {
        let msgs = vec![
            Msg::Ping(1),
            Msg::Put { key: "a".into(), value: vec![1, 2, 3] },
            Msg::Empty,
            Msg::Batch(vec![(9, true), (10, false)]),
        ];
        let wire = stream_of(&msgs);
        for split in 0..=wire.len() {
            let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX_DEFAULT);
            decoder.feed(&wire[..split]);
            let mut got = decode_all(&mut decoder);
            decoder.feed(&wire[split..]);
            got.extend(decode_all(&mut decoder));
            assert_eq!(got, msgs, "split at {split}");
            assert_eq!(decoder.buffered_len(), 0);
        }
    }

    #[test]
    fn seeded_random_streams_in_random_chunks_round_trip() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed);
            let msgs: Vec<Msg> = (0..rng.below(50)).map(|_| random_msg(&mut rng)).collect();
            let wire = stream_of(&msgs);
            let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX_DEFAULT);
            let mut got = Vec::new();
            let mut pos = 0;
            while pos < wire.len() {
                let n = (rng.below(100) as usize + 1).min(wire.len() - pos);
                decoder.feed(&wire[pos..pos + n]);
                pos += n;
                got.extend(decode_all(&mut decoder));
            }
            assert_eq!(got, msgs, "seed {seed}");
        }
    }

    #[test]
    fn seeded_garbage_never_panics() {
        for seed in 1..=2000u64 {
            let mut rng = Rng(seed);
            let len = rng.below(200) as usize;
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the cases get a plausible length prefix so the payload decoder runs.
            if seed % 2 == 0 && garbage.len() >= 4 {
                let payload = (garbage.len() - 4) as u32;
                garbage[..4].copy_from_slice(&payload.to_le_bytes());
            }
            let mut decoder = FrameDecoder::new(1024);
            decoder.feed(&garbage);
            while let Ok(Some(_)) = decoder.next_frame::<Msg>() {}
        }
    }

    #[test]
    fn declared_length_above_the_limit_is_rejected_before_allocating() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.feed(&u32::MAX.to_le_bytes());
        match decoder.next_frame::<Msg>() {
            Err(Error::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (u32::MAX as usize, 1024))
            }
            other => panic!("{other:?}"),
        }
        assert!(decoder.buf.capacity() < 1024, "nothing allocated for the declared length");
    }

    #[test]
    fn encoder_refuses_values_above_the_limit_and_keeps_the_buffer_clean() {
        let mut encoder = FrameEncoder::new(100);
        encoder.encode(&Msg::Ping(1)).unwrap();
        let before = encoder.pending().to_vec();
        let big = Msg::Put { key: "k".into(), value: vec![0; 200] };
        assert!(matches!(encoder.encode(&big), Err(Error::FrameTooLarge { max: 100, .. })));
        assert_eq!(encoder.pending(), &before[..]);
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        // Unknown enum tag.
        let mut buf = Vec::new();
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.push(9);
        let mut decoder = FrameDecoder::new(1024);
        decoder.feed(&buf);
        assert!(matches!(decoder.next_frame::<Msg>(), Err(Error::Malformed { .. })));
        // Truncated structure: a Put whose value claims more bytes than the frame has.
        let mut payload = Vec::new();
        encode_into(&mut payload, &Msg::Put { key: "k".into(), value: vec![7; 10] }, 1024).unwrap();
        let truncated = &payload[FRAME_LEN_SIZE..payload.len() - 3];
        assert!(matches!(decode_payload::<Msg>(truncated), Err(Error::Malformed { .. })));
        // A huge claimed element count in a short payload.
        let mut lying = vec![2u8]; // Batch
        lying.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x10]);
        assert!(decode_payload::<Msg>(&lying).is_err());
        // Trailing bytes.
        let mut extra = payload[FRAME_LEN_SIZE..].to_vec();
        extra.push(0);
        assert!(matches!(decode_payload::<Msg>(&extra), Err(Error::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn encoder_reuses_its_buffer_and_supports_partial_writes() {
        let mut encoder = FrameEncoder::new(FRAME_SIZE_MAX_DEFAULT);
        for _ in 0..3 {
            encoder.encode(&Msg::Ping(5)).unwrap();
        }
        let total = encoder.pending_len();
        encoder.consume(2);
        assert_eq!(encoder.pending_len(), total - 2);
        encoder.consume(total - 2);
        assert_eq!(encoder.pending_len(), 0);
        let capacity = encoder.buf.capacity();
        for _ in 0..3 {
            encoder.encode(&Msg::Ping(5)).unwrap();
        }
        assert_eq!(encoder.buf.capacity(), capacity, "steady state: no new allocation");
    }

    #[test]
    fn encoded_len_counts_what_encode_value_produces() {
        let values: Vec<(String, Vec<u64>)> = vec![
            (String::new(), vec![]),
            ("x".repeat(300), vec![0, 1, 250, 251, 65_536, u64::MAX]),
        ];
        for value in &values {
            assert_eq!(encoded_len(value).unwrap(), encode_value(value).unwrap().len());
        }
        assert_eq!(encoded_len(&values).unwrap(), encode_value(&values).unwrap().len());
    }

    #[test]
    fn read_from_reads_into_the_decoder() {
        let msgs = vec![Msg::Ping(3), Msg::Empty];
        let wire = stream_of(&msgs);
        let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX_DEFAULT);
        let mut reader = &wire[..];
        let n = decoder.read_from(&mut reader).unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(decode_all(&mut decoder), msgs);
        assert_eq!(decoder.read_from(&mut reader).unwrap(), 0, "end of stream");
    }
}
