//! One benchmark run, start to end: the run's slice of the infrastructure, the trivial upstream,
//! nginx, the seven services, the seven scenarios, the report — and everything stopped and
//! dropped again, whatever failed on the way.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, time::Instant};

use crate::{
    infra::{Infra, Slice},
    nginx::{self, Nginx},
    report::{self, Machine, Meta, Results},
    say,
    scenarios::{self, Settings, proxy::Target},
    stack::{Footprint, Proc, Stack, Wiring, free_port, unlimited_rates},
};

/// What `shop-bench run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Where the seven service binaries are.
    pub bin_dir: PathBuf,
    /// Where `report.md` and `results/` go.
    pub out_dir: PathBuf,
    /// Where logs and nginx's files go.
    pub work_dir: PathBuf,
    /// The release build time, as measured by the caller.
    pub build: Option<String>,
    /// Run only these of scenarios 1–4, 6 and 7 (`--only 1,4`), for working on one of them; the
    /// footprint (5) is always read. `None`: all of them, as `make bench` does.
    pub only: Option<Vec<u8>>,
}

impl Options {
    fn wants(&self, scenario: u8) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.contains(&scenario))
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let text = if text.is_empty() {
        String::from_utf8_lossy(&output.stderr).trim().to_owned()
    } else {
        text
    };
    (!text.is_empty()).then_some(text)
}

