//! `kv-jepsen`: the harness's command line (docs/testing.md).
//!
//! - `kv-jepsen run [--nodes 3] [--clients 10] [--duration-secs 60] [--workload registers]
//!   [--faults kill,pause,partition,...] [--seed S] --out DIR`: starts a cluster, runs the
//!   clients and the faults, heals, reads everything back and checks the history.
//! - `kv-jepsen check --history FILE [--out DIR]`: checks a recorded history again.
//!
//! Both exit 0 if the history is valid, 1 if it holds an anomaly, 3 if a search ran out of
//! budget (unknown), and 2 for bad input or a run that could not be carried out.

use clap::{Parser, Subcommand};
use kv_tests::cluster::ClusterSpec;
use kv_tests::linearizable::Verdict;
use kv_tests::nemesis::Fault;
use kv_tests::run::{check_history, run, RunSpec};
use kv_tests::workload::{Workload, SET_PREFIX};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kv-jepsen", about = "Faults, histories and their check, for kv-server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a cluster under faults and checks its history.
    Run(RunArgs),
    /// Checks a recorded history (JSON lines) again.
    Check {
        /// The history file.
        #[arg(long)]
        history: PathBuf,
        /// Where anomalies are written (anomaly-N.txt and anomaly-N.svg).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The key prefix of the set workload's elements.
        #[arg(long, default_value = SET_PREFIX)]
        set_prefix: String,
        /// Seconds the search may spend on one key before it says "unknown".
        #[arg(long, default_value_t = 30)]
        key_budget_secs: u64,
    },
}

/// Bugs the servers can be started with (hidden flags of kv-server).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PlantedBug {
    /// Linearizable reads served from local state without ReadIndex (`--unsafe-local-reads`):
    /// a node cut off from the leader answers stale reads.
    LocalReads,
}

const EXIT_ANOMALY: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_UNKNOWN: u8 = 3;

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Check { history, out, set_prefix, key_budget_secs } => {
            let budget = Duration::from_secs(key_budget_secs);
            check_history(&history, &out, &set_prefix, budget).map(|(verdict, text)| {
                print!("{text}");
                verdict
            })
        }
        Command::Run(args) => run_command(args),
    };
    match outcome {
        Ok(Verdict::Valid) => ExitCode::SUCCESS,
        Ok(Verdict::Invalid) => ExitCode::from(EXIT_ANOMALY),
        Ok(Verdict::Unknown) => ExitCode::from(EXIT_UNKNOWN),
        Err(error) => {
            eprintln!("kv-jepsen: {error}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// The flags of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=5))]
    pub nodes: u16,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Seconds of clients and faults.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Workload::Registers)]
    pub workload: Workload,
    /// The fault kinds to draw from (comma-separated; none for a run without faults).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Fault::ALL)]
    pub faults: Vec<Fault>,
    /// Seeds every random choice of the clients and the nemesis.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The run's directory: history, faults, report, anomalies, the nodes' logs.
    #[arg(long)]
    pub out: PathBuf,
    /// The first of the loopback ports the cluster uses (up to 45 from it).
    #[arg(long, default_value_t = 27000)]
    pub base_port: u16,
    /// Where kv-server and kvctl are (default: beside this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds the search may spend on one key before it says "unknown".
    #[arg(long, default_value_t = 30)]
    pub key_budget_secs: u64,
    /// Runs the servers with a bug planted on purpose, to show the check finds it.
    #[arg(long, value_enum)]
    pub planted_bug: Option<PlantedBug>,
    /// The longest a fault is held, in milliseconds (the shortest: half of it).
    #[arg(long, default_value_t = 5000)]
    pub fault_hold_ms: u64,
    /// The longest quiet spell between faults, in milliseconds (the shortest: a third).
    #[arg(long, default_value_t = 3000)]
    pub fault_quiet_ms: u64,
}

fn run_command(args: RunArgs) -> Result<Verdict, String> {
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .parent()
            .map(PathBuf::from)
            .ok_or("this program has no directory")?,
    };
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (replay with --seed {seed})");
    let spec = RunSpec {
        cluster: ClusterSpec {
            nodes: usize::from(args.nodes),
            base_port: args.base_port,
            dir: args.out.join("cluster"),
            bin_dir,
            server_flags: harness_server_flags(args.planted_bug),
        },
        clients: args.clients,
        duration: Duration::from_secs(args.duration_secs),
        workload: args.workload,
        faults: args.faults,
        seed,
        out: args.out,
        key_budget: Duration::from_secs(args.key_budget_secs),
        fault_hold: Duration::from_millis(args.fault_hold_ms),
        fault_quiet: Duration::from_millis(args.fault_quiet_ms),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("a runtime: {e}"))?;
    // Interrupted, the run is dropped, and with it the cluster: every node is killed.
    let summary = runtime.block_on(async {
        tokio::select! {
            summary = run(&spec) => summary,
            () = kv_server::server::shutdown_signal() => Err("interrupted: every node was stopped".to_string()),
        }
    })?;
    print!("{}", summary.text);
    Ok(summary.verdict)
}

/// Short timeouts, so that faults lead to elections and snapshots within a short run; and
/// the planted bug's flag, if any.
fn harness_server_flags(planted_bug: Option<PlantedBug>) -> Vec<String> {
    let mut flags: Vec<String> =
        ["--tick-ms=50", "--election-ticks=10", "--request-timeout-ms=2000"]
            .into_iter()
            .chain(["--snapshot-entries=2000"])
            .map(String::from)
            .collect();
    if let Some(PlantedBug::LocalReads) = planted_bug {
        flags.push("--unsafe-local-reads".into());
    }
    flags
}
