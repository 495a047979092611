//! A sync session: the per-peer protocol state and every transition of it. The node
//! (`node/peering.rs`) owns the sessions and drives them; this module knows nothing of the node:
//! what a session needs of the replica (document clocks, stored changes) comes in as arguments.
//!
//! Both sides send Hello and a Summary at once; a Summary lists the documents whose clock the
//! peer has not acknowledged (per the durable receipts), with the sender's clock. On the peer's
//! final Summary frame the session goes live: each side sends, for every document at once and
//! in byte-bounded batches, exactly the changes the peer's best known clock lacks. The receiver
//! persists each batch atomically and acknowledges with its durable clocks; the sender stores
//! them as receipts. Reconciling takes one round trip for data plus the acknowledgement, however
//! many documents there are. New changes are pushed as they are committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::sync::Arc;

use crate::authz::Identity;
use crate::id::{genesis_actor, DocId, NodeName};
use crate::store::{DocMeta, Store, StoreError, StoredChange};
use crate::trust::Author;
use crate::vclock::{Actor, VectorClock};
use crate::wire::{
    truncate_utf8, Ack, AuthorStatement, ChangeBytes, Changes, Close, CloseCode, DecodeError,
    DocChanges, DocClock, DocSnapshot, FrameDecoder, Hello, Incarnation, Message, Signed,
    Snapshots, Summary, CAP_DEFLATE, CAP_INCARNATION, CHANGES_OVERHEAD_BYTES,
    CLOSE_REASON_BYTES_MAX, FRAME_BYTES_LIMIT, FRAME_BYTES_MIN, MAGIC, PROTOCOL_VERSION,
};

/// What building batches needs from the node beyond its store: which stored changes can end
/// an actor's run in a batch (their authorship can be proven there), their signatures, the
/// authors' statements, and which documents the peer may hold.
pub(crate) trait Prover {
    /// Whether `change` can be the last change of its actor in a batch: it has a stored
    /// signature, or this node authored it (and signs it when sent), and its author's
    /// statement is kept.
    fn sealable(&mut self, change: &StoredChange) -> bool;
    /// The signature of a sealable change.
    fn signature(&mut self, change: &StoredChange) -> Option<Vec<u8>>;
    /// The statement of the author with this node actor.
    fn statement(&mut self, node_actor: &Actor) -> Option<Vec<u8>>;
    /// Whether the fleet's rules let `peer` read `doc` (residency).
    fn may_read(&self, peer: &Identity, doc: &DocId) -> bool;
    /// `doc`'s saved form (Automerge's `save`) holding exactly its committed changes, if it can
    /// be had.
    fn saved(&mut self, doc: &DocId) -> Option<Vec<u8>>;
}

/// Bytes a signature entry costs in a Changes frame (index, author number, length, signature).
const SIGNED_COST_BYTES: usize = 96;

/// Frame bytes of a section after which a sender cuts: it signs, at the last point before
/// them where it can, every actor's last change so far (a cut point). A receiver can cut a
/// section only where every actor in it ends on a signed change, and its peers' frame limits
/// may be smaller than the sender's (down to `FRAME_BYTES_MIN`). The bytes are counted as a
/// frame counts them (each change with its entry's overhead, [`batch_cost`], and each
/// signature the cut carries, `SIGNED_COST_BYTES`), so that the changes between two cut
/// points and their signatures fit one frame of the smallest limit (with room for the
/// frame's header), and every relay can forward what it received through any frame limit;
/// its own cut points keep that density (the received cut points are points it can cut at).
/// The exception is a run with no point to cut inside it that passes `SEAL_BYTES` by itself
/// (one change always fits a frame of the peer's limit: §5.1).
const SEAL_BYTES: usize = 12 * 1024;

/// Change bytes below which a document goes as changes without trying its saved form: a
/// document chunk's own layout takes some hundred bytes, so a short history is no smaller
/// saved, and saving it would cost the sender for nothing.
const SNAPSHOT_MIN_BYTES: usize = 1024;

/// Changes below which a document is not tried as a snapshot at all (its changes are not even
/// read for it): a short history is sent as changes.
const SNAPSHOT_MIN_CHANGES: u64 = 16;

/// Change bytes after which a Snapshots batch takes no further document (it holds at most the
/// frame limit of them, the bound its receiver enforces). The receiver's work is per change,
/// not per saved byte: a batch of this many is done by the peer while the next is built, and
/// is large enough that its frame compresses well across documents.
const SNAPSHOT_BATCH_CHANGE_BYTES: usize = 1024 * 1024;

/// Stored changes [`Session::fill_batch`] reads at once, ahead of the one it takes (a
/// document's changes go in stored order). Held only within one call, and dropped with the
/// document's cursor: at most 64 changes of at most `change_bytes_max` each (64 MiB at the
/// 1 MiB default; some 11 KiB for sensor readings of ~170 bytes).
const READ_AHEAD_CHANGES: usize = 64;

/// Batches one call of [`Session::fill_window`] builds at most. Building a batch costs the
/// sender store reads (and, for snapshots, a document's load and save); frames leave only
/// between calls, so a window of 32 batches built in one go would keep the peer idle until
/// the last of them is ready. The rest of the window is filled by further calls, which the
/// node asks for through its timeout ([`Session::wants_fill`]).
const FILL_BATCHES_PER_CALL: usize = 2;

/// What a change costs in a batch: its bytes and its framing. Signatures are counted as the
/// batch is built ([`BatchBuilder::add_run`], [`BatchBuilder::run_cost`]).
fn batch_cost(change_len: usize, doc: &DocId) -> usize {
    change_len + 16 + doc.as_str().len()
}

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
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Documents sent whole, as snapshots (their changes count in `changes_sent`).
    pub snapshots_sent: u64,
    /// Documents received as snapshots (their changes count as received changes).
    pub snapshots_received: u64,
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
        self.snapshots_sent += other.snapshots_sent;
        self.snapshots_received += other.snapshots_received;
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

