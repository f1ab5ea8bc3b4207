//! Submitting and sleeping: `flush` and `wait` (the one place a shard sleeps), the keep-alive timer and the
//! doorbell as ring completions, and re-arming receives the empty buffer ring had ended.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::opcode;
use io_uring::types::{Fd, TimeoutFlags, Timespec};

use super::{ud, Completion, RecvState, UringBackend, K_DOORBELL, K_QUIET, K_TIMER};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl UringBackend {
    /// Wake `wait` when `efd` (an eventfd) is written; the backend's read drains it.
    pub fn set_doorbell(&mut self, efd: RawFd) -> io::Result<()> {
        self.doorbell = Some((efd, Box::new(0)));
        self.arm_doorbell()
    }

    pub(super) fn arm_doorbell(&mut self) -> io::Result<()> {
        let Some((efd, buf)) = self.doorbell.as_mut() else {
            return Ok(());
        };
        let e = opcode::Read::new(Fd(*efd), &mut **buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(ud(K_DOORBELL, 0, 0));
        self.push(e)
    }

    /// Submit everything queued (sends, re-arms) without waiting: one io_uring_enter.
    pub fn flush(&mut self) -> io::Result<()> {
        self.rearm_starved()?;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter(0)
    }

    fn rearm_starved(&mut self) -> io::Result<()> {
        if self.starved.is_empty() || self.bufs.available() == 0 {
            return Ok(());
        }
        let starved = std::mem::take(&mut self.starved);
        for idx in starved {
            let live = matches!(&self.conns[idx as usize], Some(c) if c.recv == RecvState::Starved && !c.cancelling && !c.recv_hold);
            if live {
                self.stats.recv_rearms += 1;
                self.arm_recv(idx)?;
            }
        }
        Ok(())
    }

    /// Submit what is queued and wait for completions: up to `timeout` (None: until something completes; zero:
    /// do not sleep). The one place a shard sleeps. Completions are appended to `out`; it may come back empty
    /// (a signal, or only internal completions).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.rearm_starved()?;
        let pending = !self.ready.is_empty() || !self.ring.completion().is_empty();
        let want = match timeout {
            _ if pending => 0,
            Some(d) if d.is_zero() => 0,
            Some(d) => {
                self.arm_timer(d)?;
                1
            }
            None => 1,
        };
        let before = out.len();
        loop {
            if want == 1 || !self.ring.submission().is_empty() || self.sqpoll {
                self.enter(want)?;
            }
            self.harvest(out)?;
            // Only bookkeeping completed (a timer update, a cancel step): sleep on, unless a signal woke us.
            if want == 0 || out.len() > before || std::mem::take(&mut self.interrupted) {
                return Ok(());
            }
        }
    }

    /// Make sure a timer fires no later than `d` from now. An earlier armed timer is kept (the caller just wakes
    /// early); a later one is moved forward, so a keep-alive second costs one timeout SQE, not one per wait.
    pub(super) fn arm_timer(&mut self, d: Duration) -> io::Result<()> {
        let deadline = monotonic_ns().saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
        if matches!(self.timer, Some(t) if t <= deadline) {
            return Ok(());
        }
        *self.timer_ts = Timespec::new()
            .sec(deadline / 1_000_000_000)
            .nsec((deadline % 1_000_000_000) as u32);
        let ts: *const Timespec = &*self.timer_ts;
        let e = if self.timer.is_some() {
            opcode::TimeoutUpdate::new(ud(K_TIMER, 0, 0), ts)
                .flags(TimeoutFlags::ABS)
                .build()
                .user_data(ud(K_QUIET, 0, 0))
        } else {
            opcode::Timeout::new(ts)
                .flags(TimeoutFlags::ABS)
                .build()
                .user_data(ud(K_TIMER, 0, 0))
        };
        self.timer = Some(deadline);
        self.push(e)?;
        // The kernel copies the timespec when it takes the SQE: submit now, while `timer_ts` holds this value.
        self.enter(0)
    }

    /// Remove the armed timer, so no stale Timeout reaches a later `wait`.
    pub(super) fn disarm_timer(&mut self) -> io::Result<()> {
        if self.timer.take().is_none() {
            return Ok(());
        }
        let e = opcode::TimeoutRemove::new(ud(K_TIMER, 0, 0))
            .build()
            .user_data(ud(K_QUIET, 0, 0));
        self.push(e)
    }
}
