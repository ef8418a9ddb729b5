//! One run: start the cluster, let the clients and the nemesis loose for the duration, heal
//! everything, read every key back, and check the history. Everything is kept in the run's
//! directory: `history.jsonl`, `faults.jsonl`, `report.txt`, each anomaly as text and SVG,
//! and the nodes' logs and data.

use crate::client::{self, channel, Completion, Op, Recorder};
use crate::cluster::{Cluster, ClusterSpec};
use crate::history::{pair, read_events, Function, Operation, Outcome};
use crate::linearizable::{self, Verdict};
use crate::nemesis::{self, Fault, FaultWindow};
use crate::workload::{self, Counter, Generator, Workload, SET_PREFIX};
use crate::{plot, report, sets};
use kv_proto::kv::kv_client::KvClient;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Concurrent clients.
    pub clients: usize,
    /// How long clients and faults run (healing and the final reads come after).
    pub duration: Duration,
    /// What the clients do.
    pub workload: Workload,
    /// The fault kinds the nemesis draws from (none: a run without faults).
    pub faults: Vec<Fault>,
    /// Seeds the clients' and the nemesis's choices.
    pub seed: u64,
    /// Where everything is written (the cluster's directory is inside it).
    pub out: PathBuf,
    /// Seconds the linearizability search may spend on one key.
    pub key_budget: Duration,
    /// The longest hold of a fault (the shortest is half of it).
    pub fault_hold: Duration,
    /// The longest quiet spell between faults (the shortest is a third of it).
    pub fault_quiet: Duration,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The verdict over every check.
    pub verdict: Verdict,
    /// The report, as written to `report.txt`.
    pub text: String,
}

/// How long the cluster may take to serve again after healing.
const RECOVERY_MAX: Duration = Duration::from_secs(60);

/// Runs `spec` and checks its history.
pub async fn run(spec: &RunSpec) -> Result<Summary, String> {
    if spec.out.join("history.jsonl").exists() || spec.out.join("cluster").exists() {
        // Its cluster's data would be read back as writes no operation of this run made.
        return Err(format!(
            "{} holds an earlier run: give an empty directory",
            spec.out.display()
        ));
    }
    std::fs::create_dir_all(&spec.out).map_err(|e| format!("{}: {e}", spec.out.display()))?;
    let mut cluster = Cluster::start(spec.cluster.clone()).await?;
    wait_until_serving(&cluster, RECOVERY_MAX).await?;
    let recorder = Recorder::create(&spec.out.join("history.jsonl"))?;
    let counter = Arc::new(Counter::default());
    let deadline = Instant::now() + spec.duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..spec.clients {
        let address = cluster.client_address(c % cluster.size());
        let channel = channel(address, &cluster.certs())?;
        let (recorder, counter, spec) = (recorder.clone(), counter.clone(), spec.clone());
        clients.spawn(async move {
            client_loop(c, KvClient::new(channel), &recorder, &counter, &spec, deadline).await
        });
    }
    let faults = run_nemesis(&mut cluster, spec, &recorder, deadline).await?;
    while clients.join_next().await.is_some() {}
    cluster.links.heal();
    cluster.restore()?;
    wait_until_serving(&cluster, RECOVERY_MAX).await?;
    final_reads(&cluster, spec, &recorder, &counter).await?;
    recorder.flush()?;
    drop(cluster);
    write_faults(&spec.out.join("faults.jsonl"), &faults)?;
    let (verdict, checked) =
        check_history(&spec.out.join("history.jsonl"), &spec.out, SET_PREFIX, spec.key_budget)?;
    let history = load_history(&spec.out.join("history.jsonl"))?;
    let title =
        format!("{:?} workload, {} nodes, seed {}", spec.workload, spec.cluster.nodes, spec.seed);
    write(&spec.out.join("plot.svg"), &plot::plot_svg(&history, &faults, &title))?;
    let text = summary_text(spec, &faults, &checked, verdict)?;
    std::fs::write(spec.out.join("report.txt"), &text)
        .map_err(|e| format!("{}: {e}", spec.out.display()))?;
    Ok(Summary { verdict, text })
}

