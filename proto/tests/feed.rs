//! The change feed: one event per reading that becomes durable here (local or remote), one
//! per generic change, in commit order; resumable from any cursor it gave; bounded.

mod common;

use common::{doc, open, persist, Net};
use edgesync_proto::stream::Bucket;
use edgesync_proto::{
    Cursor, DocId, FeedReadError, MemStore, Node, Reading, FEED_TRIM_INTERVAL_MS,
};
use serde_json::json;

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, v, &json!({ "v": v })).unwrap()
}

fn all(_: &DocId) -> bool {
    true
}

/// Every event after `after`, as (doc, reading id or "doc", origin or "local").
fn events(n: &Node<MemStore>, after: Option<Cursor>) -> Vec<(String, String, String)> {
    let page = n.feed(after, 10_000, 100_000, &all).unwrap();
    page.events
        .into_iter()
        .map(|(_, e)| {
            (
                // Readings go into the stream's buckets: named here by their stream.
                Bucket::parse(&e.doc).map_or(e.doc.to_string(), |b| b.stream.to_string()),
                e.reading.map_or("doc".into(), |(id, _)| id),
                e.origin.map_or("local".into(), |o| o.to_string()),
            )
        })
        .collect()
}

fn ev(d: &str, id: &str, origin: &str) -> (String, String, String) {
    (d.into(), id.into(), origin.into())
}

#[test]
fn local_writes_are_events_once_durable_and_once_each() {
    let mut n = open(0, MemStore::new(), 1, |_| {});
    let d = doc("site/s1");
    n.ingest(&d, &[reading("a", 1), reading("b", 2)], 0)
        .unwrap();
    assert!(
        events(&n, None).is_empty(),
        "nothing is seen before it is durable"
    );
    persist(&mut n);
    // A duplicate is no event; a new reading in the same request is.
    n.ingest(&d, &[reading("a", 1), reading("c", 3)], 0)
        .unwrap();
    n.patch(&doc("app/cfg"), &json!({"mode": "eco"}), 0)
        .unwrap();
    // An empty patch changes nothing: no event.
    n.patch(&doc("app/cfg"), &json!({"mode": "eco"}), 0)
        .unwrap();
    persist(&mut n);
    assert_eq!(
        events(&n, None),
        vec![
            ev("site/s1", "a", "local"),
            ev("site/s1", "b", "local"),
            ev("site/s1", "c", "local"),
            ev("app/cfg", "doc", "local"),
        ]
    );
    let page = n.feed(None, 2, 100, &all).unwrap();
    assert_eq!(page.events.len(), 2);
    // Resuming after the last cursor seen yields every later event once.
    let rest = events(&n, Some(page.next));
    assert_eq!(
        rest,
        vec![ev("site/s1", "c", "local"), ev("app/cfg", "doc", "local")]
    );
    // Nothing new: `next` is the cursor asked for.
    let head = n.feed_head();
    let empty = n.feed(Some(head), 10, 100, &all).unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, head);
    // The body is the reading's canonical encoding.
    let first = n.feed(None, 1, 1, &all).unwrap().events.remove(0).1;
    let (id, body) = first.reading.unwrap();
    assert_eq!(Reading::decode(&id, &body).unwrap(), reading("a", 1));
}

#[test]
fn remote_readings_are_events_once_even_when_they_arrive_twice() {
    let mut net = Net::new(3, |_| {});
    let d = doc("site/s1");
    // The same reading ingested at 0 and 1 (a retried upload), and one more at each.
    net.nodes[0]
        .ingest(&d, &[reading("same", 1), reading("x", 2)], 0)
        .unwrap();
    net.nodes[1]
        .ingest(&d, &[reading("same", 1), reading("y", 3)], 0)
        .unwrap();
    net.connect(0, 2);
    net.settle();
    net.connect(1, 2);
    net.settle();
    common::persist(&mut net.nodes[2]);
    let n0 = net.nodes[0].name().to_string();
    let n1 = net.nodes[1].name().to_string();
    assert_eq!(
        events(&net.nodes[2], None),
        vec![
            ev("site/s1", "same", &n0),
            ev("site/s1", "x", &n0),
            ev("site/s1", "y", &n1),
        ]
    );
}

