//! Whole client conversations into two sans-io shards, from random scripts (issue 20). The same driver is the
//! libFuzzer target `fuzz/fuzz_targets/conversation.rs` (`cargo +nightly fuzz run conversation` in fuzz/).
//!
//! CI runs 64 scripts; by hand: `CONVERSATION_CASES=100000 cargo test --release --test conversation_fuzz`.

#[allow(dead_code)]
#[path = "../fuzz/fuzz_targets/conversation_driver.rs"]
mod driver;

use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CONVERSATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_conversations_never_panic_and_stay_bounded(script in proptest::collection::vec(any::<u8>(), 0..3000)) {
        driver::run(&script);
    }
}

/// A scripted conversation that surely reaches the interesting paths: connects on the wrong shard (hand-off),
/// subscriptions, QoS 1/2 publishes, reads and rounds. Guards the driver itself against silently doing nothing.
#[test]
fn a_scripted_conversation_runs() {
    let mut s = vec![1u8]; // with logs
    for c in 0..4u8 {
        // connect: op 0 for client c; v5, clean, id c, through shard 1; no properties; keep-alive 0; no split.
        s.extend_from_slice(&[c << 4, 2 | 0x04 | (c << 3) | 0x40, 0, 0, 0]);
        // subscribe: one filter, t/# at QoS 2 (option byte 0x24), packet id 1, no split
        s.extend_from_slice(&[(c << 4) | 2, 0, 0x24, 0, 1, 0]);
    }
    for _ in 0..20 {
        s.extend_from_slice(&[10, 1]); // round with sync
        s.extend_from_slice(&[1, 1, 0, 5, 0, 5, b'h', b'e', b'l', b'l', b'o', 0]); // publish QoS 1 t/a
        s.extend_from_slice(&[(1 << 4) | 8, 0xff, 0xff]); // client 1 reads
    }
    let ran = driver::run(&s);
    assert!(ran.handoffs >= 1, "{ran:?}");
    assert!(ran.delivered > 0, "{ran:?}");
}
