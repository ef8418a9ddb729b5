//! Prometheus metrics (prometheus-client), served as text on `--listen-metrics-address` at
//! `/metrics` (docs/operations.md#metrics).
//!
//! Every metric is an atomic, updated where the thing happens: the node loop (role, term,
//! indexes, the log's batches and their fdatasync, replication lag, snapshots, dropped messages), the
//! gRPC services (requests by method and code, proposal and ReadIndex latency) and the
//! client listener (open connections). A labelled metric's family takes a short read lock to
//! find its counter; no lock is held across an await.

use crate::node::role_name;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use raft_core::Role;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Labels naming a Raft role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// follower, pre-candidate, candidate or leader.
    pub role: &'static str,
}

/// Labels naming a peer by id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's member id.
    pub peer: String,
}

/// Labels of a gRPC request: its method and the status code it was answered with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The full method, such as `/kv.v1.KV/Get`, or `unknown`: borrowed for these (no text
    /// allocated per request), owned for other services' methods (health, reflection).
    pub method: Cow<'static, str>,
    /// The gRPC status code, such as `Ok` or `Unavailable`.
    pub code: &'static str,
}

/// Labels naming a step of the node that took too long (`node/slow.rs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowStepLabel {
    /// `wal_sync`, `loop_turn` or `late_tick`.
    pub step: &'static str,
}

/// Labels of a proposal's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `applied`, or why not (`no_leader`, `timeout`, ...).
    pub outcome: &'static str,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// 1 for the node's current role, 0 for the others.
    pub role: Family<RoleLabel, Gauge>,
    /// The current term.
    pub term: Gauge,
    /// How often the known leader changed (to another node or to none).
    pub leader_changes: Counter,
    /// The commit index.
    pub commit_index: Gauge,
    /// The applied index.
    pub applied_index: Gauge,
    /// Client writes by outcome.
    pub proposals: Family<OutcomeLabel, Counter>,
    /// Seconds from a client write's arrival to its answer.
    pub proposal_seconds: Histogram,
    /// Seconds from handing one batch's fdatasync to the sync thread to the loop seeing the
    /// batch durable.
    pub wal_sync_seconds: Histogram,
    /// Entries per log batch (one fdatasync each).
    pub wal_batch_entries: Histogram,
    /// Seconds per turn of the Raft loop.
    pub loop_turn_seconds: Histogram,
    /// Steps that took longer than 100 ms, by step (each also logged as a warning).
    pub slow_steps: Family<SlowStepLabel, Counter>,
    /// On the leader: entries each member's log lags behind the leader's.
    pub replication_lag: Family<PeerLabel, Gauge>,
    /// Messages to each peer that the transport refused (its queue full or no connection).
    pub messages_dropped: Family<PeerLabel, Counter>,
    /// Snapshots taken.
    pub snapshots: Counter,
    /// Seconds to write a snapshot (beside the loop).
    pub snapshot_seconds: Histogram,
    /// Seconds a linearizable read waited for ReadIndex (and for applying up to it).
    pub read_index_seconds: Histogram,
    /// gRPC requests by method and status code.
    pub requests: Family<RequestLabels, Counter>,
    /// Client connections open now.
    pub client_connections: Gauge,
    /// The peer transport's counters (raft-net `Stats`), by event.
    pub transport: Family<EventLabel, Counter>,
    /// Where the transport counters come from, and their values when last counted: they
    /// are brought up to date at each scrape.
    transport_source: OnceLock<Arc<raft_net::Transport>>,
    transport_counted: Mutex<raft_net::Stats>,
}

/// Labels naming a transport event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// Such as `messages_sent` or `connections_refused`.
    pub event: &'static str,
}

/// The API's methods (`kv.v1.KV` and `kv.v1.Cluster`, as `kv/v1/kv.proto` declares them),
/// so that counting a call to one allocates no label text for it. A test checks the list
/// against the compiled descriptors.
const API_METHODS: &[&str] = &[
    "/kv.v1.KV/Get",
    "/kv.v1.KV/Set",
    "/kv.v1.KV/Delete",
    "/kv.v1.KV/CompareAndSet",
    "/kv.v1.KV/List",
    "/kv.v1.KV/GetServers",
    "/kv.v1.Cluster/MemberList",
    "/kv.v1.Cluster/MemberJoin",
    "/kv.v1.Cluster/MemberLeave",
    "/kv.v1.Cluster/Status",
    "/kv.v1.Cluster/TransferLeadership",
    "/kv.v1.Cluster/SnapshotSave",
];

/// The label of a call to a path no service serves.
const UNKNOWN_METHOD: &str = "unknown";

