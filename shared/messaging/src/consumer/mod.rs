//! Consuming domain events: one call per service, typed handlers, deduplication by event id,
//! retries through delay queues, parking, reconnects.
//!
//! ```no_run
//! # use shop_messaging::{Consumer, Event, HandlerError, Received};
//! # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct ProductCreated { sku: String }
//! # impl Event for ProductCreated { const SOURCE: &'static str = "catalog-service"; const ROUTING_KEY: &'static str = "catalog.product.created"; }
//! use shop_messaging::consumer::postgres::Handle;
//!
//! struct CreateStockRow;
//!
//! impl Handle<ProductCreated> for CreateStockRow {
//!     async fn handle(&self, tx: &mut sqlx::PgConnection, event: Received<ProductCreated>)
//!         -> Result<(), HandlerError> {
//!         sqlx::query("INSERT INTO stock (sku, on_hand) VALUES ($1, 0)")
//!             .bind(&event.payload.sku)
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn build(ctx: &shop_runtime::Context) -> Result<(), shop_runtime::BootError> {
//! Consumer::postgres("inventory", ctx.postgres()?.clone())
//!     .on::<ProductCreated>(CreateStockRow)
//!     .spawn(ctx)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The consumer's name (`inventory`) is given once: it names the queues
//! (`inventory.events`, its delay queues and `inventory.events.parking`) and the inbox records.
//! The bindings are the routing keys of the event types handled. [`Consumer::spawn`] installs
//! the inbox (table or collection), attaches to the queue, reports its state, and prunes the
//! inbox on a schedule.
//!
//! For each message, in order:
//!
//! 1. The body is read as an [`Envelope`] (tolerantly). A body that is not one can never be
//!    handled: it is parked at once.
//! 2. Its `type` and `dataversion` select the handler. An event nobody here handles (a newer
//!    version of an event, say) is acknowledged and counted (`outcome="unhandled"`): consumers
//!    are tolerant readers. A payload that does not deserialize into the handler's type is
//!    parked with the reason.
//! 3. PostgreSQL: in one transaction, the event id is claimed in the inbox and the handler runs;
//!    the consumer commits. A claim that finds the id already there (a redelivery) skips the
//!    handler. MongoDB: see [`mongo`] for what a server without transactions allows.
//! 4. Success → the message is acknowledged, after the commit. A crash in between means a
//!    redelivery, which the inbox turns into a no-op.
//! 5. [`HandlerError::Retryable`] (also a panic, or a handler running past its timeout) → a copy
//!    goes to the next delay queue with the attempt count and reason in its headers, and only
//!    once the broker confirmed the copy is the original acknowledged; after the delay the
//!    broker moves it back to the consumer's queue. When the delays are used up it is parked.
//! 6. [`HandlerError::Permanent`] → parked at once, with the reason.
//!
//! A copy the broker does not confirm, or returns because no queue took it, is a failure: the
//! original is then returned to the queue, never acknowledged. Messages behind a failing one
//! keep flowing: a retry waits in its delay queue, not at the head of the consumer's queue.
//!
//! One consumer instance handles up to `concurrency` messages at once (default 4), each in its
//! own transaction and settled on its own; `prefetch` bounds how many the broker pushes ahead
//! (and how many return to the queue if this instance dies). Handling several at once is what
//! lets a consumer keep up with its producers: a handler's time is mostly the wait for its
//! commit to be flushed, and PostgreSQL can flush concurrent commits together (group commit)
//! where it must flush one after the other for a lone handler. Order was never promised (a
//! retry comes back behind newer messages, competing instances interleave;
//! `docs/messaging.md`), so this gives nothing up; set `concurrency(1)` for one message at a
//! time in queue order. Scale out with more instances: they compete for the same queue. At
//! shutdown the messages being handled are finished (within the handler timeout) and
//! acknowledged; prefetched ones go back to the queue.

pub mod mongo;
pub mod postgres;
pub mod stateless;

use std::{
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use shop_runtime::{BootError, Context, health::Readiness, stores::amqp::Amqp};
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    Envelope, Error, Event, Publisher,
    topology::{self, ATTEMPTS_HEADER, ConsumerQueues, REASON_HEADER, ROUTING_KEY_HEADER},
    trace,
};

/// A boxed, sendable future: what the type-erased routes return.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event as a handler receives it: the typed payload and the envelope it came in (its id,
/// source, time, correlation and causation ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Received<E> {
    pub payload: E,
    pub envelope: Envelope,
}

