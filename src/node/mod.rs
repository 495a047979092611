//! The durable node for embedding: the core over RocksDB, driven by two threads.
//!
//! - The **core thread** owns the [`edgesync_proto::Node`]. It takes requests from a channel,
//!   drains whatever else is already queued (up to `ingest_batch_max` readings, waiting at most
//!   `ingest_window_ms` for more), and ingests all readings for one document as one Automerge
//!   change: one Automerge commit per reading would cost far more than the RocksDB write.
//! - The **syncer thread** makes commits durable with one WAL fsync at a time. Commits made while
//!   an fsync runs are covered by the next one, so concurrent writers share fsyncs (group commit)
//!   and durable throughput grows with concurrency.
//!
//! A request is answered only when everything it wrote is durable. [`NodeHandle`] is cheap to
//! clone and can be used from any thread.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgesync_proto::{Boot, Config, DocId, IngestOutcome, Node, NodeError, Reading};
use serde_json::Value as Json;

use crate::store::{Durability, OpenError, RocksStore, Syncer};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The core's configuration (name and limits).
    pub config: Config,
    /// Data directory.
    pub data_dir: PathBuf,
    /// When a write counts as durable. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Most readings ingested as one batch (one Automerge change per document). Default 512.
    pub ingest_batch_max: usize,
    /// How long the core waits for more readings once it has one, in ms. Default 0: batches
    /// form from what queued up during the previous commit, adding no latency when idle.
    pub ingest_window_ms: u64,
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
        }
    }
}

/// A request failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The input was refused (bad reading, patch, document kind): a client error.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; the node accepts no writes until restarted.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The node is shutting down or its core thread is gone.
    #[error("node stopped")]
    Stopped,
}

impl From<NodeError> for Error {
    fn from(e: NodeError) -> Error {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        match e {
            NodeError::Poisoned | NodeError::Store(_) | NodeError::Load { .. } => {
                Error::Unavailable(msg)
            }
            _ => Error::Invalid(msg),
        }
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
    /// No randomness for the boot nonce.
    #[error("no operating system randomness: {0}")]
    Random(String),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(#[from] std::io::Error),
}

type Reply<T> = SyncSender<Result<T, Error>>;
/// Ingest requests of one document waiting to share a change: (readings, answer).
type DocRequests = Vec<(Vec<Reading>, Reply<Vec<IngestOutcome>>)>;

enum Cmd {
    Ingest {
        doc: DocId,
        readings: Vec<Reading>,
        reply: Reply<Vec<IngestOutcome>>,
    },
    Patch {
        doc: DocId,
        patch: Json,
        reply: Reply<bool>,
    },
    Json {
        doc: DocId,
        conflicts: bool,
        reply: Reply<Option<Json>>,
    },
    Docs {
        reply: Reply<Vec<DocId>>,
    },
    Durable(Result<u64, String>),
    Shutdown,
}

/// A running node.
pub struct DurableNode {
    handle: NodeHandle,
    core: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
}

/// Sends requests to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Cmd>,
    syncer: Syncer,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random16() -> Result<[u8; 16], StartError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| StartError::Random(e.to_string()))?;
    Ok(b)
}

