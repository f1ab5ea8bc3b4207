//! Metrics shared by all shards: one cache-line aligned block of atomics per shard, written only by its own shard
//! (relaxed stores, once per second from its tick) and read by the HTTP thread (`http`), which renders them in the
//! Prometheus text format (`render`). No lock anywhere: a shard never waits for a scrape.
//!
//! `STATS_COUNTERS` is the one place that maps `broker::shard::Stats` fields to metric names; `Counters::store`
//! destructures `Stats` without `..`, so a new `Stats` field does not compile until it has a metric name here.

pub mod histogram;
pub mod http;
pub mod render;
pub mod sys;
pub mod textcheck;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use histogram::{AtomicHistogram, HistogramSnapshot};

use crate::broker::shard::Stats;

/// One `Stats` field as a Prometheus counter: `name{labels}`. Entries of one `name` are adjacent.
#[derive(Debug, Clone, Copy)]
pub struct CounterDef {
    pub field: &'static str,
    pub name: &'static str,
    /// Extra labels besides `shard`, already formatted (`reason="qos0_overflow"`), or "".
    pub labels: &'static str,
    pub help: &'static str,
    pub get: fn(&Stats) -> u64,
}

/// One `Gauges` field as a Prometheus gauge.
#[derive(Debug, Clone, Copy)]
pub struct GaugeDef {
    pub field: &'static str,
    pub name: &'static str,
    pub help: &'static str,
    pub get: fn(&Gauges) -> u64,
}

macro_rules! stats_counters {
    (levels: [$($level:ident),* $(,)?];
     $($field:ident => $name:literal, $labels:literal, $help:literal;)*) => {
        /// The shard's `Stats`, as atomics.
        #[derive(Debug, Default)]
        struct Counters { $($field: AtomicU64,)* $($level: AtomicU64,)* }

        impl Counters {
            fn store(&self, s: &Stats) {
                // No `..`: a `Stats` field missing from the table is a compile error.
                let Stats { $($field,)* $($level,)* } = s;
                $(self.$field.store(*$field, Relaxed);)*
                $(self.$level.store(*$level, Relaxed);)*
            }

            fn load(&self) -> Stats {
                Stats { $($field: self.$field.load(Relaxed),)* $($level: self.$level.load(Relaxed),)* }
            }
        }

        fn add_stats(a: &mut Stats, b: &Stats) {
            $(a.$field += b.$field;)*
            $(a.$level += b.$level;)*
        }

        pub const STATS_COUNTERS: &[CounterDef] = &[
            $(CounterDef { field: stringify!($field), name: $name, labels: $labels, help: $help,
                           get: |s: &Stats| s.$field },)*
        ];

        /// `Stats` fields that are levels (they fall as well as rise): not counters; the shard copies each into
        /// the `Gauges` field of the same name, exported in `GAUGES`.
        pub const STATS_LEVELS: &[&str] = &[$(stringify!($level),)*];
    };
}

