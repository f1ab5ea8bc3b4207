//! Codec throughput: decode and encode of PUBLISH (64 B and 1 KiB payloads, QoS 0 and 1) and CONNECT.
//!
//! Each iteration handles a batch of `BATCH` = 1000 packets, so criterion's time per iteration in microseconds is
//! the time per packet in nanoseconds (packets/s = 1e9 / that); criterion prints MB/s from `Throughput::Bytes`. Decoding runs
//! through a server-side `Decoder` that has already seen CONNECT, exactly as the broker uses it; building the input
//! buffer is setup, not measured.
//!
//! Every benchmark runs twice: `decode/...`, `encode/...` on wall-clock time (criterion's default), and
//! `cpu_decode/...`, `cpu_encode/...` on the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which does not count
//! time the thread spent descheduled: on a shared, loaded machine that is the honest per-packet cost.
//!
//! Run: `cargo bench --bench codec -- --measurement-time 3 --warm-up-time 1`

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use coremq::codec::*;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const BATCH: usize = 1000;

fn publish(qos: QoS, payload: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from_static("sensors/building-7/floor-3/room-12/temperature"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 4242 },
        properties: None,
        payload: Bytes::from(vec![0x5A; payload]),
    })
}

fn connect(v: ProtocolVersion) -> Packet {
    let properties = v.is_v5().then(|| {
        Box::new(Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            ..Properties::default()
        })
    });
    Packet::Connect(Box::new(Connect {
        protocol: v,
        bridge: false,
        clean_start: false,
        keep_alive: 60,
        client_id: ByteString::from_static("loadgen-client-000123"),
        will: Some(Will {
            topic: ByteString::from_static("clients/loadgen-client-000123/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        }),
        username: Some(ByteString::from_static("device")),
        password: Some(Bytes::from_static(b"s3cret-token")),
        properties,
    }))
}

fn bytes_of(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    encode(p, v, &mut b).expect("encodable");
    b
}

struct Case {
    name: &'static str,
    packet: Packet,
    version: ProtocolVersion,
}

fn cases() -> Vec<Case> {
    let v5 = ProtocolVersion::V5;
    let v4 = ProtocolVersion::V3_1_1;
    vec![
        Case {
            name: "publish_qos0_64B_v5",
            packet: publish(QoS::AtMostOnce, 64),
            version: v5,
        },
        Case {
            name: "publish_qos1_64B_v5",
            packet: publish(QoS::AtLeastOnce, 64),
            version: v5,
        },
        Case {
            name: "publish_qos1_64B_v311",
            packet: publish(QoS::AtLeastOnce, 64),
            version: v4,
        },
        Case {
            name: "publish_qos0_1KiB_v5",
            packet: publish(QoS::AtMostOnce, 1024),
            version: v5,
        },
        Case {
            name: "publish_qos1_1KiB_v5",
            packet: publish(QoS::AtLeastOnce, 1024),
            version: v5,
        },
        Case {
            name: "connect_v5",
            packet: connect(v5),
            version: v5,
        },
        Case {
            name: "connect_v311",
            packet: connect(v4),
            version: v4,
        },
    ]
}

/// A batch of frames, and a decoder positioned after CONNECT (or fresh for the CONNECT benchmarks).
fn decode_input(case: &Case) -> (BytesMut, BytesMut) {
    let one = bytes_of(&case.packet, case.version);
    let mut batch = BytesMut::with_capacity(one.len() * BATCH);
    for _ in 0..BATCH {
        batch.extend_from_slice(&one);
    }
    (one, batch)
}

/// Thread CPU time in nanoseconds, formatted like wall time.
struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID is supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn bench_decode<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    {
        let mut g = c.benchmark_group(format!("{prefix}decode"));
        for case in cases() {
            let (one, batch) = decode_input(&case);
            if prefix.is_empty() {
                eprintln!("{}: {} bytes per frame", case.name, one.len());
            }
            g.throughput(Throughput::Bytes((one.len() * BATCH) as u64));
            let is_connect = matches!(case.packet, Packet::Connect(_));
            let connect_frame = bytes_of(&connect(case.version), case.version);
            g.bench_function(case.name, |b| {
                b.iter_batched_ref(
                    || {
                        let buf = BytesMut::from(&batch[..]);
                        if is_connect {
                            // One fresh server decoder per CONNECT is the real pattern; reset inside the loop.
                            (None, buf)
                        } else {
                            let mut d = Decoder::new_server(1 << 20);
                            d.decode(&mut BytesMut::from(&connect_frame[..]))
                                .unwrap()
                                .unwrap();
                            (Some(d), buf)
                        }
                    },
                    |(decoder, buf)| {
                        for _ in 0..BATCH {
                            let p = match decoder {
                                Some(d) => d.decode(buf),
                                None => Decoder::new_server(1 << 20).decode(buf),
                            };
                            black_box(p.unwrap().unwrap());
                        }
                    },
                    BatchSize::LargeInput,
                );
            });
        }
        g.finish();
    }
}

fn bench_encode<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    {
        let mut g = c.benchmark_group(format!("{prefix}encode"));
        for case in cases() {
            let len = encoded_len(&case.packet, case.version);
            g.throughput(Throughput::Bytes((len * BATCH) as u64));
            let mut buf = BytesMut::with_capacity(len * BATCH);
            g.bench_function(case.name, |b| {
                b.iter(|| {
                    buf.clear();
                    match &case.packet {
                        Packet::Publish(p) => {
                            for _ in 0..BATCH {
                                encode_publish(black_box(p), case.version, &mut buf).unwrap();
                            }
                        }
                        other => {
                            for _ in 0..BATCH {
                                encode(black_box(other), case.version, &mut buf).unwrap();
                            }
                        }
                    }
                    black_box(buf.len());
                });
            });
        }
        g.finish();
    }
}

