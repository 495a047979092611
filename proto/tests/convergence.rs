mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{doc, Net};
use edgesync_proto::{IngestOutcome, Reading, Store};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
enum Op {
    Ingest {
        node: usize,
        doc: usize,
        id: u8,
        value: i64,
    },
    Patch {
        node: usize,
        doc: usize,
        key: u8,
        value: i64,
    },
    Connect {
        a: usize,
        b: usize,
    },
    Disconnect {
        a: usize,
        b: usize,
    },
    /// Deliver one frame: `index` picks which in flight (reordering), `copies` 0 drops it,
    /// 2 duplicates it.
    Deliver {
        a: usize,
        b: usize,
        dir: usize,
        index: usize,
        copies: usize,
    },
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let pair =
        (0..n, 0..n).prop_filter_map("distinct", |(a, b)| (a != b).then(|| (a.min(b), a.max(b))));
    prop_oneof![
        3 => (0..n, 0..3usize, 0..12u8, 0..3i64).prop_map(|(node, doc, id, value)| Op::Ingest { node, doc, id, value }),
        2 => (0..n, 0..2usize, 0..4u8, 0..100i64).prop_map(|(node, doc, key, value)| Op::Patch { node, doc, key, value }),
        2 => pair.clone().prop_map(|(a, b)| Op::Connect { a, b }),
        1 => pair.clone().prop_map(|(a, b)| Op::Disconnect { a, b }),
        12 => (pair, 0..2usize, 0..4usize, prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)])
            .prop_map(|((a, b), dir, index, copies)| Op::Deliver { a, b, dir, index, copies }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Op>, u32)> {
    (3usize..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(op(n), 20..120), 1u32..4))
}

proptest! {
    // PROPTEST_CASES raises the count for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
    ))]

    // 3 to 5 replicas write at random and exchange frames in random order with loss and
    // duplication (lost frames are retransmitted after reconnect). After a final reliable
    // exchange all replicas hold identical heads, identical JSON, and every acknowledged
    // reading exactly once.
    #[test]
    fn replicas_converge((n, ops, batch_kib) in scenario()) {
        let mut net = Net::new(n, |c| {
            // Small batches and windows so that splitting and flow control are exercised.
            c.batch_bytes_max = batch_kib * 300;
            c.inflight_batches_max = 2;
            c.snapshot_changes_min = 7;
            c.docs_loaded_max = 2;
        });
        let sensor_docs = ["s/0", "s/1", "s/2"];
        let generic_docs = ["g/0", "g/1"];
        let mut acked: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Ingest { node, doc: d, id, value } => {
                    let r = Reading::from_json(format!("r{id}"), i64::from(id), &json!({"v": value})).unwrap();
                    let out = net.nodes[node].ingest(&doc(sensor_docs[d]), &[r], 1000).unwrap();
                    if out.outcomes[0] != IngestOutcome::Conflict {
                        acked.entry(sensor_docs[d]).or_default().insert(format!("r{id}"));
                    }
                }
                Op::Patch { node, doc: d, key, value } => {
                    let p = json!({ format!("k{key}"): value, "nested": { format!("n{node}"): value } });
                    net.nodes[node].patch(&doc(generic_docs[d]), &p, 1000).unwrap();
                }
                Op::Connect { a, b } => net.connect(a, b),
                Op::Disconnect { a, b } => net.disconnect(a, b),
                Op::Deliver { a, b, dir, index, copies } => {
                    net.pull();
                    net.deliver(a, b, dir, index, copies);
                    net.drain_events();
                }
            }
        }
        // Heal: fresh sessions along a chain (so changes must relay), delivered reliably.
        let keys: Vec<_> = net.links.keys().copied().collect();
        for (a, b) in keys {
            net.disconnect(a, b);
        }
        for i in 0..n - 1 {
            net.connect(i, i + 1);
        }
        net.settle();
        for node in &net.nodes {
            prop_assert!(node.is_idle());
        }
        let all_docs: Vec<_> = sensor_docs.iter().chain(generic_docs.iter()).map(|d| doc(d)).collect();
        let reference: Vec<_> = all_docs
            .iter()
            .map(|d| (net.nodes[0].heads(d).unwrap(), net.nodes[0].json(d, true).unwrap(), net.nodes[0].clock(d).cloned()))
            .collect();
        for node in net.nodes.iter_mut() {
            for (d, expected) in all_docs.iter().zip(&reference) {
                let got = (node.heads(d).unwrap(), node.json(d, true).unwrap(), node.clock(d).cloned());
                prop_assert_eq!(&got, expected, "document {} differs", d);
            }
            for (d, ids) in &acked {
                let view = node.sensor_view(&doc(d)).unwrap().unwrap();
                let got: BTreeSet<String> = view.readings.keys().cloned().collect();
                prop_assert_eq!(&got, ids, "readings of {}", d);
                prop_assert!(view.invalid.is_empty());
            }
            prop_assert_eq!(node.pending_changes(), 0);
        }
    }
}

