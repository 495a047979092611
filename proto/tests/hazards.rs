mod common;

use common::{bucket, bucket_name, doc, name, open, persist, Hand, Net};
use edgesync_proto::wire::{Changes, DocChanges, Message, Summary, FRAME_BYTES_MIN};
use edgesync_proto::{CloseCode, Event, MemStore, Node, NodeName, Reading, SessionId};
use serde_json::json;

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, v, &json!({ "v": v })).unwrap()
}

fn hello_from(node: &str) -> Message {
    common::hello(node, 4 * 1024 * 1024)
}

/// A peer driven by hand sends one change of `d` as batch 0.
fn send_change(
    node: &mut Node<MemStore>,
    sid: SessionId,
    hand: &mut Hand,
    d: &edgesync_proto::DocId,
    change: Vec<u8>,
) {
    node.handle_input(sid, &hand.frames(0, &[(d.clone(), vec![change])]), 0);
}

/// Opens a session on `node` for a peer driven by hand, past Hello and Summary.
fn hand_session(node: &mut Node<MemStore>, hand: &mut Hand) -> SessionId {
    hand.new_session();
    let peer = hand.identity.name.as_str().to_string();
    let sid = node.connect(hand.identity.clone(), 0);
    node.handle_input(sid, &hello_from(&peer).to_frame(), 0);
    node.handle_input(
        sid,
        &Message::Summary(Summary {
            entries: vec![],
            last: true,
        })
        .to_frame(),
        0,
    );
    sid
}

fn closes(node: &mut Node<MemStore>) -> Vec<(SessionId, Option<CloseCode>)> {
    let mut out = Vec::new();
    while let Some(e) = node.poll_event() {
        if let Event::SessionClosed { session, code, .. } = e {
            out.push((session, code));
        }
    }
    out
}

