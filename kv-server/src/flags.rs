//! The command line: every flag also settable as an environment variable `KV_<FLAG>`, checked
//! as a whole before anything starts, with errors naming the flag.

use crate::scheduling::Scheduling;
use clap::{Parser, ValueEnum};
use raft_core::NodeId;
use raft_net::PeerAddress;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The most `--threads` a node takes: more than any machine has cores (a runtime thread per
/// core is the most that helps), and few enough that starting them cannot exhaust the
/// process's threads.
pub const THREADS_MAX: usize = 1024;

/// kv-server: one node of a replicated key-value store.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Flags {
    /// A TOML file with any of these flags, by their long names (`data-dir = "/var/lib/kv"`).
    /// A flag on the command line, then its environment variable, win over the file.
    #[arg(long, env = "KV_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// This node's name: must appear in --initial-cluster.
    #[arg(long, env = "KV_NAME")]
    pub name: String,

    /// Every initial member as name=host:port (its advertised peer address), comma-separated.
    /// All nodes must be given the same list, in the same order: a member's id is its
    /// position in it, from 1, unless every entry names its id as name@id=host:port (as
    /// `kvctl member-join` prints for a node joining a running cluster).
    #[arg(long, env = "KV_INITIAL_CLUSTER")]
    pub initial_cluster: String,

    /// `new` bootstraps the cluster of --initial-cluster; `existing` joins a running cluster
    /// that already added this node (kvctl member-join).
    #[arg(long, env = "KV_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterState::New)]
    pub initial_cluster_state: ClusterState,

    /// A name for the cluster: peers with another token are refused.
    #[arg(long, env = "KV_INITIAL_CLUSTER_TOKEN", default_value = "kv-cluster")]
    pub initial_cluster_token: String,

    /// Where the log, its snapshots and the vote file live.
    #[arg(long, env = "KV_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Where to listen for peers (ip:port).
    #[arg(long, env = "KV_LISTEN_PEER_ADDRESS")]
    pub listen_peer_address: SocketAddr,

    /// The peer address others use for this node (host:port); defaults to this node's entry
    /// in --initial-cluster, and must match it.
    #[arg(long, env = "KV_ADVERTISE_PEER_ADDRESS")]
    pub advertise_peer_address: Option<String>,

    /// The local IP address this node's connections to its peers come from (default: the
    /// system's choice), so that a firewall or the test harness can tell them apart.
    #[arg(long, env = "KV_PEER_SOURCE_ADDRESS")]
    pub peer_source_address: Option<std::net::IpAddr>,

    /// Where to listen for clients (ip:port).
    #[arg(long, env = "KV_LISTEN_CLIENT_ADDRESS")]
    pub listen_client_address: SocketAddr,

    /// Where to serve Prometheus metrics over plain HTTP at /metrics (ip:port); none when
    /// unset.
    #[arg(long, env = "KV_LISTEN_METRICS_ADDRESS")]
    pub listen_metrics_address: Option<SocketAddr>,

    /// The client address to give clients (host:port); defaults to --listen-client-address.
    #[arg(long, env = "KV_ADVERTISE_CLIENT_ADDRESS")]
    pub advertise_client_address: Option<String>,

    /// This node's certificate for peers (PEM); must cover its advertised peer host.
    #[arg(long, env = "KV_PEER_CERT_FILE")]
    pub peer_cert_file: PathBuf,

    /// The key of --peer-cert-file (PEM).
    #[arg(long, env = "KV_PEER_KEY_FILE")]
    pub peer_key_file: PathBuf,

    /// The CA that signs every member's peer certificate (PEM).
    #[arg(long, env = "KV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: PathBuf,

    /// The certificate served to clients (PEM). Without it the client API is plain TCP.
    #[arg(long, env = "KV_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// The key of --cert-file (PEM).
    #[arg(long, env = "KV_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// When set, clients must present a certificate signed by this CA (PEM).
    #[arg(long, env = "KV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Access control (docs/security.md): a TOML policy granting roles to users (the Common
    /// Name of their client certificate) and permissions to roles; default deny. Needs
    /// --trusted-ca-file. Reloaded on SIGHUP.
    #[arg(long, env = "KV_AUTH_POLICY_FILE")]
    pub auth_policy_file: Option<PathBuf>,

    /// Threads that serve clients and peers and run the Raft loop; the log's fdatasync has a
    /// thread of its own besides. With 1 everything else runs on one thread, which costs
    /// the least CPU per request: best when several nodes share a machine's cores (`kvctl
    /// dev` gives each node its share). Default: one per core.
    #[arg(long, env = "KV_THREADS")]
    pub threads: Option<usize>,

    /// How the kernel schedules the node's threads: `normal`, or `batch` (Linux's
    /// SCHED_BATCH: a thread that wakes does not preempt the running one). Batch costs less
    /// CPU per request when several nodes share a machine's cores (`kvctl dev` sets it
    /// then); the nice value is unchanged.
    #[arg(long, env = "KV_SCHEDULING", value_enum, default_value_t = Scheduling::Normal)]
    pub scheduling: Scheduling,

    /// Milliseconds per Raft tick.
    #[arg(long, env = "KV_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,

    /// Ticks without a leader before a follower campaigns (randomized up to twice this).
    #[arg(long, env = "KV_ELECTION_TICKS", default_value_t = 10)]
    pub election_ticks: u32,

    /// Take a snapshot (and compact the log) after this many applied entries. The default
    /// is etcd 3.4's `--snapshot-count`. Each snapshot writes the whole state: taking them
    /// ten times as often cost about 4% more CPU per put in `bench/ab.sh` (10,000 keys,
    /// docs/performance.md). The entries since the last snapshot are in the log's files,
    /// not in memory (only the newest 8 MiB are), and --snapshot-bytes bounds them too.
    #[arg(long, env = "KV_SNAPSHOT_ENTRIES", default_value_t = 100_000)]
    pub snapshot_entries: u64,

    /// Take a snapshot (and compact the log) once this many bytes of entries were applied
    /// since the last one, whichever of this and --snapshot-entries comes first.
    #[arg(long, env = "KV_SNAPSHOT_BYTES", default_value_t = 64 << 20)]
    pub snapshot_bytes: u64,

    /// Entries kept in the log below a snapshot, so that a follower a little behind catches
    /// up from the log instead of a whole snapshot.
    #[arg(long, env = "KV_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5_000)]
    pub snapshot_catchup_entries: u64,

    /// The largest value a client may write, in bytes.
    #[arg(long, env = "KV_VALUE_BYTES_MAX", default_value_t = 1 << 20)]
    pub value_bytes_max: usize,

    /// How long a client call may wait for its outcome, in milliseconds.
    #[arg(long, env = "KV_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// The most calls one client connection may have open at once (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, as etcd's --max-concurrent-streams); a client waits
    /// for one to end, and a call over the bound is refused (REFUSED_STREAM). None without
    /// it (etcd's default, 2^32 - 1, is none in effect). The number of connections is not
    /// bounded here.
    #[arg(long, env = "KV_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,

    /// A planted bug, for the test harness only (docs/testing.md): linearizable reads are
    /// served from this node's state without ReadIndex, so a node cut off from the leader
    /// answers stale reads. The harness must report them; never use it otherwise.
    #[arg(long, hide = true)]
    pub unsafe_local_reads: bool,
}

