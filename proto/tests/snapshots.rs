//! Snapshot transfer: a peer that holds nothing of a document receives its saved form
//! (`Snapshots`) rather than every change, under the same durability, receipt, validation,
//! limit and authorship rules as changes.

mod common;

use automerge::transaction::Transactable;
use automerge::{Automerge, ReadDoc};
use common::{bucket, doc, hand_session, open, persist, Hand, Net};
use edgesync_proto::wire::{
    DocSnapshot, FrameDecoder, Message, Signed, Snapshots, FRAME_BYTES_LIMIT, FRAME_BYTES_MIN,
};
use edgesync_proto::{CloseCode, DocId, Event, MemStore, Node, Reading};
use serde_json::json;

fn reading(id: &str, ts: i64) -> Reading {
    Reading::from_json(
        id,
        ts,
        &json!({ "temp": 20.5, "note": format!("reading {id}") }),
    )
    .unwrap()
}

/// Writes `n` changes into each of two buckets and one plain document at node `i`.
fn fill(net: &mut Net, i: usize, n: usize) -> Vec<DocId> {
    let docs = vec![
        bucket("site-a/t1"),
        bucket("site-a/t2"),
        doc("site-a/config"),
    ];
    for k in 0..n {
        for d in &docs[..2] {
            let r = reading(&format!("r-{k}"), k as i64);
            net.nodes[i].ingest(d, &[r], k as u64).unwrap();
        }
        let p = json!({ "k": k, "name": format!("config {k}") });
        net.nodes[i].patch(&docs[2], &p, k as u64).unwrap();
        persist(&mut net.nodes[i]);
    }
    docs
}

/// The messages of a stream of frames.
fn messages(frames: &[Vec<u8>]) -> Vec<Message> {
    let mut d = FrameDecoder::new(FRAME_BYTES_LIMIT);
    frames.iter().for_each(|f| d.push(f));
    std::iter::from_fn(|| d.next_message().unwrap()).collect()
}

/// Settles `net`, returning every frame sent on link (a, b) in direction `dir`.
fn settle_recording(net: &mut Net, a: usize, b: usize, dir: usize) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        net.pull();
        let keys: Vec<(usize, usize)> = net.links.keys().copied().collect();
        let mut moved = false;
        for (x, y) in keys {
            for d in 0..2 {
                if (x, y, d) == (a, b, dir) {
                    if let Some(l) = net.links.get(&(x, y)) {
                        seen.extend(l.queues[d].iter().cloned());
                    }
                }
                while net.deliver(x, y, d, 0, 1) {
                    moved = true;
                }
            }
        }
        net.drain_events();
        if !moved {
            return seen;
        }
    }
    panic!("no quiescence");
}

fn heads(n: &mut Node<MemStore>, d: &DocId) -> Vec<automerge::ChangeHash> {
    n.with_doc(d, |a| a.get_heads()).unwrap().unwrap()
}

