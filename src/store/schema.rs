//! The on-disk layout: every RocksDB column family, its key and value layout, and the value
//! checksum. This is the only module that knows how keys and values are laid out; it is a
//! compatibility boundary, so a change here is a schema version change.
//!
//! # Conventions
//!
//! - Integers in keys are fixed-width big-endian, so byte order is numeric order and ranges
//!   scan in order. No `usize` is ever persisted.
//! - A document id in a key is length-prefixed: `u16` big-endian byte length, then the UTF-8
//!   bytes ([`doc_key`]). The prefix keeps `a` and `a/b` apart (`a` then `a/b` would otherwise
//!   share a prefix) and keeps a document's keys contiguous.
//! - A node name in a key is likewise `u16` big-endian length, then bytes ([`peer_key`]).
//! - An actor is its 16 bytes.
//! - Every value is `payload ‖ checksum`, where `checksum` is the first 8 bytes of
//!   `blake3(column family name ‖ key ‖ payload)`. Binding the key and column family means a
//!   value copied to the wrong place fails too. A mismatch on read is
//!   [`StoreError::Corrupt`] naming the column family and key; nothing is served from it.
//! - Payloads are postcard encodings of the core's types unless stated otherwise.
//!
//! # Column families (schema version 1)
//!
//! | name | key | value payload |
//! |---|---|---|
//! | `meta.v1` | `b"schema"` | `u32` BE schema version (read first, before anything else) |
//! | `meta.v1` | `b"node"` | `NodeMeta` (logical schema version, name, store id, incarnation; from logical version 2 also actor epoch, epoch nonce, running flag) |
//! | `docs.v1` | doc | `DocMeta` (vector clock, next order, snapshot order) |
//! | `changes.v1` | doc ‖ order `u64` BE | `(actor [16], seq u64, hash [32], bytes)` as `StoredChange` |
//! | `change_index.v1` | doc ‖ actor `[16]` ‖ seq `u64` BE | order `u64` BE ‖ hash `[32]` |
//! | `snapshots.v1` | doc | covers order `u64` BE ‖ Automerge `save` bytes |
//! | `peers.v1` | peer | the peer's store id `[16]` |
//! | `receipts.v1` | peer ‖ doc ‖ kind `u8` (0 acknowledged, 1 reported) | `VectorClock` |
//! | `authors.v1` | node actor `[16]` | the authorship statement's bytes (raw, not postcard) |
//! | `feed.v1` | cursor `u64` BE | `FeedEvent` (doc, reading id and canonical body or none, origin) |
//! | `meta.v1` | `b"copy"` | a backup's time, `u64` BE ms (present until the first start on the copy) |
//! | `meta.v1` | `b"sink/"` ‖ sink name | `SinkState` (delivered cursor, the batch in flight, events skipped) |
//! | `journal.v1` | doc ‖ reading id (UTF-8) | the reading's canonical body (UTF-8, raw): journaled, not yet folded into a change (logical schema 5) |
//!
//! `changes.v1` ordered by (doc, order) is each document's change log in apply order (a causal
//! order): loading reads the snapshot, then this range from the snapshot's order. The
//! `change_index.v1` range (doc, actor, from..=to) answers "which changes does this clock lack"
//! without loading the document.

use edgesync_proto::store::{DocMeta, NodeMeta, StoredChange};
use edgesync_proto::{Actor, DocId, NodeName, StoreError, VectorClock};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the on-disk layout (column families, key and value encodings) this build writes
/// and reads; the core's `LOGICAL_SCHEMA_VERSION` versions what is stored, this how.
pub const DISK_SCHEMA_VERSION: u32 = 1;

/// Node metadata and the schema version.
pub const CF_META: &str = "meta.v1";
/// Document metadata.
pub const CF_DOCS: &str = "docs.v1";
/// Changes by (doc, order).
pub const CF_CHANGES: &str = "changes.v1";
/// (doc, actor, seq) → (order, hash).
pub const CF_CHANGE_INDEX: &str = "change_index.v1";
/// Document snapshots.
pub const CF_SNAPSHOTS: &str = "snapshots.v1";
/// Peer store ids.
pub const CF_PEERS: &str = "peers.v1";
/// Receipts and reported clocks.
pub const CF_RECEIPTS: &str = "receipts.v1";
/// Authorship statements by node actor (logical schema 4; created in older stores on open).
pub const CF_AUTHORS: &str = "authors.v1";
/// The change feed: cursor (u64, big-endian) → postcard `FeedEvent` (created in older stores
/// on open; an older build opens a store that has it and ignores it).
pub const CF_FEED: &str = "feed.v1";

