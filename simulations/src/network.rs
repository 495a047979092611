//! The simulated network: links between nodes (each with the core's real [`Dialer`]),
//! connections carrying frames with latency, jitter, loss, duplication and reordering, and
//! partitions that block directions between pairs of nodes.

use std::collections::{BTreeMap, BTreeSet};

use edgesync_proto::{Dialer, RetryPolicy, SessionId};
use rand::RngExt;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::plan::{Plan, Topology};
use crate::sim::{Ev, Sim};

/// A configured link: `dialer` dials `listener`, reconnecting by the real policy.
pub(crate) struct Link {
    pub(crate) dialer: usize,
    pub(crate) listener: usize,
    pub(crate) conn: Option<u64>,
    pub(crate) dial: Dialer,
}

/// An established connection and the session at each end.
pub(crate) struct Conn {
    pub(crate) link: usize,
    /// (node, session) at each end: [dialer, listener].
    pub(crate) ends: [(usize, SessionId); 2],
    /// Latest scheduled delivery per direction (index = receiving end), for FIFO order.
    last_at: [u64; 2],
}

/// Links, connections and partitions.
pub(crate) struct Network {
    pub(crate) links: Vec<Link>,
    pub(crate) conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Blocked directions (from, to), with how many partitions block each.
    pub(crate) blocked: BTreeMap<(usize, usize), u32>,
    /// Frames scheduled and not yet delivered.
    pub(crate) in_flight: u64,
    /// Nodes cut off for good (hostile nodes once the faults stop); no partition's end
    /// reconnects them.
    pub(crate) cut: BTreeSet<usize>,
    /// Author frames sent per (connection, sender): a hostile node numbers the statements it
    /// slips into a session after those its own core sent.
    author_frames: BTreeMap<(u64, usize), u32>,
}

impl Network {
    /// Author frames `from` sent on `conn` so far.
    pub(crate) fn authors_sent(&self, conn: u64, from: usize) -> u32 {
        self.author_frames.get(&(conn, from)).copied().unwrap_or(0)
    }

    pub(crate) fn new(plan: &Plan, rng: &mut Xoshiro256PlusPlus) -> Network {
        let k = &plan.knobs;
        let policy = RetryPolicy {
            base_ms: k.backoff_base_ms,
            cap_ms: k.backoff_cap_ms,
            breaker_failures: k.breaker_failures,
        };
        let links = topology_links(plan.topology, plan.nodes, rng)
            .into_iter()
            .map(|(dialer, listener)| Link {
                dialer,
                listener,
                conn: None,
                dial: Dialer::new(policy.clone()),
            })
            .collect();
        Network {
            links,
            conns: BTreeMap::new(),
            next_conn: 0,
            blocked: BTreeMap::new(),
            in_flight: 0,
            cut: BTreeSet::new(),
            author_frames: BTreeMap::new(),
        }
    }

    pub(crate) fn is_blocked(&self, a: usize, b: usize) -> bool {
        self.blocked.contains_key(&(a, b)) || self.cut.contains(&a) || self.cut.contains(&b)
    }

    /// Blocks every direction in `pairs` (partitions nest: each must be unblocked).
    pub(crate) fn block(&mut self, pairs: &[(usize, usize)]) {
        for p in pairs {
            *self.blocked.entry(*p).or_default() += 1;
        }
    }

    pub(crate) fn unblock(&mut self, pairs: &[(usize, usize)]) {
        for p in pairs {
            if let Some(c) = self.blocked.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.blocked.remove(p);
                }
            }
        }
    }
}

