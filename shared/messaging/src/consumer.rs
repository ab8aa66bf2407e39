//! Consuming domain events: bounded prefetch, ack after the handler committed, retries through
//! delay queues, parking, reconnects, and a readiness probe that says when it is not attached.
//!
//! For each message, in order:
//!
//! 1. The body is read as an [`Envelope`] (tolerantly). A body that is not one can never be
//!    handled: it is parked at once.
//! 2. The handler runs inside a consumer span that continues the producer's trace.
//! 3. `Ok` → the message is acknowledged. The handler returns only after its transaction
//!    committed, so an ack never precedes the effect; a crash in between means a redelivery,
//!    which the inbox ([`crate::inbox`]) turns into a no-op.
//! 4. [`HandlerError::Retryable`] → a copy goes to the next delay queue with the attempt count
//!    and reason in its headers, then the original is acknowledged; after the delay the broker
//!    moves it back to the consumer's queue. When the delays are used up it is parked.
//! 5. [`HandlerError::Permanent`] → parked at once, with the reason.
//!
//! The copy is confirmed by the broker before the original is acknowledged, so a crash between
//! them duplicates a retry rather than losing the message. Messages behind a failing one keep
//! flowing: a retry waits in its delay queue, not at the head of the consumer's queue.
//!
//! One consumer handles one message at a time; `prefetch` bounds how many more the broker
//! pushes ahead (and how many return to the queue if this instance dies). Scale out with more
//! instances: they compete for the same queue. At shutdown the current message is finished
//! and acknowledged; prefetched ones go back to the queue when the channel closes.

use std::{
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
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
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    Envelope, Publisher,
    topology::{self, ATTEMPTS_HEADER, ConsumerQueues, REASON_HEADER, ROUTING_KEY_HEADER},
    trace,
};

/// What a consumer subscribes to and how it retries.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The consuming service, e.g. `notification`: its queues are `notification.events...`.
    pub consumer: String,
    /// Binding patterns on the events exchange: `user.user.registered`, `order.#`, `*.*.deleted`.
    pub bindings: Vec<String>,
    /// How many unacknowledged messages the broker pushes ahead to this consumer.
    pub prefetch: u16,
    /// One delay per retry, growing; a message is parked after failing `len() + 1` times.
    pub retry_delays: Vec<Duration>,
    /// A handler still running after this long is abandoned (its transaction rolls back) and
    /// the message retried: a hung handler must not stall the queue.
    pub handler_timeout: Duration,
}

impl Subscription {
    /// Prefetch 16, retries after 1 s, 10 s, 1 min and 5 min, handler timeout 60 s.
    pub fn new(
        consumer: impl Into<String>,
        bindings: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            consumer: consumer.into(),
            bindings: bindings.into_iter().map(Into::into).collect(),
            prefetch: 16,
            retry_delays: [1, 10, 60, 300].map(Duration::from_secs).to_vec(),
            handler_timeout: Duration::from_secs(60),
        }
    }

    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry_delays = delays.into_iter().collect();
        self
    }

    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
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

/// The consumer's own code: apply the event's effect (with [`crate::inbox`] in the same
/// transaction) and return once that is committed.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, event: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Whether a consumer is attached to its queue; also its readiness probe.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus {
    attached: Arc<AtomicBool>,
}

impl ConsumerStatus {
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::SeqCst);
    }
}

/// Starts consumers.
#[derive(Debug)]
pub struct Consumer;

impl Consumer {
    /// Starts consuming as one of the service's background tasks, with the readiness probe
    /// `consumer:<queue>` (down while not attached: broker down, channel lost, topology
    /// refused).
    pub fn spawn<H: Handler>(
        ctx: &Context,
        subscription: Subscription,
        handler: H,
    ) -> Result<ConsumerStatus, BootError> {
        Ok(Self::start(
            ctx.amqp()?.clone(),
            &ctx.readiness,
            &ctx.tasks,
            ctx.shutdown.clone(),
            subscription,
            handler,
        ))
    }

