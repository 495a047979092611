//! Streams as time buckets: ingest, range and latest reads, the bucket schema rule, and
//! retention (buckets dropped, not taken again, counted as held by peers that keep them).

mod common;

use common::{doc, open, persist, Net};
use edgesync_proto::store::Store;
use edgesync_proto::stream::{Bucket, Cursor, Range};
use edgesync_proto::wire::Message;
use edgesync_proto::{CloseCode, DocId, Event, IngestOutcome, MemStore, Node, NodeError, Reading};
use serde_json::json;

const HOUR: u64 = 3_600_000;

fn reading(id: &str, ts: u64) -> Reading {
    Reading::from_json(id, ts as i64, &json!({ "v": ts })).unwrap()
}

fn bucket_at(stream: &str, ts: u64) -> DocId {
    Bucket::of(&doc(stream), ts, HOUR).doc()
}

fn ids(readings: &[Reading]) -> Vec<String> {
    readings.iter().map(|r| r.id.clone()).collect()
}

/// Every page of `stream` in `range`, following `next`.
fn pages(n: &mut Node<MemStore>, stream: &DocId, mut range: Range) -> Vec<Vec<Reading>> {
    let mut out = Vec::new();
    loop {
        let page = n
            .read_stream(stream, &range)
            .unwrap()
            .expect("a known stream");
        assert!(page.readings.len() <= range.limit);
        out.push(page.readings);
        match page.next {
            Some(c) => {
                // The cursor is opaque to clients: it must survive its text form.
                range.after = Some(Cursor::decode(&c.encode()).unwrap());
            }
            None => return out,
        }
    }
}

// Readings land in the bucket of their own timestamp, one document per hour of reading time,
// each starting with the shared genesis; outcomes and documents come back in input order, and
// dedup works within a bucket.
#[test]
fn an_ingest_splits_readings_into_hour_buckets() {
    let mut n = open(0, MemStore::new(), 1, |_| {});
    let s = doc("site-a/temp-1");
    let batch = [
        reading("c", 2 * HOUR + 5),
        reading("a", 5),
        reading("b", HOUR + 5),
        reading("a2", 10),
    ];
    let out = n.ingest(&s, &batch, 0).unwrap();
    assert_eq!(out.outcomes, vec![IngestOutcome::Inserted; 4]);
    let expect: Vec<DocId> = [2 * HOUR, 0, HOUR, 0]
        .iter()
        .map(|t| bucket_at("site-a/temp-1", *t))
        .collect();
    assert_eq!(out.docs, expect);
    persist(&mut n);
    let held: Vec<&DocId> = n.docs().map(|(d, _)| d).collect();
    assert_eq!(held.len(), 3, "{held:?}");
    for h in [0, HOUR, 2 * HOUR] {
        let d = bucket_at("site-a/temp-1", h);
        let clock = n.clock(&d).unwrap();
        assert_eq!(
            clock.get(&edgesync_proto::id::genesis_actor()),
            1,
            "{d}: genesis"
        );
        assert_eq!(
            clock.get(&n.doc_actor(&d)),
            1,
            "{d}: one change of this node"
        );
    }
    let again = n
        .ingest(
            &s,
            &[
                reading("b", HOUR + 5),
                Reading::from_json("a", 5, &json!({"v": 0})).unwrap(),
            ],
            0,
        )
        .unwrap();
    assert_eq!(
        again.outcomes,
        vec![IngestOutcome::Duplicate, IngestOutcome::Conflict]
    );
    assert_eq!(n.sensor_view(&s).unwrap().unwrap().readings.len(), 4);
}

