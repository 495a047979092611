//! The wire protocol: messages, their postcard encoding, and length-prefixed frames.
//!
//! `proto/PROTOCOL.md` is the normative description; this module is the only code that encodes
//! or decodes frames.

use serde::{Deserialize, Serialize};

use crate::id::{DocId, NodeName};
use crate::vclock::VectorClock;

/// The protocol version this build speaks. Version 2 added signed authorship (the `Author`
/// message, `DocChanges::signed`, the `Unauthorized` and `Forbidden` close codes); a node of
/// version 2 speaks only version 2, since a version-1 peer's changes carry no authorship.
pub const PROTOCOL_VERSION: u16 = 2;
/// First bytes of every Hello.
pub const MAGIC: [u8; 4] = *b"ESYN";
/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Smallest frame limit a peer may announce, and the limit used before the peer's Hello is
/// known. Large enough for any Summary entry (a document id and a clock of
/// [`crate::vclock::CLOCK_ACTORS_MAX`] actors).
pub const FRAME_BYTES_MIN: u32 = 16 * 1024;
/// Largest frame limit a node may use.
pub const FRAME_BYTES_LIMIT: u32 = 16 * 1024 * 1024;
/// Room a Changes frame needs beyond its change bytes for one document's header (tag, batch
/// number, doc id, counts and length prefixes).
pub const CHANGES_OVERHEAD_BYTES: u32 = 512;
/// Longest close reason.
pub const CLOSE_REASON_BYTES_MAX: usize = 256;

/// Every message of the protocol. Variant order is part of the encoding: never reorder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message in each direction.
    Hello(Hello),
    /// Some of the sender's document clocks; `last` ends the summary.
    Summary(Summary),
    /// A batch of changes for one or more documents.
    Changes(Changes),
    /// The receiver persisted a batch; its durable clocks for the batch's documents.
    Ack(Ack),
    /// The sender ends the session.
    Close(Close),
    /// An authorship statement the sender's later `Changes` refer to by its number (version 2).
    Author(AuthorStatement),
    /// Another message (`Summary`, `Changes`, `Ack` or `Snapshots`), its payload deflated (RFC
    /// 1951). Sent only to a peer whose Hello has [`CAP_DEFLATE`]; inflated at most to the
    /// receiver's frame limit.
    Deflated(DeflatedPayload),
    /// Which run of its store the sender is: sent once, right after receiving a Hello with
    /// [`CAP_INCARNATION`], by a sender whose own Hello had it too; never otherwise.
    Incarnation(Incarnation),
    /// Which actor slots of a certificate the receiver knows spent: sent at most once per
    /// session, by a node whose store does not know its own
    /// ([`crate::Config::settle_from_peers`]), to a peer whose Hello has [`CAP_SLOTS`].
    SlotQuery(SlotQuery),
    /// The answer to a [`Message::SlotQuery`]: the statement of the highest slot the sender
    /// keeps of that slot space, if it keeps one of the asking node's.
    SlotAnswer(SlotAnswer),
    /// A batch of documents the receiver holds nothing of, each in its saved form rather than
    /// change by change; numbered, persisted and acknowledged as a `Changes` batch is. Sent only
    /// to a peer whose Hello has [`CAP_SNAPSHOT`].
    Snapshots(Snapshots),
}

/// A batch of snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshots {
    /// Sender's batch number (shared with `Changes` batches), echoed in the Ack.
    pub batch: u64,
    /// Per document.
    pub docs: Vec<DocSnapshot>,
}

/// One document in its saved form: an Automerge document chunk holding every change of the
/// document the sender holds, and the signatures a `Changes` section of those changes would
/// carry.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DocSnapshot {
    /// Document.
    pub doc: DocId,
    /// The document chunk (Automerge's `save`).
    #[serde(with = "serde_bytes")]
    pub saved: Vec<u8>,
    /// Signatures; [`Signed::change`] numbers the document's changes ordered by actor, then
    /// sequence number.
    pub signed: Vec<Signed>,
}

