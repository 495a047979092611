//! What a session sends fits what its peer announced: frame sizes, the batch window, the
//! handshake limits and the timers. A peer refuses a frame over its limit and closes the link,
//! so an off-by-a-few-bytes here is a link that flaps for ever.

mod common;

use common::{doc, open, persist};
use edgesync_proto::wire::{
    Ack, Changes, FrameDecoder, Message, Summary, CHANGES_OVERHEAD_BYTES, FRAME_BYTES_MIN,
};
use edgesync_proto::{
    CloseCode, Event, MemStore, Node, NodeName, Reading, SessionId, SessionStats,
};
use serde_json::json;

const PEER: &str = "peer";

fn hello(frame_bytes_max: u32) -> Vec<u8> {
    common::hello(PEER, frame_bytes_max).to_frame()
}

fn summary_of_nothing() -> Vec<u8> {
    Message::Summary(Summary {
        entries: vec![],
        last: true,
    })
    .to_frame()
}

/// Everything `node` releases on `sid`, decoded as a peer that accepts frames of `limit` bytes
/// decodes it: a frame over the limit fails here.
/// Everything the node sends now, as a shell would take it: its frames, and while it fills a
/// window a few batches at a time (its timeout is now), the frames of the next call.
fn receive(node: &mut Node<MemStore>, sid: SessionId, limit: u32) -> Vec<Message> {
    let mut decoder = FrameDecoder::new(limit);
    let mut out = Vec::new();
    loop {
        while let Some(frame) = node.poll_transmit(sid) {
            decoder.push(&frame);
            while let Some(m) = decoder
                .next_message()
                .unwrap_or_else(|e| panic!("a frame over the peer's limit of {limit}: {e}"))
            {
                out.push(m);
            }
        }
        if node.poll_timeout() != Some(node.now_ms()) {
            return out;
        }
        node.handle_timeout(node.now_ms());
        persist(node);
    }
}

