use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgesync::node::{DurableNode, NodeOptions};
use edgesync::store::schema::{self, CF_CHANGES, CF_META, KEY_NODE, KEY_SCHEMA};
use edgesync::store::{Durability, OpenError, RocksStore};
use edgesync_proto::{Boot, Config, DocId, IngestOutcome, Node, NodeName, Reading};
use serde_json::json;

fn boot(n: u8) -> Boot {
    Boot {
        nonce: [n; 16],
        new_store_id: [n; 16],
    }
}

/// The store's RocksDB opened directly, with every column family, to plant bytes in it.
fn raw_db(dir: &Path) -> rocksdb::DB {
    let names: Vec<String> = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap()
}

fn config() -> Config {
    let mut c = Config::new(NodeName::new("n1").unwrap());
    c.snapshot_changes_min = 4;
    // These tests look at stored changes and snapshots: each ingest is its own change (the
    // journal folds at every ingest).
    c.journal_readings_max = 1;
    c
}

fn reading(id: &str, v: i64) -> Reading {
    Reading::from_json(id, v, &json!({ "v": v })).unwrap()
}

// RocksStore passes the same conformance suite as the simulator's MemStore.
#[test]
fn rocks_store_conformance() {
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let fresh = || {
        n += 1;
        let d = root.path().join(format!("s{n}"));
        dirs.push(d.clone());
        RocksStore::open(&d, Durability::Fsync).unwrap()
    };
    edgesync_proto::conformance::check_store(fresh, |s: RocksStore| {
        s.syncer().sync().unwrap();
        let dir = s.dir().to_path_buf();
        drop(s);
        RocksStore::open(dir, Durability::Fsync).unwrap()
    });
}

fn write_some(dir: &Path) -> DocId {
    let store = RocksStore::open(dir, Durability::Fsync).unwrap();
    let syncer = store.syncer();
    let mut node = Node::open(store, config(), boot(1)).unwrap();
    // The stream's first-hour bucket, written to directly: the test looks at its stored keys.
    let doc =
        edgesync_proto::stream::Bucket::of(&DocId::new("site/s1").unwrap(), 0, 3_600_000).doc();
    for i in 0..10 {
        node.ingest(&doc, &[reading(&format!("r{i}"), i)], 1000)
            .unwrap();
    }
    syncer.sync().unwrap();
    doc
}

// A flipped byte in a stored change is detected on read, the error names the column family,
// and the node refuses to serve the document instead of serving garbage.
#[test]
fn flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_some(dir.path());
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_CHANGES).unwrap();
        // The last change of the document: after the snapshot, so loading must read it.
        let key = schema::change_key(&doc, 10);
        let mut v = db.get_cf(&cf, &key).unwrap().expect("change 10 stored");
        v[5] ^= 0x01;
        db.put_cf(&cf, &key, v).unwrap();
    }
    let store = RocksStore::open(dir.path(), Durability::Fsync).unwrap();
    let mut node = Node::open(store, config(), boot(2)).unwrap();
    let err = node.json(&doc, false).unwrap_err();
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert!(msg.contains("corrupt value in changes.v1"), "{msg}");
    assert!(
        node.sensor_view(&doc).is_err(),
        "the document is not served"
    );
}

// A directory held by another open store is refused with the documented message.
#[test]
fn locked_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = RocksStore::open(dir.path(), Durability::Fsync).unwrap();
    let err = RocksStore::open(dir.path(), Durability::Fsync)
        .err()
        .expect("second open fails");
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("is in use by another edgesync process"),
        "{msg}"
    );
}

// A directory written by a newer schema version is refused with the documented message.
#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), Durability::Fsync).unwrap());
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_META).unwrap();
        db.put_cf(
            &cf,
            KEY_SCHEMA,
            schema::seal(CF_META, KEY_SCHEMA, 99u32.to_be_bytes().to_vec()),
        )
        .unwrap();
    }
    let err = RocksStore::open(dir.path(), Durability::Fsync)
        .err()
        .expect("open fails");
    assert!(
        matches!(
            err,
            OpenError::NewerSchema {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("was written by schema version 99"),
        "{err}"
    );
}

// Reopening preserves documents, clocks, receipts-independent state and the incarnation chain,
// through the threaded node in both durability modes.
#[test]
fn durable_node_reopen_preserves_everything() {
    for durability in [Durability::Fsync, Durability::Wal] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = NodeOptions::new(config(), dir.path());
        opts.durability = durability;
        let doc = DocId::new("site/s1").unwrap();
        let before = {
            let node = DurableNode::start(opts.clone()).unwrap();
            let h = node.handle();
            let out = h
                .ingest(
                    doc.clone(),
                    vec![reading("a", 1), reading("b", 2), reading("a", 1)],
                )
                .unwrap();
            assert_eq!(
                out,
                vec![
                    IngestOutcome::Inserted,
                    IngestOutcome::Inserted,
                    IngestOutcome::Duplicate
                ]
            );
            assert!(h
                .patch(DocId::new("app/cfg").unwrap(), json!({"mode": "eco"}))
                .unwrap());
            let snapshot = (
                h.json(doc.clone(), true).unwrap(),
                h.json(DocId::new("app/cfg").unwrap(), false).unwrap(),
            );
            node.shutdown();
            snapshot
        };
        let node = DurableNode::start(opts).unwrap();
        let h = node.handle();
        let after = (
            h.json(doc.clone(), true).unwrap(),
            h.json(DocId::new("app/cfg").unwrap(), false).unwrap(),
        );
        assert_eq!(before, after);
        assert_eq!(h.docs().unwrap().len(), 2);
        assert_eq!(
            h.ingest(doc, vec![reading("a", 1)]).unwrap(),
            vec![IngestOutcome::Duplicate]
        );
    }
}

