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
//! [`Relay`] looks in the collections it is given for documents with pending events, publishes
//! them with confirms and `$unset`s each confirmed entry. Unlike the PostgreSQL relay it cannot
//! lock: run one instance per service, or accept that two instances may both publish an event
//! (consumers deduplicate anyway).
//!
//! **Woken by the producer, polled only as a fallback.** A standalone server has no change
//! streams, so this relay used to poll every 200 ms. On FerretDB v1 the query for pending
//! entries (a filter on a field other than `_id`) reads every document of the collection, and
//! the backlog gauge read them all again: ten whole-catalog scans a second while nothing
//! happened, a tenth of a core for FerretDB at idle with the demo catalog and more with every
//! product added (`bench/findings.md`, "idle"). A producer now calls [`written`] after a write
//! that stored entries, which wakes the relays of its process at once (the same wake as the
//! PostgreSQL outbox's, ADR 0015); the poll interval is the fallback for writes from another
//! process and for entries deferred after a refusal, and the backlog is counted only after a
//! batch that found something (an empty batch changed nothing the last count saw).
//!
//! An entry the broker refuses counts an attempt in the entry, and its document is passed over
//! until [`DEFERRED_UNTIL`] (a growing pause), so documents behind it are relayed meanwhile. An
//! entry that is not an event, or was refused [`RelayConfig::max_attempts`] times, is moved to
//! the [`PARKED`] collection with the reason, logged once and counted in
//! `messaging_outbox_parked_total`. When the broker itself is down, nothing is counted against
//! the entries: the relay backs off.
//!
//! **One writer per document at a time, in this process.** MongoDB applies an `update_one`
//! atomically to its document; FerretDB v1 does not: it reads the document, applies the update
//! in memory and writes the whole document back, so two updates of one document at the same
//! moment can lose one of them — the relay's `$unset` of an old entry can write back a document
//! without the change (and the new entry) a producer stored a millisecond earlier. Every write
//! to a document with an outbox therefore holds [`lock_document`] for that document, the relay's
//! included. That closes the race for one instance per service, which the relay asks for anyway;
//! on MongoDB the lock costs an uncontended mutex.

use std::{
    hash::{Hash, Hasher},
    pin::pin,
    sync::LazyLock,
    time::Duration,
};

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{self, Bson, Document, doc},
};
use shop_runtime::{BootError, Context, stores::amqp::Amqp};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

use super::RelayConfig;
use crate::{Error, Publisher, check_routing_key, envelope::Envelope};

/// The field holding a document's pending events.
pub const FIELD: &str = "outbox";

/// The field the relay sets on a document whose entry the broker refused: the document is not
/// looked at again before then. Producers never write it.
pub const DEFERRED_UNTIL: &str = "outbox_deferred_until";

/// The collection entries are moved to when the relay gives up on them.
pub const PARKED: &str = "messaging_outbox_parked";

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

/// How many locks the documents of all collections share: enough that unrelated documents
/// rarely wait for each other, few enough to allocate once.
const LOCK_STRIPES: usize = 256;

static DOCUMENT_LOCKS: LazyLock<Vec<Mutex<()>>> =
    LazyLock::new(|| (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect());

/// Holds the in-process write lock of the document `id` of `collection` until the guard is
/// dropped (see the module documentation for why). Take it around each single-document write
/// to a collection the relay serves, never around two documents at once.
pub async fn lock_document<T: Send + Sync>(
    collection: &mongodb::Collection<T>,
    id: &Bson,
) -> MutexGuard<'static, ()> {
    let mut hasher = std::hash::DefaultHasher::new();
    collection.namespace().to_string().hash(&mut hasher);
    id.to_string().hash(&mut hasher);
    let stripe = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
    DOCUMENT_LOCKS[stripe].lock().await
}

/// Wakes the outbox relays of this process after a write that stored entries (an `insert_one`
/// with [`pending`], an `update_one` that `$set` an [`entry`]), so that they publish now rather
/// than at their next poll. Call it after the write succeeded; without the call the entries
/// are published at the next poll, later but never lost.
pub fn written() {
    // As `postgres::commit`: wakes the relays registered right now and stores no permit. A
    // relay registers before each batch, so one in the middle of a batch is woken too.
    super::WAKE.notify_waiters();
}

