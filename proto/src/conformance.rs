//! A conformance suite for [`Store`] implementations: the in-memory store of the simulator and
//! the RocksDB store of the node must behave the same. Each check panics with a message on a
//! difference; call [`check_store`] from a test of the implementation.

use std::collections::BTreeMap;

use crate::store::{
    DocMeta, FeedEvent, NodeMeta, PeerReceipts, Store, StoredChange, WriteBatch, WriteOp,
    LOGICAL_SCHEMA_VERSION,
};
use crate::wire::Incarnation;
use crate::{Actor, Boot, Config, DocId, Node, NodeName, Reading, VectorClock};

fn doc(s: &str) -> DocId {
    DocId::new(s).expect("valid")
}

fn peer(s: &str) -> NodeName {
    NodeName::new(s).expect("valid")
}

fn change(order: u64, actor: u8, seq: u64) -> StoredChange {
    StoredChange {
        order,
        actor: Actor([actor; 16]),
        seq,
        hash: [order as u8 ^ actor; 32],
        bytes: vec![actor; 3 + order as usize],
        author: (!order.is_multiple_of(3)).then_some(Actor([actor ^ 0x55; 16])),
        sig: (order % 2 == 1).then(|| vec![order as u8; 64]),
    }
}

fn clock(pairs: &[(u8, u64)]) -> VectorClock {
    pairs.iter().map(|(a, s)| (Actor([*a; 16]), *s)).collect()
}

/// Runs every check. `fresh` makes an empty store; `reopen` makes what was committed durable,
/// closes the store and opens it again (a restart).
pub fn check_store<S: Store>(mut fresh: impl FnMut() -> S, mut reopen: impl FnMut(S) -> S) {
    empty_store_is_empty(fresh());
    writes_read_back(fresh(), &mut reopen);
    ranges_respect_documents_and_bounds(fresh());
    peers_reset_forgets_receipts(fresh(), &mut reopen);
    peers_keep_the_incarnation_seen_per_store(fresh(), &mut reopen);
    dropping_a_document_keeps_its_neighbours(fresh(), &mut reopen);
    node_state_survives_reopen(fresh(), &mut reopen);
    feed_reads_in_order_and_trims(fresh(), &mut reopen);
    journal_holds_readings_until_deleted(fresh(), &mut reopen);
}

fn journal_holds_readings_until_deleted<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    assert!(s.journal().unwrap().is_empty());
    let put = |d: &str, id: &str| WriteOp::PutJournal {
        doc: doc(d),
        id: id.to_string(),
        body: format!("{{\"ts\":1,\"in\":\"{d}\"}}"),
    };
    // "a" and "a/b" and "a.b": a document's entries stay apart from its neighbours'.
    s.commit(WriteBatch {
        ops: vec![
            put("a/b", "r2"),
            put("a", "r1"),
            put("a", "r0"),
            put("a.b", "r1"),
            put("c", "x"),
        ],
    })
    .unwrap();
    let ids = |s: &S| -> Vec<(String, String)> {
        s.journal()
            .unwrap()
            .into_iter()
            .map(|(d, id, body)| {
                assert_eq!(body, format!("{{\"ts\":1,\"in\":\"{d}\"}}"));
                (d.to_string(), id)
            })
            .collect()
    };
    let pair = |d: &str, id: &str| (d.to_string(), id.to_string());
    let mut s = reopen(s);
    let mut want = vec![
        pair("a", "r0"),
        pair("a", "r1"),
        pair("a/b", "r2"),
        pair("a.b", "r1"),
        pair("c", "x"),
    ];
    want.sort_by(|x, y| (doc(&x.0), &x.1).cmp(&(doc(&y.0), &y.1)));
    let mut got = ids(&s);
    got.sort_by(|x, y| (doc(&x.0), &x.1).cmp(&(doc(&y.0), &y.1)));
    assert_eq!(got, want);
    s.commit(WriteBatch {
        ops: vec![
            WriteOp::DeleteJournal {
                doc: doc("a"),
                ids: vec!["r1".into(), "missing".into()],
            },
            WriteOp::DropDoc {
                doc: doc("c"),
                peers: vec![],
            },
        ],
    })
    .unwrap();
    let s = reopen(s);
    let mut got = ids(&s);
    got.sort();
    assert_eq!(
        got,
        vec![pair("a", "r0"), pair("a.b", "r1"), pair("a/b", "r2")]
    );
}

