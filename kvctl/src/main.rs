//! kvctl: the command-line client of the key-value store, its certificate maker, and its local
//! dev cluster.
//!
//! Exit codes: 0 done, 1 any other error, 2 bad usage, 3 key not found (get) or compare-and-set
//! refused (cas), 4 cluster unavailable (no endpoint reachable, no leader, or the outcome of a
//! write unknown).

mod bench;
mod certs;
mod client;
mod dev;
mod snapshot;
mod status;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use client::{one_write_session, CallError, Connection};
use kv_proto::kv::{self as api, ReadConsistency};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Talk to a kv cluster, make its certificates, or run one locally.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Nodes to try, in order (host:port, comma-separated).
    #[arg(
        long,
        env = "KVCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        global = true
    )]
    endpoints: Vec<String>,
    /// The CA of the servers' certificates (PEM): the connection uses TLS when set.
    #[arg(long, env = "KVCTL_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for clusters that require one.
    #[arg(long = "cert", id = "tls_cert", env = "KVCTL_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long = "key", id = "tls_key", env = "KVCTL_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, env = "KVCTL_OUTPUT", value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Seconds one call may take.
    #[arg(long, env = "KVCTL_TIMEOUT", default_value_t = 10, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints the value of a key.
    Get {
        key: String,
        /// Read this node's state without asking the leader (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Sets a key.
    Set { key: String, value: String },
    /// Deletes a key.
    Delete { key: String },
    /// Lists keys in order.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Start after this key.
        #[arg(long, default_value = "")]
        start_after: String,
        #[arg(long)]
        serializable: bool,
    },
    /// Sets a key only if its value is EXPECTED (or, with --absent, only if it is absent).
    Cas {
        key: String,
        /// The value the key must hold.
        #[arg(required_unless_present = "absent")]
        expected: Option<String>,
        /// The new value.
        #[arg(long)]
        value: String,
        /// Only if the key is absent.
        #[arg(long, conflicts_with = "expected")]
        absent: bool,
    },
    /// Lists the members.
    MemberList,
    /// Adds a member.
    MemberJoin {
        name: String,
        #[arg(long)]
        peer_address: String,
        #[arg(long)]
        client_address: String,
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member by name.
    MemberLeave { name: String },
    /// The status of the first reachable node, or with --all of every member.
    Status {
        /// Ask every member (at its advertised client address), one row each.
        #[arg(long)]
        all: bool,
    },
    /// Backs the key space up to a file, or seeds a new cluster's data directory from one.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Hands leadership to a member (or the most caught-up voter).
    TransferLeader {
        #[arg(default_value = "")]
        name: String,
    },
    /// Makes a CA (if DIR has none) and certificates for nodes and clients.
    Certs {
        /// Where the PEM files go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Node names, comma-separated: each gets a certificate covering its name,
        /// localhost, 127.0.0.1, ::1 and --hosts.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Extra host names or IPs for every node certificate.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Client users, comma-separated: each gets a client certificate.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
    /// Measures throughput and latency: closed-loop clients, percentiles at the end.
    Bench(bench::BenchSettings),
    /// Runs a local three-node cluster with TLS until Ctrl-C.
    Dev {
        #[arg(long, default_value = ".kv-dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Node i serves clients on base+i and peers on base+10+i.
        #[arg(long, default_value_t = 23790)]
        base_port: u16,
    },
    /// Runs one kv-server node in this process (used by `dev`; takes kv-server's flags).
    #[command(hide = true)]
    Node {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotAction {
    /// Saves a consistent copy of every key (as of a linearizable read) to FILE.
    Save { file: PathBuf },
    /// Seeds an empty data directory for a member of a new cluster from FILE: run it for
    /// every member's directory with the same --initial-cluster, then start the members
    /// with that --initial-cluster and --initial-cluster-state new.
    Restore {
        file: PathBuf,
        /// The member's data directory (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster, as kv-server's --initial-cluster.
        #[arg(long)]
        initial_cluster: String,
    },
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_UNAVAILABLE: u8 = 4;

/// A command's failure: a message and an exit code.
struct Failure(u8, String);

impl From<CallError> for Failure {
    fn from(error: CallError) -> Failure {
        let code = match &error {
            CallError::Unreachable(_) => EXIT_UNAVAILABLE,
            CallError::Status(status) => match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => EXIT_UNAVAILABLE,
                tonic::Code::InvalidArgument => EXIT_USAGE,
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_FAILED,
            },
            CallError::Local(_) => EXIT_USAGE,
        };
        Failure(code, error.to_string())
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn consistency(serializable: bool) -> i32 {
    if serializable { ReadConsistency::Serializable } else { ReadConsistency::Linearizable }.into()
}

/// mimalloc: the servers allocate and free many small buffers per request (HTTP/2 frames,
/// protobuf messages); it costs less per call than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Node { args } = &cli.command {
        let argv = std::iter::once("kv-server".to_string()).chain(args.iter().cloned());
        let flags = kv_server::config_file::parse_flags(argv).unwrap_or_else(|e| e.exit());
        let settings = match flags.check() {
            Ok(settings) => settings,
            Err(error) => {
                eprintln!("kv-server: {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        kv_server::init_logging();
        return match kv_server::run_until_stopped(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kv-server: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    let runtime = match kv_server::server_runtime(None) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvctl: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("kvctl: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let connection = Connection {
        endpoints: cli.endpoints.clone(),
        cacert: cli.cacert.clone(),
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
        timeout: Duration::from_secs(cli.timeout),
    };
    let json = cli.output == Output::Json;
    match cli.command {
        Cmd::Get { key, serializable } => {
            let request = api::GetRequest {
                key: Bytes::from(key.clone()),
                consistency: consistency(serializable),
            };
            let response = connection
                .send(request, |c, r| async move { Connection::kv(c).get(r).await })
                .await?;
            if !response.found {
                if json {
                    println!("{}", json!({ "key": key, "found": false }));
                }
                return Err(Failure(EXIT_NOT_FOUND, format!("{key}: not found")));
            }
            if json {
                println!(
                    "{}",
                    json!({ "key": key, "found": true, "value": text(&response.value), "mod_revision": response.mod_revision })
                );
            } else {
                println!("{}", text(&response.value));
            }
        }
        Cmd::Set { key, value } => {
            let session = Some(one_write_session());
            let request = api::SetRequest { key: key.into(), value: value.into(), session };
            let response = connection
                .send(request, |c, r| async move { Connection::kv(c).set(r).await })
                .await?;
            print_revision(json, response.revision);
        }
        Cmd::Delete { key } => {
            let request =
                api::DeleteRequest { key: key.into(), session: Some(one_write_session()) };
            let response = connection
                .send(request, |c, r| async move { Connection::kv(c).delete(r).await })
                .await?;
            if json {
                println!(
                    "{}",
                    json!({ "deleted": response.deleted, "revision": response.revision })
                );
            } else {
                println!(
                    "{} (revision {})",
                    if response.deleted { "deleted" } else { "absent" },
                    response.revision
                );
            }
        }
        Cmd::List { prefix, limit, start_after, serializable } => {
            let request = api::ListRequest {
                prefix: prefix.into(),
                limit,
                start_after: start_after.into(),
                consistency: consistency(serializable),
            };
            let items = connection
                .call(|c| {
                    let request = request.clone();
                    async move {
                        let mut stream = Connection::kv(c).list(request).await?.into_inner();
                        let mut items = Vec::new();
                        while let Some(item) = stream.message().await? {
                            items.push(item);
                        }
                        Ok(items)
                    }
                })
                .await?;
            for item in items {
                if json {
                    println!(
                        "{}",
                        json!({ "key": text(&item.key), "value": text(&item.value), "mod_revision": item.mod_revision })
                    );
                } else {
                    println!("{}\t{}", text(&item.key), text(&item.value));
                }
            }
        }
        Cmd::Cas { key, expected, value, absent } => {
            let expected = if absent { None } else { expected.map(Bytes::from) };
            let request = api::CompareAndSetRequest {
                key: key.into(),
                expected,
                value: value.into(),
                session: Some(one_write_session()),
            };
            let response = connection
                .send(request, |c, r| async move { Connection::kv(c).compare_and_set(r).await })
                .await?;
            let current = response.current.as_deref().map(text);
            if json {
                println!(
                    "{}",
                    json!({ "succeeded": response.succeeded, "current": current, "revision": response.revision })
                );
            } else if response.succeeded {
                println!("OK (revision {})", response.revision);
            }
            if !response.succeeded {
                let found = current
                    .map_or("the key is absent".to_string(), |c| format!("the value is {c:?}"));
                return Err(Failure(EXIT_NOT_FOUND, format!("compare-and-set refused: {found}")));
            }
        }
        Cmd::MemberList => {
            let response = connection
                .send(api::MemberListRequest {}, |c, r| async move {
                    Connection::cluster(c).member_list(r).await
                })
                .await?;
            print_members(json, &response.members);
        }
        Cmd::MemberJoin { name, peer_address, client_address, learner } => {
            let request = api::MemberJoinRequest { name, peer_address, client_address, learner };
            let response = connection
                .send(request, |c, r| async move { Connection::cluster(c).member_join(r).await })
                .await?;
            print_members(json, &response.members);
            if let (false, Some(member)) = (json, &response.member) {
                let initial: Vec<String> = response
                    .members
                    .iter()
                    .map(|m| format!("{}@{}={}", m.name, m.id, m.peer_address))
                    .collect();
                println!();
                println!(
                    "Member {} is id {}. Start it with an empty data directory and:",
                    member.name, member.id
                );
                println!(
                    "  --name {} --initial-cluster-state existing --initial-cluster {}",
                    member.name,
                    initial.join(",")
                );
            }
        }
        Cmd::MemberLeave { name } => {
            let request = api::MemberLeaveRequest { name };
            let response = connection
                .send(request, |c, r| async move { Connection::cluster(c).member_leave(r).await })
                .await?;
            print_members(json, &response.members);
        }
        Cmd::Status { all: false } => status::one(&connection, json).await?,
        Cmd::Status { all: true } => status::all(&connection, json).await?,
        Cmd::Snapshot { action: SnapshotAction::Save { file } } => {
            let saved = snapshot::save(&connection, &file).await?;
            print_saved(json, "saved", &file, &saved);
        }
        Cmd::Snapshot { action: SnapshotAction::Restore { file, data_dir, initial_cluster } } => {
            let members = kv_server::flags::parse_initial_cluster(&initial_cluster)
                .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            let ids: Vec<_> = members.iter().map(|m| m.id).collect();
            let restored =
                snapshot::restore(&file, &data_dir, &ids).map_err(|e| Failure(EXIT_FAILED, e))?;
            print_saved(json, "restored", &data_dir, &restored);
            if !json {
                // The same line on every member: a typo in one --initial-cluster shows.
                let voters: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
                println!("voters {} (run the same restore for each of them)", voters.join(","));
            }
        }
        Cmd::TransferLeader { name } => {
            let request = api::TransferLeadershipRequest { name };
            let response = connection
                .send(
                    request,
                    |c, r| async move { Connection::cluster(c).transfer_leadership(r).await },
                )
                .await?;
            println!("leadership goes to {}", response.leader_name);
        }
        Cmd::Certs { dir, nodes, hosts, clients } => {
            let failed = |e: certs::CertsError| Failure(EXIT_FAILED, e.to_string());
            let ca = certs::ca(&dir).map_err(failed)?;
            for node in &nodes {
                let path = certs::node(&dir, &ca, node, &hosts).map_err(failed)?;
                println!("{}", path.display());
            }
            for user in &clients {
                let path = certs::client(&dir, &ca, user).map_err(failed)?;
                println!("{}", path.display());
            }
            println!("{}", dir.join("ca.pem").display());
        }
        Cmd::Bench(mut settings) => {
            settings.json = json;
            settings.check().map_err(|message| Failure(EXIT_USAGE, message))?;
            bench::run(&connection, settings).await.map_err(|e| Failure(EXIT_UNAVAILABLE, e))?;
        }
        Cmd::Dev { dir, nodes, base_port } => {
            dev::run(&dir, nodes, base_port).await.map_err(|e| Failure(EXIT_FAILED, e))?;
        }
        Cmd::Node { .. } => unreachable!("handled before the runtime"),
    }
    Ok(())
}

fn print_saved(json: bool, what: &str, path: &std::path::Path, saved: &snapshot::Saved) {
    if json {
        println!(
            "{}",
            json!({ what: path.display().to_string(), "keys": saved.keys, "index": saved.applied,
                    "bytes": saved.bytes, "crc32": format!("{:08x}", saved.crc32) })
        );
    } else {
        println!(
            "{what} {}: {} keys as of index {}; backup {} bytes, crc32 {:08x}",
            path.display(),
            saved.keys,
            saved.applied,
            saved.bytes,
            saved.crc32
        );
    }
}

fn print_revision(json: bool, revision: u64) {
    if json {
        println!("{}", json!({ "revision": revision }));
    } else {
        println!("OK (revision {revision})");
    }
}

fn print_members(json: bool, members: &[api::Member]) {
    for m in members {
        if json {
            println!(
                "{}",
                json!({ "id": m.id, "name": m.name, "peer_address": m.peer_address, "client_address": m.client_address,
                        "learner": m.is_learner, "leader": m.is_leader })
            );
        }
    }
    if !json {
        println!("ID\tNAME\tPEER\tCLIENT\tROLE");
        for m in members {
            let role = if m.is_leader {
                "leader"
            } else if m.is_learner {
                "learner"
            } else {
                "voter"
            };
            println!("{}\t{}\t{}\t{}\t{}", m.id, m.name, m.peer_address, m.client_address, role);
        }
    }
}