fn snapshot_count(frames: &[Vec<u8>]) -> usize {
    messages(frames)
        .iter()
        .map(|m| match m {
            Message::Snapshots(s) => s.docs.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn an_empty_peer_receives_each_document_whole_in_fewer_bytes() {
    let mut bytes = Vec::new();
    for snapshots in [true, false] {
        let mut net = Net::new(2, |c| c.snapshot_transfer = snapshots);
        let docs = fill(&mut net, 0, 120);
        net.connect(0, 1);
        let frames = settle_recording(&mut net, 0, 1, 0);
        assert!(net.closed.is_empty(), "{:?}", net.closed);
        for d in &docs {
            assert_eq!(
                heads(&mut net.nodes[0], d),
                heads(&mut net.nodes[1], d),
                "{d}"
            );
            assert_eq!(net.nodes[0].clock(d), net.nodes[1].clock(d), "{d}");
        }
        let sent = snapshot_count(&frames);
        if snapshots {
            assert_eq!(sent, docs.len(), "every document went whole");
        } else {
            assert_eq!(sent, 0);
        }
        // Every change counted applied once (the snapshot's changes are received changes).
        let total: u64 = docs
            .iter()
            .map(|d| net.nodes[0].clock(d).unwrap().total())
            .sum();
        let stats = net.nodes[1].session_totals();
        assert_eq!(stats.changes_applied, total);
        assert_eq!(stats.changes_duplicate, 0);
        // The receiver, reopened from its durable store, holds all of it (a snapshot's changes
        // are stored as changes are).
        let mut store = net.nodes[1].store().clone();
        store.crash();
        let mut reopened = open(1, store, 7, |_| {});
        for d in &docs {
            assert_eq!(
                heads(&mut reopened, d),
                heads(&mut net.nodes[0], d),
                "{d} after reopen"
            );
            reopened.verify_clock(d).unwrap();
        }
        bytes.push(frames.iter().map(Vec::len).sum::<usize>());
    }
    assert!(
        bytes[0] * 3 < bytes[1],
        "snapshots {} bytes, changes {} bytes",
        bytes[0],
        bytes[1]
    );
}

#[test]
fn a_peer_that_does_not_accept_snapshots_gets_changes() {
    let mut net = Net::new(2, |_| {});
    // Node 1 does not offer the capability; node 0 would send snapshots.
    let mut net2 = Net::new(2, |c| c.snapshot_transfer = c.name.as_str() != "n1");
    for net in [&mut net, &mut net2] {
        let docs = fill(net, 0, 20);
        net.connect(0, 1);
        let frames = settle_recording(net, 0, 1, 0);
        for d in &docs {
            assert_eq!(heads(&mut net.nodes[0], d), heads(&mut net.nodes[1], d));
        }
        assert!(net.closed.is_empty());
        let _ = frames;
    }
    let frames = {
        let mut net = Net::new(2, |c| c.snapshot_transfer = c.name.as_str() != "n1");
        fill(&mut net, 0, 20);
        net.connect(0, 1);
        settle_recording(&mut net, 0, 1, 0)
    };
    assert_eq!(snapshot_count(&frames), 0);
}

// A document not in memory whose stored snapshot covers all of it goes as that snapshot, and
// whole: the receiver needs no change after it.
#[test]
fn a_stored_snapshot_goes_whole_when_it_covers_the_document() {
    let tweak = |c: &mut edgesync_proto::Config| c.snapshot_changes_min = 8;
    let mut net = Net::new(2, tweak);
    let d = doc("site-a/config");
    for k in 0..40 {
        let p = json!({ "k": k, "name": format!("config {k}") });
        net.nodes[0].patch(&d, &p, k).unwrap();
        persist(&mut net.nodes[0]);
    }
    // Reopened from its store: nothing in memory.
    let store = net.nodes[0].store().clone();
    net.nodes[0] = open(0, store, 1, tweak);
    net.connect(0, 1);
    let frames = settle_recording(&mut net, 0, 1, 0);
    assert_eq!(heads(&mut net.nodes[0], &d), heads(&mut net.nodes[1], &d));
    let ms = messages(&frames);
    let snapshots: Vec<&DocSnapshot> = ms
        .iter()
        .filter_map(|m| match m {
            Message::Snapshots(s) => Some(s.docs.iter()),
            _ => None,
        })
        .flatten()
        .filter(|s| s.doc == d)
        .collect();
    assert_eq!(snapshots.len(), 1);
    let changes_after = ms.iter().any(|m| match m {
        Message::Changes(c) => c.docs.iter().any(|dc| dc.doc == d),
        _ => false,
    });
    assert!(!changes_after, "the snapshot held the whole document");
    let held = automerge::Automerge::load(&snapshots[0].saved).unwrap();
    assert_eq!(held.get_heads(), heads(&mut net.nodes[0], &d));
}

// A node that received a document as a snapshot relays it, as changes, to a peer whose frame
// limit is the protocol's smallest: the snapshot carried the signatures of every cut point.
#[test]
fn a_received_snapshot_relays_through_the_smallest_frames() {
    let mut net = Net::new(3, |c| {
        // Every node's changes fit the smallest frames (a peer refuses a smaller limit).
        c.change_bytes_max = FRAME_BYTES_MIN - edgesync_proto::wire::CHANGES_OVERHEAD_BYTES;
        if c.name.as_str() == "n2" {
            c.frame_bytes_max = FRAME_BYTES_MIN;
            c.snapshot_transfer = false;
        }
    });
    let docs = fill(&mut net, 0, 300);
    net.connect(0, 1);
    let frames = settle_recording(&mut net, 0, 1, 0);
    assert_eq!(snapshot_count(&frames), docs.len());
    net.disconnect(0, 1);
    net.connect(1, 2);
    net.settle();
    let refused = |e: &Event| matches!(e, Event::SessionClosed { code: Some(_), .. });
    assert!(
        !net.closed.iter().any(|(_, e)| refused(e)),
        "{:?}",
        net.closed
    );
    for d in &docs {
        assert_eq!(
            heads(&mut net.nodes[0], d),
            heads(&mut net.nodes[2], d),
            "{d}"
        );
    }
}

fn closed(node: &mut Node<MemStore>) -> Option<(Option<CloseCode>, String)> {
    while let Some(e) = node.poll_event() {
        if let Event::SessionClosed { code, reason, .. } = e {
            return Some((code, reason));
        }
    }
    None
}

/// A document of `n` changes written by the hand's first actor.
fn hand_doc(hand: &mut Hand, d: &DocId, n: usize) -> Automerge {
    let mut am = Automerge::new().with_actor(hand.actor(d, 0));
    for k in 0..n {
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, format!("k{}", k % 5), k as i64)
            .unwrap();
        tx.commit();
    }
    am
}

/// The frames of a Snapshots batch holding `am` as the hand would send it: its statements,
/// then the snapshot with the signatures of a Changes section of the same changes, renumbered
/// by actor and sequence number; `renumber` may change them after.
fn snapshot_frames(
    hand: &mut Hand,
    batch: u64,
    d: &DocId,
    am: &Automerge,
    renumber: impl Fn(u32) -> u32,
) -> Vec<u8> {
    let changes: Vec<Vec<u8>> = am
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let frames = hand.frames(batch, &[(d.clone(), changes.clone())]);
    let mut order: Vec<usize> = (0..changes.len()).collect();
    let key = |i: usize| {
        let c = automerge::Change::try_from(&changes[i][..]).unwrap();
        (c.actor_id().to_bytes().to_vec(), c.seq())
    };
    order.sort_by_key(|&i| key(i));
    let mut out = Vec::new();
    for m in messages(&[frames]) {
        match m {
            Message::Changes(c) => {
                let dc = &c.docs[0];
                let signed = dc
                    .signed
                    .iter()
                    .map(|s| Signed {
                        change: renumber(
                            order.iter().position(|&i| i == s.change as usize).unwrap() as u32,
                        ),
                        ..s.clone()
                    })
                    .collect();
                out.extend(
                    Message::Snapshots(Snapshots {
                        batch,
                        docs: vec![DocSnapshot {
                            doc: d.clone(),
                            saved: am.save(),
                            signed,
                        }],
                    })
                    .to_frame(),
                );
            }
            other => out.extend(other.to_frame()),
        }
    }
    out
}

#[test]
fn a_members_snapshot_is_applied_and_acknowledged_once_durable() {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let mut hand = Hand::new("gw-9");
    let d = doc("site-a/shared");
    let am = hand_doc(&mut hand, &d, 40);
    let sid = hand_session(&mut node, &mut hand);
    while node.poll_transmit(sid).is_some() {}
    node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d, &am, |i| i), 0);
    assert_eq!(closed(&mut node), None);
    assert_eq!(heads(&mut node, &d), am.get_heads());
    // The Ack leaves only once the commit is durable.
    let acks = |node: &mut Node<MemStore>| {
        let mut frames = Vec::new();
        while let Some(f) = node.poll_transmit(sid) {
            frames.push(f);
        }
        messages(&frames)
            .into_iter()
            .filter(|m| matches!(m, Message::Ack(_)))
            .count()
    };
    assert_eq!(acks(&mut node), 0);
    persist(&mut node);
    assert_eq!(acks(&mut node), 1);
}

