//! The durable node for embedding: the core over RocksDB, driven by two threads and by the
//! threads of callers that ingest.
//!
//! - The **core** ([`edgesync_proto::Node`] and what waits on it) sits behind one lock. An
//!   ingest runs on the caller's thread under that lock: blocking callers queue their request
//!   and whoever takes the lock next ingests every queued request at once (readings of one
//!   document become one journal commit), so concurrent writers share writes without a hop
//!   to another thread; an async caller that finds the lock held hands its ingest to the core
//!   thread instead of waiting. With `ingest_window_ms` above 0 every ingest goes to the core
//!   thread, which gathers them for that long.
//! - The **core thread** takes every other request from a channel (up to 1,024 per turn), and
//!   fires the protocol's timers and housekeeping at the start of every turn. A caller whose
//!   ingest gives the core an earlier deadline than the one the thread sleeps until (the
//!   journal's fold) wakes it.
//! - The **syncer thread** makes commits durable with one WAL fsync at a time and answers
//!   what waited for it (through the core thread when another thread holds the core; the
//!   holder also reads how far the syncer got at every pump, so frames need not wait for
//!   that report).
//!   Commits made while an fsync runs are covered by the next one, so concurrent writers
//!   share fsyncs (group commit) and durable throughput grows with concurrency.
//!
//! A request is answered only when everything it wrote is durable: fsynced, or with
//! [`Durability::Wal`] written to the WAL. Peers hear of a commit only once it is fsynced, in
//! both modes (frames wait for the syncer), so a power cut never takes back anything a peer
//! has, and the node keeps its actor across crashes. [`NodeHandle`] is cheap to
//! clone and can be used from any thread; each call has a blocking form and an `_async` form.
//!
//! Peers: the transport (see [`crate::mesh`]) reports an authenticated link with
//! [`NodeHandle::peer_up`], feeds its frames with [`NodeHandle::peer_input`] and reports its end
//! with [`NodeHandle::peer_down`]; whichever thread holds the core hands released frames (only
//! once durable) to the link's channel.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgesync_proto::stream::{Page, Range, EXPIRE_BATCH_MAX};
use edgesync_proto::{
    Boot, CloseCode, Config, DocId, Event, Identity, IngestOutcome, Ingested, Node, NodeError,
    NodeName, Origin, Reading, SessionId, SessionStats, StoreError,
};
use serde_json::Value as Json;
use tokio::sync::{broadcast, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::os;
use crate::store::{Durability, Health, OpenError, RocksStore};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The core's configuration (name and limits).
    pub config: Config,
    /// Data directory.
    pub data_dir: PathBuf,
    /// When a write counts as durable. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Most readings the core thread takes into one batch of queued ingests (one journal
    /// commit). Default 512. (Callers that ingest on their own threads batch what queued up
    /// while the core's lock was held: at most one request per waiting caller.)
    pub ingest_batch_max: usize,
    /// How long the core thread waits for more readings once it has one, in ms. Default 0:
    /// ingests run on their callers' threads, and batches form from what queued up during the
    /// previous commit, adding no latency when idle. Above 0, every ingest goes to the core
    /// thread, which gathers them for this long.
    pub ingest_window_ms: u64,
    /// Bytes queued for one peer's link and not yet written to its transport. A session whose
    /// queue would grow past this (the peer does not read) ends with `Overloaded`; the peer
    /// resumes from its receipts when it reconnects. Default 16 MiB: far above the protocol's
    /// own window (4 MiB of batches, `Config::inflight_bytes_max`) plus a summary of 10,000
    /// documents.
    pub link_outbound_bytes_max: usize,
    /// Bytes of one link's received frames waiting for the core thread. The link stops reading
    /// while it is full, so QUIC flow control slows the peer instead of the node buffering
    /// what a fast sender sends. Default 8 MiB: two frames of the default frame limit (a
    /// larger frame waits for the whole allowance).
    pub link_inbound_bytes_max: usize,
}

impl NodeOptions {
    /// Defaults for `config` in `data_dir`.
    pub fn new(config: Config, data_dir: impl Into<PathBuf>) -> NodeOptions {
        NodeOptions {
            config,
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            ingest_batch_max: 512,
            ingest_window_ms: 0,
            link_outbound_bytes_max: 16 << 20,
            link_inbound_bytes_max: 8 << 20,
        }
    }
}

/// Why a write (ingest or patch) failed. Nothing it wrote was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The core refused the write (a bad reading or patch, a document of another kind, a
    /// limit) or its store failed; match the [`NodeError`] to tell which.
    #[error(transparent)]
    Refused(Arc<NodeError>),
    /// The write was committed but the fsync that should make it durable failed: the node
    /// accepts no more writes until restarted.
    #[error("store fsync failed; restart the node")]
    NotDurable(#[source] Arc<StoreError>),
    /// The node is shutting down or its core thread is gone.
    #[error("node stopped")]
    Stopped,
}

impl From<NodeError> for WriteError {
    fn from(e: NodeError) -> WriteError {
        WriteError::Refused(Arc::new(e))
    }
}

/// Events one feed page holds at most ([`NodeHandle::feed`]).
pub const FEED_PAGE_MAX: usize = 10_000;
/// Events one feed read looks at at most (a filter may skip them): bounds a request's work.
/// `next` moves past what was looked at, so a consumer of a rare document still advances.
pub const FEED_SCAN_MAX: usize = 100_000;

/// Which documents a feed read wants: `*` matches any run of characters (`/` included), every
/// other character itself. A bucket of a stream matches by its stream's id. At most 256 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocPattern(String);

impl DocPattern {
    /// Longest pattern accepted, bytes.
    pub const BYTES_MAX: usize = 256;