stats_counters! {
    levels: [queued_log_bytes];
    connections_accepted => "coremq_connections_accepted_total", "", "TCP connections accepted.";
    connections_closed => "coremq_connections_closed_total", "", "Connections closed, for any reason.";
    handoffs_out => "coremq_handoffs_total", "direction=\"out\"",
        "Connections moved after CONNECT to the shard that owns their client id.";
    handoffs_in => "coremq_handoffs_total", "direction=\"in\"",
        "Connections moved after CONNECT to the shard that owns their client id.";
    malformed => "coremq_malformed_packets_total", "", "Connections closed for a malformed packet.";
    protocol_errors => "coremq_protocol_errors_total", "", "Connections closed for a protocol violation.";
    keepalive_timeouts => "coremq_keepalive_timeouts_total", "",
        "Connections closed because keep-alive or the CONNECT timeout expired.";
    takeovers => "coremq_session_takeovers_total", "", "Connections replaced by a new one with the same client id.";
    publishes_in => "coremq_publishes_received_total", "", "PUBLISH packets received from clients.";
    publishes_out => "coremq_publishes_sent_total", "", "PUBLISH packets sent to subscribers.";
    dropped_qos0 => "coremq_messages_dropped_total", "reason=\"qos0_overflow\"",
        "Messages dropped, by reason (every drop is also logged).";
    dropped_qos12 => "coremq_messages_dropped_total", "reason=\"qos12_overflow\"",
        "Messages dropped, by reason (every drop is also logged).";
    dropped_offline => "coremq_messages_dropped_total", "reason=\"offline_overflow\"",
        "Messages dropped, by reason (every drop is also logged).";
    dropped_too_large => "coremq_messages_dropped_total", "reason=\"too_large\"",
        "Messages dropped, by reason (every drop is also logged).";
    dropped_shared => "coremq_messages_dropped_total", "reason=\"shared_no_member\"",
        "Messages dropped, by reason (every drop is also logged).";
    dropped_qos0_writable => "coremq_qos0_dropped_while_writable_total", "",
        "QoS 0 messages dropped for a full queue while the subscriber's socket still took data (should stay 0).";
    retained_rejected => "coremq_retained_rejected_total", "",
        "Retained messages not stored because the retained limits were reached.";
    wills_published => "coremq_wills_published_total", "", "Will messages published.";
    pauses => "coremq_publisher_pauses_total", "", "Times a publisher was paused because a queue it feeds was full.";
    persist_errors => "coremq_persist_errors_total", "", "Log appends, commits or reads that failed.";
    publishes_refused => "coremq_publishes_refused_total", "",
        "QoS>0 publishes refused because the log is full or failed.";
    subscribes_refused => "coremq_subscribes_refused_total", "",
        "SUBSCRIBEs refused because too many were waiting for the other shards.";
    log_stalls => "coremq_log_stalls_total", "",
        "Times the shard stopped reading its sockets because the log fell behind.";
    publishes_denied => "coremq_publishes_denied_total", "", "Client PUBLISHes refused as not authorized (the ACL, or $SYS).";
    refused_queue_full => "coremq_publishes_refused_queue_full_total", "",
        "QoS>0 publishes not acknowledged because a matching persistent session's queue was full.";
    full_session_bytes => "coremq_queue_full_total", "bound=\"session_bytes\"",
        "Times a session queue was found full, by the bound that was reached.";
    full_session_messages => "coremq_queue_full_total", "bound=\"session_messages\"",
        "Times a session queue was found full, by the bound that was reached.";
    full_shard_bytes => "coremq_queue_full_total", "bound=\"shard_bytes\"",
        "Times a session queue was found full, by the bound that was reached.";
    full_online_hard => "coremq_queue_full_total", "bound=\"online_hard\"",
        "Times a session queue was found full, by the bound that was reached.";
    expired => "coremq_messages_expired_total", "", "v5 messages dropped because their expiry interval passed.";
    shared_redispatched => "coremq_shared_redispatched_total", "",
        "Shared-subscription messages given to another member because theirs went offline.";
    auth_refused_credentials => "coremq_connects_refused_total", "reason=\"bad_credentials\"",
        "CONNECTs refused by authentication, by reason (each also logged, rate-limited, with the peer).";
    auth_refused_not_authorized => "coremq_connects_refused_total", "reason=\"not_authorized\"",
        "CONNECTs refused by authentication, by reason (each also logged, rate-limited, with the peer).";
    auth_refused_busy => "coremq_connects_refused_total", "reason=\"verifier_busy\"",
        "CONNECTs refused by authentication, by reason (each also logged, rate-limited, with the peer).";
    auth_verified_inline => "coremq_password_checks_total", "where=\"inline\"",
        "Password checks, by where they ran (the cache answers without a check).";
    auth_verified_off_loop => "coremq_password_checks_total", "where=\"verifier\"",
        "Password checks, by where they ran (the cache answers without a check).";
    auth_cache_hits => "coremq_password_cache_hits_total", "", "CONNECTs whose credentials the verified cache knew.";
    acl_subscribe_denied => "coremq_acl_subscribe_denied_total", "", "SUBSCRIBE filters refused by the ACL.";
    acl_delivery_denied => "coremq_acl_delivery_denied_total", "", "Deliveries the ACL kept from a subscriber.";
    shared_kept => "coremq_shared_kept_total", "",
        "Shared-subscription messages of a departed member that no other member could take: kept, tried again.";
}

macro_rules! gauges {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// A shard's current levels, computed by the shard when it publishes.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Gauges { $(pub $field: u64,)* }

        #[derive(Debug, Default)]
        struct AtomicGauges { $($field: AtomicU64,)* }

        impl AtomicGauges {
            fn store(&self, g: &Gauges) {
                let Gauges { $($field,)* } = g;
                $(self.$field.store(*$field, Relaxed);)*
            }

            fn load(&self) -> Gauges {
                Gauges { $($field: self.$field.load(Relaxed),)* }
            }
        }

        fn add_gauges(a: &mut Gauges, b: &Gauges) {
            $(a.$field += b.$field;)*
        }

        pub const GAUGES: &[GaugeDef] = &[
            $(GaugeDef { field: stringify!($field), name: $name, help: $help, get: |g: &Gauges| g.$field },)*
        ];
    };
}