    /// [`Consumer::spawn`] from parts, for code that has no [`Context`].
    pub fn start<H: Handler>(
        amqp: Amqp,
        readiness: &Readiness,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        subscription: Subscription,
        handler: H,
    ) -> ConsumerStatus {
        let status = ConsumerStatus::default();
        let queues = ConsumerQueues::new(&subscription.consumer, &subscription.retry_delays);
        let probe = status.clone();
        let queue = queues.main.clone();
        readiness.add(format!("consumer:{queue}"), move || {
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
        let worker = Worker {
            publisher: Publisher::new(amqp.clone()),
            queues,
            subscription,
            handler,
            status: status.clone(),
        };
        tasks.spawn(worker.run(amqp, shutdown));
        status
    }
}

struct Worker<H> {
    publisher: Publisher,
    queues: ConsumerQueues,
    subscription: Subscription,
    handler: H,
    status: ConsumerStatus,
}

impl<H: Handler> Worker<H> {
    async fn run(self, amqp: Amqp, shutdown: CancellationToken) {
        let new_backoff = || shop_runtime::backoff::forever(Duration::from_secs(5));
        let mut backoff = new_backoff();
        while !shutdown.is_cancelled() {
            let connection = tokio::select! {
                connection = amqp.wait_connected(Duration::from_secs(1)) => connection,
                () = shutdown.cancelled() => break,
            };
            // Held until this attachment ends: at shutdown the supervisor keeps the connection
            // open until it is dropped, so the current message can still be acknowledged.
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
            self.status.set_attached(true);
            backoff = new_backoff();
            tracing::info!(queue = %self.queues.main, "consuming");
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    next = deliveries.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        // Not raced against shutdown: the current message is always finished.
                        if let Err(err) = self.process(delivery).await {
                            tracing::warn!(queue = %self.queues.main, error = %err, "lost the channel while settling a message");
                            break;
                        }
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
            self.status.set_attached(false);
            if shutdown.is_cancelled() {
                // Prefetched, unacknowledged messages return to the queue for other instances.
                let _ = channel.close(200, "service shutting down".into()).await;
            }
        }
        self.status.set_attached(false);
    }

    async fn attach(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = connection.create_channel().await?;
        topology::declare_consumer(&channel, &self.queues, &self.subscription.bindings).await?;
        channel
            .basic_qos(self.subscription.prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                self.queues.main.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, deliveries))
    }

    /// Handles one delivery and settles it. Errors only when the channel is gone (the message
    /// will then be redelivered).
    async fn process(&self, delivery: Delivery) -> Result<(), lapin::Error> {
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
            trace_id = tracing::field::Empty,
        );
        let parent = if trace::header_str(&headers, "traceparent").is_some() {
            trace::extract(&headers)
        } else {
            trace::from_envelope(&envelope)
        };
        let _ = span.set_parent(parent);
        shop_runtime::telemetry::record_trace_id(&span);

        let started = Instant::now();
        let handling = AssertUnwindSafe(self.handler.handle(envelope)).catch_unwind();
        let outcome = match tokio::time::timeout(self.subscription.handler_timeout, handling)
            .instrument(span.clone())
            .await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_panic)) => Err(HandlerError::retryable("the handler panicked")),
            Err(_) => Err(HandlerError::retryable(format!(
                "the handler did not finish within {:?}",
                self.subscription.handler_timeout
            ))),
        };
        metrics::histogram!("messaging_handler_duration_seconds", "queue" => self.queues.main.clone())
            .record(started.elapsed().as_secs_f64());

        // Settling (ack, retry, park) is logged inside the consumer span too.
        async {
            match outcome {
                Ok(()) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                    self.count("ack");
                    Ok(())
                }
                Err(HandlerError::Retryable(reason)) => {
                    let failures = failures + 1;
                    match self.queues.retry_queue(failures) {
                        Some(queue) => {
                            tracing::warn!(%reason, attempt = failures, "handler failed; retrying later");
                            let properties = annotated(&delivery, &routing_key, failures, &reason);
                            match self
                                .publisher
                                .publish_to_queue(queue, &delivery.data, properties)
                                .await
                            {
                                Ok(()) => {
                                    delivery.ack(BasicAckOptions::default()).await?;
                                    self.count("retry");
                                    Ok(())
                                }
                                Err(err) => self.requeue(&delivery, &err.to_string()).await,
                            }
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
        .instrument(span)
        .await
    }

    /// Moves the message to the parking queue with the reason, then acknowledges it.
    async fn park(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        failures: u32,
        reason: &str,
    ) -> Result<(), lapin::Error> {
        tracing::error!(queue = %self.queues.parking, %reason, attempts = failures, "parking message");
        let properties = annotated(delivery, routing_key, failures, reason);
        match self
            .publisher
            .publish_to_queue(&self.queues.parking, &delivery.data, properties)
            .await
        {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
                self.count("parked");
                Ok(())
            }
            Err(err) => self.requeue(delivery, &err.to_string()).await,
        }
    }

    /// The retry or parking copy could not be published: give the message back to the queue
    /// (after a pause, so a broker in trouble is not hammered) to try again.
    async fn requeue(&self, delivery: &Delivery, error: &str) -> Result<(), lapin::Error> {
        tracing::warn!(queue = %self.queues.main, %error, "cannot forward message; returning it to the queue");
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
        metrics::counter!("messaging_consumed_total", "queue" => self.queues.main.clone(), "outcome" => outcome)
            .increment(1);
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
