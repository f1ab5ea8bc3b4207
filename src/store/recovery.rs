//! Replay of the log at open: rebuilds the index from complete groups, reports and skips damage in the middle,
//! truncates a torn or uncommitted tail (see the module docs of `store`, "Recovery").

use std::collections::BTreeMap;
use std::time::Duration;

use super::index::{Loc, Mode, ReplayRepairs, State};
use super::record::{self, decode_body, read_frame, Frame};
use super::segment::{self, probe, Segment, SEGMENT_HEADER};
use super::{Store, StoreError, StoreResult};

/// Bound on corruption reports kept in memory (the count is always exact).
const MAX_REPORTED_CORRUPTIONS: usize = 1000;

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

impl Store {
    pub(super) fn recover(&mut self, ids: &[u32], report: &mut RecoveryReport) -> StoreResult<()> {
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