#[test]
fn hostile_snapshots_end_the_session_and_leave_the_node_as_it_was() {
    let d = doc("site-a/shared");
    type Case = (
        &'static str,
        Box<dyn Fn(&mut Hand, &Automerge) -> Vec<u8>>,
        CloseCode,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage",
            Box::new(|_, _| {
                Message::Snapshots(Snapshots {
                    batch: 0,
                    docs: vec![DocSnapshot {
                        doc: doc("site-a/shared"),
                        saved: b"\x85\x6f\x4a\x83 not a document".to_vec(),
                        signed: vec![],
                    }],
                })
                .to_frame()
            }),
            CloseCode::InvalidChange,
        ),
        (
            "a change chunk in place of a document",
            Box::new(|_, am| {
                Message::Snapshots(Snapshots {
                    batch: 0,
                    docs: vec![DocSnapshot {
                        doc: doc("site-a/shared"),
                        saved: am.get_changes(&[])[0].raw_bytes().to_vec(),
                        signed: vec![],
                    }],
                })
                .to_frame()
            }),
            CloseCode::InvalidChange,
        ),
        (
            "a signature naming no change",
            Box::new(|hand, am| snapshot_frames(hand, 0, &doc("site-a/shared"), am, |i| i + 1_000)),
            CloseCode::Unauthorized,
        ),
        (
            "a signature naming another change",
            Box::new(|hand, am| snapshot_frames(hand, 0, &doc("site-a/shared"), am, |i| i / 2)),
            CloseCode::Unauthorized,
        ),
        (
            "no signatures",
            Box::new(|hand, am| {
                let mut f = snapshot_frames(hand, 0, &doc("site-a/shared"), am, |i| i);
                // Strip them: the last frame is the batch.
                let ms = messages(&[std::mem::take(&mut f)]);
                for m in ms {
                    let m = match m {
                        Message::Snapshots(mut s) => {
                            s.docs[0].signed.clear();
                            Message::Snapshots(s)
                        }
                        m => m,
                    };
                    f.extend(m.to_frame());
                }
                f
            }),
            CloseCode::Unauthorized,
        ),
    ];
    for (what, frames, code) in cases {
        let mut node = open(0, MemStore::new(), 1, |_| {});
        let mut hand = Hand::new("gw-9");
        let am = hand_doc(&mut hand, &d, 40);
        let sid = hand_session(&mut node, &mut hand);
        node.handle_input(sid, &frames(&mut hand, &am), 0);
        let (got, reason) = closed(&mut node).unwrap_or_else(|| panic!("{what}: not closed"));
        assert_eq!(got, Some(code), "{what}: {reason}");
        assert!(node.clock(&d).is_none(), "{what}: nothing of it is held");
        // The node goes on: its own writes and a member's good snapshot are taken.
        node.patch(&doc("site-a/own"), &json!({ "ok": true }), 0)
            .unwrap();
        let sid = hand_session(&mut node, &mut hand);
        node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d, &am, |i| i), 0);
        assert_eq!(closed(&mut node), None, "{what}");
        assert_eq!(heads(&mut node, &d), am.get_heads(), "{what}");
    }
}

