//! A connection the broker closes must let the client read why: the DISCONNECT (or CONNACK refusal) with its
//! reason code arrives, not a reset, even when the client keeps sending after the broker decided to close.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Broker, Raw};
use coremq::codec::{self, Packet, ProtocolVersion, ReasonCode};

#[test]
fn the_reason_code_reaches_a_client_that_keeps_sending() {
    let b = Broker::start(&[]);
    for round in 0..5 {
        let (mut c, _) = Raw::connect(
            b.addr,
            Raw::connect_packet(&format!("closer-{round}"), true, 30, ProtocolVersion::V5),
        );
        // A second CONNECT is a protocol error; the PINGREQs behind it are still arriving when the broker closes.
        let mut bytes = bytes::BytesMut::new();
        let again = Raw::connect_packet("again", true, 30, ProtocolVersion::V5);
        codec::encode(
            &Packet::Connect(Box::new(again)),
            ProtocolVersion::V5,
            &mut bytes,
        )
        .unwrap();
        let mut w = c.stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&bytes)?;
            let ping = [0xC0u8, 0x00];
            let burst: Vec<u8> = ping.iter().copied().cycle().take(256 * 1024).collect();
            for _ in 0..4 {
                w.write_all(&burst)?;
            }
            Ok::<(), std::io::Error>(())
        });
        c.set_timeout(Duration::from_secs(10));
        let mut reason = None;
        while let Some(p) = c.recv() {
            match p {
                Packet::PingResp => continue,
                Packet::Disconnect(d) => {
                    reason = Some(d.reason);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            reason,
            Some(ReasonCode::ProtocolError),
            "round {round}: the client must read the DISCONNECT's reason"
        );
        // What the client still sent was drained, not answered with a reset: its writes went through and its
        // read ends in an orderly end of stream.
        let wrote = writer.join().unwrap();
        assert!(
            wrote.is_ok(),
            "round {round}: the client's writes were reset: {wrote:?}"
        );
        let mut rest = [0u8; 1024];
        let end = c.stream.read(&mut rest);
        assert!(
            matches!(end, Ok(0)),
            "round {round}: expected end of stream, got {end:?}"
        );
    }
}
