//! Decoding entries as slices of their frame.
//!
//! An entry's `data` and `context` (and a message's `context`) are [`Bytes`]. Decoded the
//! usual way, each is copied out of the received frame into an allocation of its own: 64
//! allocations for an append of 64 entries. Decoded inside [`decode_sharing`], with a format
//! that lends its input (bincode from a slice does), each is a slice of the one frame instead:
//! a reference counted, no bytes copied. The encoding is the same either way (a byte string).
//!
//! The frame is named for the decoding through a thread-local, since serde gives a
//! `Deserialize` no other way to receive it; outside [`decode_sharing`], or for bytes that do
//! not lie inside the frame, the field is copied as usual. A `Bytes` field of another type
//! decodes the same way with `#[serde(with = "raft::sharing")]`.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;

thread_local! {
    /// The frame being decoded by [`decode_sharing`] on this thread.
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on `frame`'s bytes; the [`Bytes`] fields of this crate's types that it
/// decodes borrowed from them are slices of `frame` (sharing its allocation) instead of copies.
///
/// A slice keeps the whole frame alive: meant for frames whose payload is mostly entries (an
/// append), not for a long-lived field taken from a large frame.
pub fn decode_sharing<R>(frame: &Bytes, decode: impl FnOnce(&[u8]) -> R) -> R {
    /// Forgets the frame however `decode` ends (a panic in it included).
    struct Forget(Option<Bytes>);
    impl Drop for Forget {
        fn drop(&mut self) {
            let outer = self.0.take();
            FRAME.with(|f| *f.borrow_mut() = outer);
        }
    }
    let outer = FRAME.with(|f| f.borrow_mut().replace(frame.clone()));
    let _forget = Forget(outer);
    decode(frame)
}

/// `bytes` as a slice of the frame being decoded when it lies inside it, else a copy.
fn share(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        return Bytes::new();
    }
    FRAME.with(|f| match &*f.borrow() {
        Some(frame) if contains(frame, bytes) => frame.slice_ref(bytes),
        _ => Bytes::copy_from_slice(bytes),
    })
}

/// Whether `part` lies inside `whole`'s memory.
fn contains(whole: &[u8], part: &[u8]) -> bool {
    let range = whole.as_ptr_range();
    range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
}

/// Serializes a [`Bytes`] field as a byte string (as `bytes`'s own impl does).
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserializes a [`Bytes`] field: a slice of the frame when [`decode_sharing`] names it and
/// the format lends its input, else an allocation of its own.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytes)
}

struct SharedBytes;

impl<'de> Visitor<'de> for SharedBytes {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(v))
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    /// Formats without byte strings (JSON) write them as sequences of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(Bytes::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Message, MessageType};

    fn append(payloads: &[&'static [u8]]) -> Message {
        let entries = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Entry {
                context: Bytes::from_static(b"ctx"),
                ..Entry::new(1, i as u64 + 1, *p)
            })
            .collect();
        let context = Bytes::from_static(b"m");
        Message { msg_type: MessageType::Append, context, entries, ..Message::default() }
    }

    fn frame_of(message: &Message) -> Bytes {
        Bytes::from(codec::encode_value(message).unwrap())
    }

    /// Decoded inside `decode_sharing` from a lent frame, every entry's data and context and
    /// the message's context are slices of the frame; decoded outside it, copies; the message
    /// is the same either way, and encodes as before.
    #[test]
    fn entries_decoded_from_a_shared_frame_are_slices_of_it() {
        let sent = append(&[b"first payload", b"", b"third"]);
        let frame = frame_of(&sent);
        let decoded: Message =
            decode_sharing(&frame, |bytes| codec::decode_payload_borrowed(bytes).unwrap());
        assert_eq!(decoded, sent);
        let fields = decoded
            .entries
            .iter()
            .flat_map(|e| [&e.data, &e.context])
            .chain([&decoded.context])
            .filter(|b| !b.is_empty());
        for field in fields {
            assert!(contains(&frame, field), "{field:?} is a slice of the frame");
        }
        assert_eq!(codec::encode_value(&decoded).unwrap(), frame, "encoded as before");

        let copied: Message = codec::decode_payload_borrowed(&frame).unwrap();
        assert_eq!(copied, sent);
        assert!(!contains(&frame, &copied.entries[0].data), "outside decode_sharing: a copy");
        let json = serde_json::to_string(&sent).unwrap();
        let from_json: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, sent, "a format without byte strings");
    }

    /// Nested, the inner frame is named while it decodes and the outer one again after.
    #[test]
    fn a_nested_decode_restores_the_outer_frame() {
        let outer = frame_of(&append(&[b"outer"]));
        let inner = frame_of(&append(&[b"inner"]));
        decode_sharing(&outer, |o| {
            let m: Message = decode_sharing(&inner, |i| codec::decode_payload_borrowed(i).unwrap());
            assert!(contains(&inner, &m.entries[0].data));
            let m: Message = codec::decode_payload_borrowed(o).unwrap();
            assert!(contains(&outer, &m.entries[0].data));
        });
        FRAME.with(|f| assert!(f.borrow().is_none(), "forgotten after"));
    }
}