impl DurableNode {
    /// Opens the store and starts the core and syncer threads.
    pub fn start(opts: NodeOptions) -> Result<DurableNode, StartError> {
        let store = RocksStore::open(&opts.data_dir, opts.durability)?;
        let syncer = store.syncer();
        let boot = Boot {
            nonce: random16()?,
            new_store_id: random16()?,
        };
        let node = Node::open(store, opts.config.clone(), boot)?;
        assert_eq!(
            node.commit_seq(),
            syncer.commits(),
            "every core commit is one store commit"
        );
        let (tx, rx) = mpsc::channel();
        let (kick_tx, kick_rx) = mpsc::channel::<()>();
        let durable_tx = tx.clone();
        let sync_handle = syncer.clone();
        let syncer_thread = std::thread::Builder::new()
            .name("edgesync-syncer".into())
            .spawn(move || {
                while kick_rx.recv().is_ok() {
                    while kick_rx.try_recv().is_ok() {}
                    let r = sync_handle.sync().map_err(|e| e.to_string());
                    let failed = r.is_err();
                    if durable_tx.send(Cmd::Durable(r)).is_err() || failed {
                        break;
                    }
                }
            })?;
        let core_opts = opts.clone();
        let core = std::thread::Builder::new()
            .name("edgesync-core".into())
            .spawn(move || {
                Core {
                    node,
                    opts: core_opts,
                    kick: kick_tx,
                    waiting: VecDeque::new(),
                }
                .run(rx)
            })?;
        Ok(DurableNode {
            handle: NodeHandle { tx, syncer },
            core: Some(core),
            syncer: Some(syncer_thread),
        })
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
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(make(tx)).map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Ingests readings into a sensor document; returns once they are durable.
    pub fn ingest(&self, doc: DocId, readings: Vec<Reading>) -> Result<Vec<IngestOutcome>, Error> {
        for r in &readings {
            r.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        }
        self.call(|reply| Cmd::Ingest {
            doc,
            readings,
            reply,
        })
    }

    /// Applies a JSON merge patch to a generic document; returns once durable. `false` when the
    /// patch changed nothing.
    pub fn patch(&self, doc: DocId, patch: Json) -> Result<bool, Error> {
        self.call(|reply| Cmd::Patch { doc, patch, reply })
    }

    /// The JSON view of a document (`None` if unknown).
    pub fn json(&self, doc: DocId, conflicts: bool) -> Result<Option<Json>, Error> {
        self.call(|reply| Cmd::Json {
            doc,
            conflicts,
            reply,
        })
    }

    /// Every document id.
    pub fn docs(&self) -> Result<Vec<DocId>, Error> {
        self.call(|reply| Cmd::Docs { reply })
    }

    /// False once a store write or fsync failed.
    pub fn is_healthy(&self) -> bool {
        self.syncer.is_healthy()
    }

    /// Bytes written to the store since start.
    pub fn bytes_written(&self) -> u64 {
        self.syncer.bytes_written()
    }
}

enum Waiting {
    Ingest(Reply<Vec<IngestOutcome>>, Vec<IngestOutcome>),
    Patch(Reply<bool>, bool),
}

struct Core {
    node: Node<RocksStore>,
    opts: NodeOptions,
    kick: Sender<()>,
    /// Answers waiting for durability, in commit order: (commit, answer).
    waiting: VecDeque<(u64, Waiting)>,
}

impl Core {
    fn run(mut self, rx: Receiver<Cmd>) {
        let mut pending: Option<Cmd> = None;
        loop {
            let first = match pending.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            let mut ingests: Vec<(DocId, Vec<Reading>, Reply<Vec<IngestOutcome>>)> = Vec::new();
            let mut readings = 0usize;
            let mut cmd = Some(first);
            let deadline = Instant::now() + Duration::from_millis(self.opts.ingest_window_ms);
            let mut stop = false;
            while let Some(c) = cmd.take() {
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
                            self.handle(other);
                        } else {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                if readings >= self.opts.ingest_batch_max {
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
                self.ingest_batch(ingests);
            }
            if stop {
                break;
            }
        }
        self.node.shutdown();
        // Answer what is still waiting with one last sync.
        let syncer = self.node.store().syncer();
        match syncer.sync() {
            Ok(seq) => self.durable(Ok(seq)),
            Err(e) => self.durable(Err(e.to_string())),
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Patch { doc, patch, reply } => match self.node.patch(&doc, &patch, now_ms()) {
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
                let _ = reply.send(self.node.json(&doc, conflicts).map_err(Error::from));
            }
            Cmd::Docs { reply } => {
                let _ = reply.send(Ok(self.node.docs().map(|(d, _)| d.clone()).collect()));
            }
            Cmd::Durable(r) => self.durable(r),
            Cmd::Ingest { .. } | Cmd::Shutdown => unreachable!("handled by run"),
        }
        while self.node.poll_event().is_some() {}
    }

    /// Ingests a batch: all readings for one document become one core ingest (one change).
    fn ingest_batch(&mut self, batch: Vec<(DocId, Vec<Reading>, Reply<Vec<IngestOutcome>>)>) {
        let mut by_doc: BTreeMap<DocId, DocRequests> = BTreeMap::new();
        for (doc, rs, reply) in batch {
            by_doc.entry(doc).or_default().push((rs, reply));
        }
        for (doc, requests) in by_doc {
            let all: Vec<Reading> = requests
                .iter()
                .flat_map(|(rs, _)| rs.iter().cloned())
                .collect();
            match self.node.ingest(&doc, &all, now_ms()) {
                Ok(done) => {
                    let mut outcomes = done.outcomes.into_iter();
                    for (rs, reply) in requests {
                        let mine: Vec<IngestOutcome> = outcomes.by_ref().take(rs.len()).collect();
                        self.wait(done.durable_at, Waiting::Ingest(reply, mine));
                    }
                }
                Err(e) => {
                    let e = Error::from(e);
                    for (_, reply) in requests {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        while self.node.poll_event().is_some() {}
    }

    fn wait(&mut self, durable_at: u64, w: Waiting) {
        self.waiting.push_back((durable_at, w));
        if self.opts.durability == Durability::Wal {
            let seq = self.node.store().syncer().durable();
            self.durable(Ok(seq));
        } else {
            let _ = self.kick.send(());
        }
    }

    fn durable(&mut self, r: Result<u64, String>) {
        match r {
            Ok(seq) => {
                self.node.handle_durable(seq.min(self.node.commit_seq()));
                while self
                    .waiting
                    .front()
                    .is_some_and(|(at, _)| *at <= self.node.durable_seq())
                {
                    let (_, w) = self.waiting.pop_front().expect("checked");
                    match w {
                        Waiting::Ingest(reply, out) => {
                            let _ = reply.send(Ok(out));
                        }
                        Waiting::Patch(reply, changed) => {
                            let _ = reply.send(Ok(changed));
                        }
                    }
                }
            }
            Err(e) => {
                let err = Error::Unavailable(format!("fsync failed: {e}"));
                for (_, w) in self.waiting.drain(..) {
                    match w {
                        Waiting::Ingest(reply, _) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Waiting::Patch(reply, _) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        }
    }
}