/// The Summary messages among `msgs`.
fn summaries(msgs: Vec<Message>) -> Vec<Summary> {
    msgs.into_iter()
        .filter_map(|m| match m {
            Message::Summary(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The Changes messages among `msgs`.
fn changes(msgs: &[Message]) -> Vec<&Changes> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Hands `frame` to the node and makes what it committed durable (as its shell would).
fn input(node: &mut Node<MemStore>, sid: SessionId, frame: &[u8], now_ms: u64) {
    node.handle_input(sid, frame, now_ms);
    persist(node);
}

fn closed(node: &mut Node<MemStore>) -> Option<CloseCode> {
    closed_why(node).map(|(c, _)| c)
}

/// The code and reason of the last session closed since the last call.
fn closed_why(node: &mut Node<MemStore>) -> Option<(CloseCode, String)> {
    let mut last = None;
    while let Some(e) = node.poll_event() {
        if let Event::SessionClosed {
            code: Some(c),
            reason,
            ..
        } = e
        {
            last = Some((c, reason));
        }
    }
    last
}

/// A node holding `docs` sensor documents of `readings` readings each, all durable, that
/// accepts changes of up to 8 KiB (so a peer may announce the smallest frame limit).
fn node_with(docs: usize, readings: usize) -> Node<MemStore> {
    let mut node = open(0, MemStore::new(), 1, |c| c.change_bytes_max = 8 * 1024);
    for d in 0..docs {
        for r in 0..readings {
            let reading = Reading::from_json(
                format!("r{r}"),
                r as i64,
                &json!({"temp": 20.5, "site": "hall-b", "n": r}),
            )
            .unwrap();
            // Names of several lengths, so that entries do not tile a frame exactly.
            node.ingest(&doc(&format!("site/sensor-{d}")), &[reading], 0)
                .unwrap();
        }
    }
    persist(&mut node);
    node
}

// A peer that accepts the smallest frames gets a summary of 800 documents split across frames
// that each fit, every document once; then Changes frames that each fit, exactly as many
// batches in flight as the window allows until it acknowledges one, and then one more.
#[test]
fn frames_fit_the_peers_limit_and_batches_fill_the_window() {
    let mut node = node_with(800, 3);
    let window = node.config().inflight_batches_max;
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
    input(&mut node, sid, &hello(FRAME_BYTES_MIN), 0);
    let first = receive(&mut node, sid, FRAME_BYTES_MIN);
    let summaries = summaries(first.clone());
    assert!(summaries.len() > 1, "800 clocks take several frames");
    let lasts: Vec<bool> = summaries.iter().map(|s| s.last).collect();
    assert_eq!(lasts.iter().filter(|l| **l).count(), 1);
    assert_eq!(lasts.last(), Some(&true), "only the final frame says last");
    assert!(summaries.iter().all(|s| !s.entries.is_empty()));
    let mut named: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.entries.iter().map(|e| e.doc.as_str().to_string()))
        .collect();
    assert_eq!(named.len(), 800);
    named.sort();
    named.dedup();
    assert_eq!(named.len(), 800, "every document once");

    input(&mut node, sid, &summary_of_nothing(), 0);
    // The window fills a few batches at a time, so that the first leave while the rest are
    // built: the node asks for a call at once (its timeout is now) until the window is full.
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MIN);
    while let Some(f) = node.poll_transmit(sid) {
        decoder.push(&f);
    }
    let mut sent = Vec::new();
    while let Some(m) = decoder.next_message().unwrap() {
        sent.push(m);
    }
    let early = changes(&sent).len();
    assert!((1..window).contains(&early), "{early} batches at once");
    assert_eq!(node.poll_timeout(), Some(node.now_ms()));
    sent.extend(receive(&mut node, sid, FRAME_BYTES_MIN));
    assert!(
        node.poll_timeout() > Some(node.now_ms()),
        "nothing more to fill"
    );
    let batches: Vec<u64> = changes(&sent).iter().map(|c| c.batch).collect();
    assert_eq!(batches.len(), window, "the window is full: {batches:?}");
    // With more to send, each batch is filled close to the frame limit (changes are small),
    // and names each of its documents once.
    for m in &sent {
        if let Message::Changes(c) = m {
            let mut names: Vec<_> = c.docs.iter().map(|d| d.doc.clone()).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "a document named twice in one batch");
            let len = m.to_frame().len();
            assert!(
                len * 10 > FRAME_BYTES_MIN as usize * 6,
                "a batch of {len} bytes where {FRAME_BYTES_MIN} fit"
            );
        }
    }
    assert!(!node.is_idle(), "batches are in flight");
    // Nothing more until an acknowledgement.
    node.handle_timeout(1);
    assert!(receive(&mut node, sid, FRAME_BYTES_MIN).is_empty());
    let ack = Message::Ack(Ack {
        batch: batches[0],
        clocks: vec![],
        last: true,
    });
    input(&mut node, sid, &ack.to_frame(), 2);
    let more = receive(&mut node, sid, FRAME_BYTES_MIN);
    let again = more
        .iter()
        .filter(|m| matches!(m, Message::Changes(_)))
        .count();
    assert_eq!(again, 1, "one acknowledged batch frees one place");
    assert_eq!(closed(&mut node), None);
    assert_eq!(node.sessions()[0].inflight_batches, window);

    // The counters (shown as metrics) say what happened, while the session lives and after.
    let changes_sent: u64 = sent
        .iter()
        .chain(&more)
        .map(|m| match m {
            Message::Changes(c) => c.docs.iter().map(|d| d.changes.len() as u64).sum(),
            _ => 0,
        })
        .sum();
    let frames_out = (first.len() + sent.len() + more.len()) as u64;
    let bytes_out: u64 = first
        .iter()
        .chain(&sent)
        .chain(&more)
        .map(|m| m.to_frame().len() as u64)
        .sum();
    let frames_in = [hello(FRAME_BYTES_MIN), summary_of_nothing(), ack.to_frame()];
    let check = |t: SessionStats| {
        assert_eq!(t.frames_out, frames_out);
        assert_eq!(t.bytes_out, bytes_out);
        assert_eq!(t.frames_in, frames_in.len() as u64);
        assert_eq!(
            t.bytes_in,
            frames_in.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        assert_eq!(t.changes_sent, changes_sent);
        assert_eq!(t.batches_acked, 1);
    };
    check(node.session_totals());
    node.disconnect(sid);
    assert!(node.sessions().is_empty());
    check(node.session_totals());
}

// The smallest frame limit a peer may announce is FRAME_BYTES_MIN, and it must hold this
// node's largest change with the Changes overhead: one byte less is refused.
// The window in bytes: with room for 32 batches but 40 KiB, batches of up to 16 KiB go until
// 40 KiB are in flight (the last one may pass it), and each Ack lets the next go.
#[test]
fn the_window_is_bounded_in_bytes() {
    let node = node_with(300, 3);
    let bytes_max = 40 * 1024;
    let node_cfg = node.config().clone();
    assert!(node_cfg.inflight_batches_max >= 8);
    let store = node.into_store();
    let mut node = open(0, store, 2, |c| {
        c.change_bytes_max = 8 * 1024;
        c.inflight_bytes_max = bytes_max;
    });
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
    input(&mut node, sid, &hello(FRAME_BYTES_MIN), 0);
    receive(&mut node, sid, FRAME_BYTES_MIN);
    input(&mut node, sid, &summary_of_nothing(), 0);
    let sent = receive(&mut node, sid, FRAME_BYTES_MIN);
    let sizes: Vec<usize> = sent
        .iter()
        .filter(|m| matches!(m, Message::Changes(_)))
        .map(|m| m.to_frame().len())
        .collect();
    // The window counts each batch's frame at an upper bound of its size (at most the peer's
    // frame limit), so the batches before the last are under it and at least enough frames of
    // the limit's size to reach it go.
    let before_last: usize = sizes[..sizes.len() - 1].iter().sum();
    let fewest = (bytes_max as usize).div_ceil(FRAME_BYTES_MIN as usize);
    assert!(
        before_last < bytes_max as usize && (fewest..fewest + 3).contains(&sizes.len()),
        "batches of {sizes:?} bytes for a window of {bytes_max}"
    );
    assert!(sizes.len() < node_cfg.inflight_batches_max);
    let batches: Vec<u64> = changes(&sent).iter().map(|c| c.batch).collect();
    node.handle_timeout(1);
    assert!(receive(&mut node, sid, FRAME_BYTES_MIN).is_empty());
    let ack = Message::Ack(Ack {
        batch: batches[0],
        clocks: vec![],
        last: true,
    });
    input(&mut node, sid, &ack.to_frame(), 2);
    let more = receive(&mut node, sid, FRAME_BYTES_MIN);
    assert!(!changes(&more).is_empty(), "an Ack opens the window again");
}

#[test]
fn a_peer_frame_limit_is_accepted_from_exactly_what_this_node_needs() {
    let need = 8 * 1024 + CHANGES_OVERHEAD_BYTES;
    // 8 KiB changes: the floor is FRAME_BYTES_MIN (16 KiB).
    for (limit, ok) in [(FRAME_BYTES_MIN - 1, false), (FRAME_BYTES_MIN, true)] {
        let mut node = open(0, MemStore::new(), 1, |c| c.change_bytes_max = 8 * 1024);
        let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
        input(&mut node, sid, &hello(limit), 0);
        let code = closed(&mut node);
        assert_eq!(code.is_none(), ok, "limit {limit}: {code:?}");
        if !ok {
            assert_eq!(code, Some(CloseCode::LimitsIncompatible));
        }
    }
    // 16 KiB changes: the floor is what the largest change needs.
    let need_16 = 16 * 1024 + CHANGES_OVERHEAD_BYTES;
    assert!(need < need_16);
    for (limit, ok) in [(need_16 - 1, false), (need_16, true)] {
        let mut node = open(0, MemStore::new(), 1, |c| c.change_bytes_max = 16 * 1024);
        let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
        input(&mut node, sid, &hello(limit), 0);
        let code = closed(&mut node);
        assert_eq!(code.is_none(), ok, "limit {limit}: {code:?}");
    }
}

/// The node's one session times out at `due`, not a millisecond before, naming `what`.
fn times_out_at(node: &mut Node<MemStore>, due: u64, what: &str) {
    assert_eq!(node.poll_timeout(), Some(due));
    node.handle_timeout(due - 1);
    assert_eq!(closed(node), None);
    node.handle_timeout(due);
    let (code, reason) = closed_why(node).expect("closed");
    assert_eq!(code, CloseCode::Timeout);
    assert!(reason.contains(what), "{reason}");
}

// A session that never finishes its handshake closes at the handshake timeout, not before; a
// live session whose batch is never acknowledged closes at the acknowledgement timeout after
// the batch was sent, not before.
#[test]
fn handshake_and_acknowledgement_timers_fire_exactly_when_due() {
    let mut node = node_with(3, 2);
    let (handshake, ack) = (
        node.config().handshake_timeout_ms,
        node.config().ack_timeout_ms,
    );
    let opened = 1_000;
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), opened);
    times_out_at(&mut node, opened + handshake, "handshake");
    // A closed session takes no more input, and ends once: no second event.
    input(&mut node, sid, &hello(FRAME_BYTES_MIN), opened + handshake);
    assert!(node.poll_event().is_none());
    // Once its Close is handed out, the node forgets the session.
    let last = receive(&mut node, sid, FRAME_BYTES_MIN);
    assert!(matches!(last.last(), Some(Message::Close(_))), "{last:?}");
    assert!(node.sessions().is_empty());

    // Time goes on (the node's clock never runs backwards).
    let opened = opened + handshake + 1_000;
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), opened);
    input(&mut node, sid, &hello(FRAME_BYTES_MIN), opened);
    let sent_at = opened + 500;
    input(&mut node, sid, &summary_of_nothing(), sent_at);
    let sent = receive(&mut node, sid, FRAME_BYTES_MIN);
    assert!(sent.iter().any(|m| matches!(m, Message::Changes(_))));
    // Everything is sent and one batch waits for its acknowledgement: not idle.
    assert_eq!(node.sessions()[0].inflight_batches, 1);
    assert!(!node.is_idle());
    times_out_at(&mut node, sent_at + ack, "acknowledgement");
    // The transport goes away after the Close: the session ended already, no second event.
    node.disconnect(sid);
    assert!(node.poll_event().is_none());
    assert!(node.sessions().is_empty());
}