impl std::fmt::Debug for DocSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DocSnapshot({}, {} bytes, {} signed)",
            self.doc,
            self.saved.len(),
            self.signed.len()
        )
    }
}

/// Asks for the highest actor slot of `space` the receiver knows spent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotQuery {
    /// The slot space ([`crate::trust::Signer::slot_space`]) of the asking node.
    pub space: [u8; 32],
}

/// The answer to a [`SlotQuery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotAnswer {
    /// The authorship statement of the highest slot of the asked space the sender keeps;
    /// `None` when it keeps none (or none of the asking node's).
    pub statement: Option<AuthorStatement>,
}

/// Hello capability bit: the sender accepts [`Message::Deflated`].
pub const CAP_DEFLATE: u64 = 1;
/// Hello capability bit: the sender sends [`Message::Incarnation`] once it has the peer's
/// Hello, if that Hello has this bit too, and expects one back before the peer's `Author`,
/// `Changes` and `Ack` messages.
pub const CAP_INCARNATION: u64 = 2;
/// Hello capability bit: the sender answers [`Message::SlotQuery`].
pub const CAP_SLOTS: u64 = 4;
/// Hello capability bit: the sender accepts [`Message::Snapshots`].
pub const CAP_SNAPSHOT: u64 = 8;

/// Which run of its store a node is: a store's incarnation rises, durably, on every open, and
/// every open draws a new boot id. A peer that sees one store id offer an incarnation below
/// one it accepted before, or the same incarnation with another boot id, is talking to a
/// second node run from a copy of that store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// The store's incarnation ([`crate::store::NodeMeta::incarnation`]).
    pub incarnation: u64,
    /// Random id of this open.
    pub boot: [u8; 16],
}

/// Smallest payload worth deflating, bytes.
pub const DEFLATE_MIN_BYTES: usize = 512;

/// A deflated message payload.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct DeflatedPayload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for DeflatedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeflatedPayload({} bytes)", self.0.len())
    }
}

/// An authorship statement ([`crate::trust`]), numbered by its order among the session's
/// `Author` messages from this sender (the first is 0).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorStatement(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for AuthorStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthorStatement({} bytes)", self.0.len())
    }
}

/// An author's signature of one change of a [`DocChanges`]: the last change of its actor in
/// that `DocChanges`. Every other change of the actor there is proven by being one of its
/// ancestors.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    /// Index of the change in `DocChanges::changes` (in a [`DocSnapshot`], in the document's
    /// changes ordered by actor, then sequence number).
    pub change: u32,
    /// The number of the sender's `Author` message that proves the change's author.
    pub author: u32,
    /// The author's signature of the change's hash.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signed(change {}, author {})", self.change, self.author)
    }
}

/// The handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// Lowest protocol version the sender speaks.
    pub version_min: u16,
    /// Highest protocol version the sender speaks.
    pub version_max: u16,
    /// The sender's node name; must equal the name its certificate proved.
    pub node: NodeName,
    /// The sender's store id (see [`crate::store::NodeMeta::store_id`]).
    pub store_id: [u8; 16],
    /// Capability bits; none are defined in version 1 and unknown bits are ignored.
    pub capabilities: u64,
    /// Largest frame the sender accepts.
    pub frame_bytes_max: u32,
}

/// One document's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocClock {
    /// Document.
    pub doc: DocId,
    /// The sender's durable clock for it.
    pub clock: VectorClock,
}

/// Part of the sender's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Documents with changes the receiver has not acknowledged, with the sender's clocks.
    pub entries: Vec<DocClock>,
    /// True on the summary's final frame.
    pub last: bool,
}

/// Changes of one document, in an order in which each change's dependencies come first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocChanges {
    /// Document.
    pub doc: DocId,
    /// Encoded Automerge changes.
    pub changes: Vec<ChangeBytes>,
    /// Signatures: one per actor of `changes` but the genesis actor (version 2).
    pub signed: Vec<Signed>,
}