/// The ingest journal: doc ‖ reading id → canonical body (created in older stores on open;
/// the logical schema version 5 keeps older builds, which would not fold it, from opening a
/// store that has it).
pub const CF_JOURNAL: &str = "journal.v1";

/// Every column family of this schema version.
pub const COLUMN_FAMILIES: [&str; 10] = [
    CF_META,
    CF_DOCS,
    CF_CHANGES,
    CF_CHANGE_INDEX,
    CF_SNAPSHOTS,
    CF_PEERS,
    CF_RECEIPTS,
    CF_AUTHORS,
    CF_FEED,
    CF_JOURNAL,
];

/// Key of the schema version in [`CF_META`].
pub const KEY_SCHEMA: &[u8] = b"schema";
/// Key of the node metadata in [`CF_META`].
pub const KEY_NODE: &[u8] = b"node";
/// Key of the copy mark in [`CF_META`]: present in a backup ([`super::RocksStore::backup`])
/// until a node first starts on it and renews the store's identity. Its payload is the
/// backup's time, ms since the Unix epoch (8 bytes, big-endian).
pub const KEY_COPY: &[u8] = b"copy";
/// Prefix of a sink's state in [`CF_META`]: `b"sink/"` then the sink's name; the value is a
/// postcard [`super::SinkState`].
pub const KEY_SINK_PREFIX: &[u8] = b"sink/";

/// Prefix of a peer's accepted incarnation in [`CF_META`]: `b"seen/"` then [`peer_key`]; the
/// value is postcard `(store_id, Incarnation)`. In the metadata, not in [`CF_PEERS`], so that
/// an older build, which reads every value there as a store id, still opens the store.
pub const KEY_SEEN_PREFIX: &[u8] = b"seen/";

/// Key of `peer`'s accepted incarnation in [`CF_META`].
pub fn seen_key(peer: &NodeName) -> Vec<u8> {
    let mut k = KEY_SEEN_PREFIX.to_vec();
    k.extend_from_slice(&peer_key(peer));
    k
}

/// Receipt kind: what the peer acknowledged.
pub const RECEIPT_ACKED: u8 = 0;
/// Receipt kind: what this node last reported to the peer.
pub const RECEIPT_REPORTED: u8 = 1;

const CHECKSUM_BYTES: usize = 8;

