//! Scenario 3, orders end to end: registered users place orders with the approving test card
//! through the gateway at a fixed rate; an order's latency runs from its due send time to the
//! arrival of its `order.order.confirmed` event (or `order.order.cancelled`), read from a queue
//! of the run's own bound to the events exchange. The event is published by order-service's
//! outbox relay after the saga's last commit, so this latency includes the relay: it is the
//! moment any other service could learn of the confirmation.
//!
//! Commits per order come from `pg_stat_database` (the four PostgreSQL databases of the run:
//! users, inventory, payments, orders; catalog and notification are on MongoDB), and are set
//! against `pgbench -N` on the same server in the same run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use lapin::{Connection, ConnectionProperties, options::BasicConsumeOptions, types::FieldTable};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    http::{Exchange, HttpWorker},
    infra::Slice,
    loadgen::{Measured, Outcome, Plan, Summary, Ticket, histogram, run},
    say,
    scenarios::Settings,
};

/// What the setup prepared: signed-in users and products with plenty of stock.
#[derive(Debug, Clone)]
pub struct Shop {
    pub tokens: Vec<String>,
    /// The customers' addresses (each got a welcome mail).
    pub emails: Vec<String>,
    /// `(product id, sku)`.
    pub products: Vec<(String, String)>,
}

const PASSWORD: &str = "bench password, long enough";
const APPROVING_CARD: &str = "4242424242424242";

async fn json_of(response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

pub async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String> {
    let body = json_of(
        http.post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await?,
    )
    .await
    .with_context(|| format!("login of {email}"))?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("login answer without access_token")
}

/// Places one order of one unit of each of `products` (the approving card) and returns its id.
pub async fn place_one(base: &str, token: &str, products: &[&str]) -> Result<String> {
    let items: Vec<Value> = products
        .iter()
        .map(|product| json!({ "product_id": product, "quantity": 1 }))
        .collect();
    let body = json_of(
        reqwest::Client::new()
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({
                "items": items,
                "payment": { "card_number": APPROVING_CARD, "expiry": "12/39", "cvc": "123" },
                "shipping_address": { "name": "Bench User", "line1": "1 Main St", "city": "Berlin",
                                      "postal_code": "10115", "country": "DE" },
            }))
            .send()
            .await?,
    )
    .await
    .context("placing one order")?;
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("an order answer without id")
}

