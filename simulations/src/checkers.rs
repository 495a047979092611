//! The checkers. Each names the property it enforces in its violation:
//!
//! - durability at acknowledgement: a client answer, and every Ack frame a node releases,
//!   promise only what the store holds durably at that moment;
//! - monotonic state: durable clocks and receipts never go backwards, crashes included;
//! - liveness: after the last heal, quiescence within [`crate::LIVENESS_MS`];
//! - convergence: identical documents, heads, JSON and clocks everywhere, each clock equal to
//!   the one recomputed from the document's changes;
//! - final durability: every acknowledged reading present on every node, once, with an
//!   acknowledged body, and no reading that was never ingested.

use std::collections::{BTreeMap, BTreeSet};

use edgesync_proto::wire::DocClock;
use edgesync_proto::{DocId, Reading, SensorView, VectorClock};

use crate::sim::Sim;
use crate::workload::{sensor_doc, SENSOR_DOCS};

/// An ingested reading waiting for durability (commit `durable_at`) before its client is
/// answered.
#[derive(Clone, Debug)]
pub(crate) struct Unacked {
    pub(crate) durable_at: u64,
    pub(crate) doc: DocId,
    pub(crate) reading: Reading,
}

/// Every reading the clients tried to ingest, and those they were answered for.
#[derive(Default)]
pub(crate) struct Ledger {
    /// (doc, id) → bodies ingested under it.
    attempted: BTreeMap<(DocId, String), BTreeSet<String>>,
    /// (doc, id) → bodies acknowledged under it.
    acked: BTreeMap<(DocId, String), BTreeSet<String>>,
}

impl Ledger {
    pub(crate) fn attempt(&mut self, doc: &DocId, r: &Reading) {
        let key = (doc.clone(), r.id.clone());
        self.attempted.entry(key).or_default().insert(r.encode());
    }

    pub(crate) fn acked_count(&self) -> usize {
        self.acked.len()
    }
}

/// One document as one node holds it, for comparison across nodes.
#[derive(Debug, PartialEq)]
struct DocState {
    heads: Vec<[u8; 32]>,
    json: String,
    clock: VectorClock,
}

type DocStates = BTreeMap<DocId, DocState>;

impl Sim {
    /// Answers clients: these ingests are acknowledged. Audits that what is acknowledged is in
    /// the store's durable state at this moment, whether or not a crash ever tests it.
    pub(crate) fn acknowledge(&mut self, i: usize, done: Vec<Unacked>) {
        let Some(newest) = done.iter().map(|u| u.durable_at).max() else {
            return;
        };
        let sn = &self.nodes[i];
        let durable_commits = sn.node.as_ref().map_or(0, |n| n.store().durable_commits());
        if sn.store_base + newest > durable_commits {
            let u = &done[0];
            let v = format!(
                "durability: {} acknowledged reading {} in {} before it was durable",
                sn.name, u.reading.id, u.doc
            );
            self.violation(v);
        }
        for u in done {
            let body = u.reading.encode();
            let key = (u.doc, u.reading.id);
            self.ledger.acked.entry(key).or_default().insert(body);
        }
    }

    /// An Ack frame left node `i`, promising `clocks`: each must be durable in its store now.
    pub(crate) fn audit_ack(&mut self, i: usize, clocks: &[DocClock]) {
        let sn = &self.nodes[i];
        let store = sn.node.as_ref().expect("a sending node is up").store();
        let empty = VectorClock::new();
        let early = clocks
            .iter()
            .find(|e| !e.clock.le(store.durable_clock(&e.doc).unwrap_or(&empty)));
        if let Some(e) = early {
            let v = format!(
                "durability: {} acknowledged {} changes of {} before they were durable",
                sn.name,
                e.clock.total(),
                e.doc
            );
            self.violation(v);
        }
    }