/// One client: operations until the deadline, through the node it is bound to.
async fn client_loop(
    c: usize,
    mut client: KvClient<tonic::transport::Channel>,
    recorder: &Recorder,
    counter: &Counter,
    spec: &RunSpec,
    deadline: Instant,
) {
    let mut generator = Generator::new(spec.workload, c as u64, spec.seed);
    let mut process = c as u64;
    while Instant::now() < deadline {
        let op = generator.next(counter);
        let completion = client::run(&mut client, recorder, process, &op).await;
        match (&op, completion) {
            (_, Completion::Info) => {
                // The operation stays open forever: the client goes on as a new process.
                process += spec.clients as u64;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (_, Completion::Fail) => tokio::time::sleep(Duration::from_millis(20)).await,
            (Op::Get { key }, Completion::Ok(Value::String(value))) => {
                generator.saw(key, Some(value));
            }
            (Op::Get { key } | Op::Delete { key }, Completion::Ok(_)) => generator.saw(key, None),
            (Op::Set { key, value } | Op::Cas { key, value, .. }, Completion::Ok(_)) => {
                generator.saw(key, Some(value.clone()));
            }
            (Op::List { .. }, Completion::Ok(_)) => {}
        }
    }
}

/// Faults until the deadline: a quiet spell, a fault held a while, healed; again. The kinds
/// come in rounds, each enabled kind once per round in a random order, so that a run of a
/// few rounds has seen every kind.
async fn run_nemesis(
    cluster: &mut Cluster,
    spec: &RunSpec,
    recorder: &Recorder,
    deadline: Instant,
) -> Result<Vec<FaultWindow>, String> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut windows = Vec::new();
    let mut round: Vec<Fault> = Vec::new();
    let mut unhealed = Vec::new();
    loop {
        let quiet = between(&mut rng, spec.fault_quiet / 3, spec.fault_quiet);
        tokio::time::sleep(quiet.min(deadline.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= deadline || spec.faults.is_empty() {
            break;
        }
        if round.is_empty() {
            round = spec.faults.clone();
            rng.shuffle(&mut round);
        }
        let fault = round.pop().expect("a round holds every enabled kind");
        let start = recorder.now();
        let (what, heal) = nemesis::apply(cluster, fault, &mut rng).await;
        let hold = between(&mut rng, spec.fault_hold / 2, spec.fault_hold);
        tokio::time::sleep(hold.min(deadline.saturating_duration_since(Instant::now()))).await;
        let what = match nemesis::heal(cluster, heal).await {
            Ok(()) => what,
            Err(e) => {
                // Tried again once the faults stop (below), with nothing else going on.
                unhealed.push(heal);
                format!("{what}; healing failed for now: {e}")
            }
        };
        windows.push(FaultWindow { fault, what, start, end: recorder.now() });
    }
    if spec.faults.is_empty() {
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    }
    for heal in unhealed {
        nemesis::heal(cluster, heal).await.map_err(|e| format!("healing {heal:?}: {e}"))?;
    }
    Ok(windows)
}

/// A duration drawn from `[low, high]`.
fn between(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (low.as_millis() as u64, high.as_millis() as u64);
    Duration::from_millis(rng.u64(low..=high.max(low)))
}

/// Waits until a write through every node succeeds (not recorded: its key is the
/// harness's own).
async fn wait_until_serving(cluster: &Cluster, within: Duration) -> Result<(), String> {
    let give_up = Instant::now() + within;
    for i in 0..cluster.size() {
        let mut client = KvClient::new(channel(cluster.client_address(i), &cluster.certs())?);
        loop {
            let request = kv_proto::kv::SetRequest {
                key: "jepsen/ready".into(),
                value: format!("n{}", i + 1).into(),
                session: None,
            };
            let call = tokio::time::timeout(Duration::from_secs(2), client.set(request)).await;
            if matches!(call, Ok(Ok(_))) {
                break;
            }
            if Instant::now() >= give_up {
                return Err(format!("n{} did not serve within {within:?}", i + 1));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// After healing: one successful read of every key (registers) or one list (set), so that
/// an acknowledged write missing at the end shows.
async fn final_reads(
    cluster: &Cluster,
    spec: &RunSpec,
    recorder: &Recorder,
    counter: &Counter,
) -> Result<(), String> {
    let mut client = KvClient::new(channel(cluster.client_address(0), &cluster.certs())?);
    let ops: Vec<Op> = match spec.workload {
        Workload::Registers => workload::register_keys_touched(counter)
            .into_iter()
            .map(|key| Op::Get { key })
            .collect(),
        Workload::Set => vec![Op::List { prefix: SET_PREFIX.to_string() }],
    };
    let mut process = u64::MAX / 2; // apart from every client's
    for op in ops {
        let give_up = Instant::now() + RECOVERY_MAX;
        loop {
            match client::run(&mut client, recorder, process, &op).await {
                Completion::Ok(_) => break,
                Completion::Info => process += 1, // the unknown one stays open
                Completion::Fail => {}
            }
            if Instant::now() >= give_up {
                return Err(format!("the final read {op:?} kept failing for {RECOVERY_MAX:?}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

fn write_faults(path: &Path, faults: &[FaultWindow]) -> Result<(), String> {
    let lines: Vec<String> =
        faults.iter().map(|f| serde_json::to_string(f).unwrap_or_default()).collect();
    std::fs::write(path, lines.join("\n") + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the history in `path`: registers for linearizability, the set workload's adds
/// against its lists. Writes each anomaly to `out` as text and SVG; returns the verdict and
/// what it found, in words.
pub fn check_history(
    path: &Path,
    out: &Path,
    set_prefix: &str,
    per_key: Duration,
) -> Result<(Verdict, String), String> {
    let history = load_history(path)?;
    let (registers, set_ops): (Vec<Operation>, Vec<Operation>) =
        history.iter().cloned().partition(|op| !op.key.starts_with(set_prefix));
    let found = linearizable::check(&registers, per_key).map_err(|e| e.to_string())?;
    let mut text = format!(
        "registers: {:?} ({} keys, {} operations)\n",
        found.verdict,
        found.keys,
        registers.len()
    );
    for key in &found.unknown {
        let _ = writeln!(text, "  key {key:?}: the search ran out of budget (unknown)");
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (n, anomaly) in found.anomalies.iter().enumerate() {
        let anomaly_text = report::anomaly_text(anomaly, &history);
        text.push_str(&anomaly_text);
        let outlined: HashSet<usize> = anomaly.ops.iter().copied().collect();
        let title = anomaly_text.lines().next().unwrap_or_default();
        let svg = report::timeline_svg(&report::around(anomaly, &history), &outlined, title);
        write(&out.join(format!("anomaly-{n}.txt")), &anomaly_text)?;
        write(&out.join(format!("anomaly-{n}.svg")), &svg)?;
    }
    let mut verdict = found.verdict;
    if set_ops.iter().any(|op| op.f == Function::List) {
        let set_report = sets::check(&set_ops, set_prefix)?;
        let _ = writeln!(
            text,
            "set: {:?} ({} lists, {} acknowledged adds, {} adds of unknown outcome present)",
            set_report.verdict,
            set_report.lists,
            set_report.acknowledged,
            set_report.unknown_present
        );
        for anomaly in &set_report.anomalies {
            let _ = writeln!(text, "  {anomaly:?}");
        }
        verdict = verdict.max(set_report.verdict);
    }
    let count = |outcome| history.iter().filter(|op| op.outcome == outcome).count();
    let _ = writeln!(
        text,
        "operations: {} ({} ok, {} fail, {} unknown)\nverdict: {verdict:?}",
        history.len(),
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Info)
    );
    Ok((verdict, text))
}

/// Reads a history file and pairs its events into operations.
pub fn load_history(path: &Path) -> Result<Vec<Operation>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let events = read_events(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    pair(&events).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn summary_text(
    spec: &RunSpec,
    faults: &[FaultWindow],
    checked: &str,
    verdict: Verdict,
) -> Result<String, String> {
    let mut text = format!(
        "run: {} nodes, {} clients, {:?}, workload {:?}, seed {}, verdict {verdict:?}\n\
         faults ({}):\n",
        spec.cluster.nodes,
        spec.clients,
        spec.duration,
        spec.workload,
        spec.seed,
        faults.len()
    );
    for fault in faults {
        let _ = writeln!(
            text,
            "  {:>9.3} s .. {:>9.3} s  {:?}: {}",
            fault.start as f64 / 1e9,
            fault.end as f64 / 1e9,
            fault.fault,
            fault.what
        );
    }
    text.push_str(checked);
    Ok(text)
}
