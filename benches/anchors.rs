//! Benchmarks against anchors, side by side in one run: each row is a ratio of ours over an
//! anchor measured in the same process, alternating runs and taking medians, because these
//! machines are noisy.
//!
//! `cargo bench --bench anchors [-- --quick] [-- --json PATH]`
//!
//! Rows so far:
//! - durable ingest: readings/s through the library (threaded node, group commit, batching
//!   below Automerge) at 1 and 8 concurrent writers, for `fsync` and `wal` durability, against
//!   raw RocksDB `WriteBatch`es of the same bytes per reading at the same concurrency with the
//!   same durability (`sync = true` for fsync: RocksDB then groups concurrent synced writes).
//!   Goal: ours >= 0.5x raw.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync::node::{DurableNode, NodeOptions};
use edgesync::store::Durability;
use edgesync_proto::{Config, DocId, NodeName, Reading};

struct Row {
    name: String,
    unit: &'static str,
    ours: f64,
    anchor: f64,
    goal: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours / self.anchor
    }
    fn met(&self) -> bool {
        self.ratio() >= self.goal
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn reading(w: usize, i: u64) -> Reading {
    Reading::from_json(
        format!("w{w}-{i}"),
        1_700_000_000_000 + i as i64,
        &serde_json::json!({"temp": 20.0 + (i % 100) as f64 / 10.0, "humidity": 45, "ok": true}),
    )
    .expect("valid reading")
}

/// Readings/s through the library; also returns store bytes written per reading.
fn ours(durability: Durability, writers: usize, run: Duration) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = Config::new(NodeName::new("bench").expect("valid"));
    cfg.snapshot_changes_min = 1024;
    let mut opts = NodeOptions::new(cfg, dir.path());
    opts.durability = durability;
    let node = DurableNode::start(opts).expect("node starts");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let h = node.handle();
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Each writer feeds its own sensor's document, as a gateway's sensors do.
                    let doc = DocId::new(format!("site/sensor-{w}")).expect("valid");
                    h.ingest(doc, vec![reading(w, i)]).expect("ingest");
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run / 5);
    let (c0, b0, t0) = (
        count.load(Ordering::SeqCst),
        node.handle().bytes_written(),
        Instant::now(),
    );
    std::thread::sleep(run);
    let (c1, b1, dt) = (
        count.load(Ordering::SeqCst),
        node.handle().bytes_written(),
        t0.elapsed(),
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("writer");
    }
    let n = (c1 - c0) as f64;
    (n / dt.as_secs_f64(), (b1 - b0) as f64 / n.max(1.0))
}

/// Raw RocksDB: each reading is one WriteBatch of `bytes` bytes, written with the same
/// durability by `writers` threads.
fn raw(durability: Durability, writers: usize, bytes: usize, run: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_size(16 * 1024 * 1024);
    let db = Arc::new(rocksdb::DB::open(&opts, dir.path()).expect("raw db"));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let value_len = bytes.saturating_sub(32).max(1);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, stop, count) = (db.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(durability == Durability::Fsync);
                let value = vec![0x5au8; value_len];
                let mut i: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut b = rocksdb::WriteBatch::default();
                    let key = format!("{w:04}-{i:020}");
                    b.put(key.as_bytes(), &value);
                    db.write_opt(b, &wo).expect("raw write");
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run / 5);
    let (c0, t0) = (count.load(Ordering::SeqCst), Instant::now());
    std::thread::sleep(run);
    let (c1, dt) = (count.load(Ordering::SeqCst), t0.elapsed());
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("writer");
    }
    (c1 - c0) as f64 / dt.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (run, reps) = if quick {
        (Duration::from_millis(1500), 1)
    } else {
        (Duration::from_secs(3), 3)
    };
    let mut rows = Vec::new();
    for durability in [Durability::Fsync, Durability::Wal] {
        for writers in [1usize, 8] {
            let (mut ours_v, mut raw_v, mut bytes_v) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                // Alternate ours and the anchor so drift hits both alike.
                let (rate, bytes) = ours(durability, writers, run);
                ours_v.push(rate);
                bytes_v.push(bytes);
                raw_v.push(raw(durability, writers, bytes as usize, run));
            }
            let mode = if durability == Durability::Fsync {
                "fsync"
            } else {
                "wal"
            };
            rows.push(Row {
                name: format!("durable ingest, {mode}, {writers} writer(s) (vs raw WriteBatch, {:.0} B/reading)", median(bytes_v)),
                unit: "readings/s",
                ours: median(ours_v),
                anchor: median(raw_v),
                goal: 0.5,
            });
        }
    }
    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<78} {:>12} {:>12} {:>7} {:>6}",
        "benchmark", "ours", "anchor", "ratio", "goal"
    );
    for r in &rows {
        println!(
            "{:<78} {:>12.0} {:>12.0} {:>6.2}x {:>5.2}x {}",
            r.name,
            r.ours,
            r.anchor,
            r.ratio(),
            r.goal,
            if r.met() { "met" } else { "MISSED" }
        );
    }
    if let Some(path) = json_path {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "unit": r.unit, "ours": r.ours, "anchor": r.anchor,
                    "ratio": r.ratio(), "goal": r.goal, "met": r.met(),
                })
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
            .expect("write json");
    }
}
