//! The checkers. Each names the property it enforces in its violation:
//!
//! - durability at acknowledgement: a client answer, and every Ack frame a node releases,
//!   promise only what the store holds durably at that moment;
//! - monotonic state: durable clocks and receipts never go backwards, crashes included;
//! - liveness: after the last heal, quiescence within [`crate::LIVENESS_MS`]
//!   ([`crate::LIVENESS_DAYS_MS`] in a days run);
//! - convergence: identical documents, heads, JSON and clocks everywhere, each clock equal to
//!   the one recomputed from the document's changes;
//! - final durability: every acknowledged reading present on every node, once, with an
//!   acknowledged body, and no reading that was never ingested.

use std::collections::{BTreeMap, BTreeSet};

use edgesync_proto::stream::Bucket;
use edgesync_proto::wire::{DocClock, Message};
use edgesync_proto::{Actor, Boot, DocId, MemStore, Node, Reading, SensorView, Store, VectorClock};

use crate::sim::Sim;
use crate::workload::{sensor_doc, SENSOR_DOCS};

/// The checkers, by the name each violation starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checker {
    /// Every answer to a client is durable in the store when given (audited against the
    /// simulated store's durable state, never the node's word).
    ClientAck,
    /// Every answer to a merge patch is durable in the store when given (the same audit).
    PatchAck,
    /// Every Ack frame promises only what the store holds durably when it leaves.
    PeerAck,
    /// Durable clocks and receipts never go backwards.
    Monotonic,
    /// A node reopens after a crash with every durable clock.
    Reopen,
    /// Every document's recorded clock describes exactly the changes it holds, checked after
    /// every remote apply and at the end.
    Clock,
    /// Quiescence within the liveness bound after the last heal.
    Liveness,
    /// Identical documents on every (honest) node at the end.
    Convergence,
    /// Every acknowledged reading present once everywhere at the end, none never ingested.
    FinalDurability,
    /// Honest nodes within their limits at every durable point.
    Limits,
    /// A bucket a node dropped for its age never comes back to it (from a peer, or durably),
    /// and a pruned bucket never gets its content back.
    Resurrection,
    /// No honest node holds a change whose proven author may not write its document, or whose
    /// actor is not that author's for it (forgeries and trespasses never land).
    Authorship,
    /// No node, hostile ones included, holds a document the rules do not let it read.
    Residency,
    /// No honest node refuses another as a copy of a store (`Cloned`): no simulated node runs
    /// from a copy, so every such refusal is a false one.
    Copies,
}

impl Checker {
    /// The name a violation starts with.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Checker::ClientAck => "client-ack-durability",
            Checker::PatchAck => "patch-ack-durability",
            Checker::PeerAck => "peer-ack-durability",
            Checker::Monotonic => "monotonic",
            Checker::Reopen => "reopen",
            Checker::Clock => "clock",
            Checker::Liveness => "liveness",
            Checker::Convergence => "convergence",
            Checker::FinalDurability => "final-durability",
            Checker::Limits => "limits",
            Checker::Resurrection => "resurrection",
            Checker::Authorship => "authorship",
            Checker::Residency => "residency",
            Checker::Copies => "copies",
        }
    }
}

