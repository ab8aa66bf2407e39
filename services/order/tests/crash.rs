//! Crash safety: the real order-service binary is killed (`ORDER_CRASH_AFTER_STEP`, a test-only
//! fault injection that aborts the process right after persisting that step) after each step in
//! turn, and restarted. Every saga resumes from the database and ends exactly once.

mod support;

use std::time::Duration;

use serde_json::Value;
use shop_testkit::{isolation, process::ChildService};
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_order-service");

#[tokio::test]
async fn killed_after_each_step_every_saga_resumes_and_ends_exactly_once() {
    let world = World::start(&[]).await;
    let mut env = world.order_env();
    env.push((
        "DATABASE_URL".into(),
        isolation::postgres_database().await.expect("a database"),
    ));
    env.push((
        "AMQP_URL".into(),
        isolation::rabbitmq_vhost().await.expect("a vhost"),
    ));
    // Quiet: nobody reads the child's stdout, so it must not fill the pipe.
    env.push(("RUST_LOG".into(), "warn".into()));
    let http = &world.http;
    let ada = world.customer().await;
    let (product, sku) = world.product(1000, 20).await;

    let cases = [
        ("reserve", APPROVES, "CONFIRMED"),
        ("authorize", APPROVES, "CONFIRMED"),
        ("commit_stock", APPROVES, "CONFIRMED"),
        ("capture", APPROVES, "CONFIRMED"),
        ("authorize", DECLINES, "CANCELLED"),
        ("release_stock", DECLINES, "CANCELLED"),
    ];
    let mut ids = Vec::new();
    for (n, (step, card, expected)) in cases.into_iter().enumerate() {
        let mut crashing = ChildService::start(
            BINARY,
            env.iter()
                .cloned()
                .chain([("ORDER_CRASH_AFTER_STEP".to_owned(), step.to_owned())]),
        )
        .expect("the binary starts");
        crashing
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("ready");
        let key = format!("crash-{n}");
        let body = order_body(&[(&product, 1)], card);
        // The process may die before it answers: the order is committed all the same, and the
        // retry with the same key below finds it.
        let _ = http
            .post(crashing.url("/api/v1/orders"))
            .bearer_auth(&ada)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        eventually(&format!("the crash after {step}"), || {
            let url = crashing.url("/healthz");
            async move { http.get(url).send().await.is_err().then_some(()) }
        })
        .await;
        drop(crashing);

        let mut restarted = ChildService::start(BINARY, env.iter().cloned()).expect("restarts");
        restarted
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("ready");
        let base = restarted.url("");
        let (status, placed) = place(http, &base, &ada, &key, &body).await;
        assert_eq!(status, 202, "{placed}");
        let order_id = placed["id"].as_str().expect("an id").to_owned();
        let ended = settled(http, &base, &ada, &order_id).await;
        assert_eq!(ended["status"], expected, "crash after {step}: {ended}");
        ids.push((order_id, expected));
    }

    // Exactly one capture per confirmed order, none for the others; stock exactly right.
    let mut confirmed = 0;
    for (order_id, expected) in &ids {
        let payments: Vec<Value> = world.payments(&ada, order_id).await;
        let captured: i64 = payments
            .iter()
            .map(|p| p["captured"]["amount"].as_i64().unwrap_or_default())
            .sum();
        if *expected == "CONFIRMED" {
            confirmed += 1;
            assert_eq!(payments.len(), 1, "{payments:?}");
            assert_eq!(captured, 1000, "{payments:?}");
        } else {
            assert_eq!(captured, 0, "{payments:?}");
        }
    }
    assert_eq!(world.stock(&sku).await, (20 - confirmed, 0));
}
