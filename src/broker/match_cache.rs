//! Recent topic → matching trie nodes: a direct-mapped cache in front of `Trie::for_each_match`, so a publish to
//! a topic seen a moment ago costs one hash of the topic and one comparison instead of a walk with a hash and a
//! string comparison per level (the walk was a quarter of the shard's CPU on 100 QoS 0 pairs).
//!
//! Bounded: a fixed number of slots, each holding one topic of at most `MAX_TOPIC` bytes and at most `MAX_NODES`
//! matching nodes (a longer topic, or one matching more filters, is not cached). Entries are stamped with the trie's generation, which changes whenever a
//! filter gains or loses its value, so a stale entry is a miss, never a wrong answer. A topic is stored on its
//! second miss in a slot, so a stream of distinct topics (a fleet where every device publishes to its own) costs
//! a hash per publish and no allocation.

/// Matching nodes one entry holds.
pub const MAX_NODES: usize = 4;
/// Longest topic kept: topic names may be 64 KiB, and the slots must not hold that much each.
pub const MAX_TOPIC: usize = 256;

#[derive(Debug, Default)]
struct Slot {
    /// Hash of the last topic that missed here (admission: cached when it misses again).
    seen: u64,
    hash: u64,
    /// Trie generation the entry was computed in; `u32::MAX` never matches (the trie skips it).
    gen: u32,
    len: u8,
    nodes: [u32; MAX_NODES],
    topic: Box<str>,
}

#[derive(Debug)]
pub struct MatchCache {
    slots: Box<[Slot]>,
    mask: usize,
    hasher: ahash::RandomState,
}

impl MatchCache {
    /// `slots` is rounded up to a power of two.
    pub fn new(slots: usize) -> Self {
        let n = slots.max(1).next_power_of_two();
        MatchCache {
            slots: (0..n)
                .map(|_| Slot {
                    gen: u32::MAX,
                    ..Slot::default()
                })
                .collect(),
            mask: n - 1,
            hasher: ahash::RandomState::new(),
        }
    }

    pub fn hash(&self, topic: &str) -> u64 {
        self.hasher.hash_one(topic)
    }

    /// The nodes cached for `topic` in generation `gen`.
    pub fn get(&self, hash: u64, topic: &str, gen: u32) -> Option<([u32; MAX_NODES], usize)> {
        let s = &self.slots[hash as usize & self.mask];
        (s.gen == gen && s.hash == hash && *s.topic == *topic).then_some((s.nodes, s.len as usize))
    }

    /// After a miss: keep `nodes` (the walk's result) for `topic` if it missed in this slot just before.
    pub fn offer(&mut self, hash: u64, topic: &str, gen: u32, nodes: &[u32]) {
        debug_assert!(nodes.len() <= MAX_NODES);
        if topic.len() > MAX_TOPIC {
            return;
        }
        let s = &mut self.slots[hash as usize & self.mask];
        if s.seen != hash {
            s.seen = hash;
            return;
        }
        s.hash = hash;
        s.gen = gen;
        s.len = nodes.len() as u8;
        s.nodes[..nodes.len()].copy_from_slice(nodes);
        if *s.topic != *topic {
            s.topic = topic.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_on_the_second_miss_and_only_for_its_generation() {
        let mut c = MatchCache::new(8);
        let h = c.hash("a/b");
        c.offer(h, "a/b", 1, &[3, 4]);
        assert_eq!(
            c.get(h, "a/b", 1),
            None,
            "first miss only remembers the hash"
        );
        c.offer(h, "a/b", 1, &[3, 4]);
        let (nodes, n) = c.get(h, "a/b", 1).unwrap();
        assert_eq!(&nodes[..n], &[3, 4]);
        assert_eq!(c.get(h, "a/b", 2), None, "another generation");
        assert_eq!(
            c.get(h, "a/c", 1),
            None,
            "another topic with the same hash value"
        );
    }
}
