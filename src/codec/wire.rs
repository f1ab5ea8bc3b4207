//! MQTT wire primitives: the bounds-checked reader over one frame, Variable Byte Integers, and the writers the
//! encoder uses. Every read is checked; a short or inconsistent frame is a `Malformed` error, never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::{DecodeError, EncodeError};

/// Largest value a Variable Byte Integer can carry (4 bytes of 7 bits).
pub const MAX_VARINT: u32 = 268_435_455;
/// Largest total frame: 1 byte type + 4 bytes remaining length + the largest remaining length.
pub const MAX_FRAME_LEN: u32 = MAX_VARINT + 5;

/// Decode a Variable Byte Integer from the front of `buf`.
/// `Ok(None)`: more bytes needed. Rejects a fifth byte and overlong (non-minimal) encodings [MQTT-1.5.5-1].
#[inline]
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A multi-byte form whose last byte is zero could have been shorter.
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed("overlong variable byte integer"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Encoded size of a Variable Byte Integer (`v` must be <= MAX_VARINT).
#[inline]
pub const fn varint_len(v: u32) -> usize {
    if v < 0x80 {
        1
    } else if v < 0x4000 {
        2
    } else if v < 0x20_0000 {
        3
    } else {
        4
    }
}

#[inline]
pub fn put_varint(buf: &mut BytesMut, mut v: u32) {
    debug_assert!(v <= MAX_VARINT);
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

/// Length-prefixed string or binary field size, rejecting what a u16 prefix cannot carry.
#[inline]
pub fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::Invalid(
            "string or binary field longer than 65,535 bytes",
        ));
    }
    Ok(2 + len)
}

/// Write a u16-length-prefixed field; the caller has checked the length with `field_len`.
#[inline]
pub fn put_field(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

/// Validate MQTT UTF-8 rules beyond what `str` guarantees: no U+0000 [MQTT-1.5.4-2]. Surrogates (U+D800..DFFF)
/// cannot appear in valid UTF-8, so `std::str::from_utf8` already rejects them [MQTT-1.5.4-1].
#[inline]
pub fn check_mqtt_str(s: &str) -> Result<(), DecodeError> {
    if s.as_bytes().contains(&0) {
        return Err(DecodeError::Malformed("UTF-8 string contains U+0000"));
    }
    Ok(())
}

/// One pass over a topic name, 8 bytes at a time: (all ASCII, contains U+0000 / `+` / `#`). The PUBLISH hot
/// path; a byte-at-a-time loop was half of the decode time for a 46-byte topic.
#[inline]
pub fn scan_topic(b: &[u8]) -> (bool, bool) {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Non-zero iff some byte of `v` is zero (exact as an existence test).
    #[inline(always)]
    fn has_zero(v: u64) -> bool {
        v.wrapping_sub(LO) & !v & HI != 0
    }
    let mut chunks = b.chunks_exact(8);
    let mut high = 0u64;
    let mut bad = false;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_le_bytes(w);
        high |= v;
        bad |= has_zero(v) | has_zero(v ^ (LO * b'+' as u64)) | has_zero(v ^ (LO * b'#' as u64));
    }
    let mut high_tail = 0u8;
    for &x in chunks.remainder() {
        high_tail |= x;
        bad |= (x == 0) | (x == b'+') | (x == b'#');
    }
    (high & HI == 0 && high_tail < 0x80, bad)
}