    /// After a sync of node `i`: its clocks and receipts never went backwards.
    pub(crate) fn check_monotonic(&mut self, i: usize) -> Option<String> {
        let sn = &mut self.nodes[i];
        let n = sn.node.as_ref().expect("up");
        let mut regress = None;
        for (doc, clock) in n.docs() {
            let prev = sn.durable_clocks.entry(doc.clone()).or_default();
            if !VectorClock::le(prev, clock) {
                regress = Some(format!(
                    "clock of {doc} went backwards: {prev:?} -> {clock:?}"
                ));
            }
            *prev = clock.clone();
        }
        let sn = &mut self.nodes[i];
        let n = sn.node.as_ref().expect("up");
        let honest = self.plan.nodes - self.plan.byzantine;
        // A hostile peer may present another store id (a flipped byte in its Hello), which
        // rightly resets its receipts: only honest peers' receipts must only rise.
        for peer in self.peer_names.iter().take(honest) {
            let Some(r) = n.receipts(peer) else { continue };
            for (doc, clock) in &r.clocks {
                // Simulated stores are never replaced, so receipts are never reset.
                let key = (peer.clone(), doc.clone());
                let prev = sn.durable_receipts.entry(key).or_default();
                if !VectorClock::le(prev, clock) {
                    regress = Some(format!("receipt of {peer} for {doc} went backwards"));
                }
                *prev = clock.clone();
            }
        }
        regress
    }

    /// After node `i` reopened: every clock it had at a durable point is still there.
    pub(crate) fn check_reopened(&mut self, i: usize) {
        let sn = &self.nodes[i];
        let n = sn.node.as_ref().expect("just opened");
        let lost = sn
            .durable_clocks
            .iter()
            .find(|(doc, prev)| !n.clock(doc).is_some_and(|c| VectorClock::le(prev, c)))
            .map(|(doc, _)| doc.clone());
        if let Some(doc) = lost {
            let v = format!("node {}: durable clock of {doc} lost in a crash", sn.name);
            self.violation(v);
        }
    }

    /// The honest nodes, with their numbers.
    fn honest(&self) -> impl Iterator<Item = (usize, &crate::sim::SimNode)> {
        let honest = self.plan.nodes - self.plan.byzantine;
        self.nodes.iter().enumerate().take(honest)
    }

    /// Why the fleet is not yet quiescent, or `None` when it is.
    pub(crate) fn quiescence_blocker(&self) -> Option<String> {
        if self.faults_on {
            return Some("faults still running".into());
        }
        if self.net.in_flight > 0 {
            return Some(format!("{} frames in flight", self.net.in_flight));
        }
        for (i, sn) in self.honest() {
            let Some(n) = &sn.node else {
                return Some(format!("node {i} down"));
            };
            if n.durable_seq() < n.commit_seq() {
                return Some(format!("node {i} has commits not yet durable"));
            }
            if !n.is_idle() {
                return Some(format!("node {i} has frames or changes to send"));
            }
            if n.pending_changes() > 0 {
                let p = n.pending_changes();
                return Some(format!(
                    "node {i} holds {p} changes waiting for dependencies"
                ));
            }
            if n.sessions().iter().any(|s| !s.live) {
                return Some(format!("node {i} has a session still in handshake"));
            }
        }
        let honest_link = |l: &&crate::network::Link| {
            !self.is_byzantine(l.dialer) && !self.is_byzantine(l.listener)
        };
        if let Some(l) = self
            .net
            .links
            .iter()
            .filter(honest_link)
            .find(|l| l.conn.is_none())
        {
            return Some(format!("link {}->{} not connected", l.dialer, l.listener));
        }
        // A connection whose session just ended (say, on an acknowledgement timeout) is about
        // to be dropped and redialled: not quiet yet.
        for (i, sn) in self.honest() {
            let links = self
                .net
                .links
                .iter()
                .filter(honest_link)
                .filter(|l| l.dialer == i || l.listener == i)
                .count();
            let sessions = sn.node.as_ref().map_or(0, |n| n.sessions().len());
            if sessions < links {
                return Some(format!(
                    "node {i} has {sessions} sessions for {links} links"
                ));
            }
        }
        None
    }

    /// Logs every node's sessions, buffers and clocks (for liveness failures).
    pub(crate) fn dump_state(&mut self) {
        let mut lines = Vec::new();
        for (i, sn) in self.nodes.iter().enumerate() {
            let Some(n) = &sn.node else {
                lines.push(format!("node {i} down"));
                continue;
            };
            lines.push(format!(
                "node {i} {} commit={} durable={} pending={} {:?} idle={}",
                sn.name,
                n.commit_seq(),
                n.durable_seq(),
                n.pending_changes(),
                n.pending_by_peer(),
                n.is_idle()
            ));
            for s in n.sessions() {
                lines.push(format!(
                    "  session {:?} peer={} live={} inflight={} {:?}",
                    s.id, s.peer, s.live, s.inflight_batches, s.stats
                ));
            }
            for (doc, clock) in n.docs() {
                lines.push(format!("  {doc} {clock:?}"));
            }
        }
        for l in lines {
            self.log(None, format_args!("{l}"));
        }
    }