/// Registers and signs in `users` users, and gives every demo product `stock` units, all
/// through the gateway at `base`.
pub async fn prepare(base: &str, users: usize, stock: i64) -> Result<Shop> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let admin = login(&http, base, "admin@example.com", "change-me-admin").await?;

    // The demo seed: catalog writes it at start, inventory creates the stock rows from the
    // ProductCreated events (catalog's MongoDB outbox is polled, so this takes a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    let products = loop {
        let page = json_of(
            http.get(format!("{base}/api/v1/products?limit=100"))
                .send()
                .await?,
        )
        .await?;
        let products: Vec<(String, String)> = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["sku"].as_str()?.to_owned())))
            .collect();
        let mut stocked = !products.is_empty();
        for (_, sku) in &products {
            let status = http
                .get(format!("{base}/api/v1/inventory/{sku}"))
                .bearer_auth(&admin)
                .send()
                .await?
                .status();
            stocked &= status == StatusCode::OK;
        }
        if stocked {
            break products;
        }
        if Instant::now() > deadline {
            bail!("the demo products did not all get stock rows within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (_, sku) in &products {
        json_of(
            http.put(format!("{base}/api/v1/inventory/{sku}"))
                .bearer_auth(&admin)
                .json(&json!({ "available": stock }))
                .send()
                .await?,
        )
        .await
        .with_context(|| format!("setting the stock of {sku}"))?;
    }

    // Password hashing is deliberately slow: a few at a time, as user-service's queue allows.
    let run = Uuid::new_v4().simple().to_string();
    let emails: Vec<String> = (0..users)
        .map(|i| format!("bench-{}-{i}@example.com", &run[..8]))
        .collect();
    let tokens = futures::stream::iter(0..users)
        .map(|i| {
            let http = http.clone();
            let email = emails[i].clone();
            async move {
                json_of(
                    http.post(format!("{base}/api/v1/auth/register"))
                        .json(&json!({ "email": email, "password": PASSWORD, "name": format!("Bench {i}") }))
                        .send()
                        .await?,
                )
                .await
                .with_context(|| format!("registering {email}"))?;
                login(&http, base, &email, PASSWORD).await
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<Result<String>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(Shop {
        tokens,
        emails,
        products,
    })
}

/// Orders placed and not yet ended, and the statistics of each phase.
#[derive(Debug, Default)]
struct TrackerState {
    /// order id → (phase, due send time)
    pending: HashMap<Uuid, (usize, Instant)>,
    /// Events that arrived before their POST's answer was read: order id → (confirmed, when).
    early: HashMap<Uuid, (bool, Instant, String)>,
    phases: Vec<PhaseStats>,
    /// When each confirmation arrived (of any phase's order): what the system delivered
    /// while a phase offered its load, whichever phase the orders were placed in.
    confirmations: Vec<Instant>,
}

#[derive(Debug)]
struct PhaseStats {
    confirmed: Histogram<u64>,
    cancelled: u64,
    reasons: HashMap<String, u64>,
    placed: u64,
}

impl PhaseStats {
    fn new() -> Self {
        Self {
            confirmed: histogram(),
            cancelled: 0,
            reasons: HashMap::new(),
            placed: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Tracker(Arc<Mutex<TrackerState>>);

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_phase(&self) -> usize {
        let mut state = self.lock();
        state.phases.push(PhaseStats::new());
        state.phases.len() - 1
    }

    fn end(
        state: &mut TrackerState,
        phase: usize,
        due: Instant,
        confirmed: bool,
        at: Instant,
        reason: String,
    ) {
        let stats = &mut state.phases[phase];
        if confirmed {
            let micros =
                u64::try_from(at.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
            stats.confirmed.saturating_record(micros.max(1));
            state.confirmations.push(at);
        } else {
            stats.cancelled += 1;
            *stats.reasons.entry(reason).or_default() += 1;
        }
    }

    fn placed(&self, id: Uuid, phase: usize, due: Instant) {
        let mut state = self.lock();
        state.phases[phase].placed += 1;
        match state.early.remove(&id) {
            Some((confirmed, at, reason)) => {
                Self::end(&mut state, phase, due, confirmed, at, reason)
            }
            None => {
                state.pending.insert(id, (phase, due));
            }
        }
    }

    fn ended(&self, id: Uuid, confirmed: bool, reason: String) {
        let at = Instant::now();
        let mut state = self.lock();
        match state.pending.remove(&id) {
            Some((phase, due)) => Self::end(&mut state, phase, due, confirmed, at, reason),
            None => {
                state.early.insert(id, (confirmed, at, reason));
            }
        }
    }

    /// Confirmations (of any phase's orders) that arrived within `window`.
    fn delivered_in(&self, window: &std::ops::Range<Instant>) -> usize {
        self.lock()
            .confirmations
            .iter()
            .filter(|at| window.contains(at))
            .count()
    }

    fn pending_in(&self, phase: usize) -> usize {
        self.lock()
            .pending
            .values()
            .filter(|(p, _)| *p == phase)
            .count()
    }
}

/// Listens to the run's order events on a private queue and ends orders in the tracker.
async fn observe(amqp: &str, tracker: Tracker) -> Result<Connection> {
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = shop_messaging::topology::declare_private_queue(
        &channel,
        ["order.order.confirmed", "order.order.cancelled"],
    )
    .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "shop-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let Ok(envelope) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            let Some(id) = envelope["data"]["orderId"]
                .as_str()
                .and_then(|id| id.parse().ok())
            else {
                continue;
            };
            let confirmed = envelope["type"] == "order.confirmed";
            let reason = envelope["data"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            tracker.ended(id, confirmed, reason);
        }
    });
    Ok(connection)
}

/// `POST /api/v1/orders` for one ticket: user and product by turns, a fresh idempotency key.
#[derive(Debug)]
struct PlaceOrder {
    shop: Shop,
    tracker: Tracker,
    phase: usize,
}

impl Exchange for PlaceOrder {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>> {
        let i = usize::try_from(ticket.index).unwrap_or_default();
        let token = &self.shop.tokens[i % self.shop.tokens.len()];
        let (product, _) = &self.shop.products[i % self.shop.products.len()];
        let body = json!({
            "items": [{ "product_id": product, "quantity": 1 }],
            "payment": { "card_number": APPROVING_CARD, "expiry": "12/39", "cvc": "123" },
            "shipping_address": { "name": "Bench User", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "DE" },
        });
        Request::post("/api/v1/orders")
            .header(http::header::HOST, "bench")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", Uuid::new_v4().to_string())
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request")
    }

    fn response(&self, ticket: &Ticket, status: StatusCode, _: &HeaderMap, body: Bytes) -> Outcome {
        if !status.is_success() {
            return Outcome::Refused(status.as_u16());
        }
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|order| order["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()));
        match id {
            Some(id) => {
                self.tracker.placed(id, self.phase, ticket.due);
                Outcome::Ok
            }
            None => Outcome::Refused(status.as_u16()),
        }
    }
}

/// One phase: a rate held for a while, and how its orders ended.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub offered_rate: f64,
    pub duration_s: f64,
    /// The `POST /orders` requests themselves.
    pub post: Measured,
    pub confirmed: u64,
    pub cancelled: u64,
    pub cancel_reasons: HashMap<String, u64>,
    /// Placed but neither confirmed nor cancelled within the drain time after the phase.
    pub unfinished: u64,
    /// This phase's confirmed orders (including those that ended in the drain after it) per
    /// second of the phase.
    pub confirmed_per_s: f64,
    /// Confirmations that arrived while the phase offered its load, per second of it: the
    /// throughput the system delivered. Below the knee it is the offered rate; past it, the
    /// system's capacity — where `confirmed_per_s` also counts a backlog finished later.
    pub delivered_per_s: f64,
    /// Due send time → `order.order.confirmed` received.
    pub to_confirmed: Summary,
    /// Commits in the four PostgreSQL databases per ended order, by database.
    pub commits_per_order: Option<f64>,
    pub commits_by_database: Vec<(String, f64)>,
    /// CPU milliseconds per ended order, by part of the system, largest first (the phase and
    /// its drain; see [`crate::cpu`]).
    pub cpu_ms_per_order: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pgbench {
    pub scale: u32,
    pub clients: u32,
    pub duration_s: f64,
    /// Transactions (= commits) per second of `pgbench -N`.
    pub tps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrdersResults {
    pub users: usize,
    pub products: usize,
    pub ramp: Vec<Phase>,
    pub sustained: Phase,
    pub pgbench: Option<Pgbench>,
    /// Commits the sustained phase asked of PostgreSQL per second / what pgbench committed.
    pub commit_share_of_pgbench: Option<f64>,
}

const SERVICE_DATABASES: [&str; 4] = ["users", "inventory", "payments", "orders"];

async fn service_commits(slice: &Slice) -> Result<HashMap<String, i64>> {
    Ok(slice
        .commits()
        .await?
        .into_iter()
        .filter_map(|(name, commits)| {
            SERVICE_DATABASES
                .iter()
                .find(|purpose| name.ends_with(&format!("_{purpose}")))
                .map(|purpose| ((*purpose).to_owned(), commits))
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    gateway: std::net::SocketAddr,
    shop: &Shop,
    tracker: &Tracker,
    slice: &Slice,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> Result<Phase> {
    let index = tracker.start_phase();
    // pg_stat_database is updated by each backend about once a second: let it settle.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = service_commits(slice).await?;
    let cpu_before = crate::cpu::by_part();
    let exchange = Arc::new(PlaceOrder {
        shop: shop.clone(),
        tracker: tracker.clone(),
        phase: index,
    });
    let window_start = Instant::now();
    let post = run(
        &Plan::open(rate, duration),
        HttpWorker::many(gateway, exchange, connections),
    )
    .await;
    let window = window_start..window_start + duration;
    // Drain: wait for the orders of this phase to end (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracker.pending_in(index) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cpu_after = crate::cpu::by_part();
    let after = service_commits(slice).await?;
    let unfinished = tracker.pending_in(index) as u64;
    let delivered = tracker.delivered_in(&window);
    let state = tracker.lock();
    let stats = &state.phases[index];
    let confirmed = stats.confirmed.len();
    let ended = confirmed + stats.cancelled;
    let mut commits_by_database: Vec<(String, f64)> = SERVICE_DATABASES
        .iter()
        .map(|db| {
            let delta = after.get(*db).copied().unwrap_or_default()
                - before.get(*db).copied().unwrap_or_default();
            ((*db).to_owned(), delta as f64 / ended.max(1) as f64)
        })
        .collect();
    commits_by_database.retain(|(_, per)| per.is_finite());
    let total: f64 = commits_by_database.iter().map(|(_, per)| per).sum();
    Ok(Phase {
        offered_rate: rate,
        duration_s: duration.as_secs_f64(),
        post,
        confirmed,
        cancelled: stats.cancelled,
        cancel_reasons: stats.reasons.clone(),
        unfinished,
        confirmed_per_s: confirmed as f64 / duration.as_secs_f64(),
        delivered_per_s: delivered as f64 / duration.as_secs_f64(),
        to_confirmed: Summary::of(&stats.confirmed),
        commits_per_order: (ended > 0).then_some(total),
        commits_by_database,
        cpu_ms_per_order: if ended > 0 {
            crate::cpu::per_unit(&cpu_before, &cpu_after, ended)
        } else {
            Vec::new()
        },
    })
}

/// Runs `pgbench -N` against a fresh database of the run.
pub async fn pgbench(slice: &mut Slice, settings: &Settings) -> Result<Pgbench> {
    let url = slice.postgres("pgbench").await?;
    let binary = ["/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench"]
        .into_iter()
        .find(|path| std::path::Path::new(path).is_file())
        .context("pgbench not found (Debian: postgresql-15 / postgresql-contrib)")?;
    let database = url.path().trim_start_matches('/').to_owned();
    let base = |command: &mut tokio::process::Command| {
        command
            .env("PGPASSWORD", url.password().unwrap_or_default())
            .args(["-h", url.host_str().unwrap_or("127.0.0.1")])
            .args(["-p", &url.port().unwrap_or(5432).to_string()])
            .args(["-U", url.username()]);
    };
    let mut init = tokio::process::Command::new(binary);
    base(&mut init);
    init.args([
        "-i",
        "-q",
        "-s",
        &settings.pgbench_scale.to_string(),
        &database,
    ]);
    let out = init.output().await?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut bench = tokio::process::Command::new(binary);
    base(&mut bench);
    bench.args([
        "-N",
        "-n",
        "-c",
        &settings.pgbench_clients.to_string(),
        "-j",
        "2",
        "-T",
        &settings.pgbench_duration.as_secs().to_string(),
        &database,
    ]);
    let out = bench.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
    Ok(Pgbench {
        scale: settings.pgbench_scale,
        clients: settings.pgbench_clients,
        duration_s: settings.pgbench_duration.as_secs_f64(),
        tps,
    })
}

pub async fn run_scenario(
    settings: &Settings,
    gateway: std::net::SocketAddr,
    shop: &Shop,
    amqp: &str,
    slice: &mut Slice,
) -> Result<OrdersResults> {
    say!("scenario 3: pgbench -N (PostgreSQL's own commit rate)");
    let pgbench = match pgbench(slice, settings).await {
        Ok(result) => {
            say!("  {:.0} tps", result.tps);
            Some(result)
        }
        Err(err) => {
            say!("  pgbench could not run: {err:#}");
            None
        }
    };
    let tracker = Tracker::default();
    let _connection = observe(amqp, tracker.clone()).await?;
    let mut ramp = Vec::new();
    for &rate in &settings.order_ramp {
        let result = phase(
            gateway,
            shop,
            &tracker,
            slice,
            rate,
            settings.order_ramp_step,
            settings.order_connections,
        )
        .await?;
        say!(
            "scenario 3 ramp: {rate:.0}/s offered: {:.1} confirmed/s ({:.1}/s delivered during the phase), p99 {:.0} ms, {} cancelled, {} unfinished, {} POST errors",
            result.confirmed_per_s,
            result.delivered_per_s,
            result.to_confirmed.p99_ms,
            result.cancelled,
            result.unfinished,
            result.post.refused + result.post.errors + result.post.unsent
        );
        ramp.push(result);
    }
    say!(
        "scenario 3: {:.0} orders/s for {} s",
        settings.order_rate,
        settings.order_duration.as_secs()
    );
    let sustained = phase(
        gateway,
        shop,
        &tracker,
        slice,
        settings.order_rate,
        settings.order_duration,
        settings.order_connections,
    )
    .await?;
    say!(
        "  {:.1} confirmed/s ({:.1}/s delivered during the 60 s), p50 {:.0} ms, p99 {:.0} ms, {:.1} commits/order",
        sustained.confirmed_per_s,
        sustained.delivered_per_s,
        sustained.to_confirmed.p50_ms,
        sustained.to_confirmed.p99_ms,
        sustained.commits_per_order.unwrap_or_default()
    );
    let commit_share_of_pgbench = match (&pgbench, sustained.commits_per_order) {
        (Some(pgbench), Some(per_order)) if pgbench.tps > 0.0 => {
            Some(per_order * sustained.confirmed_per_s / pgbench.tps)
        }
        _ => None,
    };
    Ok(OrdersResults {
        users: shop.tokens.len(),
        products: shop.products.len(),
        ramp,
        sustained,
        pgbench,
        commit_share_of_pgbench,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the knee a phase's orders keep confirming after it: they count for the phase
    /// (`confirmed`), but only what arrived while it offered load is what the system delivered.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_finished_after_the_phase_is_confirmed_but_not_delivered_in_it() {
        let tracker = Tracker::default();
        let phase = tracker.start_phase();
        let start = Instant::now();
        let window = start..start + Duration::from_secs(10);
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        tracker.placed(early, phase, start);
        tracker.placed(late, phase, start);
        tokio::time::advance(Duration::from_secs(5)).await;
        tracker.ended(early, true, String::new());
        tokio::time::advance(Duration::from_secs(10)).await;
        tracker.ended(late, true, String::new());

        assert_eq!(tracker.lock().phases[phase].confirmed.len(), 2);
        assert_eq!(tracker.delivered_in(&window), 1);
        assert_eq!(tracker.pending_in(phase), 0);
    }
}
