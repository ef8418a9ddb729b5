//! The standard gRPC health service (`grpc.health.v1.Health`, tonic-health), for load
//! balancers and orchestrators (docs/operations.md#health).
//!
//! A node reports SERVING once it has caught up, and from then on while it knows a leader.
//! Caught up means: it has applied everything the leader had committed when the node asked,
//! which is exactly what a linearizable read waits for (ReadIndex: the leader's commit index,
//! confirmed by a quorum, then applied here). A node that is still replaying or fetching a
//! snapshot, or that knows no leader (cut off, or an election is on), reports NOT_SERVING, so
//! traffic goes elsewhere. The same status is reported for the whole server (the empty
//! service name) and for each API service.

use crate::node::NodeHandle;
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service names whose status is reported: the whole server, then each API service.
pub const SERVICES: [&str; 3] = ["", "kv.v1.KV", "kv.v1.Cluster"];

/// How often the node's state is looked at.
const POLL: Duration = Duration::from_millis(100);

/// Reports NOT_SERVING (tonic-health starts the whole server as SERVING), then keeps
/// `reporter` up to date with `node`'s health in a task, until the task is aborted.
pub async fn start(node: NodeHandle, reporter: HealthReporter) -> JoinHandle<()> {
    for service in SERVICES {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    tokio::spawn(watch(node, reporter))
}

async fn watch(node: NodeHandle, reporter: HealthReporter) {
    let mut caught_up = false;
    let mut reported = Some(false);
    loop {
        // Once is enough: after it, the node follows the leader's log as any follower does.
        if !caught_up {
            caught_up = node.read(true).await.is_ok();
        }
        let leader_known = node.status().await.is_some_and(|status| status.leader.is_some());
        let serving = caught_up && leader_known;
        if reported != Some(serving) {
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            tracing::info!(caught_up, leader_known, "health: {status:?}");
            reported = Some(serving);
        }
        tokio::time::sleep(POLL).await;
    }
}
