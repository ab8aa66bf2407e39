//! Crash safety: the real order-service binary is killed after each step in turn, and
//! restarted. Two test-only fault injections abort the process: `ORDER_CRASH_AFTER_STEP` right
//! after the step's transition committed, and `ORDER_CRASH_BEFORE_RECORDING` after the
//! participant acted but before the saga wrote down its answer (the step then runs again after
//! the restart, and the participant's idempotency must absorb it). Every saga resumes from the
//! database and ends exactly once, with one capture per confirmed order and none otherwise.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use shop_testkit::{isolation, process::ChildService};
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_order-service");

#[tokio::test]
async fn killed_before_and_after_recording_each_step_every_saga_resumes_and_ends_exactly_once() {
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

    const AFTER: &str = "ORDER_CRASH_AFTER_STEP";
    const BEFORE: &str = "ORDER_CRASH_BEFORE_RECORDING";
    let cases = [
        (AFTER, "reserve", APPROVES, "CONFIRMED"),
        (AFTER, "authorize", APPROVES, "CONFIRMED"),
        (AFTER, "commit_stock", APPROVES, "CONFIRMED"),
        (AFTER, "capture", APPROVES, "CONFIRMED"),
        (AFTER, "authorize", DECLINES, "CANCELLED"),
        (AFTER, "void_payment", DECLINES, "CANCELLED"),
        (AFTER, "release_stock", DECLINES, "CANCELLED"),
        (BEFORE, "reserve", APPROVES, "CONFIRMED"),
        (BEFORE, "authorize", APPROVES, "CONFIRMED"),
        (BEFORE, "commit_stock", APPROVES, "CONFIRMED"),
        (BEFORE, "capture", APPROVES, "CONFIRMED"),
        (BEFORE, "void_payment", DECLINES, "CANCELLED"),
        (BEFORE, "release_stock", DECLINES, "CANCELLED"),
    ];
    let mut ids = Vec::new();
    for (n, (fault, step, card, expected)) in cases.into_iter().enumerate() {
        let step = format!("{fault}={step}");
        let (fault, name) = step.split_once('=').expect("a fault");
        let mut crashing = ChildService::start(
            BINARY,
            env.iter()
                .cloned()
                .chain([(fault.to_owned(), name.to_owned())]),
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
        let payment: Value = world.payment(&ada, order_id).await;
        if *expected == "CONFIRMED" {
            confirmed += 1;
            assert_eq!(payment["state"], "CAPTURED", "{payment}");
            assert_eq!(payment["captured"]["amount"], 1000, "{payment}");
        } else {
            assert_eq!(payment["state"], "DECLINED", "{payment}");
            assert_eq!(payment["captured"]["amount"], 0, "{payment}");
        }
    }
    assert_eq!(world.stock(&sku).await, (20 - confirmed, 0));
}