// The summary goes out before the peer's Hello is read, so it is cut for the smallest frame
// every peer accepts (FRAME_BYTES_MIN); each frame fits that and is full: the next frame's
// first entry would not have fitted in it (up to a small reserve for the message's fields).
#[test]
fn summary_frames_are_cut_for_the_smallest_limit_and_are_full() {
    let mut node = node_with(800, 1);
    let empty = Message::Summary(Summary {
        entries: vec![],
        last: false,
    })
    .to_frame()
    .len();
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
    input(&mut node, sid, &hello(4 * FRAME_BYTES_MIN), 0);
    let frames = summaries(receive(&mut node, sid, FRAME_BYTES_MIN));
    assert!(frames.len() > 1, "{} summary frames", frames.len());
    assert_eq!(frames.iter().map(|s| s.entries.len()).sum::<usize>(), 800);
    let limit = FRAME_BYTES_MIN as usize;
    for pair in frames.windows(2) {
        let len = Message::Summary(pair[0].clone()).to_frame().len();
        let next = Message::Summary(Summary {
            entries: vec![pair[1].entries[0].clone()],
            last: false,
        })
        .to_frame()
        .len()
            - empty;
        assert!(
            len + next > limit - 64,
            "a frame of {len} bytes had room for the next entry ({next})"
        );
    }
}

