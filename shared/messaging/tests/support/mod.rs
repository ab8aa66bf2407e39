//! What the messaging tests share: a private database and vhost per test, the broker behind a
//! proxy the test can cut, and a handler whose effect is a row in the test's database.

#![allow(dead_code)] // each test binary uses a different part

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use shop_messaging::{
    Consumer, ConsumerStatus, Envelope, Handler, HandlerError, Subscription, inbox,
    outbox::{RelayConfig, postgres::Relay},
};
use shop_runtime::{
    health::Readiness,
    stores::amqp::{Amqp, AmqpConfig},
};
use shop_testkit::{BoxError, isolation, proxy::TcpProxy};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::{Notify, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

/// The consumer name the tests use: queues `test.events`, `test.events.parking`, ...
pub const CONSUMER: &str = "test";
pub const QUEUE: &str = "test.events";
pub const PARKING: &str = "test.events.parking";
pub const ROUTING_KEY: &str = "shop.thing.happened";

/// One test's slice of the infrastructure, wired the way the runtime wires a service.
pub struct Stack {
    pub pool: PgPool,
    /// The runtime's self-healing connection, through [`Stack::proxy`].
    pub amqp: Amqp,
    pub proxy: TcpProxy,
    /// The test vhost, reached directly (for inspecting queues).
    pub direct_url: String,
    pub readiness: Readiness,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    pub async fn new() -> Result<Self, BoxError> {
        shop_runtime::install_crypto_provider();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&isolation::postgres_database().await?)
            .await?;
        shop_messaging::postgres::install(&pool).await?;
        sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
            .execute(&pool)
            .await?;

        let direct_url = isolation::rabbitmq_vhost().await?;
        let mut url = url::Url::parse(&direct_url)?;
        let upstream = format!(
            "{}:{}",
            url.host_str().ok_or("no host")?,
            url.port().unwrap_or(5672)
        );
        let proxy = TcpProxy::start(&upstream).await?;
        url.set_port(Some(proxy.addr().port()))
            .map_err(|()| "cannot set port")?;

        let readiness = Readiness::default();
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let amqp = shop_runtime::stores::amqp::connect(
            &AmqpConfig {
                url: url.as_str().parse()?,
            },
            "messaging-test",
            &readiness,
            shutdown.clone(),
            &tasks,
        );
        amqp.wait_connected(Duration::from_secs(10))
            .await
            .ok_or("broker not reachable")?;
        Ok(Self {
            pool,
            amqp,
            proxy,
            direct_url,
            readiness,
            tasks,
            shutdown,
        })
    }

    /// Short delays so the tests are fast.
    pub fn subscription(&self) -> Subscription {
        Subscription::new(CONSUMER, ["shop.thing.*"])
            .prefetch(4)
            .retry_delays([Duration::from_millis(100), Duration::from_millis(300)])
            .handler_timeout(Duration::from_secs(10))
    }

    /// A fresh stack with a [`Recorder`] consumer already attached: the start of most tests.
    pub async fn consuming() -> Result<(Self, Recorder), BoxError> {
        let stack = Self::new().await?;
        let recorder = Recorder::new(&stack.pool);
        stack.consume(recorder.clone()).await?;
        Ok((stack, recorder))
    }

    /// Starts a consumer with `handler` and waits until it is attached.
    pub async fn consume(&self, handler: Recorder) -> Result<ConsumerStatus, BoxError> {
        let status = Consumer::start(
            self.amqp.clone(),
            &self.readiness,
            &self.tasks,
            self.shutdown.clone(),
            self.subscription(),
            handler,
        );
        let attached = status.clone();
        eventually(Duration::from_secs(10), || {
            let attached = attached.clone();
            async move { attached.is_attached() }
        })
        .await?;
        Ok(status)
    }

    /// Starts the outbox relay.
    pub fn relay(&self) {
        self.tasks.spawn(Relay::run(
            self.pool.clone(),
            self.amqp.clone(),
            RelayConfig {
                batch_size: 50,
                poll_interval: Duration::from_millis(500),
                max_backoff: Duration::from_secs(1),
            },
            self.shutdown.clone(),
        ));
    }

    /// Commits `event` through the outbox, in a transaction with another write.
    pub async fn commit(&self, event: &Envelope) -> Result<(), BoxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?; // stands in for the state change
        shop_messaging::postgres::enqueue(&mut tx, ROUTING_KEY, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn effects(&self, id: Uuid) -> Result<i64, BoxError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn outbox_rows(&self) -> Result<i64, BoxError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM messaging.outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn readiness_of(&self, probe: &str) -> Option<&'static str> {
        self.readiness.check().await.checks.get(probe).copied()
    }
}

