//! The nemesis: faults on a schedule. It waits a quiet spell, picks one of the enabled fault
//! kinds at random (from the run's seed), applies it, holds it a while, heals it, and writes
//! down when and what, so that a report can shade the fault windows.

use crate::client::channel;
use crate::cluster::Cluster;
use crate::proxy::Link;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::{
    MemberJoinRequest, MemberLeaveRequest, MemberListRequest, StatusRequest,
    TransferLeadershipRequest,
};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

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
    /// Remove a node (at random, or the leader) from the configuration; after the hold, join
    /// it again as a fresh member with an empty data directory (a replacement).
    Membership,
    /// Hand leadership to another voter.
    TransferLeader,
    /// SIGKILL a node, write a torn batch after the records of its newest log segment (the
    /// start of a batch cut inside its first record, as a crash during the write of a batch
    /// not yet synced leaves it), restart it after the hold: it must recover, losing nothing.
    TornTail,
    /// SIGKILL a node, flip a byte inside a committed record of its newest segment, start it:
    /// it must refuse to start; after the hold it is replaced by a fresh member.
    CorruptRecord,
    /// SIGKILL a node, cut its newest log segment inside its last record, restart it after
    /// the hold. Outside Raft's fault model: the cut may take entries the node synced and
    /// acknowledged (a disk that loses acknowledged writes), so a violation under it is not
    /// necessarily a bug. Not among the defaults; it exercises the leader's repair of a
    /// follower that lost what it acknowledged.
    LostTail,
}

impl Fault {
    /// Every kind inside Raft's fault model: all but [`Fault::LostTail`] (the default set).
    pub const ALL: [Fault; 14] = [
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
        Fault::Membership,
        Fault::TransferLeader,
        Fault::TornTail,
        Fault::CorruptRecord,
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

/// The node that says it leads, in the highest term any node claims leadership in (an old
/// leader back from a pause may still believe it leads, in an older term).
pub async fn find_leader(cluster: &Cluster) -> Option<usize> {
    let mut leader: Option<(u64, usize)> = None;
    for i in 0..cluster.size() {
        let Ok(channel) = channel(cluster.client_address(i), &cluster.certs()) else { continue };
        let mut client = ClusterClient::new(channel);
        let call = client.status(StatusRequest {});
        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(500), call).await else {
            continue;
        };
        let status = status.into_inner();
        if status.role == "leader" && leader.is_none_or(|(term, _)| status.term > term) {
            leader = Some((status.term, i));
        }
    }
    leader.map(|(_, i)| i)
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
            let (node, who) = match find_leader(cluster).await {
                Some(leader) => (leader, "the leader"),
                None => (random(rng), "(no leader known) node"),
            };
            cut_off(cluster, &[node]);
            (format!("isolated {who} n{}", node + 1), Heal::Links)
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
            // One to n-1 links cut, never both directions of a pair.
            let mut pairs: Vec<(usize, usize)> =
                (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|(a, b)| a < b).collect();
            rng.shuffle(&mut pairs);
            let mut cut = Vec::new();
            for &(a, b) in &pairs[..rng.usize(1..n)] {
                let (from, to) = if rng.bool() { (a, b) } else { (b, a) };
                cluster.links.set(from, to, Link::Down);
                cut.push(format!("n{}->n{}", from + 1, to + 1));
            }
            (format!("cut {} (one way)", cut.join(", ")), Heal::Links)
        }
        Fault::Membership => {
            let node = target(cluster, rng.bool(), rng).await;
            match remove(cluster, node).await {
                Ok(()) => (format!("removed n{}", node + 1), Heal::Rejoin(node)),
                Err(e) => (format!("removing n{} was refused: {e}", node + 1), Heal::Nothing),
            }
        }
        Fault::TransferLeader => {
            let to = random(rng);
            let name = format!("n{}", to + 1);
            let answer = cluster_call(cluster, |mut c| {
                let name = name.clone();
                async move { c.transfer_leadership(TransferLeadershipRequest { name }).await }
            })
            .await;
            let what = match answer {
                Ok(answer) => format!("leadership handed to {}", answer.leader_name),
                Err(e) => format!("handing leadership to {name} was refused: {e}"),
            };
            (what, Heal::Nothing)
        }
        Fault::TornTail | Fault::LostTail => {
            let node = random(rng);
            cluster.kill(node);
            let damage = match fault {
                Fault::TornTail => tear_after_records,
                _ => cut_last_record,
            };
            let what = match cluster.newest_segment(node) {
                Some(segment) => damage(&segment, rng),
                None => "no segment to damage".to_string(),
            };
            (format!("killed n{}; {what}", node + 1), Heal::Restart(node))
        }
        Fault::CorruptRecord => {
            let node = fullest_segment(cluster).unwrap_or_else(|| random(rng));
            corrupt_a_record(cluster, node, rng).await
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
    /// Join the removed node again, as a fresh member.
    Rejoin(usize),
    /// Remove the (stopped) node and join it again, as a fresh member.
    Replace(usize),
    /// Nothing to undo.
    Nothing,
}

/// Undoes a fault.
pub async fn heal(cluster: &mut Cluster, heal: Heal) -> Result<(), String> {
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
        Heal::Rejoin(node) => rejoin(cluster, node).await,
        Heal::Replace(node) => {
            remove(cluster, node).await?;
            rejoin(cluster, node).await
        }
        Heal::Nothing => Ok(()),
    }
}

