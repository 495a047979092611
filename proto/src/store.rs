//! The storage seam: a synchronous, fallible [`Store`] whose writes are atomic batches, and
//! [`MemStore`], an in-memory implementation that can simulate a crash.
//!
//! Durability contract: [`Store::commit`] applies a batch atomically and makes it visible to
//! later reads at once; it becomes *durable* later, and in commit order. The shell learns when
//! (an fsync returned, or at once for a store that persists on write) and tells the node with
//! [`crate::Node::handle_durable`]. The node acknowledges nothing before that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{DocId, NodeName};
use crate::vclock::{Actor, VectorClock};
use crate::wire::Incarnation;

/// Version of the logical schema behind this trait (document metadata, change index,
/// snapshots, receipts). Stored in [`NodeMeta`]; a store written by a newer version is refused.
/// Version 5 added the ingest journal: a build before it would not fold journaled readings,
/// so it must not open a store this one wrote. Version 6 added actor slots
/// ([`NodeMeta::slot_space`], [`NodeMeta::actor_slot`], [`NodeMeta::settled`]).
pub const LOGICAL_SCHEMA_VERSION: u32 = 6;

/// Node-wide metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// [`LOGICAL_SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// The node that owns this store.
    pub name: NodeName,
    /// Random id of this store, fixed at creation. Peers key their receipts by it, so a node
    /// whose store was wiped is recognised and resynchronised in full.
    pub store_id: [u8; 16],
    /// Raised, durably, on every open (shown in status; counts restarts).
    pub incarnation: u64,
    /// Epoch of this node's authoring actor, raised only when an open cannot prove that
    /// nothing this node authored and sent was lost (hazard 2); 0 in a store written before
    /// actors were kept. Part of the actor derivation.
    pub actor_epoch: u64,
    /// Random bytes chosen when the epoch was raised; part of the actor derivation, so that
    /// two opens that both raise from the same stored epoch (the first one's record lost)
    /// still take different actors.
    pub actor_nonce: [u8; 16],
    /// True from an open until a clean stop is recorded: found true by an open, the previous
    /// run ended without one.
    pub running: bool,
    /// Fingerprint of the key the current actor epoch signs with ([`crate::trust::Trust::key_id`]):
    /// an open with another key takes a new epoch, so a node actor is bound to one key for
    /// ever. Logical schema version 4.
    pub author_key: [u8; 32],
    /// The slot space of the certificate the node authors under when it is slot-bound
    /// ([`crate::trust::Signer::slot_space`]); zeros otherwise. Logical schema version 6.
    pub slot_space: [u8; 32],
    /// The slot of the current node actor in `slot_space`; [`crate::trust::ACTOR_SLOTS`] once
    /// every slot is spent (the node then authors nothing until its certificate is renewed).
    pub actor_slot: u32,
    /// Whether the slot is settled: false for a store that does not know whether its
    /// certificate authored elsewhere (a new store, a restored copy) until a peer told it the
    /// highest slot it keeps of that certificate. An unsettled node journals readings and
    /// authors no change.
    pub settled: bool,
}

/// Per-document metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocMeta {
    /// Changes held, as a vector clock.
    pub clock: VectorClock,
    /// Apply-order number the next change will get. Equals the number of changes held.
    pub next_order: u64,
    /// Changes with an order below this are contained in the snapshot (of a pruned document:
    /// were dropped; those from here on were received since and wait to be forwarded).
    pub snapshot_order: u64,
    /// The content was pruned once every peer the node forwards to acknowledged it
    /// (store-and-forward): only the clock is kept, so the document is known as held.
    /// Logical schema version 3.
    pub pruned: bool,
}

/// One stored change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChange {
    /// Position in this replica's apply order for the document; a causal order.
    pub order: u64,
    /// Author.
    pub actor: Actor,
    /// Author's sequence number.
    pub seq: u64,
    /// Automerge change hash.
    pub hash: [u8; 32],
    /// The change as Automerge encodes it.
    pub bytes: Vec<u8>,
    /// The node actor of its author, proven by an authorship statement this node keeps
    /// ([`Store::author`]); `None` for the genesis change only. Logical schema version 4.
    pub author: Option<Actor>,
    /// The author's signature of this change, when it came with one (the last change of its
    /// actor in a received batch) or this node signed it. Changes without one are proven by a
    /// later signed change of the same actor they are an ancestor of.
    pub sig: Option<Vec<u8>>,
}

