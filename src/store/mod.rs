//! The durable node store: the core's [`Store`] trait on RocksDB.
//!
//! Every commit of the core is one RocksDB `WriteBatch`, written to the WAL without waiting for
//! the disk. Durability is then a separate, shared step ([`Syncer::sync`]): one WAL fsync makes
//! every commit before it durable, so concurrent writers share one fsync (group commit) instead
//! of paying one each. [`Syncer::durable`] counts fsynced commits in both modes; with
//! [`Durability::Wal`] the node answers its clients once the WAL is written (that survives a
//! process crash but not a power cut), and still sends nothing to peers before the fsync. The
//! on-disk layout is in [`schema`].

pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edgesync_proto::store::{DocMeta, NodeMeta, PeerReceipts, StoredChange, WriteBatch, WriteOp};
use edgesync_proto::wire::Incarnation;
use edgesync_proto::{Actor, DocId, NodeName, Store, StoreError};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, ReadOptions, WriteOptions, DB};

use schema::*;

/// When a write is answered. Peers hear of a commit (changes, acknowledgements) only once it is
/// fsynced, in both modes: so nothing a power cut takes back ever left the node, and the node
/// keeps its actor across crashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the WAL is fsynced: survives power loss. The default.
    #[default]
    Fsync,
    /// After the WAL write: survives a process crash, not a power cut (a power cut may lose
    /// answered writes, never ones a peer has).
    Wal,
}

/// A durability name that is neither `fsync` nor `wal`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?}; expected fsync or wal")]
pub struct UnknownDurability(pub String);

impl std::str::FromStr for Durability {
    type Err = UnknownDurability;
    fn from_str(s: &str) -> Result<Self, UnknownDurability> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "wal" => Ok(Durability::Wal),
            _ => Err(UnknownDurability(s.to_string())),
        }
    }
}

/// Opening a data directory failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (or another store in this process) holds the directory.
    #[error("data directory {} is in use by another edgesync process (lock file {}/LOCK is held)", dir.display(), dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// Written by a newer schema version.
    #[error("data directory {} was written by schema version {found}; this edgesync reads up to version {supported}: upgrade edgesync or use another directory", dir.display())]
    NewerSchema {
        /// The directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// Metadata that fails its checksum or does not decode.
    #[error("data directory {} is corrupt", dir.display())]
    Corrupt {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// RocksDB refused to open.
    #[error("cannot open data directory {}", dir.display())]
    Rocks {
        /// The directory.
        dir: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
}

#[derive(Debug)]
struct Shared {
    poisoned: AtomicBool,
    commits: AtomicU64,
    bytes: AtomicU64,
    durable: AtomicU64,
    sync_lock: Mutex<()>,
}

/// RocksDB-backed [`Store`].
pub struct RocksStore {
    db: Arc<DB>,
    shared: Arc<Shared>,
    durability: Durability,
    dir: PathBuf,
}

/// Where a sink ([`crate::sinks`]) is in the change feed, kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkState {
    /// Every event up to this cursor was delivered (`None`: nothing yet).
    pub delivered: Option<edgesync_proto::Cursor>,
    /// The batch being delivered: the events after `delivered` up to this cursor. Kept
    /// (synced) before its first attempt, so a retry after a restart sends the same batch.
    pub inflight: Option<edgesync_proto::Cursor>,
    /// Events the feed dropped before this sink delivered them (it was down for longer than
    /// the feed keeps).
    pub skipped: u64,
}

/// RocksDB's memory, bytes, summed over the column families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Memtables (bounded by [`DB_WRITE_BUFFER_BYTES`]).
    pub memtables: u64,
    /// Table readers outside the block cache.
    pub table_readers: u64,
    /// The shared block cache in use (bounded by [`BLOCK_CACHE_BYTES`]).
    pub block_cache: u64,
}

/// Reads RocksDB's memory counters beside the core's commits (the metrics endpoint). It does
/// not keep the database open: once the store is closed it reads zeros.
#[derive(Clone)]
pub struct MemoryProbe {
    db: std::sync::Weak<DB>,
}

