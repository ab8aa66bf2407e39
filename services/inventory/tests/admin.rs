//! Stock administration over HTTP (administrators only, field-level problem+json), and the
//! stock events each change publishes through the outbox.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_events::inventory::{
    OutOfStock, StockLow, StockReleased, StockReplenished, StockReserved,
};
use shop_messaging::Event;
use support::{Stack, next_event};
use uuid::Uuid;

#[tokio::test]
async fn administrators_read_and_set_stock_everyone_else_is_refused() {
    let stack = Stack::start(&[]).await;
    let admin = stack.admin_token();
    let customer = stack.customer_token();
    let url = stack.inventory.url("/api/v1/inventory/desk");

    let anonymous = stack.inventory.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forbidden = stack
        .put_stock(&customer, "desk", json!({"available": 3}))
        .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let missing = stack
        .inventory
        .client
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let created = stack
        .put_stock(
            &admin,
            "desk",
            json!({"available": 3, "low_stock_threshold": 1}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::OK);
    let read: Value = stack
        .inventory
        .client
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        read,
        json!({"sku": "desk", "available": 3, "reserved": 0, "low_stock_threshold": 1})
    );
}

#[tokio::test]
async fn a_bad_stock_body_gets_field_level_problem_json() {
    let stack = Stack::start(&[]).await;
    let admin = stack.admin_token();
    let response = stack
        .put_stock(
            &admin,
            "desk",
            json!({"available": -1, "low_stock_threshold": "many"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["errors"],
        json!([
            {"field": "available", "message": "must be between 0 and 1000000000"},
            {"field": "low_stock_threshold", "message": "must be a whole number"},
        ])
    );
    let response = stack.put_stock(&admin, "desk", json!({})).await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["errors"],
        json!([{"field": "available", "message": "is required"}])
    );
    // Nothing was created by the refused requests.
    let read = stack
        .inventory
        .client
        .get(stack.inventory.url("/api/v1/inventory/desk"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_stock_change_publishes_its_event_with_the_new_level_and_version() {
    let stack = Stack::start(&[]).await;
    let tap = stack
        .tap(&[
            StockReserved::ROUTING_KEY,
            StockReleased::ROUTING_KEY,
            StockLow::ROUTING_KEY,
            OutOfStock::ROUTING_KEY,
            StockReplenished::ROUTING_KEY,
        ])
        .await;
    let admin = stack.admin_token();
    let put = |body: Value| stack.put_stock(&admin, "chair", body);
    assert_eq!(
        put(json!({"available": 6, "low_stock_threshold": 3}))
            .await
            .status(),
        StatusCode::OK
    );

    let (key, event) = next_event(&tap).await;
    assert_eq!(key, StockReplenished::ROUTING_KEY);
    let replenished: StockReplenished = event.data_as().unwrap();
    assert_eq!(
        (replenished.level.available, replenished.level.version),
        (6, 1)
    );

    // Reserving 4 of 6 crosses the threshold of 3: StockReserved, then StockLow.
    let order = Uuid::new_v4();
    stack.reserve(order, &[("chair", 4)]).await.unwrap();
    let (key, event) = next_event(&tap).await;
    assert_eq!(key, StockReserved::ROUTING_KEY);
    let reserved: StockReserved = event.data_as().unwrap();
    assert_eq!(reserved.order_id, order);
    assert_eq!(
        (
            reserved.levels[0].available,
            reserved.levels[0].reserved,
            reserved.levels[0].version
        ),
        (2, 4, 2)
    );
    let (key, event) = next_event(&tap).await;
    assert_eq!(key, StockLow::ROUTING_KEY);
    assert_eq!(event.data_as::<StockLow>().unwrap().threshold, 3);

    // Taking the last two: OutOfStock. Releasing the first order: StockReleased.
    stack
        .reserve(Uuid::new_v4(), &[("chair", 2)])
        .await
        .unwrap();
    assert_eq!(next_event(&tap).await.0, StockReserved::ROUTING_KEY);
    let (key, event) = next_event(&tap).await;
    assert_eq!(key, OutOfStock::ROUTING_KEY);
    assert_eq!(event.data_as::<OutOfStock>().unwrap().level.version, 3);
    stack.release(order).await.unwrap();
    let (key, event) = next_event(&tap).await;
    assert_eq!(key, StockReleased::ROUTING_KEY);
    let released: StockReleased = event.data_as().unwrap();
    assert_eq!(
        (released.levels[0].available, released.levels[0].version),
        (4, 4)
    );

    // Setting the value the row already has changes nothing and publishes nothing; the next
    // event is the one of the real change after it.
    assert_eq!(put(json!({"available": 4})).await.status(), StatusCode::OK);
    assert_eq!(put(json!({"available": 9})).await.status(), StatusCode::OK);
    let (key, event) = next_event(&tap).await;
    assert_eq!(key, StockReplenished::ROUTING_KEY);
    let level = event.data_as::<StockReplenished>().unwrap().level;
    assert_eq!((level.available, level.reserved, level.version), (9, 2, 5));
}
