//! The durable log of one shard: persistent sessions, their subscriptions, queues, in-flight state, inbound
//! QoS 2 ids, and retained messages. Independent of glommio and of the broker; the broker owns one `Store` per
//! shard and drives it from the shard's executor thread.
//!
//! # Layout
//! ```text
//! DATA_DIR/LOCK                          broker-wide lock (`DirLock::lock_data_dir`), holds the broker pid
//! DATA_DIR/shard-N/LOCK                  taken by `Store::open`; a second open of the shard fails clearly
//! DATA_DIR/shard-N/00000000000000000000.seg
//! DATA_DIR/shard-N/00000000000000000001.seg ...
//! ```
//! Segments are named by a sequence number, preallocated with `fallocate` (so writes through the mapping can
//! never hit ENOSPC, which would be a SIGBUS) and mapped with `memmap2`. Each starts with a 32-byte header; frames
//! follow (`record.rs`: `[len u32][crc32c u32][type u8][body]`, 8-byte aligned, zero length = end).
//!
//! # Write path and the durability contract
//! - `append(&Record)` validates the record against the live state (unknown session, message not queued, ...
//!   are refused before anything is written), copies it into the mapping and returns its [`Lsn`]. No syscall.
//! - `commit()` ends a group (one per shard tick): it writes a commit record and hands the written range to the
//!   syncer thread. Recovery applies only complete groups, so a publish fanned out to several sessions is
//!   all-or-nothing across a crash.
//! - `durable_lsn()` is the highest committed LSN known to be on disk. **The broker must hold back PUBACK/PUBREC
//!   (and CONNACK/SUBACK/UNSUBACK of persistent state, if it wants them durable) until `durable_lsn() >= lsn`
//!   of the commit that covered the change**; it polls `durable_lsn()` each tick (an atomic load).
//! - [`FsyncPolicy`]: `Always` syncs each commit as soon as it reaches the syncer; `Interval(d)` (default 10 ms)
//!   syncs every `d`, coalescing the commits in between, or earlier once `sync_bytes` (32 KiB) are waiting, so
//!   a burst's acknowledgements are not held for the whole interval; `Never` reports every commit as durable at once
//!   and never syncs: data survives a process crash (it is in the page cache) but **not a power loss or kernel
//!   crash**. `Never` is for benchmarks; opening a store with it logs a warning.
//! - The syncer thread (std thread, bounded crossbeam channel; the writer coalesces ranges locally when the
//!   channel is full, it never blocks) msyncs ranges in log order, then publishes the LSN. After syncing it
//!   `MADV_DONTNEED`s synced pages (whole sealed segments, and the head segment in 1 MiB steps), so queued
//!   messages live in the page cache and on disk, not in the broker's RSS.
//! - A sync failure is sticky: `durable_lsn` stops and every later write returns `SyncFailed` (retrying fsync
//!   after EIO is not safe on Linux). ENOSPC/EDQUOT are `DiskFull`; the configured budget is `BudgetExceeded`;
//!   both answer `is_capacity()` and `reason_code()` = QuotaExceeded so the broker refuses new persistent QoS>0
//!   publishes instead of dropping them. `check_capacity(bytes)` lets the broker ask before writing a publish.
//!   Only records that add state (bodies, enqueues, new sessions, subscriptions, inbound QoS 2 ids, retained
//!   sets) are refused: once the head segment is half full they need the next segment preallocated, so the other
//!   half always stays free for acks, deletes and compaction copies, and a full disk can always be drained.
//!
//! # Messages
//! A `Message` record holds a body once per shard; `Enqueue { client_id, msg_id }` references it from any
//! number of sessions (and `RetainedSet` from the retained table). A session's queue is ordered by message id
//! (ids are allocated in arrival order; an out-of-order enqueue is refused, so an old body such as a retained
//! message sent on subscribe is stored again under a new id). A body must be referenced in the group that
//! writes it; at commit, bodies with no references are forgotten (garbage for the compactor). Queues in RAM hold
//! only message ids and record locations (measured: ~70 bytes of index per queued message, whatever the
//! payload size); `read_message` copies a body back out of the mapping. Pages touched by reads stay mapped until
//! `release_cached_pages()` (call it about once a second). Message ids come from `alloc_msg_id()` and are never
//! reused (segment headers carry a high-water mark).
//!
//! # Compaction
//! Every fact in the index remembers the location of the record that backs it, and live bytes are summed per
//! segment. `compact_step(budget)` works on the **oldest** sealed segment when its live ratio, or the whole
//! log's, is below `compact_live_ratio`: it copies that segment's live records to the head (bounded by
//! `budget` bytes per call, so the broker can call it between ticks) and deletes the file once the copies are
//! durable. Oldest-first is what makes deletion safe: a tombstone (delete, ack, unsubscribe, clear) in a segment
//! only ever supersedes records in older segments, which are gone by the time it is deleted itself. Disk use
//! therefore stays below about `used_live / compact_live_ratio` plus two segments.
//!
//! Because copies land at the head, recovery can meet a record before the record it depends on (a delivery
//! state before its relocated enqueue); `index.rs` replays with placeholders and resolves them at the end.
//!
//! # Recovery
//! `Store::open` replays every segment in order. A frame that fails its CRC (or a zero length inside written
//! data) is probed past: if a valid frame follows anywhere, the damage is reported in
//! `RecoveryReport::corruptions` with segment and offset and skipped; if nothing valid follows, it is a torn
//! tail: the log is truncated (zeroed) back to the end of the last complete group, and later segments holding
//! no commit are deleted. Never a panic. The rebuilt state is returned as [`Recovered`] (sessions with
//! subscriptions, ordered queues with delivery states, inbound QoS 2 ids; retained messages), from which the
//! broker rebuilds its trie and cross-shard interest summary.
//!
//! # Caveats
//! - After a process crash (kill -9) the page cache holds everything written, so only a record being copied at
//!   that instant can be torn. After a power loss, pages written after the last sync may reach disk in any order;
//!   damage followed by valid frames is then indistinguishable from bit rot and is reported as corruption (the
//!   affected groups were never acknowledged, since they were not durable).
//! - Segment creation (`fallocate`) and deletion (`unlink` + directory fsync) run on the calling thread, once per
//!   segment; everything per message is memory work.

