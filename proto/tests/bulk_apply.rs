//! Received changes are applied to a document in runs (one Automerge call per section of a
//! batch): the same outcome as one at a time, whatever the run holds.

mod common;

use automerge::transaction::Transactable;
use common::{bucket, doc, hand_session, open, persist, Hand, Net};
use edgesync_proto::{CloseCode, Event, MemStore, Node, Reading};
use serde_json::json;

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, v, &json!({ "v": v })).unwrap()
}

/// A node holding one reading in a bucket, a member `gw-9` driven by hand, and the member's
/// copy of the bucket under its node actor `k` with the readings map's id.
fn member_copy(
    k: u64,
) -> (
    Node<MemStore>,
    edgesync_proto::DocId,
    Hand,
    automerge::Automerge,
    automerge::ObjId,
) {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let d = bucket("site-a/t1");
    node.ingest(&d, &[reading("r-0", 0)], 0).unwrap();
    persist(&mut node);
    let mut hand = Hand::new("gw-9");
    let mut am = automerge::Automerge::new().with_actor(hand.actor(&d, k));
    am.apply_changes(node.with_doc(&d, |a| a.get_changes(&[])).unwrap().unwrap())
        .unwrap();
    let (_, map) = automerge::ReadDoc::get(&am, automerge::ROOT, "readings")
        .unwrap()
        .unwrap();
    (node, d, hand, am, map)
}

fn close_code(node: &mut Node<MemStore>) -> Option<Option<CloseCode>> {
    while let Some(e) = node.poll_event() {
        if let Event::SessionClosed { code, .. } = e {
            return Some(code);
        }
    }
    None
}

// Each patch writes into an object the one before it created, and the whole history goes in
// one batch: the schema's depth rule looks those objects up in the document, where they are
// only once the run before them is applied.
#[test]
fn a_batch_building_on_objects_it_creates_is_applied_whole() {
    let mut net = Net::new(2, |_| {});
    let d = doc("site-a/config");
    let patches = [
        json!({ "a": {} }),
        json!({ "a": { "b": {} } }),
        json!({ "a": { "b": { "c": 1 } } }),
        json!({ "a": { "b": { "d": [1, 2] } }, "e": "x" }),
    ];
    for (i, p) in patches.iter().enumerate() {
        net.nodes[0].patch(&d, p, i as u64).unwrap();
    }
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "no session ends: {:?}", net.closed);
    let want = net.nodes[0].json(&d, false).unwrap();
    assert_eq!(net.nodes[1].json(&d, false).unwrap(), want);
    assert_eq!(net.nodes[1].clock(&d), net.nodes[0].clock(&d));
}

// A batch of four changes whose third breaks the sensor schema: the two before it are applied
// and kept (and stay after a restart), the third and fourth are not, and the session ends.
#[test]
fn a_refused_change_keeps_what_its_batch_applied_before_it() {
    let (mut node, d, mut hand, mut am, map) = member_copy(0);
    let mut changes = Vec::new();
    for i in 1..=4 {
        let mut tx = am.transaction();
        if i == 3 {
            tx.put(automerge::ROOT, "readings", "gone").unwrap();
        } else {
            let r = reading(&format!("r-{i}"), i);
            tx.put(&map, r.id.as_str(), r.encode()).unwrap();
        }
        tx.commit();
        changes.push(am.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &hand.frames(0, &[(d.clone(), changes)]), 0);
    persist(&mut node);
    assert_eq!(close_code(&mut node), Some(Some(CloseCode::InvalidChange)));
    let held = |n: &mut Node<MemStore>| {
        let v = n.sensor_view(&d).unwrap().unwrap();
        v.readings.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(held(&mut node), ["r-0", "r-1", "r-2"]);
    let actor = edgesync_proto::vclock::Actor::from_automerge(&hand.actor(&d, 0)).unwrap();
    assert_eq!(node.clock(&d).unwrap().get(&actor), 2);
    node.verify_clock(&d).unwrap();
    // The store holds what memory held.
    let store = node.into_store();
    let mut again = open(0, store, 2, |_| {});
    assert_eq!(held(&mut again), ["r-0", "r-1", "r-2"]);
    again.verify_clock(&d).unwrap();
}

// Attack: a change whose footer names an Automerge "author" (extra bytes) at a sequence number
// past 1. Automerge asserts that only an actor's first change names one, so applying it would
// panic the core; it is refused before it reaches Automerge, and the session ends alone.
#[test]
fn a_change_with_extra_bytes_is_refused() {
    let (mut node, d, mut hand, mut am, map) = member_copy(0);
    let mut changes = Vec::new();
    for i in 1..=2 {
        let mut tx = am.transaction();
        let r = reading(&format!("r-{i}"), i);
        tx.put(&map, r.id.as_str(), r.encode()).unwrap();
        tx.commit();
        let mut c = am.get_last_local_change().unwrap().decode();
        if i == 2 {
            // Footer 1 (author), 3 bytes.
            c.extra_bytes = vec![1, 3, 7, 7, 7];
        }
        changes.push(automerge::Change::from(c).raw_bytes().to_vec());
    }
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &hand.frames(0, &[(d.clone(), changes)]), 0);
    persist(&mut node);
    assert_eq!(close_code(&mut node), Some(Some(CloseCode::InvalidChange)));
    let v = node.sensor_view(&d).unwrap().unwrap();
    assert_eq!(
        v.readings.keys().cloned().collect::<Vec<_>>(),
        ["r-0", "r-1"]
    );
    node.ingest(&d, &[reading("r-3", 3)], 0).unwrap();
    persist(&mut node);
}

// Attack: in one batch, X by one actor, then A1 of another actor depending on X, then A2 of
// A1's actor depending on what preceded X but not on A1 (nothing forces a change to name its
// actor's previous one). Automerge orders a batch by dependencies alone, which put A2 before
// A1, and asserts that an actor's changes come in sequence: the core panicked. All three are
// valid and are applied.
#[test]
fn a_change_that_skips_its_actors_previous_one_in_its_dependencies_is_applied_in_order() {
    let (mut node, d, mut hand, mut am, map) = member_copy(1);
    let heads = am.get_heads();
    let put = |am: &mut automerge::Automerge, id: &str, v: i64| {
        let mut tx = am.transaction();
        let r = reading(id, v);
        tx.put(&map, r.id.as_str(), r.encode()).unwrap();
        tx.commit();
        am.get_last_local_change().unwrap()
    };
    let x = put(&mut am, "r-x", 1);
    am.set_actor(hand.actor(&d, 0));
    let a1 = put(&mut am, "r-a1", 2);
    let mut a2 = put(&mut am, "r-a2", 3).decode();
    a2.deps = heads;
    a2.hash = None;
    let a2 = automerge::Change::from(a2);
    assert_eq!(a2.seq(), 2);
    let changes = [x, a1, a2].map(|c| c.raw_bytes().to_vec()).to_vec();
    let sid = hand_session(&mut node, &mut hand);
    node.handle_input(sid, &hand.frames(0, &[(d.clone(), changes)]), 0);
    persist(&mut node);
    assert_eq!(close_code(&mut node), None, "the session goes on");
    let v = node.sensor_view(&d).unwrap().unwrap();
    assert_eq!(
        v.readings.keys().cloned().collect::<Vec<_>>(),
        ["r-0", "r-a1", "r-a2", "r-x"]
    );
    node.verify_clock(&d).unwrap();
}
