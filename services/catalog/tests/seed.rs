//! The demo catalog: loaded at start when `CATALOG_SEED_DEMO=true`, and a second start over
//! the same database duplicates nothing — no product, no event.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::time::Duration;

use shop_events::catalog::ProductCreated;
use shop_messaging::{Envelope, Event, testing::Tap};
use support::{Issuer, catalog, get_json};

/// Every `ProductCreated` on `tap` until none arrives for a second.
async fn drain(tap: &Tap) -> Vec<ProductCreated> {
    let mut events = Vec::new();
    while let Some(message) = tap.next(Duration::from_secs(1)).await.unwrap() {
        let envelope = Envelope::from_slice(&message.data).unwrap();
        events.push(envelope.data_as().unwrap());
    }
    events
}

#[tokio::test]
async fn the_demo_catalog_is_loaded_once_however_often_the_service_starts() {
    let issuer = Issuer::start().await;
    // A queue bound before the first start, as inventory's is, sees every ProductCreated. The
    // tap's connection is the test's own, so its queue outlives both starts of the service.
    let amqp_url = shop_testkit::isolation::rabbitmq_vhost().await.unwrap();
    let tap = Tap::bind(&amqp_url, [ProductCreated::ROUTING_KEY])
        .await
        .unwrap();

    let first = catalog(
        &issuer,
        &[("CATALOG_SEED_DEMO", "true"), ("AMQP_URL", &amqp_url)],
    )
    .await;
    let page = get_json(&first, "/api/v1/products?limit=100").await;
    let items = page["items"].as_array().unwrap();
    assert!(items.len() >= 20, "{} products", items.len());
    let categories: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|p| p["category"].as_str().unwrap())
        .collect();
    assert!(categories.len() >= 5, "{categories:?}");
    let announced = drain(&tap).await;
    assert_eq!(announced.len(), items.len());
    let espresso = announced.iter().find(|e| e.sku == "COF-ESP-500").unwrap();
    assert_eq!(
        espresso.initial_stock,
        Some(120),
        "inventory's stock travels in the event"
    );

    let database = [
        ("MONGODB_URL", first.env["MONGODB_URL"].clone()),
        ("MONGODB_DATABASE", first.env["MONGODB_DATABASE"].clone()),
    ];
    first.stop().await.unwrap();
    let second = catalog(
        &issuer,
        &[
            ("CATALOG_SEED_DEMO", "true"),
            ("AMQP_URL", &amqp_url),
            (database[0].0, &database[0].1),
            (database[1].0, &database[1].1),
        ],
    )
    .await;
    let again = get_json(&second, "/api/v1/products?limit=100").await;
    assert_eq!(again["items"].as_array().unwrap().len(), items.len());
    assert!(drain(&tap).await.is_empty(), "no product announced twice");
}
