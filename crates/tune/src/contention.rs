//! Was a timed repeat disturbed? The time this process's threads spent runnable but waiting
//! for a CPU, from Linux's per-thread scheduler statistics (`/proc/self/task/*/schedstat`, the
//! second field: run-queue delay in nanoseconds).
//!
//! A kernel measured on a shared machine while another process (a compile, another tuner)
//! runs beside it is slower than it will be inside the model, and on two threads of a two-core
//! machine one descheduled pool thread stalls the whole kernel. The measurement loop reads the
//! delay around each repeat and times the repeat again when its threads waited for more than
//! [`MAX_WAIT_SHARE`] of it.
//!
//! Invariant: [`run_queue_wait_ns`] is `None` where the statistics cannot be read (another OS,
//! a kernel without schedstats); callers then accept every repeat, as before.

use std::time::Duration;

/// The share of a repeat's wall time its threads may have waited for a CPU.
pub const MAX_WAIT_SHARE: f64 = 0.02;

/// Nanoseconds this process's threads have spent waiting on a run queue, summed over its
/// threads (threads that ended are not counted, so read it around a span where the thread set
/// stays the same).
pub fn run_queue_wait_ns() -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        // A thread that ended between the listing and the read is skipped.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        any = true;
    }
    any.then_some(total)
}

/// Whether a span of `wall` during which the threads waited `waited_ns` was disturbed.
pub fn disturbed(waited_ns: u64, wall: Duration) -> bool {
    waited_ns as f64 > wall.as_nanos() as f64 * MAX_WAIT_SHARE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_counter_reads_wherever_linux_keeps_scheduler_statistics() {
        if std::fs::read_to_string("/proc/self/schedstat").is_err() {
            eprintln!(
                "notice: no per-thread scheduler statistics here; the contention check is off"
            );
            return;
        }
        assert!(run_queue_wait_ns().is_some());
    }

    #[test]
    fn a_span_is_disturbed_when_its_threads_waited_more_than_the_allowed_share() {
        let ms = Duration::from_millis(10);
        assert!(!disturbed(0, ms));
        assert!(!disturbed(200_000, ms));
        assert!(disturbed(200_001, ms));
    }
}
