//! coremq: a thread-per-core MQTT broker on io_uring.
pub mod broker;
pub mod codec;
pub mod config;
pub mod server;