#[test]
fn a_node_that_does_not_accept_snapshots_refuses_them() {
    let mut node = open(0, MemStore::new(), 1, |c| c.snapshot_transfer = false);
    let mut hand = Hand::new("gw-9");
    let d = doc("site-a/shared");
    let am = hand_doc(&mut hand, &d, 5);
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d, &am, |i| i), 0);
    assert_eq!(
        closed(&mut node).map(|c| c.0),
        Some(Some(CloseCode::Unexpected))
    );
    assert!(node.clock(&d).is_none());
}

#[test]
fn a_snapshot_past_the_frame_limit_as_changes_is_refused() {
    // 16 KiB frames: a document whose changes take more than that is refused, however small
    // its saved form.
    let mut node = open(0, MemStore::new(), 1, |c| {
        c.frame_bytes_max = FRAME_BYTES_MIN;
        c.change_bytes_max = FRAME_BYTES_MIN - edgesync_proto::wire::CHANGES_OVERHEAD_BYTES;
    });
    let mut hand = Hand::new("gw-9");
    let d = doc("site-a/shared");
    let am = hand_doc(&mut hand, &d, 400);
    let raw: usize = am
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().len())
        .sum();
    assert!(raw > FRAME_BYTES_MIN as usize && am.save().len() < 4096);
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d, &am, |i| i), 0);
    let (code, reason) = closed(&mut node).unwrap();
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("exceeds"), "{reason}");
    assert!(node.clock(&d).is_none());
}

// A node that holds nothing of a document takes the snapshot's loaded copy as its document
// (rather than applying every change again) only when that copy is exactly what it would
// hold: over a document held in part it still ends with the snapshot's document, and over a
// document holding a change the snapshot lacks it keeps that change, in memory and in store.
#[test]
fn a_snapshot_over_a_document_held_in_part_keeps_every_change() {
    let d = doc("site-a/shared");
    let mut hand = Hand::new("gw-9");
    let am = hand_doc(&mut hand, &d, 40);
    let changes: Vec<Vec<u8>> = am
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();

    // Its first ten changes are held already.
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(
        sid,
        &hand.frames(0, &[(d.clone(), changes[..10].to_vec())]),
        0,
    );
    node.handle_input(sid, &snapshot_frames(&mut hand, 1, &d, &am, |i| i), 0);
    assert_eq!(closed(&mut node), None);
    assert_eq!(heads(&mut node, &d), am.get_heads());
    assert_eq!(node.clock(&d).unwrap().total(), 40);

    // A change of this node's own, concurrent with the snapshot's.
    let mut node = open(0, MemStore::new(), 1, |_| {});
    node.patch(&d, &json!({"local": 1}), 0).unwrap();
    let own = heads(&mut node, &d);
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d, &am, |i| i), 0);
    assert_eq!(closed(&mut node), None);
    let mut want: Vec<_> = own.iter().chain(am.get_heads().iter()).copied().collect();
    want.sort();
    let mut got = heads(&mut node, &d);
    got.sort();
    assert_eq!(got, want, "both the node's change and the snapshot's");
    assert_eq!(node.clock(&d).unwrap().total(), 41);
    persist(&mut node);
    let mut reopened = open(0, node.into_store(), 2, |_| {});
    let mut stored = heads(&mut reopened, &d);
    stored.sort();
    assert_eq!(stored, want, "the store holds what memory held");
}

