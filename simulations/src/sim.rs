//! The simulation engine: one thread, virtual time, every random choice from the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use edgesync_proto::wire::Message;
use edgesync_proto::{
    Boot, Config, DocId, Event, IngestOutcome, MemStore, Node, NodeName, Reading, SessionId,
    VectorClock,
};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::json;

use crate::plan::{Plan, Scenario, Topology};

/// Wall-clock origin of simulated time (nodes see `BASE_MS + now + skew`).
const BASE_MS: u64 = 1_700_000_000_000;
/// After the faults stop, convergence must happen within this much simulated time.
pub const LIVENESS_MS: u64 = 60_000;
/// How often quiescence is checked once faults have stopped.
const QUIESCENCE_CHECK_MS: u64 = 100;
const SENSOR_DOCS: usize = 6;
const GENERIC_DOCS: usize = 2;
/// Variant index of `Message::Ack` (PROTOCOL.md §4).
const ACK_TAG: u8 = 3;
/// Readings in the seed's partition test burst.
const BURST_READINGS: u32 = 50;

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

#[derive(Debug)]
enum Ev {
    Ingest,
    Patch,
    Burst {
        node: usize,
        left: u32,
        crash_at: Option<u32>,
        shared: bool,
    },
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
    Block {
        pairs: Vec<(usize, usize)>,
        hold_ms: u64,
        what: String,
    },
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
}

struct Conn {
    link: usize,
    /// (node, session) at each end: [dialer, listener].
    ends: [(usize, SessionId); 2],
    /// Latest scheduled delivery per direction (index = receiving end), for FIFO order.
    last_at: [u64; 2],
}

struct SimNode {
    name: NodeName,
    node: Option<Node<MemStore>>,
    store: Option<MemStore>,
    cfg: Config,
    skew_ms: i64,
    timer_at: Option<u64>,
    sessions: BTreeMap<SessionId, u64>,
    /// Ingests waiting for durability: (durable_at, doc, id, body).
    unacked: Vec<(u64, DocId, String, String)>,
    /// Clocks and receipts as of the last durable point: they must never go backwards.
    durable_clocks: BTreeMap<DocId, VectorClock>,
    durable_receipts: BTreeMap<(NodeName, DocId), VectorClock>,
    /// Store commits made before the node's first commit of this incarnation: node commit
    /// `n` is store commit `store_base + n`.
    store_base: u64,
}

struct Link {
    dialer: usize,
    listener: usize,
    conn: Option<u64>,
    attempt: u32,
    dialing: bool,
}

/// One simulation run.
pub struct Sim {
    plan: Plan,
    rng: Xoshiro256PlusPlus,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<SimNode>,
    links: Vec<Link>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    blocked: BTreeMap<(usize, usize), u32>,
    faults_on: bool,
    hasher: blake3::Hasher,
    trace: Option<Vec<String>>,
    attempted: BTreeMap<(DocId, String), BTreeSet<String>>,
    acked: BTreeMap<(DocId, String), BTreeSet<String>>,
    recent_ids: Vec<(DocId, String, String)>,
    reading_counter: u64,
    in_flight: u64,
    report: Report,
    done: bool,
    peer_names: Vec<NodeName>,
}

fn sensor_doc(i: usize) -> DocId {
    DocId::new(format!("site-{}/sensor-{}", i % 2, i)).expect("valid doc id")
}

fn generic_doc(i: usize) -> DocId {
    DocId::new(format!("app/doc-{i}")).expect("valid doc id")
}

impl Sim {
    /// Prepares a run of `plan`.
    pub fn new(plan: Plan, trace: bool) -> Sim {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(plan.seed);
        let k = &plan.knobs;
        let mut nodes = Vec::new();
        for i in 0..plan.nodes {
            let name = NodeName::new(if i == 0 {
                "cloud".to_string()
            } else {
                format!("gw-{i}")
            })
            .expect("valid");
            let mut cfg = Config::new(name.clone());
            cfg.frame_bytes_max = k.frame_bytes_max[i];
            cfg.change_bytes_max = k.change_bytes_max;
            cfg.batch_bytes_max = k.batch_bytes_max;
            cfg.inflight_batches_max = k.inflight_batches_max;
            cfg.ack_timeout_ms = k.ack_timeout_ms;
            cfg.handshake_timeout_ms = k.handshake_timeout_ms;
            cfg.pending_changes_max = k.pending_changes_max;
            cfg.docs_loaded_max = k.docs_loaded_max;
            cfg.snapshot_changes_min = k.snapshot_changes_min;
            cfg.danger_canary = plan.canary;
            let skew = if k.skew_max_ms == 0 {
                0
            } else {
                rng.random_range(-(k.skew_max_ms as i64)..=k.skew_max_ms as i64)
            };
            nodes.push(SimNode {
                name,
                node: None,
                store: Some(MemStore::new()),
                cfg,
                skew_ms: skew,
                timer_at: None,
                sessions: BTreeMap::new(),
                unacked: Vec::new(),
                durable_clocks: BTreeMap::new(),
                durable_receipts: BTreeMap::new(),
                store_base: 0,
            });
        }
        let peer_names = nodes.iter().map(|n: &SimNode| n.name.clone()).collect();
        let links = topology_links(plan.topology, plan.nodes, &mut rng)
            .into_iter()
            .map(|(dialer, listener)| Link {
                dialer,
                listener,
                conn: None,
                attempt: 0,
                dialing: false,
            })
            .collect();
        Sim {
            plan,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            links,
            conns: BTreeMap::new(),
            next_conn: 0,
            blocked: BTreeMap::new(),
            faults_on: true,
            hasher: blake3::Hasher::new(),
            trace: trace.then(Vec::new),
            attempted: BTreeMap::new(),
            acked: BTreeMap::new(),
            recent_ids: Vec::new(),
            reading_counter: 0,
            in_flight: 0,
            report: Report::default(),
            done: false,
            peer_names,
        }
    }

