//! Sans-io MQTT codec for 3.1, 3.1.1 and 5.0: bytes in, packets out, and back. No I/O, no runtime.
//!
//! Decoding is incremental and zero-copy: `Decoder::decode` (or `decode_packet`) checks the fixed header, refuses
//! frames over the configured maximum before their body is buffered, then splits the whole frame off the input
//! `BytesMut`; topic, strings and payload are slices of that frame. Encoding sizes the packet first and writes it
//! with its exact remaining length.
//!
//! Left to the session layer on purpose (they need per-connection state or policy, not bytes): resolving v5
//! topic aliases (an empty topic with a `topic_alias` property is passed through), receive-maximum accounting,
//! checking a payload marked UTF-8 by `payload_format_indicator` (reason 0x99), client-id policy (v3.1's 23-byte
//! limit, empty ids), and mosquitto's bridge bit (protocol level | 0x80, rejected as unsupported here).
pub mod decode;
pub mod encode;
pub mod error;
pub mod properties;
pub mod reason;
pub mod topic;
pub mod types;
pub mod wire;

pub use decode::{
    decode_frame, decode_packet, fixed_header, frame_len, Decoder, FixedHeader, OWNED_PUBLISH_MAX,
};
pub use encode::{
    encode, encode_limited, encode_publish, encode_publish_limited, encode_publish_ref,
    encoded_len, publish_len,
};
pub use error::{DecodeError, EncodeError};
pub use types::*;
pub use wire::MAX_FRAME_LEN;
