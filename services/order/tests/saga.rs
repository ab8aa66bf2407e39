//! The order saga end to end: order-service in-process with the real participants (catalog,
//! inventory, payment, and user-service for tokens), each on its own real stores.

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::*;

fn id(order: &Value) -> String {
    order["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn orders_end_confirmed_or_cancelled_with_stock_and_payments_exactly_right() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (plenty, plenty_sku) = world.product(1999, 10).await;
    let (scarce, scarce_sku) = world.product(500, 1).await;

    // Happy path: confirmed, captured once for the server's total, stock committed.
    let body = order_body(&[(&plenty, 2), (&scarce, 1)], APPROVES);
    let (status, placed) = place(http, &base, &ada, "happy", &body).await;
    assert_eq!(status, 202, "{placed}");
    assert_eq!(placed["status"], "PENDING");
    assert_eq!(
        placed["total"]["amount"],
        2 * 1999 + 500,
        "priced by the catalog"
    );
    let confirmed = settled(http, &base, &ada, &id(&placed)).await;
    assert_eq!(confirmed["status"], "CONFIRMED", "{confirmed}");
    let payments = world.payments(&ada, &id(&placed)).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0]["captured"]["amount"], 2 * 1999 + 500);
    assert_eq!(world.stock(&plenty_sku).await, (8, 0));
    assert_eq!(world.stock(&scarce_sku).await, (0, 0));

    // The same key and body: the same order again, nothing placed twice.
    let (status, again) = place(http, &base, &ada, "happy", &body).await;
    assert_eq!((status, id(&again)), (202, id(&placed)));
    // The same key with another body: refused.
    let (status, problem) = place(
        http,
        &base,
        &ada,
        "happy",
        &order_body(&[(&plenty, 3)], APPROVES),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");

    // Too late to cancel a confirmed order.
    let response = http
        .post(format!("{base}/api/v1/orders/{}/cancel", id(&placed)))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // Declined cards: cancelled with the reason, stock released, nothing captured.
    for (key, card, reason) in [
        ("declined", DECLINES, "payment_declined"),
        ("poor", INSUFFICIENT, "insufficient_funds"),
    ] {
        let (status, placed) =
            place(http, &base, &ada, key, &order_body(&[(&plenty, 1)], card)).await;
        assert_eq!(status, 202, "{placed}");
        let ended = settled(http, &base, &ada, &id(&placed)).await;
        assert_eq!(ended["status"], "CANCELLED", "{ended}");
        assert_eq!(ended["cancellation_reason"], reason);
        for payment in world.payments(&ada, &id(&placed)).await {
            assert_eq!(payment["captured"]["amount"], 0, "{payment}");
        }
        assert_eq!(world.stock(&plenty_sku).await, (8, 0), "{reason}");
    }

    // Out of stock: cancelled before any authorization.
    let (_, placed) = place(
        http,
        &base,
        &ada,
        "too-many",
        &order_body(&[(&scarce, 1)], APPROVES),
    )
    .await;
    let ended = settled(http, &base, &ada, &id(&placed)).await;
    assert_eq!(ended["cancellation_reason"], "out_of_stock", "{ended}");
    assert!(world.payments(&ada, &id(&placed)).await.is_empty());

    // Someone else's order does not exist for them; their list is empty; ours has 4.
    let bob = world.customer().await;
    let response = http
        .get(format!("{base}/api/v1/orders/{}", id(&placed)))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let list: Value = http
        .get(format!("{base}/api/v1/orders"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    let page: Value = http
        .get(format!("{base}/api/v1/orders?limit=3"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["items"][0]["id"], placed["id"], "newest first");
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest: Value = http
        .get(format!("{base}/api/v1/orders?limit=3&cursor={cursor}"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_cursor"], Value::Null);
}

#[tokio::test]
async fn many_orders_in_parallel_for_the_last_units_never_confirm_more_than_stock() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let (product, sku) = world.product(1000, 3).await;
    let buyer = world.customer().await;

    let placing = (0..8).map(|n| {
        let (http, base, buyer, product) = (&world.http, &base, &buyer, &product);
        async move {
            let (status, placed) = place(
                http,
                base,
                buyer,
                &format!("parallel-{n}"),
                &order_body(&[(product, 1)], APPROVES),
            )
            .await;
            assert_eq!(status, 202, "{placed}");
            settled(http, base, buyer, &id(&placed)).await
        }
    });
    let ended = futures::future::join_all(placing).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for order in &ended {
        let outcome = format!(
            "{} {}",
            order["status"].as_str().unwrap_or_default(),
            order["cancellation_reason"].as_str().unwrap_or_default()
        );
        *counts.entry(outcome).or_default() += 1;
    }
    assert_eq!(counts.get("CONFIRMED "), Some(&3), "{counts:?}");
    assert_eq!(counts.get("CANCELLED out_of_stock"), Some(&5), "{counts:?}");
    assert_eq!(world.stock(&sku).await, (0, 0));
}

#[tokio::test]
async fn a_slow_card_past_the_deadline_and_a_cancellation_end_consistently() {
    // The slow card takes 9 s; order-service waits 1 s per call and 6 s per saga, and looks
    // for late authorizations for 8 s after the last one it sent.
    let world = World::start(&[("SIMULATED_SLOW_CARD_DELAY_MS", "9000")]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(700, 5).await;

    let (_, slow) = place(
        http,
        &base,
        &ada,
        "slow",
        &order_body(&[(&product, 2)], SLOW),
    )
    .await;
    let (_, cancelled) = place(
        http,
        &base,
        &ada,
        "cancel-me",
        &order_body(&[(&product, 1)], SLOW),
    )
    .await;
    // While its authorization hangs, the customer cancels the second one.
    let response = http
        .post(format!("{base}/api/v1/orders/{}/cancel", id(&cancelled)))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let by_user = settled(http, &base, &ada, &id(&cancelled)).await;
    assert_eq!(
        by_user["cancellation_reason"], "cancelled_by_user",
        "{by_user}"
    );
    let timed_out = settled(http, &base, &ada, &id(&slow)).await;
    assert_eq!(timed_out["status"], "CANCELLED", "{timed_out}");
    assert_eq!(timed_out["cancellation_reason"], "timeout");

    // The authorizations that landed after the sagas gave up are voided; none is captured,
    // and all the stock is back.
    for order in [&slow, &cancelled] {
        let order_id = id(order);
        eventually("late authorizations voided", || {
            let (world, ada, order_id) = (&world, &ada, order_id.clone());
            async move {
                let payments = world.payments(ada, &order_id).await;
                payments
                    .iter()
                    .all(|p| p["state"] != "authorized" && p["captured"]["amount"] == 0)
                    .then_some(())
            }
        })
        .await;
    }
    assert_eq!(world.stock(&sku).await, (5, 0));
}

#[tokio::test]
async fn two_instances_on_one_database_end_every_order_once() {
    let world = World::start(&[]).await;
    let database = shop_testkit::isolation::postgres_database()
        .await
        .expect("a database");
    let mut env = world.order_env();
    env.push(("DATABASE_URL".into(), database));
    let first = shop_testkit::spawn_with::<order_service::OrderService>(env.clone())
        .await
        .expect("the first instance starts");
    let second = shop_testkit::spawn_with::<order_service::OrderService>(env)
        .await
        .expect("the second instance starts");
    let (product, sku) = world.product(250, 4).await;
    let buyer = world.customer().await;

    // Orders go to both; both sweepers look at every saga; each saga ends exactly once.
    let placing = (0..6).map(|n| {
        let base = if n % 2 == 0 {
            first.url("")
        } else {
            second.url("")
        };
        let (http, buyer, product) = (&world.http, &buyer, &product);
        async move {
            let (status, placed) = place(
                http,
                &base,
                buyer,
                &format!("two-{n}"),
                &order_body(&[(product, 1)], APPROVES),
            )
            .await;
            assert_eq!(status, 202, "{placed}");
            settled(http, &base, buyer, &id(&placed)).await
        }
    });
    let ended = futures::future::join_all(placing).await;
    let confirmed: Vec<&Value> = ended
        .iter()
        .filter(|o| o["status"] == "CONFIRMED")
        .collect();
    assert_eq!(confirmed.len(), 4, "{ended:?}");
    for order in &confirmed {
        let payments = world.payments(&buyer, &id(order)).await;
        assert_eq!(payments.len(), 1, "{payments:?}");
        assert_eq!(payments[0]["captured"]["amount"], 250);
    }
    assert_eq!(world.stock(&sku).await, (0, 0));
}

/// The driver writes the next step's attempt in the transaction that records the step before
/// (and `POST` writes the first one with the order), so a saga that goes straight through
/// updates its row once per step: Reserve → Authorize → CommitStock → Capture → Confirmed is
/// four updates. Writing each attempt on its own, as before, made it eight.
#[tokio::test]
async fn a_saga_that_goes_straight_through_writes_its_row_once_per_step() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let ada = world.customer().await;
    let (product, _) = world.product(1000, 5).await;

    let (status, placed) = place(
        &world.http,
        &base,
        &ada,
        "straight",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let ended = settled(&world.http, &base, &ada, &id(&placed)).await;
    assert_eq!(ended["status"], "CONFIRMED", "{ended}");

    // The service's own database (one per test): PostgreSQL's count of row updates of the
    // saga table. Backends report it within a second or so of their transactions.
    let pool = sqlx::PgPool::connect(&order.env["DATABASE_URL"])
        .await
        .expect("the order database");
    let updates = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'order_sagas'",
        )
        .fetch_one(&pool)
        .await
        .expect("table statistics")
    };
    eventually("the saga's updates reported", || async {
        (updates().await >= 4).then_some(())
    })
    .await;
    // Give any further update time to be reported too.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(updates().await, 4, "one update of the saga row per step");
}
