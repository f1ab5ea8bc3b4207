//! Command line. Every load scenario shares `Common`; scenario defaults (how many publishers, which topic) are
//! filled in by `run::Plan`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "coremq-loadgen",
    version,
    about = "Latency and throughput load generator for any MQTT broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Open --connections C at --connect-rate and hold them idle for --duration (storms, idle capacity).
    Conn(Common),
    /// Publishers only (pair with `sub` in another process or on another machine).
    Pub(Common),
    /// Subscribers only; loss is counted against --expected (or each publisher's highest sequence number).
    Sub(Common),
    /// P publishers (--publishers) -> S subscribers (--subscribers, default 1) on a wildcard filter.
    Fanin(Common),
    /// 1 publisher (--publishers) -> N subscribers (--subscribers) on one topic.
    Fanout(Common),
    /// N independent publisher/subscriber pairs (--pairs) on distinct topics.
    Pairs(Common),
    /// Publishers -> one `$share/lg/...` group of --subscribers members (needs broker support).
    Shared(Common),
    /// Turn result files (JSON lines written by --out or --json) into a PNG.
    Plot(PlotArgs),
    /// Print result files side by side as one table (used by benches/compare.sh).
    Table(TableArgs),
    /// Featureless single-threaded QoS 0 relay (exact topics only): the latency/cost floor to compare brokers
    /// against on this machine (benches/latency-floor.sh).
    NullBroker(NullBrokerArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClockKind {
    /// CLOCK_MONOTONIC: one machine (threads or separate pub/sub processes).
    Monotonic,
    /// CLOCK_REALTIME: pub and sub on different machines with synchronised clocks.
    Realtime,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Name of the broker in reports, tables and plots (default: the address).
    #[arg(long)]
    pub label: Option<String>,
    /// Run length in seconds (publishing time; for `conn`, the idle hold time).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages to publish across all publishers (0 = bounded by --duration only).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (minimum 24: the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Total offered rate in messages/s across all publishers (open loop); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Offered rate per publisher instead of total (overrides --rate).
    #[arg(long)]
    pub rate_per_client: Option<f64>,
    #[arg(long)]
    pub publishers: Option<usize>,
    #[arg(long)]
    pub subscribers: Option<usize>,
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Idle connections for `conn`.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Topic pattern; `%i` is the publisher index.
    #[arg(long)]
    pub topic: Option<String>,
    /// Subscription filter (`sub`, `fanin`, `shared`); `%i` is the subscriber index.
    #[arg(long)]
    pub filter: Option<String>,
    /// MQTT version: 3.1.1 (or 4) or 5.
    #[arg(long, default_value = "3.1.1")]
    pub mqtt: String,
    /// Persistent sessions (clean session / clean start = 0).
    #[arg(long)]
    pub persistent: bool,
    /// Session expiry interval in seconds for persistent MQTT 5 sessions.
    #[arg(long, default_value_t = 3600)]
    pub session_expiry: u32,
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// User name; `%c` is replaced by the client id (`PREFIX-cN` for `conn`, see --client-prefix).
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Local source IPs to bind, e.g. 127.0.0.2-127.0.0.40 or 127.0.0.2,127.0.0.3 (round-robin per client).
    #[arg(long)]
    pub source: Option<String>,
    /// Worker threads (default: CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin worker threads to these CPUs, e.g. 1 or 2,3 or 4-7 (thread i -> i-th CPU of the list).
    #[arg(long)]
    pub pin: Option<String>,
    /// Max unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// New connections per second across all threads (0 = no pacing, limited by --connect-concurrency).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connection attempts in progress at once per thread.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds to wait for TCP connect + CONNACK (and SUBACK).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait after publishing ends for in-flight messages and acks.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    #[arg(long, value_enum, default_value_t = ClockKind::Monotonic)]
    pub clock: ClockKind,
    /// Client id prefix (default lg-PID).
    #[arg(long)]
    pub client_prefix: Option<String>,
    /// Publisher ids start here (give separate `pub` processes disjoint ranges).
    #[arg(long, default_value_t = 0)]
    pub id_offset: u32,
    /// `sub`: messages expected in total (else inferred from each publisher's highest sequence number, which
    /// cannot see loss at the tail).
    #[arg(long)]
    pub expected: Option<u64>,
    /// Print one JSON line on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Append the JSON line to this file (result file for `plot` and `table`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the full latency percentile distribution (HdrHistogram text format, µs).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// PID of a local broker: report its RSS before/after (and per connection in `conn`).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Capacity search: raise the offered rate step by step, then bisect, and report the highest rate with
    /// zero loss and p99 under --p99-max-ms.
    #[arg(long)]
    pub find_max: bool,
    #[arg(long, default_value_t = 10.0)]
    pub p99_max_ms: f64,
    /// Seconds per capacity step.
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    /// First offered rate of the capacity search (msg/s); doubled until a step fails.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Upper bound of the capacity search.
    #[arg(long, default_value_t = 10_000_000.0)]
    pub rate_limit: f64,
    #[arg(long, default_value_t = 4)]
    pub bisect_steps: u32,
    /// Run a capacity step again (up to this many times) when it failed only on latency or send rate, with no
    /// loss, duplicate or error: on a shared machine a host stall inflates one step's p99, while real overload
    /// fails every attempt. Every attempt is reported. Loss is never retried.
    #[arg(long, default_value_t = 0)]
    pub step_retries: u32,
    /// Open-loop pacing: deadlines within this many µs of a timer wake-up are sent together (early messages
    /// are stamped with their actual send time). 0 = wake for every message (most CPU).
    #[arg(long, default_value_t = 50)]
    pub pacing_slack_us: u64,
    /// Seconds at the start of each run (and of each capacity step) whose messages count for loss and
    /// duplicates but not for latency: connection set-up and cold caches are not the steady state.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// `pairs` on coremq with N shards: pick client ids so each pair's publisher and subscriber are owned by
    /// the same shard (`same:N`) or by different shards (`cross:N`), by coremq's client-id hash.
    #[arg(long, value_parser = parse_placement)]
    pub place: Option<Placement>,
    /// Fault injection for tests: subscriber 0 drops its connection this many seconds into the run.
    #[arg(long)]
    pub inject_sub_disconnect: Option<f64>,
    /// No live progress line even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// TLS (1.2 or 1.3, rustls) to the broker; the server's certificate is verified against --cafile.
    #[arg(long, requires = "cafile")]
    pub tls: bool,
    /// PEM file of the CA certificate(s) that signed the broker's certificate.
    #[arg(long, requires = "tls")]
    pub cafile: Option<PathBuf>,
    /// PEM client certificate chain (mTLS; with --key).
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
    /// Name the broker's certificate must carry (SNI and verification).
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
}

/// Where `--place` puts each pair's two clients, among `shards` coremq shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub cross: bool,
    pub shards: u16,
}

