//! Entry points for the fuzz targets in `fuzz/` (feature `testing`): each takes arbitrary bytes
//! and must neither panic nor break an invariant, whatever the bytes. `cargo test` replays
//! every input in `fuzz/regressions/<target>/` through the same functions
//! (`proto/tests/fuzz_regressions.rs`), so a crash once found stays fixed.

use automerge::Change;
use serde_json::json;

use crate::authz::{Identity, Role, Rules};
use crate::doc::sensor_genesis;
use crate::schema;
use crate::trust::keyed::Fleet;
use crate::vclock::Actor;
use crate::wire::{
    AuthorStatement, ChangeBytes, Changes, DocChanges, DocSnapshot, FrameDecoder, Hello,
    Incarnation, Message, Signed, Snapshots, Summary, CAP_DEFLATE, CAP_INCARNATION, CAP_SLOTS,
};
use crate::wire::{FRAME_BYTES_LIMIT, FRAME_BYTES_MIN, MAGIC, PROTOCOL_VERSION};
use crate::{Boot, Config, DocId, MemStore, Node, NodeName, Reading, SessionId};

/// The fleet of the fuzzed node and its peer.
fn fleet() -> Fleet {
    Fleet::new([7; 32])
}

/// The fuzzing peer (a cloud member named `gw-fuzz`) as its fleet signs for it.
fn peer_signer() -> std::sync::Arc<dyn crate::trust::Signer> {
    let peer = NodeName::new("gw-fuzz").expect("valid");
    fleet()
        .trust(Identity::new(peer, Role::Cloud, None), Rules::default())
        .signer
        .expect("a member")
}

/// The fuzzing peer's node actor: its certificate's first slot actor (a statement for any
/// other actor does not verify, and nothing it sent would pass authorship).
fn peer_actor() -> Actor {
    let space = peer_signer()
        .slot_space()
        .expect("the fleet's certificates are slot-bound");
    crate::trust::slot_actor(&space, 0)
}

/// Frame and message decoding: the bytes are a stream of frames, pushed in two pieces.
pub fn decode(data: &[u8]) {
    let _ = Message::from_payload(data);
    let mut d = FrameDecoder::new(FRAME_BYTES_MIN);
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    d.push(&data[..cut]);
    while let Ok(Some(_)) = d.next_message() {}
    d.push(&data[cut..]);
    while let Ok(Some(_)) = d.next_message() {}
    assert!(d.buffered() <= data.len());
}

/// A node holding a sensor and a generic document, with a session from `peer` past Hello and
/// Summary.
fn node_with_session(peer: &str) -> (Node<MemStore>, SessionId) {
    let name = NodeName::new("fuzzed").expect("valid");
    let mut cfg = Config::new(name.clone());
    cfg.trust = fleet().trust(Identity::new(name, Role::Cloud, None), Rules::default());
    let boot = Boot {
        nonce: [1; 16],
        new_store_id: [1; 16],
    };
    let mut node = Node::open(MemStore::new(), cfg, boot).expect("opens");
    let r = Reading::from_json("r-1", 1, &json!({"v": 1})).expect("valid");
    let sensor = DocId::new("site-a/t1").expect("valid");
    node.ingest(&sensor, &[r], 0).expect("ingest");
    // Folded now, so the session starts with the sensor document held (as its corpus expects).
    node.fold_journal().expect("fold");
    let generic = DocId::new("app/doc").expect("valid");
    node.patch(&generic, &json!({"a": {"b": [1, 2]}}), 0)
        .expect("patch");
    settle(&mut node, None);
    let peer = NodeName::new(peer).expect("valid");
    let sid = node.connect(Identity::new(peer.clone(), Role::Cloud, None), 0);
    let hello = Message::Hello(Hello {
        magic: MAGIC,
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        node: peer,
        store_id: [9; 16],
        capabilities: CAP_DEFLATE | CAP_INCARNATION | CAP_SLOTS,
        frame_bytes_max: FRAME_BYTES_LIMIT,
    });
    node.handle_input(sid, &hello.to_frame(), 0);
    let run = Message::Incarnation(Incarnation {
        incarnation: 1,
        boot: [9; 16],
    });
    node.handle_input(sid, &run.to_frame(), 0);
    let summary = Message::Summary(Summary {
        entries: vec![],
        last: true,
    });
    node.handle_input(sid, &summary.to_frame(), 0);
    settle(&mut node, Some(sid));
    assert!(
        node.sessions().iter().any(|s| s.id == sid && s.live),
        "the handshake completed: the fuzzed bytes reach a live session"
    );
    (node, sid)
}

/// Makes everything durable and drains frames and events.
fn settle(node: &mut Node<MemStore>, sid: Option<SessionId>) {
    let seq = node.commit_seq();
    node.store_mut().sync();
    node.handle_durable(seq);
    if let Some(sid) = sid {
        while node.poll_transmit(sid).is_some() {}
    }
    while node.poll_event().is_some() {}
}

/// Every document's clock still describes exactly the changes it holds.
fn assert_consistent(node: &mut Node<MemStore>) {
    let docs: Vec<DocId> = node.docs().map(|(d, _)| d.clone()).collect();
    for d in docs {
        node.verify_clock(&d).expect("clock matches the document");
        let _ = node.json(&d, true);
    }
    assert!(node.pending_changes() <= node.config().pending_changes_max);
}