/// Whether the node bootstraps a cluster or joins one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Bootstrap the cluster of --initial-cluster.
    New,
    /// Join a running cluster.
    Existing,
}

/// A member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its id: its position in --initial-cluster, from 1.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its advertised peer address.
    pub peer_address: PeerAddress,
}

/// A setting that cannot work, naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn flag_error(flag: &'static str, reason: impl Into<String>) -> FlagError {
    FlagError { flag, reason: reason.into() }
}

/// The checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The flags as given.
    pub flags: Flags,
    /// The initial members, in order.
    pub members: Vec<InitialMember>,
    /// This node's id.
    pub id: NodeId,
    /// The client address advertised.
    pub advertise_client_address: String,
}

impl Settings {
    /// The Raft tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.flags.tick_ms)
    }

    /// How long a client call may wait.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.flags.request_timeout_ms)
    }
}

/// Whether an `--initial-cluster` entry names its id (`name@id=host:port`).
fn gives_id(item: &str) -> bool {
    item.split('=').next().is_some_and(|name| name.contains('@'))
}

/// Parses `name=host:port,...`.
pub fn parse_initial_cluster(value: &str) -> Result<Vec<InitialMember>, FlagError> {
    let error = |reason: String| flag_error("initial-cluster", reason);
    let mut members: Vec<InitialMember> = Vec::new();
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    let explicit = items.iter().filter(|item| gives_id(item)).count();
    if explicit != 0 && explicit != items.len() {
        let reason = "either every entry gives its id (name@id=host:port) or none does";
        return Err(error(reason.into()));
    }
    for (position, item) in items.into_iter().enumerate() {
        let (name, address) =
            item.split_once('=').ok_or_else(|| error(format!("{item:?} is not name=host:port")))?;
        let (name, id) = match name.split_once('@') {
            Some((name, id)) => {
                let id: u64 =
                    id.parse().map_err(|_| error(format!("{item:?}: the id is not a number")))?;
                if id == 0 {
                    return Err(error(format!("{item:?}: ids start at 1")));
                }
                (name, NodeId(id))
            }
            None => (name, NodeId(position as u64 + 1)),
        };
        if name.is_empty() {
            return Err(error(format!("{item:?} has no name")));
        }
        let peer_address: PeerAddress = address.parse().map_err(|e| error(format!("{e}")))?;
        if members.iter().any(|m| m.name == name) {
            return Err(error(format!("the name {name:?} appears twice")));
        }
        if members.iter().any(|m| m.peer_address == peer_address) {
            return Err(error(format!("the address {address} appears twice")));
        }
        if members.iter().any(|m| m.id == id) {
            return Err(error(format!("the id {id} appears twice")));
        }
        members.push(InitialMember { id, name: name.into(), peer_address });
    }
    Ok(members)
}