impl<E> Received<E> {
    /// The event id: what deduplicates it, and the idempotency key for effects outside the
    /// consumer's own store.
    pub fn id(&self) -> Uuid {
        self.envelope.id
    }

    /// A new envelope for an event this one causes (same correlation id, this one as cause),
    /// for a handler that publishes through its own outbox.
    pub fn cause<F: Event>(&self, event: &F) -> Result<Envelope, Error> {
        Ok(event.envelope()?.caused_by(&self.envelope))
    }
}

/// Reads the payload of `envelope` as `E`; a payload that does not fit is a permanent error.
pub(crate) fn decode<E: Event>(envelope: Envelope) -> Result<Received<E>, HandlerError> {
    match envelope.data_as::<E>() {
        Ok(payload) => Ok(Received { payload, envelope }),
        Err(err) => Err(HandlerError::permanent(format!(
            "the payload of {} v{} does not deserialize: {err}",
            E::kind(),
            E::VERSION
        ))),
    }
}

/// Why a handler could not handle an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Might work later: a database or downstream service unavailable, a lock timeout, a
    /// conflict. The message goes through the delay queues.
    Retryable(String),
    /// Will never work: the event violates the consumer's expectations. Parked at once.
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(reason: impl fmt::Display) -> Self {
        Self::Retryable(reason.to_string())
    }

    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self::Permanent(reason.to_string())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable(reason) => write!(f, "retryable: {reason}"),
            Self::Permanent(reason) => write!(f, "permanent: {reason}"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// A database error inside a handler is worth retrying: the database may be back, the
/// conflicting transaction gone. A handler that knows better maps it itself.
impl From<sqlx::Error> for HandlerError {
    fn from(err: sqlx::Error) -> Self {
        Self::retryable(err)
    }
}

impl From<mongodb::error::Error> for HandlerError {
    fn from(err: mongodb::error::Error) -> Self {
        Self::retryable(err)
    }
}

/// Writing to the outbox from a handler (`?` on `enqueue_event`): an invalid routing key or an
/// unencodable payload will not get better, the rest (database, broker) may.
impl From<Error> for HandlerError {
    fn from(err: Error) -> Self {
        match err {
            Error::RoutingKey(_) | Error::Json(_) => Self::permanent(err),
            other => Self::retryable(other),
        }
    }
}

/// Whether a consumer is attached to its queue, and how its messages were settled so far (the
/// same counts as the `messaging_consumed_total` metric, for this consumer instance).
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus {
    attached: Arc<AtomicBool>,
    settled: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
}

impl ConsumerStatus {
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// How many messages were settled with `outcome`: `handled`, `duplicate`, `unhandled`,
    /// `retry`, `parked` or `requeued` (a retry or parking copy the broker did not take).
    pub fn settled(&self, outcome: &str) -> u64 {
        self.settled
            .lock()
            .map_or(0, |counts| counts.get(outcome).copied().unwrap_or(0))
    }

    fn count(&self, outcome: &'static str) {
        if let Ok(mut counts) = self.settled.lock() {
            *counts.entry(outcome).or_default() += 1;
        }
    }

    fn set_attached(&self, queue: &str, attached: bool) {
        self.attached.store(attached, Ordering::SeqCst);
        metrics::gauge!("messaging_consumer_attached", "queue" => queue.to_owned())
            .set(if attached { 1.0 } else { 0.0 });
    }
}

/// How a consumer paces, retries and forgets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many unacknowledged messages the broker pushes ahead to this instance (never fewer
    /// than `concurrency`).
    pub prefetch: u16,
    /// How many messages this instance handles at once, each in its own transaction (at least
    /// 1). Each holds a database connection while its handler runs: keep it below the pool.
    pub concurrency: usize,
    /// One delay per retry, growing; a message is parked after failing `len() + 1` times.
    pub retry_delays: Vec<Duration>,
    /// A handler still running after this long is abandoned (its transaction rolls back) and
    /// the message retried: a hung handler must not stall the queue. Also how long shutdown
    /// waits for the messages being handled; keep it below the runtime's drain limit (20 s).
    pub handler_timeout: Duration,
    /// How many times the broker delivers a message that is never settled (it crashes the
    /// process each time) before it parks it.
    pub delivery_limit: u32,
    /// How long inbox records are kept: longer than any message can come back (retries, a
    /// parked message moved back by an operator).
    pub inbox_retention: Duration,
    /// How often the inbox is pruned.
    pub prune_every: Duration,
}

