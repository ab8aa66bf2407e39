//! What the messaging tests share: a private database and vhost per test, the broker behind a
//! proxy the test can cut, and a handler whose effect is a row in the test's database.

#![allow(dead_code)] // each test binary uses a different part

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use shop_messaging::{
    Consumer, ConsumerStatus, Envelope, Event, HandlerError, Received,
    consumer::postgres::Handle,
    outbox::{RelayConfig, postgres::Relay},
};
use shop_runtime::{
    health::Readiness,
    stores::amqp::{Amqp, AmqpConfig},
};
pub use shop_testkit::eventually;
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

/// The tests' event: any JSON payload, `thing.happened` v1 on `shop.thing.happened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Thing(pub serde_json::Value);

impl Event for Thing {
    const SOURCE: &'static str = "test-producer";
    const ROUTING_KEY: &'static str = ROUTING_KEY;
}

/// One test's slice of the infrastructure, wired the way the runtime wires a service.
pub struct Stack {
    pub pool: PgPool,
    /// The test database's URL.
    pub database_url: String,
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
        let database_url = isolation::postgres_database().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&database_url)
            .await?;
        shop_messaging::outbox::postgres::install(&pool).await?;
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
            database_url,
            amqp,
            proxy,
            direct_url,
            readiness,
            tasks,
            shutdown,
        })
    }

    /// The tests' consumer of [`Thing`], with short delays so the tests are fast.
    pub fn consumer(
        &self,
        handler: Recorder,
    ) -> Consumer<shop_messaging::consumer::postgres::Inbox> {
        Consumer::postgres(CONSUMER, self.pool.clone())
            .on::<Thing>(handler)
            .prefetch(4)
            .retry_delays([Duration::from_millis(100), Duration::from_millis(300)])
            .handler_timeout(Duration::from_secs(10))
    }

    /// A fresh stack with a [`Recorder`] consumer already attached: the start of most tests.
    pub async fn consuming() -> Result<(Self, Recorder, ConsumerStatus), BoxError> {
        let stack = Self::new().await?;
        let recorder = Recorder::new();
        let status = stack.consume(recorder.clone()).await?;
        Ok((stack, recorder, status))
    }

    /// Starts a consumer with `handler` and waits until it is attached.
    pub async fn consume(&self, handler: Recorder) -> Result<ConsumerStatus, BoxError> {
        self.start(self.consumer(handler)).await
    }

    /// Starts `consumer` and waits until it is attached.
    pub async fn start(
        &self,
        consumer: Consumer<shop_messaging::consumer::postgres::Inbox>,
    ) -> Result<ConsumerStatus, BoxError> {
        let status = consumer
            .start(
                self.amqp.clone(),
                &self.readiness,
                &self.tasks,
                self.shutdown.clone(),
            )
            .await?;
        let attached = status.clone();
        eventually(Duration::from_secs(10), || {
            let attached = attached.clone();
            async move { attached.is_attached() }
        })
        .await?;
        Ok(status)
    }

    /// Relay settings with short pauses, so the tests are fast.
    pub fn relay_config() -> RelayConfig {
        RelayConfig {
            batch_size: 50,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(1),
            max_attempts: 3,
        }
    }

    /// Starts the outbox relay.
    pub fn relay(&self) {
        self.relay_with(Self::relay_config());
    }

    pub fn relay_with(&self, config: RelayConfig) {
        self.tasks.spawn(Relay::run(
            self.pool.clone(),
            self.amqp.clone(),
            config,
            self.shutdown.clone(),
        ));
    }

    /// Commits `event` through the outbox, in a transaction with another write, the way
    /// services do: with `outbox::postgres::commit`, which wakes the relays of this process.
    pub async fn commit(&self, event: &Envelope) -> Result<(), BoxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?; // stands in for the state change
        shop_messaging::outbox::postgres::enqueue(&mut tx, ROUTING_KEY, event).await?;
        shop_messaging::outbox::postgres::commit(tx).await?;
        Ok(())
    }

    /// Like [`Stack::commit`], but with a plain `tx.commit()`, which wakes no relay: the event
    /// leaves at the relay's next poll.
    pub async fn commit_unannounced(&self, event: &Envelope) -> Result<(), BoxError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        shop_messaging::outbox::postgres::enqueue(&mut tx, ROUTING_KEY, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts watching what reaches the broker on [`ROUTING_KEY`] in the test vhost (directly,
    /// not through the proxy), without a consumer: a consumer's commit would wake the relay
    /// too, and some tests must know what woke it.
    pub async fn watch(&self) -> Result<Published, BoxError> {
        let connection =
            lapin::Connection::connect(&self.direct_url, lapin::ConnectionProperties::default())
                .await?;
        let channel = connection.create_channel().await?;
        let queue =
            shop_messaging::topology::declare_private_queue(&channel, [ROUTING_KEY]).await?;
        Ok(Published {
            _connection: connection,
            channel,
            queue,
            seen: Mutex::default(),
        })
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

impl Stack {
    /// Starts a relay polling every `poll_interval` and returns once it has run its start-up
    /// batch (an event committed before it started has reached `published`). From then on a
    /// new row reaches the broker only when something wakes the relay or its poll comes round.
    pub async fn relay_past_its_first_batch(
        &self,
        poll_interval: Duration,
        published: &Published,
    ) -> Result<(), BoxError> {
        let first = event(serde_json::json!({ "before_the_relay": true }));
        self.commit_unannounced(&first).await?;
        self.relay_with(RelayConfig {
            poll_interval,
            ..Self::relay_config()
        });
        published.wait_for(first.id).await
    }
}

/// The events published since [`Stack::watch`], by id (a private queue, deleted with its
/// connection).
pub struct Published {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    seen: Mutex<Vec<Uuid>>,
}

impl Published {
    /// Whether the event `id` has been published: takes what arrived since the last call.
    pub async fn includes(&self, id: Uuid) -> Result<bool, BoxError> {
        use lapin::options::BasicGetOptions;

        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let envelope = Envelope::from_slice(&message.delivery.data)?;
            self.seen.lock().expect("lock").push(envelope.id);
        }
        Ok(self.seen.lock().expect("lock").contains(&id))
    }

    /// Waits (up to 20 s) until the event `id` has been published.
    pub async fn wait_for(&self, id: Uuid) -> Result<(), BoxError> {
        eventually(Duration::from_secs(20), || async {
            self.includes(id).await.unwrap_or(false)
        })
        .await?;
        Ok(())
    }
}

/// An event for the tests.
pub fn event(data: serde_json::Value) -> Envelope {
    Envelope::new("test-producer", "thing.happened", &data).expect("a JSON value")
}

/// (event id, trace id of the consumer span)
pub type Seen = (Uuid, Option<String>);

/// A consumer's handler whose effect is a row in `effects`, written in the consumer's inbox
/// transaction. It records every call it sees (with the trace id it ran in) and misbehaves on
/// request: `{"poison": true}` always fails retryably, `{"invalid": true}` permanently,
/// `{"panic": true}` panics, `{"hang": true}` writes its effect and never returns,
/// `{"hold": true}` writes its effect and then waits for [`Recorder::release`] the first time
/// (before the consumer commits).
#[derive(Clone)]
pub struct Recorder {
    /// Every delivery the handler saw: the event id and the trace id it ran in.
    pub deliveries: Arc<Mutex<Vec<Seen>>>,
    held: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    release: Arc<Notify>,
    hold_once: Arc<Mutex<bool>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
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

impl Handle<Thing> for Recorder {
    async fn handle(
        &self,
        tx: &mut sqlx::PgConnection,
        event: Received<Thing>,
    ) -> Result<(), HandlerError> {
        let trace_id = shop_runtime::telemetry::current_trace_id();
        self.deliveries
            .lock()
            .expect("lock")
            .push((event.id(), trace_id));
        let Thing(data) = &event.payload;
        if data["poison"] == true {
            return Err(HandlerError::retryable("poisoned"));
        }
        if data["invalid"] == true {
            return Err(HandlerError::permanent("not a thing we know"));
        }
        if data["panic"] == true {
            panic!("the handler panics on purpose");
        }
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.id())
            .execute(&mut *tx)
            .await?;
        if data["hang"] == true {
            std::future::pending::<()>().await;
        }

        let hold =
            data["hold"] == true && std::mem::take(&mut *self.hold_once.lock().expect("lock"));
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
    take(direct_url, PARKING, count, timeout).await
}

/// Takes (and acknowledges) `count` messages from `queue`, waiting up to `timeout`.
pub async fn take(
    direct_url: &str,
    queue: &str,
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
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => {
                message.delivery.ack(BasicAckOptions::default()).await?;
                parked.push(message.delivery);
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "{} of {count} messages in {queue} within {timeout:?}",
                    parked.len()
                )
                .into());
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(parked)
}