/// All changes of a document held by `node`, in causal order.
fn changes_of(node: &mut Node<MemStore>, d: &str) -> Vec<Vec<u8>> {
    node.with_doc(&doc(d), |am| {
        am.get_changes(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    })
    .unwrap()
    .unwrap()
}

fn changes_frame(hand: &mut Hand, batch: u64, d: &str, changes: Vec<Vec<u8>>) -> Vec<u8> {
    hand.frames(batch, &[(doc(d), changes)])
}

// Hazard 1: two partitioned nodes that both create the same new sensor document keep both
// sides' readings after they reconnect.
#[test]
fn hazard1_concurrent_creation_of_a_sensor_document() {
    let mut net = Net::new(2, |_| {});
    net.nodes[0]
        .ingest(&doc("site/s1"), &[reading("a", 1)], 0)
        .unwrap();
    net.nodes[1]
        .ingest(&doc("site/s1"), &[reading("b", 2)], 0)
        .unwrap();
    net.connect(0, 1);
    net.settle();
    for n in net.nodes.iter_mut() {
        let v = n.sensor_view(&doc("site/s1")).unwrap().unwrap();
        assert_eq!(v.readings.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(v.latest().unwrap().id, "b");
    }
}

/// Every message `node` releases on `sid` now.
fn released(node: &mut Node<MemStore>, sid: SessionId) -> Vec<Message> {
    std::iter::from_fn(|| node.poll_transmit(sid))
        .map(|f| Message::from_payload(&f[4..]).expect("decodes"))
        .collect()
}

fn carries_changes(msgs: &[Message]) -> bool {
    msgs.iter()
        .any(|m| matches!(m, Message::Changes(c) if c.docs.iter().any(|d| !d.changes.is_empty())))
}

// Hazard 2: a change that was not durable never leaves the node, so after a crash that loses
// it the node may author under the same actor again (commits reported durable survive a crash
// here, as with `fsync`): the sequence number the lost change had is taken by a new change,
// and nobody ever saw the first. The session is live (handshake done, the peer holds nothing),
// so it would send the change at once: the control node shows it does as soon as the commit is
// durable, and the crashed node shows it did not before.
#[test]
fn hazard2_no_actor_sequence_reuse_across_a_crash() {
    let d = bucket("d");
    let mut control = open(0, MemStore::new(), 1, |_| {});
    let sid = hand_session(&mut control, &mut Hand::new("n1"));
    released(&mut control, sid);
    control.ingest(&d, &[reading("lost", 1)], 0).unwrap();
    persist(&mut control);
    assert!(
        carries_changes(&released(&mut control, sid)),
        "a durable change goes out on the live session"
    );

    let mut a = open(0, MemStore::new(), 1, |_| {});
    persist(&mut a);
    let first_actor = a.doc_actor(&d);
    let sid = hand_session(&mut a, &mut Hand::new("n1"));
    released(&mut a, sid);
    a.ingest(&d, &[reading("lost", 1)], 0).unwrap();
    assert!(a.durable_seq() < a.commit_seq(), "not durable yet");
    let leaked = released(&mut a, sid);
    assert!(
        !carries_changes(&leaked),
        "no change left before it was durable"
    );
    let named = leaked
        .iter()
        .any(|m| matches!(m, Message::Summary(s) if s.entries.iter().any(|e| e.doc == d)));
    assert!(!named, "no summary named the unpersisted document");
    let mut store = a.into_store();
    store.crash();
    let mut a = open(0, store, 2, |_| {});
    assert!(!a.last_stop_was_clean());
    assert_eq!(a.doc_actor(&d), first_actor, "the actor is kept");
    assert!(a.clock(&d).is_none(), "the unpersisted ingest is gone");
    a.ingest(&d, &[reading("kept", 2)], 0).unwrap();
    let clock = a.clock(&d).unwrap().clone();
    assert_eq!(
        clock.get(&first_actor),
        1,
        "sequence 1 again: the lost one never left"
    );
}

// Hazard 2 where a commit reported durable may be lost by a crash (`wal` durability): a change
// that left may be gone here, so an open after an unclean stop takes a new actor; after a
// clean stop (recorded, and durable with everything before it) the actor is kept.
#[test]
fn hazard2_a_new_actor_after_an_unclean_stop_when_durable_means_written() {
    // A member from before actor slots: its actor epochs take fresh nonces (slots.rs has the
    // slot-bound case: such a node asks its peers).
    let wal = |c: &mut edgesync_proto::Config| {
        c.keep_actor_after_crash = false;
        common::unbounded(c);
    };
    let d = doc("d");
    let mut a = open(0, MemStore::new(), 1, wal);
    a.ingest(&d, &[reading("r1", 1)], 0).unwrap();
    persist(&mut a);
    let first = a.doc_actor(&d);
    // A clean stop keeps the actor.
    a.record_clean_stop().unwrap();
    persist(&mut a);
    let mut a = open(0, a.into_store(), 2, wal);
    assert!(a.last_stop_was_clean());
    assert_eq!(a.doc_actor(&d), first);
    // A crash does not.
    a.ingest(&d, &[reading("r2", 2)], 0).unwrap();
    persist(&mut a);
    let mut store = a.into_store();
    store.crash();
    let mut a = open(0, store, 3, wal);
    assert!(!a.last_stop_was_clean());
    let second = a.doc_actor(&d);
    assert_ne!(second, first, "a new actor after an unclean stop");
    // A clean stop recorded but lost with the tail (not durable) counts as unclean.
    a.record_clean_stop().unwrap();
    let mut store = a.into_store();
    store.crash();
    let a = open(0, store, 4, wal);
    assert!(!a.last_stop_was_clean());
    assert_ne!(a.doc_actor(&d), second);
    assert_ne!(a.doc_actor(&d), first);
}

// Years of restarts do not grow a document's clock: a node restarted 10,000 times, cleanly or
// by a crash, each time writing one reading into one of 16 documents (625 starts each), keeps
// one actor per document, and every write succeeds. With a new actor per start, each of these
// documents would have refused writes after its 511th: a clock holds at most 512 actors.
#[test]
fn ten_thousand_restarts_keep_one_actor_per_document() {
    const RESTARTS: u64 = 10_000;
    const DOCS: u64 = 16;
    let docs: Vec<_> = (0..DOCS).map(|k| bucket(&format!("site-a/t{k}"))).collect();
    let mut store = MemStore::new();
    let mut actors = std::collections::BTreeSet::new();
    for i in 0..RESTARTS {
        let mut n = open(0, store, i + 1, |_| {});
        let d = &docs[(i % DOCS) as usize];
        n.ingest(d, &[reading(&format!("r{i}"), i as i64)], 0)
            .unwrap_or_else(|e| panic!("start {i}: {e}"));
        persist(&mut n);
        actors.insert(n.actor());
        if i % 50 == 0 {
            store = n.into_store();
            store.crash();
        } else {
            n.record_clean_stop().unwrap();
            persist(&mut n);
            store = n.into_store();
        }
    }
    assert_eq!(actors.len(), 1);
    let n = open(0, store, 0, |_| {});
    for d in &docs {
        let clock = n.clock(d).unwrap();
        let own = clock
            .iter()
            .filter(|(a, _)| **a != edgesync_proto::id::genesis_actor())
            .count();
        assert!(own <= 2, "{d}: {own} of this node's actors in the clock");
        assert_eq!(clock.get(&n.doc_actor(d)), RESTARTS / DOCS);
    }
}

#[test]
fn hazard2_equivocation_is_detected() {
    let mut author = open(0, MemStore::new(), 1, |_| {});
    author.patch(&doc("g"), &json!({"x": 1}), 0).unwrap();
    let first = changes_of(&mut author, "g");
    let mut store = MemStore::new();
    // Same name, incarnation and nonce: the same actor (only a broken node would do this).
    let mut twin = open(0, std::mem::take(&mut store), 1, |_| {});
    twin.patch(&doc("g"), &json!({"x": 2}), 0).unwrap();
    let second = changes_of(&mut twin, "g");
    assert_ne!(first, second);

    let mut b = open(1, MemStore::new(), 2, |_| {});
    let mut hand = Hand::new("n0");
    hand.vouch_for(&author);
    let sid = hand_session(&mut b, &mut hand);
    b.handle_input(sid, &changes_frame(&mut hand, 0, "g", first), 0);
    b.handle_input(sid, &changes_frame(&mut hand, 1, "g", second), 0);
    assert_eq!(closes(&mut b), vec![(sid, Some(CloseCode::Equivocation))]);
    assert_eq!(b.json(&doc("g"), false).unwrap().unwrap(), json!({"x": 1}));
}

// Hazard 3: a change whose dependency is missing is held, not counted in the clock, and
// applied when the dependency arrives; the buffer is bounded.
#[test]
fn hazard3_causal_gaps_are_buffered_not_counted() {
    let mut author = open(0, MemStore::new(), 1, |_| {});
    for i in 0..3 {
        author.patch(&doc("g"), &json!({ "k": i }), 0).unwrap();
    }
    let cs = changes_of(&mut author, "g");
    let mut b = open(1, MemStore::new(), 2, |_| {});
    let mut hand = Hand::new("n0");
    hand.vouch_for(&author);
    let sid = hand_session(&mut b, &mut hand);
    b.handle_input(
        sid,
        &changes_frame(&mut hand, 0, "g", vec![cs[2].clone(), cs[1].clone()]),
        0,
    );
    assert_eq!(b.pending_changes(), 2);
    assert!(
        b.clock(&doc("g")).is_none_or(|c| c.is_empty()),
        "gapped changes are not in the clock"
    );
    b.handle_input(
        sid,
        &changes_frame(&mut hand, 1, "g", vec![cs[0].clone()]),
        0,
    );
    assert_eq!(b.pending_changes(), 0);
    assert_eq!(
        b.clock(&doc("g"))
            .unwrap()
            .get(&author.doc_actor(&doc("g"))),
        3
    );
    assert_eq!(b.json(&doc("g"), false).unwrap().unwrap(), json!({"k": 2}));

    let mut c = open(2, MemStore::new(), 3, |cfg| cfg.pending_changes_max = 1);
    let sid = hand_session(&mut c, &mut hand);
    c.handle_input(
        sid,
        &changes_frame(&mut hand, 0, "g", vec![cs[2].clone(), cs[1].clone()]),
        0,
    );
    assert_eq!(closes(&mut c), vec![(sid, Some(CloseCode::Overloaded))]);
    assert_eq!(c.pending_changes(), 1, "the buffer never exceeds its bound");
}

// Hazard 5: hostile frames end only their own session with a distinct code; the node keeps
// syncing with an honest peer and its stored state is untouched.
#[test]
fn hazard5_hostile_input_ends_only_that_session() {
    let mut net = Net::new(2, |c| {
        c.frame_bytes_max = FRAME_BYTES_MIN.max(1024 * 1024 + 1024)
    });
    net.nodes[0]
        .ingest(&doc("s"), &[reading("r1", 1)], 0)
        .unwrap();
    net.connect(0, 1);
    net.settle();
    let before = net.nodes[1].clock(&doc("s")).cloned();

    let mut author = open(5, MemStore::new(), 9, |_| {});
    author.patch(&doc("g"), &json!({"x": 1}), 0).unwrap();
    let mut good_change = changes_of(&mut author, "g").remove(0);
    let mut corrupt = good_change.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    good_change.extend_from_slice(&[0; 8]);
    let huge = vec![0u8; 1024 * 1024 + 1];
    let mut hand = Hand::new("x");
    hand.vouch_for(&author);

    let pre_hello: Vec<(&str, Vec<Vec<u8>>, CloseCode)> = vec![
        (
            "garbage",
            vec![vec![0, 0, 0, 3, 0xff, 0xfe, 0xfd]],
            CloseCode::Malformed,
        ),
        (
            "oversized frame",
            vec![u32::MAX.to_be_bytes().to_vec()],
            CloseCode::FrameTooLarge,
        ),
        (
            "before hello",
            vec![Message::Summary(Summary {
                entries: vec![],
                last: true,
            })
            .to_frame()],
            CloseCode::Unexpected,
        ),
        (
            "wrong identity",
            vec![hello_from("mallory").to_frame()],
            CloseCode::IdentityMismatch,
        ),
        (
            "wrong version",
            vec![{
                let Message::Hello(mut h) = hello_from("x") else {
                    unreachable!()
                };
                h.version_min = 7;
                h.version_max = 9;
                Message::Hello(h).to_frame()
            }],
            CloseCode::VersionMismatch,
        ),
        (
            "bad magic",
            vec![{
                let Message::Hello(mut h) = hello_from("x") else {
                    unreachable!()
                };
                h.magic = *b"HTTP";
                Message::Hello(h).to_frame()
            }],
            CloseCode::Malformed,
        ),
    ];
    for (what, frames, code) in pre_hello {
        let sid = net.nodes[1].connect(common::cloud(&NodeName::new("x").unwrap()), 0);
        for f in frames {
            net.nodes[1].handle_input(sid, &f, 0);
        }
        let got: Vec<_> = closes(&mut net.nodes[1])
            .into_iter()
            .filter(|(s, _)| *s == sid)
            .collect();
        assert_eq!(got, vec![(sid, Some(code))], "{what}");
    }
    let post_hello: Vec<(&str, Vec<u8>, CloseCode)> = vec![
        (
            "corrupt change",
            changes_frame(&mut hand, 0, "g", vec![corrupt]),
            CloseCode::InvalidChange,
        ),
        (
            "trailing bytes",
            changes_frame(&mut hand, 0, "g", vec![good_change]),
            CloseCode::InvalidChange,
        ),
        (
            "oversized change",
            changes_frame(&mut hand, 0, "g", vec![huge]),
            CloseCode::InvalidChange,
        ),
        (
            "second hello",
            hello_from("x").to_frame(),
            CloseCode::Unexpected,
        ),
    ];
    for (what, frame, code) in post_hello {
        let sid = hand_session(&mut net.nodes[1], &mut hand);
        net.nodes[1].handle_input(sid, &frame, 0);
        let got: Vec<_> = closes(&mut net.nodes[1])
            .into_iter()
            .filter(|(s, _)| *s == sid)
            .collect();
        assert_eq!(got, vec![(sid, Some(code))], "{what}");
    }
    assert_eq!(
        net.nodes[1].clock(&doc("s")).cloned(),
        before,
        "stored state untouched"
    );
    assert!(
        net.nodes[1].clock(&doc("g")).is_none(),
        "nothing of the refused changes was kept"
    );
    // The honest session still works.
    net.nodes[0]
        .ingest(&doc("s"), &[reading("r2", 2)], 0)
        .unwrap();
    net.settle();
    let v = net.nodes[1].sensor_view(&doc("s")).unwrap().unwrap();
    assert_eq!(v.readings.len(), 2);
}

// Reconciliation round trips do not grow with the number of documents, and receipts make a
// reconnect after a partition send only what changed.
#[test]
fn round_trips_independent_of_document_count() {
    let rounds = |docs: usize| {
        let mut net = Net::new(2, |_| {});
        for i in 0..docs {
            net.nodes[0]
                .ingest(&doc(&format!("d/{i}")), &[reading("a", 1)], 0)
                .unwrap();
            net.nodes[1]
                .ingest(&doc(&format!("d/{i}")), &[reading("b", 1)], 0)
                .unwrap();
        }
        net.connect(0, 1);
        let first = net.settle();
        // Partition, change a few documents on each side, heal.
        net.disconnect(0, 1);
        for i in 0..3.min(docs) {
            net.nodes[0]
                .ingest(&doc(&format!("d/{i}")), &[reading("c", 2)], 0)
                .unwrap();
            net.nodes[1]
                .ingest(&doc(&format!("d/{}", docs - 1 - i)), &[reading("d", 2)], 0)
                .unwrap();
        }
        net.connect(0, 1);
        let before: u64 = net.nodes[0]
            .sessions()
            .iter()
            .map(|s| s.stats.changes_sent)
            .sum();
        let second = net.settle();
        let sent: u64 = net.nodes[0]
            .sessions()
            .iter()
            .map(|s| s.stats.changes_sent)
            .sum::<u64>()
            - before;
        (first, second, sent)
    };
    let (f1, s1, _) = rounds(1);
    let (f200, s200, sent200) = rounds(200);
    assert_eq!(
        f1, f200,
        "first sync: same number of exchanges for 1 and 200 documents"
    );
    assert_eq!(s1, s200, "resync: same number of exchanges");
    assert_eq!(
        sent200, 3,
        "after the partition only the 3 changed documents' changes are sent"
    );
}

// A peer whose store was wiped (new store id) is recognised and receives everything again.
#[test]
fn wiped_peer_is_resynchronised() {
    let mut net = Net::new(2, |_| {});
    net.nodes[0]
        .ingest(&doc("s"), &[reading("r1", 1)], 0)
        .unwrap();
    net.connect(0, 1);
    net.settle();
    net.disconnect(0, 1);
    net.nodes[1] = open(1, MemStore::new(), 77, |_| {});
    net.connect(0, 1);
    net.settle();
    let v = net.nodes[1].sensor_view(&doc("s")).unwrap().unwrap();
    assert_eq!(v.readings.len(), 1);
}

// Receipts survive a restart: after reopening, a reconnect to an up-to-date peer sends no
// change at all.
#[test]
fn receipts_survive_restart() {
    let mut net = Net::new(2, |_| {});
    for i in 0..20 {
        net.nodes[0]
            .ingest(&doc(&format!("d/{i}")), &[reading("a", 1)], 0)
            .unwrap();
    }
    net.connect(0, 1);
    net.settle();
    net.disconnect(0, 1);
    let store =
        std::mem::replace(&mut net.nodes[0], open(9, MemStore::new(), 99, |_| {})).into_store();
    net.nodes[0] = open(0, store, 5, |_| {});
    assert_eq!(net.nodes[0].peer_unacked(&name(1)), 0);
    net.connect(0, 1);
    net.settle();
    let sent: u64 = net.nodes[0]
        .sessions()
        .iter()
        .map(|s| s.stats.changes_sent)
        .sum();
    assert_eq!(sent, 0);
}

// A node that received everything from a peer counts nothing as unacknowledged by that peer,
// and never sends those changes back: what a peer sent, it holds durably.
#[test]
fn changes_received_from_a_peer_count_as_held_by_it() {
    let mut net = Net::new(2, |_| {});
    for i in 0..20 {
        net.nodes[0]
            .ingest(&doc(&format!("d/{i}")), &[reading(&format!("r{i}"), 1)], 0)
            .unwrap();
    }
    net.connect(0, 1);
    net.settle();
    assert_eq!(net.nodes[0].peer_unacked(&name(1)), 0);
    assert_eq!(
        net.nodes[1].peer_unacked(&name(0)),
        0,
        "n1 holds nothing n0 lacks"
    );
    let sent_back: u64 = net.nodes[1]
        .sessions()
        .iter()
        .map(|s| s.stats.changes_sent)
        .sum();
    assert_eq!(sent_back, 0);
    // And after a reconnect nothing is sent again, in either direction.
    net.disconnect(0, 1);
    net.connect(0, 1);
    net.settle();
    let sent: u64 = net
        .nodes
        .iter()
        .flat_map(|n| n.sessions())
        .map(|s| s.stats.changes_sent)
        .sum();
    assert_eq!(sent, 0, "nothing is resent after a reconnect");
}

// Attack: a peer sends a change nesting 100,000 maps. Reading such a document as JSON used to
// overflow the stack and abort the process. The change is now refused on receipt (objects nest
// no deeper than a merge patch can build), so no document a peer sends is deeper than a view
// goes; the node goes on serving.
#[test]
fn a_deeply_nested_remote_change_is_refused() {
    use automerge::transaction::Transactable;
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let mut hand = Hand::new("gw-9");
    let sid = hand_session(&mut node, &mut hand);
    let d = doc("app/deep");
    let mut am = automerge::Automerge::new().with_actor(hand.actor(&d, 0));
    let mut tx = am.transaction();
    let mut obj = automerge::ROOT;
    for _ in 0..100_000 {
        obj = tx.put_object(&obj, "n", automerge::ObjType::Map).unwrap();
    }
    tx.commit();
    let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
    send_change(&mut node, sid, &mut hand, &d, change);
    persist(&mut node);
    assert_eq!(node.clock(&d), None, "nothing of it is held");
    let (code, reason) = closed_with(&mut node).expect("the session ends");
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("deeper"), "{reason}");
    node.patch(&doc("app/ok"), &json!({"a": 1}), 0).unwrap();
    persist(&mut node);
    assert_eq!(
        node.json(&doc("app/ok"), false).unwrap(),
        Some(json!({"a": 1}))
    );
}

/// The code and reason of the first session that closed.
fn closed_with(node: &mut Node<MemStore>) -> Option<(Option<CloseCode>, String)> {
    std::iter::from_fn(|| node.poll_event()).find_map(|e| match e {
        Event::SessionClosed { code, reason, .. } => Some((code, reason)),
        _ => None,
    })
}

// Attack: a compressed change chunk under the wire limit whose content inflates to three times
// `change_bytes_max`. It is refused (the session ends with InvalidChange) before anything is
// inflated past the limit, and nothing of it is stored or relayed.
#[test]
fn a_compressed_change_that_inflates_past_the_limit_is_refused() {
    use automerge::transaction::Transactable;
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let limit = node.config().change_bytes_max as usize;
    let mut hand = Hand::new("gw-9");
    let sid = hand_session(&mut node, &mut hand);
    let d = doc("app/bomb");
    let mut am = automerge::Automerge::new().with_actor(hand.actor(&d, 0));
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "zeros", "0".repeat(3 * limit))
        .unwrap();
    tx.commit();
    let mut change = am.get_last_local_change().unwrap();
    let compressed = change.bytes().to_vec();
    assert!(compressed.len() < limit / 10, "{} bytes", compressed.len());
    assert_eq!(compressed[8], 2, "a compressed chunk");
    send_change(&mut node, sid, &mut hand, &d, compressed);
    persist(&mut node);
    assert_eq!(node.clock(&d), None, "nothing of it is held");
    let (code, reason) = closed_with(&mut node).expect("the session ends");
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("exceeds the limit"), "{reason}");
}