#[test]
fn cursors_go_on_across_restarts_and_a_trimmed_or_foreign_cursor_is_gone() {
    let mut n = open(0, MemStore::new(), 1, |c| c.feed_events_max = 5);
    let d = doc("site/s1");
    for i in 0..4 {
        n.ingest(&d, &[reading(&format!("r{i}"), i)], 0).unwrap();
    }
    persist(&mut n);
    let seen = n.feed_head();
    let n = open(0, n.into_store(), 2, |c| c.feed_events_max = 5);
    let mut n = n;
    for i in 4..10 {
        n.ingest(&d, &[reading(&format!("r{i}"), i)], 0).unwrap();
    }
    persist(&mut n);
    // After a restart the sequence goes on: the cursor seen before yields r4.. exactly.
    let after: Vec<_> = events(&n, Some(seen)).into_iter().map(|e| e.1).collect();
    assert_eq!(after, ["r4", "r5", "r6", "r7", "r8", "r9"]);
    let first = n.feed(None, 1, 1, &all).unwrap().events[0].0;
    assert_eq!(n.trim_feed().unwrap(), 5);
    persist(&mut n);
    let kept: Vec<_> = events(&n, None).into_iter().map(|e| e.1).collect();
    assert_eq!(kept, ["r5", "r6", "r7", "r8", "r9"]);
    match n.feed(Some(first), 10, 10, &all) {
        Err(FeedReadError::Gone { oldest, .. }) => {
            let from: Vec<_> = events(&n, Some(oldest)).into_iter().map(|e| e.1).collect();
            assert_eq!(from, kept);
        }
        other => panic!("a trimmed cursor must be gone: {other:?}"),
    }
    // A cursor of another store's sequence is gone too, never a silent skip.
    let mut foreign = n.feed_head();
    foreign.store[0] ^= 1;
    assert!(matches!(
        n.feed(Some(foreign), 10, 10, &all),
        Err(FeedReadError::Gone { .. })
    ));
    // A store renewed from a backup starts another sequence.
    let head = n.feed_head();
    let mut n = open(0, n.into_store(), 3, |c| c.feed_events_max = 5);
    n.renew_store(&common::boot(9)).unwrap();
    assert!(matches!(
        n.feed(Some(head), 10, 10, &all),
        Err(FeedReadError::Gone { .. })
    ));
}

#[test]
fn a_filter_skips_other_documents_and_next_moves_past_them() {
    let mut n = open(0, MemStore::new(), 1, |_| {});
    for i in 0..10 {
        let d = doc(if i % 2 == 0 { "site-a/t" } else { "site-b/t" });
        n.ingest(&d, &[reading(&format!("r{i}"), i)], 0).unwrap();
    }
    persist(&mut n);
    let site_a = |d: &DocId| d.as_str().starts_with("site-a/");
    assert!(n.feed(None, 100, 100, &all).unwrap().events.len() == 10);
    let page = n.feed(None, 2, 100, &site_a).unwrap();
    let ids: Vec<_> = page
        .events
        .iter()
        .map(|(_, e)| e.reading.clone().unwrap().0)
        .collect();
    assert_eq!(ids, ["r0", "r2"]);
    // A scan bound ends a page early, and its `next` is still past what it looked at.
    let page = n.feed(Some(page.next), 10, 3, &site_a).unwrap();
    let ids: Vec<_> = page
        .events
        .iter()
        .map(|(_, e)| e.reading.clone().unwrap().0)
        .collect();
    assert_eq!(ids, ["r4"]);
    let page = n.feed(Some(page.next), 10, 100, &site_a).unwrap();
    let ids: Vec<_> = page
        .events
        .iter()
        .map(|(_, e)| e.reading.clone().unwrap().0)
        .collect();
    assert_eq!(ids, ["r6", "r8"]);
}

// The feed follows retention: events of buckets retention dropped leave it from its head,
// events of buckets still held stay.
#[test]
fn events_of_dropped_buckets_leave_the_feed() {
    const HOUR: u64 = 3_600_000;
    let mut n = open(0, MemStore::new(), 1, |c| c.keep_ms = Some(24 * HOUR));
    let s = doc("site-a/temp-1");
    let readings: Vec<Reading> = (0..31)
        .map(|h| reading(&format!("r{h}"), (h * HOUR + 7) as i64))
        .collect();
    // One ingest per hour: events in reading order.
    for r in &readings {
        n.ingest(&s, std::slice::from_ref(r), 0).unwrap();
    }
    persist(&mut n);
    assert_eq!(events(&n, None).len(), 31);
    assert_eq!(n.trim_feed().unwrap(), 0, "everything is held");
    // At hour 30, buckets ending at or before hour 6 are past retention: r0..r5 go.
    assert!(n.expire(30 * HOUR + 123).unwrap() > 0);
    assert_eq!(n.trim_feed().unwrap(), 6);
    persist(&mut n);
    let kept: Vec<_> = events(&n, None).into_iter().map(|e| e.1).collect();
    let want: Vec<String> = (6..31).map(|h| format!("r{h}")).collect();
    assert_eq!(kept, want);
}

