//! Actor slots: a slot-bound member binds at most `ACTOR_SLOTS` node actors (one per slot of
//! its certificate), so no member can fill a document's clock; a node takes its slots in order
//! (a restored copy takes the next), asks a peer which slots its certificate spent before it
//! authors when its store cannot know (`Config::settle_from_peers`), and refuses to author once
//! every slot is spent, naming the remedy.

mod common;

use automerge::transaction::Transactable;
use common::{boot, doc, open, persist, Hand, Net};
use edgesync_proto::trust::{name_space, slot_actor, ACTOR_SLOTS};
use edgesync_proto::wire::{AuthorStatement, Message, SlotAnswer, SlotQuery, Summary};
use edgesync_proto::{
    CloseCode, Config, Event, MemStore, Node, NodeError, Reading, SessionId, Store,
};
use serde_json::json;

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, v, &json!({ "v": v })).unwrap()
}

/// A change of `d` on top of `base` under the member's slot `k` for `d`.
fn change_in_slot(hand: &mut Hand, d: &str, base: &[automerge::Change], k: u32) -> Vec<u8> {
    let na = hand.node_actor(u64::from(k));
    change_under(hand, d, base, na, k)
}

/// A change of `d` on top of `base` under the member's node actor `na` for `d`.
fn change_under(
    hand: &mut Hand,
    d: &str,
    base: &[automerge::Change],
    na: edgesync_proto::Actor,
    k: u32,
) -> Vec<u8> {
    let mut am = automerge::Automerge::new().with_actor(hand.actor_of(&doc(d), na));
    am.apply_changes(base.to_vec()).unwrap();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "x", i64::from(k)).unwrap();
    tx.commit();
    am.get_last_local_change().unwrap().raw_bytes().to_vec()
}

/// A hand-driven session on `node` past Hello (with `capabilities`) and Summary.
fn hand_session(node: &mut Node<MemStore>, hand: &mut Hand, capabilities: u64) -> SessionId {
    hand.new_session();
    let sid = node.connect(hand.identity.clone(), 0);
    let Message::Hello(mut h) = common::hello(hand.identity.name.as_str(), 4 << 20) else {
        unreachable!()
    };
    h.capabilities = capabilities;
    node.handle_input(sid, &Message::Hello(h).to_frame(), 0);
    let summary = Message::Summary(Summary {
        entries: vec![],
        last: true,
    });
    node.handle_input(sid, &summary.to_frame(), 0);
    sid
}

/// Close codes (with reasons) since the last call.
fn closes(node: &mut Node<MemStore>) -> Vec<(CloseCode, String)> {
    persist(node);
    std::iter::from_fn(|| node.poll_event())
        .filter_map(|e| match e {
            Event::SessionClosed {
                code: Some(c),
                reason,
                ..
            } => Some((c, reason)),
            _ => None,
        })
        .collect()
}

/// The close codes of sessions a node refused in `net` (not those the test disconnected).
fn refusals(net: &Net) -> Vec<CloseCode> {
    net.closed
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SessionClosed { code, .. } => *code,
            _ => None,
        })
        .collect()
}

/// Every message `node` released on `sid`.
fn released(node: &mut Node<MemStore>, sid: SessionId) -> Vec<Message> {
    persist(node);
    std::iter::from_fn(|| node.poll_transmit(sid))
        .map(|f| Message::from_payload(&f[4..]).expect("decodes"))
        .collect()
}