    /// A pattern, if within [`DocPattern::BYTES_MAX`].
    pub fn new(p: &str) -> Result<DocPattern, String> {
        if p.is_empty() || p.len() > Self::BYTES_MAX {
            return Err(format!(
                "a document pattern is 1 to {} bytes",
                Self::BYTES_MAX
            ));
        }
        Ok(DocPattern(p.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `doc` (or, for a bucket, its stream) matches.
    pub fn matches(&self, doc: &DocId) -> bool {
        let bucket = edgesync_proto::stream::Bucket::parse(doc);
        let id = bucket.as_ref().map_or(doc.as_str(), |b| b.stream.as_str());
        glob(self.0.as_bytes(), id.as_bytes())
    }
}

/// `*`-only glob matching, iterative (no recursion a pattern could deepen): linear in the
/// text for each backtrack point, at most pattern × text steps.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Why a feed read has no page.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The cursor is older than what the feed holds, or of another store's sequence (the node
    /// was restored or replaced): resume from `oldest`.
    #[error("the feed no longer holds what follows this cursor; resume from {oldest}")]
    Gone {
        /// The oldest cursor to resume from.
        oldest: edgesync_proto::Cursor,
    },
    /// The store failed.
    #[error(transparent)]
    Core(#[from] NodeError),
    /// The node is shutting down or its core thread is gone.
    #[error("node stopped")]
    Stopped,
}

impl From<Stopped> for FeedError {
    fn from(_: Stopped) -> FeedError {
        FeedError::Stopped
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The document could not be read (it failed to load, the store failed, or it is of
    /// another kind than asked).
    #[error(transparent)]
    Core(#[from] NodeError),
    /// The node is shutting down or its core thread is gone.
    #[error("node stopped")]
    Stopped,
}

/// Why a session could not start on a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A store write failed: the node serves no peers until restarted.
    #[error("store failed; the node serves no peers until restarted")]
    Poisoned,
    /// The node is shutting down or its core thread is gone.
    #[error("node stopped")]
    Stopped,
}

/// The node's core thread is gone (shut down, or stopped by a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node stopped")]
pub struct Stopped;

impl From<Stopped> for WriteError {
    fn from(_: Stopped) -> WriteError {
        WriteError::Stopped
    }
}

impl From<Stopped> for ReadError {
    fn from(_: Stopped) -> ReadError {
        ReadError::Stopped
    }
}

impl From<Stopped> for SessionError {
    fn from(_: Stopped) -> SessionError {
        SessionError::Stopped
    }
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The core refused the store or configuration.
    #[error(transparent)]
    Core(#[from] edgesync_proto::OpenError),
    /// The store's copy mark could not be read or renewed.
    #[error("cannot renew the identity of a restored data directory")]
    Renew(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No randomness for the boot nonce.
    #[error("no operating system randomness")]
    Random(#[source] getrandom::Error),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(#[from] std::io::Error),
}

type Reply<T, E> = oneshot::Sender<Result<T, E>>;

/// What the core thread sends to a link.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to send (everything it describes is durable).
    Frame(Vec<u8>),
    /// The session ended: send what was queued, then close the connection.
    Close(SessionEnd),
}

/// Creates the channel from the core to one link's writer, which counts the bytes queued.
pub fn outbound_channel() -> (OutboundSender, OutboundReceiver) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let sender = OutboundSender {
        tx,
        queued: queued.clone(),
    };
    (sender, OutboundReceiver { rx, queued })
}

/// The core's end of a link's outbound channel. What it holds is bounded in bytes by
/// [`NodeOptions::link_outbound_bytes_max`], which the core checks before every frame.
#[derive(Debug)]
pub struct OutboundSender {
    tx: tokio::sync::mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
}

impl OutboundSender {
    /// Bytes handed over and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    fn send(&self, o: Outbound) {
        if let Outbound::Frame(f) = &o {
            self.queued.fetch_add(f.len(), Ordering::SeqCst);
        }
        let _ = self.tx.send(o);
    }
}

/// The link writer's end of its outbound channel.
#[derive(Debug)]
pub struct OutboundReceiver {
    rx: tokio::sync::mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

impl OutboundReceiver {
    /// The next frame or close; `None` once the core dropped its end.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// The next frame or close if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// The writer wrote `bytes` of a frame to the transport.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// One link's allowance of bytes received and not yet handled by the core thread.
#[derive(Clone, Debug)]
pub struct InboundCredit {
    sem: Arc<Semaphore>,
    max: usize,
    queued: Arc<AtomicUsize>,
}

/// A received frame's share of its link's allowance: returned when dropped (after the core
/// handled the frame, or with it if the node stopped).
#[derive(Debug)]
pub struct InboundHeld {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for InboundHeld {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl InboundCredit {
    /// An allowance of `max` bytes (at least one).
    pub fn new(max: usize) -> InboundCredit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        InboundCredit {
            sem: Arc::new(Semaphore::new(max)),
            max,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits until a frame of `bytes` fits (a frame above the whole allowance waits for all of
    /// it), and returns its share, to pass to [`NodeHandle::peer_input`].
    pub async fn reserve(&self, bytes: usize) -> InboundHeld {
        let n = u32::try_from(bytes.min(self.max)).unwrap_or(u32::MAX);
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the allowance is never closed");
        self.queued.fetch_add(bytes, Ordering::SeqCst);
        InboundHeld {
            _permit: permit,
            bytes,
            queued: self.queued.clone(),
        }
    }

    /// Bytes received and not yet handled by the core.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// Why a session ended, for the link to close its connection with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    /// The protocol's close code; `None` when the transport went first.
    pub code: Option<CloseCode>,
    /// The reason, as the core recorded it.
    pub reason: String,
}

/// A document changed (committed and durable).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DocEvent {
    /// The document.
    pub doc: String,
    /// `"local"` or the name of the peer the change came from.
    pub origin: String,
}

/// One session as the node sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionStatus {
    /// Session number (this process).
    pub session: u64,
    /// The peer.
    pub peer: String,
    /// Handshake and summaries done.
    pub live: bool,
    /// Batches sent, not yet acknowledged.
    pub inflight_batches: usize,
    /// Counters.
    #[serde(flatten)]
    pub stats: SessionStats,
}

/// The node's state for status pages and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Documents held.
    pub docs: usize,
    /// Commits since start, and how many are durable.
    pub commits: u64,
    /// Durable commits.
    pub durable_commits: u64,
    /// Changes waiting for dependencies.
    pub pending_changes: usize,
    /// Readings journaled and acknowledged, not yet folded into changes (peers get them once
    /// folded, at most `journal_fold_ms` later).
    pub journal_readings: usize,
    /// Store healthy (no failed write or fsync).
    pub healthy: bool,
    /// Open sessions.
    pub sessions: Vec<SessionStatus>,
    /// Per peer asked about: local changes it has not acknowledged.
    pub unacked: BTreeMap<String, u64>,
    /// Counters summed over every session since start, closed ones included.
    pub totals: SessionStats,
    /// Store-and-forward pruning: what waits for which peer, and how many buckets are pruned.
    pub pruning: edgesync_proto::PruneStatus,
    /// Sessions this node ended because of what a peer sent, since start, by close code
    /// (`unauthorized`, `forbidden`, `invalid-change`, `overloaded`, ...).
    pub refused_sessions: BTreeMap<String, u64>,
    /// Peers that refused this node as a second node run from a copy of its store (close
    /// code `cloned`), with their reason: this node no longer dials them.
    pub refused_as_copy: BTreeMap<String, String>,
    /// The actor slots of this node's certificate.
    pub actor_slots: ActorSlots,
}

/// Where this node stands with its certificate's actor slots
/// ([`edgesync_proto::trust::ACTOR_SLOTS`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ActorSlots {
    /// The slot it authors under (`null` for a certificate from before slots, whose actors
    /// are not bounded).
    pub slot: Option<u32>,
    /// Slots left after this one (`null` as above); at 0 the next restore or new store under
    /// this certificate finds none, and the node then authors nothing until its certificate
    /// is renewed.
    pub left: Option<u32>,
    /// False while the node waits for a peer to tell it which slots its certificate spent (a
    /// new or restored store of a node that dials peers): it journals readings meanwhile and
    /// authors nothing.
    pub settled: bool,
    /// Every slot is spent: the node authors nothing until its certificate is renewed.
    pub exhausted: bool,
    /// Times since start a peer named a slot of this certificate at or above this node's own
    /// under another authoring key (another store runs, or ran, under this certificate).
    pub conflicts: u64,
}

type IngestReply = Reply<Vec<IngestOutcome>, WriteError>;

/// Ingest requests of one document waiting to share a change: (readings, answer).
type DocRequests = Vec<(Vec<Reading>, IngestReply)>;

enum Cmd {
    Ingest {
        doc: DocId,
        readings: Vec<Reading>,
        reply: IngestReply,
    },
    Patch {
        doc: DocId,
        patch: Json,
        reply: Reply<bool, WriteError>,
    },
    Json {
        doc: DocId,
        conflicts: bool,
        reply: Reply<Option<Json>, ReadError>,
    },
    Docs {
        reply: Reply<Vec<DocId>, ReadError>,
    },
    Range {
        stream: DocId,
        range: Range,
        reply: Reply<Option<Page>, ReadError>,
    },
    Latest {
        stream: DocId,
        reply: Reply<Option<Option<Reading>>, ReadError>,
    },
    Feed {
        after: Option<edgesync_proto::Cursor>,
        limit: usize,
        docs: Option<DocPattern>,
        reply: Reply<edgesync_proto::FeedPage, FeedError>,
    },
    PeerUp {
        peer: Identity,
        out: OutboundSender,
        reply: Reply<SessionId, SessionError>,
    },
    PeerInput {
        sid: SessionId,
        frame: Vec<u8>,
        /// The link's allowance for this frame, returned when the command is dropped.
        _credit: Option<InboundHeld>,
    },
    PeerDown {
        sid: SessionId,
    },
    CloseSessions {
        reason: String,
        reply: Reply<usize, Stopped>,
    },
    Status {
        peers: Vec<NodeName>,
        reply: Reply<NodeStatus, Stopped>,
    },
    /// The syncer's report, when another thread held the core.
    Durable(Result<u64, Arc<StoreError>>),
    /// A caller gave the core an earlier deadline than the one its thread sleeps until: the
    /// thread wakes to take the new one.
    Wake,
    Shutdown,
}

/// What the core thread, the syncer thread and callers that ingest on their own thread share.
struct Shared {
    /// The core; `None` once the node stopped (or a panic while it was held ended it).
    core: parking_lot::Mutex<Option<Core>>,
    /// Ingests of blocking callers waiting for the core's lock: whoever takes it next ingests
    /// all of them at once (one commit for all: concurrent writers share a write). At most one
    /// entry per caller thread blocked on the lock.
    queued: parking_lot::Mutex<Vec<QueuedIngest>>,
}

type SharedCore = Arc<Shared>;

/// An ingest request: document, readings, answer.
type QueuedIngest = (DocId, Vec<Reading>, IngestReply);

/// The core, locked. Dropped while its thread panics, it ends the node (as a panic of the core
/// thread always has): the core may be half-changed, so nothing uses it again, and dropping it
/// answers every waiting request `Stopped` and closes every link.
struct Locked<'a>(parking_lot::MutexGuard<'a, Option<Core>>);

impl Locked<'_> {
    /// Locks the core; `None` once the node stopped.
    fn new(shared: &Shared) -> Option<Locked<'_>> {
        Some(shared.core.lock()).filter(|g| g.is_some()).map(Locked)
    }

    /// [`Locked::new`] without waiting: `Err(())` while another thread holds the core.
    fn try_new(shared: &Shared) -> Result<Option<Locked<'_>>, ()> {
        let g = shared.core.try_lock().ok_or(())?;
        Ok(Some(g).filter(|g| g.is_some()).map(Locked))
    }

    /// Takes the core out: from now on every caller is told `Stopped`.
    fn take(mut self) -> Core {
        self.0.take().expect("checked when locked")
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        self.0.as_ref().expect("checked when locked")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        self.0.as_mut().expect("checked when locked")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.take();
        }
    }
}

/// A running node.
pub struct DurableNode {
    handle: NodeHandle,
    sinks: crate::store::SinkStore,
    core: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
}

/// Sends requests to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Cmd>,
    core: SharedCore,
    /// Whether an ingest runs on the caller's thread (`ingest_window_ms` is 0).
    direct: bool,
    health: Health,
    /// True while the core thread runs; false once it returned or unwound.
    core_alive: Arc<AtomicBool>,
    link_inbound_bytes_max: usize,
    events: broadcast::Sender<DocEvent>,
    /// The feed's newest durable cursor, for readers that wait for more.
    feed_head: watch::Receiver<edgesync_proto::Cursor>,
    name: NodeName,
    started: Instant,
    copy_refusals: CopyRefusals,
    store_memory: crate::store::MemoryProbe,
}

/// Peers that refused this node as a copy of another node's store, with their reasons: written
/// by the core, read by the mesh (which stops dialling them) and the status. At most one entry
/// per peer.
type CopyRefusals = Arc<std::sync::Mutex<BTreeMap<NodeName, String>>>;

/// Requests the core thread takes in one turn before it sends released frames and fires due
/// timers: small enough that a turn stays short (each request is one core call), large enough
/// that batching ingests still pays.
const TURN_REQUESTS_MAX: usize = 1024;

/// Marks the core thread stopped when dropped.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn random16() -> Result<[u8; 16], StartError> {
    os::random_bytes().map_err(StartError::Random)
}