// A Snapshots batch holds at most the change bytes one Changes frame could: of two documents
// that each fit the frame limit as changes, the second is refused in the same batch, and
// taken in a batch of its own.
#[test]
fn a_snapshots_batch_past_the_frame_limit_in_changes_is_refused() {
    let small = |c: &mut edgesync_proto::Config| {
        c.frame_bytes_max = FRAME_BYTES_MIN;
        c.change_bytes_max = FRAME_BYTES_MIN - edgesync_proto::wire::CHANGES_OVERHEAD_BYTES;
    };
    let mut hand = Hand::new("gw-9");
    let (d1, d2) = (doc("site-a/one"), doc("site-a/two"));
    let (a1, a2) = (hand_doc(&mut hand, &d1, 120), hand_doc(&mut hand, &d2, 120));
    let raw = |am: &Automerge| -> usize {
        am.get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().len())
            .sum()
    };
    let limit = FRAME_BYTES_MIN as usize;
    assert!(
        raw(&a1) < limit && raw(&a2) < limit && raw(&a1) + raw(&a2) > limit,
        "{} and {} bytes of changes",
        raw(&a1),
        raw(&a2)
    );
    // Both snapshots in batch 0: the hand's frames for each, merged into one Snapshots.
    let both = |hand: &mut Hand| -> Vec<u8> {
        let mut msgs = messages(&[snapshot_frames(hand, 0, &d1, &a1, |i| i)]);
        msgs.extend(messages(&[snapshot_frames(hand, 0, &d2, &a2, |i| i)]));
        let mut docs = Vec::new();
        let mut out = Vec::new();
        for m in msgs {
            match m {
                // (The hand signs every change; the last one of the document's one actor
                // proves the rest, and two sections of all their signatures would not fit
                // one frame.)
                Message::Snapshots(s) => docs.extend(s.docs.into_iter().map(|mut ds| {
                    ds.signed.sort_by_key(|x| x.change);
                    ds.signed.drain(..ds.signed.len() - 1);
                    ds
                })),
                other => out.extend(other.to_frame()),
            }
        }
        assert_eq!(docs.len(), 2);
        out.extend(Message::Snapshots(Snapshots { batch: 0, docs }).to_frame());
        out
    };
    let mut node = open(0, MemStore::new(), 1, small);
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &both(&mut hand), 0);
    let (code, reason) = closed(&mut node).unwrap();
    assert_eq!(code, Some(CloseCode::InvalidChange), "{reason}");
    assert!(reason.contains("batch's snapshots"), "{reason}");
    // What came before the snapshot past the bound stays, as for any refused section.
    assert_eq!(heads(&mut node, &d1), a1.get_heads());
    assert!(node.clock(&d2).is_none());

    // The same two snapshots in two batches are taken.
    let mut hand = Hand::new("gw-9");
    let (a1, a2) = (hand_doc(&mut hand, &d1, 120), hand_doc(&mut hand, &d2, 120));
    let mut node = open(0, MemStore::new(), 1, small);
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &snapshot_frames(&mut hand, 0, &d1, &a1, |i| i), 0);
    node.handle_input(sid, &snapshot_frames(&mut hand, 1, &d2, &a2, |i| i), 0);
    assert_eq!(closed(&mut node), None);
    assert_eq!(heads(&mut node, &d1), a1.get_heads());
    assert_eq!(heads(&mut node, &d2), a2.get_heads());
}