/// How long a membership request may keep being refused (no leader yet, a change in
/// progress) before the harness gives up.
const MEMBERSHIP_PATIENCE: Duration = Duration::from_secs(45);

/// Sends a Cluster request to each node in turn until one (the leader) takes it, or one
/// refuses it for good (the request itself is wrong: it names a member that exists, or none).
async fn cluster_call<T, F, Fut>(cluster: &Cluster, call: F) -> Result<T, String>
where
    F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = Instant::now() + MEMBERSHIP_PATIENCE;
    let mut answers: Vec<String> = vec!["no node answered".into(); cluster.size()];
    while Instant::now() < give_up {
        for (i, last) in answers.iter_mut().enumerate() {
            let channel = channel(cluster.client_address(i), &cluster.certs())?;
            let answer =
                tokio::time::timeout(Duration::from_secs(3), call(ClusterClient::new(channel)));
            match answer.await {
                Ok(Ok(answer)) => return Ok(answer.into_inner()),
                Ok(Err(status)) if refused_for_good(&status) => {
                    return Err(format!("n{}: {}", i + 1, status.message()));
                }
                Ok(Err(status)) => *last = format!("n{}: {}", i + 1, status.message()),
                Err(_) => *last = format!("n{}: no answer in 3 s", i + 1),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(answers.join("; "))
}

fn refused_for_good(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::AlreadyExists | Code::NotFound | Code::InvalidArgument)
}

/// Removes node `node` from the configuration; it stops by itself once that is committed
/// (it is killed if it has not within 10 s).
async fn remove(cluster: &mut Cluster, node: usize) -> Result<(), String> {
    let name = format!("n{}", node + 1);
    let left = cluster_call(cluster, |mut c| {
        let name = name.clone();
        async move { c.member_leave(MemberLeaveRequest { name }).await }
    })
    .await;
    match left {
        Ok(_) => {}
        // Removed already (a heal tried again after its removal went through).
        Err(e) if e.contains("no member named") => {}
        Err(e) => return Err(e),
    }
    if cluster.is_running(node) && cluster.wait_exit(node, Duration::from_secs(10)).await.is_none()
    {
        cluster.kill(node);
    }
    Ok(())
}

/// Joins node `node` again as a fresh member (a new id, an empty data directory).
async fn rejoin(cluster: &mut Cluster, node: usize) -> Result<(), String> {
    let name = format!("n{}", node + 1);
    let (peer_address, client_address) =
        (cluster.peer_address(node).to_string(), cluster.client_address(node).to_string());
    let request =
        MemberJoinRequest { name: name.clone(), peer_address, client_address, learner: false };
    let joined = match join(cluster, &request).await {
        Ok(joined) => joined,
        Err(refused) if refused.contains("already has the name") => {
            // A leader that removed itself leaves its row in the member table (it stepped
            // down before it could delete it): a second MemberLeave at the new leader does.
            cluster_call(cluster, |mut c| {
                let name = name.clone();
                async move { c.member_leave(MemberLeaveRequest { name }).await }
            })
            .await?;
            join(cluster, &request).await?
        }
        Err(refused) => return Err(refused),
    };
    let mut members = joined.members;
    members.extend(joined.member);
    members.sort_by_key(|m| m.id);
    members.dedup_by_key(|m| m.id);
    let initial: Vec<String> =
        members.iter().map(|m| format!("{}@{}={}", m.name, m.id, m.peer_address)).collect();
    cluster.rejoin_as(node, initial.join(","))?;
    cluster.start_node(node)?;
    wait_until_voter(cluster, &name).await
}

/// Waits until a member list shows `name` as a voter. A rejoined node is healed once it
/// votes again, as an operator would wait before touching the next node: a fault that
/// struck one of the two voters while the third still caught up as a learner would leave no
/// majority, and no way to replace the node.
async fn wait_until_voter(cluster: &Cluster, name: &str) -> Result<(), String> {
    let give_up = Instant::now() + MEMBERSHIP_PATIENCE;
    loop {
        let listed =
            cluster_call(cluster, |mut c| async move { c.member_list(MemberListRequest {}).await })
                .await?;
        if listed.members.iter().any(|m| m.name == name && !m.is_learner) {
            return Ok(());
        }
        if Instant::now() >= give_up {
            let members: Vec<String> = listed
                .members
                .iter()
                .map(|m| format!("{}{}", m.name, if m.is_learner { " (learner)" } else { "" }))
                .collect();
            return Err(format!(
                "{name} was not a voter within {MEMBERSHIP_PATIENCE:?}; members: {}",
                members.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node whose newest segment holds the most bytes of records.
fn fullest_segment(cluster: &Cluster) -> Option<usize> {
    let records = |i: usize| {
        let bytes = cluster.newest_segment(i).and_then(|s| std::fs::read(s).ok());
        bytes.map_or(0, |b| records_of(&b).end)
    };
    (0..cluster.size()).max_by_key(|&i| records(i))
}

async fn join(
    cluster: &Cluster,
    request: &MemberJoinRequest,
) -> Result<kv_proto::kv::MemberJoinResponse, String> {
    cluster_call(cluster, |mut c| {
        let request = request.clone();
        async move { c.member_join(request).await }
    })
    .await
}

/// Cuts `segment` inside its last record; says what it did. The record may have been synced
/// and acknowledged: this loses it ([`Fault::LostTail`]).
fn cut_last_record(segment: &Path, rng: &mut fastrand::Rng) -> String {
    let Ok(bytes) = std::fs::read(segment) else { return "the segment could not be read".into() };
    let end = records_of(&bytes).end;
    if end == 0 {
        return "the newest segment is empty".into();
    }
    let cut = end - rng.usize(1..=end.min(40));
    let file = std::fs::OpenOptions::new().write(true).open(segment);
    match file.and_then(|f| f.set_len(cut as u64)) {
        Ok(()) => format!("cut {} at byte {cut} of {end}", segment.display()),
        Err(e) => format!("cutting {} failed: {e}", segment.display()),
    }
}

/// Writes a torn batch after the intact records of `segment` ([`Fault::TornTail`]): the
/// first bytes of its last batch again, cut inside that batch's first record, so that no
/// whole record is repeated. That is what a crash leaves of a batch whose write had begun
/// and whose sync had not ended: nothing in it was acknowledged, and every record before it
/// stays. Says what it did.
fn tear_after_records(segment: &Path, rng: &mut fastrand::Rng) -> String {
    let Ok(bytes) = std::fs::read(segment) else { return "the segment could not be read".into() };
    let Records { end, last_batch_first } = records_of(&bytes);
    let Some(torn) = last_batch_first.and_then(|first| torn_record(&bytes[first], rng)) else {
        return "the newest segment holds no batch to repeat torn".into();
    };
    let write = std::fs::OpenOptions::new().write(true).open(segment).and_then(|file| {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&torn, end as u64)
    });
    match write {
        Ok(()) => format!(
            "wrote {} bytes of a torn batch at byte {end} of {}",
            torn.len(),
            segment.display()
        ),
        Err(e) => format!("writing a torn batch into {} failed: {e}", segment.display()),
    }
}

/// The first bytes of `record` (a batch's first record), cut inside it: at least one byte
/// that is not zero, and fewer bytes than the record has.
fn torn_record(record: &[u8], rng: &mut fastrand::Rng) -> Option<Vec<u8>> {
    // Through at least one byte that is not zero: zeros alone would leave the room as it was.
    let shortest = record.iter().position(|&b| b != 0)? + 1;
    (shortest < record.len()).then(|| record[..rng.usize(shortest..record.len())].to_vec())
}

/// What one scan of a segment's bytes finds.
struct Records {
    /// Where the intact records end: what follows is room (zeros) or damage.
    end: usize,
    /// The bytes of the first record of the last batch, if there is a batch. Every byte
    /// before its start is in a batch that a later one follows, so it was durable when the
    /// node died.
    last_batch_first: Option<std::ops::Range<usize>>,
}

fn records_of(bytes: &[u8]) -> Records {
    use raft_log::record::{scan, RecordKind, ScanEnd};
    let (records, scan_end) = scan(bytes);
    let end = match scan_end {
        ScanEnd::Clean => bytes.len(),
        ScanEnd::Torn { offset } | ScanEnd::Corrupt { offset, .. } => offset,
    };
    let last_batch_first =
        records.iter().rposition(|r| r.kind == RecordKind::BatchStart).map(|i| {
            let next = records.get(i + 1).map_or(end, |r| r.offset);
            records[i].offset..next
        });
    Records { end, last_batch_first }
}

/// Kills `node`, flips a byte in the first half of its newest segment's durable batches
/// (before the last batch, which the log could not tell from a torn write) and starts it: it
/// must refuse to start. Healed by replacing the node.
async fn corrupt_a_record(
    cluster: &mut Cluster,
    node: usize,
    rng: &mut fastrand::Rng,
) -> (String, Heal) {
    cluster.kill(node);
    let name = format!("n{}", node + 1);
    let Some(segment) = cluster.newest_segment(node) else {
        return (format!("killed {name}: no segment to damage"), Heal::Restart(node));
    };
    let Ok(mut bytes) = std::fs::read(&segment) else {
        return (format!("killed {name}: its segment could not be read"), Heal::Restart(node));
    };
    let durable = records_of(&bytes).last_batch_first.map_or(0, |first| first.start);
    if durable < 256 {
        return (format!("killed {name}: too few records to damage"), Heal::Restart(node));
    }
    let at = rng.usize(durable / 4..durable / 2);
    bytes[at] ^= 0x5a;
    if let Err(e) = std::fs::write(&segment, &bytes) {
        return (format!("killed {name}: writing the damage failed: {e}"), Heal::Restart(node));
    }
    if let Err(e) = cluster.start_node(node) {
        return (format!("killed {name}, damaged it, could not start it: {e}"), Heal::Nothing);
    }
    match cluster.wait_exit(node, Duration::from_secs(10)).await {
        Some(status) if !status.success() => {
            let said = last_line(&cluster.log_path(node));
            let what =
                format!("flipped byte {at} of {}; {name} refused: {said}", segment.display());
            (what, Heal::Replace(node))
        }
        other => {
            let what = format!("flipped byte {at}; {name} did NOT refuse to start ({other:?})");
            (what, Heal::Nothing)
        }
    }
}

fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Entry, EntryKind, HardState, Index, LogStore, Term};
    use raft_log::wal::{Wal, WalOptions};

    /// A log of `batches` synced batches of three entries each, closed; its newest segment.
    fn written_log(dir: &Path, batches: u64) -> std::path::PathBuf {
        let mut wal = Wal::open(dir, WalOptions::default()).unwrap();
        for batch in 0..batches {
            let entries: Vec<Entry> = (1..=3)
                .map(|i| Entry {
                    term: Term(1),
                    index: Index(batch * 3 + i),
                    kind: EntryKind::Normal,
                    data: bytes::Bytes::from(format!("entry {}", batch * 3 + i)),
                })
                .collect();
            let term = HardState { term: Term(1), vote: None, commit: Index(0) };
            wal.write(Some(term), &entries).unwrap();
        }
        drop(wal);
        crate::cluster::newest_segment_in(dir).expect("a segment")
    }

    fn last_index_after_reopening(dir: &Path) -> u64 {
        Wal::open(dir, WalOptions::default()).expect("the log reopens").last_index().0
    }

    /// The torn-tail fault leaves every synced entry in place, and the log reopens (for
    /// many draws of the cut): it models a crash, not a disk that loses acknowledged writes.
    #[test]
    fn a_torn_tail_keeps_every_synced_entry() {
        for seed in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let segment = written_log(dir.path(), 5);
            let before = std::fs::read(&segment).unwrap();
            let what = tear_after_records(&segment, &mut fastrand::Rng::with_seed(seed));
            assert!(what.starts_with("wrote "), "seed {seed}: {what}");
            let after = std::fs::read(&segment).unwrap();
            let end = records_of(&before).end;
            assert!(after[..end] == before[..end], "seed {seed}: a synced byte changed");
            assert!(after != before, "seed {seed}: nothing was torn");
            assert_eq!(last_index_after_reopening(dir.path()), 15, "seed {seed}");
        }
    }

    /// The torn bytes never hold a whole record: were one repeated, the log would take it
    /// for an entry.
    #[test]
    fn a_torn_batch_is_cut_inside_its_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(written_log(dir.path(), 2)).unwrap();
        let first = records_of(&bytes).last_batch_first.expect("a batch");
        for seed in 0..200 {
            let torn = torn_record(&bytes[first.clone()], &mut fastrand::Rng::with_seed(seed))
                .expect("a record to tear");
            let (records, _) = raft_log::record::scan(&torn);
            assert!(records.is_empty() && !torn.is_empty(), "seed {seed}: {} bytes", torn.len());
        }
    }

    /// The lost-tail fault does lose a synced entry: it is outside the fault model.
    #[test]
    fn a_lost_tail_loses_the_last_synced_entry() {
        let dir = tempfile::tempdir().unwrap();
        let segment = written_log(dir.path(), 5);
        let what = cut_last_record(&segment, &mut fastrand::Rng::with_seed(1));
        assert!(what.starts_with("cut "), "{what}");
        assert_eq!(last_index_after_reopening(dir.path()), 14);
    }
}
