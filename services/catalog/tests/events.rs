//! Events in and out, through the real broker: product writes publish their events from the
//! document outbox; inventory's stock events keep `in_stock`, in any order, any number of times.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

mod support;

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, options::BasicPublishOptions,
};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use shop_events::{
    Money,
    catalog::{PriceChanged, ProductCreated, ProductUpdated},
    inventory::{OutOfStock, StockLevel, StockReleased, StockReplenished, StockReserved},
};
use shop_messaging::{Envelope, Event, envelope::CONTENT_TYPE, testing::Tap, topology};
use support::{Issuer, admin, catalog, created, database, eventually, get_json, patch, product};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(20);

async fn channel(app: &shop_testkit::TestApp) -> (Connection, Channel) {
    let connection = Connection::connect(&app.env["AMQP_URL"], ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology::declare_exchange(&channel).await.unwrap();
    (connection, channel)
}

#[tokio::test]
async fn product_writes_publish_their_events_through_the_document_outbox() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let tap = Tap::bind(&app.env["AMQP_URL"], ["catalog.product.*"])
        .await
        .unwrap();

    let admin = admin(&issuer);
    let product = created(&app, &admin, &product("Grinder", "kitchen", 4990)).await;
    let id = product["id"].as_str().unwrap();
    let sku = product["sku"].as_str().unwrap();
    patch(
        &app,
        &admin,
        id,
        None,
        &json!({"price": {"amount": 3990, "currency": "EUR"}}),
    )
    .await;

    let mut received: Vec<Envelope> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while received.len() < 3 {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = tap.next(remaining).await.unwrap() else {
            panic!("only {received:?} within {PATIENCE:?}");
        };
        received.push(Envelope::from_slice(&message.data).unwrap());
    }
    let eur = |amount| Money {
        amount,
        currency: "EUR".into(),
    };
    let of = |kind: &str| received.iter().find(|e| e.kind == kind).unwrap();
    assert_eq!(
        of(ProductCreated::kind())
            .data_as::<ProductCreated>()
            .unwrap(),
        ProductCreated {
            product_id: id.into(),
            sku: sku.into(),
            name: "Grinder".into(),
            category: "kitchen".into(),
            price: eur(4990),
            version: 1,
            initial_stock: None,
        }
    );
    assert_eq!(
        of(ProductUpdated::kind())
            .data_as::<ProductUpdated>()
            .unwrap()
            .version,
        2
    );
    let repriced: PriceChanged = of(PriceChanged::kind()).data_as().unwrap();
    assert_eq!(
        (repriced.old_price, repriced.new_price, repriced.version),
        (eur(4990), eur(3990), 2)
    );
    assert!(received.iter().all(|e| e.source == "catalog-service"));

    // Published means removed from the document: nothing is pending any more.
    let products = database(&app).await.collection::<Document>("products");
    eventually(PATIENCE, || async {
        let document = products
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .unwrap();
        document
            .get_document("outbox")
            .map_or(true, Document::is_empty)
    })
    .await
    .unwrap();
}

fn level(sku: &str, available: i64, version: i64) -> StockLevel {
    StockLevel {
        sku: sku.into(),
        available,
        reserved: 0,
        version,
    }
}

async fn publish<E: Event>(channel: &Channel, event: &E) -> Envelope {
    let envelope = event.envelope().unwrap();
    publish_envelope::<E>(channel, &envelope).await;
    envelope
}

