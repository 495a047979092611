//! What one run simulates: topology, size, duration, scenario and the randomized knobs, all
//! drawn from the seed.

use std::fmt;
use std::str::FromStr;

use edgesync_proto::wire::FRAME_BYTES_MIN;
use edgesync_proto::{Canary, Config, NodeName};

/// Readings in the seed's partition test burst.
pub const BURST_READINGS: u32 = 50;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// How nodes are connected. Node 0 is the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every gateway dials the cloud.
    Star,
    /// Every gateway dials the cloud and every other gateway.
    Mesh,
    /// Node i dials node i-1: edge → gateway → … → cloud.
    Chain,
    /// A random spanning tree plus random extra links.
    Random,
}

impl Topology {
    /// All topologies.
    pub const ALL: [Topology; 4] = [
        Topology::Star,
        Topology::Mesh,
        Topology::Chain,
        Topology::Random,
    ];
}

const TOPOLOGY_NAMES: [(Topology, &str); 4] = [
    (Topology::Star, "star"),
    (Topology::Mesh, "mesh"),
    (Topology::Chain, "chain"),
    (Topology::Random, "random"),
];

/// The name of `v` in `table`.
fn name_of<T: PartialEq>(table: &[(T, &'static str)], v: &T) -> &'static str {
    table.iter().find(|(t, _)| t == v).map_or("?", |(_, n)| *n)
}

/// The value named `s` in `table`, or an error listing the names.
fn parse_name<T: Copy>(table: &[(T, &'static str)], s: &str, what: &str) -> Result<T, String> {
    table
        .iter()
        .find(|(_, n)| *n == s)
        .map(|(t, _)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
            format!("unknown {what} {s:?}; expected one of {}", names.join(", "))
        })
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(name_of(&TOPOLOGY_NAMES, self))
    }
}

impl FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_name(&TOPOLOGY_NAMES, s, "topology")
    }
}

/// A named scenario: a fixed fault script on top of the seed's random knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Random faults drawn from the seed.
    Random,
    /// The fleet splits into two halves that both keep ingesting, then heals.
    SplitBrain,
    /// A gateway ingests a burst of 50 readings and crashes in the middle of it.
    CrashBurst,
    /// A gateway's uplink flaps for most of the run.
    FlappingUplink,
    /// Two partitioned gateways ingest the same reading ids.
    SameIds,
}

impl Scenario {
    /// The named scenarios (not `Random`).
    pub const NAMED: [Scenario; 4] = [
        Scenario::SplitBrain,
        Scenario::CrashBurst,
        Scenario::FlappingUplink,
        Scenario::SameIds,
    ];
}

const SCENARIO_NAMES: [(Scenario, &str); 5] = [
    (Scenario::Random, "random"),
    (Scenario::SplitBrain, "split-brain"),
    (Scenario::CrashBurst, "crash-burst"),
    (Scenario::FlappingUplink, "flapping-uplink"),
    (Scenario::SameIds, "same-ids"),
];

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(name_of(&SCENARIO_NAMES, self))
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_name(&SCENARIO_NAMES, s, "scenario")
    }
}

const CANARY_NAMES: [(Canary, &str); 5] = [
    (Canary::None, "none"),
    (Canary::AckBeforePersist, "ack-before-persist"),
    (Canary::DropRemoteChange, "drop-remote-change"),
    (Canary::VcOffByOne, "vc-off-by-one"),
    (Canary::PatchAckBeforePersist, "patch-ack-before-persist"),
];

/// Parses a canary name.
pub fn parse_canary(s: &str) -> Result<Canary, String> {
    parse_name(&CANARY_NAMES, s, "canary")
}

/// The canary's command-line name.
pub fn canary_name(c: Canary) -> &'static str {
    name_of(&CANARY_NAMES, &c)
}

/// Every canary that plants a bug.
pub const CANARIES: [Canary; 4] = [
    Canary::AckBeforePersist,
    Canary::DropRemoteChange,
    Canary::VcOffByOne,
    Canary::PatchAckBeforePersist,
];

/// What the command line asked for; unset fields are drawn from the seed.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// The seed.
    pub seed: u64,
    /// Number of nodes (cloud included).
    pub nodes: Option<usize>,
    /// Topology.
    pub topology: Option<Topology>,
    /// Simulated time with faults, in ms; then faults stop and the run waits for convergence.
    pub duration_ms: Option<u64>,
    /// Scenario.
    pub scenario: Scenario,
    /// Planted bug.
    pub canary: Canary,
    /// Hostile nodes (the highest-numbered; at most all but two).
    pub byzantine: usize,
    /// Simulated days with retention and pruning on (0: a normal run of minutes). A days run
    /// is a star (the cloud, node 0, keeps everything), with sparse readings over hour buckets,
    /// partitions of hours, and gateways that each keep a span of hours or everything and may
    /// prune what the cloud acknowledged.
    pub days: u32,
    /// Keep the event log for printing.
    pub trace: bool,
}

