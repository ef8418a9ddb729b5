//! `kvctl dev`: a three-node cluster on loopback, as three separate processes (this same
//! binary, running `kvctl node`), with certificates made on the spot: mutual TLS between
//! peers and for clients. Ctrl-C (or SIGTERM) stops every node with SIGTERM (each hands over
//! leadership if it leads, and exits once its log is flushed).

use crate::certs;
use kv_server::scheduling::Scheduling;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The ports of node `i` (from 1): client `base + i`, peer `base + 10 + i`.
fn ports(base: u16, i: u16) -> (u16, u16) {
    (base + i, base + 10 + i)
}

/// The threads each of `nodes` nodes on this machine gets (`--threads`): its share of the
/// cores, at least one. The nodes share the cores, so a runtime per core in each would only
/// add thread hand-overs (on 2 cores, three nodes run one thread each).
fn threads_per_node(cores: usize, nodes: u16) -> usize {
    (cores / usize::from(nodes.max(1))).max(1)
}

/// The scheduling each of `nodes` nodes on this machine gets (`--scheduling`): batch when
/// there are more nodes than cores, so that a node woken by another does not stop it
/// mid-turn (kv_server::scheduling); the kernel's default otherwise, and off Linux.
fn scheduling_for(cores: usize, nodes: u16) -> Scheduling {
    if cfg!(target_os = "linux") && usize::from(nodes) > cores {
        Scheduling::Batch
    } else {
        Scheduling::Normal
    }
}

/// `value` as its flag spells it (clap's name for the variant).
fn flag_value(value: impl clap::ValueEnum) -> String {
    value.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// The example access policy shipped in `config/auth-policy.toml`.
const EXAMPLE_POLICY: &str = include_str!("../../config/auth-policy.toml");

/// Runs the cluster until Ctrl-C or SIGTERM, or until a node exits.
pub async fn run(dir: &Path, nodes: u16, base_port: u16) -> Result<(), String> {
    let certs_dir = dir.join("certs");
    let ca = certs::ca(&certs_dir).map_err(|e| e.to_string())?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    for name in &names {
        certs::node(&certs_dir, &ca, name, &[]).map_err(|e| e.to_string())?;
    }
    for user in ["root", "app", "auditor"] {
        certs::client(&certs_dir, &ca, user).map_err(|e| e.to_string())?;
    }
    // The repository's example policy: root may do everything, app read and write under
    // app/, auditor read; anyone else nothing (docs/security.md).
    let policy = dir.join("auth-policy.toml");
    std::fs::write(&policy, EXAMPLE_POLICY).map_err(|e| format!("{}: {e}", policy.display()))?;
    let initial_cluster: Vec<String> =
        (1..=nodes).map(|i| format!("n{i}=127.0.0.1:{}", ports(base_port, i).1)).collect();
    let initial_cluster = initial_cluster.join(",");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let node = NodeSetup {
        exe: &exe,
        dir,
        certs_dir: &certs_dir,
        base_port,
        initial_cluster: &initial_cluster,
        threads: threads_per_node(cores, nodes),
        scheduling: scheduling_for(cores, nodes),
    };
    let mut children = Vec::new();
    for i in 1..=nodes {
        children.push(spawn(&node, i)?);
    }
    print_help(dir, &certs_dir, nodes, base_port);
    let stopped = tokio::select! {
        () = kv_server::server::shutdown_signal() => None,
        exited = first_exit(&mut children) => Some(exited),
    };
    if let Some((i, status)) = stopped {
        eprintln!("node n{} exited ({status}); stopping the others", i + 1);
    }
    eprintln!("stopping the cluster");
    for child in &mut children {
        stop(child).await;
    }
    Ok(())
}

/// What every node of the dev cluster is started with.
struct NodeSetup<'a> {
    exe: &'a Path,
    dir: &'a Path,
    certs_dir: &'a Path,
    base_port: u16,
    initial_cluster: &'a str,
    threads: usize,
    scheduling: Scheduling,
}

