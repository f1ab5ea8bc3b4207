//! The run's clock for send stamps. CLOCK_MONOTONIC is system-wide on Linux, so it is shared by threads and by
//! separate `pub`/`sub` processes on one machine; across machines use `--clock realtime` (CLOCK_REALTIME) and
//! keep the hosts synchronised (PTP/chrony): the latency is then only as good as the clock offset.

use std::sync::atomic::{AtomicBool, Ordering};

static REALTIME: AtomicBool = AtomicBool::new(false);

pub fn use_realtime(on: bool) {
    REALTIME.store(on, Ordering::Relaxed);
}

pub fn uses_realtime() -> bool {
    REALTIME.load(Ordering::Relaxed)
}

pub fn now_ns() -> u64 {
    let clock = if REALTIME.load(Ordering::Relaxed) {
        libc::CLOCK_REALTIME
    } else {
        libc::CLOCK_MONOTONIC
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The tokio instant at which `now_ns()` will read `deadline_ns`.
pub fn instant_at(deadline_ns: u64) -> tokio::time::Instant {
    let now = now_ns();
    tokio::time::Instant::now() + std::time::Duration::from_nanos(deadline_ns.saturating_sub(now))
}
