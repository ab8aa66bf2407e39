//! Domain events over RabbitMQ, done so that nothing is lost and nothing happens twice.
//!
//! Read `docs/messaging.md` for the guarantees and `docs/adr/0004-messaging.md` for the
//! decisions. In one paragraph: a service never publishes to the broker from a request. It
//! writes the event into an *outbox* in the same database transaction as the state change
//! ([`outbox::postgres::enqueue`], or [`outbox::mongo::entry`] inside the same single-document
//! write). A [relay](outbox::postgres::Relay) publishes outbox rows with publisher confirms and
//! deletes them only once the broker confirmed. Delivery is therefore *at least once*;
//! consumers make it *effectively once* by recording each event id in an *inbox* in the same
//! transaction as their effect and acknowledging only after that transaction committed
//! ([`Consumer`]).
//!
//! # Producing (PostgreSQL)
//!
//! ```no_run
//! # use shop_messaging::Event;
//! # #[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = "camelCase")]
//! # struct UserRegistered { user_id: uuid::Uuid }
//! # impl Event for UserRegistered { const SOURCE: &'static str = "user-service"; const ROUTING_KEY: &'static str = "user.user.registered"; }
//! # async fn example(pool: sqlx::PgPool) -> Result<(), shop_messaging::Error> {
//! use shop_messaging::outbox;
//!
//! // at start, once: `outbox::postgres::Relay::spawn(ctx, RelayConfig::default()).await?`
//! let mut tx = pool.begin().await?;
//! // ... INSERT INTO users ... (the state change)
//! outbox::postgres::enqueue_event(&mut tx, &UserRegistered { user_id: uuid::Uuid::now_v7() }).await?;
//! // The event exists if and only if the user does; committed through the outbox, the
//! // relay of this process publishes it at once (a plain `tx.commit()`: at its next poll).
//! outbox::postgres::commit(tx).await?;
//! # Ok(()) }
//! ```
//!
//! # Consuming
//!
//! ```no_run
//! # use shop_messaging::Event;
//! # #[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = "camelCase")]
//! # struct UserRegistered { user_id: uuid::Uuid }
//! # impl Event for UserRegistered { const SOURCE: &'static str = "user-service"; const ROUTING_KEY: &'static str = "user.user.registered"; }
//! # async fn example(ctx: &shop_runtime::Context) -> Result<(), shop_runtime::BootError> {
//! use shop_messaging::{Consumer, HandlerError, Received, consumer::postgres::Handle};
//!
//! struct Welcome;
//!
//! impl Handle<UserRegistered> for Welcome {
//!     // Runs in the transaction that claims the event id in the inbox; a redelivery of an
//!     // event already handled never gets here.
//!     async fn handle(&self, tx: &mut sqlx::PgConnection, event: Received<UserRegistered>)
//!         -> Result<(), HandlerError> {
//!         sqlx::query("INSERT INTO welcome_mails (user_id) VALUES ($1)")
//!             .bind(event.payload.user_id)
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! Consumer::postgres("notification", ctx.postgres()?.clone())
//!     .on::<UserRegistered>(Welcome)
//!     .spawn(ctx)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! | module | what lives there |
//! |---|---|
//! | [`envelope`] | [`Envelope`]: the CloudEvents 1.0 JSON envelope every event travels in |
//! | [`topology`] | the exchange, each consumer's queue, its delay queues and its parking queue; the table of every consumer, declared by every publisher |
//! | [`trace`] | W3C trace context in AMQP headers |
//! | [`publisher`] | a confirm-mode channel that survives reconnects |
//! | [`outbox`] | transactional outboxes for PostgreSQL and MongoDB, and their relays |
//! | [`event`] | [`Event`]: a payload declared once with its routing key, type and version |
//! | [`inbox`] | deduplication by event id, in the consumer's own transaction |
//! | [`consumer`] | [`Consumer`]: typed handlers, inbox, ack after commit, retries, parking |

