//! Handing written ranges to the syncer thread (bounded channel, coalesced local backlog when it is full) and
//! waiting for them to become durable.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::TrySendError;

use super::syncer::{self, SyncMsg, SyncRange};
use super::{Lsn, Store, StoreResult};

impl Store {
    pub(super) fn send_sync(&mut self, range: SyncRange) {
        if !self.sync_backlog.is_empty() {
            self.sync_backlog.push(range);
            self.drain_backlog();
            return;
        }
        match self.sync_tx.try_send(SyncMsg::Range(range)) {
            Ok(()) => {}
            Err(TrySendError::Full(SyncMsg::Range(r))) => {
                self.sync_backlog.push(r);
                self.coalesce_backlog();
            }
            Err(_) => self.shared.fail("syncer thread is gone".into()),
        }
    }

    /// Merges backlog ranges of the same segment so the backlog is bounded by the number of segments.
    fn coalesce_backlog(&mut self) {
        let mut out: Vec<SyncRange> = Vec::with_capacity(self.sync_backlog.len());
        for r in self.sync_backlog.drain(..) {
            match out.last_mut() {
                Some(last) if last.seg_id == r.seg_id => {
                    last.start = last.start.min(r.start);
                    last.end = last.end.max(r.end);
                    last.lsn = last.lsn.max(r.lsn);
                    last.sealed |= r.sealed;
                    if last.dir_sync.is_none() {
                        last.dir_sync = r.dir_sync;
                    }
                }
                _ => out.push(r),
            }
        }
        self.sync_backlog = out;
    }

    fn drain_backlog(&mut self) {
        self.coalesce_backlog();
        while !self.sync_backlog.is_empty() {
            let r = self.sync_backlog.remove(0);
            match self.sync_tx.try_send(SyncMsg::Range(r)) {
                Ok(()) => {}
                Err(TrySendError::Full(SyncMsg::Range(r))) => {
                    self.sync_backlog.insert(0, r);
                    return;
                }
                Err(_) => {
                    self.shared.fail("syncer thread is gone".into());
                    return;
                }
            }
        }
    }

    /// Highest committed LSN known durable under the fsync policy (an atomic load; poll it every tick).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// Calls `f` (from the syncer thread) each time the durable LSN advances, so an executor sleeping on
    /// held acknowledgements can be woken.
    pub fn set_durable_notify(&self, f: syncer::DurableNotify) {
        *self.shared.notify.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Called by the syncer thread with the duration of each sync (msync of the ranges, and the directory when a
    /// segment was created), for the log sync latency histogram.
    pub fn set_sync_observer(&self, f: syncer::SyncObserver) {
        *self
            .shared
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// LSN of the last commit.
    pub fn committed_lsn(&self) -> Lsn {
        self.committed
    }

    /// Blocks until everything committed so far is durable (bypassing the interval), or the syncer failed. For
    /// shutdown, tests and benchmarks; never call it on an executor thread in the hot path.
    pub fn sync(&mut self) -> StoreResult<()> {
        self.drain_backlog();
        let (tx, rx) = crossbeam_channel::bounded(1);
        while !self.sync_backlog.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            self.drain_backlog();
        }
        if self.sync_tx.send(SyncMsg::Flush(tx)).is_err() {
            self.shared.fail("syncer thread is gone".into());
        }
        let _ = rx.recv();
        self.check_failed()
    }

    /// Waits up to `timeout` for `lsn` to become durable; returns whether it did.
    pub fn wait_durable(&mut self, lsn: Lsn, timeout: Duration) -> bool {
        self.drain_backlog();
        self.shared.wait(lsn.0, timeout)
    }
}