/// Cursor over one complete frame (a `Bytes` owned by the decoder), handing out zero-copy slices of it.
pub struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(frame: &'a Bytes, start: usize) -> Reader<'a> {
        debug_assert!(start <= frame.len());
        Reader {
            frame,
            pos: start,
            end: frame.len(),
        }
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    #[inline(always)]
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed(
                "field runs past the end of the packet",
            ));
        }
        Ok(())
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        let b = self.frame[self.pos];
        self.pos += 1;
        Ok(b)
    }

    #[inline(always)]
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        let v = u16::from_be_bytes([self.frame[self.pos], self.frame[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }

    #[inline]
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        let b = &self.frame[self.pos..self.pos + 4];
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.pos += 4;
        Ok(v)
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.frame[self.pos..self.end])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(DecodeError::Malformed(
                "variable byte integer runs past the end of the packet",
            )),
        }
    }

    /// The next `n` bytes as a slice of the frame (no copy).
    #[inline(always)]
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        let b = self.frame.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything left in the frame (no copy).
    #[inline]
    pub fn rest(&mut self) -> Bytes {
        let b = if self.pos == self.end {
            Bytes::new()
        } else {
            self.frame.slice(self.pos..self.end)
        };
        self.pos = self.end;
        b
    }

    /// Two-byte length prefixed binary data.
    #[inline(always)]
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// Two-byte length prefixed UTF-8 string, checked against the MQTT UTF-8 rules.
    #[inline]
    pub fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        let s = ByteString::try_from(raw)
            .map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
        check_mqtt_str(&s)?;
        Ok(s)
    }

    /// Consume the next byte if it is 0 (an empty property block); false otherwise, consuming nothing.
    #[inline]
    pub fn skip_zero_byte(&mut self) -> bool {
        if self.pos < self.end && self.frame[self.pos] == 0 {
            self.pos += 1;
            return true;
        }
        false
    }

    /// Offset of the next unread byte in the frame.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// A PUBLISH topic name: the string rules plus no wildcards, checked in one pass over the bytes (hot path).
    /// An empty name is returned as is: whether it is allowed depends on a topic alias the caller checks.
    #[inline(always)]
    pub fn topic_name(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        let (ascii, bad) = scan_topic(&raw);
        if bad {
            return Err(if raw.contains(&0) {
                DecodeError::Malformed("UTF-8 string contains U+0000")
            } else {
                DecodeError::TopicNameInvalid("wildcard in topic name")
            });
        }
        if ascii {
            // All ASCII, hence valid UTF-8: skip the validator.
            // SAFETY: every byte is < 0x80, so `raw` is valid UTF-8.
            return Ok(unsafe { ByteString::from_bytes_unchecked(raw) });
        }
        ByteString::try_from(raw).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))
    }

    /// A reader over the next `n` bytes only (used for the property block); advances `self` past them.
    pub fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        self.need(n)?;
        let r = Reader {
            frame: self.frame,
            pos: self.pos,
            end: self.pos + n,
        };
        self.pos += n;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_spec_boundaries() {
        // Table 1.5.5 of the spec.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(v, bytes) in cases {
            assert_eq!(
                read_varint(bytes).unwrap(),
                Some((v, bytes.len())),
                "decode {v}"
            );
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(&out[..], bytes, "encode {v}");
            assert_eq!(varint_len(v), bytes.len());
        }
    }

    #[test]
    fn scan_topic_matches_bytewise_scan() {
        let bytewise = |b: &[u8]| {
            (
                b.iter().all(|&x| x < 0x80),
                b.iter().any(|&x| x == 0 || x == b'+' || x == b'#'),
            )
        };
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a/b".to_vec(),
            "caf\u{e9}/x".as_bytes().to_vec(),
        ];
        // Every special byte at every position of inputs spanning one to three words.
        for len in 1..=24 {
            for pos in 0..len {
                for special in [
                    0u8, b'+', b'#', 0x80, 0xFF, 0x2A, 0x2C, 0x22, 0x24, 0x01, 0x7F,
                ] {
                    let mut v = vec![b'a'; len];
                    v[pos] = special;
                    cases.push(v);
                }
            }
        }
        for c in cases {
            assert_eq!(scan_topic(&c), bytewise(&c), "{c:02x?}");
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_overlong() {
        assert!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
        assert!(read_varint(&[0x80, 0x00]).is_err());
        assert!(read_varint(&[0xFF, 0x80, 0x00]).is_err());
        assert_eq!(read_varint(&[0x80]).unwrap(), None);
        assert_eq!(read_varint(&[]).unwrap(), None);
    }
}