/// An ingested reading or a merge patch waiting for durability (commit `durable_at`) before
/// its client is answered. A reading must then be durable in the store's journal or in its
/// document's durable changes; for a patch, `needed` is the document's clock right after it,
/// which the store must hold durably. Whatever the node says.
#[derive(Clone, Debug)]
pub(crate) struct Unacked {
    pub(crate) durable_at: u64,
    pub(crate) doc: DocId,
    /// The reading answered, or `None` for a merge patch.
    pub(crate) reading: Option<Reading>,
    pub(crate) needed: VectorClock,
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

/// Whether `store` durably holds reading `r` of `doc`: in its journal, or folded into the
/// document's durable changes (loaded from the durable state, as a reopen would).
fn durably_holds(store: &MemStore, doc: &DocId, r: &Reading) -> bool {
    let body = r.encode();
    if let Some(b) = store.durable_journal(doc, &r.id) {
        return b == body;
    }
    let (snapshot, changes) = store.durable_content(doc);
    let mut am = match snapshot.map(automerge::Automerge::load) {
        Some(Ok(am)) => am,
        Some(Err(_)) => return false,
        None => automerge::Automerge::new(),
    };
    let changes: Result<Vec<automerge::Change>, _> = changes
        .into_iter()
        .map(|c| automerge::Change::from_bytes(c.to_vec()))
        .collect();
    let Ok(changes) = changes else { return false };
    if am.apply_changes(changes).is_err() {
        return false;
    }
    // Any of the values under the id (concurrent writers of one id with other bodies keep
    // theirs too), in the readings map, wherever it is.
    use automerge::{ReadDoc, Value, ROOT};
    let Ok(maps) = am.get_all(ROOT, "readings") else {
        return false;
    };
    maps.into_iter().any(|(_, map)| {
        am.get_all(&map, r.id.as_str()).is_ok_and(|vals| {
            vals.iter().any(|(v, _)| match v {
                Value::Scalar(s) => s.as_str() == Some(body.as_str()),
                _ => false,
            })
        })
    })
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
    /// the store's durable state at this moment, whether or not a crash ever tests it: the
    /// document's durable clock in the simulated store must cover its clock right after the
    /// ingest (the node's `durable_at` is not consulted).
    pub(crate) fn acknowledge(&mut self, i: usize, done: Vec<Unacked>) {
        let sn = &self.nodes[i];
        let empty = VectorClock::new();
        let mut early = None;
        if let Some(n) = sn.node.as_ref() {
            let store = n.store();
            for u in &done {
                let held = match &u.reading {
                    Some(r) => durably_holds(store, &u.doc, r),
                    None => u.needed.le(store.durable_clock(&u.doc).unwrap_or(&empty)),
                };
                if !held {
                    early = Some(u);
                    break;
                }
            }
        }
        if let Some(u) = early {
            let (checker, what) = match &u.reading {
                Some(r) => (Checker::ClientAck, format!("reading {}", r.id)),
                None => (Checker::PatchAck, "a merge patch".to_string()),
            };
            let v = format!(
                "{} acknowledged {what} in {} before it was durable",
                sn.name, u.doc
            );
            self.violation(checker, v);
        }
        for u in done {
            let Some(r) = u.reading else { continue };
            let body = r.encode();
            let key = (u.doc, r.id);
            self.ledger.acked.entry(key).or_default().insert(body);
        }
    }

    /// An Ack frame left node `i`, promising `clocks`: each must be durable in its store now.
    pub(crate) fn audit_ack(&mut self, i: usize, clocks: &[DocClock]) {
        let sn = &self.nodes[i];
        let n = sn.node.as_ref().expect("a sending node is up");
        let store = n.store();
        let empty = VectorClock::new();
        // A bucket past retention is acknowledged as held on purpose (it is not kept).
        let early = clocks.iter().find(|e| {
            !n.is_gone(&e.doc) && !e.clock.le(store.durable_clock(&e.doc).unwrap_or(&empty))
        });
        if let Some(e) = early {
            let v = format!(
                "{} acknowledged {} changes of {} to a peer before they were durable",
                sn.name,
                e.clock.total(),
                e.doc
            );
            self.violation(Checker::PeerAck, v);
        }
    }

    /// A frame is leaving node `i`: if it carries changes (or snapshots), each must be durable
    /// in its store now (the same promise an Ack makes, checked on the data itself).
    pub(crate) fn audit_changes_frame(&mut self, i: usize, frame: &[u8]) {
        if self.is_byzantine(i) || frame.len() < 4 {
            return;
        }
        let sections: Vec<(DocId, Vec<automerge::Change>)> = match Message::from_payload_inflated(
            &frame[4..],
            edgesync_proto::wire::FRAME_BYTES_LIMIT,
        ) {
            Ok(Message::Changes(c)) => c
                .docs
                .into_iter()
                .map(|dc| {
                    let cs = dc
                        .changes
                        .iter()
                        .filter_map(|ch| automerge::Change::try_from(&ch.0[..]).ok())
                        .collect();
                    (dc.doc, cs)
                })
                .collect(),
            Ok(Message::Snapshots(s)) => s
                .docs
                .into_iter()
                .map(|ds| {
                    let cs =
                        edgesync_proto::snapshot::open(&ds.saved, usize::MAX).unwrap_or_default();
                    (ds.doc, cs)
                })
                .collect(),
            _ => return,
        };
        let sn = &self.nodes[i];
        let Some(n) = sn.node.as_ref() else { return };
        let empty = VectorClock::new();
        let early = sections.iter().find_map(|(doc, changes)| {
            // A frame built before retention dropped its bucket may leave after: it was
            // durable when built, and nothing of the bucket is kept now.
            if n.is_gone(doc) {
                return None;
            }
            let durable = n.store().durable_clock(doc).unwrap_or(&empty);
            changes.iter().find_map(|change| {
                let actor = Actor::from_automerge(change.actor_id())?;
                (durable.get(&actor) < change.seq()).then(|| (doc.clone(), change.seq()))
            })
        });
        if let Some((doc, seq)) = early {
            let v = format!(
                "{} sent a change of {doc} (seq {seq}) before it was durable",
                sn.name
            );
            self.violation(Checker::PeerAck, v);
        }
    }

    /// After node `i` applied remote changes to `doc`: its recorded clock still describes
    /// exactly the changes the document holds.
    pub(crate) fn audit_clock(&mut self, i: usize, doc: &DocId) {
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        if let Err(e) = n.verify_clock(doc) {
            let v = format!("{}: {e}", self.nodes[i].name);
            self.violation(Checker::Clock, v);
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

    /// After a sync of node `i`: no bucket it durably dropped is durably back, and no bucket
    /// it durably pruned has its content back.
    pub(crate) fn check_resurrection(&mut self, i: usize) -> Option<String> {
        let sn = &mut self.nodes[i];
        let n = sn.node.as_ref().expect("up");
        let durable = n.store().durable_docs();
        let gone: Vec<DocId> = sn
            .durable_docs
            .iter()
            .filter(|d| !durable.contains_key(*d))
            .cloned()
            .collect();
        sn.dropped.extend(gone);
        let mut found = None;
        for (d, meta) in durable {
            if sn.dropped.contains(d) {
                found = Some(format!("{d}, dropped for its age, is back"));
            }
            if meta.pruned {
                sn.pruned_seen.insert(d.clone());
            } else if sn.pruned_seen.contains(d) {
                found = Some(format!("{d}, pruned, has its content back"));
            }
        }
        sn.durable_docs = durable.keys().cloned().collect();
        found
    }

    /// Node `i` applied changes from a peer to `doc`: it must not be a bucket past its
    /// retention (those are acknowledged as held, never applied).
    pub(crate) fn audit_not_gone(&mut self, i: usize, doc: &DocId) {
        let gone = self.nodes[i].node.as_ref().is_some_and(|n| n.is_gone(doc));
        if gone {
            let v = format!(
                "{} took changes of {doc}, past its retention",
                self.nodes[i].name
            );
            self.violation(Checker::Resurrection, v);
        }
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
            self.violation(Checker::Reopen, v);
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
            if n.journal_len() > 0 {
                let j = n.journal_len();
                return Some(format!(
                    "node {i} holds {j} journaled readings not yet folded"
                ));
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
                "node {i} {} commit={} durable={} pending={} {:?} idle={} journal={}",
                sn.name,
                n.commit_seq(),
                n.durable_seq(),
                n.pending_changes(),
                n.pending_by_peer(),
                n.is_idle(),
                n.journal_len()
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
    pub(crate) fn check_final(&mut self) -> Result<(), (Checker, String)> {
        if self.plan.days > 0 {
            return self.check_final_days();
        }
        self.check_trust()?;
        let mut reference: Option<(String, DocStates)> = None;
        let honest = self.plan.nodes - self.plan.byzantine;
        let rules = crate::sim::rules();
        let identities: Vec<edgesync_proto::Identity> = (0..honest)
            .map(|i| self.nodes[i].identity.clone())
            .collect();
        for i in 0..honest {
            let name = self.nodes[i].name.to_string();
            let mut state = self.doc_states(i).map_err(|v| (Checker::Clock, v))?;
            // Honest nodes converge on what they may all hold (the cloud also holds what the
            // hostile nodes wrote for themselves).
            state.retain(|d, _| {
                identities
                    .iter()
                    .all(|who| rules.allows(who, d, edgesync_proto::authz::Access::Read))
            });
            let Some((rname, rstate)) = &reference else {
                reference = Some((name, state));
                continue;
            };
            if rstate.keys().ne(state.keys()) {
                let v = format!("{name} and {rname} hold different documents");
                return Err((Checker::Convergence, v));
            }
            if let Some((d, v)) = state.iter().find(|(d, v)| &rstate[*d] != *v) {
                let v = format!(
                    "{d} differs between {name} and {rname}: {:?} vs {:?}",
                    v.clock, rstate[d].clock
                );
                return Err((Checker::Convergence, v));
            }
        }
        for i in 0..honest {
            self.check_readings(i)
                .map_err(|v| (Checker::FinalDurability, v))?;
            self.check_reopens_equal(i)
                .map_err(|v| (Checker::Reopen, v))?;
        }
        Ok(())
    }

    /// With retention and pruning (days runs; a star whose cloud, node 0, keeps everything):
    /// every document a gateway holds equals the cloud's (a pruned bucket: its clock); every
    /// bucket the cloud holds within a gateway's retention is on that gateway; and every
    /// acknowledged reading is on every node that keeps its bucket unpruned.
    fn check_final_days(&mut self) -> Result<(), (Checker, String)> {
        self.check_trust()?;
        let hub = self.doc_states(0).map_err(|v| (Checker::Clock, v))?;
        for i in 1..self.plan.nodes {
            let name = self.nodes[i].name.to_string();
            let state = self.doc_states(i).map_err(|v| (Checker::Clock, v))?;
            let n = self.nodes[i].node.as_ref().expect("checked by doc_states");
            for (d, st) in &state {
                let Some(h) = hub.get(d) else {
                    let v = format!("{name} holds {d}, which the cloud does not");
                    return Err((Checker::Convergence, v));
                };
                let same = if n.is_pruned(d) {
                    st.clock == h.clock
                } else {
                    st == h
                };
                if !same {
                    let v = format!(
                        "{d} differs between {name} and the cloud: {:?} vs {:?}",
                        st.clock, h.clock
                    );
                    return Err((Checker::Convergence, v));
                }
            }
            let missing = hub
                .keys()
                .find(|d| !n.past_horizon(d) && !state.contains_key(*d));
            if let Some(d) = missing {
                let v = format!("{name} keeps {d} by its retention but does not hold it");
                return Err((Checker::Convergence, v));
            }
        }
        for i in 0..self.plan.nodes {
            self.check_readings(i)
                .map_err(|v| (Checker::FinalDurability, v))?;
            self.check_reopens_equal(i)
                .map_err(|v| (Checker::Reopen, v))?;
        }
        Ok(())
    }

    /// Residency on every node, and the authorship of every change an honest node holds: its
    /// author's statement is kept, verifies, names a node whose rules let it write the
    /// document, and the change's actor is that author's for the document.
    fn check_trust(&mut self) -> Result<(), (Checker, String)> {
        use edgesync_proto::authz::Access;
        use edgesync_proto::trust::Authority;
        let rules = crate::sim::rules();
        let fleet = crate::sim::fleet(&self.plan);
        let genesis = edgesync_proto::id::genesis_actor();
        for (i, sn) in self.nodes.iter().enumerate() {
            let Some(n) = &sn.node else { continue };
            for (doc, _) in n.docs() {
                if !rules.allows(&sn.identity, doc, Access::Read) {
                    let v = format!("{} holds {doc}, which it may not read", sn.identity);
                    return Err((Checker::Residency, v));
                }
                if self.is_byzantine(i) {
                    continue;
                }
                let changes = n
                    .store()
                    .changes_from(doc, 0, usize::MAX)
                    .map_err(|e| (Checker::Authorship, e.to_string()))?;
                for c in changes {
                    let bad = |why: String| {
                        Err((
                            Checker::Authorship,
                            format!(
                                "{} holds change {}:{} of {doc}: {why}",
                                sn.name, c.actor, c.seq
                            ),
                        ))
                    };
                    let Some(na) = c.author else {
                        if c.actor != genesis {
                            return bad("no author".into());
                        }
                        continue;
                    };
                    let Ok(Some(st)) = n.store().author(&na) else {
                        return bad(format!("no statement for author {na}"));
                    };
                    let author = match fleet.authority().verify_statement(&st) {
                        Ok(a) => a,
                        Err(e) => return bad(format!("its statement does not verify: {e}")),
                    };
                    if edgesync_proto::id::doc_actor(na, doc) != c.actor {
                        return bad(format!("not an actor of {}", author.identity));
                    }
                    if !rules.allows(&author.identity, doc, Access::Write) {
                        return bad(format!("{} may not write it", author.identity));
                    }
                }
            }
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
        states_of(n, &name)
    }

    /// Node `i` reopened from what its store holds durably (a copy of the store, crashed):
    /// the same documents, heads, JSON and clocks as the running node. Memory equals store.
    fn check_reopens_equal(&mut self, i: usize) -> Result<(), String> {
        let sn = &mut self.nodes[i];
        let name = sn.name.to_string();
        let n = sn.node.as_mut().expect("checked by doc_states");
        let live = states_of(n, &name)?;
        let mut store = n.store().clone();
        store.crash();
        let boot = Boot {
            nonce: [0xee; 16],
            new_store_id: [0xee; 16],
        };
        let mut reopened = Node::open(store, sn.cfg.clone(), boot)
            .map_err(|e| format!("{name} does not reopen from its store: {e}"))?;
        let durable = states_of(&mut reopened, &name)?;
        if live.keys().ne(durable.keys()) {
            return Err(format!(
                "{name} reopened holds other documents than it served"
            ));
        }
        match live.iter().find(|(d, v)| &durable[*d] != *v) {
            Some((d, _)) => Err(format!(
                "{name} reopened holds {d} otherwise than it served"
            )),
            None => Ok(()),
        }
    }
}

/// `n`'s documents, each with its clock verified against its changes.
fn states_of(n: &mut Node<MemStore>, name: &str) -> Result<DocStates, String> {
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

impl Sim {
    /// Every acknowledged reading on node `i`, once, with an acknowledged body; no reading that
    /// was never ingested; nothing unparseable.
    fn check_readings(&mut self, i: usize) -> Result<(), String> {
        let sn = &mut self.nodes[i];
        let name = sn.name.to_string();
        let n = sn.node.as_mut().expect("checked by doc_states");
        let mut views: BTreeMap<DocId, SensorView> = BTreeMap::new();
        let buckets: Vec<DocId> = n
            .docs()
            .map(|(d, _)| d.clone())
            .filter(|d| {
                // The clients' streams; hostile nodes make up others, which no client reads.
                Bucket::parse(d)
                    .is_some_and(|b| (0..SENSOR_DOCS).any(|i| sensor_doc(i) == b.stream))
            })
            .collect();
        for doc in buckets {
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
            // Past this node's retention, or pruned here (the cloud keeps it): not required.
            if n.is_gone(doc) || n.is_pruned(doc) {
                continue;
            }
            let Some(r) = views.get(doc).and_then(|v| v.readings.get(id)) else {
                return Err(format!(
                    "acknowledged reading {id} in {doc} missing on {name}"
                ));
            };
            let body = r.encode();
            let attempted = &self.ledger.attempted[&(doc.clone(), id.clone())];
            if !attempted.contains(&body) || (attempted.len() == 1 && !bodies.contains(&body)) {
                return Err(format!(
                    "reading {id} in {doc} on {name} has a body never acknowledged"
                ));
            }
        }
        Ok(())
    }
}