impl MemoryProbe {
    /// RocksDB's memory now.
    pub fn memory(&self) -> StoreMemory {
        let mut m = StoreMemory::default();
        let Some(db) = self.db.upgrade() else {
            return m;
        };
        for name in COLUMN_FAMILIES {
            let Some(cf) = db.cf_handle(name) else {
                continue;
            };
            let get = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            m.memtables += get("rocksdb.cur-size-all-mem-tables");
            m.table_readers += get("rocksdb.estimate-table-readers-mem");
            // One cache shared by every column family: each reports all of it.
            m.block_cache = get("rocksdb.block-cache-usage");
        }
        m
    }
}

/// Reads and writes sinks' states; cloneable and usable from any thread (the sinks' tasks),
/// beside the core's commits.
#[derive(Clone)]
pub struct SinkStore {
    db: Arc<DB>,
}

impl SinkStore {
    fn key(name: &str) -> Vec<u8> {
        let mut k = KEY_SINK_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// The sink's state (default for a sink never run).
    pub fn get(&self, name: &str) -> Result<SinkState, StoreError> {
        let k = Self::key(name);
        let cf = self
            .db
            .cf_handle(CF_META)
            .expect("opened with every column family");
        match self.db.get_cf(&cf, &k).map_err(backend)? {
            None => Ok(SinkState::default()),
            Some(v) => open_postcard(CF_META, &k, &v),
        }
    }

    /// Replaces the sink's state; with `sync`, durable before it returns.
    pub fn put(&self, name: &str, state: &SinkState, sync: bool) -> Result<(), StoreError> {
        let k = Self::key(name);
        let cf = self
            .db
            .cf_handle(CF_META)
            .expect("opened with every column family");
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .put_cf_opt(&cf, &k, seal_postcard(CF_META, &k, state), &wo)
            .map_err(backend)
    }
}

/// Makes commits durable; cloneable and usable from another thread than the one committing.
#[derive(Clone)]
pub struct Syncer {
    db: Arc<DB>,
    shared: Arc<Shared>,
}

impl Syncer {
    /// Makes every commit so far durable and returns how many commits (since open) are now
    /// durable. Concurrent callers share one fsync. A failed fsync poisons the store.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let _one_at_a_time = self
            .shared
            .sync_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        let target = self.shared.commits.load(Ordering::SeqCst);
        if target <= self.shared.durable.load(Ordering::SeqCst) {
            return Ok(target);
        }
        if let Err(e) = self.db.flush_wal(true) {
            self.shared.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "wal fsync failed; store poisoned");
            return Err(StoreError::Backend(Box::new(e)));
        }
        self.shared.durable.store(target, Ordering::SeqCst);
        Ok(target)
    }

    /// Commits made since open.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::SeqCst)
    }

    /// Bytes of write batches committed since open (keys, values and batch framing).
    pub fn bytes_written(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// Commits known durable.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::SeqCst)
    }

    /// False once a write or fsync failed.
    pub fn is_healthy(&self) -> bool {
        !self.shared.poisoned.load(Ordering::SeqCst)
    }
}

/// A store's health and counters; holding one does not keep the database open.
#[derive(Clone, Debug)]
pub struct Health {
    shared: Arc<Shared>,
}