/// The same 64-byte QoS 1 PUBLISH through rumqttc 0.24's own codec (mqttbytes), measured in the same run: a
/// ratio against a widely used Rust MQTT codec that is independent of machine load.
fn bench_peer<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let mut g = c.benchmark_group(format!("{prefix}peer_rumqttc"));
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let frame = bytes_of(&publish(QoS::AtLeastOnce, 64), v);
        let mut batch = BytesMut::with_capacity(frame.len() * BATCH);
        for _ in 0..BATCH {
            batch.extend_from_slice(&frame);
        }
        g.throughput(Throughput::Bytes((frame.len() * BATCH) as u64));
        let name = if v.is_v5() {
            "decode_publish_qos1_64B_v5"
        } else {
            "decode_publish_qos1_64B_v311"
        };
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&batch[..]),
                |buf| {
                    for _ in 0..BATCH {
                        if v.is_v5() {
                            black_box(
                                rumqttc::v5::mqttbytes::v5::Packet::read(buf, Some(1 << 20))
                                    .unwrap(),
                            );
                        } else {
                            black_box(rumqttc::mqttbytes::v4::read(buf, 1 << 20).unwrap());
                        }
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    let v4 = rumqttc::mqttbytes::v4::Publish::from_bytes(
        "sensors/building-7/floor-3/room-12/temperature",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        Bytes::from(vec![0x5A; 64]),
    );
    let mut v4 = v4;
    v4.pkid = 4242;
    let mut buf = BytesMut::with_capacity(120 * BATCH);
    g.throughput(Throughput::Bytes(
        (encoded_len(&publish(QoS::AtLeastOnce, 64), ProtocolVersion::V3_1_1) * BATCH) as u64,
    ));
    g.bench_function("encode_publish_qos1_64B_v311", |b| {
        b.iter(|| {
            buf.clear();
            for _ in 0..BATCH {
                black_box(&v4).write(&mut buf).unwrap();
            }
            black_box(buf.len());
        });
    });
    g.finish();
}

/// The floor under zero-copy decoding: a decoded PUBLISH holds two `Bytes` handles (topic, payload) on the
/// input buffer, i.e. two refcount increments when decoded and two decrements when dropped. This measures exactly
/// that (split a handle off a shared `BytesMut`, slice it, drop both) with no parsing.
fn bench_floor<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let mut g = c.benchmark_group(format!("{prefix}floor"));
    g.throughput(Throughput::Elements(BATCH as u64));
    let frame_len = 117;
    g.bench_function("split_slice_drop_2_handles", |b| {
        b.iter_batched_ref(
            || {
                let mut buf = BytesMut::from(&vec![0x5Au8; frame_len * BATCH][..]);
                // Promote to the shared representation first, as the first decode does.
                drop(buf.split_to(0));
                buf
            },
            |buf| {
                for _ in 0..BATCH {
                    let frame = buf.split_to(frame_len).freeze();
                    let topic = frame.slice(4..50);
                    black_box((&frame, &topic));
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench_decode(c, "");
    bench_encode(c, "");
    bench_peer(c, "");
    bench_floor(c, "");
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench_decode(c, "cpu_");
    bench_encode(c, "cpu_");
    bench_peer(c, "cpu_");
    bench_floor(c, "cpu_");
}

criterion_group!(wall_benches, wall);
criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(ThreadCpuTime { wall: WallTime });
    targets = cpu
}
criterion_main!(wall_benches, cpu_benches);
