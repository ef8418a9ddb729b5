//! The simulator over many seeds (docs/simulator.md). Each seed derives the cluster size
//! (3, 5 or 7 by `seed % 3`), the fault rates and the engine's limits; every run checks the
//! Figure 3 properties after every action, then liveness after healing.

use raft_core::sim::{run_with_trace_on_failure, SimOptions, Simulation};

/// Seeds the test covers; the cluster size cycles through 3, 5 and 7 nodes.
const SEEDS: u64 = 1_500;
/// Safety-phase actions per seed.
const STEPS: u64 = 5_000;

/// Runs every seed; the first failure prints its seed, replay command and trace.
#[test]
fn simulator_holds_every_property() {
    let mut sizes = [0u64; 8];
    let (mut committed, mut reads, mut snapshots, mut changes) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let options = SimOptions::from_seed(seed, STEPS);
        sizes[options.nodes] += 1;
        match run_with_trace_on_failure(options) {
            Ok(report) => {
                committed += report.committed;
                reads += report.reads;
                snapshots += report.snapshots_installed;
                changes += report.membership_changes;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert_eq!((sizes[3], sizes[5], sizes[7]), (SEEDS / 3, SEEDS / 3, SEEDS / 3));
    assert!(committed > SEEDS * 10, "runs committed almost nothing ({committed} entries)");
    assert!(reads > SEEDS * 10, "runs served almost no reads ({reads})");
    assert!(snapshots > SEEDS / 2, "runs installed almost no snapshots ({snapshots})");
    assert!(changes > SEEDS / 2, "runs changed the membership almost never ({changes})");
}

/// Determinism: the same seed gives the same run, event for event; different seeds differ.
#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let options = SimOptions { trace: true, ..SimOptions::from_seed(seed, 2_000) };
        Simulation::new(options).run().expect("seed passes")
    };
    for seed in [0, 1, 2, 42] {
        let (first, second) = (run(seed), run(seed));
        assert!(first.trace.len() > 500, "seed {seed} traced too little: {}", first.trace.len());
        assert_eq!(first, second, "seed {seed} ran differently twice");
    }
    assert_ne!(run(3).trace, run(6).trace, "two seeds ran identically");
}