impl Health {
    /// False once a write or fsync failed.
    pub fn is_healthy(&self) -> bool {
        !self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Bytes of write batches committed since open.
    pub fn bytes_written(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn is_lock_error(e: &rocksdb::Error) -> bool {
    let s = e.to_string();
    s.contains("lock") || s.contains("LOCK")
}

/// Memtable bytes per column family: flushed at this size (or earlier, when all of them
/// together reach [`DB_WRITE_BUFFER_BYTES`]).
pub const CF_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Memtable bytes over every column family: the store's write-buffer memory is bounded by
/// this, not by seven column families times RocksDB's 64 MiB default.
pub const DB_WRITE_BUFFER_BYTES: usize = 32 << 20;

/// Bound on the write-ahead log files kept ([`db_options`]).
pub const WAL_BYTES_MAX: u64 = 16 << 20;

/// Database-wide options for a small gateway: two background jobs, one memtable budget, and a
/// bound on the logs kept.
pub fn db_options() -> Options {
    let mut opts = Options::default();
    opts.set_max_background_jobs(2);
    opts.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
    // A log file is deleted only once every column family with data in it has flushed; one
    // that is rarely written (node metadata, peers) would otherwise keep every log since its
    // last write. Past this total, RocksDB flushes the column families holding the oldest
    // log, so the logs stay bounded (measured: without it, 46 MiB of logs a day for 10
    // sensors at one reading per 10 s, never deleted).
    opts.set_max_total_wal_size(WAL_BYTES_MAX);
    // Info logs: a bounded ring instead of a LOG.old file per open.
    opts.set_max_log_file_size(1 << 20);
    opts.set_keep_log_file_num(2);
    opts
}

/// Block cache bytes over every column family ([`cf_options`]).
pub const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// Options of every column family: LZ4, bounded memtables, and `cache` as the block cache
/// (with the index and filter blocks).
/// Column families take their own options, not the database's: opened with
/// `Options::default()` they had 64 MiB memtables and Snappy, whatever the database options
/// said, and each its own 32 MiB block cache (nine column families: up to 288 MiB of cached
/// blocks); one cache of [`BLOCK_CACHE_BYTES`] is shared by all of them instead.
pub fn cf_options(cache: &rocksdb::Cache) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(CF_WRITE_BUFFER_BYTES);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks count against the cache too (else every open table file holds
    // its own outside any bound); those of level 0, read on every lookup, stay pinned.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts
}

impl RocksStore {
    /// Opens (creating if needed) the store in `dir`. Refuses a directory held by another
    /// process or written by a newer schema, with a message saying so.
    pub fn open(dir: impl AsRef<Path>, durability: Durability) -> Result<RocksStore, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let rocks = |source| OpenError::Rocks {
            dir: dir.clone(),
            source,
        };
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let mut names: Vec<String> = COLUMN_FAMILIES.iter().map(|s| s.to_string()).collect();
        if let Ok(existing) = DB::list_cf(&opts, &dir) {
            for n in existing {
                if !names.contains(&n) && n != "default" {
                    names.push(n);
                }
            }
        }
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(&cache)));
        let db = match DB::open_cf_descriptors(&opts, &dir, cfs) {
            Ok(db) => db,
            Err(e) if is_lock_error(&e) => return Err(OpenError::Locked { dir }),
            Err(e) => return Err(rocks(e)),
        };
        let meta = db
            .cf_handle(CF_META)
            .expect("opened with every column family");
        match db.get_cf(&meta, KEY_SCHEMA).map_err(rocks)? {
            Some(v) => {
                let payload =
                    open_value(CF_META, KEY_SCHEMA, &v).map_err(|source| OpenError::Corrupt {
                        dir: dir.clone(),
                        source,
                    })?;
                let found = <[u8; 4]>::try_from(payload)
                    .map(u32::from_be_bytes)
                    .map_err(|_| OpenError::Corrupt {
                        dir: dir.clone(),
                        source: StoreError::Corrupt {
                            table: CF_META,
                            key: "schema".into(),
                        },
                    })?;
                if found > DISK_SCHEMA_VERSION {
                    return Err(OpenError::NewerSchema {
                        dir,
                        found,
                        supported: DISK_SCHEMA_VERSION,
                    });
                }
            }
            None => {
                let v = seal(
                    CF_META,
                    KEY_SCHEMA,
                    DISK_SCHEMA_VERSION.to_be_bytes().to_vec(),
                );
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.put_cf_opt(&meta, KEY_SCHEMA, v, &w).map_err(rocks)?;
            }
        }
        Ok(RocksStore {
            db: Arc::new(db),
            shared: Arc::new(Shared {
                poisoned: AtomicBool::new(false),
                commits: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                durable: AtomicU64::new(0),
                sync_lock: Mutex::new(()),
            }),
            durability,
            dir,
        })
    }

