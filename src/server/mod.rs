//! The glommio layer: one pinned executor per shard, listeners, the channel mesh, signals. Kept thin: every
//! protocol decision is in `crate::broker`.

mod linger;
pub mod net;
pub mod netpoll;
pub mod reload;
pub mod shard_loop;
mod spin;
pub mod uring;
pub mod verifier;

use std::io;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};

use bytestring::ByteString;

use crate::broker::shard::{Shard, ShardConfig};
use crate::config::Config;
use crate::store::{DirLock, State, Store};

/// One shard's recovered log, handed to its executor.
type Recovered = Option<(Store, State)>;

/// Write `path` through a temporary file, synced and renamed, then sync the directory: after a crash it holds
/// the whole text or is absent, never empty.
fn write_durably(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Number of `shard-N` log directories: one more than the highest N (0 when there are none).
fn shard_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    name.to_str()?.strip_prefix("shard-")?.parse::<usize>().ok()
                })
                .map(|n| n + 1)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Lock the data directory and replay every shard's log, before anything is accepted. Returns the lock, each
/// shard's store and state, and each shard's subscribed filters (for the others' interest summaries).
fn recover(
    cfg: &Config,
    shards: usize,
) -> io::Result<(DirLock, Vec<Recovered>, Vec<Vec<ByteString>>)> {
    let dir = &cfg.data_dir;
    let lock = DirLock::lock_data_dir(dir).map_err(|e| io::Error::other(e.to_string()))?;
    // Sessions live on the shard that owns hash(client id) % shards: another shard count would put them on the
    // wrong shard, so refuse it clearly.
    let marker = dir.join("SHARDS");
    match std::fs::read_to_string(&marker) {
        // Empty: the first start died before the marker reached the disk (found by tests/faults.rs: an ext4 that
        // turned read-only lost it). The shard directories tell what wrote the log.
        Ok(text) if text.trim().is_empty() && shard_dirs(dir) <= shards => {
            write_durably(&marker, &format!("{shards}\n"))?
        }
        Ok(text) => {
            let was: usize = text.trim().parse().unwrap_or(0);
            if was != shards {
                return Err(io::Error::other(format!(
                    "data directory {} was written by {was} shards; start with --shards {was} (or use another \
                     --data-dir)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_durably(&marker, &format!("{shards}\n"))?
        }
        Err(e) => return Err(e),
    }
    let mut stores = Vec::with_capacity(shards);
    let mut filters = Vec::with_capacity(shards);
    for id in 0..shards {
        let (store, rec) = Store::open(dir, id as u32, cfg.store.clone())
            .map_err(|e| io::Error::other(format!("shard {id} log in {}: {e}", dir.display())))?;
        let r = &rec.report;
        tracing::info!(
            shard = id,
            sessions = rec.state.sessions.len(),
            retained = rec.state.retained.len(),
            records = r.records,
            segments = r.segments,
            corrupt_records = r.corruption_count,
            truncated = r.truncated_at.is_some(),
            elapsed_ms = r.elapsed.as_millis() as u64,
            "log recovered"
        );
        for c in &r.corruptions {
            tracing::warn!(
                shard = id,
                segment = c.segment,
                offset = c.offset,
                skipped_bytes = c.skipped_bytes,
                reason = %c.reason,
                "corrupt log record skipped"
            );
        }
        let mut f: Vec<ByteString> = rec
            .state
            .sessions
            .iter()
            .flat_map(|s| {
                s.subscriptions
                    .iter()
                    .map(|x| ByteString::from(x.filter.as_str()))
            })
            .collect();
        f.sort_unstable();
        f.dedup();
        filters.push(f);
        stores.push(Some((store, rec.state)));
    }
    Ok((lock, stores, filters))
}

/// The CPUs shards are pinned to: the configured list, else the CPUs this process may run on (so `taskset`
/// works), in order.
pub fn shard_cpus(cfg: &Config) -> Vec<usize> {
    if !cfg.cpus.is_empty() {
        return cfg.cpus.clone();
    }
    let mut cpus = Vec::new();
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for c in 0..libc::CPU_SETSIZE as usize {
                if libc::CPU_ISSET(c, &set) {
                    cpus.push(c);
                }
            }
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

fn listen_socket(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Bind every listener once per shard (SO_REUSEPORT spreads connections over shards). Port 0 is resolved by the
/// first socket and reused by the others. Returns per-shard listeners and the bound addresses, in
/// `Config::all_listeners` order.
pub fn bind_listeners(
    cfg: &Config,
    shards: usize,
) -> io::Result<(Vec<Vec<shard_loop::ShardListener>>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<shard_loop::ShardListener>> =
        (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for (index, l) in cfg.all_listeners().iter().enumerate() {
        let addr = l.address;
        let layers =
            crate::stream::factory_for(l, cfg.max_packet_size).map_err(io::Error::other)?;
        let first = listen_socket(addr, cfg.listen_backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let actual = first.local_addr()?.as_socket().expect("inet address");
        bound.push(actual);
        let mut fd = first.into_raw_fd();
        for (shard, list) in per_shard.iter_mut().enumerate() {
            if shard > 0 {
                fd = listen_socket(actual, cfg.listen_backlog)?.into_raw_fd();
            }
            list.push(shard_loop::ShardListener {
                fd,
                index,
                layers: layers.clone(),
            });
        }
    }
    Ok((per_shard, bound))
}

pub fn shard_config(cfg: &Config, shard_id: u16, shards: u16) -> ShardConfig {
    ShardConfig {
        shard_id,
        shards,
        max_packet_size: cfg.max_packet_size,
        max_keepalive: cfg.max_keepalive,
        connect_timeout_secs: cfg.connect_timeout,
        max_inflight: cfg.max_inflight,
        max_inbound_qos2: cfg.max_inbound_qos2,
        max_queued_messages: cfg.max_queued_messages,
        max_in_transit: cfg.mesh_capacity + shard_loop::IN_TRANSIT_SLACK,
        overflow: cfg.queue_overflow,
        offline_overflow: cfg.offline_overflow,
        max_offline_bytes_per_session: cfg.max_offline_bytes_per_session,
        max_offline_messages_per_session: cfg.max_offline_messages_per_session,
        max_offline_bytes_per_shard: offline_bytes_per_shard(cfg, shards),
        persistent_queue_full: cfg.persistent_queue_full,
        qos0_overflow: cfg.qos0_overflow,
        max_out_buffer: cfg.max_out_buffer,
        max_subscriptions_per_session: cfg.max_subscriptions_per_session,
        max_sessions: cfg.max_connections as usize,
        max_retained_messages: cfg.max_retained_messages,
        max_retained_bytes: cfg.max_retained_bytes,
        subscribe_denied_reason: crate::codec::ReasonCode::from_u8(cfg.acl_subscribe_denied_reason)
            .unwrap_or(crate::codec::ReasonCode::NotAuthorized),
        topic_alias_maximum: cfg.topic_alias_maximum,
        response_information: cfg.response_information.clone(),
        server_reference: cfg.server_reference.clone(),
        server_moved: cfg.redirect == crate::config::Redirect::Moved,
    }
}

/// The shard's bound on log bytes queued for persistent sessions: the configured one, or half of the smaller of
/// the `[store]` budget and this shard's share of the data directory's free space at start.
fn offline_bytes_per_shard(cfg: &Config, shards: u16) -> u64 {
    if cfg.max_offline_bytes_per_shard > 0 || !cfg.persistence {
        return cfg.max_offline_bytes_per_shard;
    }
    let budget = cfg.store.max_segments as u64 * cfg.store.segment_size as u64;
    let free = free_bytes(&cfg.data_dir).map_or(u64::MAX, |f| f / shards.max(1) as u64);
    (budget.min(free) / 2).max(1 << 20)
}

/// Free bytes (for an unprivileged user) on the file system of `dir` or its nearest existing parent.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir;
    while !p.exists() {
        p = p.parent()?;
    }
    let path = if p.as_os_str().is_empty() {
        std::ffi::CString::new(".").ok()?
    } else {
        std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-parameter.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Run the broker until `shutdown` is set. `on_bound` is told the listening addresses once they are bound.
pub fn run(
    cfg: Config,
    shutdown: Arc<AtomicBool>,
    on_bound: impl FnOnce(&[SocketAddr], usize),
) -> io::Result<()> {
    let cpus = shard_cpus(&cfg);
    let shards = if cfg.shards == 0 {
        cpus.len()
    } else {
        cfg.shards
    }
    .clamp(1, 64);
    // Password and ACL files: a file that does not parse refuses the start, naming the file, line and why.
    let security = Arc::new(
        crate::auth::policy::Security::load(&cfg)
            .map_err(|e| io::Error::other(format!("security: {e}")))?,
    );
    for line in security.describe(&cfg) {
        tracing::info!("{line}");
    }
    // Open files and locked memory bound how many connections and shards can really run: say so at start.
    match crate::limits::raise_nofile_limit() {
        Ok(n) => tracing::debug!(
            open_files = n,
            "RLIMIT_NOFILE soft limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    for w in crate::limits::check_limits(cfg.max_connections, shards, cfg.io_memory as u64) {
        tracing::warn!(
            setting = w.setting,
            current = w.current,
            required = w.required,
            "{}",
            w.message
        );
    }
    let io_kind = net::choose(cfg.io, shards, cfg.io_memory as u64)?;
    tracing::info!(io = io_kind.name(), "socket backend");
    let (data_lock, recovered, filters) = if cfg.persistence {
        let (l, r, f) = recover(&cfg, shards)?;
        (Some(l), r, f)
    } else {
        (
            (None),
            (0..shards).map(|_| None).collect(),
            vec![Vec::new(); shards],
        )
    };
    let recovered = Arc::new(Mutex::new(recovered));
    let filters = Arc::new(filters);
    let epoch_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let metrics = crate::metrics::Metrics::new(shards);
    // Bound before the MQTT listeners, so a taken metrics port refuses the start with the reason.
    let metrics_server = match cfg.metrics_listen {
        Some(addr) => Some(crate::metrics::http::spawn(
            addr,
            metrics.clone(),
            shutdown.clone(),
        )?),
        None => None,
    };
    let (listeners, bound) = bind_listeners(&cfg, shards)?;
    // SIGHUP re-reads the password, ACL and certificate files (`reload.rs`).
    let security_cell = reload::SecurityCell::new(security.clone());
    let all = cfg.all_listeners();
    let layered: Vec<(
        crate::config::ListenerConfig,
        Arc<dyn crate::stream::LayerFactory>,
    )> = listeners
        .first()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| Some((all[l.index].clone(), l.layers.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    reload::spawn(
        cfg.clone(),
        security_cell.clone(),
        layered,
        shutdown.clone(),
    )?;
    on_bound(&bound, shards);
    // Bridges connect to a bound listener; until the shards run, their CONNECT waits in the accept backlog.
    let bridges =
        crate::bridge::spawn(&cfg, &bound, &metrics, shutdown.clone()).map_err(io::Error::other)?;

    let online = CpuSet::online().map_err(|e| io::Error::other(e.to_string()))?;
    let placement: Vec<CpuSet> = (0..shards)
        .map(|i| {
            let cpu = cpus[i % cpus.len()];
            online.clone().filter(|l| l.cpu == cpu)
        })
        .collect();
    if placement.iter().any(|s| s.is_empty()) {
        return Err(io::Error::other(format!("a CPU in {cpus:?} is not online")));
    }
    let links: Vec<Option<shard_loop::MeshLink>> =
        shard_loop::build_mesh(shards, cfg.mesh_capacity)?
            .into_iter()
            .map(Some)
            .collect();
    // Costly password hashes are verified off the shards' loops.
    let doorbells = links
        .first()
        .and_then(|l| l.as_ref())
        .map(|l| l.doorbells.clone())
        .unwrap_or_default();
    let verifier_links: Vec<Option<verifier::VerifierLink>> =
        verifier::start(shards.min(2), doorbells)?
            .into_iter()
            .map(Some)
            .collect();
    let verifier_links = Arc::new(Mutex::new(verifier_links));
    let links = Arc::new(Mutex::new(links));
    let next_id = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listeners = Arc::new(Mutex::new(listeners));
    let max_conns = (cfg.max_connections as usize).div_ceil(shards);
    let cfg = Arc::new(cfg);

    let restored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let restored_by_shards = restored.clone();
    let metrics_by_shards = metrics.clone();
    let placement = if cfg.pin {
        PoolPlacement::Custom(placement)
    } else {
        PoolPlacement::Unbound(shards)
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(cfg.io_memory)
        .name("coremq-shard")
        .on_all_shards(move || {
            let links = links.clone();
            let verifier_links = verifier_links.clone();
            let security = security.clone();
            let security_cell = security_cell.clone();
            let next_id = next_id.clone();
            let listeners = listeners.clone();
            let shutdown = shutdown.clone();
            let cfg = cfg.clone();
            let recovered = recovered.clone();
            let filters = filters.clone();
            let restored = restored_by_shards.clone();
            let metrics = metrics_by_shards.clone();
            async move {
                let id = next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let fds = std::mem::take(&mut listeners.lock().expect("listener table")[id]);
                let link = links.lock().expect("mesh table")[id]
                    .take()
                    .expect("one mesh link per shard");
                let mut core = Shard::new(shard_config(&cfg, id as u16, shards as u16));
                core.set_security(security.clone());
                let verifier = verifier_links.lock().expect("verifier table")[id].take();
                let rec = recovered.lock().expect("recovery table")[id].take();
                if let Some((store, state)) = rec {
                    // Held acknowledgements are released when the log syncs: let the syncer wake us.
                    let bell = link.doorbells[id].clone();
                    store.set_durable_notify(Arc::new(move || bell.ring_if_sleeping()));
                    let m = metrics.clone();
                    store.set_sync_observer(Arc::new(move |d| m.shard(id).log_sync.record(d)));
                    core.attach_store(store, epoch_unix);
                    core.restore(state);
                    for (peer, f) in filters.iter().enumerate().filter(|(p, _)| *p != id) {
                        core.add_peer_interest(peer as u16, f);
                    }
                }
                restored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let io = shard_loop::ShardIo::new(
                    core,
                    fds,
                    link,
                    shutdown,
                    max_conns,
                    std::time::Duration::from_micros(cfg.idle_spin_us),
                    verifier,
                    shard_loop::Telemetry {
                        metrics,
                        sys_interval: cfg.sys_interval,
                        security: security_cell,
                    },
                    io_kind,
                )
                .expect("shard socket backend");
                tracing::info!(shard = id, "shard running");
                shard_loop::main_loop(io).await;
            }
        })
        .map_err(|e| io::Error::other(e.to_string()))?;
    // The recovered state was built on this thread and freed on the shards': the allocator only returns such
    // memory when its owner thread collects, and this thread then sleeps in join. Collect once restored (measured
    // with 1M queued messages: about 60 MB of replay state stayed resident otherwise).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while restored.load(std::sync::atomic::Ordering::SeqCst) < shards
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    crate::alloc_collect(true);
    // Every shard replayed its log and the listeners are open: ready for traffic (`/readyz`).
    if restored.load(std::sync::atomic::Ordering::SeqCst) == shards {
        metrics.set_ready(true);
    }
    for r in handles.join_all() {
        if let Err(e) = r {
            return Err(io::Error::other(e.to_string()));
        }
    }
    metrics.set_ready(false);
    bridges.join();
    if let Some(m) = metrics_server {
        m.join();
    }
    drop(data_lock);
    Ok(())
}
