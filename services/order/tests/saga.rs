//! The order saga end to end: order-service in-process with the real participants (catalog,
//! inventory, payment, and user-service for tokens), each on its own real stores.

use crate::support;

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
        let payment = world.payment(&ada, &id(&placed)).await;
        assert_eq!(payment["state"], "DECLINED", "{payment}");
        assert_eq!(payment["captured"]["amount"], 0, "{payment}");
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
    // While its authorization hangs (payment-service has it: the payment exists, PENDING),
    // the customer cancels the second one.
    eventually(
        "the second order's Authorize reached payment-service",
        || {
            let (world, ada, order_id) = (&world, &ada, id(&cancelled));
            async move {
                let payments = world.payments(ada, &order_id).await;
                (payments.len() == 1).then_some(())
            }
        },
    )
    .await;
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

    // Each order's payment exists (its Authorize reached payment-service) and ends VOIDED:
    // whether the approval landed before or after the saga's Void, no hold outlives the order.
    // Nothing is captured, and all the stock is back.
    for order in [&slow, &cancelled] {
        let order_id = id(order);
        let payment = eventually("the payment voided", || {
            let (world, ada, order_id) = (&world, &ada, order_id.clone());
            async move {
                let payment = world.payment(ada, &order_id).await;
                (payment["state"] == "VOIDED").then_some(payment)
            }
        })
        .await;
        assert_eq!(payment["captured"]["amount"], 0, "{payment}");
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

/// PostgreSQL's count `column` (an expression over `pg_stat_user_tables`) for `table` in the
/// service's own database (one per test). Backends report their counts within a second or so
/// of their transactions, so callers wait for a count to arrive before they compare.
async fn table_stat(pool: &sqlx::PgPool, column: &'static str, table: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(&format!(
        "SELECT {column} FROM pg_stat_user_tables WHERE relname = $1"
    ))
    .bind(table)
    .fetch_one(pool)
    .await
    .expect("table statistics")
}

/// The driver writes the next step's attempt in the transaction that records the step before
/// (and `POST` writes the first one with the order), and the pivot's success rides with the
/// capture's answer (`Step::records_success_first`), so a saga that goes straight through
/// updates its row three times: after Reserve, after Authorize, and after Capture (with
/// CommitStock, → Confirmed). Writing each attempt on its own, as before, made it eight;
/// recording the pivot on its own made it four.
#[tokio::test]
async fn a_saga_that_goes_straight_through_writes_its_row_three_times() {
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
    let updates = || table_stat(&pool, "n_tup_upd", "order_sagas");
    eventually("the saga's updates reported", || async {
        (updates().await >= 3).then_some(())
    })
    .await;
    // Give any further update time to be reported too.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        updates().await,
        3,
        "one update of the saga row per step, the pivot's with the capture's"
    );
}

/// `POST /orders` answers from the row its insert returns, and hands the saga's first run
/// what it wrote: neither reads the order or its lines back. Read from PostgreSQL's own count
/// of scans per table (sequential and by index) in the service's database: the whole order,
/// placed and driven to `CONFIRMED`, reads `order_lines` once (for the `OrderConfirmed`
/// event), the card row only to delete it, and `orders` only to check and update it. Reading
/// back as before made it four, three and nine.
#[tokio::test]
async fn placing_an_order_reads_back_nothing_it_has_just_written() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let ada = world.customer().await;
    let (product, _) = world.product(1000, 5).await;
    let pool = sqlx::PgPool::connect(&order.env["DATABASE_URL"])
        .await
        .expect("the order database");
    let scans = |table: &'static str| {
        table_stat(
            &pool,
            "coalesce(seq_scan, 0) + coalesce(idx_scan, 0)",
            table,
        )
    };
    // Scans made while the service started (migrations, the sweeper's first looks), reported
    // once its backends flushed their statistics.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (orders_before, lines_before) = (scans("orders").await, scans("order_lines").await);
    let cards_before = scans("order_cards").await;

    let (status, placed) = place(
        &world.http,
        &base,
        &ada,
        "read-nothing-back",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    assert_eq!(placed["status"], "PENDING", "{placed}");
    assert_eq!(placed["items"][0]["quantity"], 1, "{placed}");
    assert_eq!(placed["total"]["amount"], 1000, "{placed}");
    let order_id: uuid::Uuid = id(&placed).parse().expect("a uuid");
    // Waited for on the saga row, which the counted tables do not include.
    eventually("the saga confirmed", || async {
        let step: String = sqlx::query_scalar("SELECT step FROM order_sagas WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .expect("the saga row");
        (step == "confirmed").then_some(())
    })
    .await;
    eventually("the scans reported", || async {
        (scans("order_lines").await > lines_before).then_some(())
    })
    .await;
    // Give any further scan time to be reported too.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        scans("order_lines").await - lines_before,
        1,
        "the lines are read once, for the confirmation event"
    );
    assert_eq!(
        scans("orders").await - orders_before,
        7,
        "the orders row: the key look-up and the insert's conflict check, the foreign-key \
         checks of the lines, the saga and the card, the card's last digits, the final status"
    );
    assert_eq!(
        scans("order_cards").await - cards_before,
        1,
        "the card row is deleted once, when the authorization answered, and never read"
    );
}