/// What a node remembers of one peer: which store it last talked to, and per document the
/// clock that peer acknowledged holding durably (a receipt).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReceipts {
    /// The peer's store id the receipts belong to.
    pub store_id: Option<[u8; 16]>,
    /// Per document, what the peer acknowledged.
    pub clocks: BTreeMap<DocId, VectorClock>,
    /// Per document, the clock this node last reported to the peer (in a Summary or Ack): what
    /// the peer believes this node holds. A document whose clock differs is summarised on the
    /// next connect, so the peer does not resend changes this node got elsewhere.
    pub reported: BTreeMap<DocId, VectorClock>,
    /// The newest run of the peer's store (`store_id`) this node accepted
    /// ([`crate::wire::Incarnation`]); `None` before the first, for a peer that does not send
    /// one, and after the peer's store id changed.
    pub seen: Option<Incarnation>,
}

/// One event of the node's change feed, in commit order under its cursor ([`WriteOp::PutFeed`]):
/// a reading that became durable here, or a change to a generic document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// The document.
    pub doc: DocId,
    /// The reading, as its id and canonical body ([`crate::Reading::encode`]); `None` for a
    /// change to a generic document.
    pub reading: Option<(String, String)>,
    /// The peer the change came from; `None` when this node wrote it.
    pub origin: Option<NodeName>,
}

/// One write in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Replace the node metadata.
    PutNodeMeta(NodeMeta),
    /// Add a change (indexed by (doc, order) and (doc, actor, seq)).
    PutChange {
        /// Document.
        doc: DocId,
        /// The change.
        change: StoredChange,
    },
    /// Replace a document's metadata.
    PutDocMeta {
        /// Document.
        doc: DocId,
        /// Metadata.
        meta: DocMeta,
    },
    /// Replace a document's snapshot (an Automerge `save`).
    PutSnapshot {
        /// Document.
        doc: DocId,
        /// Changes with an order below this are in the snapshot.
        covers_order: u64,
        /// The saved document.
        bytes: Vec<u8>,
    },
    /// Forget a peer's receipts and reported clocks, then record its current store id. The
    /// incarnation seen ([`WriteOp::PutPeerSeen`]) is kept while the store id stays the same.
    ResetPeer {
        /// Peer.
        peer: NodeName,
        /// The peer's store id.
        store_id: [u8; 16],
    },
    /// Record the newest run of the peer's store `store_id` this node accepted; read back
    /// ([`PeerReceipts::seen`]) only while `store_id` is the peer's recorded store id.
    PutPeerSeen {
        /// Peer.
        peer: NodeName,
        /// The peer's store id.
        store_id: [u8; 16],
        /// The run accepted.
        seen: Incarnation,
    },
    /// Replace the clock last reported to a peer.
    PutReported {
        /// Peer.
        peer: NodeName,
        /// Document.
        doc: DocId,
        /// What the peer was told.
        clock: VectorClock,
    },
    /// Drop a document's content (changes, index entries, snapshot), keeping its metadata and
    /// receipts: a pruned document.
    DropContent {
        /// Document.
        doc: DocId,
    },
    /// Forget a document whole: its metadata, changes, index entries, snapshot and journaled readings, and what
    /// each listed peer acknowledged of it or was told about it. A store keeps nothing of it.
    DropDoc {
        /// Document.
        doc: DocId,
        /// Every peer this node holds receipts or reported clocks for.
        peers: Vec<NodeName>,
    },
    /// Keep an authorship statement (node-wide; never dropped with a document).
    PutAuthor {
        /// The node actor it binds.
        node_actor: Actor,
        /// The statement as received (or made, for this node's own).
        statement: Vec<u8>,
    },
    /// Keep the statement of the highest slot known of a slot space (replaces the one kept):
    /// what a node answers a peer asking which slots its certificate spent. One entry per
    /// certificate whose changes this node holds.
    PutSlot {
        /// The slot space.
        space: [u8; 32],
        /// The slot.
        slot: u32,
        /// Its statement.
        statement: Vec<u8>,
    },
    /// Replace a receipt.
    PutReceipt {
        /// Peer.
        peer: NodeName,
        /// Document.
        doc: DocId,
        /// What the peer acknowledged.
        clock: VectorClock,
    },
    /// Add a feed event under `cursor` (above every cursor before it).
    PutFeed {
        /// The event's cursor.
        cursor: u64,
        /// The event.
        event: FeedEvent,
    },
    /// Drop the feed events with a cursor below `below`.
    TrimFeed {
        /// The first cursor kept.
        below: u64,
    },
    /// Journal a reading of `doc` (acknowledged once durable, folded into an Automerge change
    /// later: [`crate::Node::ingest`]).
    PutJournal {
        /// The sensor document (bucket) it goes to.
        doc: DocId,
        /// The reading's id.
        id: String,
        /// Its canonical stored body ([`crate::Reading::encode`]).
        body: String,
    },
    /// Drop journaled readings of `doc` (folded by the change in the same batch).
    DeleteJournal {
        /// The document.
        doc: DocId,
        /// The readings' ids.
        ids: Vec<String>,
    },
}