/// The outbox relay for MongoDB.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Starts the relay for `collections` of the service's database as one of the service's
    /// background tasks; it stops after its current batch when shutdown begins.
    pub async fn spawn(
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
        // Collections whose backlog has been counted at least once (see `relay_batch`).
        let mut counted = vec![false; collections.len()];
        while !shutdown.is_cancelled() {
            // Registered *before* the batch, as the PostgreSQL relay does: a write that lands
            // while the batch runs (too late for its find) still ends the wait below.
            let mut woken = pin!(super::WAKE.notified());
            woken.as_mut().enable();
            let mut outcome = Ok(false);
            for (collection, counted) in collections.iter().zip(&mut counted) {
                match relay_batch(&db, collection, &publisher, &config, counted).await {
                    Ok(full) => outcome = outcome.map(|more| more || full),
                    Err(err) => {
                        tracing::warn!(%collection, error = %err, "outbox relay failed");
                        outcome = Err(err);
                    }
                }
            }
            match outcome {
                Ok(true) => {
                    backoff = new_backoff();
                    continue;
                }
                Ok(false) => {
                    backoff = new_backoff();
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(config.poll_interval) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                // After a failure only the backoff: a stream of writes must not turn it into a
                // busy loop against a broker that is down.
                Err(_) => {
                    let delay = backoff.next().unwrap_or(config.max_backoff);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
}

/// Documents in `collection` with pending events.
fn has_pending() -> Document {
    doc! { FIELD: { "$exists": true, "$ne": {} } }
}

/// Documents with pending events that are not deferred.
fn due(now: bson::DateTime) -> Document {
    doc! {
        FIELD: { "$exists": true, "$ne": {} },
        "$or": [
            { DEFERRED_UNTIL: { "$exists": false } },
            { DEFERRED_UNTIL: { "$lte": now } },
        ],
    }
}

/// One pending entry, read from its document.
struct Pending {
    document: Bson,
    event_id: String,
    attempts: u32,
    event: Result<(String, Envelope), String>,
}

fn read_entry(document: &Bson, event_id: &str, entry: &Bson) -> Pending {
    let (attempts, event) = match entry {
        Bson::Document(entry) => {
            let attempts = entry
                .get_i32("attempts")
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            let event = match (entry.get_str("routing_key"), entry.get_str("envelope")) {
                (Ok(key), Ok(json)) => check_routing_key(key)
                    .and_then(|()| Ok(Envelope::from_slice(json.as_bytes())?))
                    .map(|envelope| (key.to_owned(), envelope))
                    .map_err(|err| format!("not an event: {err}")),
                _ => Err("not an event: no routing_key or envelope".to_owned()),
            };
            (attempts, event)
        }
        _ => (
            0,
            Err("not an event: the entry is not a document".to_owned()),
        ),
    };
    Pending {
        document: document.clone(),
        event_id: event_id.to_owned(),
        attempts,
        event,
    }
}

/// Publishes the pending events of up to `batch_size` due documents; `Ok(true)` when there may
/// be more. Errors (after settling what it could) when the broker failed.
///
/// Counts the backlog for its gauge (a second query over the collection) after a batch that
/// found documents, and once at the start (`counted` false). After a batch that found none the
/// count cannot have changed: only producers add entries (a write after the find is found by
/// the next batch, which counts it) and only this relay removes or defers them.
async fn relay_batch(
    db: &Database,
    collection: &str,
    publisher: &Publisher,
    config: &RelayConfig,
    counted: &mut bool,
) -> Result<bool, Error> {
    let documents = db.collection::<Document>(collection);
    let found: Vec<Document> = documents
        .find(due(bson::DateTime::now()))
        .projection(doc! { FIELD: 1 })
        .limit(config.batch_size)
        .await?
        .try_collect()
        .await?;

    let mut pending = Vec::new();
    let mut oldest: Option<bson::DateTime> = None;
    for document in &found {
        let (Some(id), Ok(outbox)) = (document.get("_id"), document.get_document(FIELD)) else {
            continue;
        };
        for (event_id, entry) in outbox {
            if let Some(created) = entry
                .as_document()
                .and_then(|e| e.get_datetime("created_at").ok())
            {
                oldest = Some(oldest.map_or(*created, |o| o.min(*created)));
            }
            pending.push(read_entry(id, event_id, entry));
        }
    }
    // UUIDv7 ids: creation order, per document and roughly across them.
    pending.sort_by(|a, b| a.event_id.cmp(&b.event_id));

    let (publishable, broken): (Vec<&Pending>, Vec<&Pending>) =
        pending.iter().partition(|p| p.event.is_ok());
    let events: Vec<(String, Envelope)> = publishable
        .iter()
        .filter_map(|p| p.event.as_ref().ok().cloned())
        .collect();
    let results = publisher.publish_events(&events).await;

    let mut broker_error = None;
    for pending in &broken {
        let reason = pending.event.as_ref().err().cloned().unwrap_or_default();
        park(db, &documents, collection, pending, &reason).await?;
    }
    for (pending, result) in publishable.into_iter().zip(results) {
        let entry = format!("{FIELD}.{}", pending.event_id);
        match result {
            Ok(()) => {
                let _lock = lock_document(&documents, &pending.document).await;
                documents
                    .update_one(
                        doc! { "_id": pending.document.clone() },
                        doc! { "$unset": { entry: "" } },
                    )
                    .await?;
            }
            Err(err) if err.blames_the_message() => {
                let attempts = pending.attempts + 1;
                if attempts >= config.max_attempts {
                    let reason = format!("refused {attempts} times: {err}");
                    park(db, &documents, collection, pending, &reason).await?;
                } else {
                    let pause = Duration::from_secs(1 << attempts.min(16)).min(config.max_backoff);
                    let until = bson::DateTime::from_millis(
                        bson::DateTime::now().timestamp_millis()
                            + i64::try_from(pause.as_millis()).unwrap_or(i64::MAX / 2),
                    );
                    let _lock = lock_document(&documents, &pending.document).await;
                    documents
                        .update_one(
                            doc! { "_id": pending.document.clone() },
                            doc! { "$set": {
                                format!("{entry}.attempts"): i32::try_from(attempts).unwrap_or(i32::MAX),
                                format!("{entry}.last_error"): err.to_string(),
                                DEFERRED_UNTIL: until,
                            } },
                        )
                        .await?;
                }
            }
            Err(err) => {
                broker_error.get_or_insert(err);
            }
        }
    }

    if !found.is_empty() || !*counted {
        let backlog = documents.count_documents(has_pending()).await?;
        metrics::gauge!("messaging_outbox_backlog", "store" => "mongodb", "collection" => collection.to_owned())
            .set(backlog as f64);
        *counted = true;
    }
    let age = oldest.map_or(0.0, |o| {
        (bson::DateTime::now().timestamp_millis() - o.timestamp_millis()) as f64 / 1000.0
    });
    metrics::gauge!("messaging_outbox_oldest_age_seconds", "store" => "mongodb", "collection" => collection.to_owned())
        .set(age);

    match broker_error {
        Some(err) => Err(err),
        None => Ok(i64::try_from(found.len()).unwrap_or(i64::MAX) >= config.batch_size),
    }
}

/// Copies the entry to [`PARKED`], then removes it from its document. A crash in between
/// leaves it in both: parked again (same `_id`, a no-op) on the next round.
async fn park(
    db: &Database,
    documents: &mongodb::Collection<Document>,
    collection: &str,
    pending: &Pending,
    reason: &str,
) -> Result<(), Error> {
    let path = format!("{FIELD}.{}", pending.event_id);
    let entry = documents
        .find_one(doc! { "_id": pending.document.clone() })
        .projection(doc! { &path: 1 })
        .await?
        .and_then(|d| d.get_document(FIELD).ok().cloned())
        .and_then(|outbox| outbox.get(&pending.event_id).cloned())
        .unwrap_or(Bson::Null);
    let record = doc! {
        "_id": format!("{collection}/{}", pending.event_id),
        "collection": collection,
        "document": pending.document.clone(),
        "event_id": &pending.event_id,
        "entry": entry,
        "reason": reason,
        "parked_at": bson::DateTime::now(),
    };
    match db.collection::<Document>(PARKED).insert_one(record).await {
        Ok(_) => {}
        Err(err) if crate::inbox::mongo::is_duplicate(&err) => {}
        Err(err) => return Err(err.into()),
    }
    let _lock = lock_document(documents, &pending.document).await;
    documents
        .update_one(
            doc! { "_id": pending.document.clone() },
            doc! { "$unset": { path: "" } },
        )
        .await?;
    tracing::error!(%collection, event_id = %pending.event_id, %reason, "outbox entry parked in {PARKED}");
    metrics::counter!("messaging_outbox_parked_total", "store" => "mongodb").increment(1);
    Ok(())
}