// Paging a stream with `after` yields every reading exactly once, in (timestamp, id) order,
// within the half-open range; `next` is null on the last page; `latest` is the stream's.
#[test]
fn paging_a_range_yields_every_reading_once_in_order() {
    let mut n = open(0, MemStore::new(), 1, |c| c.docs_loaded_max = 2);
    let s = doc("site-a/temp-1");
    // 5 hours, 40 readings each, some sharing a timestamp (ordered by id then).
    let mut all = Vec::new();
    for h in 0..5u64 {
        let batch: Vec<Reading> = (0..40u64)
            .map(|i| reading(&format!("r{h}-{:02}", 39 - i), h * HOUR + (i / 2) * 1000))
            .collect();
        n.ingest(&s, &batch, 0).unwrap();
        all.extend(batch);
    }
    persist(&mut n);
    all.sort_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)));
    for limit in [1, 7, 40, 41, 1000] {
        let got: Vec<Reading> = pages(
            &mut n,
            &s,
            Range {
                limit,
                ..Range::default()
            },
        )
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(ids(&got), ids(&all), "limit {limit}");
    }
    let (from, to) = (HOUR + 3_000, 3 * HOUR + 2_000);
    let want: Vec<Reading> = all
        .iter()
        .filter(|r| r.ts_ms >= from as i64 && r.ts_ms < to as i64)
        .cloned()
        .collect();
    let range = Range {
        from_ms: Some(from as i64),
        to_ms: Some(to as i64),
        limit: 9,
        after: None,
    };
    let got: Vec<Reading> = pages(&mut n, &s, range).into_iter().flatten().collect();
    assert_eq!(ids(&got), ids(&want));
    let page = n.read_stream(&s, &Range::default()).unwrap().unwrap();
    assert_eq!(page.next, None, "200 readings fit one default page");
    assert_eq!(page.latest.as_ref(), all.last());
    assert_eq!(n.latest(&s).unwrap().unwrap().as_ref(), all.last());
    assert_eq!(
        n.read_stream(&doc("site-a/none"), &Range::default())
            .unwrap(),
        None
    );
    assert_eq!(n.latest(&doc("site-a/none")).unwrap(), None);
    let json = page.to_json();
    let keys: Vec<&String> = json["readings"].as_object().unwrap().keys().collect();
    let want_keys: Vec<&String> = all.iter().map(|r| &r.id).collect();
    assert_eq!(keys, want_keys, "the JSON keeps (timestamp, id) order");
    assert_eq!(json["next"], serde_json::Value::Null);
}

