//! Fault injection: partitions (symmetric, asymmetric, flapping), crashes that lose what is not
//! durable, failing store writes, and the named scenarios' fault scripts.

use edgesync_proto::{Boot, Node};
use rand::RngExt;

use crate::plan::Scenario;
use crate::plan::BURST_READINGS;
use crate::sim::{Ev, Sim};
use crate::workload::Burst;

/// A partition: the directions it blocks, for how long, and what to call it in the log.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) pairs: Vec<(usize, usize)>,
    pub(crate) hold_ms: u64,
    pub(crate) what: String,
}

/// Every direction between `node` and the others.
pub(crate) fn isolate(node: usize, n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .filter(|&j| j != node)
        .flat_map(|j| [(node, j), (j, node)])
        .collect()
}

/// Every direction between the two sides.
pub(crate) fn split(side: &[bool]) -> Vec<(usize, usize)> {
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

impl Sim {
    /// Schedules the run's faults: drawn from the seed, or the scenario's script.
    pub(crate) fn schedule_faults(&mut self) {
        let n = self.nodes.len();
        let dur = self.plan.duration_ms;
        match self.plan.scenario {
            Scenario::Random => {
                for _ in 0..self.plan.knobs.faults {
                    let t = self.rng.random_range(0..dur);
                    let ev = self.random_fault(t);
                    self.at(t, ev);
                }
            }
            Scenario::SplitBrain => {
                let side: Vec<bool> = (0..n).map(|i| i < n.div_ceil(2)).collect();
                let p = partition(split(&side), dur / 2, "split brain".into());
                self.at(dur / 5, Ev::Block(p));
                self.at(dur / 5 + 10, Ev::Burst(Burst::new(0, None, false)));
                self.at(dur / 5 + 10, Ev::Burst(Burst::new(n - 1, None, false)));
            }
            Scenario::CrashBurst => {
                let node = n - 1;
                let p = partition(isolate(node, n), dur / 3, format!("isolate {node}"));
                self.at(dur / 4, Ev::Block(p));
                let crash_at = Some(BURST_READINGS / 2);
                self.at(dur / 4 + 10, Ev::Burst(Burst::new(node, crash_at, false)));
            }
            Scenario::FlappingUplink => {
                let link = self
                    .net
                    .links
                    .iter()
                    .position(|l| l.dialer == n - 1 || l.listener == n - 1)
                    .unwrap_or(0);
                self.at(dur / 10, Ev::Flap { link, left: 40 });
                self.at(dur / 10 + 10, Ev::Burst(Burst::new(n - 1, None, false)));
            }
            Scenario::SameIds => {
                for node in [1, n - 1] {
                    let p = partition(isolate(node, n), dur / 2, format!("isolate {node}"));
                    self.at(dur / 5, Ev::Block(p));
                }
                for node in [1, n - 1] {
                    self.at(dur / 5 + 10, Ev::Burst(Burst::new(node, None, true)));
                }
            }
        }
    }

    /// One fault drawn from the seed, at simulated time `t`.
    fn random_fault(&mut self, t: u64) -> Ev {
        let n = self.nodes.len();
        let dur = self.plan.duration_ms;
        let hold = self.rng.random_range(1000..=dur.max(2000) / 2);
        match self.rng.random_range(0..7u32) {
            0 | 1 => {
                let node = self.rng.random_range(0..n);
                if self.rng.random_bool(0.5) {
                    let len = self.plan.knobs.burst_readings;
                    self.at(t + 10, Ev::Burst(Burst::of(node, len)));
                }
                Ev::Block(partition(isolate(node, n), hold, format!("isolate {node}")))
            }
            2 => {
                let mut side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                side[0] = true;
                Ev::Block(partition(split(&side), hold, "split".into()))
            }
            3 => {
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                Ev::Block(partition(vec![(a, b)], hold, format!("one-way {a}->{b}")))
            }
            4 if !self.net.links.is_empty() => {
                let link = self.rng.random_range(0..self.net.links.len());
                let left = self.rng.random_range(4..=20);
                Ev::Flap { link, left }
            }
            5 => Ev::Crash {
                node: self.rng.random_range(0..n),
            },
            _ => Ev::StoreFail {
                node: self.rng.random_range(0..n),
            },
        }
    }

    pub(crate) fn block(&mut self, p: Partition) {
        if !self.faults_on {
            return;
        }
        self.report.partitions += 1;
        self.log(
            None,
            format_args!("partition {} for {} ms", p.what, p.hold_ms),
        );
        self.net.block(&p.pairs);
        self.schedule_idle_checks();
        self.at(p.hold_ms, Ev::Unblock { pairs: p.pairs });
    }

    pub(crate) fn unblock(&mut self, pairs: Vec<(usize, usize)>) {
        self.net.unblock(&pairs);
        let still = self.net.blocked.len();
        self.log(None, format_args!("heal ({still} pairs still blocked)"));
    }

    /// Takes a link down for a while, then up for a while, `left` more times.
    pub(crate) fn flap(&mut self, link: usize, left: u32) {
        if !self.faults_on || left == 0 {
            return;
        }
        let (a, b) = (self.net.links[link].dialer, self.net.links[link].listener);
        let hold = self.rng.random_range(200..=3000);
        self.report.partitions += 1;
        self.log(None, format_args!("flap {a}<->{b} down for {hold} ms"));
        let pairs = vec![(a, b), (b, a)];
        self.net.block(&pairs);
        self.schedule_idle_checks();
        self.at(hold, Ev::Unblock { pairs });
        let up = self.rng.random_range(200..=3000);
        let left = left - 1;
        self.at(hold + up, Ev::Flap { link, left });
    }

    /// The store of node `i` fails its next write; the node poisons and is restarted.
    pub(crate) fn store_fail(&mut self, i: usize) {
        if !self.faults_on {
            return;
        }
        let Some(n) = self.nodes[i].node.as_mut() else {
            return;
        };
        n.store_mut().fail_next_commits(1);
        self.log(Some(i), format_args!("store will fail its next write"));
    }

    /// Node `i` loses power: what is not durable is gone; it restarts a little later.
    pub(crate) fn crash(&mut self, i: usize) {
        self.nodes[i].journal_since = None;
        let Some(n) = self.nodes[i].node.take() else {
            return;
        };
        self.report.crashes += 1;
        let lost = n.commit_seq() - n.durable_seq();
        self.log(Some(i), format_args!("crash: {lost} unsynced commits lost"));
        let mut store = n.into_store();
        store.crash();
        let sn = &mut self.nodes[i];
        sn.store = Some(store);
        sn.timer_at = None;
        // Ingests not yet durable were never acknowledged: their clients saw no answer.
        sn.unacked.clear();
        let conns: Vec<u64> = sn.sessions.values().copied().collect();
        sn.sessions.clear();
        for conn in conns {
            // The peer notices at its next packet (a stateless reset): one latency later.
            let lat = self.plan.knobs.latency_ms;
            self.at(lat, Ev::ConnDrop { conn });
        }
        let d = self.rng.random_range(100..=5000);
        self.at(d, Ev::Restart { node: i });
    }

    /// Opens node `i` over its store (first start, or after a crash).
    pub(crate) fn restart(&mut self, i: usize) {
        let Some(store) = self.nodes[i].store.take() else {
            return;
        };
        let boot = Boot {
            nonce: self.rng.random(),
            new_store_id: self.rng.random(),
        };
        let mut n = match Node::open(store, self.nodes[i].cfg.clone(), boot) {
            Ok(n) => n,
            Err(e) => {
                let v = format!("node {} failed to reopen: {e}", self.nodes[i].name);
                return self.violation(crate::checkers::Checker::Reopen, v);
            }
        };
        self.nodes[i].store_base = n.store().commits() - n.commit_seq();
        // The open wrote the new incarnation; it is durable before the node serves.
        let seq = n.commit_seq();
        n.store_mut().sync();
        n.handle_durable(seq);
        let (inc, actor) = (n.meta().incarnation, n.actor());
        self.log(
            Some(i),
            format_args!("start incarnation {inc} actor {actor}"),
        );
        self.nodes[i].node = Some(n);
        self.check_reopened(i);
    }
}

fn partition(pairs: Vec<(usize, usize)>, hold_ms: u64, what: String) -> Partition {
    Partition {
        pairs,
        hold_ms,
        what,
    }
}
