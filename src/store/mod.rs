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

mod error;
mod index;
mod lock;
mod record;
mod segment;
mod syncer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};

pub use error::{StoreError, StoreResult};
pub use index::{
    Delivery, MsgRef, QueuedMessage, RecoveredSession, RecoveredSubscription, RecoveredWill,
    ReplayRepairs, SessionMeta, State,
};
pub use lock::DirLock;
pub use record::{DeliveryState, Record};

use index::{Index, Loc, Mode};
use record::{decode_body, encode_frame, framed_len, read_frame, Frame};
use segment::{probe, Header, Segment, SEGMENT_HEADER};
use syncer::{SyncMsg, SyncRange, SyncShared};

/// Frame size of a commit record (type + u64, padded).
const COMMIT_FRAME: usize = 24;
/// Bound on the syncer channel; beyond it the writer coalesces ranges itself.
const SYNC_CHANNEL: usize = 1024;
/// Bound on corruption reports kept in memory (the count is always exact).
const MAX_REPORTED_CORRUPTIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync every commit before reporting it durable.
    Always,
    /// Sync at most every interval, coalescing commits (default 10 ms).
    Interval(Duration),
    /// Never sync; every commit counts as durable at once. Benchmarks only: loses data on power loss.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(10))
    }
}

impl<'de> serde::Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Never => write!(f, "never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}ms", d.as_millis()),
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    /// `always`, `never`, `interval` (10 ms) or `interval:<n>ms`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::default()),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|v| v.strip_suffix("ms"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&v| (1..=10_000).contains(&v))
                    .ok_or_else(|| {
                        format!("bad fsync policy {s:?}: use always, never, interval or interval:<1..10000>ms")
                    })?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Deserializable from the broker's TOML config (`[store]` table, every field optional), e.g.
/// `fsync = "interval:10ms"`, `segment_size = 67108864`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Bytes per segment file (64 KiB ..= 1 GiB). Default 64 MiB.
    pub segment_size: u32,
    pub fsync: FsyncPolicy,
    /// Largest record body (an MQTT payload plus topic and properties). Default 16 MiB; lowered to a quarter
    /// of the segment size when larger.
    pub max_record_size: u32,
    /// Disk budget in segments (including the head). Default 1024 (64 GiB at the default size).
    pub max_segments: u32,
    /// Largest uncommitted group. Default 64 MiB.
    pub max_group_bytes: usize,
    /// Compact the oldest segment when its live ratio, or the whole log's, is below this. Default 0.5.
    pub compact_live_ratio: f64,
    /// Under `Interval`, sync early once this many bytes are waiting. Default 32 KiB (measured: 256 KiB held a fan-in of 8 QoS 1
    /// publishers with 64 in flight each to the interval, 41k msg/s; 32 KiB: 93k msg/s).
    pub sync_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_size: 64 << 20,
            fsync: FsyncPolicy::default(),
            max_record_size: 16 << 20,
            max_segments: 1024,
            max_group_bytes: 64 << 20,
            compact_live_ratio: 0.5,
            sync_bytes: 32 << 10,
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> StoreResult<()> {
        let bad = |m: String| Err(StoreError::Config(m));
        if !(64 << 10..=1 << 30).contains(&self.segment_size) || self.segment_size % 4096 != 0 {
            return bad(format!(
                "segment_size {} must be a multiple of 4096 in 64 KiB..=1 GiB",
                self.segment_size
            ));
        }
        if self.max_record_size == 0 || self.max_record_size > self.segment_size / 4 {
            return bad(format!(
                "max_record_size {} must be in 1..=segment_size/4 ({})",
                self.max_record_size,
                self.segment_size / 4
            ));
        }
        if self.max_segments < 2 {
            return bad("max_segments must be at least 2".into());
        }
        if self.max_group_bytes < self.max_record_size as usize {
            return bad("max_group_bytes must be at least max_record_size".into());
        }
        if !(0.05..=0.95).contains(&self.compact_live_ratio) {
            return bad("compact_live_ratio must be in 0.05..=0.95".into());
        }
        Ok(())
    }
}

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

