//! The standard gRPC health service (`grpc.health.v1.Health`, tonic-health), for load
//! balancers and orchestrators (docs/operations.md#health).
//!
//! A node reports SERVING while it knows a leader and is caught up. Caught up means: it has
//! applied everything the leader had committed when the node asked, which is exactly what a
//! linearizable read waits for (ReadIndex: the leader's commit index, confirmed by a quorum,
//! then applied here). It is found out at start, again every second, and again whenever the
//! node has been without a leader. A node that is still replaying or fetching a snapshot, that
//! knows no leader (cut off, or an election is on), or whose ReadIndex cannot complete (a
//! learner cut off) reports NOT_SERVING, so traffic goes elsewhere. The same status is reported for the whole server (the empty
//! service name) and for each API service.

use crate::node::NodeHandle;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service names whose status is reported: the whole server, then each API service.
pub const SERVICES: [&str; 3] = ["", "kv.v1.KV", "kv.v1.Cluster"];

/// How often the node's state is looked at.
const POLL: Duration = Duration::from_millis(100);

/// How often a node that is caught up confirms it again with a ReadIndex.
const RECONFIRM: Duration = Duration::from_secs(1);

/// Reports NOT_SERVING (tonic-health starts the whole server as SERVING), then keeps
/// `reporter` up to date with `node`'s health in a task, until the task is aborted.
pub async fn start(node: NodeHandle, reporter: HealthReporter) -> JoinHandle<()> {
    report(&reporter, ServingStatus::NotServing).await;
    tokio::spawn(watch(node, reporter))
}

async fn watch(node: NodeHandle, reporter: HealthReporter) {
    let mut caught_up = false;
    let mut confirmed_at: Option<Instant> = None;
    let mut reported = Some(false);
    loop {
        let leader_known = node.status().await.is_some_and(|status| status.leader.is_some());
        if !leader_known {
            // Back with a leader, it may be far behind: it must catch up again.
            caught_up = false;
        } else if !caught_up || confirmed_at.is_none_or(|at| at.elapsed() >= RECONFIRM) {
            // Confirmed again now and then: a learner cut off keeps its leader (it never
            // campaigns), and only a ReadIndex that cannot complete shows it.
            caught_up = node.read(true).await.is_ok();
            confirmed_at = Some(Instant::now());
        }
        let serving = caught_up && leader_known;
        if reported != Some(serving) {
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            report(&reporter, status).await;
            tracing::info!(caught_up, leader_known, "health: {status:?}");
            reported = Some(serving);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reports `status` for every service of [`SERVICES`].
async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}
