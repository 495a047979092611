//! The replica of a document set: documents loaded on demand, local writes, and the persist
//! step that every write goes through. Remote changes are in `remote.rs`; driving the sync
//! sessions (`crate::sync`) is in `peering.rs`. The dependency runs one way: the node drives
//! sessions, sessions know nothing of the node.

mod authorship;
mod feed;
mod journal;
mod peering;
mod remote;
mod streams;

pub use feed::{Cursor, FeedPage, FeedReadError, FEED_TRIM_INTERVAL_MS};
pub use journal::Folded;
pub use streams::PruneStatus;

use std::collections::{btree_map, BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use automerge::{Automerge, Change, ChangeHash, ObjId};
use serde_json::Value as Json;

use crate::authz::Access;
use crate::doc::{self, DocKind, IngestOutcome, PatchError, SensorView};
use crate::id::{derive_actor, DocId, NodeName};
use crate::reading::ReadingError;
use crate::store::{
    DocMeta, NodeMeta, PeerReceipts, Store, StoreError, StoredChange, WriteBatch, WriteOp,
    LOGICAL_SCHEMA_VERSION,
};
use crate::sync::{Session, SessionId, SessionStats};
use crate::trust::{name_space, slot_actor, Author, Trust, ACTOR_SLOTS};
use crate::vclock::{Actor, VectorClock, CLOCK_ACTORS_MAX};
use crate::wire::{
    CloseCode, DocClock, CHANGES_OVERHEAD_BYTES, FRAME_BYTES_LIMIT, FRAME_BYTES_MIN,
};

/// A bug planted on purpose so that the simulator's checkers can prove they catch it. Only in
/// builds with the `testing` feature (the simulator and tests enable it; release builds of the
/// daemon never contain these bugs).
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Canary {
    /// No planted bug.
    #[default]
    None,
    /// Acknowledge ingests and peer batches before they are durable.
    AckBeforePersist,
    /// Record some remote changes in the clock and store without applying them.
    DropRemoteChange,
    /// Record local changes one sequence number too high in the vector clock.
    VcOffByOne,
    /// Answer merge patches before they are durable.
    PatchAckBeforePersist,
}

/// Limits and tunables of one node. `Config::new` gives defaults tuned for a gateway with
/// 256-512 MiB of memory on a flaky uplink.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name (the name in its certificate).
    pub name: NodeName,
    /// Largest inbound frame accepted and announced to peers. Default 4 MiB.
    pub frame_bytes_max: u32,
    /// Largest change this node creates or accepts. Default 1 MiB. Every peer's frame limit
    /// must leave room for it.
    pub change_bytes_max: u32,
    /// Target size of one Changes batch (at least one change is always sent). Default 256 KiB:
    /// large enough to amortise framing, small enough that an ack comes back quickly.
    pub batch_bytes_max: u32,
    /// Unacknowledged batches per session. Default 32 (each costs the receiver a commit and
    /// an Ack; [`Config::inflight_bytes_max`] is the bound that fills a link).
    pub inflight_batches_max: usize,
    /// Unacknowledged bytes per session (batch frames; one batch is always allowed). Default
    /// 4 MiB: keeps a 100 ms link busy at 40 MB/s, and a receiver that applies changes slower
    /// than they arrive holds at most this much of one peer in its queues.
    pub inflight_bytes_max: u32,
    /// A batch unacknowledged this long ends the session (it is retransmitted on reconnect).
    /// Default 30 s.
    pub ack_timeout_ms: u64,
    /// Hello and Summary must complete within this. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Remote changes held waiting for their dependencies, over all documents. Default 10,000.
    pub pending_changes_max: usize,
    /// Bytes of those changes, over all documents and peers. Default 64 MiB: a gateway's
    /// memory budget allows it, and a peer resends what it could not buffer.
    pub pending_bytes_max: usize,
    /// Bytes of those changes that one peer sent, so no peer fills the buffer for the others.
    /// Default 16 MiB.
    pub pending_peer_bytes_max: usize,
    /// New actors one session's changes may add to one document. Default 64. A session that
    /// reaches it keeps what it applied and ends with `Overloaded`; the next session goes on,
    /// so a relay carrying many writers' actors still gets them all through, while a peer
    /// minting actors is slowed to this many per document per handshake (and named in the
    /// log and the metric). Counting per session, not per peer for ever, is deliberate: a
    /// relay would be charged for every actor it forwards, and one hostile node's flood would
    /// then stop the honest relays' documents fleet-wide.
    pub session_doc_actors_max: usize,
    /// Documents one session's changes may create on this node. Default 50,000: a 10,000-
    /// document reconcile, or a week of hourly documents of 250 sensors, fits in one session.
    pub session_docs_max: usize,
    /// Actors one session's changes may add to this node's documents, over all documents.
    /// Default 50,000.
    pub session_actors_max: usize,
    /// Documents kept loaded in memory. Default 1,024.
    pub docs_loaded_max: usize,
    /// A new snapshot is written after this many changes since the last one. Default 512:
    /// loading replays at most this many changes one by one.
    pub snapshot_changes_min: u64,
    /// Snapshot transfer: this node accepts documents it holds nothing of in their saved form
    /// (its Hello has [`crate::wire::CAP_SNAPSHOT`]), and sends them so to peers that accept
    /// it. Default on.
    pub snapshot_transfer: bool,
    /// Whether the shell's durability reports ([`Node::handle_durable`]) survive a power cut.
    /// When false (a shell that reports a commit durable once written, not synced, and so may
    /// send frames a power cut takes back), an open after an unclean stop takes a new actor,
    /// since a change that peers hold may have been lost here and its sequence number would
    /// be reused (hazard 2). Default true; edgesync reports only fsynced commits in both of
    /// its durability modes and keeps it true.
    pub keep_actor_after_crash: bool,
    /// Width of a stream's buckets in reading time (ms): readings ingested into a stream go
    /// into one sensor document per bucket ([`crate::stream`]). Default one hour. Must divide
    /// a day, so buckets align with UTC days. Only where this node writes: every node reads
    /// and keeps buckets of any width.
    pub bucket_ms: u64,
    /// Retention: buckets whose span ended more than this long before now are dropped, not
    /// taken again from peers, and ingests into them are refused. `None` (default) keeps
    /// everything.
    pub keep_ms: Option<u64>,
    /// Store-and-forward pruning: the peers that must all have durably acknowledged a closed
    /// bucket before this node drops its content ([`Node::prune`]). Empty (default): no
    /// pruning.
    pub prune_after_ack: Vec<NodeName>,
    /// The change feed ([`Node::feed`]) keeps at most this many events; older ones are dropped
    /// by [`Node::trim_feed`] (as are, from its head, events of documents no longer held).
    /// A shell that trims with [`Node::trim_feed_if_due`] lets it pass the bound by at most
    /// 1/64 of it (at most 65,536 events) plus what one of its turns adds.
    /// 0 keeps no feed. Default 1,000,000.
    pub feed_events_max: u64,
    /// A bucket is closed, and may be pruned, this long after its span ended. Default 10
    /// minutes: readings that late still land in it here.
    pub prune_grace_ms: u64,
    /// Who this node is, how it signs, whom it believes, and the fleet's rules. Default
    /// [`Trust::local`]: no fleet identity, so local writes only and nothing synced.
    pub trust: Trust,
    /// Authorship statements a session may introduce (the `Author` messages it numbers; each
    /// at most [`crate::trust::STATEMENT_BYTES_MAX`], kept for the session). Default 1,024:
    /// a site's writers with their epochs many times over; a relay carrying more authors
    /// goes on in the next session, as with the other session limits.
    pub session_authors_max: usize,
    /// The ingest journal ([`Node::ingest`]): a journaled reading is folded into an Automerge
    /// change at most this long after it was journaled (ms; [`Node::poll_timeout`] asks for
    /// the call), or before anything reads, syncs or drops its document. Default 100: a
    /// fold's cost (one Automerge change per document) is shared by the readings of 100 ms.
    pub journal_fold_ms: u64,
    /// Journaled readings held in all (in memory and in the store) before an ingest folds
    /// them all at once. Default 4,096 (at most 32 MiB of readings at the reading size
    /// limit; well under 1 MiB for readings of a few fields).
    pub journal_readings_max: usize,
    /// Whether a store that cannot know which actor slots its certificate spent elsewhere (a
    /// new store, a restored copy; [`crate::trust::ACTOR_SLOTS`]) waits to learn it from a
    /// peer before authoring: until a peer answers (its first session with one), the node
    /// journals readings (up to [`Config::unsettled_readings_max`]), shows and sends none of
    /// them, and refuses patches ([`NodeError::Unsettled`]). False (default): the store takes
    /// the slot its own metadata names at once. edgesync sets it for a node that dials peers.
    pub settle_from_peers: bool,
    /// Readings an unsettled node journals before it refuses more ([`NodeError::Unsettled`]).
    /// Default 65,536 (at most 16 MiB in memory for readings of 256 bytes).
    pub unsettled_readings_max: usize,
    /// A planted bug for checker tests (feature `testing` only).
    #[cfg(feature = "testing")]
    pub danger_canary: Canary,
}

