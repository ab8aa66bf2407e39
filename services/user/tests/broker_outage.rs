//! A broker outage is not a user-service outage: registrations keep being accepted while
//! RabbitMQ is unreachable, `/readyz` stays ready (reporting the broker as down), and the
//! `UserRegistered` events written to the outbox meanwhile are published once it is back.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use shop_events::user::UserRegistered;
use shop_messaging::{Envelope, Event, testing::Tap};
use shop_testkit::{BoxError, TestApp, isolation, proxy::TcpProxy, spawn_with};
use user_service::UserService;

const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `/readyz` until `check` holds for its status and body, or fails after [`PATIENCE`].
async fn readyz_until(
    app: &TestApp,
    check: impl Fn(StatusCode, &Value) -> bool,
) -> Result<(StatusCode, Value), BoxError> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = app.get("/readyz").await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if check(status, &body) {
            return Ok((status, body));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("/readyz never matched; last: {status} {body}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn registrations_are_accepted_while_the_broker_is_cut_and_their_events_arrive_after()
-> Result<(), BoxError> {
    // The service reaches its vhost through a proxy the test can cut; the test itself
    // reads the events directly, from a queue bound as notification-service's will be.
    let direct = isolation::rabbitmq_vhost().await?;
    let mut proxied = Url::parse(&direct)?;
    let upstream = format!(
        "{}:{}",
        proxied.host_str().ok_or("no host")?,
        proxied.port().unwrap_or(5672)
    );
    let proxy = TcpProxy::start(&upstream).await?;
    proxied
        .set_port(Some(proxy.addr().port()))
        .map_err(|()| "cannot set port")?;

    let tap = Tap::bind(&direct, [UserRegistered::ROUTING_KEY]).await?;

    let app = spawn_with::<UserService>([("AMQP_URL", proxied.as_str())]).await?;
    app.wait_ready(PATIENCE).await?;
    readyz_until(&app, |_, body| body["checks"]["amqp"] == "up").await?;

    proxy.cut();
    let (status, body) = readyz_until(&app, |_, body| body["checks"]["amqp"] == "down").await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "still ready without the broker: {body}"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !app
        .get("/metrics")
        .await?
        .text()
        .await?
        .contains("amqp_connected 0")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outage never showed in the metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let emails = ["ada@example.com", "bob@example.com", "cy@example.com"];
    for email in emails {
        let response = app
            .client
            .post(app.url("/api/v1/auth/register"))
            .json(&json!({ "email": email, "password": "correct horse battery", "name": "N" }))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::CREATED, "{email}");
    }
    assert_eq!(app.get("/readyz").await?.status(), StatusCode::OK);

    proxy.restore();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while received.len() < emails.len() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = tap.next(remaining).await? else {
            return Err(format!("only {received:?} arrived within {PATIENCE:?}").into());
        };
        let event = Envelope::from_slice(&message.data)?;
        received.push(event.data_as::<UserRegistered>()?.email);
    }
    received.sort();
    assert_eq!(received, emails);
    app.stop().await?;
    Ok(())
}
