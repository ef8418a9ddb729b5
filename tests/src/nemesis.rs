//! The nemesis: faults on a schedule. It waits a quiet spell, picks one of the enabled fault
//! kinds at random (from the run's seed), applies it, holds it a while, heals it, and writes
//! down when and what, so that a report can shade the fault windows.

use crate::client::channel;
use crate::cluster::Cluster;
use crate::proxy::Link;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::GetServersRequest;
use serde::Serialize;
use std::time::Duration;

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL a random node, restart it after the hold.
    Kill,
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT after the hold.
    Pause,
    /// SIGSTOP the leader (it wakes up believing it still leads), SIGCONT after the hold.
    PauseLeader,
    /// Cut a random minority off from the majority, both ways.
    Partition,
    /// Cut the leader off from everyone, both ways.
    IsolateLeader,
    /// Two halves that one node (the bridge) sees both of (needs 5 nodes; 3 nodes: a
    /// partition of two nodes that cannot see each other but both see the third).
    Bridge,
    /// Cut random links in one direction only.
    OneWay,
    /// Hold every byte between the nodes back 50 ms.
    Slow,
    /// Reset connections between the nodes at random (5% of reads).
    Lossy,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 10] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::Pause,
        Fault::PauseLeader,
        Fault::Partition,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Slow,
        Fault::Lossy,
    ];
}

/// One fault applied: from when to when (nanoseconds of the history's clock), what, where.
#[derive(Clone, Debug, Serialize)]
pub struct FaultWindow {
    /// The kind.
    pub fault: Fault,
    /// In words: which nodes or links.
    pub what: String,
    /// Applied at.
    pub start: u64,
    /// Healed at.
    pub end: u64,
}

/// The node that leads according to any node answering, if one does.
pub async fn find_leader(cluster: &Cluster) -> Option<usize> {
    for i in 0..cluster.size() {
        let Ok(channel) = channel(cluster.client_address(i), &cluster.certs()) else { continue };
        let mut client = KvClient::new(channel);
        let call = client.get_servers(GetServersRequest {});
        let Ok(Ok(servers)) = tokio::time::timeout(Duration::from_millis(500), call).await else {
            continue;
        };
        let leader = servers.into_inner().servers.into_iter().find(|s| s.is_leader);
        if let Some(index) = leader.and_then(|s| s.name.strip_prefix('n')?.parse::<usize>().ok()) {
            return index.checked_sub(1).filter(|&i| i < cluster.size());
        }
    }
    None
}

/// Applies `fault` to `cluster`; returns what it did, in words, and how to heal it.
pub async fn apply(cluster: &mut Cluster, fault: Fault, rng: &mut fastrand::Rng) -> (String, Heal) {
    let n = cluster.size();
    let random = |rng: &mut fastrand::Rng| rng.usize(..n);
    match fault {
        Fault::Kill | Fault::KillLeader => {
            let node = target(cluster, fault == Fault::KillLeader, rng).await;
            cluster.kill(node);
            (format!("killed n{}", node + 1), Heal::Restart(node))
        }
        Fault::Pause | Fault::PauseLeader => {
            let node = target(cluster, fault == Fault::PauseLeader, rng).await;
            cluster.pause(node);
            (format!("paused n{}", node + 1), Heal::Resume(node))
        }
        Fault::Partition => {
            let mut nodes: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut nodes);
            let minority = &nodes[..(n - 1) / 2];
            cut_off(cluster, minority);
            (format!("partitioned {} from the rest", names(minority)), Heal::Links)
        }
        Fault::IsolateLeader => {
            let leader = find_leader(cluster).await.unwrap_or_else(|| random(rng));
            cut_off(cluster, &[leader]);
            (format!("isolated the leader n{}", leader + 1), Heal::Links)
        }
        Fault::Bridge => {
            let mut nodes: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut nodes);
            let (bridge, rest) = nodes.split_first().expect("a cluster has nodes");
            let (left, right) = rest.split_at(rest.len() / 2);
            for &a in left {
                for &b in right {
                    cluster.links.set(a, b, Link::Down);
                    cluster.links.set(b, a, Link::Down);
                }
            }
            let what = format!("{} | n{} | {}", names(left), bridge + 1, names(right));
            (what, Heal::Links)
        }
        Fault::OneWay => {
            let mut cut = Vec::new();
            for _ in 0..n {
                let (from, to) = (random(rng), random(rng));
                if from != to {
                    cluster.links.set(from, to, Link::Down);
                    cut.push(format!("n{}->n{}", from + 1, to + 1));
                }
            }
            (format!("cut {}", cut.join(", ")), Heal::Links)
        }
        Fault::Slow | Fault::Lossy => {
            let link = match fault {
                Fault::Slow => Link::Slow(Duration::from_millis(50)),
                _ => Link::Lossy(0.05),
            };
            for from in 0..n {
                for to in (0..n).filter(|&to| to != from) {
                    cluster.links.set(from, to, link);
                }
            }
            (format!("every link {link:?}"), Heal::Links)
        }
    }
}

/// How a fault is undone.
#[derive(Clone, Copy, Debug)]
pub enum Heal {
    /// Start the node again.
    Restart(usize),
    /// SIGCONT the node.
    Resume(usize),
    /// Every link up.
    Links,
}

/// Undoes a fault.
pub fn heal(cluster: &mut Cluster, heal: Heal) -> Result<(), String> {
    match heal {
        Heal::Restart(node) => cluster.start_node(node),
        Heal::Resume(node) => {
            cluster.resume(node);
            Ok(())
        }
        Heal::Links => {
            cluster.links.heal();
            Ok(())
        }
    }
}

async fn target(cluster: &Cluster, leader: bool, rng: &mut fastrand::Rng) -> usize {
    let found = if leader { find_leader(cluster).await } else { None };
    found.unwrap_or_else(|| rng.usize(..cluster.size()))
}

/// Cuts `group` off from every other node, both ways.
fn cut_off(cluster: &Cluster, group: &[usize]) {
    for &inside in group {
        for outside in (0..cluster.size()).filter(|o| !group.contains(o)) {
            cluster.links.set(inside, outside, Link::Down);
            cluster.links.set(outside, inside, Link::Down);
        }
    }
}

fn names(nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("n{}", n + 1)).collect();
    format!("{{{}}}", names.join(","))
}