/// True when the planted bug `c` is switched on; always false without the `testing` feature,
/// so the planted code paths compile away.
macro_rules! planted {
    ($cfg:expr, $canary:ident) => {{
        #[cfg(feature = "testing")]
        let on = $cfg.danger_canary == $crate::node::Canary::$canary;
        #[cfg(not(feature = "testing"))]
        let on = false;
        on
    }};
}
pub(crate) use planted;

impl Config {
    /// Defaults for a node named `name`.
    pub fn new(name: NodeName) -> Config {
        Config {
            name,
            frame_bytes_max: 4 * 1024 * 1024,
            change_bytes_max: 1024 * 1024,
            batch_bytes_max: 256 * 1024,
            inflight_batches_max: 32,
            inflight_bytes_max: 4 * 1024 * 1024,
            ack_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            pending_changes_max: 10_000,
            pending_bytes_max: 64 << 20,
            pending_peer_bytes_max: 16 << 20,
            session_doc_actors_max: 64,
            session_docs_max: 50_000,
            session_actors_max: 50_000,
            docs_loaded_max: 1024,
            snapshot_changes_min: 512,
            snapshot_transfer: true,
            keep_actor_after_crash: true,
            bucket_ms: 3_600_000,
            keep_ms: None,
            prune_after_ack: Vec::new(),
            feed_events_max: 1_000_000,
            prune_grace_ms: 600_000,
            trust: Trust::local(),
            session_authors_max: 1024,
            journal_fold_ms: 100,
            journal_readings_max: 4096,
            settle_from_peers: false,
            unsettled_readings_max: 65_536,
            #[cfg(feature = "testing")]
            danger_canary: Canary::None,
        }
    }

    /// Checks the limits against each other and the protocol's bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_LIMIT).contains(&self.frame_bytes_max) {
            return Err(format!(
                "frame_bytes_max {} is outside {FRAME_BYTES_MIN}..={FRAME_BYTES_LIMIT}",
                self.frame_bytes_max
            ));
        }
        if self.change_bytes_max < 1024
            || self.change_bytes_max + CHANGES_OVERHEAD_BYTES > self.frame_bytes_max
        {
            return Err(format!(
                "change_bytes_max {} must be at least 1024 and leave {CHANGES_OVERHEAD_BYTES} bytes within frame_bytes_max {}",
                self.change_bytes_max, self.frame_bytes_max
            ));
        }
        let change = self.change_bytes_max as usize;
        if self.pending_peer_bytes_max < change
            || self.pending_bytes_max < self.pending_peer_bytes_max
        {
            return Err(format!(
                "pending_peer_bytes_max {} must hold one change ({change}) and be at most pending_bytes_max {}",
                self.pending_peer_bytes_max, self.pending_bytes_max
            ));
        }
        if self.session_doc_actors_max == 0
            || self.session_docs_max == 0
            || self.session_actors_max == 0
        {
            return Err(
                "session_doc_actors_max, session_docs_max and session_actors_max must be positive"
                    .into(),
            );
        }
        if self.journal_readings_max == 0 || self.unsettled_readings_max == 0 {
            return Err("journal_readings_max and unsettled_readings_max must be positive".into());
        }
        if self.batch_bytes_max == 0
            || self.inflight_batches_max == 0
            || self.inflight_bytes_max == 0
            || self.docs_loaded_max == 0
        {
            return Err(
                "batch_bytes_max, inflight_batches_max, inflight_bytes_max and docs_loaded_max \
                 must be positive"
                    .into(),
            );
        }
        if self.ack_timeout_ms == 0
            || self.handshake_timeout_ms == 0
            || self.snapshot_changes_min == 0
        {
            return Err("timeouts and snapshot_changes_min must be positive".into());
        }
        if !(crate::stream::BUCKET_MS_MIN..=crate::stream::BUCKET_MS_MAX).contains(&self.bucket_ms)
            || !crate::stream::BUCKET_MS_MAX.is_multiple_of(self.bucket_ms)
        {
            return Err(format!(
                "bucket_ms {} must divide a day ({}) and be at least {}",
                self.bucket_ms,
                crate::stream::BUCKET_MS_MAX,
                crate::stream::BUCKET_MS_MIN
            ));
        }
        if self.keep_ms == Some(0) {
            return Err("keep_ms must be positive".into());
        }
        if self.session_authors_max == 0 {
            return Err("session_authors_max must be positive".into());
        }
        Ok(())
    }
}

/// What the shell supplies at open: fresh randomness the core may not make itself.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    /// Fresh random bytes for this boot: the nonce of a new actor epoch if this open takes one
    /// (hazard 2).
    pub nonce: [u8; 16],
    /// Random id for a store created by this open; ignored for an existing store.
    pub new_store_id: [u8; 16],
}

/// Opening a node failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store was written by a newer schema.
    #[error(
        "store has schema version {found}, newer than the supported {supported}; upgrade edgesync"
    )]
    NewerSchema {
        /// In the store.
        found: u32,
        /// Supported by this build.
        supported: u32,
    },
    /// The store holds documents written before signed authorship (logical schema 4): their
    /// changes carry no authorship any peer accepts.
    #[error(
        "store has schema version {found} and holds documents written before signed authorship; their changes cannot be synced: move the data directory away and start empty (peers send everything again)"
    )]
    BeforeAuthorship {
        /// In the store.
        found: u32,
    },
    /// The store belongs to another node.
    #[error("store belongs to node {stored}, not {configured}")]
    NameMismatch {
        /// Name in the store.
        stored: NodeName,
        /// Configured name.
        configured: NodeName,
    },
    /// Reading or writing the store failed.
    #[error("store failed while opening")]
    Store(#[from] StoreError),
}