// Totals over sessions add every counter (the node's metrics are these totals).
#[test]
fn session_counters_add_field_by_field() {
    let a = SessionStats {
        frames_in: 1,
        frames_out: 2,
        bytes_in: 3,
        bytes_out: 4,
        changes_sent: 5,
        changes_received: 6,
        changes_applied: 7,
        changes_duplicate: 8,
        changes_buffered: 9,
        batches_acked: 10,
        snapshots_sent: 11,
        snapshots_received: 12,
    };
    let mut t = a.clone();
    t.add(&a);
    t.add(&a);
    assert_eq!(
        t,
        SessionStats {
            frames_in: 3,
            frames_out: 6,
            bytes_in: 9,
            bytes_out: 12,
            changes_sent: 15,
            changes_received: 18,
            changes_applied: 21,
            changes_duplicate: 24,
            changes_buffered: 27,
            batches_acked: 30,
            snapshots_sent: 33,
            snapshots_received: 36,
        }
    );
}

// A peer that acknowledges a batch but reports lacking one of its documents (it could not
// apply them, say after a causal gap) is sent that document again in the same session; the
// documents it reports holding are not resent.
#[test]
fn a_document_the_ack_says_is_missing_is_sent_again() {
    let mut node = node_with(3, 2);
    let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
    input(&mut node, sid, &hello(FRAME_BYTES_MIN), 0);
    let clocks: Vec<_> = receive(&mut node, sid, FRAME_BYTES_MIN)
        .into_iter()
        .flat_map(|m| match m {
            Message::Summary(s) => s.entries,
            _ => vec![],
        })
        .collect();
    assert_eq!(clocks.len(), 3);
    input(&mut node, sid, &summary_of_nothing(), 0);
    let got = receive(&mut node, sid, FRAME_BYTES_MIN);
    let first = changes(&got);
    assert_eq!(first.len(), 1, "three small documents, one batch");
    assert_eq!(first[0].docs.len(), 3);
    // The peer holds the first two documents, and nothing of the third.
    let mut acked = clocks.clone();
    acked[2].clock = Default::default();
    let ack = Message::Ack(Ack {
        batch: first[0].batch,
        clocks: acked,
        last: true,
    });
    input(&mut node, sid, &ack.to_frame(), 1);
    let got = receive(&mut node, sid, FRAME_BYTES_MIN);
    let again = changes(&got);
    let resent: Vec<_> = again
        .iter()
        .flat_map(|c| c.docs.iter().map(|d| d.doc.clone()))
        .collect();
    assert_eq!(resent, vec![clocks[2].doc.clone()]);
    assert_eq!(closed(&mut node), None);
}