// Attack 4 with slot-bound members: a member signing statements for as many actors as it likes
// lands only its certificate's 32 slot actors and its name's 32 in a document, whatever it
// sends and over however many sessions; a statement for any other actor ends the session as
// unauthorized. (Without the slot check, the session quota alone lets it add 64 actors per
// session until the clock's 512 are full.) The node's own next slot still writes the document.
#[test]
fn a_member_binds_only_its_slot_actors() {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    let d = "app/shared";
    node.patch(&doc(d), &json!({"a": 1}), 0).unwrap();
    persist(&mut node);
    let base = node
        .with_doc(&doc(d), |a| a.get_changes(&[]))
        .unwrap()
        .unwrap();
    let mut gw9 = Hand::new("gw-9");
    let slots: Vec<Vec<u8>> = (0..ACTOR_SLOTS)
        .map(|k| change_in_slot(&mut gw9, d, &base, k))
        .collect();
    let sid = hand_session(&mut node, &mut gw9, 0);
    node.handle_input(sid, &gw9.frames(0, &[(doc(d), slots)]), 0);
    assert_eq!(closes(&mut node), vec![]);
    assert_eq!(
        node.clock(&doc(d)).unwrap().len(),
        1 + ACTOR_SLOTS as usize,
        "every slot actor lands"
    );
    node.disconnect(sid);
    // Its name's slots (where a node writes before it has a certificate) land too.
    let names = name_space(&gw9.identity.name);
    let named: Vec<Vec<u8>> = (0..ACTOR_SLOTS)
        .map(|k| change_under(&mut gw9, d, &base, slot_actor(&names, k), k))
        .collect();
    let sid = hand_session(&mut node, &mut gw9, 0);
    node.handle_input(sid, &gw9.frames(0, &[(doc(d), named)]), 0);
    assert_eq!(closes(&mut node), vec![]);
    let bound = 1 + 2 * ACTOR_SLOTS as usize;
    assert_eq!(node.clock(&doc(d)).unwrap().len(), bound);
    node.disconnect(sid);
    for round in 0..4u32 {
        let beyond: Vec<Vec<u8>> = (0..8)
            .map(|k| change_in_slot(&mut gw9, d, &base, ACTOR_SLOTS + round * 8 + k))
            .collect();
        let sid = hand_session(&mut node, &mut gw9, 0);
        node.handle_input(sid, &gw9.frames(0, &[(doc(d), beyond)]), 0);
        let ended = closes(&mut node);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].0, CloseCode::Unauthorized, "{}", ended[0].1);
        assert!(ended[0].1.contains("slot actors"), "{}", ended[0].1);
        node.disconnect(sid);
    }
    assert_eq!(node.clock(&doc(d)).unwrap().len(), bound);
    // A restored copy of the node takes its next slot and writes the document.
    let store = node.into_store();
    let mut node = open(0, store, 2, |_| {});
    node.renew_store(&boot(3)).unwrap();
    assert_eq!(node.meta().actor_slot, 1);
    node.patch(&doc(d), &json!({"a": 2}), 0).unwrap();
    assert_eq!(node.clock(&doc(d)).unwrap().len(), bound + 1);
}

// A node's actors are its certificate's slot actors, taken in order: a store starts at slot 0,
// keeps it across restarts (clean or not), and each restored copy takes the next one.
#[test]
fn slots_are_taken_in_order() {
    let node = open(0, MemStore::new(), 1, |_| {});
    let space = node.meta().slot_space;
    assert_ne!(space, [0; 32]);
    assert_eq!(node.actor(), slot_actor(&space, 0));
    assert_eq!(node.actor_slots_left(), Some(ACTOR_SLOTS - 1));
    let mut store = node.into_store();
    store.crash();
    let mut node = open(0, store, 2, |_| {});
    assert_eq!(node.actor(), slot_actor(&space, 0), "kept across a crash");
    node.renew_store(&boot(3)).unwrap();
    assert_eq!(node.actor(), slot_actor(&space, 1));
    persist(&mut node);
    let node = open(0, node.into_store(), 4, |_| {});
    assert_eq!(node.actor(), slot_actor(&space, 1));
    assert_eq!(node.actor_slots_left(), Some(ACTOR_SLOTS - 2));
}

// Once every slot is spent the node authors nothing: ingests and patches are refused with an
// error that names the remedy (a renewed certificate), and what it holds stays readable.
#[test]
fn every_slot_spent_refuses_writes_and_names_the_remedy() {
    let mut node = open(0, MemStore::new(), 1, |_| {});
    node.ingest(&doc("s/a"), &[reading("r0", 1)], 0).unwrap();
    for k in 1..ACTOR_SLOTS {
        node.renew_store(&boot(u64::from(k) + 10)).unwrap();
        assert_eq!(node.meta().actor_slot, k);
    }
    assert_eq!(node.actor_slots_left(), Some(0));
    node.ingest(&doc("s/a"), &[reading("r31", 2)], 0).unwrap();
    node.renew_store(&boot(99)).unwrap();
    assert!(node.slots_exhausted());
    let e = node
        .ingest(&doc("s/a"), &[reading("late", 3)], 0)
        .unwrap_err();
    assert!(matches!(
        e,
        NodeError::ActorSlotsExhausted { max: ACTOR_SLOTS }
    ));
    assert!(e.to_string().contains("renew the certificate"), "{e}");
    let e = node.patch(&doc("app/x"), &json!({"a": 1}), 0).unwrap_err();
    assert!(matches!(e, NodeError::ActorSlotsExhausted { .. }), "{e}");
    let view = node.sensor_view(&doc("s/a")).unwrap().unwrap();
    assert_eq!(view.readings.keys().collect::<Vec<_>>(), vec!["r0", "r31"]);
    persist(&mut node);
    let node = open(0, node.into_store(), 100, |_| {});
    assert!(
        node.slots_exhausted(),
        "a restart does not bring slots back"
    );
}

