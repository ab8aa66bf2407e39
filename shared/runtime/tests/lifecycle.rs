//! Booting a PostgreSQL-backed service: migrations applied at start, the pool usable from
//! handlers, store errors rendered as problem documents, readiness following the database.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use shop_runtime::{ApiError, BootError, Context, Endpoints, Needs, Service, ServiceSpec};
use shop_testkit::{isolation, proxy::TcpProxy, spawn, spawn_with};
use sqlx::{PgPool, migrate::Migrator};

static MIGRATIONS: Migrator = sqlx::migrate!("tests/migrations");

struct GreetingService;

impl Service for GreetingService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "greeting-test-service",
            http_port: 0,
            grpc_port: 0,
            needs: Needs {
                postgres: true,
                ..Needs::default()
            },
            migrations: Some(&MIGRATIONS),
        }
    }

    async fn build(ctx: &Context, _: ()) -> Result<Endpoints, BootError> {
        let router = Router::new()
            .route("/greetings/{id}", get(greeting))
            .with_state(ctx.postgres()?.clone());
        Ok(Endpoints::new(router))
    }
}

async fn greeting(
    State(pool): State<PgPool>,
    Path(id): Path<i64>,
) -> Result<Json<String>, ApiError> {
    let text: String = sqlx::query_scalar("SELECT text FROM greetings WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    Ok(Json(text))
}

#[tokio::test]
async fn migrations_run_at_start_and_errors_are_problem_documents() {
    let app = spawn::<GreetingService>().await.unwrap();
    let hello: String = app.get("/greetings/1").await.unwrap().json().await.unwrap();
    assert_eq!(hello, "hello");

    let missing = app.get("/greetings/2").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );

    // An extractor's rejection is a problem document too, naming what was wrong.
    let malformed = app.get("/greetings/not-a-number").await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = malformed.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("not-a-number"),
        "{problem}"
    );
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let database = url::Url::parse(&isolation::postgres_database().await.unwrap()).unwrap();
    let upstream = format!(
        "{}:{}",
        database.host_str().unwrap(),
        database.port().unwrap_or(5432)
    );
    let proxy = TcpProxy::start(&upstream).await.unwrap();
    let mut via_proxy = database.clone();
    via_proxy.set_port(Some(proxy.addr().port())).unwrap();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();

    let app = spawn_with::<GreetingService>([("DATABASE_URL", via_proxy.to_string())])
        .await
        .unwrap();
    app.wait_ready(Duration::from_secs(10)).await.unwrap();

    proxy.cut();
    let response = app.get("/readyz").await.unwrap();
    assert_eq!(response.status(), 503);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["checks"]["postgres"], "down");
    assert_eq!(app.get("/healthz").await.unwrap().status(), 200);

    proxy.restore();
    app.wait_ready(Duration::from_secs(15))
        .await
        .expect("ready again once the database is back");
}