/// A protocol violation by the peer (or an incompatibility): the session must close with this
/// code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
}

impl Refusal {
    fn new(code: CloseCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// The limits a session needs from the node's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) batch_bytes_max: u32,
    pub(crate) inflight_batches_max: usize,
    pub(crate) inflight_bytes_max: usize,
    pub(crate) handshake_timeout_ms: u64,
    pub(crate) ack_timeout_ms: u64,
    /// This node sends snapshots (to peers that accept them).
    pub(crate) snapshots: bool,
}

#[derive(Debug)]
struct Inflight {
    sent_ms: u64,
    /// Bytes of the batch's frame (an upper bound).
    bytes: usize,
    clocks: BTreeMap<DocId, VectorClock>,
}

/// A frame waiting for the commit it describes to be durable.
#[derive(Debug)]
struct Outgoing {
    gate: u64,
    frame: Vec<u8>,
    /// For an Ack frame: the clocks it promises are durable here.
    acked: Option<Vec<DocClock>>,
}

/// A frame released by [`Session::poll_transmit`].
pub(crate) struct Released {
    pub(crate) frame: Vec<u8>,
    pub(crate) acked: Option<Vec<DocClock>>,
}

/// Per-peer protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    peer: NodeName,
    /// The peer's fleet identity, as its certificate says.
    peer_id: Identity,
    /// Statements sent to the peer in this session, by node actor: their numbers.
    authors_out: BTreeMap<Actor, u32>,
    /// Statements the peer sent in this session, in order (their numbers are the indices),
    /// verified, with their bytes (kept in the store once a change they prove is).
    authors_in: Vec<(Arc<Author>, Vec<u8>)>,
    /// Documents this session cannot send until they change: their last changes are proven
    /// only by a signed change of the same actor this node has not received yet (it got the
    /// ancestors first: the signed one waited for a dependency, and its session ended). Its
    /// sender sends it again, and then the document goes out. At most one entry per document
    /// this node holds; an entry leaves when its document changes.
    unprovable: BTreeSet<DocId>,
    /// Documents tried as snapshots in this session that go as changes instead: not tried
    /// again until they change. At most one entry per document this node holds; an entry
    /// leaves when its document changes or is dropped.
    as_changes: BTreeSet<DocId>,
    /// The last [`Session::fill_window`] stopped at [`FILL_BATCHES_PER_CALL`] with room left
    /// in the window: the node calls it again before waiting for input.
    more: bool,
    phase: Phase,
    opened_ms: u64,
    decoder: FrameDecoder,
    send_frame_max: u32,
    /// The peer's Hello has [`CAP_DEFLATE`]: large Summary, Changes and Ack frames go deflated.
    peer_deflates: bool,
    /// The peer's Hello has [`CAP_INCARNATION`]: its `Incarnation` comes before its `Author`,
    /// `Changes` and `Ack` messages.
    peer_incarnates: bool,
    /// The peer's `Incarnation` arrived.
    incarnation_in: bool,
    /// The peer's Hello has [`crate::wire::CAP_SLOTS`]: it answers a `SlotQuery`.
    peer_slots: bool,
    /// The peer's Hello has [`crate::wire::CAP_SNAPSHOT`]: it accepts `Snapshots`.
    peer_snapshots: bool,
    /// This node sent its `SlotQuery` at this time (ms) and awaits the answer (a lost frame is
    /// a fault like a lost Ack: the answer is due within the acknowledgement timeout).
    slot_asked: Option<u64>,
    /// The peer's `SlotQuery` was answered (a second one ends the session).
    slot_answered: bool,
    outbox: VecDeque<Outgoing>,
    /// Best lower bound of the peer's durable clock per document.
    known: BTreeMap<DocId, VectorClock>,
    inflight: BTreeMap<u64, Inflight>,
    next_batch: u64,
    queue: BTreeSet<DocId>,
    cursor: Option<(DocId, VecDeque<u64>)>,
    stats: SessionStats,
    introduced: Introduced,
}

/// What a peer's changes added to this node in one session: new documents and new actors
/// (bounded by `Config::session_docs_max` and `Config::session_actors_max`).
/// Bounded: one entry per document this session's changes touched with a new actor, at most
/// `session_actors_max` entries.
#[derive(Clone, Debug, Default)]
pub(crate) struct Introduced {
    pub(crate) docs: usize,
    pub(crate) actors: usize,
    pub(crate) per_doc: BTreeMap<DocId, usize>,
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

impl Session {
    /// A session with `peer` whose receipts are `known`; frames up to `frame_bytes_max` are
    /// accepted from it.
    pub(crate) fn new(
        peer_id: Identity,
        now_ms: u64,
        frame_bytes_max: u32,
        known: BTreeMap<DocId, VectorClock>,
    ) -> Session {
        Session {
            peer: peer_id.name.clone(),
            peer_id,
            authors_out: BTreeMap::new(),
            authors_in: Vec::new(),
            unprovable: BTreeSet::new(),
            as_changes: BTreeSet::new(),
            more: false,
            phase: Phase::AwaitHello,
            opened_ms: now_ms,
            decoder: FrameDecoder::new(frame_bytes_max),
            send_frame_max: FRAME_BYTES_MIN,
            peer_deflates: false,
            peer_incarnates: false,
            incarnation_in: false,
            peer_slots: false,
            peer_snapshots: false,
            slot_asked: None,
            slot_answered: false,
            outbox: VecDeque::new(),
            known,
            inflight: BTreeMap::new(),
            next_batch: 0,
            queue: BTreeSet::new(),
            cursor: None,
            stats: SessionStats::default(),
            introduced: Introduced::default(),
        }
    }

    pub(crate) fn peer(&self) -> &NodeName {
        &self.peer
    }

    /// The peer's fleet identity.
    pub(crate) fn peer_id(&self) -> &Identity {
        &self.peer_id
    }