/// Writes applied together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The writes, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Adds a write.
    pub fn push(&mut self, op: WriteOp) {
        self.ops.push(op);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An earlier write failed; the store refuses all writes until reopened.
    #[error("store is poisoned by an earlier failed write; restart the node")]
    Poisoned,
    /// A stored value failed its checksum or did not decode.
    #[error("corrupt value in {table} at key {key}")]
    Corrupt {
        /// Table (column family) name.
        table: &'static str,
        /// Key, printed.
        key: String,
    },
    /// The backend failed.
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The durable state of one node, as the core needs it.
pub trait Store {
    /// Node metadata, absent for a new store.
    fn node_meta(&self) -> Result<Option<NodeMeta>, StoreError>;
    /// Every document's metadata.
    fn docs(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError>;
    /// Every peer's receipts.
    fn peers(&self) -> Result<Vec<(NodeName, PeerReceipts)>, StoreError>;
    /// The document's snapshot and the order it covers up to (exclusive).
    fn snapshot(&self, doc: &DocId) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Up to `limit` changes of `doc` with order `>= from_order`, ascending by order.
    fn changes_from(
        &self,
        doc: &DocId,
        from_order: u64,
        limit: usize,
    ) -> Result<Vec<StoredChange>, StoreError>;
    /// `(seq, order, hash)` of the changes by `actor` in `doc` with `seq` in `seqs`, ascending.
    fn change_index(
        &self,
        doc: &DocId,
        actor: &Actor,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, u64, [u8; 32])>, StoreError>;
    /// The change at `order`.
    fn change_at(&self, doc: &DocId, order: u64) -> Result<Option<StoredChange>, StoreError>;
    /// The authorship statement kept for `node_actor`.
    fn author(&self, node_actor: &Actor) -> Result<Option<Vec<u8>>, StoreError>;
    /// The highest slot kept of `space`, with its statement ([`WriteOp::PutSlot`]).
    fn slot(&self, space: &[u8; 32]) -> Result<Option<(u32, Vec<u8>)>, StoreError>;
    /// Up to `limit` feed events with a cursor above `after`, ascending.
    fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, FeedEvent)>, StoreError>;
    /// Visits the feed's events with a cursor above `after`, ascending, while `visit` returns
    /// true: a scan of any length in one pass, holding one event at a time.
    fn feed_scan(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, FeedEvent) -> bool,
    ) -> Result<(), StoreError>;
    /// The lowest and the highest cursor held, if any.
    fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError>;
    /// Every journaled reading not yet folded: (document, id, canonical body), in no
    /// particular order. Read once, when the node opens.
    fn journal(&self) -> Result<Vec<(DocId, String, String)>, StoreError>;
    /// Applies `batch` atomically. Visible to reads at once; durable later, in commit order.
    /// After an error the store is poisoned.
    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError>;
}

