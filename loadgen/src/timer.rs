//! Microsecond-precise sleeps for the open-loop sender. tokio's timer wheel rounds every deadline up to the
//! next millisecond, which alone would add ~0.5-1 ms to every latency measured from the intended send time and
//! hide a fast broker's real figures. Each worker thread has one timerfd (on the run's clock) armed for the
//! earliest deadline of its publishers; a driver task wakes the publishers whose deadlines passed.

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;

use crate::clock::{now_ns, uses_realtime};

/// Bound on pending entries per thread: a publisher adds at most one per poll and entries expire within one
/// send interval; past the bound the oldest deadlines simply fire early (a spurious wake, never a lost one).
const MAX_PENDING: usize = 1 << 20;

static SLACK_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(50_000);

/// Deadlines closer than this to a wake-up are served by it: one wake sends for several publishers. A message
/// sent early is stamped with its actual send time (see `client`), so slack never understates latency.
pub fn set_slack_ns(ns: u64) {
    SLACK_NS.store(ns, std::sync::atomic::Ordering::Relaxed);
}

pub fn slack_ns() -> u64 {
    SLACK_NS.load(std::sync::atomic::Ordering::Relaxed)
}

struct Entry {
    at: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Min-heap on the deadline.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at)
    }
}

struct Wheel {
    fd: AsyncFd<OwnedFd>,
    heap: RefCell<BinaryHeap<Entry>>,
    /// Deadline the timerfd is armed for (0 = disarmed).
    armed: Cell<u64>,
}

thread_local! {
    static WHEEL: RefCell<Option<Rc<Wheel>>> = const { RefCell::new(None) };
}

fn clock_id() -> libc::clockid_t {
    if uses_realtime() {
        libc::CLOCK_REALTIME
    } else {
        libc::CLOCK_MONOTONIC
    }
}

impl Wheel {
    fn new() -> Option<Wheel> {
        // SAFETY: plain syscall; the fd is owned by OwnedFd right away.
        let raw =
            unsafe { libc::timerfd_create(clock_id(), libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return None;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open while it is registered.
        let fd = unsafe { AsyncFd::register(fd) }.ok()?;
        Some(Wheel {
            fd,
            heap: RefCell::new(BinaryHeap::new()),
            armed: Cell::new(0),
        })
    }

    fn arm(&self, at: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as _,
                tv_nsec: (at % 1_000_000_000) as _,
            },
        };
        // SAFETY: valid fd and itimerspec; absolute time on the fd's clock.
        unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        self.armed.set(at);
    }

    fn register(&self, at: u64, waker: &Waker) {
        let mut heap = self.heap.borrow_mut();
        if heap.len() >= MAX_PENDING {
            if let Some(e) = heap.pop() {
                e.waker.wake();
            }
        }
        heap.push(Entry {
            at,
            waker: waker.clone(),
        });
        let armed = self.armed.get();
        if armed == 0 || at < armed {
            self.arm(at);
        }
    }

    fn fire(&self) {
        let now = now_ns();
        let mut heap = self.heap.borrow_mut();
        let horizon = now + slack_ns();
        while heap.peek().is_some_and(|e| e.at <= horizon) {
            if let Some(e) = heap.pop() {
                e.waker.wake();
            }
        }
        match heap.peek() {
            Some(e) => self.arm(e.at),
            None => self.armed.set(0),
        }
    }
}

fn wheel() -> Option<Rc<Wheel>> {
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_none() {
            *w = Wheel::new().map(Rc::new);
        }
        w.clone()
    })
}

/// Runs for the life of the worker thread's LocalSet: fires expired deadlines.
pub async fn drive() {
    let Some(wheel) = wheel() else { return };
    loop {
        let Ok(mut guard) = wheel.fd.readable().await else {
            return;
        };
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into our buffer from the timerfd; EAGAIN is fine.
        let n = unsafe { libc::read(wheel.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        if n < 0 {
            guard.clear_ready();
        }
        wheel.fire();
    }
}

/// Completes at `at_ns` (less the slack) on the run clock, to within the kernel's wakeup latency.
pub fn sleep_until_ns(at_ns: u64) -> PreciseSleep {
    PreciseSleep {
        at: at_ns,
        fallback: None,
    }
}

pub struct PreciseSleep {
    at: u64,
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for PreciseSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now_ns() + slack_ns() >= self.at {
            return Poll::Ready(());
        }
        if let Some(f) = self.fallback.as_mut() {
            return f.as_mut().poll(cx);
        }
        match wheel() {
            Some(w) => {
                w.register(self.at, cx.waker());
                Poll::Pending
            }
            None => {
                let mut f = Box::pin(tokio::time::sleep_until(crate::clock::instant_at(self.at)));
                let r = f.as_mut().poll(cx);
                self.fallback = Some(f);
                r
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_close_to_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        set_slack_ns(0);
        let lateness = local.block_on(&rt, async {
            tokio::task::spawn_local(drive());
            let mut worst = 0;
            for i in 0..50u64 {
                let at = now_ns() + 200_000 + i * 10_000;
                sleep_until_ns(at).await;
                let now = now_ns();
                assert!(now >= at, "woke early");
                worst = worst.max(now - at);
            }
            worst
        });
        // Not a timing assertion on the machine's speed: only that we are not on a millisecond wheel
        // (which would make nearly every wake ~0.5-1 ms late). Generous for a loaded machine.
        assert!(lateness < 50_000_000, "worst lateness {lateness} ns");
    }
}
