//! coremq: a thread-per-core MQTT broker on io_uring.
pub mod codec;
pub mod store;