    /// The statements the peer sent so far, by number.
    pub(crate) fn authors_in(&self) -> &[(Arc<Author>, Vec<u8>)] {
        &self.authors_in
    }

    /// Numbers the peer's next statement.
    pub(crate) fn add_author_in(&mut self, author: Arc<Author>, statement: Vec<u8>) {
        self.authors_in.push((author, statement));
    }

    pub(crate) fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// What this session's peer added so far.
    pub(crate) fn introduced(&mut self) -> &mut Introduced {
        &mut self.introduced
    }

    /// See [`Session::introduced`].
    pub(crate) fn introduced_ref(&self) -> &Introduced {
        &self.introduced
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub(crate) fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    pub(crate) fn awaits_hello(&self) -> bool {
        self.phase == Phase::AwaitHello
    }

    /// No frames waiting, no batches in flight, nothing queued to send.
    pub(crate) fn is_idle(&self) -> bool {
        self.outbox.is_empty()
            && self.inflight.is_empty()
            && self.queue.is_empty()
            && self.cursor.is_none()
    }

    /// The window has room and documents may be waiting for it, but the last fill stopped
    /// after [`FILL_BATCHES_PER_CALL`] batches: fill again before waiting for input.
    pub(crate) fn wants_fill(&self) -> bool {
        self.more && self.phase == Phase::Live
    }

    /// Closed and every frame (the Close among them) handed out: the node may forget it.
    pub(crate) fn is_finished(&self) -> bool {
        self.phase == Phase::Closed && self.outbox.is_empty()
    }

    pub(crate) fn info(&self, id: SessionId) -> SessionInfo {
        SessionInfo {
            id,
            peer: self.peer.clone(),
            live: self.phase == Phase::Live,
            inflight_batches: self.inflight.len(),
            stats: self.stats.clone(),
        }
    }

    fn push(&mut self, gate: u64, msg: &Message) {
        let frame = self.frame(msg);
        self.outbox.push_back(Outgoing {
            gate,
            frame,
            acked: None,
        });
    }

    /// `msg`'s frame: deflated where the peer takes that and it is smaller.
    fn frame(&self, msg: &Message) -> Vec<u8> {
        if self.peer_deflates {
            msg.to_frame_deflated()
        } else {
            msg.to_frame()
        }
    }

    /// Queues this node's Hello.
    pub(crate) fn queue_hello(&mut self, gate: u64, hello: Hello) {
        self.push(gate, &Message::Hello(hello));
    }

    /// Queues `entries` as a Summary, split into frames the peer accepts.
    pub(crate) fn queue_summary(&mut self, gate: u64, entries: Vec<DocClock>) {
        let parts = split_clocks(entries, self.send_frame_max);
        let n = parts.len();
        for (i, entries) in parts.into_iter().enumerate() {
            let last = i + 1 == n;
            self.push(gate, &Message::Summary(Summary { entries, last }));
        }
    }

    /// Queues the acknowledgement of `batch` with this node's clocks, released at `gate`.
    pub(crate) fn queue_ack(&mut self, gate: u64, batch: u64, clocks: Vec<DocClock>) {
        // Acks go to the peer, bounded by what it accepts (at least FRAME_BYTES_MIN).
        let parts = split_clocks(clocks, self.send_frame_max);
        let n = parts.len();
        for (i, clocks) in parts.into_iter().enumerate() {
            let last = i + 1 == n;
            let msg = Message::Ack(Ack {
                batch,
                clocks,
                last,
            });
            let frame = self.frame(&msg);
            // The clocks move on with the frame, to be reported when it is released.
            let Message::Ack(ack) = msg else {
                unreachable!("built as an Ack above")
            };
            self.outbox.push_back(Outgoing {
                gate,
                frame,
                acked: Some(ack.clocks),
            });
        }
    }

    /// Bytes from the transport.
    pub(crate) fn receive(&mut self, bytes: &[u8]) {
        self.stats.bytes_in += bytes.len() as u64;
        self.decoder.push(bytes);
    }

    /// The next complete message received. The frame is decoded here, once.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>, Refusal> {
        match self.decoder.next_message() {
            Ok(Some(m)) => {
                self.stats.frames_in += 1;
                Ok(Some(m))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let code = match e {
                    DecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
                    DecodeError::Malformed(_) | DecodeError::ReasonTooLong => CloseCode::Malformed,
                };
                Err(Refusal::new(code, e.to_string()))
            }
        }
    }

    /// Checks the peer's Hello against the transport's identity and this node's limits; the
    /// session then awaits the peer's Summary.
    pub(crate) fn accept_hello(&mut self, h: &Hello, change_bytes_max: u32) -> Result<(), Refusal> {
        if h.magic != MAGIC {
            return Err(Refusal::new(CloseCode::Malformed, "bad magic"));
        }
        if !(h.version_min..=h.version_max).contains(&PROTOCOL_VERSION) {
            let reason = format!(
                "peer speaks versions {}..={}, this node {PROTOCOL_VERSION}",
                h.version_min, h.version_max
            );
            return Err(Refusal::new(CloseCode::VersionMismatch, reason));
        }
        if h.node != self.peer {
            let reason = format!(
                "hello names {} but the transport authenticated {}",
                h.node, self.peer
            );
            return Err(Refusal::new(CloseCode::IdentityMismatch, reason));
        }
        let need = change_bytes_max + CHANGES_OVERHEAD_BYTES;
        if h.frame_bytes_max < FRAME_BYTES_MIN || h.frame_bytes_max < need {
            let reason = format!(
                "peer accepts frames of {} bytes; this node needs {need}",
                h.frame_bytes_max
            );
            return Err(Refusal::new(CloseCode::LimitsIncompatible, reason));
        }
        self.send_frame_max = h.frame_bytes_max.min(FRAME_BYTES_LIMIT);
        self.peer_deflates = h.capabilities & CAP_DEFLATE != 0;
        self.peer_incarnates = h.capabilities & CAP_INCARNATION != 0;
        self.peer_slots = h.capabilities & crate::wire::CAP_SLOTS != 0;
        self.peer_snapshots = h.capabilities & crate::wire::CAP_SNAPSHOT != 0;
        self.phase = Phase::AwaitSummary;
        Ok(())
    }

