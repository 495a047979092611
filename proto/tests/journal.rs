//! The ingest journal: an ingest is acknowledged once its readings are durable in the journal,
//! and they are folded into Automerge changes later (by time, at the journal's bound, or
//! before anything reads, syncs or drops their document), with nothing lost or doubled across
//! a crash at any point.

mod common;

use common::{bucket, doc, persist, Net};
use edgesync_proto::{
    Boot, Config, IngestOutcome, MemStore, Node, NodeName, Reading, Store, VectorClock,
};
use serde_json::json;

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, 1000, &json!({ "v": v })).unwrap()
}

fn cfg() -> Config {
    Config::new(NodeName::new("gw").unwrap())
}

fn boot(b: u8) -> Boot {
    Boot {
        nonce: [b; 16],
        new_store_id: [b; 16],
    }
}

fn held(n: &mut Node<MemStore>, stream: &str) -> Vec<(String, i64)> {
    let view = n.sensor_view(&doc(stream)).unwrap().unwrap_or_else(|| {
        panic!("{stream} unknown");
    });
    view.readings
        .values()
        .map(|r| (r.id.clone(), r.fields_json()["v"].as_i64().unwrap()))
        .collect()
}

// An ingest writes a journal entry and no change; the fold comes when due, not before, and
// writes one change for all the readings journaled meanwhile.
#[test]
fn readings_are_journaled_then_folded_when_due() {
    let mut n = Node::open(MemStore::new(), cfg(), boot(1)).unwrap();
    let s = doc("site/t");
    let out = n.ingest(&s, &[reading("a", 1)], 5_000).unwrap();
    assert_eq!(out.outcomes, vec![IngestOutcome::Inserted]);
    n.ingest(&s, &[reading("b", 2), reading("c", 3)], 5_040)
        .unwrap();
    assert_eq!(n.journal_len(), 3);
    assert_eq!(n.clock(&bucket("site/t")), None, "no change yet");
    assert_eq!(n.store().journal().unwrap().len(), 3);
    assert_eq!(n.poll_timeout(), Some(5_100), "due 100 ms after the first");
    n.handle_timeout(5_099);
    assert_eq!(n.journal_len(), 3, "not due yet");
    n.handle_timeout(5_100);
    assert_eq!(n.journal_len(), 0);
    assert_eq!(n.poll_timeout(), None);
    assert!(n.store().journal().unwrap().is_empty());
    // The genesis and one change of this node's.
    let clock = n.clock(&bucket("site/t")).unwrap().clone();
    assert_eq!(clock.total(), 2, "{clock:?}");
    assert_eq!(
        held(&mut n, "site/t"),
        vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
    );
}

// Reads see journaled readings at once (they fold first), and dedup sees the journal: the same
// id with the same body is a duplicate, with another body a conflict, before and after the
// fold.
#[test]
fn reads_and_dedup_see_the_journal() {
    let mut n = Node::open(MemStore::new(), cfg(), boot(1)).unwrap();
    let s = doc("site/t");
    n.ingest(&s, &[reading("a", 1)], 1).unwrap();
    let again = n
        .ingest(&s, &[reading("a", 1), reading("a", 2)], 2)
        .unwrap();
    assert_eq!(
        again.outcomes,
        vec![IngestOutcome::Duplicate, IngestOutcome::Conflict]
    );
    // One request naming an id twice: the first is written, the second judged against it.
    let twice = n
        .ingest(&s, &[reading("b", 5), reading("b", 6)], 3)
        .unwrap();
    assert_eq!(
        twice.outcomes,
        vec![IngestOutcome::Inserted, IngestOutcome::Conflict]
    );
    assert_eq!(n.journal_len(), 2);
    assert_eq!(n.latest(&s).unwrap().unwrap().unwrap().id, "b");
    assert_eq!(n.journal_len(), 0, "the read folded");
    let after = n
        .ingest(&s, &[reading("a", 1), reading("b", 7)], 4)
        .unwrap();
    assert_eq!(
        after.outcomes,
        vec![IngestOutcome::Duplicate, IngestOutcome::Conflict]
    );
    assert_eq!(
        held(&mut n, "site/t"),
        vec![("a".into(), 1), ("b".into(), 5)]
    );
}