/// A session fed arbitrary bytes after a valid handshake, in chunks whose sizes the first
/// bytes choose; the node must stay consistent and keep serving.
pub fn session(data: &[u8]) {
    let (mut node, sid) = node_with_session("gw-fuzz");
    let mut rest = data;
    while !rest.is_empty() {
        let take = (rest[0] as usize + 1).min(rest.len());
        node.handle_input(sid, &rest[..take], 1);
        settle(&mut node, Some(sid));
        rest = &rest[take..];
    }
    node.handle_timeout(u64::MAX / 2);
    settle(&mut node, Some(sid));
    assert_consistent(&mut node);
    let r = Reading::from_json("r-2", 2, &json!({"v": 2})).expect("valid");
    let _ = node.ingest(&DocId::new("site-a/t2").expect("valid"), &[r], 2);
}

/// Remote change validation: the bytes as a change, checked alone and against both kinds of
/// document, then sent in a Changes frame (into a sensor document and a generic one).
pub fn remote_change(data: &[u8]) {
    if let Ok(change) = crate::chunk::parse(data, usize::MAX) {
        let _ = schema::check_checksum(data, &change);
        let _ = schema::check_shape(&change);
        let mut sensor = automerge::Automerge::new();
        sensor
            .apply_changes([sensor_genesis().clone()])
            .expect("genesis applies");
        let _ = schema::check_in_doc(&change, &sensor);
        let _ = schema::check_in_doc(&change, &automerge::Automerge::new());
    }
    let signer = peer_signer();
    for doc in ["site-a/t1", "app/doc"] {
        let doc = DocId::new(doc).expect("valid");
        let (mut node, sid) = node_with_session("gw-fuzz");
        // A fleet member's own change: the bytes, when they are a well-formed change, are
        // written again under the peer's actor for the document and signed, so that what they
        // do reaches the checks after authorship.
        let bytes = match crate::chunk::parse(data, usize::MAX) {
            Ok(c) if schema::check_checksum(data, &c).is_ok() => {
                let mut e = c.decode();
                e.actor_id = crate::id::doc_actor(peer_actor(), &doc).to_automerge();
                e.hash = None;
                Change::from(e).raw_bytes().to_vec()
            }
            _ => data.to_vec(),
        };
        let hash = crate::chunk::parse(&bytes, usize::MAX).map_or([0; 32], |c| c.hash().0);
        let author = Message::Author(AuthorStatement(signer.statement(&peer_actor())));
        node.handle_input(sid, &author.to_frame(), 1);
        let batch = Message::Changes(Changes {
            batch: 0,
            docs: vec![DocChanges {
                doc: doc.clone(),
                changes: vec![ChangeBytes(bytes)],
                signed: vec![Signed {
                    change: 0,
                    author: 0,
                    sig: signer.sign(&hash),
                }],
            }],
        });
        node.handle_input(sid, &batch.to_frame(), 1);
        still_serves(&mut node, sid);
    }
}

/// The actor a snapshot seed's changes have: the fuzzing peer's for [`SNAPSHOT_DOC`], so that a
/// seed passes authorship and its mutations reach the checks after it.
pub fn snapshot_actor() -> automerge::ActorId {
    crate::id::doc_actor(peer_actor(), &DocId::new(SNAPSHOT_DOC).expect("valid")).to_automerge()
}

/// The document the `snapshot` target's bytes are sent as.
pub const SNAPSHOT_DOC: &str = "app/new";

/// Snapshot reading: the bytes as a document's saved form, opened within the smallest and the
/// largest frame limit, then sent in a `Snapshots` frame to a node that holds nothing of the
/// document, every change they hold signed by the fuzzing peer; the node must stay consistent
/// and keep taking readings.
pub fn snapshot(data: &[u8]) {
    let _ = crate::snapshot::open(data, FRAME_BYTES_MIN as usize);
    let opened = crate::snapshot::open(data, FRAME_BYTES_LIMIT as usize);
    let signer = peer_signer();
    // Every change signed, numbered as a snapshot numbers them (by actor, then sequence).
    let signed = match &opened {
        Ok(changes) => {
            let mut order: Vec<&Change> = changes.iter().collect();
            order.sort_by_key(|c| (c.actor_id().to_bytes().to_vec(), c.seq()));
            order
                .iter()
                .enumerate()
                .map(|(k, c)| Signed {
                    change: k as u32,
                    author: 0,
                    sig: signer.sign(&c.hash().0),
                })
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let (mut node, sid) = node_with_session("gw-fuzz");
    let author = Message::Author(AuthorStatement(signer.statement(&peer_actor())));
    node.handle_input(sid, &author.to_frame(), 1);
    let batch = Message::Snapshots(Snapshots {
        batch: 0,
        docs: vec![DocSnapshot {
            doc: DocId::new(SNAPSHOT_DOC).expect("valid"),
            saved: data.to_vec(),
            signed,
        }],
    });
    node.handle_input(sid, &batch.to_frame(), 1);
    still_serves(&mut node, sid);
}

/// After what a peer sent: the node is consistent, and its sensor document still takes
/// readings.
fn still_serves(node: &mut Node<MemStore>, sid: SessionId) {
    settle(node, Some(sid));
    assert_consistent(node);
    let r = Reading::from_json("r-9", 9, &json!({"v": 9})).expect("valid");
    node.ingest(&DocId::new("site-a/t1").expect("valid"), &[r], 2)
        .expect("the sensor document keeps taking readings");
}
