//! TLS (rustls) as a stream layer. Filled in by the security work.