/// One encoded Automerge change.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for ChangeBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChangeBytes({} bytes)", self.0.len())
    }
}

/// A batch of changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Sender's batch number, echoed in the Ack.
    pub batch: u64,
    /// Per document.
    pub docs: Vec<DocChanges>,
}

/// Acknowledgement of a persisted batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The batch acknowledged.
    pub batch: u64,
    /// The receiver's durable clock for each document of the batch.
    pub clocks: Vec<DocClock>,
    /// True on the acknowledgement's final frame (a large one is split across frames).
    pub last: bool,
}

/// Why a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseCode {
    /// Orderly shutdown.
    Shutdown,
    /// No common protocol version.
    VersionMismatch,
    /// A malformed frame or message.
    Malformed,
    /// A message not allowed in the current state.
    Unexpected,
    /// The Hello names a different node than the transport authenticated.
    IdentityMismatch,
    /// A frame larger than the limit.
    FrameTooLarge,
    /// A change that fails to parse, its hash check, or a bound.
    InvalidChange,
    /// Two different changes with the same (actor, seq).
    Equivocation,
    /// A handshake or acknowledgement took too long.
    Timeout,
    /// The receiver could not persist.
    StoreFailed,
    /// The two nodes' limits are incompatible.
    LimitsIncompatible,
    /// The receiver's buffer of changes waiting for dependencies overflowed.
    Overloaded,
    /// A change whose authorship is not proven: no valid statement, signature or derivation
    /// (version 2).
    Unauthorized,
    /// A change its author's rules do not let it write, or a document the receiver may not
    /// hold (version 2).
    Forbidden,
    /// The peer runs from a copy of a store another node runs from ([`Incarnation`]); sent
    /// only to a peer whose Hello has [`CAP_INCARNATION`].
    Cloned,
}

impl CloseCode {
    /// The stable name of the code, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::VersionMismatch => "version-mismatch",
            CloseCode::Malformed => "malformed",
            CloseCode::Unexpected => "unexpected",
            CloseCode::IdentityMismatch => "identity-mismatch",
            CloseCode::FrameTooLarge => "frame-too-large",
            CloseCode::InvalidChange => "invalid-change",
            CloseCode::Equivocation => "equivocation",
            CloseCode::Timeout => "timeout",
            CloseCode::StoreFailed => "store-failed",
            CloseCode::LimitsIncompatible => "limits-incompatible",
            CloseCode::Overloaded => "overloaded",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::Cloned => "cloned",
        }
    }
}

/// The last message of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Close {
    /// Machine-readable reason.
    pub code: CloseCode,
    /// Human-readable detail, at most [`CLOSE_REASON_BYTES_MAX`] bytes.
    pub reason: String,
}

/// A frame or message that could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A close reason longer than allowed.
    #[error("close reason longer than {CLOSE_REASON_BYTES_MAX} bytes")]
    ReasonTooLong,
}

