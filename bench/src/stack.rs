//! The seven services as child processes, from a directory of binaries (release for
//! `make bench`, the tests' debug build for the smoke test), wired like
//! `deploy/local/stack.sh` wires them but on free ports and against the run's own
//! [`Slice`](crate::infra::Slice) of the infrastructure — so a `make run` stack on the standard
//! ports and the benchmark never meet.
//!
//! Services start one at a time in the stack's order, each ready (its consumers attached)
//! before the next, which is also what makes each one's start-to-ready time its own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::{process::Child, time::Instant};

/// The seven service binaries, dependencies first (the order [`Stack`] starts them in).
pub const SERVICES: [&str; 7] = [
    "user-service",
    "notification-service",
    "inventory-service",
    "catalog-service",
    "payment-service",
    "order-service",
    "gateway",
];

/// The folder of the service binaries that `cargo test` built beside `bench` (the shop-bench
/// binary), or which of them are missing: the tests that start the real processes call this
/// first, so a missing build says what to do instead of failing somewhere in a start-up.
pub fn built_services(bench: &Path) -> std::result::Result<&Path, String> {
    let bin_dir = bench.parent().unwrap_or(Path::new("."));
    let missing: Vec<&str> = SERVICES
        .into_iter()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        Ok(bin_dir)
    } else {
        Err(format!(
            "{missing:?} not in {}: build the services first (cargo build --bins; `make test` does)",
            bin_dir.display()
        ))
    }
}

/// glibc's mmap threshold fixed, as the image and `make run` start the services
/// (docs/adr/0014-malloc-mmap-threshold.md).
pub const GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=131072";

/// A free loopback port (bound and released: the service binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One running service process.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub pid: u32,
    child: Child,
    pub log: PathBuf,
    /// From spawn to the first `/readyz` 200.
    pub ready_after: Option<Duration>,
    /// How it was started, so [`Proc::restart`] starts it again exactly so.
    binary: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    /// Times it was killed and started again.
    pub restarts: u32,
}

impl Proc {
    /// Starts `binary` with `env` (plus its two addresses and the stack's logging defaults).
    pub fn spawn(
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::spawn_at(name, binary, env, log_dir, http, grpc)
    }

    pub fn spawn_at(
        name: &str,
        binary: &Path,
        env: &[(String, String)],
        log_dir: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let child = spawn_child(binary, env, &log, http, grpc)?;
        let pid = child.id().context("the child has a pid")?;
        Ok(Self {
            name: name.to_owned(),
            http,
            grpc,
            pid,
            child,
            log,
            ready_after: None,
            binary: binary.to_owned(),
            env: env.to_vec(),
            log_dir: log_dir.to_owned(),
            restarts: 0,
        })
    }

