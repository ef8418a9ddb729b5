//! `kv-jepsen`: the harness's command line (docs/testing.md).
//!
//! `kv-jepsen check --history FILE [--out DIR]` checks a recorded history again: every key
//! for linearizability, and the set workload's adds against its lists. It prints the
//! verdict, writes each anomaly as text and as an SVG timeline to DIR, and exits 0 if the
//! history is valid, 1 if it holds an anomaly, 3 if a search ran out of budget (unknown)
//! and 2 for bad input.

use clap::{Parser, Subcommand};
use kv_tests::history::{pair, read_events, Function};
use kv_tests::linearizable::{self, Verdict};
use kv_tests::{report, sets};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
    /// Checks a recorded history (JSON lines) again.
    Check {
        /// The history file.
        #[arg(long)]
        history: PathBuf,
        /// Where anomalies are written (anomaly-N.txt and anomaly-N.svg).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The key prefix of the set workload's elements.
        #[arg(long, default_value = "set/")]
        set_prefix: String,
        /// Seconds the search may spend on one key before it says "unknown".
        #[arg(long, default_value_t = 30)]
        key_budget_secs: u64,
    },
}

const EXIT_ANOMALY: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_UNKNOWN: u8 = 3;

fn main() -> ExitCode {
    let Command::Check { history, out, set_prefix, key_budget_secs } = Cli::parse().command;
    match check(&history, &out, &set_prefix, Duration::from_secs(key_budget_secs)) {
        Ok(Verdict::Valid) => ExitCode::SUCCESS,
        Ok(Verdict::Invalid) => ExitCode::from(EXIT_ANOMALY),
        Ok(Verdict::Unknown) => ExitCode::from(EXIT_UNKNOWN),
        Err(error) => {
            eprintln!("kv-jepsen: {error}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Checks the history in `path`, prints what it found, writes the anomalies to `out`.
fn check(path: &Path, out: &Path, set_prefix: &str, per_key: Duration) -> Result<Verdict, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let events = read_events(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let history = pair(&events).map_err(|e| format!("{}: {e}", path.display()))?;
    let (registers, rest): (Vec<_>, Vec<_>) =
        history.iter().cloned().partition(|op| !op.key.starts_with(set_prefix));
    let registers_report = linearizable::check(&registers, per_key).map_err(|e| e.to_string())?;
    println!(
        "registers: {:?} ({} keys, {} operations)",
        registers_report.verdict,
        registers_report.keys,
        registers.len()
    );
    for key in &registers_report.unknown {
        println!("  key {key:?}: the search ran out of budget (unknown)");
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (n, anomaly) in registers_report.anomalies.iter().enumerate() {
        let text = report::anomaly_text(anomaly, &history);
        print!("{text}");
        let outlined: HashSet<usize> = anomaly.ops.iter().copied().collect();
        let title = text.lines().next().unwrap_or_default();
        let svg = report::timeline_svg(&report::around(anomaly, &history), &outlined, title);
        write(&out.join(format!("anomaly-{n}.txt")), &text)?;
        write(&out.join(format!("anomaly-{n}.svg")), &svg)?;
    }
    let mut verdict = registers_report.verdict;
    if rest.iter().any(|op| op.f == Function::List) {
        let set_report = sets::check(&rest, set_prefix)?;
        println!(
            "set: {:?} ({} lists, {} acknowledged adds, {} adds of unknown outcome present)",
            set_report.verdict,
            set_report.lists,
            set_report.acknowledged,
            set_report.unknown_present
        );
        for anomaly in &set_report.anomalies {
            println!("  {anomaly:?}");
        }
        verdict = verdict.max(set_report.verdict);
    }
    println!("verdict: {verdict:?}");
    Ok(verdict)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
