//! The core's own rates, over the in-memory store (no RocksDB, no QUIC, no threads): how many
//! single-reading ingests per second one node takes (journal and folds included), and how
//! many changes per second an empty replica takes in a full sync. The README's figures for
//! the journal's fold and the bulk apply come from this.
//!
//! `cargo run --release -p edgesync-proto --features testing --example core_rates`
//! (`-- INGESTS DOCS CHANGES` to change the sizes; defaults 100000 20 1000).

use std::time::Instant;

use edgesync_proto::trust::keyed::Fleet;
use edgesync_proto::{
    Boot, Config, DocId, Identity, MemStore, Node, NodeName, Reading, Role, Rules, SessionId,
};
use serde_json::json;

fn open(fleet: &Fleet, name: &str, n: u8, fold_each: bool) -> (Node<MemStore>, Identity) {
    let id = Identity::new(NodeName::new(name).expect("name"), Role::Cloud, None);
    let mut cfg = Config::new(id.name.clone());
    cfg.trust = fleet.trust(id.clone(), Rules::default());
    if fold_each {
        // Every ingest its own change: the full sync's source holds CHANGES changes a document.
        cfg.journal_readings_max = 1;
    }
    let boot = Boot {
        nonce: [n; 16],
        new_store_id: [n; 16],
    };
    (Node::open(MemStore::new(), cfg, boot).expect("opens"), id)
}

fn durable(n: &mut Node<MemStore>) {
    n.store_mut().sync();
    n.handle_durable(n.commit_seq());
}

fn flush(
    from: &mut Node<MemStore>,
    out: SessionId,
    to: &mut Node<MemStore>,
    inp: SessionId,
) -> bool {
    durable(from);
    let mut moved = false;
    while let Some(frame) = from.poll_transmit(out) {
        to.handle_input(inp, &frame, 0);
        moved = true;
    }
    moved
}

fn reading(id: String, i: u64) -> Reading {
    let fields = json!({"temp": 20.0 + (i % 100) as f64 / 10.0, "humidity": 45, "ok": true});
    Reading::from_json(id, 1_700_000_000_000 + i as i64, &fields).expect("valid")
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let ingests = args.first().copied().unwrap_or(100_000);
    let docs = args.get(1).copied().unwrap_or(20);
    let changes = args.get(2).copied().unwrap_or(1000);
    let fleet = Fleet::new([7; 32]);

    // Ingest: one reading per call into one sensor's stream, at the defaults (the journal
    // folds when it holds 4,096 readings; no timer runs here).
    let (mut n, _) = open(&fleet, "gw", 1, false);
    let doc = DocId::new("site/sensor-0").expect("doc");
    let t = Instant::now();
    for i in 0..ingests {
        n.ingest(
            &doc,
            &[reading(format!("w0-{i}"), i)],
            1_700_000_000_000 + i,
        )
        .expect("ingest");
        if i % 64 == 0 {
            durable(&mut n);
        }
    }
    n.fold_journal().expect("fold");
    let took = t.elapsed();
    println!(
        "ingest: {ingests} single-reading ingests in {:.2} s: {:.0} readings/s",
        took.as_secs_f64(),
        ingests as f64 / took.as_secs_f64()
    );

    // Full sync: DOCS documents of CHANGES changes each, to an empty replica.
    let (mut src, src_id) = open(&fleet, "src", 2, true);
    for d in 0..docs {
        let doc = DocId::new(format!("r4/sensor-{d}")).expect("doc");
        for c in 0..changes {
            src.ingest(&doc, &[reading(format!("f{c}"), c)], 1)
                .expect("ingest");
        }
    }
    durable(&mut src);
    let (mut dst, dst_id) = open(&fleet, "dst", 3, false);
    let t = Instant::now();
    let a = src.connect(dst_id, 0);
    let b = dst.connect(src_id, 0);
    while flush(&mut src, a, &mut dst, b) | flush(&mut dst, b, &mut src, a) {}
    let took = t.elapsed();
    let total = docs * changes;
    let same = src.docs().all(|(d, c)| dst.clock(d) == Some(c));
    assert!(same, "the empty replica holds everything the source holds");
    println!(
        "full sync: {total} changes ({docs} docs x {changes}) in {:.2} s: {:.0} changes/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}
