//! Compaction: copies the live records of the oldest sealed segment to the head in bounded steps, and deletes
//! segments once the copies are durable (see the module docs of `store`, "Compaction").

use super::index::Loc;
use super::record::{decode_body, read_frame, Frame};
use super::segment::{probe, SEGMENT_HEADER};
use super::{FsyncPolicy, Store, StoreError, StoreResult, COMMIT_FRAME};

/// Progress of one `compact_step`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactProgress {
    pub scanned_bytes: usize,
    pub copied_bytes: usize,
    pub deleted_segments: u32,
    /// Nothing to do right now.
    pub idle: bool,
}

pub(super) struct Compaction {
    seg: u32,
    cursor: usize,
}

impl Store {
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
}