fn parse_placement(s: &str) -> Result<Placement, String> {
    let (kind, n) = s
        .split_once(':')
        .ok_or_else(|| format!("expected same:N or cross:N, got {s:?}"))?;
    let shards: u16 = n.parse().map_err(|_| format!("bad shard count {n:?}"))?;
    let cross = match kind {
        "same" => false,
        "cross" => true,
        _ => return Err(format!("expected same or cross, got {kind:?}")),
    };
    if shards == 0 || (cross && shards < 2) {
        return Err("cross needs at least 2 shards, same at least 1".into());
    }
    Ok(Placement { cross, shards })
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Result files (JSON lines).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, short, default_value = "loadgen.png")]
    pub output: PathBuf,
    #[arg(long, default_value = "coremq-loadgen results")]
    pub title: String,
}

#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct NullBrokerArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    /// Pin the relay's one thread to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Seconds to serve (0 = until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0.0)]
    pub duration: f64,
}

/// Parses `1`, `2,3`, `4-7`, `0,2-3` into CPU ids.
pub fn parse_cpu_list(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| format!("bad cpu {s:?}: {e}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return Err(format!("bad cpu range {part}"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err("empty cpu list".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "coremq-loadgen",
            "fanin",
            "--qos",
            "1",
            "--publishers",
            "4",
            "--json",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Fanin(c) => assert_eq!((c.qos, c.publishers, c.json), (1, Some(4), true)),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["coremq-loadgen", "fanin", "--qos", "3"]).is_err());
    }
}
