//! A consumer whose store is MongoDB on a standalone server (FerretDB here): no multi-document
//! transactions, so the inbox record and the effect cannot be written atomically.
//!
//! What this consumer does, and what it can honestly promise:
//!
//! 1. Before running the handler it looks the event id up in the inbox collection
//!    ([`COLLECTION`]); when found (a redelivery of an event already handled), the handler is
//!    skipped and the message acknowledged.
//! 2. Otherwise the handler runs; when it returns `Ok`, the id is recorded, then the message
//!    acknowledged.
//!
//! A crash (or a lost connection, or a second instance handling a duplicate publish at the same
//! moment) between the handler's effect and the inbox record runs the handler a second time for
//! the same event. There is no session to hand the handler that would prevent this: on a
//! standalone server a session gives no atomicity across documents. So **the handler's own
//! write must be idempotent for `event.id()`** — which on MongoDB is always possible, because
//! the effect is a single-document write:
//!
//! * The effect *creates* a document (a notification, a ledger entry): give it the event id in
//!   a field with a unique index ([`crate::inbox::mongo::ensure_unique`]) and treat a
//!   duplicate-key error ([`crate::inbox::mongo::is_duplicate`]) as done.
//! * The effect *updates* a document: put the event id in the filter
//!   (`"applied": { "$ne": id }`) and record it in the same update (`"$push"`), or make the
//!   update conditional on a version carried by the event.
//!
//! The inbox then only saves the handler's work for the common redelivery; the guarantee is the
//! handler's. The inbox records are pruned on a schedule like the PostgreSQL ones.

use std::{future::Future, marker::PhantomData, time::Duration};

use mongodb::{
    Database, IndexModel,
    bson::{self, Document, doc},
    options::IndexOptions,
};

use super::{BoxFuture, HandlerError, Outcome, Received, RouteInfo, decode, sealed};
use crate::{Consumer, Envelope, Error, Event};

/// The inbox collection, in the consumer's own database.
pub const COLLECTION: &str = "messaging_inbox";

/// The handler of one event type `E` for a MongoDB consumer.
pub trait Handle<E: Event>: Send + Sync + 'static {
    /// Applies the event's effect, idempotently for `event.id()` (see the module docs): it
    /// may run twice for one event after a crash, and must then change nothing the second
    /// time. A redelivery of an event whose handling was recorded never gets here.
    fn handle(&self, event: Received<E>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A handler behind its event type (also used by [`super::stateless`]).
pub(super) trait Route: Send + Sync {
    fn call(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), HandlerError>>;
}

pub(super) struct Typed<E, H> {
    pub(super) handler: H,
    pub(super) _event: PhantomData<fn() -> E>,
}

impl<E: Event, H: Handle<E>> Route for Typed<E, H> {
    fn call(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move { self.handler.handle(decode::<E>(envelope)?).await })
    }
}

/// The MongoDB inbox ([`COLLECTION`]) and the handlers of one consumer.
pub struct Inbox {
    db: Database,
    routes: Vec<(RouteInfo, Box<dyn Route>)>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&RouteInfo> = self.routes.iter().map(|(info, _)| info).collect();
        f.debug_struct("Inbox").field("routes", &routes).finish()
    }
}

impl Consumer<Inbox> {
    /// A consumer named `name` whose effects (and inbox) are in `db`.
    pub fn mongo(name: impl Into<String>, db: Database) -> Self {
        Self::with_inbox(
            name,
            Inbox {
                db,
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

impl Inbox {
    fn records(&self) -> mongodb::Collection<Document> {
        self.db.collection(COLLECTION)
    }
}

/// The inbox record's `_id`: one per consumer and event.
fn record_id(consumer: &str, envelope: &Envelope) -> String {
    format!("{consumer}/{}", envelope.id)
}

impl sealed::Sealed for Inbox {}

impl super::Inbox for Inbox {
    fn install(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let index = IndexModel::builder()
                .keys(doc! { "consumer": 1, "processed_at": 1 })
                .options(
                    IndexOptions::builder()
                        .name("consumer_processed_at".to_owned())
                        .build(),
                )
                .build();
            self.records().create_index(index).await?;
            Ok(())
        })
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
            let id = record_id(consumer, &envelope);
            let event_id = envelope.id.to_string();
            if self
                .records()
                .find_one(doc! { "_id": &id })
                .await?
                .is_some()
            {
                return Ok(Outcome::Duplicate);
            }
            route.call(envelope).await?;
            let record = doc! {
                "_id": &id,
                "consumer": consumer,
                "event_id": event_id,
                "processed_at": bson::DateTime::now(),
            };
            match self.records().insert_one(record).await {
                Ok(_) => Ok(Outcome::Handled),
                // Another instance handled a duplicate at the same time; both effects were
                // the same idempotent write.
                Err(err) if crate::inbox::mongo::is_duplicate(&err) => Ok(Outcome::Handled),
                Err(err) => Err(err.into()),
            }
        })
    }

    fn prune<'a>(&'a self, consumer: &'a str, age: Duration) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let cutoff = bson::DateTime::from_millis(
                bson::DateTime::now().timestamp_millis().saturating_sub(age),
            );
            let deleted = self
                .records()
                .delete_many(doc! { "consumer": consumer, "processed_at": { "$lt": cutoff } })
                .await?;
            Ok(deleted.deleted_count)
        })
    }
}
