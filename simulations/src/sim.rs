//! The simulation engine: one thread, virtual time, every random choice from the seed. The
//! event loop and the nodes live here; the network model is in `network.rs`, fault injection
//! in `faults.rs`, the client workload in `workload.rs` and the checkers in `checkers.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use edgesync_proto::authz::{Identity, Pattern, Role, Rule, Rules};
use edgesync_proto::trust::keyed::Fleet;
use edgesync_proto::{
    CloseCode, Config, DocId, Event, MemStore, Node, NodeName, Origin, SessionId, VectorClock,
};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::checkers::{Checker, Ledger, Unacked};
use crate::network::Network;
use crate::plan::Plan;

/// Wall-clock origin of simulated time (nodes see `BASE_MS + now + skew`).
pub(crate) const BASE_MS: u64 = 1_700_000_000_000;
/// After the faults stop, convergence must happen within this much simulated time.
pub const LIVENESS_MS: u64 = 60_000;
/// The same in a days run (`--days`), whose partitions last hours: a gateway then catches up
/// on hours of the fleet's readings, at what its drawn link moves (a window of one 16 KiB
/// batch and half-second fsyncs carry some 50 changes a second; seed 35200001 needed 77 s).
pub const LIVENESS_DAYS_MS: u64 = 300_000;
/// How often a node with retention or pruning drops and prunes buckets (as the daemon does).
const HOUSEKEEP_MS: u64 = 10_000;
/// How often quiescence is checked once faults have stopped.
const QUIESCENCE_CHECK_MS: u64 = 100;

/// What happened in one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// blake3 of the event trace and the final states, hex.
    pub digest: String,
    /// The first checker violation, if any.
    pub violation: Option<String>,
    /// Simulated time from the end of faults to convergence.
    pub convergence_ms: Option<u64>,
    /// Events processed.
    pub events: u64,
    /// Ingests acknowledged (durable) to clients.
    pub acked_readings: usize,
    /// Generic edits made.
    pub patches: u64,
    /// Crashes (including after store failures).
    pub crashes: u32,
    /// Partitions started.
    pub partitions: u32,
    /// Sessions established.
    pub sessions: u64,
    /// Frames sent / dropped by the network.
    pub frames_sent: u64,
    /// Frames the network lost (loss or partition).
    pub frames_dropped: u64,
    /// Event log, when tracing.
    pub trace: Vec<String>,
}

/// A scheduled event.
#[derive(Debug)]
pub(crate) enum Ev {
    Ingest,
    Patch,
    Burst(crate::workload::Burst),
    Deliver {
        conn: u64,
        to: usize,
        frame: Vec<u8>,
    },
    ConnDrop {
        conn: u64,
    },
    Sync {
        node: usize,
    },
    Timer {
        node: usize,
    },
    Dial {
        link: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    StoreFail {
        node: usize,
    },
    Block(crate::faults::Partition),
    Unblock {
        pairs: Vec<(usize, usize)>,
    },
    Flap {
        link: usize,
        left: u32,
    },
    IdleCheck {
        conn: u64,
    },
    EndFaults,
    CheckQuiescence,
    Attack {
        node: usize,
    },
    /// Retention and pruning on one node (days runs).
    Housekeep {
        node: usize,
    },
}

/// One simulated node: the real core over a crashable in-memory store.
pub(crate) struct SimNode {
    pub(crate) name: NodeName,
    /// Its fleet identity (what its certificate would say).
    pub(crate) identity: Identity,
    /// The running core; `None` while crashed.
    pub(crate) node: Option<Node<MemStore>>,
    /// The store while the node is down.
    pub(crate) store: Option<MemStore>,
    pub(crate) cfg: Config,
    pub(crate) skew_ms: i64,
    pub(crate) timer_at: Option<u64>,
    /// Session → connection.
    pub(crate) sessions: BTreeMap<SessionId, u64>,
    /// Ingests waiting for durability before their client is answered.
    pub(crate) unacked: Vec<Unacked>,
    /// Clocks and receipts as of the last durable point: they must never go backwards.
    pub(crate) durable_clocks: BTreeMap<DocId, VectorClock>,
    pub(crate) durable_receipts: BTreeMap<(NodeName, DocId), VectorClock>,
    /// Store commits made before the node's first commit of this incarnation: node commit
    /// `n` is store commit `store_base + n`.
    pub(crate) store_base: u64,
    /// A hostile node reads nothing it is sent before this time.
    pub(crate) deaf_until: u64,
    /// A sync is scheduled (days runs sync on demand).
    pub(crate) sync_due: bool,
    /// Documents in the store's durable state at the last sync.
    pub(crate) durable_docs: std::collections::BTreeSet<DocId>,
    /// Documents durably dropped (retention): never to be durably held again.
    pub(crate) dropped: std::collections::BTreeSet<DocId>,
    /// Documents durably pruned: never to have content again.
    pub(crate) pruned_seen: std::collections::BTreeSet<DocId>,
    /// Floods (of actors or documents) a hostile node has left: each leaves honest relays a
    /// few sessions of catching up, and the run's liveness bound must hold.
    pub(crate) floods_left: u32,
    /// Node time at which the node's ingest journal last became non-empty or was last folded,
    /// while it is non-empty (seen after every call into the node): the limits checker bounds
    /// how long it stays so.
    pub(crate) journal_since: Option<u64>,
}

/// One simulation run.
pub struct Sim {
    pub(crate) plan: Plan,
    pub(crate) rng: Xoshiro256PlusPlus,
    pub(crate) now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) net: Network,
    pub(crate) faults_on: bool,
    hasher: blake3::Hasher,
    trace: Option<Vec<String>>,
    pub(crate) ledger: Ledger,
    /// Every node's name, in node order (fixed for the run).
    pub(crate) peer_names: Vec<NodeName>,
    pub(crate) workload: crate::workload::Workload,
    pub(crate) report: Report,
    pub(crate) done: bool,
}