// Attack: a peer's change deletes a sensor document's readings map (another replaces it, a
// third overwrites an acknowledged reading). The next ingest into that document used to panic
// the core on every node the change reached. Such changes are now refused on receipt with
// InvalidChange, and the document keeps taking readings.
#[test]
fn a_change_against_the_sensor_schema_is_refused() {
    use automerge::transaction::Transactable;
    for attack in ["delete", "replace", "overwrite"] {
        let mut node = open(0, MemStore::new(), 1, |_| {});
        let d = bucket("site-a/t1");
        node.ingest(&d, &[reading("r-1", 1)], 0).unwrap();
        persist(&mut node);
        // The attacker holds the same document and writes against its schema.
        let mut hand = Hand::new("gw-9");
        let mut am = automerge::Automerge::new().with_actor(hand.actor(&d, 0));
        am.apply_changes(node.with_doc(&d, |a| a.get_changes(&[])).unwrap().unwrap())
            .unwrap();
        let (_, map) = automerge::ReadDoc::get(&am, automerge::ROOT, "readings")
            .unwrap()
            .unwrap();
        let mut tx = am.transaction();
        match attack {
            "delete" => tx.delete(automerge::ROOT, "readings").unwrap(),
            "replace" => tx.put(automerge::ROOT, "readings", "gone").unwrap(),
            _ => tx.put(&map, "r-1", reading("r-1", 99).encode()).unwrap(),
        }
        tx.commit();
        let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
        let sid = hand_session(&mut node, &mut hand);
        send_change(&mut node, sid, &mut hand, &d, change);
        persist(&mut node);
        let (code, reason) = closed_with(&mut node).expect("the session ends");
        assert_eq!(code, Some(CloseCode::InvalidChange), "{attack}: {reason}");
        node.ingest(&d, &[reading("r-2", 2)], 0).unwrap();
        persist(&mut node);
        let view = node.sensor_view(&d).unwrap().unwrap();
        assert_eq!(view.readings.len(), 2, "{attack}");
        assert_eq!(view.readings["r-1"].ts_ms, 1, "{attack}: r-1 untouched");
    }
}

