//! Sync sessions: one per connected peer, driven by the node.
//!
//! Both sides send Hello and a Summary at once; a Summary lists the documents whose clock the
//! peer has not acknowledged (per the durable receipts), with the sender's clock. On the peer's
//! final Summary frame the session goes live: each side sends, for every document at once and
//! in byte-bounded batches, exactly the changes the peer's best known clock lacks. The receiver
//! persists each batch atomically and acknowledges with its durable clocks; the sender stores
//! them as receipts. Reconciling takes one round trip for data plus the acknowledgement, however
//! many documents there are. New changes are pushed as they are committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::id::{DocId, NodeName};
use crate::node::{Applied, Node, Origin};
use crate::store::{PeerReceipts, Store, StoreError, WriteBatch, WriteOp};
use crate::vclock::VectorClock;
use crate::wire::{
    Ack, ChangeBytes, Changes, Close, CloseCode, DecodeError, DocChanges, DocClock, FrameDecoder,
    Hello, Message, Summary, CHANGES_OVERHEAD_BYTES, CLOSE_REASON_BYTES_MAX, FRAME_BYTES_LIMIT,
    FRAME_BYTES_MIN, MAGIC, PROTOCOL_VERSION,
};

/// Identifies one session within a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitSummary,
    Live,
    Closed,
}

/// Counters of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Changes sent.
    pub changes_sent: u64,
    /// Changes received.
    pub changes_received: u64,
    /// Received changes that were new (including buffered ones they released).
    pub changes_applied: u64,
    /// Received changes already held.
    pub changes_duplicate: u64,
    /// Received changes held waiting for dependencies.
    pub changes_buffered: u64,
    /// Batches the peer acknowledged.
    pub batches_acked: u64,
}

impl SessionStats {
    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &SessionStats) {
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.changes_sent += other.changes_sent;
        self.changes_received += other.changes_received;
        self.changes_applied += other.changes_applied;
        self.changes_duplicate += other.changes_duplicate;
        self.changes_buffered += other.changes_buffered;
        self.batches_acked += other.batches_acked;
    }
}

/// What the shell may show about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session.
    pub id: SessionId,
    /// Peer (as authenticated by the transport).
    pub peer: NodeName,
    /// True once both summaries were exchanged.
    pub live: bool,
    /// Batches sent and not yet acknowledged.
    pub inflight_batches: usize,
    /// Counters.
    pub stats: SessionStats,
}

#[derive(Debug)]
struct Inflight {
    sent_ms: u64,
    clocks: BTreeMap<DocId, VectorClock>,
}

/// Per-peer state. Owned by the node; see the module documentation.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) peer: NodeName,
    phase: Phase,
    opened_ms: u64,
    decoder: FrameDecoder,
    send_frame_max: u32,
    /// Frames waiting for the commit they describe to be durable: (commit seq, frame).
    outbox: VecDeque<(u64, Vec<u8>)>,
    /// Best lower bound of the peer's durable clock per document.
    known: BTreeMap<DocId, VectorClock>,
    inflight: BTreeMap<u64, Inflight>,
    next_batch: u64,
    queue: BTreeSet<DocId>,
    cursor: Option<(DocId, VecDeque<u64>)>,
    stats: SessionStats,
}

impl Session {
    pub(crate) fn mark_dirty(&mut self, doc: &DocId) {
        if self.phase == Phase::Live {
            self.queue.insert(doc.clone());
        }
    }

    fn push(&mut self, gate: u64, msg: &Message) {
        self.outbox.push_back((gate, msg.to_frame()));
    }

    /// What the peer holds, or will hold once the batches in flight arrive.
    fn known_with_inflight(&self, doc: &DocId) -> VectorClock {
        let mut c = self.known.get(doc).cloned().unwrap_or_default();
        for b in self.inflight.values() {
            if let Some(x) = b.clocks.get(doc) {
                c.merge(x);
            }
        }
        c
    }