/// `path` as a static string if it is one of the API's methods.
fn api_method(path: &str) -> Option<&'static str> {
    API_METHODS.iter().copied().find(|&method| method == path)
}

/// The name of a gRPC status code, as the label says it (`Ok`, `InvalidArgument`, ...):
/// static, so that counting a request allocates no label text for it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Buckets from 100 µs doubling up to about 100 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 21)
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the prefix `kv`.
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("kv"),
            role: Family::default(),
            term: Gauge::default(),
            leader_changes: Counter::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            proposals: Family::default(),
            proposal_seconds: Histogram::new(seconds_buckets()),
            wal_sync_seconds: Histogram::new(seconds_buckets()),
            wal_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            loop_turn_seconds: Histogram::new(seconds_buckets()),
            slow_steps: Family::default(),
            replication_lag: Family::default(),
            messages_dropped: Family::default(),
            snapshots: Counter::default(),
            snapshot_seconds: Histogram::new(seconds_buckets()),
            read_index_seconds: Histogram::new(seconds_buckets()),
            requests: Family::default(),
            client_connections: Gauge::default(),
            transport: Family::default(),
            transport_source: OnceLock::new(),
            transport_counted: Mutex::new(raft_net::Stats::default()),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("raft_role", "1 for this node's Raft role", self.role.clone());
        r.register("raft_term", "The current term", self.term.clone());
        r.register(
            "raft_leader_changes",
            "Changes of the known leader",
            self.leader_changes.clone(),
        );
        r.register("raft_commit_index", "The commit index", self.commit_index.clone());
        r.register("raft_applied_index", "The applied index", self.applied_index.clone());
        r.register("proposals", "Client writes by outcome", self.proposals.clone());
        r.register(
            "proposal_duration_seconds",
            "From a client write's arrival to its answer",
            self.proposal_seconds.clone(),
        );
        r.register(
            "wal_sync_duration_seconds",
            "From handing one log batch's fdatasync to the sync thread to the loop seeing it done",
            self.wal_sync_seconds.clone(),
        );
        r.register(
            "wal_batch_entries",
            "Entries per log batch (one fdatasync each)",
            self.wal_batch_entries.clone(),
        );
        r.register(
            "raft_loop_turn_duration_seconds",
            "One turn of the Raft loop: taking inputs, handling Readies, applying",
            self.loop_turn_seconds.clone(),
        );
        r.register(
            "slow_steps",
            "Log syncs and loop turns over 100 ms, and ticks come to 100 ms late (each logged)",
            self.slow_steps.clone(),
        );
        r.register(
            "raft_replication_lag_entries",
            "On the leader: entries each member's log lags behind",
            self.replication_lag.clone(),
        );
        r.register(
            "peer_messages_dropped",
            "Messages to a peer the transport refused (queue full or no connection)",
            self.messages_dropped.clone(),
        );
        r.register("snapshots", "Snapshots taken", self.snapshots.clone());
        r.register(
            "snapshot_duration_seconds",
            "Writing a snapshot",
            self.snapshot_seconds.clone(),
        );
        r.register(
            "read_index_duration_seconds",
            "A linearizable read's wait for ReadIndex and for applying up to it",
            self.read_index_seconds.clone(),
        );
        r.register("grpc_requests", "gRPC requests by method and code", self.requests.clone());
        r.register(
            "peer_transport_events",
            "The peer transport's counters: messages, writes, connections, dials",
            self.transport.clone(),
        );
        r.register(
            "grpc_client_connections",
            "Client connections open now",
            self.client_connections.clone(),
        );
    }

    /// Counts `transport`'s counters from now on (at each scrape).
    pub fn watch_transport(&self, transport: Arc<raft_net::Transport>) {
        let _ = self.transport_source.set(transport);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        if let Some(transport) = self.transport_source.get() {
            let now = transport.stats();
            let mut counted = self.transport_counted.lock().unwrap_or_else(|p| p.into_inner());
            self.count_transport(&counted, &now);
            *counted = now;
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a gRPC request for `path` answered with `code`. One no service serves
    /// (UNIMPLEMENTED) counts as method `unknown`, so that clients cannot grow the label set.
    pub fn request(&self, path: &str, code: tonic::Code) {
        let method = match code {
            tonic::Code::Unimplemented => Cow::Borrowed(UNKNOWN_METHOD),
            _ => api_method(path).map_or_else(|| Cow::Owned(path.to_owned()), Cow::Borrowed),
        };
        let labels = RequestLabels { method, code: code_name(code) };
        self.requests.get_or_create(&labels).inc();
    }

    /// Adds to the transport counters what happened between `before` and `now`.
    fn count_transport(&self, before: &raft_net::Stats, now: &raft_net::Stats) {
        let events = [
            ("messages_sent", before.messages_sent, now.messages_sent),
            ("messages_received", before.messages_received, now.messages_received),
            ("messages_dropped", before.messages_dropped, now.messages_dropped),
            ("writes", before.writes, now.writes),
            ("connections_accepted", before.connections_accepted, now.connections_accepted),
            ("connections_refused", before.connections_refused, now.connections_refused),
            (
                "connections_closed_for_bad_input",
                before.connections_closed_for_bad_input,
                now.connections_closed_for_bad_input,
            ),
            ("dials_failed", before.dials_failed, now.dials_failed),
        ];
        for (event, before, now) in events {
            let label = EventLabel { event };
            self.transport.get_or_create(&label).inc_by(now.saturating_sub(before));
        }
    }

    /// Sets the role gauges: 1 for `role`, 0 for every other.
    pub fn set_role(&self, role: Role) {
        for other in [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader] {
            let label = RoleLabel { role: role_name(other) };
            self.role.get_or_create(&label).set(i64::from(other == role));
        }
    }
}

/// A gauge's value from a u64 index or count (saturating: an index never nears 2^63).
pub fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Observes `took` in `histogram`, in seconds.
pub fn observe(histogram: &Histogram, took: Duration) {
    histogram.observe(took.as_secs_f64());
}

/// Serves `metrics` at `http://address/metrics` until `stop` completes.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(CONTENT_TYPE, content_type)], metrics.encode())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

/// Binds the metrics listener, naming the flag if it cannot.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("--listen-metrics-address {address}: {e}"))
}