#[derive(Clone, Debug, Default, PartialEq)]
struct MemState {
    meta: Option<NodeMeta>,
    docs: BTreeMap<DocId, DocMeta>,
    snapshots: BTreeMap<DocId, (u64, Vec<u8>)>,
    changes: BTreeMap<(DocId, u64), StoredChange>,
    index: BTreeMap<(DocId, Actor, u64), (u64, [u8; 32])>,
    peers: BTreeMap<NodeName, PeerReceipts>,
    /// What [`WriteOp::PutPeerSeen`] recorded, by peer, with its store id.
    seen: BTreeMap<NodeName, ([u8; 16], Incarnation)>,
    authors: BTreeMap<Actor, Vec<u8>>,
    slots: BTreeMap<[u8; 32], (u32, Vec<u8>)>,
    feed: BTreeMap<u64, FeedEvent>,
    journal: BTreeMap<(DocId, String), String>,
}

impl MemState {
    fn apply(&mut self, batch: WriteBatch) {
        for op in batch.ops {
            match op {
                WriteOp::PutNodeMeta(m) => self.meta = Some(m),
                WriteOp::PutChange { doc, change } => {
                    let key = (doc.clone(), change.actor, change.seq);
                    self.index.insert(key, (change.order, change.hash));
                    self.changes.insert((doc, change.order), change);
                }
                WriteOp::PutDocMeta { doc, meta } => {
                    self.docs.insert(doc, meta);
                }
                WriteOp::PutSnapshot {
                    doc,
                    covers_order,
                    bytes,
                } => {
                    self.snapshots.insert(doc, (covers_order, bytes));
                }
                WriteOp::ResetPeer { peer, store_id } => {
                    let seen = self.seen.get(&peer).filter(|(s, _)| *s == store_id);
                    let fresh = PeerReceipts {
                        store_id: Some(store_id),
                        seen: seen.map(|(_, i)| *i),
                        ..PeerReceipts::default()
                    };
                    self.peers.insert(peer, fresh);
                }
                WriteOp::PutPeerSeen {
                    peer,
                    store_id,
                    seen,
                } => {
                    self.seen.insert(peer.clone(), (store_id, seen));
                    if let Some(r) = self.peers.get_mut(&peer) {
                        if r.store_id == Some(store_id) {
                            r.seen = Some(seen);
                        }
                    }
                }
                WriteOp::PutAuthor {
                    node_actor,
                    statement,
                } => {
                    self.authors.insert(node_actor, statement);
                }
                WriteOp::PutSlot {
                    space,
                    slot,
                    statement,
                } => {
                    self.slots.insert(space, (slot, statement));
                }
                WriteOp::PutReceipt { peer, doc, clock } => {
                    self.peers
                        .entry(peer)
                        .or_default()
                        .clocks
                        .insert(doc, clock);
                }
                WriteOp::PutReported { peer, doc, clock } => {
                    self.peers
                        .entry(peer)
                        .or_default()
                        .reported
                        .insert(doc, clock);
                }
                WriteOp::DropContent { doc } => {
                    self.snapshots.remove(&doc);
                    self.changes.retain(|(d, _), _| *d != doc);
                    self.index.retain(|(d, _, _), _| *d != doc);
                }
                WriteOp::PutFeed { cursor, event } => {
                    self.feed.insert(cursor, event);
                }
                WriteOp::TrimFeed { below } => {
                    self.feed = self.feed.split_off(&below);
                }
                WriteOp::PutJournal { doc, id, body } => {
                    self.journal.insert((doc, id), body);
                }
                WriteOp::DeleteJournal { doc, ids } => {
                    for id in ids {
                        self.journal.remove(&(doc.clone(), id));
                    }
                }
                WriteOp::DropDoc { doc, peers } => {
                    self.journal.retain(|(d, _), _| *d != doc);
                    self.docs.remove(&doc);
                    self.snapshots.remove(&doc);
                    self.changes.retain(|(d, _), _| *d != doc);
                    self.index.retain(|(d, _, _), _| *d != doc);
                    for p in peers {
                        if let Some(r) = self.peers.get_mut(&p) {
                            r.clocks.remove(&doc);
                            r.reported.remove(&doc);
                        }
                    }
                }
            }
        }
    }
}