fn settling(c: &mut Config) {
    c.settle_from_peers = true;
}

// A store wiped under a kept certificate cannot know which slots it spent. Asking its first
// peer, it learns the slot its old store wrote under and takes the next one: its new readings
// reach the peer beside the old ones, with no collision. Until then it journals readings
// (which reads show), folds none, and refuses patches. The control (a node that does not ask) takes slot 0 again
// and its first change collides with the old one at the peer: refused as equivocation.
#[test]
fn a_wiped_store_asks_its_peer_and_takes_the_next_slot() {
    let d = doc("s/a");
    for asks in [true, false] {
        let mut net = Net::new(2, |_| {});
        net.nodes[0].ingest(&d, &[reading("old", 1)], 0).unwrap();
        net.connect(0, 1);
        net.settle();
        net.disconnect(0, 1);
        net.closed.clear();
        let old_actor = net.nodes[0].actor();
        // The wipe: a new store under the same certificate.
        net.nodes[0] = open(0, MemStore::new(), 50, |c| c.settle_from_peers = asks);
        assert_eq!(net.nodes[0].is_settled(), !asks);
        net.nodes[0].ingest(&d, &[reading("new", 2)], 0).unwrap();
        if asks {
            assert_eq!(net.nodes[0].journal_len(), 1, "journaled, not folded");
            assert_eq!(net.nodes[0].docs().count(), 0, "nothing folded");
            // Reads see what was acknowledged all the same.
            let v = net.nodes[0].sensor_view(&d).unwrap().unwrap();
            assert_eq!(v.readings.keys().collect::<Vec<_>>(), vec!["new"]);
            let latest = net.nodes[0].latest(&d).unwrap().unwrap().unwrap();
            assert_eq!(latest.id, "new");
            let page = net.nodes[0]
                .read_stream(&d, &Default::default())
                .unwrap()
                .unwrap();
            assert_eq!(page.readings.len(), 1);
            let e = net.nodes[0]
                .patch(&doc("app/x"), &json!({"a": 1}), 0)
                .unwrap_err();
            assert!(matches!(e, NodeError::Unsettled { .. }), "{e}");
        }
        net.connect(0, 1);
        net.settle();
        if !asks {
            assert!(
                refusals(&net).contains(&CloseCode::Equivocation),
                "the collision ends the session: {:?}",
                net.closed
            );
            continue;
        }
        assert_eq!(refusals(&net), vec![]);
        assert!(net.nodes[0].is_settled());
        assert_eq!(net.nodes[0].meta().actor_slot, 1);
        assert_ne!(net.nodes[0].actor(), old_actor);
        assert_eq!(net.nodes[0].journal_len(), 0);
        for n in &mut net.nodes {
            let v = n.sensor_view(&d).unwrap().unwrap();
            assert_eq!(v.readings.keys().collect::<Vec<_>>(), vec!["new", "old"]);
        }
        let clocks = |n: &Node<MemStore>| {
            n.docs()
                .map(|(d, c)| (d.clone(), c.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(clocks(&net.nodes[0]), clocks(&net.nodes[1]));
    }
}

// A new store whose certificate never wrote: its peer knows no slot of it, so it settles on
// slot 0 at its first session, and a restart before that keeps it asking (the journal
// survives the restart and is folded once settled).
#[test]
fn a_new_store_settles_at_its_first_session() {
    let d = doc("s/a");
    let mut net = Net::new(2, settling);
    for n in &net.nodes {
        assert!(!n.is_settled());
    }
    net.nodes[0].ingest(&d, &[reading("r1", 1)], 0).unwrap();
    persist(&mut net.nodes[0]);
    let store = std::mem::replace(&mut net.nodes[0], open(5, MemStore::new(), 9, |_| {}));
    net.nodes[0] = open(0, store.into_store(), 2, settling);
    assert!(!net.nodes[0].is_settled());
    assert_eq!(net.nodes[0].journal_len(), 1);
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    for n in &mut net.nodes {
        assert!(n.is_settled());
        assert_eq!(n.meta().actor_slot, 0);
        let v = n.sensor_view(&d).unwrap().unwrap();
        assert_eq!(v.readings.keys().collect::<Vec<_>>(), vec!["r1"]);
    }
}

// An unsettled node holds at most `unsettled_readings_max` journaled readings; past that,
// ingests are refused (the client retries), and nothing already journaled is lost.
#[test]
fn an_unsettled_journal_is_bounded() {
    let mut node = open(0, MemStore::new(), 1, |c| {
        c.settle_from_peers = true;
        c.unsettled_readings_max = 3;
    });
    let d = doc("s/a");
    let rs: Vec<Reading> = (0..3).map(|i| reading(&format!("r{i}"), i)).collect();
    node.ingest(&d, &rs, 0).unwrap();
    let e = node.ingest(&d, &[reading("r3", 3)], 0).unwrap_err();
    assert!(matches!(e, NodeError::Unsettled { .. }), "{e}");
    assert_eq!(node.journal_len(), 3);
    assert_eq!(node.poll_timeout(), None, "no fold is due while unsettled");
}

// The slot conversation with a hostile or confused peer: an answer nobody asked for, a second
// query, and an answer naming another certificate's statement each end the session; a query
// for another member's certificate is answered with nothing.
#[test]
fn slot_messages_out_of_turn_end_the_session() {
    let mut node = open(0, MemStore::new(), 1, settling);
    let mut gw9 = Hand::new("gw-9");
    let caps = edgesync_proto::wire::CAP_SLOTS;

    // The node asks a peer that answers slot queries, and only such a peer.
    let sid = hand_session(&mut node, &mut gw9, caps);
    let asked = released(&mut node, sid);
    assert!(asked
        .iter()
        .any(|m| matches!(m, Message::SlotQuery(q) if q.space == node.meta().slot_space)));
    // Its answer is another member's statement: refused.
    let foreign = gw9.signer().statement(&gw9.node_actor(0));
    let answer = Message::SlotAnswer(SlotAnswer {
        statement: Some(AuthorStatement(foreign)),
    });
    node.handle_input(sid, &answer.to_frame(), 0);
    let ended = closes(&mut node);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, CloseCode::Unauthorized, "{}", ended[0].1);
    assert!(!node.is_settled());
    node.disconnect(sid);

    let sid = hand_session(&mut node, &mut gw9, 0);
    let asked = released(&mut node, sid);
    assert!(
        !asked.iter().any(|m| matches!(m, Message::SlotQuery(_))),
        "no query to a peer that does not answer them"
    );
    node.handle_input(
        sid,
        &Message::SlotAnswer(SlotAnswer { statement: None }).to_frame(),
        0,
    );
    assert_eq!(closes(&mut node)[0].0, CloseCode::Unexpected);
    node.disconnect(sid);

    // Queries: the node knows gw-9's slot 0 (it never took one of its changes here: nothing),
    // and its own; it tells gw-9 nothing of its own certificate, and a second query ends it.
    let sid = hand_session(&mut node, &mut gw9, 0);
    let q = Message::SlotQuery(SlotQuery {
        space: node.meta().slot_space,
    });
    node.handle_input(sid, &q.to_frame(), 0);
    let answers: Vec<Message> = released(&mut node, sid)
        .into_iter()
        .filter(|m| matches!(m, Message::SlotAnswer(_)))
        .collect();
    assert_eq!(
        answers,
        vec![Message::SlotAnswer(SlotAnswer { statement: None })]
    );
    node.handle_input(sid, &q.to_frame(), 0);
    assert_eq!(closes(&mut node)[0].0, CloseCode::Unexpected);
}

// A peer answers the asking member with the highest slot statement it keeps of that member's
// certificate, and only of it: a relay learns a node's slots from the changes it carries.
#[test]
fn a_peer_answers_with_the_highest_slot_it_keeps() {
    let d = doc("s/a");
    let mut net = Net::new(2, |_| {});
    net.nodes[0].ingest(&d, &[reading("a", 1)], 0).unwrap();
    net.nodes[0].renew_store(&boot(20)).unwrap();
    net.nodes[0].ingest(&d, &[reading("b", 2)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    let space = net.nodes[0].meta().slot_space;
    let (slot, _) = net.nodes[1].store().slot(&space).unwrap().unwrap();
    assert_eq!(slot, 1);
    // Node 0's wiped store asks node 1 and takes slot 2.
    net.disconnect(0, 1);
    net.closed.clear();
    net.nodes[0] = open(0, MemStore::new(), 30, settling);
    net.connect(0, 1);
    net.settle();
    assert_eq!(refusals(&net), vec![]);
    assert_eq!(net.nodes[0].meta().actor_slot, 2);
    assert_eq!(net.nodes[0].actor(), slot_actor(&space, 2));
}

// Retention waits for an unsettled node's journal: a bucket it holds with readings journaled
// (not folded: the node does not know its slot yet) is not dropped, or the fold would bring it
// back; once a peer answered and the readings are folded, the bucket goes whole.
#[test]
fn retention_waits_for_what_an_unsettled_node_journaled() {
    const HOUR: i64 = 3_600_000;
    let keep = 24 * HOUR as u64;
    let mut node = open(0, MemStore::new(), 1, |c| c.keep_ms = Some(keep));
    let s = doc("site-a/temp-1");
    node.ingest(&s, &[reading("a", 7)], 0).unwrap();
    persist(&mut node);
    let mut node = open(0, node.into_store(), 2, |c| {
        c.keep_ms = Some(keep);
        c.settle_from_peers = true;
    });
    node.renew_store(&boot(3)).unwrap();
    assert!(!node.is_settled());
    node.ingest(&s, &[reading("b", 8)], HOUR as u64).unwrap();
    assert_eq!(node.journal_len(), 1);
    let late = 30 * HOUR as u64;
    assert_eq!(
        node.expire(late).unwrap(),
        0,
        "the journal holds some of it"
    );
    assert_eq!(node.docs().count(), 1);
    // A peer answers: the node settles, folds, and retention drops the bucket whole.
    let mut gw9 = Hand::new("gw-9");
    let sid = hand_session(&mut node, &mut gw9, edgesync_proto::wire::CAP_SLOTS);
    let answer = Message::SlotAnswer(SlotAnswer { statement: None });
    node.handle_input(sid, &answer.to_frame(), late);
    assert!(node.is_settled());
    assert_eq!(node.journal_len(), 0);
    assert_eq!(node.expire(late).unwrap(), 1);
    assert_eq!(node.docs().count(), 0);
    assert_eq!(node.journal_len(), 0, "nothing comes back");
}

// A slot answer lost on the way (a fault like a lost Ack) does not leave the node unsettled on a
// live link for ever: the session ends with Timeout once the acknowledgement timeout passes, and
// the next session asks again and settles.
#[test]
fn an_unanswered_slot_query_times_out_and_is_asked_again() {
    let mut node = open(0, MemStore::new(), 1, settling);
    let ack_timeout = node.config().ack_timeout_ms;
    let mut gw9 = Hand::new("gw-9");
    let caps = edgesync_proto::wire::CAP_SLOTS;
    let sid = hand_session(&mut node, &mut gw9, caps);
    assert!(released(&mut node, sid)
        .iter()
        .any(|m| matches!(m, Message::SlotQuery(_))));
    assert!(node.poll_timeout().is_some_and(|t| t <= ack_timeout));
    node.handle_timeout(ack_timeout);
    let ended = closes(&mut node);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].0, CloseCode::Timeout);
    assert!(ended[0].1.contains("slot answer"), "{}", ended[0].1);
    node.disconnect(sid);
    let sid = hand_session(&mut node, &mut gw9, caps);
    assert!(released(&mut node, sid)
        .iter()
        .any(|m| matches!(m, Message::SlotQuery(_))));
    let answer = Message::SlotAnswer(SlotAnswer { statement: None });
    node.handle_input(sid, &answer.to_frame(), ack_timeout + 1);
    assert!(node.is_settled());
}