/// A message body read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Bytes,
    /// Unix second its Message Expiry Interval ends (0 = never).
    pub expires_unix: u64,
}

/// A damaged stretch of the log that recovery skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub segment: u32,
    pub offset: u64,
    pub skipped_bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub groups: u64,
    pub bytes_scanned: u64,
    /// At most `MAX_REPORTED_CORRUPTIONS` entries; `corruption_count` is exact.
    pub corruptions: Vec<Corruption>,
    pub corruption_count: u64,
    /// Where the log was truncated after a torn or uncommitted tail: (segment, offset, bytes discarded).
    pub truncated_at: Option<(u32, u64, u64)>,
    /// Records of the last, uncommitted group that were discarded.
    pub uncommitted_records: u64,
    /// Segments after the truncation point that were deleted.
    pub deleted_segments: u32,
    pub repairs: ReplayRepairs,
    pub elapsed: Duration,
}

/// What `Store::open` rebuilt.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub state: State,
    pub report: RecoveryReport,
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

/// Progress of one `compact_step`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactProgress {
    pub scanned_bytes: usize,
    pub copied_bytes: usize,
    pub deleted_segments: u32,
    /// Nothing to do right now.
    pub idle: bool,
}

struct Compaction {
    seg: u32,
    cursor: usize,
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

