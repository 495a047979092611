//! The node's side of sync: it owns one [`Session`] per connected peer, feeds it, and does what
//! a session cannot do alone: persist receipts and reported clocks, apply received changes,
//! and release frames once the commits they describe are durable.

use std::collections::BTreeMap;

use super::authorship::NodeProver;
use super::remote::{Applied, ApplyError, Run};
use super::{Event, Node, Origin};
use crate::authz::Identity;
use crate::id::{DocId, NodeName};
use crate::store::{PeerReceipts, Store, WriteBatch, WriteOp};
use crate::sync::{Limits, Refusal, Session, SessionId, SessionInfo, SessionStats};
use crate::vclock::VectorClock;
use crate::wire::{
    Ack, ChangeBytes, Changes, CloseCode, DocClock, Hello, Incarnation, Message, Signed, Snapshots,
    Summary, MAGIC, PROTOCOL_VERSION,
};
use automerge::Change;

/// A parsed section: its changes, their signatures, the failure that ended the parse, and
/// for a snapshot the document as loaded with its number of changes.
type Parsed = (
    Vec<Change>,
    Vec<Signed>,
    Option<ApplyError>,
    Option<(automerge::Automerge, usize)>,
);

/// One document's part of a received batch.
struct Section<'a> {
    doc: &'a DocId,
    body: Body<'a>,
    signed: &'a [Signed],
}

