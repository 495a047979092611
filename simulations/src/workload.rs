//! The clients: readings ingested at random nodes (some ids reaching two gateways), bursts
//! during partitions, and merge-patch edits of generic documents.

use edgesync_proto::stream::Bucket;
use edgesync_proto::{DocId, IngestOutcome, Reading, VectorClock};
use rand::RngExt;
use serde_json::json;

use crate::checkers::Unacked;
use crate::plan::BURST_READINGS;
use crate::sim::{Ev, Sim, BASE_MS};

/// Sensor documents the workload writes.
pub(crate) const SENSOR_DOCS: usize = 6;
/// Generic documents the workload edits.
const GENERIC_DOCS: usize = 2;
/// Recent readings kept for re-ingesting at a second gateway.
const RECENT_MAX: usize = 64;

/// A burst of readings at one node, one every few ms.
#[derive(Debug)]
pub(crate) struct Burst {
    node: usize,
    left: u32,
    /// Crash the node when `left` reaches this.
    crash_at: Option<u32>,
    /// Both gateways of the same-ids scenario produce identical readings.
    shared: bool,
}

impl Burst {
    /// The seed's 50-reading burst at `node`.
    pub(crate) fn new(node: usize, crash_at: Option<u32>, shared: bool) -> Burst {
        Burst {
            node,
            left: BURST_READINGS,
            crash_at,
            shared,
        }
    }

    /// A burst of `len` readings at `node`.
    pub(crate) fn of(node: usize, len: u32) -> Burst {
        Burst {
            node,
            left: len,
            crash_at: None,
            shared: false,
        }
    }
}

/// What the workload remembers between events.
#[derive(Default)]
pub(crate) struct Workload {
    /// (doc, id, body) of recent readings.
    recent: Vec<(DocId, String, String)>,
    counter: u64,
}

pub(crate) fn sensor_doc(i: usize) -> DocId {
    DocId::new(format!("site-{}/sensor-{}", i % 2, i)).expect("valid doc id")
}

fn generic_doc(i: usize) -> DocId {
    DocId::new(format!("app/doc-{i}")).expect("valid doc id")
}

impl Sim {
    pub(crate) fn on_ingest_tick(&mut self) {
        let node = self.rng.random_range(0..self.nodes.len());
        self.ingest(node, false);
        if self.faults_on {
            let d = self.next_delay(self.plan.knobs.ingest_interval_ms);
            self.at(d, Ev::Ingest);
        }
    }

    pub(crate) fn on_patch_tick(&mut self) {
        let node = self.rng.random_range(0..self.nodes.len());
        self.patch(node);
        if self.faults_on {
            let d = self.next_delay(self.plan.knobs.patch_interval_ms);
            self.at(d, Ev::Patch);
        }
    }

    pub(crate) fn on_burst(&mut self, b: Burst) {
        if b.shared {
            self.shared_ingest(b.node, BURST_READINGS - b.left);
        } else {
            self.ingest(b.node, true);
        }
        if b.crash_at == Some(b.left) {
            // In the same millisecond as an ingest, before the next store sync.
            self.crash(b.node);
        }
        if b.left > 1 && self.faults_on {
            let d = self.rng.random_range(1..=40);
            let next = Burst {
                left: b.left - 1,
                ..b
            };
            self.at(d, Ev::Burst(next));
        }
    }

    fn do_ingest(&mut self, i: usize, doc: DocId, readings: Vec<Reading>) {
        // Clients write through honest nodes only; hostile nodes attack instead.
        if self.is_byzantine(i) {
            return;
        }
        for r in &readings {
            self.ledger.attempt(&doc, r);
        }
        let now = self.node_now(i);
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        match n.ingest(&doc, &readings, now) {
            Ok(out) => {
                let ids: Vec<&str> = readings.iter().map(|r| r.id.as_str()).collect();
                let ids = ids.join(",");
                self.log(Some(i), format_args!("ingest {ids} into {doc}"));
                self.record_ingest(i, &doc, &readings, &out.outcomes, out.durable_at);
            }
            Err(e) => self.log(Some(i), format_args!("ingest into {doc} refused: {e}")),
        }
        self.after_call(i);
    }