    /// Convergence, clock consistency and durability, after quiescence.
    pub(crate) fn check_final(&mut self) -> Result<(), String> {
        let mut reference: Option<(String, DocStates)> = None;
        let honest = self.plan.nodes - self.plan.byzantine;
        for i in 0..honest {
            let name = self.nodes[i].name.to_string();
            let state = self.doc_states(i)?;
            let Some((rname, rstate)) = &reference else {
                reference = Some((name, state));
                continue;
            };
            if rstate.keys().ne(state.keys()) {
                return Err(format!(
                    "convergence: {name} and {rname} hold different documents"
                ));
            }
            if let Some((d, v)) = state.iter().find(|(d, v)| &rstate[*d] != *v) {
                return Err(format!(
                    "convergence: {d} differs between {name} and {rname}: {:?} vs {:?}",
                    v.clock, rstate[d].clock
                ));
            }
        }
        for i in 0..honest {
            self.check_readings(i)?;
        }
        Ok(())
    }

    /// Node `i`'s documents, each with its clock verified against its changes.
    fn doc_states(&mut self, i: usize) -> Result<DocStates, String> {
        let sn = &mut self.nodes[i];
        let name = sn.name.to_string();
        let n = sn
            .node
            .as_mut()
            .ok_or_else(|| format!("node {name} is down at the end"))?;
        let docs: Vec<DocId> = n.docs().map(|(d, _)| d.clone()).collect();
        let mut states = BTreeMap::new();
        for d in docs {
            let err = |e: &dyn std::fmt::Display| format!("{name}: {e}");
            // The clock must describe exactly the changes the document holds.
            n.verify_clock(&d).map_err(|e| err(&e))?;
            let heads = n.heads(&d).map_err(|e| err(&e))?.unwrap_or_default();
            let json = n.json(&d, true).map_err(|e| err(&e))?.unwrap_or_default();
            let state = DocState {
                heads: heads.into_iter().map(|h| h.0).collect(),
                json: json.to_string(),
                clock: n.clock(&d).cloned().unwrap_or_default(),
            };
            states.insert(d, state);
        }
        Ok(states)
    }

    /// Every acknowledged reading on node `i`, once, with an acknowledged body; no reading that
    /// was never ingested; nothing unparseable.
    fn check_readings(&mut self, i: usize) -> Result<(), String> {
        let sn = &mut self.nodes[i];
        let name = sn.name.to_string();
        let n = sn.node.as_mut().expect("checked by doc_states");
        let mut views: BTreeMap<DocId, SensorView> = BTreeMap::new();
        for d in 0..SENSOR_DOCS {
            let doc = sensor_doc(d);
            let Some(view) = n.sensor_view(&doc).map_err(|e| format!("{name}: {e}"))? else {
                continue;
            };
            if !view.invalid.is_empty() {
                let bad = &view.invalid;
                return Err(format!("{name}: {doc} holds unparseable readings {bad:?}"));
            }
            let stray = view.readings.keys().find(|id| {
                !self
                    .ledger
                    .attempted
                    .contains_key(&(doc.clone(), (*id).clone()))
            });
            if let Some(id) = stray {
                return Err(format!(
                    "{name}: {doc} holds reading {id} that was never ingested"
                ));
            }
            views.insert(doc, view);
        }
        for ((doc, id), bodies) in &self.ledger.acked {
            let Some(r) = views.get(doc).and_then(|v| v.readings.get(id)) else {
                return Err(format!(
                    "durability: acknowledged reading {id} in {doc} missing on {name}"
                ));
            };
            let body = r.encode();
            let attempted = &self.ledger.attempted[&(doc.clone(), id.clone())];
            if !attempted.contains(&body) || (attempted.len() == 1 && !bodies.contains(&body)) {
                return Err(format!(
                    "durability: reading {id} in {doc} on {name} has a body never acknowledged"
                ));
            }
        }
        Ok(())
    }
}
