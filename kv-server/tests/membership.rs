//! Membership changes on real kv-server processes: a wiped member leaves and rejoins through
//! a snapshot, the leader removes itself, a member removed while down stops once the others
//! disown it, a learner that asked to vote is promoted by
//! whichever node leads once it has caught up, and a newcomer follows a leader that its
//! snapshot predates.

mod common;

use common::*;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::{
    MemberJoinRequest, MemberJoinResponse, MemberLeaveRequest, MemberListRequest,
    TransferLeadershipRequest,
};
use std::time::{Duration, Instant};

/// A member leaves; its data is wiped; it joins again as a new member, catches up from the
/// leader's snapshot, is promoted to voter, and serves linearizable reads. Every node runs
/// on one thread (`--threads=1`, as `kvctl dev` runs them on 2 cores), so the clean stop of
/// a removed node and the snapshot's install run on tokio's current-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_leaves_and_rejoins_as_a_new_member_through_a_snapshot() {
    let mut cluster = Cluster::new(3);
    cluster.extra_flags.push("--threads=1".into());
    for node in 0..3 {
        cluster.spawn(node);
    }
    let leader = cluster.leader().await;
    for i in 0..300 {
        set(&cluster, leader, &format!("before/{i:03}"), "z").await;
    }
    let victim = (leader + 1) % 3;
    let name = format!("n{}", victim + 1);
    // 1. It leaves, and stops by itself once removed.
    let left = through_leader(&cluster, |mut c| {
        let name = name.clone();
        async move { c.member_leave(MemberLeaveRequest { name }).await }
    })
    .await;
    assert_eq!(left.members.len(), 2, "{left:?}");
    let status = cluster.wait_exit(victim, "a removed node stops");
    assert!(status.success(), "a removed node exits cleanly: {status}");
    set(&cluster, leader, "after-leave", "1").await;
    // 2. Wiped, it joins again as n4 at the same addresses.
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    let joined = join(&cluster, victim, "n4").await;
    let new = joined.member.as_ref().expect("the new member");
    assert!(new.is_learner, "a new member starts as a learner");
    start_joined(&mut cluster, victim, "n4", &joined);
    // 3. It catches up from the snapshot and is promoted to voter.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = ClusterClient::new(cluster.channel(leader).await);
        let members = client.member_list(MemberListRequest {}).await.unwrap().into_inner().members;
        if members.iter().any(|m| m.name == "n4" && !m.is_learner) && members.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "n4 was never promoted: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cluster.log(victim);
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot: {log}");
    assert_eq!(get(&cluster, victim, "before/299").await.as_deref(), Some("z"));
    assert_eq!(get(&cluster, victim, "after-leave").await.as_deref(), Some("1"));
    set(&cluster, victim, "through-n4", "yes").await;
    assert_eq!(get(&cluster, leader, "through-n4").await.as_deref(), Some("yes"));
}

/// Asks the leader to add a voter named `name` at the addresses of slot `slot`.
async fn join(cluster: &Cluster, slot: usize, name: &str) -> MemberJoinResponse {
    through_leader(cluster, |mut c| {
        let request = MemberJoinRequest {
            name: name.into(),
            peer_address: format!("127.0.0.1:{}", cluster.peer_ports[slot]),
            client_address: format!("127.0.0.1:{}", cluster.client_ports[slot]),
            learner: false,
        };
        async move { c.member_join(request).await }
    })
    .await
}

/// Starts slot `slot` as the member `joined` added, with the flags the join answered.
fn start_joined(cluster: &mut Cluster, slot: usize, name: &str, joined: &MemberJoinResponse) {
    let initial: Vec<String> =
        joined.members.iter().map(|m| format!("{}@{}={}", m.name, m.id, m.peer_address)).collect();
    cluster.spawn_as(slot, name, &initial.join(","), "existing");
}

