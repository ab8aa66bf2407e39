//! `make chaos`: one fault at a time under load, and the invariants that must hold afterwards.
//!
//! Each scenario starts its own copy of the system ([`crate::stack`], the same binaries and
//! wiring as `make bench`) in a fresh slice of the shared servers ([`crate::infra`]), with a
//! [`proxy::FaultProxy`] between the services and each of PostgreSQL, FerretDB, Redis and
//! RabbitMQ, and one between order-service and payment's gRPC. It then
//!
//! 1. registers customers, signs them in and sets the demo products' stock (through the
//!    gateway, as an admin would);
//! 2. offers orders and product reads at a fixed rate with the open-loop generator of
//!    `make bench` ([`crate::loadgen`]);
//! 3. strikes with its fault ([`faults`]) while the load runs, and heals it;
//! 4. waits until every invariant holds ([`checks`]) — the time to settle — or the bound
//!    ([`faults::Timing::settle_within`]) passes, and keeps what the last check found;
//! 5. stops everything and drops the slice.
//!
//! Why its own copy and not `make run`'s processes: it must kill and restart services and put
//! proxies between them and their stores, which means owning their command lines and
//! environment; a fault injected into a stack someone is using would break their session; and
//! a fresh slice per scenario makes every invariant exact (stock set by the run, every order and
//! mail the run's own), with no earlier state to tell apart.

pub mod checks;
pub mod faults;
pub mod load;
pub mod proxy;
pub mod report;

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{net::TcpListener, time::Instant};
use url::Url;

use crate::{
    http::HttpWorker,
    infra::{Infra, Slice},
    loadgen::{self, Plan},
    say,
    scenarios::orders,
    smtp::Mailbox,
    stack::{Stack, Via, Wiring},
};
use faults::{Fault, Line, Scenario, Timing};
use proxy::{FaultProxy, Mode};
use report::{Requests, Row};

/// The stock every demo product gets before the load: far more than a run sells, so no order
/// is cancelled for want of stock and "available + committed = this" is exact.
pub const STOCK: i64 = 1_000_000;

/// What `shop-bench chaos` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Orders (and product reads) per second instead of the timing's own rate.
    pub rate: Option<f64>,
    pub bin_dir: PathBuf,
    /// Where `report.md` and `report.json` go.
    pub out_dir: PathBuf,
    /// Where the services' logs go (a directory per scenario).
    pub work_dir: PathBuf,
    /// Scenario names; `None`: all of them.
    pub only: Option<Vec<String>>,
}

