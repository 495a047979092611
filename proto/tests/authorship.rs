//! Signed authorship, write rules and residency in the core: who wrote a change is proven to
//! every receiver, also through relays; changes whose authorship is not proven, or that their
//! author may not write, are refused with their own close codes and never land; a node sends
//! a document only to peers that may hold it.

mod common;

use automerge::transaction::Transactable;
use common::{doc, hello, persist, Hand, Net};
use edgesync_proto::authz::{Identity, Role, Rules};
use edgesync_proto::trust::keyed::Fleet;
use edgesync_proto::wire::{Message, Summary};
use edgesync_proto::{
    Boot, CloseCode, Config, DocId, Event, MemStore, Node, NodeName, Reading, SessionId,
};
use serde_json::json;

fn nm(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn reading(id: &str, ts: i64) -> Reading {
    Reading::from_json(id, ts, &json!({ "v": ts })).unwrap()
}

/// A node with this identity in `fleet`.
fn node_in(fleet: &Fleet, id: Identity, seed: u8) -> Node<MemStore> {
    let mut cfg = Config::new(id.name.clone());
    cfg.trust = fleet.trust(id, Rules::default());
    common::sync_at_once(&mut cfg);
    Node::open(
        MemStore::new(),
        cfg,
        Boot {
            nonce: [seed; 16],
            new_store_id: [seed; 16],
        },
    )
    .unwrap()
}

/// A session on `node` for the hand-driven `peer`, past Hello and Summary.
fn session(node: &mut Node<MemStore>, peer: &Hand) -> SessionId {
    let sid = node.connect(peer.identity.clone(), 0);
    node.handle_input(
        sid,
        &hello(peer.identity.name.as_str(), 4 << 20).to_frame(),
        0,
    );
    let summary = Message::Summary(Summary {
        entries: vec![],
        last: true,
    });
    node.handle_input(sid, &summary.to_frame(), 0);
    sid
}

/// How the first session that ended, ended.
fn ended(node: &mut Node<MemStore>) -> Option<(CloseCode, String)> {
    persist(node);
    std::iter::from_fn(|| node.poll_event()).find_map(|e| match e {
        Event::SessionClosed {
            code: Some(c),
            reason,
            ..
        } => Some((c, reason)),
        _ => None,
    })
}

/// A generic change of `d` under `actor` on top of `base`.
fn change(actor: automerge::ActorId, base: &[automerge::Change], key: &str) -> Vec<u8> {
    let mut am = automerge::Automerge::new().with_actor(actor);
    am.apply_changes(base.to_vec()).unwrap();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, key, 1).unwrap();
    tx.commit();
    am.get_last_local_change().unwrap().raw_bytes().to_vec()
}

// Forgeries: a change under another node's actor, presented with the forger's own statement
// or with the real author's statement and the forger's signature; a change with no
// signature; a statement that is not a member's. Each ends the session as unauthorized, the
// reason names the relaying peer, and nothing of it is held.
#[test]
fn forged_and_unsigned_changes_are_refused() {
    let fleet = common::fleet();
    let mut author = node_in(&fleet, common::cloud(&nm("n1")), 1);
    let d = doc("app/doc");
    author.patch(&d, &json!({"a": 1}), 0).unwrap();
    persist(&mut author);
    let victim_actor = author.doc_actor(&d).to_automerge();
    let forger = Hand::new("gw-9");
    let forged = change(victim_actor.clone(), &[], "forged");
    let victim_statement = fleet
        .trust(common::cloud(&nm("n1")), Rules::default())
        .signer
        .unwrap()
        .statement(&author.actor());
    let own = forger.signer().statement(&forger.node_actor(0));
    let signer = forger.signer();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "own statement",
            Hand::raw_frames(
                std::slice::from_ref(&own),
                0,
                &d,
                std::slice::from_ref(&forged),
                &[(0, 0, &*signer)],
            ),
            "claims gw-9",
        ),
        (
            "the author's statement, the forger's signature",
            Hand::raw_frames(
                &[victim_statement],
                0,
                &d,
                std::slice::from_ref(&forged),
                &[(0, 0, &*signer)],
            ),
            "is not n1",
        ),
        (
            "no signature",
            Hand::raw_frames(&[], 0, &d, std::slice::from_ref(&forged), &[]),
            "no signature proves",
        ),
        (
            "a statement no member signed",
            {
                let mut bad = own.clone();
                let at = bad.len() - 1;
                bad[at] ^= 1;
                Hand::raw_frames(
                    &[bad],
                    0,
                    &d,
                    std::slice::from_ref(&forged),
                    &[(0, 0, &*signer)],
                )
            },
            "does not verify",
        ),
    ];
    for (what, frames, why) in cases {
        let mut node = common::open(0, MemStore::new(), 2, |_| {});
        let sid = session(&mut node, &forger);
        node.handle_input(sid, &frames, 0);
        let (code, reason) = ended(&mut node).expect(what);
        assert_eq!(code, CloseCode::Unauthorized, "{what}: {reason}");
        assert!(reason.contains(why), "{what}: {reason}");
        if why != "does not verify" {
            assert!(
                reason.contains("gw-9"),
                "{what}: the relay is named: {reason}"
            );
        }
        assert_eq!(node.clock(&d), None, "{what}: nothing held");
    }
}

