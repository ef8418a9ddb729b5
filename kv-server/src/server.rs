//! Starting and stopping a node: TLS material, the transport, the node loop, the gRPC
//! server, and a clean stop on SIGTERM or SIGINT (leadership handed over first).

use crate::auth::{self, Authorizer};
use crate::connections;
use crate::flags::Settings;
use crate::grpc;
use crate::health;
use crate::metrics::{self, Metrics};
use crate::node::{self, NodeConfig, NodeHandle};
use crate::service::{MemberInfo, Service};
use raft_log::vfs::StdVfs;
use raft_net::{Security, TlsIdentity, TlsPaths, Transport, TransportConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// How long, past the request timeout, a stopping server waits for a client connection's
/// calls to end before it closes the connection.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The peer TLS files.
    #[error("peer TLS: {0}")]
    PeerTls(#[from] raft_net::TlsError),
    /// The client TLS files.
    #[error("client TLS: {0}")]
    ClientTls(String),
    /// The transport.
    #[error("peer transport: {0}")]
    Transport(#[from] raft_net::StartError),
    /// The node.
    #[error("{0}")]
    Node(#[from] node::StartError),
    /// The gRPC server.
    #[error("client API on {address}: {reason}")]
    Serve {
        /// The listen address.
        address: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node loop failed (a disk error).
    #[error("the node stopped: {0}")]
    Failed(String),
}

/// The TLS of the client API (`--cert-file`, `--key-file`, `--trusted-ca-file`), if set.
fn client_tls(settings: &Settings) -> Result<Option<TlsAcceptor>, ServerError> {
    let flags = &settings.flags;
    let (Some(cert), Some(key)) = (&flags.cert_file, &flags.key_file) else { return Ok(None) };
    let config = raft_net::tls::client_listener_config(
        cert,
        key,
        flags.trusted_ca_file.as_deref(),
        &[b"h2"],
    )
    .map_err(|e| ServerError::ClientTls(e.to_string()))?;
    Ok(Some(TlsAcceptor::from(config)))
}

/// Runs the node until a signal stops it, as a task of the runtime (on a multi-threaded
/// runtime a future driven by `block_on` runs on the calling thread, which would then carry
/// the gRPC server alone).
pub async fn run(settings: Settings) -> Result<(), ServerError> {
    match tokio::spawn(serve(settings)).await {
        Ok(result) => result,
        Err(error) => Err(ServerError::Failed(format!("the server task failed: {error}"))),
    }
}

async fn serve(settings: Settings) -> Result<(), ServerError> {
    let flags = &settings.flags;
    let identity = TlsIdentity::load(&TlsPaths {
        ca: flags.peer_trusted_ca_file.clone(),
        cert: flags.peer_cert_file.clone(),
        key: flags.peer_key_file.clone(),
    })?;
    let client_tls = client_tls(&settings)?;
    let mut transport_config = TransportConfig::new(
        settings.id,
        flags.initial_cluster_token.clone(),
        flags.listen_peer_address,
    );
    transport_config.source = flags.peer_source_address;
    for member in settings.members.iter() {
        if member.id == settings.id {
            transport_config.advertise = Some(member.peer_address.clone());
        } else {
            transport_config.peers.insert(member.id, member.peer_address.clone());
        }
    }
    let (transport, events) = Transport::start(transport_config, Security::Tls(identity)).await?;
    let node_config = NodeConfig {
        id: settings.id,
        // A new cluster starts with every initial member voting. A node joining a running one
        // is not a voter yet: it learns the configuration from the leader's log or snapshot.
        voters: match flags.initial_cluster_state {
            crate::flags::ClusterState::New => settings.members.iter().map(|m| m.id).collect(),
            crate::flags::ClusterState::Existing => {
                settings.members.iter().map(|m| m.id).filter(|&id| id != settings.id).collect()
            }
        },
        data_dir: flags.data_dir.clone(),
        tick: settings.tick(),
        election_ticks: flags.election_ticks,
        snapshot_entries: flags.snapshot_entries,
        snapshot_bytes: flags.snapshot_bytes,
        snapshot_catchup_entries: flags.snapshot_catchup_entries,
        request_timeout: settings.request_timeout(),
        me: kv_fsm::Member {
            name: flags.name.clone(),
            peer_address: settings
                .members
                .iter()
                .find(|m| m.id == settings.id)
                .map(|m| m.peer_address.to_string())
                .unwrap_or_default(),
            client_address: settings.advertise_client_address.clone(),
            promote: false, // the state machine keeps the flag of the row's join
        },
    };
    let authorizer = match &flags.auth_policy_file {
        Some(path) => {
            let loaded = Authorizer::load(path).map_err(|e| ServerError::Failed(e.to_string()))?;
            tracing::info!("access control: {}", path.display());
            Some(Arc::new(loaded))
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let metrics_listener = match flags.listen_metrics_address {
        Some(address) => Some(metrics::bind(address).await.map_err(ServerError::Failed)?),
        None => None,
    };
    let transport = Arc::new(transport);
    metrics.watch_transport(transport.clone());
    let runtime = tokio::runtime::Handle::current();
    let (node, node_loop) = node::start(
        Arc::new(StdVfs),
        node_config,
        transport.clone(),
        events,
        runtime,
        metrics.clone(),
    )?;
    let members = settings
        .members
        .iter()
        .map(|m| MemberInfo {
            id: m.id,
            name: m.name.clone(),
            peer_address: m.peer_address.to_string(),
            client_address: if m.id == settings.id {
                settings.advertise_client_address.clone()
            } else {
                String::new()
            },
        })
        .collect();
    let reload = authorizer.clone().map(|auth| tokio::spawn(auth::reload_on_hangup(auth)));
    let service = Service::new(node.clone(), members, flags.value_bytes_max, metrics.clone())
        .with_auth(authorizer)
        .with_unsafe_local_reads(flags.unsafe_local_reads);
    if flags.unsafe_local_reads {
        tracing::warn!("--unsafe-local-reads: reads may be stale (a planted bug for the harness)");
    }
    let metrics_server = metrics_listener.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            tracing::info!("serving metrics on http://{address}/metrics");
        }
        let served = metrics::serve(metrics.clone(), listener, std::future::pending());
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::error!("the metrics endpoint stopped: {error}");
            }
        })
    });
    let address = flags.listen_client_address;
    let incoming = connections::incoming(address, &metrics)
        .map_err(|e| ServerError::Serve { address, reason: e.to_string() })?;
    tracing::info!(name = %flags.name, id = %settings.id, "serving clients on {address}, peers on {}", flags.listen_peer_address);
    // The loop task is watched too: if it stops on its own (a disk error), the server
    // stops serving and the process exits with the error, instead of answering UNAVAILABLE
    // forever.
    let (result_sender, loop_result) = tokio::sync::oneshot::channel();
    let loop_ended = Arc::new(tokio::sync::Notify::new());
    let ended = loop_ended.clone();
    tokio::spawn(async move {
        let result = node_loop.await.unwrap_or_else(|_| Err("the node loop panicked".into()));
        let _ = result_sender.send(result);
        ended.notify_one(); // kept as a permit if nobody waits yet
    });
    let stop_serving = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = loop_ended.notified() => {}
        }
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health = health::start(node.clone(), health_reporter).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Failed(format!("gRPC reflection: {e}")))?;
    let services = grpc::Services::new(service).with(health_service).with(reflection);
    let serving = grpc::Serving {
        tls: client_tls,
        services,
        metrics: metrics.clone(),
        // A write or read in flight ends within the request timeout; then its answer must
        // leave. Longer calls (a membership change, a List or snapshot stream) may be cut.
        drain: settings.request_timeout() + DRAIN_MARGIN,
        streams_max: flags.max_concurrent_streams,
    };
    grpc::serve(incoming, serving, stop_serving).await;
    health.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    stop(&node).await;
    transport.shutdown();
    match loop_result.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ServerError::Failed(error)),
        Err(_) => Err(ServerError::Failed("the node loop vanished".into())),
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("stopping: no new requests");
}

/// Hands leadership to another voter if this node leads (waiting up to 3 s for it to take
/// over), then stops the loop.
async fn stop(node: &NodeHandle) {
    if let Ok(target) = node.transfer_leadership(None).await {
        tracing::info!("handing leadership to node {target}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            if node.status().await.is_some_and(|s| s.leader == Some(target)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node.stop().await;
}