/// What a section carries: changes, or the document's saved form.
enum Body<'a> {
    Changes(&'a [ChangeBytes]),
    Snapshot(&'a [u8]),
}

impl Body<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Body::Changes(c) => c.is_empty(),
            Body::Snapshot(s) => s.is_empty(),
        }
    }

    /// The changes the section counts as received: as sent, or (a snapshot) as parsed.
    fn len(&self, parsed: usize) -> usize {
        match self {
            Body::Changes(c) => c.len(),
            Body::Snapshot(_) => parsed,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: Store> Node<S> {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            batch_bytes_max: self.cfg.batch_bytes_max,
            inflight_batches_max: self.cfg.inflight_batches_max,
            inflight_bytes_max: self.cfg.inflight_bytes_max as usize,
            handshake_timeout_ms: self.cfg.handshake_timeout_ms,
            ack_timeout_ms: self.cfg.ack_timeout_ms,
            snapshots: self.cfg.snapshot_transfer,
        }
    }

    /// Starts a session with `peer`, whose identity the transport has verified (its name,
    /// role and site decide what it may hold). Hello and Summary frames are queued at once;
    /// fetch them with [`Node::poll_transmit`].
    pub fn connect(&mut self, peer: Identity, now_ms: u64) -> SessionId {
        self.now_ms = self.now_ms.max(now_ms);
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        let receipts = self.peers.get(&peer.name).cloned().unwrap_or_default();
        let entries = self.summary_entries(Some(&receipts), &peer);
        let mut s = Session::new(
            peer,
            now_ms,
            self.cfg.frame_bytes_max,
            receipts.clocks.clone(),
        );
        let hello = Hello {
            magic: MAGIC,
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            node: self.cfg.name.clone(),
            store_id: self.meta.store_id,
            capabilities: crate::wire::CAP_DEFLATE
                | crate::wire::CAP_INCARNATION
                | crate::wire::CAP_SLOTS
                | if self.cfg.snapshot_transfer {
                    crate::wire::CAP_SNAPSHOT
                } else {
                    0
                },
            frame_bytes_max: self.cfg.frame_bytes_max,
        };
        s.queue_hello(self.commit_seq, hello);
        self.send_summary(&mut s, entries);
        self.sessions.insert(sid, s);
        sid
    }

    /// Clocks of the documents whose clock differs from what the peer was last told (all
    /// documents with `None`), of those the peer may hold (residency: a peer never hears of
    /// a document it may not read).
    fn summary_entries(&self, receipts: Option<&PeerReceipts>, peer: &Identity) -> Vec<DocClock> {
        self.docs
            .iter()
            .filter(|(doc, meta)| {
                receipts.is_none_or(|r| r.reported.get(*doc) != Some(&meta.clock))
                    && self.peer_may_read(peer, doc)
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
        let peer = s.peer().clone();
        for e in &entries {
            self.note_reported(&mut batch, &peer, &e.doc, &e.clock);
        }
        s.queue_summary(self.commit_seq, entries);
        // Reported clocks need not be durable: losing one only enlarges a later summary.
        let _ = self.commit(batch);
    }

    /// Bytes received from the session's transport, in order. Frames may be split or joined
    /// arbitrarily. A protocol error closes the session (see [`crate::Event::SessionClosed`]).
    pub fn handle_input(&mut self, sid: SessionId, bytes: &[u8], now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.is_closed() {
            return;
        }
        s.receive(bytes);
        while let Some(s) = self.sessions.get_mut(&sid) {
            if s.is_closed() {
                break;
            }
            match s.next_message() {
                Ok(Some(msg)) => self.handle_message(sid, msg),
                Ok(None) => break,
                Err(r) => {
                    self.refuse(sid, r);
                    break;
                }
            }
        }
        self.pump_all();
    }

    fn refuse(&mut self, sid: SessionId, r: Refusal) {
        self.close_session(sid, r.code, &r.reason);
    }

    fn handle_message(&mut self, sid: SessionId, msg: Message) {
        let awaits_hello = self.sessions[&sid].awaits_hello();
        match msg {
            Message::Hello(h) if awaits_hello => self.on_hello(sid, h),
            Message::Hello(_) => self.close_session(sid, CloseCode::Unexpected, "second hello"),
            Message::Close(c) => {
                let s = self.end_session(sid).expect("session exists");
                self.events.push_back(Event::SessionClosed {
                    session: sid,
                    peer: s.peer().clone(),
                    code: Some(c.code),
                    reason: c.reason,
                    by_peer: true,
                });
            }
            _ if awaits_hello => {
                self.close_session(sid, CloseCode::Unexpected, "message before hello")
            }
            Message::Incarnation(i) if self.sessions[&sid].awaits_incarnation() => {
                self.on_incarnation(sid, i)
            }
            Message::Incarnation(_) => {
                self.close_session(sid, CloseCode::Unexpected, "incarnation not expected")
            }
            Message::Author(_)
            | Message::Changes(_)
            | Message::Snapshots(_)
            | Message::Ack(_)
            | Message::SlotQuery(_)
            | Message::SlotAnswer(_)
                if self.sessions[&sid].awaits_incarnation() =>
            {
                self.close_session(sid, CloseCode::Unexpected, "message before incarnation")
            }
            Message::Summary(sm) => self.on_summary(sid, sm),
            Message::Author(st) => self.on_author(sid, st),
            Message::Changes(c) => self.on_changes(sid, c),
            Message::Snapshots(c) => self.on_snapshots(sid, c),
            Message::Ack(a) => self.on_ack(sid, a),
            Message::SlotQuery(q) => self.on_slot_query(sid, q),
            Message::SlotAnswer(a) => self.on_slot_answer(sid, a),
            // The frame decoder inflates what it receives and refuses a deflated message
            // inside one: this does not come from a decoder.
            Message::Deflated(_) => {
                self.close_session(sid, CloseCode::Malformed, "a deflated message not inflated")
            }
        }
    }

    fn on_hello(&mut self, sid: SessionId, h: Hello) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if let Err(r) = s.accept_hello(&h, self.cfg.change_bytes_max) {
            return self.refuse(sid, r);
        }
        if s.peer_incarnates() {
            let mine = Incarnation {
                incarnation: self.meta.incarnation,
                boot: self.boot_id,
            };
            s.queue_incarnation(self.commit_seq, mine);
        }
        // Every slot-bound node asks: an unsettled one to learn its slot, a settled one to
        // hear of another store under its certificate.
        if self.meta.slot_space != [0; 32] {
            s.ask_slot(self.commit_seq, self.meta.slot_space, self.now_ms);
        }
        let peer = s.peer().clone();
        let recorded = self.peers.get(&peer).and_then(|r| r.store_id);
        if recorded == Some(h.store_id) {
            return;
        }
        // A new peer, or one whose store was replaced: its receipts say nothing any more. What
        // a new peer was told in this session's summary still holds; a replaced peer has
        // forgotten everything it was told.
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
        if self.commit(WriteBatch { ops }).is_err() {
            return;
        }
        if recorded.is_some() {
            let who = self.sessions[&sid].peer_id().clone();
            let entries = self.summary_entries(None, &who);
            let mut s = self.sessions.remove(&sid).expect("session exists");
            s.forget_known();
            self.send_summary(&mut s, entries);
            self.sessions.insert(sid, s);
        }
    }

    /// The peer's run of its store: a run older than one accepted from the same store, or the
    /// same run from another boot, comes from a second node running a copy of that store. Such
    /// a session ends with `Cloned`; what the peer's receipts say may be the copy's, so they
    /// are forgotten (the next session summarises in full). The newest run wins: a peer cannot
    /// tell a restart from a copy's start, only that two nodes offer one store.
    fn on_incarnation(&mut self, sid: SessionId, run: Incarnation) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.note_incarnation();
        let peer = s.peer().clone();
        let Some(r) = self.peers.get(&peer) else {
            return;
        };
        let Some(store_id) = r.store_id else {
            return;
        };
        match r.seen {
            Some(seen) if seen == run => {}
            Some(seen) if seen.incarnation >= run.incarnation => {
                let reason = format!(
                    "store {} offered run {} (boot {}) after run {} (boot {}): another node runs from a copy of this store",
                    hex(&store_id[..8]),
                    run.incarnation,
                    hex(&run.boot[..4]),
                    seen.incarnation,
                    hex(&seen.boot[..4]),
                );
                let fresh = PeerReceipts {
                    store_id: Some(store_id),
                    seen: Some(seen),
                    ..PeerReceipts::default()
                };
                self.peers.insert(peer.clone(), fresh);
                let _ = self.commit(WriteBatch {
                    ops: vec![WriteOp::ResetPeer { peer, store_id }],
                });
                self.close_session(sid, CloseCode::Cloned, &reason);
            }
            _ => {
                if let Some(r) = self.peers.get_mut(&peer) {
                    r.seen = Some(run);
                }
                // Need not be durable: a run forgotten in a crash only lets an older one by.
                let _ = self.commit(WriteBatch {
                    ops: vec![WriteOp::PutPeerSeen {
                        peer,
                        store_id,
                        seen: run,
                    }],
                });
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

    /// Learns peer clocks (from a Summary or Ack): receipts, and what the session sends next.
    /// Returns the entries naming buckets this node no longer keeps.
    fn learn_clocks(&mut self, sid: SessionId, entries: &[DocClock]) -> Vec<DocClock> {
        let peer = self.sessions[&sid].peer().clone();
        let mut batch = WriteBatch::default();
        let mut gone = Vec::new();
        for e in entries {
            // Entries for documents this node lacks carry nothing it could send: skipping them
            // bounds per-peer memory by the local document count.
            if !self.docs.contains_key(&e.doc) {
                if self.is_gone(&e.doc) && !e.clock.is_empty() {
                    gone.push(e.clone());
                }
                continue;
            }
            self.raise_receipt(&mut batch, &peer, &e.doc, &e.clock);
            let s = self.sessions.get_mut(&sid).expect("session exists");
            s.learn(&e.doc, &e.clock);
        }
        // Receipts need not be durable: losing one only causes a resend.
        let _ = self.commit(batch);
        gone
    }

    fn on_summary(&mut self, sid: SessionId, sm: Summary) {
        // Only the peer's opening summary is answered: an answer arrives after the session is
        // live, so two nodes that both dropped a bucket never answer each other in a loop.
        let opening = !self.sessions[&sid].is_live();
        let gone = self.learn_clocks(sid, &sm.entries);
        if opening && !gone.is_empty() {
            // Retention: the peer holds buckets this node dropped. Answer that this node holds
            // what the peer holds, so it never sends them (changes it sends before this arrives
            // are acknowledged the same way). Not remembered as reported: nothing of a dropped
            // bucket is kept.
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.queue_summary(self.commit_seq, gone);
            }
        }
        if sm.last {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.finish_summary(&self.docs);
            }
        }
    }

    fn on_changes(&mut self, sid: SessionId, c: Changes) {
        let sections = c.docs.iter().map(|dc| Section {
            doc: &dc.doc,
            body: Body::Changes(&dc.changes),
            signed: &dc.signed,
        });
        self.receive_batch(sid, c.batch, sections.collect());
    }

    fn on_snapshots(&mut self, sid: SessionId, c: Snapshots) {
        if !self.cfg.snapshot_transfer {
            let reason = "snapshots to a node that does not accept them";
            return self.close_session(sid, CloseCode::Unexpected, reason);
        }
        let sections = c.docs.iter().map(|ds| Section {
            doc: &ds.doc,
            body: Body::Snapshot(&ds.saved),
            signed: &ds.signed,
        });
        self.receive_batch(sid, c.batch, sections.collect());
    }

    /// Parses a section: its changes (what parses before a change that does not, and the
    /// failure), the signatures that name them and, for a snapshot, the document as loaded
    /// and its number of changes. `room` is what is left of the batch's bound on the changes
    /// of its snapshots (the frame limit).
    fn parse_section(&self, sec: &Section<'_>, room: &mut usize) -> Parsed {
        match sec.body {
            Body::Changes(changes) => {
                let mut parsed = Vec::with_capacity(changes.len());
                let mut failure = None;
                for ch in changes {
                    match self.parse_remote(&ch.0) {
                        Ok(c) => parsed.push(c),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                // Signatures of changes that did not parse prove nothing; the parse failure is
                // what the session ends with.
                let signed = sec
                    .signed
                    .iter()
                    .filter(|s| (s.change as usize) < parsed.len())
                    .cloned()
                    .collect();
                (parsed, signed, failure, None)
            }
            Body::Snapshot(saved) => match self.parse_snapshot(saved, sec.signed, room) {
                Ok((parsed, signed, loaded)) => {
                    let n = parsed.len();
                    (parsed, signed, None, Some((loaded, n)))
                }
                Err(e) => (Vec::new(), Vec::new(), Some(e), None),
            },
        }
    }

    /// Receives a batch (of changes or snapshots): every section's changes proven, applied and
    /// persisted in one commit, and acknowledged once durable.
    fn receive_batch(&mut self, sid: SessionId, batch_no: u64, sections: Vec<Section<'_>>) {
        // Journaled readings of these documents go in first, so that the fold's change is
        // concurrent with the peer's, as the ingest's own change would have been.
        let named = sections.iter().filter(|sec| !sec.body.is_empty());
        if let Err(e) = self.fold_docs(named.map(|sec| sec.doc)) {
            if self.sessions.contains_key(&sid) {
                let reason = format!("folding the ingest journal failed: {e}");
                self.close_session(sid, CloseCode::StoreFailed, &reason);
            }
            return;
        }
        let peer = self.sessions[&sid].peer().clone();
        let mut batch = WriteBatch::default();
        let mut received: BTreeMap<DocId, VectorClock> = BTreeMap::new();
        let mut stats = SessionStats::default();
        let mut failure = None;
        let mut room = self.cfg.frame_bytes_max as usize;
        'docs: for sec in &sections {
            let doc = sec.doc;
            // A document named with no changes carries nothing to apply or acknowledge.
            if sec.body.is_empty() {
                continue;
            }
            received.entry(doc.clone()).or_default();
            // Parsed first, all of the section: who wrote each change is proven from the
            // section as a whole. What parses before a change that does not is still offered.
            let (parsed, signed, parse_failure, whole) = self.parse_section(sec, &mut room);
            if parse_failure.is_some() {
                failure = parse_failure;
            } else if matches!(sec.body, Body::Snapshot(_)) {
                stats.snapshots_received += 1;
            }
            let bys = match self.prove(sid, doc, &parsed, &signed) {
                Ok(b) => b,
                Err(e) => {
                    stats.changes_received += sec.body.len(parsed.len()) as u64;
                    failure = failure.or(Some(e));
                    break 'docs;
                }
            };
            self.keep_authors(sid, &mut batch, &bys);
            // The section's ready changes are applied to the document together (a run), when
            // the section ends or a change is refused: what came before a refused change
            // stays.
            let mut run = Run::default();
            for (ch, by) in parsed.into_iter().zip(bys) {
                stats.changes_received += 1;
                match self.apply_remote(&mut batch, &mut run, doc, ch, by, sid, &peer) {
                    Ok((applied, actor, seq)) => {
                        // The sender holds (actor, 1..=seq): it holds this change, causally closed.
                        received.get_mut(doc).expect("inserted").observe(actor, seq);
                        match applied {
                            Applied::New(n) => stats.changes_applied += 1 + n as u64,
                            Applied::Duplicate | Applied::Gone => stats.changes_duplicate += 1,
                            Applied::Buffered => stats.changes_buffered += 1,
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // A snapshot taken whole becomes the document as Automerge loaded it.
            let whole = whole.filter(|_| failure.is_none());
            if let Err(e) = self.flush_run_from(&mut batch, &mut run, doc, whole) {
                failure = failure.or(Some(e));
            }
            if failure.is_some() {
                break;
            }
        }
        // The sender holds what it sent, durably (frames leave only once durable): that is a
        // receipt too, so this node never sends those changes back and counts them as held.
        for (doc, clock) in &received {
            if self.docs.contains_key(doc) {
                self.raise_receipt(&mut batch, &peer, doc, clock);
            }
        }
        // The Ack will tell the peer these clocks: remember them, in the same commit. Only for
        // documents this node holds: what a peer is told is bounded by the local document count,
        // not by the names it sends (a document whose changes all wait for dependencies is
        // acknowledged with the empty clock and nothing is remembered).
        for doc in received.keys() {
            if let Some(clock) = self.clock(doc).cloned() {
                self.note_reported(&mut batch, &peer, doc, &clock);
            }
        }
        // What was valid is applied and kept even if a later change was refused: memory and
        // store stay equal, and the session ends below.
        let Ok(seq) = self.commit(batch) else { return };
        self.announce(Origin::Remote(peer));
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.record_received(&stats, &received);
        if let Some(e) = failure {
            if let ApplyError::Overloaded { limit, .. } = e {
                self.events.push_back(Event::LimitExceeded {
                    peer: self.sessions[&sid].peer().clone(),
                    limit,
                });
            }
            let reason = e.to_string();
            return self.close_session(sid, e.close_code(), &reason);
        }
        // A bucket past retention is acknowledged as held at what the peer sent: the peer counts
        // it as held and does not send it again.
        let clocks: Vec<DocClock> = received
            .iter()
            .map(|(doc, sent)| DocClock {
                doc: doc.clone(),
                clock: match self.clock(doc) {
                    Some(c) => c.clone(),
                    None if self.is_gone(doc) => sent.clone(),
                    None => VectorClock::new(),
                },
            })
            .collect();
        let gate = self.durable_at(seq);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.queue_ack(gate, batch_no, clocks);
    }

    fn on_ack(&mut self, sid: SessionId, a: Ack) {
        // An Ack names only documents this node sent: none can be a bucket it dropped but for
        // a batch in flight when it was dropped, whose entries are ignored.
        let _ = self.learn_clocks(sid, &a.clocks);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.handle_ack(&a, &self.docs);
        }
    }

    /// Fills every live session's window with batches of missing changes.
    pub(super) fn pump_all(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        let limits = self.limits();
        for sid in ids {
            let s = self.sessions.get_mut(&sid).expect("listed above");
            let mut prover = NodeProver {
                store: &self.store,
                trust: &self.cfg.trust,
                cache: &mut self.authors,
                loaded: &self.loaded,
                docs: &self.docs,
            };
            let filled = s.fill_window(
                &self.store,
                &self.docs,
                &mut prover,
                &limits,
                self.now_ms,
                self.commit_seq,
            );
            match filled {
                Ok(None) => {}
                Ok(Some(reason)) => self.close_session(sid, CloseCode::LimitsIncompatible, &reason),
                // A store read failed: the document set cannot be served.
                Err(e) => self.close_session(sid, CloseCode::StoreFailed, &e.to_string()),
            }
        }
    }

    /// The next frame to send on the session's transport, once everything it describes is
    /// durable. `None` when nothing is ready. Releasing an Ack reports
    /// [`Event::Acknowledged`].
    pub fn poll_transmit(&mut self, sid: SessionId) -> Option<Vec<u8>> {
        let s = self.sessions.get_mut(&sid)?;
        let released = s.poll_transmit(self.durable_seq);
        let peer = s.peer().clone();
        if s.is_finished() {
            self.end_session(sid);
        }
        let r = released?;
        if let Some(clocks) = r.acked {
            self.events.push_back(Event::Acknowledged {
                session: sid,
                peer,
                clocks,
            });
        }
        Some(r.frame)
    }

    /// Ends a session: queues a Close frame (sent by [`Node::poll_transmit`]) and reports
    /// [`crate::Event::SessionClosed`].
    pub fn close_session(&mut self, sid: SessionId, code: CloseCode, reason: &str) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(reason) = s.close(code, reason) else {
            return;
        };
        let peer = s.peer().clone();
        self.events.push_back(Event::SessionClosed {
            session: sid,
            peer,
            code: Some(code),
            reason,
            by_peer: false,
        });
    }

    /// Removes a session that ended, keeps its counters, and forgets the changes its peer
    /// sent that still wait for dependencies once no other session with that peer is open.
    fn end_session(&mut self, sid: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&sid)?;
        self.ended_stats.add(s.stats());
        let open = |o: &Session| o.peer() == s.peer() && !o.is_closed();
        if !self.sessions.values().any(open) {
            self.pending.drop_peer(s.peer());
        }
        Some(s)
    }

    /// The transport of a session is gone (closed, reset, idle timeout). Anything unacknowledged
    /// is sent again in the next session.
    pub fn disconnect(&mut self, sid: SessionId) {
        if let Some(s) = self.end_session(sid) {
            if !s.is_closed() {
                self.events.push_back(Event::SessionClosed {
                    session: sid,
                    peer: s.peer().clone(),
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

    /// Time passed; folds the ingest journal when its oldest reading is due, and ends
    /// sessions whose handshake or acknowledgement is overdue.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.fold_if_due(now_ms);
        let limits = self.limits();
        let overdue: Vec<(SessionId, &str)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline(&limits).is_some_and(|d| d <= now_ms))
            .map(|(id, s)| {
                let what = if !s.is_live() {
                    "handshake"
                } else if s.slot_overdue(&limits, now_ms) {
                    "slot answer"
                } else {
                    "acknowledgement"
                };
                (*id, what)
            })
            .collect();
        for (sid, what) in overdue {
            self.close_session(sid, CloseCode::Timeout, &format!("{what} timed out"));
        }
        // A window filled a few batches at a time (so that the first leave while the rest are
        // built) is filled further here.
        if self.sessions.values().any(Session::wants_fill) {
            self.pump_all();
        }
    }

    /// When [`Node::handle_timeout`] should next be called, if ever: at once (this node's
    /// time) while a session's window is being filled.
    pub fn poll_timeout(&self) -> Option<u64> {
        let limits = self.limits();
        let fold = self.journal_due_at();
        let fill = self
            .sessions
            .values()
            .any(Session::wants_fill)
            .then_some(self.now_ms);
        self.sessions
            .values()
            .filter_map(|s| s.deadline(&limits))
            .chain(fold)
            .chain(fill)
            .min()
    }

    /// Every session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.iter().map(|(id, s)| s.info(*id)).collect()
    }

    /// The latest time this node was given (milliseconds): what [`Node::poll_timeout`] names
    /// while a window is being filled.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// True when no session has frames waiting, batches in flight or documents to send: the
    /// node is quiescent as far as its peers go.
    pub fn is_idle(&self) -> bool {
        self.sessions.values().all(Session::is_idle)
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
            t.add(s.stats());
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
