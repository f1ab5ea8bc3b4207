//! Runs one scenario: plans the clients, starts pinned worker threads (one tokio current-thread runtime each),
//! drives the phases (setup -> run -> grace -> close) and turns the merged measurements into a `Report`.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{run_client, ClientConfig, ClientSpec, Phase, Role, Shared};
use crate::clock::now_ns;
use crate::cpu::{process_cpu_ns, rss_kib};
use crate::mqtt::{ConnectParams, ProtocolVersion, QoS};
use crate::opts::{parse_cpu_list, ClockKind, Common};
use crate::seqtrack::SeqTracker;
use crate::stats::{latency_curve, percentiles, ConnectReport, Report, WorkerStats};
use crate::tls::TlsClient;
use crate::topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Conn,
    Pub,
    Sub,
    Fanin,
    Fanout,
    Pairs,
    Shared,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Shared => "shared",
        }
    }
}

/// Who connects, and what each publishes or subscribes to.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    /// Topic per publisher.
    pub pub_topics: Vec<String>,
    /// Filter per subscriber.
    pub sub_filters: Vec<String>,
    pub idle: usize,
}

impl Plan {
    pub fn new(scenario: Scenario, c: &Common) -> Result<Plan, String> {
        let expand_all = |pattern: &str, n: usize| {
            (0..n)
                .map(|i| topic::expand(pattern, i))
                .collect::<Vec<_>>()
        };
        let (pubs, subs, topic, filter) = match scenario {
            Scenario::Conn => (0, 0, "", ""),
            Scenario::Pub => (c.publishers.unwrap_or(1), 0, "lg/pub/%i", ""),
            Scenario::Sub => (0, c.subscribers.unwrap_or(1), "", "lg/pub/+"),
            Scenario::Fanin => (
                c.publishers.unwrap_or(10),
                c.subscribers.unwrap_or(1),
                "lg/fanin/%i",
                "lg/fanin/+",
            ),
            Scenario::Fanout => (
                c.publishers.unwrap_or(1),
                c.subscribers.unwrap_or(10),
                "lg/fanout",
                "lg/fanout",
            ),
            Scenario::Pairs => {
                let n = c.pairs.or(c.publishers).unwrap_or(10);
                (n, n, "lg/pairs/%i", "")
            }
            Scenario::Shared => (
                c.publishers.unwrap_or(4),
                c.subscribers.unwrap_or(4),
                "lg/shared/%i",
                "$share/lg/lg/shared/+",
            ),
        };
        // Default topics of in-process scenarios carry a per-run tag, so a backlog an overloaded broker still
        // holds from an earlier run never reaches this run's subscribers. `pub`/`sub` keep fixed defaults so
        // separate processes meet without configuration.
        let tag = run_tag();
        let tagged = |t: &str| -> String {
            if matches!(scenario, Scenario::Pub | Scenario::Sub | Scenario::Conn) {
                return t.to_string();
            }
            let (share, rest) = match t.strip_prefix("$share/lg/") {
                Some(rest) => ("$share/lg/", rest),
                None => ("", t),
            };
            format!("{share}{}", rest.replacen("lg/", &format!("lg/{tag}/"), 1))
        };
        let topic_pattern = c.topic.clone().unwrap_or_else(|| tagged(topic));
        let pub_topics = expand_all(&topic_pattern, pubs);
        let sub_filters = if scenario == Scenario::Pairs {
            // Subscriber i listens to exactly publisher i's topic.
            pub_topics.clone()
        } else {
            expand_all(&c.filter.clone().unwrap_or_else(|| tagged(filter)), subs)
        };
        let idle = if scenario == Scenario::Conn {
            c.connections.unwrap_or(1000)
        } else {
            0
        };
        let total = pub_topics.len() + sub_filters.len() + idle;
        if total == 0 {
            return Err("nothing to do: no publishers, subscribers or connections".into());
        }
        if total > 10_000_000 {
            return Err(format!(
                "{total} clients is more than this tool bounds (10M)"
            ));
        }
        if matches!(
            scenario,
            Scenario::Fanin | Scenario::Fanout | Scenario::Pairs | Scenario::Shared
        ) && (pub_topics.is_empty() || sub_filters.is_empty())
        {
            return Err(format!(
                "{} needs at least one publisher and one subscriber",
                scenario.name()
            ));
        }
        Ok(Plan {
            scenario,
            pub_topics,
            sub_filters,
            idle,
        })
    }
}

