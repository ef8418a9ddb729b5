//! Three real kv-server processes on loopback with mutual TLS between them: writes at every
//! node, linearizable reads at every node, the leader killed with SIGKILL and the cluster
//! going on, the old leader restarted and catching up, a clean stop on SIGTERM, and bad flags.

use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{
    CompareAndSetRequest, GetRequest, ListRequest, MemberJoinRequest, MemberLeaveRequest,
    MemberListRequest, ReadConsistency, SetRequest, StatusRequest,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA and one certificate for all nodes' peer connections (covering 127.0.0.1).
fn certificates(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("peer.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("peer-key.pem"), key.serialize_pem()).unwrap();
}

struct Cluster {
    dir: tempfile::TempDir,
    peer_ports: Vec<u16>,
    client_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        let mut cluster = Cluster::new(size);
        for node in 0..size {
            cluster.spawn(node);
        }
        cluster
    }

    /// A cluster with nothing running yet.
    fn new(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        Cluster {
            dir,
            peer_ports: (0..size).map(|_| free_port()).collect(),
            client_ports: (0..size).map(|_| free_port()).collect(),
            children: (0..size).map(|_| None).collect(),
        }
    }

    fn initial_cluster(&self) -> String {
        let members: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("n{}=127.0.0.1:{port}", i + 1))
            .collect();
        members.join(",")
    }

    fn data_dir(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", node + 1))
    }

    fn spawn(&mut self, node: usize) {
        let initial_cluster = self.initial_cluster();
        self.spawn_as(node, &format!("n{}", node + 1), &initial_cluster, "new");
    }

    /// Starts process slot `node` (its ports and data directory) as member `name`.
    fn spawn_as(&mut self, node: usize, name: &str, initial_cluster: &str, state: &str) {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join(format!("n{}.log", node + 1))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .arg(format!("--name={name}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--data-dir={}", self.data_dir(node).display()))
            .arg(format!("--listen-peer-address=127.0.0.1:{}", self.peer_ports[node]))
            .arg(format!("--listen-client-address=127.0.0.1:{}", self.client_ports[node]))
            .arg(format!("--peer-cert-file={}", dir.join("peer.pem").display()))
            .arg(format!("--peer-key-file={}", dir.join("peer-key.pem").display()))
            .arg(format!("--peer-trusted-ca-file={}", dir.join("ca.pem").display()))
            .arg("--tick-ms=50")
            .arg("--snapshot-entries=200")
            .arg("--snapshot-catchup-entries=20")
            .arg("--request-timeout-ms=1000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[node] = Some(child);
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self, node: usize) -> std::process::ExitStatus {
        let mut child = self.children[node].take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill(); // never leave a process behind
                let _ = child.wait();
                panic!("no exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn channel(&self, node: usize) -> Channel {
        let address = format!("http://127.0.0.1:{}", self.client_ports[node]);
        let deadline = Instant::now() + WAIT;
        loop {
            match Channel::from_shared(address.clone()).unwrap().connect().await {
                Ok(channel) => return channel,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(error) => panic!("node {node} does not serve clients: {error}"),
            }
        }
    }

    async fn kv(&self, node: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(node).await)
    }

    /// The index of the node every live node names as leader.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for node in (0..self.children.len()).filter(|&n| self.children[n].is_some()) {
                let mut client = ClusterClient::new(self.channel(node).await);
                if let Ok(status) = client.status(StatusRequest {}).await {
                    let status = status.into_inner();
                    if status.role == "leader" {
                        return node;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.children.len() {
            self.kill(node);
        }
    }
}

/// Sets `key` through `node`, retrying while no leader is known.
async fn set(cluster: &Cluster, node: usize, key: &str, value: &str) -> u64 {
    let mut client = cluster.kv(node).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let request = SetRequest { key: key.to_string().into(), value: value.to_string().into() };
        match client.set(request).await {
            Ok(response) => return response.into_inner().revision,
            Err(status) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    "{status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("set {key} at node {node}: {status}"),
        }
    }
}

/// Waits until `node`'s own state (a serializable read) holds `key`.
async fn caught_up(cluster: &Cluster, node: usize, key: &str, failure: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let consistency = ReadConsistency::Serializable.into();
        let request = GetRequest { key: key.to_string().into(), consistency };
        if let Ok(response) = cluster.kv(node).await.get(request).await {
            if response.into_inner().found {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(cluster: &Cluster, node: usize, key: &str) -> Option<String> {
    let mut client = cluster.kv(node).await;
    let request = GetRequest {
        key: key.to_string().into(),
        consistency: ReadConsistency::Linearizable.into(),
    };
    let response = client.get(request).await.unwrap().into_inner();
    response.found.then(|| String::from_utf8(response.value.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_writes_and_linearizable_reads_everywhere_and_survive_the_leader() {
    let mut cluster = Cluster::start(3);
    // 1. A write through each node; each is read back, linearizably, at every node.
    for node in 0..3 {
        let key = format!("from-{node}");
        set(&cluster, node, &key, &format!("value {node}")).await;
        for reader in 0..3 {
            assert_eq!(
                get(&cluster, reader, &key).await,
                Some(format!("value {node}")),
                "read at {reader}"
            );
        }
    }
    // 2. Compare-and-set and List.
    let mut client = cluster.kv(1).await;
    let cas = |expected: Option<&str>, value: &str| CompareAndSetRequest {
        key: "cas".into(),
        expected: expected.map(|e| e.to_string().into()),
        value: value.to_string().into(),
    };
    assert!(client.compare_and_set(cas(None, "a")).await.unwrap().into_inner().succeeded);
    let refused = client.compare_and_set(cas(Some("b"), "c")).await.unwrap().into_inner();
    assert!(!refused.succeeded);
    assert_eq!(refused.current.as_deref(), Some(&b"a"[..]));
    let mut stream = client
        .list(ListRequest { prefix: "from-".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut keys = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        keys.push(String::from_utf8(item.key.to_vec()).unwrap());
    }
    assert_eq!(keys, ["from-0", "from-1", "from-2"]);
    // Every node wrote its row of the member table: any node names every member's client
    // address.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut cluster_client = ClusterClient::new(cluster.channel(2).await);
        let members = cluster_client.member_list(MemberListRequest {}).await.unwrap().into_inner();
        let addresses: Vec<String> =
            members.members.iter().map(|m| m.client_address.clone()).collect();
        let expected: Vec<String> =
            cluster.client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        if addresses == expected {
            break;
        }
        assert!(Instant::now() < deadline, "member table incomplete: {addresses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 3. Enough writes for snapshots and compaction (--snapshot-entries=200).
    let leader = cluster.leader().await;
    for i in 0..300 {
        set(&cluster, i % 3, &format!("bulk/{i:03}"), "x").await;
    }
    // 4. The leader dies with SIGKILL: a new one is elected and writes go on.
    cluster.kill(leader);
    let survivor = (leader + 1) % 3;
    set(&cluster, survivor, "after-kill", "yes").await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert_eq!(get(&cluster, (leader + 2) % 3, "after-kill").await.as_deref(), Some("yes"));
    // 5. The old leader restarts from its data directory and catches up.
    cluster.spawn(leader);
    caught_up(&cluster, leader, "after-kill", "the restarted node never caught up").await;
    assert_eq!(
        get(&cluster, leader, "from-0").await.as_deref(),
        Some("value 0"),
        "acknowledged data kept"
    );
    assert_eq!(get(&cluster, leader, "bulk/299").await.as_deref(), Some("x"));
    // 6. A follower down while 300 entries are written and the log compacted past them
    //    catches up from the leader's snapshot, streamed over the transport.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    for i in 0..300 {
        set(&cluster, leader, &format!("while-down/{i:03}"), "y").await;
    }
    let mut status_client = ClusterClient::new(cluster.channel(leader).await);
    let status = status_client.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.log_first_index > 250, "the leader compacted its log: {status:?}");
    cluster.spawn(follower);
    caught_up(&cluster, follower, "while-down/299", "the follower never caught up").await;
    let log =
        std::fs::read_to_string(cluster.dir.path().join(format!("n{}.log", follower + 1))).unwrap();
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot: {log}");
    assert_eq!(get(&cluster, follower, "from-1").await.as_deref(), Some("value 1"));
    // 7. SIGTERM stops a node cleanly (exit 0).
    let status = cluster.terminate(cluster.leader().await);
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Sends a membership request to the nodes in turn until the leader takes it.
async fn through_leader<T, F, Fut>(cluster: &Cluster, call: F) -> T
where
    F: Fn(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        for node in (0..cluster.children.len()).filter(|&n| cluster.children[n].is_some()) {
            match call(ClusterClient::new(cluster.channel(node).await)).await {
                Ok(response) => return response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {}
                Err(status) => panic!("membership change refused: {status}"),
            }
        }
        assert!(Instant::now() < deadline, "no leader took the membership change");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let mut child = cluster.children[victim].take().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill(); // never leave a process behind
            let _ = child.wait();
            panic!("the removed node did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
    let log =
        std::fs::read_to_string(cluster.dir.path().join(format!("n{}.log", victim + 1))).unwrap();
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot: {log}");
    assert_eq!(get(&cluster, victim, "before/299").await.as_deref(), Some("z"));
    assert_eq!(get(&cluster, victim, "after-leave").await.as_deref(), Some("1"));
    set(&cluster, victim, "through-n4", "yes").await;
    assert_eq!(get(&cluster, leader, "through-n4").await.as_deref(), Some("yes"));
}

/// Writes refused before any leader exists do not poison the node's session: once a quorum
/// is up, the same node's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_before_a_quorum_exists_fail_cleanly_and_later_ones_succeed() {
    let mut cluster = Cluster::new(3);
    cluster.spawn(0);
    let mut client = cluster.kv(0).await;
    for attempt in 0..3 {
        let request = SetRequest { key: "early".into(), value: format!("{attempt}").into() };
        let status = client.set(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "no leader: {status}");
    }
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.leader().await;
    // The first write after that succeeds at once: no "outcome unknown" from a session the
    // state machine never saw opened.
    let request = SetRequest { key: "late".into(), value: "ok".into() };
    let written = cluster.kv(0).await.set(request).await;
    assert!(written.is_ok(), "{written:?}");
    assert_eq!(get(&cluster, 0, "late").await.as_deref(), Some("ok"));
    assert_eq!(get(&cluster, 0, "early").await, None, "no refused write was applied");
}

#[test]
fn bad_flags_stop_the_process_with_a_message_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--name=n9",
            "--initial-cluster=n1=127.0.0.1:1",
            "--data-dir=/nonexistent",
            "--listen-peer-address=127.0.0.1:1",
            "--listen-client-address=127.0.0.1:2",
            "--peer-cert-file=a",
            "--peer-key-file=b",
            "--peer-trusted-ca-file=c",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--name") && stderr.contains("n9"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--name=n1",
            "--initial-cluster=n1=127.0.0.1:1",
            "--data-dir=/nonexistent",
            "--listen-peer-address=127.0.0.1:1",
            "--listen-client-address=127.0.0.1:2",
            "--peer-cert-file=/nonexistent/cert.pem",
            "--peer-key-file=b",
            "--peer-trusted-ca-file=/nonexistent/ca.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/ca.pem"), "the missing file is named: {stderr}");
}
