//! Across a restart: the real binary dies between the provider's answer and its recording
//! (`PAYMENT_CRASH_AFTER_PROVIDER`, aborting the process as a power cut would), a fresh one
//! starts on the same database, and the money still settles exactly once. The simulated
//! provider's record lives in that database's `simulated_provider` schema, so it survives the
//! crash as a real provider's would.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use crate::common;

use std::{
    process::{Child, Command, ExitStatus},
    time::Duration,
};

use common::{APPROVE, EventTap, Issuer, authorize, completed, data, eventually, payment_of};
use shop_proto::payment::v1::{
    PaymentStatus, VoidRequest, payment_service_client::PaymentServiceClient,
};
use shop_testkit::isolation;
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_payment-service");
const RECONCILER: &str = "payment-service/reconciler";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One run of the binary on the test's database and vhost; killed when dropped. Its log goes
/// to a file (a pipe nobody reads could fill and block it).
struct Instance {
    child: Child,
    grpc: PaymentServiceClient<Channel>,
    log: std::path::PathBuf,
}

impl Instance {
    async fn start(stores: &Stores, issuer: &Issuer, extra: &[(&str, &str)]) -> Self {
        let (http_port, grpc_port) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("payment-{}.log", Uuid::new_v4().simple()));
        let child = Command::new(BINARY)
            .env("DATABASE_URL", &stores.database_url)
            .env("AMQP_URL", &stores.amqp_url)
            .env("AUTH_JWKS_URL", &issuer.jwks_url)
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            // Short, so a crashed attempt's lease (timeout + 10 s) ends within the test.
            .env("PROVIDER_TIMEOUT_MS", "500")
            .env("RECONCILE_INTERVAL_MS", "100")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .envs(extra.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let ready = format!("http://127.0.0.1:{http_port}/readyz");
        eventually(
            "the service becomes ready",
            Duration::from_secs(30),
            || async { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
        let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            child,
            grpc: PaymentServiceClient::new(channel),
            log,
        }
    }

    /// Waits (bounded) for the process to end by itself; its exit status and log.
    async fn exited(mut self) -> (ExitStatus, String) {
        let mut status = None;
        eventually("the process exits", Duration::from_secs(10), || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (status.unwrap(), log)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

struct Stores {
    database_url: String,
    amqp_url: String,
}

impl Stores {
    async fn new() -> Self {
        Self {
            database_url: isolation::postgres_database().await.unwrap(),
            amqp_url: isolation::rabbitmq_vhost().await.unwrap(),
        }
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    common::with_token(message, token)
}

#[tokio::test]
async fn an_approval_lost_in_a_crash_is_recorded_once_after_the_restart() {
    let issuer = Issuer::start().await;
    let stores = Stores::new().await;
    let token = issuer.service("order-service");
    let (order, user) = (Uuid::new_v4(), Uuid::new_v4());

    let mut crashing = Instance::start(
        &stores,
        &issuer,
        &[("PAYMENT_CRASH_AFTER_PROVIDER", "authorize")],
    )
    .await;
    let tap = EventTap::bind_url(&stores.amqp_url).await;
    let cut_off = crashing
        .grpc
        .authorize(with_token(authorize(order, user, 4100, APPROVE), &token))
        .await;
    assert!(cut_off.is_err(), "the process died before answering");
    let (status, log) = crashing.exited().await;
    assert!(!status.success(), "{status}");
    assert!(log.contains("PAYMENT_CRASH_AFTER_PROVIDER"), "{log}");

    // The provider holds the money; payment-service recorded only that it started.
    let pool = PgPool::connect(&stores.database_url).await.unwrap();
    let payment = payment_of(&pool, order).await.unwrap();
    assert_eq!(
        common::provider_record(&pool, payment).await.unwrap().0,
        "held"
    );
    assert!(completed(&pool, payment, "authorize").await.is_empty());

    // A new process, and no retry from the saga: the reconciler finds the authorization on the
    // queue (written when it started) once its lease is over, asks the provider and records it.
    let mut restarted = Instance::start(&stores, &issuer, &[]).await;
    eventually(
        "the reconciler records the authorization",
        Duration::from_secs(40),
        || async { !completed(&pool, payment, "authorize").await.is_empty() },
    )
    .await;
    let recorded = completed(&pool, payment, "authorize").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (recorded[0].0.as_str(), recorded[0].1.as_str()),
        ("approved", RECONCILER)
    );

    // The saga's retry is answered with it; still one result, one event.
    let retried = restarted
        .grpc
        .authorize(with_token(authorize(order, user, 4100, APPROVE), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status(), PaymentStatus::Authorized);
    assert_eq!(retried.payment_id, payment.to_string());
    assert_eq!(completed(&pool, payment, "authorize").await.len(), 1);
    let events = data(&tap.drain(&pool).await);
    let authorized: Vec<_> = events
        .iter()
        .filter(|(key, _)| key == "payment.payment.authorized")
        .collect();
    assert_eq!(authorized.len(), 1, "{events:?}");
}

#[tokio::test]
async fn a_void_cut_off_by_a_crash_is_answered_voided_once_after_the_restart() {
    let issuer = Issuer::start().await;
    let stores = Stores::new().await;
    let token = issuer.service("order-service");
    let order = Uuid::new_v4();
    let void = || VoidRequest {
        order_id: order.to_string(),
    };

    let mut crashing = Instance::start(
        &stores,
        &issuer,
        &[("PAYMENT_CRASH_AFTER_PROVIDER", "void")],
    )
    .await;
    let authorized = crashing
        .grpc
        .authorize(with_token(
            authorize(order, Uuid::new_v4(), 800, APPROVE),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authorized.status(), PaymentStatus::Authorized);
    let payment = Uuid::parse_str(&authorized.payment_id).unwrap();
    assert!(
        crashing
            .grpc
            .void(with_token(void(), &token))
            .await
            .is_err()
    );
    let (status, _) = crashing.exited().await;
    assert!(!status.success(), "{status}");

    let pool = PgPool::connect(&stores.database_url).await.unwrap();
    assert_eq!(
        common::provider_record(&pool, payment).await.unwrap().0,
        "voided",
        "the provider voided before the crash"
    );
    assert!(completed(&pool, payment, "void").await.is_empty());

    // The saga retries: once the dead attempt's lease is over, the retry calls the provider
    // again with the same key, which answers without voiding twice.
    let mut restarted = Instance::start(&stores, &issuer, &[]).await;
    let voided = tokio::time::timeout(
        Duration::from_secs(40),
        restarted.grpc.void(with_token(void(), &token)),
    )
    .await
    .expect("answered once the lease is over")
    .unwrap()
    .into_inner();
    assert_eq!(voided.status(), PaymentStatus::Voided);
    assert_eq!(completed(&pool, payment, "void").await.len(), 1);
    let provider_voids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM simulated_provider.requests WHERE operation = 'void'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(provider_voids, 1, "one void at the provider");
}