/// A short tag unique to this run (pid and clock), e.g. `r1a2b3c`.
fn run_tag() -> String {
    let mix =
        (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ crate::clock::now_ns();
    format!("r{:06x}", mix & 0xFF_FFFF)
}

pub fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "3.1.1" | "311" | "4" | "3" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        other => Err(format!("unknown MQTT version {other:?} (use 3.1.1 or 5)")),
    }
}

fn resolve(broker: &str) -> Result<SocketAddr, String> {
    broker
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve broker {broker:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("broker {broker:?} resolves to nothing"))
}

/// Validated settings derived from the command line.
pub struct Settings {
    pub common: Common,
    pub client: ClientConfig,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    pub sources: Option<Vec<std::net::IpAddr>>,
    pub label: String,
}

impl Settings {
    pub fn new(c: &Common, plan: &Plan) -> Result<Settings, String> {
        let broker = resolve(&c.broker)?;
        let version = parse_version(&c.mqtt)?;
        if !(c.duration > 0.0 && c.duration.is_finite()) {
            return Err("--duration must be > 0".into());
        }
        if c.size < crate::payload::STAMP_LEN || c.size > 64 * 1024 * 1024 {
            return Err(format!(
                "--size must be between {} and 64 MiB",
                crate::payload::STAMP_LEN
            ));
        }
        if c.rate < 0.0 || !c.rate.is_finite() {
            return Err("--rate must be >= 0".into());
        }
        let qos = QoS::from_u8(c.qos).ok_or("--qos must be 0, 1 or 2")?;
        let publishers = plan.pub_topics.len();
        let total_rate = match c.rate_per_client {
            Some(r) if r > 0.0 => r * publishers.max(1) as f64,
            Some(_) => 0.0,
            None => c.rate,
        };
        let cpus = c.pin.as_deref().map(parse_cpu_list).transpose()?;
        let avail = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = c
            .threads
            .unwrap_or(cpus.as_ref().map_or(avail, |v| v.len()))
            .clamp(1, 1024);
        let sources = c
            .source
            .as_deref()
            .map(crate::addrs::parse_sources)
            .transpose()?;
        crate::clock::use_realtime(c.clock == ClockKind::Realtime);
        crate::timer::set_slack_ns(c.pacing_slack_us.min(10_000) * 1000);
        let client = ClientConfig {
            broker,
            connect: ConnectParams {
                version,
                keep_alive: c.keep_alive,
                clean_start: !c.persistent,
                session_expiry: c.session_expiry,
                username: c.username.clone(),
                password: c.password.clone(),
            },
            qos,
            size: c.size,
            connect_timeout: Duration::from_secs_f64(c.connect_timeout.max(0.1)),
            inflight: c.inflight.clamp(1, 65_000),
            max_packet: (c.size as u64 + 64 * 1024).min(268_435_455) as u32,
            total_rate,
            publishers,
            stale_filter: publishers > 0,
            drop_subscriber: c.inject_sub_disconnect.map(|s| (0, s)),
            warmup_ns: (c.warmup.max(0.0) * 1e9) as u64,
            tls: match (&c.tls, &c.cafile) {
                (true, Some(ca)) => Some(TlsClient::new(
                    ca,
                    c.cert.as_ref(),
                    c.key.as_ref(),
                    &c.tls_server_name,
                )?),
                _ => None,
            },
        };
        let label = c.label.clone().unwrap_or_else(|| c.broker.clone());
        Ok(Settings {
            common: c.clone(),
            client,
            threads,
            cpus,
            sources,
            label,
        })
    }
}

struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new(c: &Common) -> Self {
        Progress {
            on: !c.quiet && std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }
    fn tick(&mut self, shared: &Shared, phase: &str, prev: &mut (u64, u64)) {
        if !self.on || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let (sent, recv) = (shared.sent.load(Relaxed), shared.received.load(Relaxed));
        eprint!(
            "\r\x1b[2K[{phase}] conns {} (failed {})  sent {:.0}/s  recv {:.0}/s  errors {}",
            shared.open.load(Relaxed),
            shared.failed.load(Relaxed),
            (sent - prev.0) as f64 / secs,
            (recv - prev.1) as f64 / secs,
            shared.errors.load(Relaxed)
        );
        *prev = (sent, recv);
    }
    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

/// `id` with the shortest suffix that puts it on the same shard as `partner` (or on another one, `cross`).
fn placed_id(id: &str, partner: &str, place: crate::opts::Placement) -> String {
    use coremq::broker::shard::owner_shard;
    let target = owner_shard(partner, place.shards);
    (0u32..)
        .map(|k| format!("{id}-{k}"))
        .find(|c| (owner_shard(c, place.shards) == target) != place.cross)
        .expect("some suffix lands on the wanted shard")
}

/// Starts the worker threads with their share of clients; returns their join handles.
fn start_workers(
    s: &Settings,
    plan: &Plan,
    shared: &Arc<Shared>,
) -> Vec<std::thread::JoinHandle<WorkerStats>> {
    let prefix = s
        .common
        .client_prefix
        .clone()
        .unwrap_or_else(|| format!("lg-{}", std::process::id()));
    let mut specs: Vec<ClientSpec> =
        Vec::with_capacity(plan.sub_filters.len() + plan.pub_topics.len() + plan.idle);
    let source = |k: usize| s.sources.as_ref().map(|v| v[k % v.len()]);
    // Subscribers first so they are connecting before the publishers.
    for (index, filter) in plan.sub_filters.iter().enumerate() {
        specs.push(ClientSpec {
            client_id: format!("{prefix}-s{index}"),
            source: source(specs.len()),
            role: Role::Subscriber {
                index,
                filter: filter.clone(),
            },
        });
    }
    let n_pubs = plan.pub_topics.len() as u64;
    for (index, topic) in plan.pub_topics.iter().enumerate() {
        let limit = match s.common.count {
            0 => u64::MAX,
            n => n / n_pubs + u64::from((index as u64) < n % n_pubs),
        };
        let mut client_id = format!("{prefix}-p{index}");
        if let (Some(place), Scenario::Pairs) = (s.common.place, plan.scenario) {
            client_id = placed_id(&client_id, &format!("{prefix}-s{index}"), place);
        }
        specs.push(ClientSpec {
            client_id,
            source: source(specs.len()),
            role: Role::Publisher {
                index,
                pub_id: s.common.id_offset.wrapping_add(index as u32),
                topic: topic.clone(),
                limit,
            },
        });
    }
    for index in 0..plan.idle {
        specs.push(ClientSpec {
            client_id: format!("{prefix}-c{index}"),
            source: source(specs.len()),
            role: Role::Idle,
        });
    }
    let mut per_thread: Vec<Vec<ClientSpec>> = (0..s.threads).map(|_| Vec::new()).collect();
    for (k, spec) in specs.into_iter().enumerate() {
        per_thread[k % s.threads].push(spec);
    }
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    per_thread
        .into_iter()
        .enumerate()
        .map(|(t, specs)| {
            let shared = shared.clone();
            let cfg = s.client.clone();
            let pin = s.cpus.as_ref().map(|c| c[t % c.len()]);
            let core = pin.and_then(|id| core_ids.iter().find(|c| c.id == id).copied());
            let rate = if s.common.connect_rate > 0.0 {
                s.common.connect_rate / s.threads as f64
            } else {
                0.0
            };
            let concurrency = s.common.connect_concurrency.clamp(1, 100_000);
            std::thread::Builder::new()
                .name(format!("lg-worker-{t}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker(specs, cfg, shared, rate, concurrency)
                })
                .expect("spawning a worker thread")
        })
        .collect()
}

fn worker(
    specs: Vec<ClientSpec>,
    cfg: ClientConfig,
    shared: Arc<Shared>,
    rate: f64,
    concurrency: usize,
) -> WorkerStats {
    let stats = Rc::new(std::cell::RefCell::new(WorkerStats::default()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut st = WorkerStats::default();
            st.error(format!("runtime:{e}"));
            shared.failed.fetch_add(specs.len(), Relaxed);
            return st;
        }
    };
    let local = tokio::task::LocalSet::new();
    let cfg = Rc::new(cfg);
    let st = stats.clone();
    local.block_on(&rt, async move {
        tokio::task::spawn_local(crate::timer::drive());
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let start = tokio::time::Instant::now();
        let mut handles = Vec::with_capacity(specs.len());
        for (k, spec) in specs.into_iter().enumerate() {
            if rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
            }
            if *shared.phase.borrow() == Phase::Close {
                break;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            handles.push(tokio::task::spawn_local(run_client(
                spec,
                cfg.clone(),
                shared.clone(),
                st.clone(),
                permit,
            )));
        }
        for h in handles {
            if h.await.is_err() {
                shared.errors.fetch_add(1, Relaxed);
                st.borrow_mut().error("client_task_panicked");
            }
        }
    });
    drop(local);
    Rc::try_unwrap(stats)
        .map(|c| c.into_inner())
        .unwrap_or_default()
}

fn join(handles: Vec<std::thread::JoinHandle<WorkerStats>>) -> WorkerStats {
    let mut all = WorkerStats::default();
    for h in handles {
        match h.join() {
            Ok(st) => all.merge(st),
            Err(_) => all.error("worker_panicked"),
        }
    }
    all
}

/// Waits (bounded) until every client is connected/subscribed or has failed.
fn wait_setup(shared: &Shared, total: usize, deadline: Instant, progress: &mut Progress) -> bool {
    let mut prev = (0, 0);
    while Instant::now() < deadline && !crate::cpu::interrupted() {
        if shared.ready.load(Relaxed) + shared.failed.load(Relaxed) >= total {
            return true;
        }
        progress.tick(shared, "connect", &mut prev);
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn base_report(s: &Settings, plan: &Plan) -> Report {
    Report {
        scenario: plan.scenario.name().into(),
        broker: s.label.clone(),
        mqtt: if s.client.connect.version.is_v5() {
            "5".into()
        } else {
            "3.1.1".into()
        },
        qos: s.client.qos as u8,
        size: s.client.size,
        offered_rate: s.client.total_rate,
        publishers: plan.pub_topics.len(),
        subscribers: plan.sub_filters.len(),
        connections: plan.pub_topics.len() + plan.sub_filters.len() + plan.idle,
        loadgen_threads: s.threads,
        ..Default::default()
    }
}

fn cpu_warning(r: &mut Report) {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(r.loadgen_threads) as f64;
    if r.loadgen_cpu_pct >= 85.0 * cores {
        r.warnings.push(format!(
            "load generator CPU at {:.0}% of {} usable core(s): it may be the bottleneck, not the broker \
             (add --threads/--pin cores, or run it on another machine)",
            r.loadgen_cpu_pct, cores
        ));
    }
}

fn setup_deadline(s: &Settings, clients: usize) -> Instant {
    let pacing = if s.common.connect_rate > 0.0 {
        clients as f64 / s.common.connect_rate
    } else {
        0.0
    };
    let waves = (clients / (s.common.connect_concurrency.max(1) * s.threads)) as f64 + 1.0;
    Instant::now()
        + Duration::from_secs_f64(
            pacing + s.client.connect_timeout.as_secs_f64() * 2.0 * waves.min(10.0) + 5.0,
        )
}

/// `conn`: open the connections at the configured rate, hold them idle, report connect figures.
pub fn run_conn(s: &Settings, plan: &Plan) -> Report {
    let shared = Arc::new(Shared::new(0, 0));
    let mut progress = Progress::new(&s.common);
    let rss_before = s.common.broker_pid.and_then(rss_kib);
    let self_before = rss_kib(std::process::id());
    let t_start = Instant::now();
    let cpu0 = process_cpu_ns();
    let handles = start_workers(s, plan, &shared);
    let complete = wait_setup(
        &shared,
        plan.idle,
        setup_deadline(s, plan.idle),
        &mut progress,
    );
    let connect_secs = t_start.elapsed().as_secs_f64();
    let connected = shared.ready.load(Relaxed) as u64;
    let hold_end = Instant::now() + Duration::from_secs_f64(s.common.duration);
    let mut prev = (0, 0);
    while Instant::now() < hold_end && !crate::cpu::interrupted() {
        progress.tick(&shared, "hold", &mut prev);
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = shared.open.load(Relaxed) as u64;
    let rss_after = s.common.broker_pid.and_then(rss_kib);
    let self_after = rss_kib(std::process::id());
    let wall = t_start.elapsed().as_secs_f64();
    let cpu = process_cpu_ns() - cpu0;
    shared.phase.send_replace(Phase::Close);
    let all = join(handles);
    progress.done();
    let mut r = base_report(s, plan);
    r.duration_s = s.common.duration;
    r.loadgen_cpu_pct = cpu as f64 / 1e9 / wall * 100.0;
    r.errors_by_reason = all.errors.clone();
    r.errors = all.errors.values().sum();
    r.hgrm = crate::stats::hgrm(&all.connect_latency);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    r.connect = Some(ConnectReport {
        attempted: plan.idle as u64,
        connected,
        failed: shared.failed.load(Relaxed) as u64,
        connect_rate: connected as f64 / connect_secs.max(1e-9),
        connect_secs,
        latency_ms: percentiles(&all.connect_latency, 1e6),
        held_at_end: held,
        broker_rss_kib_before: rss_before,
        broker_rss_kib_after: rss_after,
        broker_rss_bytes_per_conn: per_conn,
        loadgen_rss_bytes_per_conn: match (self_before, self_after) {
            (Some(b), Some(a)) if held > 0 => Some((a as f64 - b as f64) * 1024.0 / held as f64),
            _ => None,
        },
    });
    if !complete {
        r.warnings
            .push("connect phase timed out before every attempt finished".into());
    }
    if held < connected {
        r.warnings.push(format!(
            "{} connections dropped during the hold",
            connected - held
        ));
    }
    cpu_warning(&mut r);
    if crate::cpu::interrupted() {
        r.warnings.push("interrupted (Ctrl-C): partial run".into());
    }
    r
}

/// All publish/subscribe scenarios.
pub fn run_pubsub(s: &Settings, plan: &Plan) -> Report {
    let n_pubs = plan.pub_topics.len();
    let n_subs = plan.sub_filters.len();
    let shared = Arc::new(Shared::new(n_pubs, n_subs));
    let mut progress = Progress::new(&s.common);
    let rss_before = s.common.broker_pid.and_then(rss_kib);
    let handles = start_workers(s, plan, &shared);
    let clients = n_pubs + n_subs;
    let complete = wait_setup(&shared, clients, setup_deadline(s, clients), &mut progress);

    // Which subscribers (or share groups) each publisher's messages should reach.
    let groups = receiver_groups(plan, &shared);
    let fan: Vec<u64> = plan
        .pub_topics
        .iter()
        .map(|t| {
            groups
                .iter()
                .filter(|g| topic::matches(&g.filter, t))
                .count() as u64
        })
        .collect();
    let expected_now = || -> u64 {
        fan.iter()
            .zip(&shared.pub_sent)
            .map(|(f, s)| f * s.load(Relaxed))
            .sum()
    };

    let cpu0 = process_cpu_ns();
    let broker_cpu0 = s.common.broker_pid.and_then(crate::cpu::pid_cpu_ns);
    let wall0 = Instant::now();
    let start_ns = now_ns() + 20_000_000;
    let end_ns = start_ns + (s.common.duration * 1e9) as u64;
    shared.phase.send_replace(Phase::Run { start_ns, end_ns });
    let mut prev = (0, 0);
    // Publishing phase: until the end time, or every publisher has sent its count (and had it acked).
    while now_ns() < end_ns && !crate::cpu::interrupted() {
        if n_pubs > 0 && shared.pubs_done.load(Relaxed) >= n_pubs {
            break;
        }
        if n_pubs == 0
            && s.common
                .expected
                .is_some_and(|e| shared.received.load(Relaxed) >= e)
        {
            break;
        }
        progress.tick(&shared, "run", &mut prev);
        std::thread::sleep(Duration::from_millis(2));
    }
    let publish_end_ns = now_ns().min(end_ns);
    if crate::cpu::interrupted() {
        // Stop offering load now, but still collect what is in flight.
        shared.phase.send_replace(Phase::Run {
            start_ns,
            end_ns: publish_end_ns,
        });
        progress.done();
        eprintln!("interrupted: draining in-flight messages (Ctrl-C again to quit at once)");
    }
    // Grace: in-flight messages and acks.
    let grace_end = Instant::now() + Duration::from_secs_f64(s.common.grace.max(0.0));
    let qos0 = s.client.qos == QoS::AtMostOnce;
    while Instant::now() < grace_end && n_pubs > 0 {
        // Publishers may still owe a few due messages (timer granularity): wait for them to finish first,
        // or the last messages would be cut off and show up as loss.
        let pubs_done = shared.pubs_done.load(Relaxed) >= n_pubs;
        let acked_all = qos0 || shared.acked.load(Relaxed) >= shared.sent.load(Relaxed);
        if pubs_done && acked_all && shared.received.load(Relaxed) >= expected_now() {
            break;
        }
        progress.tick(&shared, "grace", &mut prev);
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = process_cpu_ns() - cpu0;
    let broker_cpu1 = s.common.broker_pid.and_then(crate::cpu::pid_cpu_ns);
    let rss_after = s.common.broker_pid.and_then(rss_kib);
    shared.phase.send_replace(Phase::Close);
    let all = join(handles);
    progress.done();

    let mut r = base_report(s, plan);
    r.loadgen_cpu_pct = cpu as f64 / 1e9 / wall.max(1e-9) * 100.0;
    account(&mut r, s, plan, &all, start_ns, publish_end_ns);
    if let (Some(a), Some(b)) = (broker_cpu0, broker_cpu1) {
        r.broker_cpu_pct = Some(b.saturating_sub(a) as f64 / 1e9 / wall.max(1e-9) * 100.0);
        if r.received > 0 {
            r.broker_cpu_us_per_msg = Some(b.saturating_sub(a) as f64 / 1e3 / r.received as f64);
        }
    }
    if let Some(b) = rss_before {
        r.broker_rss_kib = rss_after.map(|a| (b, a));
    }
    if !complete {
        r.warnings.push(format!(
            "setup timed out: only {} of {} clients ready when publishing started",
            shared.ready.load(Relaxed),
            clients
        ));
    }
    cpu_warning(&mut r);
    if crate::cpu::interrupted() {
        r.warnings.push("interrupted (Ctrl-C): partial run".into());
    }
    r
}

/// A set of subscriptions that should receive each matching message once: one subscriber, or a share group.
struct Group {
    filter: String,
    members: Vec<usize>,
}

fn receiver_groups(plan: &Plan, shared: &Shared) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, f) in plan.sub_filters.iter().enumerate() {
        if !shared.sub_ok[i].load(Relaxed) {
            continue;
        }
        if topic::share_group(f).is_some() {
            if let Some(g) = groups.iter_mut().find(|g| g.filter == *f) {
                g.members.push(i);
                continue;
            }
        }
        groups.push(Group {
            filter: f.clone(),
            members: vec![i],
        });
    }
    groups
}

/// Sent/acked from the publishers, received/lost/duplicates per receiver group, latency and rates.
fn account(
    r: &mut Report,
    s: &Settings,
    plan: &Plan,
    all: &WorkerStats,
    start_ns: u64,
    publish_end_ns: u64,
) {
    let mut sent_by_pub = vec![0u64; plan.pub_topics.len()];
    for p in &all.pubs {
        sent_by_pub[p.index] = p.sent;
        r.sent += p.sent;
        r.acked += p.acked;
    }
    let mut subs: Vec<Option<&crate::stats::SubResult>> = vec![None; plan.sub_filters.len()];
    for sr in &all.subs {
        subs[sr.index] = Some(sr);
    }
    // Group by share group when several members share a `$share` filter.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, f) in plan.sub_filters.iter().enumerate() {
        if !subs[i].is_some_and(|sr| sr.subscribed) {
            continue;
        }
        match groups
            .iter_mut()
            .find(|g| topic::share_group(f).is_some() && g.0 == *f)
        {
            Some(g) => g.1.push(i),
            None => groups.push((f.clone(), vec![i])),
        }
    }
    let in_process_pubs = !plan.pub_topics.is_empty();
    for (filter, members) in &groups {
        let mut merged: std::collections::HashMap<u32, SeqTracker> = Default::default();
        for &m in members {
            for (id, t) in &subs[m].expect("member is subscribed").streams {
                match merged.get_mut(id) {
                    Some(acc) => acc.merge(t),
                    None => {
                        merged.insert(*id, t.clone());
                    }
                }
            }
        }
        let unique: u64 = merged.values().map(|t| t.unique).sum();
        r.received += unique;
        r.duplicates += merged.values().map(|t| t.duplicates).sum::<u64>();
        r.out_of_order += merged.values().map(|t| t.out_of_order).sum::<u64>();
        let untracked: u64 = merged.values().map(|t| t.untracked).sum();
        if untracked > 0 {
            r.errors_by_reason
                .insert("seq_tracker_overflow".into(), untracked);
        }
        let expected: u64 = if in_process_pubs {
            plan.pub_topics
                .iter()
                .zip(&sent_by_pub)
                .filter(|(t, _)| topic::matches(filter, t))
                .map(|(_, n)| *n)
                .sum()
        } else {
            merged.values().map(|t| t.high_water()).sum()
        };
        r.expected += expected;
        r.lost += expected.saturating_sub(unique);
        if in_process_pubs && expected > unique {
            // Say where the loss is, so a user can tell a dropped tail from holes in the middle.
            let mut shown = 0;
            for (index, topic_name) in plan.pub_topics.iter().enumerate() {
                if shown >= 5 || !topic::matches(filter, topic_name) {
                    continue;
                }
                let id = s.common.id_offset.wrapping_add(index as u32);
                let empty = SeqTracker::new();
                let gaps = merged
                    .get(&id)
                    .unwrap_or(&empty)
                    .missing(sent_by_pub[index], 4);
                if !gaps.is_empty() {
                    shown += 1;
                    r.warnings.push(format!(
                        "{filter:?} missing from publisher {id} (sent {}): {}",
                        sent_by_pub[index],
                        gaps.iter()
                            .map(|(a, b)| format!("{a}..{b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    if !in_process_pubs {
        if let Some(e) = s.common.expected {
            r.expected = e;
            r.lost = e.saturating_sub(r.received);
        }
    }
    if all.stale > 0 {
        r.warnings.push(format!(
            "{} messages from an earlier run (stamped before this one started) ignored: the broker was still \
             delivering an old backlog",
            all.stale
        ));
    }
    if all.foreign > 0 {
        r.warnings.push(format!(
            "{} messages without a loadgen stamp (or from untracked publishers) ignored",
            all.foreign
        ));
    }
    r.latency_us = percentiles(&all.latency, 1000.0);
    if !all.ack_latency.is_empty() {
        r.ack_latency_us = Some(percentiles(&all.ack_latency, 1000.0));
    }
    r.hgrm = crate::stats::hgrm(&all.latency);
    r.latency_curve = latency_curve(&all.latency);
    // A time-bounded run offers load for its whole duration even when the socket buffers swallowed a
    // max-rate burst at the start; a count-bounded one until its last message went out.
    let last_send = (all.last_send_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-3);
    let send_secs = if s.common.count == 0 {
        last_send.max(publish_end_ns.saturating_sub(start_ns) as f64 / 1e9)
    } else {
        last_send
    };
    let recv_secs = (all.last_recv_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-3);
    r.duration_s = if in_process_pubs {
        send_secs
    } else {
        recv_secs
    };
    r.send_rate = if r.sent > 0 {
        r.sent as f64 / send_secs
    } else {
        0.0
    };
    r.recv_rate = if r.received > 0 {
        r.received as f64 / recv_secs
    } else {
        0.0
    };
    for (k, v) in &all.errors {
        *r.errors_by_reason.entry(k.clone()).or_default() += v;
    }
    r.errors = r.errors_by_reason.values().sum();
    if r.offered_rate > 0.0
        && r.sent > 0
        && r.send_rate < 0.95 * r.offered_rate
        && s.common.count == 0
    {
        r.warnings.push(format!(
            "offered {:.0} msg/s but only {:.0} msg/s went out: the broker pushed back (TCP, QoS window) or the \
             load generator could not keep up",
            r.offered_rate, r.send_rate
        ));
    }
    if r.lost > 0 {
        r.warnings.push(format!(
            "{} messages lost ({:.3}% of expected)",
            r.lost,
            r.lost as f64 * 100.0 / r.expected.max(1) as f64
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Plan {
        let cli = crate::opts::Cli::try_parse_from(args).unwrap();
        let (sc, c) = match cli.cmd {
            crate::opts::Cmd::Fanin(c) => (Scenario::Fanin, c),
            crate::opts::Cmd::Shared(c) => (Scenario::Shared, c),
            crate::opts::Cmd::Pairs(c) => (Scenario::Pairs, c),
            crate::opts::Cmd::Pub(c) => (Scenario::Pub, c),
            crate::opts::Cmd::Sub(c) => (Scenario::Sub, c),
            other => panic!("{other:?}"),
        };
        Plan::new(sc, &c).unwrap()
    }

    #[test]
    fn default_topics_are_tagged_and_match() {
        let p = plan(&["x", "fanin", "--publishers", "3"]);
        assert_eq!(p.pub_topics.len(), 3);
        assert_ne!(p.pub_topics[0], "lg/fanin/0", "run tag missing");
        assert!(
            p.pub_topics
                .iter()
                .all(|t| topic::matches(&p.sub_filters[0], t)),
            "{p:?}"
        );
        let s = plan(&["x", "shared", "--subscribers", "2"]);
        assert_eq!(topic::share_group(&s.sub_filters[0]), Some("lg"));
        assert!(
            s.pub_topics
                .iter()
                .all(|t| topic::matches(&s.sub_filters[1], t)),
            "{s:?}"
        );
        let pairs = plan(&["x", "pairs", "--pairs", "4"]);
        assert_eq!(pairs.pub_topics, pairs.sub_filters);
        assert!(!topic::matches(&pairs.sub_filters[0], &pairs.pub_topics[1]));
        // Separate processes meet on fixed defaults.
        let pb = plan(&["x", "pub"]);
        let sb = plan(&["x", "sub"]);
        assert!(topic::matches(&sb.sub_filters[0], &pb.pub_topics[0]));
        // A user's topic is used as given.
        let u = plan(&[
            "x",
            "fanin",
            "--topic",
            "a/%i",
            "--filter",
            "a/#",
            "--publishers",
            "2",
        ]);
        assert_eq!(u.pub_topics, vec!["a/0", "a/1"]);
    }

    #[test]
    fn empty_plans_are_errors() {
        let cli = crate::opts::Cli::try_parse_from(["x", "fanin", "--subscribers", "0"]).unwrap();
        let crate::opts::Cmd::Fanin(c) = cli.cmd else {
            unreachable!()
        };
        assert!(Plan::new(Scenario::Fanin, &c).is_err());
    }
}