    /// The peer's Hello promised an `Incarnation` that has not arrived yet.
    pub(crate) fn awaits_incarnation(&self) -> bool {
        self.peer_incarnates && !self.incarnation_in
    }

    /// Whether the peer's Hello has [`CAP_INCARNATION`].
    pub(crate) fn peer_incarnates(&self) -> bool {
        self.peer_incarnates
    }

    /// The peer's `Incarnation` arrived.
    pub(crate) fn note_incarnation(&mut self) {
        self.incarnation_in = true;
    }

    /// Queues this node's `SlotQuery` for `space` at `now_ms`, if the peer answers one.
    /// Called once per session (from the peer's Hello).
    pub(crate) fn ask_slot(&mut self, gate: u64, space: [u8; 32], now_ms: u64) {
        if self.peer_slots && self.slot_asked.is_none() {
            self.slot_asked = Some(now_ms);
            self.push(gate, &Message::SlotQuery(crate::wire::SlotQuery { space }));
        }
    }

    /// Takes the outstanding `SlotQuery` of this node: false when none is outstanding.
    pub(crate) fn take_slot_question(&mut self) -> bool {
        self.slot_asked.take().is_some()
    }

    /// When the answer to this node's outstanding `SlotQuery` is due, if one is outstanding.
    fn slot_deadline(&self, limits: &Limits) -> Option<u64> {
        self.slot_asked.map(|t| t + limits.ack_timeout_ms)
    }

    /// Whether the answer to this node's `SlotQuery` is overdue at `now_ms`.
    pub(crate) fn slot_overdue(&self, limits: &Limits, now_ms: u64) -> bool {
        self.slot_deadline(limits).is_some_and(|d| d <= now_ms)
    }

    /// Queues the answer to the peer's `SlotQuery`; false if it asked before in this session.
    pub(crate) fn answer_slot(&mut self, gate: u64, answer: crate::wire::SlotAnswer) -> bool {
        if std::mem::replace(&mut self.slot_answered, true) {
            return false;
        }
        self.push(gate, &Message::SlotAnswer(answer));
        true
    }

    /// Queues this node's `Incarnation` (after the peer's Hello, when it has the capability).
    pub(crate) fn queue_incarnation(&mut self, gate: u64, incarnation: Incarnation) {
        self.push(gate, &Message::Incarnation(incarnation));
    }

    /// The peer's store was replaced: it holds none of what it acknowledged before.
    pub(crate) fn forget_known(&mut self) {
        self.known.clear();
    }

    /// This node dropped `doc` (retention): nothing of it is sent any more, and nothing of it
    /// is remembered. Batches in flight keep their clocks until acknowledged.
    pub(crate) fn forget_doc(&mut self, doc: &DocId) {
        self.known.remove(doc);
        self.queue.remove(doc);
        self.as_changes.remove(doc);
        if self.cursor.as_ref().is_some_and(|(d, _)| d == doc) {
            self.cursor = None;
        }
    }

    /// The peer holds at least `clock` of `doc` (from its Summary, an Ack or a batch it sent).
    pub(crate) fn learn(&mut self, doc: &DocId, clock: &VectorClock) {
        self.known.entry(doc.clone()).or_default().merge(clock);
        self.mark_dirty(doc);
    }

    /// `doc` changed locally (or its peer clock did): look at it again when filling the window.
    pub(crate) fn mark_dirty(&mut self, doc: &DocId) {
        // New changes may end the run it could not prove (a signed change whose ancestors
        // arrived first).
        self.unprovable.remove(doc);
        self.as_changes.remove(doc);
        if self.phase == Phase::Live {
            self.queue.insert(doc.clone());
        }
    }

    /// The peer's final Summary frame arrived: go live with every document the peer lacks.
    pub(crate) fn finish_summary(&mut self, docs: &BTreeMap<DocId, DocMeta>) {
        if self.phase != Phase::AwaitSummary {
            return;
        }
        self.phase = Phase::Live;
        let empty = VectorClock::new();
        self.queue = docs
            .iter()
            .filter(|(doc, meta)| !meta.clock.le(self.known.get(*doc).unwrap_or(&empty)))
            .map(|(doc, _)| doc.clone())
            .collect();
    }

    /// A received batch was committed: count it, and learn that the sender holds `received`.
    pub(crate) fn record_received(
        &mut self,
        stats: &SessionStats,
        received: &BTreeMap<DocId, VectorClock>,
    ) {
        self.stats.add(stats);
        for (doc, clock) in received {
            self.known.entry(doc.clone()).or_default().merge(clock);
        }
    }

    /// The peer acknowledged (part of) a batch; its clocks were learnt already. Documents it
    /// still lacks are queued again (a batch it could not fully apply, say after a causal gap).
    pub(crate) fn handle_ack(&mut self, a: &Ack, docs: &BTreeMap<DocId, DocMeta>) {
        if a.last && self.inflight.remove(&a.batch).is_some() {
            self.stats.batches_acked += 1;
        }
        for e in &a.clocks {
            let local = docs.get(&e.doc).map(|m| &m.clock);
            if local.is_some_and(|l| !l.le(&self.known_with_inflight(&e.doc))) {
                self.queue.insert(e.doc.clone());
            }
        }
    }