impl RunArgs {
    /// A run of `seed` with everything else drawn from it.
    pub fn seed(seed: u64) -> RunArgs {
        RunArgs {
            seed,
            nodes: None,
            topology: None,
            duration_ms: None,
            scenario: Scenario::Random,
            canary: Canary::None,
            byzantine: 0,
            days: 0,
            trace: false,
        }
    }
}

/// Tunables randomized per seed so that rare paths run constantly.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// The core's limits shared by every node (batch size down to one byte, windows,
    /// timeouts, buffer bounds, memory budget, snapshot interval); its name is a placeholder.
    pub core: Config,
    /// Frame limit per node.
    pub frame_bytes_max: Vec<u32>,
    /// Mean time between store syncs (fsync) per node.
    pub sync_interval_ms: u64,
    /// One-way latency.
    pub latency_ms: u64,
    /// Added uniform jitter.
    pub jitter_ms: u64,
    /// Per-frame loss probability (while faults run).
    pub loss: f64,
    /// Per-frame duplication probability.
    pub dup: f64,
    /// Per-frame reordering probability.
    pub reorder: f64,
    /// Transport idle timeout.
    pub idle_timeout_ms: u64,
    /// Reconnect backoff base.
    pub backoff_base_ms: u64,
    /// Reconnect backoff cap.
    pub backoff_cap_ms: u64,
    /// Consecutive failed dials that open a link's circuit breaker.
    pub breaker_failures: u32,
    /// Mean time between ingests (whole fleet).
    pub ingest_interval_ms: u64,
    /// Mean time between generic document edits (whole fleet).
    pub patch_interval_ms: u64,
    /// Fault events (partitions, crashes, store failures) during the run.
    pub faults: u32,
    /// Readings in each burst that a random isolation starts (the named scenarios keep the
    /// seed's 50): shortened where the links are too slow to carry 50.
    pub burst_readings: u32,
    /// Maximum wall-clock skew per node.
    pub skew_max_ms: u64,
    /// Changes per second one link carries with these knobs (window x changes per batch /
    /// round trip).
    pub link_changes_per_s: f64,
    /// The hostile nodes' certificates predate actor slots (drawn on its own).
    pub hostile_legacy: bool,
}

impl Knobs {
    /// Keeps the offered load (one change per ingest, patch or burst reading) at most a quarter
    /// of what one link can carry (window x changes per batch / round trip): in a star the
    /// cloud relays every change to every gateway, and a node back from a partition must catch
    /// up within the liveness bound. Bursts count too (seed 185914 failed liveness when they
    /// did not): they may take half of that budget and are shortened first, down to one
    /// reading; ingests and patches thin out in the rest. Tiny batches still run.
    fn thin_workload(&mut self, duration_ms: u64) {
        let changes_per_batch = (self.core.batch_bytes_max as f64 / 400.0).max(1.0);
        let round_trip_ms =
            (2 * self.latency_ms + self.jitter_ms + 2 * self.sync_interval_ms) as f64;
        // The window in batches: the byte window may allow fewer than the count (a batch
        // holds at least one change, about 400 bytes, whatever its size limit).
        let batch_bytes = f64::from(self.core.batch_bytes_max).max(400.0);
        let by_bytes = (f64::from(self.core.inflight_bytes_max) / batch_bytes)
            .ceil()
            .max(1.0);
        let window = (self.core.inflight_batches_max as f64).min(by_bytes);
        let capacity_per_s = window * changes_per_batch * 1000.0 / round_trip_ms;
        self.link_changes_per_s = capacity_per_s;
        let budget_per_s = capacity_per_s / 4.0;
        let duration_s = duration_ms as f64 / 1000.0;
        // Two of the seven random fault kinds isolate a node; each isolation may start a burst.
        let bursts = self.faults as f64 * 2.0 / 7.0;
        if bursts > 0.0 {
            let fit = (budget_per_s / 2.0 * duration_s / bursts).floor() as u32;
            self.burst_readings = fit.clamp(1, BURST_READINGS);
        }
        let bursts_per_s = bursts * f64::from(self.burst_readings) / duration_s;
        let room_per_s = (budget_per_s - bursts_per_s).max(budget_per_s / 2.0);
        let offered_per_s =
            1000.0 / self.ingest_interval_ms as f64 + 1000.0 / self.patch_interval_ms as f64;
        let thin = (offered_per_s / room_per_s).max(1.0);
        self.ingest_interval_ms = (self.ingest_interval_ms as f64 * thin).ceil() as u64;
        self.patch_interval_ms = (self.patch_interval_ms as f64 * thin).ceil() as u64;
    }
}

