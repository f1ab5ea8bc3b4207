//! coremq-loadgen: latency and throughput load generator for any MQTT broker (coremq, mosquitto, EMQX, NanoMQ,
//! rumqttd). Sans-io pieces (stamps, sequence tracking, pacing, topics, reports) are plain modules; `client`
//! and `run` hold the thin tokio layer.

pub mod addrs;
pub mod capacity;
pub mod client;
pub mod clock;
pub mod cpu;
pub mod mqtt;
pub mod null_broker;
pub mod opts;
pub mod pacing;
pub mod payload;
pub mod plot;
pub mod run;
pub mod seqtrack;
pub mod stats;
pub mod table;
pub mod timer;
pub mod tls;
pub mod topic;