impl Default for Settings {
    /// Prefetch 16; 4 messages handled at once; retries after 1 s, 10 s, 1 min and 5 min;
    /// handler timeout 15 s; delivery limit 20; inbox kept 7 days, pruned hourly.
    fn default() -> Self {
        Self {
            prefetch: 16,
            concurrency: 4,
            retry_delays: [1, 10, 60, 300].map(Duration::from_secs).to_vec(),
            handler_timeout: Duration::from_secs(15),
            delivery_limit: topology::DELIVERY_LIMIT,
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
        }
    }
}

/// What the inbox did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its effect is stored.
    Handled,
    /// The inbox already had the event id: the handler did not run.
    Duplicate,
    /// No handler for this type and version.
    Unhandled,
}

mod sealed {
    pub trait Sealed {}
}

/// The inbox a consumer dedupes with, and the typed handlers it dispatches to:
/// [`postgres::Inbox`] or [`mongo::Inbox`].
pub trait Inbox: sealed::Sealed + Send + Sync + 'static {
    /// Creates the inbox table or collection and its indexes (idempotent).
    fn install(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// `(routing key, type, version, payload type)` of each handler, in the order added.
    fn routes(&self) -> Vec<RouteInfo>;
    /// Runs the handler for `envelope`, deduplicated by its id for `consumer`.
    fn dispatch<'a>(
        &'a self,
        consumer: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>>;
    /// Deletes `consumer`'s records older than `age`; returns how many.
    fn prune<'a>(&'a self, consumer: &'a str, age: Duration) -> BoxFuture<'a, Result<u64, Error>>;
}

/// What one handler subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub routing_key: &'static str,
    pub kind: &'static str,
    pub version: u32,
    pub payload: &'static str,
}

impl RouteInfo {
    pub(crate) fn of<E: Event>() -> Self {
        Self {
            routing_key: E::ROUTING_KEY,
            kind: E::kind(),
            version: E::VERSION,
            payload: std::any::type_name::<E>(),
        }
    }

    pub(crate) fn matches(&self, envelope: &Envelope) -> bool {
        self.kind == envelope.kind && self.version == envelope.dataversion
    }
}

/// A consumer being configured: `Consumer::postgres(name, pool)` or `Consumer::mongo(name, db)`,
/// then `.on::<Event>(handler)` per event type, then [`Consumer::spawn`].
#[derive(Debug)]
pub struct Consumer<I> {
    name: String,
    inbox: I,
    settings: Settings,
}

impl<I: Inbox> Consumer<I> {
    pub(crate) fn with_inbox(name: impl Into<String>, inbox: I) -> Self {
        Self {
            name: name.into(),
            inbox,
            settings: Settings::default(),
        }
    }