impl Sim {
    /// Prepares a run of `plan`.
    pub fn new(plan: Plan, trace: bool) -> Sim {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(plan.seed);
        let nodes: Vec<SimNode> = (0..plan.nodes)
            .map(|i| new_node(&plan, i, &mut rng))
            .collect();
        let net = Network::new(&plan, &mut rng);
        let peer_names = nodes.iter().map(|n| n.name.clone()).collect();
        Sim {
            plan,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            net,
            faults_on: true,
            hasher: blake3::Hasher::new(),
            trace: trace.then(Vec::new),
            ledger: Ledger::default(),
            peer_names,
            workload: crate::workload::Workload::default(),
            report: Report::default(),
            done: false,
        }
    }

    /// Schedules `ev` after `delay_ms` of simulated time.
    pub(crate) fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay_ms, self.seq), ev);
    }

    /// Appends a line to the event log (and the run's digest).
    pub(crate) fn log(&mut self, node: Option<usize>, what: std::fmt::Arguments<'_>) {
        let mut line = String::with_capacity(64);
        let _ = write!(line, "{:>9} ", self.now);
        match node {
            Some(n) => {
                let _ = write!(line, "{:<8} ", self.nodes[n].name.as_str());
            }
            None => line.push_str("-        "),
        }
        let _ = line.write_fmt(what);
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if let Some(t) = &mut self.trace {
            t.push(line);
        }
    }

    /// Records the first violation, named by the checker that found it, and ends the run.
    pub(crate) fn violation(&mut self, checker: Checker, what: String) {
        let what = format!("{}: {what}", checker.name());
        if self.report.violation.is_none() {
            self.log(None, format_args!("VIOLATION {what}"));
            self.report.violation = Some(what);
        }
        self.done = true;
    }

    /// Node `i`'s wall clock.
    pub(crate) fn node_now(&self, i: usize) -> u64 {
        (BASE_MS as i64 + self.now as i64 + self.nodes[i].skew_ms) as u64
    }

    /// A delay with the given mean. Uniform on integers: transcendental functions (an
    /// exponential draw needs `ln`) come from the platform's libm and could differ across
    /// machines, which would break bit-for-bit reproduction.
    pub(crate) fn next_delay(&mut self, mean_ms: u64) -> u64 {
        self.rng.random_range(1..=2 * mean_ms.max(1))
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        for i in 0..self.nodes.len() {
            self.restart(i);
            // Days runs fsync when there is something to sync (group commit), not on a
            // schedule: a schedule would be millions of idle events a day.
            if self.plan.days == 0 {
                let d = self.rng.random_range(0..=self.plan.knobs.sync_interval_ms);
                self.at(d, Ev::Sync { node: i });
            }
        }
        for link in 0..self.net.links.len() {
            let d = self.rng.random_range(0..=100);
            self.at(d, Ev::Dial { link });
        }
        let d = self.next_delay(self.plan.knobs.ingest_interval_ms);
        self.at(d, Ev::Ingest);
        let d = self.next_delay(self.plan.knobs.patch_interval_ms);
        self.at(d, Ev::Patch);
        self.schedule_faults();
        self.schedule_attacks();
        for node in 0..self.nodes.len() {
            let c = &self.nodes[node].cfg;
            if c.keep_ms.is_some() || !c.prune_after_ack.is_empty() {
                let d = self.rng.random_range(0..HOUSEKEEP_MS);
                self.at(d, Ev::Housekeep { node });
            }
        }
        self.at(self.plan.duration_ms, Ev::EndFaults);
        let budget = if self.plan.days > 0 {
            LIVENESS_DAYS_MS
        } else {
            LIVENESS_MS
        };
        let deadline = self.plan.duration_ms + budget;
        while !self.done {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                let v = "event queue ran dry before convergence".into();
                self.violation(Checker::Liveness, v);
                break;
            };
            self.now = t;
            if t > deadline {
                let why = self
                    .quiescence_blocker()
                    .unwrap_or_else(|| "unknown".into());
                self.dump_state();
                self.dump_queue();
                self.violation(
                    Checker::Liveness,
                    format!("no convergence within {budget} ms after faults stopped ({why})"),
                );
                break;
            }
            self.report.events += 1;
            self.handle(ev);
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Ingest => self.on_ingest_tick(),
            Ev::Patch => self.on_patch_tick(),
            Ev::Burst(b) => self.on_burst(b),
            Ev::Deliver { conn, to, frame } => self.deliver(conn, to, &frame),
            Ev::ConnDrop { conn } => self.drop_conn(conn, "transport closed"),
            Ev::Sync { node } if self.plan.days > 0 => {
                self.nodes[node].sync_due = false;
                self.sync(node);
            }
            Ev::Sync { node } => {
                self.sync(node);
                let d = self
                    .rng
                    .random_range(1..=self.plan.knobs.sync_interval_ms.max(1) * 2);
                self.at(d, Ev::Sync { node });
            }
            Ev::Timer { node } => self.on_timer(node),
            Ev::Dial { link } => self.dial(link),
            Ev::Crash { node } => {
                if self.faults_on || self.plan.scenario != crate::plan::Scenario::Random {
                    self.crash(node)
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::StoreFail { node } => self.store_fail(node),
            Ev::Block(p) => self.block(p),
            Ev::Unblock { pairs } => self.unblock(pairs),
            Ev::Flap { link, left } => self.flap(link, left),
            Ev::IdleCheck { conn } => self.idle_check(conn),
            Ev::EndFaults => {
                self.faults_on = false;
                self.net.blocked.clear();
                self.log(None, format_args!("faults end; network healed"));
                self.cut_off_byzantine();
                self.at(QUIESCENCE_CHECK_MS, Ev::CheckQuiescence);
            }
            Ev::Attack { node } => self.attack(node),
            Ev::Housekeep { node } => {
                self.housekeep(node);
                self.at(HOUSEKEEP_MS, Ev::Housekeep { node });
            }
            Ev::CheckQuiescence => {
                if self.quiescence_blocker().is_none() {
                    self.report.convergence_ms = Some(self.now - self.plan.duration_ms);
                    self.done = true;
                } else {
                    self.at(QUIESCENCE_CHECK_MS, Ev::CheckQuiescence);
                }
            }
        }
    }

    /// Logs the earliest scheduled events (for liveness failures).
    fn dump_queue(&mut self) {
        let lines: Vec<String> = self
            .queue
            .iter()
            .take(12)
            .map(|((t, _), ev)| match ev {
                Ev::Deliver { conn, to, frame } => {
                    format!(
                        "queued at {t}: deliver {} bytes on conn {conn} to end {to}",
                        frame.len()
                    )
                }
                other => format!("queued at {t}: {other:?}"),
            })
            .collect();
        for l in lines {
            self.log(None, format_args!("{l}"));
        }
    }

    fn on_timer(&mut self, node: usize) {
        if self.nodes[node].timer_at != Some(self.now) {
            return;
        }
        self.nodes[node].timer_at = None;
        let now = self.node_now(node);
        if let Some(n) = self.nodes[node].node.as_mut() {
            n.handle_timeout(now);
            self.after_call(node);
        }
    }

    /// Drains a node's frames and events after any call into it.
    pub(crate) fn after_call(&mut self, i: usize) {
        let mut events = Vec::new();
        let mut frames = Vec::new();
        let mut poisoned = false;
        let mut timeout = None;
        let node_now = self.node_now(i);
        let sn = &mut self.nodes[i];
        if let Some(n) = sn.node.as_mut() {
            for (sid, conn) in &sn.sessions {
                while let Some(f) = n.poll_transmit(*sid) {
                    frames.push((*conn, f));
                }
            }
            // After the frames: releasing an Ack reports what it promised.
            while let Some(e) = n.poll_event() {
                events.push(e);
            }
            poisoned = n.is_poisoned();
            timeout = n.poll_timeout();
        }
        // The journal's age as the simulator sees it: from when it stopped being empty, or
        // from the last fold (a call may empty it and journal anew, unseen from outside).
        if let Some(n) = self.nodes[i].node.as_ref() {
            let journaled = n.journal_len() > 0 && n.is_settled();
            let folded = events.iter().any(|e| matches!(e, Event::Folded(_)));
            let since = &mut self.nodes[i].journal_since;
            *since = match (journaled, *since) {
                (false, _) => None,
                (true, None) => Some(node_now),
                (true, Some(_)) if folded => Some(node_now),
                (true, Some(t)) => Some(t),
            };
        }
        for e in events {
            self.on_node_event(i, e);
        }
        for (conn, frame) in frames {
            self.audit_changes_frame(i, &frame);
            let frame = self.maybe_mutate(i, frame);
            self.send(conn, i, frame);
        }
        if poisoned {
            self.log(
                Some(i),
                format_args!("store write failed: node poisoned, supervisor restarts it"),
            );
            self.crash(i);
            return;
        }
        if self.plan.days > 0 && !self.nodes[i].sync_due {
            let behind = self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.durable_seq() < n.commit_seq());
            if behind {
                self.nodes[i].sync_due = true;
                let d = self
                    .rng
                    .random_range(1..=self.plan.knobs.sync_interval_ms.max(1) * 2);
                self.at(d, Ev::Sync { node: i });
            }
        }
        if let Some(t) = timeout {
            let t_sim =
                (t as i64 - BASE_MS as i64 - self.nodes[i].skew_ms).max(self.now as i64) as u64;
            if self.nodes[i].timer_at.is_none_or(|x| t_sim < x) {
                self.nodes[i].timer_at = Some(t_sim);
                self.at(t_sim - self.now, Ev::Timer { node: i });
            }
        }
    }

    fn on_node_event(&mut self, i: usize, e: Event) {
        match e {
            Event::SessionClosed {
                session,
                peer,
                code,
                reason,
                by_peer,
            } => {
                self.log(
                    Some(i),
                    format_args!("session closed code={code:?} by_peer={by_peer} {reason}"),
                );
                let honest_peer = self
                    .nodes
                    .iter()
                    .position(|n| n.name == peer)
                    .is_some_and(|j| !self.is_byzantine(j));
                if code == Some(CloseCode::Cloned)
                    && !by_peer
                    && !self.is_byzantine(i)
                    && honest_peer
                {
                    self.violation(
                        Checker::Copies,
                        format!("node {i} refused {peer} as a copy: {reason}"),
                    );
                }
                if let Some(conn) = self.nodes[i].sessions.get(&session).copied() {
                    let lat = self.plan.knobs.latency_ms + 1;
                    self.at(lat, Ev::ConnDrop { conn });
                }
            }
            Event::Acknowledged { clocks, .. } => self.audit_ack(i, &clocks),
            Event::LimitExceeded { peer, limit } => {
                self.log(Some(i), format_args!("limit {limit} exceeded by {peer}"));
            }
            Event::DocChanged {
                doc,
                origin: Origin::Remote(_),
            } => {
                self.audit_not_gone(i, &doc);
                self.audit_clock(i, &doc);
            }
            Event::DocChanged { .. } => {}
            Event::Folded(f) => {
                self.log(
                    Some(i),
                    format_args!("folded {} readings into {} documents", f.readings, f.docs),
                );
            }
            Event::FoldFailed { reason } => {
                self.log(Some(i), format_args!("fold failed: {reason}"));
            }
            Event::Settled { peer, slot } => {
                self.log(Some(i), format_args!("settled on slot {slot} from {peer}"));
            }
            // No store is wiped or copied here: another store under a node's certificate is
            // a bug (or a forged answer a hostile peer could not make).
            Event::SlotConflict { peer, slot } => {
                self.violation(
                    Checker::Authorship,
                    format!(
                        "node {i}: {peer} names slot {slot} of its certificate under another key"
                    ),
                );
            }
            Event::DocDropped { doc } => {
                self.log(Some(i), format_args!("dropped {doc}"));
                // Its clock and receipts are gone with it: not a regression.
                let sn = &mut self.nodes[i];
                sn.durable_clocks.remove(&doc);
                sn.durable_receipts.retain(|(_, d), _| *d != doc);
            }
        }
    }

    /// Retention and pruning on node `i`, as the daemon's housekeeping runs them.
    fn housekeep(&mut self, i: usize) {
        let now = self.node_now(i);
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        let _ = n.compact_closed(now, 16);
        n.evict_closed(now);
        let max = edgesync_proto::stream::EXPIRE_BATCH_MAX;
        let mut dropped = 0;
        while let Ok(k) = n.expire(now) {
            dropped += k;
            if k < max {
                break;
            }
        }
        let mut pruned = 0;
        if !n.config().prune_after_ack.is_empty() {
            while let Ok(k) = n.prune(now) {
                pruned += k;
                if k < max {
                    break;
                }
            }
        }
        if dropped + pruned > 0 {
            self.log(
                Some(i),
                format_args!("housekeeping: {dropped} dropped, {pruned} pruned"),
            );
        }
        self.after_call(i);
    }

    /// Makes node `i`'s store durable (an fsync), then checks and answers what waited for it.
    fn sync(&mut self, i: usize) {
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        let seq = n.commit_seq();
        n.store_mut().sync();
        n.handle_durable(seq);
        let durable = n.durable_seq();
        let regress = self.check_monotonic(i);
        if let Some(v) = self.check_resurrection(i) {
            self.violation(
                Checker::Resurrection,
                format!("node {}: {v}", self.nodes[i].name),
            );
        }
        let over = (!self.is_byzantine(i))
            .then(|| crate::byzantine::limits_violation(self, i))
            .flatten();
        if let Some(v) = over {
            self.violation(Checker::Limits, format!("node {}: {v}", self.nodes[i].name));
        }
        let node = &mut self.nodes[i];
        let (done, wait) = node
            .unacked
            .drain(..)
            .partition(|u| u.durable_at <= durable);
        node.unacked = wait;
        self.acknowledge(i, done);
        self.after_call(i);
        if let Some(r) = regress {
            self.violation(
                Checker::Monotonic,
                format!("node {}: {r}", self.nodes[i].name),
            );
        }
    }

    fn finish(mut self) -> Report {
        if self.report.violation.is_none() {
            if let Err((checker, v)) = self.check_final() {
                self.violation(checker, v);
            }
        }
        let mut state = blake3::Hasher::new();
        for sn in &mut self.nodes {
            if let Some(n) = sn.node.as_mut() {
                let docs: Vec<DocId> = n.docs().map(|(d, _)| d.clone()).collect();
                for d in docs {
                    let heads = n.heads(&d).ok().flatten().unwrap_or_default();
                    let body = n.json(&d, true).ok().flatten().unwrap_or_default();
                    state.update(d.as_str().as_bytes());
                    for h in heads {
                        state.update(&h.0);
                    }
                    state.update(body.to_string().as_bytes());
                }
            }
        }
        self.hasher.update(state.finalize().as_bytes());
        self.report.digest = self.hasher.finalize().to_hex()[..16].to_string();
        self.report.acked_readings = self.ledger.acked_count();
        self.report.trace = self.trace.take().unwrap_or_default();
        self.report
    }
}