fn spawn(setup: &NodeSetup<'_>, i: u16) -> Result<Child, String> {
    let NodeSetup { exe, dir, certs_dir, base_port, initial_cluster, threads, scheduling } = *setup;
    let (client, peer) = ports(base_port, i);
    let name = format!("n{i}");
    let cert = |file: &str| certs_dir.join(file).display().to_string();
    let log_path = dir.join(format!("{name}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    Command::new(exe)
        .arg("node")
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--data-dir={}", dir.join(&name).display()))
        .arg(format!("--listen-peer-address=127.0.0.1:{peer}"))
        .arg(format!("--listen-client-address=127.0.0.1:{client}"))
        .arg(format!("--peer-cert-file={}", cert(&format!("{name}.pem"))))
        .arg(format!("--peer-key-file={}", cert(&format!("{name}-key.pem"))))
        .arg(format!("--peer-trusted-ca-file={}", cert("ca.pem")))
        .arg(format!("--cert-file={}", cert(&format!("{name}.pem"))))
        .arg(format!("--key-file={}", cert(&format!("{name}-key.pem"))))
        .arg(format!("--trusted-ca-file={}", cert("ca.pem")))
        .arg(format!("--auth-policy-file={}", dir.join("auth-policy.toml").display()))
        .arg(format!("--threads={threads}"))
        .arg(format!("--scheduling={}", flag_value(scheduling)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))
}

fn print_help(dir: &Path, certs_dir: &Path, nodes: u16, base_port: u16) {
    let endpoints: Vec<String> =
        (1..=nodes).map(|i| format!("127.0.0.1:{}", ports(base_port, i).0)).collect();
    let file = |f: &str| -> PathBuf { certs_dir.join(f) };
    println!(
        "A {nodes}-node cluster is running (logs in {}/n*.log). In another shell:",
        dir.display()
    );
    println!();
    println!("  export KVCTL_ENDPOINTS={}", endpoints.join(","));
    println!("  export KVCTL_CACERT={}", file("ca.pem").display());
    println!("  export KVCTL_CERT={}", file("client-root.pem").display());
    println!("  export KVCTL_KEY={}", file("client-root-key.pem").display());
    println!("  cargo run --release -p kvctl -- set greeting hello");
    println!("  cargo run --release -p kvctl -- get greeting");
    println!("  cargo run --release -p kvctl -- member-list");
    println!();
    println!(
        "Access control is on ({}): the root certificate may do everything; client-app \
         may read and write under app/, client-auditor may read.",
        dir.join("auth-policy.toml").display()
    );
    println!();
    println!("Ctrl-C stops every node.");
}

/// Waits until one child exits; returns its position and status.
async fn first_exit(children: &mut [Child]) -> (usize, String) {
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then SIGKILL if the node has not exited within 10 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{flag_value, scheduling_for, threads_per_node};
    use kv_server::scheduling::Scheduling;

    #[test]
    fn nodes_share_the_cores_with_at_least_one_thread_each() {
        assert_eq!(threads_per_node(2, 3), 1);
        assert_eq!(threads_per_node(1, 1), 1);
        assert_eq!(threads_per_node(8, 3), 2);
        assert_eq!(threads_per_node(16, 1), 16);
        assert_eq!(threads_per_node(4, 0), 4, "no nodes is treated as one");
    }

    #[test]
    fn nodes_are_batch_scheduled_only_when_they_outnumber_the_cores() {
        let crowded =
            if cfg!(target_os = "linux") { Scheduling::Batch } else { Scheduling::Normal };
        assert_eq!(scheduling_for(2, 3), crowded);
        assert_eq!(scheduling_for(1, 2), crowded);
        assert_eq!(scheduling_for(2, 2), Scheduling::Normal);
        assert_eq!(scheduling_for(8, 3), Scheduling::Normal);
        assert_eq!(flag_value(Scheduling::Batch), "batch", "what kv-server's flag accepts");
    }
}
