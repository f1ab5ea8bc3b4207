//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): a page-aligned ring of buffer descriptors shared with
//! the kernel, plus the buffers themselves. The kernel takes a buffer only when a receive has data for it, so an
//! idle connection holds none; the shard hands each buffer back (`give_back`) once it has consumed the bytes.

use std::io;

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

pub(super) struct BufRing {
    /// `count` descriptors of 16 bytes; the ring's tail overlaps the first descriptor's reserved field.
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    /// `count * size` bytes, buffer `bid` at `bid * size`. Never moves or shrinks while registered.
    bufs: Box<[u8]>,
    count: u16,
    size: u32,
    /// Our copy of the tail: descriptors published so far (wrapping).
    tail: u16,
    /// Buffers the kernel filled and the caller has not given back yet.
    out: usize,
}

impl BufRing {
    /// Allocate and register `count` buffers of `size` bytes (count a power of two, at most 32,768).
    pub(super) fn new(
        sub: &Submitter<'_>,
        bgid: u16,
        count: u16,
        size: u32,
    ) -> io::Result<BufRing> {
        if count == 0 || !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer count {count} must be a power of two between 1 and 32768"),
            ));
        }
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer size must be > 0",
            ));
        }
        let ring_bytes = count as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping, no file; checked for MAP_FAILED below. mmap returns page-aligned
        // memory, which the kernel requires of a buffer ring.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let bufs = vec![0u8; count as usize * size as usize].into_boxed_slice();
        let mut br = BufRing {
            ring: ptr as *mut BufRingEntry,
            ring_bytes,
            bufs,
            count,
            size,
            tail: 0,
            out: 0,
        };
        // SAFETY: the ring memory lives until Drop, which runs after the io_uring instance is gone (the
        // backend drops its ring first) or after unregistering.
        unsafe { sub.register_buf_ring_with_flags(ptr as u64, count, bgid, 0)? };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Write descriptor `bid` at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * self.size as u64;
        // SAFETY: index masked into the ring's `count` descriptors.
        let e = unsafe { &mut *self.ring.add((self.tail & mask) as usize) };
        e.set_addr(addr);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make pushed descriptors visible to the kernel (release store of the shared tail).
    fn publish(&self) {
        // SAFETY: the tail is a u16 inside the mapped ring; the kernel reads it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// The kernel put `len` bytes into buffer `bid`: it is the caller's until `give_back`.
    pub(super) fn taken(&mut self) {
        self.out += 1;
    }

    pub(super) fn data(&self, bid: u16, len: u32) -> &[u8] {
        let start = bid as usize * self.size as usize;
        &self.bufs[start..start + (len.min(self.size)) as usize]
    }

    pub(super) fn give_back(&mut self, bid: u16) {
        debug_assert!(bid < self.count && self.out > 0);
        self.push(bid);
        self.publish();
        self.out -= 1;
    }

    /// Buffers the kernel can still fill.
    pub(super) fn available(&self) -> usize {
        self.count as usize - self.out
    }

    pub(super) fn out(&self) -> usize {
        self.out
    }

    /// Bytes of memory this ring pins (descriptors and buffers), for the locked-memory budget.
    pub(super) fn footprint(&self) -> usize {
        self.ring_bytes + self.bufs.len()
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the backend has torn down the ring (or unregistered) before this.
        unsafe { libc::munmap(self.ring as *mut libc::c_void, self.ring_bytes) };
    }
}