/// A node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An earlier write failed: the node accepts nothing more until restarted.
    #[error("node is poisoned by a failed store write; restart it")]
    Poisoned,
    /// The store failed (the node is now poisoned).
    #[error("store failed")]
    Store(#[from] StoreError),
    /// A reading was refused.
    #[error("invalid reading")]
    Reading(#[from] ReadingError),
    /// A merge patch was refused.
    #[error("invalid merge patch")]
    Patch(#[from] PatchError),
    /// The operation does not fit the document's kind.
    #[error("document {doc} is a {actual:?} document")]
    KindMismatch {
        /// Document.
        doc: DocId,
        /// Its kind.
        actual: DocKind,
    },
    /// The change would exceed `change_bytes_max`; nothing was written.
    #[error("change of {len} bytes exceeds the limit of {max}")]
    ChangeTooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A document would name more actors than [`CLOCK_ACTORS_MAX`].
    #[error("document {doc} already has {max} actors")]
    TooManyActors {
        /// Document.
        doc: DocId,
        /// The limit.
        max: usize,
    },
    /// A sensor document whose readings map a change removed or replaced: it takes no more
    /// readings (refusing such changes on receipt is the remedy; this keeps the node up).
    #[error("sensor document {doc} has no readings map")]
    NoReadingsMap {
        /// Document.
        doc: DocId,
    },
    /// The document cannot be shown as JSON (it nests deeper than a view goes).
    #[error("document {doc} cannot be shown as JSON")]
    View {
        /// Document.
        doc: DocId,
        /// Why.
        #[source]
        source: doc::ViewError,
    },
    /// The name cannot be a stream's.
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
    /// A reading written straight into a bucket lies outside the bucket's span.
    #[error("reading {id} at {ts_ms} ms lies outside the bucket {doc}")]
    OutsideBucket {
        /// The bucket.
        doc: DocId,
        /// The reading.
        id: String,
        /// Its timestamp.
        ts_ms: i64,
    },
    /// A reading's timestamp is beyond what a stream's bucket ids can name.
    #[error("reading {id} has timestamp {ts_ms} ms, beyond the last a stream holds ({max})")]
    TooFarAhead {
        /// The reading.
        id: String,
        /// Its timestamp.
        ts_ms: i64,
        /// The limit (exclusive).
        max: i64,
    },
    /// A reading older than this node's retention: its bucket has been, or is about to be,
    /// dropped.
    #[error(
        "reading {id} at {ts_ms} ms is older than this node keeps (retention drops buckets that ended before {horizon_ms} ms)"
    )]
    Expired {
        /// The reading.
        id: String,
        /// Its timestamp.
        ts_ms: i64,
        /// Buckets ending at or before this are dropped.
        horizon_ms: u64,
    },
    /// Readings into a bucket this node already forwarded and pruned.
    #[error(
        "bucket {doc} was forwarded to every upstream peer and pruned here; readings that late cannot be taken by this node"
    )]
    Pruned {
        /// The bucket.
        doc: DocId,
    },
    /// The fleet's rules do not let this node write the document.
    #[error("{node} may not write {doc} under the fleet's rules")]
    Forbidden {
        /// The document.
        doc: DocId,
        /// This node's identity, printed.
        node: String,
    },
    /// A stored document failed to load.
    #[error("document {doc} failed to load: {reason}")]
    Load {
        /// Document.
        doc: DocId,
        /// Why.
        reason: String,
    },
    /// This node's store does not know yet which actor slots its certificate spent elsewhere
    /// ([`Config::settle_from_peers`]): it authors nothing until a peer tells it, and holds at
    /// most [`Config::unsettled_readings_max`] journaled readings meanwhile.
    #[error(
        "this node is waiting to learn its actor slot from a peer (a new or restored store): {what}"
    )]
    Unsettled {
        /// What waits.
        what: &'static str,
    },
    /// Every actor slot of this node's certificate is spent ([`crate::trust::ACTOR_SLOTS`]):
    /// it authors nothing until it runs with a renewed certificate.
    #[error(
        "every one of the {max} actor slots of this node's certificate is spent (each restore or new store under it takes one); renew the certificate"
    )]
    ActorSlotsExhausted {
        /// The number of slots a certificate has.
        max: u32,
    },
    /// Automerge refused the change that folds journaled readings into a document (the
    /// readings stay journaled).
    #[error("readings could not be written into {doc}: {reason}")]
    Fold {
        /// Document.
        doc: DocId,
        /// Automerge's reason.
        reason: String,
    },
}

/// A stored document failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The recorded vector clock does not describe the changes the document holds.
    #[error("clock of {doc} is {recorded:?} but the document holds {held:?}")]
    ClockMismatch {
        /// Document.
        doc: DocId,
        /// The clock in the document's metadata.
        recorded: VectorClock,
        /// The clock recomputed from the document's changes.
        held: VectorClock,
    },
    /// The document could not be loaded.
    #[error("document failed to load")]
    Load(#[from] NodeError),
}

/// Where a document change came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A local write through this node's API.
    Local,
    /// Changes received from a peer.
    Remote(NodeName),
}

/// Something the shell should know; see [`Node::poll_event`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A document gained changes (already committed; durable at `durable_at`).
    DocChanged {
        /// Document.
        doc: DocId,
        /// Source.
        origin: Origin,
    },
    /// A session ended. The shell drains [`Node::poll_transmit`] (a Close frame may be
    /// waiting), then drops the transport.
    SessionClosed {
        /// Session.
        session: SessionId,
        /// Peer.
        peer: NodeName,
        /// Why; `None` when the transport was lost.
        code: Option<CloseCode>,
        /// Detail.
        reason: String,
        /// True when the peer sent the Close.
        by_peer: bool,
    },
    /// A peer's session is about to close with `Overloaded` because its input reached one of
    /// this node's limits (named as in the README's limits table: `pending_bytes`,
    /// `peer_doc_actors`, `session_docs`, ...). Shells count it per peer and limit.
    LimitExceeded {
        /// The peer.
        peer: NodeName,
        /// Which limit.
        limit: &'static str,
    },
    /// A document was dropped whole: a bucket past this node's retention.
    DocDropped {
        /// The document.
        doc: DocId,
    },
    /// Journaled readings were folded into their documents' changes ([`Node::fold_journal`]).
    Folded(Folded),
    /// A fold due by time failed (a store failure also poisons the node); the readings stay
    /// journaled and the fold is tried again after [`Config::journal_fold_ms`].
    FoldFailed {
        /// Why, for the log.
        reason: String,
    },
    /// This node learned its actor slot ([`Config::settle_from_peers`]) from `peer`'s answer
    /// and authors from now on.
    Settled {
        /// The peer that answered.
        peer: NodeName,
        /// The slot taken ([`crate::trust::ACTOR_SLOTS`] when none is left).
        slot: u32,
    },
    /// A peer holds a statement of this node's certificate for a slot at or above the one
    /// this node authors under, bound to another authoring key: another store runs, or ran,
    /// under this certificate (a copied certificate, or a data directory wiped while a peer
    /// that knew its slots was out of reach). Its changes and this node's may collide; the
    /// remedy is a new certificate for one of them.
    SlotConflict {
        /// The peer that told.
        peer: NodeName,
        /// The slot it named.
        slot: u32,
    },
    /// An Ack frame was just released by [`Node::poll_transmit`]: this node told `peer` that
    /// it durably holds `clocks`. Shells may count it; the simulator audits the promise.
    Acknowledged {
        /// Session.
        session: SessionId,
        /// Peer told.
        peer: NodeName,
        /// The clocks promised durable.
        clocks: Vec<DocClock>,
    },
}

