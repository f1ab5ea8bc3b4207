//! MQTT over WebSocket as a stream layer. Filled in by the operations work.
