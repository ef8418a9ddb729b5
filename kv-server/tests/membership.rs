//! Membership changes on real kv-server processes: a wiped member leaves and rejoins through
//! a snapshot, the leader removes itself, and a learner that asked to vote is promoted by
//! whichever node leads once it has caught up.

mod common;

use common::*;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::{MemberJoinRequest, MemberLeaveRequest, MemberListRequest};
use std::time::{Duration, Instant};

/// A member leaves; its data is wiped; it joins again as a new member, catches up from the
/// leader's snapshot, is promoted to voter, and serves linearizable reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_leaves_and_rejoins_as_a_new_member_through_a_snapshot() {
    let mut cluster = Cluster::start(3);
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
    let peer_address = format!("127.0.0.1:{}", cluster.peer_ports[victim]);
    let client_address = format!("127.0.0.1:{}", cluster.client_ports[victim]);
    let joined = through_leader(&cluster, |mut c| {
        let request = MemberJoinRequest {
            name: "n4".into(),
            peer_address: peer_address.clone(),
            client_address: client_address.clone(),
            learner: false,
        };
        async move { c.member_join(request).await }
    })
    .await;
    let new = joined.member.expect("the new member");
    assert!(new.is_learner, "a new member starts as a learner");
    let initial_cluster: Vec<String> =
        joined.members.iter().map(|m| format!("{}@{}={}", m.name, m.id, m.peer_address)).collect();
    cluster.spawn_as(victim, "n4", &initial_cluster.join(","), "existing");
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

/// A member joins to vote while its process is not running (it cannot catch up yet), and
/// leadership moves to another node. Once it runs and catches up, the new leader promotes it:
/// the wish to vote is in the replicated member table, not in the old leader's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_asked_to_vote_is_promoted_by_whoever_leads_when_it_catches_up() {
    let mut cluster = Cluster::with_spares(3, 1);
    for node in 0..3 {
        cluster.spawn(node);
    }
    let leader = cluster.leader().await;
    for i in 0..50 {
        set(&cluster, leader, &format!("k{i:02}"), "v").await;
    }
    let joined = through_leader(&cluster, |mut c| {
        let request = MemberJoinRequest {
            name: "n4".into(),
            peer_address: format!("127.0.0.1:{}", cluster.peer_ports[3]),
            client_address: format!("127.0.0.1:{}", cluster.client_ports[3]),
            learner: false,
        };
        async move { c.member_join(request).await }
    })
    .await;
    assert!(joined.member.as_ref().unwrap().is_learner, "{joined:?}");
    // Leadership moves away from the node that handled the join.
    let target = (leader + 1) % 3;
    let mut client = ClusterClient::new(cluster.channel(leader).await);
    let request = kv_proto::kv::TransferLeadershipRequest { name: format!("n{}", target + 1) };
    client.transfer_leadership(request).await.expect("transfer accepted");
    let deadline = Instant::now() + WAIT;
    while cluster.leader().await != target {
        assert!(Instant::now() < deadline, "leadership never moved to n{}", target + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still_learner = members_at(&cluster, target).await;
    assert!(still_learner.contains(&("n4".to_string(), true)), "{still_learner:?}");
    // n4 starts, catches up, and the new leader promotes it.
    let initial: Vec<String> =
        joined.members.iter().map(|m| format!("{}@{}={}", m.name, m.id, m.peer_address)).collect();
    cluster.spawn_as(3, "n4", &initial.join(","), "existing");
    let deadline = Instant::now() + WAIT;
    loop {
        let members = members_at(&cluster, target).await;
        if members.contains(&("n4".to_string(), false)) {
            break;
        }
        assert!(Instant::now() < deadline, "n4 was never promoted: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.log(target).contains("learner"), "the new leader did the promotion");
    assert_eq!(get(&cluster, 3, "k49").await.as_deref(), Some("v"));
}