    fn recover(&mut self, ids: &[u32], report: &mut RecoveryReport) -> StoreResult<()> {
        struct Pending {
            seg: u32,
            off: usize,
            total: usize,
        }
        let max = self.max_body();
        let mut pending: Vec<Pending> = Vec::new();
        // End of the last complete group: the truncation point.
        let mut last_commit: (u32, usize) = (ids[0], SEGMENT_HEADER);
        // End of the last valid frame anywhere, and per segment how far non-zero bytes reach.
        let mut last_valid: (u32, usize) = (ids[0], SEGMENT_HEADER);
        let mut dirty_end: BTreeMap<u32, usize> = BTreeMap::new();
        // Damage with nothing valid after it in its segment: torn tail if it is past `last_valid`.
        let mut tail_damage: Vec<Corruption> = Vec::new();
        let mut max_header_msg_id = 0u64;
        let mut max_group = 0u64;
        let mut bad_headers: Vec<u32> = Vec::new();

        for &id in ids {
            let path = self.dir.join(segment::segment_file_name(id));
            let mut seg = Segment::open(&path, id, self.cfg.segment_size as usize)?;
            report.segments += 1;
            match seg.header {
                Some(h) if h.id == id => max_header_msg_id = max_header_msg_id.max(h.next_msg_id),
                _ => bad_headers.push(id),
            }
            let buf = seg.bytes();
            let mut off = SEGMENT_HEADER;
            let mut dirty = SEGMENT_HEADER;
            while off + record::FRAME_HEADER <= buf.len() {
                match read_frame(&buf[off..], max) {
                    Frame::Valid { kind, body, total } => {
                        match decode_body(kind, body) {
                            Ok(record::Record::Commit { group }) => {
                                for p in pending.drain(..) {
                                    let bytes = if p.seg == id {
                                        buf
                                    } else {
                                        self.segments[&p.seg].bytes()
                                    };
                                    // Already CRC-checked when it was scanned.
                                    let frame = &bytes[p.off..p.off + p.total];
                                    if let Some((kind, body)) = record::frame_body(frame) {
                                        if let Ok(rec) = decode_body(kind, body) {
                                            let loc = Loc {
                                                seg: p.seg,
                                                off: p.off as u32,
                                                len: p.total as u32,
                                            };
                                            let _ = self.index.apply(&rec, loc, Mode::Replay);
                                            report.records += 1;
                                        }
                                    }
                                }
                                report.groups += 1;
                                max_group = max_group.max(group);
                                last_commit = (id, off + total);
                            }
                            Ok(_) => pending.push(Pending {
                                seg: id,
                                off,
                                total,
                            }),
                            Err(e) => push_corruption(
                                report,
                                id,
                                off as u64,
                                total as u64,
                                format!("undecodable record: {e}"),
                            ),
                        }
                        off += total;
                        dirty = off;
                        last_valid = (id, off);
                    }
                    Frame::End | Frame::Bad(_) => {
                        let reason = match read_frame(&buf[off..], max) {
                            Frame::Bad(r) => r,
                            _ => "zero length inside written data",
                        };
                        let p = probe(buf, off, max);
                        dirty = dirty.max(p.nonzero_end);
                        match p.next_valid {
                            Some(next) => {
                                push_corruption(
                                    report,
                                    id,
                                    off as u64,
                                    (next - off) as u64,
                                    reason.into(),
                                );
                                off = next;
                            }
                            None => {
                                if p.nonzero_end > off {
                                    tail_damage.push(Corruption {
                                        segment: id,
                                        offset: off as u64,
                                        skipped_bytes: (p.nonzero_end - off) as u64,
                                        reason: reason.into(),
                                    });
                                }
                                break;
                            }
                        }
                    }
                }
            }
            report.bytes_scanned += off as u64;
            seg.used = off.max(SEGMENT_HEADER);
            dirty_end.insert(id, dirty);
            self.segments.insert(id, seg);
        }
        // Damage before the last valid frame was in the middle of the log; after it, it is the torn tail.
        for d in tail_damage {
            if (d.segment, d.offset as usize) < last_valid {
                push_corruption(report, d.segment, d.offset, d.skipped_bytes, d.reason);
            }
        }
        report.uncommitted_records = pending.len() as u64;
        for id in bad_headers {
            if id <= last_commit.0 {
                push_corruption(
                    report,
                    id,
                    0,
                    SEGMENT_HEADER as u64,
                    "bad segment header".into(),
                );
            }
        }

        // Truncate to the end of the last complete group.
        let (head, cut) = last_commit;
        let mut discarded = 0u64;
        let later: Vec<u32> = self.segments.range(head + 1..).map(|(&id, _)| id).collect();
        for id in later {
            if let Some(seg) = self.segments.remove(&id) {
                discarded += dirty_end
                    .get(&id)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(SEGMENT_HEADER) as u64;
                let path = seg.path.clone();
                drop(seg);
                std::fs::remove_file(&path).map_err(|e| {
                    StoreError::io(format!("deleting torn segment {}", path.display()), e)
                })?;
                report.deleted_segments += 1;
            }
        }
        let header = self.header(head);
        let seg = self
            .segments
            .get_mut(&head)
            .expect("head segment is present");
        let dirty = dirty_end.get(&head).copied().unwrap_or(cut).max(seg.used);
        if dirty > cut {
            discarded += (dirty - cut) as u64;
            let end = dirty.min(seg.size());
            seg.frame_mut(cut, end - cut).fill(0);
            seg.map
                .flush_range(cut, end - cut)
                .map_err(|e| StoreError::io("syncing the truncated tail", e))?;
        }
        if discarded > 0 {
            report.truncated_at = Some((head, cut as u64, discarded));
        }
        seg.used = cut;
        if seg.header.map_or(true, |h| h.id != head) {
            seg.rewrite_header(header);
        }
        seg.release_pages(0, seg.size());
        for seg in self.segments.range(..head).map(|(_, s)| s) {
            seg.release_pages(0, seg.size());
        }
        if report.deleted_segments > 0 {
            self.dir_file
                .sync_all()
                .map_err(|e| StoreError::io("syncing data directory", e))?;
        }
        self.head = head;
        self.index.finish_replay();
        self.next_msg_id = self
            .index
            .max_msg_id
            .map_or(1, |m| m.saturating_add(1))
            .max(max_header_msg_id)
            .max(1);
        self.group = max_group + 1;
        Ok(())
    }