// Write rules bind the author, never the relay: a gateway of site b may not write site-a
// documents, even through a cloud relay (Forbidden); a site-a gateway's change relayed by
// anyone is taken. A local write outside the rules is refused before anything is written.
#[test]
fn write_rules_bind_the_author_not_the_relay() {
    let fleet = common::fleet();
    let d = doc("site-a/config");
    let gw_b = Identity::new(nm("gw-b"), Role::Gateway, Some("site-b"));
    let gw_a = Identity::new(nm("gw-a"), Role::Gateway, Some("site-a"));
    // Local: refused with Forbidden, nothing written.
    let mut b = node_in(&fleet, gw_b.clone(), 3);
    let e = b.patch(&d, &json!({"x": 1}), 0).unwrap_err();
    assert!(
        matches!(e, edgesync_proto::NodeError::Forbidden { .. }),
        "{e}"
    );
    let e = b
        .ingest(&doc("site-a/temp"), &[reading("r", 1)], 0)
        .unwrap_err();
    assert!(
        matches!(e, edgesync_proto::NodeError::Forbidden { .. }),
        "{e}"
    );
    assert_eq!(b.docs().count(), 0);
    b.patch(&doc("site-b/config"), &json!({"x": 1}), 0).unwrap();
    // Remote: site b's change into a site-a document, relayed by a cloud member.
    let mut trespasser = Hand::with(gw_b);
    let c = change(trespasser.actor(&d, 0), &[], "x");
    let mut relay = Hand::new("relay");
    let st = trespasser.signer().statement(&trespasser.node_actor(0));
    let signer = trespasser.signer();
    let mut node = common::open(0, MemStore::new(), 4, |_| {});
    let sid = session(&mut node, &relay);
    node.handle_input(
        sid,
        &Hand::raw_frames(&[st], 0, &d, &[c], &[(0, 0, &*signer)]),
        0,
    );
    let (code, reason) = ended(&mut node).expect("refused");
    assert_eq!(code, CloseCode::Forbidden, "{reason}");
    assert!(
        reason.contains("gw-b (gateway, site site-b) may not write"),
        "{reason}"
    );
    assert!(reason.contains("relayed by relay"), "{reason}");
    assert_eq!(node.clock(&d), None);
    // Site a's own change, relayed by the same relay: taken.
    let mut author = Hand::with(gw_a);
    let c = change(author.actor(&d, 0), &[], "x");
    let st = author.signer().statement(&author.node_actor(0));
    let signer = author.signer();
    relay.new_session();
    let sid = session(&mut node, &relay);
    node.handle_input(
        sid,
        &Hand::raw_frames(&[st], 0, &d, &[c], &[(0, 0, &*signer)]),
        0,
    );
    assert_eq!(ended(&mut node), None);
    assert_eq!(node.json(&d, false).unwrap(), Some(json!({"x": 1})));
}