/// The scenarios `only` names (all when `None`), or which name is unknown.
pub fn select(only: Option<&[String]>) -> Result<Vec<&'static Scenario>> {
    match only {
        None => Ok(faults::SCENARIOS.iter().collect()),
        Some(names) => names
            .iter()
            .map(|name| {
                faults::by_name(name).with_context(|| {
                    format!(
                        "no scenario {name:?}; there are: {}",
                        faults::SCENARIOS
                            .iter()
                            .map(|s| s.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect(),
    }
}

/// Runs the scenarios one after the other and writes the report after each (a long run that
/// is interrupted still leaves what it measured). Fails when an invariant did not hold or a
/// scenario could not run.
pub async fn run(options: Options) -> Result<report::Report> {
    let scenarios = select(options.only.as_deref())?;
    let mut timing = if options.quick {
        Timing::quick()
    } else {
        Timing::full()
    };
    if let Some(rate) = options.rate {
        timing.rate = rate;
    }
    std::fs::create_dir_all(&options.out_dir)?;
    let started = Instant::now();
    let mut report = report::Report::new(&options, &timing);
    for scenario in scenarios {
        say!("chaos: {} — {}", scenario.name, scenario.what);
        let scenario_started = Instant::now();
        let mut row = match one(scenario, &timing, &options).await {
            Ok(row) => row,
            Err(err) => {
                say!("  {} could not run: {err:#}", scenario.name);
                Row::failed(scenario, format!("{err:#}"))
            }
        };
        row.took_s = scenario_started.elapsed().as_secs_f64();
        say!(
            "  {}: {} (took {:.0} s)",
            scenario.name,
            row.verdict(),
            row.took_s
        );
        report.rows.push(row);
        report.took_s = started.elapsed().as_secs_f64();
        report::write(&options.out_dir, &report)?;
    }
    say!("report: {}", options.out_dir.join("report.md").display());
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|row| !row.passed())
        .map(|row| format!("{}: {}", row.scenario, row.verdict()))
        .collect();
    if failed.is_empty() {
        Ok(report)
    } else {
        bail!("{}", failed.join("; "))
    }
}

/// The proxies of one scenario, one per line a fault can strike.
#[derive(Debug)]
struct Proxies {
    broker: FaultProxy,
    postgres: FaultProxy,
    ferretdb: FaultProxy,
    redis: FaultProxy,
    payment_grpc: Arc<FaultProxy>,
}

impl Proxies {
    fn line(&self, line: Line) -> &FaultProxy {
        match line {
            Line::Broker => &self.broker,
            Line::Postgres => &self.postgres,
            Line::FerretDb => &self.ferretdb,
            Line::Redis => &self.redis,
            Line::PaymentGrpc => &self.payment_grpc,
        }
    }
}

/// `host:port` of a server URL (`default` when it names no port).
fn server(url: &str, default: u16) -> Result<SocketAddr> {
    let url = Url::parse(url)?;
    let host = url.host_str().context("the URL names a host")?;
    let port = url.port().unwrap_or(default);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .with_context(|| format!("{host}:{port} resolves to nothing"))
}

/// One scenario on its own slice, dropped afterwards whatever happened.
async fn one(scenario: &'static Scenario, timing: &Timing, options: &Options) -> Result<Row> {
    let infra = Infra::from_env()?;
    let mut slice = Slice::new(infra.clone());
    let outcome = on_slice(scenario, timing, options, &infra, &mut slice).await;
    say!("  dropping the slice");
    if let Err(err) = slice.drop_all().await {
        say!("  cleaning up: {err:#}");
    }
    outcome
}

async fn on_slice(
    scenario: &'static Scenario,
    timing: &Timing,
    options: &Options,
    infra: &Infra,
    slice: &mut Slice,
) -> Result<Row> {
    let log_dir = options.work_dir.join(scenario.name);
    std::fs::create_dir_all(&log_dir)?;
    let proxies = Proxies {
        broker: FaultProxy::start(Some(server(infra.amqp.as_str(), 5672)?)).await?,
        postgres: FaultProxy::start(Some(server(infra.postgres.as_str(), 5432)?)).await?,
        ferretdb: FaultProxy::start(Some(server(&infra.mongodb, 27017)?)).await?,
        redis: FaultProxy::start(Some(server(&infra.redis, 6379)?)).await?,
        payment_grpc: Arc::new(FaultProxy::start(None).await?),
    };
    let amqp_direct = slice.vhost("chaos").await?;
    let amqp_proxied = Via::through(amqp_direct.as_str(), Some(proxies.broker.addr()));

    let mailbox: Mailbox = Arc::new(Mutex::new(Vec::new()));
    let smtp = TcpListener::bind("127.0.0.1:0").await?;
    let smtp_port = smtp.local_addr()?.port();
    let sink = tokio::spawn(crate::smtp::serve_recording(
        smtp,
        Arc::new(AtomicU64::new(0)),
        mailbox.clone(),
    ));

    let mut env = Vec::new();
    if let Fault::ProviderFaultRate { rate, seed } = scenario.fault {
        env.push((
            "payment-service".to_owned(),
            "SIMULATED_FAULT_RATE".to_owned(),
            rate.to_string(),
        ));
        env.push((
            "payment-service".to_owned(),
            "SIMULATED_FAULT_SEED".to_owned(),
            seed.to_string(),
        ));
    }
    let wiring = Wiring {
        bin_dir: options.bin_dir.clone(),
        log_dir: log_dir.clone(),
        amqp: amqp_proxied,
        smtp_port,
        unlimited: true,
        via: Via {
            postgres: Some(proxies.postgres.addr()),
            mongodb: Some(proxies.ferretdb.addr()),
            redis: Some(proxies.redis.addr()),
            payment_grpc: Some(proxies.payment_grpc.clone()),
            env,
        },
    };
    let mut stack = Stack::start(slice, &wiring).await?;
    let outcome = drive(
        scenario,
        timing,
        infra,
        slice,
        &mut stack,
        &proxies,
        amqp_direct.as_str(),
        &mailbox,
    )
    .await;
    say!("  stopping the stack");
    stack.stop().await;
    sink.abort();
    outcome
}

/// When the fault struck and healed, and what striking it measured.
#[derive(Debug)]
struct Struck {
    at: Instant,
    healed: Instant,
    /// A killed service: from its start command to ready.
    restart_ready: Option<Duration>,
}

async fn strike(
    fault: Fault,
    timing: &Timing,
    load_start: Instant,
    stack: &mut Stack,
    proxies: &Proxies,
) -> Result<Struck> {
    tokio::time::sleep_until(load_start + timing.strike_at).await;
    let at = Instant::now();
    match fault {
        Fault::Kill { service } => {
            let proc = stack.get_mut(service);
            proc.kill9().await;
            say!("  {service} killed (-9)");
            tokio::time::sleep(timing.down).await;
            let healed = Instant::now();
            let ready = proc.restart().await?;
            say!(
                "  {service} started again: ready in {:.1} s",
                ready.as_secs_f64()
            );
            Ok(Struck {
                at,
                healed,
                restart_ready: Some(ready),
            })
        }
        Fault::Outage { line, mode } => {
            let proxy = proxies.line(line);
            proxy.set_mode(mode);
            say!("  {line:?}: {mode:?}");
            tokio::time::sleep(timing.outage).await;
            proxy.set_mode(Mode::Up);
            say!("  {line:?}: up again");
            Ok(Struck {
                at,
                healed: Instant::now(),
                restart_ready: None,
            })
        }
        Fault::SilentCut { line } => {
            proxies.line(line).silent_cut();
            say!("  {line:?}: connections cut on the services' side");
            Ok(Struck {
                at,
                healed: at,
                restart_ready: None,
            })
        }
        Fault::Card { number } => {
            say!("  orders pay with {number}");
            tokio::time::sleep(timing.outage).await;
            say!("  orders pay with the approving card again");
            Ok(Struck {
                at,
                healed: Instant::now(),
                restart_ready: None,
            })
        }
        // On for the whole run: there is no "after" to recover into.
        Fault::ProviderFaultRate { .. } => Ok(Struck {
            at: load_start,
            healed: load_start,
            restart_ready: None,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    scenario: &'static Scenario,
    timing: &Timing,
    infra: &Infra,
    slice: &Slice,
    stack: &mut Stack,
    proxies: &Proxies,
    amqp_direct: &str,
    mailbox: &Mailbox,
) -> Result<Row> {
    let gateway = stack.gateway().http;
    let base = format!("http://{gateway}");
    let shop = orders::prepare(&base, timing.users, STOCK).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let admin = orders::login(&http, &base, "admin@example.com", "change-me-admin").await?;
    let initial_stock: BTreeMap<String, i64> = shop
        .products
        .iter()
        .map(|(_, sku)| (sku.clone(), STOCK))
        .collect();
    let seen = Arc::new(load::Seen::default());
    let observer = load::observe(amqp_direct, seen.clone()).await?;

    let window = |from: Duration, length: Duration| {
        let first = (from.as_secs_f64() * timing.rate).round() as u64;
        let last = ((from + length).as_secs_f64() * timing.rate).round() as u64;
        (first, last)
    };
    let fault_card = match scenario.fault {
        Fault::Card { number } => {
            let (first, last) = window(timing.strike_at, timing.outage);
            Some((number, first, last))
        }
        _ => None,
    };
    let place = Arc::new(load::PlaceOrder {
        shop: shop.clone(),
        seen: seen.clone(),
        fault_card,
    });
    let read = Arc::new(load::ReadProduct {
        shop: shop.clone(),
        seen: seen.clone(),
    });
    let plan = Plan::open(timing.rate, timing.load);
    say!(
        "  load: {:.0} orders/s and {:.0} product reads/s for {} s; the fault at {} s",
        timing.rate,
        timing.rate,
        timing.load.as_secs(),
        timing.strike_at.as_secs()
    );
    let load_start = Instant::now();
    let load = async {
        tokio::join!(
            loadgen::run(&plan, HttpWorker::many(gateway, place, timing.connections)),
            loadgen::run(
                &plan,
                HttpWorker::many(gateway, read, (timing.connections / 4).max(2))
            ),
        )
    };
    let ((ordered, reads), struck) = tokio::join!(
        load,
        strike(scenario.fault, timing, load_start, stack, proxies)
    );
    let struck = struck?;
    let load_end = Instant::now();
    say!(
        "  load done: {} orders accepted, {} refused, {} unanswered",
        ordered.ok,
        ordered.refused,
        ordered.errors + ordered.unsent
    );

    // Settle: every invariant but the answers' (which the load alone decides) holds.
    let ctx = checks::Context {
        infra,
        slice,
        vhost: slice.name("chaos"),
        order_http: stack.get("order-service").http,
        admin_token: &admin,
        initial_stock: &initial_stock,
        registered: &shop.emails,
    };
    let accepted: HashSet<_> = seen.accepted().into_keys().collect();
    // Nothing can settle while the load still places orders: the clock starts at the later of
    // the fault healing and the load ending.
    let quiet_from = struck.healed.max(load_end);
    let deadline = quiet_from + timing.settle_within;
    let mut settled = None;
    let mut last: Option<Vec<checks::Invariant>> = None;
    let mut last_error = None;
    loop {
        let mails = mailbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match checks::evaluate(&ctx, &accepted, &mails, &seen.bad()).await {
            Ok(invariants) => {
                let converged = invariants
                    .iter()
                    .filter(|i| i.name != "no 500")
                    .all(|i| i.held);
                last = Some(invariants);
                if converged {
                    settled = Some(Instant::now().saturating_duration_since(quiet_from));
                    break;
                }
            }
            Err(err) => last_error = Some(format!("{err:#}")),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    say!("  settled: {settled:?}");
    let _ = observer.close(0, "done".into()).await;
    let invariants = last.with_context(|| {
        format!(
            "the invariants could not be read: {}",
            last_error.unwrap_or_default()
        )
    })?;
    let notes = notes(scenario, &ctx)
        .await
        .unwrap_or_else(|err| vec![format!("could not read the outcome counts: {err:#}")]);
    let recover = match scenario.fault {
        Fault::ProviderFaultRate { .. } => None,
        _ => load::recovery(&seen, struck.healed),
    };
    let since_start = |at: Instant| at.saturating_duration_since(load_start).as_secs_f64();
    Ok(Row {
        scenario: scenario.name,
        what: scenario.what,
        fault: scenario.fault,
        orders: Requests::of(&ordered),
        reads: Requests::of(&reads),
        struck_at_s: since_start(struck.at),
        healed_at_s: since_start(struck.healed),
        restart_ready_s: struck.restart_ready.map(|d| d.as_secs_f64()),
        recover_s: recover.map(|d| d.as_secs_f64()),
        settle_s: settled.map(|d| d.as_secs_f64()),
        settle_within_s: timing.settle_within.as_secs_f64(),
        invariants,
        notes,
        error: None,
        took_s: 0.0,
    })
}

/// How the orders ended and what the payment provider did, from the stores: the context a
/// reader needs to judge a row (and the proof a simulated provider fault happened at all).
async fn notes(scenario: &Scenario, ctx: &checks::Context<'_>) -> Result<Vec<String>> {
    use sqlx::Connection as _;
    let url = |purpose: &str| {
        let mut url = ctx.infra.postgres.clone();
        url.set_path(&format!("/{}", ctx.slice.name(purpose)));
        url
    };
    let mut orders = sqlx::PgConnection::connect(url("orders").as_str()).await?;
    let ends: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, cancellation_reason, count(*) FROM orders GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(&mut orders)
    .await?;
    let _ = orders.close().await;
    let mut payments = sqlx::PgConnection::connect(url("payments").as_str()).await?;
    let provider: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT operation, phase, count(*) FROM payment_operations WHERE phase IN ('abandoned', 'refused') GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&mut payments)
    .await?;
    let _ = payments.close().await;
    let mut notes = vec![format!(
        "orders: {}",
        ends.iter()
            .map(|(status, reason, n)| match reason {
                Some(reason) => format!("{n} {status} ({reason})"),
                None => format!("{n} {status}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    )];
    if !provider.is_empty() {
        notes.push(format!(
            "payment operations: {}",
            provider
                .iter()
                .map(|(op, phase, n)| format!("{n} {op} {phase}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The provider's faults show as an abandoned authorization (no answer, or a lost one) or
    // a refused capture; refused voids and refunds are the saga's, whatever the provider did.
    let provider_faulted = provider.iter().any(|(operation, phase, _)| {
        (operation == "authorize" && phase == "abandoned") || operation == "capture"
    });
    if matches!(
        scenario.fault,
        Fault::Card { .. } | Fault::ProviderFaultRate { .. }
    ) && !provider_faulted
    {
        notes.push(
            "no authorization abandoned and no capture refused: the payment-service of this build does not simulate this fault (it declined the card as unknown, or ignored the variables), so the scenario ran as a load with declined orders, or a plain one".into(),
        );
    }
    Ok(notes)
}