    fn deadline(&self, handshake_ms: u64, ack_ms: u64) -> Option<u64> {
        match self.phase {
            Phase::AwaitHello | Phase::AwaitSummary => Some(self.opened_ms + handshake_ms),
            Phase::Live => self.inflight.values().map(|b| b.sent_ms + ack_ms).min(),
            Phase::Closed => None,
        }
    }
}

/// Splits clocks into messages that each fit a frame of `frame_max` bytes.
fn split_clocks(entries: Vec<DocClock>, frame_max: u32) -> Vec<Vec<DocClock>> {
    // Room for the length prefix, variant tag, batch number, count and flag.
    let budget = frame_max as usize - 32;
    let mut out = vec![Vec::new()];
    let mut used = 0;
    for e in entries {
        let size = postcard::experimental::serialized_size(&e).expect("clock entry encodes");
        if used + size > budget && !out.last().expect("non-empty").is_empty() {
            out.push(Vec::new());
            used = 0;
        }
        used += size;
        out.last_mut().expect("non-empty").push(e);
    }
    out
}

fn decode_close_code(e: &DecodeError) -> CloseCode {
    match e {
        DecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
        _ => CloseCode::Malformed,
    }
}

impl<S: Store> Node<S> {
    /// Starts a session with `peer`, whose identity the transport has verified. Hello and
    /// Summary frames are queued at once; fetch them with [`Node::poll_transmit`].
    pub fn connect(&mut self, peer: NodeName, now_ms: u64) -> SessionId {
        self.now_ms = self.now_ms.max(now_ms);
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        let receipts = self.peers.get(&peer).cloned().unwrap_or_default();
        let mut s = Session {
            peer,
            phase: Phase::AwaitHello,
            opened_ms: now_ms,
            decoder: FrameDecoder::new(self.cfg.frame_bytes_max),
            send_frame_max: FRAME_BYTES_MIN,
            outbox: VecDeque::new(),
            known: receipts.clocks.clone(),
            inflight: BTreeMap::new(),
            next_batch: 0,
            queue: BTreeSet::new(),
            cursor: None,
            stats: SessionStats::default(),
        };
        let hello = Message::Hello(Hello {
            magic: MAGIC,
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            node: self.cfg.name.clone(),
            store_id: self.meta.store_id,
            capabilities: 0,
            frame_bytes_max: self.cfg.frame_bytes_max,
        });
        s.push(self.commit_seq, &hello);
        let entries = self.summary_entries(Some(&receipts));
        self.send_summary(&mut s, entries);
        self.sessions.insert(sid, s);
        sid
    }

    /// Clocks of the documents whose clock differs from what the peer was last told (all
    /// documents with `None`).
    fn summary_entries(&self, receipts: Option<&PeerReceipts>) -> Vec<DocClock> {
        self.docs
            .iter()
            .filter(|(doc, meta)| {
                receipts.is_none_or(|r| r.reported.get(*doc) != Some(&meta.clock))
            })
            .map(|(doc, meta)| DocClock {
                doc: doc.clone(),
                clock: meta.clock.clone(),
            })
            .collect()
    }

    /// Records (in memory and in `batch`) that `peer` was told `clock` for `doc`.
    fn note_reported(
        &mut self,
        batch: &mut WriteBatch,
        peer: &NodeName,
        doc: &DocId,
        clock: &VectorClock,
    ) {
        let r = self.peers.entry(peer.clone()).or_default();
        if r.reported.get(doc) != Some(clock) {
            r.reported.insert(doc.clone(), clock.clone());
            batch.push(WriteOp::PutReported {
                peer: peer.clone(),
                doc: doc.clone(),
                clock: clock.clone(),
            });
        }
    }

