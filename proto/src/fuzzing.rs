//! Entry points for the fuzz targets in `fuzz/` (feature `testing`): each takes arbitrary bytes
//! and must neither panic nor break an invariant, whatever the bytes. `cargo test` replays
//! every input in `fuzz/regressions/<target>/` through the same functions
//! (`proto/tests/fuzz_regressions.rs`), so a crash once found stays fixed.

use automerge::Change;
use serde_json::json;

use crate::doc::sensor_genesis;
use crate::schema;
use crate::wire::{ChangeBytes, Changes, DocChanges, FrameDecoder, Hello, Message, Summary};
use crate::wire::{FRAME_BYTES_LIMIT, FRAME_BYTES_MIN, MAGIC, PROTOCOL_VERSION};
use crate::{Boot, Config, DocId, MemStore, Node, NodeName, Reading, SessionId};

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
    let cfg = Config::new(NodeName::new("fuzzed").expect("valid"));
    let boot = Boot {
        nonce: [1; 16],
        new_store_id: [1; 16],
    };
    let mut node = Node::open(MemStore::new(), cfg, boot).expect("opens");
    let r = Reading::from_json("r-1", 1, &json!({"v": 1})).expect("valid");
    let sensor = DocId::new("site-a/t1").expect("valid");
    node.ingest(&sensor, &[r], 0).expect("ingest");
    let generic = DocId::new("app/doc").expect("valid");
    node.patch(&generic, &json!({"a": {"b": [1, 2]}}), 0)
        .expect("patch");
    settle(&mut node, None);
    let peer = NodeName::new(peer).expect("valid");
    let sid = node.connect(peer.clone(), 0);
    let hello = Message::Hello(Hello {
        magic: MAGIC,
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        node: peer,
        store_id: [9; 16],
        capabilities: 0,
        frame_bytes_max: FRAME_BYTES_LIMIT,
    });
    node.handle_input(sid, &hello.to_frame(), 0);
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
    if let Ok(change) = Change::try_from(data) {
        let _ = schema::check_checksum(data, &change);
        let _ = schema::check_shape(&change);
        let mut sensor = automerge::Automerge::new();
        sensor
            .apply_changes([sensor_genesis().clone()])
            .expect("genesis applies");
        let _ = schema::check_in_doc(&change, &sensor);
        let _ = schema::check_in_doc(&change, &automerge::Automerge::new());
    }
    for doc in ["site-a/t1", "app/doc"] {
        let (mut node, sid) = node_with_session("gw-fuzz");
        let batch = Message::Changes(Changes {
            batch: 0,
            docs: vec![DocChanges {
                doc: DocId::new(doc).expect("valid"),
                changes: vec![ChangeBytes(data.to_vec())],
            }],
        });
        node.handle_input(sid, &batch.to_frame(), 1);
        settle(&mut node, Some(sid));
        assert_consistent(&mut node);
        // Whatever a peer sent, the sensor document still takes readings.
        let r = Reading::from_json("r-9", 9, &json!({"v": 9})).expect("valid");
        node.ingest(&DocId::new("site-a/t1").expect("valid"), &[r], 2)
            .expect("the sensor document keeps taking readings");
    }
}