// A crash at any point loses no acknowledged reading and doubles none: after the journal's
// commit is durable and before the fold; after the fold's commit but before it is durable; and
// after the fold is durable.
#[test]
fn a_crash_at_any_point_keeps_each_acknowledged_reading_once() {
    for point in ["journaled", "folded", "fold durable"] {
        let mut n = Node::open(MemStore::new(), cfg(), boot(1)).unwrap();
        let s = doc("site/t");
        n.ingest(&s, &[reading("a", 1), reading("b", 2)], 10)
            .unwrap();
        persist(&mut n); // acknowledged from here on
        if point != "journaled" {
            n.handle_timeout(1_000);
            assert_eq!(n.journal_len(), 0);
        }
        if point == "fold durable" {
            persist(&mut n);
        }
        let mut store = n.into_store();
        store.crash();
        let mut n = Node::open(store, cfg(), boot(2)).unwrap();
        let journaled = if point == "fold durable" { 0 } else { 2 };
        assert_eq!(n.journal_len(), journaled, "{point}");
        assert_eq!(n.poll_timeout(), (journaled > 0).then_some(100), "{point}");
        assert_eq!(
            held(&mut n, "site/t"),
            vec![("a".into(), 1), ("b".into(), 2)],
            "{point}"
        );
        assert_eq!(n.journal_len(), 0);
        n.verify_clock(&bucket("site/t")).unwrap();
        // Folded once: the genesis and one change, under this run's actor or the last one's.
        assert_eq!(n.clock(&bucket("site/t")).unwrap().total(), 2, "{point}");
    }
}

// The journal holds at most `journal_readings_max` readings: the ingest that reaches it folds
// them all.
#[test]
fn the_journal_folds_at_its_bound() {
    let mut c = cfg();
    c.journal_readings_max = 3;
    let mut n = Node::open(MemStore::new(), c, boot(1)).unwrap();
    let s = doc("site/t");
    n.ingest(&s, &[reading("a", 1)], 1).unwrap();
    n.ingest(&doc("site/u"), &[reading("b", 2)], 1).unwrap();
    assert_eq!(n.journal_len(), 2);
    n.ingest(&s, &[reading("c", 3)], 1).unwrap();
    assert_eq!(n.journal_len(), 0);
    assert!(n.clock(&bucket("site/t")).is_some() && n.clock(&bucket("site/u")).is_some());
}

// Peers get readings once folded, and a remote change into a document with journaled readings
// folds them first: the fold's put is concurrent with the peer's, as the ingest's own change
// would have been. Two nodes give one id different bodies; both are kept as a conflict and the
// session goes on (a put that overwrote the peer's would be refused as an overwrite of a
// reading, ending the session with `invalid-change`).
#[test]
fn a_remote_change_folds_the_journal_first() {
    let mut net = Net::new(2, |c| c.journal_readings_max = 4096);
    let s = doc("site/t");
    net.nodes[0].ingest(&s, &[reading("x", 1)], 10).unwrap();
    net.nodes[1].ingest(&s, &[reading("x", 2)], 10).unwrap();
    net.connect(0, 1);
    net.settle();
    assert_eq!(
        net.nodes[0].clock(&bucket("site/t")),
        None,
        "nothing folded, nothing sent"
    );
    // Node 1 folds by time and sends; node 0 folds its own before applying node 1's.
    net.nodes[1].handle_timeout(1_000);
    assert_eq!(net.nodes[0].journal_len(), 1);
    net.settle();
    assert_eq!(
        net.nodes[0].journal_len(),
        0,
        "folded before the remote change"
    );
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    let clocks: Vec<VectorClock> = (0..2)
        .map(|i| net.nodes[i].clock(&bucket("site/t")).unwrap().clone())
        .collect();
    assert_eq!(clocks[0], clocks[1]);
    assert_eq!(clocks[0].total(), 3, "the genesis and one change from each");
    for i in 0..2 {
        let json = net.nodes[i].json(&bucket("site/t"), true).unwrap().unwrap();
        let text = json.to_string();
        assert!(text.contains("$conflicts"), "{i}: {text}");
        assert!(
            text.contains(r#"\"v\":1}"#) && text.contains(r#"\"v\":2}"#),
            "{i}: {text}"
        );
    }
}
