//! A consumer whose inbox is PostgreSQL: the inbox claim, the handler's effect and the commit
//! are one transaction, so the effect happens once per event id.
//!
//! For each event: `BEGIN`; insert `(consumer, event id)` into `messaging.inbox`
//! (`ON CONFLICT DO NOTHING`); when the row was new, run the handler on that transaction;
//! `COMMIT`; then acknowledge. A redelivery finds the row and skips the handler. Two instances
//! handling the same event at once: the second insert waits on the primary key for the first
//! transaction, then finds the row (or, if the first rolled back, claims it itself).

use std::{future::Future, marker::PhantomData, time::Duration};

use sqlx::{PgConnection, PgPool};

use super::{BoxFuture, HandlerError, Outcome, Received, RouteInfo, decode, sealed};
use crate::{Consumer, Envelope, Error, Event, inbox, outbox::postgres as outbox};

/// The handler of one event type `E` for a PostgreSQL consumer.
pub trait Handle<E: Event>: Send + Sync + 'static {
    /// Applies the event's effect on `tx`: the transaction in which the consumer claimed the
    /// event id in its inbox. Do not commit it: the consumer commits when this returns `Ok`
    /// (and acknowledges after the commit), and rolls back on an error, a panic or a timeout.
    /// A redelivery of an event already handled never gets here.
    fn handle(
        &self,
        tx: &mut PgConnection,
        event: Received<E>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// One handler with its event type, behind a type-erased interface.
trait Route: Send + Sync {
    fn call<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event, H: Handle<E>> Route for Typed<E, H> {
    fn call<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { self.handler.handle(tx, decode::<E>(envelope)?).await })
    }
}

/// The PostgreSQL inbox (`messaging.inbox`) and the handlers of one consumer.
pub struct Inbox {
    pool: PgPool,
    routes: Vec<(RouteInfo, Box<dyn Route>)>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&RouteInfo> = self.routes.iter().map(|(info, _)| info).collect();
        f.debug_struct("Inbox").field("routes", &routes).finish()
    }
}

impl Consumer<Inbox> {
    /// A consumer named `name` (its queues are `<name>.events...`, its inbox records carry
    /// the name) whose effects go to `pool`.
    pub fn postgres(name: impl Into<String>, pool: PgPool) -> Self {
        Self::with_inbox(
            name,
            Inbox {
                pool,
                routes: Vec::new(),
            },
        )
    }

    /// Handles events of type `E` (its routing key becomes a binding of the queue).
    pub fn on<E: Event>(mut self, handler: impl Handle<E>) -> Self {
        self.inbox.routes.push((
            RouteInfo::of::<E>(),
            Box::new(Typed {
                handler,
                _event: PhantomData,
            }),
        ));
        self
    }
}

impl sealed::Sealed for Inbox {}

impl super::Inbox for Inbox {
    fn install(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(crate::outbox::postgres::install(&self.pool))
    }

    fn routes(&self) -> Vec<RouteInfo> {
        self.routes.iter().map(|(info, _)| *info).collect()
    }

    fn dispatch<'a>(
        &'a self,
        consumer: &'a str,
        envelope: Envelope,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let Some((_, route)) = self.routes.iter().find(|(info, _)| info.matches(&envelope))
            else {
                return Ok(Outcome::Unhandled);
            };
            let mut tx = self.pool.begin().await?;
            if !inbox::postgres::claim(&mut tx, consumer, envelope.id).await? {
                return Ok(Outcome::Duplicate); // rolled back on drop: nothing was written
            }
            let mark = outbox::enqueue_mark();
            route.call(&mut tx, envelope).await?;
            if outbox::enqueued_since(mark) {
                // The handler may have enqueued events (a reaction to this one): committed
                // through the outbox, this process's relay publishes them at once.
                outbox::commit(tx).await?;
            } else {
                // Certainly none: waking the relay after every message handled would only
                // have it run an empty query each time.
                tx.commit().await?;
            }
            Ok(Outcome::Handled)
        })
    }

    fn prune<'a>(&'a self, consumer: &'a str, age: Duration) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(inbox::postgres::prune(&self.pool, consumer, age))
    }
}