gauges! {
    connections => "coremq_connections", "Open client connections (before and after CONNECT).";
    sessions_online => "coremq_sessions_online", "Sessions with a connected client.";
    sessions_offline => "coremq_sessions_offline", "Persistent sessions without a connected client.";
    sessions_persistent => "coremq_sessions_persistent", "Sessions that outlive their connection (online or not).";
    subscriptions => "coremq_subscriptions", "Subscriptions of this shard's sessions.";
    retained_messages => "coremq_retained_messages", "Retained messages (each shard holds a replica).";
    retained_bytes => "coremq_retained_bytes", "Bytes (topic and payload) of the retained messages.";
    queued_messages => "coremq_queued_messages", "Messages queued for sessions, not yet sent.";
    inflight_messages => "coremq_inflight_messages", "Messages sent and not yet acknowledged.";
    mesh_depth => "coremq_mesh_channel_depth", "Messages waiting in this shard's inbound channels from peers.";
    paused_publishers => "coremq_paused_publishers", "Publishers not read because a queue they feed is full.";
    queued_log_bytes => "coremq_queued_log_bytes",
        "Log bytes held now by queued QoS 1/2 messages of persistent sessions (bounded by max_offline_bytes_per_shard).";
}

/// One shard's block. Aligned so two shards' hot counters never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    counters: Counters,
    gauges: AtomicGauges,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Time from handing a range to the log's syncer thread to it being durable (written by that thread).
    pub log_sync: AtomicHistogram,
    /// Time the shard spent handling a CONNECT (decode to CONNACK queued).
    pub connect_time: AtomicHistogram,
}

/// What a reader sees of one shard.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub stats: Stats,
    pub gauges: Gauges,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub log_sync: HistogramSnapshot,
    pub connect_time: HistogramSnapshot,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            counters: Counters::default(),
            gauges: AtomicGauges::default(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            log_sync: AtomicHistogram::new(histogram::SYNC_BUCKETS_US),
            connect_time: AtomicHistogram::new(histogram::CONNECT_BUCKETS_US),
        }
    }
}

impl ShardMetrics {
    /// Called by the owning shard only (relaxed stores; the reader may see one field newer than another).
    pub fn publish(&self, stats: &Stats, gauges: &Gauges) {
        self.counters.store(stats);
        self.gauges.store(gauges);
    }

    /// Socket bytes, counted by the I/O layer (wire bytes, including TLS/WebSocket framing).
    pub fn publish_io(&self, bytes_received: u64, bytes_sent: u64) {
        self.bytes_received.store(bytes_received, Relaxed);
        self.bytes_sent.store(bytes_sent, Relaxed);
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            stats: self.counters.load(),
            gauges: self.gauges.load(),
            bytes_received: self.bytes_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            log_sync: self.log_sync.snapshot(),
            connect_time: self.connect_time.snapshot(),
        }
    }
}

/// The registry: `Arc`-shared by the shards, their log syncers and the HTTP thread.
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[ShardMetrics]>,
    /// Recovery finished and the listeners are open (`/readyz`).
    ready: AtomicBool,
    started: Instant,
    start_unix: f64,
    /// The configured bridges' status (registered once at start, `crate::bridge`).
    bridges: std::sync::RwLock<Vec<Arc<crate::bridge::BridgeStatus>>>,
}

impl Metrics {
    pub fn new(shards: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            bridges: Default::default(),
        })
    }

    pub fn add_bridge(&self, b: Arc<crate::bridge::BridgeStatus>) {
        self.bridges.write().expect("bridge table").push(b);
    }

    pub fn bridges(&self) -> Vec<Arc<crate::bridge::BridgeStatus>> {
        self.bridges.read().expect("bridge table").clone()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Panics on an id past the shard count (a programming error, not input).
    pub fn shard(&self, id: usize) -> &ShardMetrics {
        &self.shards[id]
    }

    pub fn shards(&self) -> &[ShardMetrics] {
        &self.shards
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn start_unix(&self) -> f64 {
        self.start_unix
    }

    /// Every shard's snapshot summed (counters and gauges; histograms merged).
    pub fn totals(&self) -> ShardSnapshot {
        let mut it = self.shards.iter().map(ShardMetrics::snapshot);
        let mut t = it
            .next()
            .unwrap_or_else(|| ShardMetrics::default().snapshot());
        for s in it {
            add_stats(&mut t.stats, &s.stats);
            add_gauges(&mut t.gauges, &s.gauges);
            t.bytes_received += s.bytes_received;
            t.bytes_sent += s.bytes_sent;
            t.log_sync.merge(&s.log_sync);
            t.connect_time.merge(&s.connect_time);
        }
        t
    }
}

/// Version of this build, for `coremq_build_info` and `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests;