    /// Writes a consistent copy of this store into `out` (which must not exist; on the same
    /// filesystem its table files are hard links) and marks the copy as one: a node that
    /// starts on it, or on any copy of it, renews the store's identity first
    /// ([`edgesync_proto::Node::renew_store`]), since its peers have seen this store go
    /// further. Only the database: the caller copies the directory's other files.
    pub fn backup(&self, out: &Path, now_ms: u64) -> Result<(), StoreError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(backend)?;
        cp.create_checkpoint(out).map_err(backend)?;
        let copy = RocksStore::open(out, Durability::Fsync)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let mut w = WriteOptions::default();
        w.set_sync(true);
        let mark = seal(CF_META, KEY_COPY, now_ms.to_be_bytes().to_vec());
        copy.db
            .put_cf_opt(copy.cf(CF_META), KEY_COPY, mark, &w)
            .map_err(backend)
    }

    /// When this store is a marked copy ([`RocksStore::backup`]): the backup's time.
    pub fn copy_mark(&self) -> Result<Option<u64>, StoreError> {
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_META), KEY_COPY)
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let payload = open_value(CF_META, KEY_COPY, &v)?;
        let at = <[u8; 8]>::try_from(payload).map_err(|_| StoreError::Corrupt {
            table: CF_META,
            key: "copy".into(),
        })?;
        Ok(Some(u64::from_be_bytes(at)))
    }

    /// Removes the copy mark once the store's identity was renewed. Written like a commit (the
    /// next fsync covers it, and the renewal committed before it survives whenever it does).
    pub fn clear_copy_mark(&self) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db
            .delete_cf_opt(self.cf(CF_META), KEY_COPY, &wo)
            .map_err(backend)
    }

    /// The handle for sinks' states.
    pub fn sink_store(&self) -> SinkStore {
        SinkStore {
            db: self.db.clone(),
        }
    }

    /// RocksDB's own memory counters, readable from any thread.
    pub fn memory_probe(&self) -> MemoryProbe {
        MemoryProbe {
            db: Arc::downgrade(&self.db),
        }
    }

    /// RocksDB's memory now ([`MemoryProbe::memory`]).
    pub fn memory(&self) -> StoreMemory {
        self.memory_probe().memory()
    }

    /// The handle that makes commits durable.
    pub fn syncer(&self) -> Syncer {
        Syncer {
            db: self.db.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Health and counters, without keeping the database open.
    pub fn health(&self) -> Health {
        Health {
            shared: self.shared.clone(),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durability policy.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("opened with every column family")
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf), key).map_err(backend)
    }

    /// Visits `(key, value)` in `cf` from `from` while keys are below `to` (exclusive).
    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        to: Option<Vec<u8>>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_with(cf, from, to, true, visit)
    }

    /// [`RocksStore::scan`]; with `fill_cache` false, the blocks read are not kept in the block
    /// cache (a one-pass read, such as the change feed's, would otherwise fill it with blocks
    /// never read again: measured, the feed's reads took the cache from 1 to 24 MiB in three
    /// simulated days of row 7).
    fn scan_with(
        &self,
        cf: &'static str,
        from: &[u8],
        to: Option<Vec<u8>>,
        fill_cache: bool,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(fill_cache);
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to);
        }
        // The raw iterator lends each key and value: the boxed pairs of the iterating one
        // cost two allocations an entry.
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        iter.seek(from);
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !visit(k, v)? {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(backend)
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Node metadata as logical schema version 1 wrote it (a prefix of every later version).
#[derive(serde::Deserialize)]
struct NodeMetaV1 {
    schema_version: u32,
    name: edgesync_proto::NodeName,
    store_id: [u8; 16],
    incarnation: u64,
}

/// Node metadata as logical schema versions 2 and 3 wrote it (before `author_key`).
#[derive(serde::Deserialize)]
struct NodeMetaV3 {
    schema_version: u32,
    name: edgesync_proto::NodeName,
    store_id: [u8; 16],
    incarnation: u64,
    actor_epoch: u64,
    actor_nonce: [u8; 16],
    running: bool,
}

/// Node metadata as logical schema versions 4 and 5 wrote it (before actor slots).
#[derive(serde::Deserialize)]
struct NodeMetaV5 {
    schema_version: u32,
    name: edgesync_proto::NodeName,
    store_id: [u8; 16],
    incarnation: u64,
    actor_epoch: u64,
    actor_nonce: [u8; 16],
    running: bool,
    author_key: [u8; 32],
}

/// The key of a slot space's highest known slot in the authors column family (node actors
/// there are 16 bytes; these keys are longer).
fn slot_key(space: &[u8; 32]) -> Vec<u8> {
    let mut k = b"slot/".to_vec();
    k.extend_from_slice(space);
    k
}

/// Document metadata as logical schema versions 1 and 2 wrote it.
#[derive(serde::Deserialize)]
struct DocMetaV2 {
    clock: edgesync_proto::VectorClock,
    next_order: u64,
    snapshot_order: u64,
}

impl Store for RocksStore {
    fn node_meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        let Some(v) = self.get(CF_META, KEY_NODE)? else {
            return Ok(None);
        };
        // Every version starts with the fields of version 1 (postcard reads a prefix).
        let v1: NodeMetaV1 = open_postcard(CF_META, KEY_NODE, &v)?;
        if v1.schema_version >= 6 {
            return open_postcard(CF_META, KEY_NODE, &v).map(Some);
        }
        let m = if v1.schema_version >= 4 {
            open_postcard::<NodeMetaV5>(CF_META, KEY_NODE, &v)?
        } else if v1.schema_version >= 2 {
            let m: NodeMetaV3 = open_postcard(CF_META, KEY_NODE, &v)?;
            NodeMetaV5 {
                schema_version: m.schema_version,
                name: m.name,
                store_id: m.store_id,
                incarnation: m.incarnation,
                actor_epoch: m.actor_epoch,
                actor_nonce: m.actor_nonce,
                running: m.running,
                author_key: [0; 32],
            }
        } else {
            // Version 1 had no kept actor: epoch 0 makes the next open take one.
            NodeMetaV5 {
                schema_version: v1.schema_version,
                name: v1.name,
                store_id: v1.store_id,
                incarnation: v1.incarnation,
                actor_epoch: 0,
                actor_nonce: [0; 16],
                running: true,
                author_key: [0; 32],
            }
        };
        // Before actor slots: no slot space, so the open decides (a store from before slots
        // that opens with a slot-bound certificate starts at its slot 0).
        Ok(Some(NodeMeta {
            schema_version: m.schema_version,
            name: m.name,
            store_id: m.store_id,
            incarnation: m.incarnation,
            actor_epoch: m.actor_epoch,
            actor_nonce: m.actor_nonce,
            running: m.running,
            author_key: m.author_key,
            slot_space: [0; 32],
            actor_slot: 0,
            settled: true,
        }))
    }

    fn docs(&self) -> Result<Vec<(DocId, DocMeta)>, StoreError> {
        let mut out = Vec::new();
        self.scan(CF_DOCS, &[], None, |k, v| {
            let (doc, rest) = parse_doc_key(CF_DOCS, k)?;
            if !rest.is_empty() {
                return Err(StoreError::Corrupt {
                    table: CF_DOCS,
                    key: printable(k),
                });
            }
            // Version 3 added `pruned` at the end; a value written before decodes as version 2
            // (the checksum was verified, so a short value is an older version, not damage).
            let meta = match open_postcard::<DocMetaValue>(CF_DOCS, k, v) {
                Ok(m) => m,
                Err(_) => {
                    let m: DocMetaV2 = open_postcard(CF_DOCS, k, v)?;
                    DocMeta {
                        clock: m.clock,
                        next_order: m.next_order,
                        snapshot_order: m.snapshot_order,
                        pruned: false,
                    }
                }
            };
            out.push((doc, meta));
            Ok(true)
        })?;
        Ok(out)
    }

    fn peers(&self) -> Result<Vec<(NodeName, PeerReceipts)>, StoreError> {
        let mut peers: std::collections::BTreeMap<NodeName, PeerReceipts> = Default::default();
        self.scan(CF_PEERS, &[], None, |k, v| {
            let (peer, _) = parse_peer_key(CF_PEERS, k)?;
            let id: [u8; 16] =
                open_value(CF_PEERS, k, v)?
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        table: CF_PEERS,
                        key: printable(k),
                    })?;
            peers.entry(peer).or_default().store_id = Some(id);
            Ok(true)
        })?;
        self.scan(
            CF_META,
            KEY_SEEN_PREFIX,
            Some(prefix_end(KEY_SEEN_PREFIX)),
            |k, v| {
                let (peer, _) = parse_peer_key(CF_META, &k[KEY_SEEN_PREFIX.len()..])?;
                let (store_id, seen): ([u8; 16], Incarnation) = open_postcard(CF_META, k, v)?;
                if let Some(r) = peers.get_mut(&peer) {
                    if r.store_id == Some(store_id) {
                        r.seen = Some(seen);
                    }
                }
                Ok(true)
            },
        )?;
        self.scan(CF_RECEIPTS, &[], None, |k, v| {
            let (peer, doc, kind) = parse_receipt_key(k)?;
            let clock: ClockValue = open_postcard(CF_RECEIPTS, k, v)?;
            let r = peers.entry(peer).or_default();
            match kind {
                RECEIPT_ACKED => r.clocks.insert(doc, clock),
                _ => r.reported.insert(doc, clock),
            };
            Ok(true)
        })?;
        Ok(peers.into_iter().collect())
    }

    fn snapshot(&self, doc: &DocId) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let key = doc_key(doc);
        match self.get(CF_SNAPSHOTS, &key)? {
            None => Ok(None),
            Some(v) => parse_snapshot_value(&key, open_value(CF_SNAPSHOTS, &key, &v)?).map(Some),
        }
    }

    fn changes_from(
        &self,
        doc: &DocId,
        from_order: u64,
        limit: usize,
    ) -> Result<Vec<StoredChange>, StoreError> {
        let mut out = Vec::new();
        let end = prefix_end(&doc_key(doc));
        self.scan(
            CF_CHANGES,
            &change_key(doc, from_order),
            Some(end),
            |k, v| {
                out.push(open_postcard::<ChangeValue>(CF_CHANGES, k, v)?);
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    fn change_index(
        &self,
        doc: &DocId,
        actor: &Actor,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, u64, [u8; 32])>, StoreError> {
        let mut out = Vec::new();
        let from = index_key(doc, actor, *seqs.start());
        let end = match seqs.end().checked_add(1) {
            Some(e) => index_key(doc, actor, e),
            None => prefix_end(&index_key(doc, actor, 0)[..doc_key(doc).len() + 16]),
        };
        self.scan(CF_CHANGE_INDEX, &from, Some(end), |k, v| {
            let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            let (order, hash) = parse_index_value(k, open_value(CF_CHANGE_INDEX, k, v)?)?;
            out.push((seq, order, hash));
            Ok(true)
        })?;
        Ok(out)
    }

    fn feed(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, edgesync_proto::FeedEvent)>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.feed_scan(after, &mut |n, e| {
            out.push((n, e));
            out.len() < limit
        })?;
        Ok(out)
    }

    fn feed_scan(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, edgesync_proto::FeedEvent) -> bool,
    ) -> Result<(), StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(());
        };
        self.scan_with(CF_FEED, &from.to_be_bytes(), None, false, |k, v| {
            let cursor = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    table: CF_FEED,
                    key: format!("{k:02x?}"),
                })?;
            Ok(visit(cursor, open_postcard(CF_FEED, k, v)?))
        })
    }

    fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let edge = |mode| -> Result<Option<u64>, StoreError> {
            let mut ro = ReadOptions::default();
            ro.fill_cache(false);
            let mut iter = self.db.iterator_cf_opt(self.cf(CF_FEED), ro, mode);
            match iter.next() {
                None => Ok(None),
                Some(item) => {
                    let (k, _) = item.map_err(backend)?;
                    <[u8; 8]>::try_from(&k[..])
                        .map(|b| Some(u64::from_be_bytes(b)))
                        .map_err(|_| StoreError::Corrupt {
                            table: CF_FEED,
                            key: format!("{k:02x?}"),
                        })
                }
            }
        };
        Ok(edge(IteratorMode::Start)?.zip(edge(IteratorMode::End)?))
    }

    fn journal(&self) -> Result<Vec<(DocId, String, String)>, StoreError> {
        let mut out = Vec::new();
        self.scan_with(CF_JOURNAL, &[], None, false, |k, v| {
            let corrupt = || StoreError::Corrupt {
                table: CF_JOURNAL,
                key: printable(k),
            };
            let (doc, id) = parse_doc_key(CF_JOURNAL, k)?;
            let id = std::str::from_utf8(id).map_err(|_| corrupt())?;
            let body = std::str::from_utf8(open_value(CF_JOURNAL, k, v)?).map_err(|_| corrupt())?;
            out.push((doc, id.to_string(), body.to_string()));
            Ok(true)
        })?;
        Ok(out)
    }

    fn slot(&self, space: &[u8; 32]) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
        let k = slot_key(space);
        match self.get(CF_AUTHORS, &k)? {
            None => Ok(None),
            Some(v) => {
                let (slot, st): (u32, serde_bytes::ByteBuf) = open_postcard(CF_AUTHORS, &k, &v)?;
                Ok(Some((slot, st.into_vec())))
            }
        }
    }

    fn author(&self, node_actor: &edgesync_proto::Actor) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(CF_AUTHORS, &node_actor.0)? {
            None => Ok(None),
            Some(v) => open_value(CF_AUTHORS, &node_actor.0, &v).map(|p| Some(p.to_vec())),
        }
    }

    fn change_at(&self, doc: &DocId, order: u64) -> Result<Option<StoredChange>, StoreError> {
        let key = change_key(doc, order);
        self.get(CF_CHANGES, &key)?
            .map(|v| open_postcard(CF_CHANGES, &key, &v))
            .transpose()
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::PutNodeMeta(m) => {
                    wb.put_cf(
                        self.cf(CF_META),
                        KEY_NODE,
                        seal_postcard(CF_META, KEY_NODE, &m),
                    );
                }
                WriteOp::PutChange { doc, change } => {
                    let ik = index_key(&doc, &change.actor, change.seq);
                    let iv = seal(
                        CF_CHANGE_INDEX,
                        &ik,
                        index_value(change.order, &change.hash),
                    );
                    wb.put_cf(self.cf(CF_CHANGE_INDEX), &ik, iv);
                    let ck = change_key(&doc, change.order);
                    let cv = seal_postcard(CF_CHANGES, &ck, &change);
                    wb.put_cf(self.cf(CF_CHANGES), &ck, cv);
                }
                WriteOp::PutDocMeta { doc, meta } => {
                    let k = doc_key(&doc);
                    let v = seal_postcard(CF_DOCS, &k, &meta);
                    wb.put_cf(self.cf(CF_DOCS), &k, v);
                }
                WriteOp::PutSnapshot {
                    doc,
                    covers_order,
                    bytes,
                } => {
                    let k = doc_key(&doc);
                    let v = seal(CF_SNAPSHOTS, &k, snapshot_value(covers_order, &bytes));
                    wb.put_cf(self.cf(CF_SNAPSHOTS), &k, v);
                }
                WriteOp::ResetPeer { peer, store_id } => {
                    let k = peer_key(&peer);
                    wb.delete_range_cf(self.cf(CF_RECEIPTS), &k, &prefix_end(&k));
                    let v = seal(CF_PEERS, &k, store_id.to_vec());
                    wb.put_cf(self.cf(CF_PEERS), &k, v);
                }
                WriteOp::PutPeerSeen {
                    peer,
                    store_id,
                    seen,
                } => {
                    let k = seen_key(&peer);
                    let v = seal_postcard(CF_META, &k, &(store_id, seen));
                    wb.put_cf(self.cf(CF_META), &k, v);
                }
                WriteOp::PutAuthor {
                    node_actor,
                    statement,
                } => {
                    let v = seal(CF_AUTHORS, &node_actor.0, statement);
                    wb.put_cf(self.cf(CF_AUTHORS), node_actor.0, v);
                }
                WriteOp::PutSlot {
                    space,
                    slot,
                    statement,
                } => {
                    let k = slot_key(&space);
                    let v = seal_postcard(
                        CF_AUTHORS,
                        &k,
                        &(slot, serde_bytes::ByteBuf::from(statement)),
                    );
                    wb.put_cf(self.cf(CF_AUTHORS), &k, v);
                }
                WriteOp::PutReceipt { peer, doc, clock } => {
                    let k = receipt_key(&peer, &doc, RECEIPT_ACKED);
                    let v = seal_postcard(CF_RECEIPTS, &k, &clock);
                    wb.put_cf(self.cf(CF_RECEIPTS), &k, v);
                }
                WriteOp::PutReported { peer, doc, clock } => {
                    let k = receipt_key(&peer, &doc, RECEIPT_REPORTED);
                    let v = seal_postcard(CF_RECEIPTS, &k, &clock);
                    wb.put_cf(self.cf(CF_RECEIPTS), &k, v);
                }
                WriteOp::PutFeed { cursor, event } => {
                    let k = cursor.to_be_bytes();
                    let v = seal_postcard(CF_FEED, &k, &event);
                    wb.put_cf(self.cf(CF_FEED), k, v);
                }
                WriteOp::TrimFeed { below } => {
                    // From the first event held, not from 0: each trim's range tombstone then
                    // covers only what it drops, and tombstones do not pile up over each other.
                    let from = self.feed_bounds()?.map_or(0, |(first, _)| first);
                    if from < below {
                        wb.delete_range_cf(
                            self.cf(CF_FEED),
                            from.to_be_bytes(),
                            below.to_be_bytes(),
                        );
                    }
                }
                WriteOp::PutJournal { doc, id, body } => {
                    let k = journal_key(&doc, &id);
                    let v = seal(CF_JOURNAL, &k, body.into_bytes());
                    wb.put_cf(self.cf(CF_JOURNAL), &k, v);
                }
                WriteOp::DeleteJournal { doc, ids } => {
                    for id in ids {
                        wb.delete_cf(self.cf(CF_JOURNAL), journal_key(&doc, &id));
                    }
                }
                WriteOp::DropContent { doc } => {
                    let k = doc_key(&doc);
                    wb.delete_cf(self.cf(CF_SNAPSHOTS), &k);
                    wb.delete_range_cf(self.cf(CF_CHANGES), &k, &prefix_end(&k));
                    wb.delete_range_cf(self.cf(CF_CHANGE_INDEX), &k, &prefix_end(&k));
                }
                WriteOp::DropDoc { doc, peers } => {
                    // Keys of one document share its length-prefixed id, which no other
                    // document's key starts with.
                    let k = doc_key(&doc);
                    wb.delete_cf(self.cf(CF_DOCS), &k);
                    wb.delete_cf(self.cf(CF_SNAPSHOTS), &k);
                    wb.delete_range_cf(self.cf(CF_CHANGES), &k, &prefix_end(&k));
                    wb.delete_range_cf(self.cf(CF_CHANGE_INDEX), &k, &prefix_end(&k));
                    wb.delete_range_cf(self.cf(CF_JOURNAL), &k, &prefix_end(&k));
                    for p in &peers {
                        for kind in [RECEIPT_ACKED, RECEIPT_REPORTED] {
                            wb.delete_cf(self.cf(CF_RECEIPTS), receipt_key(p, &doc, kind));
                        }
                    }
                }
            }
        }
        // The WAL is written now (so the batch survives a process crash); the fsync that makes
        // it survive power loss is the Syncer's, shared by every commit before it.
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        let size = wb.size_in_bytes() as u64;
        if let Err(e) = self.db.write_opt(wb, &wo) {
            self.shared.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, dir = %self.dir.display(), "store write failed; store poisoned");
            return Err(backend(e));
        }
        self.shared.bytes.fetch_add(size, Ordering::SeqCst);
        self.shared.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