// A reading ingested where the peer sent the bucket as a snapshot: the journal folds first
// and both sides converge (the snapshot's changes are concurrent with the fold's).
#[test]
fn a_snapshot_into_a_bucket_with_journaled_readings_converges() {
    let mut net = Net::new(2, |c| c.journal_readings_max = 4096);
    let d = bucket("site-a/t1");
    for k in 0..50 {
        net.nodes[0]
            .ingest(&d, &[reading(&format!("a-{k}"), k)], 0)
            .unwrap();
        net.nodes[0].handle_timeout(1_000_000);
        persist(&mut net.nodes[0]);
    }
    net.nodes[1].ingest(&d, &[reading("b-0", 7)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    for _ in 0..3 {
        for i in 0..2 {
            net.nodes[i].handle_timeout(2_000_000);
        }
        net.settle();
    }
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(heads(&mut net.nodes[0], &d), heads(&mut net.nodes[1], &d));
    // Both sides' readings are in it: 50 from node 0's snapshot, one folded at node 1.
    let n = net.nodes[1]
        .with_doc(&d, |a| {
            let (_, map) = a.get(automerge::ROOT, "readings").unwrap().unwrap();
            a.length(&map)
        })
        .unwrap()
        .unwrap();
    assert_eq!(n, 51);
}

// A section is cut (every actor's last change so far signed) where the changes since the
// previous cut and the signatures of the cut fit a frame of the smallest limit, and no more
// often: before a cut, one more change would have passed the 12 KiB of frame bytes
// (PROTOCOL.md §8.2). Counted as a frame counts them: a change's bytes plus 16 plus the
// document id, and 96 bytes a signature.
#[test]
fn sections_are_cut_every_twelve_kib_of_frame_bytes() {
    const SEAL: usize = 12 * 1024;
    let mut net = Net::new(2, |c| {
        c.snapshot_transfer = false;
    });
    fill(&mut net, 0, 400);
    net.connect(0, 1);
    let frames = settle_recording(&mut net, 0, 1, 0);
    let (mut sections, mut cuts) = (0, 0);
    for m in messages(&frames) {
        let Message::Changes(c) = m else { continue };
        for dc in &c.docs {
            sections += 1;
            let cost = |i: usize| dc.changes[i].0.len() + 16 + dc.doc.as_str().len();
            let mut signed: Vec<usize> = dc.signed.iter().map(|s| s.change as usize).collect();
            signed.sort_unstable();
            signed.dedup();
            let mut from = 0;
            for (k, &at) in signed.iter().enumerate() {
                let gap: usize = (from..=at).map(cost).sum::<usize>() + 96;
                assert!(
                    gap <= SEAL || at == from,
                    "{}: {gap} frame bytes between cuts before change {at}",
                    dc.doc
                );
                if k + 1 < signed.len() {
                    cuts += 1;
                    assert!(
                        gap + cost(at + 1) > SEAL,
                        "{}: cut before change {} with {gap} frame bytes since the last",
                        dc.doc,
                        at + 1
                    );
                }
                from = at + 1;
            }
            assert_eq!(
                from,
                dc.changes.len(),
                "the section ends on a signed change"
            );
        }
    }
    assert!(
        sections >= 3 && cuts >= 6,
        "{sections} sections, {cuts} cuts"
    );
}

// A document received whole as a snapshot becomes the receiver's loaded copy: the receiver's
// next change to it is written under its own actor for the document, so its peers accept it
// (seed 44000129: the loaded copy kept the random actor of Automerge's load, and every
// session that carried the receiver's next change to it was refused as unauthorized).
#[test]
fn a_document_received_as_a_snapshot_is_written_under_the_receivers_actor() {
    let mut net = Net::new(2, |_| {});
    let d = doc("site-a/config");
    for k in 0..40 {
        let p = json!({ "k": k, "name": format!("config {k}") });
        net.nodes[0].patch(&d, &p, k).unwrap();
        persist(&mut net.nodes[0]);
    }
    net.connect(0, 1);
    let frames = settle_recording(&mut net, 0, 1, 0);
    assert_eq!(snapshot_count(&frames), 1);
    net.nodes[1].patch(&d, &json!({ "by": "n1" }), 100).unwrap();
    persist(&mut net.nodes[1]);
    let own = net.nodes[1].doc_actor(&d).to_automerge();
    let actor = net.nodes[1]
        .with_doc(&d, |a| {
            a.get_last_local_change().map(|c| c.actor_id().clone())
        })
        .unwrap()
        .unwrap();
    assert_eq!(actor, Some(own));
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(heads(&mut net.nodes[0], &d), heads(&mut net.nodes[1], &d));
}