// Concurrent writers share batches and fsyncs; every answer comes back and every reading is
// present once.
#[test]
fn concurrent_writers_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let node = DurableNode::start(NodeOptions::new(config(), dir.path())).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let h = node.handle();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let doc = DocId::new(format!("d/{}", i % 3)).unwrap();
                    let out = h
                        .ingest(doc, vec![reading(&format!("w{w}-{i}"), i)])
                        .unwrap();
                    assert_eq!(out, vec![IngestOutcome::Inserted]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let h = node.handle();
    let total: usize = (0..3)
        .map(|d| {
            h.json(DocId::new(format!("d/{d}")).unwrap(), false)
                .unwrap()
                .unwrap()["readings"]
                .as_object()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(total, 400);
}

// Requests that commit nothing new (a duplicate reading, an empty patch) are answered at once,
// not left waiting for a durability report that no new commit will trigger.
#[test]
fn requests_that_commit_nothing_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Fsync, Durability::Wal] {
        let mut opts = NodeOptions::new(config(), dir.path().join(format!("{durability:?}")));
        opts.durability = durability;
        let node = DurableNode::start(opts).unwrap();
        let h = node.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let doc = DocId::new("d").unwrap();
            let first = h.ingest(doc.clone(), vec![reading("r1", 1)]).unwrap();
            let again = h.ingest(doc.clone(), vec![reading("r1", 1)]).unwrap();
            let a = h.patch(DocId::new("g").unwrap(), json!({"k": 1})).unwrap();
            let b = h.patch(DocId::new("g").unwrap(), json!({"k": 1})).unwrap();
            let _ = tx.send((first, again, a, b));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every request answered");
        assert_eq!(
            got,
            (
                vec![IngestOutcome::Inserted],
                vec![IngestOutcome::Duplicate],
                true,
                false
            )
        );
        node.shutdown();
    }
}

// Shutdown closes the store even while an app still holds handles; those then fail cleanly.
#[test]
fn shutdown_releases_the_store_while_handles_remain() {
    let dir = tempfile::tempdir().unwrap();
    let node = DurableNode::start(NodeOptions::new(config(), dir.path())).unwrap();
    let h = node.handle();
    h.ingest(DocId::new("d").unwrap(), vec![reading("r1", 1)])
        .unwrap();
    node.shutdown();
    assert!(h
        .ingest(DocId::new("d").unwrap(), vec![reading("r2", 2)])
        .is_err());
    let again = DurableNode::start(NodeOptions::new(config(), dir.path())).expect("reopens");
    let v = again
        .handle()
        .json(DocId::new("d").unwrap(), false)
        .unwrap()
        .unwrap();
    assert_eq!(v["readings"].as_object().unwrap().len(), 1);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgesync")
}

