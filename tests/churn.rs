//! Connect/subscribe/disconnect churn: the broker's memory must come back to where it was. Guards against task
//! and buffer leaks (glommio's open report #636 is about connection tasks never being freed; coremq spawns no
//! task per connection, and this test keeps it honest).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common::Broker;
use coremq::codec::{
    self, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};

const THREADS: usize = 8;

/// Connect from a given loopback source address. The port is chosen at connect time (IP_BIND_ADDRESS_NO_PORT),
/// knowing the destination; a transient EAGAIN (no free 4-tuple this instant) is retried a bounded number of times.
fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
        match sock.connect(&addr.into()) {
            Ok(()) => return sock.into(),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::EADDRNOTAVAIL)
                ) =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("no free local port from {source} after 100 tries");
}

/// One cycle: CONNECT, SUBSCRIBE, DISCONNECT, then close with an RST (SO_LINGER 0). Closing first with an RST
/// leaves no TIME-WAIT on either side, so 50,000 cycles do not exhaust loopback 4-tuples.
fn cycle(addr: SocketAddr, source: std::net::IpAddr, id: &str, n: usize) {
    let mut s = connect_from(source, addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    let v = ProtocolVersion::V3_1_1;
    let c = common::Raw::connect_packet(id, true, 60, v);
    codec::encode(&Packet::Connect(Box::new(c)), v, &mut out).unwrap();
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: format!("churn/{}/+", n % 100).into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: None,
    };
    codec::encode(&Packet::Subscribe(sub), v, &mut out).unwrap();
    s.write_all(&out).unwrap();
    // CONNACK (4 bytes) + SUBACK (5 bytes).
    let mut got = [0u8; 9];
    let mut have = 0;
    while have < 9 {
        match s.read(&mut got[have..]) {
            Ok(0) => panic!("{id}: broker closed after {have} bytes: {:?}", &got[..have]),
            Ok(n) => have += n,
            Err(e) => {
                if let Ok(secs) = std::env::var("COREMQ_HANG_WAIT") {
                    eprintln!("HANG: {id} stalled; broker left running for {secs} s");
                    std::thread::sleep(Duration::from_secs(secs.parse().unwrap()));
                }
                panic!("{id}: {e} after {have} bytes: {:?}", &got[..have])
            }
        }
    }
    assert_eq!(&got[..4], &[0x20, 0x02, 0x00, 0x00], "CONNACK");
    assert_eq!(got[4], 0x90, "SUBACK");
    out.clear();
    codec::encode(
        &Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        }),
        v,
        &mut out,
    )
    .unwrap();
    s.write_all(&out).unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

fn run_cycles(addr: SocketAddr, total: usize, base: usize) {
    let per = total / THREADS;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let source = std::net::IpAddr::from([127, 0, 0, 2 + t as u8]);
                for i in 0..per {
                    let n = base + t * per + i;
                    cycle(addr, source, &format!("churn-{n}"), n);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn rss_returns_to_baseline_after_50k_connect_subscribe_disconnect_cycles() {
    let b = Broker::start(&[]);
    run_cycles(b.addr, 1_000, 0);
    // Let the keep-alive wheel fire the slots of closed connections (connect timeout is 10 s), then measure.
    std::thread::sleep(Duration::from_secs(12));
    let baseline = b.rss_kib();
    run_cycles(b.addr, 49_000, 1_000);
    std::thread::sleep(Duration::from_secs(12));
    let after = b.rss_kib();
    eprintln!("churn: RSS after 1,000 cycles {baseline} KiB, after 50,000 cycles {after} KiB");
    assert!(
        after * 10 <= baseline * 11,
        "RSS grew from {baseline} KiB to {after} KiB over 49,000 cycles"
    );
}
