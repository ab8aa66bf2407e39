//! The broker topology, declared in code, idempotently, by every service before it publishes
//! or consumes (`docs/adr/0016-topology-declared-by-every-service.md`).
//!
//! ```text
//!  relay ──publish(routing key user.user.registered)──▶ shop.events (topic, durable)
//!                                                          │ binding user.user.registered
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
//! * **Every consumer's queue, its parking queue and its bindings are declared by every
//!   publisher** ([`SUBSCRIPTIONS`], [`declare_topology`]), before its first publish on each
//!   channel (so by every service: each one publishes, or consumes and publishes retries): the exchange routes an event only to the queues bound *at that moment*, so a
//!   queue declared only by its consumer missed whatever its producers published before the
//!   consumer first started. Whichever service starts first now creates every queue; a
//!   producer that starts alone loses nothing.
//! * **Delay queues**, one per retry delay, are quorum queues with a queue-wide
//!   `x-message-ttl` whose expired messages dead-letter back to the consumer's queue through
//!   the default exchange. The TTL is on the queue, not on each message, because messages
//!   expire only at the queue's head: one delay per queue is what keeps every message leaving
//!   on time. The delay is in the queue's name: changing a delay declares a new queue instead
//!   of failing on an existing one declared with different arguments. Only their consumer
//!   declares them: their names follow its configured delays, and only the consumer itself
//!   publishes to them, once it has declared them.
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
//! Queue arguments cannot change on an existing queue: a declaration with other arguments is
//! refused (`PRECONDITION_FAILED`). Since a consumer's queues are now declared by every service
//! and by the consumer itself, both go through one function ([`declare_queues`]), and a
//! consumer listed in [`SUBSCRIPTIONS`] may not be configured with another delivery limit
//! ([`check_subscription`]). A broker that still has queues from an older topology refuses
//! the declaration, and the consumer logs it and keeps retrying. Drain and delete those
//! queues (they are declared again on the next attach).

use std::time::Duration;

use lapin::{
    Channel, Connection, ExchangeKind,
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

/// One consumer of the system: the name its queues are called after, and the routing keys its
/// queue is bound to (the routing keys of the events it handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub consumer: &'static str,
    pub routing_keys: &'static [&'static str],
}

/// Every consumer of the system and what it subscribes to: the topology every publisher
/// declares before it publishes ([`declare_topology`]).
///
/// Routing keys are spelled out here because `shop-events` (where each event declares its
/// key) depends on this crate, not the other way round. A consumer checks itself against this
/// table when it starts ([`check_subscription`]): one that handles an event not listed here
/// for it refuses to start, so a service's own tests fail before such a consumer could miss
/// events published while it was not running yet.
pub const SUBSCRIPTIONS: &[Subscription] = &[
    // The in_stock read model of products.
    Subscription {
        consumer: "catalog",
        routing_keys: &[
            "inventory.stock.reserved",
            "inventory.stock.released",
            "inventory.stock.low",
            "inventory.stock.out_of_stock",
            "inventory.stock.replenished",
        ],
    },
    // Cached product responses to forget.
    Subscription {
        consumer: "gateway",
        routing_keys: &[
            "catalog.product.created",
            "catalog.product.updated",
            "catalog.product.price_changed",
        ],
    },
    // A stock row per product.
    Subscription {
        consumer: "inventory",
        routing_keys: &["catalog.product.created"],
    },
    // Emails.
    Subscription {
        consumer: "notification",
        routing_keys: &[
            "user.user.registered",
            "order.order.confirmed",
            "order.order.cancelled",
            "payment.payment.failed",
            "inventory.stock.low",
            "inventory.stock.out_of_stock",
        ],
    },
];

/// The subscription of `consumer` in [`SUBSCRIPTIONS`], if it is one of the system's.
pub fn subscription(consumer: &str) -> Option<&'static Subscription> {
    SUBSCRIPTIONS.iter().find(|sub| sub.consumer == consumer)
}

/// Whether some consumer of [`SUBSCRIPTIONS`] subscribes to `routing_key`: an event published
/// with it must reach a queue, and one the broker returns as unroutable was lost on the way
/// (a queue or binding deleted since the publisher declared them).
pub fn is_subscribed(routing_key: &str) -> bool {
    SUBSCRIPTIONS
        .iter()
        .any(|sub| sub.routing_keys.contains(&routing_key))
}

/// Checks a consumer about to start against [`SUBSCRIPTIONS`]. A listed consumer must be bound
/// only to keys listed for it (otherwise the events of the missing keys published before it
/// first attached would be dropped) and use the listed queues' delivery limit (every
/// publisher declares its queue with [`DELIVERY_LIMIT`]; another value would be refused as
/// `PRECONDITION_FAILED`). Returns the keys listed for it that it does not handle (they reach
/// its queue and are acknowledged as unhandled), for the caller to log. A consumer that is not
/// listed is allowed (tests, tools) and declares its own queue when it attaches, as before.
pub fn check_subscription(
    consumer: &str,
    bindings: &[String],
    delivery_limit: u32,
) -> Result<Vec<&'static str>, crate::Error> {
    let Some(listed) = subscription(consumer) else {
        return Ok(Vec::new());
    };
    let missing: Vec<&str> = bindings
        .iter()
        .map(String::as_str)
        .filter(|key| !listed.routing_keys.contains(key))
        .collect();
    if !missing.is_empty() {
        return Err(crate::Error::Consumer(format!(
            "consumer '{consumer}' handles {missing:?}, which topology::SUBSCRIPTIONS does not list \
             for it: every service declares the topology from that table, so add them there, or \
             events published before '{consumer}' first attaches are dropped"
        )));
    }
    if delivery_limit != DELIVERY_LIMIT {
        return Err(crate::Error::Consumer(format!(
            "consumer '{consumer}' is in topology::SUBSCRIPTIONS, whose queues every service \
             declares with a delivery limit of {DELIVERY_LIMIT}, not {delivery_limit}: the broker \
             would refuse one of the two declarations"
        )));
    }
    Ok(listed
        .routing_keys
        .iter()
        .copied()
        .filter(|key| !bindings.iter().any(|bound| bound == key))
        .collect())
}

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
    declare_queues(channel, queues, delivery_limit).await?;
    for (delay, name) in &queues.retries {
        let mut retry = FieldTable::default();
        dead_letters_at_least_once(&mut retry, &queues.main);
        retry.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        channel
            .queue_declare(name.as_str().into(), durable(), retry)
            .await?;
    }
    bind(channel, &queues.main, bindings).await
}