    /// A second process of the same binary and environment, with `overrides` replacing (or
    /// adding) variables, on ports of its own: the same service configured differently, side
    /// by side (scenario 6's never-fresh gateway).
    pub fn spawn_like(&self, name: &str, overrides: &[(String, String)]) -> Result<Self> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(key, _)| !overrides.iter().any(|(replaced, _)| replaced == key))
            .cloned()
            .collect();
        env.extend(overrides.iter().cloned());
        Self::spawn(name, &self.binary, &env, &self.log_dir)
    }

    /// SIGKILL, and the exit reaped: no chance to drain, flush or say goodbye to anyone.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Starts the process again as it was first started (after [`Proc::kill9`]): the same
    /// binary and environment on the same two ports, so every caller's configured address is
    /// right again; waited for until ready. Its output goes to `<name>.<restarts>.log`.
    /// Returns the time from the start command to ready.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.restarts += 1;
        self.log = self
            .log_dir
            .join(format!("{}.{}.log", self.name, self.restarts));
        self.child = spawn_child(&self.binary, &self.env, &self.log, self.http, self.grpc)?;
        self.pid = self.child.id().context("the child has a pid")?;
        self.ready_after = None;
        let started = Instant::now();
        self.wait_ready(started, Duration::from_secs(60)).await?;
        Ok(started.elapsed())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Polls `/readyz` until it answers 200 (recording when) and every consumer it reports is
    /// attached. Fails with the log's tail if the process exits or `timeout` passes.
    pub async fn wait_ready(&mut self, started: Instant, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = started + timeout;
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                self.ready_after.get_or_insert_with(|| started.elapsed());
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let consuming = body["checks"].as_object().is_none_or(|checks| {
                    checks
                        .iter()
                        .filter(|(name, _)| name.starts_with("consumer:"))
                        .all(|(_, state)| state == "up")
                });
                if consuming {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {timeout:?}:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident memory (MiB), from `/proc`.
    pub fn rss_mib(&self) -> Option<f64> {
        rss_mib(self.pid)
    }

    /// CPU seconds used so far (user + system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        // Already exited and reaped (killed, and not started again): its pid may be someone
        // else's by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts one service binary with the stack's defaults, `env` on top, output to `log`.
fn spawn_child(
    binary: &Path,
    env: &[(String, String)],
    log: &Path,
    http: SocketAddr,
    grpc: SocketAddr,
) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    tokio::process::Command::new(binary)
        .env("HTTP_ADDR", http.to_string())
        .env("GRPC_ADDR", grpc.to_string())
        .env("LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("SHOP_ENV", "development")
        .env("GLIBC_TUNABLES", GLIBC_TUNABLES)
        // The run ends by stopping everything; a long drain would only make it slower.
        .env("SHUTDOWN_GRACE_SECONDS", "3")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// utime + stime of a process, in seconds (`USER_HZ` is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from 3 after the command name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Footprint of one service: the scenario-5 figures.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub service: String,
    pub ready_s: f64,
    pub idle_rss_mib: f64,
    pub rss_after_load_mib: Option<f64>,
}

/// The secrets the two gRPC callers use (development values, like the native stack's).
pub(crate) const ORDER_SECRET: &str = "bench-order-service-secret-0123456789abcdef";
const NOTIFICATION_SECRET: &str = "bench-notification-service-secret-01234567";

/// What every service gets, besides its own stores.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub amqp: String,
    pub smtp_port: u16,
    /// Per-user rate limits high enough never to trigger (the scenarios measure cost, not
    /// refusals).
    pub unlimited: bool,
    /// Proxies between the services and what they depend on (`make chaos`); none for
    /// `make bench`.
    pub via: Via,
}

/// Where the chaos suite's proxies stand: every service reaches PostgreSQL, FerretDB and Redis
/// through these addresses instead of the servers' own (the broker's is in [`Wiring::amqp`]),
/// so one proxy cut strikes every service at once, as an outage of the server would.
#[derive(Debug, Clone, Default)]
pub struct Via {
    pub postgres: Option<SocketAddr>,
    pub mongodb: Option<SocketAddr>,
    pub redis: Option<SocketAddr>,
    /// order-service reaches payment's gRPC through this proxy (a partition between the two);
    /// its upstream is set once payment-service listens.
    pub payment_grpc: Option<std::sync::Arc<crate::chaos::proxy::FaultProxy>>,
    /// Extra variables for one service: `(service, key, value)` (the payment provider's
    /// simulated fault rate).
    pub env: Vec<(String, String, String)>,
}

impl Via {
    /// `url` with its host and port replaced by the proxy's, when there is one.
    pub fn through(url: &str, proxy: Option<SocketAddr>) -> String {
        let Some(proxy) = proxy else {
            return url.to_owned();
        };
        match url::Url::parse(url) {
            Ok(mut parsed) => {
                let _ = parsed.set_ip_host(proxy.ip());
                let _ = parsed.set_port(Some(proxy.port()));
                parsed.to_string()
            }
            Err(_) => url.to_owned(),
        }
    }
}

/// The whole system, started.
#[derive(Debug)]
pub struct Stack {
    pub procs: Vec<Proc>,
    /// notification-service's MongoDB database (scenario 7 writes its history there).
    pub notification_db: String,
    /// user-service's database, directly (scenario 7 writes its customers there).
    pub users_db: url::Url,
}

impl Stack {
    pub fn get(&self, name: &str) -> &Proc {
        self.procs
            .iter()
            .find(|proc| proc.name == name)
            .unwrap_or_else(|| panic!("{name} is part of the stack"))
    }

    pub fn get_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|proc| proc.name == name)
            .unwrap_or_else(|| panic!("{name} is part of the stack"))
    }

    pub fn gateway(&self) -> &Proc {
        self.get("gateway")
    }

    /// Starts the seven services in the order of `deploy/local/stack.sh`.
    pub async fn start(slice: &mut crate::infra::Slice, wiring: &Wiring) -> Result<Self> {
        let via = &wiring.via;
        let mut mongo_url = Via::through(&slice.infra.mongodb, via.mongodb);
        if via.mongodb.is_some() {
            // The driver must not look for the server under the address it reports itself.
            mongo_url = format!(
                "{}{}directConnection=true",
                mongo_url,
                if mongo_url.contains('?') { '&' } else { '?' }
            );
        }
        let pg = |url: url::Url| Via::through(url.as_str(), via.postgres);
        let mut procs: Vec<Proc> = Vec::new();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());

        // user-service first: everyone verifies its tokens.
        let users = slice.postgres("users").await?;
        let users_db = users.clone();
        let user = start_one(
            "user-service",
            wiring,
            vec![
                pair("DATABASE_URL", &pg(users)),
                // The tokens a run prepares are used for up to an hour (scenarios 2, 7 and 3
                // come one after the other); the default 15 min would expire them mid-run.
                pair("ACCESS_TOKEN_TTL_SECONDS", "7200"),
                pair(
                    "SERVICE_CLIENTS",
                    &format!(
                        "order-service={ORDER_SECRET},notification-service={NOTIFICATION_SECRET}"
                    ),
                ),
            ],
        )
        .await?;
        let jwks = user.url("/.well-known/jwks.json");
        let token_url = user.url("/internal/v1/service-token");
        let user_grpc = user.grpc_url();
        procs.push(user);

        let notification_db = slice.mongo("notification");
        procs.push(
            start_one(
                "notification-service",
                wiring,
                vec![
                    pair("AUTH_JWKS_URL", &jwks),
                    pair("MONGODB_URL", &mongo_url),
                    pair("MONGODB_DATABASE", &notification_db),
                    pair("SERVICE_TOKEN_URL", &token_url),
                    pair("SERVICE_SECRET", NOTIFICATION_SECRET),
                    pair("USER_GRPC_URL", &user_grpc),
                    pair("SMTP_HOST", "127.0.0.1"),
                    pair("SMTP_PORT", &wiring.smtp_port.to_string()),
                ],
            )
            .await?,
        );
        let inventory_db = slice.postgres("inventory").await?;
        procs.push(
            start_one(
                "inventory-service",
                wiring,
                vec![
                    pair("AUTH_JWKS_URL", &jwks),
                    pair("DATABASE_URL", &pg(inventory_db)),
                ],
            )
            .await?,
        );
        let catalog_db = slice.mongo("catalog");
        procs.push(
            start_one(
                "catalog-service",
                wiring,
                vec![
                    pair("AUTH_JWKS_URL", &jwks),
                    pair("MONGODB_URL", &mongo_url),
                    pair("MONGODB_DATABASE", &catalog_db),
                    pair("CATALOG_SEED_DEMO", "true"),
                ],
            )
            .await?,
        );
        let payments_db = slice.postgres("payments").await?;
        procs.push(
            start_one(
                "payment-service",
                wiring,
                vec![
                    pair("AUTH_JWKS_URL", &jwks),
                    pair("DATABASE_URL", &pg(payments_db)),
                ],
            )
            .await?,
        );
        let orders_db = slice.postgres("orders").await?;
        let grpc_of = |procs: &[Proc], name: &str| {
            procs
                .iter()
                .find(|proc| proc.name == name)
                .map(Proc::grpc_url)
                .unwrap_or_default()
        };
        let payment_grpc = match &via.payment_grpc {
            Some(proxy) => {
                let payment = procs
                    .iter()
                    .find(|proc| proc.name == "payment-service")
                    .context("payment-service started before order-service")?;
                proxy.set_upstream(payment.grpc);
                format!("http://{}", proxy.addr())
            }
            None => grpc_of(&procs, "payment-service"),
        };
        let order_env = vec![
            pair("AUTH_JWKS_URL", &jwks),
            pair("DATABASE_URL", &pg(orders_db)),
            pair("SERVICE_TOKEN_URL", &token_url),
            pair("SERVICE_SECRET", ORDER_SECRET),
            pair("CATALOG_GRPC_URL", &grpc_of(&procs, "catalog-service")),
            pair("INVENTORY_GRPC_URL", &grpc_of(&procs, "inventory-service")),
            pair("PAYMENT_GRPC_URL", &payment_grpc),
        ];
        procs.push(start_one("order-service", wiring, order_env).await?);

        let base = |name: &str| {
            procs
                .iter()
                .find(|proc| proc.name == name)
                .map(|proc| format!("http://{}", proc.http))
                .unwrap_or_default()
        };
        let mut gateway_env = vec![
            pair("AUTH_JWKS_URL", &jwks),
            pair("REDIS_URL", &Via::through(&slice.infra.redis, via.redis)),
            pair("REDIS_KEY_PREFIX", &slice.redis_prefix("gateway")),
            pair("USER_SERVICE_URL", &base("user-service")),
            pair("CATALOG_SERVICE_URL", &base("catalog-service")),
            pair("INVENTORY_SERVICE_URL", &base("inventory-service")),
            pair("ORDER_SERVICE_URL", &base("order-service")),
            pair("PAYMENT_SERVICE_URL", &base("payment-service")),
            pair("NOTIFICATION_SERVICE_URL", &base("notification-service")),
        ];
        if wiring.unlimited {
            gateway_env.extend(unlimited_rates());
        }
        procs.push(start_one("gateway", wiring, gateway_env).await?);
        Ok(Self {
            procs,
            notification_db,
            users_db,
        })
    }

    /// Stops every service, all at once (each drains on its own; nothing is left to order).
    pub async fn stop(self) {
        futures::future::join_all(
            self.procs
                .into_iter()
                .map(|proc| proc.stop(Duration::from_secs(10))),
        )
        .await;
    }
}

/// Rate limits far above anything a run sends.
pub fn unlimited_rates() -> Vec<(String, String)> {
    ["RATE_LIMIT_AUTH", "RATE_LIMIT_USER", "RATE_LIMIT_ADDRESS"]
        .into_iter()
        .map(|key| (key.to_owned(), "1000000000".to_owned()))
        .collect()
}

async fn start_one(name: &str, wiring: &Wiring, mut env: Vec<(String, String)>) -> Result<Proc> {
    env.push(("AMQP_URL".into(), wiring.amqp.clone()));
    env.extend(
        wiring
            .via
            .env
            .iter()
            .filter(|(service, ..)| service == name)
            .map(|(_, key, value)| (key.clone(), value.clone())),
    );
    let binary = wiring.bin_dir.join(name);
    if !binary.is_file() {
        bail!(
            "{} is missing: build the services first (cargo build --bins)",
            binary.display()
        );
    }
    let started = Instant::now();
    let mut proc = Proc::spawn(name, &binary, &env, &wiring.log_dir)?;
    proc.wait_ready(started, Duration::from_secs(60)).await?;
    crate::say!(
        "{name}: ready in {} ms",
        proc.ready_after.map(|d| d.as_millis()).unwrap_or_default()
    );
    Ok(proc)
}
