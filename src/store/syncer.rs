//! The syncer thread: makes written ranges durable (msync) off the shard's executor thread and publishes the
//! durable LSN. It also drops synced pages from RSS so queued messages live in the page cache / on disk, not in
//! the broker's memory.
//!
//! Requests arrive in log order over a bounded channel; the writer coalesces ranges locally when the channel is
//! full, so it never blocks and nothing is lost. A sync error is sticky: the durable LSN stops and the store
//! refuses writes (retrying fsync after EIO can silently lose data on Linux).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use memmap2::MmapRaw;

use super::segment::release_pages;
use super::FsyncPolicy;

/// Pages are released once this much synced data accumulated in the head segment.
const RELEASE_CHUNK: usize = 1 << 20;

pub(crate) struct SyncRange {
    pub seg_id: u32,
    pub map: Arc<MmapRaw>,
    pub start: usize,
    pub end: usize,
    /// The LSN that is durable once this range (and all before it) is synced; `None` for a partial group.
    pub lsn: Option<u64>,
    /// The segment is full: release all its pages after syncing.
    pub sealed: bool,
    /// Directory to fsync first (a newly created segment's directory entry must be durable too).
    pub dir_sync: Option<Arc<std::fs::File>>,
}

pub(crate) enum SyncMsg {
    Range(SyncRange),
    /// Sync everything received so far now (used by `Store::sync` and shutdown), then ack.
    Flush(crossbeam_channel::Sender<()>),
    Shutdown,
}

#[derive(Default)]
pub(crate) struct SyncShared {
    pub durable: AtomicU64,
    pub failed: AtomicBool,
    pub error: Mutex<Option<String>>,
    pub syncs: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
    /// Called after the durable LSN advanced (the broker rings its shard's doorbell).
    pub notify: Mutex<Option<DurableNotify>>,
    /// Told how long each sync took (the broker's metrics).
    pub observer: Mutex<Option<SyncObserver>>,
}

/// Receives each sync's duration; called from the syncer thread.
pub type SyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Wakes whoever waits on the durable LSN; called from the syncer thread.
pub type DurableNotify = Arc<dyn Fn() + Send + Sync>;

impl SyncShared {
    pub fn publish(&self, lsn: u64) {
        if lsn > self.durable.load(Ordering::Acquire) {
            self.durable.store(lsn, Ordering::Release);
            {
                let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.cond.notify_all();
            }
            let notify = self
                .notify
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(f) = notify {
                f();
            }
        }
    }

    pub fn fail(&self, msg: String) {
        tracing::error!(error = %msg, "store sync failed; refusing further writes");
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
        self.failed.store(true, Ordering::Release);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    /// Waits until `lsn` is durable, the syncer failed, or `timeout` passed. Returns whether it is durable.
    pub fn wait(&self, lsn: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.durable.load(Ordering::Acquire) >= lsn {
                return true;
            }
            if self.failed.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Under `Interval`, `sync_bytes` of pending data also make a sync due (group commit under load: a burst does not
/// wait out the interval, which would cap acknowledged throughput at window / interval).
pub(crate) fn run(
    policy: FsyncPolicy,
    sync_bytes: usize,
    rx: Receiver<SyncMsg>,
    shared: Arc<SyncShared>,
) {
    let mut pending: Vec<SyncRange> = Vec::new();
    // Head segment id and how far its pages were released.
    let mut released: (u32, usize) = (u32::MAX, 0);
    let mut last_sync = Instant::now();
    loop {
        let msg = match policy {
            FsyncPolicy::Interval(d) if !pending.is_empty() => {
                let due = last_sync + d;
                let now = Instant::now();
                if now >= due || pending_bytes(&pending) >= sync_bytes {
                    None
                } else {
                    match rx.recv_timeout(due - now) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => Some(SyncMsg::Shutdown),
                    }
                }
            }
            _ => Some(rx.recv().unwrap_or(SyncMsg::Shutdown)),
        };
        let mut flush_ack = None;
        let mut shutdown = false;
        match msg {
            Some(SyncMsg::Range(r)) => pending.push(r),
            Some(SyncMsg::Flush(ack)) => flush_ack = Some(ack),
            Some(SyncMsg::Shutdown) => shutdown = true,
            None => {}
        }
        // Drain what is already queued (group commit of the syncer itself).
        while flush_ack.is_none() && !shutdown {
            match rx.try_recv() {
                Ok(SyncMsg::Range(r)) => pending.push(r),
                Ok(SyncMsg::Flush(ack)) => flush_ack = Some(ack),
                Ok(SyncMsg::Shutdown) => shutdown = true,
                Err(_) => break,
            }
        }
        let due = match policy {
            FsyncPolicy::Always | FsyncPolicy::Never => true,
            FsyncPolicy::Interval(d) => {
                last_sync.elapsed() >= d || pending_bytes(&pending) >= sync_bytes
            }
        };
        if (due || flush_ack.is_some() || shutdown) && !pending.is_empty() {
            let started = Instant::now();
            sync_pending(policy, &mut pending, &shared, &mut released);
            last_sync = Instant::now();
            if policy != FsyncPolicy::Never {
                let observer = shared
                    .observer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(f) = observer {
                    f(last_sync - started);
                }
            }
        }
        if let Some(ack) = flush_ack {
            let _ = ack.send(());
        }
        if shutdown {
            return;
        }
    }
}

fn pending_bytes(pending: &[SyncRange]) -> usize {
    pending.iter().map(|r| r.end.saturating_sub(r.start)).sum()
}

fn sync_pending(
    policy: FsyncPolicy,
    pending: &mut Vec<SyncRange>,
    shared: &SyncShared,
    released: &mut (u32, usize),
) {
    let failed = shared.failed.load(Ordering::Acquire);
    let mut durable = None;
    // Merge adjacent ranges of one segment into a single msync.
    let mut i = 0;
    while i < pending.len() {
        let mut j = i;
        while j + 1 < pending.len() && pending[j + 1].seg_id == pending[i].seg_id {
            j += 1;
        }
        let (start, end) = (
            pending[i..=j].iter().map(|r| r.start).min().unwrap_or(0),
            pending[i..=j].iter().map(|r| r.end).max().unwrap_or(0),
        );
        let r = &pending[j];
        if policy != FsyncPolicy::Never && !failed {
            for d in pending[i..=j].iter().filter_map(|r| r.dir_sync.as_ref()) {
                if let Err(e) = d.sync_all() {
                    shared.fail(format!("fsync of data directory: {e}"));
                    pending.clear();
                    return;
                }
            }
            if end > start {
                if let Err(e) = r.map.flush_range(start, end - start) {
                    shared.fail(format!("msync of segment {}: {e}", r.seg_id));
                    pending.clear();
                    return;
                }
            }
            shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = pending[i..=j].iter().filter_map(|r| r.lsn).max() {
            durable = Some(l);
        }
        let sealed = pending[i..=j].iter().any(|r| r.sealed);
        if sealed {
            release_pages(&r.map, 0, r.map.len());
        } else {
            if released.0 != r.seg_id {
                *released = (r.seg_id, 0);
            }
            if end >= released.1 + RELEASE_CHUNK {
                release_pages(&r.map, released.1, end);
                released.1 = end - end % super::segment::PAGE;
            }
        }
        i = j + 1;
    }
    pending.clear();
    if let Some(l) = durable {
        if policy != FsyncPolicy::Never && !failed {
            shared.publish(l);
        }
    }
}