    /// Bytes of the batches in flight.
    fn inflight_bytes(&self) -> usize {
        self.inflight.values().map(|b| b.bytes).sum()
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

    /// When the session times out unless something arrives.
    pub(crate) fn deadline(&self, limits: &Limits) -> Option<u64> {
        match self.phase {
            Phase::AwaitHello | Phase::AwaitSummary => {
                Some(self.opened_ms + limits.handshake_timeout_ms)
            }
            Phase::Live => self
                .inflight
                .values()
                .map(|b| b.sent_ms + limits.ack_timeout_ms)
                .chain(self.slot_deadline(limits))
                .min(),
            Phase::Closed => None,
        }
    }

    /// The next frame whose gate (commit number) is durable, with the clocks an Ack frame
    /// promises.
    pub(crate) fn poll_transmit(&mut self, durable_seq: u64) -> Option<Released> {
        if self.outbox.front().is_none_or(|o| o.gate > durable_seq) {
            return None;
        }
        let o = self.outbox.pop_front()?;
        self.stats.frames_out += 1;
        self.stats.bytes_out += o.frame.len() as u64;
        Some(Released {
            frame: o.frame,
            acked: o.acked,
        })
    }

    /// Ends the session: drops what was queued and queues a Close. Returns the reason as sent
    /// (cut to [`CLOSE_REASON_BYTES_MAX`]), or `None` if it was already closed.
    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) -> Option<String> {
        if self.phase == Phase::Closed {
            return None;
        }
        let reason = truncate_utf8(reason, CLOSE_REASON_BYTES_MAX).to_string();
        self.phase = Phase::Closed;
        self.outbox.clear();
        self.inflight.clear();
        self.queue.clear();
        self.cursor = None;
        let close = Message::Close(Close {
            code,
            reason: reason.clone(),
        });
        self.push(0, &close);
        Some(reason)
    }

