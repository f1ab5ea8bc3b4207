//! TEMPORARY stand-in with the exact API of `coremq::codec` (Decoder::new_client, decode, encode,
//! encode_publish) so the load generator can be built and tested before branch `codec` lands.
//! It is deleted when `codec` is merged; nothing else in the crate refers to it except `mqtt.rs`'s import.
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;

pub struct Decoder {
    version: ProtocolVersion,
    max: u32,
}

impl Decoder {
    pub fn new_client(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Decoder {
            version,
            max: max_packet_size,
        }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            if i >= buf.len() {
                return Ok(None);
            }
            let b = buf[i];
            len |= ((b & 0x7f) as usize) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i > 4 {
                return Err(DecodeError::Malformed("remaining length"));
            }
        }
        if len + i > self.max as usize {
            return Err(DecodeError::PacketTooLarge {
                size: len + i,
                max: self.max,
            });
        }
        if buf.len() < i + len {
            return Ok(None);
        }
        let first = buf[0];
        let mut pkt = buf.split_to(i + len).freeze();
        pkt.advance(i);
        let v5 = self.version.is_v5();
        let need = |b: &Bytes, n: usize| {
            if b.remaining() < n {
                Err(DecodeError::Malformed("short"))
            } else {
                Ok(())
            }
        };
        let skip_props = |b: &mut Bytes| -> Result<(), DecodeError> {
            if !v5 || !b.has_remaining() {
                return Ok(());
            }
            let mut n = 0usize;
            let mut s = 0;
            loop {
                need(b, 1)?;
                let x = b.get_u8();
                n |= ((x & 0x7f) as usize) << s;
                s += 7;
                if x & 0x80 == 0 {
                    break;
                }
            }
            need(b, n)?;
            b.advance(n);
            Ok(())
        };
        let rc = |x: u8| reason(x);
        Ok(Some(match first >> 4 {
            2 => {
                need(&pkt, 2)?;
                let sp = pkt.get_u8() & 1 == 1;
                let code = pkt.get_u8();
                let reason = if v5 {
                    rc(code)
                } else {
                    match code {
                        0 => ReasonCode::Success,
                        1 => ReasonCode::UnsupportedProtocolVersion,
                        2 => ReasonCode::ClientIdentifierNotValid,
                        3 => ReasonCode::ServerUnavailable,
                        4 => ReasonCode::BadUserNameOrPassword,
                        _ => ReasonCode::NotAuthorized,
                    }
                };
                let mut properties = None;
                if v5 && pkt.has_remaining() {
                    // Only Receive Maximum (0x21) is needed by the load generator; other properties are skipped.
                    let mut props = pkt.clone();
                    skip_props(&mut pkt)?;
                    let _len = props.get_u8();
                    while props.remaining() > pkt.remaining() {
                        let id = props.get_u8();
                        let skip = match id {
                            0x21 => {
                                let v = props.get_u16();
                                properties = Some(Box::new(Properties {
                                    receive_maximum: Some(v),
                                    ..Default::default()
                                }));
                                0
                            }
                            0x11 | 0x27 => 4,
                            0x13 | 0x22 => 2,
                            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
                            0x26 => {
                                let a = props.get_u16() as usize;
                                props.advance(a);
                                props.get_u16() as usize
                            }
                            _ => props.get_u16() as usize,
                        };
                        props.advance(skip);
                    }
                }
                Packet::ConnAck(ConnAck {
                    session_present: sp,
                    reason,
                    properties,
                })
            }
            3 => {
                let qos = QoS::from_u8((first >> 1) & 3).ok_or(DecodeError::Malformed("qos"))?;
                need(&pkt, 2)?;
                let tl = pkt.get_u16() as usize;
                need(&pkt, tl)?;
                let topic = ByteString::try_from(pkt.split_to(tl))
                    .map_err(|_| DecodeError::Malformed("utf8"))?;
                let packet_id = if qos != QoS::AtMostOnce {
                    need(&pkt, 2)?;
                    pkt.get_u16()
                } else {
                    0
                };
                skip_props(&mut pkt)?;
                Packet::Publish(Publish {
                    dup: first & 8 != 0,
                    qos,
                    retain: first & 1 != 0,
                    topic,
                    packet_id,
                    properties: None,
                    payload: pkt,
                })
            }
            t @ 4..=7 => {
                need(&pkt, 2)?;
                let packet_id = pkt.get_u16();
                let reason = if pkt.has_remaining() {
                    rc(pkt.get_u8())
                } else {
                    ReasonCode::Success
                };
                let r = PubResp {
                    packet_id,
                    reason,
                    properties: None,
                };
                match t {
                    4 => Packet::PubAck(r),
                    5 => Packet::PubRec(r),
                    6 => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                }
            }
            9 => {
                need(&pkt, 2)?;
                let packet_id = pkt.get_u16();
                skip_props(&mut pkt)?;
                let reasons = pkt.iter().map(|&x| rc(x)).collect();
                Packet::SubAck(SubAck {
                    packet_id,
                    reasons,
                    properties: None,
                })
            }
            13 => Packet::PingResp,
            14 => {
                let reason = if pkt.has_remaining() {
                    rc(pkt.get_u8())
                } else {
                    ReasonCode::Success
                };
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: None,
                })
            }
            _ => return Err(DecodeError::Malformed("unexpected packet type")),
        }))
    }
}