/// The simulated fleet: its members share a secret ([`Fleet`]); a hostile node is a member too
/// (a stolen or broken device keeps its certificate).
pub(crate) fn fleet(plan: &Plan) -> Fleet {
    let fleet = Fleet::new(*blake3::hash(b"edgesync-sim fleet").as_bytes());
    if !plan.knobs.hostile_legacy {
        return fleet;
    }
    // The hostile nodes hold certificates from before actor slots: they bind any actor.
    let hostile = (plan.nodes - plan.byzantine..plan.nodes).map(node_name);
    fleet.with_legacy_members(hostile)
}

/// Node `i`'s name: node 0 is the cloud, the others gateways.
pub(crate) fn node_name(i: usize) -> NodeName {
    NodeName::new(if i == 0 {
        "cloud".to_string()
    } else {
        format!("gw-{i}")
    })
    .expect("valid")
}

/// The site of the hostile nodes' certificates.
pub(crate) const HOSTILE_SITE: &str = "hostile";

/// Node `i`'s identity: node 0 is the cloud; the honest gateways share site `sim`; hostile
/// nodes are gateways of site [`HOSTILE_SITE`].
fn identity_of(plan: &Plan, i: usize, name: &NodeName) -> Identity {
    if i == 0 {
        Identity::new(name.clone(), Role::Cloud, None)
    } else if i >= plan.nodes - plan.byzantine {
        Identity::new(name.clone(), Role::Gateway, Some(HOSTILE_SITE))
    } else {
        Identity::new(name.clone(), Role::Gateway, Some("sim"))
    }
}

