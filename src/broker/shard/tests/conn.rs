/// Idle connections are the million-connection cost: a guard so per-connection state only grows on purpose.
/// (Measured 2026-11: Session 224 B, Conn slot 80 B, client index 4 B + 1 control byte per bucket; the issue-4
/// target is 512 B of RSS per connection.)
#[test]
fn per_connection_state_stays_small() {
    assert!(
        std::mem::size_of::<super::Session>() <= 224,
        "Session grew to {}",
        std::mem::size_of::<super::Session>()
    );
    assert!(
        std::mem::size_of::<crate::broker::shard::conn::Slot<super::Conn>>() <= 80,
        "Conn slot grew to {}",
        std::mem::size_of::<crate::broker::shard::conn::Slot<super::Conn>>()
    );
    assert!(
        std::mem::size_of::<super::Subscriber>() <= 16,
        "Subscriber grew"
    );
}
