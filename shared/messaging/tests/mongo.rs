//! The MongoDB outbox and consumer against the real FerretDB (no multi-document transactions,
//! no change streams): events stored by the same single-document write as the state change,
//! and redeliveries absorbed by the inbox collection and the handler's own idempotent write.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mongodb::bson::{Document, doc};
use serde_json::json;
use shop_messaging::{
    Consumer, ConsumerStatus, Envelope, HandlerError, Publisher, Received,
    consumer::mongo::{COLLECTION as INBOX, Handle},
    inbox,
    outbox::{RelayConfig, mongo},
};
use shop_testkit::{BoxError, isolation};
use support::{ROUTING_KEY, Stack, Thing, event, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

async fn database() -> Result<mongodb::Database, BoxError> {
    let (url, name) = isolation::mongo_database().await?;
    Ok(mongodb::Client::with_uri_str(&url).await?.database(&name))
}

async fn pending_in(products: &mongodb::Collection<Document>, id: &str) -> Result<usize, BoxError> {
    let product = products
        .find_one(doc! { "_id": id })
        .await?
        .ok_or("no such product")?;
    Ok(product.get_document(mongo::FIELD).map_or(0, Document::len))
}

#[tokio::test]
async fn events_written_with_the_document_are_relayed_and_then_removed_from_it()
-> Result<(), BoxError> {
    let (stack, recorder, _status) = Stack::consuming().await?;
    let db = database().await?;
    let products = db.collection::<Document>("products");

    // Created: the document and its event are one insert.
    let created = event(json!({ "n": 1 }));
    products
        .insert_one(doc! {
            "_id": "p-1",
            "price": 1000,
            mongo::FIELD: mongo::pending([(ROUTING_KEY, &created)])?,
        })
        .await?;
    // Changed while the broker is unreachable: the state change and its event are one update.
    stack.proxy.cut();
    let repriced = event(json!({ "n": 2 }));
    let mut set = doc! { "price": 1200 };
    set.insert(
        mongo::path(&repriced),
        mongo::entry(ROUTING_KEY, &repriced)?,
    );
    products
        .update_one(doc! { "_id": "p-1" }, doc! { "$set": set })
        .await?;

    stack.tasks.spawn(mongo::Relay::run(
        db.clone(),
        stack.amqp.clone(),
        vec!["products".to_owned()],
        RelayConfig {
            batch_size: 10,
            poll_interval: Duration::from_millis(200),
            ..Stack::relay_config()
        },
        stack.shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pending_in(&products, "p-1").await?,
        2,
        "kept while the broker is away"
    );
    assert!(recorder.ids().is_empty());

    stack.proxy.restore();
    for thing in [&created, &repriced] {
        eventually(PATIENCE, || async {
            stack.effects(thing.id).await.unwrap_or(0) == 1
        })
        .await?;
    }
    eventually(PATIENCE, || async {
        pending_in(&products, "p-1").await.ok() == Some(0)
    })
    .await?;
    let product = products
        .find_one(doc! { "_id": "p-1" })
        .await?
        .ok_or("no product")?;
    assert_eq!(
        product.get_i32("price")?,
        1200,
        "the relay touches only the outbox"
    );
    Ok(())
}

#[tokio::test]
async fn a_write_wakes_the_relay_at_once_and_without_the_wake_it_waits_for_its_poll()
-> Result<(), BoxError> {
    let (stack, _recorder, _status) = Stack::consuming().await?;
    let db = database().await?;
    let products = db.collection::<Document>("products");
    // A poll ten minutes apart: within this test only a wake makes the relay look again.
    stack.tasks.spawn(mongo::Relay::run(
        db.clone(),
        stack.amqp.clone(),
        vec!["products".to_owned()],
        RelayConfig {
            poll_interval: Duration::from_secs(600),
            ..Stack::relay_config()
        },
        stack.shutdown.clone(),
    ));
    // Its first look, at start, finds nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Written without the wake: nothing is published (the poll is the only trigger left).
    let unannounced = event(json!({ "n": 1 }));
    products
        .insert_one(doc! {
            "_id": "p-1",
            mongo::FIELD: mongo::pending([(ROUTING_KEY, &unannounced)])?,
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.effects(unannounced.id).await?, 0, "published unwoken");

    // Written and announced: published at once, and the relay takes the earlier entry along.
    let announced = event(json!({ "n": 2 }));
    products
        .insert_one(doc! {
            "_id": "p-2",
            mongo::FIELD: mongo::pending([(ROUTING_KEY, &announced)])?,
        })
        .await?;
    mongo::written();
    for thing in [&announced, &unannounced] {
        eventually(Duration::from_secs(10), || async {
            stack.effects(thing.id).await.unwrap_or(0) == 1
        })
        .await?;
    }
    Ok(())
}

/// A MongoDB handler whose effect is one notification per event, made idempotent by a unique
/// index on the event id; it counts its calls.
#[derive(Clone)]
struct Notify {
    notifications: mongodb::Collection<Document>,
    calls: Arc<AtomicUsize>,
}

impl Handle<Thing> for Notify {
    async fn handle(&self, event: Received<Thing>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let notification = doc! { "event_id": event.id().to_string(), "text": "hello" };
        match self.notifications.insert_one(notification).await {
            Ok(_) => Ok(()),
            Err(err) if inbox::mongo::is_duplicate(&err) => Ok(()), // done before
            Err(err) => Err(err.into()),
        }
    }
}

async fn mongo_consumer(
    stack: &Stack,
    db: &mongodb::Database,
    retention: Duration,
) -> Result<(Notify, ConsumerStatus), BoxError> {
    let notify = Notify {
        notifications: db.collection("notifications"),
        calls: Arc::default(),
    };
    inbox::mongo::ensure_unique(&notify.notifications, "event_id").await?;
    let status = Consumer::mongo("test", db.clone())
        .on::<Thing>(notify.clone())
        .inbox_retention(retention, Duration::from_millis(200))
        .start(
            stack.amqp.clone(),
            &stack.readiness,
            &stack.tasks,
            stack.shutdown.clone(),
        )
        .await?;
    let attached = status.clone();
    eventually(PATIENCE, || {
        let attached = attached.clone();
        async move { attached.is_attached() }
    })
    .await?;
    Ok((notify, status))
}

async fn publish(stack: &Stack, thing: &Envelope) -> Result<(), BoxError> {
    let results = Publisher::new(stack.amqp.clone())
        .publish_events(&[(ROUTING_KEY.to_owned(), thing.clone())])
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

#[tokio::test]
async fn redeliveries_reach_a_mongodb_handler_at_most_when_the_inbox_missed_them_and_change_nothing()
-> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let db = database().await?;
    let (notify, status) = mongo_consumer(&stack, &db, Duration::from_secs(3600)).await?;

    let thing = event(json!({ "n": 1 }));
    publish(&stack, &thing).await?;
    eventually(PATIENCE, || async { status.settled("handled") == 1 }).await?;

    // A duplicate publish: the inbox has the id, the handler is not called.
    publish(&stack, &thing).await?;
    eventually(PATIENCE, || async { status.settled("duplicate") == 1 }).await?;
    assert_eq!(notify.calls.load(Ordering::SeqCst), 1);

    // A crash after the handler's write but before the inbox record: the record is missing,
    // the redelivery reaches the handler, and its own unique index makes it a no-op.
    db.collection::<Document>(INBOX)
        .delete_many(doc! { "event_id": thing.id.to_string() })
        .await?;
    publish(&stack, &thing).await?;
    eventually(PATIENCE, || async { status.settled("handled") == 2 }).await?;
    assert_eq!(notify.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        notify
            .notifications
            .count_documents(doc! { "event_id": thing.id.to_string() })
            .await?,
        1,
        "three deliveries, one effect"
    );
    Ok(())
}

#[tokio::test]
async fn the_mongodb_inbox_is_pruned_on_a_schedule() -> Result<(), BoxError> {
    let stack = Stack::new().await?;
    let db = database().await?;
    let (_notify, status) = mongo_consumer(&stack, &db, Duration::ZERO).await?;
    let thing = event(json!({ "n": 1 }));
    publish(&stack, &thing).await?;
    eventually(PATIENCE, || async { status.settled("handled") == 1 }).await?;
    let records = db.collection::<Document>(INBOX);
    eventually(PATIENCE, || async {
        records.count_documents(doc! {}).await.ok() == Some(0)
    })
    .await?;
    Ok(())
}
