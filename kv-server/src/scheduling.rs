//! How the kernel schedules a node's threads (`--scheduling`).
//!
//! With `batch`, the thread that starts the server asks Linux for `SCHED_BATCH` before the
//! runtime exists, so every thread the node starts afterwards (the runtime's, `wal-sync`,
//! the snapshot writers) inherits it. A `SCHED_BATCH` thread that wakes does not preempt
//! the thread running on its core: it waits until that one blocks or its time slice ends.
//! Its nice value, and so its share of the CPU, stays what it was.
//!
//! Why a node would want that: when several nodes share a machine's cores (`kvctl dev`
//! runs three on two), every wake-up (a frame from a peer, the end of a sync) otherwise
//! stops whichever node is running mid-turn. Each such switch costs more than the work it
//! lets in, and the stopped node finishes its turn later. Under batch scheduling the running
//! node finishes its turn, and the ones woken meanwhile find more work waiting when they
//! run. docs/performance.md gives the measurements.

use clap::ValueEnum;

/// The scheduling policy of a node's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scheduling {
    /// The kernel's default policy (`SCHED_OTHER`): a thread that wakes may preempt the
    /// one running.
    Normal,
    /// `SCHED_BATCH` (Linux only): a thread that wakes waits for the running one to block
    /// or use up its slice.
    Batch,
}

/// Why the policy could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SchedulingError {
    /// The kernel refused.
    #[error("--scheduling batch: the kernel refused SCHED_BATCH: {0}")]
    Refused(std::io::Error),
    /// Not Linux.
    #[error("--scheduling batch is only available on Linux")]
    Unsupported,
}

/// Gives the calling thread `scheduling`; threads it starts afterwards inherit it.
/// `Normal` leaves the thread as it is.
pub fn apply(scheduling: Scheduling) -> Result<(), SchedulingError> {
    match scheduling {
        Scheduling::Normal => Ok(()),
        Scheduling::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> Result<(), SchedulingError> {
    // SCHED_BATCH takes a static priority of 0; the nice value is left alone.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads `param`, a valid `sched_param` that outlives the
    // call; pid 0 names the calling thread. It touches no memory of ours.
    #[allow(unsafe_code)]
    let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(SchedulingError::Refused(std::io::Error::last_os_error()))
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> Result<(), SchedulingError> {
    Err(SchedulingError::Unsupported)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{apply, Scheduling};

    /// The policy of the calling thread, from field 41 of `/proc/thread-self/stat`
    /// (0 is SCHED_OTHER, 3 SCHED_BATCH).
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
        after_name.split(' ').nth(41 - 3).expect("field 41").parse().expect("a number")
    }

    #[test]
    fn batch_scheduling_is_inherited_by_the_threads_started_afterwards() {
        // A thread of its own, so the test's other threads keep their policy.
        let (own, inherited) = std::thread::spawn(|| {
            apply(Scheduling::Batch).expect("SCHED_BATCH");
            let inherited = std::thread::spawn(policy_of_this_thread).join().expect("thread");
            (policy_of_this_thread(), inherited)
        })
        .join()
        .expect("thread");
        assert_eq!((own, inherited), (3, 3), "SCHED_BATCH is 3");
    }

    #[test]
    fn normal_scheduling_leaves_the_thread_as_it_was() {
        let (before, after) = std::thread::spawn(|| {
            let before = policy_of_this_thread();
            apply(Scheduling::Normal).expect("nothing to set");
            (before, policy_of_this_thread())
        })
        .join()
        .expect("thread");
        assert_eq!(after, before);
    }
}
