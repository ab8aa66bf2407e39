//! The MongoDB outbox and inbox against the real FerretDB (no multi-document transactions, no
//! change streams): events stored by the same single-document write as the state change.

mod support;

use std::time::Duration;

use mongodb::bson::{Document, doc};
use serde_json::json;
use shop_messaging::{
    inbox,
    outbox::{RelayConfig, mongo},
};
use shop_testkit::{BoxError, isolation};
use support::{ROUTING_KEY, Stack, event, eventually};

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
    let (stack, recorder) = Stack::consuming().await?;
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
            max_backoff: Duration::from_secs(1),
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
async fn a_unique_event_id_on_the_effect_document_makes_a_redelivery_a_no_op()
-> Result<(), BoxError> {
    let db = database().await?;
    let notifications = db.collection::<Document>("notifications");
    inbox::mongo::ensure_unique(&notifications, "event_id").await?;
    inbox::mongo::ensure_unique(&notifications, "event_id").await?; // idempotent

    let thing = event(json!({ "n": 1 }));
    let effect = doc! { "event_id": thing.id.to_string(), "text": "hello" };
    notifications.insert_one(effect.clone()).await?;
    let again = notifications
        .insert_one(effect)
        .await
        .expect_err("the same event id cannot be inserted twice");
    assert!(inbox::mongo::is_duplicate(&again), "{again}");
    assert_eq!(notifications.count_documents(doc! {}).await?, 1);
    Ok(())
}
