//! WsLayer tests. Client frames and the client handshake come from `tungstenite`, an independent implementation,
//! so the layer is checked against a real client and not only against itself.

use std::collections::VecDeque;
use std::io::{self, Cursor, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use tungstenite::protocol::frame::coding::{Control as TControl, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use super::*;

const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn layer_with(path: &str, max_frame: usize) -> WsLayer {
    WsLayer::new(Arc::new(WsConfig {
        path: PathRule::from_config(path),
        max_frame,
    }))
}

fn layer() -> WsLayer {
    layer_with("/mqtt", 1 << 20)
}

fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Feeds `wire` in one read; returns (result, app bytes, wire answer).
fn feed(l: &mut WsLayer, wire: &[u8]) -> (Result<(), LayerError>, Vec<u8>, Vec<u8>) {
    let mut app = BytesMut::new();
    let mut out = BytesMut::new();
    let r = l.read_wire(wire, &mut app, &mut out);
    (r, app.to_vec(), out.to_vec())
}

fn status_of(answer: &[u8]) -> u16 {
    let text = std::str::from_utf8(answer).unwrap();
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// An open layer (handshake done, answer discarded).
fn open_layer(max_frame: usize) -> WsLayer {
    let mut l = layer_with("/mqtt", max_frame);
    let (r, _, out) = feed(&mut l, request("/mqtt", "").as_bytes());
    r.unwrap();
    assert_eq!(status_of(&out), 101);
    l
}

/// A client frame as tungstenite encodes it, masked unless `mask` is None.
fn client_frame(opcode: OpCode, payload: &[u8], fin: bool, mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask,
        ..FrameHeader::default()
    };
    let f = Frame::from_payload(header, payload.to_vec());
    let mut out = Vec::new();
    f.format(&mut out).unwrap();
    out
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(
        OpCode::Data(Data::Binary),
        payload,
        true,
        Some([1, 2, 3, 4]),
    )
}

/// Server frames in `wire`, parsed by tungstenite: (header, payload).
fn server_frames(wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut cur = Cursor::new(wire);
    let mut frames = Vec::new();
    while (cur.position() as usize) < wire.len() {
        let (h, len) = FrameHeader::parse(&mut cur).unwrap().expect("whole header");
        let at = cur.position() as usize;
        frames.push((h, wire[at..at + len as usize].to_vec()));
        cur.set_position((at + len as usize) as u64);
    }
    frames
}

fn close_code(frame: &(FrameHeader, Vec<u8>)) -> u16 {
    assert_eq!(frame.0.opcode, OpCode::Control(TControl::Close));
    u16::from_be_bytes([frame.1[0], frame.1[1]])
}

// ---- handshake ----

#[test]
fn rfc_sample_key_gives_rfc_accept() {
    assert_eq!(accept_key(SAMPLE_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn good_upgrade_is_answered_101_with_accept_and_mqtt() {
    let mut l = layer();
    let (r, app, out) = feed(
        &mut l,
        request("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n").as_bytes(),
    );
    r.unwrap();
    assert!(app.is_empty());
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(
        text.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
        "mqtt is preferred: {text}"
    );
    assert!(text.ends_with("\r\n\r\n"));
    assert!(l.established());
}

#[test]
fn subprotocol_choice() {
    let answer = |extra: &str| {
        let mut l = layer();
        let (r, _, out) = feed(&mut l, request("/mqtt", extra).as_bytes());
        (r.is_ok(), String::from_utf8(out).unwrap())
    };
    let (ok, t) = answer("Sec-WebSocket-Protocol: mqttv3.1\r\n");
    assert!(
        ok && t.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        "{t}"
    );
    let (ok, t) = answer("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mqtt\r\n");
    assert!(ok && t.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{t}");
    let (ok, t) = answer("");
    assert!(
        ok && !t.contains("Sec-WebSocket-Protocol"),
        "none offered, none answered: {t}"
    );
    let (ok, t) = answer("Sec-WebSocket-Protocol: chat, superchat\r\n");
    assert!(!ok && t.starts_with("HTTP/1.1 400 "), "{t}");
}

#[test]
fn connection_and_upgrade_are_token_lists_case_insensitive() {
    let req = format!(
        "GET /mqtt HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
         sec-websocket-key: {SAMPLE_KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    let mut l = layer();
    let (r, _, out) = feed(&mut l, req.as_bytes());
    r.unwrap();
    assert_eq!(status_of(&out), 101);
}

#[test]
fn wrong_path_is_404_and_query_is_ignored() {
    let mut l = layer();
    let (r, _, out) = feed(&mut l, request("/", "").as_bytes());
    assert!(matches!(r, Err(LayerError::Handshake(_))));
    assert_eq!(status_of(&out), 404);
    assert!(!l.established());
    // Refused for good: later bytes are an error too.
    assert!(feed(&mut l, b"more").0.is_err());

    let mut l = layer();
    let (r, _, out) = feed(&mut l, request("/mqtt?client=1", "").as_bytes());
    r.unwrap();
    assert_eq!(status_of(&out), 101);

    let mut l = layer_with("*", 1024);
    let (r, _, out) = feed(&mut l, request("/anything/at/all", "").as_bytes());
    r.unwrap();
    assert_eq!(status_of(&out), 101);
}

#[test]
fn refusals_carry_their_status() {
    let cases: Vec<(String, u16)> = vec![
        (
            request("/mqtt", "").replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), ""),
            400,
        ),
        (
            request("/mqtt", "").replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            request("/mqtt", "").replace("Sec-WebSocket-Version: 13\r\n", ""),
            426,
        ),
        (request("/mqtt", "").replace("GET", "POST"), 405),
        (
            request("/mqtt", "").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (
            request("/mqtt", "").replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
        ),
        (
            request("/mqtt", "").replace("Host: localhost:8080\r\n", ""),
            400,
        ),
        (request("/mqtt", "").replace(SAMPLE_KEY, "c2hvcnQ="), 400),
        ("GET /mqtt HTTP/1.1\r\nHost x\r\n\r\n".to_string(), 400),
    ];
    for (req, want) in cases {
        let mut l = layer();
        let (r, app, out) = feed(&mut l, req.as_bytes());
        assert!(matches!(r, Err(LayerError::Handshake(_))), "{req}");
        assert!(app.is_empty());
        assert_eq!(status_of(&out), want, "{req}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Connection: close\r\n"), "{text}");
        if want == 426 {
            assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
        }
    }
}

#[test]
fn oversized_head_is_431_without_buffering_past_the_bound() {
    let mut l = layer();
    let mut big = request("/mqtt", "").into_bytes();
    big.truncate(big.len() - 2); // no blank line yet
    let filler = format!("X-Filler: {}\r\n", "a".repeat(100));
    let mut sent = 0;
    let mut result = Ok(());
    let mut out = BytesMut::new();
    while sent < 3 * MAX_HEAD && result.is_ok() {
        let mut app = BytesMut::new();
        let chunk = if sent == 0 {
            &big[..]
        } else {
            filler.as_bytes()
        };
        result = l.read_wire(chunk, &mut app, &mut out);
        sent += chunk.len();
        assert!(l.head.len() <= MAX_HEAD);
    }
    assert!(matches!(result, Err(LayerError::Handshake(_))));
    assert!(sent <= MAX_HEAD + filler.len() + big.len());
    assert_eq!(status_of(&out), 431);
    assert_eq!(l.head.capacity(), 0);
}

#[test]
fn too_many_headers_is_431() {
    let extra: String = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut l = layer();
    let (r, _, out) = feed(&mut l, request("/mqtt", &extra).as_bytes());
    assert!(r.is_err());
    assert_eq!(status_of(&out), 431);
}

#[test]
fn head_split_into_single_bytes_and_first_frame_in_the_same_read() {
    let mut wire = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    wire.extend(binary(b"\x10\x0c\x00\x04MQTT"));
    let mut l = layer();
    let mut app = BytesMut::new();
    let mut out = BytesMut::new();
    for b in &wire {
        l.read_wire(std::slice::from_ref(b), &mut app, &mut out)
            .unwrap();
    }
    assert_eq!(status_of(&out), 101);
    assert_eq!(&app[..], b"\x10\x0c\x00\x04MQTT");

    // The frame right behind the head in one read.
    let mut l = layer();
    let (r, app, _) = feed(&mut l, &wire);
    r.unwrap();
    assert_eq!(app, b"\x10\x0c\x00\x04MQTT");
}

// ---- tungstenite as the client, over an in-memory pipe ----

/// A byte pipe whose far end is a WsLayer: what the client writes goes through `read_wire`; what the layer
/// writes is there to read.
struct Pipe {
    layer: WsLayer,
    app: BytesMut,
    to_client: VecDeque<u8>,
}

impl Pipe {
    fn new(layer: WsLayer) -> Self {
        Pipe {
            layer,
            app: BytesMut::new(),
            to_client: VecDeque::new(),
        }
    }

    fn server_send(&mut self, app: &[u8]) {
        let mut out = BytesMut::new();
        self.layer.write_app(app, &mut out).unwrap();
        self.to_client.extend(&out[..]);
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_client.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.to_client.len());
        for (b, v) in buf.iter_mut().zip(self.to_client.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = BytesMut::new();
        self.layer
            .read_wire(buf, &mut self.app, &mut out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.to_client.extend(&out[..]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn tungstenite_client_session() {
    use tungstenite::{client::ClientRequestBuilder, Message};
    let req =
        ClientRequestBuilder::new("ws://localhost/mqtt".parse().unwrap()).with_sub_protocol("mqtt");
    let (mut ws, resp) = tungstenite::client(req, Pipe::new(layer())).expect("handshake accepted");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");

    ws.send(Message::Binary(b"\x10\x0c\x00\x04MQTT".to_vec()))
        .unwrap();
    ws.send(Message::Binary(vec![7; 70_000])).unwrap(); // 64-bit length
    let mut want = b"\x10\x0c\x00\x04MQTT".to_vec();
    want.extend(vec![7; 70_000]);
    assert_eq!(&ws.get_ref().app[..], &want[..]);

    ws.get_mut().server_send(b"\x20\x02\x00\x00");
    ws.get_mut().server_send(&[9; 300]); // 16-bit length
    assert_eq!(
        ws.read().unwrap(),
        Message::Binary(b"\x20\x02\x00\x00".to_vec())
    );
    assert_eq!(ws.read().unwrap(), Message::Binary(vec![9; 300]));

    // tungstenite answers our close; the layer sees the peer's close.
    ws.send(Message::Ping(b"hi".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"hi".to_vec()));
    ws.close(None).unwrap();
    let _ = ws.flush();
    assert!(ws.get_ref().layer.peer_closed());
}

#[test]
fn tungstenite_client_without_subprotocol_gets_none() {
    let (_ws, resp) = tungstenite::client("ws://localhost/mqtt", Pipe::new(layer())).unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}

// ---- frames ----

#[test]
fn unmasked_client_frame_is_closed_1002() {
    let mut l = open_layer(1024);
    let (r, app, out) = feed(
        &mut l,
        &client_frame(OpCode::Data(Data::Binary), b"abc", true, None),
    );
    assert!(matches!(r, Err(LayerError::Protocol(_))));
    assert!(app.is_empty());
    assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_PROTOCOL_ERROR);
    assert!(!l.established());
}

#[test]
fn text_frame_is_closed_1003() {
    let mut l = open_layer(1024);
    let frame = client_frame(OpCode::Data(Data::Text), b"hello", true, Some([9, 9, 9, 9]));
    let (r, _, out) = feed(&mut l, &frame);
    assert!(r.is_err());
    assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_UNSUPPORTED_DATA);
}

#[test]
fn fragmented_message_flows_and_bad_continuations_are_1002() {
    let mask = Some([0xde, 0xad, 0xbe, 0xef]);
    let mut wire = client_frame(OpCode::Data(Data::Binary), b"first-", false, mask);
    wire.extend(client_frame(
        OpCode::Control(TControl::Ping),
        b"p",
        true,
        mask,
    )); // control between fragments
    wire.extend(client_frame(
        OpCode::Data(Data::Continue),
        b"second-",
        false,
        mask,
    ));
    wire.extend(client_frame(
        OpCode::Data(Data::Continue),
        b"last",
        true,
        mask,
    ));
    let mut l = open_layer(1024);
    let (r, app, out) = feed(&mut l, &wire);
    r.unwrap();
    assert_eq!(app, b"first-second-last");
    let frames = server_frames(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.opcode, OpCode::Control(TControl::Pong));

    let mut l = open_layer(1024);
    let (r, _, out) = feed(
        &mut l,
        &client_frame(OpCode::Data(Data::Continue), b"x", true, mask),
    );
    assert!(r.is_err());
    assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_PROTOCOL_ERROR);

    let mut l = open_layer(1024);
    let mut wire = client_frame(OpCode::Data(Data::Binary), b"a", false, mask);
    wire.extend(client_frame(OpCode::Data(Data::Binary), b"b", true, mask));
    let (r, app, out) = feed(&mut l, &wire);
    assert!(r.is_err());
    assert_eq!(app, b"a");
    assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_PROTOCOL_ERROR);
}

#[test]
fn ping_gets_pong_with_same_payload_and_pong_is_ignored() {
    let mut l = open_layer(1024);
    let mask = Some([5, 6, 7, 8]);
    let (r, app, out) = feed(
        &mut l,
        &client_frame(OpCode::Control(TControl::Ping), b"12345", true, mask),
    );
    r.unwrap();
    assert!(app.is_empty());
    let frames = server_frames(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.opcode, OpCode::Control(TControl::Pong));
    assert!(frames[0].0.mask.is_none(), "server frames are not masked");
    assert_eq!(frames[0].1, b"12345");

    let (r, app, out) = feed(
        &mut l,
        &client_frame(OpCode::Control(TControl::Pong), b"zz", true, mask),
    );
    r.unwrap();
    assert!(app.is_empty() && out.is_empty());
    assert_eq!(
        l.frames.control.capacity(),
        0,
        "control payload buffer freed"
    );
}

#[test]
fn close_is_answered_and_ends_the_stream() {
    let mut l = open_layer(1024);
    let mut payload = 1001u16.to_be_bytes().to_vec();
    payload.extend(b"going away");
    let mut wire = client_frame(
        OpCode::Control(TControl::Close),
        &payload,
        true,
        Some([1, 1, 1, 1]),
    );
    wire.extend(binary(b"after close"));
    let (r, app, out) = feed(&mut l, &wire);
    r.unwrap();
    assert!(app.is_empty(), "bytes after a close frame are ignored");
    assert!(l.peer_closed());
    let frames = server_frames(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(close_code(&frames[0]), 1001, "status echoed");
    // Nothing may follow our close.
    let mut out = BytesMut::new();
    assert!(l.write_app(b"x", &mut out).is_err());
    l.close(&mut out);
    assert!(out.is_empty());
}

#[test]
fn bad_close_payloads_are_protocol_errors() {
    for (payload, want) in [
        (vec![3u8], CLOSE_PROTOCOL_ERROR),
        (1005u16.to_be_bytes().to_vec(), CLOSE_PROTOCOL_ERROR),
        ([&1000u16.to_be_bytes()[..], &[0xff, 0xfe]].concat(), 1007),
    ] {
        let mut l = open_layer(1024);
        let (r, _, out) = feed(
            &mut l,
            &client_frame(
                OpCode::Control(TControl::Close),
                &payload,
                true,
                Some([0; 4]),
            ),
        );
        assert!(r.is_err(), "{payload:?}");
        assert_eq!(close_code(&server_frames(&out)[0]), want);
    }
}

#[test]
fn our_close_is_1000_or_the_given_code() {
    let mut l = open_layer(1024);
    let mut out = BytesMut::new();
    l.close(&mut out);
    let frames = server_frames(&out);
    assert_eq!(close_code(&frames[0]), CLOSE_NORMAL);
    assert!(frames[0].0.mask.is_none());

    let mut l = open_layer(1024);
    let mut out = BytesMut::new();
    l.close_with(1011, &"é".repeat(100), &mut out);
    let frames = server_frames(&out);
    assert_eq!(close_code(&frames[0]), 1011);
    assert!(frames[0].1.len() <= 125);
    assert!(
        std::str::from_utf8(&frames[0].1[2..]).is_ok(),
        "reason cut on a char boundary"
    );
}

#[test]
fn oversized_frame_is_closed_1009_before_its_payload() {
    let mut l = open_layer(1000);
    let frame = binary(&[0u8; 1001]);
    // Only the header is needed to refuse it.
    let (r, app, out) = feed(&mut l, &frame[..8]);
    assert!(r.is_err());
    assert!(app.is_empty());
    assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_TOO_BIG);

    let mut l = open_layer(1000);
    let (r, app, _) = feed(&mut l, &binary(&[1u8; 1000]));
    r.unwrap();
    assert_eq!(app.len(), 1000);
}

#[test]
fn length_encodings_16_and_64_bit_and_payload_streamed_as_it_arrives() {
    for len in [125usize, 126, 65_535, 65_536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let frame = binary(&payload);
        let mut l = open_layer(1 << 20);
        // Half the frame: the payload bytes so far are already out, unmasked.
        let half = frame.len() / 2;
        let (r, app, _) = feed(&mut l, &frame[..half]);
        r.unwrap();
        let header = frame.len() - len;
        assert_eq!(app, &payload[..half - header], "len {len}");
        let (r, rest, _) = feed(&mut l, &frame[half..]);
        r.unwrap();
        assert_eq!([app, rest].concat(), payload, "len {len}");
    }
}

#[test]
fn write_app_is_one_unmasked_binary_frame_per_call() {
    for len in [1usize, 125, 126, 65_535, 65_536, 100_000] {
        let mut l = open_layer(1024);
        let payload = vec![0xab; len];
        let mut out = BytesMut::new();
        l.write_app(&payload, &mut out).unwrap();
        let frames = server_frames(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.opcode, OpCode::Data(Data::Binary));
        assert!(frames[0].0.is_final && frames[0].0.mask.is_none());
        assert_eq!(frames[0].1, payload);
    }
    let mut l = layer();
    assert!(
        l.write_app(b"x", &mut BytesMut::new()).is_err(),
        "not before the handshake"
    );
}

#[test]
fn reserved_bits_and_opcodes_are_1002() {
    let mut rsv = binary(b"x");
    rsv[0] |= 0x40;
    let mut op = binary(b"x");
    op[0] = 0x83;
    let long_ping = client_frame(
        OpCode::Control(TControl::Ping),
        &[0; 126],
        true,
        Some([0; 4]),
    );
    for wire in [rsv, op, long_ping] {
        let mut l = open_layer(1024);
        let (r, _, out) = feed(&mut l, &wire);
        assert!(r.is_err());
        assert_eq!(close_code(&server_frames(&out)[0]), CLOSE_PROTOCOL_ERROR);
    }
}

#[test]
fn idle_layer_is_small_and_holds_no_buffer() {
    let mut l = open_layer(1024);
    feed(&mut l, &binary(b"\xc0\x00")).0.unwrap();
    l.shrink();
    assert_eq!(l.head.capacity(), 0);
    assert_eq!(l.frames.control.capacity(), 0);
    let size = std::mem::size_of::<WsLayer>();
    assert!(size <= 128, "WsLayer is {size} bytes");
    eprintln!("WsLayer: {size} bytes inline, no heap buffers when idle");
}

#[test]
fn factory_uses_listener_path() {
    let mut l = crate::config::ListenerConfig::plain("127.0.0.1:8080".parse().unwrap());
    l.path = "/ws".into();
    let f = ws_factory(&l, 4096);
    assert_eq!(f.config().path, PathRule::Exact("/ws".into()));
    assert_eq!(f.config().max_frame, 4096);
    let mut layer = f.new_layer().unwrap();
    let mut out = BytesMut::new();
    let r = layer.read_wire(
        request("/mqtt", "").as_bytes(),
        &mut BytesMut::new(),
        &mut out,
    );
    assert!(r.is_err());
    assert_eq!(status_of(&out), 404);
}

// ---- random chunking ----

/// A client's framed stream of `data`: split into messages and fragments at `cuts`, with pings in between.
fn framed(data: &[u8], cuts: &[(usize, u8)], mask: [u8; 4]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut at = 0;
    let mut in_message = false;
    for &(len, kind) in cuts {
        if at >= data.len() {
            break;
        }
        let end = (at + len).min(data.len());
        let fin = kind % 3 != 0 || end == data.len();
        let op = if in_message {
            Data::Continue
        } else {
            Data::Binary
        };
        wire.extend(client_frame(
            OpCode::Data(op),
            &data[at..end],
            fin,
            Some(mask),
        ));
        if kind % 5 == 0 {
            wire.extend(client_frame(
                OpCode::Control(TControl::Ping),
                &[kind],
                true,
                Some(mask),
            ));
        }
        in_message = !fin;
        at = end;
    }
    if at < data.len() || in_message {
        let op = if in_message {
            Data::Continue
        } else {
            Data::Binary
        };
        wire.extend(client_frame(
            OpCode::Data(op),
            &data[at..],
            true,
            Some(mask),
        ));
    }
    wire
}

proptest! {
    #[test]
    fn random_chunking_gives_the_same_mqtt_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..4000),
        cuts in proptest::collection::vec((0usize..600, any::<u8>()), 0..20),
        mask in any::<[u8; 4]>(),
        reads in proptest::collection::vec(1usize..300, 1..50),
    ) {
        let mut wire = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
        wire.extend(framed(&data, &cuts, mask));
        let mut l = layer();
        let mut app = BytesMut::new();
        let mut out = BytesMut::new();
        let mut at = 0;
        let mut i = 0;
        while at < wire.len() {
            let n = reads[i % reads.len()].min(wire.len() - at);
            l.read_wire(&wire[at..at + n], &mut app, &mut out).unwrap();
            at += n;
            i += 1;
        }
        prop_assert_eq!(&app[..], &data[..]);
        prop_assert!(l.established() && !l.peer_closed());
    }
}