/// Declares the whole topology of [`SUBSCRIPTIONS`] on `connection`: the exchange, and for
/// every consumer its queue and parking queue (with the arguments its consumer declares them
/// with) and its bindings. Idempotent, and accepted however often and by however many services
/// it runs, as long as they run the same table. Publishers run it before their first publish
/// on each channel ([`crate::Publisher`]), so an event is never published before the queues
/// that should keep it exist.
///
/// Returns the consumers whose queues the broker refused to declare (an existing queue with
/// other arguments, `PRECONDITION_FAILED`), each logged and counted in
/// `messaging_topology_refused_total`. One such queue must not stop every service from
/// publishing: the others are declared anyway (a refusal closes the channel, so on a new one),
/// and the refused one, which exists, usually still routes. Errors only when the broker cannot
/// be talked to at all.
pub async fn declare_topology(connection: &Connection) -> Result<Vec<&'static str>, lapin::Error> {
    let mut channel = connection.create_channel().await?;
    declare_exchange(&channel).await?;
    let mut refused = Vec::new();
    for sub in SUBSCRIPTIONS {
        // No delay queues: see the module docs.
        let queues = ConsumerQueues::new(sub.consumer, &[]);
        let declared = async {
            declare_queues(&channel, &queues, DELIVERY_LIMIT).await?;
            bind(&channel, &queues.main, sub.routing_keys).await
        }
        .await;
        match declared {
            Ok(()) => {}
            Err(err) if matches!(err.kind(), lapin::ErrorKind::ProtocolError(_)) => {
                metrics::counter!("messaging_topology_refused_total", "consumer" => sub.consumer)
                    .increment(1);
                tracing::error!(consumer = sub.consumer, error = %err,
                    "the broker refused to declare this consumer's queues (one from an older topology, with other arguments?); drain and delete it");
                refused.push(sub.consumer);
                channel = connection.create_channel().await?;
            }
            Err(err) => return Err(err),
        }
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(refused)
}

/// Declares a consumer's queue and its parking queue. The one place their arguments are
/// written: the consumer and every publisher ([`declare_topology`]) declare them here, because
/// the broker refuses (`PRECONDITION_FAILED`) a declaration whose arguments differ from the
/// existing queue's.
async fn declare_queues(
    channel: &Channel,
    queues: &ConsumerQueues,
    delivery_limit: u32,
) -> Result<(), lapin::Error> {
    let mut parking = FieldTable::default();
    parking.insert("x-queue-type".into(), string("quorum"));
    channel
        .queue_declare(queues.parking.as_str().into(), durable(), parking)
        .await?;

    let mut main = FieldTable::default();
    dead_letters_at_least_once(&mut main, &queues.parking);
    main.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    channel
        .queue_declare(queues.main.as_str().into(), durable(), main)
        .await?;
    Ok(())
}

/// What every queue that dead-letters needs so the broker does not drop what it moves.
fn dead_letters_at_least_once(args: &mut FieldTable, target: &str) {
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(target));
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn bind(
    channel: &Channel,
    queue: &str,
    routing_keys: &[impl AsRef<str>],
) -> Result<(), lapin::Error> {
    for key in routing_keys {
        channel
            .queue_bind(
                queue.into(),
                EXCHANGE.into(),
                key.as_ref().into(),
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

    #[test]
    fn every_subscription_is_a_named_consumer_bound_to_concrete_routing_keys() {
        let mut names: Vec<&str> = SUBSCRIPTIONS.iter().map(|sub| sub.consumer).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SUBSCRIPTIONS.len(), "a consumer listed twice");
        for sub in SUBSCRIPTIONS {
            assert!(
                !sub.routing_keys.is_empty(),
                "{} subscribes to nothing",
                sub.consumer
            );
            for key in sub.routing_keys {
                crate::check_routing_key(key).unwrap();
            }
        }
    }

    fn keys(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|key| (*key).to_owned()).collect()
    }

    #[test]
    fn a_listed_consumer_handling_an_unlisted_event_may_not_start() {
        let err = check_subscription(
            "inventory",
            &keys(&["catalog.product.created", "catalog.product.deleted"]),
            DELIVERY_LIMIT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("catalog.product.deleted"), "{err}");
    }

    #[test]
    fn a_listed_consumer_with_another_delivery_limit_may_not_start() {
        assert!(check_subscription("inventory", &keys(&["catalog.product.created"]), 3).is_err());
    }

    #[test]
    fn listed_keys_a_consumer_does_not_handle_are_reported_and_unlisted_consumers_pass() {
        let unhandled = check_subscription(
            "gateway",
            &keys(&["catalog.product.created"]),
            DELIVERY_LIMIT,
        )
        .unwrap();
        assert_eq!(
            unhandled,
            ["catalog.product.updated", "catalog.product.price_changed"]
        );
        assert_eq!(
            check_subscription("test", &keys(&["shop.thing.happened"]), 3).unwrap(),
            Vec::<&str>::new()
        );
    }
}