fn feed_reads_in_order_and_trims<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    assert_eq!(s.feed_bounds().unwrap(), None);
    assert!(s.feed(0, 10).unwrap().is_empty());
    let event = |i: u64| FeedEvent {
        doc: doc(if i.is_multiple_of(2) { "a" } else { "b/c" }),
        reading: (!i.is_multiple_of(3)).then(|| (format!("r{i}"), format!("{{\"ts\":{i}}}"))),
        origin: i.is_multiple_of(4).then(|| peer("p")),
    };
    // Cursors past 255 and 65535 order as numbers, not as their first bytes.
    let cursors = [1u64, 2, 3, 300, 70_000, 70_001];
    s.commit(WriteBatch {
        ops: cursors
            .iter()
            .map(|c| WriteOp::PutFeed {
                cursor: *c,
                event: event(*c),
            })
            .collect(),
    })
    .unwrap();
    let s = reopen(s);
    assert_eq!(s.feed_bounds().unwrap(), Some((1, 70_001)));
    let all: Vec<u64> = s.feed(0, 100).unwrap().iter().map(|(c, _)| *c).collect();
    assert_eq!(all, cursors);
    let page = s.feed(3, 2).unwrap();
    assert_eq!(page, vec![(300, event(300)), (70_000, event(70_000))]);
    assert!(s.feed(70_001, 10).unwrap().is_empty());
    let mut s = s;
    s.commit(WriteBatch {
        ops: vec![WriteOp::TrimFeed { below: 300 }],
    })
    .unwrap();
    let s = reopen(s);
    assert_eq!(s.feed_bounds().unwrap(), Some((300, 70_001)));
    assert_eq!(s.feed(0, 1).unwrap(), vec![(300, event(300))]);
}