// Attack: a peer names thousands of documents in its batches, with no changes or with changes
// that never become ready. The receiver persists nothing per (peer, document) for documents it
// does not hold, and acknowledges only documents that came with changes.
#[test]
fn naming_documents_does_not_grow_persisted_peer_state() {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    node.patch(&doc("app/held"), &json!({"a": 1}), 0).unwrap();
    persist(&mut node);
    let sid = hand_session(&mut node, &mut Hand::new("gw-9"));
    let docs: Vec<DocChanges> = (0..2000)
        .map(|i| DocChanges {
            doc: doc(&format!("flood/doc-{i}")),
            changes: vec![],
            signed: vec![],
        })
        .collect();
    let batch = Message::Changes(Changes { batch: 0, docs });
    node.handle_input(sid, &batch.to_frame(), 0);
    persist(&mut node);
    let peer = NodeName::new("gw-9").unwrap();
    let reported = node.receipts(&peer).expect("a known peer").reported.clone();
    assert!(
        reported.contains_key(&doc("app/held")),
        "told in the summary"
    );
    assert!(
        reported.keys().all(|d| d.as_str() == "app/held"),
        "persisted for documents it does not hold: {}",
        reported.len()
    );
    let mut acks = 0;
    while let Some(f) = node.poll_transmit(sid) {
        if let Ok(Message::Ack(a)) = Message::from_payload(&f[4..]) {
            assert!(
                a.clocks.is_empty(),
                "{} clocks acknowledged",
                a.clocks.len()
            );
            acks += 1;
        }
    }
    assert_eq!(acks, 1, "the batch is acknowledged");
}