impl Flags {
    /// Checks the flags together.
    pub fn check(self) -> Result<Settings, FlagError> {
        let members = parse_initial_cluster(&self.initial_cluster)?;
        let explicit_ids = self.initial_cluster.split(',').all(gives_id);
        if self.initial_cluster_state == ClusterState::Existing && !explicit_ids {
            return Err(flag_error(
                "initial-cluster",
                "joining a running cluster needs every id given (name@id=host:port, as kvctl \
                 member-join prints it): ids are not positions once members have come and gone",
            ));
        }
        let me = members.iter().find(|m| m.name == self.name).ok_or_else(|| {
            flag_error("name", format!("{:?} is not in --initial-cluster", self.name))
        })?;
        if let Some(advertised) = &self.advertise_peer_address {
            let parsed: PeerAddress = advertised
                .parse()
                .map_err(|e| flag_error("advertise-peer-address", format!("{e}")))?;
            if parsed != me.peer_address {
                return Err(flag_error(
                    "advertise-peer-address",
                    format!(
                        "{advertised} differs from {}'s entry in --initial-cluster ({})",
                        self.name, me.peer_address
                    ),
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(flag_error("key-file", "--cert-file and --key-file go together"));
        }
        if self.trusted_ca_file.is_some() && self.cert_file.is_none() {
            return Err(flag_error(
                "trusted-ca-file",
                "client certificates need TLS: set --cert-file and --key-file",
            ));
        }
        if self.auth_policy_file.is_some() && self.trusted_ca_file.is_none() {
            return Err(flag_error(
                "auth-policy-file",
                "users are known by their client certificates: set --trusted-ca-file (and \
                 --cert-file, --key-file)",
            ));
        }
        if self.listen_peer_address == self.listen_client_address {
            return Err(flag_error("listen-client-address", "the same as --listen-peer-address"));
        }
        if let Some(threads) = self.threads.filter(|t| !(1..=THREADS_MAX).contains(t)) {
            return Err(flag_error(
                "threads",
                format!("{threads} is not between 1 and {THREADS_MAX}"),
            ));
        }
        if self.tick_ms == 0 {
            return Err(flag_error("tick-ms", "must be at least 1"));
        }
        if self.election_ticks < 2 {
            return Err(flag_error(
                "election-ticks",
                "must be at least 2 (heartbeats go every tick)",
            ));
        }
        if self.snapshot_entries == 0 {
            return Err(flag_error("snapshot-entries", "must be at least 1"));
        }
        if self.snapshot_bytes == 0 {
            return Err(flag_error("snapshot-bytes", "must be at least 1"));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > kv_fsm::snapshot::VALUE_BYTES_MAX {
            return Err(flag_error(
                "value-bytes-max",
                format!("must be between 1 and {}", kv_fsm::snapshot::VALUE_BYTES_MAX),
            ));
        }
        if self.max_concurrent_streams == Some(0) {
            return Err(flag_error("max-concurrent-streams", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(flag_error("request-timeout-ms", "must be at least 1"));
        }
        if self.scheduling == Scheduling::Batch && !cfg!(target_os = "linux") {
            return Err(flag_error("scheduling", "batch is only available on Linux"));
        }
        let advertise_client_address = self
            .advertise_client_address
            .clone()
            .unwrap_or_else(|| self.listen_client_address.to_string());
        let id = me.id;
        Ok(Settings { flags: self, members, id, advertise_client_address })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(extra: &[&str]) -> Result<Settings, String> {
        let mut args = vec![
            "kv-server",
            "--name=n2",
            "--initial-cluster=n1=node-1.example:7001,n2=127.0.0.1:7002,n3=[::1]:7003",
            "--data-dir=/tmp/x",
            "--listen-peer-address=127.0.0.1:7002",
            "--listen-client-address=127.0.0.1:8002",
            "--peer-cert-file=c.pem",
            "--peer-key-file=k.pem",
            "--peer-trusted-ca-file=ca.pem",
        ];
        for arg in extra {
            let flag = arg.split('=').next().unwrap_or(arg);
            args.retain(|base| base.split('=').next() != Some(flag));
            args.push(arg);
        }
        let flags = Flags::try_parse_from(args).map_err(|e| e.to_string())?;
        flags.check().map_err(|e| e.to_string())
    }

    #[test]
    fn explicit_ids_are_all_or_nothing() {
        let members = parse_initial_cluster("a@2=h:1,b@7=h:2").unwrap();
        assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), [NodeId(2), NodeId(7)]);
        for bad in ["a@2=h:1,b=h:2", "a@x=h:1", "a@0=h:1", "a@2=h:1,b@2=h:2"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_good_command_line_gives_ids_by_position() {
        let settings = flags(&[]).unwrap();
        assert_eq!(settings.id, NodeId(2));
        assert_eq!(settings.members.len(), 3);
        assert_eq!(settings.members[2].peer_address.host, "::1");
        assert_eq!(settings.advertise_client_address, "127.0.0.1:8002");
    }

    #[test]
    fn contradictions_are_refused_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--name=n9"], "--name"),
            (
                &["--initial-cluster=n1=a:1,n1=b:2"],
                "--initial-cluster: the name \"n1\" appears twice",
            ),
            (&["--initial-cluster=n1=a:1,n2"], "--initial-cluster"),
            (&["--initial-cluster=n1=a:1,n2=b"], "--initial-cluster"),
            (&["--advertise-peer-address=127.0.0.1:9"], "--advertise-peer-address"),
            (&["--cert-file=x.pem"], "--key-file"),
            (&["--trusted-ca-file=ca.pem"], "--trusted-ca-file"),
            (&["--auth-policy-file=p.toml"], "--auth-policy-file"),
            (&["--listen-client-address=127.0.0.1:7002"], "--listen-client-address"),
            (&["--threads=0"], "--threads"),
            (&["--threads=100000"], "--threads: 100000 is not between 1 and 1024"),
            (&["--tick-ms=0"], "--tick-ms"),
            (&["--election-ticks=1"], "--election-ticks"),
            (&["--value-bytes-max=0"], "--value-bytes-max"),
            (&["--snapshot-entries=0"], "--snapshot-entries"),
            (&["--snapshot-bytes=0"], "--snapshot-bytes"),
            (&["--max-concurrent-streams=0"], "--max-concurrent-streams: must be at least 1"),
            (&["--initial-cluster-state=existing"], "needs every id given"),
        ];
        for (extra, needle) in cases {
            let error = flags(extra).unwrap_err();
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
    }

    #[test]
    fn clap_refuses_unparsable_values_naming_the_flag() {
        let error = flags(&["--listen-peer-address=nowhere"]).unwrap_err();
        assert!(error.contains("--listen-peer-address"), "{error}");
        let error = flags(&["--initial-cluster-state=maybe"]).unwrap_err();
        assert!(error.contains("--initial-cluster-state"), "{error}");
        let error = flags(&["--scheduling=fast"]).unwrap_err();
        assert!(error.contains("--scheduling"), "{error}");
    }
}
