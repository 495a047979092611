//! Benchmarks against anchors, side by side in one run: each row is a ratio of ours over an
//! anchor measured in the same process (or, for memory, a fixed budget), alternating runs and
//! taking medians where a row is cheap enough to repeat, because these machines are noisy.
//!
//! `cargo bench --bench anchors [-- --quick] [-- --json PATH]`
//!
//! Rows:
//! 1. Durable ingest: readings/s through the library (threaded node, group commit, batching
//!    below Automerge) at 1 and 8 concurrent writers, for `fsync` and `wal`, against raw
//!    RocksDB `WriteBatch`es of the same bytes per reading at the same concurrency with the same
//!    durability. Goal: ours >= 0.5x raw. Under each `wal` row, its ceiling: Automerge alone
//!    putting as many of the same readings into the writers' documents in memory, 4,096 a
//!    change (the fold's batch and way), one thread a document, against the same raw rate. A
//!    ceiling row has no goal: it bounds what any design that makes every reading an Automerge
//!    operation can reach on the machine, whatever it does around Automerge.
//! 2. Ingest over HTTP: readings/s through `POST /v1/ingest` with keep-alive and 8 clients,
//!    one reading per request, and (a second row) batches of 100 readings per request (a JSON
//!    array), against row 1's library rate (fsync, 8 writers). Goal: >= 0.5x.
//! 3. Reconciliation after a partition: documents with shared changes, then a partition in which
//!    10 documents change on each side (10 changes each), then the heal. Bytes of the session
//!    over real QUIC, against Automerge's sync protocol run per document with (a) persisted and
//!    (b) fresh sync states on the same changes. Goal: <= 0.5x (a). Round trips: one-way
//!    flights / 2, counted by running the same two stores in lockstep (every frame in flight
//!    delivered at once) and Automerge's protocol the same way; goal: at most 2 in total.
//!    Scaling: the same heal's bytes with 10,000 documents held against 1,000 (20 changed in
//!    both; `--quick` keeps the counts with one shared change each). Goal: <= 1.2x.
//!    Against samod (the Rust automerge-repo) on the same documents and changes, over TCP
//!    loopback into its filesystem storage: bytes and wall time. Goal: <= 0.5x both.
//! 4. Full sync to an empty peer over QUIC into RocksDB (fsync), changes/s, against Automerge
//!    alone parsing and applying the same change bytes in memory. Goal: >= 0.5x. Against samod
//!    on the same changes: time (goal: half samod's, so >= 2x its rate) and bytes (<= 0.5x).
//!    The time's ceiling: Automerge alone loading the same documents' saved forms and taking
//!    their changes out (what the receiver's per-change checks need first), raw RocksDB storing
//!    their bytes (a `WriteBatch` a document, the WAL synced once), against samod's rate.
//! 5. Memory: peak RSS (VmHWM) of an `edgesync run` process holding sensor documents after
//!    every document was read through the API, and after serving a full sync to an empty peer,
//!    against the seed's k3s memory request of 256 MiB. Goal: <= 1.0x.
//! 6. Simulator speed: seeds/s of the default swarm configuration on one thread, against the
//!    budget of one seed per second (a fixed anchor: the simulator has no other). Goal: >= 1x.
//! 7. Retention over days: 10 sensors at one reading every 10 s each into the real store for 30
//!    simulated days with `keep_hours = 168` (`--quick`: 3 days, 24 hours), time passed in
//!    rather than slept (the core takes `now` as an argument), retention and unloading of
//!    closed buckets every 10 simulated minutes, an fsync every simulated minute. The ingest
//!    rate over the last day against the first day's (goal >= 0.9x), and the data directory's
//!    size and the process's RSS on the last mark's day against the second's, each the most of
//!    hourly samples over that day (marks at days 7, 14 and 30; `--quick`: 1, 2 and 3): flat
//!    once retention applies (goal <= 1.2x).
//! 8. One long stream: 100,000 readings of one sensor (one a second, so 28 hour buckets;
//!    `--quick`: 50,000) ingested over HTTP by 8 keep-alive clients into an `edgesync run`
//!    process, then read back in pages of 1,000. Peak RSS (VmHWM) through ingest and reads
//!    against 256 MiB (goal <= 1x); the data directory's bytes per reading against 250 (goal
//!    <= 1x); the ingest rate of the last tenth against the first tenth's (goal >= 0.8x).
//!
//! `--quick` shrinks the workloads (the row names say the sizes) to finish in minutes;
//! `--longevity-only` runs rows 7 and 8 alone; `--scaling-only` the scaling row of row 3;
//! `--sync-only` rows 3 and 4; `--long N` sets row 8's readings.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{Message, State as SyncState, SyncDoc};
use automerge::{Automerge, Change};
use edgesync::daemon::local::LocalFleet;
use edgesync::daemon::{Daemon, Settings};
use edgesync::net::pki::Role;
use edgesync::node::{outbound_channel, DurableNode, NodeHandle, NodeOptions, Outbound};
use edgesync::store::{Durability, RocksStore};
use edgesync_proto::{Boot, Config, DocId, Node, NodeName, Reading, Store};

/// How a row's goal reads.
#[derive(Clone, Copy)]
enum Goal {
    /// ours / anchor >= x.
    RatioAtLeast(f64),
    /// ours / anchor <= x.
    RatioAtMost(f64),
    /// ours <= x, whatever the anchor (the anchor is shown for comparison).
    AtMost(f64),
    /// Not a goal: a ceiling. "Ours" is what the anchor's own library alone takes to do the
    /// part of our work it does, so its ratio bounds what any design built on that library
    /// can reach on this machine; `x` is the goal of the row it bounds.
    Ceiling(f64),
}

struct Row {
    name: String,
    unit: &'static str,
    ours: f64,
    anchor: f64,
    goal: Goal,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours / self.anchor
    }
    fn goal_value(&self) -> f64 {
        match self.goal {
            Goal::RatioAtLeast(x) | Goal::RatioAtMost(x) | Goal::AtMost(x) | Goal::Ceiling(x) => x,
        }
    }
    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(x) => format!(">={x}x"),
            Goal::RatioAtMost(x) => format!("<={x}x"),
            Goal::AtMost(x) => format!("<={x}"),
            Goal::Ceiling(x) => format!("bounds >={x}x"),
        }
    }
    /// One line of the printed table.
    fn print(&self) {
        println!(
            "{:<112} {:>12.1} {:>12.1} {:>11} {:>7.3}x {:>7} {}",
            self.name,
            self.ours,
            self.anchor,
            self.unit,
            self.ratio(),
            self.goal_text(),
            match self.met() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None if self.ratio() < self.goal_value() => "ceiling below the goal",
                None => "ceiling",
            }
        );
    }

    /// Whether the goal is met; `None` for a ceiling, which has none.
    fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::RatioAtLeast(x) => Some(self.ratio() >= x),
            Goal::RatioAtMost(x) => Some(self.ratio() <= x),
            Goal::AtMost(x) => Some(self.ours <= x),
            Goal::Ceiling(_) => None,
        }
    }
}

/// The median; of an even count, the mean of the two middle values (never the better one).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn reading(w: usize, i: u64) -> Reading {
    Reading::from_json(
        format!("w{w}-{i}"),
        1_700_000_000_000 + i as i64,
        &serde_json::json!({"temp": 20.0 + (i % 100) as f64 / 10.0, "humidity": 45, "ok": true}),
    )
    .expect("valid reading")
}

/// Runs `writers` threads, thread `w` calling the step made by `make(w)` with 0, 1, 2, ...
/// until stopped. After a warm-up of `run / 5`, measures over `run`: operations per second,
/// and how much `probe` grew per operation in the same window.
fn run_writers<S: FnMut(u64) + Send + 'static>(
    writers: usize,
    run: Duration,
    make: impl Fn(usize) -> S,
    probe: impl Fn() -> u64,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let mut step = make(w);
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    step(i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run / 5);
    let (c0, p0, t0) = (count.load(Ordering::SeqCst), probe(), Instant::now());
    std::thread::sleep(run);
    let (c1, p1, dt) = (count.load(Ordering::SeqCst), probe(), t0.elapsed());
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("writer");
    }
    let n = (c1 - c0) as f64;
    (n / dt.as_secs_f64(), (p1 - p0) as f64 / n.max(1.0))
}