fn checksum(cf: &str, key: &[u8], payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut h = blake3::Hasher::new();
    h.update(&(cf.len() as u32).to_be_bytes());
    h.update(cf.as_bytes());
    h.update(&(key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(payload);
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// Seals a payload: `payload ‖ checksum`.
pub fn seal(cf: &str, key: &[u8], mut payload: Vec<u8>) -> Vec<u8> {
    let sum = checksum(cf, key, &payload);
    payload.extend_from_slice(&sum);
    payload
}

/// Verifies and strips the checksum.
pub fn open_value<'a>(
    cf: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    let corrupt = || StoreError::Corrupt {
        table: cf,
        key: printable(key),
    };
    if value.len() < CHECKSUM_BYTES {
        return Err(corrupt());
    }
    let (payload, sum) = value.split_at(value.len() - CHECKSUM_BYTES);
    if checksum(cf, key, payload) != sum {
        return Err(corrupt());
    }
    Ok(payload)
}

/// Seals a postcard encoding of `value`.
pub fn seal_postcard<T: Serialize>(cf: &str, key: &[u8], value: &T) -> Vec<u8> {
    // The core's types always encode. Sized first, so the value takes one allocation with room
    // for the checksum: encoding into an empty vector grows it byte by byte (a stored change
    // of some hundred bytes reallocated about eight times).
    let len = postcard::experimental::serialized_size(value).expect("value encodes");
    let out = Vec::with_capacity(len + CHECKSUM_BYTES);
    seal(
        cf,
        key,
        postcard::to_extend(value, out).expect("value encodes"),
    )
}

/// Verifies and decodes a postcard value.
pub fn open_postcard<T: DeserializeOwned>(
    cf: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    let payload = open_value(cf, key, value)?;
    postcard::from_bytes(payload).map_err(|_| StoreError::Corrupt {
        table: cf,
        key: printable(key),
    })
}

/// A key as text for error messages: printable ASCII kept, other bytes as `\xNN`.
pub fn printable(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

fn push_name(out: &mut Vec<u8>, s: &str) {
    // Names are bounded far below u16::MAX (document ids 256 bytes, node names 128).
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `u16 BE length ‖ doc bytes`.
pub fn doc_key(doc: &DocId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + doc.as_str().len() + 24);
    push_name(&mut k, doc.as_str());
    k
}

/// `u16 BE length ‖ peer name bytes`.
pub fn peer_key(peer: &NodeName) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + peer.as_str().len());
    push_name(&mut k, peer.as_str());
    k
}

/// Reads a length-prefixed name at the start of `key`; returns it and the rest.
fn take_name<'a>(cf: &'static str, key: &'a [u8]) -> Result<(&'a str, &'a [u8]), StoreError> {
    let corrupt = || StoreError::Corrupt {
        table: cf,
        key: printable(key),
    };
    if key.len() < 2 {
        return Err(corrupt());
    }
    let len = u16::from_be_bytes([key[0], key[1]]) as usize;
    let rest = &key[2..];
    if rest.len() < len {
        return Err(corrupt());
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| corrupt())?;
    Ok((name, &rest[len..]))
}

/// Decodes a [`CF_DOCS`] key.
pub fn parse_doc_key<'a>(cf: &'static str, key: &'a [u8]) -> Result<(DocId, &'a [u8]), StoreError> {
    let (name, rest) = take_name(cf, key)?;
    let doc = DocId::new(name).map_err(|_| StoreError::Corrupt {
        table: cf,
        key: printable(key),
    })?;
    Ok((doc, rest))
}

/// Decodes a peer name at the start of a key.
pub fn parse_peer_key<'a>(
    cf: &'static str,
    key: &'a [u8],
) -> Result<(NodeName, &'a [u8]), StoreError> {
    let (name, rest) = take_name(cf, key)?;
    let peer = NodeName::new(name).map_err(|_| StoreError::Corrupt {
        table: cf,
        key: printable(key),
    })?;
    Ok((peer, rest))
}

/// [`CF_JOURNAL`] key: [`doc_key`] then the reading id's bytes.
pub fn journal_key(doc: &DocId, id: &str) -> Vec<u8> {
    let mut k = doc_key(doc);
    k.extend_from_slice(id.as_bytes());
    k
}

/// [`CF_CHANGES`] key.
pub fn change_key(doc: &DocId, order: u64) -> Vec<u8> {
    let mut k = doc_key(doc);
    k.extend_from_slice(&order.to_be_bytes());
    k
}

