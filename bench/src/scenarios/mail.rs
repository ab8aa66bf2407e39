//! Scenario 7, emails on a store with history: `order.order.confirmed` published to the
//! stack's broker → notification-service (records it, looks the customer up in user-service
//! over gRPC, renders, claims, sends) → accepted by the bench's SMTP sink. Latency runs from an
//! event's due time (before it is published) to the moment the sink accepted its mail.
//!
//! # Why this scenario exists
//!
//! Scenario 4 measures the messaging library on a fresh database. What users feel is the whole
//! pipeline on a store that has run for weeks: an earlier design claimed each email with a
//! query FerretDB v1 evaluates by reading every stored document, so every email ever sent made
//! the next one slower — thousands of customers waited hours for their confirmation, and it got
//! worse each day (`docs/adr/0012-notifications.md`). The figure that proves the cost of one
//! email does not grow with history is the same rate measured twice: on an almost empty store,
//! then with [`Settings::mail_history`] notifications stored (100,000 in the full run). The two
//! should agree; the first is the baseline, the second the verdict.
//!
//! # How
//!
//! * The events are published with the services' own [`Publisher`] (confirms, the CloudEvents
//!   envelope), for customers that exist ([`customers_written`]: 4,000 in the full run, so a
//!   day's confirmations spread over customers as a shop's do), so the lookup in user-service
//!   is real. No order exists behind them: notification-service does not
//!   ask order-service, it trusts the event, as it does in production.
//! * The history is written straight into the store in bulk, documents shaped as the service
//!   writes them (sent order confirmations of other customers, bodies of a few kilobytes),
//!   spread over the last 30 days with the event ids that time gives them, each in the
//!   collection the service keeps it in, as `services/notification/tests/notifications.rs`
//!   does.
//! * Each mail carries the event id in its `Message-ID` (`<event id@domain>`): the sink hands
//!   that header and the arrival instant to this scenario ([`crate::smtp::Watch`]), which looks up
//!   the event's due time. A mail that never arrives within the drain is counted as missing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use notification_service::store::{is_history_collection, past_order_email, write_history};
use serde::Serialize;
use shop_events::{
    Money,
    order::{OrderConfirmed, OrderLine},
};
use shop_messaging::{Event, publisher::Publisher};
use shop_runtime::{health::Readiness, stores::amqp::AmqpConfig};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    loadgen::{Measured, Outcome, Plan, Summary, Ticket, Worker, histogram, run},
    say,
    scenarios::Settings,
    smtp::{Arrival, Watch},
};

/// One window at the scenario's rate.
#[derive(Debug, Clone, Serialize)]
pub struct MailPoint {
    /// Notifications in the store when the window started.
    pub stored: u64,
    pub rate: f64,
    /// The publishes (broker confirmed = ok).
    pub publish: Measured,
    /// Mails accepted by the sink for this window's events.
    pub delivered: u64,
    /// Published but no mail within the drain.
    pub missing: u64,
    /// Delivered mails per second, from the window's start to its last mail.
    pub delivered_per_s: f64,
    /// Due → accepted by the sink.
    pub latency: Summary,
    /// Milliseconds of CPU per delivered mail, by part of the system, largest first.
    pub cpu_ms_per_mail: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailResults {
    /// On an (almost) empty store: the baseline.
    pub fresh: MailPoint,
    /// With the history written: the windows, in order.
    pub with_history: Vec<MailPoint>,
    /// How long writing the history took.
    pub history_fill_s: f64,
    /// The index into `with_history` of the median window by p99.
    pub median: usize,
    /// How many customers the confirmations went to.
    pub customers: usize,
}

impl MailResults {
    /// The window the verdict is read from.
    pub fn median_window(&self) -> &MailPoint {
        &self.with_history[self.median]
    }