    /// Queues `entries` as the session's summary and remembers them as reported.
    fn send_summary(&mut self, s: &mut Session, entries: Vec<DocClock>) {
        let mut batch = WriteBatch::default();
        for e in &entries {
            self.note_reported(&mut batch, &s.peer.clone(), &e.doc, &e.clock);
        }
        self.queue_summary(s, entries);
        // Reported clocks need not be durable: losing one only enlarges a later summary.
        let _ = self.commit(batch);
    }

    fn queue_summary(&self, s: &mut Session, entries: Vec<DocClock>) {
        let parts = split_clocks(entries, s.send_frame_max);
        let n = parts.len();
        for (i, entries) in parts.into_iter().enumerate() {
            s.push(
                self.commit_seq,
                &Message::Summary(Summary {
                    entries,
                    last: i + 1 == n,
                }),
            );
        }
    }

    /// Bytes received from the session's transport, in order. Frames may be split or joined
    /// arbitrarily. A protocol error closes the session (see [`crate::Event::SessionClosed`]).
    pub fn handle_input(&mut self, sid: SessionId, bytes: &[u8], now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.phase == Phase::Closed {
            return;
        }
        s.stats.bytes_in += bytes.len() as u64;
        s.decoder.push(bytes);
        while let Some(s) = self.sessions.get_mut(&sid) {
            if s.phase == Phase::Closed {
                break;
            }
            match s.decoder.next_message() {
                Ok(Some(msg)) => {
                    s.stats.frames_in += 1;
                    self.handle_message(sid, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    self.close_session(sid, decode_close_code(&e), &e.to_string());
                    break;
                }
            }
        }
        self.pump_all();
    }

    fn handle_message(&mut self, sid: SessionId, msg: Message) {
        let phase = self.sessions[&sid].phase;
        match (phase, msg) {
            (Phase::AwaitHello, Message::Hello(h)) => self.on_hello(sid, h),
            (_, Message::Hello(_)) => {
                self.close_session(sid, CloseCode::Unexpected, "second hello")
            }
            (_, Message::Close(c)) => {
                let s = self.sessions.remove(&sid).expect("session exists");
                self.ended_stats.add(&s.stats);
                self.events.push_back(crate::Event::SessionClosed {
                    session: sid,
                    peer: s.peer,
                    code: Some(c.code),
                    reason: c.reason,
                    by_peer: true,
                });
            }
            (Phase::AwaitHello, _) => {
                self.close_session(sid, CloseCode::Unexpected, "message before hello")
            }
            (_, Message::Summary(sm)) => self.on_summary(sid, sm),
            (_, Message::Changes(c)) => self.on_changes(sid, c),
            (_, Message::Ack(a)) => self.on_ack(sid, a),
        }
    }

    fn on_hello(&mut self, sid: SessionId, h: Hello) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if h.magic != MAGIC {
            return self.close_session(sid, CloseCode::Malformed, "bad magic");
        }
        if !(h.version_min..=h.version_max).contains(&PROTOCOL_VERSION) {
            let reason = format!(
                "peer speaks versions {}..={}, this node {PROTOCOL_VERSION}",
                h.version_min, h.version_max
            );
            return self.close_session(sid, CloseCode::VersionMismatch, &reason);
        }
        if h.node != s.peer {
            let reason = format!(
                "hello names {} but the transport authenticated {}",
                h.node, s.peer
            );
            return self.close_session(sid, CloseCode::IdentityMismatch, &reason);
        }
        let need = self.cfg.change_bytes_max + CHANGES_OVERHEAD_BYTES;
        if h.frame_bytes_max < FRAME_BYTES_MIN || h.frame_bytes_max < need {
            let reason = format!(
                "peer accepts frames of {} bytes; this node needs {need}",
                h.frame_bytes_max
            );
            return self.close_session(sid, CloseCode::LimitsIncompatible, &reason);
        }
        s.send_frame_max = h.frame_bytes_max.min(FRAME_BYTES_LIMIT);
        s.phase = Phase::AwaitSummary;
        let peer = s.peer.clone();
        let recorded = self.peers.get(&peer).and_then(|r| r.store_id);
        if recorded != Some(h.store_id) {
            // A new peer, or one whose store was replaced: its receipts say nothing any more.
            // What a new peer was told in this session's summary still holds; a replaced
            // peer has forgotten everything it was told.
            let kept = match recorded {
                None => self
                    .peers
                    .get(&peer)
                    .map(|r| r.reported.clone())
                    .unwrap_or_default(),
                Some(_) => BTreeMap::new(),
            };
            let mut ops = vec![WriteOp::ResetPeer {
                peer: peer.clone(),
                store_id: h.store_id,
            }];
            for (doc, clock) in &kept {
                ops.push(WriteOp::PutReported {
                    peer: peer.clone(),
                    doc: doc.clone(),
                    clock: clock.clone(),
                });
            }
            let fresh = PeerReceipts {
                store_id: Some(h.store_id),
                reported: kept,
                ..PeerReceipts::default()
            };
            self.peers.insert(peer, fresh);
            let batch = WriteBatch { ops };
            if self.commit(batch).is_err() {
                return;
            }
            if recorded.is_some() {
                let entries = self.summary_entries(None);
                let mut s = self.sessions.remove(&sid).expect("session exists");
                s.known.clear();
                self.send_summary(&mut s, entries);
                self.sessions.insert(sid, s);
            }
        }
    }

