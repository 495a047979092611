//! Power loss on the real store. A process crash leaves the page cache intact, so only a test
//! of what was *synced* can tell `fsync` durability from `wal`: this one records a node's
//! writes and syncs with `strace`, rebuilds the disk a power cut at many moments would leave
//! (support/strace_fs.rs), reopens each with RocksDB and `edgesync check`, and requires every
//! reading acknowledged before that moment.
//!
//! The node is `edgesync debug-ingest-loop` (the durable node of the daemon, four writers, a
//! line on stdout per reading once `ingest` has answered), run twice on one data directory:
//! the second run recovers the first run's log, flushes it into table files, rolls the
//! manifest and deletes the old log, so cuts fall in the write-ahead log, in table flushes and
//! in the manifest's renames.

#[path = "support/strace_fs.rs"]
mod strace_fs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgesync::store::{Durability, RocksStore};
use edgesync_proto::{Boot, Config, DocId, Node, NodeName};
use strace_fs::{DiskState, Event, Model, Record, TRACED};

const BIN: &str = env!("CARGO_BIN_EXE_edgesync");
/// Readings each run acknowledges before it is killed.
const ACKS_PER_RUN: usize = 300;
/// Moments of a power cut spread over both runs, besides the end of each run.
const CUTS: usize = 12;
/// Moments of a power cut in each run's opening (creating the store; recovering the log).
const OPENING_CUTS: usize = 12;
/// Moments of a power cut just after an acknowledgement was printed, spread over both runs:
/// where the acknowledged set has just grown and no fsync since has made more durable, so
/// the moments that tell `fsync` from `wal` whatever the syncer's timing.
const ACK_CUTS: usize = 16;

fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the power-loss test needs strace (scripts/setup.sh installs it: apt-get install strace)"
    );
}

