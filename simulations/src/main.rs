//! `edgesync-sim`: run one seeded simulation, or a swarm of seeds.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use edgesync_proto::Canary;
use edgesync_sim::{parse_canary, result_line, run, Plan, Report, RunArgs, Scenario, Topology};

#[derive(Parser)]
#[command(
    name = "edgesync-sim",
    version,
    about = "Deterministic partition simulations of edgesync's core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed and print a summary ending in `seed=S digest=HEX result=...`.
    Run(RunOpts),
    /// Run every seed of a range, each with a configuration drawn from it.
    Swarm {
        /// Seeds as A..B (B excluded).
        #[arg(long)]
        seeds: String,
        /// Plant a known bug in every run: the swarm then succeeds only if every seed ends in a
        /// violation, and prints `missed: ...` for any seed that did not.
        #[arg(long, default_value = "none", value_parser = |s: &str| parse_canary(s))]
        canary: Canary,
        /// Hostile nodes in every run (see `run --byzantine`).
        #[arg(long, default_value_t = 0)]
        byzantine: usize,
        /// Simulated days in every run (see `run --days`).
        #[arg(long, default_value_t = 0, conflicts_with = "byzantine")]
        days: u32,
    },
}

/// `edgesync-sim run`: what the command line sets; the rest is drawn from the seed.
#[derive(clap::Args)]
struct RunOpts {
    /// The seed: the same seed and arguments reproduce the run bit for bit.
    #[arg(long)]
    seed: u64,
    /// Nodes, the cloud included (default: drawn from the seed, 3 to 7).
    #[arg(long)]
    nodes: Option<usize>,
    /// star, mesh, chain or random (default: drawn from the seed).
    #[arg(long, value_parser = |s: &str| s.parse::<Topology>())]
    topology: Option<Topology>,
    /// Simulated time with faults, in ms (default: drawn from the seed, 20 to 120 s).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// random, split-brain, crash-burst, flapping-uplink or same-ids.
    #[arg(long, default_value = "random", value_parser = |s: &str| s.parse::<Scenario>())]
    scenario: Scenario,
    /// Plant a known bug that the checkers must catch: ack-before-persist,
    /// drop-remote-change or vc-off-by-one.
    #[arg(long, default_value = "none", value_parser = |s: &str| parse_canary(s))]
    canary: Canary,
    /// Make this many of the highest-numbered nodes hostile (at most all but two): they
    /// send garbage and every refused kind of change, forge, flood and stop reading.
    #[arg(long, default_value_t = 0)]
    byzantine: usize,
    /// Simulate this many days with retention and pruning on: a star whose cloud keeps
    /// everything, gateways keeping 6, 12 or 24 hours or everything (half of them pruning
    /// what the cloud acknowledged), sparse readings in hour buckets, partitions of hours.
    #[arg(long, default_value_t = 0, conflicts_with = "byzantine")]
    days: u32,
    /// Print the event log (time, node, event).
    #[arg(long)]
    trace: bool,
}

impl RunOpts {
    fn into_args(self) -> RunArgs {
        RunArgs {
            seed: self.seed,
            nodes: self.nodes,
            topology: self.topology,
            duration_ms: self.duration_ms,
            scenario: self.scenario,
            canary: self.canary,
            byzantine: self.byzantine,
            days: self.days,
            trace: self.trace,
        }
    }
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad range start {a:?}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad range end {b:?}"))?;
    if b <= a {
        return Err(format!("empty range {s}"));
    }
    Ok(a..b)
}

/// Seeds of `range` with no violation in `violations` (whose reproduce lines start with
/// `edgesync-sim run --seed S `).
fn seeds_missed(range: &str, violations: &[(String, String)]) -> Vec<u64> {
    let caught: std::collections::BTreeSet<u64> = violations
        .iter()
        .filter_map(|(cmd, _)| cmd.split_whitespace().nth(3).and_then(|s| s.parse().ok()))
        .collect();
    parse_range(range)
        .map(|r| r.filter(|s| !caught.contains(s)).collect())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(opts) => run_one(&opts.into_args()),
        Command::Swarm {
            seeds,
            canary,
            byzantine,
            days,
        } => swarm(&seeds, canary, byzantine, days),
    }
}