impl DurableNode {
    /// Opens the store and starts the core and syncer threads.
    pub fn start(opts: NodeOptions) -> Result<DurableNode, StartError> {
        let store = RocksStore::open(&opts.data_dir, opts.durability)?;
        let copied = store
            .copy_mark()
            .map_err(|e| StartError::Renew(Box::new(e)))?;
        let syncer = store.syncer();
        let sinks = store.sink_store();
        let store_memory = store.memory_probe();
        let health = store.health();
        let boot = Boot {
            nonce: random16()?,
            new_store_id: random16()?,
        };
        // Frames leave only once fsynced in both modes: a change a power cut takes back never
        // left, so its sequence number is safely taken again and the actor is kept (hazard 2).
        let mut node = Node::open(store, opts.config.clone(), boot)?;
        if let Some(at) = copied {
            // A backup: its peers saw this store go further than the copy.
            let renewal = Boot {
                nonce: random16()?,
                new_store_id: random16()?,
            };
            node.renew_store(&renewal)
                .map_err(|e| StartError::Renew(Box::new(e)))?;
            node.store()
                .clear_copy_mark()
                .map_err(|e| StartError::Renew(Box::new(e)))?;
            tracing::warn!(
                backup_ms = at,
                "this data directory is a restored backup: the node takes a new store id and actor epoch, and its peers send it everything it lacks"
            );
        }
        assert_eq!(
            node.commit_seq(),
            syncer.commits(),
            "every core commit is one store commit"
        );
        let (tx, rx) = mpsc::channel();
        let (kick_tx, kick_rx) = mpsc::channel::<()>();
        let (events, _) = broadcast::channel(1024);
        let (feed_tx, feed_rx) = watch::channel(node.feed_head());
        let copy_refusals = CopyRefusals::default();
        let core = parking_lot::Mutex::new(Some(Core {
            synced: node.store().syncer(),
            node,
            opts: opts.clone(),
            kick: kick_tx,
            waiting: VecDeque::new(),
            links: BTreeMap::new(),
            events: events.clone(),
            feed_head: feed_tx,
            // Housekeeping always runs: closed buckets leave memory even without retention.
            housekeep_at: 0,
            asleep_until: 0,
            refused: BTreeMap::new(),
            copy_refusals: copy_refusals.clone(),
            slot_conflicts: 0,
        }));
        let shared: SharedCore = Arc::new(Shared {
            core,
            queued: parking_lot::Mutex::new(Vec::new()),
        });
        // The syncer holds the core weakly: it ends when the core is gone (its kick sender
        // with it), not kept alive by itself.
        let weak = Arc::downgrade(&shared);
        let wake_tx = tx.clone();
        let syncer_thread = std::thread::Builder::new()
            .name("edgesync-syncer".into())
            .spawn(move || {
                while kick_rx.recv().is_ok() {
                    while kick_rx.try_recv().is_ok() {}
                    let t = Instant::now();
                    let r = syncer.sync().map_err(Arc::new);
                    metrics::histogram!("edgesync_store_sync_seconds")
                        .record(t.elapsed().as_secs_f64());
                    let failed = r.is_err();
                    // Answered here when the core is free, without a hop through the core
                    // thread (durability is what every fsync-mode answer waits for); while
                    // another thread holds it, through the core thread's queue, so the next
                    // fsync starts at once, over what the holder commits meanwhile.
                    let Some(shared) = weak.upgrade() else { break };
                    match Locked::try_new(&shared) {
                        Ok(Some(mut core)) => {
                            core.durable(r);
                            core.after_turn(&wake_tx);
                        }
                        Ok(None) => break,
                        Err(()) => {
                            if wake_tx.send(Cmd::Durable(r)).is_err() {
                                break;
                            }
                        }
                    }
                    if failed {
                        break;
                    }
                }
            })?;
        let core_alive = Arc::new(AtomicBool::new(true));
        let alive = AliveGuard(core_alive.clone());
        let core_shared = shared.clone();
        let core = std::thread::Builder::new()
            .name("edgesync-core".into())
            .spawn(move || {
                // Dropped when the thread ends, by returning or by a panic unwinding it.
                let _alive = alive;
                run_core(&core_shared, rx)
            })?;
        Ok(DurableNode {
            handle: NodeHandle {
                tx,
                core: shared,
                direct: opts.ingest_window_ms == 0,
                health,
                core_alive,
                link_inbound_bytes_max: opts.link_inbound_bytes_max,
                events,
                feed_head: feed_rx,
                name: opts.config.name.clone(),
                started: Instant::now(),
                copy_refusals,
                store_memory,
            },
            sinks,
            core: Some(core),
            syncer: Some(syncer_thread),
        })
    }

    /// The store of sinks' states ([`crate::sinks`]).
    pub fn sink_store(&self) -> crate::store::SinkStore {
        self.sinks.clone()
    }

    /// A handle for requests.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the threads after answering everything queued; all answered writes are durable.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.handle.tx.send(Cmd::Shutdown);
        if let Some(c) = self.core.take() {
            let _ = c.join();
        }
        if let Some(s) = self.syncer.take() {
            let _ = s.join();
        }
    }
}