async fn publish_envelope<E: Event>(channel: &Channel, envelope: &Envelope) {
    channel
        .basic_publish(
            topology::EXCHANGE.into(),
            E::ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &envelope.to_vec(),
            BasicProperties::default().with_content_type(CONTENT_TYPE.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The number in a Prometheus text line starting with `prefix`, 0 when absent.
async fn counter(app: &shop_testkit::TestApp, prefix: &str) -> f64 {
    let text = app.get("/metrics").await.unwrap().text().await.unwrap();
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn stock_events_keep_in_stock_by_the_newest_level_whatever_their_order_or_repetition() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let (_connection, channel) = channel(&app).await;
    let product = created(
        &app,
        &admin(&issuer),
        &product("Frother", "electronics", 6900),
    )
    .await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let sku = product["sku"].as_str().unwrap().to_owned();
    let other_sku = format!("NOT-IN-CATALOG-{}", Uuid::new_v4().simple());

    // Wait for the consumer's queue to be bound (it is not required for readiness).
    eventually(PATIENCE, || async {
        let body: Value = app.get("/readyz").await.unwrap().json().await.unwrap();
        body["checks"]["consumer:catalog.events"] == "up"
    })
    .await
    .unwrap();

    // The newest level first (available), then older ones saying "out of stock", the
    // newest again (a redelivery with the same event id), and a level for an unknown sku.
    let ignored_before = counter(&app, "catalog_stock_levels_total{outcome=\"ignored\"}").await;
    let newest = publish(
        &channel,
        &StockReleased {
            order_id: Uuid::new_v4(),
            reason: "cancelled".into(),
            levels: vec![level(&sku, 3, 4), level(&other_sku, 1, 1)],
        },
    )
    .await;
    eventually(PATIENCE, || async {
        get_json(&app, &path).await["in_stock"] == true
    })
    .await
    .unwrap();
    publish(
        &channel,
        &StockReserved {
            order_id: Uuid::new_v4(),
            levels: vec![level(&sku, 0, 3)],
        },
    )
    .await;
    publish(
        &channel,
        &OutOfStock {
            level: level(&sku, 0, 2),
        },
    )
    .await;
    publish(
        &channel,
        &StockReplenished {
            level: level(&sku, 5, 1),
        },
    )
    .await;
    publish_envelope::<StockReleased>(&channel, &newest).await;
    // Each level that did not change the model was applied and matched nothing: the unknown
    // sku's, the three late ones, and both of the redelivery's (no inbox stands before the
    // handler: the stored version decides).
    eventually(PATIENCE, || async {
        counter(&app, "catalog_stock_levels_total{outcome=\"ignored\"}").await - ignored_before
            >= 6.0
    })
    .await
    .unwrap();
    let current = get_json(&app, &path).await;
    assert_eq!(current["in_stock"], true);
    assert_eq!(current["version"], 1, "stock is not a product version");

    // A newer level wins again.
    publish(
        &channel,
        &OutOfStock {
            level: level(&sku, 0, 5),
        },
    )
    .await;
    eventually(PATIENCE, || async {
        get_json(&app, &path).await["in_stock"] == false
    })
    .await
    .unwrap();
}

/// The `ProductUpdated` events for `product_id` that arrive on `tap` within `wait`; returns
/// as soon as there is one.
async fn updates_of(tap: &Tap, product_id: &str, wait: Duration) -> Vec<ProductUpdated> {
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = tap.next(remaining).await.unwrap() else {
            return found;
        };
        let envelope = Envelope::from_slice(&message.data).unwrap();
        let event: ProductUpdated = envelope.data_as().unwrap();
        if event.product_id == product_id {
            found.push(event);
            return found;
        }
    }
}

#[tokio::test]
async fn a_stock_level_that_flips_in_stock_publishes_product_updated_and_one_that_does_not_publishes_nothing()
 {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let (_connection, channel) = channel(&app).await;
    let tap = Tap::bind(&app.env["AMQP_URL"], [ProductUpdated::ROUTING_KEY])
        .await
        .unwrap();
    let product = created(&app, &admin(&issuer), &product("Scale", "kitchen", 2900)).await;
    let id = product["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/products/{id}");
    let sku = product["sku"].as_str().unwrap().to_owned();
    assert_eq!(product["in_stock"], false, "a new product has no stock yet");
    eventually(PATIENCE, || async {
        let body: Value = app.get("/readyz").await.unwrap().json().await.unwrap();
        body["checks"]["consumer:catalog.events"] == "up"
    })
    .await
    .unwrap();
    let applied = async || counter(&app, "catalog_stock_levels_total{outcome=\"applied\"}").await;
    let before = applied().await;

    // Out of stock → in stock: one ProductUpdated, so product-read caches forget the product.
    publish(
        &channel,
        &StockReplenished {
            level: level(&sku, 5, 1),
        },
    )
    .await;
    let updates = updates_of(&tap, &id, PATIENCE).await;
    assert!(
        !updates.is_empty(),
        "no ProductUpdated after in_stock flipped to true"
    );
    assert_eq!(get_json(&app, &path).await["in_stock"], true);

    // In stock → still in stock (5 → 3): applied, and nothing is published.
    publish(
        &channel,
        &StockReserved {
            order_id: Uuid::new_v4(),
            levels: vec![level(&sku, 3, 2)],
        },
    )
    .await;
    eventually(PATIENCE, || async { applied().await - before >= 2.0 })
        .await
        .unwrap();
    assert_eq!(
        updates_of(&tap, &id, Duration::from_secs(3)).await.len(),
        0,
        "a level that leaves in_stock as it was published an event"
    );

    // In stock → out of stock: one more.
    publish(
        &channel,
        &OutOfStock {
            level: level(&sku, 0, 3),
        },
    )
    .await;
    eventually(PATIENCE, || async {
        get_json(&app, &path).await["in_stock"] == false
    })
    .await
    .unwrap();
    assert!(
        !updates_of(&tap, &id, PATIENCE).await.is_empty(),
        "no ProductUpdated after in_stock flipped to false"
    );
}