// A signature proves the change it signs and that change's ancestors by the same actor in the
// section (a change's hash covers its dependencies'), never its descendants.
#[test]
fn a_signature_proves_ancestors_not_descendants() {
    let mut author = Hand::new("gw-7");
    let d = doc("app/chain");
    let actor = author.actor(&d, 0);
    let mut am = automerge::Automerge::new().with_actor(actor);
    let mut cs = Vec::new();
    for k in 0..3 {
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, "k", k).unwrap();
        tx.commit();
        cs.push(am.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    let st = author.signer().statement(&author.node_actor(0));
    let signer = author.signer();
    // The last one signed: all three taken.
    let mut node = common::open(0, MemStore::new(), 5, |_| {});
    let sid = session(&mut node, &author);
    node.handle_input(
        sid,
        &Hand::raw_frames(std::slice::from_ref(&st), 0, &d, &cs, &[(2, 0, &*signer)]),
        0,
    );
    assert_eq!(ended(&mut node), None);
    assert_eq!(node.json(&d, false).unwrap(), Some(json!({"k": 2})));
    // The first one signed: the other two are unproven.
    let mut node = common::open(0, MemStore::new(), 6, |_| {});
    author.new_session();
    let sid = session(&mut node, &author);
    node.handle_input(
        sid,
        &Hand::raw_frames(&[st], 0, &d, &cs, &[(0, 0, &*signer)]),
        0,
    );
    let (code, reason) = ended(&mut node).expect("refused");
    assert_eq!(code, CloseCode::Unauthorized, "{reason}");
    assert_eq!(node.clock(&d), None, "nothing of the section is held");
}

// Residency: a cloud holding two sites' documents sends each gateway only its own site's, and
// never names the other site's in a summary; relays keep authorship (a gateway verifies the
// writer, not the cloud that relayed).
#[test]
fn documents_travel_only_to_nodes_that_may_hold_them() {
    let ids = vec![
        common::cloud(&nm("cloud")),
        Identity::new(nm("gw-a"), Role::Gateway, Some("site-a")),
        Identity::new(nm("gw-b"), Role::Gateway, Some("site-b")),
        Identity::new(nm("gw-a2"), Role::Gateway, Some("site-a")),
    ];
    let mut net = Net::with_identities(ids);
    net.nodes[1]
        .ingest(&doc("site-a/temp"), &[reading("a", 1)], 0)
        .unwrap();
    net.nodes[2]
        .ingest(&doc("site-b/temp"), &[reading("b", 1)], 0)
        .unwrap();
    net.nodes[0]
        .patch(&doc("fleet/config"), &json!({"v": 1}), 0)
        .unwrap();
    net.connect(0, 1);
    net.connect(0, 2);
    net.connect(0, 3);
    net.settle();
    assert!(net.closed.is_empty(), "no refusals: {:?}", net.closed);
    let held = |n: &Node<MemStore>| -> Vec<String> {
        n.docs()
            .map(|(d, _)| d.as_str().split('/').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(held(&net.nodes[0]).len(), 3, "the cloud holds everything");
    assert!(held(&net.nodes[1]).iter().all(|s| s == "site-a"));
    assert!(held(&net.nodes[2]).iter().all(|s| s == "site-b"));
    // gw-a2 got site a's readings from gw-a through the cloud.
    let v = net.nodes[3]
        .sensor_view(&doc("site-a/temp"))
        .unwrap()
        .unwrap();
    assert!(v.readings.contains_key("a"));
    assert!(held(&net.nodes[3]).iter().all(|s| s == "site-a"));
    // A peer that sends a gateway another site's document anyway (hostile, or with other
    // rules) is refused: the gateway never holds it.
    let mut hand = Hand::new("cloud-x");
    let d = doc("site-a/secret");
    let c = change(hand.actor(&d, 0), &[], "x");
    let sid = session(&mut net.nodes[2], &hand);
    let frames = hand.frames(0, &[(d.clone(), vec![c])]);
    net.nodes[2].handle_input(sid, &frames, 0);
    let (code, reason) = ended(&mut net.nodes[2]).expect("refused");
    assert_eq!(code, CloseCode::Forbidden, "{reason}");
    assert!(reason.contains("may not hold"), "{reason}");
    assert_eq!(net.nodes[2].clock(&d), None);
}

// Revocation: a statement of a revoked certificate is accepted only for a node actor the
// receiver already knew; a receiver meeting that actor for the first time refuses it.
#[test]
fn a_revoked_author_is_refused_where_it_was_not_known() {
    let d = doc("app/doc");
    let mut author = Hand::new("gw-5");
    let c1 = change(author.actor(&d, 0), &[], "a");
    let base = vec![automerge::Change::try_from(c1.as_slice()).unwrap()];
    let mut am = automerge::Automerge::new().with_actor(author.actor(&d, 0));
    am.apply_changes(base).unwrap();
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "b", 2).unwrap();
    tx.commit();
    let c2 = am.get_last_local_change().unwrap().raw_bytes().to_vec();
    let st = author.signer().statement(&author.node_actor(0));
    let signer = author.signer();
    let fleet = Fleet::new([1; 32]);
    let mut knew = node_in(&fleet, common::cloud(&nm("n0")), 7);
    let sid = session(&mut knew, &author);
    knew.handle_input(
        sid,
        &Hand::raw_frames(
            std::slice::from_ref(&st),
            0,
            &d,
            std::slice::from_ref(&c1),
            &[(0, 0, &*signer)],
        ),
        0,
    );
    assert_eq!(ended(&mut knew), None);
    let fresh_fleet = Fleet::new([1; 32]);
    let mut fresh = node_in(&fresh_fleet, common::cloud(&nm("n2")), 8);
    fleet.authority().revoke(&nm("gw-5"));
    fresh_fleet.authority().revoke(&nm("gw-5"));
    // The node that knew the actor takes its next change.
    author.new_session();
    let sid = session(&mut knew, &author);
    knew.handle_input(
        sid,
        &Hand::raw_frames(
            std::slice::from_ref(&st),
            0,
            &d,
            std::slice::from_ref(&c2),
            &[(0, 0, &*signer)],
        ),
        0,
    );
    assert_eq!(ended(&mut knew), None);
    assert_eq!(knew.json(&d, false).unwrap(), Some(json!({"a": 1, "b": 2})));
    // A node meeting it now refuses.
    let sid = session(&mut fresh, &author);
    fresh.handle_input(
        sid,
        &Hand::raw_frames(&[st], 0, &d, &[c1, c2], &[(1, 0, &*signer)]),
        0,
    );
    let (code, reason) = ended(&mut fresh).expect("refused");
    assert_eq!(code, CloseCode::Unauthorized, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(fresh.clock(&d), None);
    let _: Option<DocId> = None;
}

// A node that writes before it has a fleet identity (offline, not provisioned yet) adopts those
// writes at its first start with one: same actor (one of its name's slots, which its
// certificate binds), its statement proves them, and they sync. A later start with another key
// takes a new actor (a node actor keeps one statement).
#[test]
fn writes_made_before_provisioning_sync_once_provisioned() {
    let name = nm("kiosk");
    let boot = |b: u8| Boot {
        nonce: [b; 16],
        new_store_id: [b; 16],
    };
    let d = doc("site-a/kiosk/settings");
    let mut bare = Node::open(MemStore::new(), Config::new(name.clone()), boot(1)).unwrap();
    bare.patch(&d, &json!({"mode": "offline"}), 0).unwrap();
    persist(&mut bare);
    bare.record_clean_stop().unwrap();
    persist(&mut bare);
    let first = bare.actor();
    let id = Identity::new(name.clone(), Role::Gateway, Some("site-a"));
    let mut cfg = Config::new(name.clone());
    cfg.trust = common::fleet().trust(id.clone(), Rules::default());
    let kiosk = Node::open(bare.into_store(), cfg, boot(2)).unwrap();
    assert_eq!(kiosk.actor(), first, "the unsigned actor is adopted");
    let mut net = Net::with_identities(vec![common::cloud(&nm("cloud")), id.clone()]);
    net.nodes[1] = kiosk;
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(
        net.nodes[0].json(&d, false).unwrap(),
        Some(json!({"mode": "offline"}))
    );
    // Another key: another actor.
    let store = std::mem::replace(
        &mut net.nodes[1],
        Node::open(MemStore::new(), Config::new(nm("x")), boot(9)).unwrap(),
    )
    .into_store();
    let mut cfg = Config::new(name.clone());
    cfg.trust = Fleet::new([2; 32]).trust(id, Rules::default());
    let rekeyed = Node::open(store, cfg, boot(3)).unwrap();
    assert_ne!(rekeyed.actor(), first, "a new key takes a new actor");
}