/// A reading of about `kib` KiB of incompressible text (so its change is about as large).
fn big_reading(id: &str, kib: usize) -> Reading {
    let mut state = id
        .bytes()
        .fold(0x9e37_79b9_u64, |h, b| h.rotate_left(5) ^ b as u64);
    let mut fields = serde_json::Map::new();
    for f in 0..kib {
        let text: String = (0..1000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        fields.insert(format!("f{f}"), json!(text));
    }
    Reading::from_json(id, 1, &serde_json::Value::Object(fields)).unwrap()
}

// Changes of 2 to 7 KiB, as many as fit: each batch stays within the smallest frame limit
// (the room left for the batch is the limit less the Changes overhead, not more), and a change
// larger than the batch budget still goes, alone in its batch.
#[test]
fn large_changes_fit_the_frame_and_one_larger_than_the_budget_goes_alone() {
    let sizes = (2..=7).map(|kib| (kib, 256 * 1024)).chain([(5, 2 * 1024)]);
    for (kib, batch_bytes_max) in sizes {
        let mut node = open(0, MemStore::new(), 1, |c| {
            c.change_bytes_max = 8 * 1024;
            c.batch_bytes_max = batch_bytes_max;
        });
        for d in 0..8 {
            let r = big_reading(&format!("big-{d}"), kib);
            node.ingest(&doc(&format!("site/big-{d}")), &[r], 0)
                .unwrap();
        }
        persist(&mut node);
        let sid = node.connect(common::cloud(&NodeName::new(PEER).unwrap()), 0);
        input(&mut node, sid, &hello(FRAME_BYTES_MIN), 0);
        input(&mut node, sid, &summary_of_nothing(), 0);
        let mut sent = 0;
        let mut batch = 0;
        while sent < 16 {
            let got = receive(&mut node, sid, FRAME_BYTES_MIN);
            let changes = changes(&got);
            assert!(
                !changes.is_empty(),
                "budget {batch_bytes_max}: stalled after {sent}"
            );
            for c in &changes {
                let n: usize = c.docs.iter().map(|d| d.changes.len()).sum();
                if batch_bytes_max < 8 * 1024 {
                    assert_eq!(n, 1, "a change over the budget goes alone");
                }
                sent += n;
                let ack = Message::Ack(Ack {
                    batch: c.batch,
                    clocks: vec![],
                    last: true,
                });
                batch += 1;
                input(&mut node, sid, &ack.to_frame(), batch);
            }
        }
        assert_eq!(sent, 16, "genesis and reading of each of 8 documents");
    }
}