    /// Builds batches of the changes the peer lacks while the window allows; they are released
    /// once commit `gate` is durable. `Ok(Some(reason))` when a change cannot fit the peer's
    /// frame limit.
    pub(crate) fn fill_window<S: Store>(
        &mut self,
        store: &S,
        docs: &BTreeMap<DocId, DocMeta>,
        prover: &mut dyn Prover,
        limits: &Limits,
        now_ms: u64,
        gate: u64,
    ) -> Result<Option<String>, StoreError> {
        self.more = false;
        if self.phase != Phase::Live {
            return Ok(None);
        }
        let frame_room = self.send_frame_max - CHANGES_OVERHEAD_BYTES;
        let budget = limits.batch_bytes_max.min(frame_room) as usize;
        // A document the peer holds nothing of, as far as this node knows, goes in its saved
        // form if it can (`fill_snapshots`), else as changes. Documents go in queue order: a
        // Changes batch ends before such a document, a Snapshots batch before any other.
        let snapshots = limits.snapshots && self.peer_snapshots;
        // The window is counted in bytes (what fills a link) and in batches (each costs the
        // peer one commit and one Ack); at least one batch is always allowed.
        let mut built = 0;
        while self.inflight.len() < limits.inflight_batches_max
            && (self.inflight.is_empty() || self.inflight_bytes() < limits.inflight_bytes_max)
        {
            if built == FILL_BATCHES_PER_CALL {
                self.more = true;
                break;
            }
            // (A document being sent as changes, `cursor`, is finished first.)
            if snapshots && self.next_is_candidate(docs) {
                let snaps = self.fill_snapshots(store, docs, prover, budget, frame_room, gate)?;
                if let Some((docs, sent, bytes, changes)) = snaps {
                    let batch = self.next_batch;
                    self.next_batch += 1;
                    self.stats.changes_sent += changes;
                    self.stats.snapshots_sent += docs.len() as u64;
                    self.inflight.insert(
                        batch,
                        Inflight {
                            sent_ms: now_ms,
                            bytes,
                            clocks: sent,
                        },
                    );
                    self.push(gate, &Message::Snapshots(Snapshots { batch, docs }));
                    built += 1;
                    continue;
                }
            }
            let mut out = BatchBuilder::default();
            if let Some(reason) =
                self.fill_batch(store, docs, prover, budget, frame_room, &mut out, snapshots)?
            {
                return Ok(Some(reason));
            }
            if out.docs.is_empty() {
                if snapshots && self.next_is_candidate(docs) {
                    // The documents before it had nothing to send: it goes as a snapshot.
                    continue;
                }
                break;
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            self.stats.changes_sent += out.changes;
            self.inflight.insert(
                batch,
                Inflight {
                    sent_ms: now_ms,
                    bytes: out.bytes,
                    clocks: std::mem::take(&mut out.sent),
                },
            );
            let docs = self.sign_batch(out, prover, gate);
            let msg = Message::Changes(Changes { batch, docs });
            self.push(gate, &msg);
            built += 1;
        }
        Ok(None)
    }

    /// Whether `doc` is one to try as a snapshot: the peer holds nothing of it as far as this
    /// session knows, it has enough changes to gain from it, and it was not tried already.
    fn snapshot_candidate(&self, doc: &DocId, docs: &BTreeMap<DocId, DocMeta>) -> bool {
        docs.get(doc)
            .is_some_and(|m| m.clock.total() >= SNAPSHOT_MIN_CHANGES)
            && !self.unprovable.contains(doc)
            && !self.as_changes.contains(doc)
            && self.knows_nothing_of(doc)
    }

    /// `known_with_inflight(doc)` is empty, without building it: this is asked of every
    /// queued document a batch reaches.
    fn knows_nothing_of(&self, doc: &DocId) -> bool {
        // (A merge takes no zero entry from the clocks in flight.)
        self.known.get(doc).is_none_or(VectorClock::is_empty)
            && self
                .inflight
                .values()
                .all(|b| b.clocks.get(doc).is_none_or(|c| c.total() == 0))
    }

    /// No document is being sent as changes, and the next one queued is a
    /// [`Session::snapshot_candidate`].
    fn next_is_candidate(&self, docs: &BTreeMap<DocId, DocMeta>) -> bool {
        self.cursor.is_none()
            && self
                .queue
                .first()
                .is_some_and(|d| self.snapshot_candidate(d, docs))
    }

    /// Builds one batch of snapshots from the documents at the front of the queue that are
    /// [`Session::snapshot_candidate`]s: each document whose every change fits one frame of
    /// changes that ends, for every actor, on a provable change (so that its signatures are the
    /// ones a section of those changes would carry, cut points included), and whose saved form
    /// is the smaller. A document that does not qualify stays queued and goes as changes (it
    /// is not tried again). The batch takes documents until it holds
    /// [`SNAPSHOT_BATCH_CHANGE_BYTES`] of changes or `budget` bytes, and never more than the
    /// frame limit (`frame_room`) of either, whatever the saved size of its changes: the
    /// receiver's work is per change. `None` when the first document did not
    /// qualify; else the snapshots, the clocks sent, the batch's bytes and its changes.
    fn fill_snapshots<S: Store>(
        &mut self,
        store: &S,
        docs: &BTreeMap<DocId, DocMeta>,
        prover: &mut dyn Prover,
        budget: usize,
        frame_room: u32,
        gate: u64,
    ) -> Result<Option<SnapshotBatch>, StoreError> {
        let mut out: Vec<DocSnapshot> = Vec::new();
        let mut sent = BTreeMap::new();
        let (mut bytes, mut changes, mut raw_total) = (0usize, 0u64, 0usize);
        while let Some(doc) = self.queue.first().cloned() {
            let full = raw_total >= SNAPSHOT_BATCH_CHANGE_BYTES || bytes >= budget;
            if full || !self.snapshot_candidate(&doc, docs) {
                break;
            }
            let meta = docs.get(&doc).expect("a candidate has metadata");
            if !prover.may_read(&self.peer_id, &doc) {
                // Residency: the peer gets, and hears of, only what it may hold.
                self.queue.remove(&doc);
                continue;
            }
            // Tried once: if it does not go whole now, it goes as changes.
            self.as_changes.insert(doc.clone());
            // The document's whole history as one section, built as a Changes batch is.
            let rest = std::mem::replace(&mut self.queue, BTreeSet::from([doc.clone()]));
            let mut one = BatchBuilder::default();
            let built = self.fill_batch(
                store,
                docs,
                prover,
                frame_room as usize,
                frame_room,
                &mut one,
                false,
            );
            self.queue = rest;
            let whole = self.cursor.take().is_none()
                && one.docs.len() == 1
                && one.sent.get(&doc).is_some_and(|c| meta.clock.le(c));
            if built?.is_some() || !whole {
                continue;
            }
            let raw: usize = one.docs[0].changes.iter().map(|c| c.0.len()).sum();
            if raw < SNAPSHOT_MIN_BYTES {
                continue;
            }
            let Some(saved) = prover.saved(&doc).filter(|s| s.len() < raw) else {
                continue;
            };
            let signatures = one.heads[0].len() + one.cuts[0].chosen.len();
            let cost = batch_cost(saved.len(), &doc) + SIGNED_COST_BYTES * signatures;
            let room = frame_room as usize;
            if !out.is_empty() && (bytes + cost > room || raw_total + raw > room) {
                // It goes whole in the next batch (tried again there).
                self.as_changes.remove(&doc);
                break;
            }
            // Each signed change by actor and sequence number: its place in the document's
            // changes ordered so ([`crate::wire::Signed::change`]).
            let ids: BTreeMap<u32, (Actor, u64)> = one.heads[0]
                .values()
                .map(|(i, c)| (*i, (c.actor, c.seq)))
                .chain(
                    one.cuts[0]
                        .chosen
                        .iter()
                        .map(|(i, c)| (*i, (c.actor, c.seq))),
                )
                .collect();
            let mut offsets = BTreeMap::new();
            let mut total = 0u64;
            for (actor, seq) in meta.clock.iter() {
                offsets.insert(*actor, total);
                total += seq;
            }
            self.queue.remove(&doc);
            self.as_changes.remove(&doc);
            changes += one.changes;
            bytes += cost;
            raw_total += raw;
            sent.insert(doc.clone(), meta.clock.clone());
            let section = self
                .sign_batch(one, prover, gate)
                .pop()
                .expect("one section");
            // (Every signed change is one of `ids`, of an actor of the clock.)
            let signed = section
                .signed
                .into_iter()
                .filter_map(|mut s| {
                    let (actor, seq) = ids.get(&s.change)?;
                    s.change = u32::try_from(offsets.get(actor)? + seq - 1).ok()?;
                    Some(s)
                })
                .collect();
            out.push(DocSnapshot { doc, saved, signed });
        }
        Ok((!out.is_empty()).then_some((out, sent, bytes, changes)))
    }

    /// Adds each section's signatures (per actor: its last change there, and its last change
    /// before each cut point, [`Cuts`]), queueing first the statements of authors this session
    /// has not yet sent.
    fn sign_batch(
        &mut self,
        out: BatchBuilder,
        prover: &mut dyn Prover,
        gate: u64,
    ) -> Vec<DocChanges> {
        let mut docs = out.docs;
        for ((dc, heads), cuts) in docs.iter_mut().zip(out.heads).zip(out.cuts) {
            let mut to_sign: BTreeMap<u32, StoredChange> = heads.into_values().collect();
            to_sign.extend(cuts.chosen);
            for (index, head) in to_sign {
                let Some(author) = head.author else { continue };
                let number = match self.authors_out.get(&author) {
                    Some(n) => *n,
                    None => {
                        let Some(statement) = prover.statement(&author) else {
                            continue;
                        };
                        let n = self.authors_out.len() as u32;
                        self.authors_out.insert(author, n);
                        self.push(gate, &Message::Author(AuthorStatement(statement)));
                        n
                    }
                };
                let Some(sig) = prover.signature(&head) else {
                    continue;
                };
                dc.signed.push(Signed {
                    change: index,
                    author: number,
                    sig,
                });
            }
        }
        docs
    }

    /// Picks the next document with changes the peer lacks and positions the cursor on them
    /// (stored orders, ascending: a causal order). `false` when nothing is left to send, or
    /// when the next document is a [`Session::snapshot_candidate`] and `snapshots` is set (it
    /// goes in a Snapshots batch).
    fn advance_cursor<S: Store>(
        &mut self,
        store: &S,
        docs: &BTreeMap<DocId, DocMeta>,
        prover: &dyn Prover,
        snapshots: bool,
    ) -> Result<bool, StoreError> {
        while self.cursor.is_none() {
            let Some(doc) = self.queue.first() else {
                return Ok(false);
            };
            if snapshots && self.snapshot_candidate(doc, docs) {
                return Ok(false);
            }
            let doc = self.queue.pop_first().expect("first");
            let Some(meta) = docs.get(&doc) else {
                continue;
            };
            // Residency: the peer gets, and hears of, only what it may hold.
            if self.unprovable.contains(&doc) || !prover.may_read(&self.peer_id, &doc) {
                continue;
            }
            let have = self.known_with_inflight(&doc);
            let mut orders = Vec::new();
            for (actor, seqs) in have.missing_from(&meta.clock) {
                let index = store.change_index(&doc, &actor, seqs)?;
                orders.extend(index.into_iter().map(|(_, o, _)| o));
            }
            if !orders.is_empty() {
                // Apply order is a causal order: dependencies are sent first.
                orders.sort_unstable();
                self.cursor = Some((doc, orders.into()));
            }
        }
        Ok(true)
    }

    /// Fills one batch up to `budget` bytes (at least one change). A document's changes join
    /// the batch in runs that end, for every actor in them, on a change whose authorship can
    /// be proven there ([`Prover::sealable`]); a run may pass `budget` to reach such a change,
    /// never the frame limit. With `snapshots`, the batch ends before a document that is a
    /// [`Session::snapshot_candidate`].
    #[allow(clippy::too_many_arguments)]
    fn fill_batch<S: Store>(
        &mut self,
        store: &S,
        docs: &BTreeMap<DocId, DocMeta>,
        prover: &mut dyn Prover,
        budget: usize,
        frame_room: u32,
        out: &mut BatchBuilder,
        snapshots: bool,
    ) -> Result<Option<String>, StoreError> {
        let genesis = genesis_actor();
        while self.advance_cursor(store, docs, &*prover, snapshots)? {
            let (doc, orders) = self.cursor.as_mut().expect("advance_cursor set it");
            let doc = doc.clone();
            let mut run: Vec<StoredChange> = Vec::new();
            let mut run_bytes = 0;
            // The run's actors (but the genesis), kept as it grows so the frame check below
            // costs no pass over the run.
            let mut run_actors: BTreeSet<Actor> = BTreeSet::new();
            let mut unsealed: BTreeSet<Actor> = BTreeSet::new();
            // The document's stored changes are read ahead in order (one range read rather
            // than a point read per change): at most READ_AHEAD_CHANGES at a time.
            let mut ahead: VecDeque<StoredChange> = VecDeque::new();
            while let Some(&order) = orders.front() {
                while ahead.front().is_some_and(|c| c.order < order) {
                    ahead.pop_front();
                }
                if ahead.front().is_none_or(|c| c.order != order) {
                    ahead = store.changes_from(&doc, order, READ_AHEAD_CHANGES)?.into();
                }
                let change = ahead
                    .pop_front()
                    .filter(|c| c.order == order)
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "changes",
                        key: format!("{doc}@{order}"),
                    })?;
                if out
                    .sent
                    .get(&doc)
                    .is_some_and(|c| c.get(&change.actor) >= change.seq)
                {
                    // Already in this batch: the document was queued again (an Ack) while the
                    // batch was being filled.
                    orders.pop_front();
                    continue;
                }
                if change.bytes.len() > frame_room as usize {
                    return Ok(Some(format!(
                        "a change of {} bytes does not fit the peer's frame limit of {}",
                        change.bytes.len(),
                        self.send_frame_max
                    )));
                }
                let cost = batch_cost(change.bytes.len(), &doc);
                let soft = out.bytes + run_bytes + cost > budget;
                let hard = out.bytes
                    + out.run_cost(&doc, &run_actors, run_bytes + cost, &change)
                    + run_bytes
                    + cost
                    > frame_room as usize;
                if out.bytes + run_bytes > 0 && (soft || hard) {
                    if run.is_empty() {
                        return Ok(None);
                    }
                    if hard {
                        // The run cannot end on a provable change within one frame: give it
                        // back and send what is complete.
                        for c in run.iter().rev() {
                            orders.push_front(c.order);
                        }
                        if out.docs.is_empty() {
                            self.unprovable.insert(doc.clone());
                            self.cursor = None;
                            break;
                        }
                        return Ok(None);
                    }
                }
                orders.pop_front();
                let sealable = change.actor != genesis && prover.sealable(&change);
                if change.actor != genesis {
                    if sealable {
                        unsealed.remove(&change.actor);
                    } else {
                        unsealed.insert(change.actor);
                    }
                }
                run_bytes += cost;
                if change.actor != genesis {
                    run_actors.insert(change.actor);
                }
                run.push(change);
                if unsealed.is_empty() {
                    out.add_run(&doc, std::mem::take(&mut run), &run_actors, run_bytes);
                    run_bytes = 0;
                    run_actors.clear();
                }
            }
            if !run.is_empty() {
                // The document's last changes cannot be proven here: never sent.
                self.unprovable.insert(doc.clone());
            }
            self.cursor = None;
        }
        Ok(None)
    }
}