/// The core limits every node of a run shares, drawn from the seed.
fn draw_core(rng: &mut Xoshiro256PlusPlus, batch_bytes_max: u32) -> Config {
    let mut core = Config::new(NodeName::new("sim").expect("a valid name"));
    core.batch_bytes_max = batch_bytes_max;
    core.change_bytes_max = FRAME_BYTES_MIN - 1024;
    core.inflight_batches_max = rng.random_range(1..=8);
    core.ack_timeout_ms = rng.random_range(2..=30) * 1000;
    core.handshake_timeout_ms = rng.random_range(2..=10) * 1000;
    core.pending_changes_max = [16, 64, 1000, 10_000][rng.random_range(0..4usize)];
    // Small memory budgets and frequent snapshots are rare paths worth running, and the
    // costliest (documents reload on every touch): a minority of seeds get them.
    core.docs_loaded_max = match rng.random_range(0..16u32) {
        0 => 1,
        1 | 2 => 3,
        _ => 64,
    };
    core.snapshot_changes_min = match rng.random_range(0..8u32) {
        0 => 8,
        1 | 2 => 128,
        _ => 1024,
    };
    core
}

/// The ingest journal's knobs, from a generator of their own (so the draws before them, and
/// every seed kept in `regressions.txt`, mean what they meant before the journal): folds from
/// every timer tick to two seconds apart, and journals from one reading to the default.
fn draw_journal(seed: u64, core: &mut Config) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6a6f_7572_6e61_6c21);
    core.journal_fold_ms = [0, 1, 100, 100, 500, 2000][rng.random_range(0..6usize)];
    core.journal_readings_max = [1, 3, 64, 4096][rng.random_range(0..4usize)];
    // The session window in bytes, from its own generator too: from about one batch (the
    // window is then one batch whatever the batch count allows) to the default.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x7769_6e64_6f77_2121);
    let batch = core.batch_bytes_max.max(1);
    core.inflight_bytes_max = match rng.random_range(0..4u32) {
        0 => batch,
        1 => batch.saturating_mul(3),
        _ => core.inflight_bytes_max,
    };
    // Half the runs have every node ask its first peer for its actor slot before it authors
    // (as a daemon that dials peers does): its readings wait in the journal until then.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x736c_6f74_7321_2121);
    core.settle_from_peers = rng.random_bool(0.5);
}

/// Whether node `i` takes and sends snapshots (snapshot transfer), from a generator of its own:
/// three nodes in four, so that runs mix nodes with and without it.
pub(crate) fn draw_snapshot_transfer(seed: u64, i: usize) -> bool {
    let mut rng =
        Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x736e_6170_7368_6f74 ^ (i as u64) << 48);
    rng.random_range(0..4u32) != 0
}

/// Whether the hostile nodes' certificates predate actor slots (they then bind any actor, and
/// the session limits alone slow their actor floods), from a generator of its own.
fn draw_hostile_legacy(seed: u64) -> bool {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6c65_6761_6379_2121);
    rng.random_bool(0.5)
}

/// Everything a run needs, fully determined by the seed and the explicit arguments.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Topology.
    pub topology: Topology,
    /// Duration of the fault phase.
    pub duration_ms: u64,
    /// Scenario.
    pub scenario: Scenario,
    /// Canary.
    pub canary: Canary,
    /// Hostile nodes: the last `byzantine` node numbers.
    pub byzantine: usize,
    /// Simulated days (0: a normal run).
    pub days: u32,
    /// Per node: retention (`Config::keep_ms`) and whether it prunes what the cloud
    /// acknowledged (days runs only).
    pub retention: Vec<(Option<u64>, bool)>,
    /// Knobs.
    pub knobs: Knobs,
}

