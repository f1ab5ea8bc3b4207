//! Decoding a frame's body back into a record.

use super::*;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        if self.buf.len() - self.pos < n {
            return Err(BodyError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BodyError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, BodyError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, BodyError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<&'a str, BodyError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| BodyError::BadUtf8)
    }
    fn bytes(&mut self) -> Result<&'a [u8], BodyError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn bool(&mut self) -> Result<bool, BodyError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BodyError::BadValue),
        }
    }
}

/// Decodes a body.
pub(crate) fn decode_body(kind: u8, body: &[u8]) -> Result<Record<'_>, BodyError> {
    use kind::*;
    let mut r = Reader { buf: body, pos: 0 };
    let rec = match kind {
        SESSION_UPSERT => Record::SessionUpsert {
            client_id: r.str()?,
            protocol_level: r.u8()?,
            expiry_secs: r.u32()?,
            clean: r.bool()?,
            disconnected_at: r.u64()?,
        },
        SESSION_DELETE => Record::SessionDelete {
            client_id: r.str()?,
        },
        SUB_ADD => Record::SubAdd {
            client_id: r.str()?,
            filter: r.str()?,
            options: r.u8()?,
            subscription_id: r.u32()?,
        },
        SUB_REMOVE => Record::SubRemove {
            client_id: r.str()?,
            filter: r.str()?,
        },
        MESSAGE | MESSAGE_EXPIRING => {
            let msg_id = r.u64()?;
            let topic = r.str()?;
            let qos = r.u8()?;
            if qos > 2 {
                return Err(BodyError::BadValue);
            }
            let retain = r.bool()?;
            let properties = r.bytes()?;
            let payload = r.bytes()?;
            let expires_unix = if kind == MESSAGE_EXPIRING {
                // 0 would re-encode as a plain MESSAGE: never written, so not accepted.
                match r.u64()? {
                    0 => return Err(BodyError::BadValue),
                    t => t,
                }
            } else {
                0
            };
            Record::Message {
                msg_id,
                topic,
                qos,
                retain,
                payload,
                properties,
                expires_unix,
            }
        }
        ENQUEUE => Record::Enqueue {
            client_id: r.str()?,
            msg_id: r.u64()?,
            packet_id: r.u16()?,
        },
        DELIVERY => Record::Delivery {
            client_id: r.str()?,
            msg_id: r.u64()?,
            packet_id: r.u16()?,
            state: DeliveryState::from_u8(r.u8()?).ok_or(BodyError::BadValue)?,
        },
        ACK => Record::Ack {
            client_id: r.str()?,
            msg_id: r.u64()?,
        },
        QOS2_IN_PENDING => Record::Qos2InPending {
            client_id: r.str()?,
            packet_id: r.u16()?,
        },
        QOS2_IN_RELEASED => Record::Qos2InReleased {
            client_id: r.str()?,
            packet_id: r.u16()?,
        },
        RETAINED_SET => Record::RetainedSet {
            topic: r.str()?,
            msg_id: r.u64()?,
        },
        RETAINED_CLEAR => Record::RetainedClear { topic: r.str()? },
        COMMIT => Record::Commit { group: r.u64()? },
        WILL_PENDING => {
            let client_id = r.str()?;
            let due_unix = r.u64()?;
            let topic = r.str()?;
            let qos = r.u8()?;
            if qos > 2 {
                return Err(BodyError::BadValue);
            }
            let retain = r.bool()?;
            let properties = r.bytes()?;
            let payload = r.bytes()?;
            Record::WillPending {
                client_id,
                due_unix,
                topic,
                qos,
                retain,
                payload,
                properties,
            }
        }
        WILL_CLEARED => Record::WillCleared {
            client_id: r.str()?,
        },
        k => return Err(BodyError::UnknownKind(k)),
    };
    if r.pos != body.len() {
        return Err(BodyError::TrailingBytes);
    }
    Ok(rec)
}
