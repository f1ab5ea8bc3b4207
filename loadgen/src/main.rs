use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use coremq_loadgen::opts::{Cli, Cmd, Common};
use coremq_loadgen::run::{run_conn, run_pubsub, Plan, Scenario, Settings};
use coremq_loadgen::stats::Report;
use coremq_loadgen::{capacity, cpu, null_broker, plot, table};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coremq-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let (scenario, common) = match cli.cmd {
        Cmd::Plot(a) => {
            let reports = table::load(&a.files)?;
            if reports.is_empty() {
                return Err("no reports in the given files".into());
            }
            plot::plot(&reports, &a.output, &a.title)?;
            eprintln!("wrote {}", a.output.display());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Table(a) => {
            print!("{}", table::render(&table::load(&a.files)?));
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::NullBroker(a) => {
            null_broker::main(&a)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Conn(c) => (Scenario::Conn, c),
        Cmd::Pub(c) => (Scenario::Pub, c),
        Cmd::Sub(c) => (Scenario::Sub, c),
        Cmd::Fanin(c) => (Scenario::Fanin, c),
        Cmd::Fanout(c) => (Scenario::Fanout, c),
        Cmd::Pairs(c) => (Scenario::Pairs, c),
        Cmd::Shared(c) => (Scenario::Shared, c),
    };
    let nofile = cpu::raise_nofile();
    cpu::catch_sigint();
    let plan = Plan::new(scenario, &common)?;
    let mut settings = Settings::new(&common, &plan)?;
    let clients = plan.pub_topics.len() + plan.sub_filters.len() + plan.idle;
    if clients as u64 + 64 > nofile {
        eprintln!(
            "coremq-loadgen: warning: {clients} connections but only {nofile} open files allowed per process; \
             split the run over several processes"
        );
    }
    let report = if scenario == Scenario::Conn {
        run_conn(&settings, &plan)
    } else if common.find_max {
        if matches!(scenario, Scenario::Pub | Scenario::Sub) {
            return Err("--find-max needs publishers and subscribers in one process (fanin, fanout, pairs, shared)".into());
        }
        capacity::find_max(&mut settings, &plan)
    } else {
        run_pubsub(&settings, &plan)
    };
    emit(&common, &report)?;
    Ok(ExitCode::SUCCESS)
}

fn emit(c: &Common, report: &Report) -> Result<(), String> {
    let line = serde_json::to_string(report).map_err(|e| format!("json: {e}"))?;
    if c.json {
        println!("{line}");
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = &c.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &c.hgrm {
        std::fs::write(path, &report.hgrm).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