fn commit() -> String {
    let head = command_output("git", &["rev-parse", "--short=12", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

/// Starts this binary as the trivial upstream, in its own process (its CPU is then its own,
/// not the load generator's).
async fn start_upstream(log_dir: &std::path::Path) -> Result<(tokio::process::Child, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = std::fs::File::create(log_dir.join("upstream.log"))?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["upstream", "--listen", &addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the trivial upstream")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trivial upstream did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, addr))
}

/// What scenarios 1 and 2 measure the gateway against: the trivial upstream and nginx (one
/// worker) in front of it (`None` when nginx is not installed).
struct Reference {
    upstream: tokio::process::Child,
    upstream_addr: SocketAddr,
    nginx: Option<Nginx>,
}

async fn start_reference(
    options: &Options,
    log_dir: &std::path::Path,
    nginx_binary: &Option<PathBuf>,
) -> Result<Reference> {
    let (upstream, upstream_addr) = start_upstream(log_dir).await?;
    let nginx = match nginx_binary {
        Some(binary) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            Some(Nginx::start(binary, addr, upstream_addr, &options.work_dir.join("nginx")).await?)
        }
        None => None,
    };
    Ok(Reference {
        upstream,
        upstream_addr,
        nginx,
    })
}

pub async fn run(options: Options) -> Result<PathBuf> {
    let settings = if options.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let mode = if options.quick { "quick" } else { "full" };
    let log_dir = options.work_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    std::fs::create_dir_all(options.out_dir.join("results"))?;
    say!(
        "shop-bench {mode} run: binaries {}, report in {}",
        options.bin_dir.display(),
        options.out_dir.display()
    );
    let nginx_binary = nginx::binary();
    let meta = Meta {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        mode: mode.to_owned(),
        commit: commit(),
        machine: Machine::read(),
        build: options.build.clone(),
        binaries: options.bin_dir.display().to_string(),
        nginx: nginx_binary
            .as_ref()
            .and_then(|b| command_output(&b.display().to_string(), &["-v"]))
            .map(|v| format!("{v}, worker_processes 1, keep-alive to the upstream, no access log")),
        load_average_before: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    };
    let previous = report::previous_ratios(&options.out_dir, mode);

    let mut slice = Slice::new(Infra::from_env()?);
    let outcome = measure(&options, &settings, &mut slice, &log_dir, nginx_binary).await;
    if let Err(err) = slice.drop_all().await {
        say!("cleaning up: {err:#}");
    }
    let (mut partial, error) = match outcome {
        Ok(partial) => (partial, None),
        Err((partial, error)) => (partial, Some(error)),
    };
    if let Some(error) = &error {
        partial.failures.push(format!("{error:#}"));
    }
    let mut results = Results {
        meta,
        proxy: partial.proxy,
        product: partial.product,
        orders: partial.orders,
        events: partial.events,
        claims: partial.claims,
        mail: partial.mail,
        footprint: partial.footprint,
        idle_after_load: partial.idle_after_load,
        mails_sent: partial.mails,
        ratios: Default::default(),
        failures: partial.failures,
    };
    results.compute_ratios();
    report::write(&options.out_dir, &results, previous.as_ref())?;
    let report = options.out_dir.join("report.md");
    say!("report: {}", report.display());
    match error {
        Some(error) => Err(error.context(format!(
            "the run failed (partial report in {})",
            report.display()
        ))),
        None if !results.failures.is_empty() => Err(anyhow::anyhow!(
            "{} scenario(s) failed (see {}): {}",
            results.failures.len(),
            report.display(),
            results.failures.join("; ")
        )),
        None => Ok(report),
    }
}

/// What has been measured so far.
#[derive(Debug, Default)]
struct Partial {
    proxy: Option<scenarios::proxy::ProxyResults>,
    product: Option<scenarios::product::ProductResults>,
    orders: Option<scenarios::orders::OrdersResults>,
    events: Option<scenarios::events::EventsResults>,
    claims: Option<scenarios::claims::ClaimsResults>,
    mail: Option<scenarios::mail::MailResults>,
    footprint: Vec<Footprint>,
    idle_after_load: Option<crate::cpu::Settling>,
    mails: u64,
    failures: Vec<String>,
}

async fn measure(
    options: &Options,
    settings: &Settings,
    slice: &mut Slice,
    log_dir: &std::path::Path,
    nginx_binary: Option<PathBuf>,
) -> std::result::Result<Partial, (Partial, anyhow::Error)> {
    let mut partial = Partial::default();
    let mails = Arc::new(AtomicU64::new(0));
    let smtp = match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(err) => return Err((partial, err.into())),
    };
    let smtp_port = smtp.local_addr().map(|a| a.port()).unwrap_or_default();
    let watch = crate::smtp::Watch::default();
    let sink = tokio::spawn(crate::smtp::serve_watched(
        smtp,
        mails.clone(),
        watch.clone(),
    ));

    let outcome = async {
        let amqp = slice.vhost("stack").await?;
        say!(
            "starting the seven services from {}",
            options.bin_dir.display()
        );
        let stack = Stack::start(
            slice,
            &Wiring {
                bin_dir: options.bin_dir.clone(),
                log_dir: log_dir.to_owned(),
                amqp: amqp.to_string(),
                smtp_port,
                unlimited: true,
                via: Default::default(),
            },
        )
        .await?;
        let result = scenarios_on(
            options,
            settings,
            slice,
            log_dir,
            nginx_binary,
            &stack,
            amqp.as_ref(),
            &watch,
            &mut partial,
        )
        .await;
        partial.footprint = stack
            .procs
            .iter()
            .zip(std::mem::take(&mut partial.footprint))
            .map(|(proc, mut footprint)| {
                footprint.rss_after_load_mib = proc.rss_mib();
                footprint
            })
            .collect();
        stack.stop().await;
        result
    }
    .await;
    sink.abort();
    partial.mails = mails.load(std::sync::atomic::Ordering::Relaxed);
    match outcome {
        Ok(()) => Ok(partial),
        Err(err) => Err((partial, err)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn scenarios_on(
    options: &Options,
    settings: &Settings,
    slice: &mut Slice,
    log_dir: &std::path::Path,
    nginx_binary: Option<PathBuf>,
    stack: &Stack,
    amqp: &str,
    watch: &crate::smtp::Watch,
    partial: &mut Partial,
) -> Result<()> {
    // Scenario 5 first: the footprint of a system that has not served anything yet.
    tokio::time::sleep(settings.idle).await;
    partial.footprint = stack
        .procs
        .iter()
        .map(|proc| Footprint {
            service: proc.name.clone(),
            ready_s: proc.ready_after.map_or(f64::NAN, |d| d.as_secs_f64()),
            idle_rss_mib: proc.rss_mib().unwrap_or(f64::NAN),
            rss_after_load_mib: None,
        })
        .collect();
    for f in &partial.footprint {
        say!(
            "scenario 5: {} ready in {:.2} s, idle RSS {:.1} MiB",
            f.service,
            f.ready_s,
            f.idle_rss_mib
        );
    }
    let profile_dir = profile_dir(options, settings);

    // Scenario 1: its own gateway (upstreams = the trivial server) and nginx. nginx and the
    // trivial upstream stay up for scenario 2, which saturates nginx again between its own
    // windows (the ratio of a pair taken back to back is the steadier figure).
    let mut reference: Option<Reference> = None;
    if options.wants(1) || options.wants(2) {
        match start_reference(options, log_dir, &nginx_binary).await {
            Ok(started) => reference = Some(started),
            Err(err) => partial
                .failures
                .push(format!("scenario 1 (nginx and the upstream): {err:#}")),
        }
    }
    let nginx_target = reference
        .as_ref()
        .and_then(|reference| reference.nginx.as_ref())
        .map(|n| Target {
            addr: n.addr,
            pid: n.worker_pid(),
        });
    let proxy = async {
        let Some(Reference {
            upstream,
            upstream_addr,
            ..
        }) = reference.as_ref().filter(|_| options.wants(1))
        else {
            return Ok(None);
        };
        let upstream_addr = *upstream_addr;
        let vhost = slice.vhost("proxy").await?;
        let mut env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), vhost.to_string()),
            (
                "AUTH_JWKS_URL".into(),
                stack.get("user-service").url("/.well-known/jwks.json"),
            ),
            ("REDIS_URL".into(), slice.infra.redis.clone()),
            ("REDIS_KEY_PREFIX".into(), slice.redis_prefix("proxy")),
        ];
        for key in [
            "USER_SERVICE_URL",
            "CATALOG_SERVICE_URL",
            "INVENTORY_SERVICE_URL",
            "ORDER_SERVICE_URL",
            "PAYMENT_SERVICE_URL",
            "NOTIFICATION_SERVICE_URL",
        ] {
            env.push((key.into(), format!("http://{upstream_addr}")));
        }
        env.extend(unlimited_rates());
        let mut gateway = Proc::spawn(
            "gateway-proxy",
            &options.bin_dir.join("gateway"),
            &env,
            log_dir,
        )?;
        gateway
            .wait_ready(Instant::now(), Duration::from_secs(30))
            .await?;
        let results = scenarios::proxy::run_scenario(
            settings,
            Target {
                addr: upstream_addr,
                pid: upstream.id(),
            },
            nginx_target,
            Target {
                addr: gateway.http,
                pid: Some(gateway.pid),
            },
            profile_dir.as_deref(),
        )
        .await;
        gateway.stop(Duration::from_secs(10)).await;
        Ok::<_, anyhow::Error>(Some(results))
    }
    .await;
    match proxy {
        Ok(results) => partial.proxy = results,
        Err(err) => partial
            .failures
            .push(format!("scenario 1 (proxy): {err:#}")),
    }

    // Scenario 4 before scenario 3: after the orders' last confirmation FerretDB stayed at
    // 58-109 % of a core (catalog and notification still digesting the orders' events), and
    // the event pipeline measured then measured that aftermath (p99 184 and 187 ms in runs 12
    // and 13, against 34 ms alone; bench/findings.md).
    if options.wants(4) {
        match scenarios::events::run_scenario(settings, slice).await {
            Ok(results) => partial.events = Some(results),
            Err(err) => partial
                .failures
                .push(format!("scenario 4 (events): {err:#}")),
        }
    }

    if options.wants(2) || options.wants(3) || options.wants(6) || options.wants(7) {
        scenarios_2_and_3(
            options,
            settings,
            slice,
            stack,
            amqp,
            nginx_target,
            watch,
            partial,
        )
        .await?;
    }
    if let Some(Reference {
        upstream, nginx, ..
    }) = reference
    {
        if let Some(nginx) = nginx {
            nginx.stop().await;
        }
        drop(upstream);
    }

    // Last: does the stack go quiet once the load has gone (issue 29)?
    say!("after the load: waiting for the stack to go quiet");
    let settling = crate::cpu::settle(settings.settle, settings.settle_window).await;
    say!(
        "  windows (% of one core): {:.1?}; quiet after {}",
        settling.windows_percent,
        settling
            .quiet_after_s
            .map_or("never".to_owned(), |s| format!("{s:.0} s"))
    );
    partial.idle_after_load = Some(settling);

    Ok(())
}

/// Where CPU profiles go: next to the results, in a full run only.
fn profile_dir(options: &Options, settings: &Settings) -> Option<PathBuf> {
    (!settings.quick).then(|| options.out_dir.join("results"))
}

/// Scenarios 2, 6, 7 and 3 share their users and stock, prepared through the stack's gateway.
#[allow(clippy::too_many_arguments)]
async fn scenarios_2_and_3(
    options: &Options,
    settings: &Settings,
    slice: &mut Slice,
    stack: &Stack,
    amqp: &str,
    nginx: Option<Target>,
    watch: &crate::smtp::Watch,
    partial: &mut Partial,
) -> Result<()> {
    let profile_dir = profile_dir(options, settings);
    let gateway = stack.gateway();
    say!("preparing {} users and stock", settings.users);
    let shop = scenarios::orders::prepare(
        &format!("http://{}", gateway.http),
        settings.users,
        100_000_000,
    )
    .await?;

    // Scenario 2: warm the cache with one read, then measure.
    let product = async {
        if !options.wants(2) {
            return Ok(None);
        }
        let (product_id, _) = shop
            .products
            .first()
            .context("the demo catalog has products")?;
        let url = gateway.url(&format!("/api/v1/products/{product_id}"));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let response = http.get(&url).send().await?;
            if response
                .headers()
                .get("x-cache")
                .is_some_and(|v| v == "HIT")
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the product read is not cached after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        scenarios::product::run_scenario(
            settings,
            Target {
                addr: gateway.http,
                pid: Some(gateway.pid),
            },
            nginx,
            product_id,
            &shop.tokens[0],
            profile_dir.as_deref(),
        )
        .await
        .map(Some)
    }
    .await;
    match product {
        Ok(results) => partial.product = results,
        Err(err) => partial
            .failures
            .push(format!("scenario 2 (product read): {err:#}")),
    }

    // Scenario 6 before the orders, on a quiet stack, for the same reason as scenario 4.
    if options.wants(6) {
        match claims(settings, slice, stack, &shop).await {
            Ok(results) => partial.claims = Some(results),
            Err(err) => partial
                .failures
                .push(format!("scenario 6 (speed claims): {err:#}")),
        }
    }

    // Scenario 7 before the orders too: it measures the mail pipeline, not a backlog of them.
    if options.wants(7) {
        let mail = async {
            let customers =
                scenarios::mail::customers_written(&stack.users_db, settings.mail_customers)
                    .await?;
            scenarios::mail::run_scenario(
                settings,
                scenarios::mail::Target {
                    amqp,
                    mongodb_url: &slice.infra.mongodb,
                    notification_db: &stack.notification_db,
                    customers,
                    watch,
                },
            )
            .await
        };
        match mail.await {
            Ok(results) => partial.mail = Some(results),
            Err(err) => partial
                .failures
                .push(format!("scenario 7 (mail with history): {err:#}")),
        }
    }

    // Scenario 3.
    if options.wants(3) {
        match scenarios::orders::run_scenario(settings, gateway.http, &shop, amqp, slice).await {
            Ok(results) => partial.orders = Some(results),
            Err(err) => partial
                .failures
                .push(format!("scenario 3 (orders): {err:#}")),
        }
    }
    Ok(())
}

/// Scenario 6: the three speed claims of the source documents, on the running stack
/// ([`scenarios::claims`]). Prepares what each needs: a service token for catalog's gRPC API,
/// a second gateway whose cache entries are never fresh, and one order of two products.
async fn claims(
    settings: &Settings,
    slice: &Slice,
    stack: &Stack,
    shop: &scenarios::orders::Shop,
) -> Result<scenarios::claims::ClaimsResults> {
    use scenarios::claims::{CacheRead, Way, compare};
    let gateway = stack.gateway();
    let catalog = stack.get("catalog-service");
    let order = stack.get("order-service");
    let served = |procs: &[&Proc]| -> Vec<(String, u32)> {
        procs.iter().map(|p| (p.name.clone(), p.pid)).collect()
    };
    let [(first, _), (second, _), ..] = shop.products.as_slice() else {
        anyhow::bail!("the demo catalog has fewer than two products");
    };
    let token = &shop.tokens[0];
    let mut results = scenarios::claims::ClaimsResults {
        connections: settings.connections,
        claims: Vec::new(),
    };

    // gRPC vs REST/JSON: one product, straight from catalog both ways.
    let tokens = shop_auth::client::ServiceTokens::new(
        user_service_url(stack, "/internal/v1/service-token")?,
        "order-service",
        crate::stack::ORDER_SECRET,
    )?;
    let service_token = tokens
        .bearer()
        .await
        .map_err(|err| anyhow::anyhow!("a service token for order-service: {err}"))?;
    results.claims.push(
        compare(
            settings,
            "gRPC is much faster than REST/JSON",
            "catalog checks the service token's signature on every gRPC call; its REST read is public and checks nothing",
            Way::grpc(
                "gRPC GetProducts (one id)",
                served(&[catalog]),
                &catalog.grpc_url(),
                first,
                &service_token,
            )?,
            Way::http(
                "REST GET /api/v1/products/{id}",
                served(&[catalog]),
                catalog.http,
                scenarios::proxy::get(&format!("/api/v1/products/{first}")),
            ),
        )
        .await,
    );

    // Cache hit vs miss: the stack's gateway against one whose entries are never fresh.
    let mut never_fresh = gateway.spawn_like(
        "gateway-never-fresh",
        &[
            ("CACHE_FRESH_SECONDS".to_owned(), "0".to_owned()),
            (
                "REDIS_KEY_PREFIX".to_owned(),
                slice.redis_prefix("gateway-never-fresh"),
            ),
        ],
    )?;
    never_fresh
        .wait_ready(Instant::now(), Duration::from_secs(30))
        .await?;
    let path = format!("/api/v1/products/{first}");
    let cache = compare(
        settings,
        "a cache makes reads dramatically faster",
        "the miss is the whole path of a miss (Redis lookup, catalog, Redis write), not catalog alone",
        Way::http(
            "gateway, cache hit",
            served(&[gateway, catalog]),
            gateway.http,
            Arc::new(CacheRead::new(&path, token, Some("HIT"))?),
        ),
        Way::http(
            "gateway, cache miss",
            served(&[&never_fresh, catalog]),
            never_fresh.http,
            Arc::new(CacheRead::new(&path, token, None)?),
        ),
    )
    .await;
    never_fresh.stop(Duration::from_secs(10)).await;
    results.claims.push(cache);

    // Composition vs the calls a client makes without it.
    let order_id = scenarios::orders::place_one(
        &format!("http://{}", gateway.http),
        token,
        &[first.as_str(), second.as_str()],
    )
    .await?;
    let order_path = format!("/api/v1/orders/{order_id}");
    results.claims.push(
        compare(
            settings,
            "composition saves the client round trips",
            "the three calls read the order from order-service directly (through the gateway it would be composed anyway)",
            Way::sequence(
                "one composed call",
                served(&[gateway, order, catalog]),
                vec![gateway.url(&order_path)],
                token,
            ),
            Way::sequence(
                "three calls: the order, then each product",
                served(&[gateway, order, catalog]),
                vec![
                    order.url(&order_path),
                    gateway.url(&format!("/api/v1/products/{first}")),
                    gateway.url(&format!("/api/v1/products/{second}")),
                ],
                token,
            ),
        )
        .await,
    );
    Ok(results)
}

fn user_service_url(stack: &Stack, path: &str) -> Result<url::Url> {
    Ok(url::Url::parse(&stack.get("user-service").url(path))?)
}