/// Result of an ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// Per reading, in input order.
    pub outcomes: Vec<IngestOutcome>,
    /// Per reading, in input order: the document (bucket) it went to.
    pub docs: Vec<DocId>,
    /// The readings are durable once [`Node::durable_seq`] reaches this.
    pub durable_at: u64,
}

/// Result of a merge patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patched {
    /// False when the patch changed nothing.
    pub changed: bool,
    /// The change is durable once [`Node::durable_seq`] reaches this.
    pub durable_at: u64,
}

struct Loaded {
    doc: Automerge,
    used: u64,
    /// The readings map of a sensor document, once looked up ([`Node::readings_map`]).
    readings: Option<ObjId>,
    /// The document's own actor's last sequence number and change, once looked up
    /// ([`Node::own_last`]).
    own_last: Option<(Actor, u64, Option<ChangeHash>)>,
}

/// One node's replica of its document set, and its sync sessions. Deterministic: no I/O, no
/// clock, no randomness of its own. See the crate documentation for the call protocol.
pub struct Node<S: Store> {
    cfg: Config,
    store: S,
    meta: NodeMeta,
    actor: Actor,
    docs: BTreeMap<DocId, DocMeta>,
    loaded: BTreeMap<DocId, Loaded>,
    use_tick: u64,
    pending: remote::CausalBuffer,
    peers: BTreeMap<NodeName, PeerReceipts>,
    sessions: BTreeMap<SessionId, Session>,
    /// Counters of sessions that ended.
    ended_stats: SessionStats,
    next_session: u64,
    commit_seq: u64,
    durable_seq: u64,
    now_ms: u64,
    events: VecDeque<Event>,
    poisoned: bool,
    dirty: BTreeSet<DocId>,
    /// Whether the previous run recorded a clean stop.
    last_stop_clean: bool,
    /// Verified authors by node actor: a cache of what the store's statements prove, at most
    /// [`AUTHORS_CACHED_MAX`] entries (cleared when full; the store keeps every statement).
    authors: BTreeMap<Actor, Arc<Author>>,
    /// The change feed's cursors (see [`feed`]).
    feed: feed::FeedState,
    /// This open's id, sent with the incarnation ([`crate::wire::Incarnation`]): derived from
    /// the boot's nonce, so each open has its own.
    boot_id: [u8; 16],
    /// Journaled readings not yet folded (see [`journal`]).
    journal: journal::Journal,
    /// The journal holds readings taken while the node was unsettled (or found at open).
    journaled_unsettled: bool,
    /// Buckets by the end of their span, for retention ([`Node::expire`]) to find those past
    /// the horizon without parsing every document's id at every turn. Kept only with
    /// [`Config::keep_ms`] set; holds at most one entry per bucket held (a document dropped
    /// other than by retention leaves its entry until the horizon passes it).
    expiry: BTreeSet<(u64, DocId)>,
}

/// Loads `doc` from `store` (snapshot, then the changes after it, in order), whose metadata
/// says it holds changes up to order `next_order`.
fn load_stored<S: Store>(store: &S, doc: &DocId, next_order: u64) -> Result<Automerge, NodeError> {
    load_stored_from(store, doc, next_order, store.snapshot(doc)?)
}

