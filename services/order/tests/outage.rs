//! A participant down for a while: inventory is cut off behind a TCP proxy while orders come
//! in. The sagas wait and retry, the breaker opens (exported as a metric) and closes again
//! once inventory is back, and every order ends terminal with the stock exactly right. And
//! catalog down: an order cannot be priced, so it is refused at once (503, nothing recorded)
//! and the same request with the same `Idempotency-Key` succeeds once catalog is back. And
//! payment down just after the pivot: the saga waits at `capture` and ends once it is back.
//!
//! Its own test binary, so the breaker gauges it reads are order-service's alone.

mod support;

use shop_testkit::{proxy::TcpProxy, spawn_with};
use support::*;

async fn breaker(order: &shop_testkit::TestApp, state: &str) -> Option<()> {
    let metrics = order.get("/metrics").await.ok()?.text().await.ok()?;
    metrics
        .lines()
        .any(|line| {
            line.starts_with("order_circuit_breaker_state")
                && line.contains("downstream=\"inventory\"")
                && line.ends_with(&format!(" {state}"))
        })
        .then_some(())
}

#[tokio::test]
async fn sagas_wait_for_a_participant_that_is_down_and_all_end_once_it_is_back() {
    let world = World::start(&[]).await;
    let proxy = TcpProxy::start(&world.inventory.grpc_addr.to_string())
        .await
        .expect("proxy");
    let env = world.order_env_with(
        &format!("http://{}", proxy.addr()),
        &world.payment.grpc_url(),
    );
    let order = spawn_with::<order_service::OrderService>(env)
        .await
        .expect("order-service starts");
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(300, 10).await;

    proxy.cut();
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, placed) = place(
            http,
            &base,
            &ada,
            &format!("outage-{n}"),
            &order_body(&[(&product, 1)], APPROVES),
        )
        .await;
        assert_eq!(status, 202, "{placed}");
        ids.push(placed["id"].as_str().expect("an id").to_owned());
    }
    eventually("the inventory breaker opens", || breaker(&order, "2")).await;
    for order_id in &ids {
        let current = order_of(http, &base, &ada, order_id).await;
        assert_eq!(
            current["status"], "PENDING",
            "waiting, not failed: {current}"
        );
    }

    proxy.restore();
    let mut confirmed = 0;
    for order_id in &ids {
        let ended = settled(http, &base, &ada, order_id).await;
        // Back before the saga's time limit: confirmed. Had it taken longer, the saga would
        // have been compensated (`timeout`) — terminal either way.
        if ended["status"] == "CONFIRMED" {
            confirmed += 1;
        } else {
            assert_eq!(ended["cancellation_reason"], "timeout", "{ended}");
        }
    }
    eventually("the inventory breaker closes", || breaker(&order, "0")).await;
    assert_eq!(world.stock(&sku).await, (10 - confirmed, 0));
}

