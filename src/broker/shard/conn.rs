//! Per-connection state and the slab that holds it.

use super::*;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: u64,
    pub(super) session: u32,
    pub(super) decoder: Decoder,
    /// Bytes of an incomplete frame (or unprocessed while paused). `None` while idle: boxed because it is rare and
    /// a `BytesMut` inline would cost every idle connection 24 bytes more.
    pub(super) partial: Option<Box<BytesMut>>,
    /// Encoded packets not yet written; `None` while there are none (most connections, most of the time: an inline
    /// `BytesMut` would cost every idle connection 24 bytes more). Released once flushed.
    pub(super) out: Option<Box<BytesMut>>,
    pub(super) keep_alive: u16,
    /// Shard second of the last byte received (or of the accept, before CONNECT).
    pub(super) last_seen: Secs,
    /// Number of full queues this publisher is feeding; reading stops while > 0.
    pub(super) pause_count: u16,
    pub(super) dirty: bool,
    pub(super) closing: bool,
    /// Reading stopped because the peer is not reading our output (acks would pile up in `out`).
    pub(super) out_blocked: bool,
    /// v5 client allows reason strings (Request Problem Information is not 0).
    pub(super) reason_strings: bool,
}

impl Conn {
    pub(super) fn out_len(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.len())
    }

    /// The output buffer, created on first use.
    pub(super) fn out_mut(&mut self) -> &mut BytesMut {
        self.out.get_or_insert_with(Default::default)
    }
}

#[derive(Debug)]
pub(super) struct Slot<T> {
    pub(super) gen: u32,
    pub(super) item: Option<T>,
}

/// A slab whose keys carry a generation, so stale keys (from a queue, another shard or the wheel) miss.
#[derive(Debug)]
pub(super) struct Slab<T> {
    pub(super) slots: Vec<Slot<T>>,
    pub(super) free: Vec<u32>,
    pub(super) len: usize,
}

impl<T> Slab<T> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Slab {
            slots: Vec::with_capacity(n),
            free: Vec::new(),
            len: 0,
        }
    }
    pub(super) fn insert(&mut self, item: T) -> ConnKey {
        self.len += 1;
        match self.free.pop() {
            Some(idx) => {
                let slot = &mut self.slots[idx as usize];
                slot.gen = slot.gen.wrapping_add(1);
                slot.item = Some(item);
                ConnKey { idx, gen: slot.gen }
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    item: Some(item),
                });
                ConnKey {
                    idx: (self.slots.len() - 1) as u32,
                    gen: 0,
                }
            }
        }
    }
    pub(super) fn get(&self, k: ConnKey) -> Option<&T> {
        self.slots
            .get(k.idx as usize)
            .filter(|s| s.gen == k.gen)
            .and_then(|s| s.item.as_ref())
    }
    pub(super) fn get_mut(&mut self, k: ConnKey) -> Option<&mut T> {
        self.slots
            .get_mut(k.idx as usize)
            .filter(|s| s.gen == k.gen)
            .and_then(|s| s.item.as_mut())
    }
    pub(super) fn remove(&mut self, k: ConnKey) -> Option<T> {
        let slot = self
            .slots
            .get_mut(k.idx as usize)
            .filter(|s| s.gen == k.gen)?;
        let item = slot.item.take()?;
        self.free.push(k.idx);
        self.len -= 1;
        Some(item)
    }
}