/// Readings/s through the library; also returns store bytes written per reading.
fn ours(durability: Durability, writers: usize, run: Duration) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    // Defaults, as in every other row.
    let cfg = Config::new(NodeName::new("bench").expect("valid"));
    let mut opts = NodeOptions::new(cfg, dir.path());
    opts.durability = durability;
    let node = DurableNode::start(opts).expect("node starts");
    let probe = node.handle();
    run_writers(
        writers,
        run,
        |w| {
            let h = node.handle();
            // Each writer feeds its own sensor's document, as a gateway's sensors do.
            let doc = DocId::new(format!("site/sensor-{w}")).expect("valid");
            move |i| {
                h.ingest(doc.clone(), vec![reading(w, i)]).expect("ingest");
            }
        },
        || probe.bytes_written(),
    )
}

/// Automerge alone doing the part of `wal` ingest no design can skip: every reading becomes an
/// operation of its writer's document. `n` readings (those of [`reading`]) in all, spread over
/// `writers` documents, each document on its own thread, in memory, put as many at a time as
/// the node folds at its defaults (`journal_readings_max`) the fold's own way: one change
/// built from its operations and applied in one call. Readings/s.
fn fold_ceiling(writers: usize, n: u64) -> f64 {
    use automerge::legacy;
    use automerge::ReadDoc;
    let batch = Config::new(NodeName::new("bench").expect("valid")).journal_readings_max;
    let per = (n / writers as u64).max(1);
    let bodies: Vec<Vec<(String, String)>> = (0..writers)
        .map(|w| {
            (0..per)
                .map(|i| {
                    let r = reading(w, i);
                    let body = r.encode();
                    (r.id, body)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|readings| {
            std::thread::spawn(move || {
                let actor = automerge::ActorId::from([1u8; 16]);
                let mut doc = Automerge::new().with_actor(actor.clone());
                let mut tx = doc.transaction();
                let map = automerge::transaction::Transactable::put_object(
                    &mut tx,
                    automerge::ROOT,
                    "readings",
                    automerge::ObjType::Map,
                )
                .expect("a map");
                tx.commit();
                let map_id = legacy::ObjectId::Id(legacy::OpId(1, actor.clone()));
                for (seq, chunk) in (2..).zip(readings.chunks(batch)) {
                    let operations = chunk
                        .iter()
                        .map(|(id, body)| legacy::Op {
                            action: legacy::OpType::Put(automerge::ScalarValue::Str(
                                body.as_str().into(),
                            )),
                            obj: map_id.clone(),
                            key: legacy::Key::Map(id.as_str().into()),
                            pred: legacy::SortedVec::new(),
                            insert: false,
                        })
                        .collect();
                    // One actor: its operations so far are the map and the readings put.
                    let start_op = 2 + (seq - 2) * batch as u64;
                    let change = Change::from(automerge::ExpandedChange {
                        operations,
                        actor_id: actor.clone(),
                        hash: None,
                        seq,
                        start_op: std::num::NonZeroU64::new(start_op).expect("positive"),
                        time: 0,
                        message: None,
                        deps: doc.get_heads(),
                        extra_bytes: Vec::new(),
                        author: None,
                    });
                    doc.apply_changes([change]).expect("apply");
                }
                doc.length(&map)
            })
        })
        .collect();
    let held: usize = threads.into_iter().map(|t| t.join().expect("folds")).sum();
    assert_eq!(held as u64, per * writers as u64);
    held as f64 / started.elapsed().as_secs_f64()
}

/// A raw RocksDB at `dir` with the store's own options, so an anchor and the store differ only
/// in what the store adds.
fn raw_db(dir: &Path) -> rocksdb::DB {
    let mut opts = edgesync::store::db_options();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(edgesync::store::CF_WRITE_BUFFER_BYTES);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    rocksdb::DB::open(&opts, dir).expect("raw db")
}

/// Raw RocksDB: each reading is one WriteBatch of `bytes` bytes, written with the same
/// durability by `writers` threads.
fn raw(durability: Durability, writers: usize, bytes: usize, run: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(raw_db(dir.path()));
    let value_len = bytes.saturating_sub(32).max(1);
    let (rate, _) = run_writers(
        writers,
        run,
        |w| {
            let db = db.clone();
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(durability == Durability::Fsync);
            let value = vec![0x5au8; value_len];
            move |i| {
                let mut b = rocksdb::WriteBatch::default();
                let key = format!("{w:04}-{i:020}");
                b.put(key.as_bytes(), &value);
                db.write_opt(b, &wo).expect("raw write");
            }
        },
        || 0,
    );
    rate
}

// ---------------------------------------------------------------------------------------------
// Fixtures shared by the network rows.

/// A fleet CA and certificates for `names` in `dir/pki`.
/// Cloud nodes: the default rules let them write the benchmark's documents.
fn fleet(dir: &Path, names: &[&str]) -> LocalFleet {
    let nodes: Vec<(&str, Role)> = names.iter().map(|n| (*n, Role::Cloud)).collect();
    LocalFleet::create(&dir.join("pki"), &nodes, None).expect("fleet")
}

fn settings(
    fleet: &LocalFleet,
    data: &Path,
    name: &str,
    listen: bool,
    peer: Option<(&str, SocketAddr)>,
    durability: Durability,
) -> Settings {
    let peers: Vec<(&str, SocketAddr)> = peer.into_iter().collect();
    let mut s = fleet
        .settings(name, data, listen, &peers)
        .expect("settings");
    s.durability = durability;
    s
}

/// Node `name` of `fleet` in `data`, without the daemon (signing as the daemon will), for
/// building fixtures: its ingest journal folds at every ingest, so each ingest of [`fill`] is
/// its own change (the rows it prepares count changes; at the defaults the journal would fold
/// a document's ingests into one). The measured nodes run at the defaults.
fn node(fleet: &LocalFleet, data: &Path, name: &str, durability: Durability) -> DurableNode {
    let mut cfg = Config::new(NodeName::new(name).expect("name"));
    cfg.trust = fleet.core_trust(name, data).expect("trust");
    cfg.journal_readings_max = 1;
    let mut opts = NodeOptions::new(cfg, data);
    opts.durability = durability;
    DurableNode::start(opts).expect("node starts")
}

fn doc_ids(prefix: &str, n: usize) -> Vec<DocId> {
    (0..n)
        .map(|i| DocId::new(format!("{prefix}/sensor-{i:05}")).expect("doc id"))
        .collect()
}

/// Node "a" listening in `da`, and node "b" in `db` dialling it (durability `wal`).
async fn start_pair(fleet: &LocalFleet, da: &Path, db: &Path) -> (Daemon, Daemon) {
    let a = Daemon::start(settings(fleet, da, "a", true, None, Durability::Wal))
        .await
        .expect("a");
    let quic = a.quic_addr.expect("listens");
    let b = Daemon::start(settings(
        fleet,
        db,
        "b",
        false,
        Some(("a", quic)),
        Durability::Wal,
    ))
    .await
    .expect("b");
    (a, b)
}

/// `changes` changes on each of `docs`, each change one ingest of `per_change` readings; four
/// threads on disjoint documents, so every ingest is its own change.
fn fill(h: &NodeHandle, docs: &[DocId], changes: usize, per_change: usize, tag: &str) {
    let chunks: Vec<Vec<DocId>> = docs
        .chunks(docs.len().div_ceil(4))
        .map(|c| c.to_vec())
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|mine| {
            let (h, tag) = (h.clone(), tag.to_string());
            std::thread::spawn(move || {
                for c in 0..changes {
                    for d in &mine {
                        let rs = (0..per_change)
                            .map(|k| {
                                let i = (c * per_change + k) as u64;
                                Reading::from_json(
                                    format!("{tag}-{i}"),
                                    1_700_000_000_000 + i as i64,
                                    &serde_json::json!({"temp": 20.0 + (i % 100) as f64 / 10.0, "ok": true}),
                                )
                                .expect("valid")
                            })
                            .collect();
                        h.ingest(d.clone(), rs).expect("ingest");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("filler");
    }
}

/// Every stored change of every document, in the store's order.
fn stored_changes(data: &Path) -> BTreeMap<DocId, Vec<Vec<u8>>> {
    let store = RocksStore::open(data, Durability::Wal).expect("open store");
    let mut out = BTreeMap::new();
    for (doc, _) in store.docs().expect("docs") {
        let cs = store.changes_from(&doc, 0, usize::MAX).expect("changes");
        out.insert(doc, cs.into_iter().map(|c| c.bytes).collect());
    }
    out
}

async fn unacked(h: &NodeHandle, peer: &str) -> u64 {
    let s = h
        .status_async(vec![NodeName::new(peer).expect("name")])
        .await
        .expect("status");
    s.unacked.get(peer).copied().unwrap_or(u64::MAX)
}

/// Waits until `b` acknowledged everything `a` holds and `a` applied `from_b` changes from
/// `b`, and returns `b`'s session bytes (in + out).
async fn wait_synced(a: &NodeHandle, b: &NodeHandle, bn: &str, from_b: u64) -> u64 {
    let start = Instant::now();
    loop {
        let applied = a
            .status_async(vec![])
            .await
            .expect("status")
            .totals
            .changes_applied;
        if applied >= from_b && unacked(a, bn).await == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no convergence");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = b.status_async(vec![]).await.expect("status").totals;
    t.bytes_in + t.bytes_out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row 2: ingest over HTTP.

/// A keep-alive HTTP client as a sensor gateway's would be: one connection, reused. The
/// client shares the machine's cores with the server, so it must not cost more than one: no
/// resolver thread per request (ureq spawns one to bound name resolution when a global
/// timeout is set; these URLs are IP literals), and every answer read to its end (else the
/// connection cannot be reused and each request opens a new one).
fn keep_alive_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_send_body(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// POSTs `body` as JSON and reads the answer to its end; its status and JSON.
fn post_json(agent: &ureq::Agent, url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut r = agent.post(url).send_json(body).expect("ingest over HTTP");
    let status = r.status().as_u16();
    let v = r.body_mut().read_json().expect("a JSON answer");
    (status, v)
}

/// Readings/s through `POST /v1/ingest` from `writers` keep-alive clients, each request one
/// reading (`batch` 1, a JSON object) or a JSON array of `batch` readings.
fn http_ingest(rt: &tokio::runtime::Runtime, writers: usize, batch: u64, run: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = fleet(dir.path(), &["bench"]);
    let s = settings(
        &fleet,
        &dir.path().join("data"),
        "bench",
        false,
        None,
        Durability::Fsync,
    );
    let daemon = rt.block_on(Daemon::start(s)).expect("daemon");
    let url = format!("http://{}/v1/ingest", daemon.api_addr);
    let (rate, _) = run_writers(
        writers,
        run,
        |w| {
            let url = url.clone();
            let agent = keep_alive_agent();
            move |i| {
                let reading = |i: u64| {
                    serde_json::json!({
                        "doc": format!("site/sensor-{w}"), "id": format!("w{w}-{i}"),
                        "ts": 1_700_000_000_000u64 + i,
                        "fields": {"temp": 20.0 + (i % 100) as f64 / 10.0, "humidity": 45, "ok": true},
                    })
                };
                let body = if batch == 1 {
                    reading(i)
                } else {
                    (i * batch..(i + 1) * batch).map(reading).collect()
                };
                let (status, v) = post_json(&agent, &url, body);
                assert_eq!(status, 200);
                if batch > 1 {
                    let results = v["results"].as_array().expect("results");
                    assert!(
                        results.len() as u64 == batch
                            && results.iter().all(|r| r["status"].is_null())
                    );
                }
            }
        },
        || 0,
    );
    rt.block_on(daemon.shutdown());
    rate * batch as f64
}

// ---------------------------------------------------------------------------------------------
// Row 3: reconciliation after a partition.

/// Runs Automerge's sync protocol between `a` and `b` in lockstep until neither has anything to
/// send: (bytes, one-way flights).
fn automerge_sync(
    a: &mut Automerge,
    sa: &mut SyncState,
    b: &mut Automerge,
    sb: &mut SyncState,
) -> (u64, u64) {
    let (mut bytes, mut flights) = (0u64, 0u64);
    loop {
        let ma = a.generate_sync_message(sa).map(Message::encode);
        let mb = b.generate_sync_message(sb).map(Message::encode);
        if ma.is_none() && mb.is_none() {
            return (bytes, flights);
        }
        flights += 1;
        if let Some(m) = ma {
            bytes += m.len() as u64;
            b.receive_sync_message(sb, Message::decode(&m).expect("message"))
                .expect("receive");
        }
        if let Some(m) = mb {
            bytes += m.len() as u64;
            a.receive_sync_message(sa, Message::decode(&m).expect("message"))
                .expect("receive");
        }
        assert!(flights < 100, "automerge sync does not settle");
    }
}

fn load(changes: &[Vec<u8>]) -> Automerge {
    let mut d = Automerge::new();
    d.apply_changes(
        changes
            .iter()
            .map(|c| Change::from_bytes(c.clone()).expect("change")),
    )
    .expect("apply");
    d
}

struct Anchor3 {
    persisted: (u64, u64),
    fresh: (u64, u64),
    /// Bytes of the persisted-state sync summed over the changed documents alone.
    persisted_changed: u64,
}

/// Automerge per document: (bytes summed over documents, flights of the slowest document),
/// with persisted and with fresh sync states.
fn reconcile_automerge(
    shared: &BTreeMap<DocId, Vec<Vec<u8>>>,
    extra_a: &BTreeMap<DocId, Vec<Vec<u8>>>,
    extra_b: &BTreeMap<DocId, Vec<Vec<u8>>>,
) -> Anchor3 {
    let mut out = Anchor3 {
        persisted: (0, 0),
        fresh: (0, 0),
        persisted_changed: 0,
    };
    for (doc, cs) in shared {
        let mut a = load(cs);
        let mut b = load(cs);
        // The sync states both sides persisted after their last sync.
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        automerge_sync(&mut a, &mut sa, &mut b, &mut sb);
        let (pa, pb) = (sa.encode(), sb.encode());
        let none = Vec::new();
        a.apply_changes(
            extra_a
                .get(doc)
                .unwrap_or(&none)
                .iter()
                .map(|c| Change::from_bytes(c.clone()).expect("change")),
        )
        .expect("apply");
        b.apply_changes(
            extra_b
                .get(doc)
                .unwrap_or(&none)
                .iter()
                .map(|c| Change::from_bytes(c.clone()).expect("change")),
        )
        .expect("apply");
        let (mut a2, mut b2) = (a.clone(), b.clone());
        let mut sa = SyncState::decode(&pa).expect("state");
        let mut sb = SyncState::decode(&pb).expect("state");
        let (bytes, flights) = automerge_sync(&mut a, &mut sa, &mut b, &mut sb);
        assert_eq!(a.get_heads(), b.get_heads(), "automerge converged");
        out.persisted.0 += bytes;
        out.persisted.1 = out.persisted.1.max(flights);
        if extra_a.contains_key(doc) || extra_b.contains_key(doc) {
            out.persisted_changed += bytes;
        }
        let (bytes, flights) = automerge_sync(
            &mut a2,
            &mut SyncState::new(),
            &mut b2,
            &mut SyncState::new(),
        );
        out.fresh.0 += bytes;
        out.fresh.1 = out.fresh.1.max(flights);
    }
    out
}

/// Ours in lockstep: both nodes' frames are delivered together, round after round, until
/// neither sends anything: (bytes, flights).
async fn lockstep(a: &NodeHandle, an: &str, b: &NodeHandle, bn: &str) -> (u64, u64) {
    let (ta, mut ra) = outbound_channel();
    let (tb, mut rb) = outbound_channel();
    let cloud = |n: &str| {
        edgesync::proto::Identity::new(
            NodeName::new(n).expect("name"),
            edgesync::proto::Role::Cloud,
            None,
        )
    };
    let sa = a.peer_up(cloud(bn), ta).await.expect("up");
    let sb = b.peer_up(cloud(an), tb).await.expect("up");
    let (mut bytes, mut flights) = (0u64, 0u64);
    loop {
        // Collect everything both nodes send in answer to the last flight: until two rounds
        // of (status on both, a pause) bring nothing new. With `wal` durability a frame is
        // released in the core's loop iteration that made it.
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        let mut quiet = 0;
        while quiet < 2 {
            a.status_async(vec![]).await.expect("status");
            b.status_async(vec![]).await.expect("status");
            tokio::time::sleep(Duration::from_millis(10)).await;
            let before = fa.len() + fb.len();
            while let Some(Outbound::Frame(f)) = ra.try_recv() {
                ra.written(f.len());
                fa.push(f);
            }
            while let Some(Outbound::Frame(f)) = rb.try_recv() {
                rb.written(f.len());
                fb.push(f);
            }
            quiet = if fa.len() + fb.len() == before {
                quiet + 1
            } else {
                0
            };
        }
        if fa.is_empty() && fb.is_empty() {
            break;
        }
        flights += 1;
        for f in fa {
            bytes += f.len() as u64;
            b.peer_input(sb, f, None).expect("input");
        }
        for f in fb {
            bytes += f.len() as u64;
            a.peer_input(sa, f, None).expect("input");
        }
        assert!(flights < 1000, "lockstep does not settle");
    }
    (bytes, flights)
}

struct Result3 {
    quic_bytes: u64,
    /// Wall time of the heal, from starting both nodes until converged.
    heal_time: Duration,
    /// samod's heal of the same documents and changes: (wall time, bytes).
    samod: (Duration, u64),
    lockstep: (u64, u64),
    anchor: Anchor3,
    initial_sync_changes_per_s: f64,
}

fn reconciliation(
    rt: &tokio::runtime::Runtime,
    docs: usize,
    shared: usize,
    changed: usize,
) -> Result3 {
    let p = partition(rt, "r3", docs, shared, changed);
    let (dir, fleet) = (&p.dir, &p.fleet);
    let (da, db) = (p.da.as_path(), p.db.as_path());
    let (initial, shared_changes) = (p.initial, &p.shared_changes);
    let total_shared: usize = shared_changes.values().map(Vec::len).sum();
    let extra = |d: &Path| -> BTreeMap<DocId, Vec<Vec<u8>>> {
        stored_changes(d)
            .into_iter()
            .filter_map(|(doc, cs)| {
                let before: BTreeSet<&Vec<u8>> = shared_changes.get(&doc)?.iter().collect();
                let new: Vec<Vec<u8>> =
                    cs.iter().filter(|c| !before.contains(c)).cloned().collect();
                (!new.is_empty()).then_some((doc, new))
            })
            .collect()
    };
    let (extra_a, extra_b) = (extra(da), extra(db));
    assert_eq!(extra_a.len(), changed);
    assert_eq!(extra_b.len(), changed);
    let (la, lb) = (dir.path().join("a2"), dir.path().join("b2"));
    copy_dir(da, &la);
    copy_dir(db, &lb);
    let (quic_bytes, heal_time) = heal(rt, &p, changed);
    // samod on the same documents and changes: the shared history synced, the partition's
    // changes on each side, then the heal.
    let samod = rt.block_on(async {
        let (sa, sb) = (dir.path().join("samod-a"), dir.path().join("samod-b"));
        let ids = samod_side::seed(&sa, shared_changes).await;
        let (initial, _) = samod_side::full_sync(&sa, &sb, shared_changes, &ids).await;
        samod_side::change(&sa, &extra_a, &ids).await;
        samod_side::change(&sb, &extra_b, &ids).await;
        let mut all = shared_changes.clone();
        for (doc, cs) in extra_a.iter().chain(&extra_b) {
            all.get_mut(doc).expect("shared").extend(cs.iter().cloned());
        }
        let (took, bytes) = samod_side::heal(&sa, &sb, &all, &ids).await;
        eprintln!(
            "samod: initial sync of the shared history {:.0} changes/s",
            total_shared as f64 / initial.as_secs_f64()
        );
        (took, bytes)
    });
    // The same heal in lockstep, for the round trips.
    let lock = {
        let (a, b) = (
            node(fleet, &la, "a", Durability::Wal),
            node(fleet, &lb, "b", Durability::Wal),
        );
        let r = rt.block_on(lockstep(&a.handle(), "a", &b.handle(), "b"));
        a.shutdown();
        b.shutdown();
        r
    };
    Result3 {
        quic_bytes,
        heal_time,
        samod,
        lockstep: lock,
        anchor: reconcile_automerge(shared_changes, &extra_a, &extra_b),
        initial_sync_changes_per_s: total_shared as f64 / initial.as_secs_f64(),
    }
}

/// Two nodes after a partition: `docs` documents with `shared` changes each held by both sides
/// (synced over QUIC), then `changed` documents changed on each side (10 changes each).
struct Partitioned {
    dir: tempfile::TempDir,
    fleet: LocalFleet,
    da: std::path::PathBuf,
    db: std::path::PathBuf,
    /// How long the shared history took to reach b.
    initial: Duration,
    /// a's changes per document after the shared history.
    shared_changes: BTreeMap<DocId, Vec<Vec<u8>>>,
}

fn partition(
    rt: &tokio::runtime::Runtime,
    tag: &str,
    docs: usize,
    shared: usize,
    changed: usize,
) -> Partitioned {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = fleet(dir.path(), &["a", "b"]);
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let ids = doc_ids(tag, docs);
    {
        let n = node(&fleet, &da, "a", Durability::Wal);
        fill(&n.handle(), &ids, shared, 1, "s");
        n.shutdown();
    }
    // The shared history reaches b over QUIC.
    let started = Instant::now();
    rt.block_on(async {
        let (a, b) = start_pair(&fleet, &da, &db).await;
        wait_synced(&a.handle(), &b.handle(), "b", 0).await;
        b.shutdown().await;
        a.shutdown().await;
    });
    let initial = started.elapsed();
    let shared_changes = stored_changes(&da);
    // The partition: `changed` documents change on each side, 10 changes each.
    {
        let n = node(&fleet, &da, "a", Durability::Wal);
        fill(&n.handle(), &ids[..changed], 10, 1, "pa");
        n.shutdown();
        let n = node(&fleet, &db, "b", Durability::Wal);
        fill(&n.handle(), &ids[docs - changed..], 10, 1, "pb");
        n.shutdown();
    }
    Partitioned {
        dir,
        fleet,
        da,
        db,
        initial,
        shared_changes,
    }
}

/// The heal after [`partition`], over QUIC: the session's bytes, and the wall time from
/// starting both nodes until they converged.
fn heal(rt: &tokio::runtime::Runtime, p: &Partitioned, changed: usize) -> (u64, Duration) {
    rt.block_on(async {
        let started = Instant::now();
        let (a, b) = start_pair(&p.fleet, &p.da, &p.db).await;
        let bytes = wait_synced(&a.handle(), &b.handle(), "b", (changed * 10) as u64).await;
        let took = started.elapsed();
        b.shutdown().await;
        a.shutdown().await;
        (bytes, took)
    })
}

/// Bytes of the heal after a fresh [`partition`].
fn heal_bytes(rt: &tokio::runtime::Runtime, docs: usize, shared: usize, changed: usize) -> u64 {
    heal(rt, &partition(rt, "r3s", docs, shared, changed), changed).0
}

/// Scaling: what a heal costs follows what changed, not what is held.
fn scaling_row(rt: &tokio::runtime::Runtime, quick: bool, reps: usize) -> Row {
    let shared = if quick { 1 } else { 5 };
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for _ in 0..reps.min(3) {
        small.push(heal_bytes(rt, 1_000, shared, 10) as f64);
        large.push(heal_bytes(rt, 10_000, shared, 10) as f64);
    }
    Row {
        name: format!(
            "3. scaling: reconciliation bytes, 10,000 docs vs 1,000 docs ({shared} shared changes each, 10+10 docs changed)"
        ),
        unit: "bytes",
        ours: median(large),
        anchor: median(small),
        goal: Goal::RatioAtMost(1.2),
    }
}

// ---------------------------------------------------------------------------------------------
// Row 4: full sync to an empty peer.

/// What row 4 measured: medians.
struct Result4 {
    /// Ours, changes/s over QUIC into RocksDB with fsync.
    ours: f64,
    /// Ours, the session's bytes (in and out at the receiver).
    ours_bytes: f64,
    /// Automerge alone, changes/s.
    automerge: f64,
    /// samod, changes/s over TCP into its filesystem storage.
    samod: f64,
    /// samod, the connection's bytes.
    samod_bytes: f64,
    /// The ceiling: Automerge taking the changes out of the saved forms and raw RocksDB
    /// storing them, changes/s.
    ceiling: f64,
}

fn full_sync(rt: &tokio::runtime::Runtime, docs: usize, changes: usize, reps: usize) -> Result4 {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = fleet(dir.path(), &["src", "dst"]);
    let ds = dir.path().join("src");
    let ids = doc_ids("r4", docs);
    {
        let n = node(&fleet, &ds, "src", Durability::Wal);
        fill(&n.handle(), &ids, changes, 1, "f");
        n.shutdown();
    }
    let all = stored_changes(&ds);
    let total: usize = all.values().map(Vec::len).sum();
    let samod_src = dir.path().join("samod-src");
    let samod_ids = rt.block_on(samod_side::seed(&samod_src, &all));
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    let (mut ours_bytes, mut samod, mut samod_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let saved: Vec<Vec<u8>> = all.values().map(|cs| load(cs).save()).collect();
    let mut ceiling = Vec::new();
    for rep in 0..reps {
        let dd = dir.path().join(format!("dst-{rep}"));
        let took = rt.block_on(async {
            let a = Daemon::start(settings(&fleet, &ds, "src", true, None, Durability::Wal))
                .await
                .expect("src");
            let started = Instant::now();
            let b = Daemon::start(settings(
                &fleet,
                &dd,
                "dst",
                false,
                Some(("src", a.quic_addr.expect("listens"))),
                Durability::Fsync,
            ))
            .await
            .expect("dst");
            // Every change applied at the receiver (the sender's receipts from an earlier
            // repetition would say "done" at once).
            let h = b.handle();
            loop {
                let t = h.status_async(vec![]).await.expect("status").totals;
                if (t.changes_applied + t.changes_duplicate) as usize >= total {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "full sync stalled"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let took = started.elapsed();
            let t = h.status_async(vec![]).await.expect("status").totals;
            b.shutdown().await;
            a.shutdown().await;
            (took, t.bytes_in + t.bytes_out)
        });
        let (took, bytes) = took;
        ours.push(total as f64 / took.as_secs_f64());
        ours_bytes.push(bytes as f64);
        let (took, bytes) = rt.block_on(samod_side::full_sync(
            &samod_src,
            &dir.path().join(format!("samod-dst-{rep}")),
            &all,
            &samod_ids,
        ));
        samod.push(total as f64 / took.as_secs_f64());
        samod_bytes.push(bytes as f64);
        // The anchor right after, so drift hits both alike.
        let started = Instant::now();
        let mut heads = 0;
        for cs in all.values() {
            heads += load(cs).get_heads().len();
        }
        assert!(heads >= docs);
        anchor.push(total as f64 / started.elapsed().as_secs_f64());
        let took = take_out_and_store(&saved, &dir.path().join(format!("ceiling-{rep}")), total);
        ceiling.push(total as f64 / took.as_secs_f64());
    }
    Result4 {
        ours: median(ours),
        ours_bytes: median(ours_bytes),
        automerge: median(anchor),
        samod: median(samod),
        samod_bytes: median(samod_bytes),
        ceiling: median(ceiling),
    }
}

/// The part of a full sync no receiver that checks and stores every change can skip, done by
/// Automerge and RocksDB alone: each document's saved form loaded and its changes taken out
/// (the checks read a change's operations, and Automerge gives them only through the change),
/// and their bytes written to RocksDB (a `WriteBatch` a document, the WAL synced once at the
/// end): the time it took.
fn take_out_and_store(saved: &[Vec<u8>], dir: &Path, total: usize) -> Duration {
    let db = raw_db(dir);
    let started = Instant::now();
    let mut stored = 0;
    for (d, bytes) in saved.iter().enumerate() {
        let doc = Automerge::load(bytes).expect("a saved document loads");
        let mut batch = rocksdb::WriteBatch::default();
        for (i, c) in doc.get_changes(&[]).iter().enumerate() {
            let key = [(d as u32).to_be_bytes(), (i as u32).to_be_bytes()].concat();
            batch.put(key, c.raw_bytes());
            stored += 1;
        }
        db.write(batch).expect("raw write");
    }
    db.flush_wal(true).expect("WAL sync");
    let took = started.elapsed();
    assert_eq!(stored, total);
    took
}

// ---------------------------------------------------------------------------------------------
// Side by side with samod (the Rust automerge-repo): the same documents and changes, the same
// run. samod speaks over TCP loopback (its length-delimited framing; bytes are counted at the
// frames, as ours are at the session's frames) and keeps its documents in its filesystem
// storage.

mod samod_side {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use automerge::{Automerge, ChangeHash};
    use edgesync_proto::DocId;
    use futures::future::{join_all, BoxFuture};
    use futures::{SinkExt, StreamExt};
    use samod::{BackoffConfig, DialError, DocumentId, Repo, Transport};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

    fn codec() -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder()
            .max_frame_length(1 << 30)
            .new_codec()
    }

    /// A transport over `tcp` that adds every frame's bytes (length prefix included) to `bytes`.
    fn counted(tcp: TcpStream, bytes: Arc<AtomicU64>) -> Transport {
        let _ = tcp.set_nodelay(true);
        let (r, w) = tcp.into_split();
        let inbound = bytes.clone();
        let stream = FramedRead::new(r, codec()).map(move |m| {
            let m = m?;
            inbound.fetch_add(m.len() as u64 + 4, Ordering::Relaxed);
            Ok::<Vec<u8>, std::io::Error>(m.to_vec())
        });
        let sink = FramedWrite::new(w, codec()).with(move |m: Vec<u8>| {
            bytes.fetch_add(m.len() as u64 + 4, Ordering::Relaxed);
            futures::future::ready(Ok::<_, std::io::Error>(bytes::Bytes::from(m)))
        });
        Transport::new(stream, sink)
    }

    struct TcpDialer {
        addr: SocketAddr,
        bytes: Arc<AtomicU64>,
    }

    impl samod::Dialer for TcpDialer {
        type Error = std::io::Error;

        fn url(&self) -> samod::Url {
            samod::Url::parse(&format!("tcp://{}", self.addr)).expect("url")
        }

        fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<std::io::Error>>> {
            let (addr, bytes) = (self.addr, self.bytes.clone());
            Box::pin(async move {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(DialError::transient)?;
                Ok(counted(tcp, bytes))
            })
        }
    }

    async fn repo(dir: &Path) -> Repo {
        Repo::build_tokio()
            .with_storage(samod::storage::TokioFilesystemStorage::new(dir))
            .load()
            .await
    }

    /// `b` dials `a` over TCP loopback; the counter of the connection's bytes (both ways).
    async fn connect(a: &Repo, b: &Repo) -> (Arc<AtomicU64>, samod::DialerHandle<std::io::Error>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = a
            .make_acceptor(samod::Url::parse(&format!("tcp://{addr}")).expect("url"))
            .expect("acceptor");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(counted(tcp, Arc::new(AtomicU64::new(0))));
            }
        });
        let bytes = Arc::new(AtomicU64::new(0));
        let dialer = b
            .dial(
                BackoffConfig::default(),
                Arc::new(TcpDialer {
                    addr,
                    bytes: bytes.clone(),
                }),
            )
            .expect("dial");
        dialer.established().await.expect("connected");
        (bytes, dialer)
    }

    fn heads_of(changes: &[Vec<u8>]) -> Vec<ChangeHash> {
        let mut h = super::load(changes).get_heads();
        h.sort();
        h
    }

    /// Waits until every document of `want` has the wanted heads in `repo` (opening it there).
    async fn wait_heads(repo: &Repo, want: &BTreeMap<DocumentId, Vec<ChangeHash>>) {
        let started = Instant::now();
        let handles: Vec<_> = join_all(want.keys().map(|id| repo.find(id.clone())))
            .await
            .into_iter()
            .map(|h| h.expect("running").expect("found"))
            .collect();
        for (h, (_, heads)) in handles.iter().zip(want) {
            loop {
                let mut now = h.with_document(|d| d.get_heads());
                now.sort();
                if now == *heads {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "samod does not converge"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Stores each document's changes in a new samod repo at `dir`: their samod ids.
    pub async fn seed(
        dir: &Path,
        docs: &BTreeMap<DocId, Vec<Vec<u8>>>,
    ) -> BTreeMap<DocId, DocumentId> {
        let r = repo(dir).await;
        let mut ids = BTreeMap::new();
        for (doc, cs) in docs {
            let h = r.create(super::load(cs)).await.expect("create");
            ids.insert(doc.clone(), h.document_id().clone());
        }
        r.stop().await;
        ids
    }

    /// Full sync of the documents in `da` to an empty repo at `db`: (wall time from loading
    /// both repos until `db` holds every change, bytes).
    pub async fn full_sync(
        da: &Path,
        db: &Path,
        docs: &BTreeMap<DocId, Vec<Vec<u8>>>,
        ids: &BTreeMap<DocId, DocumentId>,
    ) -> (Duration, u64) {
        converge(da, db, docs, ids, false).await
    }

    /// Applies `extra` (per document) to the repo at `dir`.
    pub async fn change(
        dir: &Path,
        extra: &BTreeMap<DocId, Vec<Vec<u8>>>,
        ids: &BTreeMap<DocId, DocumentId>,
    ) {
        let r = repo(dir).await;
        for (doc, cs) in extra {
            let h = r
                .find(ids[doc].clone())
                .await
                .expect("running")
                .expect("held");
            h.with_document(|d: &mut Automerge| {
                d.apply_changes(
                    cs.iter()
                        .map(|c| automerge::Change::from_bytes(c.clone()).expect("change")),
                )
                .expect("apply")
            });
        }
        r.stop().await;
    }

    /// The heal after a partition: both repos load, connect, and converge on every document
    /// (`all`: each document's changes on both sides together): (wall time, bytes).
    pub async fn heal(
        da: &Path,
        db: &Path,
        all: &BTreeMap<DocId, Vec<Vec<u8>>>,
        ids: &BTreeMap<DocId, DocumentId>,
    ) -> (Duration, u64) {
        converge(da, db, all, ids, true).await
    }

    /// Loads the repos at `da` and `db`, connects them, and waits until `db` (and with
    /// `both`, `da` too) holds `docs`: (wall time from loading until then, bytes). With `both`
    /// every document is open on both sides first, as a node holds them: a repo syncs the
    /// documents it has open.
    async fn converge(
        da: &Path,
        db: &Path,
        docs: &BTreeMap<DocId, Vec<Vec<u8>>>,
        ids: &BTreeMap<DocId, DocumentId>,
        both: bool,
    ) -> (Duration, u64) {
        let want: BTreeMap<DocumentId, Vec<ChangeHash>> = docs
            .iter()
            .map(|(d, cs)| (ids[d].clone(), heads_of(cs)))
            .collect();
        let started = Instant::now();
        let (a, b) = (repo(da).await, repo(db).await);
        let mut open = Vec::new();
        if both {
            open.extend(join_all(want.keys().map(|id| a.find(id.clone()))).await);
            open.extend(join_all(want.keys().map(|id| b.find(id.clone()))).await);
        }
        let (bytes, dialer) = connect(&a, &b).await;
        if both {
            wait_heads(&a, &want).await;
        }
        wait_heads(&b, &want).await;
        let took = started.elapsed();
        let n = bytes.load(Ordering::Relaxed);
        drop(open);
        dialer.close();
        b.stop().await;
        a.stop().await;
        (took, n)
    }
}

// ---------------------------------------------------------------------------------------------
// Row 8: one long stream over HTTP.

/// What row 8 measured.
struct LongStream {
    rate_first_tenth: f64,
    rate_last_tenth: f64,
    disk_bytes_per_reading: f64,
    peak_rss_mib: f64,
}

fn long_stream(readings: u64) -> LongStream {
    const CLIENTS: u64 = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = fleet(dir.path(), &["long"]);
    let (proc_, url, _) = start_process(dir.path(), &fleet, "long", false, None);
    let t0: u64 = 1_700_006_400_000 / 86_400_000 * 86_400_000;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, done, url) = (next.clone(), done.clone(), format!("{url}/v1/ingest"));
            std::thread::spawn(move || {
                let agent = keep_alive_agent();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= readings {
                        return;
                    }
                    let body = serde_json::json!({
                        "doc": "site-a/long-1", "id": format!("r{i:07}"), "ts": t0 + i * 1000,
                        "fields": {"temp": 20.0 + (i % 100) as f64 / 10.0, "ok": true},
                    });
                    let (status, _) = post_json(&agent, &url, body);
                    assert_eq!(status, 200);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // The time each tenth completed.
    let tenth = readings / 10;
    let mut marks = vec![Duration::ZERO];
    while marks.len() <= 10 {
        if done.load(Ordering::SeqCst) >= tenth * marks.len() as u64 {
            marks.push(started.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for c in clients {
        c.join().expect("client");
    }
    let rate = |k: usize| tenth as f64 / (marks[k + 1] - marks[k]).as_secs_f64();
    // Read it all back, page by page.
    let agent = ureq::agent();
    let mut after: Option<String> = None;
    let mut seen = 0u64;
    loop {
        let mut u = format!("{url}/v1/docs/site-a/long-1?limit=1000");
        if let Some(a) = &after {
            u += &format!("&after={a}");
        }
        let page = get_json(&u);
        seen += page["readings"].as_object().expect("readings").len() as u64;
        match page["next"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
        let _ = &agent;
    }
    assert_eq!(seen, readings, "every reading read back once");
    let peak = vm_hwm_mib(proc_.0.id());
    drop(proc_);
    LongStream {
        rate_first_tenth: rate(0),
        rate_last_tenth: rate(9),
        disk_bytes_per_reading: dir_bytes(&dir.path().join("long")) as f64 / readings as f64,
        peak_rss_mib: peak,
    }
}

// ---------------------------------------------------------------------------------------------
// Row 7: retention over simulated days.

/// What row 7 measured: readings/s on the first and the last day, and (day, disk MiB, RSS MiB)
/// at each mark: the most of each over that day, sampled every simulated hour (both rise and
/// fall as RocksDB fills and flushes its logs and memtables; a single sample compared where
/// each happened to be in that cycle, and flipped the row between met and missed).
struct Days {
    rate_first: f64,
    rate_last: f64,
    marks: Vec<(u64, f64, f64)>,
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn vm_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// 10 sensors, one reading every 10 s each, for `days` simulated days into a RocksDB store
/// through the core with `keep_hours` of retention; the clock is an argument, not slept.
fn retention_days(days: u64, keep_hours: u64, marks: &[u64]) -> Days {
    const SENSORS: usize = 10;
    const STEP_MS: u64 = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RocksStore::open(dir.path(), Durability::Fsync).expect("store opens");
    let syncer = store.syncer();
    let mut cfg = Config::new(NodeName::new("bench-days").expect("valid"));
    cfg.keep_ms = Some(keep_hours * 3_600_000);
    if std::env::var_os("EDGESYNC_BENCH_NO_FEED").is_some() {
        cfg.feed_events_max = 0;
    }
    let boot = Boot {
        nonce: [7; 16],
        new_store_id: [7; 16],
    };
    let mut node = Node::open(store, cfg, boot).expect("node opens");
    let streams: Vec<DocId> = (0..SENSORS)
        .map(|s| DocId::new(format!("site-a/sensor-{s}")).expect("valid"))
        .collect();
    let t0: u64 = 1_700_006_400_000 / 86_400_000 * 86_400_000;
    let ticks = 86_400_000 / STEP_MS;
    let mut rates = Vec::new();
    let mut out = Vec::new();
    for day in 0..days {
        let started = Instant::now();
        let marked = marks.contains(&(day + 1));
        let (mut disk_max, mut rss_max) = (0f64, 0f64);
        for t in 0..ticks {
            let now = t0 + (day * ticks + t) * STEP_MS;
            for (s, stream) in streams.iter().enumerate() {
                let fields =
                    serde_json::json!({"temp": 20.0 + (t % 100) as f64 / 10.0, "ok": true});
                let r = Reading::from_json(format!("s{s}-{day}-{t}"), now as i64, &fields)
                    .expect("valid reading");
                node.ingest(stream, &[r], now).expect("ingest");
            }
            // As a shell does: the core queues an event per change until polled.
            while node.poll_event().is_some() {}
            if t % 6 == 5 {
                let seq = node.commit_seq();
                syncer.sync().expect("fsync");
                node.handle_durable(seq);
            }
            if t % 60 == 59 {
                // The shell's housekeeping (`DurableNode`), in its order.
                node.compact_closed(now, 16).expect("compact");
                node.evict_closed(now);
                node.trim_feed_if_due(now).expect("trim the feed");
                while node.expire(now).expect("expire") == edgesync_proto::stream::EXPIRE_BATCH_MAX
                {
                }
            }
            if marked && t % 360 == 359 {
                disk_max = disk_max.max(dir_bytes(dir.path()) as f64 / (1024.0 * 1024.0));
                rss_max = rss_max.max(vm_rss_mib());
            }
        }
        let secs = started.elapsed().as_secs_f64();
        rates.push((ticks * SENSORS as u64) as f64 / secs);
        if marked {
            out.push((day + 1, disk_max, rss_max));
            eprintln!(
                "row 7: day {} of {days}: at most {disk_max:.1} MiB on disk, {rss_max:.1} MiB RSS; {:.0} readings/s",
                day + 1,
                rates[rates.len() - 1]
            );
            if std::env::var_os("EDGESYNC_BENCH_MEM").is_some() {
                let m = node.store().memory();
                eprintln!(
                    "  rocksdb: memtables {:.1} MiB, table readers {:.1} MiB, block cache {:.1} MiB; docs loaded {}",
                    m.memtables as f64 / 1048576.0,
                    m.table_readers as f64 / 1048576.0,
                    m.block_cache as f64 / 1048576.0,
                    node.loaded_count(),
                );
            }
            if std::env::var_os("EDGESYNC_BENCH_DU").is_some() {
                let mut by: BTreeMap<String, u64> = BTreeMap::new();
                for e in std::fs::read_dir(dir.path()).expect("dir").flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    let kind = name.rsplit('.').next().unwrap_or("").to_string();
                    *by.entry(kind).or_default() += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                eprintln!("  by kind: {by:?}");
            }
        }
    }
    Days {
        rate_first: rates[0],
        rate_last: rates[rates.len() - 1],
        marks: out,
    }
}

// ---------------------------------------------------------------------------------------------
// Row 5: memory of a node process.

fn vm_hwm_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `edgesync run` on ports the system chooses; returns the process, its API URL and its
/// QUIC address (when it listens), as its ready line reports them.
fn start_process(
    dir: &Path,
    fleet: &LocalFleet,
    name: &str,
    listen: bool,
    peer: Option<(&str, SocketAddr)>,
) -> (Proc, String, Option<SocketAddr>) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let peers: Vec<(&str, SocketAddr)> = peer.into_iter().collect();
    let cfg = fleet.config_toml(
        name,
        &dir.join(name),
        any,
        listen.then_some(any),
        &peers,
        "",
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgesync"))
        .args(["run", "--config", path.to_str().expect("utf-8")])
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("edgesync run");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("{name} exited before it was ready"))
        .expect("ready line");
    // Drain the rest so that the node never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
    let url = format!("http://{}", ready["api"].as_str().expect("api"));
    let quic = ready["quic"]
        .as_str()
        .map(|a| a.parse().expect("quic address"));
    (Proc(child), url, quic)
}

fn get_json(url: &str) -> serde_json::Value {
    ureq::get(url)
        .call()
        .expect("GET")
        .into_body()
        .read_json()
        .expect("JSON")
}

/// (peak RSS after reading every document, peak RSS after serving a full sync, peak RSS of the
/// receiving node), MiB.
fn memory(docs: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = fleet(dir.path(), &["big", "empty"]);
    let ids = doc_ids("r5", docs);
    {
        let n = node(&fleet, &dir.path().join("big"), "big", Durability::Wal);
        // 50 readings per document, in 5 changes of 10 (a gateway batching its sensors).
        fill(&n.handle(), &ids, 5, 10, "m");
        n.shutdown();
    }
    let (big, url, quic) = start_process(dir.path(), &fleet, "big", true, None);
    let quic = quic.expect("big listens");
    let agent = ureq::agent();
    for d in &ids {
        let r = agent
            .get(&format!("{url}/v1/docs/{d}"))
            .call()
            .expect("GET doc");
        assert_eq!(r.status(), 200);
    }
    let after_load = vm_hwm_mib(big.0.id());
    let (empty, eurl, _) = start_process(dir.path(), &fleet, "empty", false, Some(("big", quic)));
    let start = Instant::now();
    loop {
        let s = get_json(&format!("{url}/v1/status"));
        let done =
            s["peers"].as_array().into_iter().flatten().any(|p| {
                p["name"] == "empty" && p["unacked_changes"] == 0 && p["connected"] == true
            });
        if done && get_json(&format!("{eurl}/v1/status"))["docs"] == docs {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "full sync did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after_serve = vm_hwm_mib(big.0.id());
    let receiver = vm_hwm_mib(empty.0.id());
    (after_load, after_serve, receiver)
}

// ---------------------------------------------------------------------------------------------
// Row 6: simulator speed.

fn sim_seeds_per_s(seeds: u64) -> f64 {
    let started = Instant::now();
    for seed in 1..=seeds {
        let (_, report) = edgesync_sim::run(&edgesync_sim::RunArgs::seed(seed));
        assert!(
            report.violation.is_none(),
            "seed {seed}: {:?}",
            report.violation
        );
    }
    seeds as f64 / started.elapsed().as_secs_f64()
}

/// Rows 3 and 4: reconciliation after a partition, its scaling, and full sync to an empty
/// peer, each against Automerge and samod.
fn sync_rows(rt: &tokio::runtime::Runtime, quick: bool, reps: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let (docs3, shared3) = if quick { (200, 20) } else { (1000, 100) };
    let r3 = reconciliation(rt, docs3, shared3, 10);
    let what = format!("{docs3} docs x {shared3} shared changes, 10+10 docs changed");
    rows.push(Row {
        name: format!(
            "3. reconciliation bytes over QUIC vs Automerge sync, persisted state ({what})"
        ),
        unit: "bytes",
        ours: r3.quic_bytes as f64,
        anchor: r3.anchor.persisted.0 as f64,
        goal: Goal::RatioAtMost(0.5),
    });
    rows.push(Row {
        name: "3. the same vs Automerge sync, persisted state, the 10+10 changed docs alone".into(),
        unit: "bytes",
        ours: r3.quic_bytes as f64,
        anchor: r3.anchor.persisted_changed as f64,
        goal: Goal::RatioAtMost(1.0),
    });
    rows.push(Row {
        name: format!("3. reconciliation bytes over QUIC vs Automerge sync, fresh state ({what})"),
        unit: "bytes",
        ours: r3.quic_bytes as f64,
        anchor: r3.anchor.fresh.0 as f64,
        goal: Goal::RatioAtMost(0.5),
    });
    rows.push(Row {
        name: format!(
            "3. reconciliation round trips (lockstep, {} B) vs Automerge persisted",
            r3.lockstep.0
        ),
        unit: "round trips",
        ours: r3.lockstep.1 as f64 / 2.0,
        anchor: r3.anchor.persisted.1 as f64 / 2.0,
        goal: Goal::AtMost(2.0),
    });
    rows.push(Row {
        name: "3. reconciliation round trips vs Automerge fresh state".into(),
        unit: "round trips",
        ours: r3.lockstep.1 as f64 / 2.0,
        anchor: r3.anchor.fresh.1 as f64 / 2.0,
        goal: Goal::AtMost(2.0),
    });
    rows.push(Row {
        name: format!("3. reconciliation vs samod (TCP loopback, the same documents and changes): bytes ({what})"),
        unit: "bytes",
        ours: r3.quic_bytes as f64,
        anchor: r3.samod.1 as f64,
        goal: Goal::RatioAtMost(0.5),
    });
    rows.push(Row {
        name: "3. reconciliation vs samod: wall time from start to converged".into(),
        unit: "s",
        ours: r3.heal_time.as_secs_f64(),
        anchor: r3.samod.0.as_secs_f64(),
        goal: Goal::RatioAtMost(0.5),
    });
    eprintln!(
        "row 3 done (initial sync of the shared history: {:.0} changes/s)",
        r3.initial_sync_changes_per_s
    );

    rows.push(scaling_row(rt, quick, reps));
    eprintln!("row 3 scaling done");

    let (docs4, changes4) = if quick { (20, 500) } else { (100, 1000) };
    let r4 = full_sync(rt, docs4, changes4, 3);
    rows.push(Row {
        name: format!("4. full sync to an empty peer, QUIC into RocksDB fsync, {docs4} docs x {changes4} changes vs Automerge in memory"),
        unit: "changes/s",
        ours: r4.ours,
        anchor: r4.automerge,
        goal: Goal::RatioAtLeast(0.5),
    });
    rows.push(Row {
        name: "4. the same full sync vs samod (TCP loopback into its filesystem storage): time (as changes/s)".into(),
        unit: "changes/s",
        ours: r4.ours,
        anchor: r4.samod,
        goal: Goal::RatioAtLeast(2.0),
    });
    rows.push(Row {
        name: "4. ceiling of the row above: Automerge alone taking the changes out of the same documents' saved forms, raw RocksDB storing them (one WAL sync)".into(),
        unit: "changes/s",
        ours: r4.ceiling,
        anchor: r4.samod,
        goal: Goal::Ceiling(2.0),
    });
    rows.push(Row {
        name: "4. the same full sync vs samod: bytes".into(),
        unit: "bytes",
        ours: r4.ours_bytes,
        anchor: r4.samod_bytes,
        goal: Goal::RatioAtMost(0.5),
    });
    eprintln!("row 4 done");
    rows
}

/// Rows 1 and 2: durable ingest through the library and over HTTP.
fn ingest_rows(rt: &tokio::runtime::Runtime, run: Duration, reps: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut library_fsync_8 = 0.0;
    for durability in [Durability::Fsync, Durability::Wal] {
        for writers in [1usize, 8] {
            let (mut ours_v, mut raw_v, mut bytes_v) = (Vec::new(), Vec::new(), Vec::new());
            let mut fold_v = Vec::new();
            for _ in 0..reps {
                // Alternate ours and the anchor so drift hits both alike.
                let (rate, bytes) = ours(durability, writers, run);
                ours_v.push(rate);
                bytes_v.push(bytes);
                raw_v.push(raw(durability, writers, bytes as usize, run));
                if durability == Durability::Wal {
                    // As many readings as ours wrote, warm-up included.
                    let n = (rate * run.as_secs_f64() * 1.2) as u64;
                    fold_v.push(fold_ceiling(writers, n));
                }
            }
            let mode = if durability == Durability::Fsync {
                "fsync"
            } else {
                "wal"
            };
            let (ours, anchor) = (median(ours_v), median(raw_v));
            if durability == Durability::Fsync && writers == 8 {
                library_fsync_8 = ours;
            }
            rows.push(Row {
                name: format!("1. durable ingest, {mode}, {writers} writer(s) vs raw WriteBatch ({:.0} B/reading)", median(bytes_v)),
                unit: "readings/s",
                ours,
                anchor,
                goal: Goal::RatioAtLeast(0.5),
            });
            if !fold_v.is_empty() {
                rows.push(Row {
                    name: format!("1. ceiling of the row above: Automerge alone putting the same readings into {writers} in-memory document(s), 4,096 a change, one thread each"),
                    unit: "readings/s",
                    ours: median(fold_v),
                    anchor,
                    goal: Goal::Ceiling(0.5),
                });
            }
        }
    }
    eprintln!("row 1 done");

    let (mut http, mut http_batch) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        http.push(http_ingest(rt, 8, 1, run));
        http_batch.push(http_ingest(rt, 8, 100, run));
    }
    rows.push(Row {
        name: "2. ingest over HTTP, 8 keep-alive clients, fsync vs library (row 1, 8 writers)"
            .into(),
        unit: "readings/s",
        ours: median(http),
        anchor: library_fsync_8,
        goal: Goal::RatioAtLeast(0.5),
    });
    rows.push(Row {
        name: "2. ingest over HTTP in batches of 100 readings, 8 keep-alive clients, fsync vs library (row 1, 8 writers)"
            .into(),
        unit: "readings/s",
        ours: median(http_batch),
        anchor: library_fsync_8,
        goal: Goal::RatioAtLeast(0.5),
    });
    eprintln!("row 2 done");
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // An odd number of alternating runs, so the median is one of them; `--quick` too.
    let (run, reps) = if quick {
        (Duration::from_millis(1000), 3)
    } else {
        (Duration::from_secs(3), 5)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
    if args.iter().any(|a| a == "--scaling-only") {
        scaling_row(&rt, quick, reps).print();
        return;
    }
    if args.iter().any(|a| a == "--sync-only") {
        sync_rows(&rt, quick, reps).iter().for_each(Row::print);
        return;
    }
    if args.iter().any(|a| a == "--ingest-only") {
        ingest_rows(&rt, run, reps).iter().for_each(Row::print);
        return;
    }
    // Row 7 runs first, in a fresh process, so that its RSS is its own.
    let (days7, keep7, marks7): (u64, u64, &[u64]) = if quick {
        (3, 24, &[1, 2, 3])
    } else {
        (30, 168, &[7, 14, 30])
    };
    let d7 = retention_days(days7, keep7, marks7);
    let at = |k: usize| d7.marks[k];
    // Flat once retention applies: the last mark against the second (by then one retention
    // span has been dropped already); the first is shown.
    let (first, last) = (at(1), at(d7.marks.len() - 1));
    let list = |f: &dyn Fn(&(u64, f64, f64)) -> f64| {
        d7.marks
            .iter()
            .map(|m| format!("day {}: {:.1}", m.0, f(m)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what7 = format!("10 sensors x 1 reading/10 s, {days7} days, keep_hours {keep7}");
    let rows7 = vec![
        Row {
            name: format!("7. retention over days ({what7}): ingest rate, last day vs first day"),
            unit: "readings/s",
            ours: d7.rate_last,
            anchor: d7.rate_first,
            goal: Goal::RatioAtLeast(0.9),
        },
        Row {
            name: format!(
                "7. retention over days: disk MiB at most, day {} vs day {} ({})",
                last.0,
                first.0,
                list(&|m| m.1)
            ),
            unit: "MiB",
            ours: last.1,
            anchor: first.1,
            goal: Goal::RatioAtMost(1.2),
        },
        Row {
            name: format!(
                "7. retention over days: RSS MiB at most, day {} vs day {} ({})",
                last.0,
                first.0,
                list(&|m| m.2)
            ),
            unit: "MiB",
            ours: last.2,
            anchor: first.2,
            goal: Goal::RatioAtMost(1.2),
        },
    ];
    eprintln!("row 7 done");
    let n8: u64 = args
        .iter()
        .position(|a| a == "--long")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 50_000 } else { 100_000 });
    let l8 = long_stream(n8);
    let what8 = format!("one stream, {n8} readings at 1/s over HTTP, 8 clients");
    let rows8 = vec![
        Row {
            name: format!(
                "8. long stream ({what8}): peak RSS through ingest and paged reads vs 256 MiB"
            ),
            unit: "MiB",
            ours: l8.peak_rss_mib,
            anchor: 256.0,
            goal: Goal::RatioAtMost(1.0),
        },
        Row {
            name: "8. long stream: data directory bytes per reading vs 250".into(),
            unit: "bytes",
            ours: l8.disk_bytes_per_reading,
            anchor: 250.0,
            goal: Goal::RatioAtMost(1.0),
        },
        Row {
            name: "8. long stream: ingest rate, last tenth vs first tenth".into(),
            unit: "readings/s",
            ours: l8.rate_last_tenth,
            anchor: l8.rate_first_tenth,
            goal: Goal::RatioAtLeast(0.8),
        },
    ];
    eprintln!("row 8 done");
    let rows7: Vec<Row> = rows7.into_iter().chain(rows8).collect();
    if args.iter().any(|a| a == "--longevity-only") {
        rows7.iter().for_each(Row::print);
        return;
    }
    rows.extend(ingest_rows(&rt, run, reps));

    rows.extend(sync_rows(&rt, quick, reps));

    let docs5 = if quick { 2_000 } else { 10_000 };
    let (load5, serve5, recv5) = memory(docs5);
    rows.push(Row {
        name: format!("5. peak RSS, {docs5} sensor docs x 50 readings, every doc read, vs 256 MiB"),
        unit: "MiB",
        ours: load5,
        anchor: 256.0,
        goal: Goal::RatioAtMost(1.0),
    });
    rows.push(Row {
        name: format!(
            "5. peak RSS after serving a full sync of them (receiver: {recv5:.0} MiB) vs 256 MiB"
        ),
        unit: "MiB",
        ours: serve5,
        anchor: 256.0,
        goal: Goal::RatioAtMost(1.0),
    });
    eprintln!("row 5 done");

    let seeds = if quick { 20 } else { 100 };
    rows.push(Row {
        name: format!(
            "6. simulator, default swarm configuration, seeds 1..={seeds}, one thread vs 1 seed/s"
        ),
        unit: "seeds/s",
        ours: sim_seeds_per_s(seeds),
        anchor: 1.0,
        goal: Goal::RatioAtLeast(1.0),
    });
    rows.extend(rows7);

    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<112} {:>12} {:>12} {:>11} {:>8} {:>7}",
        "benchmark", "ours", "anchor", "unit", "ratio", "goal"
    );
    rows.iter().for_each(Row::print);
    if let Some(path) = json_path {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "unit": r.unit, "ours": r.ours, "anchor": r.anchor,
                    "ratio": r.ratio(), "goal": r.goal_value(), "goal_kind": r.goal_text(),
                    "met": r.met(),
                })
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
            .expect("write json");
    }
}