/// Waits until slot `at` lists `name` as a voter; on failure, shows the list and the log of
/// slot `slot` (the member's own).
async fn wait_promoted(cluster: &Cluster, at: usize, name: &str, slot: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let members = members_at(cluster, at).await;
        if members.contains(&(name.to_string(), false)) {
            return;
        }
        let log = cluster.log(slot);
        assert!(
            Instant::now() < deadline,
            "{name} was never promoted: {members:?}; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster of the initial three, running, with `spares` slots for members that join.
fn start_initial(spares: usize) -> Cluster {
    let mut cluster = Cluster::with_spares(3, spares);
    for node in 0..3 {
        cluster.spawn(node);
    }
    cluster
}

/// Has `leader` hand leadership to slot `to`, and waits until `to` leads. A transfer the
/// leader gives up (the target did not catch up within an election timeout) is asked again,
/// as an operator would, every 2 s.
async fn transfer(cluster: &Cluster, leader: usize, to: usize) {
    let deadline = Instant::now() + WAIT;
    let mut asked: Option<Instant> = None;
    loop {
        let current = cluster.leader().await;
        if current == to {
            return;
        }
        assert!(Instant::now() < deadline, "leadership never moved to n{}", to + 1);
        if asked.is_none_or(|at| at.elapsed() >= Duration::from_secs(2)) {
            let from = if asked.is_none() { leader } else { current };
            let mut client = ClusterClient::new(cluster.channel(from).await);
            let request = TransferLeadershipRequest { name: format!("n{}", to + 1) };
            let _ = client.transfer_leadership(request).await; // refused: asked again later
            asked = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the members `node` lists, each with whether it is a learner.
async fn members_at(cluster: &Cluster, node: usize) -> Vec<(String, bool)> {
    let mut client = ClusterClient::new(cluster.channel(node).await);
    let members = client.member_list(MemberListRequest {}).await.unwrap().into_inner().members;
    members.into_iter().map(|m| (m.name, m.is_learner)).collect()
}

/// The leader is asked to remove itself (thesis §4.2.2): it answers, steps down once the
/// configuration without it is committed, and its process exits cleanly; the two others
/// elect a leader and keep every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_itself_steps_down_and_the_others_go_on() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    set(&cluster, leader, "before", "1").await;
    let name = format!("n{}", leader + 1);
    let mut client = ClusterClient::new(cluster.channel(leader).await);
    let left = client.member_leave(MemberLeaveRequest { name: name.clone() }).await;
    let left = left.expect("the leader answers its own removal").into_inner();
    let names: Vec<&str> = left.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&name.as_str()), "{names:?}");
    let status = cluster.wait_exit(leader, "a removed leader stops");
    assert!(status.success(), "a removed leader exits cleanly: {status}");
    let log = cluster.log(leader);
    let stepped_down = log.find("stepping down").expect("the leader stepped down");
    let stopped = log.find("removed from the cluster; stopping").expect("the node stopped");
    assert!(stepped_down < stopped, "it stepped down before stopping: {log}");
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    set(&cluster, next, "after", "2").await;
    for node in (0..3).filter(|&n| n != leader) {
        assert_eq!(get(&cluster, node, "before").await.as_deref(), Some("1"));
        assert_eq!(get(&cluster, node, "after").await.as_deref(), Some("2"));
        let members = members_at(&cluster, node).await;
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(members.iter().all(|(n, learner)| *n != name && !learner), "{members:?}");
    }
}

/// A member is removed while its process is down, so it never applies its own removal.
/// Restarted from its data, it still counts itself a member and dials the others, who no
/// longer count it a peer and say so at the hello. Once a majority of the other voters has
/// disowned it and nobody has spoken to it for three election timeouts, it stops by itself
/// and exits cleanly, and the two others go on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_down_stops_when_the_others_disown_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    set(&cluster, leader, "before", "1").await;
    let removed = (leader + 1) % 3;
    let name = format!("n{}", removed + 1);
    cluster.kill(removed);
    let mut client = ClusterClient::new(cluster.channel(leader).await);
    let left = client.member_leave(MemberLeaveRequest { name: name.clone() }).await;
    assert_eq!(left.expect("the removal is answered").into_inner().members.len(), 2);
    set(&cluster, leader, "after", "2").await;
    cluster.spawn(removed);
    let status = cluster.wait_exit(removed, "a member removed while down stops once disowned");
    assert!(status.success(), "it exits cleanly: {status}");
    let log = cluster.log(removed);
    assert!(log.contains("removed from the cluster; stopping"), "{log}");
    assert!(
        log.contains("disowned by 2 of the 2 other voters"),
        "stopped on being disowned: {log}"
    );
    let next = cluster.leader().await;
    set(&cluster, next, "later", "3").await;
    for node in (0..3).filter(|&n| n != removed) {
        assert_eq!(get(&cluster, node, "after").await.as_deref(), Some("2"));
        let members = members_at(&cluster, node).await;
        assert!(members.iter().all(|(n, _)| *n != name), "{members:?}");
    }
}

/// A member joins to vote while its process is not running (it cannot catch up yet), and
/// leadership moves to another node. Once it runs and catches up, the new leader promotes it:
/// the wish to vote is in the replicated member table, not in the old leader's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_asked_to_vote_is_promoted_by_whoever_leads_when_it_catches_up() {
    let mut cluster = start_initial(1);
    let leader = cluster.leader().await;
    for i in 0..50 {
        set(&cluster, leader, &format!("k{i:02}"), "v").await;
    }
    let joined = join(&cluster, 3, "n4").await;
    assert!(joined.member.as_ref().unwrap().is_learner, "{joined:?}");
    // Leadership moves away from the node that handled the join.
    let target = (leader + 1) % 3;
    transfer(&cluster, leader, target).await;
    let still_learner = members_at(&cluster, target).await;
    assert!(still_learner.contains(&("n4".to_string(), true)), "{still_learner:?}");
    // n4 starts, catches up, and the new leader promotes it.
    start_joined(&mut cluster, 3, "n4", &joined);
    wait_promoted(&cluster, target, "n4", 3).await;
    assert!(cluster.log(target).contains("learner"), "the new leader did the promotion");
    assert_eq!(get(&cluster, 3, "k49").await.as_deref(), Some("v"));
}

