//! Domain events over RabbitMQ, done so that nothing is lost and nothing happens twice.
//!
//! Read `docs/messaging.md` for the guarantees and `docs/adr/0004-messaging.md` for the
//! decisions. In one paragraph: a service never publishes to the broker from a request. It
//! writes the event into an *outbox* in the same database transaction as the state change
//! ([`outbox::postgres::enqueue`], or [`outbox::mongo::entry`] inside the same single-document
//! write). A [relay](outbox::postgres::Relay) publishes outbox rows with publisher confirms and
//! deletes them only once the broker confirmed. Delivery is therefore *at least once*;
//! consumers make it *effectively once* by recording each event id in an *inbox* in the same
//! transaction as their effect ([`inbox::postgres::claim`]) and acknowledging only after that
//! transaction committed ([`Consumer`]).
//!
//! # Producing (PostgreSQL)
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), shop_messaging::Error> {
//! use shop_messaging::{Envelope, outbox};
//!
//! // at start, once: `outbox::postgres::Relay::spawn(&ctx, RelayConfig::default()).await?`
//! let mut tx = pool.begin().await?;
//! // ... INSERT INTO users ... (the state change)
//! let event = Envelope::new("user-service", "user.registered", &serde_json::json!({ "userId": "u-1" }))?;
//! outbox::postgres::enqueue(&mut tx, "user.user.registered", &event).await?;
//! tx.commit().await?; // the event exists if and only if the user does
//! # Ok(()) }
//! ```
//!
//! # Consuming
//!
//! ```no_run
//! # async fn example(ctx: &shop_runtime::Context) -> Result<(), shop_runtime::BootError> {
//! use shop_messaging::{Consumer, Envelope, Handler, HandlerError, Subscription, inbox};
//!
//! struct Welcome { pool: sqlx::PgPool }
//!
//! impl Handler for Welcome {
//!     async fn handle(&self, event: Envelope) -> Result<(), HandlerError> {
//!         let mut tx = self.pool.begin().await.map_err(HandlerError::retryable)?;
//!         if !inbox::postgres::claim(&mut tx, "notification", &event).await.map_err(HandlerError::retryable)? {
//!             return Ok(()); // a redelivery: the effect already happened
//!         }
//!         // ... the effect, in `tx` ...
//!         tx.commit().await.map_err(HandlerError::retryable)?;
//!         Ok(())
//!     }
//! }
//!
//! let pool = ctx.postgres()?.clone();
//! shop_messaging::postgres::install(&pool).await?;
//! Consumer::spawn(ctx, Subscription::new("notification", ["user.user.registered"]), Welcome { pool })?;
//! # Ok(()) }
//! ```
//!
//! | module | what lives there |
//! |---|---|
//! | [`envelope`] | [`Envelope`]: the CloudEvents 1.0 JSON envelope every event travels in |
//! | [`topology`] | the exchange, each consumer's queue, its delay queues and its parking queue |
//! | [`trace`] | W3C trace context in AMQP headers |
//! | [`publisher`] | a confirm-mode channel that survives reconnects |
//! | [`outbox`] | transactional outboxes for PostgreSQL and MongoDB, and their relays |
//! | [`inbox`] | deduplication by event id, in the consumer's own transaction |
//! | [`consumer`] | [`Consumer`]: prefetch, ack after commit, retries, parking, readiness |

pub mod consumer;
pub mod envelope;
pub mod event;
pub mod inbox;
pub mod outbox;
pub mod publisher;
pub mod topology;
pub mod trace;

pub use consumer::{Consumer, ConsumerStatus, Handler, HandlerError, Subscription};
pub use envelope::Envelope;
pub use event::Event;
pub use outbox::postgres;
pub use publisher::Publisher;

/// Why a messaging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A routing key that is not `<service>.<aggregate>.<event>`.
    #[error(
        "routing key '{0}' is not <service>.<aggregate>.<event> (three non-empty words, no wildcards)"
    )]
    RoutingKey(String),
    #[error("the event cannot be encoded or decoded as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused a message (a negative publisher confirm).
    #[error("the broker did not accept the message (nack)")]
    Nacked,
    /// The broker did not confirm the message in time; it may or may not have it.
    #[error("the broker did not confirm the message in time")]
    NotConfirmed,
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl From<Error> for shop_runtime::BootError {
    fn from(err: Error) -> Self {
        shop_runtime::BootError::store("messaging", err)
    }
}

/// Checks that `key` is a concrete routing key `<service>.<aggregate>.<event>`.
pub fn check_routing_key(key: &str) -> Result<(), Error> {
    let words: Vec<&str> = key.split('.').collect();
    let valid = words.len() == 3
        && words.iter().all(|word| {
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(Error::RoutingKey(key.to_owned()))
    }
}

/// Compiled, never called: every public async function must be usable where futures have to be
/// `Send` (spawned tasks, axum handlers, `Service::build`). sqlx's executor lifetimes make that
/// easy to break without noticing in tests that simply `.await`.
#[cfg(test)]
#[allow(dead_code)]
fn public_futures_are_send(
    pool: &sqlx::PgPool,
    conn: &mut sqlx::PgConnection,
    collection: &mongodb::Collection<mongodb::bson::Document>,
    ctx: &shop_runtime::Context,
    event: &Envelope,
) {
    fn send<T: Send>(_: T) {}
    send(postgres::install(pool));
    send(postgres::enqueue(conn, "a.b.c", event));
    send(postgres::Relay::spawn(ctx, outbox::RelayConfig::default()));
    send(inbox::postgres::claim(conn, "c", event));
    send(inbox::postgres::prune(
        pool,
        std::time::Duration::from_secs(1),
    ));
    send(inbox::mongo::ensure_unique(collection, "event_id"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_service_aggregate_event() {
        assert!(check_routing_key("user.user.registered").is_ok());
        assert!(check_routing_key("order.order-line.added_v2").is_ok());
        for bad in [
            "user.registered",
            "user.*.registered",
            "a.b.c.d",
            "user..x",
            "",
            "a.b.#",
        ] {
            assert!(check_routing_key(bad).is_err(), "{bad}");
        }
    }
}
