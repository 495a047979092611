//! edgesync's deterministic partition simulator.
//!
//! Many replicas of the real core ([`edgesync_proto::Node`]) run over a simulated network and
//! simulated stores, in one thread, in virtual time, with every random choice drawn from one
//! seed: the same seed and arguments give the same run, bit for bit, on every machine. Faults
//! are injected at the boundaries (frames lost, duplicated, reordered, delayed; symmetric,
//! asymmetric and flapping partitions; crashes that lose writes not yet durable; failing
//! store writes; skewed wall clocks), knobs are randomized per seed, and checkers decide:
//! convergence, durability, monotonic clocks, liveness, no panic.
#![warn(missing_docs)]

mod byzantine;
mod checkers;
mod faults;
mod network;
pub mod plan;
mod sim;
mod workload;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use plan::{canary_name, parse_canary, Plan, RunArgs, Scenario, Topology, CANARIES};
pub use sim::{Report, LIVENESS_DAYS_MS, LIVENESS_MS};

/// Runs one simulation. A panic anywhere in the core or the simulator is reported as a
/// violation, not propagated.
pub fn run(args: &RunArgs) -> (Plan, Report) {
    let plan = Plan::draw(args);
    let sim = sim::Sim::new(plan.clone(), args.trace);
    let report = match catch_unwind(AssertUnwindSafe(|| sim.run())) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Report {
                digest: "panic".into(),
                violation: Some(format!("panic: {msg}")),
                ..Report::default()
            }
        }
    };
    (plan, report)
}

/// The closing line of a run: `seed=S digest=HEX result=ok` or `result=violation: ...`.
pub fn result_line(plan: &Plan, report: &Report) -> String {
    match &report.violation {
        None => format!("seed={} digest={} result=ok", plan.seed, report.digest),
        Some(v) => format!(
            "seed={} digest={} result=violation: {v}",
            plan.seed, report.digest
        ),
    }
}
