//! The easy way in: a service wires the relay and a consumer from its `Context`, its readiness
//! reports the consumer, and its graceful shutdown stops them.

use crate::support;

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::post};
use serde_json::json;
use shop_messaging::{
    Consumer,
    outbox::{RelayConfig, postgres},
};
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use shop_testkit::BoxError;
use sqlx::PgPool;
use support::{ROUTING_KEY, Recorder, Thing, event, eventually};

/// A service that publishes `shop.thing.happened` on `POST /things` and consumes it too.
struct Echo;

impl Service for Echo {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("echo", 0, 0)
            .postgres_without_migrations()
            .amqp()
    }

    async fn build(ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        let pool = ctx.postgres()?.clone();
        sqlx::query("CREATE TABLE IF NOT EXISTS effects (event_id uuid NOT NULL)")
            .execute(&pool)
            .await
            .map_err(|err| BootError::store("postgres", err))?;
        postgres::Relay::spawn(ctx, RelayConfig::default()).await?;
        Consumer::postgres("echo", pool.clone())
            .on::<Thing>(Recorder::new())
            .spawn(ctx)
            .await?;
        Ok(Endpoints::new(
            Router::new()
                .route("/things", post(create_thing))
                .with_state(pool),
        ))
    }
}

async fn create_thing(State(pool): State<PgPool>) -> Result<String, StatusCode> {
    let thing = event(json!({ "n": 1 }));
    let fail = |_| StatusCode::SERVICE_UNAVAILABLE;
    let mut tx = pool.begin().await.map_err(fail)?;
    postgres::enqueue(&mut tx, ROUTING_KEY, &thing)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    postgres::commit(tx).await.map_err(fail)?;
    Ok(thing.id.to_string())
}

#[tokio::test]
async fn a_service_publishes_and_consumes_through_its_context() -> Result<(), BoxError> {
    let app = shop_testkit::spawn::<Echo>().await?;
    app.wait_ready(Duration::from_secs(15)).await?;
    // The consumer is reported in /readyz (not required for readiness) once it is attached.
    eventually(Duration::from_secs(15), || async {
        let ready: serde_json::Value = match app.get("/readyz").await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        ready["checks"]["consumer:echo.events"] == "up"
            && ready["optional"]
                .as_array()
                .is_some_and(|optional| optional.contains(&"consumer:echo.events".into()))
    })
    .await?;

    let id: uuid::Uuid = app
        .client
        .post(app.url("/things"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?
        .parse()?;
    let pool = PgPool::connect(&app.env["DATABASE_URL"]).await?;
    eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM effects WHERE event_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .is_ok_and(|count| count == 1)
    })
    .await?;
    app.stop().await?; // relay and consumer stop within the grace period
    Ok(())
}