    /// Allocates a message id for a `Message` record (unique for the life of this shard's log).
    pub fn alloc_msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
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

    /// Whether a record with a body of `body_bytes` could be appended now without hitting a capacity limit (the
    /// broker asks before accepting a persistent QoS>0 publish so it never writes half a fan-out).
    pub fn check_capacity(&mut self, body_bytes: usize) -> StoreResult<()> {
        self.check_failed()?;
        let total = framed_len(body_bytes) + COMMIT_FRAME;
        self.check_growth_room()?;
        let head = self.head_seg();
        if head.used + total <= head.size() || self.spare.is_some() {
            return Ok(());
        }
        self.prepare_spare()
    }

    /// Appends one record to the current group. Copies into the mapping; no syscall unless a segment rolls.
    pub fn append(&mut self, rec: &Record<'_>) -> StoreResult<Lsn> {
        self.check_failed()?;
        if let Record::Commit { .. } = rec {
            return Err(StoreError::Invalid(
                "commit records are written by commit()".into(),
            ));
        }
        rec.validate().map_err(StoreError::Invalid)?;
        let body = rec.body_len();
        if body + 1 > self.cfg.max_record_size as usize {
            return Err(StoreError::RecordTooLarge {
                size: body + 1,
                max: self.cfg.max_record_size as usize,
            });
        }
        let total = framed_len(body);
        if self.group_bytes + total > self.cfg.max_group_bytes {
            return Err(StoreError::GroupTooLarge {
                size: self.group_bytes + total,
                max: self.cfg.max_group_bytes,
            });
        }
        if self.is_growth(rec) {
            self.check_growth_room()?;
        }
        self.ensure_space(total)?;
        let off = self.head_seg().used;
        let loc = Loc {
            seg: self.head,
            off: off as u32,
            len: total as u32,
        };
        self.index
            .apply(rec, loc, Mode::Append)
            .map_err(StoreError::Invalid)?;
        let seg = self
            .segments
            .get_mut(&self.head)
            .expect("head segment is present");
        encode_frame(rec, seg.frame_mut(off, total));
        seg.used = off + total;
        self.group_bytes += total;
        self.stats.appended_records += 1;
        if let Record::Message { msg_id, .. } = rec {
            self.next_msg_id = self.next_msg_id.max(msg_id.saturating_add(1));
        }
        Ok(Lsn::at(self.head, off + total))
    }

    /// Records that add state (new bodies, queue entries, subscriptions...). Records that remove or update state
    /// (acks, deletes, delivery states) and compaction copies are never refused for capacity: they are what frees
    /// space again.
    fn is_growth(&self, rec: &Record<'_>) -> bool {
        match rec {
            Record::Message { .. }
            | Record::Enqueue { .. }
            | Record::SubAdd { .. }
            | Record::Qos2InPending { .. }
            | Record::WillPending { .. }
            | Record::RetainedSet { .. } => true,
            Record::SessionUpsert { client_id, .. } => !self.index.session_exists(client_id),
            _ => false,
        }
    }

    /// Growth records need the next segment ready once the head is half full, so the other half always stays
    /// available for acks, deletes and compaction (otherwise a full disk could never be drained).
    fn check_growth_room(&mut self) -> StoreResult<()> {
        let head = self.head_seg();
        if self.spare.is_some() || head.used <= head.size() / 2 {
            return Ok(());
        }
        self.prepare_spare()
    }

    /// Makes room for a frame of `total` bytes plus the commit record that will close its group.
    fn ensure_space(&mut self, total: usize) -> StoreResult<()> {
        let head = self.head_seg();
        if head.used + total + COMMIT_FRAME <= head.size() {
            return Ok(());
        }
        self.roll()
    }

    fn prepare_spare(&mut self) -> StoreResult<()> {
        if self.spare.is_some() {
            return Ok(());
        }
        let count = self.segments.len() as u32;
        if count >= self.cfg.max_segments {
            return Err(StoreError::BudgetExceeded {
                segments: count,
                segment_size: self.cfg.segment_size,
            });
        }
        let seg = Segment::create(&self.dir, self.header(self.head + 1))?;
        self.spare = Some(seg);
        Ok(())
    }