/// A call's answer on its way, counted by its method and the status code it carries when it
/// arrives (`kv_grpc_requests_total`). A named future rather than an `async` block, so that
/// counting adds no allocation to the call's own.
///
/// The code is read from the response's headers, where a failed call carries it
/// (`grpc-status`, "trailers-only"); a response without it is counted `Ok` (its status
/// follows in the trailers: a stream that fails midway is counted `Ok`). A path no service
/// serves is counted as method `unknown`, so that clients cannot grow the label set.
pub struct CountedAnswer<F> {
    answer: F,
    uri: http::Uri,
    metrics: Arc<Metrics>,
}

impl<F> CountedAnswer<F> {
    /// Counts `answer`, the answer to a request for `uri`, into `metrics` when it arrives.
    pub fn new(answer: F, uri: http::Uri, metrics: Arc<Metrics>) -> CountedAnswer<F> {
        CountedAnswer { answer, uri, metrics }
    }
}

impl<F, RB, E> std::future::Future for CountedAnswer<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let answer = std::task::ready!(std::pin::Pin::new(&mut this.answer).poll(context));
        if let Ok(response) = &answer {
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            this.metrics.request(this.uri.path(), code);
        }
        std::task::Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static names are the codes' own names, as the labels said before they were static.
    #[test]
    fn every_status_code_is_labelled_by_its_name() {
        for number in 0..=16 {
            let code = tonic::Code::from(number);
            assert_eq!(code_name(code), format!("{code:?}"), "code {number}");
        }
    }

    /// Every method of the API's services, as compiled from the `.proto` files, has its
    /// static label, and the list names nothing else.
    #[test]
    fn the_static_method_labels_are_exactly_the_apis_methods() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(kv_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        let mut compiled = Vec::new();
        for file in set.file.iter().filter(|file| file.package() == "kv.v1") {
            for service in &file.service {
                for method in &service.method {
                    compiled.push(format!("/kv.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        let mut listed: Vec<String> = API_METHODS.iter().map(|m| m.to_string()).collect();
        compiled.sort();
        listed.sort();
        assert_eq!(listed, compiled);
        assert_eq!(api_method("/kv.v1.KV/Set"), Some("/kv.v1.KV/Set"));
        assert_eq!(api_method("/grpc.health.v1.Health/Check"), None);
    }

    /// A call is counted under its full path; one no service serves under `unknown`.
    #[test]
    fn requests_are_counted_by_path_and_unserved_ones_as_unknown() {
        let metrics = Metrics::new();
        metrics.request("/kv.v1.KV/Set", tonic::Code::Ok);
        metrics.request("/grpc.health.v1.Health/Check", tonic::Code::Ok);
        metrics.request("/no.such.Service/Call", tonic::Code::Unimplemented);
        let text = metrics.encode();
        for line in [
            r#"kv_grpc_requests_total{method="/kv.v1.KV/Set",code="Ok"} 1"#,
            r#"kv_grpc_requests_total{method="/grpc.health.v1.Health/Check",code="Ok"} 1"#,
            r#"kv_grpc_requests_total{method="unknown",code="Unimplemented"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("no.such.Service"), "{text}");
    }
}