    /// Replaces all settings at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.settings.prefetch = prefetch.max(1);
        self
    }

    /// How many messages to handle at once (see [`Settings::concurrency`]); 1 handles them
    /// one at a time, in queue order.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency.max(1);
        self
    }

    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.settings.retry_delays = delays.into_iter().collect();
        self
    }

    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handler_timeout = timeout;
        self
    }

    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.settings.delivery_limit = limit.max(1);
        self
    }

    pub fn inbox_retention(mut self, retention: Duration, prune_every: Duration) -> Self {
        self.settings.inbox_retention = retention;
        self.settings.prune_every = prune_every;
        self
    }

    /// The queue this consumer reads: `<name>.events`.
    pub fn queue(&self) -> String {
        ConsumerQueues::new(&self.name, &self.settings.retry_delays).main
    }

    /// Installs the inbox, then starts consuming and pruning as background tasks of the
    /// service. The consumer's state is reported as `consumer:<queue>` in `/readyz` (not
    /// required for readiness: see `docs/messaging.md`) and as `messaging_consumer_attached`.
    pub async fn spawn(self, ctx: &Context) -> Result<ConsumerStatus, BootError> {
        let amqp = ctx.amqp()?.clone();
        Ok(self
            .start(amqp, &ctx.readiness, &ctx.tasks, ctx.shutdown.clone())
            .await?)
    }

    /// [`Consumer::spawn`] from parts, for code that has no [`Context`].
    pub async fn start(
        self,
        amqp: Amqp,
        readiness: &Readiness,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<ConsumerStatus, Error> {
        let routes = self.inbox.routes();
        check_routes(&self.name, &routes)?;
        let mut bindings: Vec<String> = routes
            .iter()
            .map(|route| route.routing_key.to_owned())
            .collect();
        bindings.sort();
        bindings.dedup();
        // Every service declares the queues of `topology::SUBSCRIPTIONS`; this consumer must
        // agree with what they declare for it.
        match topology::subscription(&self.name) {
            Some(_) => {
                let unhandled = topology::check_subscription(
                    &self.name,
                    &bindings,
                    self.settings.delivery_limit,
                )?;
                if !unhandled.is_empty() {
                    tracing::warn!(consumer = %self.name, ?unhandled, "topology::SUBSCRIPTIONS binds this consumer's queue to events it does not handle; they will be acknowledged unhandled");
                }
            }
            None => tracing::info!(consumer = %self.name,
                "consumer not in topology::SUBSCRIPTIONS: its queue exists once it first attached, and events published before are not kept for it"),
        }
        self.inbox.install().await?;

        let queues = ConsumerQueues::new(&self.name, &self.settings.retry_delays);
        let status = ConsumerStatus::default();
        status.set_attached(&queues.main, false);
        let probe = status.clone();
        let queue = queues.main.clone();
        readiness.report(format!("consumer:{queue}"), move || {
            let attached = probe.is_attached();
            let queue = queue.clone();
            async move {
                if attached {
                    Ok(())
                } else {
                    Err(format!("not consuming from {queue}"))
                }
            }
        });

        let worker = Arc::new(Worker {
            publisher: Publisher::new(amqp.clone()),
            name: self.name,
            queues,
            bindings,
            settings: self.settings,
            inbox: self.inbox,
            status: status.clone(),
        });
        tasks.spawn(worker.clone().prune(shutdown.clone()));
        tasks.spawn(worker.run(amqp, shutdown));
        Ok(status)
    }
}

/// A consumer must handle something, and one type and version only once (two handlers for one
/// event would make the second one unreachable).
fn check_routes(name: &str, routes: &[RouteInfo]) -> Result<(), Error> {
    if name.is_empty() || name.contains(['#', '*', ' ']) {
        return Err(Error::Consumer(format!(
            "'{name}' is not a consumer name (use the service's name, e.g. 'inventory')"
        )));
    }
    if routes.is_empty() {
        return Err(Error::Consumer(format!(
            "consumer '{name}' has no handlers: add one with .on::<Event>(handler)"
        )));
    }
    for (i, route) in routes.iter().enumerate() {
        if routes[..i]
            .iter()
            .any(|earlier| earlier.kind == route.kind && earlier.version == route.version)
        {
            return Err(Error::Consumer(format!(
                "consumer '{name}' has two handlers for {} v{}",
                route.kind, route.version
            )));
        }
    }
    Ok(())
}