// Housekeeping trims through `trim_feed_if_due`: at the first call, then only once the feed
// grew by 1/64 of its bound since the last trim or an hour passed, so that trims (each a
// range deletion in the store) do not pile up one per turn; the feed holds at most that
// growth past its bound.
#[test]
fn trims_wait_for_growth_or_an_hour() {
    // A bound of 640 events: a trim is due after 10 more.
    let mut n = open(0, MemStore::new(), 1, |c| c.feed_events_max = 640);
    let d = doc("site/s1");
    let mut next = 0;
    let mut ingest = |n: &mut Node<MemStore>, k: i64| {
        for _ in 0..k {
            n.ingest(&d, &[reading(&format!("r{next}"), next)], 0)
                .unwrap();
            next += 1;
        }
        persist(n);
    };
    ingest(&mut n, 650);
    assert_eq!(n.trim_feed_if_due(0).unwrap(), 10, "the first call trims");
    assert_eq!(events(&n, None).len(), 640);
    ingest(&mut n, 9);
    assert_eq!(
        n.trim_feed_if_due(1_000).unwrap(),
        0,
        "9 more, within the hour"
    );
    assert_eq!(events(&n, None).len(), 649);
    ingest(&mut n, 1);
    assert_eq!(n.trim_feed_if_due(2_000).unwrap(), 10, "10 more");
    ingest(&mut n, 3);
    assert_eq!(
        n.trim_feed_if_due(2_000 + FEED_TRIM_INTERVAL_MS - 1)
            .unwrap(),
        0
    );
    assert_eq!(
        n.trim_feed_if_due(2_000 + FEED_TRIM_INTERVAL_MS).unwrap(),
        3,
        "an hour later"
    );
    let kept: Vec<_> = events(&n, None).into_iter().map(|e| e.1).collect();
    assert_eq!(kept.len(), 640);
    assert_eq!(kept[0], "r23");
    assert_eq!(kept[639], "r662");
}

// The trim against a model of it: from the bound, the head goes up to the first event of a
// document still held, never past the newest event. Random ingests into hourly buckets of
// three streams, retention drops, restarts (events written before an open are read, those
// written since are passed by each document's first event) and trims; after each trim the
// feed starts where the model says.
#[test]
fn a_trim_drops_exactly_the_head_the_model_drops() {
    const HOUR: u64 = 3_600_000;
    let max = 80;
    let tweak = |c: &mut edgesync_proto::Config| {
        c.keep_ms = Some(6 * HOUR);
        c.feed_events_max = max;
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let streams = [doc("site/a"), doc("site/b"), doc("site/c")];
    let mut n = open(0, MemStore::new(), 1, tweak);
    let (mut now_h, mut k, mut seed) = (10u64, 0u64, 1u64);
    let (mut trims, mut by_bound, mut by_head) = (0, 0, 0);
    for _ in 0..4_000 {
        match next() % 64 {
            0..=44 => {
                let s = &streams[(next() % 3) as usize];
                let h = now_h - next() % 5;
                let r = reading(&format!("r{k}"), (h * HOUR + k % 1000) as i64);
                n.ingest(s, &[r], now_h * HOUR).unwrap();
                k += 1;
            }
            45..=48 => {
                now_h += 1;
                while n.expire(now_h * HOUR).unwrap() > 0 {}
            }
            49 => {
                persist(&mut n);
                seed += 1;
                n = open(0, n.into_store(), seed, tweak);
            }
            _ => {
                persist(&mut n);
                let before: Vec<(u64, DocId)> = n
                    .feed(None, 10_000, 100_000, &all)
                    .unwrap()
                    .events
                    .into_iter()
                    .map(|(c, e)| (c.n, e.doc))
                    .collect();
                let held: std::collections::BTreeSet<DocId> =
                    n.docs().map(|(d, _)| d.clone()).collect();
                n.trim_feed().unwrap();
                persist(&mut n);
                let Some(&(first, _)) = before.first() else {
                    continue;
                };
                let last = before.last().unwrap().0;
                let bound = first.max((last + 1).saturating_sub(max));
                let mut model = bound;
                while model < last
                    && !held.contains(&before.iter().find(|(c, _)| *c == model).unwrap().1)
                {
                    model += 1;
                }
                let after = n.feed(None, 1, 1, &all).unwrap().events[0].0.n;
                assert_eq!(after, model, "the head went elsewhere than the model says");
                trims += 1;
                by_bound += bound - first;
                by_head += model - bound;
            }
        }
    }
    // The walk met every case: many trims, events dropped by the bound and by the head.
    assert!(trims > 100, "{trims} trims");
    assert!(
        by_bound > 100 && by_head > 1_000,
        "{by_bound} by the bound, {by_head} by the head"
    );
}
