//! `raft-sim`: runs the deterministic cluster simulator over a range of seeds and prints what
//! it checked. A failure prints the seed, a replay command and the last events.
//!
//! ```text
//! raft-sim [--seeds A..B | --seed N] [--steps N] [--nodes 3|5|7] [--trace]
//!          [--planted-bug NAME] [--no-persist-check]
//! ```

// This host program reads the wall clock only to report its own throughput; the simulated
// engine never sees it (time enters the engine as `tick()`).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use raft_core::sim::{run_with_trace_on_failure, SimOptions};
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    seeds: std::ops::Range<u64>,
    steps: u64,
    nodes: Option<usize>,
    trace: bool,
    planted_bug: Option<raft_core::PlantedBug>,
    persist_check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..10,
        steps: 5000,
        nodes: None,
        trace: false,
        planted_bug: None,
        persist_check: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--seed" => {
                let seed = parse_u64("--seed", &value("--seed")?)?;
                args.seeds = seed..seed + 1;
            }
            "--seeds" => {
                let v = value("--seeds")?;
                let (a, b) = v.split_once("..").ok_or("--seeds takes A..B (B exclusive)")?;
                args.seeds = parse_u64("--seeds", a)?..parse_u64("--seeds", b)?;
            }
            "--steps" => args.steps = parse_u64("--steps", &value("--steps")?)?,
            "--nodes" => {
                let n = parse_u64("--nodes", &value("--nodes")?)? as usize;
                if !(1..=9).contains(&n) {
                    return Err(format!("--nodes {n}: expected 1 to 9"));
                }
                args.nodes = Some(n);
            }
            "--trace" => args.trace = true,
            "--no-persist-check" => args.persist_check = false,
            "--planted-bug" => {
                let name = value("--planted-bug")?;
                let names: Vec<_> = raft_core::PlantedBug::ALL.iter().map(|b| b.name()).collect();
                args.planted_bug = Some(
                    planted_bug(&name)
                        .ok_or(format!("--planted-bug {name}: expected one of {names:?}"))?,
                );
            }
            "--help" | "-h" => {
                return Err("usage: raft-sim [--seeds A..B | --seed N] [--steps N] [--nodes N] \
                            [--trace] [--planted-bug NAME] [--no-persist-check]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn parse_u64(flag: &str, text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{flag}: {text:?} is not a whole number"))
}

#[cfg(feature = "planted-bugs")]
fn planted_bug(name: &str) -> Option<raft_core::PlantedBug> {
    raft_core::PlantedBug::from_name(name)
}

#[cfg(not(feature = "planted-bugs"))]
fn planted_bug(_name: &str) -> Option<raft_core::PlantedBug> {
    eprintln!("planted bugs need --features planted-bugs");
    None
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (mut runs, mut actions, mut committed, mut elections, mut crashes) = (0u64, 0, 0, 0, 0);
    let (mut reads, mut snapshots, mut changes) = (0, 0, 0);
    for seed in args.seeds.clone() {
        let mut options = SimOptions::from_seed(seed, args.steps);
        options.check_persist_before_answer = args.persist_check;
        if let Some(nodes) = args.nodes {
            options.nodes = nodes;
        }
        options.trace = args.trace;
        #[cfg(feature = "planted-bugs")]
        {
            options.planted_bug = args.planted_bug;
        }
        let _ = args.planted_bug;
        match run_with_trace_on_failure(options) {
            Ok(report) => {
                if args.trace {
                    report.trace.iter().for_each(|line| println!("{line}"));
                }
                runs += 1;
                actions += report.actions;
                committed += report.committed;
                elections += report.elections;
                crashes += report.crashes;
                reads += report.reads;
                snapshots += report.snapshots_installed;
                changes += report.membership_changes;
            }
            Err(failure) => {
                if args.trace {
                    failure.trace.iter().for_each(|line| println!("{line}"));
                }
                eprintln!("{failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raft-sim: {runs} seeds ({}..{}), {} safety steps each: {actions} actions, {elections} \
         leaders elected, {committed} entries committed, {reads} reads served, {snapshots} \
         snapshots installed, {changes} membership changes, {crashes} \
         crashes",
        args.seeds.start, args.seeds.end, args.steps
    );
    println!(
        "checked after every action: Election Safety, Log Matching, Leader Completeness, \
         State Machine Safety, committed entries never lost or changed, persist-before-answer, \
         linearizable reads, node invariants; after healing, within 500 ticks: a leader emerges, every node holds \
         and commits its whole log, and a new proposal commits on every node"
    );
    println!(
        "{:.1} s: {:.0} seeds/s, {:.0} actions/s",
        secs,
        runs as f64 / secs,
        actions as f64 / secs
    );
    ExitCode::SUCCESS
}