pub mod consumer;
pub mod envelope;
pub mod event;
pub mod inbox;
pub mod outbox;
pub mod publisher;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topology;
pub mod trace;

pub use consumer::{Consumer, ConsumerStatus, HandlerError, Received};
pub use envelope::Envelope;
pub use event::Event;
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
    /// The broker returned a message no queue took: a retry or parking queue that is missing,
    /// or an event some consumer of the topology subscribes to whose queue or binding is gone.
    #[error("no queue took the message (returned by the broker)")]
    Returned,
    /// A consumer that cannot start as configured.
    #[error("{0}")]
    Consumer(String),
}

impl Error {
    /// Whether the failure is this message's (the broker refused or returned it, or it is not
    /// a valid event), as opposed to the broker's (unreachable, no confirm in time): a relay
    /// retries the message alone, later, and eventually parks it, instead of backing off.
    pub fn blames_the_message(&self) -> bool {
        match self {
            Self::Nacked | Self::Returned | Self::RoutingKey(_) | Self::Json(_) => true,
            Self::Broker(err) => matches!(err.kind(), lapin::ErrorKind::ProtocolError(_)),
            _ => false,
        }
    }
}

/// For request handlers that write to the outbox with `?`: the database being busy or away is
/// a 503 the client may retry; everything else is a 500 whose cause is logged, never shown.
impl From<Error> for shop_runtime::ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::Database(err) => err.into(),
            Error::Mongo(err) if is_unavailable(&err) => {
                Self::unavailable("The database is busy or unreachable; retry later.")
                    .with_source(err)
            }
            other => Self::internal(other),
        }
    }
}

fn is_unavailable(err: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *err.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::Io(_)
    )
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
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
) {
    fn send<T: Send>(_: T) {}

    #[derive(serde::Serialize, serde::Deserialize)]
    struct E;
    impl Event for E {
        const SOURCE: &'static str = "a-service";
        const ROUTING_KEY: &'static str = "a.b.c";
    }
    struct H;
    impl consumer::postgres::Handle<E> for H {
        async fn handle(
            &self,
            tx: &mut sqlx::PgConnection,
            _: Received<E>,
        ) -> Result<(), HandlerError> {
            sqlx::query("SELECT 1").execute(&mut *tx).await?;
            Ok(())
        }
    }
    impl consumer::mongo::Handle<E> for H {
        async fn handle(&self, _: Received<E>) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    send(Consumer::postgres("c", pool.clone()).on::<E>(H).spawn(ctx));
    send(
        Consumer::mongo("c", collection.client().database("d"))
            .on::<E>(H)
            .spawn(ctx),
    );
    send(outbox::mongo::Relay::spawn(
        ctx,
        &["c"],
        outbox::RelayConfig::default(),
    ));
    use outbox::postgres;
    send(postgres::install(pool));
    send(postgres::enqueue(conn, "a.b.c", event));
    send(postgres::commit(tx));
    send(postgres::Relay::spawn(ctx, outbox::RelayConfig::default()));
    send(inbox::postgres::claim(conn, "c", event.id));
    send(inbox::postgres::prune(
        pool,
        "c",
        std::time::Duration::from_secs(1),
    ));
    send(inbox::mongo::ensure_unique(collection, "event_id"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that writes its event with `?` answers 503 when the database goes away while
    /// it writes the outbox row (a connection reset in the middle of a PostgreSQL crash), not
    /// 500: the write failed because the store is away, not because the request is wrong.
    /// Handlers must let this conversion run (`?`), never `map_err(ApiError::internal)`
    /// (`make chaos FAULT=postgres-crash` found three that did).
    #[test]
    fn a_database_lost_while_writing_the_outbox_is_unavailable_and_a_bad_event_internal() {
        let reset = Error::Database(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            shop_runtime::ApiError::from(reset).kind(),
            shop_runtime::ErrorKind::Unavailable
        );
        let bad = Error::RoutingKey("x".into());
        assert_eq!(
            shop_runtime::ApiError::from(bad).kind(),
            shop_runtime::ErrorKind::Internal
        );
    }

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