fn reason(x: u8) -> ReasonCode {
    match x {
        0 => ReasonCode::Success,
        1 => ReasonCode::GrantedQoS1,
        2 => ReasonCode::GrantedQoS2,
        0x10 => ReasonCode::NoMatchingSubscribers,
        0x87 => ReasonCode::NotAuthorized,
        0x86 => ReasonCode::BadUserNameOrPassword,
        0x89 => ReasonCode::ServerBusy,
        0x8F => ReasonCode::TopicFilterInvalid,
        0x9E => ReasonCode::SharedSubscriptionsNotSupported,
        0x93 => ReasonCode::ReceiveMaximumExceeded,
        0x97 => ReasonCode::QuotaExceeded,
        _ => ReasonCode::UnspecifiedError,
    }
}

fn put_len(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

pub fn encode_publish(
    p: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode(&Packet::Publish(p.clone()), version, buf)
}

pub fn encode(p: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    let mut body = BytesMut::new();
    let first: u8 = match p {
        Packet::Connect(c) => {
            put_str(&mut body, b"MQTT");
            body.put_u8(version.level());
            let mut flags = if c.clean_start { 2 } else { 0 };
            if c.username.is_some() {
                flags |= 0x80;
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            if v5 {
                match c
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                {
                    Some(e) => {
                        body.put_u8(5);
                        body.put_u8(0x11);
                        body.put_u32(e);
                    }
                    None => body.put_u8(0),
                }
            }
            put_str(&mut body, c.client_id.as_bytes());
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(pw) = &c.password {
                put_str(&mut body, pw);
            }
            0x10
        }
        Packet::Publish(p) => {
            put_str(&mut body, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                body.put_u16(p.packet_id);
            }
            if v5 {
                body.put_u8(0);
            }
            body.put_slice(&p.payload);
            0x30 | (p.qos as u8) << 1 | if p.dup { 8 } else { 0 } | p.retain as u8
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            body.put_u16(r.packet_id);
            match p {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            body.put_u16(s.packet_id);
            if v5 {
                body.put_u8(0);
            }
            for f in &s.filters {
                put_str(&mut body, f.filter.as_bytes());
                body.put_u8(f.options.qos as u8);
            }
            0x82
        }
        Packet::PingReq => 0xC0,
        Packet::Disconnect(_) => 0xE0,
        _ => return Err(EncodeError::Invalid("shim: packet not supported")),
    };
    buf.put_u8(first);
    put_len(buf, body.len());
    buf.put_slice(&body);
    Ok(())
}