impl Drop for DurableNode {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NodeHandle {
    fn send<T, E>(
        &self,
        make: impl FnOnce(Reply<T, E>) -> Cmd,
    ) -> Result<oneshot::Receiver<Result<T, E>>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Stopped)?;
        Ok(rx)
    }

    /// Blocking call; must not be used from inside an async runtime (use the `_async` forms).
    fn call<T, E: From<Stopped>>(&self, make: impl FnOnce(Reply<T, E>) -> Cmd) -> Result<T, E> {
        self.send(make)?.blocking_recv().map_err(|_| Stopped)?
    }

    async fn call_async<T, E: From<Stopped>>(
        &self,
        make: impl FnOnce(Reply<T, E>) -> Cmd,
    ) -> Result<T, E> {
        self.send(make)?.await.map_err(|_| Stopped)?
    }

    /// The node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// Seconds since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ingests readings into a sensor document; returns once they are durable.
    ///
    /// The ingest runs on the calling thread, under the core's lock (no hop to the core
    /// thread: with `wal` the answer needs none), unless `ingest_window_ms` asks the core
    /// thread to gather ingests.
    pub fn ingest(
        &self,
        doc: DocId,
        readings: Vec<Reading>,
    ) -> Result<Vec<IngestOutcome>, WriteError> {
        validate(&readings)?;
        if !self.direct {
            return self.call(ingest_cmd(doc, readings));
        }
        let (tx, rx) = oneshot::channel();
        self.core.queued.lock().push((doc, readings, tx));
        match Locked::new(&self.core) {
            // Ours, and whatever other callers queued meanwhile (unless the thread that held
            // the lock before took ours with its own).
            Some(mut core) => self.ingest_queued(&mut core, None),
            None => {
                self.core.queued.lock().clear();
                return Err(Stopped.into());
            }
        }
        rx.blocking_recv().map_err(|_| Stopped)?
    }

    /// [`NodeHandle::ingest`] for async callers. An async caller does not wait for the core's
    /// lock: while another thread holds it, the ingest goes to the core thread's queue.
    pub async fn ingest_async(
        &self,
        doc: DocId,
        readings: Vec<Reading>,
    ) -> Result<Vec<IngestOutcome>, WriteError> {
        validate(&readings)?;
        if !self.direct {
            return self.call_async(ingest_cmd(doc, readings)).await;
        }
        let rx = match Locked::try_new(&self.core) {
            Ok(Some(mut core)) => {
                let (tx, rx) = oneshot::channel();
                self.ingest_queued(&mut core, Some((doc, readings, tx)));
                rx
            }
            Ok(None) => return Err(Stopped.into()),
            Err(()) => self.send(ingest_cmd(doc, readings))?,
        };
        rx.await.map_err(|_| Stopped)?
    }

    /// Ingests what callers queued, and `own`, on this thread; each is answered once durable
    /// (at once with `wal`).
    fn ingest_queued(&self, core: &mut Core, own: Option<QueuedIngest>) {
        let mut batch = std::mem::take(&mut *self.core.queued.lock());
        batch.extend(own);
        if batch.is_empty() {
            return;
        }
        core.ingest_batch(batch);
        core.after_turn(&self.tx);
    }

    /// Applies a JSON merge patch to a generic document; returns once durable. `false` when the
    /// patch changed nothing.
    pub fn patch(&self, doc: DocId, patch: Json) -> Result<bool, WriteError> {
        self.call(|reply| Cmd::Patch { doc, patch, reply })
    }

    /// [`NodeHandle::patch`] for async callers.
    pub async fn patch_async(&self, doc: DocId, patch: Json) -> Result<bool, WriteError> {
        self.call_async(|reply| Cmd::Patch { doc, patch, reply })
            .await
    }

    /// The JSON view of a document (`None` if unknown): for a sensor document
    /// `{"readings": {ID: {"ts", "fields"}}, "latest": ...}`, for a generic one its JSON. With
    /// `conflicts`, the raw document with concurrent values as `{"$conflicts": [...]}`.
    pub fn json(&self, doc: DocId, conflicts: bool) -> Result<Option<Json>, ReadError> {
        self.call(|reply| Cmd::Json {
            doc,
            conflicts,
            reply,
        })
    }

    /// [`NodeHandle::json`] for async callers.
    pub async fn json_async(&self, doc: DocId, conflicts: bool) -> Result<Option<Json>, ReadError> {
        self.call_async(|reply| Cmd::Json {
            doc,
            conflicts,
            reply,
        })
        .await
    }

    /// A page of a stream's readings in (timestamp, id) order (`None` for an unknown stream):
    /// those in `range.from_ms..range.to_ms` after `range.after`, at most `range.limit`
    /// (capped at [`edgesync_proto::stream::PAGE_MAX`]), with the stream's latest reading and
    /// the cursor of the next page. Loads only the buckets the page needs.
    pub fn read_range(&self, stream: DocId, range: Range) -> Result<Option<Page>, ReadError> {
        self.call(|reply| Cmd::Range {
            stream,
            range,
            reply,
        })
    }

    /// [`NodeHandle::read_range`] for async callers.
    pub async fn read_range_async(
        &self,
        stream: DocId,
        range: Range,
    ) -> Result<Option<Page>, ReadError> {
        self.call_async(|reply| Cmd::Range {
            stream,
            range,
            reply,
        })
        .await
    }

    /// The latest reading of a stream (greatest timestamp, then id): `None` for an unknown
    /// stream, `Some(None)` for one without readings. Reads the newest bucket only.
    pub fn latest(&self, stream: DocId) -> Result<Option<Option<Reading>>, ReadError> {
        self.call(|reply| Cmd::Latest { stream, reply })
    }

    /// [`NodeHandle::latest`] for async callers.
    pub async fn latest_async(&self, stream: DocId) -> Result<Option<Option<Reading>>, ReadError> {
        self.call_async(|reply| Cmd::Latest { stream, reply }).await
    }

    /// Every document id.
    pub fn docs(&self) -> Result<Vec<DocId>, ReadError> {
        self.call(|reply| Cmd::Docs { reply })
    }

    /// [`NodeHandle::docs`] for async callers.
    pub async fn docs_async(&self) -> Result<Vec<DocId>, ReadError> {
        self.call_async(|reply| Cmd::Docs { reply }).await
    }

    /// Status, with the unacknowledged change count of each of `peers`.
    pub async fn status_async(&self, peers: Vec<NodeName>) -> Result<NodeStatus, Stopped> {
        self.call_async(|reply| Cmd::Status { peers, reply }).await
    }

    /// A page of the change feed: up to `limit` (1 to [`FEED_PAGE_MAX`]) durable events after
    /// `after` (from the oldest held when `None`) of the documents `docs` matches (all when
    /// `None`), looking at most at [`FEED_SCAN_MAX`] events, and the cursor to resume from.
    /// Resuming from `next` yields every later event once. [`FeedError::Gone`] when `after`
    /// is older than what the feed holds (it follows `feed_events_max`) or of another store.
    pub async fn feed(
        &self,
        after: Option<edgesync_proto::Cursor>,
        limit: usize,
        docs: Option<DocPattern>,
    ) -> Result<edgesync_proto::FeedPage, FeedError> {
        let limit = limit.clamp(1, FEED_PAGE_MAX);
        self.call_async(|reply| Cmd::Feed {
            after,
            limit,
            docs,
            reply,
        })
        .await
    }

    /// The feed's newest durable cursor, changing as events become durable: wait on it for
    /// more after a page that ended at the head.
    pub fn feed_head(&self) -> watch::Receiver<edgesync_proto::Cursor> {
        self.feed_head.clone()
    }

    /// Every document change from now on (local or remote), once durable. A slow subscriber
    /// that falls more than 1,024 events behind gets `Lagged` and continues.
    pub fn subscribe(&self) -> broadcast::Receiver<DocEvent> {
        self.events.subscribe()
    }

    /// A link to `peer` (authenticated by the transport: its certificate's name, role and
    /// site) is up: starts a session whose frames go to `out`.
    pub async fn peer_up(
        &self,
        peer: Identity,
        out: OutboundSender,
    ) -> Result<SessionId, SessionError> {
        self.call_async(|reply| Cmd::PeerUp { peer, out, reply })
            .await
    }

    /// A frame arrived on a session's link. `credit`, from the link's [`InboundCredit`], is
    /// returned to the link once the core has handled the frame.
    pub fn peer_input(
        &self,
        sid: SessionId,
        frame: Vec<u8>,
        credit: Option<InboundHeld>,
    ) -> Result<(), Stopped> {
        let cmd = Cmd::PeerInput {
            sid,
            frame,
            _credit: credit,
        };
        self.tx.send(cmd).map_err(|_| Stopped)
    }

    /// The allowance for one link's frames waiting for the core
    /// ([`NodeOptions::link_inbound_bytes_max`]).
    pub fn inbound_credit(&self) -> InboundCredit {
        InboundCredit::new(self.link_inbound_bytes_max)
    }

    /// Ends every session with a Close frame (code `Shutdown`); each link then finishes and
    /// closes. Returns how many sessions were closed.
    pub async fn close_sessions_async(&self, reason: &str) -> Result<usize, Stopped> {
        let reason = reason.to_string();
        self.call_async(|reply| Cmd::CloseSessions { reason, reply })
            .await
    }

    /// A session's link is gone.
    pub fn peer_down(&self, sid: SessionId) {
        let _ = self.tx.send(Cmd::PeerDown { sid });
    }

    /// False once a store write or fsync failed.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// RocksDB's memory now (memtables, table readers, block cache).
    pub fn store_memory(&self) -> crate::store::StoreMemory {
        self.store_memory.memory()
    }

    /// Whether `peer` refused this node as a second node run from a copy of its store (then
    /// the node does not dial it again until it restarts).
    pub fn refused_as_copy(&self, peer: &NodeName) -> bool {
        self.copy_refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(peer)
    }

    /// False once the core thread has stopped (shut down, or a panic): nothing is served.
    pub fn is_core_alive(&self) -> bool {
        self.core_alive.load(Ordering::SeqCst)
    }

    /// Bytes written to the store since start.
    pub fn bytes_written(&self) -> u64 {
        self.health.bytes_written()
    }
}

