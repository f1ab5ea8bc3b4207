//! WebSocket frames (RFC 6455 §5), server side: an incremental reader of client frames that unmasks payload bytes
//! as they arrive (only a partial header and a control frame's payload, at most 125 bytes, are ever buffered), and
//! writers of unmasked server frames.

use bytes::{BufMut, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A control frame's payload is at most this long (§5.5).
const MAX_CONTROL: usize = 125;
/// 2 bytes, a 64-bit extended length and a mask.
const MAX_HEADER: usize = 14;

/// The peer broke the framing rules: close with `code`, `why` for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub why: String,
}

fn violation(code: u16, why: impl Into<String>) -> Violation {
    Violation {
        code,
        why: why.into(),
    }
}

/// What a control frame asked for, once complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The peer closed, with its status code if it gave one.
    Close(Option<u16>),
}

/// The client frame being read: a header being collected, then its payload.
#[derive(Debug)]
pub struct FrameReader {
    max_frame: u64,
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The whole header's length, known once its first two bytes are.
    header_need: u8,
    /// A header is complete and `remaining` payload bytes of the frame are still to come.
    in_payload: bool,
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes of this frame seen so far, mod 4: where in the mask the next byte is.
    mask_offset: u8,
    remaining: u64,
    /// A fragmented binary message is open: the next data frame must be a continuation.
    in_message: bool,
    /// The payload of the control frame being read (empty, no allocation, otherwise).
    pub(super) control: Vec<u8>,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            max_frame: max_frame as u64,
            header: [0; MAX_HEADER],
            header_len: 0,
            header_need: 2,
            in_payload: false,
            opcode: 0,
            fin: false,
            mask: [0; 4],
            mask_offset: 0,
            remaining: 0,
            in_message: false,
            control: Vec::new(),
        }
    }

    /// Reads client frames from `input`, appending binary payload to `app`. Stops after the first complete
    /// control frame and returns it with how much of `input` it consumed; otherwise consumes all of `input`.
    pub fn read(
        &mut self,
        mut input: &[u8],
        app: &mut BytesMut,
    ) -> Result<(usize, Option<Control>), Violation> {
        let total = input.len();
        while !input.is_empty() {
            if !self.in_payload {
                let used = self.read_header(input)?;
                input = &input[used..];
                if !self.in_payload {
                    break; // header still partial, all input taken
                }
            } else {
                let n = (input.len() as u64).min(self.remaining) as usize;
                let chunk = &input[..n];
                if self.is_control() {
                    let start = self.control.len();
                    self.control.extend_from_slice(chunk);
                    unmask(&mut self.control[start..], self.mask, self.mask_offset);
                } else {
                    let start = app.len();
                    app.extend_from_slice(chunk);
                    unmask(&mut app[start..], self.mask, self.mask_offset);
                }
                self.mask_offset = ((self.mask_offset as usize + n) % 4) as u8;
                self.remaining -= n as u64;
                input = &input[n..];
            }
            if self.in_payload && self.remaining == 0 {
                if let Some(c) = self.finish_frame()? {
                    return Ok((total - input.len(), Some(c)));
                }
            }
        }
        Ok((total, None))
    }

    /// No partial frame is buffered: a control frame's payload buffer can be freed.
    pub fn shrink(&mut self) {
        if self.control.is_empty() {
            self.control = Vec::new();
        }
    }

    fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Takes header bytes from `input`; once the header is complete, checks it and starts the payload.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let mut used = 0;
        if self.header_len < 2 {
            used = self.take_header(input, 2);
            if self.header_len < 2 {
                return Ok(used);
            }
            self.header_need = self.check_first_two()? as u8;
        }
        used += self.take_header(&input[used..], self.header_need as usize);
        if (self.header_len as usize) < self.header_need as usize {
            return Ok(used);
        }
        self.start_payload()?;
        Ok(used)
    }

    /// Copies header bytes until the header holds `need` bytes; returns how many were taken.
    fn take_header(&mut self, input: &[u8], need: usize) -> usize {
        let have = self.header_len as usize;
        let take = need.saturating_sub(have).min(input.len());
        self.header[have..have + take].copy_from_slice(&input[..take]);
        self.header_len += take as u8;
        take
    }

    /// Checks the first two header bytes; returns the whole header's length.
    fn check_first_two(&mut self) -> Result<usize, Violation> {
        let (b0, b1) = (self.header[0], self.header[1]);
        if b0 & 0x70 != 0 {
            return Err(violation(
                CLOSE_PROTOCOL_ERROR,
                "reserved frame bits set (no extension was negotiated)",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let len7 = b1 & 0x7F;
        match opcode {
            OP_TEXT => {
                return Err(violation(
                    CLOSE_UNSUPPORTED_DATA,
                    "text frame: MQTT travels in binary frames",
                ))
            }
            OP_BINARY if self.in_message => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "new binary frame inside a fragmented message",
                ))
            }
            OP_CONTINUATION if !self.in_message => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    "continuation frame with no message to continue",
                ))
            }
            OP_BINARY | OP_CONTINUATION => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(violation(CLOSE_PROTOCOL_ERROR, "fragmented control frame"));
                }
                if len7 as usize > MAX_CONTROL {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "control frame longer than 125 bytes",
                    ));
                }
            }
            other => {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    format!("unknown frame opcode {other:#x}"),
                ))
            }
        }
        if b1 & 0x80 == 0 {
            return Err(violation(CLOSE_PROTOCOL_ERROR, "unmasked client frame"));
        }
        self.fin = fin;
        self.opcode = opcode;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Ok(2 + extended + 4)
    }

    fn start_payload(&mut self) -> Result<(), Violation> {
        let h = &self.header;
        let (len, mask_at) = match h[1] & 0x7F {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => {
                let len = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "64-bit frame length with the top bit set",
                    ));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if len > self.max_frame {
            return Err(violation(
                CLOSE_TOO_BIG,
                format!("frame of {len} bytes, at most {} allowed", self.max_frame),
            ));
        }
        self.mask.copy_from_slice(&h[mask_at..mask_at + 4]);
        self.mask_offset = 0;
        self.remaining = len;
        self.header_len = 0;
        self.in_payload = true;
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<Option<Control>, Violation> {
        self.in_payload = false;
        match self.opcode {
            OP_BINARY | OP_CONTINUATION => {
                self.in_message = !self.fin;
                Ok(None)
            }
            OP_PING => Ok(Some(Control::Ping(std::mem::take(&mut self.control)))),
            OP_PONG => {
                self.control = Vec::new();
                Ok(None)
            }
            OP_CLOSE => {
                let payload = std::mem::take(&mut self.control);
                parse_close(&payload).map(|code| Some(Control::Close(code)))
            }
            _ => unreachable!("opcode checked with the header"),
        }
    }
}

/// A close frame's payload: empty, or a valid status code and a UTF-8 reason (§5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(
            CLOSE_PROTOCOL_ERROR,
            "close frame with a 1-byte payload",
        )),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(violation(
                    CLOSE_PROTOCOL_ERROR,
                    format!("close status {code} may not be sent"),
                ));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    CLOSE_INVALID_PAYLOAD,
                    "close reason is not UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

/// XORs `buf` with the mask, starting at `offset` within it.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: u8) {
    let mut m = mask;
    m.rotate_left(offset as usize);
    let word = u32::from_ne_bytes(m);
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(m) {
        *b ^= k;
    }
}

/// One unmasked, final server frame.
pub fn write_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
}

/// A close frame with `code` and as much of `reason` as fits a control frame.
pub fn write_close(out: &mut BytesMut, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, OP_CLOSE, &payload[..2 + end]);
}
