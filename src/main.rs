//! `coremq`: with no arguments, listens on 127.0.0.1:1883 with the embedded default config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use mimalloc::MiMalloc;

use coremq::config::Config;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "coremq",
    version,
    about = "Thread-per-core MQTT broker (3.1, 3.1.1, 5.0) on io_uring",
    after_help = "Subcommands:\n  coremq passwd [-c | -D | -b] FILE USER [PASSWORD]   manage a password file \
                  (mosquitto_passwd's interface); see `coremq passwd --help`\n\n\
                  Config: every key with its default and meaning: `coremq --print-default-config`.\n\
                  Signals: SIGHUP re-reads the password file, ACL file and certificates; SIGTERM/SIGINT stop."
)]
struct Cli {
    /// TOML config file; keys not in it keep their embedded defaults (see `--print-default-config`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. 0.0.0.0:1883. Replaces the config's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Number of shards (pinned executors); 0 = one per CPU this process may run on.
    #[arg(long)]
    shards: Option<usize>,
    /// Do not pin shards to CPUs (the kernel places them); for machines shared with other busy processes.
    #[arg(long)]
    no_pin: bool,
    /// Upper bound on v5 clients' keep-alive (seconds).
    #[arg(long, value_name = "SECS")]
    max_keepalive: Option<u16>,
    /// Soft bound on messages held per session.
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<usize>,
    /// Directory of the durable log (persistent sessions, retained messages). Default ./data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: nothing is written to disk, nothing survives a restart.
    #[arg(long)]
    no_persistence: bool,
    /// Log fsync policy: interval:<N>ms (default interval:10ms), always, or never (benchmarks only).
    #[arg(long, value_name = "POLICY")]
    fsync: Option<coremq::store::FsyncPolicy>,
    /// Log filter, e.g. info, debug, coremq=debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Socket backend: auto, uring or epoll (overrides the config's `io` and COREMQ_IO).
    #[arg(long, value_name = "BACKEND")]
    io: Option<coremq::config::IoMode>,
    /// Print the embedded default config (every key, documented) and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut cfg = match &cli.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default_config(),
    };
    if !cli.listen.is_empty() {
        cfg.listen = cli.listen.clone();
    }
    if let Some(n) = cli.shards {
        cfg.shards = n;
    }
    if cli.no_pin {
        cfg.pin = false;
    }
    if let Some(n) = cli.max_keepalive {
        cfg.max_keepalive = n;
    }
    if let Some(n) = cli.max_queued_messages {
        cfg.max_queued_messages = n;
    }
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    if cli.no_persistence {
        cfg.persistence = false;
    }
    if let Some(f) = cli.fsync {
        cfg.store.fsync = f;
    }
    if let Some(l) = &cli.log_level {
        cfg.log_level = l.clone();
    }
    // COREMQ_IO (used by the test suite to run every broker test on each backend), then --io.
    if let Some(v) = std::env::var_os("COREMQ_IO") {
        let v = v.to_string_lossy();
        if !v.is_empty() {
            cfg.io = v.parse().map_err(|e| format!("COREMQ_IO: {e}"))?;
        }
    }
    if let Some(io) = cli.io {
        cfg.io = io;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Transparent huge pages make RSS grow in 2 MiB steps: mimalloc asks for them on its arenas (`allow_thp`), and
/// with the kernel's default `madvise` mode an idle-connection storm then costs ~400 bytes more per connection
/// than the heap holds. Memory per connection is what a broker of mostly idle clients runs out of first, so THP is
/// off for this process unless the operator asks mimalloc for it (`MIMALLOC_ALLOW_THP=1`).
fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // Applies to mappings that already exist too: the kernel checks the flag at fault time.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        eprintln!(
            "coremq: cannot disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// mimalloc returns freed memory to the OS (purges) one second after the free, but only when it runs again: a
/// broker that goes idle after a connection storm would keep the freed halves of every grown table resident. A
/// once-a-second non-forcing collect lets those purges happen; it takes microseconds and only touches memory
/// that is already due.
fn start_purge_ticker() {
    let spawned = std::thread::Builder::new()
        .name("coremq-purge".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            coremq::alloc_collect(false);
        });
    if let Err(e) = spawned {
        eprintln!("coremq: cannot start the allocator purge thread: {e}");
    }
}

fn main() -> ExitCode {
    // `coremq passwd ...` manages a password file (mosquitto_passwd's interface); it has its own arguments.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("passwd") {
        return match coremq::auth::passwd_cli::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coremq passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    disable_transparent_huge_pages();
    start_purge_ticker();
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", coremq::config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coremq: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log_level))
        .with_writer(std::io::stderr)
        .init();

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, shutdown.clone()) {
            eprintln!("coremq: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = coremq::server::run(cfg, shutdown, |addrs, shards| {
        for a in addrs {
            // Tests and scripts read this line to learn the port when listening on port 0.
            println!("coremq listening on {a} ({shards} shards)");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    match result {
        Ok(()) => {
            tracing::info!("shut down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coremq: {e}");
            ExitCode::FAILURE
        }
    }
}