// A relay forwards what it received through a peer whose frames are smaller than the author's:
// the author sent one actor's changes (more than a small frame holds) in one section, and the
// relay can cut them only where they are signed. Found by the simulator (seed 9018): the relay
// kept the document from that peer for ever.
#[test]
fn a_relay_forwards_a_large_section_through_small_frames() {
    // The author takes and sends large frames; the relay takes them but, like its peer, keeps
    // changes within a small frame; the peer takes small frames only.
    let mut net = small_frames_net(3, 1, 2);
    let stream = doc("s/t");
    for i in 0..200 {
        let r = Reading::from_json(
            format!("reading-{i:04}"),
            i,
            &json!({"temperature": 20.5, "humidity": i, "site": "north field, row 7"}),
        )
        .unwrap();
        net.nodes[0].ingest(&stream, &[r], 0).unwrap();
    }
    relay_through_small_frames(&mut net, &common::bucket("s/t"), [0, 1, 2]);
}

/// `n` nodes taking large frames, but for the relay `r`, which keeps changes within a small
/// frame, and `b`, which takes small frames only.
fn small_frames_net(n: usize, r: usize, b: usize) -> Net {
    use edgesync_proto::wire::{CHANGES_OVERHEAD_BYTES, FRAME_BYTES_MIN};
    let mut net = Net::new(n, |_| {});
    let seed = |i: usize| i as u64 + 1;
    net.nodes[r] = common::open(r, edgesync_proto::MemStore::new(), seed(r), |c| {
        c.change_bytes_max = FRAME_BYTES_MIN - CHANGES_OVERHEAD_BYTES;
    });
    net.nodes[b] = common::open(b, edgesync_proto::MemStore::new(), seed(b), |c| {
        c.frame_bytes_max = FRAME_BYTES_MIN;
        c.change_bytes_max = FRAME_BYTES_MIN - CHANGES_OVERHEAD_BYTES;
    });
    net
}

/// `doc`'s changes at node `a` (more than two small frames hold) go to relay `r` in one
/// session, then from `r` to `b`, which takes small frames only: `b` ends with all of them and
/// no session was refused.
fn relay_through_small_frames(net: &mut Net, doc: &edgesync_proto::DocId, [a, r, b]: [usize; 3]) {
    use edgesync_proto::wire::FRAME_BYTES_MIN;
    let changes = net.nodes[a].store().changes_from(doc, 0, 1000).unwrap();
    let bytes: usize = changes.iter().map(|c| c.bytes.len()).sum();
    assert!(
        bytes > 2 * FRAME_BYTES_MIN as usize,
        "the changes ({bytes} bytes) pass two small frames"
    );
    net.connect(a, r);
    net.settle();
    net.disconnect(a, r);
    assert_eq!(net.nodes[r].clock(doc), net.nodes[a].clock(doc));
    net.connect(r, b);
    net.settle();
    let refused: Vec<_> = net
        .closed
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                edgesync_proto::Event::SessionClosed { code: Some(_), .. }
            )
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(net.nodes[b].clock(doc), net.nodes[a].clock(doc));
}

// Two authors write one document in turns, each edit depending on the other's last, and a
// relay that took it all in one large section forwards it through small frames. Signatures
// dense per actor are not enough here: the relay can cut only where both actors end on a
// signed change at once. Found by the simulator (seed 20215, a chain of six): the relay never
// sent that document. Senders now cut the section itself at least every 4 KiB.
#[test]
fn a_relay_forwards_interleaved_authors_through_small_frames() {
    // Nodes 0 and 1 write; node 2 relays to node 3, which takes small frames only.
    let mut net = small_frames_net(4, 2, 3);
    let d = doc("shared/plan");
    net.connect(0, 1);
    // Edits of uneven sizes, so the two actors' own signatures do not fall side by side.
    let filler = "row seven, north field, irrigation valve schedule; ";
    for i in 0..120 {
        let w = i % 2;
        let reps = if w == 0 {
            1 + (i * 7) % 11
        } else {
            1 + (i * 3) % 4
        };
        let patch = json!({ format!("k{i}"): format!("{}{i}", filler.repeat(reps)) });
        net.nodes[w].patch(&d, &patch, 0).unwrap();
        net.settle();
    }
    net.disconnect(0, 1);
    assert_eq!(net.nodes[0].clock(&d), net.nodes[1].clock(&d));
    let clock = net.nodes[0].clock(&d).unwrap().clone();
    let (a0, a1) = (net.nodes[0].doc_actor(&d), net.nodes[1].doc_actor(&d));
    assert_eq!(
        (clock.get(&a0), clock.get(&a1)),
        (60, 60),
        "two authors, in turns"
    );
    relay_through_small_frames(&mut net, &d, [0, 2, 3]);
}