impl Plan {
    /// Draws the plan. The seed's draws happen in a fixed order whatever was given explicitly,
    /// so `run --seed S --nodes N ...` printed by a swarm reproduces the swarm's run exactly.
    pub fn draw(args: &RunArgs) -> Plan {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed ^ 0x6564_6765_7379_6e63);
        let nodes = rng.random_range(3..=7usize);
        let topology = Topology::ALL[rng.random_range(0..4usize)];
        let duration_ms = rng.random_range(20..=120u64) * 1000;
        let nodes = args.nodes.unwrap_or(nodes).max(2);
        // Log-uniform batch sizes: 1 byte (one change per batch) up to 256 KiB.
        let batch_bytes_max = 1u32 << rng.random_range(0..=18u32);
        let frame_bytes_max = (0..nodes)
            .map(|_| {
                if rng.random_bool(0.5) {
                    FRAME_BYTES_MIN
                } else {
                    FRAME_BYTES_MIN << rng.random_range(1..=8u32)
                }
            })
            .collect();
        let faulty = rng.random_bool(0.8);
        let mut core = draw_core(&mut rng, batch_bytes_max);
        draw_journal(args.seed, &mut core);
        let knobs = Knobs {
            core,
            frame_bytes_max,
            sync_interval_ms: rng.random_range(1..=100),
            latency_ms: rng.random_range(1..=150),
            jitter_ms: rng.random_range(0..=50),
            loss: if faulty {
                rng.random_range(0.0..0.02)
            } else {
                0.0
            },
            dup: if faulty {
                rng.random_range(0.0..0.02)
            } else {
                0.0
            },
            reorder: if faulty {
                rng.random_range(0.0..0.01)
            } else {
                0.0
            },
            idle_timeout_ms: rng.random_range(3..=15) * 1000,
            backoff_base_ms: rng.random_range(50..=1000),
            backoff_cap_ms: rng.random_range(2..=10) * 1000,
            breaker_failures: rng.random_range(2..=8),
            ingest_interval_ms: rng.random_range(50..=500),
            patch_interval_ms: rng.random_range(200..=3000),
            faults: if faulty { rng.random_range(2..=14) } else { 0 },
            burst_readings: BURST_READINGS,
            skew_max_ms: rng.random_range(0..=30_000),
            link_changes_per_s: 0.0,
            hostile_legacy: draw_hostile_legacy(args.seed),
        };
        let duration_ms = args.duration_ms.unwrap_or(duration_ms).max(1000);
        let mut knobs = knobs;
        knobs.thin_workload(duration_ms);
        let byzantine = args.byzantine.min(nodes - 2);
        if byzantine > 0 {
            // Drawn last, so runs without hostile nodes draw exactly as before. Limits small
            // enough that floods reach them quickly; honest catch-up may reach them too, and
            // must still converge (each session keeps what it applied).
            knobs.core.session_doc_actors_max = rng.random_range(32..=128);
            knobs.core.session_docs_max = rng.random_range(32..=128);
            knobs.core.session_actors_max = rng.random_range(512..=2048);
        }
        // Drawn after everything else, so every other knob of a seed stays as it was. Narrow
        // buckets spread a run's readings over many documents; the hour keeps them in one.
        knobs.core.bucket_ms =
            [5_000, 10_000, 30_000, 60_000, 3_600_000][rng.random_range(0..5usize)];
        let mut retention = vec![(None, false); nodes];
        let mut duration_ms = duration_ms;
        let mut topology = args.topology.unwrap_or(topology);
        if args.days > 0 {
            // Days: sparse readings, slow syncs, hour-long partitions, hour buckets; gateways
            // keep 6, 12 or 24 hours, or everything, and half prune after the cloud.
            topology = Topology::Star;
            duration_ms = args
                .duration_ms
                .unwrap_or(u64::from(args.days) * 86_400_000);
            knobs.sync_interval_ms = rng.random_range(20..=500);
            knobs.ingest_interval_ms = rng.random_range(20_000..=120_000);
            knobs.patch_interval_ms = rng.random_range(300_000..=1_800_000);
            knobs.faults = rng.random_range(4..=12);
            knobs.core.bucket_ms = [1_800_000, 3_600_000][rng.random_range(0..2usize)];
            knobs.core.prune_grace_ms = rng.random_range(1..=20) * 60_000;
            // A partition of hours leaves hours of readings to catch up within the liveness
            // bound: links that carry at least one batch of 16 KiB at a time.
            knobs.core.batch_bytes_max = knobs.core.batch_bytes_max.max(16 * 1024);
            for r in retention.iter_mut().skip(1) {
                let keep = [None, Some(6), Some(12), Some(24)][rng.random_range(0..4usize)];
                // A gateway with retention names the cloud as its upstream (so its retention
                // waits for the cloud's acknowledgement, and it prunes); one without prunes
                // half of the time.
                let prunes = rng.random_bool(0.5) || keep.is_some();
                *r = (keep.map(|h: u64| h * 3_600_000), prunes);
            }
            knobs.thin_workload(duration_ms);
        }
        Plan {
            seed: args.seed,
            nodes,
            topology,
            duration_ms,
            scenario: args.scenario,
            canary: args.canary,
            byzantine,
            days: args.days,
            retention,
            knobs,
        }
    }

    /// The command line that reproduces this run.
    pub fn reproduce(&self) -> String {
        let mut s = format!(
            "edgesync-sim run --seed {} --nodes {} --topology {} --duration-ms {}",
            self.seed, self.nodes, self.topology, self.duration_ms
        );
        if self.scenario != Scenario::Random {
            s.push_str(&format!(" --scenario {}", self.scenario));
        }
        if self.canary != Canary::None {
            s.push_str(&format!(" --canary {}", canary_name(self.canary)));
        }
        if self.byzantine > 0 {
            s.push_str(&format!(" --byzantine {}", self.byzantine));
        }
        if self.days > 0 {
            s.push_str(&format!(" --days {}", self.days));
        }
        s
    }
}
