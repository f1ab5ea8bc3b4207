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

    #[inline]
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

    #[inline]
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
    #[inline]
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
    #[inline]
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
    fn varint_rejects_five_bytes_and_overlong() {
        assert!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
        assert!(read_varint(&[0x80, 0x00]).is_err());
        assert!(read_varint(&[0xFF, 0x80, 0x00]).is_err());
        assert_eq!(read_varint(&[0x80]).unwrap(), None);
        assert_eq!(read_varint(&[]).unwrap(), None);
    }
}