fn empty_store_is_empty<S: Store>(s: S) {
    assert_eq!(s.node_meta().unwrap(), None);
    assert!(s.docs().unwrap().is_empty());
    assert!(s.peers().unwrap().is_empty());
    assert_eq!(s.snapshot(&doc("a")).unwrap(), None);
    assert!(s.changes_from(&doc("a"), 0, 10).unwrap().is_empty());
    assert!(s
        .change_index(&doc("a"), &Actor([1; 16]), 1..=u64::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(s.change_at(&doc("a"), 0).unwrap(), None);
}

fn writes_read_back<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    let meta = NodeMeta {
        schema_version: LOGICAL_SCHEMA_VERSION,
        name: peer("n"),
        store_id: [3; 16],
        incarnation: 7,
        actor_epoch: 3,
        actor_nonce: [5; 16],
        running: true,
        author_key: [6; 32],
        slot_space: [4; 32],
        actor_slot: 9,
        settled: false,
    };
    let dm = DocMeta {
        clock: clock(&[(1, 2)]),
        next_order: 2,
        snapshot_order: 1,
        pruned: true,
    };
    let batch = WriteBatch {
        ops: vec![
            WriteOp::PutNodeMeta(meta.clone()),
            WriteOp::PutChange {
                doc: doc("a"),
                change: change(0, 1, 1),
            },
            WriteOp::PutChange {
                doc: doc("a"),
                change: change(1, 1, 2),
            },
            WriteOp::PutDocMeta {
                doc: doc("a"),
                meta: dm.clone(),
            },
            WriteOp::PutSnapshot {
                doc: doc("a"),
                covers_order: 1,
                bytes: vec![9, 9],
            },
            WriteOp::ResetPeer {
                peer: peer("p"),
                store_id: [5; 16],
            },
            WriteOp::PutReceipt {
                peer: peer("p"),
                doc: doc("a"),
                clock: clock(&[(1, 1)]),
            },
            WriteOp::PutReported {
                peer: peer("p"),
                doc: doc("a"),
                clock: clock(&[(1, 2)]),
            },
            WriteOp::PutAuthor {
                node_actor: Actor([8; 16]),
                statement: vec![1, 2, 3],
            },
            WriteOp::PutSlot {
                space: [4; 32],
                slot: 2,
                statement: vec![4],
            },
            WriteOp::PutSlot {
                space: [4; 32],
                slot: 3,
                statement: vec![5],
            },
        ],
    };
    s.commit(batch).unwrap();
    let check = |s: &S| {
        assert_eq!(s.node_meta().unwrap(), Some(meta.clone()));
        assert_eq!(s.author(&Actor([8; 16])).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(s.author(&Actor([7; 16])).unwrap(), None);
        assert_eq!(
            s.slot(&[4; 32]).unwrap(),
            Some((3, vec![5])),
            "the last slot kept"
        );
        assert_eq!(s.slot(&[3; 32]).unwrap(), None);
        assert_eq!(s.docs().unwrap(), vec![(doc("a"), dm.clone())]);
        assert_eq!(s.snapshot(&doc("a")).unwrap(), Some((1, vec![9, 9])));
        assert_eq!(s.change_at(&doc("a"), 1).unwrap(), Some(change(1, 1, 2)));
        assert_eq!(
            s.changes_from(&doc("a"), 0, 10).unwrap(),
            vec![change(0, 1, 1), change(1, 1, 2)]
        );
        let expected = PeerReceipts {
            store_id: Some([5; 16]),
            clocks: BTreeMap::from([(doc("a"), clock(&[(1, 1)]))]),
            reported: BTreeMap::from([(doc("a"), clock(&[(1, 2)]))]),
            seen: None,
        };
        assert_eq!(s.peers().unwrap(), vec![(peer("p"), expected)]);
    };
    check(&s);
    let s = reopen(s);
    check(&s);
}

fn ranges_respect_documents_and_bounds<S: Store>(mut s: S) {
    let mut ops = Vec::new();
    for (d, n) in [("a", 5u64), ("a/b", 3), ("b", 2)] {
        for i in 0..n {
            ops.push(WriteOp::PutChange {
                doc: doc(d),
                change: change(i, (i % 2) as u8 + 1, i / 2 + 1),
            });
        }
    }
    s.commit(WriteBatch { ops }).unwrap();
    let orders = |v: Vec<StoredChange>| v.into_iter().map(|c| c.order).collect::<Vec<_>>();
    assert_eq!(
        orders(s.changes_from(&doc("a"), 0, 100).unwrap()),
        vec![0, 1, 2, 3, 4],
        "a's log excludes a/b"
    );
    assert_eq!(
        orders(s.changes_from(&doc("a"), 3, 100).unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        orders(s.changes_from(&doc("a"), 1, 2).unwrap()),
        vec![1, 2],
        "limit"
    );
    assert_eq!(
        orders(s.changes_from(&doc("a/b"), 0, 100).unwrap()),
        vec![0, 1, 2]
    );
    // Actor 1 wrote orders 0, 2, 4 as seqs 1, 2, 3.
    let a1 = Actor([1; 16]);
    let idx = s.change_index(&doc("a"), &a1, 2..=3).unwrap();
    assert_eq!(
        idx.iter()
            .map(|(seq, order, _)| (*seq, *order))
            .collect::<Vec<_>>(),
        vec![(2, 2), (3, 4)]
    );
    assert_eq!(
        s.change_index(&doc("a"), &a1, 1..=u64::MAX).unwrap().len(),
        3
    );
    assert!(s.change_index(&doc("a"), &a1, 4..=9).unwrap().is_empty());
    assert_eq!(
        s.change_index(&doc("b"), &a1, 1..=1).unwrap()[0].2,
        change(0, 1, 1).hash
    );
}

fn peers_reset_forgets_receipts<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    let r = |p: &str, d: &str| WriteOp::PutReceipt {
        peer: peer(p),
        doc: doc(d),
        clock: clock(&[(1, 1)]),
    };
    s.commit(WriteBatch {
        ops: vec![
            WriteOp::ResetPeer {
                peer: peer("p"),
                store_id: [1; 16],
            },
            WriteOp::ResetPeer {
                peer: peer("p2"),
                store_id: [2; 16],
            },
            r("p", "x"),
            r("p", "y"),
            r("p2", "x"),
        ],
    })
    .unwrap();
    s.commit(WriteBatch {
        ops: vec![WriteOp::ResetPeer {
            peer: peer("p"),
            store_id: [9; 16],
        }],
    })
    .unwrap();
    let s = reopen(s);
    let peers: BTreeMap<NodeName, PeerReceipts> = s.peers().unwrap().into_iter().collect();
    assert_eq!(peers[&peer("p")].store_id, Some([9; 16]));
    assert!(
        peers[&peer("p")].clocks.is_empty(),
        "reset forgets the peer's receipts"
    );
    assert_eq!(peers[&peer("p2")].clocks.len(), 1, "and only that peer's");
}

fn peers_keep_the_incarnation_seen_per_store<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    let run = |incarnation, b| Incarnation {
        incarnation,
        boot: [b; 16],
    };
    let seen = |p: &str, store: u8, inc: Incarnation| WriteOp::PutPeerSeen {
        peer: peer(p),
        store_id: [store; 16],
        seen: inc,
    };
    let reset = |p: &str, store: u8| WriteOp::ResetPeer {
        peer: peer(p),
        store_id: [store; 16],
    };
    s.commit(WriteBatch {
        ops: vec![
            reset("p", 1),
            seen("p", 1, run(3, 7)),
            reset("q", 2),
            // Another store's run: not q's current store, never read back.
            seen("q", 5, run(9, 9)),
            // A peer with no store id recorded keeps nothing.
            seen("r", 1, run(1, 1)),
        ],
    })
    .unwrap();
    let mut s = reopen(s);
    let peers: BTreeMap<NodeName, PeerReceipts> = s.peers().unwrap().into_iter().collect();
    assert_eq!(peers[&peer("p")].seen, Some(run(3, 7)));
    assert_eq!(peers[&peer("q")].seen, None, "another store's run");
    assert!(!peers.contains_key(&peer("r")));
    // A reset to the same store keeps the run; to another store forgets it; a newer run
    // replaces the older.
    s.commit(WriteBatch {
        ops: vec![reset("p", 1), reset("q", 6), seen("q", 6, run(1, 2))],
    })
    .unwrap();
    s.commit(WriteBatch {
        ops: vec![seen("q", 6, run(2, 3))],
    })
    .unwrap();
    let mut s = reopen(s);
    let peers: BTreeMap<NodeName, PeerReceipts> = s.peers().unwrap().into_iter().collect();
    assert_eq!(peers[&peer("p")].seen, Some(run(3, 7)), "same store: kept");
    assert_eq!(peers[&peer("q")].seen, Some(run(2, 3)));
    s.commit(WriteBatch {
        ops: vec![reset("p", 4)],
    })
    .unwrap();
    let s = reopen(s);
    let peers: BTreeMap<NodeName, PeerReceipts> = s.peers().unwrap().into_iter().collect();
    assert_eq!(peers[&peer("p")].seen, None, "another store: forgotten");
}

fn dropping_a_document_keeps_its_neighbours<S: Store>(mut s: S, reopen: &mut impl FnMut(S) -> S) {
    let mut ops = Vec::new();
    // "a/b" and "a.b" sort right after "a": a drop of "a" that spills over a prefix shows.
    for d in ["a", "a/b", "a.b", "b"] {
        for i in 0..3u64 {
            ops.push(WriteOp::PutChange {
                doc: doc(d),
                change: change(i, 1, i + 1),
            });
        }
        ops.push(WriteOp::PutDocMeta {
            doc: doc(d),
            meta: DocMeta {
                clock: clock(&[(1, 3)]),
                next_order: 3,
                snapshot_order: 1,
                pruned: false,
            },
        });
        ops.push(WriteOp::PutSnapshot {
            doc: doc(d),
            covers_order: 1,
            bytes: d.as_bytes().to_vec(),
        });
        for p in ["p", "q"] {
            ops.push(WriteOp::PutReceipt {
                peer: peer(p),
                doc: doc(d),
                clock: clock(&[(1, 2)]),
            });
            ops.push(WriteOp::PutReported {
                peer: peer(p),
                doc: doc(d),
                clock: clock(&[(1, 3)]),
            });
        }
    }
    s.commit(WriteBatch { ops }).unwrap();
    s.commit(WriteBatch {
        ops: vec![
            WriteOp::DropDoc {
                doc: doc("a"),
                peers: vec![peer("p"), peer("q")],
            },
            WriteOp::DropContent { doc: doc("b") },
        ],
    })
    .unwrap();
    let check = |s: &S| {
        let a1 = Actor([1; 16]);
        let mut docs: Vec<DocId> = s.docs().unwrap().into_iter().map(|(d, _)| d).collect();
        docs.sort();
        assert_eq!(docs, vec![doc("a.b"), doc("a/b"), doc("b")]);
        assert_eq!(s.snapshot(&doc("a")).unwrap(), None);
        assert!(s.changes_from(&doc("a"), 0, 10).unwrap().is_empty());
        assert_eq!(s.change_at(&doc("a"), 1).unwrap(), None);
        assert!(s.change_index(&doc("a"), &a1, 1..=3).unwrap().is_empty());
        // "b" lost its content and kept its metadata and receipts.
        assert!(s.changes_from(&doc("b"), 0, 10).unwrap().is_empty());
        assert!(s.change_index(&doc("b"), &a1, 1..=3).unwrap().is_empty());
        assert_eq!(s.snapshot(&doc("b")).unwrap(), None);
        for d in ["a/b", "a.b"] {
            assert_eq!(s.changes_from(&doc(d), 0, 10).unwrap().len(), 3, "{d}");
            assert_eq!(s.change_index(&doc(d), &a1, 1..=3).unwrap().len(), 3, "{d}");
            assert_eq!(s.snapshot(&doc(d)).unwrap().unwrap().1, d.as_bytes(), "{d}");
        }
        let peers: BTreeMap<NodeName, PeerReceipts> = s.peers().unwrap().into_iter().collect();
        for p in ["p", "q"] {
            let r = &peers[&peer(p)];
            assert!(!r.clocks.contains_key(&doc("a")) && !r.reported.contains_key(&doc("a")));
            assert_eq!((r.clocks.len(), r.reported.len()), (3, 3), "{p}");
        }
    };
    check(&s);
    let s = reopen(s);
    check(&s);
}

fn node_state_survives_reopen<S: Store>(s: S, reopen: &mut impl FnMut(S) -> S) {
    let cfg = || {
        let mut c = Config::new(peer("node-a"));
        c.snapshot_changes_min = 3;
        c
    };
    let boot = Boot {
        nonce: [1; 16],
        new_store_id: [2; 16],
    };
    let mut n = Node::open(s, cfg(), boot).unwrap();
    let d = doc("site/s1");
    for i in 0..7 {
        let r = Reading::from_json(format!("r{i}"), i, &serde_json::json!({ "v": i })).unwrap();
        n.ingest(&d, &[r], 1000).unwrap();
    }
    n.patch(&doc("app/g"), &serde_json::json!({"k": [1, 2]}), 1000)
        .unwrap();
    let before = (
        n.heads(&d).unwrap(),
        n.json(&d, true).unwrap(),
        n.clock(&d).cloned(),
        n.json(&doc("app/g"), false).unwrap(),
    );
    let incarnation = n.meta().incarnation;
    let s = reopen(n.into_store());
    let mut n = Node::open(
        s,
        cfg(),
        Boot {
            nonce: [3; 16],
            new_store_id: [4; 16],
        },
    )
    .unwrap();
    let after = (
        n.heads(&d).unwrap(),
        n.json(&d, true).unwrap(),
        n.clock(&d).cloned(),
        n.json(&doc("app/g"), false).unwrap(),
    );
    assert_eq!(before, after, "documents survive a reopen");
    assert_eq!(n.meta().incarnation, incarnation + 1);
    assert_eq!(n.meta().store_id, [2; 16], "store id fixed at creation");
    assert_eq!(n.sensor_view(&d).unwrap().unwrap().readings.len(), 7);
}