/// A node is down while a new member joins and takes the lead. Restarted from its data, it
/// knows nothing of the new leader; the leader's connection announces its address, which the
/// node accepts since the id is newer than any it knows, and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_downtime_follows_a_leader_that_joined_while_it_was_away() {
    let mut cluster = start_initial(1);
    let leader = cluster.leader().await;
    set(&cluster, leader, "before", "1").await;
    let away = (leader + 1) % 3;
    cluster.kill(away);
    let joined = join(&cluster, 3, "n4").await;
    start_joined(&mut cluster, 3, "n4", &joined);
    wait_promoted(&cluster, leader, "n4", 3).await;
    transfer(&cluster, leader, 3).await;
    set(&cluster, 3, "while-away", "2").await;
    // The old leader restarts, so that no append it queued for the away node before the
    // transfer is left to tell that node about n4.
    assert!(cluster.terminate(leader).success());
    cluster.spawn(leader);
    caught_up(&cluster, leader, "while-away", "the old leader did not come back").await;
    // Back with its old flags (n1..n3) and data: it has never heard of n4.
    cluster.spawn(away);
    caught_up(&cluster, away, "while-away", "the node never followed the new leader").await;
    assert_eq!(get(&cluster, away, "before").await.as_deref(), Some("1"));
    set(&cluster, away, "from-the-returned", "3").await;
    assert_eq!(get(&cluster, 3, "from-the-returned").await.as_deref(), Some("3"));
    let log = cluster.log(away);
    assert!(log.contains("taken on at the address it announced"), "{log}");
}

/// Found by the harness (kv-jepsen, seed 7): a member that joined leads before it has taken
/// a snapshot of its own, so the newest snapshot it holds is the one it caught up from,
/// whose configuration names neither it nor any later member. A second member joins and
/// catches up from that snapshot. Going by the snapshot's configuration alone, the newcomer
/// would drop its leader from its peers and refuse its connections for good; it keeps the
/// members its flags name until it holds a configuration that names itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_follows_a_leader_its_snapshot_predates() {
    let mut cluster = start_initial(2);
    let leader = cluster.leader().await;
    for i in 0..250 {
        set(&cluster, leader, &format!("k{i:03}"), "v").await;
    }
    // n4 joins, catches up from a snapshot that predates it, and is promoted.
    let joined = join(&cluster, 3, "n4").await;
    start_joined(&mut cluster, 3, "n4", &joined);
    wait_promoted(&cluster, leader, "n4", 3).await;
    assert!(cluster.log(3).contains("installed the leader's snapshot"), "{}", cluster.log(3));
    // n4 leads, with no snapshot newer than the one it caught up from.
    transfer(&cluster, leader, 3).await;
    // n5 joins; n4's log starts after that snapshot, so n5 catches up from it too.
    let joined = join(&cluster, 4, "n5").await;
    start_joined(&mut cluster, 4, "n5", &joined);
    wait_promoted(&cluster, 3, "n5", 4).await;
    assert!(!cluster.log(3).contains("written in"), "n4 took a snapshot of its own");
    assert!(cluster.log(4).contains("installed the leader's snapshot"), "{}", cluster.log(4));
    set(&cluster, 4, "through-n5", "yes").await;
    assert_eq!(get(&cluster, 4, "k249").await.as_deref(), Some("v"));
}
