//! Names: document ids, node names, and the derivation of Automerge actors.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vclock::Actor;

/// Longest document id in bytes.
pub const DOC_ID_BYTES_MAX: usize = 256;
/// Most `/`-separated segments in a document id.
pub const DOC_ID_SEGMENTS_MAX: usize = 16;
/// Longest node name in bytes (a DNS label is 63; names may be dotted).
pub const NODE_NAME_BYTES_MAX: usize = 128;

/// Why a document id or node name was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} is empty")]
    Empty {
        /// "document id" or "node name".
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// "document id" or "node name".
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `A-Z a-z 0-9 . _ -` (and `/` between segments of a document id).
    #[error("{kind} contains {found:?} at byte {at}; allowed are A-Z a-z 0-9 . _ - (and / between segments)")]
    BadChar {
        /// "document id" or "node name".
        kind: &'static str,
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A document id segment that is empty, `.` or `..`.
    #[error("document id has an empty, '.' or '..' segment")]
    BadSegment,
    /// More segments than [`DOC_ID_SEGMENTS_MAX`].
    #[error("document id has {count} segments, more than the limit of {max}")]
    TooManySegments {
        /// Its segments.
        count: usize,
        /// The limit.
        max: usize,
    },
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The name of a document: a path such as `site-a/line-3/sensor-17`.
///
/// Validated on construction and on decode: 1 to [`DOC_ID_BYTES_MAX`] bytes, segments of
/// `A-Z a-z 0-9 . _ -` separated by single `/`, no empty, `.` or `..` segment.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocId(String);

impl DocId {
    /// Validates `s` as a document id.
    pub fn new(s: impl Into<String>) -> Result<DocId, NameError> {
        let s = s.into();
        const KIND: &str = "document id";
        if s.is_empty() {
            return Err(NameError::Empty { kind: KIND });
        }
        if s.len() > DOC_ID_BYTES_MAX {
            return Err(NameError::TooLong {
                kind: KIND,
                len: s.len(),
                max: DOC_ID_BYTES_MAX,
            });
        }
        if let Some((at, found)) = s
            .char_indices()
            .find(|(_, c)| !is_name_char(*c) && *c != '/')
        {
            return Err(NameError::BadChar {
                kind: KIND,
                found,
                at,
            });
        }
        let mut count = 0;
        for segment in s.split('/') {
            count += 1;
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(NameError::BadSegment);
            }
        }
        if count > DOC_ID_SEGMENTS_MAX {
            return Err(NameError::TooManySegments {
                count,
                max: DOC_ID_SEGMENTS_MAX,
            });
        }
        Ok(DocId(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Orders and hashes as its text, so maps keyed by `DocId` can be searched by `&str` ranges.
impl std::borrow::Borrow<str> for DocId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DocId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DocId::new(s)
    }
}

impl From<DocId> for String {
    fn from(d: DocId) -> String {
        d.0
    }
}

impl std::str::FromStr for DocId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocId::new(s)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The name of a node, as written in its certificate: 1 to [`NODE_NAME_BYTES_MAX`] bytes of
/// `A-Z a-z 0-9 . _ -`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Validates `s` as a node name.
    pub fn new(s: impl Into<String>) -> Result<NodeName, NameError> {
        let s = s.into();
        const KIND: &str = "node name";
        if s.is_empty() {
            return Err(NameError::Empty { kind: KIND });
        }
        if s.len() > NODE_NAME_BYTES_MAX {
            return Err(NameError::TooLong {
                kind: KIND,
                len: s.len(),
                max: NODE_NAME_BYTES_MAX,
            });
        }
        if let Some((at, found)) = s.char_indices().find(|(_, c)| !is_name_char(*c)) {
            return Err(NameError::BadChar {
                kind: KIND,
                found,
                at,
            });
        }
        Ok(NodeName(s))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeName::new(s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl std::str::FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeName::new(s)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The Automerge actor a node authors with during one actor epoch (kept across restarts; see
/// `Node::open`).
///
/// Hazard 2: a node must never let anyone see two different changes with the same
/// (actor, seq). The epoch is persisted and raised when an open cannot prove that nothing
/// sent was lost, and `epoch_nonce` is fresh randomness from the shell chosen when the epoch
/// was raised, so two opens that both raise from the same stored epoch (the first one's
/// record lost in a crash) still take different actors.
pub fn derive_actor(node: &NodeName, epoch: u64, epoch_nonce: &[u8; 16]) -> Actor {
    let mut h = blake3::Hasher::new_derive_key("edgesync actor v1");
    h.update(&(node.as_str().len() as u64).to_be_bytes());
    h.update(node.as_str().as_bytes());
    h.update(&epoch.to_be_bytes());
    h.update(epoch_nonce);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Actor(out)
}

/// The actor a node authors `doc` under: derived from its incarnation's actor and the document
/// id, so no two documents share an actor. An Automerge change does not name its document;
/// with one actor for every document, a peer could replay a node's change from one document
/// into another whose dependencies it also meets (every sensor document's first change depends
/// on the genesis alone), and the node's own next change there would collide with it: an
/// equivocation that locks the node out of that document. With per-document actors a replayed
/// change collides with nothing.
pub fn doc_actor(base: Actor, doc: &DocId) -> Actor {
    let mut h = blake3::Hasher::new_derive_key("edgesync document actor v1");
    h.update(&base.0);
    h.update(doc.as_str().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Actor(out)
}

/// The actor of every sensor document's genesis change (hazard 1): a constant, so every node
/// produces the byte-identical genesis change.
pub fn genesis_actor() -> Actor {
    // Derived once: the checks of every received change ask for it.
    static GENESIS: std::sync::OnceLock<Actor> = std::sync::OnceLock::new();
    *GENESIS.get_or_init(|| {
        let h = blake3::derive_key("edgesync sensor genesis v1", b"");
        let mut out = [0u8; 16];
        out.copy_from_slice(&h[..16]);
        Actor(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Path-like ids pass; every class of bad id is refused with its own error.
    #[test]
    fn doc_id_validation() {
        for ok in [
            "a",
            "site-a/line-3/sensor-17",
            "x.y_z-1",
            &"a".repeat(DOC_ID_BYTES_MAX),
        ] {
            assert!(DocId::new(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(
            DocId::new(""),
            Err(NameError::Empty {
                kind: "document id"
            })
        );
        assert!(matches!(
            DocId::new("a".repeat(257)),
            Err(NameError::TooLong { len: 257, .. })
        ));
        assert!(matches!(
            DocId::new("a b"),
            Err(NameError::BadChar {
                found: ' ',
                at: 1,
                ..
            })
        ));
        assert!(matches!(DocId::new("é"), Err(NameError::BadChar { .. })));
        for bad in ["/a", "a/", "a//b", "a/../b", "./a", ".."] {
            assert_eq!(DocId::new(bad), Err(NameError::BadSegment), "{bad}");
        }
        let deep = vec!["s"; DOC_ID_SEGMENTS_MAX + 1].join("/");
        assert!(matches!(
            DocId::new(deep),
            Err(NameError::TooManySegments { .. })
        ));
    }

    // A decoded document id is validated like a constructed one.
    #[test]
    fn doc_id_decode_validates() {
        let bytes = postcard::to_allocvec(&"a//b".to_string()).unwrap();
        assert!(postcard::from_bytes::<DocId>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"a/b".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<DocId>(&bytes).unwrap().as_str(),
            "a/b"
        );
    }

    // Node names refuse slashes and spaces.
    #[test]
    fn node_name_validation() {
        assert!(NodeName::new("gw-1.site-a").is_ok());
        assert!(NodeName::new("gw/1").is_err());
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("x".repeat(129)).is_err());
    }

    // Hazard 2: a new epoch or a new nonce never yields the same actor.
    #[test]
    fn actors_differ_per_epoch_and_nonce() {
        let n = NodeName::new("gw-1").unwrap();
        let a = derive_actor(&n, 1, &[0; 16]);
        assert_ne!(a, derive_actor(&n, 2, &[0; 16]));
        assert_ne!(a, derive_actor(&n, 1, &[1; 16]));
        assert_ne!(
            a,
            derive_actor(&NodeName::new("gw-2").unwrap(), 1, &[0; 16])
        );
        assert_eq!(
            a,
            derive_actor(&n, 1, &[0; 16]),
            "derivation is deterministic"
        );
        assert_ne!(a, genesis_actor());
    }
}
