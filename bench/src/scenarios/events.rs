//! Scenario 4, the event pipeline: the same `shop_messaging` code every service runs — a
//! transaction that writes an outbox row (`enqueue_event`) and commits through
//! `outbox::postgres::commit`, the relay that this commit wakes and that publishes with
//! confirms, RabbitMQ, and a PostgreSQL consumer that claims the event in its inbox and runs
//! the handler — in this process, against a fresh database and vhost. Latency runs from the
//! producer's due time (before its transaction) to the handler's first line.
//!
//! The probe event is the bench's own (`bench.probe.sent`): it exists only in the run's vhost,
//! so no service ever sees it, and it carries its own due time, so no bookkeeping sits in the
//! measured path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use shop_messaging::{
    Consumer, Event, HandlerError, Received,
    consumer::postgres::Handle,
    outbox::{self, RelayConfig, postgres::Relay},
};
use shop_runtime::{health::Readiness, stores::amqp::AmqpConfig};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    infra::Slice,
    loadgen::{Measured, Outcome, Plan, Recorder, Summary, Ticket, Worker, run},
    say,
    scenarios::Settings,
};

/// The synthetic event: its sequence number and when it was due, in nanoseconds after the
/// scenario's base instant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub seq: u64,
    pub due_ns: u64,
}

impl Event for Probe {
    const SOURCE: &'static str = "shop-bench";
    const ROUTING_KEY: &'static str = "bench.probe.sent";
}

struct Delivered {
    base: Instant,
    recorder: Recorder,
    count: Arc<AtomicU64>,
}

impl Handle<Probe> for Delivered {
    async fn handle(
        &self,
        _tx: &mut sqlx::PgConnection,
        event: Received<Probe>,
    ) -> Result<(), HandlerError> {
        self.recorder
            .record_since(self.base + Duration::from_nanos(event.payload.due_ns));
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One producer: a pooled connection, one transaction per event.
struct Produce {
    pool: PgPool,
    base: Instant,
}

impl Worker for Produce {
    async fn call(&mut self, ticket: Ticket) -> Outcome {
        let probe = Probe {
            seq: ticket.index,
            due_ns: u64::try_from(ticket.due.saturating_duration_since(self.base).as_nanos())
                .unwrap_or_default(),
        };
        let result = async {
            let mut tx = self.pool.begin().await?;
            outbox::postgres::enqueue_event(&mut tx, &probe).await?;
            outbox::postgres::commit(tx).await?;
            Ok::<_, shop_messaging::Error>(())
        }
        .await;
        if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventPoint {
    pub rate: f64,
    /// The producing transactions.
    pub produce: Measured,
    pub delivered: u64,
    /// Due → handler.
    pub latency: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventsResults {
    pub points: Vec<EventPoint>,
    /// The point at BRIEF §9's rate.
    pub target: EventPoint,
}

pub async fn run_scenario(settings: &Settings, slice: &mut Slice) -> Result<EventsResults> {
    let database = slice.postgres("events").await?;
    let amqp = slice.vhost("events").await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let readiness = Readiness::default();
    // As a service has it: one pool (10, the runtime's default) for the relay and the consumer;
    // the producers get their own, as request handlers would share a service's pool.
    let service_pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(database.as_str())
        .await?;
    let producer_pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(database.as_str())
        .await?;
    outbox::postgres::install(&service_pool).await?;
    let amqp = shop_runtime::stores::amqp::connect(
        &AmqpConfig {
            url: amqp.as_str().parse().context("vhost URL")?,
        },
        "shop-bench",
        &readiness,
        shutdown.clone(),
        &tasks,
    );
    let base = Instant::now();
    let recorder = Recorder::default();
    let count = Arc::new(AtomicU64::new(0));
    let status = Consumer::postgres("bench", service_pool.clone())
        .on::<Probe>(Delivered {
            base,
            recorder: recorder.clone(),
            count: count.clone(),
        })
        .start(amqp.clone(), &readiness, &tasks, shutdown.clone())
        .await?;
    tasks.spawn(Relay::run(
        service_pool.clone(),
        amqp,
        RelayConfig::default(),
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status.is_attached() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the probe consumer did not attach within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut rates: Vec<(f64, Duration)> = settings
        .event_rates
        .iter()
        .map(|&rate| (rate, settings.event_step))
        .collect();
    rates.push((settings.event_target_rate, settings.event_target_duration));
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut points = Vec::new();
    for (rate, duration) in rates {
        recorder.reset();
        let start_count = count.load(Ordering::Relaxed);
        let workers = (0..16)
            .map(|_| Produce {
                pool: producer_pool.clone(),
                base,
            })
            .collect();
        let produce = run(&Plan::open(rate, duration), workers).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) - start_count < produce.ok && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let point = EventPoint {
            rate,
            delivered: count.load(Ordering::Relaxed) - start_count,
            latency: Summary::of(&recorder.snapshot()),
            produce,
        };
        say!(
            "scenario 4: {rate:.0} events/s: {} delivered, p50 {:.1} ms, p99 {:.1} ms",
            point.delivered,
            point.latency.p50_ms,
            point.latency.p99_ms
        );
        points.push(point);
    }
    shutdown.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    service_pool.close().await;
    producer_pool.close().await;
    let target = points
        .iter()
        .find(|point| point.rate == settings.event_target_rate)
        .cloned()
        .context("the target rate was measured")?;
    Ok(EventsResults { points, target })
}
