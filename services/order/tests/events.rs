//! The order's events reach the broker through the outbox: `OrderPlaced` when it is accepted,
//! then `OrderConfirmed` (items, total, owner) or `OrderCancelled` (reason) when its saga ends.

use crate::support;

use std::collections::HashMap;

use shop_events::order::{OrderCancelled, OrderConfirmed, OrderPlaced};
use shop_messaging::{Envelope, Event, testing::Tap};
use support::*;

#[tokio::test]
async fn placed_confirmed_and_cancelled_orders_publish_their_events() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let tap = Tap::bind(&order.env["AMQP_URL"], ["order.order.*"])
        .await
        .expect("a queue on the events exchange");

    let base = order.url("");
    let ada = world.customer().await;
    let (product, _) = world.product(1250, 5).await;
    let (_, good) = place(
        &world.http,
        &base,
        &ada,
        "good",
        &order_body(&[(&product, 2)], APPROVES),
    )
    .await;
    let (_, bad) = place(
        &world.http,
        &base,
        &ada,
        "bad",
        &order_body(&[(&product, 1)], DECLINES),
    )
    .await;

    let mut events: HashMap<String, Vec<Envelope>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while events.values().map(Vec::len).sum::<usize>() < 4 {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = tap.next(remaining).await.expect("get") else {
            panic!("events within {PATIENCE:?}: {events:?}");
        };
        let event = Envelope::from_slice(&message.data).expect("an envelope");
        assert_eq!(event.source, "order-service");
        events.entry(event.kind.clone()).or_default().push(event);
    }
    let placed: Vec<OrderPlaced> = events[OrderPlaced::kind()]
        .iter()
        .map(|e| e.data_as().expect("OrderPlaced"))
        .collect();
    assert_eq!(placed.len(), 2);
    let confirmed: OrderConfirmed = events[OrderConfirmed::kind()][0]
        .data_as()
        .expect("OrderConfirmed");
    assert_eq!(
        confirmed.order_id.to_string(),
        good["id"].as_str().unwrap_or_default()
    );
    assert_eq!(confirmed.total.amount, 2500);
    assert_eq!(confirmed.items[0].quantity, 2);
    assert_eq!(confirmed.items[0].unit_price.amount, 1250);
    let cancelled: OrderCancelled = events[OrderCancelled::kind()][0]
        .data_as()
        .expect("OrderCancelled");
    assert_eq!(
        cancelled.order_id.to_string(),
        bad["id"].as_str().unwrap_or_default()
    );
    assert_eq!(cancelled.reason, "payment_declined");
    assert_eq!(cancelled.user_id, confirmed.user_id);
}