#[tokio::test]
async fn while_catalog_is_down_an_order_is_refused_with_503_and_the_same_request_succeeds_once_it_is_back()
 {
    let world = World::start(&[]).await;
    let (product, _sku) = world.product(450, 5).await;
    let proxy = TcpProxy::start(&world.catalog.grpc_addr.to_string())
        .await
        .expect("proxy");
    let mut env = world.order_env();
    for (key, value) in &mut env {
        if key == "CATALOG_GRPC_URL" {
            *value = format!("http://{}", proxy.addr());
        }
    }
    let order = spawn_with::<order_service::OrderService>(env)
        .await
        .expect("order-service starts");
    let base = order.url("");
    let ada = world.customer().await;
    let body = order_body(&[(&product, 1)], APPROVES);

    proxy.cut();
    // "Fast" here means: an answer, not a hang until the client gives up. The client below
    // would wait 30 s; order-service's call deadline (1 s in this world) ends it long before.
    let client = shop_testkit::http_client(std::time::Duration::from_secs(30));
    let (status, problem) = place(&client, &base, &ada, "catalog-outage", &body).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["status"], 503, "a problem document: {problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("Idempotency-Key"),
        "tells the client how to retry: {problem}"
    );
    assert!(
        !detail.contains("grpc") && !detail.contains("127.0.0.1"),
        "no internals: {problem}"
    );
    let listed: serde_json::Value = client
        .get(format!("{base}/api/v1/orders"))
        .bearer_auth(&ada)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("a page");
    assert_eq!(
        listed["items"],
        serde_json::json!([]),
        "nothing was recorded: {listed}"
    );

    proxy.restore();
    let placed = eventually("the order is accepted once catalog is back", || {
        let (client, base, ada, body) = (&client, &base, &ada, &body);
        async move {
            let (status, placed) = place(client, base, ada, "catalog-outage", body).await;
            (status == 202).then_some(placed)
        }
    })
    .await;
    let id = placed["id"].as_str().expect("an id");
    assert_eq!(
        settled(&client, &base, &ada, id).await["status"],
        "CONFIRMED"
    );
}

/// Payment cut off right after inventory committed the stock: the capture gets no answer.
/// The pivot's success was never written on its own (`Step::records_success_first`), so the
/// run that waits for a retry writes the step it is at: the saga waits at `capture`, not at
/// `commit_stock`, and ends confirmed, captured once, once payment is back.
///
/// The placing run stalls after the commit answered (`ORDER_STALL_BEFORE_RECORDING`), which
/// gives the test time to cut payment; the sweeper takes the saga over when the lease runs out,
/// repeats the commit (inventory replays it) and finds payment gone.
#[tokio::test]
async fn a_capture_without_an_answer_waits_at_the_capture_step_and_ends_once_payment_is_back() {
    let world = World::start(&[]).await;
    let proxy = TcpProxy::start(&world.payment.grpc_addr.to_string())
        .await
        .expect("proxy");
    let mut env = world.order_env_with(
        &world.inventory.grpc_url(),
        &format!("http://{}", proxy.addr()),
    );
    env.push(("ORDER_STALL_BEFORE_RECORDING".into(), "commit_stock".into()));
    let order = spawn_with::<order_service::OrderService>(env)
        .await
        .expect("order-service starts");
    let pool = sqlx::PgPool::connect(&order.env["DATABASE_URL"])
        .await
        .expect("the order database");
    let base = order.url("");
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(700, 2).await;

    let (status, placed) = place(
        http,
        &base,
        &ada,
        "capture-outage",
        &order_body(&[(&product, 1)], APPROVES),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["id"].as_str().expect("an id").to_owned();
    // Committed: nothing reserved any more, one unit gone for good.
    eventually("the stock committed", || async {
        (world.stock(&sku).await == (1, 0)).then_some(())
    })
    .await;
    proxy.cut();

    let (step, last_error) = eventually("the saga waits for a retry", || async {
        let (step, owner, last_error): (String, Option<uuid::Uuid>, Option<String>) =
            sqlx::query_as(
                "SELECT step, lease_owner, last_error FROM order_sagas WHERE order_id = $1::uuid",
            )
            .bind(&order_id)
            .fetch_one(&pool)
            .await
            .expect("the saga row");
        (owner.is_none() && last_error.is_some()).then_some((step, last_error))
    })
    .await;
    assert_eq!(
        step, "capture",
        "waits at the step that failed ({last_error:?})"
    );
    let shown = order_of(http, &base, &ada, &order_id).await;
    assert_eq!(shown["status"], "PENDING", "{shown}");

    proxy.restore();
    let ended = settled(http, &base, &ada, &order_id).await;
    assert_eq!(ended["status"], "CONFIRMED", "{ended}");
    let payment = world.payment(&ada, &order_id).await;
    assert_eq!(payment["captured"]["amount"], 700, "{payment}");
    assert_eq!(world.stock(&sku).await, (1, 0));
}