    /// Raises the receipt for (peer, doc) to include `clock`; adds the write to `batch`.
    fn raise_receipt(
        &mut self,
        batch: &mut WriteBatch,
        peer: &NodeName,
        doc: &DocId,
        clock: &VectorClock,
    ) {
        let r = self.peers.entry(peer.clone()).or_default();
        let entry = r.clocks.entry(doc.clone()).or_default();
        if !clock.le(entry) {
            entry.merge(clock);
            batch.push(WriteOp::PutReceipt {
                peer: peer.clone(),
                doc: doc.clone(),
                clock: entry.clone(),
            });
        }
    }

    /// Learns peer clocks (from a Summary or Ack): known, receipts, and what to send next.
    fn learn_clocks(&mut self, sid: SessionId, entries: Vec<DocClock>) {
        let peer = self.sessions[&sid].peer.clone();
        let mut batch = WriteBatch::default();
        for e in entries {
            // Entries for documents this node lacks carry nothing it could send: skipping them
            // bounds per-peer memory by the local document count.
            if !self.docs.contains_key(&e.doc) {
                continue;
            }
            self.raise_receipt(&mut batch, &peer, &e.doc, &e.clock);
            let s = self.sessions.get_mut(&sid).expect("session exists");
            s.known.entry(e.doc.clone()).or_default().merge(&e.clock);
            s.mark_dirty(&e.doc);
        }
        // Receipts need not be durable: losing one only causes a resend.
        let _ = self.commit(batch);
    }

    fn on_summary(&mut self, sid: SessionId, sm: Summary) {
        self.learn_clocks(sid, sm.entries);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if sm.last && s.phase == Phase::AwaitSummary {
            s.phase = Phase::Live;
            let empty = VectorClock::new();
            let queue: BTreeSet<DocId> = self
                .docs
                .iter()
                .filter(|(doc, meta)| !meta.clock.le(s.known.get(*doc).unwrap_or(&empty)))
                .map(|(doc, _)| doc.clone())
                .collect();
            s.queue = queue;
        }
    }