    /// p99 with history over p99 without: ≈ 1 when the cost does not grow with what is stored.
    pub fn history_p99_ratio(&self) -> Option<f64> {
        let fresh = self.fresh.latency.p99_ms;
        (fresh > 0.0).then(|| self.median_window().latency.p99_ms / fresh)
    }
}

/// The events in flight: event id → due time.
type Due = Arc<Mutex<HashMap<Uuid, Instant>>>;

/// Publishes one `OrderConfirmed` per ticket, for a customer taken round robin.
struct Publish {
    publisher: Arc<Publisher>,
    customers: Arc<Vec<Uuid>>,
    due: Due,
}

impl Worker for Publish {
    async fn call(&mut self, ticket: Ticket) -> Outcome {
        let user_id = self.customers[ticket.index as usize % self.customers.len()];
        let confirmed = OrderConfirmed {
            order_id: Uuid::now_v7(),
            user_id,
            items: vec![OrderLine {
                product_id: "bench-product".to_owned(),
                sku: "BENCH-1".to_owned(),
                name: "Bench mug".to_owned(),
                quantity: 1,
                unit_price: eur(1250),
            }],
            total: eur(1250),
        };
        let Ok(envelope) = confirmed.envelope() else {
            return Outcome::Error;
        };
        lock(&self.due).insert(envelope.id, ticket.due);
        let published = self
            .publisher
            .publish_events(&[(OrderConfirmed::ROUTING_KEY.to_owned(), envelope.clone())])
            .await;
        if published.iter().all(Result::is_ok) {
            Outcome::Ok
        } else {
            lock(&self.due).remove(&envelope.id);
            Outcome::Error
        }
    }
}

fn eur(amount: i64) -> Money {
    Money {
        amount,
        currency: "EUR".to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The event id in a `Message-ID` of the form `<event id@domain>`.
pub fn event_id(message_id: &str) -> Option<Uuid> {
    let inner = message_id.trim().strip_prefix('<')?.split_once('@')?.0;
    inner.parse().ok()
}

/// `n` customers written straight into user-service's table, their ids returned: the
/// confirmations of a day go to many customers, as real ones do (each customer's month of
/// notifications is one bucket in notification's store on FerretDB, rewritten with every
/// email, so 40 customers receiving 16,000 emails in an afternoon would measure a shape no
/// shop has). Registering them through the API would spend minutes hashing passwords they
/// never use; notification only asks user-service for each one's name and address
/// (`GetUser`). Their password hash is no PHC string, so none of them can sign in.
pub async fn customers_written(users_db: &url::Url, n: usize) -> Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let emails: Vec<String> = ids
        .iter()
        .map(|id| format!("customer-{}@bench.example", id.simple()))
        .collect();
    let names: Vec<String> = (0..n).map(|i| format!("Customer {i}")).collect();
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(users_db.as_str())
        .await
        .context("user-service's database")?;
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash) \
         SELECT id, email, name, 'none: written by make bench' \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t (id, email, name)",
    )
    .bind(&ids)
    .bind(&emails)
    .bind(&names)
    .execute(&mut db)
    .await
    .context("writing scenario 7's customers")?;
    Ok(ids)
}

/// Where the scenario runs: the stack's broker and notification's database.
#[derive(Debug)]
pub struct Target<'a> {
    pub amqp: &'a str,
    pub mongodb_url: &'a str,
    pub notification_db: &'a str,
    /// The customers to mail ([`customers_written`]).
    pub customers: Vec<Uuid>,
    pub watch: &'a Watch,
}

pub async fn run_scenario(settings: &Settings, target: Target<'_>) -> Result<MailResults> {
    anyhow::ensure!(!target.customers.is_empty(), "no customers to mail");
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let amqp = shop_runtime::stores::amqp::connect(
        &AmqpConfig {
            url: target.amqp.parse().context("the stack's vhost URL")?,
        },
        "shop-bench-mail",
        &Readiness::default(),
        shutdown.clone(),
        &tasks,
    );
    amqp.wait_connected(Duration::from_secs(30))
        .await
        .context("the broker did not accept a connection within 30 s")?;
    let publisher = Arc::new(Publisher::new(amqp));
    let mongo = mongodb::Client::with_uri_str(target.mongodb_url).await?;
    let db = mongo.database(target.notification_db);

    let (tx, mut arrivals) = mpsc::unbounded_channel();
    target.watch.install(tx);
    let due: Due = Arc::default();
    let customer_count = target.customers.len();
    let customers = Arc::new(target.customers);
    let publishers = || -> Vec<Publish> {
        (0..16)
            .map(|_| Publish {
                publisher: publisher.clone(),
                customers: customers.clone(),
                due: due.clone(),
            })
            .collect()
    };

    // Let the welcome mails of the preparation drain first: they are not this scenario's.
    settle(&mut arrivals, Duration::from_secs(2)).await;
    let stored = count_stored(&db).await?;
    let fresh = measure(settings, stored, publishers(), &due, &mut arrivals).await;
    say!(
        "scenario 7: {stored} stored: {} of {} mailed, p99 {:.0} ms",
        fresh.delivered,
        fresh.publish.ok,
        fresh.latency.p99_ms
    );

    let started = Instant::now();
    fill(&db, settings.mail_history).await?;
    let history_fill_s = started.elapsed().as_secs_f64();
    say!(
        "scenario 7: {} notifications written in {history_fill_s:.0} s",
        settings.mail_history
    );

    let mut with_history = Vec::new();
    for _ in 0..settings.mail_windows {
        settle(&mut arrivals, Duration::from_secs(2)).await;
        let stored = count_stored(&db).await?;
        let point = measure(settings, stored, publishers(), &due, &mut arrivals).await;
        say!(
            "scenario 7: {stored} stored: {} of {} mailed, {:.0}/s, p99 {:.0} ms",
            point.delivered,
            point.publish.ok,
            point.delivered_per_s,
            point.latency.p99_ms
        );
        with_history.push(point);
    }
    target.watch.remove();
    shutdown.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;

    let mut order: Vec<usize> = (0..with_history.len()).collect();
    order.sort_by(|&a, &b| {
        with_history[a]
            .latency
            .p99_ms
            .total_cmp(&with_history[b].latency.p99_ms)
    });
    Ok(MailResults {
        fresh,
        median: order[order.len() / 2],
        with_history,
        history_fill_s,
        customers: customer_count,
    })
}