/// The second change of a fresh document (its first withheld), about `kib` KiB: it waits for
/// its dependency in the receiver's causal buffer.
fn orphan_change(hand: &mut Hand, d: &str, i: u64, kib: usize) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut am = automerge::Automerge::new().with_actor(hand.actor(&doc(d), i));
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "first", i as i64).unwrap();
    tx.commit();
    // Varied text, so that the change does not shrink by compression.
    let mut x = i.wrapping_mul(6364136223846793005).wrapping_add(1);
    let text: String = (0..kib * 1024)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (x >> 59) as u8 % 26)
        })
        .collect();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "second", text).unwrap();
    tx.commit();
    am.get_last_local_change().unwrap().raw_bytes().to_vec()
}

/// The close code of `sid`, if it ended.
fn closed_code(node: &mut Node<MemStore>, sid: SessionId) -> Option<CloseCode> {
    std::iter::from_fn(|| node.poll_event()).find_map(|e| match e {
        Event::SessionClosed { session, code, .. } if session == sid => code,
        _ => None,
    })
}

// Attack: a peer sends changes whose dependencies never come, to fill the causal buffer. Its
// share is bounded in bytes (its session ends with Overloaded), and another peer can still
// buffer changes of its own.
#[test]
fn one_peer_cannot_fill_the_causal_buffer() {
    let mut node = open(0, MemStore::new(), 1, |c| {
        c.change_bytes_max = 128 * 1024;
        c.pending_peer_bytes_max = 300 * 1024;
        c.pending_bytes_max = 1024 * 1024;
    });
    let mut gw8 = Hand::new("gw-8");
    let a = hand_session(&mut node, &mut gw8);
    for i in 0..2 {
        let d = format!("app/a-{i}");
        let c = orphan_change(&mut gw8, &d, i, 100);
        send_change(&mut node, a, &mut gw8, &doc(&d), c);
    }
    persist(&mut node);
    assert_eq!(node.pending_changes(), 2);
    assert_eq!(closed_code(&mut node, a), None, "within its share");
    let c = orphan_change(&mut gw8, "app/a-2", 2, 100);
    send_change(&mut node, a, &mut gw8, &doc("app/a-2"), c);
    assert_eq!(closed_code(&mut node, a), Some(CloseCode::Overloaded));
    assert_eq!(node.pending_changes(), 2, "the third was refused");
    let mut gw7 = Hand::new("gw-7");
    let b = hand_session(&mut node, &mut gw7);
    for i in 10..12 {
        let d = format!("app/b-{i}");
        let c = orphan_change(&mut gw7, &d, i, 100);
        send_change(&mut node, b, &mut gw7, &doc(&d), c);
    }
    persist(&mut node);
    assert_eq!(
        closed_code(&mut node, b),
        None,
        "another peer has its own share"
    );
    assert_eq!(node.pending_changes(), 4);
}

/// A change of `base`'s document `d` under the hand's fresh node actor `k` (a member mints node
/// actors at will, each with a statement it signs).
fn change_by_fresh_actor(hand: &mut Hand, d: &str, base: &[automerge::Change], k: u32) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut am = automerge::Automerge::new().with_actor(hand.actor(&doc(d), u64::from(k)));
    am.apply_changes(base.to_vec()).unwrap();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "x", i64::from(k)).unwrap();
    tx.commit();
    am.get_last_local_change().unwrap().raw_bytes().to_vec()
}

fn send_changes(
    node: &mut Node<MemStore>,
    sid: SessionId,
    hand: &mut Hand,
    d: &str,
    changes: Vec<Vec<u8>>,
) {
    node.handle_input(sid, &hand.frames(0, &[(doc(d), changes)]), 0);
    persist(node);
}