impl Sim {
    /// Puts a frame from `from_node` on connection `conn`, subject to partitions and the
    /// network's faults.
    pub(crate) fn send(&mut self, conn: u64, from_node: usize, frame: Vec<u8>) {
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        let from = if c.ends[0].0 == from_node { 0 } else { 1 };
        let to = 1 - from;
        let (a, b) = (c.ends[from].0, c.ends[to].0);
        self.report.frames_sent += 1;
        // Variant 5 of the message enum, right after the length prefix: an Author frame.
        if frame.get(4) == Some(&5) {
            *self.net.author_frames.entry((conn, from_node)).or_default() += 1;
        }
        let k = &self.plan.knobs;
        let (loss, dup, reorder) = if self.faults_on {
            (k.loss, k.dup, k.reorder)
        } else {
            (0.0, 0.0, 0.0)
        };
        if self.net.is_blocked(a, b) || (loss > 0.0 && self.rng.random_bool(loss)) {
            self.report.frames_dropped += 1;
            return;
        }
        let jitter = self.rng.random_range(0..=k.jitter_ms);
        let mut t = self.now + k.latency_ms + jitter;
        let reordered = reorder > 0.0 && self.rng.random_bool(reorder);
        let c = self.net.conns.get_mut(&conn).expect("exists");
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
            self.net.in_flight += 1;
            let frame = frame.clone();
            self.at(t - self.now, Ev::Deliver { conn, to, frame });
        }
    }

    /// A frame arrives at end `to` of `conn` (if the connection still exists).
    pub(crate) fn deliver(&mut self, conn: u64, to: usize, frame: &[u8]) {
        self.net.in_flight -= 1;
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        let (node, sid) = c.ends[to];
        if self.is_deaf(node) {
            return;
        }
        let now = self.node_now(node);
        if let Some(n) = self.nodes[node].node.as_mut() {
            n.handle_input(sid, frame, now);
            self.after_call(node);
        }
    }

    /// A dial attempt on `link`, when its dialer says one is due.
    pub(crate) fn dial(&mut self, link: usize) {
        let l = &mut self.net.links[link];
        if l.conn.is_some() || !l.dial.poll_dial(self.now) {
            return;
        }
        let (a, b) = (l.dialer, l.listener);
        let up = self.nodes[a].node.is_some() && self.nodes[b].node.is_some();
        if !up || self.net.is_blocked(a, b) || self.net.is_blocked(b, a) {
            let random = self.rng.random();
            let delay = self.net.links[link].dial.handle_failed(self.now, random);
            self.at(delay, Ev::Dial { link });
            return;
        }
        let conn = self.net.next_conn;
        self.net.next_conn += 1;
        let (na, nb) = (
            self.nodes[a].identity.clone(),
            self.nodes[b].identity.clone(),
        );
        let (ta, tb) = (self.node_now(a), self.node_now(b));
        let sa = self.nodes[a].node.as_mut().expect("up").connect(nb, ta);
        let sb = self.nodes[b].node.as_mut().expect("up").connect(na, tb);
        self.nodes[a].sessions.insert(sa, conn);
        self.nodes[b].sessions.insert(sb, conn);
        let ends = [(a, sa), (b, sb)];
        let last_at = [0, 0];
        self.net.conns.insert(
            conn,
            Conn {
                link,
                ends,
                last_at,
            },
        );
        let l = &mut self.net.links[link];
        l.conn = Some(conn);
        l.dial.handle_connected();
        self.report.sessions += 1;
        self.log(Some(a), format_args!("connected to {b} (conn {conn})"));
        self.after_call(a);
        self.after_call(b);
    }

    /// The transport of `conn` is gone at both ends; its link redials by the policy.
    pub(crate) fn drop_conn(&mut self, conn: u64, why: &str) {
        let Some(c) = self.net.conns.remove(&conn) else {
            return;
        };
        let (a, b) = (c.ends[0].0, c.ends[1].0);
        self.log(None, format_args!("conn {conn} {a}<->{b} dropped: {why}"));
        for (node, sid) in c.ends {
            self.nodes[node].sessions.remove(&sid);
            if let Some(n) = self.nodes[node].node.as_mut() {
                n.disconnect(sid);
                self.after_call(node);
            }
        }
        self.net.links[c.link].conn = None;
        let random = self.rng.random();
        let delay = self.net.links[c.link]
            .dial
            .handle_link_down(self.now, random);
        self.at(delay, Ev::Dial { link: c.link });
    }

    /// A partition began: every connection is checked for idleness one idle timeout later.
    pub(crate) fn schedule_idle_checks(&mut self) {
        let ids: Vec<u64> = self.net.conns.keys().copied().collect();
        let idle = self.plan.knobs.idle_timeout_ms;
        for conn in ids {
            self.at(idle, Ev::IdleCheck { conn });
        }
    }

    /// A connection blocked in either direction for an idle timeout is dropped by its ends.
    pub(crate) fn idle_check(&mut self, conn: u64) {
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        let (a, b) = (c.ends[0].0, c.ends[1].0);
        if self.net.is_blocked(a, b) || self.net.is_blocked(b, a) {
            self.drop_conn(conn, "idle timeout");
        }
    }
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