    /// Seals the head segment and continues in a new one.
    fn roll(&mut self) -> StoreResult<()> {
        self.prepare_spare()?;
        let new = self.spare.take().expect("spare prepared");
        let old = self.head_seg();
        let range = SyncRange {
            seg_id: old.id,
            map: old.map.clone(),
            start: self.unsynced_from,
            end: old.used,
            lsn: None,
            sealed: true,
            dir_sync: None,
        };
        self.send_sync(range);
        self.head = new.id;
        self.segments.insert(new.id, new);
        self.unsynced_from = 0;
        self.dir_sync_due = true;
        Ok(())
    }

    /// Ends the current group: writes a commit record and hands the group to the syncer. Returns the LSN the
    /// broker waits on with `durable_lsn()`. Cheap when nothing was appended since the last commit.
    pub fn commit(&mut self) -> StoreResult<Lsn> {
        self.check_failed()?;
        if self.group_bytes == 0 {
            return Ok(self.committed);
        }
        let rec = Record::Commit { group: self.group };
        let total = framed_len(rec.body_len());
        debug_assert_eq!(total, COMMIT_FRAME);
        let seg = self
            .segments
            .get_mut(&self.head)
            .expect("head segment is present");
        let off = seg.used;
        // `ensure_space` kept room for this frame.
        encode_frame(&rec, seg.frame_mut(off, total));
        seg.used = off + total;
        let range = SyncRange {
            seg_id: seg.id,
            map: seg.map.clone(),
            start: self.unsynced_from,
            end: seg.used,
            lsn: Some(Lsn::at(self.head, off + total).0),
            sealed: false,
            dir_sync: if self.dir_sync_due {
                Some(self.dir_file.clone())
            } else {
                None
            },
        };
        self.unsynced_from = seg.used;
        let over_half = seg.used > seg.size() / 2;
        self.dir_sync_due = false;
        self.group += 1;
        self.group_bytes = 0;
        self.committed = Lsn::at(self.head, off + total);
        self.stats.commits += 1;
        self.index.collect_garbage();
        self.send_sync(range);
        if self.cfg.fsync == FsyncPolicy::Never {
            self.shared.publish(self.committed.0);
        }
        // Create the next segment early so a roll inside a group does not wait for (or fail on) fallocate.
        if over_half && self.spare.is_none() {
            match self.prepare_spare() {
                // Logged once per episode, not at every commit while the disk stays full.
                Err(e) if !self.spare_warned => {
                    self.spare_warned = true;
                    tracing::warn!(shard = self.shard, error = %e, "cannot preallocate the next segment");
                }
                Err(_) => {}
                Ok(()) => self.spare_warned = false,
            }
        }
        Ok(self.committed)
    }