/// [`CF_CHANGE_INDEX`] key.
pub fn index_key(doc: &DocId, actor: &Actor, seq: u64) -> Vec<u8> {
    let mut k = doc_key(doc);
    k.extend_from_slice(&actor.0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// [`CF_CHANGE_INDEX`] payload.
pub fn index_value(order: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&order.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

/// Decodes a [`CF_CHANGE_INDEX`] payload.
pub fn parse_index_value(key: &[u8], payload: &[u8]) -> Result<(u64, [u8; 32]), StoreError> {
    if payload.len() != 40 {
        return Err(StoreError::Corrupt {
            table: CF_CHANGE_INDEX,
            key: printable(key),
        });
    }
    let order = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    let hash: [u8; 32] = payload[8..].try_into().expect("32 bytes");
    Ok((order, hash))
}

/// [`CF_RECEIPTS`] key.
pub fn receipt_key(peer: &NodeName, doc: &DocId, kind: u8) -> Vec<u8> {
    let mut k = peer_key(peer);
    k.extend_from_slice(&doc_key(doc));
    k.push(kind);
    k
}

/// Decodes a [`CF_RECEIPTS`] key into (peer, doc, kind).
pub fn parse_receipt_key(key: &[u8]) -> Result<(NodeName, DocId, u8), StoreError> {
    let (peer, rest) = parse_peer_key(CF_RECEIPTS, key)?;
    let (doc, rest) = parse_doc_key(CF_RECEIPTS, rest)?;
    match rest {
        [kind @ (RECEIPT_ACKED | RECEIPT_REPORTED)] => Ok((peer, doc, *kind)),
        _ => Err(StoreError::Corrupt {
            table: CF_RECEIPTS,
            key: printable(key),
        }),
    }
}

/// [`CF_SNAPSHOTS`] payload: covers order then the saved document.
pub fn snapshot_value(covers_order: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + bytes.len());
    v.extend_from_slice(&covers_order.to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// Decodes a [`CF_SNAPSHOTS`] payload.
pub fn parse_snapshot_value(key: &[u8], payload: &[u8]) -> Result<(u64, Vec<u8>), StoreError> {
    if payload.len() < 8 {
        return Err(StoreError::Corrupt {
            table: CF_SNAPSHOTS,
            key: printable(key),
        });
    }
    let covers = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    Ok((covers, payload[8..].to_vec()))
}

/// Types stored with postcard, named for the schema table above.
pub type NodeMetaValue = NodeMeta;
/// See [`NodeMetaValue`].
pub type DocMetaValue = DocMeta;
/// See [`NodeMetaValue`].
pub type ChangeValue = StoredChange;
/// See [`NodeMetaValue`].
pub type ClockValue = VectorClock;

#[cfg(test)]
mod tests {
    use super::*;

    // Keys sort as the schema promises: by document (length-prefixed), then order numerically.
    #[test]
    fn keys_sort_numerically_and_per_document() {
        let a = DocId::new("a").unwrap();
        let ab = DocId::new("a/b").unwrap();
        assert!(change_key(&a, 255) < change_key(&a, 256));
        assert!(
            change_key(&a, u64::MAX) < change_key(&ab, 0),
            "a's range ends before a/b's begins"
        );
        let actor = Actor([1; 16]);
        assert!(index_key(&a, &actor, 9) < index_key(&a, &actor, 10));
    }

    // A flipped bit anywhere in a value, or a value moved to another key, fails the checksum.
    #[test]
    fn checksum_detects_corruption_and_misplacement() {
        let v = seal(CF_DOCS, b"k1", vec![1, 2, 3]);
        assert_eq!(open_value(CF_DOCS, b"k1", &v).unwrap(), &[1, 2, 3]);
        for i in 0..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x10;
            assert!(
                open_value(CF_DOCS, b"k1", &bad).is_err(),
                "flip at byte {i}"
            );
        }
        assert!(open_value(CF_DOCS, b"k2", &v).is_err());
        assert!(open_value(CF_PEERS, b"k1", &v).is_err());
        let err = open_value(CF_DOCS, b"k\x01", &[0]).unwrap_err().to_string();
        assert!(err.contains("docs.v1") && err.contains("k\\x01"), "{err}");
    }

    // A sealed postcard value is the value's encoding and its checksum, in one allocation of
    // exactly that size, and opens to the value again.
    #[test]
    fn sealed_values_take_one_allocation_of_their_size() {
        let change = StoredChange {
            order: 7,
            actor: Actor([3; 16]),
            seq: 9,
            hash: [5; 32],
            bytes: vec![0xab; 300],
            author: None,
            sig: Some(vec![1; 64]),
        };
        let v = seal_postcard(CF_CHANGES, b"k", &change);
        let plain = seal(CF_CHANGES, b"k", postcard::to_allocvec(&change).unwrap());
        assert_eq!(v, plain);
        assert_eq!(v.capacity(), v.len());
        let back: StoredChange = open_postcard(CF_CHANGES, b"k", &v).unwrap();
        assert_eq!(back, change);
    }

    // Receipt keys round-trip.
    #[test]
    fn receipt_keys_round_trip() {
        let p = NodeName::new("gw-1").unwrap();
        let d = DocId::new("site/s1").unwrap();
        let k = receipt_key(&p, &d, RECEIPT_REPORTED);
        assert_eq!(parse_receipt_key(&k).unwrap(), (p, d, RECEIPT_REPORTED));
        assert!(parse_receipt_key(&k[..k.len() - 1]).is_err());
    }
}
