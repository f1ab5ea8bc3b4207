//! Sans-io MQTT codec for 3.1, 3.1.1 and 5.0: bytes in, packets out, and back. No I/O, no runtime.
pub mod error;
pub mod types;

pub use error::{DecodeError, EncodeError};
pub use types::*;
