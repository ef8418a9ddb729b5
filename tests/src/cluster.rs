//! The cluster under test: `kv-server` processes on loopback, each with its own data
//! directory and log file, peer traffic through the link proxies ([`crate::proxy`]), and
//! certificates made by `kvctl certs`. Node `i` (from 0) is named `n{i+1}`; it serves clients
//! on `base + i`, listens for peers on `base + 20 + i`, and is reached by peers through its
//! proxy on `base + 40 + i`.

use crate::proxy::{self, Links};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Nodes: 3 or 5.
    pub nodes: usize,
    /// The first port; the cluster uses `base` to `base + 44` (clients from `base`, peers
    /// from `base + 20`, proxies from `base + 40`).
    pub base_port: u16,
    /// Certificates, data directories and logs go here.
    pub dir: PathBuf,
    /// Where the `kv-server` and `kvctl` binaries are.
    pub bin_dir: PathBuf,
    /// Flags added to every node's command line.
    pub server_flags: Vec<String>,
}

/// One node's process, when it runs.
struct Node {
    child: Option<Child>,
    paused: bool,
    /// Set once the node was removed and joined again as a new member: its
    /// `--initial-cluster` (with ids, as `MemberJoin` answered) and the joining state.
    joined: Option<String>,
}

/// The running cluster. Dropping it kills every node.
pub struct Cluster {
    spec: ClusterSpec,
    nodes: Vec<Node>,
    /// The state of every link between the nodes.
    pub links: Links,
}

fn port(base: u16, offset: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + offset as u16))
}

impl Cluster {
    /// Makes certificates, starts the proxies and every node.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, String> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
        let names: Vec<String> = (0..spec.nodes).map(|i| format!("n{}", i + 1)).collect();
        let certs = Command::new(spec.bin_dir.join("kvctl"))
            .args(["certs", "--dir"])
            .arg(spec.dir.join("certs"))
            .args(["--nodes", &names.join(","), "--clients", "jepsen"])
            .output()
            .map_err(|e| format!("running {}: {e}", spec.bin_dir.join("kvctl").display()))?;
        if !certs.status.success() {
            return Err(format!("kvctl certs: {}", String::from_utf8_lossy(&certs.stderr)));
        }
        let links = Links::default();
        for i in 0..spec.nodes {
            let (listen, target) = (port(spec.base_port, 40 + i), port(spec.base_port, 20 + i));
            proxy::start(i, listen, target, links.clone())
                .await
                .map_err(|e| format!("the proxy of n{} on {listen}: {e}", i + 1))?;
        }
        let nodes =
            (0..spec.nodes).map(|_| Node { child: None, paused: false, joined: None }).collect();
        let mut cluster = Cluster { spec, nodes, links };
        for i in 0..cluster.spec.nodes {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// How many nodes there are.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Where node `i` serves clients.
    pub fn client_address(&self, i: usize) -> SocketAddr {
        port(self.spec.base_port, i)
    }

    /// Node `i`'s advertised peer address: its proxy.
    pub fn peer_address(&self, i: usize) -> SocketAddr {
        port(self.spec.base_port, 40 + i)
    }

    /// The log file of node `i` (every run of it appends).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("n{}.log", i + 1))
    }

    /// From now on node `i` starts as a member that joined a running cluster whose members
    /// (with ids) are `initial_cluster`; its data directory is emptied.
    pub fn rejoin_as(&mut self, i: usize, initial_cluster: String) -> Result<(), String> {
        let data = self.data_dir(i);
        match std::fs::remove_dir_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", data.display())),
        }
        self.nodes[i].joined = Some(initial_cluster);
        Ok(())
    }

    /// Waits up to `within` for node `i`'s process to exit by itself; returns its status.
    pub async fn wait_exit(&mut self, i: usize, within: std::time::Duration) -> Option<ExitStatus> {
        let give_up = std::time::Instant::now() + within;
        while std::time::Instant::now() < give_up {
            let child = self.nodes[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }

    /// The certificates' directory (`ca.pem`, `client-jepsen.pem`, `client-jepsen-key.pem`).
    pub fn certs(&self) -> PathBuf {
        self.spec.dir.join("certs")
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("n{}", i + 1))
    }

    /// Whether node `i`'s process is running (paused counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        if let Some(child) = &mut node.child {
            if matches!(child.try_wait(), Ok(None)) {
                return true;
            }
            node.child = None;
        }
        false
    }

    /// Starts node `i` if it is not running.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        if self.is_running(i) {
            return Ok(());
        }
        let spec = &self.spec;
        let (state, initial) = match &self.nodes[i].joined {
            Some(initial) => ("existing", initial.clone()),
            None => {
                let members: Vec<String> = (0..spec.nodes)
                    .map(|n| format!("n{}={}", n + 1, port(spec.base_port, 40 + n)))
                    .collect();
                ("new", members.join(","))
            }
        };
        let certs = self.certs();
        let cert = |file: String| certs.join(file).display().to_string();
        let name = format!("n{}", i + 1);
        let log_path = spec.dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(spec.bin_dir.join("kv-server"))
            .arg(format!("--name={name}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--data-dir={}", self.data_dir(i).display()))
            .arg(format!("--listen-peer-address={}", port(spec.base_port, 20 + i)))
            .arg(format!("--listen-client-address={}", port(spec.base_port, i)))
            .arg(format!("--peer-source-address={}", proxy::source_ip(i)))
            .arg(format!("--peer-cert-file={}", cert(format!("{name}.pem"))))
            .arg(format!("--peer-key-file={}", cert(format!("{name}-key.pem"))))
            .arg(format!("--peer-trusted-ca-file={}", cert("ca.pem".into())))
            .arg(format!("--cert-file={}", cert(format!("{name}.pem"))))
            .arg(format!("--key-file={}", cert(format!("{name}-key.pem"))))
            .arg(format!("--trusted-ca-file={}", cert("ca.pem".into())))
            .args(&spec.server_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Kills node `i` with SIGKILL (which ends a paused process too).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    /// Stops node `i` with SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        if self.is_running(i) && !self.nodes[i].paused {
            self.signal(i, "-STOP");
            self.nodes[i].paused = true;
        }
    }

    /// Lets a paused node `i` go on with SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, "-CONT");
            self.nodes[i].paused = false;
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.nodes[i].child {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
        }
    }

    /// Resumes every paused node and starts every stopped one.
    pub fn restore(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.start_node(i)?;
        }
        Ok(())
    }

    /// The newest segment file of node `i`'s log (the one a crash can tear), if any.
    pub fn newest_segment(&self, i: usize) -> Option<PathBuf> {
        newest_segment_in(&self.data_dir(i))
    }
}

/// The segment file with the highest first index under `data_dir`.
pub(crate) fn newest_segment_in(data_dir: &Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> =
        walk(data_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    segments.sort();
    segments.pop()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
