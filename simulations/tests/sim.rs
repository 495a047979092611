use edgesync_proto::Canary;
use edgesync_sim::{run, Plan, Report, RunArgs, Scenario, Topology, CANARIES};

fn args(seed: u64) -> RunArgs {
    RunArgs::seed(seed)
}

fn ok(a: &RunArgs) -> (Plan, Report) {
    let (plan, report) = run(a);
    assert!(
        report.violation.is_none(),
        "{}: {:?}",
        plan.reproduce(),
        report.violation
    );
    (plan, report)
}

/// Parses one line of regressions.txt into arguments.
fn parse_line(line: &str) -> RunArgs {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut a = args(0);
    for pair in words.chunks(2) {
        let v = pair[1];
        match pair[0] {
            "--seed" => a.seed = v.parse().unwrap(),
            "--nodes" => a.nodes = Some(v.parse().unwrap()),
            "--topology" => a.topology = Some(v.parse().unwrap()),
            "--duration-ms" => a.duration_ms = Some(v.parse().unwrap()),
            "--scenario" => a.scenario = v.parse().unwrap(),
            "--byzantine" => a.byzantine = v.parse().unwrap(),
            "--days" => a.days = v.parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

// A fixed set of seeds, each with its own drawn configuration, passes every checker.
#[test]
fn fixed_seeds_pass() {
    for seed in 1..=12 {
        ok(&args(seed));
    }
}

// Every topology runs and converges.
#[test]
fn every_topology_converges() {
    for (i, t) in Topology::ALL.into_iter().enumerate() {
        let mut a = args(100 + i as u64);
        a.topology = Some(t);
        a.nodes = Some(5);
        let (_, r) = ok(&a);
        assert!(r.convergence_ms.is_some());
    }
}

// Named scenarios: split brain then heal, crash during an ingest burst, flapping uplink, two
// gateways ingesting the same reading ids. Each converges with nothing acknowledged lost, and
// its fault actually happened.
#[test]
fn named_scenarios_pass() {
    for scenario in Scenario::NAMED {
        let mut a = args(5);
        a.scenario = scenario;
        a.nodes = Some(5);
        a.topology = Some(Topology::Star);
        let (_, r) = ok(&a);
        assert!(r.acked_readings > 0, "{scenario}: workload ran");
        match scenario {
            Scenario::CrashBurst => assert!(r.crashes >= 1, "the burst crashed"),
            _ => assert!(r.partitions >= 1, "{scenario}: a partition happened"),
        }
    }
}

// The same seed and arguments give the same digest; another seed gives another.
#[test]
fn runs_are_deterministic() {
    let a = args(21);
    let (_, r1) = run(&a);
    let (_, r2) = run(&a);
    assert_eq!(r1.digest, r2.digest);
    assert_eq!(r1.events, r2.events);
    let (_, r3) = run(&args(22));
    assert_ne!(r1.digest, r3.digest);
}

/// The checker each planted bug targets: the one that must catch it (a violation names its
/// checker first).
fn target_checkers(canary: Canary) -> &'static [&'static str] {
    match canary {
        // Answers to clients (readings and patches; this canary answers both early) are
        // audited against the simulated store, not the node's `durable_at`.
        Canary::AckBeforePersist => &["client-ack-durability: ", "patch-ack-durability: "],
        // A change recorded in the clock but never applied, or a clock one ahead: the clock
        // audit after every remote apply (or at the end) sees the clock and changes disagree.
        Canary::DropRemoteChange | Canary::VcOffByOne => &["clock: "],
        // Patch answers are audited like readings.
        Canary::PatchAckBeforePersist => &["patch-ack-durability: "],
        Canary::None => unreachable!("not a planted bug"),
    }
}

// The checkers are tested: every planted bug is caught by the checker it targets, on random
// seeds and in every named scenario.
#[test]
fn every_canary_is_caught() {
    let caught = |a: &RunArgs, canary: Canary| {
        let (plan, r) = run(a);
        let v = r.violation.unwrap_or_default();
        assert!(
            target_checkers(canary).iter().any(|c| v.starts_with(c)),
            "{} not caught by {:?}: {v:?} in {}",
            edgesync_sim::canary_name(canary),
            target_checkers(canary),
            plan.reproduce()
        );
    };
    for canary in CANARIES {
        for seed in 1..=4 {
            let mut a = args(seed);
            a.canary = canary;
            caught(&a, canary);
        }
        for scenario in Scenario::NAMED {
            let mut a = args(5);
            a.canary = canary;
            a.scenario = scenario;
            caught(&a, canary);
        }
    }
    // A clean run with the same seeds passes: the violations come from the canaries.
    let mut a = args(1);
    a.canary = Canary::None;
    ok(&a);
}

// Every seed that ever failed stays fixed.
#[test]
fn regression_seeds_pass() {
    let text = include_str!("../regressions.txt");
    let mut count = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        ok(&parse_line(line));
        count += 1;
    }
    assert!(count >= 3);
}

// The reproduce line names every drawn parameter, and running it gives the same run.
#[test]
fn reproduce_line_reproduces() {
    let (plan, r) = run(&args(33));
    let line = plan.reproduce();
    let rest = line.strip_prefix("edgesync-sim run ").unwrap();
    let (_, again) = run(&parse_line(rest));
    assert_eq!(r.digest, again.digest);
}
