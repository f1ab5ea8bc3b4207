//! The 24-byte stamp at the start of every test payload: `[magic u32][publisher id u32][seq u64][send ns u64]`,
//! big-endian. The receiver needs nothing else to measure latency and find gaps and duplicates per publisher.

/// "LGMQ": lets a receiver tell loadgen messages from anything else on the topic.
pub const MAGIC: u32 = 0x4C47_4D51;
pub const STAMP_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds on the run's clock (see `clock`): the intended send time in fixed-rate mode, so queueing in
    /// the load generator or the broker shows as latency instead of silently lowering the offered load.
    pub sent_ns: u64,
}

/// Writes the stamp into the first 24 bytes of `payload` (which must be at least that long).
pub fn write_stamp(payload: &mut [u8], stamp: &Stamp) {
    payload[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    payload[4..8].copy_from_slice(&stamp.publisher.to_be_bytes());
    payload[8..16].copy_from_slice(&stamp.seq.to_be_bytes());
    payload[16..24].copy_from_slice(&stamp.sent_ns.to_be_bytes());
}

/// `None` when the payload is too short or does not carry our magic (a foreign message on the topic).
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < STAMP_LEN {
        return None;
    }
    let word = |r: std::ops::Range<usize>| -> u64 {
        payload[r]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64)
    };
    if word(0..4) as u32 != MAGIC {
        return None;
    }
    Some(Stamp {
        publisher: word(4..8) as u32,
        seq: word(8..16),
        sent_ns: word(16..24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut buf = vec![0xEEu8; 40];
        let s = Stamp {
            publisher: 0xDEAD_BEEF,
            seq: u64::MAX - 3,
            sent_ns: 123_456_789_012,
        };
        write_stamp(&mut buf, &s);
        assert_eq!(read_stamp(&buf), Some(s));
        assert_eq!(buf[24..], [0xEE; 16]);
    }

    #[test]
    fn rejects_short_and_foreign() {
        assert_eq!(read_stamp(&[0u8; 23]), None);
        let mut buf = [0u8; 24];
        write_stamp(
            &mut buf,
            &Stamp {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            },
        );
        buf[0] ^= 1;
        assert_eq!(read_stamp(&buf), None);
    }
}