/// An event for the tests.
pub fn event(data: serde_json::Value) -> Envelope {
    Envelope::new("test-producer", "thing.happened", &data).expect("a JSON value")
}

/// Polls `condition` every 50 ms until it holds, or fails after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("condition not met within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (event id, trace id of the consumer span)
pub type Seen = (Uuid, Option<String>);

/// A consumer's handler whose effect is a row in `effects`, deduplicated by the inbox in the
/// same transaction. It records every delivery it sees (with the trace id it ran in) and
/// misbehaves on request: `{"poison": true}` always fails retryably, `{"invalid": true}`
/// permanently, `{"hold": true}` commits and then waits for [`Recorder::release`] the first time.
#[derive(Clone)]
pub struct Recorder {
    pool: PgPool,
    /// Every delivery the handler saw: the event id and the trace id it ran in.
    pub deliveries: Arc<Mutex<Vec<Seen>>>,
    held: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    release: Arc<Notify>,
    hold_once: Arc<Mutex<bool>>,
}

impl Recorder {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            pool: pool.clone(),
            deliveries: Arc::default(),
            held: Arc::default(),
            release: Arc::default(),
            hold_once: Arc::new(Mutex::new(true)),
        }
    }

    /// Resolves when a `hold` event's effect has committed and the handler is waiting.
    pub fn on_hold(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.held.lock().expect("lock") = Some(tx);
        rx
    }

    pub fn release(&self) {
        self.release.notify_one();
    }

    pub fn deliveries_of(&self, id: Uuid) -> usize {
        self.deliveries
            .lock()
            .expect("lock")
            .iter()
            .filter(|(seen, _)| *seen == id)
            .count()
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.deliveries
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Handler for Recorder {
    async fn handle(&self, event: Envelope) -> Result<(), HandlerError> {
        let trace_id = shop_runtime::telemetry::current_trace_id();
        self.deliveries
            .lock()
            .expect("lock")
            .push((event.id, trace_id));
        if event.data["poison"] == true {
            return Err(HandlerError::retryable("poisoned"));
        }
        if event.data["invalid"] == true {
            return Err(HandlerError::permanent("not a thing we know"));
        }
        let mut tx = self.pool.begin().await.map_err(HandlerError::retryable)?;
        if !inbox::postgres::claim(&mut tx, CONSUMER, &event)
            .await
            .map_err(HandlerError::retryable)?
        {
            return Ok(());
        }
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.id)
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;

        let hold = event.data["hold"] == true
            && std::mem::take(&mut *self.hold_once.lock().expect("lock"));
        if hold {
            if let Some(held) = self.held.lock().expect("lock").take() {
                let _ = held.send(());
            }
            self.release.notified().await;
        }
        Ok(())
    }
}

/// Takes (and acknowledges) `count` messages from the parking queue, waiting up to `timeout`.
pub async fn parked(
    direct_url: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<lapin::message::Delivery>, BoxError> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};

    let connection =
        lapin::Connection::connect(direct_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut parked = Vec::new();
    while parked.len() < count {
        match channel
            .basic_get(PARKING.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => {
                message.delivery.ack(BasicAckOptions::default()).await?;
                parked.push(message.delivery);
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "{} of {count} messages parked within {timeout:?}",
                    parked.len()
                )
                .into());
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(parked)
}