/// Validates `readings` on the caller's thread, before the core's time (the scarce one) is
/// spent on them.
fn validate(readings: &[Reading]) -> Result<(), WriteError> {
    for r in readings {
        r.validate().map_err(NodeError::from)?;
    }
    Ok(())
}

/// The ingest request for the core thread's queue.
fn ingest_cmd(doc: DocId, readings: Vec<Reading>) -> impl FnOnce(IngestReply) -> Cmd {
    move |reply| Cmd::Ingest {
        doc,
        readings,
        reply,
    }
}

/// An answer waiting for durability.
enum Waiting {
    Ingest(IngestReply, Vec<IngestOutcome>),
    Patch(Reply<bool, WriteError>, bool),
}

impl Waiting {
    /// Sends the answer, or `failed`, the error that kept it from becoming durable.
    fn finish(self, failed: Option<WriteError>) {
        match self {
            Waiting::Ingest(reply, out) => {
                let _ = reply.send(failed.map_or(Ok(out), Err));
            }
            Waiting::Patch(reply, changed) => {
                let _ = reply.send(failed.map_or(Ok(changed), Err));
            }
        }
    }
}

struct Core {
    node: Node<RocksStore>,
    opts: NodeOptions,
    kick: Sender<()>,
    /// How far the syncer made the store durable, read without waiting for its report.
    synced: crate::store::Syncer,
    /// Answers waiting for durability, in commit order: (commit, answer).
    waiting: VecDeque<(u64, Waiting)>,
    /// Open sessions and their links.
    links: BTreeMap<SessionId, OutboundSender>,
    events: broadcast::Sender<DocEvent>,
    /// Tells feed readers the newest durable cursor.
    feed_head: watch::Sender<edgesync_proto::Cursor>,
    /// When housekeeping (unloading closed buckets, retention, pruning) next runs.
    housekeep_at: u64,
    /// When the core thread wakes unless a request comes first (ms; 0 while it works, as it
    /// looks at every deadline before it sleeps again): whoever gives the core an earlier
    /// deadline wakes it ([`Core::needs_wake`]).
    asleep_until: u64,
    /// Sessions this node ended on a peer's input, by close code: at most one entry per code.
    refused: BTreeMap<&'static str, u64>,
    copy_refusals: CopyRefusals,
    /// Slot conflicts reported since start ([`Event::SlotConflict`]).
    slot_conflicts: u64,
}

/// Closed buckets snapshotted per housekeeping turn: bounded work off the write path.
const COMPACT_PER_TURN: usize = 16;

/// How often retention looks for buckets past the horizon and pruning for acknowledged closed
/// buckets, ms: a bucket is pruned at most this long after its last acknowledgement.
const EXPIRE_INTERVAL_MS: u64 = 10_000;

