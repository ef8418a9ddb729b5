//! Steps of the node that took too long: each is logged as a warning and counted in
//! `kv_slow_steps_total`, so that an operator sees why the node answered late and where
//! (etcd warns in the same way of a slow fdatasync, an apply that took too long and a
//! heartbeat sent late).
//!
//! Three steps are watched, each against [`SLOW_STEP`]:
//! - a **sync** of one log batch (on the `wal-sync` thread): the disk is slow, and every
//!   write of the batch, and every write behind it, waits for it;
//! - a **turn** of the loop (taking inputs, handling Readies, applying): nothing else of the
//!   loop runs meanwhile, and with `--threads 1` nothing else of the node;
//! - a **late tick**: the loop came to a tick this long after it was due. After a slow turn
//!   this is that turn again; alone, the node's thread did not get a core (or the whole
//!   machine stopped), and heartbeats left late too.

use crate::metrics::{Metrics, SlowStepLabel};
use std::time::Duration;

/// A step that takes longer than this is logged and counted. A sync or a turn takes well
/// under a millisecond when all is well; 100 ms is where a client notices, and the default
/// heartbeat interval.
pub(super) const SLOW_STEP: Duration = Duration::from_millis(100);

/// A step the node watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The sync of one log batch of this many entries.
    Sync { entries: usize },
    /// One turn of the loop.
    Turn,
    /// The loop coming to a due tick.
    LateTick,
}

impl Step {
    /// The value of the metric's `step` label.
    fn label(self) -> &'static str {
        match self {
            Step::Sync { .. } => "wal_sync",
            Step::Turn => "loop_turn",
            Step::LateTick => "late_tick",
        }
    }
}

/// Logs and counts `step` if it `took` longer than [`SLOW_STEP`].
pub(super) fn watch(metrics: &Metrics, step: Step, took: Duration) {
    if took <= SLOW_STEP {
        return;
    }
    metrics.slow_steps.get_or_create(&SlowStepLabel { step: step.label() }).inc();
    match step {
        Step::Sync { entries } => tracing::warn!(
            "syncing a log batch of {entries} entries took {took:.0?}: the disk is slow, and \
             the batch's writes and every one behind them waited for it"
        ),
        Step::Turn => tracing::warn!(
            "a turn of the Raft loop took {took:.0?}: the loop took no input meanwhile"
        ),
        Step::LateTick => tracing::warn!(
            "the Raft loop came to its tick {took:.0?} late: a long turn, or the node's \
             thread waited for a core; heartbeats left late too"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(metrics: &Metrics, step: Step) -> u64 {
        metrics.slow_steps.get_or_create(&SlowStepLabel { step: step.label() }).get()
    }

    /// Only a step over the threshold is counted, under its own label.
    #[test]
    fn a_step_is_counted_under_its_label_only_when_over_the_threshold() {
        let metrics = Metrics::new();
        let sync = Step::Sync { entries: 3 };
        watch(&metrics, sync, SLOW_STEP);
        assert_eq!(counted(&metrics, sync), 0, "a step of exactly the threshold counted");
        watch(&metrics, sync, SLOW_STEP + Duration::from_millis(1));
        watch(&metrics, Step::LateTick, Duration::from_secs(2));
        watch(&metrics, Step::Turn, Duration::from_micros(300));
        assert_eq!(counted(&metrics, sync), 1);
        assert_eq!(counted(&metrics, Step::LateTick), 1);
        assert_eq!(counted(&metrics, Step::Turn), 0);
        let text = metrics.encode();
        assert!(text.contains("kv_slow_steps_total{step=\"wal_sync\"} 1"), "{text}");
    }
}