/// One window: publish at the rate, then wait (up to the drain) for every mail.
async fn measure(
    settings: &Settings,
    stored: u64,
    workers: Vec<Publish>,
    due: &Due,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) -> MailPoint {
    let cpu_before = crate::cpu::by_part();
    let start = Instant::now();
    let publish = run(
        &Plan::open(settings.mail_rate, settings.mail_window),
        workers,
    )
    .await;
    let mut latency = histogram();
    let mut delivered = 0u64;
    let mut last = start;
    let drain_until = Instant::now() + settings.mail_drain;
    while !lock(due).is_empty() {
        let Ok(Some(arrival)) = tokio::time::timeout_at(drain_until, arrivals.recv()).await else {
            break;
        };
        let Some(due_at) = arrival
            .message_id
            .as_deref()
            .and_then(event_id)
            .and_then(|id| lock(due).remove(&id))
        else {
            continue;
        };
        delivered += 1;
        last = last.max(arrival.at);
        let micros = u64::try_from(arrival.at.saturating_duration_since(due_at).as_micros())
            .unwrap_or(u64::MAX);
        latency.saturating_record(micros.max(1));
    }
    let cpu_after = crate::cpu::by_part();
    let missing = {
        let mut due = lock(due);
        let missing = due.len() as u64;
        due.clear();
        missing
    };
    let span = last.saturating_duration_since(start).as_secs_f64();
    MailPoint {
        stored,
        rate: settings.mail_rate,
        publish,
        delivered,
        missing,
        delivered_per_s: if span > 0.0 {
            delivered as f64 / span
        } else {
            0.0
        },
        latency: Summary::of(&latency),
        cpu_ms_per_mail: crate::cpu::per_unit(&cpu_before, &cpu_after, delivered)
            .into_iter()
            .filter(|(part, _)| {
                [
                    "notification-service",
                    "ferretdb",
                    "user-service",
                    "rabbitmq",
                ]
                .contains(&part.as_str())
            })
            .collect(),
    }
}

/// Drops arrivals until none came for `quiet` (a window's late mails would otherwise take
/// the next window's capacity), but no longer than [`SETTLE_AT_MOST`].
async fn settle(arrivals: &mut mpsc::UnboundedReceiver<Arrival>, quiet: Duration) {
    let give_up = Instant::now() + SETTLE_AT_MOST;
    while Instant::now() < give_up
        && let Ok(Some(_)) = tokio::time::timeout(quiet, arrivals.recv()).await
    {}
}

/// How long [`settle`] waits for a backlog to drain.
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

/// Writes `n` sent order confirmations of other customers into the history, in bulk: spread
/// over the last 30 days, each with the UUIDv7 event id its time gives it, in the collection
/// notification-service keeps it in (`store::history_collection`: one per day on FerretDB v1).
async fn fill(db: &mongodb::Database, n: u64) -> mongodb::error::Result<()> {
    use mongodb::bson::DateTime;
    let now_ms = DateTime::now().timestamp_millis();
    let step_ms = 30 * 24 * 3_600_000 / i64::try_from(n.max(1)).unwrap_or(1);
    write_history(
        db,
        (0..n).map(|i| {
            let at_ms = now_ms - 60_000 - i64::try_from(i).unwrap_or(0) * step_ms;
            past_order_email(
                i,
                chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default(),
            )
        }),
    )
    .await
}

/// Notifications stored, over every history collection (the day partitions included).
async fn count_stored(db: &mongodb::Database) -> mongodb::error::Result<u64> {
    let mut count = 0;
    for name in db.list_collection_names().await? {
        if is_history_collection(&name) {
            count += db
                .collection::<mongodb::bson::Document>(&name)
                .estimated_document_count()
                .await?;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_is_read_back_from_the_message_id_and_nothing_else_is() {
        let id = Uuid::now_v7();
        assert_eq!(event_id(&format!("<{id}@shop.example>")), Some(id));
        assert_eq!(event_id(&format!(" <{id}@shop.example>\r")), Some(id));
        assert_eq!(event_id("<42@shop.example>"), None);
        assert_eq!(event_id(&id.to_string()), None);
    }
}