/// The longest prefix of `s` that is at most `max_bytes` long and ends on a character
/// boundary: reasons from peers may hold multi-byte characters, and cutting one in half would
/// panic (`String::truncate`) or produce invalid UTF-8.
pub fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Message {
    /// Encodes into one frame: a 4-byte big-endian length, then the postcard payload.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = vec![0u8; FRAME_HEADER_BYTES];
        // Serializing these types into a Vec cannot fail.
        let out = postcard::to_extend(self, std::mem::take(&mut out)).expect("message encodes");
        let mut out = out;
        let len = (out.len() - FRAME_HEADER_BYTES) as u32;
        out[..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// The frame of this message, deflated when that is smaller and the message may be
    /// ([`Message::Deflated`]: a `Summary`, `Changes` or `Ack` of at least
    /// [`DEFLATE_MIN_BYTES`]); else [`Message::to_frame`].
    pub fn to_frame_deflated(&self) -> Vec<u8> {
        let plain = self.to_frame();
        let payload = &plain[FRAME_HEADER_BYTES..];
        if !matches!(
            self,
            Message::Summary(_) | Message::Changes(_) | Message::Ack(_) | Message::Snapshots(_)
        ) || payload.len() < DEFLATE_MIN_BYTES
        {
            return plain;
        }
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing into a Vec cannot fail.
        let packed = z
            .write_all(payload)
            .and_then(|()| z.finish())
            .expect("deflate into memory");
        let framed = Message::Deflated(DeflatedPayload(packed)).to_frame();
        if framed.len() < plain.len() {
            framed
        } else {
            plain
        }
    }

    /// Decodes one payload (without the length prefix), inflating a [`Message::Deflated`] to
    /// at most `max` bytes: what it holds must be a `Summary`, `Changes`, `Ack` or `Snapshots`.
    pub fn from_payload_inflated(payload: &[u8], max: u32) -> Result<Message, DecodeError> {
        let d = match Message::from_payload(payload)? {
            Message::Deflated(d) => d,
            plain => return Ok(plain),
        };
        use std::io::Read;
        let mut inner = Vec::new();
        flate2::bufread::DeflateDecoder::new(&d.0[..])
            .take(u64::from(max) + 1)
            .read_to_end(&mut inner)
            .map_err(|e| DecodeError::Malformed(format!("deflated message: {e}")))?;
        if inner.len() > max as usize {
            return Err(DecodeError::FrameTooLarge {
                len: u32::try_from(inner.len()).unwrap_or(u32::MAX),
                max,
            });
        }
        match Message::from_payload(&inner)? {
            m @ (Message::Summary(_)
            | Message::Changes(_)
            | Message::Ack(_)
            | Message::Snapshots(_)) => Ok(m),
            _ => Err(DecodeError::Malformed(
                "a deflated message must be a Summary, Changes, Ack or Snapshots".into(),
            )),
        }
    }

    /// Decodes one payload (without the length prefix).
    pub fn from_payload(payload: &[u8]) -> Result<Message, DecodeError> {
        let (msg, rest): (Message, &[u8]) = postcard::take_from_bytes(payload)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed(format!(
                "{} bytes after the message",
                rest.len()
            )));
        }
        if let Message::Close(c) = &msg {
            if c.reason.len() > CLOSE_REASON_BYTES_MAX {
                return Err(DecodeError::ReasonTooLong);
            }
        }
        Ok(msg)
    }
}