// Two partitioned nodes both create the same bucket: the genesis is shared, so one readings
// map holds both nodes' readings after they meet.
#[test]
fn concurrent_creation_of_a_bucket_converges() {
    let mut net = Net::new(2, |_| {});
    let s = doc("site-a/temp-1");
    net.nodes[0].ingest(&s, &[reading("x", 10)], 0).unwrap();
    net.nodes[1].ingest(&s, &[reading("y", 20)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    for n in &mut net.nodes {
        let page = n.read_stream(&s, &Range::default()).unwrap().unwrap();
        assert_eq!(ids(&page.readings), vec!["x", "y"]);
    }
    let d = bucket_at("site-a/temp-1", 0);
    assert_eq!(
        net.nodes[0].heads(&d).unwrap(),
        net.nodes[1].heads(&d).unwrap()
    );
}

// Names: a stream may not name a bucket; a write straight into a bucket must fit its span.
#[test]
fn bucket_names_and_spans_are_enforced_on_local_writes() {
    let mut n = open(0, MemStore::new(), 1, |_| {});
    let b = bucket_at("site-a/temp-1", 0);
    let e = n.ingest(&b, &[reading("late", HOUR)], 0).unwrap_err();
    assert!(matches!(e, NodeError::OutsideBucket { .. }), "{e}");
    n.ingest(&b, &[reading("in", HOUR - 1)], 0).unwrap();
    let e = n
        .ingest(&doc("site-a/_b.x/t"), &[reading("r", 1)], 0)
        .unwrap_err();
    assert!(matches!(e, NodeError::Stream(_)), "{e}");
    let e = n
        .ingest(
            &doc("s"),
            &[reading("r", edgesync_proto::stream::TS_LIMIT_MS as u64)],
            0,
        )
        .unwrap_err();
    assert!(matches!(e, NodeError::TooFarAhead { .. }), "{e}");
    assert_eq!(n.docs().count(), 1, "refused ingests wrote nothing");
}

/// A hand-driven peer offers `changes` of `d`, signed as its own, as batch 0; returns how the
/// session ended, if it did.
fn offer(
    n: &mut Node<MemStore>,
    hand: &mut common::Hand,
    d: &DocId,
    changes: Vec<Vec<u8>>,
) -> Option<(CloseCode, String)> {
    let peer = hand.identity.name.as_str().to_string();
    hand.new_session();
    let sid = n.connect(hand.identity.clone(), 0);
    n.handle_input(sid, &common::hello(&peer, 4 << 20).to_frame(), 0);
    let summary = Message::Summary(edgesync_proto::wire::Summary {
        entries: vec![],
        last: true,
    });
    n.handle_input(sid, &summary.to_frame(), 0);
    n.handle_input(sid, &hand.frames(0, &[(d.clone(), changes)]), 0);
    persist(n);
    std::iter::from_fn(|| n.poll_event()).find_map(|e| match e {
        Event::SessionClosed { code, reason, .. } => Some((code.unwrap(), reason)),
        _ => None,
    })
}

// Rule 6 on receipt: a peer's reading outside the bucket's span, or a generic change into a
// bucket, is refused with InvalidChange and nothing of it is kept.
#[test]
fn a_remote_change_outside_its_bucket_is_refused() {
    use automerge::transaction::Transactable;
    let genesis = edgesync_proto::doc::sensor_genesis().raw_bytes().to_vec();
    let b = bucket_at("site-a/temp-1", 0);
    let mut hand = common::Hand::new("gw-9");
    for attack in ["outside", "generic"] {
        // The peer's change under its own actor for `d`.
        let mut change_into = |d: &DocId| {
            let mut am = automerge::Automerge::new().with_actor(hand.actor(d, 0));
            am.apply_changes([edgesync_proto::doc::sensor_genesis().clone()])
                .unwrap();
            let (_, map) = automerge::ReadDoc::get(&am, automerge::ROOT, "readings")
                .unwrap()
                .unwrap();
            let mut tx = am.transaction();
            match attack {
                "outside" => {
                    tx.put(&map, "late", reading("late", HOUR).encode())
                        .unwrap();
                }
                _ => {
                    tx.put(automerge::ROOT, "note", "x").unwrap();
                }
            }
            tx.commit();
            am.get_last_local_change().unwrap().raw_bytes().to_vec()
        };
        let change = change_into(&b);
        let other = doc("site-a/temp-1");
        let change_elsewhere = change_into(&other);
        let mut n = open(0, MemStore::new(), 1, |_| {});
        let (code, reason) =
            offer(&mut n, &mut hand, &b, vec![genesis.clone(), change]).expect("the session ends");
        assert_eq!(code, CloseCode::InvalidChange, "{attack}: {reason}");
        let want = if attack == "outside" {
            "does not belong in the bucket"
        } else {
            "other than readings"
        };
        assert!(reason.contains(want), "{attack}: {reason}");
        assert_eq!(n.clock(&b).unwrap().len(), 1, "{attack}: the genesis only");
        // The same change into a document that is not a bucket is fine.
        let mut n = open(0, MemStore::new(), 1, |_| {});
        assert_eq!(
            offer(
                &mut n,
                &mut hand,
                &other,
                vec![genesis.clone(), change_elsewhere]
            ),
            None
        );
    }
}

// Retention: an ingest older than the horizon is refused and says why; expire drops whole
// buckets from memory and store, with their receipts; the rest stays readable.
#[test]
fn retention_drops_old_buckets_and_refuses_old_readings() {
    let keep = 24 * HOUR;
    let mut n = open(0, MemStore::new(), 1, |c| c.keep_ms = Some(keep));
    let s = doc("site-a/temp-1");
    let now = 30 * HOUR + 123;
    let batch: Vec<Reading> = (0..31)
        .map(|h| reading(&format!("r{h}"), h * HOUR + 7))
        .collect();
    n.ingest(&s, &batch, 0).unwrap();
    persist(&mut n);
    assert_eq!(n.docs().count(), 31);
    // At hour 30, buckets ending at or before hour 6 are past retention.
    let late = [
        reading("young", 29 * HOUR),
        reading("too-old", 6 * HOUR - 1),
    ];
    let e = n.ingest(&s, &late, now).unwrap_err();
    assert!(
        matches!(e, NodeError::Expired { ref id, .. } if id == "too-old"),
        "{e}"
    );
    assert!(e.to_string().contains("older than this node keeps"), "{e}");
    assert_eq!(
        n.docs().count(),
        31,
        "nothing of a refused ingest is written"
    );
    n.ingest(&s, &[reading("just-kept", 6 * HOUR)], now)
        .unwrap();
    let dropped = n.expire(now).unwrap();
    persist(&mut n);
    assert_eq!(dropped, 6, "hours 0..6 end at or before 30 - 24");
    let events: Vec<Event> = std::iter::from_fn(|| n.poll_event()).collect();
    let dropped_events = events
        .iter()
        .filter(|e| matches!(e, Event::DocDropped { .. }))
        .count();
    assert_eq!(dropped_events, 6);
    assert_eq!(n.docs().count(), 25);
    let first = n.read_stream(&s, &Range::default()).unwrap().unwrap();
    assert_eq!(first.readings[0].id, "just-kept");
    assert_eq!(first.readings.len(), 26);
    assert_eq!(n.expire(now).unwrap(), 0, "nothing more is due");
    // The store holds nothing of the dropped buckets, after a restart too.
    let store = n.into_store();
    let stored: Vec<DocId> = store.docs().unwrap().into_iter().map(|(d, _)| d).collect();
    assert_eq!(stored.len(), 25);
    assert!(store
        .changes_from(&bucket_at("site-a/temp-1", 0), 0, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        store.snapshot(&bucket_at("site-a/temp-1", 0)).unwrap(),
        None
    );
}

// Nodes keep different spans: a node without retention keeps every bucket; a node with it
// drops the old ones and does not take them again when they meet, and the keeper counts
// them as held (nothing unacknowledged, nothing resent). Readings the keeper gets later into
// an old bucket are acknowledged by the expiring node without being kept.
#[test]
fn a_dropped_bucket_is_not_taken_again_and_counts_as_held() {
    let keep = 24 * HOUR;
    let mut net = Net::new(2, |_| {});
    // n1 expires; n0 (the keeper) does not.
    let mut cfg = common::config(1);
    cfg.keep_ms = Some(keep);
    net.nodes[1] = Node::open(MemStore::new(), cfg, common::boot(99)).unwrap();
    let s = doc("site-a/temp-1");
    let old = bucket_at("site-a/temp-1", 0);
    let now = 30 * HOUR;
    net.nodes[0]
        .ingest(&s, &[reading("old", 5), reading("new", 29 * HOUR)], now)
        .unwrap();
    // A fresh expiring node meets the keeper: the old bucket is answered as held at once.
    net.nodes[1].expire(now).unwrap();
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(
        net.nodes[1].clock(&old),
        None,
        "the old bucket was not taken"
    );
    assert!(
        net.nodes[1]
            .read_stream(&s, &Range::default())
            .unwrap()
            .unwrap()
            .readings
            .len()
            == 1
    );
    let peer1 = common::name(1);
    assert_eq!(
        net.nodes[0].peer_unacked(&peer1),
        0,
        "the keeper counts it as held"
    );
    let sent_before = net.nodes[0].session_totals().changes_sent;
    // A late reading into the old bucket reaches the keeper; the expiring node acknowledges
    // it as held, keeps nothing, and the keeper does not send it again.
    net.nodes[0]
        .ingest(&old, &[reading("late", 6)], now)
        .unwrap();
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(net.nodes[1].clock(&old), None, "no resurrection");
    assert_eq!(net.nodes[0].peer_unacked(&peer1), 0);
    let sent = net.nodes[0].session_totals().changes_sent - sent_before;
    assert_eq!(sent, 1, "the late change went once");
    // Reconnecting changes nothing: no resend, no resurrection.
    net.disconnect(0, 1);
    net.connect(0, 1);
    net.settle();
    assert_eq!(net.nodes[0].session_totals().changes_sent - sent_before, 1);
    assert_eq!(net.nodes[1].clock(&old), None);
}

// A keeper with a long history meets a node that keeps a day: the node answers the keeper's
// summary with the keeper's own clocks for the buckets it dropped, so after the first window
// the keeper sends nothing of them.
#[test]
fn old_buckets_are_answered_as_held_before_they_are_sent() {
    let mut net = Net::new(2, |c| {
        c.batch_bytes_max = 1;
        c.inflight_batches_max = 1;
    });
    let mut cfg = common::config(1);
    cfg.keep_ms = Some(24 * HOUR);
    net.nodes[1] = Node::open(MemStore::new(), cfg, common::boot(99)).unwrap();
    let s = doc("site-a/temp-1");
    let old: Vec<Reading> = (0..50)
        .map(|h| reading(&format!("r{h}"), h * HOUR))
        .collect();
    net.nodes[0].ingest(&s, &old, 0).unwrap();
    net.nodes[1].expire(100 * HOUR).unwrap();
    net.connect(0, 1);
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    let sent = net.nodes[0].session_totals().changes_sent;
    assert!(
        sent <= 4,
        "{sent} of 100 changes of dropped buckets were sent"
    );
    assert_eq!(net.nodes[0].peer_unacked(&common::name(1)), 0);
    assert_eq!(net.nodes[1].docs().count(), 0);
}

// Expiring a bucket while a session is sending it ends nothing: the session forgets it.
#[test]
fn expiring_a_bucket_a_session_is_sending_is_harmless() {
    let keep = 24 * HOUR;
    let mut net = Net::new(2, |c| {
        c.keep_ms = Some(24 * HOUR);
        c.batch_bytes_max = 1;
        c.inflight_batches_max = 1;
    });
    let s = doc("site-a/temp-1");
    for i in 0..20 {
        net.nodes[0]
            .ingest(&s, &[reading(&format!("r{i}"), 5 + i)], 0)
            .unwrap();
    }
    net.connect(0, 1);
    // One round: the first batch is in flight, the rest queued behind the window.
    net.pull();
    net.nodes[0].expire(keep + HOUR).unwrap();
    net.nodes[1].expire(keep + HOUR).unwrap();
    net.settle();
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert_eq!(net.nodes[0].docs().count(), 0);
    assert_eq!(net.nodes[1].docs().count(), 0);
    assert!(net.nodes[0].is_idle() && net.nodes[1].is_idle());
    let r = net.nodes[0].receipts(&common::name(1)).unwrap();
    assert!(
        r.clocks.is_empty() && r.reported.is_empty(),
        "nothing kept of dropped buckets"
    );
}

/// Sessions that ended with a close code other than a shutdown (a lost transport is not one).
fn refusals(net: &Net) -> Vec<String> {
    net.closed
        .iter()
        .filter_map(|(i, e)| match e {
            Event::SessionClosed {
                code: Some(c),
                reason,
                ..
            } if *c != CloseCode::Shutdown => Some(format!("n{i}: {c:?} {reason}")),
            _ => None,
        })
        .collect()
}

/// Node `i` of `net` reopened with `tweak` on a fresh store (before anything happened).
fn reconfigure(net: &mut Net, i: usize, tweak: impl Fn(&mut edgesync_proto::Config)) {
    let mut cfg = common::config(i);
    tweak(&mut cfg);
    net.nodes[i] = Node::open(MemStore::new(), cfg, common::boot(50 + i as u64)).unwrap();
}

// Store-and-forward pruning: a closed bucket's content is dropped once every listed peer has
// acknowledged all of it, not before (not closed yet, or not acknowledged); the clock stays,
// and status says what waits for whom.
#[test]
fn pruning_waits_for_every_listed_peer_and_the_grace() {
    let mut net = Net::new(3, |_| {});
    reconfigure(&mut net, 0, |c| {
        c.prune_after_ack = vec![common::name(1), common::name(2)]
    });
    let s = doc("site-a/temp-1");
    let hours: Vec<Reading> = (0..3)
        .map(|h| reading(&format!("r{h}"), h * HOUR + 1))
        .collect();
    net.nodes[0].ingest(&s, &hours, 0).unwrap();
    net.connect(0, 1);
    net.settle();
    let b0 = bucket_at("site-a/temp-1", 0);
    // Hour 0 is not closed before 1:10.
    assert_eq!(net.nodes[0].prune(HOUR + 9 * 60_000).unwrap(), 0);
    assert_eq!(net.nodes[0].prune_status().waiting, 0, "nothing closed yet");
    // At 1:11 it is closed, and only n1 has acknowledged it.
    assert_eq!(net.nodes[0].prune(HOUR + 11 * 60_000).unwrap(), 0);
    let st = net.nodes[0].prune_status();
    assert_eq!(st.waiting, 1, "{st:?}");
    assert_eq!(st.waiting_for.get(&common::name(2)), Some(&1));
    assert_eq!(st.waiting_for.get(&common::name(1)), None);
    net.connect(0, 2);
    net.settle();
    assert_eq!(net.nodes[0].prune(HOUR + 11 * 60_000).unwrap(), 1);
    assert!(net.nodes[0].is_pruned(&b0));
    let st = net.nodes[0].prune_status();
    assert_eq!((st.waiting, st.pruned), (0, 1), "{st:?}");
    assert!(net.nodes[0].clock(&b0).is_some(), "the clock is kept");
    assert!(net.nodes[0]
        .store()
        .changes_from(&b0, 0, 10)
        .unwrap()
        .is_empty());
    let page = net.nodes[0]
        .read_stream(&s, &Range::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&page.readings),
        vec!["r1", "r2"],
        "what was pruned is not read here"
    );
    for peer in [1, 2] {
        let view = net.nodes[peer].sensor_view(&s).unwrap().unwrap();
        assert_eq!(view.readings.len(), 3, "n{peer} keeps everything");
    }
    let e = net.nodes[0]
        .ingest(&s, &[reading("late", 5)], 0)
        .unwrap_err();
    assert!(matches!(e, NodeError::Pruned { .. }), "{e}");
    // Reconnecting sends nothing back, and nothing is resent.
    let sent = net.nodes[1].session_totals().changes_sent;
    net.disconnect(0, 1);
    net.connect(0, 1);
    net.settle();
    assert_eq!(refusals(&net), Vec::<String>::new());
    assert_eq!(net.nodes[1].session_totals().changes_sent, sent);
    assert!(net.nodes[0].is_pruned(&b0));
    // The pruned state survives a restart.
    let mut cfg = net.nodes[0].config().clone();
    cfg.prune_after_ack = vec![common::name(1)];
    let store =
        std::mem::replace(&mut net.nodes[0], open(9, MemStore::new(), 9, |_| {})).into_store();
    let n = Node::open(store, cfg, common::boot(77)).unwrap();
    assert!(n.is_pruned(&b0));
    assert_eq!(n.prune_status().pruned, 1);
}

// A late change into a bucket a gateway already pruned (a writer that was partitioned for
// hours) is neither lost nor stuck: the gateway stores it, acknowledges it, forwards it to the
// cloud, and prunes it again once the cloud has it.
#[test]
fn a_late_change_into_a_pruned_bucket_is_forwarded() {
    // n0 cloud, n1 gateway (prunes after the cloud), n2 edge.
    let mut net = Net::new(3, |_| {});
    reconfigure(&mut net, 1, |c| c.prune_after_ack = vec![common::name(0)]);
    let s = doc("site-a/temp-1");
    let b0 = bucket_at("site-a/temp-1", 0);
    net.nodes[2].ingest(&s, &[reading("early", 10)], 0).unwrap();
    net.connect(1, 2);
    net.connect(0, 1);
    net.settle();
    assert_eq!(net.nodes[1].prune(2 * HOUR).unwrap(), 1);
    // The edge writes into the same hour while cut off, then comes back.
    net.disconnect(1, 2);
    net.nodes[2].ingest(&s, &[reading("late", 20)], 0).unwrap();
    net.connect(1, 2);
    net.settle();
    assert_eq!(refusals(&net), Vec::<String>::new());
    let cloud = net.nodes[0].sensor_view(&s).unwrap().unwrap();
    assert!(
        cloud.readings.contains_key("late"),
        "forwarded through the pruned bucket"
    );
    assert_eq!(
        net.nodes[2].peer_unacked(&common::name(1)),
        0,
        "acknowledged"
    );
    assert_eq!(net.nodes[1].peer_unacked(&common::name(0)), 0);
    assert_eq!(
        net.nodes[1].store().changes_from(&b0, 0, 10).unwrap().len(),
        1,
        "held to forward"
    );
    assert_eq!(
        net.nodes[1].prune(2 * HOUR).unwrap(),
        1,
        "pruned again once forwarded"
    );
    assert!(net.nodes[1]
        .store()
        .changes_from(&b0, 0, 10)
        .unwrap()
        .is_empty());
    let clock = net.nodes[1].clock(&b0).unwrap().clone();
    assert_eq!(
        &clock,
        net.nodes[0].clock(&b0).unwrap(),
        "the clock follows"
    );
    // The edge resending an old change (a store it restored, say) is a duplicate.
    net.disconnect(1, 2);
    net.connect(1, 2);
    net.settle();
    assert_eq!(refusals(&net), Vec::<String>::new());
}

// Retention with an upstream: a node cut off for longer than it keeps drops nothing its
// upstream has not acknowledged. It still takes changes into those buckets (and forwards
// them), and drops them once the upstream has everything.
#[test]
fn retention_waits_for_the_upstream() {
    let mut net = Net::new(3, |_| {});
    // n1 keeps two hours and names the cloud (n0) as its upstream; n2 writes through n1.
    reconfigure(&mut net, 1, |c| {
        c.keep_ms = Some(2 * HOUR);
        c.prune_after_ack = vec![common::name(0)];
    });
    let s = doc("site-a/temp-1");
    let b0 = bucket_at("site-a/temp-1", 0);
    net.nodes[1].ingest(&s, &[reading("mine", 10)], 0).unwrap();
    net.nodes[2]
        .ingest(&s, &[reading("theirs", 20)], 0)
        .unwrap();
    // Five hours later, still cut off from the cloud: nothing is dropped.
    assert_eq!(net.nodes[1].expire(5 * HOUR).unwrap(), 0);
    assert!(!net.nodes[1].is_gone(&b0), "held, so not gone");
    net.connect(1, 2);
    net.settle();
    assert_eq!(refusals(&net), Vec::<String>::new());
    let held = net.nodes[1].sensor_view(&b0).unwrap().unwrap();
    assert_eq!(
        held.readings.len(),
        2,
        "it took the peer's reading into the old bucket"
    );
    assert_eq!(
        net.nodes[1].expire(5 * HOUR).unwrap(),
        0,
        "the cloud has nothing yet"
    );
    net.connect(0, 1);
    net.settle();
    let cloud = net.nodes[0].sensor_view(&s).unwrap().unwrap();
    assert_eq!(cloud.readings.len(), 2, "both readings reached the cloud");
    assert_eq!(
        net.nodes[1].expire(5 * HOUR).unwrap(),
        1,
        "dropped once acknowledged"
    );
    assert!(net.nodes[1].is_gone(&b0));
}

// Closed buckets leave memory (and come back on demand): memory follows the buckets being
// written, not every bucket touched since the start.
#[test]
fn closed_buckets_are_unloaded() {
    let mut n = open(0, MemStore::new(), 1, |_| {});
    let s = doc("site-a/temp-1");
    let hours: Vec<Reading> = (0..6)
        .map(|h| reading(&format!("r{h}"), h * HOUR + 1))
        .collect();
    n.ingest(&s, &hours, 0).unwrap();
    persist(&mut n);
    assert_eq!(n.loaded_count(), 6);
    // At 5:05 hours 0..4 are closed (grace 10 minutes after their end), hour 5 is not.
    assert_eq!(n.evict_closed(5 * HOUR + 5 * 60_000), 4);
    assert_eq!(
        n.loaded_count(),
        2,
        "hours 4 (ended 5 minutes ago) and 5 stay"
    );
    let page = n.read_stream(&s, &Range::default()).unwrap().unwrap();
    assert_eq!(
        page.readings.len(),
        6,
        "closed buckets load again when read"
    );
}

// No bucket is snapshotted on the write path, whatever the snapshot interval; housekeeping
// snapshots it once closed, and the bucket loads from that snapshot after a restart.
#[test]
fn buckets_are_snapshotted_once_closed_not_while_written() {
    let small = |c: &mut edgesync_proto::Config| c.snapshot_changes_min = 8;
    let mut n = open(0, MemStore::new(), 1, small);
    let s = doc("site-a/temp-1");
    let b0 = bucket_at("site-a/temp-1", 0);
    for i in 0..100 {
        n.ingest(&s, &[reading(&format!("r{i:03}"), i * 1000)], 0)
            .unwrap();
    }
    // A generic document still is, on the write path.
    for i in 0..10 {
        n.patch(&doc("app/cfg"), &json!({ "k": i }), 0).unwrap();
    }
    persist(&mut n);
    assert_eq!(n.store().snapshot(&b0).unwrap(), None, "not while written");
    assert!(n.store().snapshot(&doc("app/cfg")).unwrap().is_some());
    assert_eq!(n.compact_closed(HOUR / 2, 16).unwrap(), 0, "still open");
    assert_eq!(n.compact_closed(HOUR + 11 * 60_000, 16).unwrap(), 1);
    persist(&mut n);
    let (covers, _) = n
        .store()
        .snapshot(&b0)
        .unwrap()
        .expect("snapshotted once closed");
    assert_eq!(covers, 101, "the genesis and 100 changes");
    assert_eq!(n.compact_closed(HOUR + 11 * 60_000, 16).unwrap(), 0, "once");
    let cfg = n.config().clone();
    let mut n = Node::open(n.into_store(), cfg, common::boot(5)).unwrap();
    let page = n.read_stream(&s, &Range::default()).unwrap().unwrap();
    assert_eq!(page.readings.len(), 100);
    n.verify_clock(&b0).unwrap();
}

// Retention finds every bucket past the horizon wherever it came from: written here before a
// restart (the node's index of buckets by end is rebuilt from the store at open) or created
// here by a peer's change; and when more are due than one call drops, the oldest go first.
#[test]
fn retention_drops_the_oldest_buckets_first_after_a_restart_and_from_peers() {
    let keep = 24 * HOUR;
    let tweak = |c: &mut edgesync_proto::Config| c.keep_ms = Some(keep);
    let mut n = open(0, MemStore::new(), 1, tweak);
    // Stream `b` holds the older hours, stream `a` the newer: by name, `a` sorts first.
    let (a, b) = (doc("site-a/a"), doc("site-a/b"));
    let older: Vec<Reading> = (0..150)
        .map(|h| reading(&format!("b{h}"), h * HOUR + 1))
        .collect();
    let newer: Vec<Reading> = (150..262)
        .map(|h| reading(&format!("a{h}"), h * HOUR + 1))
        .collect();
    n.ingest(&b, &older, 0).unwrap();
    n.ingest(&a, &newer, 0).unwrap();
    persist(&mut n);
    let mut n = open(0, n.into_store(), 2, tweak);
    // At hour 286 every bucket has ended at least a day before.
    let now = 286 * HOUR + 1;
    let first = n.expire(now).unwrap();
    assert_eq!(first, edgesync_proto::stream::EXPIRE_BATCH_MAX);
    persist(&mut n);
    let left: Vec<u64> = n
        .docs()
        .filter_map(|(d, _)| Bucket::parse(d))
        .map(|b| b.start_ms / HOUR)
        .collect();
    let mut left_sorted = left.clone();
    left_sorted.sort();
    assert_eq!(
        left_sorted,
        (256..262).collect::<Vec<_>>(),
        "the oldest went first: {left:?}"
    );
    assert_eq!(n.expire(now).unwrap(), 6);
    assert_eq!(n.expire(now).unwrap(), 0);
    assert_eq!(n.docs().count(), 0);

    // A bucket a peer's change created here.
    let mut net = Net::new(2, |_| {});
    reconfigure(&mut net, 1, tweak);
    let s = doc("site-a/temp-1");
    net.nodes[0].ingest(&s, &[reading("r", 5)], 0).unwrap();
    net.connect(0, 1);
    net.settle();
    let b0 = bucket_at("site-a/temp-1", 0);
    assert!(net.nodes[1].clock(&b0).is_some(), "taken from the peer");
    assert_eq!(
        net.nodes[1].expire(HOUR).unwrap(),
        0,
        "not past the horizon yet"
    );
    assert_eq!(net.nodes[1].expire(25 * HOUR).unwrap(), 1);
    assert_eq!(net.nodes[1].clock(&b0), None);
}
