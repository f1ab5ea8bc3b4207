//! One segment file: preallocated, mapped with `memmap2::MmapRaw` so the writer (shard thread) and the syncer
//! thread can share the mapping without Rust references crossing threads.
//!
//! Header (32 bytes): magic `CMQSEG\0\x01`, segment id u32, shard u32, segment size u32, next message id u64 at
//! creation (a high-water mark so ids are never reused after the records holding them were compacted away),
//! crc32c of the previous 28 bytes. Records follow at offset 32.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

use super::error::{StoreError, StoreResult};
use super::record::{read_frame, Frame, ALIGN};

pub(crate) const SEGMENT_HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"CMQSEG\x00\x01";
pub(crate) const PAGE: usize = 4096;

pub(crate) fn segment_file_name(id: u32) -> String {
    format!("{id:020}.seg")
}

/// Parses `00000000000000000012.seg` into 12.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse::<u64>().ok().and_then(|v| u32::try_from(v).ok())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub id: u32,
    pub shard: u32,
    pub size: u32,
    pub next_msg_id: u64,
}

impl Header {
    fn encode(&self) -> [u8; SEGMENT_HEADER] {
        let mut b = [0u8; SEGMENT_HEADER];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.id.to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.to_le_bytes());
        b[16..20].copy_from_slice(&self.size.to_le_bytes());
        b[20..28].copy_from_slice(&self.next_msg_id.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < SEGMENT_HEADER || &b[0..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[28..32].try_into().unwrap());
        if crc32c::crc32c(&b[0..28]) != crc {
            return None;
        }
        Some(Header {
            id: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            shard: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            size: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            next_msg_id: u64::from_le_bytes(b[20..28].try_into().unwrap()),
        })
    }
}

pub(crate) struct Segment {
    pub id: u32,
    pub path: PathBuf,
    /// Kept open for the mapping's lifetime and for fallocate.
    _file: File,
    pub map: Arc<MmapRaw>,
    /// Bytes in use: header plus every frame written (or found by recovery).
    pub used: usize,
    /// Header as read at open; `None` when it was damaged.
    pub header: Option<Header>,
}

impl Segment {
    /// Creates and preallocates a new segment. Blocks are reserved with `fallocate` so that writes through the
    /// mapping can never hit ENOSPC (which would be a SIGBUS, not an error).
    pub fn create(dir: &Path, header: Header) -> StoreResult<Segment> {
        let path = dir.join(segment_file_name(header.id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        let size = header.size as usize;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::io(
                format!("preallocating {} bytes for {}", size, path.display()),
                err,
            ));
        }
        let map = MmapOptions::new()
            .len(size)
            .map_raw(&file)
            .map_err(|e| StoreError::io(format!("mapping {}", path.display()), e))?;
        let seg = Segment {
            id: header.id,
            path,
            _file: file,
            map: Arc::new(map),
            used: SEGMENT_HEADER,
            header: Some(header),
        };
        seg.write(0, &header.encode());
        Ok(seg)
    }

    /// Maps an existing segment. A short file (truncated by a crash or by hand) is extended with zeros to
    /// `min_size` so the mapping never reaches past end of file.
    pub fn open(path: &Path, id: u32, min_size: usize) -> StoreResult<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
            .len() as usize;
        let mut head = [0u8; SEGMENT_HEADER];
        let header = {
            use std::os::unix::fs::FileExt;
            match file.read_exact_at(&mut head, 0) {
                Ok(()) => Header::decode(&head),
                Err(_) => None,
            }
        };
        let want = match header {
            Some(h) => (h.size as usize).max(len),
            None => min_size.max(len),
        };
        if len < want {
            // Reserve the blocks, as at creation, so writes through the mapping cannot hit ENOSPC.
            // SAFETY: plain syscall on an fd we own.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, want as libc::off_t) };
            if rc != 0 {
                return Err(StoreError::io(
                    format!("extending {}", path.display()),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let map = MmapOptions::new()
            .len(want)
            .map_raw(&file)
            .map_err(|e| StoreError::io(format!("mapping {}", path.display()), e))?;
        Ok(Segment {
            id,
            path: path.to_path_buf(),
            _file: file,
            map: Arc::new(map),
            used: SEGMENT_HEADER,
            header,
        })
    }

    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Rewrites a damaged header (only done for the segment that becomes the write head).
    pub fn rewrite_header(&mut self, header: Header) {
        self.write(0, &header.encode());
        self.header = Some(header);
    }

    /// The whole mapping as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as `self`. Bytes below `used` are never written again; bytes above
        // it are written only through `write`/`frame_mut` by the owning thread, which holds `&mut` Store while
        // doing so, so no reader of this slice runs concurrently with a writer on the same thread. The syncer
        // thread never reads or writes the memory, it only issues msync/madvise on it.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// Mutable view of `[off, off+len)`, which must lie at or above `used` (unwritten space).
    #[allow(clippy::mut_from_ref)]
    pub fn frame_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.map.len(), "frame beyond segment end");
        // SAFETY: in bounds (checked); the region is not yet visible to readers (above `used`), see `bytes`.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off), len) }
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        self.frame_mut(off, data.len()).copy_from_slice(data);
    }

    /// Drops this mapping's pages from the process RSS. Safe for a shared file mapping: dirty pages stay in the
    /// page cache and are written back by the kernel; the next access faults them back in.
    pub fn release_pages(&self, from: usize, to: usize) {
        release_pages(&self.map, from, to);
    }
}

pub(crate) fn release_pages(map: &MmapRaw, from: usize, to: usize) {
    let start = from.div_ceil(PAGE) * PAGE;
    let end = (to.min(map.len()) / PAGE) * PAGE;
    if end > start {
        // SAFETY: DONTNEED on a MAP_SHARED file mapping never loses data (see above); no Rust reference into
        // the released range is held across this call by the store's design (reads copy out).
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
}

/// Result of probing the rest of a segment after a damaged or zero frame.
pub(crate) struct Probe {
    /// Offset of the next valid frame, if any.
    pub next_valid: Option<usize>,
    /// End of the last non-zero 8-byte word seen (so recovery zeroes only what needs zeroing).
    pub nonzero_end: usize,
}

/// Looks for the next valid frame at an aligned offset after `from`.
pub(crate) fn probe(buf: &[u8], from: usize, max_record: usize) -> Probe {
    let mut off = from + ALIGN;
    let mut nonzero_end = from;
    while off + ALIGN <= buf.len() {
        let word = &buf[off..off + ALIGN];
        if word.iter().any(|&b| b != 0) {
            nonzero_end = off + ALIGN;
            if let Frame::Valid { .. } = read_frame(&buf[off..], max_record) {
                return Probe {
                    next_valid: Some(off),
                    nonzero_end,
                };
            }
        }
        off += ALIGN;
    }
    // The first probed word was skipped above; include the damaged frame's own header.
    if buf[from..(from + ALIGN).min(buf.len())]
        .iter()
        .any(|&b| b != 0)
    {
        nonzero_end = nonzero_end.max(from + ALIGN);
    }
    Probe {
        next_valid: None,
        nonzero_end,
    }
}