/// The limits reported exceeded, and the close codes, since the last call.
fn limits_and_closes(node: &mut Node<MemStore>) -> (Vec<(String, &'static str)>, Vec<CloseCode>) {
    let (mut limits, mut codes) = (Vec::new(), Vec::new());
    while let Some(e) = node.poll_event() {
        match e {
            Event::LimitExceeded { peer, limit } => limits.push((peer.to_string(), limit)),
            Event::SessionClosed { code: Some(c), .. } => codes.push(c),
            _ => {}
        }
    }
    (limits, codes)
}

// Attack 4: changes under 600 fresh actors in one session filled a document's clock (512
// actors), and from then on an honest node that took a new actor could no longer write that
// document. Certificates from before actor slots (here: an unbounded member) still bind any
// actor; slot-bound ones are held to 32 in all (slots.rs).
// Now one session adds at most `session_doc_actors_max` new actors to a document: past that the
// session ends with Overloaded (what it applied stays), so a flood needs a handshake per 64
// actors and is named in the log and the metric each time, while a relay carrying many honest
// writers still gets them all through, a session at a time. Meanwhile the node's own new actor
// and other documents are unaffected.
#[test]
fn one_session_cannot_fill_a_documents_clock() {
    let mut node = open(0, MemStore::new(), 1, common::unbounded);
    let d = "app/shared";
    node.patch(&doc(d), &json!({"a": 1}), 0).unwrap();
    persist(&mut node);
    let base = node
        .with_doc(&doc(d), |a| a.get_changes(&[]))
        .unwrap()
        .unwrap();
    let quota = node.config().session_doc_actors_max;
    let mut gw9 = Hand::unbounded("gw-9");
    let flood: Vec<Vec<u8>> = (0..600)
        .map(|k| change_by_fresh_actor(&mut gw9, d, &base, k))
        .collect();
    let sid = hand_session(&mut node, &mut gw9);
    send_changes(&mut node, sid, &mut gw9, d, flood.clone());
    let (limits, codes) = limits_and_closes(&mut node);
    assert_eq!(limits, vec![("gw-9".to_string(), "session_doc_actors")]);
    assert_eq!(codes, vec![CloseCode::Overloaded]);
    assert_eq!(node.clock(&doc(d)).unwrap().len(), 1 + quota);
    node.disconnect(sid);
    // The next session gets the next `quota` actors, no more.
    let sid = hand_session(&mut node, &mut gw9);
    send_changes(&mut node, sid, &mut gw9, d, flood);
    assert_eq!(limits_and_closes(&mut node).1, vec![CloseCode::Overloaded]);
    assert_eq!(node.clock(&doc(d)).unwrap().len(), 1 + 2 * quota);
    // A restarted node writes under the actor it kept (the clock gains none), and another
    // document takes new actors.
    let store = node.into_store();
    let mut node = open(0, store, 2, common::unbounded);
    node.patch(&doc(d), &json!({"a": 2}), 0).unwrap();
    node.patch(&doc("app/other"), &json!({"b": 1}), 0).unwrap();
    persist(&mut node);
    let other = node
        .with_doc(&doc("app/other"), |a| a.get_changes(&[]))
        .unwrap()
        .unwrap();
    let mut gw8 = Hand::unbounded("gw-8");
    let sid = hand_session(&mut node, &mut gw8);
    let c = change_by_fresh_actor(&mut gw8, "app/other", &other, 1);
    send_changes(&mut node, sid, &mut gw8, "app/other", vec![c]);
    assert_eq!(limits_and_closes(&mut node), (vec![], vec![]));
    assert_eq!(node.clock(&doc(d)).unwrap().len(), 1 + 2 * quota);
}

// Changes waiting for dependencies that never come leave with the session that sent them: its
// peer resends whatever was not acknowledged, so nothing is lost, and nothing waits for ever.
#[test]
fn waiting_changes_leave_with_their_session() {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let d = "app/orphans";
    let (mut gw9, mut gw8) = (Hand::new("gw-9"), Hand::new("gw-8"));
    let sid = hand_session(&mut node, &mut gw9);
    let kept = hand_session(&mut node, &mut gw8);
    let c = orphan_change(&mut gw9, d, 1, 1);
    send_changes(&mut node, sid, &mut gw9, d, vec![c]);
    let c = orphan_change(&mut gw8, d, 2, 1);
    send_changes(&mut node, kept, &mut gw8, d, vec![c]);
    assert_eq!(node.pending_changes(), 2);
    node.disconnect(sid);
    assert_eq!(
        node.pending_changes(),
        1,
        "gw-9's change left with its session"
    );
    let senders: Vec<&str> = node.pending_by_peer().keys().map(|p| p.as_str()).collect();
    assert_eq!(senders, ["gw-8"]);
}

// A name patched as a generic document on one node and ingested as a stream on another: the
// generic document and the stream's buckets are different documents, so nothing is refused and
// both converge. Once a node holds the stream, the name is a stream there: a merge patch into
// it is refused, reads show the stream, and the generic document stays as it was.
#[test]
fn a_name_used_both_ways_converges_without_refusals() {
    let mut net = Net::new(2, |_| {});
    let d = doc("site-a/mixed");
    net.nodes[0]
        .patch(&d, &json!({"note": "x", "readings": 1}), 0)
        .unwrap();
    net.nodes[1].ingest(&d, &[reading("r-1", 1)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    assert!(
        net.closed.is_empty(),
        "no session was refused: {:?}",
        net.closed
    );
    for d in [doc("site-a/mixed"), bucket("site-a/mixed")] {
        let heads: Vec<_> = (0..2).map(|i| net.nodes[i].heads(&d).unwrap()).collect();
        assert!(heads[0].is_some());
        assert_eq!(heads[0], heads[1], "{d}");
    }
    for n in &mut net.nodes {
        let view = n.sensor_view(&d).unwrap().expect("a stream");
        assert_eq!(view.readings.len(), 1);
        assert_eq!(n.json(&d, false).unwrap().unwrap()["note"], "x");
        let refused = n.patch(&d, &json!({"note": "y"}), 0).unwrap_err();
        assert!(
            matches!(refused, edgesync_proto::NodeError::KindMismatch { .. }),
            "{refused}"
        );
        let refused = n
            .patch(&bucket("site-a/mixed"), &json!({"a": 1}), 0)
            .unwrap_err();
        assert!(
            matches!(refused, edgesync_proto::NodeError::Stream(_)),
            "{refused}"
        );
    }
}

// A peer relays a change with a flipped bit (bad memory, a bad disk, a buggy relay). Automerge
// parses it as another change under the same actor and sequence number; accepted, it would
// make honest replicas hold two versions of one change and stop converging. The checksum in
// the chunk's header refuses it.
#[test]
fn a_corrupted_change_is_refused() {
    let (author, good) = author_of_first_reading();
    let mut hand = Hand::new("gw-9");
    hand.vouch_for(&author);
    let corrupted = (8..good.len())
        .map(|at| {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            bad
        })
        .find(|bad| automerge::Change::try_from(&bad[..]).is_ok())
        .expect("some corruption still parses");
    let mut node = open(0, MemStore::new(), 2, |_| {});
    let sid = hand_session(&mut node, &mut hand);
    let genesis = edgesync_proto::doc::sensor_genesis().raw_bytes().to_vec();
    send_changes(
        &mut node,
        sid,
        &mut hand,
        &bucket_name("site-a/t1"),
        vec![genesis, corrupted],
    );
    let (code, reason) = closed_with(&mut node).expect("the session ends");
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("checksum"), "{reason}");
    assert_eq!(
        node.clock(&bucket("site-a/t1")).unwrap().len(),
        1,
        "the genesis only"
    );
}

// Attack: a peer replays a node's first change of one sensor document into another (both
// depend on the genesis alone, so Automerge accepts it there). With one actor per node, the
// node's own first change in that document then carried the same (actor, seq): an equivocation
// that cut the node off from the document. Each document has its own actor, so the replay
// claims an actor its author does not write that document under: refused as unauthorized even
// when the relay presents the author's statement and signature. The author keeps writing.
#[test]
fn a_change_replayed_into_another_document_locks_no_one_out() {
    let (mut author, first) = author_of_first_reading();
    let mut node = open(0, MemStore::new(), 2, |_| {});
    let mut relay = Hand::new("gw-9");
    relay.vouch_for(&author);
    let sid = hand_session(&mut node, &mut relay);
    let genesis = edgesync_proto::doc::sensor_genesis().raw_bytes().to_vec();
    // The replay: t1's change, offered as a change of t2.
    send_changes(
        &mut node,
        sid,
        &mut relay,
        &bucket_name("site-a/t2"),
        vec![genesis, first],
    );
    assert_eq!(
        limits_and_closes(&mut node),
        (vec![], vec![CloseCode::Unauthorized])
    );
    // The author now writes t2 itself and syncs with the node: no equivocation.
    author
        .ingest(&bucket("site-a/t2"), &[reading("r-2", 2)], 0)
        .unwrap();
    persist(&mut author);
    let mine = changes_of(&mut author, &bucket_name("site-a/t2"));
    let mut n1 = Hand::new("n1");
    n1.vouch_for(&author);
    let sid = hand_session(&mut node, &mut n1);
    send_changes(&mut node, sid, &mut n1, &bucket_name("site-a/t2"), mine);
    assert_eq!(limits_and_closes(&mut node), (vec![], vec![]));
    let view = node.sensor_view(&bucket("site-a/t2")).unwrap().unwrap();
    assert!(
        view.readings.contains_key("r-2"),
        "the author's own reading arrived"
    );
}

/// A node that ingested reading r-1 into site-a/t1 (durably), and that change's bytes.
fn author_of_first_reading() -> (Node<MemStore>, Vec<u8>) {
    let mut author = open(1, MemStore::new(), 1, |_| {});
    author
        .ingest(&bucket("site-a/t1"), &[reading("r-1", 1)], 0)
        .unwrap();
    persist(&mut author);
    let first = changes_of(&mut author, &bucket_name("site-a/t1"))
        .pop()
        .unwrap();
    (author, first)
}

// Found by the remote_change fuzz target: a change whose predecessor column names an actor
// past the change's actor table. Automerge parses it, and expanding it (to read its operations)
// panicked the core. Given a valid checksum, as any peer can compute, it is now refused.
#[test]
fn a_change_naming_an_unlisted_actor_is_refused() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/remote_change/decode-pred-actor-out-of-range"
    );
    let mut bytes = std::fs::read(path).unwrap();
    let parsed = automerge::Change::try_from(&bytes[..]).unwrap();
    bytes[4..8].copy_from_slice(&parsed.hash().0[..4]);
    let mut node = open(0, MemStore::new(), 1, |_| {});
    node.ingest(&doc("site-a/t1"), &[reading("r-1", 1)], 0)
        .unwrap();
    persist(&mut node);
    let mut hand = Hand::new("gw-9");
    let sid = hand_session(&mut node, &mut hand);
    send_changes(
        &mut node,
        sid,
        &mut hand,
        &bucket_name("site-a/t1"),
        vec![bytes],
    );
    let (code, reason) = closed_with(&mut node).expect("the session ends");
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("actor"), "{reason}");
}