mod append;
mod compaction;
mod config;
mod error;
mod index;
mod lock;
mod read;
mod record;
mod recovery;
mod segment;
mod sync_queue;
mod syncer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;

pub use compaction::CompactProgress;
pub use config::{FsyncPolicy, StoreConfig};
pub use error::{StoreError, StoreResult};
pub use index::{
    Delivery, MsgRef, QueuedMessage, RecoveredSession, RecoveredSubscription, RecoveredWill,
    ReplayRepairs, SessionMeta, State,
};
pub use lock::DirLock;
pub use read::StoredMessage;
pub use record::{DeliveryState, Record};
pub use recovery::{Corruption, Recovered, RecoveryReport};

use compaction::Compaction;
use index::Index;
use segment::{Header, Segment, SEGMENT_HEADER};
use syncer::{SyncMsg, SyncRange, SyncShared};

/// Frame size of a commit record (type + u64, padded).
const COMMIT_FRAME: usize = 24;
/// Bound on the syncer channel; beyond it the writer coalesces ranges itself.
const SYNC_CHANNEL: usize = 1024;

/// Log sequence number: `segment id << 32 | byte offset`, i.e. a position in the log. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    fn at(seg: u32, off: usize) -> Lsn {
        Lsn(((seg as u64) << 32) | off as u64)
    }
    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    pub segments: usize,
    /// Preallocated bytes on disk (segments x segment size).
    pub disk_bytes: u64,
    /// Bytes written in all segments.
    pub used_bytes: u64,
    /// Bytes of records backing live facts.
    pub live_bytes: u64,
    pub sessions: usize,
    pub messages: usize,
    pub appended_records: u64,
    pub commits: u64,
    pub syncs: u64,
    pub compacted_segments: u64,
    pub compaction_copied_bytes: u64,
    pub durable_lsn: Lsn,
    pub committed_lsn: Lsn,
}