/// `run`: one seed, with a summary.
fn run_one(args: &RunArgs) -> ExitCode {
    let started = Instant::now();
    let (plan, report) = run(args);
    for line in &report.trace {
        println!("{line}");
    }
    print_summary(&plan, &report);
    match report.convergence_ms {
        Some(c) => println!(
            "  converged {:.1} s (simulated) after the network healed; {} ms of wall time",
            c as f64 / 1000.0,
            started.elapsed().as_millis()
        ),
        None => println!(
            "  did not converge; {} ms of wall time",
            started.elapsed().as_millis()
        ),
    }
    if report.violation.is_none() {
        println!("  checks passed: convergence, durability (acknowledged = durable, present once), monotonic clocks, liveness");
    }
    println!("{}", result_line(&plan, &report));
    if report.violation.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_summary(plan: &Plan, report: &Report) {
    let k = &plan.knobs;
    println!(
        "edgesync-sim: seed {}, {} nodes ({}), scenario {}, {:.1} s of faults",
        plan.seed,
        plan.nodes,
        plan.topology,
        plan.scenario,
        plan.duration_ms as f64 / 1000.0
    );
    println!(
        "  knobs: batch {} B, window {} / {} B, fsync every ~{} ms, latency {}+{} ms, loss {:.2}%, dup {:.2}%, reorder {:.2}%",
        k.core.batch_bytes_max,
        k.core.inflight_batches_max,
        k.core.inflight_bytes_max,
        k.sync_interval_ms,
        k.latency_ms,
        k.jitter_ms,
        k.loss * 100.0,
        k.dup * 100.0,
        k.reorder * 100.0
    );
    println!(
        "  faults: {} partitions, {} crashes; network: {} frames sent, {} lost; {} sessions",
        report.partitions,
        report.crashes,
        report.frames_sent,
        report.frames_dropped,
        report.sessions
    );
    println!(
        "  workload: {} readings acknowledged, {} document edits; {} events",
        report.acked_readings, report.patches, report.events
    );
}

/// `swarm`: every seed of a range. With a canary, every seed must end in a violation.
fn swarm(seeds: &str, canary: Canary, byzantine: usize, days: u32) -> ExitCode {
    let range = match parse_range(seeds) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgesync-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let total = range.end - range.start;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total);
        let style =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} {msg}")
                .expect("valid template");
        b.set_style(style);
        b
    });
    let started = Instant::now();
    let mut violations = Vec::new();
    for seed in range {
        let mut args = RunArgs::seed(seed);
        args.canary = canary;
        args.byzantine = byzantine;
        args.days = days;
        let (plan, report) = run(&args);
        if let Some(v) = &report.violation {
            violations.push((plan.reproduce(), v.clone()));
        }
        if let Some(b) = &bar {
            b.set_message(format!("{} violations", violations.len()));
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    if canary == Canary::None {
        for (cmd, v) in &violations {
            println!("violation: {v}");
            println!("reproduce: {cmd}");
        }
    } else {
        // With a planted bug every seed must end in a violation; a miss is a checker gap.
        for seed in seeds_missed(seeds, &violations) {
            let mut args = RunArgs::seed(seed);
            args.canary = canary;
            args.days = days;
            println!("missed: {}", Plan::draw(&args).reproduce());
        }
    }
    let found = violations.len();
    println!(
        "swarm: {total} seeds, {found} violations, {:.1} seeds/s",
        total as f64 / secs
    );
    let passed = if canary == Canary::None {
        found == 0
    } else {
        found as u64 == total
    };
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
