//! coremq: a thread-per-core MQTT broker on io_uring.
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod codec;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;
pub mod stream;

extern "C" {
    /// mimalloc's collection entry point (the `mimalloc` crate links its static library into every binary).
    fn mi_collect(force: bool);
}

/// Let mimalloc run its due purges on this thread's heap (`force`: also return memory freed by other threads to
/// the OS now; mimalloc collects a thread's heap only on that thread).
pub fn alloc_collect(force: bool) {
    // SAFETY: mi_collect takes no pointers; it is safe to call from any thread at any time, and harmless when
    // mimalloc is not the global allocator (it then has nothing to collect).
    unsafe { mi_collect(force) };
}
