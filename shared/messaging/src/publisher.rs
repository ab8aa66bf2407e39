//! Publishing with publisher confirms, over the process's self-healing broker connection.
//!
//! A publish counts only once the broker *confirmed* it: for a durable queue that means the
//! message is on disk (for quorum queues, on a majority of nodes). Until then it may be lost
//! with the connection, so callers keep their copy (the outbox row) until [`Publisher`] says
//! `Ok`. The channel is opened lazily on the current connection and reopened on the next one
//! after the runtime's supervisor reconnects ([`shop_runtime::stores::amqp`]).
//!
//! Every new channel first declares the whole topology ([`topology::declare_topology`]): every
//! consumer's queue exists before this process publishes its first event, whatever order the
//! services started in. Events are published `mandatory`, so the broker tells which ones no
//! queue took: for a routing key some consumer subscribes to, that is a loss in the making (its
//! queue or binding was deleted since), and the event is refused, kept by the caller (the
//! outbox) and the topology declared again before the next publish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use shop_runtime::stores::amqp::Amqp;
use tokio::sync::Mutex;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    Error, envelope,
    envelope::Envelope,
    topology::{self, EXCHANGE, ROUTING_KEY_HEADER},
    trace,
};

/// How long to wait for the broker to confirm a message before treating the publish as
/// failed (the message is then published again: consumers deduplicate).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A message exactly as it is handed to the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Outgoing {
    /// The message for `envelope`: persistent, the envelope as a structured-mode CloudEvent,
    /// its id, type and source in the AMQP properties too (so the management UI and tools that
    /// do not parse bodies can show them), and the trace context of `cx` in the headers.
    pub fn event(routing_key: &str, envelope: &Envelope, cx: &opentelemetry::Context) -> Self {
        let mut headers = FieldTable::default();
        trace::inject(cx, &mut headers);
        headers.insert(
            ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from(routing_key)),
        );
        let mut properties = BasicProperties::default()
            .with_content_type(envelope::CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_message_id(envelope.id.to_string().into())
            .with_type(envelope.kind.as_str().into())
            .with_app_id(envelope.source.as_str().into())
            .with_headers(headers);
        if let Some(time) = envelope.time {
            properties =
                properties.with_timestamp(u64::try_from(time.timestamp()).unwrap_or_default());
        }
        if let Some(correlation) = &envelope.correlationid {
            properties = properties.with_correlation_id(correlation.as_str().into());
        }
        Self {
            routing_key: routing_key.to_owned(),
            body: envelope.to_vec(),
            properties,
        }
    }
}

/// The producer span for publishing `envelope`: a child of the span that created the event
/// (its `traceparent`), so the trace continues even when a relay publishes much later.
pub fn publish_span(routing_key: &str, envelope: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("{routing_key} publish"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = EXCHANGE,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = %envelope.id,
    );
    if envelope.traceparent.is_some() {
        let _ = span.set_parent(trace::from_envelope(envelope));
    }
    span
}

/// A confirm-mode channel on the process's broker connection, reopened on the next connection
/// after a reconnect. Share it behind an `Arc`: concurrent publishes use the same channel.
///
/// It holds on to the connection its channel is on, so that at shutdown the runtime's
/// supervisor waits for the publisher's owner (a relay finishing its batch, a consumer
/// finishing its message) to drop it before closing the connection.
pub struct Publisher {
    amqp: Amqp,
    channel: Mutex<Option<(Arc<Connection>, Channel)>>,
    /// Set when the broker returned an event the topology routes: the open channel declares the
    /// topology again before its next publish.
    redeclare: AtomicBool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("amqp", &self.amqp)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(amqp: Amqp) -> Self {
        Self {
            amqp,
            channel: Mutex::new(None),
            redeclare: AtomicBool::new(false),
        }
    }

