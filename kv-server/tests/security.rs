//! Access control on real kv-server processes with client mTLS and a policy file: who may do
//! what, through a follower as through the leader, and the policy reloaded on SIGHUP.

mod common;

use common::*;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{
    CompareAndSetRequest, DeleteRequest, GetRequest, GetServersRequest, ListRequest,
    MemberJoinRequest, MemberLeaveRequest, MemberListRequest, SetRequest, SnapshotSaveRequest,
    StatusRequest, TransferLeadershipRequest,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// The example policy of the repository: root may do everything, app read and write under
/// `app/`, auditor read; anyone else nothing.
const POLICY: &str = include_str!("../../config/auth-policy.toml");

/// `POLICY` and one more user, `writer`, who may write everywhere and read nowhere.
fn test_policy() -> String {
    let users =
        POLICY.replace("auditor = [\"reader\"]", "auditor = [\"reader\"]\nwriter = [\"blind\"]");
    format!("{users}\n[roles.blind]\nwrite = [\"\"]\n")
}

/// A cluster of three whose clients must present certificates, under `test_policy()`.
fn secured_cluster() -> Cluster {
    let mut cluster = Cluster::new(3);
    let dir = cluster.dir.path().to_path_buf();
    std::fs::write(dir.join("policy.toml"), test_policy()).unwrap();
    for user in ["root", "app", "auditor", "writer", "mallory"] {
        client_certificate(&dir, user);
    }
    let file = |name: &str| dir.join(name).display().to_string();
    cluster.extra_flags = vec![
        format!("--cert-file={}", file("peer.pem")),
        format!("--key-file={}", file("peer-key.pem")),
        format!("--trusted-ca-file={}", file("ca.pem")),
        format!("--auth-policy-file={}", file("policy.toml")),
    ];
    for node in 0..3 {
        cluster.spawn(node);
    }
    cluster
}

/// A TLS channel to slot `node`, presenting the certificate `cert` (`client-app`, `peer`).
async fn channel_as(cluster: &Cluster, node: usize, cert: &str) -> Channel {
    let dir = cluster.dir.path();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{cert}.pem")),
            read(&format!("{cert}-key.pem")),
        ))
        .domain_name("localhost");
    let address = format!("https://127.0.0.1:{}", cluster.client_ports[node]);
    let deadline = Instant::now() + WAIT;
    loop {
        let endpoint = Channel::from_shared(address.clone()).unwrap().tls_config(tls.clone());
        match endpoint.unwrap().connect().await {
            Ok(channel) => return channel,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("n{} does not serve TLS clients: {error}", node + 1),
        }
    }
}