/// Runs the ingest loop under strace until it has acknowledged `acks` readings, kills it, and
/// returns the record and the lines it printed.
fn traced_run(data: &Path, trace: &Path, durability: &str, acks: usize) -> (String, Vec<String>) {
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-xx", "-s", "16777216", "-e"])
        .arg(format!("trace={TRACED}"))
        .arg("-o")
        .arg(trace)
        .arg(BIN)
        .args([
            "debug-ingest-loop",
            "--durability",
            durability,
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strace");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = strace.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(l) = line else { break };
            all.push(String::from_utf8_lossy(&l).into_owned());
            let _ = tx.send(());
        }
        all
    });
    let started = Instant::now();
    for _ in 0..acks {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = strace.kill();
            let out = strace.wait_with_output().unwrap();
            panic!(
                "the traced node stopped acknowledging after {:?}: {}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Kill the node, not strace: strace records to the end and exits with it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id()))
        .expect("strace's children");
    let node = children.split_whitespace().next().expect("the traced node");
    let killed = Command::new("kill").args(["-KILL", node]).status().unwrap();
    assert!(killed.success());
    let status = strace.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(
        !status.success(),
        "the traced node was killed, not finished"
    );
    (std::fs::read_to_string(trace).expect("the record"), lines)
}

/// `doc id` lines into ids by document.
fn acked(lines: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in lines {
        let (doc, id) = l.split_once(' ').expect("a `doc id` line");
        out.entry(doc.to_string())
            .or_default()
            .insert(id.to_string());
    }
    out
}

/// One rebuilt disk: where it is, what it is, and the readings acknowledged before the cut.
struct Cut {
    label: String,
    state: DiskState,
    acked: BTreeMap<String, BTreeSet<String>>,
}

/// What reopening a rebuilt disk found.
struct Found {
    label: String,
    acked: usize,
    missing: Vec<String>,
}

/// Writes `cut` into `dir`, runs `edgesync check` on it and reads every acknowledged reading
/// back through the store.
fn reopen(dir: &Path, cut: &Cut) -> Found {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in &cut.state {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let out = Command::new(BIN)
        .args(["check", "--name", "crash-test", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: the store does not pass `edgesync check` after the cut: {}",
        cut.label,
        String::from_utf8_lossy(&out.stderr)
    );
    let store = RocksStore::open(dir, Durability::Fsync)
        .unwrap_or_else(|e| panic!("{}: the store does not open: {e}", cut.label));
    let boot = Boot {
        nonce: [7; 16],
        new_store_id: [7; 16],
    };
    let mut node = Node::open(
        store,
        Config::new(NodeName::new("crash-test").unwrap()),
        boot,
    )
    .unwrap_or_else(|e| panic!("{}: the node does not open: {e}", cut.label));
    let mut missing = Vec::new();
    for (doc, ids) in &cut.acked {
        let view = node
            .sensor_view(&DocId::new(doc.as_str()).unwrap())
            .unwrap_or_else(|e| panic!("{}: {doc} does not load: {e}", cut.label));
        for id in ids {
            if !view.as_ref().is_some_and(|v| v.readings.contains_key(id)) {
                missing.push(format!("{doc} {id}"));
            }
        }
    }
    Found {
        label: cut.label.clone(),
        acked: cut.acked.values().map(BTreeSet::len).sum(),
        missing,
    }
}

/// Two traced runs with `durability`, then a power cut at the end of each run, at `CUTS`
/// moments around the fsyncs of the data directory (just before one returns and just after),
/// at `OPENING_CUTS` such moments in each run's opening and at `ACK_CUTS` moments just after
/// an acknowledgement; each with the names of the last directory sync and with every name.
fn power_cuts(durability: &str) -> Vec<Found> {
    require_strace();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut record = Record::default();
    let mut printed = Vec::new();
    for run in 0..2 {
        let trace = dir.path().join(format!("trace-{run}"));
        let (text, lines) = traced_run(&data, &trace, durability, ACKS_PER_RUN);
        record.push_process(&text);
        printed.extend(lines);
    }
    // Where a cut is interesting: around every fsync of a data file or the directory.
    // A run's opening (from its start to its first acknowledgement: creating the store, or
    // recovering the log into table files) is sampled more densely.
    let mut model = Model::new(&data);
    let mut around_syncs = Vec::new();
    let mut after_acks = Vec::new();
    let mut openings: Vec<Vec<usize>> = vec![Vec::new()];
    let mut run_ends = Vec::new();
    let mut acked_before_run = 0;
    for (at, &event) in record.events.iter().enumerate() {
        if let Event::Exit(id) = event {
            if model.syncs(id) {
                around_syncs.extend([at, at + 1]);
                if model.lines.len() == acked_before_run {
                    openings.last_mut().unwrap().extend([at, at + 1]);
                }
            }
        }
        if event == Event::NewProcess {
            run_ends.push(at);
            openings.push(Vec::new());
            acked_before_run = model.lines.len();
        }
        let acks = model.lines.len();
        model.apply(&record, event);
        if model.lines.len() > acks {
            after_acks.push(at + 1);
        }
    }
    run_ends.push(record.events.len());
    // The second run recovered the first run's log into table files: the cuts cover them.
    assert!(
        model.names().any(|n| n.ends_with(".sst")),
        "{durability}: the second run wrote table files"
    );
    // Every line the node printed is in the record: the record holds the whole run. (It may
    // hold a few more: writes begun when the node was killed, one per writer at most.)
    let recorded: BTreeSet<&String> = model.lines.iter().collect();
    let missing = printed.iter().filter(|l| !recorded.contains(l)).count();
    assert!(
        missing == 0 && recorded.len() <= printed.len() + 2 * 4,
        "the record ({} lines) and the node's output ({} lines, {missing} not recorded) differ",
        recorded.len(),
        printed.len()
    );
    assert!(
        around_syncs.len() > 2 * CUTS,
        "{durability}: the record holds fsyncs ({})",
        around_syncs.len()
    );
    let sample = |from: &[usize], n: usize| -> Vec<usize> {
        if from.len() <= n {
            return from.to_vec();
        }
        (0..n)
            .map(|k| from[k * (from.len() - 1) / (n - 1)])
            .collect()
    };
    let mut cuts_at: BTreeSet<usize> = sample(&around_syncs, CUTS).into_iter().collect();
    cuts_at.extend(sample(&after_acks, ACK_CUTS));
    for opening in &openings {
        assert!(!opening.is_empty(), "{durability}: a run opens with fsyncs");
        cuts_at.extend(sample(opening, OPENING_CUTS));
    }
    cuts_at.extend(&run_ends);
    // Replay again, taking each cut on the way.
    let mut model = Model::new(&data);
    let mut cuts = Vec::new();
    for at in 0..=record.events.len() {
        if cuts_at.contains(&at) {
            for all_names in [false, true] {
                cuts.push(Cut {
                    label: format!(
                        "{durability}, cut at event {at} of {}, {}",
                        record.events.len(),
                        if all_names {
                            "every name"
                        } else {
                            "names of the last directory sync"
                        }
                    ),
                    state: model.power_cut(all_names),
                    acked: acked(&model.lines),
                });
            }
        }
        if let Some(&e) = record.events.get(at) {
            model.apply(&record, e);
        }
    }
    cuts.iter()
        .enumerate()
        .map(|(n, cut)| reopen(&dir.path().join(format!("cut-{n}")), cut))
        .collect()
}

// With `fsync` durability nothing acknowledged is lost by a power cut at any of the moments,
// and every rebuilt store opens and passes `edgesync check`.
#[test]
fn a_power_cut_loses_nothing_acknowledged_with_fsync() {
    let found = power_cuts("fsync");
    let acked: usize = found.iter().map(|f| f.acked).sum();
    assert!(
        acked > ACKS_PER_RUN,
        "the cuts cover acknowledged readings ({acked})"
    );
    for f in &found {
        eprintln!("{}: {} acknowledged, all present", f.label, f.acked);
        assert!(
            f.missing.is_empty(),
            "{}: {} of {} acknowledged readings lost: {:?}",
            f.label,
            f.missing.len(),
            f.acked,
            &f.missing[..f.missing.len().min(5)]
        );
    }
}

// The same test can fail: with `wal` durability (acknowledged once in the log, not synced) a
// power cut loses acknowledged readings, and the rebuilt stores still open cleanly.
#[test]
fn a_power_cut_loses_acknowledged_readings_with_wal() {
    let found = power_cuts("wal");
    let lost: Vec<&Found> = found.iter().filter(|f| !f.missing.is_empty()).collect();
    for f in &lost {
        eprintln!("{}: {} of {} lost", f.label, f.missing.len(), f.acked);
    }
    assert!(
        !lost.is_empty(),
        "a power cut after unsynced acknowledgements must lose some: the test cannot fail"
    );
}