// A child process ingesting continuously is killed with SIGKILL at random moments, 24 times.
// After each restart every reading it acknowledged is present exactly once and the store is
// consistent (every document loads and its clock matches its changes).
#[test]
fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for round in 0..24 {
        let mut child = Command::new(bin())
            .args(["debug-ingest-loop", "--data-dir"])
            .arg(dir.path())
            .args(["--durability", if round % 2 == 0 { "fsync" } else { "wal" }])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).split(b'\n') {
                match line {
                    Ok(l) => lines.push(String::from_utf8_lossy(&l).to_string()),
                    Err(_) => break,
                }
            }
            lines
        });
        // Let it get going, then kill at a random moment.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(150 + next() % 400));
        // The writer must still be writing when it is killed: one that stopped on an error
        // would make this round prove nothing.
        let early_exit = child.try_wait().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(status) = early_exit {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("round {round}: the writer exited on its own ({status}): {err}");
        }
        let lines = reader.join().unwrap();
        for line in lines {
            // A line cut by the kill has no trailing newline and was never acknowledged; split
            // returns it without a separator, so require both fields.
            let mut parts = line.split(' ');
            if let (Some(doc), Some(id)) = (parts.next(), parts.next()) {
                if !id.is_empty() {
                    acked
                        .entry(doc.to_string())
                        .or_default()
                        .insert(id.to_string());
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(total > 100, "the child acknowledged readings ({total})");
    // The store is consistent: `edgesync check` loads every document and verifies clocks.
    let out = Command::new(bin())
        .args(["check", "--name", "crash-test", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every acknowledged reading is present, once (readings are keyed by id).
    let store = RocksStore::open(dir.path(), Durability::Fsync).unwrap();
    let mut node = Node::open(
        store,
        Config::new(NodeName::new("crash-test").unwrap()),
        boot(9),
    )
    .unwrap();
    for (doc, ids) in &acked {
        let view = node
            .sensor_view(&DocId::new(doc.as_str()).unwrap())
            .unwrap()
            .expect("document exists");
        for id in ids {
            assert!(
                view.readings.contains_key(id),
                "acknowledged reading {id} in {doc} lost"
            );
        }
    }
}

// The column families get the store's options (LZ4, bounded memtables), as RocksDB records
// them in the OPTIONS file it writes: opened with defaults they had Snappy and 64 MiB
// memtables each, whatever the database options said.
#[test]
fn column_families_get_the_store_options() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), Durability::Fsync).unwrap());
    let options = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("OPTIONS-"))
        })
        .max()
        .expect("RocksDB wrote an OPTIONS file");
    let text = std::fs::read_to_string(options).unwrap();
    let mut checked = 0;
    for section in text.split("[CFOptions \"").skip(1) {
        let name = section.split('"').next().unwrap();
        if name == "default" {
            continue;
        }
        let value = |key: &str| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        };
        assert_eq!(
            value("compression").as_deref(),
            Some("kLZ4Compression"),
            "{name}"
        );
        let wb = edgesync::store::CF_WRITE_BUFFER_BYTES.to_string();
        assert_eq!(value("write_buffer_size"), Some(wb), "{name}");
        checked += 1;
    }
    assert!(checked >= 7, "every column family of the schema: {checked}");
}

// A store written before actors were kept (logical schema 1: no actor epoch in the node's
// metadata) opens, takes an actor once, and keeps it from then on: across a clean stop, and
// across an unclean one with `fsync` durability; with `wal` an unclean stop ends it.
#[test]
fn a_store_from_before_kept_actors_takes_one_and_keeps_it() {
    #[derive(serde::Serialize)]
    struct MetaV1 {
        schema_version: u32,
        name: NodeName,
        store_id: [u8; 16],
        incarnation: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let name = NodeName::new("n1").unwrap();
    drop(
        Node::open(
            RocksStore::open(dir.path(), Durability::Fsync).unwrap(),
            config(),
            boot(1),
        )
        .unwrap(),
    );
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_META).unwrap();
        let v1 = MetaV1 {
            schema_version: 1,
            name: name.clone(),
            store_id: [4; 16],
            incarnation: 5,
        };
        let bytes = postcard::to_allocvec(&v1).unwrap();
        db.put_cf(&cf, KEY_NODE, schema::seal(CF_META, KEY_NODE, bytes))
            .unwrap();
    }
    let open = |b: u8, durability: Durability| {
        Node::open(
            RocksStore::open(dir.path(), durability).unwrap(),
            config(),
            boot(b),
        )
        .unwrap()
    };
    let mut n = open(2, Durability::Fsync);
    assert_eq!(n.meta().incarnation, 6);
    assert_eq!(n.meta().store_id, [4; 16], "the store id survives");
    assert_eq!(n.meta().actor_epoch, 1);
    let first = n.actor();
    let seq = n.record_clean_stop().unwrap();
    assert!(n.store().syncer().sync().unwrap() >= seq);
    drop(n);
    let n = open(3, Durability::Fsync);
    assert!(n.last_stop_was_clean());
    assert_eq!(n.actor(), first, "kept across a clean stop");
    drop(n);
    let n = open(4, Durability::Fsync);
    assert!(!n.last_stop_was_clean());
    assert_eq!(n.actor(), first, "kept across an unclean stop with fsync");
    drop(n);
    let n = open(5, Durability::Wal);
    assert_eq!(n.actor(), first, "kept across an unclean stop with wal");
    assert_eq!(n.meta().actor_epoch, 1);
}