/// A batch of snapshots: the snapshots, the clocks sent, the batch's bytes and its changes.
type SnapshotBatch = (Vec<DocSnapshot>, BTreeMap<DocId, VectorClock>, usize, u64);

/// One Changes batch being assembled.
#[derive(Default)]
struct BatchBuilder {
    docs: Vec<DocChanges>,
    /// Per entry of `docs`: the last change of each actor (but the genesis actor) and its index.
    heads: Vec<BTreeMap<Actor, (u32, StoredChange)>>,
    /// Per entry of `docs`: its cut points' signatures.
    cuts: Vec<Cuts>,
    sent: BTreeMap<DocId, VectorClock>,
    /// Bytes the batch's frame will take, signatures included (an upper bound).
    bytes: usize,
    changes: u64,
}

/// The cut points of one section: at the last run boundary before the section's frame bytes
/// since the previous cut point (its changes and the signatures a cut there carries) pass
/// `SEAL_BYTES`, every actor whose last change so far is not signed yet is signed there. A run
/// boundary is a point where every actor's last change is sealable, so a cut is always
/// possible there; taking the last one before the bound keeps two consecutive gaps above
/// `SEAL_BYTES` (at most two cuts per `SEAL_BYTES`), and each cut signs only actors that wrote
/// since the previous one. A receiver stores each signature, so the points it can cut at are
/// as dense.
#[derive(Default)]
struct Cuts {
    /// The changes signed at cut points: (index in the section, change without its bytes).
    chosen: BTreeMap<u32, StoredChange>,
    /// Per actor: its last change since the previous cut point (not signed by a cut yet).
    pending: BTreeMap<Actor, (u32, StoredChange)>,
    /// Frame bytes of the changes since the previous cut point.
    since: usize,
    /// The last run boundary since then: the changes a cut there signs, and `since` there.
    candidate: Option<(Vec<(u32, StoredChange)>, usize)>,
}