/// The core thread: due timers and housekeeping, then the requests queued for the core, a turn
/// at a time, each turn under the core's lock.
fn run_core(shared: &Shared, rx: Receiver<Cmd>) {
    let mut pending: Option<Cmd> = None;
    loop {
        let wait = {
            let Some(mut core) = Locked::new(shared) else {
                return;
            };
            // Due timers fire on every turn, not only when no request is waiting: a steady
            // stream of input (one busy peer) must not starve another session's timeouts.
            let now = os::now_ms();
            if core.node.poll_timeout().is_some_and(|at| at <= now) {
                core.node.handle_timeout(now);
            }
            if core.housekeep_at <= now {
                core.housekeep(now);
            }
            core.pump();
            let at = core
                .node
                .poll_timeout()
                .map_or(core.housekeep_at, |t| t.min(core.housekeep_at));
            core.asleep_until = if pending.is_some() { now } else { at };
            Duration::from_millis(at.saturating_sub(os::now_ms()))
        };
        let first = match pending.take() {
            Some(c) => c,
            None => match rx.recv_timeout(wait) {
                Ok(c) => c,
                // Due timers fire at the top of the loop.
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let Some(mut core) = Locked::new(shared) else {
            return;
        };
        core.asleep_until = 0;
        let mut ingests: Vec<QueuedIngest> = Vec::new();
        let mut readings = 0usize;
        let mut cmd = Some(first);
        let deadline = Instant::now() + Duration::from_millis(core.opts.ingest_window_ms);
        let mut stop = false;
        let mut taken = 0;
        while let Some(c) = cmd.take() {
            taken += 1;
            match c {
                Cmd::Ingest {
                    doc,
                    readings: rs,
                    reply,
                } => {
                    readings += rs.len();
                    ingests.push((doc, rs, reply));
                }
                Cmd::Shutdown => {
                    stop = true;
                    break;
                }
                other => {
                    // Other requests wait for the ingests before them (order is kept).
                    if ingests.is_empty() {
                        core.handle(other);
                        // A peer's input may have committed (receipts, changes) and built
                        // batches that wait for that commit: the syncer starts on it now and
                        // what is already durable leaves, not only at the end of the turn.
                        core.pump();
                    } else {
                        pending = Some(other);
                        break;
                    }
                }
            }
            // A turn ends after a bounded number of requests, so that released frames go out
            // and timers fire (top of the loop) however steady the input.
            if readings >= core.opts.ingest_batch_max || taken >= TURN_REQUESTS_MAX {
                break;
            }
            cmd = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(_) if !ingests.is_empty() => rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
                Err(_) => None,
            };
        }
        if !ingests.is_empty() {
            core.ingest_batch(ingests);
            // As after every request: the syncer starts on the journal's commit now, not
            // after the next turn's timers (a window being filled takes a while).
            core.pump();
        }
        if stop {
            // Callers are told `Stopped` from here on; the core is finished outside the lock.
            core.take().finish();
            return;
        }
    }
    if let Some(core) = Locked::new(shared) {
        core.take().finish();
    }
}

impl Core {
    /// A clean stop: journal folded, a last sync, everything waiting answered.
    fn finish(mut self) {
        self.node.shutdown();
        self.pump();
        // A clean stop: the next open keeps the actor whatever the durability (the record is
        // durable only with everything before it).
        if !self.node.is_poisoned() {
            if let Err(e) = self.node.record_clean_stop() {
                tracing::warn!(error = %e, "could not record a clean stop");
            }
        }
        // Answer what is still waiting with one last sync.
        let syncer = self.node.store().syncer();
        self.durable(syncer.sync().map_err(Arc::new));
    }

    /// After work on a thread other than the core thread: [`Core::pump`], and wake the core
    /// thread through `wake` if the work gave the core an earlier deadline than it sleeps until.
    fn after_turn(&mut self, wake: &Sender<Cmd>) {
        self.pump();
        if self.needs_wake() {
            let _ = wake.send(Cmd::Wake);
        }
    }

    /// Whether the core thread sleeps past the core's next deadline (a caller's ingest started
    /// the journal's fold timer, a released frame an acknowledgement timer): then the caller
    /// wakes it, once per such deadline.
    fn needs_wake(&mut self) -> bool {
        match self.node.poll_timeout() {
            Some(at) if at < self.asleep_until => {
                self.asleep_until = at;
                true
            }
            _ => false,
        }
    }

    /// Housekeeping: snapshots and unloads closed buckets, drops the buckets past the horizon
    /// and prunes the acknowledged closed ones, a bounded number per turn, and sets when to
    /// look again.
    fn housekeep(&mut self, now: u64) {
        if let Err(e) = self.node.compact_closed(now, COMPACT_PER_TURN) {
            tracing::warn!(error = %e, "snapshotting closed buckets failed");
        }
        self.node.evict_closed(now);
        if let Err(e) = self.node.trim_feed_if_due(now) {
            tracing::warn!(error = %e, "trimming the change feed failed");
        }
        let dropped = match self.node.expire(now) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "retention could not drop buckets");
                0
            }
        };
        let pruned = if self.node.config().prune_after_ack.is_empty() {
            0
        } else {
            match self.node.prune(now) {
                Ok(n) => {
                    metrics::counter!("edgesync_buckets_pruned_total").increment(n as u64);
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed");
                    0
                }
            }
        };
        // A full batch means more are due: go on next turn (requests in between still run).
        let next = if dropped == EXPIRE_BATCH_MAX || pruned == EXPIRE_BATCH_MAX {
            now
        } else {
            now + EXPIRE_INTERVAL_MS
        };
        self.housekeep_at = next;
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Patch { doc, patch, reply } => match self.node.patch(&doc, &patch, os::now_ms()) {
                Ok(p) => self.wait(p.durable_at, Waiting::Patch(reply, p.changed)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Cmd::Json {
                doc,
                conflicts,
                reply,
            } => {
                // A stream (its buckets, or a sensor document of that name) reads as its first
                // page; a generic document as its JSON.
                let view = match self.node.is_stream(&doc) {
                    Ok(true) if !conflicts || self.node.has_buckets(&doc) => self
                        .node
                        .read_stream(&doc, &Range::default())
                        .map(|p| p.map(|p| p.to_json())),
                    Ok(_) => self.node.json(&doc, conflicts),
                    Err(e) => Err(e),
                };
                let _ = reply.send(view.map_err(ReadError::from));
            }
            Cmd::Range {
                stream,
                range,
                reply,
            } => {
                let _ = reply.send(
                    self.node
                        .read_stream(&stream, &range)
                        .map_err(ReadError::from),
                );
            }
            Cmd::Latest { stream, reply } => {
                let _ = reply.send(self.node.latest(&stream).map_err(ReadError::from));
            }
            Cmd::Feed {
                after,
                limit,
                docs,
                reply,
            } => {
                let wanted = |d: &DocId| docs.as_ref().is_none_or(|p| p.matches(d));
                let page = self
                    .node
                    .feed(after, limit, FEED_SCAN_MAX, &wanted)
                    .map_err(|e| match e {
                        edgesync_proto::FeedReadError::Gone { oldest, .. } => {
                            FeedError::Gone { oldest }
                        }
                        edgesync_proto::FeedReadError::Node(e) => FeedError::Core(e),
                    });
                let _ = reply.send(page);
            }
            Cmd::Docs { reply } => {
                // Documents that so far hold only journaled readings are listed once folded.
                let listed = self
                    .node
                    .fold_journal()
                    .map(|_| self.node.docs().map(|(d, _)| d.clone()).collect());
                let _ = reply.send(listed.map_err(ReadError::from));
            }
            Cmd::PeerUp { peer, out, reply } => {
                if self.node.is_poisoned() {
                    let _ = reply.send(Err(SessionError::Poisoned));
                    return;
                }
                let sid = self.node.connect(peer, os::now_ms());
                self.links.insert(sid, out);
                let _ = reply.send(Ok(sid));
            }
            Cmd::PeerInput { sid, frame, .. } => {
                if self.links.contains_key(&sid) {
                    self.node.handle_input(sid, &frame, os::now_ms());
                }
            }
            Cmd::CloseSessions { reason, reply } => {
                let sids: Vec<SessionId> = self.links.keys().copied().collect();
                for sid in &sids {
                    self.node.close_session(*sid, CloseCode::Shutdown, &reason);
                }
                let _ = reply.send(Ok(sids.len()));
            }
            Cmd::PeerDown { sid } => {
                if self.links.contains_key(&sid) {
                    self.node.disconnect(sid);
                }
            }
            Cmd::Status { peers, reply } => {
                let _ = reply.send(Ok(self.status(peers)));
            }
            Cmd::Durable(r) => self.durable(r),
            Cmd::Wake => {}
            Cmd::Ingest { .. } | Cmd::Shutdown => unreachable!("handled by run_core"),
        }
    }

    fn status(&mut self, peers: Vec<NodeName>) -> NodeStatus {
        let sessions: Vec<SessionStatus> = self
            .node
            .sessions()
            .iter()
            .map(|s| SessionStatus {
                session: s.id.0,
                peer: s.peer.to_string(),
                live: s.live,
                inflight_batches: s.inflight_batches,
                stats: s.stats.clone(),
            })
            .collect();
        let totals = self.node.session_totals();
        NodeStatus {
            name: self.node.name().to_string(),
            docs: self.node.docs().count(),
            commits: self.node.commit_seq(),
            durable_commits: self.node.durable_seq(),
            pending_changes: self.node.pending_changes(),
            journal_readings: self.node.journal_len(),
            healthy: !self.node.is_poisoned() && self.node.store().syncer().is_healthy(),
            sessions,
            unacked: peers
                .iter()
                .map(|p| (p.to_string(), self.node.peer_unacked(p)))
                .collect(),
            totals,
            pruning: self.node.prune_status(),
            refused_sessions: self
                .refused
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            refused_as_copy: self
                .copy_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            actor_slots: ActorSlots {
                slot: self
                    .node
                    .actor_slots_left()
                    .map(|_| self.node.meta().actor_slot),
                left: self.node.actor_slots_left(),
                settled: self.node.is_settled(),
                exhausted: self.node.slots_exhausted(),
                conflicts: self.slot_conflicts,
            },
        }
    }

    /// After every request: start making new commits durable, send released frames, publish
    /// events, and end the links of closed sessions.
    fn pump(&mut self) {
        // What the syncer made durable while another thread held the core: its report is
        // queued behind that thread's turn, and frames need not wait for it.
        let synced = self.synced.durable().min(self.node.commit_seq());
        if synced > self.node.durable_seq() {
            self.durable(Ok(synced));
        }
        if self.node.commit_seq() > self.node.durable_seq() {
            let _ = self.kick.send(());
        }
        let sids: Vec<SessionId> = self.links.keys().copied().collect();
        for sid in sids {
            self.transmit(sid);
        }
        while let Some(ev) = self.node.poll_event() {
            match ev {
                Event::DocChanged { doc, origin } => {
                    let origin = match origin {
                        Origin::Local => "local".to_string(),
                        Origin::Remote(p) => p.to_string(),
                    };
                    let _ = self.events.send(DocEvent {
                        doc: doc.to_string(),
                        origin,
                    });
                }
                // The store is durable up to what the Ack promised (the core released it).
                Event::Acknowledged { .. } => {}
                Event::DocDropped { doc } => {
                    tracing::debug!(%doc, "retention dropped a bucket");
                    metrics::counter!("edgesync_buckets_dropped_total").increment(1);
                }
                Event::Folded(f) => {
                    metrics::counter!("edgesync_journal_folded_readings_total")
                        .increment(f.readings as u64);
                    metrics::histogram!("edgesync_journal_fold_wait_seconds")
                        .record(f.waited_ms as f64 / 1000.0);
                }
                Event::FoldFailed { reason } => {
                    tracing::warn!(%reason, "folding the ingest journal failed; the readings stay journaled");
                }
                Event::Settled { peer, slot } => {
                    tracing::info!(%peer, slot, "learned this node's actor slot from a peer; authoring");
                }
                Event::SlotConflict { peer, slot } => {
                    self.slot_conflicts += 1;
                    metrics::counter!("edgesync_actor_slot_conflicts_total").increment(1);
                    tracing::error!(
                        %peer,
                        slot,
                        "a peer holds a statement of this node's certificate for slot {slot} under another authoring key: another store runs, or ran, under this certificate; give one of them a new certificate"
                    );
                }
                // The session closes next with `Overloaded`; the close is logged there.
                Event::LimitExceeded { peer, limit } => {
                    metrics::counter!("edgesync_peer_limit_exceeded_total", "peer" => peer.to_string(), "limit" => limit).increment(1);
                }
                Event::SessionClosed {
                    session,
                    peer,
                    code,
                    reason,
                    by_peer,
                } => {
                    let out = self.links.remove(&session);
                    // The Close frame (and nothing else: closing cleared the queue) goes out
                    // whatever the bound.
                    while let Some(frame) = self.node.poll_transmit(session) {
                        if let Some(out) = &out {
                            out.send(Outbound::Frame(frame));
                        }
                    }
                    let code_name = code.map_or("transport-lost", CloseCode::name);
                    if code == Some(CloseCode::Cloned) && by_peer {
                        tracing::error!(%peer, %reason, "the peer refused this node as a second node run from a copy of its store: another node runs from a copy of this data directory; stop one of them (a copy meant to replace the node is started from `edgesync backup`/`edgesync restore`). This node no longer dials the peer until it restarts");
                        let mut refusals =
                            self.copy_refusals.lock().unwrap_or_else(|p| p.into_inner());
                        refusals.insert(peer.clone(), reason.clone());
                        metrics::gauge!("edgesync_refused_as_copy_peers")
                            .set(refusals.len() as f64);
                    }
                    if let Some(c) = code.filter(|c| !by_peer && *c != CloseCode::Shutdown) {
                        *self.refused.entry(c.name()).or_default() += 1;
                        metrics::counter!("edgesync_sessions_refused_total", "code" => c.name())
                            .increment(1);
                    }
                    if code.is_some_and(|c| c != CloseCode::Shutdown) {
                        tracing::warn!(%peer, session = session.0, by_peer, code = code_name, %reason, "session closed");
                    } else {
                        tracing::info!(%peer, session = session.0, by_peer, code = code_name, %reason, "session closed");
                    }
                    if let Some(out) = out {
                        out.send(Outbound::Close(SessionEnd { code, reason }));
                    }
                }
            }
        }
    }

    /// Hands the session's released frames to its link, within the link's byte bound: a peer
    /// that does not read ends its session with `Overloaded` instead of growing the queue.
    fn transmit(&mut self, sid: SessionId) {
        let max = self.opts.link_outbound_bytes_max;
        while let Some(frame) = self.node.poll_transmit(sid) {
            let Some(out) = self.links.get(&sid) else {
                continue;
            };
            let queued = out.queued();
            if queued + frame.len() > max {
                let peer = self.peer_of(sid);
                metrics::counter!("edgesync_peer_limit_exceeded_total", "peer" => peer, "limit" => "link_outbound_bytes").increment(1);
                let reason = format!("peer reads too slowly: {queued} bytes queued for it");
                self.node.close_session(sid, CloseCode::Overloaded, &reason);
                // The Close frame follows with the session's end (see `pump`).
                return;
            }
            out.send(Outbound::Frame(frame));
        }
    }

    fn peer_of(&self, sid: SessionId) -> String {
        self.node
            .sessions()
            .into_iter()
            .find(|s| s.id == sid)
            .map_or_else(String::new, |s| s.peer.to_string())
    }

    /// Ingests a batch: all readings for one document become one core ingest (one change).
    fn ingest_batch(&mut self, batch: Vec<QueuedIngest>) {
        let mut by_doc: BTreeMap<DocId, DocRequests> = BTreeMap::new();
        for (doc, rs, reply) in batch {
            by_doc.entry(doc).or_default().push((rs, reply));
        }
        for (doc, requests) in by_doc {
            if let [(rs, _)] = &requests[..] {
                let done = self.ingest_one(&doc, rs);
                self.answer(done, requests);
                continue;
            }
            let all: Vec<Reading> = requests
                .iter()
                .flat_map(|(rs, _)| rs.iter().cloned())
                .collect();
            match self.ingest_one(&doc, &all) {
                Ok(done) => self.answer(Ok(done), requests),
                // One request's refusal (a reading too old, say) is not another's: a refusal
                // wrote nothing, so each is ingested alone and answered for itself.
                Err(_) => {
                    for (rs, reply) in requests {
                        let done = self.ingest_one(&doc, &rs);
                        self.answer(done, vec![(rs, reply)]);
                    }
                }
            }
        }
    }

    fn ingest_one(&mut self, doc: &DocId, readings: &[Reading]) -> Result<Ingested, WriteError> {
        let started = Instant::now();
        let done = self.node.ingest(doc, readings, os::now_ms())?;
        metrics::histogram!("edgesync_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok(done)
    }

    /// Answers `requests`, whose readings were ingested together, in order, as `done` says.
    fn answer(&mut self, done: Result<Ingested, WriteError>, requests: DocRequests) {
        match done {
            Ok(done) => {
                let mut outcomes = done.outcomes.into_iter();
                for (rs, reply) in requests {
                    let mine: Vec<IngestOutcome> = outcomes.by_ref().take(rs.len()).collect();
                    self.wait(done.durable_at, Waiting::Ingest(reply, mine));
                }
            }
            Err(e) => {
                for (_, reply) in requests {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Answers `w` once commit `durable_at` is durable: at once if it already is (a duplicate
    /// reading or an empty patch commits nothing new, and no later durability report may come).
    fn wait(&mut self, durable_at: u64, w: Waiting) {
        self.waiting.push_back((durable_at, w));
        self.release();
    }

    /// Answers, in commit order, every waiting request whose commit is durable (with
    /// [`Durability::Wal`]: written, which every commit the core made is).
    fn release(&mut self) {
        let answerable = match self.opts.durability {
            Durability::Fsync => self.node.durable_seq(),
            Durability::Wal => self.node.commit_seq(),
        };
        while self
            .waiting
            .front()
            .is_some_and(|(at, _)| *at <= answerable)
        {
            let (_, w) = self.waiting.pop_front().expect("checked");
            w.finish(None);
        }
    }

    fn durable(&mut self, r: Result<u64, Arc<StoreError>>) {
        match r {
            Ok(seq) => {
                self.node.handle_durable(seq.min(self.node.commit_seq()));
                let head = self.node.feed_head();
                self.feed_head
                    .send_if_modified(|h| std::mem::replace(h, head) != head);
                self.release();
            }
            Err(e) => {
                for (_, w) in self.waiting.drain(..) {
                    w.finish(Some(WriteError::NotDurable(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The handle reports the core thread alive while it runs and stopped once it ended.
    #[test]
    fn handles_see_whether_the_core_thread_is_alive() {
        let (_dir, node, h) = started(Config::new(NodeName::new("n1").unwrap()));
        assert!(h.is_core_alive());
        node.shutdown();
        assert!(!h.is_core_alive());
        assert!(matches!(h.docs(), Err(ReadError::Stopped)));
        assert!(matches!(
            h.ingest(doc("site/s-1"), vec![reading("r1", 1)]),
            Err(WriteError::Stopped)
        ));
    }

    /// A node of `cfg` in a new directory, and a handle.
    fn started(cfg: Config) -> (tempfile::TempDir, DurableNode, NodeHandle) {
        let dir = tempfile::tempdir().unwrap();
        let node = DurableNode::start(NodeOptions::new(cfg, dir.path())).unwrap();
        let h = node.handle();
        (dir, node, h)
    }

    fn doc(d: &str) -> DocId {
        DocId::new(d).unwrap()
    }

    fn reading(id: &str, v: i64) -> Reading {
        Reading::from_json(id, 1_700_000_000_000 + v, &serde_json::json!({ "v": v })).unwrap()
    }

    // While a thread holds the core, the syncer's report of an fsync waits in the core
    // thread's queue; the holder's pump takes how far the store is durable from the store
    // itself, so what waits for that commit (frames, answers) need not wait for the turn.
    #[test]
    fn a_pump_takes_the_durability_the_syncer_reached_while_the_core_was_held() {
        let (_dir, node, h) = started(Config::new(NodeName::new("n1").unwrap()));
        {
            let mut core = Locked::new(&h.core).expect("running");
            let before = core.node.commit_seq();
            core.node
                .ingest(&doc("site/s-1"), &[reading("r1", 1)], os::now_ms())
                .unwrap();
            let n = core.node.commit_seq();
            assert!(n > before, "the ingest committed");
            assert!(core.node.durable_seq() < n);
            assert_eq!(core.node.store().syncer().sync().unwrap(), n);
            core.pump();
            assert_eq!(
                core.node.durable_seq(),
                n,
                "taken without the syncer's report"
            );
        }
        node.shutdown();
    }

    // An ingest on the caller's thread starts the journal's fold timer while the core thread
    // sleeps until its next housekeeping (seconds away): the caller wakes it, and the reading
    // is folded on time, with no other request to wake the core.
    #[test]
    fn a_callers_ingest_wakes_the_core_thread_for_the_fold() {
        let mut cfg = Config::new(NodeName::new("n1").unwrap());
        cfg.journal_fold_ms = 50;
        let (_dir, node, h) = started(cfg);
        // The core thread has gone to sleep until its next housekeeping.
        std::thread::sleep(Duration::from_millis(200));
        let out = h.ingest(doc("site/s-1"), vec![reading("r1", 1)]).unwrap();
        assert_eq!(out, vec![IngestOutcome::Inserted]);
        let journaled = || {
            let core = Locked::new(&h.core).expect("running");
            core.node.journal_len()
        };
        let started = Instant::now();
        while journaled() > 0 && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(journaled(), 0, "folded within its interval");
        node.shutdown();
    }

    // Writers on many threads ingest on their own threads (sharing commits): every reading is
    // inserted exactly once (the others are duplicates) and is there after a restart.
    #[test]
    fn concurrent_callers_insert_each_reading_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || NodeOptions::new(Config::new(NodeName::new("n1").unwrap()), dir.path());
        let node = DurableNode::start(opts()).unwrap();
        let inserted: usize = (0..8)
            .map(|w| {
                let h = node.handle();
                std::thread::spawn(move || {
                    let mut inserted = 0;
                    for i in 0..100 {
                        // Every writer writes the shared readings, and some of its own.
                        let shared = h.ingest(doc("site/s-1"), vec![reading(&format!("r{i}"), i)]);
                        let own = h.ingest(
                            doc(&format!("site/w-{w}")),
                            vec![reading(&format!("w{w}-{i}"), i)],
                        );
                        for out in [shared.unwrap(), own.unwrap()] {
                            inserted += out
                                .iter()
                                .filter(|o| **o == IngestOutcome::Inserted)
                                .count();
                        }
                    }
                    inserted
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(inserted, 100 + 8 * 100);
        node.shutdown();
        let node = DurableNode::start(opts()).unwrap();
        let h = node.handle();
        let count = |d: &str| {
            let page = h.read_range(doc(d), Range::default()).unwrap().unwrap();
            page.readings.len()
        };
        assert_eq!(count("site/s-1"), 100);
        for w in 0..8 {
            assert_eq!(count(&format!("site/w-{w}")), 100);
        }
        node.shutdown();
    }

    // Requests ingested together (callers that queued meanwhile) are answered each for
    // itself: one caller's refused reading does not refuse another's.
    #[test]
    fn a_refused_request_does_not_refuse_the_ones_batched_with_it() {
        let (_dir, node, h) = started(Config::new(NodeName::new("n1").unwrap()));
        let too_far = Reading::from_json(
            "far",
            edgesync_proto::stream::TS_LIMIT_MS,
            &serde_json::json!({ "v": 1 }),
        )
        .unwrap();
        let (good, bad, good2) = (oneshot::channel(), oneshot::channel(), oneshot::channel());
        {
            let mut core = Locked::new(&h.core).expect("running");
            core.ingest_batch(vec![
                (doc("site/s-1"), vec![reading("r1", 1)], good.0),
                (doc("site/s-1"), vec![too_far], bad.0),
                (doc("site/s-1"), vec![reading("r2", 2)], good2.0),
            ]);
        }
        assert_eq!(
            good.1.blocking_recv().unwrap().unwrap(),
            vec![IngestOutcome::Inserted]
        );
        assert!(matches!(
            bad.1.blocking_recv().unwrap(),
            Err(WriteError::Refused(e)) if matches!(*e, NodeError::TooFarAhead { .. })
        ));
        assert_eq!(
            good2.1.blocking_recv().unwrap().unwrap(),
            vec![IngestOutcome::Inserted]
        );
        let page = h
            .read_range(doc("site/s-1"), Range::default())
            .unwrap()
            .unwrap();
        assert_eq!(page.readings.len(), 2);
        node.shutdown();
    }

    // The syncer does not wait for the core's lock to report what it made durable: while
    // another thread holds the core, its next fsync starts at once, over what the holder
    // committed meanwhile (the report goes through the core thread's queue).
    #[test]
    fn the_syncer_keeps_syncing_while_another_thread_holds_the_core() {
        let (_dir, node, h) = started(Config::new(NodeName::new("n1").unwrap()));
        let mut core = Locked::new(&h.core).expect("running");
        let syncer = core.node.store().syncer();
        for i in 0..3 {
            let r = reading(&format!("r{i}"), i);
            core.node
                .ingest(&doc("site/s-1"), &[r], os::now_ms())
                .unwrap();
            // Starts the fsync of the new commit.
            core.pump();
            let target = core.node.commit_seq();
            let started = Instant::now();
            while syncer.durable() < target && started.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(syncer.durable() >= target, "commit {target} made durable");
        }
        drop(core);
        // The reports queued meanwhile reach the core: everything is durable for it too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            let s = rt.block_on(h.status_async(vec![])).unwrap();
            if s.durable_commits == s.commits || started.elapsed() > Duration::from_secs(3) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.durable_commits, status.commits);
        node.shutdown();
    }

    // A panic while a thread holds the core ends the node, as a panic of the core thread
    // does: the core may be half-changed, so no one uses it again.
    #[test]
    fn a_panic_holding_the_core_stops_the_node() {
        let (_dir, node, h) = started(Config::new(NodeName::new("n1").unwrap()));
        h.ingest(doc("site/s-1"), vec![reading("r1", 1)]).unwrap();
        let core = h.core.clone();
        let panicked = std::thread::spawn(move || {
            let _held = Locked::new(&core).expect("running");
            panic!("a bug while holding the core");
        })
        .join();
        assert!(panicked.is_err());
        assert!(matches!(
            h.ingest(doc("site/s-1"), vec![reading("r2", 2)]),
            Err(WriteError::Stopped)
        ));
        assert!(matches!(h.docs(), Err(ReadError::Stopped)));
        node.shutdown();
        assert!(!h.is_core_alive());
    }

    // A session whose handshake never completes times out on time even while other input
    // keeps the core's channel busy without a pause.
    #[test]
    fn timers_fire_while_input_keeps_the_core_busy() {
        let mut cfg = Config::new(NodeName::new("n1").unwrap());
        cfg.handshake_timeout_ms = 200;
        let (_dir, node, h) = started(cfg);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (out, mut rx) = outbound_channel();
        let silent = rt
            .block_on(h.peer_up(
                Identity::new(
                    NodeName::new("n2").unwrap(),
                    edgesync_proto::Role::Cloud,
                    None,
                ),
                out,
            ))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood: Vec<_> = (0..2)
            .map(|_| {
                let (h, stop) = (h.clone(), stop.clone());
                std::thread::spawn(move || {
                    // Input for a session that does not exist: handled at once, never idle.
                    while !stop.load(Ordering::SeqCst) {
                        let _ = h.peer_input(SessionId(silent.0 + 1000), vec![0; 8], None);
                    }
                })
            })
            .collect();
        let started = Instant::now();
        let closed = rt.block_on(async {
            let wait = async {
                loop {
                    match rx.recv().await {
                        Some(Outbound::Close(end)) => return end,
                        Some(_) => continue,
                        None => panic!("link channel closed without a Close"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(3), wait).await
        });
        stop.store(true, Ordering::SeqCst);
        for t in flood {
            t.join().unwrap();
        }
        let end = closed.expect("the handshake timed out while the flood ran");
        assert_eq!(end.code, Some(CloseCode::Timeout), "{end:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        node.shutdown();
    }
}