    /// Queues the ingested readings for acknowledgement, and answers those already durable.
    fn record_ingest(
        &mut self,
        i: usize,
        doc: &DocId,
        readings: &[Reading],
        outcomes: &[IngestOutcome],
        durable_at: u64,
    ) {
        // The audit looks for each reading itself in the durable store (journal or document).
        for (r, o) in readings.iter().zip(outcomes) {
            if *o != IngestOutcome::Conflict {
                self.nodes[i].unacked.push(Unacked {
                    durable_at,
                    doc: doc.clone(),
                    reading: Some(r.clone()),
                    needed: VectorClock::new(),
                });
            }
        }
        let durable = self.nodes[i].node.as_ref().map_or(0, |n| n.durable_seq());
        let sn = &mut self.nodes[i];
        let (done, wait) = sn.unacked.drain(..).partition(|u| u.durable_at <= durable);
        sn.unacked = wait;
        self.acknowledge(i, done);
    }

    /// One to three readings into a random sensor document at node `i` (one in a burst).
    fn ingest(&mut self, i: usize, burst: bool) {
        if self.nodes[i].node.is_none() {
            return;
        }
        let stream = sensor_doc(self.rng.random_range(0..SENSOR_DOCS));
        let count = if burst {
            1
        } else {
            self.rng.random_range(1..=3)
        };
        let ts = self.node_now(i) as i64;
        // The bucket the node would choose: written to directly, so the checkers follow each
        // reading's document.
        let doc = Bucket::of(&stream, ts as u64, self.plan.knobs.core.bucket_ms).doc();
        let mut readings = Vec::new();
        for _ in 0..count {
            // Now and then the same reading reaches a second gateway (same id, same content).
            if !burst && !self.workload.recent.is_empty() && self.rng.random_bool(0.1) {
                let pick = self.rng.random_range(0..self.workload.recent.len());
                let (d, id, body) = self.workload.recent[pick].clone();
                if d == doc {
                    let r = Reading::decode(&id, &body).expect("recorded readings are valid");
                    readings.push(r);
                    continue;
                }
            }
            readings.push(self.new_reading(&doc, ts));
        }
        self.do_ingest(i, doc, readings);
    }

    fn new_reading(&mut self, doc: &DocId, ts: i64) -> Reading {
        self.workload.counter += 1;
        let id = format!("r{}", self.workload.counter);
        let v: i64 = self.rng.random_range(-40..=60);
        let f: f64 = self.rng.random_range(0.0..100.0);
        let fields = json!({"temp": v, "hum": (f * 10.0).round() / 10.0, "ok": v > 0});
        let r = Reading::from_json(id, ts, &fields).expect("generated readings are valid");
        let entry = (doc.clone(), r.id.clone(), r.encode());
        if self.workload.recent.len() < RECENT_MAX {
            self.workload.recent.push(entry);
        } else {
            let slot = self.rng.random_range(0..RECENT_MAX);
            self.workload.recent[slot] = entry;
        }
        r
    }

    fn shared_ingest(&mut self, i: usize, k: u32) {
        // Both gateways of the same-ids scenario produce reading k identically.
        let ts = BASE_MS as i64 + i64::from(k);
        let doc = Bucket::of(&sensor_doc(0), ts as u64, self.plan.knobs.core.bucket_ms).doc();
        let r = Reading::from_json(format!("shared-{k}"), ts, &json!({"k": k})).expect("valid");
        self.do_ingest(i, doc, vec![r]);
    }

    /// A merge patch of a random generic document at node `i`.
    fn patch(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        let doc = generic_doc(self.rng.random_range(0..GENERIC_DOCS));
        let key = format!("k{}", self.rng.random_range(0..4));
        let v: i64 = self.rng.random_range(0..1000);
        let patch = match self.rng.random_range(0..4) {
            // A removal with a write beside it: every patch changes the document, so every
            // one is an acknowledgement the audit checks.
            0 => json!({ key: null, "n": v }),
            1 => json!({ "shared": { format!("n{i}"): v, "last": v } }),
            2 => json!({ key: [v, "x"] }),
            _ => json!({ key: v }),
        };
        if self.is_byzantine(i) {
            return;
        }
        let now = self.node_now(i);
        let n = self.nodes[i].node.as_mut().expect("up");
        match n.patch(&doc, &patch, now) {
            Ok(p) => {
                // The client is answered once the node says the patch is durable; the answer
                // is audited against the store like a reading's.
                let needed = n.clock(&doc).cloned().unwrap_or_default();
                let durable = n.durable_seq();
                self.report.patches += 1;
                self.log(Some(i), format_args!("patch {doc}"));
                let u = Unacked {
                    durable_at: p.durable_at,
                    doc: doc.clone(),
                    reading: None,
                    needed,
                };
                if p.durable_at <= durable {
                    self.acknowledge(i, vec![u]);
                } else {
                    self.nodes[i].unacked.push(u);
                }
            }
            Err(e) => self.log(Some(i), format_args!("patch of {doc} refused: {e}")),
        }
        self.after_call(i);
    }
}
