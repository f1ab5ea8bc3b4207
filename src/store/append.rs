//! The write path: appending records to the head segment, capacity checks, segment rolls and commits.

use super::index::{Loc, Mode};
use super::record::{encode_frame, framed_len};
use super::segment::Segment;
use super::syncer::SyncRange;
use super::{FsyncPolicy, Lsn, Record, Store, StoreError, StoreResult, COMMIT_FRAME};

impl Store {
    /// Allocates a message id for a `Message` record (unique for the life of this shard's log).
    pub fn alloc_msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
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
    pub(super) fn ensure_space(&mut self, total: usize) -> StoreResult<()> {
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
}