pub struct Store {
    dir: PathBuf,
    shard: u32,
    cfg: StoreConfig,
    _lock: DirLock,
    dir_file: Arc<File>,
    segments: BTreeMap<u32, Segment>,
    head: u32,
    spare: Option<Segment>,
    index: Index,
    next_msg_id: u64,
    group: u64,
    group_bytes: usize,
    committed: Lsn,
    /// Offset in the head segment from which data has not been handed to the syncer.
    unsynced_from: usize,
    dir_sync_due: bool,
    sync_tx: Sender<SyncMsg>,
    /// Ranges the full channel did not take yet (coalesced per segment).
    sync_backlog: Vec<SyncRange>,
    shared: Arc<SyncShared>,
    syncer: Option<JoinHandle<()>>,
    compaction: Option<Compaction>,
    /// Segments to delete (ascending) once the given LSN is durable.
    doomed: Vec<(u32, Lsn)>,
    stats: StoreStats,
    scratch: Vec<u8>,
    /// The "cannot preallocate" warning was logged and nothing succeeded since.
    spare_warned: bool,
}

impl Store {
    /// Opens (creating if needed) the log of `shard` under `dir`, replays it and starts its syncer thread.
    pub fn open(dir: &Path, shard: u32, cfg: StoreConfig) -> StoreResult<(Store, Recovered)> {
        let mut cfg = cfg;
        if cfg.segment_size >= 64 << 10 && cfg.max_record_size > cfg.segment_size / 4 {
            // The default record limit (16 MiB) assumes the default segment size; follow a smaller segment.
            tracing::warn!(
                max_record_size = cfg.max_record_size,
                segment_size = cfg.segment_size,
                "max_record_size lowered to a quarter of the segment size"
            );
            cfg.max_record_size = cfg.segment_size / 4;
        }
        cfg.validate()?;
        let started = Instant::now();
        let shard_dir = dir.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&shard_dir)
            .map_err(|e| StoreError::io(format!("creating {}", shard_dir.display()), e))?;
        let lock = DirLock::acquire(&shard_dir.join("LOCK"))?;
        let dir_file = Arc::new(
            File::open(&shard_dir)
                .map_err(|e| StoreError::io(format!("opening {}", shard_dir.display()), e))?,
        );
        if cfg.fsync == FsyncPolicy::Never {
            tracing::warn!(
                shard,
                "store fsync policy is NEVER: acknowledged messages are lost on power loss or kernel crash \
                 (benchmarks only)"
            );
        }
        let mut ids = Vec::new();
        let entries = std::fs::read_dir(&shard_dir)
            .map_err(|e| StoreError::io(format!("listing {}", shard_dir.display()), e))?;
        for e in entries {
            let e = e.map_err(|e| StoreError::io(format!("listing {}", shard_dir.display()), e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            match segment::parse_segment_file_name(&name) {
                Some(id) => ids.push(id),
                None if name.ends_with(".seg") => {
                    tracing::warn!(file = %name, "ignoring file with a malformed segment name")
                }
                None => {}
            }
        }
        ids.sort_unstable();

        let (tx, rx) = crossbeam_channel::bounded(SYNC_CHANNEL);
        let shared = Arc::new(SyncShared::default());
        let mut store = Store {
            dir: shard_dir,
            shard,
            cfg,
            _lock: lock,
            dir_file,
            segments: BTreeMap::new(),
            head: 0,
            spare: None,
            index: Index::default(),
            next_msg_id: 1,
            group: 1,
            group_bytes: 0,
            committed: Lsn::default(),
            unsynced_from: SEGMENT_HEADER,
            dir_sync_due: false,
            sync_tx: tx,
            sync_backlog: Vec::new(),
            shared: shared.clone(),
            syncer: None,
            compaction: None,
            doomed: Vec::new(),
            stats: StoreStats::default(),
            scratch: Vec::new(),
            spare_warned: false,
        };
        let mut report = RecoveryReport::default();
        let fresh = ids.is_empty();
        if fresh {
            let seg = Segment::create(&store.dir, store.header(0))?;
            store
                .dir_file
                .sync_all()
                .map_err(|e| StoreError::io("syncing data directory", e))?;
            store.segments.insert(0, seg);
        } else {
            store.recover(&ids, &mut report)?;
        }
        store.committed = Lsn::at(store.head, store.head_seg().used);
        store.unsynced_from = if fresh { 0 } else { store.head_seg().used };
        shared.durable.store(store.committed.0, Ordering::Release);
        let policy = store.cfg.fsync;
        let sync_bytes = store.cfg.sync_bytes;
        store.syncer = Some(
            std::thread::Builder::new()
                .name(format!("coremq-sync-{shard}"))
                .spawn(move || syncer::run(policy, sync_bytes, rx, shared))
                .map_err(|e| StoreError::io("spawning the syncer thread", e))?,
        );
        report.elapsed = started.elapsed();
        report.repairs = store.index.repairs.clone();
        if report.corruption_count > 0 || report.truncated_at.is_some() {
            tracing::warn!(shard, ?report.truncated_at, corruptions = report.corruption_count,
                uncommitted = report.uncommitted_records, "store recovered a damaged log");
        }
        let state = store.index.snapshot();
        Ok((store, Recovered { state, report }))
    }

    fn header(&self, id: u32) -> Header {
        Header {
            id,
            shard: self.shard,
            size: self.cfg.segment_size,
            next_msg_id: self.next_msg_id,
        }
    }

    fn head_seg(&self) -> &Segment {
        &self.segments[&self.head]
    }

    /// Largest plausible frame length when reading: any length that fits a segment (the CRC decides), so a
    /// smaller `max_record_size` after a restart never turns old records into "corruption".
    fn max_body(&self) -> usize {
        self.cfg.segment_size.max(1 << 30) as usize
    }

    /// The position everything appended so far ends at, as far as durability is concerned.
    fn current_lsn(&self) -> Lsn {
        if self.group_bytes == 0 {
            self.committed
        } else {
            Lsn::at(self.head, self.head_seg().used)
        }
    }

    fn check_failed(&self) -> StoreResult<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            let msg = self
                .shared
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(StoreError::SyncFailed(msg));
        }
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let mut s = self.stats.clone();
        s.segments = self.segments.len() + self.spare.is_some() as usize;
        s.disk_bytes = s.segments as u64 * self.cfg.segment_size as u64;
        s.used_bytes = self.segments.values().map(|g| g.used as u64).sum();
        s.live_bytes = self.index.total_live_bytes();
        s.sessions = self.index.session_count();
        s.messages = self.index.message_count();
        s.syncs = self.shared.syncs.load(Ordering::Relaxed);
        s.durable_lsn = self.durable_lsn();
        s.committed_lsn = self.committed;
        s
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A clean shutdown makes everything committed durable (except under `Never`, which still flushes
        // nothing: the page cache writes it back).
        // A store whose open failed before its syncer started (a data directory without room for the first
        // segment, say) has nothing to sync, and nobody would answer the flush: waiting hung the start.
        if self.syncer.is_some()
            && self.cfg.fsync != FsyncPolicy::Never
            && !self.shared.failed.load(Ordering::Acquire)
        {
            let _ = self.sync();
        }
        let _ = self.sync_tx.send(SyncMsg::Shutdown);
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}
