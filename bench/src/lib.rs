//! shop-bench: `make bench`. Measures the system the way BRIEF §9 states its targets — as
//! ratios against references measured in the same run on the same machine (nginx for the
//! gateway, `pgbench` for PostgreSQL) — and writes `bench/report.md` with the raw results and
//! SVG plots.
//!
//! | module | what lives there |
//! |---|---|
//! | [`loadgen`] | the open-loop load generator every scenario uses (and why it is our own) |
//! | [`http`] | keep-alive HTTP/1.1 workers, and the trivial upstream |
//! | [`smtp`] | an SMTP sink, so mails do not pile up in the shared MailDev |
//! | [`infra`] | the run's own databases, vhosts and key prefixes on the shared servers |
//! | [`stack`] | the seven services as child processes on free ports; RSS, CPU, readiness |
//! | [`cpu`] | CPU time by part of the system (services, PostgreSQL, FerretDB, …) per order |
//! | [`nginx`] | the reference proxy (Debian's package, one worker) |
//! | [`scenarios`] | the seven scenarios |
//! | [`profile`] | a flat `perf` profile of a process during a run |
//! | [`report`], [`plot`] | `report.md`, `results/results.json`, SVG plots |
//! | [`run`] | one run, start to end, cleaning up whatever fails |
//! | [`chaos`] | `make chaos`: one fault at a time under load, and the invariants afterwards |
//!
//! Usage: `shop-bench run [--quick] [--bin-dir target/release] [--out bench] [--only 1,4]`
//! (`--only`: some of scenarios 1–4, 6 and 7, for working on one; the report then lacks the others);
//! `shop-bench upstream --listen 127.0.0.1:PORT` is the trivial upstream (started by `run`).
//! `shop-bench chaos [--quick] [--rate 20] [--only kill-order,redis-down] [--bin-dir target/debug]
//! [--out target/chaos]` runs the fault scenarios ([`chaos`]; `--list` names them).

pub mod chaos;
pub mod cpu;
pub mod http;
pub mod infra;
pub mod loadgen;
pub mod nginx;
pub mod plot;
pub mod profile;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod smtp;
pub mod stack;

use std::{path::PathBuf, process::ExitCode};

/// Progress on stderr, with the time since the process started.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[bench {:>7.1}s] {}", $crate::elapsed().as_secs_f64(), format!($($arg)*))
    };
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Time since the first call (made at start by [`main`]).
pub fn elapsed() -> std::time::Duration {
    STARTED.get_or_init(std::time::Instant::now).elapsed()
}

const USAGE: &str = "usage:
  shop-bench run [--quick] [--bin-dir DIR] [--out DIR] [--work-dir DIR] [--build TEXT] [--only 1,4]
  shop-bench upstream --listen ADDR
  shop-bench chaos [--quick] [--rate ORDERS_PER_S] [--only NAME,NAME] [--bin-dir DIR] [--out DIR] [--work-dir DIR] [--list]";

/// The command line.
pub fn main() -> ExitCode {
    let _ = elapsed();
    // The workspace's reqwest leaves the TLS provider to the program (`rustls-no-provider`);
    // this process boots no service that would install it, and its clients need one.
    shop_runtime::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("upstream") => {
            let Some(addr) = value("--listen") else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            let result = runtime.map_err(anyhow::Error::from).and_then(|runtime| {
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::bind(&addr).await?;
                    http::serve_upstream(listener).await?;
                    Ok(())
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("upstream: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("run") => {
            shop_runtime::install_crypto_provider();
            let bin_dir =
                PathBuf::from(value("--bin-dir").unwrap_or_else(|| "target/release".into()));
            let out_dir = PathBuf::from(value("--out").unwrap_or_else(|| "bench".into()));
            let work_dir = value("--work-dir").map_or_else(
                || bin_dir.parent().unwrap_or(&bin_dir).join("bench-work"),
                PathBuf::from,
            );
            let options = run::Options {
                quick: args.iter().any(|arg| arg == "--quick"),
                bin_dir,
                out_dir,
                work_dir,
                build: value("--build"),
                only: value("--only").map(|list| {
                    list.split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect()
                }),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::run(options)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("shop-bench: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("chaos") => chaos_main(&args, value),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn chaos_main(args: &[String], value: impl Fn(&str) -> Option<String>) -> ExitCode {
    if args.iter().any(|arg| arg == "--list") {
        for scenario in chaos::faults::SCENARIOS {
            eprintln!("{:<26} {}", scenario.name, scenario.what);
        }
        return ExitCode::SUCCESS;
    }
    shop_runtime::install_crypto_provider();
    let bin_dir = PathBuf::from(value("--bin-dir").unwrap_or_else(|| "target/debug".into()));
    let out_dir = PathBuf::from(value("--out").unwrap_or_else(|| "target/chaos".into()));
    let work_dir = value("--work-dir").map_or_else(|| out_dir.join("work"), PathBuf::from);
    let only = value("--only").map(|list| {
        list.split(',')
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect::<Vec<_>>()
    });
    let rate = match value("--rate").map(|rate| rate.parse::<f64>()) {
        None => None,
        Some(Ok(rate)) if rate > 0.0 && rate.is_finite() => Some(rate),
        Some(_) => {
            eprintln!("shop-bench chaos: --rate takes a positive number of orders per second");
            return ExitCode::from(2);
        }
    };
    let options = chaos::Options {
        quick: args.iter().any(|arg| arg == "--quick"),
        rate,
        bin_dir,
        out_dir,
        work_dir,
        only,
    };
    if let Err(err) = chaos::select(options.only.as_deref()) {
        eprintln!("shop-bench chaos: {err:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run: every service it started is killed with it (`kill_on_drop`); the
    // slice is left to the testkit's sweep of slices older than an hour.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = chaos::run(options) => outcome.map(|_| ()),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shop-bench chaos: {err:#}");
            ExitCode::FAILURE
        }
    }
}