    fn at(&mut self, delay_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay_ms, self.seq), ev);
    }

    fn log(&mut self, node: Option<usize>, what: std::fmt::Arguments<'_>) {
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

    fn violation(&mut self, what: String) {
        if self.report.violation.is_none() {
            self.log(None, format_args!("VIOLATION {what}"));
            self.report.violation = Some(what);
        }
        self.done = true;
    }

    fn node_now(&self, i: usize) -> u64 {
        (BASE_MS as i64 + self.now as i64 + self.nodes[i].skew_ms) as u64
    }

    /// A delay with the given mean. Uniform on integers: transcendental functions (an
    /// exponential draw needs `ln`) come from the platform's libm and could differ across
    /// machines, which would break bit-for-bit reproduction.
    fn next_delay(&mut self, mean_ms: u64) -> u64 {
        self.rng.random_range(1..=2 * mean_ms.max(1))
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        let n = self.nodes.len();
        for i in 0..n {
            self.restart(i);
            let d = self.rng.random_range(0..=self.plan.knobs.sync_interval_ms);
            self.at(d, Ev::Sync { node: i });
        }
        for l in 0..self.links.len() {
            self.links[l].dialing = true;
            let d = self.rng.random_range(0..=100);
            self.at(d, Ev::Dial { link: l });
        }
        let d = self.next_delay(self.plan.knobs.ingest_interval_ms);
        self.at(d, Ev::Ingest);
        let d = self.next_delay(self.plan.knobs.patch_interval_ms);
        self.at(d, Ev::Patch);
        self.schedule_faults();
        self.at(self.plan.duration_ms, Ev::EndFaults);
        let deadline = self.plan.duration_ms + LIVENESS_MS;
        while !self.done {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                self.violation("event queue ran dry before convergence".into());
                break;
            };
            self.now = t;
            if t > deadline {
                let why = self
                    .quiescence_blocker()
                    .unwrap_or_else(|| "unknown".into());
                self.dump_state();
                self.violation(format!(
                    "liveness: no convergence within {LIVENESS_MS} ms after faults stopped ({why})"
                ));
                break;
            }
            self.report.events += 1;
            self.handle(ev);
        }
        self.finish()
    }

    fn schedule_faults(&mut self) {
        let k = self.plan.knobs.clone();
        let n = self.nodes.len();
        let dur = self.plan.duration_ms;
        match self.plan.scenario {
            Scenario::Random => {
                for _ in 0..k.faults {
                    let t = self.rng.random_range(0..dur);
                    let hold = self.rng.random_range(1000..=dur.max(2000) / 2);
                    let ev = match self.rng.random_range(0..7u32) {
                        0 | 1 => {
                            let node = self.rng.random_range(0..n);
                            let pairs = isolate(node, n);
                            let burst = self.rng.random_bool(0.5);
                            if burst {
                                self.at(
                                    t + 10,
                                    Ev::Burst {
                                        node,
                                        left: BURST_READINGS,
                                        crash_at: None,
                                        shared: false,
                                    },
                                );
                            }
                            Ev::Block {
                                pairs,
                                hold_ms: hold,
                                what: format!("isolate {node}"),
                            }
                        }
                        2 => {
                            let mut side: Vec<bool> =
                                (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                            side[0] = true;
                            let pairs = split(&side);
                            Ev::Block {
                                pairs,
                                hold_ms: hold,
                                what: "split".into(),
                            }
                        }
                        3 => {
                            let a = self.rng.random_range(0..n);
                            let b = (a + self.rng.random_range(1..n)) % n;
                            Ev::Block {
                                pairs: vec![(a, b)],
                                hold_ms: hold,
                                what: format!("one-way {a}->{b}"),
                            }
                        }
                        4 if !self.links.is_empty() => {
                            let link = self.rng.random_range(0..self.links.len());
                            Ev::Flap {
                                link,
                                left: self.rng.random_range(4..=20),
                            }
                        }
                        5 => Ev::Crash {
                            node: self.rng.random_range(0..n),
                        },
                        _ => Ev::StoreFail {
                            node: self.rng.random_range(0..n),
                        },
                    };
                    self.at(t, ev);
                }
            }
            Scenario::SplitBrain => {
                let side: Vec<bool> = (0..n).map(|i| i < n.div_ceil(2)).collect();
                let pairs = split(&side);
                self.at(
                    dur / 5,
                    Ev::Block {
                        pairs,
                        hold_ms: dur / 2,
                        what: "split brain".into(),
                    },
                );
                self.at(
                    dur / 5 + 10,
                    Ev::Burst {
                        node: 0,
                        left: BURST_READINGS,
                        crash_at: None,
                        shared: false,
                    },
                );
                self.at(
                    dur / 5 + 10,
                    Ev::Burst {
                        node: n - 1,
                        left: BURST_READINGS,
                        crash_at: None,
                        shared: false,
                    },
                );
            }
            Scenario::CrashBurst => {
                let node = n - 1;
                self.at(
                    dur / 4,
                    Ev::Block {
                        pairs: isolate(node, n),
                        hold_ms: dur / 3,
                        what: format!("isolate {node}"),
                    },
                );
                self.at(
                    dur / 4 + 10,
                    Ev::Burst {
                        node,
                        left: BURST_READINGS,
                        crash_at: Some(BURST_READINGS / 2),
                        shared: false,
                    },
                );
            }
            Scenario::FlappingUplink => {
                let link = self
                    .links
                    .iter()
                    .position(|l| l.dialer == n - 1 || l.listener == n - 1)
                    .unwrap_or(0);
                self.at(dur / 10, Ev::Flap { link, left: 40 });
                self.at(
                    dur / 10 + 10,
                    Ev::Burst {
                        node: n - 1,
                        left: BURST_READINGS,
                        crash_at: None,
                        shared: false,
                    },
                );
            }
            Scenario::SameIds => {
                let (a, b) = (1, n - 1);
                self.at(
                    dur / 5,
                    Ev::Block {
                        pairs: isolate(a, n),
                        hold_ms: dur / 2,
                        what: format!("isolate {a}"),
                    },
                );
                self.at(
                    dur / 5,
                    Ev::Block {
                        pairs: isolate(b, n),
                        hold_ms: dur / 2,
                        what: format!("isolate {b}"),
                    },
                );
                self.at(
                    dur / 5 + 10,
                    Ev::Burst {
                        node: a,
                        left: BURST_READINGS,
                        crash_at: None,
                        shared: true,
                    },
                );
                self.at(
                    dur / 5 + 10,
                    Ev::Burst {
                        node: b,
                        left: BURST_READINGS,
                        crash_at: None,
                        shared: true,
                    },
                );
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Ingest => {
                let node = self.rng.random_range(0..self.nodes.len());
                self.ingest(node, false);
                if self.faults_on {
                    let d = self.next_delay(self.plan.knobs.ingest_interval_ms);
                    self.at(d, Ev::Ingest);
                }
            }
            Ev::Patch => {
                let node = self.rng.random_range(0..self.nodes.len());
                self.patch(node);
                if self.faults_on {
                    let d = self.next_delay(self.plan.knobs.patch_interval_ms);
                    self.at(d, Ev::Patch);
                }
            }
            Ev::Burst {
                node,
                left,
                crash_at,
                shared,
            } => {
                if shared {
                    self.shared_ingest(node, BURST_READINGS - left);
                } else {
                    self.ingest(node, true);
                }
                if crash_at == Some(left) {
                    // In the same millisecond as an ingest, before the next store sync.
                    self.crash(node);
                }
                if left > 1 && self.faults_on {
                    let d = self.rng.random_range(1..=40);
                    self.at(
                        d,
                        Ev::Burst {
                            node,
                            left: left - 1,
                            crash_at,
                            shared,
                        },
                    );
                }
            }
            Ev::Deliver { conn, to, frame } => {
                self.in_flight -= 1;
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (node, sid) = c.ends[to];
                let now = self.node_now(node);
                if let Some(n) = self.nodes[node].node.as_mut() {
                    n.handle_input(sid, &frame, now);
                    self.after_call(node);
                }
            }
            Ev::ConnDrop { conn } => self.drop_conn(conn, "transport closed"),
            Ev::Sync { node } => {
                self.sync(node);
                let d = self
                    .rng
                    .random_range(1..=self.plan.knobs.sync_interval_ms.max(1) * 2);
                self.at(d, Ev::Sync { node });
            }
            Ev::Timer { node } => {
                if self.nodes[node].timer_at == Some(self.now) {
                    self.nodes[node].timer_at = None;
                    let now = self.node_now(node);
                    if let Some(n) = self.nodes[node].node.as_mut() {
                        n.handle_timeout(now);
                        self.after_call(node);
                    }
                }
            }
            Ev::Dial { link } => self.dial(link),
            Ev::Crash { node } => {
                if self.faults_on || self.plan.scenario != Scenario::Random {
                    self.crash(node)
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::StoreFail { node } => {
                if self.faults_on && self.nodes[node].node.is_some() {
                    self.log(Some(node), format_args!("store will fail its next write"));
                    self.nodes[node]
                        .node
                        .as_mut()
                        .expect("up")
                        .store_mut()
                        .fail_next_commits(1);
                }
            }
            Ev::Block {
                pairs,
                hold_ms,
                what,
            } => {
                if !self.faults_on {
                    return;
                }
                self.report.partitions += 1;
                self.log(None, format_args!("partition {what} for {hold_ms} ms"));
                for p in &pairs {
                    *self.blocked.entry(*p).or_default() += 1;
                }
                self.schedule_idle_checks();
                self.at(hold_ms, Ev::Unblock { pairs });
            }
            Ev::Unblock { pairs } => {
                for p in pairs {
                    if let Some(c) = self.blocked.get_mut(&p) {
                        *c -= 1;
                        if *c == 0 {
                            self.blocked.remove(&p);
                        }
                    }
                }
                self.log(
                    None,
                    format_args!("heal ({} pairs still blocked)", self.blocked.len()),
                );
            }
            Ev::Flap { link, left } => {
                if !self.faults_on || left == 0 {
                    return;
                }
                let (a, b) = (self.links[link].dialer, self.links[link].listener);
                let hold = self.rng.random_range(200..=3000);
                self.report.partitions += 1;
                self.log(None, format_args!("flap {a}<->{b} down for {hold} ms"));
                let pairs = vec![(a, b), (b, a)];
                for p in &pairs {
                    *self.blocked.entry(*p).or_default() += 1;
                }
                self.schedule_idle_checks();
                self.at(hold, Ev::Unblock { pairs });
                let up = self.rng.random_range(200..=3000);
                self.at(
                    hold + up,
                    Ev::Flap {
                        link,
                        left: left - 1,
                    },
                );
            }
            Ev::IdleCheck { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (a, b) = (c.ends[0].0, c.ends[1].0);
                if self.is_blocked(a, b) || self.is_blocked(b, a) {
                    self.drop_conn(conn, "idle timeout");
                }
            }
            Ev::EndFaults => {
                self.faults_on = false;
                self.blocked.clear();
                self.log(None, format_args!("faults end; network healed"));
                self.at(QUIESCENCE_CHECK_MS, Ev::CheckQuiescence);
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

    fn is_blocked(&self, a: usize, b: usize) -> bool {
        self.blocked.contains_key(&(a, b))
    }

    fn schedule_idle_checks(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        let idle = self.plan.knobs.idle_timeout_ms;
        for conn in ids {
            self.at(idle, Ev::IdleCheck { conn });
        }
    }

    /// Drains a node's events and frames after any call into it.
    fn after_call(&mut self, i: usize) {
        let mut events = Vec::new();
        let mut frames = Vec::new();
        let mut poisoned = false;
        let mut timeout = None;
        let sn = &mut self.nodes[i];
        if let Some(n) = sn.node.as_mut() {
            while let Some(e) = n.poll_event() {
                events.push(e);
            }
            for (sid, conn) in &sn.sessions {
                while let Some(f) = n.poll_transmit(*sid) {
                    frames.push((*conn, f));
                }
            }
            poisoned = n.is_poisoned();
            timeout = n.poll_timeout();
        }
        for (conn, frame) in frames {
            self.send(conn, i, frame);
        }
        for e in events {
            if let Event::SessionClosed {
                session,
                code,
                reason,
                by_peer,
                ..
            } = e
            {
                self.log(
                    Some(i),
                    format_args!("session closed code={code:?} by_peer={by_peer} {reason}"),
                );
                if let Some(conn) = self.nodes[i].sessions.get(&session).copied() {
                    let lat = self.plan.knobs.latency_ms + 1;
                    self.at(lat, Ev::ConnDrop { conn });
                }
            }
        }
        if poisoned {
            self.log(
                Some(i),
                format_args!("store write failed: node poisoned, supervisor restarts it"),
            );
            self.crash(i);
            return;
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

    fn send(&mut self, conn: u64, from_node: usize, frame: Vec<u8>) {
        // An Ack promises the peer that its clocks are durable here: audit that promise.
        if frame.get(4) == Some(&ACK_TAG) {
            if let Ok(Message::Ack(ack)) = Message::from_payload(&frame[4..]) {
                let sn = &self.nodes[from_node];
                let store = sn.node.as_ref().expect("a sending node is up").store();
                let empty = VectorClock::new();
                if let Some(e) = ack
                    .clocks
                    .iter()
                    .find(|e| !e.clock.le(store.durable_clock(&e.doc).unwrap_or(&empty)))
                {
                    let v = format!(
                        "durability: {} acknowledged {} of {} before it was durable",
                        sn.name,
                        e.clock.total(),
                        e.doc
                    );
                    self.violation(v);
                }
            }
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let from = if c.ends[0].0 == from_node { 0 } else { 1 };
        let to = 1 - from;
        let (a, b) = (c.ends[from].0, c.ends[to].0);
        self.report.frames_sent += 1;
        let k = &self.plan.knobs;
        let (loss, dup, reorder) = if self.faults_on {
            (k.loss, k.dup, k.reorder)
        } else {
            (0.0, 0.0, 0.0)
        };
        if self.is_blocked(a, b) || (loss > 0.0 && self.rng.random_bool(loss)) {
            self.report.frames_dropped += 1;
            return;
        }
        let jitter = self.rng.random_range(0..=k.jitter_ms);
        let mut t = self.now + k.latency_ms + jitter;
        let reordered = reorder > 0.0 && self.rng.random_bool(reorder);
        let c = self.conns.get_mut(&conn).expect("exists");
        if !reordered {
            t = t.max(c.last_at[to]);
            c.last_at[to] = t;
        }
        let copies = if dup > 0.0 && self.rng.random_bool(dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.in_flight += 1;
            self.at(
                t - self.now,
                Ev::Deliver {
                    conn,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    fn dial(&mut self, link: usize) {
        let l = &self.links[link];
        let (a, b) = (l.dialer, l.listener);
        if l.conn.is_some() {
            self.links[link].dialing = false;
            return;
        }
        let up = self.nodes[a].node.is_some() && self.nodes[b].node.is_some();
        if !up || self.is_blocked(a, b) || self.is_blocked(b, a) {
            let l = &mut self.links[link];
            l.attempt += 1;
            let k = &self.plan.knobs;
            let ceiling = k
                .backoff_cap_ms
                .min(k.backoff_base_ms.saturating_mul(1 << l.attempt.min(20)));
            let d = self.rng.random_range(1..=ceiling.max(1));
            self.at(d, Ev::Dial { link });
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let (na, nb) = (self.nodes[a].name.clone(), self.nodes[b].name.clone());
        let (ta, tb) = (self.node_now(a), self.node_now(b));
        let sa = self.nodes[a].node.as_mut().expect("up").connect(nb, ta);
        let sb = self.nodes[b].node.as_mut().expect("up").connect(na, tb);
        self.nodes[a].sessions.insert(sa, conn);
        self.nodes[b].sessions.insert(sb, conn);
        self.conns.insert(
            conn,
            Conn {
                link,
                ends: [(a, sa), (b, sb)],
                last_at: [0, 0],
            },
        );
        let l = &mut self.links[link];
        l.conn = Some(conn);
        l.attempt = 0;
        l.dialing = false;
        self.report.sessions += 1;
        self.log(Some(a), format_args!("connected to {b} (conn {conn})"));
        self.after_call(a);
        self.after_call(b);
    }

    fn drop_conn(&mut self, conn: u64, why: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.log(
            None,
            format_args!(
                "conn {conn} {}<->{} dropped: {why}",
                c.ends[0].0, c.ends[1].0
            ),
        );
        for (node, sid) in c.ends {
            self.nodes[node].sessions.remove(&sid);
            if let Some(n) = self.nodes[node].node.as_mut() {
                n.disconnect(sid);
                self.after_call(node);
            }
        }
        let l = &mut self.links[c.link];
        l.conn = None;
        if !l.dialing {
            l.dialing = true;
            l.attempt += 1;
            let k = &self.plan.knobs;
            let ceiling = k
                .backoff_cap_ms
                .min(k.backoff_base_ms.saturating_mul(1 << l.attempt.min(20)));
            let d = self.rng.random_range(1..=ceiling.max(1));
            self.at(d, Ev::Dial { link: c.link });
        }
    }

    fn sync(&mut self, i: usize) {
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        let seq = n.commit_seq();
        n.store_mut().sync();
        n.handle_durable(seq);
        let durable = n.durable_seq();
        // Clocks and receipts at a durable point never go backwards, crashes included.
        let sn = &mut self.nodes[i];
        let n = sn.node.as_ref().expect("up");
        let mut regress = None;
        for (doc, clock) in n.docs() {
            match sn.durable_clocks.get_mut(doc) {
                Some(prev) if prev == clock => {}
                Some(prev) => {
                    if !VectorClock::le(prev, clock) {
                        regress = Some(format!(
                            "clock of {doc} went backwards: {prev:?} -> {clock:?}"
                        ));
                    }
                    *prev = clock.clone();
                }
                None => {
                    sn.durable_clocks.insert(doc.clone(), clock.clone());
                }
            }
        }
        for peer in &self.peer_names {
            let Some(r) = n.receipts(peer) else { continue };
            for (doc, clock) in &r.clocks {
                let key = (peer.clone(), doc.clone());
                match sn.durable_receipts.get_mut(&key) {
                    Some(prev) if prev == clock => {}
                    Some(prev) => {
                        // Sim stores are never replaced, so receipts are never reset.
                        if !VectorClock::le(prev, clock) {
                            regress = Some(format!("receipt of {peer} for {doc} went backwards"));
                        }
                        *prev = clock.clone();
                    }
                    None => {
                        sn.durable_receipts.insert(key, clock.clone());
                    }
                }
            }
        }
        let acked: Vec<_> = {
            let node = &mut self.nodes[i];
            let (done, wait) = node.unacked.drain(..).partition(|(at, ..)| *at <= durable);
            node.unacked = wait;
            done
        };
        let newest = acked.iter().map(|(at, ..)| *at).max().unwrap_or(0);
        self.acknowledge(i, acked, newest);
        self.after_call(i);
        if let Some(r) = regress {
            self.violation(format!("node {}: {r}", self.nodes[i].name));
        }
    }

    fn crash(&mut self, i: usize) {
        let Some(n) = self.nodes[i].node.take() else {
            return;
        };
        self.report.crashes += 1;
        self.log(
            Some(i),
            format_args!(
                "crash: {} unsynced commits lost",
                n.commit_seq() - n.durable_seq()
            ),
        );
        let mut store = n.into_store();
        store.crash();
        self.nodes[i].store = Some(store);
        self.nodes[i].timer_at = None;
        // Ingests not yet durable were never acknowledged: their clients saw no answer.
        self.nodes[i].unacked.clear();
        let conns: Vec<u64> = self.nodes[i].sessions.values().copied().collect();
        self.nodes[i].sessions.clear();
        for conn in conns {
            // The peer notices at its next packet (a stateless reset): one latency later.
            let lat = self.plan.knobs.latency_ms;
            self.at(lat, Ev::ConnDrop { conn });
        }
        let d = self.rng.random_range(100..=5000);
        self.at(d, Ev::Restart { node: i });
    }

    fn restart(&mut self, i: usize) {
        let Some(store) = self.nodes[i].store.take() else {
            return;
        };
        let boot = Boot {
            nonce: self.rng.random(),
            new_store_id: self.rng.random(),
        };
        match Node::open(store, self.nodes[i].cfg.clone(), boot) {
            Ok(mut n) => {
                self.nodes[i].store_base = n.store().commits() - n.commit_seq();
                // The open wrote the new incarnation; it is durable before the node serves.
                let seq = n.commit_seq();
                n.store_mut().sync();
                n.handle_durable(seq);
                self.log(
                    Some(i),
                    format_args!(
                        "start incarnation {} actor {}",
                        n.meta().incarnation,
                        n.actor()
                    ),
                );
                self.nodes[i].node = Some(n);
                let regress = self.nodes[i].durable_clocks.iter().find_map(|(doc, prev)| {
                    let now = self.nodes[i].node.as_ref().expect("up").clock(doc);
                    (!now.is_some_and(|c| prev.le(c))).then(|| doc.clone())
                });
                if let Some(doc) = regress {
                    self.violation(format!(
                        "node {}: durable clock of {doc} lost in a crash",
                        self.nodes[i].name
                    ));
                }
            }
            Err(e) => self.violation(format!("node {} failed to reopen: {e}", self.nodes[i].name)),
        }
    }

    fn record_ingest(
        &mut self,
        i: usize,
        doc: &DocId,
        readings: &[Reading],
        outcomes: &[IngestOutcome],
        durable_at: u64,
    ) {
        for (r, o) in readings.iter().zip(outcomes) {
            if *o != IngestOutcome::Conflict {
                self.nodes[i]
                    .unacked
                    .push((durable_at, doc.clone(), r.id.clone(), r.encode()));
            }
        }
        let durable = self.nodes[i]
            .node
            .as_ref()
            .map(|n| n.durable_seq())
            .unwrap_or(0);
        let (done, wait): (Vec<_>, Vec<_>) = self.nodes[i]
            .unacked
            .drain(..)
            .partition(|(at, ..)| *at <= durable);
        self.nodes[i].unacked = wait;
        self.acknowledge(i, done, durable_at);
    }

    /// Answers clients: these ingests are acknowledged. Audits that what is acknowledged is
    /// in the store's durable state at this moment, whether or not a crash ever tests it.
    fn acknowledge(&mut self, i: usize, done: Vec<(u64, DocId, String, String)>, durable_at: u64) {
        if done.is_empty() {
            return;
        }
        let sn = &self.nodes[i];
        let durable_commits = sn
            .node
            .as_ref()
            .map(|n| n.store().durable_commits())
            .unwrap_or(0);
        if sn.store_base + durable_at > durable_commits {
            let (_, doc, id, _) = &done[0];
            let v = format!(
                "durability: {} acknowledged reading {id} in {doc} before it was durable",
                sn.name
            );
            self.violation(v);
        }
        for (_, doc, id, body) in done {
            self.acked.entry((doc, id)).or_default().insert(body);
        }
    }

    fn do_ingest(&mut self, i: usize, doc: DocId, readings: Vec<Reading>) {
        for r in &readings {
            self.attempted
                .entry((doc.clone(), r.id.clone()))
                .or_default()
                .insert(r.encode());
        }
        let now = self.node_now(i);
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        match n.ingest(&doc, &readings, now) {
            Ok(out) => {
                self.log(
                    Some(i),
                    format_args!("ingest {} readings into {doc}", readings.len()),
                );
                self.record_ingest(i, &doc, &readings, &out.outcomes, out.durable_at);
            }
            Err(e) => self.log(Some(i), format_args!("ingest into {doc} refused: {e}")),
        }
        self.after_call(i);
    }

    fn ingest(&mut self, i: usize, burst: bool) {
        if self.nodes[i].node.is_none() {
            return;
        }
        let doc = sensor_doc(self.rng.random_range(0..SENSOR_DOCS));
        let count = if burst {
            1
        } else {
            self.rng.random_range(1..=3)
        };
        let ts = self.node_now(i) as i64;
        let mut readings = Vec::new();
        for _ in 0..count {
            // Now and then the same reading reaches a second gateway (same id, same content).
            if !burst && !self.recent_ids.is_empty() && self.rng.random_bool(0.1) {
                let (d, id, body) =
                    self.recent_ids[self.rng.random_range(0..self.recent_ids.len())].clone();
                if d == doc {
                    readings
                        .push(Reading::decode(&id, &body).expect("recorded readings are valid"));
                    continue;
                }
            }
            self.reading_counter += 1;
            let id = format!("r{}", self.reading_counter);
            let v: i64 = self.rng.random_range(-40..=60);
            let f: f64 = self.rng.random_range(0.0..100.0);
            let r = Reading::from_json(
                id,
                ts,
                &json!({"temp": v, "hum": (f * 10.0).round() / 10.0, "ok": v > 0}),
            )
            .expect("generated readings are valid");
            if self.recent_ids.len() < 64 {
                self.recent_ids
                    .push((doc.clone(), r.id.clone(), r.encode()));
            } else {
                let slot = self.rng.random_range(0..64);
                self.recent_ids[slot] = (doc.clone(), r.id.clone(), r.encode());
            }
            readings.push(r);
        }
        self.do_ingest(i, doc, readings);
    }

    fn shared_ingest(&mut self, i: usize, k: u32) {
        // Both gateways of the same-ids scenario produce reading k identically.
        let doc = sensor_doc(0);
        let r = Reading::from_json(
            format!("shared-{k}"),
            BASE_MS as i64 + i64::from(k),
            &json!({"k": k}),
        )
        .expect("valid");
        self.do_ingest(i, doc, vec![r]);
    }

    fn patch(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        let doc = generic_doc(self.rng.random_range(0..GENERIC_DOCS));
        let key = format!("k{}", self.rng.random_range(0..4));
        let v: i64 = self.rng.random_range(0..1000);
        let patch = match self.rng.random_range(0..4) {
            0 => json!({ key: null }),
            1 => json!({ "shared": { format!("n{i}"): v, "last": v } }),
            2 => json!({ key: [v, "x"] }),
            _ => json!({ key: v }),
        };
        let now = self.node_now(i);
        let n = self.nodes[i].node.as_mut().expect("up");
        match n.patch(&doc, &patch, now) {
            Ok(_) => {
                self.report.patches += 1;
                self.log(Some(i), format_args!("patch {doc}"));
            }
            Err(e) => self.log(Some(i), format_args!("patch of {doc} refused: {e}")),
        }
        self.after_call(i);
    }

    /// Logs every node's sessions, buffers and clocks (for liveness failures).
    fn dump_state(&mut self) {
        let mut lines = Vec::new();
        for (i, sn) in self.nodes.iter().enumerate() {
            let Some(n) = &sn.node else {
                lines.push(format!("node {i} down"));
                continue;
            };
            lines.push(format!(
                "node {i} {} commit={} durable={} pending={} idle={}",
                sn.name,
                n.commit_seq(),
                n.durable_seq(),
                n.pending_changes(),
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

    /// Why the fleet is not yet quiescent, or `None` when it is.
    fn quiescence_blocker(&self) -> Option<String> {
        if self.faults_on {
            return Some("faults still running".into());
        }
        if self.in_flight > 0 {
            return Some(format!("{} frames in flight", self.in_flight));
        }
        for (i, sn) in self.nodes.iter().enumerate() {
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
                return Some(format!(
                    "node {i} holds {} changes waiting for dependencies",
                    n.pending_changes()
                ));
            }
            if n.sessions().iter().any(|s| !s.live) {
                return Some(format!("node {i} has a session still in handshake"));
            }
        }
        for l in &self.links {
            if l.conn.is_none() {
                return Some(format!("link {}->{} not connected", l.dialer, l.listener));
            }
        }
        // A connection whose session just ended (say, on an acknowledgement timeout) is about
        // to be dropped and redialled: not quiet yet.
        for (i, sn) in self.nodes.iter().enumerate() {
            let links = self
                .links
                .iter()
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

    fn finish(mut self) -> Report {
        if self.report.violation.is_none() {
            if let Err(v) = self.check_final() {
                self.violation(v);
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
        self.report.acked_readings = self.acked.len();
        self.report.trace = self.trace.take().unwrap_or_default();
        self.report
    }

    /// Convergence, clock consistency and durability, after quiescence.
    fn check_final(&mut self) -> Result<(), String> {
        let mut reference: Option<(String, DocStates)> = None;
        for sn in &mut self.nodes {
            let name = sn.name.to_string();
            let n = sn
                .node
                .as_mut()
                .ok_or_else(|| format!("node {name} is down at the end"))?;
            let docs: Vec<DocId> = n.docs().map(|(d, _)| d.clone()).collect();
            let mut state = BTreeMap::new();
            for d in docs {
                let heads = n
                    .heads(&d)
                    .map_err(|e| format!("{name}: {e}"))?
                    .unwrap_or_default();
                let body = n
                    .json(&d, true)
                    .map_err(|e| format!("{name}: {e}"))?
                    .unwrap_or_default()
                    .to_string();
                let clock = n.clock(&d).cloned().unwrap_or_default();
                // The clock must describe exactly the changes the document holds.
                let actual: VectorClock = n
                    .with_doc(&d, |am| {
                        am.get_changes(&[])
                            .iter()
                            .filter_map(|c| {
                                edgesync_proto::Actor::from_automerge(c.actor_id())
                                    .map(|a| (a, c.seq()))
                            })
                            .collect()
                    })
                    .map_err(|e| format!("{name}: {e}"))?
                    .unwrap_or_default();
                if actual != clock {
                    return Err(format!(
                        "{name}: clock of {d} is {clock:?} but the document holds {actual:?}"
                    ));
                }
                state.insert(d, (heads.into_iter().map(|h| h.0).collect(), body, clock));
            }
            match &reference {
                None => reference = Some((name, state)),
                Some((rname, rstate)) => {
                    if rstate.keys().ne(state.keys()) {
                        return Err(format!(
                            "convergence: {name} and {rname} hold different documents"
                        ));
                    }
                    for (d, v) in &state {
                        if &rstate[d] != v {
                            return Err(format!(
                                "convergence: {d} differs between {name} and {rname}: {:?} vs {:?}",
                                v.2, rstate[d].2
                            ));
                        }
                    }
                }
            }
        }
        // Durability: every acknowledged reading everywhere, once, with an acknowledged body;
        // no reading that was never ingested.
        for sn in &mut self.nodes {
            let name = sn.name.to_string();
            let n = sn.node.as_mut().expect("checked above");
            let mut views = BTreeMap::new();
            for i in 0..SENSOR_DOCS {
                let doc = sensor_doc(i);
                if let Some(view) = n.sensor_view(&doc).map_err(|e| format!("{name}: {e}"))? {
                    if !view.invalid.is_empty() {
                        return Err(format!(
                            "{name}: {doc} holds unparseable readings {:?}",
                            view.invalid
                        ));
                    }
                    for id in view.readings.keys() {
                        if !self.attempted.contains_key(&(doc.clone(), id.clone())) {
                            return Err(format!(
                                "{name}: {doc} holds reading {id} that was never ingested"
                            ));
                        }
                    }
                    views.insert(doc, view);
                }
            }
            for ((doc, id), bodies) in &self.acked {
                let Some(r) = views.get(doc).and_then(|v| v.readings.get(id)) else {
                    return Err(format!(
                        "durability: acknowledged reading {id} in {doc} missing on {name}"
                    ));
                };
                let body = r.encode();
                let attempted = &self.attempted[&(doc.clone(), id.clone())];
                if !attempted.contains(&body) || (attempted.len() == 1 && !bodies.contains(&body)) {
                    return Err(format!(
                        "durability: reading {id} in {doc} on {name} has a body never acknowledged"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Per document: heads, JSON (with conflicts) and clock, as one node holds them.
type DocStates = BTreeMap<DocId, (Vec<[u8; 32]>, String, VectorClock)>;

fn isolate(node: usize, n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .filter(|&j| j != node)
        .flat_map(|j| [(node, j), (j, node)])
        .collect()
}

fn split(side: &[bool]) -> Vec<(usize, usize)> {
    let n = side.len();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in 0..n {
            if side[a] != side[b] {
                pairs.push((a, b));
            }
        }
    }
    pairs
}

/// Links as (dialer, listener). Node 0 is the cloud.
fn topology_links(t: Topology, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<(usize, usize)> {
    match t {
        Topology::Star => (1..n).map(|i| (i, 0)).collect(),
        Topology::Mesh => (1..n).flat_map(|i| (0..i).map(move |j| (i, j))).collect(),
        Topology::Chain => (1..n).map(|i| (i, i - 1)).collect(),
        Topology::Random => {
            let mut links: BTreeSet<(usize, usize)> =
                (1..n).map(|i| (i, rng.random_range(0..i))).collect();
            for _ in 0..rng.random_range(0..n) {
                let a = rng.random_range(1..n);
                let b = rng.random_range(0..a);
                links.insert((a, b));
            }
            links.into_iter().collect()
        }
    }
}