// A restored copy of a store (a backup taken before the node wrote more, or a cloned disk
// image) keeps its store id, so its peers' receipts say it holds what it lost since the copy,
// and its next writes would take sequence numbers that already left under its actor. Renewed
// (a new store id and actor epoch), it gets everything back from its peers, and its new writes
// reach them without an equivocation.
#[test]
fn a_restored_copy_gets_everything_back_and_writes_under_a_new_actor() {
    for renew in [true, false] {
        let mut net = Net::new(2, |_| {});
        let d = doc("site/s1");
        // Node 0 writes readings `ids` and syncs them to node 1.
        let write_and_sync = |net: &mut Net, ids: std::ops::Range<i64>| {
            for i in ids {
                net.nodes[0]
                    .ingest(&d, &[reading(&format!("r{i}"), i)], 0)
                    .unwrap();
            }
            net.connect(0, 1);
            net.settle();
            net.disconnect(0, 1);
        };
        write_and_sync(&mut net, 0..5);
        persist(&mut net.nodes[0]);
        let backup = net.nodes[0].store().clone();
        write_and_sync(&mut net, 5..10);
        let old_actor = net.nodes[0].doc_actor(&d);
        // The disk dies; the copy comes back.
        net.nodes[0] = open(0, backup, 7, |_| {});
        if renew {
            net.nodes[0].renew_store(&common::boot(8)).unwrap();
            assert_ne!(net.nodes[0].doc_actor(&d), old_actor);
        }
        net.connect(0, 1);
        net.settle();
        let held = |n: &mut Node<MemStore>| {
            let v = n.sensor_view(&d).unwrap().unwrap();
            v.readings.keys().cloned().collect::<Vec<_>>()
        };
        let all: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        if !renew {
            assert_ne!(
                held(&mut net.nodes[0]),
                all,
                "without renewal the copy stays behind"
            );
            continue;
        }
        assert_eq!(held(&mut net.nodes[0]), all);
        net.nodes[0].ingest(&d, &[reading("r10", 10)], 0).unwrap();
        net.settle();
        let refused: Vec<_> = net
            .closed
            .iter()
            .filter(|(_, e)| matches!(e, Event::SessionClosed { code: Some(_), .. }))
            .collect();
        assert!(refused.is_empty(), "{refused:?}");
        let mut more = all.clone();
        more.push("r10".into());
        more.sort();
        assert_eq!(held(&mut net.nodes[1]), more);
        assert_eq!(net.nodes[0].clock(&d), net.nodes[1].clock(&d));
    }
}