#[tokio::test]
async fn the_same_key_twice_at_once_places_one_order_and_another_customer_gets_their_own() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let http = &world.http;
    let (product, sku) = world.product(400, 10).await;
    let (ada, bob) = (world.customer().await, world.customer().await);
    let body = order_body(&[(&product, 1)], APPROVES);

    // Both requests are priced concurrently; one INSERT wins, the other answers with its order.
    let (first, second) = tokio::join!(
        place(http, &base, &ada, "same-key", &body),
        place(http, &base, &ada, "same-key", &body),
    );
    assert_eq!((first.0, second.0), (202, 202), "{first:?} {second:?}");
    assert_eq!(id(&first.1), id(&second.1), "one order for one key");
    // The key is the customer's own: another customer's identical request is another order.
    let (status, bobs) = place(http, &base, &bob, "same-key", &body).await;
    assert_eq!(status, 202, "{bobs}");
    assert_ne!(id(&bobs), id(&first.1));

    for (token, order) in [(&ada, &first.1), (&bob, &bobs)] {
        let ended = settled(http, &base, token, &id(order)).await;
        assert_eq!(ended["status"], "CONFIRMED", "{ended}");
    }
    let listed: Value = http
        .get(format!("{base}/api/v1/orders"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(world.stock(&sku).await, (8, 0), "two orders, one unit each");
}

#[tokio::test]
async fn a_free_order_is_refused_at_placement_and_reserves_nothing() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let ada = world.customer().await;
    let (free, sku) = world.product(0, 3).await;
    let (status, problem) = place(
        &world.http,
        &base,
        &ada,
        "free",
        &order_body(&[(&free, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "items", "{problem}");
    assert_eq!(world.stock(&sku).await, (3, 0));
}

/// Admin calls to order-service's operator API: (status, body).
async fn admin(world: &World, method: reqwest::Method, url: String) -> (u16, Value) {
    let response = world
        .http
        .request(method, url)
        .bearer_auth(&world.admin)
        // the operator API: not part of the public document (the gateway does not route it)
        .with_extension(shop_testkit::contract::Unchecked)
        .send()
        .await
        .expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_refused_capture_parks_the_saga_for_an_operator_instead_of_looping() {
    let world = World::start(&[]).await;
    let order = world.order_service().await;
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(900, 4).await;

    let (status, placed) = place(
        http,
        &base,
        &ada,
        "refused-capture",
        &order_body(&[(&product, 1)], CAPTURE_REFUSED),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let order_id = id(&placed);

    // Parked on the capture, with payment's reason, visible to operators (and only to them).
    let parked = eventually("the saga parked", || {
        let (world, url, order_id) = (&world, order.url("/api/v1/admin/sagas/parked"), &order_id);
        async move {
            let (status, body) = admin(world, reqwest::Method::GET, url).await;
            assert_eq!(status, 200, "{body}");
            body["items"]
                .as_array()?
                .iter()
                .find(|saga| saga["order_id"] == order_id.as_str())
                .cloned()
        }
    })
    .await;
    assert_eq!(parked["step"], "capture", "{parked}");
    let why = parked["parked_reason"].as_str().unwrap_or_default();
    assert!(why.contains("authorization_expired"), "{parked}");
    let (status, _) = place_as(http, &order.url("/api/v1/admin/sagas/parked"), &ada).await;
    assert_eq!(status, 403, "customers do not see the operator API");

    // Still PENDING (stock committed, nothing captured); cancelling is too late; the gauge
    // counts it; and it stays put: nothing retries a parked saga on its own.
    let shown = order_of(http, &base, &ada, &order_id).await;
    assert_eq!(shown["status"], "PENDING", "{shown}");
    assert_eq!(world.stock(&sku).await, (3, 0));
    let payment = world.payment(&ada, &order_id).await;
    assert_eq!(payment["captured"]["amount"], 0, "{payment}");
    // The process-wide registry is shared by every test's services here, so the check is on
    // the counter only this test moves (the gauge is checked by deploy/check's alert test).
    let metrics = order.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("order_sagas_parked_total{step=\"capture\"}")),
        "the parked counter: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("order_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let attempts = parked["attempts"].clone();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, again) = admin(
        &world,
        reqwest::Method::GET,
        order.url("/api/v1/admin/sagas/parked"),
    )
    .await;
    assert_eq!(
        again["items"][0]["attempts"], attempts,
        "no retries while parked: {again}"
    );

    // An operator resumes it: the capture is tried again, refused again, parked again.
    let resume = order.url(&format!("/api/v1/admin/sagas/{order_id}/resume"));
    let (status, resumed) = admin(&world, reqwest::Method::POST, resume.clone()).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["parked_at"], Value::Null);
    eventually("parked again after the resumed capture was refused", || {
        let (world, url) = (&world, order.url("/api/v1/admin/sagas/parked"));
        async move {
            let (_, body) = admin(world, reqwest::Method::GET, url).await;
            let saga = body["items"].as_array()?.first()?.clone();
            (saga["parked_at"] != Value::Null && saga["attempts"] == 1).then_some(())
        }
    })
    .await;
    // Resuming what is not parked is refused; an unknown saga does not exist.
    let confirmed = {
        let (_, placed) = place(
            http,
            &base,
            &ada,
            "fine",
            &order_body(&[(&product, 1)], APPROVES),
        )
        .await;
        settled(http, &base, &ada, &id(&placed)).await
    };
    let (status, _) = admin(
        &world,
        reqwest::Method::POST,
        order.url(&format!("/api/v1/admin/sagas/{}/resume", id(&confirmed))),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = admin(
        &world,
        reqwest::Method::POST,
        order.url(&format!(
            "/api/v1/admin/sagas/{}/resume",
            uuid::Uuid::now_v7()
        )),
    )
    .await;
    assert_eq!(status, 404);
}

/// GET as a customer: (status, body).
async fn place_as(http: &shop_testkit::contract::Client, url: &str, token: &str) -> (u16, Value) {
    let response = http
        .get(url)
        .bearer_auth(token)
        // used on the operator API, which the public document does not describe
        .with_extension(shop_testkit::contract::Unchecked)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_provider_that_never_answers_or_loses_the_approval_leaves_no_hold_on_a_cancelled_order() {
    // Short provider timeout so payment-service gives up on the call quickly.
    let world = World::start(&[
        ("PROVIDER_TIMEOUT_MS", "1500"),
        ("RECONCILE_INTERVAL_MS", "300"),
    ])
    .await;
    let order = world.order_service().await;
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(650, 6).await;

    for (key, card) in [
        ("never-answers", PROVIDER_TIMES_OUT),
        ("answer-lost", ANSWER_LOST),
    ] {
        let (status, placed) =
            place(http, &base, &ada, key, &order_body(&[(&product, 1)], card)).await;
        assert_eq!(status, 202, "{placed}");
        let ended = settled(http, &base, &ada, &id(&placed)).await;
        let payment = eventually("the payment settled", || {
            let (world, ada, order_id) = (&world, &ada, id(&placed));
            async move {
                let payment = world.payment(ada, &order_id).await;
                (payment["state"] != "PENDING").then_some(payment)
            }
        })
        .await;
        // A provider that never answers cannot have approved anything a retry could replay.
        if card == PROVIDER_TIMES_OUT {
            assert_eq!(ended["status"], "CANCELLED", "{key}: {ended}");
        }
        match ended["status"].as_str() {
            // The provider's deduplication may give a retry the lost answer: then it is one
            // ordinary confirmed order, captured once.
            Some("CONFIRMED") => {
                assert_eq!(payment["state"], "CAPTURED", "{key}: {payment}");
                assert_eq!(payment["captured"]["amount"], 650, "{key}: {payment}");
            }
            _ => {
                assert_eq!(ended["status"], "CANCELLED", "{key}: {ended}");
                assert_eq!(ended["cancellation_reason"], "timeout", "{key}: {ended}");
                assert_eq!(
                    payment["state"], "VOIDED",
                    "{key}: no hold on a cancelled order: {payment}"
                );
                assert_eq!(payment["captured"]["amount"], 0, "{key}: {payment}");
            }
        }
    }
    // Whatever happened, every unit is either sold or back.
    let (available, reserved) = world.stock(&sku).await;
    assert_eq!(reserved, 0);
    assert!(available >= 4, "{available}");
}

/// order-service's variables for `world` on a database and a vhost of their own (for tests that
/// start their own instances), with those two URLs.
async fn own_stores(world: &World) -> (Vec<(String, String)>, String, String) {
    let database = shop_testkit::isolation::postgres_database()
        .await
        .expect("a database");
    let amqp = shop_testkit::isolation::rabbitmq_vhost()
        .await
        .expect("a vhost");
    let mut env = world.order_env();
    env.push(("DATABASE_URL".into(), database.clone()));
    env.push(("AMQP_URL".into(), amqp.clone()));
    (env, database, amqp)
}

/// The `OrderConfirmed` events of `order_id` the tap receives until 4 s pass without one.
async fn confirmations_of(tap: &shop_messaging::testing::Tap, order_id: &str) -> usize {
    let mut confirmations = 0;
    while let Some(_event) = tap
        .next_where(std::time::Duration::from_secs(4), |envelope| {
            envelope.data["orderId"] == order_id
        })
        .await
        .expect("the tap")
    {
        confirmations += 1;
    }
    confirmations
}

#[tokio::test]
async fn an_instance_that_stalls_past_its_lease_is_taken_over_and_its_late_write_changes_nothing() {
    let world = World::start(&[]).await;
    let (env, database, amqp) = own_stores(&world).await;
    let tap = shop_messaging::testing::Tap::bind(&amqp, ["order.order.confirmed"])
        .await
        .expect("a tap on the order events");
    // The first instance pauses (twice its 4 s lease) after inventory reserved, before it
    // records that; the second one's sweeper must take the saga over and finish it.
    let mut stalling = env.clone();
    stalling.push(("ORDER_STALL_BEFORE_RECORDING".into(), "reserve".into()));
    let first = shop_testkit::spawn_with::<order_service::OrderService>(stalling)
        .await
        .expect("the stalling instance starts");
    let _second = shop_testkit::spawn_with::<order_service::OrderService>(env)
        .await
        .expect("the second instance starts");
    let (product, sku) = world.product(300, 3).await;
    let buyer = world.customer().await;
    let http = &world.http;
    let (status, placed) = place(
        http,
        &first.url(""),
        &buyer,
        "takeover",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let started = std::time::Instant::now();
    let ended = settled(http, &first.url(""), &buyer, &id(&placed)).await;
    assert_eq!(ended["status"], "CONFIRMED", "{ended}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "finished while the first instance was still stalled: by the second"
    );
    // Let the stalled instance wake up (8 s after it stalled) and try to record what it
    // learned long ago; then wait for anything it might have published.
    tokio::time::sleep(std::time::Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let order_id = id(&placed);
    let confirmations = confirmations_of(&tap, &order_id).await;
    assert_eq!(confirmations, 1, "one OrderConfirmed, not one per driver");
    let pool = sqlx::PgPool::connect(&database)
        .await
        .expect("the database");
    let step: String = sqlx::query_scalar("SELECT step FROM order_sagas WHERE order_id = $1::uuid")
        .bind(&order_id)
        .fetch_one(&pool)
        .await
        .expect("the saga row");
    assert_eq!(step, "confirmed", "the stale instance moved the saga back");
    let payment = world.payment(&buyer, &id(&placed)).await;
    assert_eq!(payment["captured"]["amount"], 300, "{payment}");
    assert_eq!(world.stock(&sku).await, (2, 0));
}

#[tokio::test]
async fn placing_beyond_the_sagas_an_instance_drives_answers_503_with_retry_after() {
    let world = World::start(&[]).await;
    let mut env = world.order_env();
    env.push(("ORDER_MAX_IN_FLIGHT".into(), "1".into()));
    let order = shop_testkit::spawn_with::<order_service::OrderService>(env)
        .await
        .expect("order-service starts");
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, _) = world.product(100, 5).await;
    // The slow card keeps the one slot busy for at least one call's deadline (1 s).
    let (status, slow) = place(
        http,
        &base,
        &ada,
        "busy",
        &order_body(&[(&product, 1)], SLOW),
    )
    .await;
    assert_eq!(status, 202, "{slow}");
    let response = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&ada)
        .header("Idempotency-Key", "waits")
        .json(&order_body(&[(&product, 1)], APPROVES))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Nothing was stored: once the slot is free, the same request places the order.
    settled(http, &base, &ada, &id(&slow)).await;
    let (status, placed) = place(
        http,
        &base,
        &ada,
        "waits",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    assert_eq!(
        settled(http, &base, &ada, &id(&placed)).await["status"],
        "CONFIRMED"
    );
}

/// One instance alone: its run stalls past its lease, and its *own* sweeper takes the saga
/// over. The lease names the run, not the instance, so the takeover leases the saga to a new
/// owner; were the owner the instance's id, the stalled run would still pass the fence when it
/// woke while the new run held the lease, and write its old step over the new one.
#[tokio::test]
async fn a_saga_taken_over_by_its_own_instance_is_leased_anew_and_the_stalled_run_changes_nothing()
{
    let world = World::start(&[]).await;
    let (mut env, database, amqp) = own_stores(&world).await;
    // Twice its 4 s lease, after inventory reserved and before the run records it.
    env.push(("ORDER_STALL_BEFORE_RECORDING".into(), "reserve".into()));
    let tap = shop_messaging::testing::Tap::bind(&amqp, ["order.order.confirmed"])
        .await
        .expect("a tap on the order events");
    let only = shop_testkit::spawn_with::<order_service::OrderService>(env)
        .await
        .expect("the instance starts");
    let pool = sqlx::PgPool::connect(&database)
        .await
        .expect("the database");
    let (product, sku) = world.product(300, 3).await;
    let buyer = world.customer().await;
    let (status, placed) = place(
        &world.http,
        &only.url(""),
        &buyer,
        "own-takeover",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let order_id = id(&placed);
    let started = std::time::Instant::now();
    // Every lease owner the saga row names until it ends: the placing run's, then the one the
    // sweeper leased it to.
    let mut owners: Vec<uuid::Uuid> = Vec::new();
    let step = loop {
        let (step, owner): (String, Option<uuid::Uuid>) =
            sqlx::query_as("SELECT step, lease_owner FROM order_sagas WHERE order_id = $1::uuid")
                .bind(&order_id)
                .fetch_one(&pool)
                .await
                .expect("the saga row");
        if let Some(owner) = owner.filter(|owner| !owners.contains(owner)) {
            owners.push(owner);
        }
        if step == "confirmed" || started.elapsed() > std::time::Duration::from_secs(12) {
            break step;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(step, "confirmed");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "finished while the first run was still stalled: by the sweeper's run"
    );
    assert_eq!(
        owners.len(),
        2,
        "the sweeper of the same instance leased the saga to a new owner: {owners:?}"
    );
    // The stalled run wakes 8 s after it stalled and tries to record its old answer.
    tokio::time::sleep(std::time::Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let step: String = sqlx::query_scalar("SELECT step FROM order_sagas WHERE order_id = $1::uuid")
        .bind(&order_id)
        .fetch_one(&pool)
        .await
        .expect("the saga row");
    assert_eq!(step, "confirmed", "the stalled run moved the saga back");
    let confirmations = confirmations_of(&tap, &order_id).await;
    assert_eq!(confirmations, 1, "one OrderConfirmed");
    let payment = world.payment(&buyer, &order_id).await;
    assert_eq!(payment["captured"]["amount"], 300, "{payment}");
    assert_eq!(world.stock(&sku).await, (2, 0));
}