/// An in-memory [`Store`] for tests and the simulator. It keeps what is durable apart from
/// what is only committed, so [`MemStore::crash`] can lose exactly the writes not yet made
/// durable by [`MemStore::sync`], and it can be told to fail writes.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    visible: MemState,
    durable: MemState,
    unsynced: Vec<WriteBatch>,
    poisoned: bool,
    fail_commits: u32,
    commits: u64,
    synced_commits: u64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every committed batch durable. Returns how many commits are now durable in total.
    pub fn sync(&mut self) -> u64 {
        for batch in self.unsynced.drain(..) {
            self.durable.apply(batch);
        }
        self.synced_commits = self.commits;
        self.synced_commits
    }

    /// Simulates a crash or power cut: every write not yet durable is lost, and the poison of
    /// a failed write is cleared (the process that saw it is gone).
    pub fn crash(&mut self) {
        self.visible = self.durable.clone();
        self.unsynced.clear();
        self.poisoned = false;
        self.fail_commits = 0;
        self.commits = self.synced_commits;
    }

    /// The next `n` commits fail (and poison the store).
    pub fn fail_next_commits(&mut self, n: u32) {
        self.fail_commits = n;
    }

    /// Commits made, durable or not (since the last crash, counting those that survived).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// True once a write failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Commits made durable so far (what survives [`MemStore::crash`]).
    pub fn durable_commits(&self) -> u64 {
        self.synced_commits
    }

    /// Every document's metadata in the durable state (what a crash would leave).
    pub fn durable_docs(&self) -> &BTreeMap<DocId, DocMeta> {
        &self.durable.docs
    }

    /// The document's clock in the durable state (what a crash would leave).
    pub fn durable_clock(&self, doc: &DocId) -> Option<&VectorClock> {
        self.durable.docs.get(doc).map(|m| &m.clock)
    }

    /// The body of reading `id` of `doc` in the durable journal, if it is there.
    pub fn durable_journal(&self, doc: &DocId, id: &str) -> Option<&str> {
        self.durable
            .journal
            .get(&(doc.clone(), id.to_string()))
            .map(String::as_str)
    }

    /// The durable state's snapshot of `doc` and its changes after it, in order (what a
    /// reopen after a crash would load).
    pub fn durable_content(&self, doc: &DocId) -> (Option<&[u8]>, Vec<&[u8]>) {
        let snap = self.durable.snapshots.get(doc);
        let from = snap.map_or(0, |(covers, _)| *covers);
        let changes = self
            .durable
            .changes
            .range((doc.clone(), from)..)
            .take_while(|((d, _), _)| d == doc)
            .map(|(_, c)| c.bytes.as_slice())
            .collect();
        (snap.map(|(_, b)| b.as_slice()), changes)
    }
}

