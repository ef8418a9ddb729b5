//! Short runs of the harness against real kv-server processes (the CI schedule of
//! docs/testing.md): every fault kind at least once with the registers workload, the set
//! workload under kills and partitions, and a server with a bug planted on purpose, which
//! the check must catch. The runs take turns: each starts a cluster of its own.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

const KV_JEPSEN: &str = env!("CARGO_BIN_EXE_kv-jepsen");

/// One run at a time: a cluster of its own each, on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where kv-server and kvctl are: beside kv-jepsen (`cargo test --workspace --release`
/// builds them there).
fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(KV_JEPSEN).parent().unwrap().to_path_buf();
    for binary in ["kv-server", "kvctl"] {
        assert!(
            dir.join(binary).exists(),
            "{binary} is not in {}: build it first (cargo build --release -p kv-server -p kvctl)",
            dir.display()
        );
    }
    dir
}

/// Runs `kv-jepsen run` with `args` on ports from `base_port`; returns its output and the
/// run's directory (kept while the test runs).
fn run(base_port: u16, args: &[&str]) -> (Output, tempfile::TempDir) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(KV_JEPSEN)
        .arg("run")
        .arg("--out")
        .arg(out.path())
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(["--base-port", &base_port.to_string(), "--seed", "7"])
        .args(["--fault-hold-ms", "1600", "--fault-quiet-ms", "600"])
        .args(args)
        .output()
        .unwrap();
    (output, out)
}

fn stdout(output: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every fault kind, by its name in faults.jsonl: each must be injected in the CI schedule.
const FAULT_KINDS: [&str; 14] = [
    "kill",
    "kill-leader",
    "pause",
    "pause-leader",
    "partition",
    "isolate-leader",
    "bridge",
    "one-way",
    "slow",
    "lossy",
    "membership",
    "transfer-leader",
    "torn-tail",
    "corrupt-record",
];
#[test]
fn registers_stay_linearizable_through_every_fault_kind() {
    let faults = FAULT_KINDS.join(",");
    let args = ["--duration-secs", "70", "--clients", "8", "--faults", &faults];
    let (output, dir) = run(27100, &args);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let faults = std::fs::read_to_string(dir.path().join("faults.jsonl")).unwrap();
    for kind in FAULT_KINDS {
        assert!(faults.contains(&format!("\"{kind}\"")), "{kind} never injected:\n{faults}");
    }
    assert!(text.contains("registers: Valid"), "{text}");
    assert!(dir.path().join("history.jsonl").exists() && dir.path().join("report.txt").exists());
}

#[test]
fn no_acknowledged_element_of_the_set_is_lost_through_kills_and_partitions() {
    let args = ["--duration-secs", "15", "--workload", "set", "--faults", "kill-leader,partition"];
    let (output, _dir) = run(27200, &args);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("set: Valid"), "{text}");
}

/// The harness must be able to fail: with reads served locally (no ReadIndex), a node cut
/// off from the leader answers stale reads, and the check reports them.
#[test]
fn stale_reads_from_a_planted_bug_are_reported() {
    let args = [
        "--duration-secs",
        "15",
        "--faults",
        "partition,isolate-leader",
        "--planted-bug",
        "local-reads",
    ];
    let (output, dir) = run(27300, &args);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("no order of these"), "{text}");
    assert!(dir.path().join("anomaly-0.svg").exists());
}