    fn on_changes(&mut self, sid: SessionId, c: Changes) {
        let peer = self.sessions[&sid].peer.clone();
        let mut batch = WriteBatch::default();
        let mut failure = None;
        let mut received: BTreeMap<DocId, VectorClock> = BTreeMap::new();
        let mut stats = SessionStats::default();
        'docs: for dc in &c.docs {
            received.entry(dc.doc.clone()).or_default();
            for ch in &dc.changes {
                stats.changes_received += 1;
                match self.apply_remote(&mut batch, &dc.doc, &ch.0) {
                    Ok((applied, actor, seq)) => {
                        // The sender holds (actor, 1..=seq): it holds this change, causally closed.
                        received
                            .get_mut(&dc.doc)
                            .expect("inserted")
                            .observe(actor, seq);
                        match applied {
                            Applied::New(n) => stats.changes_applied += 1 + n as u64,
                            Applied::Duplicate => stats.changes_duplicate += 1,
                            Applied::Buffered => stats.changes_buffered += 1,
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break 'docs;
                    }
                }
            }
        }
        // The sender holds what it sent, durably (frames leave only once durable): that is a
        // receipt too, so this node never sends those changes back and counts them as held.
        for (doc, clock) in &received {
            if self.docs.contains_key(doc) {
                self.raise_receipt(&mut batch, &peer, doc, clock);
            }
        }
        // The Ack will tell the peer these clocks: remember them, in the same commit.
        for doc in received.keys() {
            let clock = self.clock(doc).cloned().unwrap_or_default();
            self.note_reported(&mut batch, &peer, doc, &clock);
        }
        // What was valid is applied and kept even if a later change was refused: memory and
        // store stay equal, and the session ends below.
        let Ok(seq) = self.commit(batch) else { return };
        self.announce(Origin::Remote(peer));
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.stats.changes_received += stats.changes_received;
        s.stats.changes_applied += stats.changes_applied;
        s.stats.changes_duplicate += stats.changes_duplicate;
        s.stats.changes_buffered += stats.changes_buffered;
        for (doc, clock) in &received {
            s.known.entry(doc.clone()).or_default().merge(clock);
        }
        if let Some(e) = failure {
            let reason = e.to_string();
            return self.close_session(sid, e.close_code(), &reason);
        }
        let clocks: Vec<DocClock> = received
            .keys()
            .map(|doc| DocClock {
                doc: doc.clone(),
                clock: self.clock(doc).cloned().unwrap_or_default(),
            })
            .collect();
        let gate = self.durable_at(seq);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        // Acks go to the peer, bounded by what it accepts (at least FRAME_BYTES_MIN).
        let parts = split_clocks(clocks, s.send_frame_max);
        let n = parts.len();
        for (i, clocks) in parts.into_iter().enumerate() {
            s.push(
                gate,
                &Message::Ack(Ack {
                    batch: c.batch,
                    clocks,
                    last: i + 1 == n,
                }),
            );
        }
    }

    fn on_ack(&mut self, sid: SessionId, a: Ack) {
        let docs: Vec<DocId> = a.clocks.iter().map(|e| e.doc.clone()).collect();
        self.learn_clocks(sid, a.clocks);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if a.last && s.inflight.remove(&a.batch).is_some() {
            s.stats.batches_acked += 1;
        }
        // A batch the peer could not fully apply (a causal gap) is sent again.
        for doc in docs {
            let local = self.docs.get(&doc).map(|m| &m.clock);
            if local.is_some_and(|l| !l.le(&s.known_with_inflight(&doc))) {
                s.queue.insert(doc);
            }
        }
    }