/// The slot that leads, asked as root.
async fn leader(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        for node in 0..3 {
            let mut client = ClusterClient::new(channel_as(cluster, node, "client-root").await);
            if let Ok(status) = client.status(StatusRequest {}).await {
                if status.into_inner().role == "leader" {
                    return node;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `user` gets for a set of `key` through slot `node` (Ok, or the code).
async fn set_as(
    cluster: &Cluster,
    node: usize,
    user: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(channel_as(cluster, node, &format!("client-{user}")).await);
    let request = SetRequest { key: key.to_string().into(), value: "v".into(), session: None };
    kv.set(request).await.map(|_| ())
}

fn code(result: Result<(), tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

/// Every role and kind of call, through a follower (which would forward a write to the
/// leader) and the leader: allowed exactly where the policy grants it; a denial names the
/// user and the permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_allowed_exactly_where_the_policy_grants_them() {
    let cluster = secured_cluster();
    let leader = leader(&cluster).await;
    let follower = (leader + 1) % 3;
    for node in [follower, leader] {
        let app = format!("app/{node}");
        assert_eq!(code(set_as(&cluster, node, "app", &app).await), Code::Ok);
        assert_eq!(code(set_as(&cluster, node, "root", "other").await), Code::Ok);
        let denied = set_as(&cluster, node, "app", "other").await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("\"app\""), "{}", denied.message());
        assert!(denied.message().contains("write on \"other\""), "{}", denied.message());
        assert_eq!(code(set_as(&cluster, node, "auditor", &app).await), Code::PermissionDenied);
        assert_eq!(code(set_as(&cluster, node, "mallory", &app).await), Code::PermissionDenied);
        // Reads.
        for (user, key, wanted) in [
            ("app", "app/1", Code::Ok),
            ("app", "other", Code::PermissionDenied),
            ("auditor", "other", Code::Ok),
            ("mallory", "other", Code::PermissionDenied),
        ] {
            let mut kv = KvClient::new(channel_as(&cluster, node, &format!("client-{user}")).await);
            let got = kv.get(GetRequest { key: key.to_string().into(), consistency: 0 }).await;
            assert_eq!(code(got.map(|_| ())), wanted, "{user} get {key}");
        }
        for (user, prefix, wanted) in [
            ("app", "app/", Code::Ok),
            ("app", "", Code::PermissionDenied),
            ("auditor", "", Code::Ok),
        ] {
            let mut kv = KvClient::new(channel_as(&cluster, node, &format!("client-{user}")).await);
            let request = ListRequest { prefix: prefix.to_string().into(), ..Default::default() };
            assert_eq!(code(kv.list(request).await.map(|_| ())), wanted, "{user} list {prefix:?}");
        }
        // A compare-and-set reads and writes: the auditor may read, not write.
        let mut kv = KvClient::new(channel_as(&cluster, node, "client-auditor").await);
        let cas = CompareAndSetRequest {
            key: "other".into(),
            expected: None,
            value: "x".into(),
            session: None,
        };
        assert_eq!(code(kv.compare_and_set(cas.clone()).await.map(|_| ())), Code::PermissionDenied);
        // ... and the writer may write, not read.
        let mut kv = KvClient::new(channel_as(&cluster, node, "client-writer").await);
        assert_eq!(code(set_as(&cluster, node, "writer", "other").await), Code::Ok);
        assert_eq!(code(kv.compare_and_set(cas).await.map(|_| ())), Code::PermissionDenied);
        // A delete is a write.
        for (user, key, wanted) in
            [("app", "app/1", Code::Ok), ("app", "other", Code::PermissionDenied)]
        {
            let mut kv = KvClient::new(channel_as(&cluster, node, &format!("client-{user}")).await);
            let delete = DeleteRequest { key: key.to_string().into(), session: None };
            assert_eq!(code(kv.delete(delete).await.map(|_| ())), wanted, "{user} delete {key}");
        }
        // Who the servers are: any known user, nobody else.
        for (user, wanted) in [("app", Code::Ok), ("mallory", Code::PermissionDenied)] {
            let channel = channel_as(&cluster, node, &format!("client-{user}")).await;
            let servers = KvClient::new(channel.clone()).get_servers(GetServersRequest {}).await;
            assert_eq!(code(servers.map(|_| ())), wanted, "{user} get-servers");
            let members = ClusterClient::new(channel).member_list(MemberListRequest {}).await;
            assert_eq!(code(members.map(|_| ())), wanted, "{user} member-list");
        }
        // Cluster calls: any role may look; only admin may change members.
        for (user, wanted_status, wanted_admin) in [
            ("app", Code::Ok, Code::PermissionDenied),
            ("mallory", Code::PermissionDenied, Code::PermissionDenied),
            // Allowed: the leader finds no such member; a follower sends it to the leader.
            ("root", Code::Ok, if node == leader { Code::NotFound } else { Code::Unavailable }),
        ] {
            let channel = channel_as(&cluster, node, &format!("client-{user}")).await;
            let mut admin = ClusterClient::new(channel);
            let status = admin.status(StatusRequest {}).await.map(|_| ());
            assert_eq!(code(status), wanted_status, "{user} status");
            let leave = admin.member_leave(MemberLeaveRequest { name: "ghost".into() }).await;
            assert_eq!(code(leave.map(|_| ())), wanted_admin, "{user} member-leave");
        }
        // A backup copies every key: read on all of them.
        for (user, wanted) in [("app", Code::PermissionDenied), ("auditor", Code::Ok)] {
            let channel = channel_as(&cluster, node, &format!("client-{user}")).await;
            let saved = ClusterClient::new(channel).snapshot_save(SnapshotSaveRequest {}).await;
            assert_eq!(code(saved.map(|_| ())), wanted, "{user} snapshot save");
        }
        let mut app = ClusterClient::new(channel_as(&cluster, node, "client-app").await);
        let join = MemberJoinRequest {
            name: "n9".into(),
            peer_address: "127.0.0.1:1".into(),
            client_address: "127.0.0.1:2".into(),
            learner: true,
        };
        assert_eq!(code(app.member_join(join).await.map(|_| ())), Code::PermissionDenied);
        let transfer = TransferLeadershipRequest { name: "n1".into() };
        let transferred = app.transfer_leadership(transfer).await;
        assert_eq!(code(transferred.map(|_| ())), Code::PermissionDenied, "app transfer-leader");
        // A node's certificate is not a client identity.
        let mut kv = KvClient::new(channel_as(&cluster, node, "peer").await);
        let as_node = kv.get(GetRequest { key: "other".into(), consistency: 0 }).await;
        let refused = as_node.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("node's certificate"), "{}", refused.message());
    }
    assert!(cluster.log(follower).contains("denied"), "denials are logged");
}

fn hang_up(cluster: &Cluster) {
    for child in cluster.children.iter().flatten() {
        Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    }
}

fn write_policy(dir: &Path, text: &str) {
    std::fs::write(dir.join("policy.toml"), text).unwrap();
}

/// SIGHUP reloads the policy without a restart; a broken file is refused, logged, and the
/// policy in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_is_reloaded_on_sighup_and_a_broken_one_is_refused() {
    let cluster = secured_cluster();
    let leader = leader(&cluster).await;
    let follower = (leader + 1) % 3;
    assert_eq!(code(set_as(&cluster, follower, "app", "shared/1").await), Code::PermissionDenied);
    // app may now write under shared/ too.
    let widened = POLICY.replace("write = [\"app/\"]", "write = [\"app/\", \"shared/\"]");
    write_policy(cluster.dir.path(), &widened);
    hang_up(&cluster);
    let deadline = Instant::now() + WAIT;
    while code(set_as(&cluster, follower, "app", "shared/1").await) != Code::Ok {
        assert!(Instant::now() < deadline, "the widened policy never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken policy is refused; the widened one stays.
    write_policy(cluster.dir.path(), "[users]\napp = [\"ghost\"]\n");
    hang_up(&cluster);
    let deadline = Instant::now() + WAIT;
    while !cluster.log(follower).contains("the previous policy stays in force") {
        assert!(Instant::now() < deadline, "the broken policy was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code(set_as(&cluster, follower, "app", "shared/2").await), Code::Ok);
    assert!(cluster.log(follower).contains("\"ghost\", which is not defined"));
}

/// Client TLS files are checked before the node starts: a key that is not the certificate's
/// stops the process with a message naming both files, as for the peer files.
#[test]
fn a_client_key_that_is_not_the_certificates_stops_the_node_naming_the_files() {
    let cluster = Cluster::new(1);
    let dir = cluster.dir.path();
    client_certificate(dir, "app");
    let file = |name: &str| dir.join(name).display().to_string();
    let (peer, client) = (cluster.peer_ports[0], cluster.client_ports[0]);
    let mut node = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--name=n1".to_string(),
            format!("--initial-cluster=n1=127.0.0.1:{peer}"),
            format!("--data-dir={}", file("data")),
            format!("--listen-peer-address=127.0.0.1:{peer}"),
            format!("--listen-client-address=127.0.0.1:{client}"),
            format!("--peer-cert-file={}", file("peer.pem")),
            format!("--peer-key-file={}", file("peer-key.pem")),
            format!("--peer-trusted-ca-file={}", file("ca.pem")),
            format!("--cert-file={}", file("peer.pem")),
            format!("--key-file={}", file("client-app-key.pem")),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A node that started anyway would run forever: wait a bounded time, then fail.
    let deadline = Instant::now() + WAIT;
    while node.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("the node started with a key that is not its certificate's");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = node.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client TLS"), "{stderr}");
    assert!(stderr.contains(&file("client-app-key.pem")), "the key is named: {stderr}");
    assert!(stderr.contains(&file("peer.pem")), "the certificate is named: {stderr}");
}