struct Worker<I> {
    publisher: Publisher,
    name: String,
    queues: ConsumerQueues,
    bindings: Vec<String>,
    settings: Settings,
    inbox: I,
    status: ConsumerStatus,
}

impl<I: Inbox> Worker<I> {
    async fn run(self: Arc<Self>, amqp: Amqp, shutdown: CancellationToken) {
        let new_backoff = || shop_runtime::backoff::forever(Duration::from_secs(5));
        let mut backoff = new_backoff();
        while !shutdown.is_cancelled() {
            let connection = tokio::select! {
                connection = amqp.wait_connected(Duration::from_secs(1)) => connection,
                () = shutdown.cancelled() => break,
            };
            // Held until this attachment ends: at shutdown the supervisor keeps the connection
            // open until it is dropped, so the messages being handled can still be acknowledged.
            let Some(connection) = connection else {
                continue; // the supervisor is reconnecting
            };
            let (channel, mut deliveries) = match self.attach(&connection).await {
                Ok(attached) => attached,
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(queue = %self.queues.main, error = %err, ?delay, "cannot attach consumer, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            self.status.set_attached(&self.queues.main, true);
            backoff = new_backoff();
            tracing::info!(queue = %self.queues.main, "consuming");
            // The messages being handled, each a task of its own (so handlers use both
            // cores); a new delivery is taken only while fewer than `concurrency` run.
            let mut handling: JoinSet<Result<(), lapin::Error>> = JoinSet::new();
            let concurrency = self.settings.concurrency.max(1);
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(done) = handling.join_next() => {
                        if settled_lost_channel(&self.queues.main, done) {
                            break;
                        }
                        continue;
                    }
                    next = deliveries.next(), if handling.len() < concurrency => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        let (worker, connection) = (self.clone(), connection.clone());
                        handling.spawn(async move { worker.process(delivery, &connection).await });
                    }
                    Some(Err(err)) => {
                        tracing::warn!(queue = %self.queues.main, error = %err, "consumer detached; reattaching");
                        break;
                    }
                    None => {
                        tracing::warn!(queue = %self.queues.main, "consumer cancelled by the broker; reattaching");
                        break;
                    }
                }
            }
            // Not raced against shutdown: the messages being handled are always finished (a
            // lost channel makes their settling fail fast, and the broker redelivers them).
            while let Some(done) = handling.join_next().await {
                settled_lost_channel(&self.queues.main, done);
            }
            self.status.set_attached(&self.queues.main, false);
            if shutdown.is_cancelled() {
                // Prefetched, unacknowledged messages return to the queue for other instances.
                let _ = channel.close(200, "service shutting down".into()).await;
            }
        }
        self.status.set_attached(&self.queues.main, false);
    }

    /// Deletes old inbox records now and then, until shutdown.
    async fn prune(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self
                .inbox
                .prune(&self.name, self.settings.inbox_retention)
                .await
            {
                Ok(deleted) => {
                    metrics::counter!("messaging_inbox_pruned_total", "consumer" => self.name.clone())
                        .increment(deleted);
                }
                Err(err) => {
                    tracing::warn!(consumer = %self.name, error = %err, "cannot prune the inbox; trying again later");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.prune_every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// The prefetch, raised to the concurrency: handlers cannot run on messages not sent yet.
    fn prefetch(&self) -> u16 {
        let concurrency = u16::try_from(self.settings.concurrency).unwrap_or(u16::MAX);
        self.settings.prefetch.max(concurrency)
    }

    async fn attach(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = connection.create_channel().await?;
        topology::declare_consumer(
            &channel,
            &self.queues,
            &self.bindings,
            self.settings.delivery_limit,
        )
        .await?;
        channel
            .basic_qos(self.prefetch(), BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                self.queues.main.as_str().into(),
                self.name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, deliveries))
    }

    /// Handles one delivery and settles it. Errors only when the channel is gone (the message
    /// will then be redelivered).
    async fn process(
        &self,
        delivery: Delivery,
        connection: &Connection,
    ) -> Result<(), lapin::Error> {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let failures = attempts(&headers);
        let routing_key = trace::header_str(&headers, ROUTING_KEY_HEADER)
            .unwrap_or(delivery.routing_key.as_str())
            .to_owned();
        let envelope = match Envelope::from_slice(&delivery.data) {
            Ok(envelope) => envelope,
            Err(err) => {
                let reason = format!("not an event envelope: {err}");
                return self
                    .park(&delivery, &routing_key, failures + 1, &reason)
                    .await;
            }
        };

        let span = tracing::info_span!(
            "consume",
            otel.name = %format!("{} process", self.queues.main),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %self.queues.main,
            messaging.rabbitmq.destination.routing_key = %routing_key,
            messaging.message.id = %envelope.id,
            event.type = %envelope.kind,
            attempt = failures + 1,
        );
        let parent = if trace::header_str(&headers, "traceparent").is_some() {
            trace::extract(&headers)
        } else {
            trace::from_envelope(&envelope)
        };
        let _ = span.set_parent(parent);

        let started = Instant::now();
        let kind = (envelope.kind.clone(), envelope.dataversion);
        let handling = AssertUnwindSafe(self.inbox.dispatch(&self.name, envelope)).catch_unwind();
        let outcome = match tokio::time::timeout(self.settings.handler_timeout, handling)
            .instrument(span.clone())
            .await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_panic)) => Err(HandlerError::retryable("the handler panicked")),
            Err(_) => Err(HandlerError::retryable(format!(
                "the handler did not finish within {:?}",
                self.settings.handler_timeout
            ))),
        };
        metrics::histogram!("messaging_handler_duration_seconds", "queue" => self.queues.main.clone())
            .record(started.elapsed().as_secs_f64());

        // Settling (ack, retry, park) is logged inside the consumer span too. It is raced
        // against the connection dying: lapin can leave an acknowledgement sent just as the
        // socket closed pending for ever, and a worker waiting on it would never reattach —
        // while the broker, which saw the connection close, has already put the message back
        // for a redelivery nobody consumes. The handler's work is not raced: it has committed.
        let settling = async {
            match outcome {
                Ok(outcome) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                    self.count(match outcome {
                        Outcome::Handled => "handled",
                        Outcome::Duplicate => "duplicate",
                        Outcome::Unhandled => {
                            tracing::debug!(r#type = %kind.0, version = kind.1, "no handler for this event; acknowledged");
                            "unhandled"
                        }
                    });
                    Ok(())
                }
                Err(HandlerError::Retryable(reason)) => {
                    let failures = failures + 1;
                    match self.queues.retry_queue(failures) {
                        Some(queue) => {
                            tracing::warn!(%reason, attempt = failures, "handler failed; retrying later");
                            self.forward(&delivery, queue, &routing_key, failures, &reason, "retry")
                                .await
                        }
                        None => {
                            let reason = format!("gave up after {failures} attempts: {reason}");
                            self.park(&delivery, &routing_key, failures, &reason).await
                        }
                    }
                }
                Err(HandlerError::Permanent(reason)) => {
                    self.park(&delivery, &routing_key, failures + 1, &reason)
                        .await
                }
            }
        }
        .instrument(span);
        tokio::select! {
            settled = settling => settled,
            () = lost(connection) => Err(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Error),
            )),
        }
    }

    /// Moves the message to the parking queue with the reason.
    async fn park(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        failures: u32,
        reason: &str,
    ) -> Result<(), lapin::Error> {
        tracing::error!(queue = %self.queues.parking, %reason, attempts = failures, "parking message");
        self.forward(
            delivery,
            &self.queues.parking,
            routing_key,
            failures,
            reason,
            "parked",
        )
        .await
    }

    /// Publishes an annotated copy to `queue` and acknowledges the original once the broker
    /// confirmed the copy; otherwise returns the original to the queue.
    async fn forward(
        &self,
        delivery: &Delivery,
        queue: &str,
        routing_key: &str,
        failures: u32,
        reason: &str,
        outcome: &'static str,
    ) -> Result<(), lapin::Error> {
        let properties = annotated(delivery, routing_key, failures, reason);
        match self
            .publisher
            .publish_to_queue(queue, &delivery.data, properties)
            .await
        {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
                self.count(outcome);
                Ok(())
            }
            Err(err) => self.requeue(delivery, queue, &err.to_string()).await,
        }
    }

    /// The retry or parking copy was not taken: give the message back to the queue (after a
    /// pause, so a broker in trouble is not hammered) to try again.
    async fn requeue(
        &self,
        delivery: &Delivery,
        target: &str,
        error: &str,
    ) -> Result<(), lapin::Error> {
        tracing::warn!(queue = %self.queues.main, %target, %error, "cannot forward message; returning it to the queue");
        self.count("requeued");
        tokio::time::sleep(Duration::from_secs(1)).await;
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
        Ok(())
    }

    fn count(&self, outcome: &'static str) {
        self.status.count(outcome);
        metrics::counter!("messaging_consumed_total", "queue" => self.queues.main.clone(), "outcome" => outcome)
            .increment(1);
    }
}