/// How many sessions node 1 of `net` ended with `Cloned`.
fn refusals(net: &Net) -> usize {
    net.closed
        .iter()
        .filter(|(i, e)| {
            *i == 1
                && matches!(
                    e,
                    Event::SessionClosed {
                        code: Some(CloseCode::Cloned),
                        by_peer: false,
                        ..
                    }
                )
        })
        .count()
}

// Hazard: two nodes run from copies of one store (a cloned disk image, a backup started beside
// the node it was taken from) share its store id, actors and sequence numbers: they would write
// different changes under the same (actor, seq), and a peer's receipts for that store would mix
// the two. A peer accepts one run of a store at a time: a run older than the newest it accepted,
// or the same run from another boot, ends with `Cloned`, and the peer forgets the receipts the
// copy may have raised. Restarts of one node are never refused.
#[test]
fn a_second_node_run_from_a_copy_of_a_store_is_refused() {
    let mut net = Net::new(2, |_| {});
    let d = doc("site/s1");
    let held = |n: &mut Node<MemStore>| {
        let v = n.sensor_view(&d).unwrap().unwrap();
        v.readings.keys().cloned().collect::<Vec<_>>()
    };
    net.nodes[0].ingest(&d, &[reading("r0", 0)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    net.disconnect(0, 1);
    persist(&mut net.nodes[0]);
    let image = net.nodes[0].store().clone();
    // Restarts, clean or not, are runs of one node: never refused.
    for seed in 20..23 {
        let store = net.nodes[0].store().clone();
        net.nodes[0] = open(0, store, seed, |_| {});
        net.connect(0, 1);
        net.settle();
        net.disconnect(0, 1);
    }
    assert_eq!(refusals(&net), 0);
    // The image runs beside the node (as node 2 of the net, under node 0's name): its run
    // (2) is older than the node's (4): refused, and nothing it wrote is taken.
    net.nodes.push(open(0, image.clone(), 30, |_| {}));
    net.ids.push(net.ids[0].clone());
    net.nodes[2].ingest(&d, &[reading("c0", 1)], 0).unwrap();
    net.connect(1, 2);
    net.settle();
    assert_eq!(refusals(&net), 1);
    assert_eq!(held(&mut net.nodes[1]), vec!["r0"], "nothing of the copy's");
    // The node itself still syncs.
    net.nodes[0].ingest(&d, &[reading("r1", 2)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    net.disconnect(0, 1);
    assert_eq!(held(&mut net.nodes[1]), vec!["r0", "r1"]);
    assert_eq!(refusals(&net), 1);
    // Two nodes opened from one image reach the same run: the first seen is accepted, the
    // other refused. (Both are newer than the node, whose next session is refused in turn: a
    // peer cannot tell the original from a copy, only that there are two.)
    net.links.clear();
    net.nodes[2] = open(0, image.clone(), 31, |_| {});
    net.nodes.push(open(0, image, 33, |_| {}));
    net.ids.push(net.ids[0].clone());
    for (i, seed) in [(2, 32), (3, 34)] {
        for _ in 0..3 {
            let store = net.nodes[i].store().clone();
            net.nodes[i] = open(0, store, seed, |_| {});
        }
    }
    net.connect(1, 2);
    net.settle();
    net.disconnect(1, 2);
    assert_eq!(refusals(&net), 1, "a newer run is accepted");
    net.connect(1, 3);
    net.settle();
    assert_eq!(
        refusals(&net),
        2,
        "the same run from another boot is refused"
    );
    net.connect(0, 1);
    net.settle();
    assert_eq!(refusals(&net), 3, "an older run is refused");
    // The peer keeps what it accepted across its own restarts.
    persist(&mut net.nodes[1]);
    let store = net.nodes[1].store().clone();
    net.nodes[1] = open(1, store, 40, |_| {});
    net.links.clear();
    net.connect(1, 3);
    net.settle();
    assert_eq!(refusals(&net), 4);
    net.connect(1, 2);
    net.settle();
    assert_eq!(refusals(&net), 4, "the accepted run still syncs");
    assert_eq!(held(&mut net.nodes[1]), vec!["r0", "r1"]);
}

// The incarnation is a capability: a peer whose Hello lacks it is never asked for one (older
// builds keep syncing), and the message is refused where it is not promised or late.
#[test]
fn incarnations_follow_the_capability() {
    use edgesync_proto::wire::{Incarnation, CAP_INCARNATION};
    let run = Message::Incarnation(Incarnation {
        incarnation: 1,
        boot: [1; 16],
    });
    let with_cap = |node: &str| match hello_from(node) {
        Message::Hello(mut h) => {
            h.capabilities |= CAP_INCARNATION;
            Message::Hello(h)
        }
        _ => unreachable!(),
    };
    // Without the capability: an Incarnation is unexpected.
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let mut hand = Hand::new("gw-9");
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &run.to_frame(), 0);
    let (code, reason) = closed_with(&mut node).expect("refused");
    assert_eq!(code, Some(CloseCode::Unexpected), "{reason}");
    // With it: changes before the Incarnation are refused...
    let mut node = open(0, MemStore::new(), 1, |_| {});
    hand.new_session();
    let sid = node.connect(hand.identity.clone(), 0);
    node.handle_input(sid, &with_cap("gw-9").to_frame(), 0);
    persist(&mut node);
    let mut out = Vec::new();
    while let Some(f) = node.poll_transmit(sid) {
        out.extend(f);
    }
    let mut dec = edgesync_proto::wire::FrameDecoder::new(FRAME_BYTES_MIN);
    dec.push(&out);
    let mut sent = Vec::new();
    while let Some(m) = dec.next_message().unwrap() {
        sent.push(m);
    }
    assert!(
        matches!(sent.last(), Some(Message::Incarnation(i)) if i.incarnation == 1),
        "the node answers with its own run: {sent:?}"
    );
    let d = doc("app/x");
    node.handle_input(sid, &hand.frames(0, &[(d.clone(), vec![])]), 0);
    let (code, reason) = closed_with(&mut node).expect("refused");
    assert_eq!(code, Some(CloseCode::Unexpected), "{reason}");
    assert!(reason.contains("before incarnation"), "{reason}");
    // ... a second one too.
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let sid = node.connect(hand.identity.clone(), 0);
    node.handle_input(sid, &with_cap("gw-9").to_frame(), 0);
    node.handle_input(sid, &run.to_frame(), 0);
    assert_eq!(closed_with(&mut node), None);
    node.handle_input(sid, &run.to_frame(), 0);
    let (code, _) = closed_with(&mut node).expect("refused");
    assert_eq!(code, Some(CloseCode::Unexpected));
}