/// The simulated fleet's rules. The cloud writes and reads everything; the honest gateways
/// write and read what the workload uses (`site-0/..`, `site-1/..`, `app/..`); a hostile
/// gateway writes only `hostile/..` and reads `site-0/..` and `app/..` (so it holds material
/// to attack with) but never `site-1/..`: residency keeps that from it.
pub(crate) fn rules() -> Rules {
    let p = |s: &str| Pattern::parse(s).expect("a valid pattern");
    let rule = |role, site: Option<&str>, docs: &str, read, write| Rule {
        role: Some(role),
        site: site.map(str::to_string),
        docs: p(docs),
        read,
        write,
    };
    Rules(vec![
        rule(Role::Cloud, None, "**", true, true),
        rule(Role::Gateway, Some("sim"), "site-0/**", true, true),
        rule(Role::Gateway, Some("sim"), "site-1/**", true, true),
        rule(Role::Gateway, Some("sim"), "app/**", true, true),
        rule(Role::Gateway, Some(HOSTILE_SITE), "site-0/**", true, false),
        rule(Role::Gateway, Some(HOSTILE_SITE), "app/**", true, false),
        rule(Role::Gateway, Some(HOSTILE_SITE), "{site}/**", true, true),
    ])
}

/// Node `i` of the plan: its name, configuration from the knobs, and wall-clock skew.
fn new_node(plan: &Plan, i: usize, rng: &mut Xoshiro256PlusPlus) -> SimNode {
    let k = &plan.knobs;
    let name = node_name(i);
    let (keep_ms, prunes) = plan.retention[i];
    let identity = identity_of(plan, i, &name);
    let cfg = Config {
        name: name.clone(),
        trust: fleet(plan).trust(identity.clone(), rules()),
        frame_bytes_max: k.frame_bytes_max[i],
        snapshot_transfer: crate::plan::draw_snapshot_transfer(plan.seed, i),
        danger_canary: plan.canary,
        keep_ms,
        // A gateway that prunes lets go of what the cloud (node 0, keeping everything) holds.
        prune_after_ack: if prunes {
            vec![NodeName::new("cloud").expect("valid")]
        } else {
            Vec::new()
        },
        ..k.core.clone()
    };
    let skew_ms = if k.skew_max_ms == 0 {
        0
    } else {
        rng.random_range(-(k.skew_max_ms as i64)..=k.skew_max_ms as i64)
    };
    SimNode {
        name,
        identity,
        node: None,
        store: Some(MemStore::new()),
        cfg,
        skew_ms,
        timer_at: None,
        sessions: BTreeMap::new(),
        unacked: Vec::new(),
        durable_clocks: BTreeMap::new(),
        durable_receipts: BTreeMap::new(),
        store_base: 0,
        deaf_until: 0,
        floods_left: 2,
        journal_since: None,
        sync_due: false,
        durable_docs: Default::default(),
        dropped: Default::default(),
        pruned_seen: Default::default(),
    }
}