impl Cuts {
    /// Whether adding a run of `len` frame bytes of changes by `actors` cuts at the candidate
    /// first, and what that costs: the gap since the previous cut would pass `SEAL_BYTES` with
    /// it, counting the signatures a cut after it would carry (one per actor pending or in
    /// the run).
    fn cut_cost<'a>(&self, len: usize, actors: impl IntoIterator<Item = &'a Actor>) -> usize {
        let new = actors
            .into_iter()
            .filter(|a| !self.pending.contains_key(a))
            .count();
        let gap = self.since + SIGNED_COST_BYTES * (self.pending.len() + new) + len;
        match &self.candidate {
            Some((sign, _)) if gap > SEAL_BYTES => SIGNED_COST_BYTES * sign.len(),
            _ => 0,
        }
    }

    /// Cuts at the candidate if a run of `len` more frame bytes by `actors` would pass
    /// `SEAL_BYTES`: returns the bytes the signatures add.
    fn before_run<'a>(&mut self, len: usize, actors: impl IntoIterator<Item = &'a Actor>) -> usize {
        let cost = self.cut_cost(len, actors);
        if cost == 0 {
            return 0;
        }
        let (sign, at) = self.candidate.take().expect("cut_cost saw it");
        for (i, c) in sign {
            if self.pending.get(&c.actor).is_some_and(|(j, _)| *j == i) {
                self.pending.remove(&c.actor);
            }
            self.chosen.insert(i, c);
        }
        self.since -= at;
        cost
    }

    /// A change at `index` that takes `len` frame bytes.
    fn add(&mut self, index: u32, change: &StoredChange, len: usize) {
        self.since += len;
        self.pending.insert(change.actor, (index, change.clone()));
    }

    /// The end of a run: a point the section can be cut at.
    fn end_run(&mut self) {
        self.candidate = (!self.pending.is_empty()).then(|| {
            let sign = self.pending.values().cloned().collect();
            (sign, self.since)
        });
    }
}

impl BatchBuilder {
    /// The signature bytes that adding a run of `doc`'s changes (its actors `run_actors`, but
    /// the genesis, and then `next`; `len` frame bytes of changes in all, [`batch_cost`]) adds
    /// to the batch at most: one per actor new to the section, and those of a cut point the
    /// run passes.
    fn run_cost(
        &self,
        doc: &DocId,
        run_actors: &BTreeSet<Actor>,
        len: usize,
        next: &StoredChange,
    ) -> usize {
        let genesis = genesis_actor();
        let section = self
            .docs
            .last()
            .filter(|last| &last.doc == doc)
            .map(|_| self.docs.len() - 1);
        let next_new = next.actor != genesis && !run_actors.contains(&next.actor);
        let is_new = |a: &Actor| section.is_none_or(|k| !self.heads[k].contains_key(a));
        let new_actors = run_actors.iter().filter(|a| is_new(a)).count()
            + usize::from(next_new && is_new(&next.actor));
        let actors = run_actors
            .iter()
            .chain((next.actor != genesis).then_some(&next.actor));
        let cut = section.map_or(0, |k| self.cuts[k].cut_cost(len, actors));
        SIGNED_COST_BYTES * new_actors + cut
    }

    /// Adds a run of `doc`'s changes (its actors `actors`, but the genesis; `cost` frame bytes)
    /// that ends, for each of its actors, on a provable change.
    fn add_run(
        &mut self,
        doc: &DocId,
        run: Vec<StoredChange>,
        actors: &BTreeSet<Actor>,
        cost: usize,
    ) {
        if self.docs.last().is_none_or(|last| &last.doc != doc) {
            self.docs.push(DocChanges {
                doc: doc.clone(),
                changes: Vec::new(),
                signed: Vec::new(),
            });
            self.heads.push(BTreeMap::new());
            self.cuts.push(Cuts::default());
        }
        let dc = self.docs.last_mut().expect("pushed");
        let heads = self.heads.last_mut().expect("pushed");
        let cuts = self.cuts.last_mut().expect("pushed");
        let genesis = genesis_actor();
        let sent = self.sent.entry(doc.clone()).or_default();
        self.bytes += cost + cuts.before_run(cost, actors);
        for mut c in run {
            self.changes += 1;
            sent.observe(c.actor, c.seq);
            let bytes = std::mem::take(&mut c.bytes);
            let len = batch_cost(bytes.len(), doc);
            if c.actor == genesis {
                cuts.since += len;
            } else {
                let index = dc.changes.len() as u32;
                cuts.add(index, &c, len);
                if heads.insert(c.actor, (index, c)).is_none() {
                    self.bytes += SIGNED_COST_BYTES;
                }
            }
            dc.changes.push(ChangeBytes(bytes));
        }
        cuts.end_run();
    }
}