impl Store for MemStore {
    fn node_meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        Ok(self.visible.meta.clone())
    }

    fn docs(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError> {
        Ok(self
            .visible
            .docs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn peers(&self) -> Result<Vec<(NodeName, PeerReceipts)>, StoreError> {
        Ok(self
            .visible
            .peers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn snapshot(&self, doc: &DocId) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.visible.snapshots.get(doc).cloned())
    }

    fn changes_from(
        &self,
        doc: &DocId,
        from_order: u64,
        limit: usize,
    ) -> Result<Vec<StoredChange>, StoreError> {
        Ok(self
            .visible
            .changes
            .range((doc.clone(), from_order)..=(doc.clone(), u64::MAX))
            .take(limit)
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn change_index(
        &self,
        doc: &DocId,
        actor: &Actor,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, u64, [u8; 32])>, StoreError> {
        Ok(self
            .visible
            .index
            .range((doc.clone(), *actor, *seqs.start())..=(doc.clone(), *actor, *seqs.end()))
            .map(|((_, _, seq), (order, hash))| (*seq, *order, *hash))
            .collect())
    }

    fn change_at(&self, doc: &DocId, order: u64) -> Result<Option<StoredChange>, StoreError> {
        Ok(self.visible.changes.get(&(doc.clone(), order)).cloned())
    }

    fn author(&self, node_actor: &Actor) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.visible.authors.get(node_actor).cloned())
    }

    fn slot(&self, space: &[u8; 32]) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
        Ok(self.visible.slots.get(space).cloned())
    }

    fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, FeedEvent)>, StoreError> {
        Ok(self
            .visible
            .feed
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn feed_scan(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, FeedEvent) -> bool,
    ) -> Result<(), StoreError> {
        for (k, v) in self.visible.feed.range(after.saturating_add(1)..) {
            if !visit(*k, v.clone()) {
                break;
            }
        }
        Ok(())
    }

    fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let f = &self.visible.feed;
        Ok(f.first_key_value()
            .zip(f.last_key_value())
            .map(|((a, _), (b, _))| (*a, *b)))
    }

    fn journal(&self) -> Result<Vec<(DocId, String, String)>, StoreError> {
        Ok(self
            .visible
            .journal
            .iter()
            .map(|((d, id), body)| (d.clone(), id.clone(), body.clone()))
            .collect())
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            self.poisoned = true;
            return Err(StoreError::Backend("injected write failure".into()));
        }
        self.visible.apply(batch.clone());
        self.unsynced.push(batch);
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> DocId {
        DocId::new("d").unwrap()
    }

    fn change(order: u64, seq: u64) -> WriteOp {
        WriteOp::PutChange {
            doc: doc(),
            change: StoredChange {
                order,
                actor: Actor([1; 16]),
                seq,
                hash: [order as u8; 32],
                bytes: vec![1, 2],
                author: Some(Actor([9; 16])),
                sig: None,
            },
        }
    }

    // A crash keeps what was synced and loses, whole, every batch that was not.
    #[test]
    fn crash_loses_only_unsynced_batches() {
        let mut s = MemStore::new();
        s.commit(WriteBatch {
            ops: vec![change(0, 1)],
        })
        .unwrap();
        assert_eq!(s.sync(), 1);
        s.commit(WriteBatch {
            ops: vec![change(1, 2), change(2, 3)],
        })
        .unwrap();
        assert_eq!(
            s.change_index(&doc(), &Actor([1; 16]), 1..=9)
                .unwrap()
                .len(),
            3,
            "visible before sync"
        );
        s.crash();
        let idx = s.change_index(&doc(), &Actor([1; 16]), 1..=9).unwrap();
        assert_eq!(idx, vec![(1, 0, [0; 32])]);
        assert!(s.change_at(&doc(), 1).unwrap().is_none());
        assert_eq!(s.commits(), 1);
    }

    // A failed write poisons the store until the simulated restart.
    #[test]
    fn failure_poisons() {
        let mut s = MemStore::new();
        s.fail_next_commits(1);
        assert!(s
            .commit(WriteBatch {
                ops: vec![change(0, 1)]
            })
            .is_err());
        assert!(matches!(
            s.commit(WriteBatch::default()),
            Err(StoreError::Poisoned)
        ));
        assert!(
            s.change_at(&doc(), 0).unwrap().is_none(),
            "failed batch left nothing"
        );
        s.crash();
        assert!(s
            .commit(WriteBatch {
                ops: vec![change(0, 1)]
            })
            .is_ok());
    }

    // MemStore passes the store conformance suite; "reopen" is a sync then a crash.
    #[test]
    fn conformance() {
        crate::conformance::check_store(MemStore::new, |mut s| {
            s.sync();
            s.crash();
            s
        });
    }

    // Range reads return changes in order and respect the limit.
    #[test]
    fn changes_from_is_ordered_and_bounded() {
        let mut s = MemStore::new();
        s.commit(WriteBatch {
            ops: (0..5).map(|i| change(i, i + 1)).collect(),
        })
        .unwrap();
        let got: Vec<u64> = s
            .changes_from(&doc(), 2, 2)
            .unwrap()
            .iter()
            .map(|c| c.order)
            .collect();
        assert_eq!(got, vec![2, 3]);
    }
}
