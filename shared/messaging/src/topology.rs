//! The broker topology, declared in code by whoever needs it (idempotently, at every connect).
//!
//! ```text
//!  relay ──publish(routing key user.user.registered)──▶ shop.events (topic, durable)
//!                                                          │ binding user.user.*
//!                                                          ▼
//!                           ┌──────────────────── notification.events (quorum) ──▶ consumer
//!                           │ dead-letter after TTL                                  │
//!      notification.events.retry.1000ms (quorum, x-message-ttl=1000) ◀─── retryable ─┤
//!      notification.events.retry.10000ms ...                           (attempt n)   │
//!                                                                                    │
//!      notification.events.parking (quorum) ◀──────── permanent or retries exhausted ┘
//! ```
//!
//! * One durable **topic exchange** carries every domain event; routing keys are
//!   `<service>.<aggregate>.<event>`, so a consumer binds `order.#` or `order.order.placed`.
//! * Each consuming service has one durable **quorum queue** (replicated, the safe default on
//!   RabbitMQ ≥ 3.8), shared by all its instances (competing consumers).
//! * **Delay queues**, one per retry delay, are quorum queues with a queue-wide
//!   `x-message-ttl` whose expired messages dead-letter back to the consumer's queue through
//!   the default exchange. The TTL is on the queue, not on each message, because messages
//!   expire only at the queue's head: one delay per queue is what keeps every message leaving
//!   on time. The delay is in the queue's name: changing a delay declares a new queue instead
//!   of failing on an existing one declared with different arguments.
//! * **Dead-lettering is at-least-once** (`x-dead-letter-strategy=at-least-once`, which needs
//!   `x-overflow=reject-publish`, RabbitMQ ≥ 3.10) on every queue that dead-letters: the delay
//!   queues (TTL expiry back to the main queue) and the main queue (delivery limit to
//!   parking). With the default strategy the broker drops a dead-lettered message it could not
//!   route, after the consumer had already acknowledged the original; with this one, the
//!   source queue keeps the message until the target queue confirmed it.
//! * A **parking queue** per consumer keeps what could not be handled, with the reason in the
//!   message's headers, until an operator looks at it (and moves it back with the management
//!   UI's "move messages" or a shovel once the cause is fixed).
//! * The main queue has a `x-delivery-limit`: a message that is delivered again and again
//!   without ever being acknowledged (it crashes the consumer process each time) is
//!   dead-lettered to the parking queue by the broker itself instead of looping forever. Such
//!   a message carries the broker's `x-death` header (reason `delivery_limit`) instead of
//!   `shop-failure-reason`.
//!
//! Queue arguments cannot change on an existing queue: a broker that still has queues from an
//! older topology refuses the declaration (`PRECONDITION_FAILED`), and the consumer logs it and
//! keeps retrying. Drain and delete those queues (they are declared again on the next attach).

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

/// The topic exchange all domain events are published to.
pub const EXCHANGE: &str = "shop.events";

/// How often the broker redelivers an unacknowledged message (consumer crashes, lost
/// connections) before it parks it. High: it only exists to stop crash loops.
pub const DELIVERY_LIMIT: u32 = 20;

/// Header: how many times handling this message has failed so far.
pub const ATTEMPTS_HEADER: &str = "shop-attempts";
/// Header: why the last attempt failed.
pub const REASON_HEADER: &str = "shop-failure-reason";
/// Header: the routing key the event was originally published with (retries and parking
/// go through the default exchange, which replaces it).
pub const ROUTING_KEY_HEADER: &str = "shop-routing-key";

/// The names of one consumer's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerQueues {
    /// `<consumer>.events`
    pub main: String,
    /// `<consumer>.events.parking`
    pub parking: String,
    /// `(delay, <consumer>.events.retry.<ms>ms)`, in the order attempts use them.
    pub retries: Vec<(Duration, String)>,
}

impl ConsumerQueues {
    pub fn new(consumer: &str, delays: &[Duration]) -> Self {
        let main = format!("{consumer}.events");
        Self {
            parking: format!("{main}.parking"),
            retries: delays
                .iter()
                .map(|delay| (*delay, format!("{main}.retry.{}ms", delay.as_millis())))
                .collect(),
            main,
        }
    }

    /// The delay queue for a message that has failed `failures` times, or `None` when its
    /// retries are exhausted.
    pub fn retry_queue(&self, failures: u32) -> Option<&str> {
        let index = usize::try_from(failures).ok()?.checked_sub(1)?;
        self.retries.get(index).map(|(_, name)| name.as_str())
    }
}

/// Declares the events exchange (durable topic).
pub async fn declare_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares the exchange and a private queue bound to `routing_keys` (patterns allowed): a
/// server-named, exclusive queue that the broker deletes with the channel's connection. For
/// observers that must see what is published and leave nothing behind: the test kit's `Tap`
/// and the benchmark's order tracker. It only receives what is published after it exists.
/// Returns the queue's name.
pub async fn declare_private_queue(
    channel: &Channel,
    routing_keys: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<String, lapin::Error> {
    declare_exchange(channel).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .to_string();
    for key in routing_keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                key.as_ref().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares the exchange and the consumer's queues, and binds its queue to `bindings`. A
/// message delivered more than `delivery_limit` times without being settled is parked by the
/// broker.
pub async fn declare_consumer(
    channel: &Channel,
    queues: &ConsumerQueues,
    bindings: &[String],
    delivery_limit: u32,
) -> Result<(), lapin::Error> {
    declare_exchange(channel).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    // What every queue that dead-letters needs so the broker does not drop what it moves.
    let at_least_once = |args: &mut FieldTable, target: &str| {
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert("x-dead-letter-routing-key".into(), string(target));
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
    };

    let mut parking = FieldTable::default();
    parking.insert("x-queue-type".into(), string("quorum"));
    channel
        .queue_declare(queues.parking.as_str().into(), durable, parking)
        .await?;

    let mut main = FieldTable::default();
    at_least_once(&mut main, &queues.parking);
    main.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    channel
        .queue_declare(queues.main.as_str().into(), durable, main)
        .await?;

    for (delay, name) in &queues.retries {
        let mut retry = FieldTable::default();
        at_least_once(&mut retry, &queues.main);
        retry.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        channel
            .queue_declare(name.as_str().into(), durable, retry)
            .await?;
    }

    for binding in bindings {
        channel
            .queue_bind(
                queues.main.as_str().into(),
                EXCHANGE.into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_walk_through_the_delay_queues_then_run_out() {
        let queues = ConsumerQueues::new(
            "notification",
            &[Duration::from_millis(500), Duration::from_secs(10)],
        );
        assert_eq!(queues.main, "notification.events");
        assert_eq!(queues.parking, "notification.events.parking");
        assert_eq!(queues.retry_queue(0), None);
        assert_eq!(
            queues.retry_queue(1),
            Some("notification.events.retry.500ms")
        );
        assert_eq!(
            queues.retry_queue(2),
            Some("notification.events.retry.10000ms")
        );
        assert_eq!(queues.retry_queue(3), None);
    }
}
