//! `kvctl dev` and the client commands against it, as a user runs them: real processes, TLS
//! with client certificates, exit codes, JSON output, endpoint failover, Ctrl-C.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KVCTL: &str = env!("CARGO_BIN_EXE_kvctl");

/// A base port whose six ports (clients base+1..3, peers base+11..13) are free now.
fn free_base_port() -> u16 {
    loop {
        let base = 20_000 + fastrand_port();
        let ports = [1, 2, 3, 11, 12, 13].map(|offset| base + offset);
        if ports.iter().all(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
}

/// A pseudo-random offset from the clock and the process id (no extra dependency), keeping
/// the ports below Linux's ephemeral range (32768 and up), from which outgoing connections
/// take their source ports: one could take a port between this check and the node's bind.
fn fastrand_port() -> u16 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    ((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 12_000) as u16
}

struct Dev {
    child: Child,
    base: u16,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        Dev::start_in(tempfile::tempdir().unwrap(), free_base_port())
    }

    /// A new cluster whose members' data directories are seeded from `backup` first.
    fn start_restored(backup: &Path) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let base = free_base_port();
        let initial: Vec<String> =
            (1..=3).map(|i| format!("n{i}=127.0.0.1:{}", base + 10 + i)).collect();
        for i in 1..=3 {
            let data_dir = dir.path().join("cluster").join(format!("n{i}"));
            let restored = Command::new(KVCTL)
                .args(["snapshot", "restore"])
                .arg(backup)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--initial-cluster", &initial.join(",")])
                .output()
                .unwrap();
            assert!(restored.status.success(), "{}", stderr(&restored));
        }
        Dev::start_in(dir, base)
    }

    fn start_in(dir: tempfile::TempDir, base: u16) -> Dev {
        let child = Command::new(KVCTL)
            .args(["dev", "--base-port", &base.to_string(), "--dir"])
            .arg(dir.path().join("cluster"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Dev { child, base, dir }
    }

    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("cluster").join("certs")
    }

    fn endpoints(&self) -> String {
        (1..=3).map(|i| format!("127.0.0.1:{}", self.base + i)).collect::<Vec<_>>().join(",")
    }

    /// Runs kvctl with the cluster's endpoints and the root client certificate.
    fn kvctl(&self, args: &[&str]) -> Output {
        self.kvctl_with(&self.endpoints(), true, args)
    }

    fn kvctl_with(&self, endpoints: &str, client_cert: bool, args: &[&str]) -> Output {
        let certs = self.certs();
        let mut command = Command::new(KVCTL);
        command.env("KVCTL_ENDPOINTS", endpoints).env("KVCTL_CACERT", certs.join("ca.pem"));
        if client_cert {
            command
                .env("KVCTL_CERT", certs.join("client-root.pem"))
                .env("KVCTL_KEY", certs.join("client-root-key.pem"));
        }
        command.args(args).output().unwrap()
    }

    /// Sets a key, retrying until the cluster has a leader.
    fn set_eventually(&self, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.kvctl(&["set", key, value]);
            if output.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "set never succeeded: {}", stderr(&output));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Dev {
    /// Sends `signal` to `kvctl dev` and checks that it exits and that no node serves after.
    fn stop_with(&mut self, signal: &str) {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "kvctl dev did not stop on {signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let down_after = self.kvctl(&["get", "greeting"]);
        assert_eq!(down_after.status.code(), Some(4), "a node still serves after {signal}");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The nodes are this process's grandchildren: stop any left behind.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.dir.path().display().to_string()])
            .status();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_dev_cluster_serves_every_command_and_stops_on_ctrl_c() {
    let mut dev = Dev::start();
    wait_for(&dev.certs().join("client-root-key.pem"));
    dev.set_eventually("greeting", "hello");
    // get, with its exit code for a missing key.
    let got = dev.kvctl(&["get", "greeting"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(stdout(&got), "hello\n");
    let missing = dev.kvctl(&["get", "nothing"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("not found"));
    // JSON output.
    let json = dev.kvctl(&["--output", "json", "get", "greeting"]);
    assert!(stdout(&json).contains("\"value\":\"hello\""), "{}", stdout(&json));
    // cas: refused (exit 3, the current value named), then done.
    let refused = dev.kvctl(&["cas", "greeting", "wrong", "--value", "x"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(stderr(&refused).contains("\"hello\""), "{}", stderr(&refused));
    assert!(dev.kvctl(&["cas", "greeting", "hello", "--value", "world"]).status.success());
    assert!(dev.kvctl(&["cas", "fresh", "--absent", "--value", "1"]).status.success());
    // list, delete.
    let listed = dev.kvctl(&["list"]);
    assert_eq!(stdout(&listed), "fresh\t1\ngreeting\tworld\n");
    assert!(stdout(&dev.kvctl(&["delete", "fresh"])).starts_with("deleted"));
    // member-list and status.
    let members = stdout(&dev.kvctl(&["member-list"]));
    assert_eq!(members.lines().count(), 4, "{members}");
    assert!(members.contains("leader"), "{members}");
    let status = dev.kvctl(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    // status --all: a header and one row per member, each asked at its own address.
    let all = stdout(&dev.kvctl(&["status", "--all"]));
    let rows: Vec<&str> = all.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{all}");
    for (i, row) in rows.iter().enumerate() {
        let columns: Vec<&str> = row.split('\t').collect();
        assert_eq!(columns[0], format!("n{}", i + 1), "{all}");
        assert!(["leader", "follower"].contains(&columns[2]), "{all}");
        assert!(columns[7].parse::<u64>().is_ok(), "a lag: {all}");
    }
    assert_eq!(rows.iter().filter(|r| r.contains("\tleader\t")).count(), 1, "{all}");
    // The example policy is in force: app may write under app/ only.
    let certs = dev.certs();
    let (app_cert, app_key) = (certs.join("client-app.pem"), certs.join("client-app-key.pem"));
    let as_app = |args: &[&str]| {
        let mut all =
            vec!["--cert", app_cert.to_str().unwrap(), "--key", app_key.to_str().unwrap()];
        all.extend_from_slice(args);
        dev.kvctl(&all)
    };
    assert!(as_app(&["set", "app/1", "v"]).status.success());
    let denied = as_app(&["set", "greeting", "v"]);
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("PermissionDenied"), "{}", stderr(&denied));
    // Failover: the first endpoint is down; the next one answers.
    let endpoints = format!("127.0.0.1:1,{}", dev.endpoints());
    let failover = dev.kvctl_with(&endpoints, true, &["get", "greeting"]);
    assert_eq!(stdout(&failover), "world\n", "{}", stderr(&failover));
    // Nothing reachable: exit 4.
    let down = dev.kvctl_with("127.0.0.1:1", true, &["get", "greeting"]);
    assert_eq!(down.status.code(), Some(4), "{}", stderr(&down));
    // A client without a certificate is refused.
    let anonymous = dev.kvctl_with(&dev.endpoints(), false, &["get", "greeting"]);
    assert!(!anonymous.status.success());
    assert!(stderr(&anonymous).contains("client certificate"), "{}", stderr(&anonymous));
    // bench: a fixed count of mixed requests, reported as JSON.
    let bench = dev.kvctl(&[
        "--output",
        "json",
        "bench",
        "--workload",
        "mixed",
        "--clients",
        "4",
        "--count",
        "200",
    ]);
    assert!(bench.status.success(), "{}", stderr(&bench));
    let report: serde_json::Value = serde_json::from_str(stdout(&bench).trim()).unwrap();
    assert_eq!(
        (report["ops"].as_u64(), report["errors"].as_u64()),
        (Some(200), Some(0)),
        "{report}"
    );
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    // Ctrl-C (SIGINT to kvctl dev): every node stops, and dev exits.
    dev.stop_with("-INT");
}

/// SIGTERM (what a supervisor or `timeout` sends) stops the nodes as Ctrl-C does, instead of
/// killing `kvctl dev` alone and leaving its nodes running.
#[test]
fn sigterm_stops_the_dev_cluster_too() {
    let mut dev = Dev::start();
    wait_for(&dev.certs().join("client-root-key.pem"));
    dev.set_eventually("greeting", "hello");
    dev.stop_with("-TERM");
}

#[test]
fn certs_makes_a_ca_nodes_and_clients_and_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(KVCTL).arg("certs").arg("--dir").arg(&certs).args(extra).output().unwrap()
    };
    let first = run(&["--nodes", "a,b", "--clients", "alice", "--hosts", "db.example"]);
    assert!(first.status.success(), "{}", stderr(&first));
    for file in ["ca.pem", "ca-key.pem", "a.pem", "a-key.pem", "b.pem", "client-alice.pem"] {
        assert!(certs.join(file).exists(), "{file}");
    }
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    assert!(run(&["--nodes", "c"]).status.success());
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca, "the CA is kept");
    // The node certificates load as raft-net identities (key matches, CA chains).
    let paths = raft_net::TlsPaths {
        ca: certs.join("ca.pem"),
        cert: certs.join("c.pem"),
        key: certs.join("c-key.pem"),
    };
    raft_net::TlsIdentity::load(&paths).unwrap();
}

/// A backup saved from one cluster seeds a new one (other ports, another CA): every key
/// comes back with its value and revision, a deleted key stays deleted, and the new cluster
/// takes writes. A non-empty data directory is refused.
#[test]
fn a_backup_of_one_cluster_seeds_a_new_one() {
    let mut old = Dev::start();
    old.set_eventually("greeting", "hello");
    for i in 0..50 {
        assert!(old.kvctl(&["set", &format!("k{i:02}"), &format!("v{i}")]).status.success());
    }
    assert!(old.kvctl(&["delete", "k07"]).status.success());
    let listed = stdout(&old.kvctl(&["--output", "json", "list"]));
    assert_eq!(listed.lines().count(), 50, "{listed}");
    let backup = old.dir.path().join("backup.snap");
    let saved = old.kvctl(&["snapshot", "save", backup.to_str().unwrap()]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    assert!(stdout(&saved).contains(": 50 keys as of index"), "{}", stdout(&saved));
    old.stop_with("-INT");
    // Seeding over existing data is refused.
    let used = old.dir.path().join("cluster").join("n1");
    let refused = Command::new(KVCTL)
        .args(["snapshot", "restore", backup.to_str().unwrap(), "--data-dir"])
        .arg(&used)
        .args(["--initial-cluster", "n1=127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("not empty"), "{}", stderr(&refused));
    let new = Dev::start_restored(&backup);
    new.set_eventually("after", "restore");
    let relisted = stdout(&new.kvctl(&["--output", "json", "list"]));
    let without_new: Vec<&str> = relisted.lines().filter(|l| !l.contains("\"after\"")).collect();
    assert_eq!(without_new, listed.lines().collect::<Vec<_>>(), "every key, value and revision");
    let got = new.kvctl(&["get", "k07"]);
    assert_eq!(got.status.code(), Some(3), "k07 stays deleted");
}