// Node metadata written before actor slots (logical schema 5) reads back with no slot space,
// settled: the open then decides (a slot-bound certificate starts at its slot 0), and what it
// writes reads back whole.
#[test]
fn node_metadata_from_before_actor_slots_reads_back() {
    use edgesync_proto::store::{NodeMeta, WriteBatch, WriteOp};
    use edgesync_proto::Store;
    #[derive(serde::Serialize)]
    struct MetaV5 {
        schema_version: u32,
        name: NodeName,
        store_id: [u8; 16],
        incarnation: u64,
        actor_epoch: u64,
        actor_nonce: [u8; 16],
        running: bool,
        author_key: [u8; 32],
    }
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), Durability::Fsync).unwrap());
    let v5 = MetaV5 {
        schema_version: 5,
        name: NodeName::new("n1").unwrap(),
        store_id: [4; 16],
        incarnation: 5,
        actor_epoch: 3,
        actor_nonce: [6; 16],
        running: false,
        author_key: [7; 32],
    };
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_META).unwrap();
        let bytes = postcard::to_allocvec(&v5).unwrap();
        db.put_cf(&cf, KEY_NODE, schema::seal(CF_META, KEY_NODE, bytes))
            .unwrap();
    }
    let mut store = RocksStore::open(dir.path(), Durability::Fsync).unwrap();
    let m = store.node_meta().unwrap().unwrap();
    let expected = NodeMeta {
        schema_version: 5,
        name: v5.name.clone(),
        store_id: v5.store_id,
        incarnation: 5,
        actor_epoch: 3,
        actor_nonce: [6; 16],
        running: false,
        author_key: [7; 32],
        slot_space: [0; 32],
        actor_slot: 0,
        settled: true,
    };
    assert_eq!(m, expected);
    let now = NodeMeta {
        schema_version: edgesync_proto::store::LOGICAL_SCHEMA_VERSION,
        slot_space: [9; 32],
        actor_slot: 4,
        settled: false,
        ..expected
    };
    store
        .commit(WriteBatch {
            ops: vec![
                WriteOp::PutNodeMeta(now.clone()),
                WriteOp::PutSlot {
                    space: [9; 32],
                    slot: 4,
                    statement: vec![1, 2],
                },
            ],
        })
        .unwrap();
    drop(store);
    let store = RocksStore::open(dir.path(), Durability::Fsync).unwrap();
    assert_eq!(store.node_meta().unwrap(), Some(now));
    assert_eq!(store.slot(&[9; 32]).unwrap(), Some((4, vec![1, 2])));
    assert_eq!(store.slot(&[8; 32]).unwrap(), None);
}

// The syncer's counters, which /v1/status and the metrics show: commits made, commits durable
// (fsynced, in both modes: with `wal` only the answer to a client comes before), bytes written,
// and health.
#[test]
fn the_syncer_counts_commits_durability_and_bytes() {
    use edgesync_proto::store::{NodeMeta, WriteBatch, WriteOp};
    use edgesync_proto::Store;
    for durability in [Durability::Fsync, Durability::Wal] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(dir.path(), durability).unwrap();
        let syncer = store.syncer();
        assert_eq!((syncer.commits(), syncer.durable()), (0, 0));
        for i in 0..3 {
            let meta = NodeMeta {
                schema_version: 2,
                name: NodeName::new("n1").unwrap(),
                store_id: [1; 16],
                incarnation: i,
                actor_epoch: 1,
                actor_nonce: [2; 16],
                running: true,
                author_key: [0; 32],
                slot_space: [0; 32],
                actor_slot: 0,
                settled: true,
            };
            store
                .commit(WriteBatch {
                    ops: vec![WriteOp::PutNodeMeta(meta)],
                })
                .unwrap();
        }
        assert_eq!(syncer.commits(), 3);
        assert_eq!(syncer.durable(), 0, "{durability:?}");
        assert_eq!(syncer.sync().unwrap(), 3);
        assert_eq!(syncer.durable(), 3);
        assert!(
            syncer.bytes_written() > 3 * 20,
            "{}",
            syncer.bytes_written()
        );
        assert!(syncer.is_healthy());
    }
}

// A directory with a column family this version does not know (one a later version added)
// still opens: every column family on disk is opened, as RocksDB requires.
#[test]
fn a_column_family_from_a_later_version_does_not_stop_the_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), Durability::Fsync).unwrap());
    {
        let mut db = raw_db(dir.path());
        db.create_cf("later.v9", &rocksdb::Options::default())
            .unwrap();
    }
    RocksStore::open(dir.path(), Durability::Fsync).expect("opens with the extra family");
}

// Only a lock held by another process is reported as "in use"; another failure to open (here
// the data directory is a file) is reported as what it is.
#[test]
fn an_open_failure_that_is_not_a_lock_is_not_reported_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = RocksStore::open(&file, Durability::Fsync)
        .err()
        .expect("a file is not a store");
    assert!(!matches!(err, OpenError::Locked { .. }), "{err}");
    let held = RocksStore::open(dir.path().join("db"), Durability::Fsync).unwrap();
    let err = RocksStore::open(dir.path().join("db"), Durability::Fsync)
        .err()
        .expect("held by another open");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(held);
}