/// Splits a byte stream into messages, refusing any frame above `max` before reading it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: u32,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max` payload bytes.
    pub fn new(max: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max,
            failed: false,
        }
    }

    /// Appends received bytes. At most one frame (plus a header) is ever buffered beyond what
    /// [`FrameDecoder::next_message`] has consumed, because the caller drains after each push.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `None` when more bytes are needed. After an error the
    /// decoder stays failed: the stream cannot be resynchronised.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Malformed("stream already failed".into()));
        }
        if self.buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..FRAME_HEADER_BYTES].try_into().expect("4 bytes"));
        if len > self.max {
            self.failed = true;
            self.buf = Vec::new();
            return Err(DecodeError::FrameTooLarge { len, max: self.max });
        }
        let end = FRAME_HEADER_BYTES + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let result = Message::from_payload_inflated(&self.buf[FRAME_HEADER_BYTES..end], self.max);
        self.buf.drain(..end);
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        result.map(Some)
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::Actor;
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            magic: MAGIC,
            version_min: 1,
            version_max: 1,
            node: NodeName::new("gw-1").unwrap(),
            store_id: [7; 16],
            capabilities: 0,
            frame_bytes_max: FRAME_BYTES_MIN,
        })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let clock = proptest::collection::btree_map(0u8..4, 1u64..100, 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(a, s)| (Actor([a; 16]), s))
                .collect::<VectorClock>()
        });
        let doc = "[a-z]{1,8}(/[a-z0-9]{1,4}){0,2}".prop_map(|s| DocId::new(s).unwrap());
        let entry = (doc.clone(), clock).prop_map(|(doc, clock)| DocClock { doc, clock });
        prop_oneof![
            Just(hello()),
            (
                proptest::collection::vec(entry.clone(), 0..4),
                any::<bool>()
            )
                .prop_map(|(entries, last)| Message::Summary(Summary { entries, last })),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (doc, proptest::collection::vec(any::<Vec<u8>>(), 0..3)),
                    0..3
                )
            )
                .prop_map(|(batch, docs)| Message::Changes(Changes {
                    batch,
                    docs: docs
                        .into_iter()
                        .map(|(doc, cs)| DocChanges {
                            doc,
                            signed: (0..cs.len() as u32)
                                .map(|i| Signed {
                                    change: i,
                                    author: i / 2,
                                    sig: vec![i as u8; 64],
                                })
                                .collect(),
                            changes: cs.into_iter().map(ChangeBytes).collect(),
                        })
                        .collect()
                })),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| Message::Author(AuthorStatement(b))),
            (any::<u64>(), proptest::collection::vec(entry, 0..4)).prop_map(|(batch, clocks)| {
                Message::Ack(Ack {
                    batch,
                    clocks,
                    last: true,
                })
            }),
            "[a-z ]{0,40}".prop_map(|reason| Message::Close(Close {
                code: CloseCode::Timeout,
                reason
            })),
            (any::<u64>(), any::<[u8; 16]>()).prop_map(|(incarnation, boot)| {
                Message::Incarnation(Incarnation { incarnation, boot })
            }),
            any::<[u8; 32]>().prop_map(|space| Message::SlotQuery(SlotQuery { space })),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|b| {
                Message::SlotAnswer(SlotAnswer {
                    statement: b.map(AuthorStatement),
                })
            }),
        ]
    }

    proptest! {
        // Every message survives encode/decode, even when the stream arrives in arbitrary pieces.
        #[test]
        fn frames_round_trip(msgs in proptest::collection::vec(arb_message(), 1..6), cut in 1usize..64) {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| m.to_frame()).collect();
            let mut dec = FrameDecoder::new(FRAME_BYTES_LIMIT);
            let mut out = Vec::new();
            for piece in stream.chunks(cut) {
                dec.push(piece);
                while let Some(m) = dec.next_message().unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, msgs);
            prop_assert_eq!(dec.buffered(), 0);
        }

        // Arbitrary bytes never panic the decoder; they decode or fail cleanly.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut dec = FrameDecoder::new(FRAME_BYTES_MIN);
            dec.push(&bytes);
            for _ in 0..8 {
                match dec.next_message() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }

    // An oversized length prefix is refused before its payload is buffered or allocated.
    #[test]
    fn oversized_frame_rejected_early() {
        let mut dec = FrameDecoder::new(FRAME_BYTES_MIN);
        dec.push(&(FRAME_BYTES_MIN + 1).to_be_bytes());
        assert_eq!(
            dec.next_message(),
            Err(DecodeError::FrameTooLarge {
                len: FRAME_BYTES_MIN + 1,
                max: FRAME_BYTES_MIN
            })
        );
        dec.push(&[0; 100]);
        assert_eq!(dec.buffered(), 0, "a failed stream buffers nothing more");
    }

    // Structured garbage inside a valid frame fails as Malformed, and invalid names are refused.
    #[test]
    fn malformed_payloads_rejected() {
        assert!(matches!(
            Message::from_payload(&[99]),
            Err(DecodeError::Malformed(_))
        ));
        let mut frame = hello().to_frame();
        // Replace the node name "gw-1" with "gw/1": the validated NodeName refuses it.
        let pos = frame.windows(4).position(|w| w == b"gw-1").unwrap();
        frame[pos + 2] = b'/';
        let mut dec = FrameDecoder::new(FRAME_BYTES_MIN);
        dec.push(&frame);
        assert!(matches!(dec.next_message(), Err(DecodeError::Malformed(_))));
        let mut trailing = hello().to_frame();
        trailing.push(0);
        assert!(matches!(
            Message::from_payload(&trailing[4..]),
            Err(DecodeError::Malformed(_))
        ));
        let long = Message::Close(Close {
            code: CloseCode::Shutdown,
            reason: "x".repeat(300),
        })
        .to_frame();
        assert_eq!(
            Message::from_payload(&long[4..]),
            Err(DecodeError::ReasonTooLong)
        );
    }

    // Cutting a reason never splits a character, whatever the limit.
    #[test]
    fn truncation_respects_character_boundaries() {
        let euros = "€".repeat(100);
        for max in 0..=300 {
            let t = truncate_utf8(&euros, max);
            assert!(t.len() <= max && max - t.len() < 3, "{max}: {}", t.len());
            assert!(euros.starts_with(t));
        }
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("abc", 9), "abc");
    }

    // The Hello layout is the compatibility anchor: its first bytes are the variant tag and magic.
    #[test]
    fn hello_layout_is_stable() {
        let f = hello().to_frame();
        assert_eq!(f[4], 0, "Hello is variant 0");
        assert_eq!(&f[5..9], b"ESYN");
        assert_eq!(&f[9..11], &[1, 1], "version_min and version_max as varints");
    }

    fn big_changes() -> Message {
        Message::Changes(Changes {
            batch: 7,
            docs: vec![DocChanges {
                doc: DocId::new("site-a/t").unwrap(),
                changes: (0..40)
                    .map(|i| {
                        ChangeBytes(
                            format!("change {i} of a sensor reading, repeated").into_bytes(),
                        )
                    })
                    .collect(),
                signed: vec![],
            }],
        })
    }

    fn decode_all(frames: &[u8], max: u32) -> Result<Vec<Message>, DecodeError> {
        let mut d = FrameDecoder::new(max);
        d.push(frames);
        let mut out = Vec::new();
        while let Some(m) = d.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    // A large Changes frame goes deflated, smaller, and decodes to the same message; small ones
    // and every other kind stay as they are.
    #[test]
    fn deflated_frames_round_trip() {
        let m = big_changes();
        let plain = m.to_frame();
        let packed = m.to_frame_deflated();
        assert!(
            packed.len() < plain.len() / 2,
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(packed[FRAME_HEADER_BYTES], 6, "variant 6: Deflated");
        assert_eq!(decode_all(&packed, FRAME_BYTES_MIN).unwrap(), vec![m]);
        let h = hello();
        assert_eq!(h.to_frame_deflated(), h.to_frame());
        let small = Message::Ack(Ack {
            batch: 1,
            clocks: vec![],
            last: true,
        });
        assert_eq!(small.to_frame_deflated(), small.to_frame());
    }

    // Inflation stops at the frame limit: a small frame that inflates past it is refused
    // without being inflated whole; a deflated Hello or a deflated Deflated is refused.
    #[test]
    fn deflated_frames_are_bounded_and_hold_only_data() {
        use std::io::Write;
        let deflate = |payload: &[u8]| {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(payload).unwrap();
            Message::Deflated(DeflatedPayload(z.finish().unwrap())).to_frame()
        };
        // 1 MiB of zeros inside a frame of about a kilobyte.
        let bomb = deflate(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert!(matches!(
            decode_all(&bomb, FRAME_BYTES_MIN),
            Err(DecodeError::FrameTooLarge { max, .. }) if max == FRAME_BYTES_MIN
        ));
        let hello = hello().to_frame();
        assert!(matches!(
            decode_all(&deflate(&hello[FRAME_HEADER_BYTES..]), FRAME_BYTES_MIN),
            Err(DecodeError::Malformed(_))
        ));
        let nested = big_changes().to_frame_deflated();
        assert!(matches!(
            decode_all(&deflate(&nested[FRAME_HEADER_BYTES..]), FRAME_BYTES_MIN),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(
                &Message::Deflated(DeflatedPayload(vec![1, 2, 3])).to_frame(),
                FRAME_BYTES_MIN
            ),
            Err(DecodeError::Malformed(_))
        ));
    }
}