/// Logs how a message's handling task ended; `true` when the channel was lost while settling
/// (the consumer then reattaches).
fn settled_lost_channel(
    queue: &str,
    done: Result<Result<(), lapin::Error>, tokio::task::JoinError>,
) -> bool {
    match done {
        Ok(Ok(())) => false,
        Ok(Err(err)) => {
            tracing::warn!(%queue, error = %err, "lost the channel while settling a message");
            true
        }
        // A handler's panic is caught inside `process`; this is a panic while settling.
        Err(err) => {
            tracing::error!(%queue, error = %err, "settling a message panicked; reattaching");
            true
        }
    }
}

/// Resolves once `connection` is no longer usable. Polled, because lapin reports a dead
/// connection through its status (and one error callback, which the supervisor's reconnect
/// logic does not own); the poll runs only while a message is being settled.
async fn lost(connection: &Connection) {
    const EVERY: Duration = Duration::from_millis(50);
    while connection.status().connected() {
        tokio::time::sleep(EVERY).await;
    }
}

/// The message's properties with the attempt count, failure reason and original routing key
/// in its headers (the trace context and everything else kept).
fn annotated(
    delivery: &Delivery,
    routing_key: &str,
    failures: u32,
    reason: &str,
) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(failures)),
    );
    // Bounded: a header is no place for a whole error chain with backtraces.
    let reason: String = reason.chars().take(1000).collect();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ROUTING_KEY_HEADER.into(),
        AMQPValue::LongString(LongString::from(routing_key)),
    );
    delivery.properties.clone().with_headers(headers)
}

/// How many times handling this message has failed so far (0 for a fresh one).
fn attempts(headers: &FieldTable) -> u32 {
    let value = match headers.inner().get(ATTEMPTS_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct A;
    impl Event for A {
        const SOURCE: &'static str = "a-service";
        const ROUTING_KEY: &'static str = "a.thing.done";
    }

    #[test]
    fn a_consumer_needs_a_name_and_one_handler_per_type_and_version() {
        let a = RouteInfo::of::<A>();
        assert!(check_routes("inventory", &[a]).is_ok());
        assert!(check_routes("inventory", &[]).is_err());
        assert!(check_routes("inventory", &[a, a]).is_err());
        assert!(check_routes("", &[a]).is_err());
        let a2 = RouteInfo { version: 2, ..a };
        assert!(check_routes("inventory", &[a, a2]).is_ok());
    }
}