    /// Fills every live session's window with batches of missing changes.
    pub(crate) fn pump_all(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            if let Err(e) = self.pump(sid) {
                // A store read failed: the document set cannot be served.
                self.close_session(sid, CloseCode::StoreFailed, &e.to_string());
            }
        }
    }

    fn pump(&mut self, sid: SessionId) -> Result<(), StoreError> {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return Ok(());
        };
        let result = self.fill_window(&mut s);
        self.sessions.insert(sid, s);
        match result {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => {
                self.close_session(sid, CloseCode::LimitsIncompatible, &reason);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Builds batches while the window allows. `Ok(Some(reason))` when a change cannot fit
    /// the peer's frame limit.
    fn fill_window(&mut self, s: &mut Session) -> Result<Option<String>, StoreError> {
        if s.phase != Phase::Live {
            return Ok(None);
        }
        let frame_room = s.send_frame_max - CHANGES_OVERHEAD_BYTES;
        let budget = self.cfg.batch_bytes_max.min(frame_room) as usize;
        while s.inflight.len() < self.cfg.inflight_batches_max {
            let mut docs_out: Vec<DocChanges> = Vec::new();
            let mut sent: BTreeMap<DocId, VectorClock> = BTreeMap::new();
            let mut bytes = 0usize;
            let mut full = false;
            while !full {
                if s.cursor.is_none() {
                    let Some(doc) = s.queue.pop_first() else {
                        break;
                    };
                    let Some(meta) = self.docs.get(&doc) else {
                        continue;
                    };
                    let have = s.known_with_inflight(&doc);
                    let mut orders = Vec::new();
                    for (actor, seqs) in have.missing_from(&meta.clock) {
                        orders.extend(
                            self.store
                                .change_index(&doc, &actor, seqs)?
                                .into_iter()
                                .map(|(_, o, _)| o),
                        );
                    }
                    if orders.is_empty() {
                        continue;
                    }
                    // Apply order is a causal order: dependencies are sent first.
                    orders.sort_unstable();
                    s.cursor = Some((doc, orders.into()));
                }
                let (doc, orders) = s.cursor.as_mut().expect("set above");
                while let Some(&order) = orders.front() {
                    let change =
                        self.store
                            .change_at(doc, order)?
                            .ok_or_else(|| StoreError::Corrupt {
                                table: "changes",
                                key: format!("{doc}@{order}"),
                            })?;
                    if change.bytes.len() > frame_room as usize {
                        return Ok(Some(format!(
                            "a change of {} bytes does not fit the peer's frame limit of {}",
                            change.bytes.len(),
                            s.send_frame_max
                        )));
                    }
                    let cost = change.bytes.len() + 16 + doc.as_str().len();
                    if bytes > 0 && bytes + cost > budget {
                        full = true;
                        break;
                    }
                    orders.pop_front();
                    bytes += cost;
                    sent.entry(doc.clone())
                        .or_default()
                        .observe(change.actor, change.seq);
                    match docs_out.last_mut() {
                        Some(last) if &last.doc == doc => {
                            last.changes.push(ChangeBytes(change.bytes))
                        }
                        _ => docs_out.push(DocChanges {
                            doc: doc.clone(),
                            changes: vec![ChangeBytes(change.bytes)],
                        }),
                    }
                }
                if orders.is_empty() {
                    s.cursor = None;
                }
            }
            if docs_out.is_empty() {
                break;
            }
            let batch = s.next_batch;
            s.next_batch += 1;
            s.stats.changes_sent += docs_out.iter().map(|d| d.changes.len() as u64).sum::<u64>();
            s.inflight.insert(
                batch,
                Inflight {
                    sent_ms: self.now_ms,
                    clocks: sent,
                },
            );
            s.push(
                self.commit_seq,
                &Message::Changes(Changes {
                    batch,
                    docs: docs_out,
                }),
            );
        }
        Ok(None)
    }

    /// The next frame to send on the session's transport, once everything it describes is
    /// durable. `None` when nothing is ready.
    pub fn poll_transmit(&mut self, sid: SessionId) -> Option<Vec<u8>> {
        let s = self.sessions.get_mut(&sid)?;
        let ready = s
            .outbox
            .front()
            .is_some_and(|(gate, _)| *gate <= self.durable_seq);
        let frame = if ready {
            s.outbox.pop_front().map(|(_, f)| f)
        } else {
            None
        };
        if let Some(f) = &frame {
            s.stats.frames_out += 1;
            s.stats.bytes_out += f.len() as u64;
        }
        if s.phase == Phase::Closed && s.outbox.is_empty() {
            if let Some(s) = self.sessions.remove(&sid) {
                self.ended_stats.add(&s.stats);
            }
        }
        frame
    }

    /// Ends a session: queues a Close frame (sent by [`Node::poll_transmit`]) and reports
    /// [`crate::Event::SessionClosed`].
    pub fn close_session(&mut self, sid: SessionId, code: CloseCode, reason: &str) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.phase == Phase::Closed {
            return;
        }
        let mut reason = reason.to_string();
        while reason.len() > CLOSE_REASON_BYTES_MAX {
            reason.pop();
        }
        s.phase = Phase::Closed;
        s.outbox.clear();
        s.inflight.clear();
        s.queue.clear();
        s.cursor = None;
        s.push(
            0,
            &Message::Close(Close {
                code,
                reason: reason.clone(),
            }),
        );
        let peer = s.peer.clone();
        self.events.push_back(crate::Event::SessionClosed {
            session: sid,
            peer,
            code: Some(code),
            reason,
            by_peer: false,
        });
    }

    /// The transport of a session is gone (closed, reset, idle timeout). Anything unacknowledged
    /// is sent again in the next session.
    pub fn disconnect(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.remove(&sid) {
            self.ended_stats.add(&s.stats);
            if s.phase != Phase::Closed {
                self.events.push_back(crate::Event::SessionClosed {
                    session: sid,
                    peer: s.peer,
                    code: None,
                    reason: "transport closed".into(),
                    by_peer: false,
                });
            }
        }
    }

    /// Closes every session with [`CloseCode::Shutdown`].
    pub fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.close_session(sid, CloseCode::Shutdown, "node shutting down");
        }
    }

    /// Time passed; ends sessions whose handshake or acknowledgement is overdue.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let (hs, ack) = (self.cfg.handshake_timeout_ms, self.cfg.ack_timeout_ms);
        let overdue: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline(hs, ack).is_some_and(|d| d <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for sid in overdue {
            let what = if self.sessions[&sid].phase == Phase::Live {
                "acknowledgement"
            } else {
                "handshake"
            };
            self.close_session(sid, CloseCode::Timeout, &format!("{what} timed out"));
        }
    }

    /// When [`Node::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let (hs, ack) = (self.cfg.handshake_timeout_ms, self.cfg.ack_timeout_ms);
        self.sessions
            .values()
            .filter_map(|s| s.deadline(hs, ack))
            .min()
    }

    /// Every session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: *id,
                peer: s.peer.clone(),
                live: s.phase == Phase::Live,
                inflight_batches: s.inflight.len(),
                stats: s.stats.clone(),
            })
            .collect()
    }

    /// True when no session has frames waiting, batches in flight or documents to send: the
    /// node is quiescent as far as its peers go.
    pub fn is_idle(&self) -> bool {
        self.sessions.values().all(|s| {
            s.outbox.is_empty() && s.inflight.is_empty() && s.queue.is_empty() && s.cursor.is_none()
        })
    }

    /// What this node remembers of `peer`: its store id and, per document, the clock it
    /// acknowledged.
    pub fn receipts(&self, peer: &NodeName) -> Option<&PeerReceipts> {
        self.peers.get(peer)
    }

    /// Counters summed over every session since open, ended ones included.
    pub fn session_totals(&self) -> SessionStats {
        let mut t = self.ended_stats.clone();
        for s in self.sessions.values() {
            t.add(&s.stats);
        }
        t
    }

    /// How many changes this node holds that `peer` has not acknowledged (per durable receipts).
    pub fn peer_unacked(&self, peer: &NodeName) -> u64 {
        let empty = VectorClock::new();
        let receipts = self.peers.get(peer);
        self.docs
            .iter()
            .map(|(doc, meta)| {
                let acked = receipts.and_then(|r| r.clocks.get(doc)).unwrap_or(&empty);
                acked.missing_count(&meta.clock)
            })
            .sum()
    }
}