/// [`load_stored`] from `snapshot`, the store's snapshot of `doc` already read.
fn load_stored_from<S: Store>(
    store: &S,
    doc: &DocId,
    next_order: u64,
    snapshot: Option<(u64, Vec<u8>)>,
) -> Result<Automerge, NodeError> {
    let load_err = |reason: String| NodeError::Load {
        doc: doc.clone(),
        reason,
    };
    let (mut am, mut from) = match snapshot {
        Some((covers, bytes)) => (
            Automerge::load(&bytes).map_err(|e| load_err(e.to_string()))?,
            covers,
        ),
        None => (Automerge::new(), 0),
    };
    loop {
        let chunk = store.changes_from(doc, from, 256)?;
        let Some(last) = chunk.last() else { break };
        from = last.order + 1;
        let changes = chunk
            .iter()
            // Parsed as remote bytes are: a store is input too, and a corrupted change must be
            // a load error, not a panic.
            .map(|c| crate::chunk::parse(&c.bytes, usize::MAX).map_err(|e| load_err(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        am.apply_changes(changes)
            .map_err(|e| load_err(e.to_string()))?;
    }
    if from < next_order {
        return Err(load_err(format!(
            "store holds changes up to order {from}, metadata says {next_order}"
        )));
    }
    Ok(am)
}

/// The id of the open `boot` is for: a hash of its nonce (the nonce itself may become an actor
/// epoch's, which is not sent as such).
fn boot_id(boot: &Boot) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"edgesync boot id");
    h.update(&boot.nonce);
    let mut id = [0; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

/// The node actor `meta` names: a slot actor of its slot space, or (for a store without one)
/// the one its epoch and nonce derive.
fn node_actor(name: &NodeName, meta: &NodeMeta) -> Actor {
    if meta.slot_space != [0; 32] {
        slot_actor(&meta.slot_space, meta.actor_slot)
    } else {
        derive_actor(name, meta.actor_epoch, &meta.actor_nonce)
    }
}

/// Adds to `ops` this node's own statement for `actor` (kept like any other author's, so that
/// its changes go out with it) and, under a slot-bound certificate, the slot it spends (what
/// the node answers a peer asking for its certificate's slots). Nothing for a node that does
/// not sign or has no settled slot left to author under.
fn own_statement<S: Store>(
    store: &S,
    trust: &Trust,
    meta: &NodeMeta,
    actor: Actor,
    ops: &mut Vec<WriteOp>,
) -> Result<(), StoreError> {
    let Some(signer) = &trust.signer else {
        return Ok(());
    };
    let slotted = meta.slot_space != [0; 32];
    if slotted && (!meta.settled || meta.actor_slot >= ACTOR_SLOTS) {
        return Ok(());
    }
    let statement = signer.statement(&actor);
    if slotted {
        let slot = crate::trust::Slot {
            space: meta.slot_space,
            index: meta.actor_slot,
        };
        raise_slot(store, ops, slot, &statement)?;
    }
    ops.push(WriteOp::PutAuthor {
        node_actor: actor,
        statement,
    });
    Ok(())
}

/// Adds to `ops` the statement of `slot` as its space's highest kept slot
/// ([`WriteOp::PutSlot`]), unless the store, or `ops` already, keeps that slot or a higher one.
fn raise_slot<S: Store>(
    store: &S,
    ops: &mut Vec<WriteOp>,
    slot: crate::trust::Slot,
    statement: &[u8],
) -> Result<(), StoreError> {
    let pending = ops.iter().any(|op| {
        matches!(op, WriteOp::PutSlot { space, slot: s, .. }
            if *space == slot.space && *s >= slot.index)
    });
    if !pending && store.slot(&slot.space)?.is_none_or(|(k, _)| k < slot.index) {
        ops.push(WriteOp::PutSlot {
            space: slot.space,
            slot: slot.index,
            statement: statement.to_vec(),
        });
    }
    Ok(())
}

/// Verified authors kept in memory.
const AUTHORS_CACHED_MAX: usize = 4096;

/// Who wrote a change being recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum By {
    /// The shared genesis of a sensor document (no author).
    Genesis,
    /// This node, under its current node actor (signed when sent).
    Local,
    /// A proven remote author, with its signature if the change came with one.
    Remote {
        /// The author's node actor.
        author: Actor,
        /// Its signature.
        sig: Option<Vec<u8>>,
    },
}

impl<S: Store> Node<S> {
    /// Opens the node over `store`: creates the store's metadata if new, raises the
    /// incarnation, settles the authoring actor, marks the store as running, and loads
    /// document metadata and receipts (not documents).
    ///
    /// The actor stays the same across clean stops, and across unclean ones when
    /// [`Config::keep_actor_after_crash`] holds; otherwise (and for a store that never had
    /// one) the open takes a new actor epoch with this boot's nonce.
    pub fn open(mut store: S, cfg: Config, boot: Boot) -> Result<Node<S>, OpenError> {
        cfg.validate().map_err(OpenError::Config)?;
        let mut last_stop_clean = true;
        let space = cfg.trust.signer.as_ref().and_then(|s| s.slot_space());
        // Without a signer a node authors under its name's slots, which its first slot-bound
        // certificate binds too: what it wrote before it had one syncs once it has.
        let unsigned_space = name_space(&cfg.name);
        let meta = match store.node_meta()? {
            None => NodeMeta {
                schema_version: LOGICAL_SCHEMA_VERSION,
                name: cfg.name.clone(),
                store_id: boot.new_store_id,
                incarnation: 1,
                actor_epoch: 1,
                actor_nonce: boot.nonce,
                running: true,
                author_key: cfg.trust.key_id(),
                slot_space: match (&cfg.trust.signer, space) {
                    (None, _) => unsigned_space,
                    (Some(_), sp) => sp.unwrap_or([0; 32]),
                },
                actor_slot: 0,
                // A new store cannot know whether its certificate authored elsewhere.
                settled: space.is_none() || !cfg.settle_from_peers,
            },
            Some(m) => {
                if m.schema_version > LOGICAL_SCHEMA_VERSION {
                    return Err(OpenError::NewerSchema {
                        found: m.schema_version,
                        supported: LOGICAL_SCHEMA_VERSION,
                    });
                }
                if m.schema_version < 4 && !store.docs()?.is_empty() {
                    return Err(OpenError::BeforeAuthorship {
                        found: m.schema_version,
                    });
                }
                if m.name != cfg.name {
                    return Err(OpenError::NameMismatch {
                        stored: m.name,
                        configured: cfg.name,
                    });
                }
                last_stop_clean = !m.running;
                // Epoch 0: a store from before stable actors, whose actor cannot be rebuilt. A
                // new signing key: a node actor stays bound to the key its statement names.
                // An open without a signer (`edgesync check`, a node not provisioned yet) keeps
                // the binding it found. The first open with a signer adopts the actor that wrote
                // without one (those are this node's own changes: its statement proves them);
                // only a change from one key to another takes a new epoch.
                let signs = cfg.trust.signer.is_some();
                let key = if signs {
                    cfg.trust.key_id()
                } else {
                    m.author_key
                };
                let rebound = m.author_key != key && m.author_key != [0; 32];
                let new_actor =
                    m.actor_epoch == 0 || (m.running && !cfg.keep_actor_after_crash) || rebound;
                // Under a slot-bound certificate a new epoch is the next slot; another
                // certificate (or the first slot-bound one) starts at its slot 0, settled only
                // if this node need not ask its peers. An open without a signer keeps what it
                // found.
                let (slot_space, actor_slot, settled) = match space {
                    // The first certificate of a store that wrote without one adopts its name's
                    // slot (and keeps authoring under it: every certificate of the name binds
                    // it, and one from before slots binds any actor).
                    _ if signs && m.slot_space == unsigned_space => (
                        m.slot_space,
                        (m.actor_slot + u32::from(new_actor)).min(ACTOR_SLOTS),
                        m.settled,
                    ),
                    None if signs => ([0; 32], 0, true),
                    None => (m.slot_space, m.actor_slot, m.settled),
                    Some(sp) if sp != m.slot_space => (sp, 0, !cfg.settle_from_peers),
                    // After an unclean stop whose durability reports did not survive it, the
                    // slots taken since the last durable record are unknown here, as for a
                    // restored copy.
                    Some(sp) => (
                        sp,
                        (m.actor_slot + u32::from(new_actor)).min(ACTOR_SLOTS),
                        m.settled
                            && !(m.running && !cfg.keep_actor_after_crash && cfg.settle_from_peers),
                    ),
                };
                NodeMeta {
                    schema_version: LOGICAL_SCHEMA_VERSION,
                    incarnation: m.incarnation + 1,
                    actor_epoch: m.actor_epoch + u64::from(new_actor),
                    actor_nonce: if new_actor { boot.nonce } else { m.actor_nonce },
                    running: true,
                    author_key: key,
                    slot_space,
                    actor_slot,
                    settled,
                    ..m
                }
            }
        };
        let actor = node_actor(&cfg.name, &meta);
        let mut ops = vec![WriteOp::PutNodeMeta(meta.clone())];
        own_statement(&store, &cfg.trust, &meta, actor, &mut ops)?;
        store.commit(WriteBatch { ops })?;
        let docs: BTreeMap<DocId, DocMeta> = store.docs()?.into_iter().collect();
        let expiry = match cfg.keep_ms {
            Some(_) => docs.keys().filter_map(streams::expiry_entry).collect(),
            None => BTreeSet::new(),
        };
        let peers = store.peers()?.into_iter().collect();
        let feed = feed::FeedState::open(store.feed_bounds()?.map(|(_, last)| last));
        // Readings journaled before the last stop are folded at the first timer or read.
        let (journal, _unparsed) = journal::Journal::open(store.journal()?);
        Ok(Node {
            cfg,
            store,
            meta,
            actor,
            docs,
            loaded: BTreeMap::new(),
            use_tick: 0,
            pending: remote::CausalBuffer::default(),
            peers,
            sessions: BTreeMap::new(),
            ended_stats: SessionStats::default(),
            next_session: 0,
            commit_seq: 1,
            durable_seq: 0,
            now_ms: 0,
            events: VecDeque::new(),
            poisoned: false,
            dirty: BTreeSet::new(),
            last_stop_clean,
            authors: BTreeMap::new(),
            feed,
            boot_id: boot_id(&boot),
            journal,
            journaled_unsettled: true,
            expiry,
        })
    }

    /// Whether the run before this open recorded a clean stop ([`Node::record_clean_stop`]).
    pub fn last_stop_was_clean(&self) -> bool {
        self.last_stop_clean
    }

    /// Records that this node stops cleanly: every commit before this one counts, so the next
    /// open may keep the actor even where a crash would not ([`Config::keep_actor_after_crash`]).
    /// Returns the commit number the shell must make durable; the node authors nothing after
    /// it. A store written only up to a prefix of its commits loses this record with the rest,
    /// and the next open then treats the stop as unclean.
    pub fn record_clean_stop(&mut self) -> Result<u64, NodeError> {
        self.fold_journal()?;
        let meta = NodeMeta {
            running: false,
            ..self.meta.clone()
        };
        let seq = self.commit(WriteBatch {
            ops: vec![WriteOp::PutNodeMeta(meta.clone())],
        })?;
        self.meta = meta;
        Ok(seq)
    }

    /// Gives this store a new identity because it is a copy of an earlier state of a store (a
    /// restored backup, a cloned disk image): its peers' receipts for its old store id may name
    /// changes it no longer holds, and changes it authored after the copy was taken may have
    /// left under sequence numbers it would take again. It takes `boot`'s new store id (a peer
    /// meeting a new store id forgets its receipts and sends everything the node's summary
    /// lacks) and a new actor epoch with `boot`'s nonce. Only before any session.
    pub fn renew_store(&mut self, boot: &Boot) -> Result<(), NodeError> {
        assert!(
            self.sessions.is_empty(),
            "a store is renewed before any session"
        );
        // A copy cannot know which slots the store it copies spent after the copy was taken:
        // it takes the next one and, when it may ask, asks its peers first.
        let slotted = self.meta.slot_space != [0; 32];
        let meta = NodeMeta {
            store_id: boot.new_store_id,
            actor_epoch: self.meta.actor_epoch + 1,
            actor_nonce: boot.nonce,
            actor_slot: (self.meta.actor_slot + u32::from(slotted)).min(ACTOR_SLOTS),
            settled: !slotted || !self.cfg.settle_from_peers,
            ..self.meta.clone()
        };
        let actor = node_actor(&self.cfg.name, &meta);
        let mut ops = vec![WriteOp::PutNodeMeta(meta.clone())];
        own_statement(&self.store, &self.cfg.trust, &meta, actor, &mut ops)?;
        // What this node told its peers it held is older than what they believe: forget it,
        // so the next summaries are whole. (Each peer, meeting the new store id, answers with
        // a whole summary of its own, so the receipts forgotten with it come back at once.)
        let mut peers = BTreeMap::new();
        for (peer, r) in &self.peers {
            let Some(store_id) = r.store_id else { continue };
            ops.push(WriteOp::ResetPeer {
                peer: peer.clone(),
                store_id,
            });
            let fresh = PeerReceipts {
                store_id: Some(store_id),
                seen: r.seen,
                ..PeerReceipts::default()
            };
            peers.insert(peer.clone(), fresh);
        }
        self.commit(WriteBatch { ops })?;
        self.meta = meta;
        self.actor = actor;
        self.peers = peers;
        Ok(())
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.cfg.name
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This node's authoring actor (stable across restarts, see [`Node::open`]), from which
    /// each document's actor is derived
    /// ([`Node::doc_actor`]).
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The actor this node authors `doc` under.
    pub fn doc_actor(&self, doc: &DocId) -> Actor {
        crate::id::doc_actor(self.actor, doc)
    }

    /// Node metadata (store id, incarnation).
    pub fn meta(&self) -> &NodeMeta {
        &self.meta
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (for the shell's sync step).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back (on shutdown, or to simulate a crash).
    pub fn into_store(self) -> S {
        self.store
    }

    /// True once a store write failed; the node then refuses all writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Commits made since open. Everything committed so far is durable once the shell has made
    /// the store durable up to here and called [`Node::handle_durable`] with it.
    pub fn commit_seq(&self) -> u64 {
        self.commit_seq
    }

    /// Commits known durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The shell reports that the first `seq` commits since open are durable. Releases
    /// acknowledgements and outbound frames that waited for them.
    pub fn handle_durable(&mut self, seq: u64) {
        assert!(
            seq <= self.commit_seq,
            "durable {seq} beyond commits {}",
            self.commit_seq
        );
        self.durable_seq = self.durable_seq.max(seq);
        self.feed.durable(self.durable_seq);
    }

    /// The next event, if any. Poll after every input; events queue until polled.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every document and its vector clock.
    pub fn docs(&self) -> impl Iterator<Item = (&DocId, &VectorClock)> {
        self.docs.iter().map(|(d, m)| (d, &m.clock))
    }

    /// The document's vector clock, `None` if unknown.
    pub fn clock(&self, doc: &DocId) -> Option<&VectorClock> {
        self.docs.get(doc).map(|m| &m.clock)
    }

    /// Remote changes held waiting for dependencies.
    pub fn pending_changes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of the remote changes held waiting for dependencies: in total, and from the peer
    /// that sent the most.
    pub fn pending_bytes(&self) -> (usize, usize) {
        self.pending.bytes()
    }

    /// Bytes of the remote changes held waiting for dependencies, per sending peer.
    pub fn pending_by_peer(&self) -> &BTreeMap<NodeName, usize> {
        self.pending.by_peer()
    }

    /// The document's Automerge heads, sorted; `None` if unknown.
    pub fn heads(&mut self, doc: &DocId) -> Result<Option<Vec<ChangeHash>>, NodeError> {
        self.with_doc(doc, |d| {
            let mut h = d.get_heads();
            h.sort();
            h
        })
    }

    /// The document's kind; `None` if unknown.
    pub fn kind(&mut self, doc: &DocId) -> Result<Option<DocKind>, NodeError> {
        self.with_doc(doc, doc::kind_of)
    }

    /// The JSON view of any document; `None` if unknown.
    pub fn json(&mut self, doc: &DocId, conflicts: bool) -> Result<Option<Json>, NodeError> {
        self.with_doc(doc, |d| doc::json_view(d, conflicts))?
            .transpose()
            .map_err(|source| NodeError::View {
                doc: doc.clone(),
                source,
            })
    }

    /// The sensor view of a sensor document, or of a whole stream (every bucket merged: for
    /// small streams and tests; [`Node::read_stream`] pages through large ones); `Ok(None)` if
    /// unknown, an error if not a sensor document.
    pub fn sensor_view(&mut self, doc: &DocId) -> Result<Option<SensorView>, NodeError> {
        self.fold_for_read()?;
        if self.has_buckets(doc) {
            let all = crate::stream::Range {
                limit: crate::stream::PAGE_MAX,
                ..Default::default()
            };
            let mut view = SensorView {
                readings: BTreeMap::new(),
                invalid: Vec::new(),
            };
            let mut range = all.clone();
            while let Some(page) = self.read_stream(doc, &range)? {
                for r in page.readings {
                    view.readings.insert(r.id.clone(), r);
                }
                match page.next {
                    Some(c) => range.after = Some(c),
                    None => break,
                }
            }
            return Ok(Some(view));
        }
        if self.journal.holds(doc) {
            // Readings of it wait in the journal (an unsettled node folds none).
            return self.part_view(doc);
        }
        match self.with_doc(doc, doc::sensor_view)? {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(NodeError::KindMismatch {
                doc: doc.clone(),
                actual: DocKind::Generic,
            }),
        }
    }

    /// Runs `f` on the loaded document (loading it if needed); `None` if unknown.
    pub fn with_doc<T>(
        &mut self,
        doc: &DocId,
        f: impl FnOnce(&Automerge) -> T,
    ) -> Result<Option<T>, NodeError> {
        self.fold_for_read()?;
        // A pruned document's content is gone: nothing to show.
        if self.docs.get(doc).is_none_or(|m| m.pruned) {
            return Ok(None);
        }
        Ok(Some(f(self.loaded_doc(doc)?)))
    }

    /// Recomputes `doc`'s vector clock from the changes its Automerge document holds and
    /// compares it with the recorded one: they must be equal (the invariant every checker and
    /// `edgesync check` verify). An unknown document holds nothing and has the empty clock.
    pub fn verify_clock(&mut self, doc: &DocId) -> Result<(), VerifyError> {
        // A pruned document keeps its clock and none of the changes before pruning.
        if self.docs.get(doc).is_some_and(|m| m.pruned) {
            return Ok(());
        }
        let held: VectorClock = self
            .with_doc(doc, |am| {
                am.get_changes(&[])
                    .iter()
                    .filter_map(|c| Actor::from_automerge(c.actor_id()).map(|a| (a, c.seq())))
                    .collect()
            })?
            .unwrap_or_default();
        let recorded = self.clock(doc).cloned().unwrap_or_default();
        if held != recorded {
            return Err(VerifyError::ClockMismatch {
                doc: doc.clone(),
                recorded,
                held,
            });
        }
        Ok(())
    }

    /// Refuses a local write the fleet's rules do not allow this node (a node without a fleet
    /// identity writes anything: it syncs nothing).
    fn check_may_write(&self, doc: &DocId) -> Result<(), NodeError> {
        match self.cfg.trust.identity() {
            Some(me) if !self.cfg.trust.rules.allows(me, doc, Access::Write) => {
                Err(NodeError::Forbidden {
                    doc: doc.clone(),
                    node: me.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    fn check_writable(&self) -> Result<(), NodeError> {
        if self.poisoned {
            Err(NodeError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Whether every slot of this node's certificate is spent.
    pub fn slots_exhausted(&self) -> bool {
        self.meta.slot_space != [0; 32] && self.meta.actor_slot >= ACTOR_SLOTS
    }

    /// Whether this node knows its actor slot ([`Config::settle_from_peers`]).
    pub fn is_settled(&self) -> bool {
        self.meta.settled
    }

    /// Actor slots of this node's certificate left after the current one (`None` for a
    /// certificate from before slots).
    pub fn actor_slots_left(&self) -> Option<u32> {
        (self.meta.slot_space != [0; 32])
            .then(|| ACTOR_SLOTS.saturating_sub(self.meta.actor_slot.saturating_add(1)))
    }

    /// Refuses what needs a slot to author under when every slot is spent.
    pub(super) fn check_slots_left(&self) -> Result<(), NodeError> {
        if self.slots_exhausted() {
            return Err(NodeError::ActorSlotsExhausted { max: ACTOR_SLOTS });
        }
        Ok(())
    }

    /// Refuses what would author a change now: every slot spent, or (`what`) the slot not
    /// known yet.
    fn check_authoring(&self, what: &'static str) -> Result<(), NodeError> {
        self.check_slots_left()?;
        if !self.meta.settled {
            return Err(NodeError::Unsettled { what });
        }
        Ok(())
    }

    /// Loads `doc` (snapshot, then changes after it, in order) if not in memory, and evicts the
    /// least recently used documents beyond `docs_loaded_max`.
    fn loaded_doc(&mut self, doc: &DocId) -> Result<&mut Automerge, NodeError> {
        Ok(&mut self.loaded_entry(doc)?.doc)
    }

    /// The loaded document `doc` with what is cached of it (loading it if needed).
    fn loaded_entry(&mut self, doc: &DocId) -> Result<&mut Loaded, NodeError> {
        self.use_tick += 1;
        let tick = self.use_tick;
        if !self.loaded.contains_key(doc) {
            let am = self.load_from_store(doc)?;
            self.loaded.insert(
                doc.clone(),
                Loaded {
                    doc: am,
                    used: tick,
                    readings: None,
                    own_last: None,
                },
            );
            // A document with changes not yet committed (`dirty`) must stay: the store cannot
            // give them back. The budget may be exceeded by one batch's documents meanwhile.
            while self.loaded.len() > self.cfg.docs_loaded_max {
                let victim = self
                    .loaded
                    .iter()
                    .filter(|(d, _)| *d != doc && !self.dirty.contains(*d))
                    .min_by_key(|(_, l)| l.used)
                    .map(|(d, _)| d.clone());
                match victim {
                    Some(v) => self.loaded.remove(&v),
                    None => break,
                };
            }
        }
        let entry = self.loaded.get_mut(doc).expect("just loaded");
        entry.used = tick;
        Ok(entry)
    }

    fn load_from_store(&mut self, doc: &DocId) -> Result<Automerge, NodeError> {
        let next_order = self.docs.get(doc).map(|m| m.next_order).unwrap_or(0);
        let mut am = load_stored(&self.store, doc, next_order)?;
        am.set_actor(self.doc_actor(doc).to_automerge());
        Ok(am)
    }

    /// Records `change` (already applied to the loaded document) in the batch and the clock.
    fn record_change(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        change: &Change,
        by: By,
    ) -> Result<(), NodeError> {
        let local = by == By::Local;
        let (author, sig) = match by {
            By::Genesis => (None, None),
            By::Local => (Some(self.actor), None),
            By::Remote { author, sig } => (Some(author), sig),
        };
        let actor =
            Actor::from_automerge(change.actor_id()).expect("recorded changes have 16-byte actors");
        let meta = match self.docs.entry(doc.clone()) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => {
                if self.cfg.keep_ms.is_some() {
                    self.expiry.extend(streams::expiry_entry(doc));
                }
                v.insert(DocMeta::default())
            }
        };
        if meta.clock.get(&actor) == 0 && meta.clock.len() >= CLOCK_ACTORS_MAX {
            return Err(NodeError::TooManyActors {
                doc: doc.clone(),
                max: CLOCK_ACTORS_MAX,
            });
        }
        let order = meta.next_order;
        meta.next_order += 1;
        if local && planted!(self.cfg, VcOffByOne) {
            meta.clock.observe(actor, change.seq() + 1);
        } else {
            meta.clock.advance(actor, change.seq());
        }
        batch.push(WriteOp::PutChange {
            doc: doc.clone(),
            change: StoredChange {
                order,
                actor,
                seq: change.seq(),
                hash: change.hash().0,
                bytes: change.raw_bytes().to_vec(),
                author,
                sig,
            },
        });
        self.dirty.insert(doc.clone());
        Ok(())
    }

    /// Adds the metadata (and a snapshot when due) of every document written in `batch`.
    fn finish_batch(&mut self, batch: &mut WriteBatch) -> Result<(), NodeError> {
        let touched: Vec<DocId> = std::mem::take(&mut self.dirty).into_iter().collect();
        for doc in &touched {
            let meta = self
                .docs
                .get(doc)
                .expect("touched document has metadata")
                .clone();
            // A bucket is snapshotted once closed, by housekeeping ([`Node::compact_closed`]),
            // never on the write path: saving a whole bucket there would cost every ingest.
            if !meta.pruned
                && crate::stream::Bucket::parse(doc).is_none()
                && meta.next_order - meta.snapshot_order >= self.cfg.snapshot_changes_min
            {
                let bytes = self.loaded_doc(doc)?.save();
                batch.push(WriteOp::PutSnapshot {
                    doc: doc.clone(),
                    covers_order: meta.next_order,
                    bytes,
                });
                self.docs.get_mut(doc).expect("exists").snapshot_order = meta.next_order;
            }
            let meta = self.docs.get(doc).expect("exists").clone();
            batch.push(WriteOp::PutDocMeta {
                doc: doc.clone(),
                meta,
            });
        }
        self.dirty = touched.into_iter().collect();
        Ok(())
    }

    /// Commits `batch` atomically; a failure poisons the node. Returns the commit's number.
    fn commit(&mut self, mut batch: WriteBatch) -> Result<u64, NodeError> {
        self.finish_batch(&mut batch)?;
        if batch.is_empty() {
            self.dirty.clear();
            return Ok(self.commit_seq);
        }
        if let Err(e) = self.store.commit(batch) {
            self.poison();
            return Err(e.into());
        }
        self.commit_seq += 1;
        self.feed.committed(self.commit_seq);
        Ok(self.commit_seq)
    }

    /// After a failed write the in-memory state is ahead of the store: drop it all and refuse
    /// further writes until the shell reopens the node.
    fn poison(&mut self) {
        self.poisoned = true;
        self.loaded.clear();
        self.dirty.clear();
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            self.close_session(sid, CloseCode::StoreFailed, "store write failed");
        }
    }

    /// Documents written by the last commit; tells sessions and the shell.
    fn announce(&mut self, origin: Origin) {
        for doc in std::mem::take(&mut self.dirty) {
            for s in self.sessions.values_mut() {
                s.mark_dirty(&doc);
            }
            self.events.push_back(Event::DocChanged {
                doc,
                origin: origin.clone(),
            });
        }
    }

    /// The commit an acknowledgement of commit `seq` must wait for.
    fn durable_at(&self, seq: u64) -> u64 {
        if planted!(self.cfg, AckBeforePersist) {
            0
        } else {
            seq
        }
    }

    /// Writes journaled `entries` (reading id to encoded body, all within the span of `doc`
    /// when it is a bucket) into the sensor document `doc`, created from the shared genesis
    /// if new, as few Automerge changes as the change size limit allows, recorded in `batch`:
    /// a fold of the journal. Readings whose id is already present are not written again. The
    /// ingest checked the document's kind, readings map and actor room
    /// ([`Node::check_sensor_target`]).
    fn put_into(
        &mut self,
        batch: &mut WriteBatch,
        doc: &DocId,
        entries: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<Vec<IngestOutcome>, NodeError> {
        if !self.docs.contains_key(doc) {
            let mut am = Automerge::new().with_actor(self.doc_actor(doc).to_automerge());
            let genesis = doc::sensor_genesis().clone();
            am.apply_changes([genesis.clone()])
                .expect("genesis applies to an empty document");
            self.use_tick += 1;
            self.loaded.insert(
                doc.clone(),
                Loaded {
                    doc: am,
                    used: self.use_tick,
                    readings: None,
                    own_last: None,
                },
            );
            self.record_change(batch, doc, &genesis, By::Genesis)?;
        }
        let map = self.readings_map(doc)?;
        // Readings are at most READING_BYTES_MAX each; half the change limit leaves room for
        // Automerge's per-op encoding.
        let budget = (self.cfg.change_bytes_max / 2) as usize;
        let entries: Vec<(&str, &str)> = entries
            .iter()
            .map(|(id, body)| (id.as_str(), body.as_str()))
            .collect();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len() {
                let len = entries[end].0.len() + entries[end].1.len();
                if end > start && bytes + len > budget {
                    break;
                }
                bytes += len;
                end += 1;
            }
            let time_s = (now_ms / 1000) as i64;
            let (last, prev) = self.own_last(doc)?;
            let seq = last + 1;
            // A settled node's journaled ids are new to the document (see the journal's
            // invariants); debug builds search anyway, for the fold's assertion to check it.
            let known_new = !self.journaled_unsettled && !cfg!(debug_assertions);
            let (out, change) = doc::put_readings(
                self.loaded_doc(doc)?,
                &map,
                &entries[start..end],
                time_s,
                (seq, prev),
                known_new,
            )
            .map_err(|reason| NodeError::Fold {
                doc: doc.clone(),
                reason,
            })?;
            if let Some(change) = change {
                let actor = self.doc_actor(doc);
                if let Some(l) = self.loaded.get_mut(doc) {
                    l.own_last = Some((actor, seq, Some(change.hash())));
                }
                self.record_change(batch, doc, &change, By::Local)?;
            }
            outcomes.extend(out);
            start = end;
        }
        Ok(outcomes)
    }

    /// The last sequence number the document `doc` holds of this node's actor for it, and
    /// that change's hash, from the document itself (its change graph, not the recorded
    /// clock: a change built with a sequence number Automerge does not expect next is not
    /// applied but a panic), looked up once per load and kept by the fold that writes the
    /// next.
    fn own_last(&mut self, doc: &DocId) -> Result<(u64, Option<ChangeHash>), NodeError> {
        let actor = self.doc_actor(doc);
        let loaded = self.loaded_entry(doc)?;
        match loaded.own_last {
            Some((a, seq, hash)) if a == actor => Ok((seq, hash)),
            _ => {
                // Automerge finds "local" changes only for an actor the document held when the
                // actor was set: set it again, now that the document may hold it.
                loaded.doc.set_actor(actor.to_automerge());
                let last = loaded.doc.get_last_local_change();
                let (seq, hash) = last.map_or((0, None), |c| (c.seq(), Some(c.hash())));
                loaded.own_last = Some((actor, seq, hash));
                Ok((seq, hash))
            }
        }
    }

    /// The readings map of the sensor document `doc` (loading it if needed), looked up once
    /// per load: no change can replace or remove it (schema rule 3).
    pub(super) fn readings_map(&mut self, doc: &DocId) -> Result<ObjId, NodeError> {
        let loaded = self.loaded_entry(doc)?;
        if loaded.readings.is_none() {
            loaded.readings = doc::readings_obj(&loaded.doc);
        }
        loaded
            .readings
            .clone()
            .ok_or_else(|| NodeError::NoReadingsMap { doc: doc.clone() })
    }

    /// Applies an RFC 7386 JSON merge patch to the generic document `doc` (created if new) as
    /// one change.
    pub fn patch(&mut self, doc: &DocId, patch: &Json, now_ms: u64) -> Result<Patched, NodeError> {
        self.check_writable()?;
        self.check_may_write(doc)?;
        self.now_ms = self.now_ms.max(now_ms);
        doc::validate_patch(patch)?;
        if crate::stream::is_bucket_like(doc) {
            return Err(crate::stream::StreamError::IsBucket(doc.clone()).into());
        }
        if self.has_buckets(doc) {
            return Err(NodeError::KindMismatch {
                doc: doc.clone(),
                actual: DocKind::Sensor,
            });
        }
        // A patch the node may never take is refused as such first; one it may take later
        // waits for its actor slot.
        self.check_authoring("patches are refused until then")?;
        let is_new = !self.docs.contains_key(doc);
        if is_new {
            self.use_tick += 1;
            let am = Automerge::new().with_actor(self.doc_actor(doc).to_automerge());
            self.loaded.insert(
                doc.clone(),
                Loaded {
                    doc: am,
                    used: self.use_tick,
                    readings: None,
                    own_last: None,
                },
            );
        } else if doc::kind_of(self.loaded_doc(doc)?) != DocKind::Generic {
            return Err(NodeError::KindMismatch {
                doc: doc.clone(),
                actual: DocKind::Sensor,
            });
        }
        let hash = doc::apply_merge_patch(self.loaded_doc(doc)?, patch, (now_ms / 1000) as i64);
        if hash.is_none() {
            if is_new {
                self.loaded.remove(doc);
            }
            return Ok(Patched {
                changed: false,
                durable_at: self.durable_at(self.commit_seq),
            });
        }
        let change = self
            .loaded_doc(doc)?
            .get_last_local_change()
            .expect("committed");
        let len = change.raw_bytes().len();
        if len > self.cfg.change_bytes_max as usize {
            // The change exists only in memory: forget the loaded copy so it is never served.
            self.loaded.remove(doc);
            return Err(NodeError::ChangeTooLarge {
                len,
                max: self.cfg.change_bytes_max as usize,
            });
        }
        let mut batch = WriteBatch::default();
        self.record_change(&mut batch, doc, &change, By::Local)?;
        self.feed_push(&mut batch, doc, None, None);
        let seq = self.commit(batch)?;
        self.announce(Origin::Local);
        self.pump_all();
        Ok(Patched {
            changed: true,
            durable_at: if planted!(self.cfg, PatchAckBeforePersist) {
                0
            } else {
                self.durable_at(seq)
            },
        })
    }
}