    /// The open channel, or a new one (in confirm mode, with the whole topology declared) on
    /// the current connection.
    async fn channel(&self) -> Result<Channel, Error> {
        let mut cached = self.channel.lock().await;
        if let Some((connection, channel)) = cached.as_ref()
            && channel.status().connected()
        {
            if self.redeclare.swap(false, Ordering::SeqCst)
                && let Err(err) = topology::declare_topology(connection).await
            {
                self.redeclare.store(true, Ordering::SeqCst);
                return Err(err.into());
            }
            return Ok(channel.clone());
        }
        *cached = None;
        let connection = self
            .amqp
            .connection()
            .ok_or_else(|| Error::Unavailable("no broker connection".into()))?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Before the first publish: see the module docs. A broker that cannot be talked to
        // fails this publish and leaves no channel cached, so the next one declares again.
        topology::declare_topology(&connection).await?;
        self.redeclare.store(false, Ordering::SeqCst);
        *cached = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes domain events to the events exchange and waits for the broker's confirms.
    /// Returns one result per event, in order: `Ok` means the broker has taken responsibility
    /// for it. The publishes are pipelined (all sent, then all confirms awaited).
    pub async fn publish_events(&self, events: &[(String, Envelope)]) -> Vec<Result<(), Error>> {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(err) => {
                let reason = match err {
                    Error::Unavailable(reason) => reason,
                    other => other.to_string(),
                };
                metrics::counter!("messaging_publish_failures_total")
                    .increment(events.len() as u64);
                tracing::warn!(error = %reason, "cannot publish: no usable broker channel");
                return events
                    .iter()
                    .map(|_| Err(Error::Unavailable(reason.clone())))
                    .collect();
            }
        };
        let mut pending = Vec::with_capacity(events.len());
        for (routing_key, envelope) in events {
            let span = publish_span(routing_key, envelope);
            let outgoing = Outgoing::event(routing_key, envelope, &span.context());
            let confirm = async {
                let confirm = channel
                    .basic_publish(
                        EXCHANGE.into(),
                        outgoing.routing_key.as_str().into(),
                        // mandatory: an event no queue is bound for comes back (see `settle`).
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &outgoing.body,
                        outgoing.properties,
                    )
                    .await?;
                Ok::<_, Error>(confirm)
            }
            .instrument(span.clone())
            .await;
            pending.push((routing_key.as_str(), confirm, span));
        }
        let results = join_all(pending.into_iter().map(|(routing_key, confirm, span)| {
            async move { settle(routing_key, confirm, Returned::Event).await }.instrument(span)
        }))
        .await;
        if results
            .iter()
            .any(|result| matches!(result, Err(Error::Returned)))
        {
            self.redeclare.store(true, Ordering::SeqCst);
        }
        results
    }

    /// Publishes `body` to a queue through the default exchange (retries and parking) and waits
    /// for the confirm. A message the broker returns (the queue does not exist) is an error,
    /// [`Error::Returned`]: the caller still holds the only copy.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(Error::from);
        settle(queue, confirm, Returned::Failure).await
    }
}

/// What a returned (unroutable, `mandatory`) message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    /// A domain event: a failure when the topology says some consumer subscribes to its
    /// routing key (that consumer would never see it), else confirmed and counted (nobody
    /// subscribes to it).
    Event,
    /// A copy meant for one specific queue: losing it would lose the message.
    Failure,
}

/// Waits for one confirm and records the outcome in the metrics.
async fn settle(
    routing_key: &str,
    confirm: Result<lapin::PublisherConfirm, Error>,
    on_return: Returned,
) -> Result<(), Error> {
    let outcome = match confirm {
        Err(err) => Err(err),
        Ok(confirm) => match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(Error::NotConfirmed),
            Ok(Err(err)) => Err(Error::Broker(err)),
            Ok(Ok(Confirmation::Nack(_))) => Err(Error::Nacked),
            Ok(Ok(Confirmation::Ack(Some(_)))) if on_return == Returned::Failure => {
                Err(Error::Returned)
            }
            Ok(Ok(Confirmation::Ack(Some(_)))) if topology::is_subscribed(routing_key) => {
                // The topology was declared on this channel, so a queue or binding that should
                // keep this event was deleted since. Confirming it would drop it for good.
                metrics::counter!("messaging_returned_total", "routing_key" => routing_key.to_owned())
                    .increment(1);
                tracing::error!(%routing_key, "a subscribed event reached no queue (was a queue or binding deleted?); kept, declaring the topology again");
                Err(Error::Returned)
            }
            Ok(Ok(Confirmation::Ack(returned))) => {
                if returned.is_some() {
                    // Confirmed but routed to no queue: no consumer of the topology subscribes.
                    metrics::counter!("messaging_unroutable_total", "routing_key" => routing_key.to_owned())
                        .increment(1);
                    tracing::debug!(%routing_key, "published event matched no queue");
                }
                Ok(())
            }
            Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        },
    };
    match &outcome {
        Ok(()) => metrics::counter!("messaging_published_total").increment(1),
        Err(err) => {
            metrics::counter!("messaging_publish_failures_total").increment(1);
            tracing::warn!(%routing_key, error = %err, "publish failed");
        }
    }
    outcome
}