    fn send_sync(&mut self, range: SyncRange) {
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

    /// Bytes of a message body's record in the log (None if the log holds no such body).
    /// Unix second a live stored message expires at (0 = never), without reading its body.
    pub fn message_expiry(&self, msg: MsgRef) -> u64 {
        self.index.message_expiry(msg.0)
    }

    pub fn message_len(&self, msg: MsgRef) -> Option<u32> {
        self.index.message_loc(msg.0).map(|l| l.len)
    }

    /// Reads a message body back from the log (the payload is copied out of the mapping).
    pub fn read_message(&self, msg: MsgRef) -> StoreResult<StoredMessage> {
        let unreadable = |reason: &str| StoreError::Unreadable {
            msg_id: msg.0,
            reason: reason.into(),
        };
        let loc = self
            .index
            .message_loc(msg.0)
            .ok_or_else(|| unreadable("no such live message"))?;
        let seg = self
            .segments
            .get(&loc.seg)
            .ok_or_else(|| unreadable("segment missing"))?;
        let bytes = seg.bytes();
        match read_frame(&bytes[loc.off as usize..], self.max_body()) {
            Frame::Valid { kind, body, .. } => match decode_body(kind, body) {
                Ok(Record::Message {
                    msg_id,
                    topic,
                    qos,
                    retain,
                    payload,
                    properties,
                    expires_unix,
                }) if msg_id == msg.0 => Ok(StoredMessage {
                    msg_id,
                    topic: topic.to_string(),
                    qos,
                    retain,
                    payload: Bytes::copy_from_slice(payload),
                    properties: Bytes::copy_from_slice(properties),
                    expires_unix,
                }),
                _ => Err(unreadable("record is not this message")),
            },
            _ => Err(unreadable("record damaged")),
        }
    }

    /// The current live state (what a recovery right now would rebuild from committed data plus the open group).
    pub fn snapshot(&self) -> State {
        self.index.snapshot()
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

    /// One bounded step of compaction (copies at most about `budget` bytes). Call it between ticks, after
    /// `commit()`: it commits its own copies (and with them anything appended since the last commit).
    pub fn compact_step(&mut self, budget: usize) -> StoreResult<CompactProgress> {
        self.check_failed()?;
        let mut progress = CompactProgress {
            deleted_segments: self.delete_doomed()?,
            ..CompactProgress::default()
        };
        if self.compaction.is_none() {
            match self.pick_victim() {
                Some(seg) => {
                    if self.index.live_bytes(seg) == 0 {
                        // Nothing to copy: delete once everything appended so far (the records that made
                        // this segment dead) is durable.
                        let lsn = self.current_lsn();
                        self.doomed.push((seg, lsn));
                        self.stats.compacted_segments += 1;
                        return Ok(progress);
                    }
                    self.compaction = Some(Compaction {
                        seg,
                        cursor: SEGMENT_HEADER,
                    });
                }
                None => {
                    progress.idle = progress.deleted_segments == 0 && self.doomed.is_empty();
                    return Ok(progress);
                }
            }
        }
        let Some(Compaction {
            seg: victim,
            mut cursor,
        }) = self.compaction.take()
        else {
            return Ok(progress);
        };
        let max = self.max_body();
        let end = self.segments[&victim].used;
        while cursor < end && progress.scanned_bytes < budget {
            let mut copy = None;
            {
                let buf = &self.segments[&victim].bytes()[..end];
                match read_frame(&buf[cursor..], max) {
                    Frame::Valid { kind, body, total } => {
                        if let Ok(rec) = decode_body(kind, body) {
                            let loc = Loc {
                                seg: victim,
                                off: cursor as u32,
                                len: total as u32,
                            };
                            if self.index.is_live(&rec, loc) {
                                self.scratch.clear();
                                self.scratch.extend_from_slice(&buf[cursor..cursor + total]);
                                copy = Some((loc, total));
                            }
                        }
                        cursor += total;
                        progress.scanned_bytes += total;
                    }
                    Frame::End | Frame::Bad(_) => {
                        let p = probe(buf, cursor, max);
                        let next = p.next_valid.unwrap_or(end);
                        progress.scanned_bytes += next - cursor;
                        cursor = next;
                    }
                }
            }
            if let Some((old, total)) = copy {
                if let Err(e) = self.ensure_space(total) {
                    self.compaction = Some(Compaction {
                        seg: victim,
                        cursor: old.off as usize,
                    });
                    return Err(e);
                }
                let off = self.head_seg().used;
                let new = Loc {
                    seg: self.head,
                    off: off as u32,
                    len: total as u32,
                };
                let seg = self
                    .segments
                    .get_mut(&self.head)
                    .expect("head segment is present");
                seg.write(off, &self.scratch);
                seg.used = off + total;
                self.group_bytes += total;
                // Re-decode from the copy to update the index (the scratch buffer borrows nothing).
                let buf = &self.scratch[..];
                if let Frame::Valid { kind, body, .. } = read_frame(buf, max) {
                    if let Ok(rec) = decode_body(kind, body) {
                        self.index.relocate(&rec, old, new);
                    }
                }
                progress.copied_bytes += total;
                self.stats.compaction_copied_bytes += total as u64;
            }
        }
        if progress.copied_bytes > 0 {
            self.commit()?;
        }
        if cursor >= end {
            let lsn = self.current_lsn();
            self.doomed.push((victim, lsn));
            self.stats.compacted_segments += 1;
        } else {
            self.compaction = Some(Compaction {
                seg: victim,
                cursor,
            });
        }
        Ok(progress)
    }

    fn pick_victim(&self) -> Option<u32> {
        let doomed_upto = self.doomed.last().map(|d| d.0);
        let (&oldest, seg) = self
            .segments
            .range(..self.head)
            .find(|(&id, _)| doomed_upto.map_or(true, |d| id > d))?;
        let used = (seg.used - SEGMENT_HEADER).max(1) as f64;
        let own = self.index.live_bytes(oldest) as f64 / used;
        let total_used: f64 = self
            .segments
            .values()
            .map(|s| (s.used - SEGMENT_HEADER) as f64)
            .sum::<f64>()
            .max(1.0);
        let total = self.index.total_live_bytes() as f64 / total_used;
        // Copies must fit somewhere: in the head, a spare, or a segment the budget still allows. Otherwise
        // starting would only waste work (the victim cannot be deleted before all its live records moved).
        let head = self.head_seg();
        let fits = self.index.live_bytes(oldest) as usize + COMMIT_FRAME <= head.size() - head.used
            || self.spare.is_some()
            || (self.segments.len() as u32) < self.cfg.max_segments;
        (fits && (own < self.cfg.compact_live_ratio || total < self.cfg.compact_live_ratio))
            .then_some(oldest)
    }

    /// Deletes compacted segments, oldest first, once the copies (and tombstones) they depended on are durable.
    fn delete_doomed(&mut self) -> StoreResult<u32> {
        let durable = self.durable_lsn();
        let mut n = 0;
        while let Some(&(seg, lsn)) = self.doomed.first() {
            if lsn > durable {
                if self.cfg.fsync == FsyncPolicy::Never {
                    // `Never` only counts commits as durable; commit so the deletion can proceed.
                    if self.group_bytes > 0 {
                        self.commit()?;
                    }
                    if lsn > self.durable_lsn() {
                        break;
                    }
                } else {
                    break;
                }
            }
            self.doomed.remove(0);
            if let Some(s) = self.segments.remove(&seg) {
                let path = s.path.clone();
                drop(s);
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io(format!("deleting {}", path.display()), e))?;
                if self.cfg.fsync != FsyncPolicy::Never {
                    // Deletions must reach disk in order (see the module docs on tombstones).
                    self.dir_file
                        .sync_all()
                        .map_err(|e| StoreError::io("syncing data directory", e))?;
                }
                self.index.forget_segment(seg);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Drops the mapped pages of all written data from RSS (pages touched by `read_message` or compaction stay
    /// mapped otherwise). Cheap (one madvise per segment); call it periodically, e.g. once a second.
    pub fn release_cached_pages(&self) {
        for (_, s) in self.segments.range(..self.head) {
            s.release_pages(0, s.size());
        }
        // The head: only whole pages below the write position (the writer only touches bytes at or after it).
        let head = self.head_seg();
        head.release_pages(0, head.used);
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
}

fn push_corruption(
    report: &mut RecoveryReport,
    segment: u32,
    offset: u64,
    skipped: u64,
    reason: String,
) {
    tracing::warn!(segment, offset, skipped, %reason, "corrupt record in the middle of the log skipped");
    report.corruption_count += 1;
    if report.corruptions.len() < MAX_REPORTED_CORRUPTIONS {
        report.corruptions.push(Corruption {
            segment,
            offset,
            skipped_bytes: skipped,
            reason,
        });
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
