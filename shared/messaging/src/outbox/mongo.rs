//! The transactional outbox on MongoDB, for a standalone server without multi-document
//! transactions (FerretDB here; a single `mongod` in development elsewhere).
//!
//! The only atomic unit there is one write to one document, so the pending events live *in the
//! document whose change they announce*: a sub-document `outbox` keyed by event id. The state
//! change and its events are one `insert_one` or one `update_one`:
//!
//! ```no_run
//! # async fn example(products: mongodb::Collection<mongodb::bson::Document>) -> Result<(), shop_messaging::Error> {
//! use mongodb::bson::doc;
//! use shop_messaging::{Envelope, outbox::mongo};
//!
//! let event = Envelope::new("catalog-service", "product.repriced", &serde_json::json!({ "productId": "p-1" }))?;
//! let mut set = doc! { "price": 1299 };
//! set.insert(mongo::path(&event), mongo::entry("catalog.product.repriced", &event)?);
//! products.update_one(doc! { "_id": "p-1" }, doc! { "$set": set }).await?;
//! # Ok(()) }
//! ```
//!
//! [`Relay`] polls the collections it is given for documents with pending events (there are no
//! change streams on a standalone server), publishes them with confirms and `$unset`s each
//! confirmed entry. Unlike the PostgreSQL relay it cannot lock: run one instance per service,
//! or accept that two instances may both publish an event (consumers deduplicate anyway).

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{self, Bson, Document, doc},
};
use shop_runtime::{BootError, Context, stores::amqp::Amqp};
use tokio_util::sync::CancellationToken;

use super::RelayConfig;
use crate::{Error, Publisher, check_routing_key, envelope::Envelope};

/// The field holding a document's pending events.
pub const FIELD: &str = "outbox";

/// The dotted path of `event`'s entry, `outbox.<event id>`: the key to `$set` in an update.
pub fn path(event: &Envelope) -> String {
    format!("{FIELD}.{}", event.id)
}

/// The entry for `event`, to store at [`path`] (or under its id in [`pending`]).
pub fn entry(routing_key: &str, event: &Envelope) -> Result<Document, Error> {
    check_routing_key(routing_key)?;
    Ok(doc! {
        "routing_key": routing_key,
        // The JSON text, not BSON: the envelope is relayed byte for byte as it was built.
        "envelope": serde_json::to_string(event)?,
        "created_at": bson::DateTime::now(),
    })
}

/// The `outbox` value for a document being inserted with these events.
pub fn pending<'a>(
    events: impl IntoIterator<Item = (&'a str, &'a Envelope)>,
) -> Result<Document, Error> {
    let mut outbox = Document::new();
    for (routing_key, event) in events {
        outbox.insert(event.id.to_string(), entry(routing_key, event)?);
    }
    Ok(outbox)
}

/// The outbox relay for MongoDB.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Starts the relay for `collections` of the service's database as a background task.
    pub fn spawn(
        ctx: &Context,
        collections: &[&str],
        config: RelayConfig,
    ) -> Result<(), BootError> {
        let db = ctx.mongo()?.clone();
        let amqp = ctx.amqp()?.clone();
        let collections = collections.iter().map(|c| (*c).to_owned()).collect();
        ctx.tasks.spawn(Self::run(
            db,
            amqp,
            collections,
            config,
            ctx.shutdown.clone(),
        ));
        Ok(())
    }

    /// The relay loop, until `shutdown` is cancelled.
    pub async fn run(
        db: Database,
        amqp: Amqp,
        collections: Vec<String>,
        config: RelayConfig,
        shutdown: CancellationToken,
    ) {
        let publisher = Publisher::new(amqp);
        let new_backoff = || shop_runtime::backoff::forever(config.max_backoff);
        let mut backoff = new_backoff();
        while !shutdown.is_cancelled() {
            let mut outcome = Ok(false);
            for collection in &collections {
                match relay_batch(&db, collection, &publisher, config.batch_size).await {
                    Ok(full) => outcome = outcome.map(|more| more || full),
                    Err(err) => {
                        tracing::warn!(%collection, error = %err, "outbox relay failed");
                        outcome = Err(err);
                    }
                }
            }
            let delay = match outcome {
                Ok(true) => {
                    backoff = new_backoff();
                    continue;
                }
                Ok(false) => {
                    backoff = new_backoff();
                    config.poll_interval
                }
                Err(_) => backoff.next().unwrap_or(config.max_backoff),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }
}

/// Documents in `collection` with pending events.
fn has_pending() -> Document {
    doc! { FIELD: { "$exists": true, "$ne": {} } }
}

/// Publishes the pending events of up to `batch_size` documents; `Ok(true)` when there may be
/// more.
async fn relay_batch(
    db: &Database,
    collection: &str,
    publisher: &Publisher,
    batch_size: i64,
) -> Result<bool, Error> {
    let documents = db.collection::<Document>(collection);
    let found: Vec<Document> = documents
        .find(has_pending())
        .projection(doc! { FIELD: 1 })
        .limit(batch_size)
        .await?
        .try_collect()
        .await?;

    // (document id, event id, routing key, envelope), oldest event first per document.
    let mut pending = Vec::new();
    let mut oldest: Option<bson::DateTime> = None;
    for document in &found {
        let (Some(id), Ok(outbox)) = (document.get("_id"), document.get_document(FIELD)) else {
            continue;
        };
        for (event_id, entry) in outbox {
            let Bson::Document(entry) = entry else {
                continue;
            };
            let parsed = entry
                .get_str("routing_key")
                .ok()
                .zip(entry.get_str("envelope").ok())
                .and_then(|(key, json)| {
                    Some((key.to_owned(), Envelope::from_slice(json.as_bytes()).ok()?))
                });
            if let Ok(created) = entry.get_datetime("created_at") {
                oldest = Some(oldest.map_or(*created, |o| o.min(*created)));
            }
            match parsed {
                Some((routing_key, envelope)) => {
                    pending.push((id.clone(), event_id.clone(), routing_key, envelope));
                }
                None => {
                    tracing::error!(%collection, %event_id, "outbox entry is not an event; left in place")
                }
            }
        }
    }
    pending.sort_by_key(|(_, _, _, envelope)| envelope.id); // UUIDv7: creation order

    let events: Vec<(String, Envelope)> = pending
        .iter()
        .map(|(_, _, key, envelope)| (key.clone(), envelope.clone()))
        .collect();
    let results = publisher.publish_events(&events).await;
    let mut first_error = None;
    for ((id, event_id, _, _), result) in pending.iter().zip(results) {
        match result {
            Ok(()) => {
                documents
                    .update_one(
                        doc! { "_id": id.clone() },
                        doc! { "$unset": { format!("{FIELD}.{event_id}"): "" } },
                    )
                    .await?;
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }

    let backlog = documents.count_documents(has_pending()).await?;
    metrics::gauge!("messaging_outbox_backlog", "store" => "mongodb", "collection" => collection.to_owned())
        .set(backlog as f64);
    let age = oldest.map_or(0.0, |o| {
        (bson::DateTime::now().timestamp_millis() - o.timestamp_millis()) as f64 / 1000.0
    });
    metrics::gauge!("messaging_outbox_oldest_age_seconds", "store" => "mongodb", "collection" => collection.to_owned())
        .set(age);

    match first_error {
        Some(err) => Err(err),
        None => Ok(i64::try_from(found.len()).unwrap_or(i64::MAX) >= batch_size),
    }
}
