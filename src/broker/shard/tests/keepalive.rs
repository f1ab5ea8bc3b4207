use super::*;

fn connect(keep_alive: u16) -> BytesMut {
    let c = Connect {
        protocol: ProtocolVersion::V3_1_1,
        bridge: false,
        clean_start: true,
        keep_alive,
        client_id: format!("ka-{keep_alive}").into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    let mut b = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(c)),
        ProtocolVersion::V3_1_1,
        &mut b,
    )
    .unwrap();
    b
}

/// An idle connection holds one wheel entry (the CONNECT-timeout one re-files itself), yet expires exactly
/// at one and a half keep-alives after its last byte, for keep-alives shorter and longer than the timeout.
#[test]
fn one_entry_per_idle_connection_and_exact_expiry() {
    for keep_alive in [1u16, 2, 4, 6, 7, 10, 60, 3000] {
        let mut shard = Shard::new(ShardConfig {
            connect_timeout_secs: 10,
            ..ShardConfig::default()
        });
        shard.tick(1);
        let key = shard.accept(9);
        shard.tick(3);
        assert_eq!(
            shard.on_bytes(key, &mut connect(keep_alive)),
            ReadOutcome::Continue
        );
        let due = 3 + (keep_alive as u32 * 3).div_ceil(2);
        if due >= 3 + 10 {
            assert_eq!(shard.wheel.len(), 1, "keep-alive {keep_alive}");
        }
        for now in 4..due {
            shard.tick(now);
            assert_eq!(
                shard.stats.keepalive_timeouts, 0,
                "keep-alive {keep_alive} at {now}"
            );
        }
        shard.tick(due);
        assert_eq!(shard.stats.keepalive_timeouts, 1, "keep-alive {keep_alive}");
        shard.tick(due + 20);
        assert_eq!(shard.stats.keepalive_timeouts, 1, "keep-alive {keep_alive}");
    }
}
