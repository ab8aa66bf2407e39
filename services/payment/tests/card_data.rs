//! No full card number leaves the provider call: not in the database (the simulated provider's
//! own schema included), not in the events, not in the logs. The real `payment-service` binary
//! runs with debug logging, every card goes through every path (approved, declined, slow,
//! invalid, a conflicting retry, capture, refund, and the fault cards: timeout, lost answer,
//! refused capture, refused void), and then everything it wrote is searched for the numbers.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use crate::common;

use std::{
    process::{Child, Command},
    time::Duration,
};

use common::{
    ANSWER_LOST, APPROVE, CAPTURE_REFUSED, DECLINE, EventTap, INSUFFICIENT_FUNDS, Issuer, SLOW,
    TIMEOUT_BEFORE_ACTING, VOID_REFUSED_ONCE, authorize, card, with_token,
};
use shop_proto::payment::v1::{
    CaptureRequest, RefundRequest, VoidRequest, payment_service_client::PaymentServiceClient,
};
use shop_testkit::isolation;
use sqlx::PgPool;
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_payment-service");
const NUMBERS: [&str; 9] = [
    APPROVE,
    DECLINE,
    INSUFFICIENT_FUNDS,
    SLOW,
    TIMEOUT_BEFORE_ACTING,
    ANSWER_LOST,
    CAPTURE_REFUSED,
    VOID_REFUSED_ONCE,
    "4242424242424241",
];

/// Every row of every table of the service's database, as text.
async fn everything_stored(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for expected in ["public.payments", "simulated_provider.authorizations"] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} in {tables:?}"
        );
    }
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(pool)
            .await
            .unwrap();
        dump.push_str(&rows.join("\n"));
        dump.push('\n');
    }
    dump
}

/// The service stops however the test ends (its log is complete: written line by line).
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn no_full_card_number_in_the_database_the_events_or_the_logs() {
    let issuer = Issuer::start().await;
    let database_url = isolation::postgres_database().await.unwrap();
    let amqp_url = isolation::rabbitmq_vhost().await.unwrap();
    let (http_port, grpc_port) = (free_port(), free_port());
    // Not `shop_testkit::process::ChildService`: it pipes stdout and reads it at the end, and
    // debug logs would fill the pipe (and block the service) long before that. A file does not.
    let log_path = std::env::temp_dir().join(format!("payment-{}.log", Uuid::new_v4().simple()));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BINARY)
        .env("DATABASE_URL", &database_url)
        .env("AMQP_URL", &amqp_url)
        .env("AUTH_JWKS_URL", &issuer.jwks_url)
        .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("SIMULATED_SLOW_CARD_DELAY_MS", "200")
        // The timeout card waits past any timeout: keep that short.
        .env("PROVIDER_TIMEOUT_MS", "500")
        // As verbose as an operator would ever run it, request and SQL logs included.
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(log_file)
        .spawn()
        .unwrap();
    let stop = KillOnDrop(&mut child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    while !reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
        assert!(tokio::time::Instant::now() < deadline, "not ready in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tap = EventTap::bind_url(&amqp_url).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = PaymentServiceClient::new(channel);
    let token = issuer.service("order-service");
    let user = Uuid::new_v4();
    for number in [APPROVE, DECLINE, INSUFFICIENT_FUNDS, SLOW] {
        let order = Uuid::new_v4();
        grpc.authorize(with_token(authorize(order, user, 1500, number), &token))
            .await
            .unwrap();
        // A retry, and a conflicting "retry" that is refused.
        grpc.authorize(with_token(authorize(order, user, 1500, number), &token))
            .await
            .unwrap();
        grpc.authorize(with_token(authorize(order, user, 1, number), &token))
            .await
            .unwrap_err();
        if number == APPROVE {
            let id = order.to_string();
            grpc.capture(with_token(
                CaptureRequest {
                    order_id: id.clone(),
                },
                &token,
            ))
            .await
            .unwrap();
            grpc.refund(with_token(
                RefundRequest {
                    order_id: id,
                    ..RefundRequest::default()
                },
                &token,
            ))
            .await
            .unwrap();
        }
    }
    // Invalid requests: a Luhn failure next to other bad fields, and a good number with a bad
    // expiry (the error must not quote the number it did not complain about).
    let mut bad = authorize(Uuid::new_v4(), user, 1500, "4242424242424241");
    bad.card.as_mut().unwrap().cvc = "1".into();
    grpc.authorize(with_token(bad, &token)).await.unwrap_err();
    let mut expired = authorize(Uuid::new_v4(), user, 1500, APPROVE);
    expired.card = card(APPROVE).map(|mut card| {
        card.expiry = "01/21".into();
        card
    });
    grpc.authorize(with_token(expired, &token))
        .await
        .unwrap_err();

    let pool = PgPool::connect(&database_url).await.unwrap();
    let mut events = tap.drain(&pool).await;
    assert_eq!(
        events.len(),
        6,
        "4 authorizations, 1 capture, 1 refund: {events:?}"
    );

    // The fault cards, through every path they have: an answer that never comes or is lost,
    // then a retry, a capture (refused for one of them) and a void (refused once for another).
    for number in [
        TIMEOUT_BEFORE_ACTING,
        ANSWER_LOST,
        CAPTURE_REFUSED,
        VOID_REFUSED_ONCE,
    ] {
        let order = Uuid::new_v4();
        let id = order.to_string();
        for _ in 0..2 {
            let _ = grpc
                .authorize(with_token(authorize(order, user, 1500, number), &token))
                .await;
        }
        let _ = grpc
            .capture(with_token(
                CaptureRequest {
                    order_id: id.clone(),
                },
                &token,
            ))
            .await;
        for _ in 0..2 {
            let _ = grpc
                .void(with_token(
                    VoidRequest {
                        order_id: id.clone(),
                    },
                    &token,
                ))
                .await;
        }
    }
    events.extend(tap.drain(&pool).await);
    let provider_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM simulated_provider.authorizations")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(provider_rows >= 8, "the provider's record was written");
    let events = format!("{events:?}");
    let stored = everything_stored(&pool).await;
    drop(stop);
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);

    // The searches are meaningful: the service did log the calls, stored and published the
    // last four digits.
    assert!(logs.contains("PaymentService/Authorize"), "{logs}");
    assert!(stored.contains("4242") && events.contains("4242"));
    for number in NUMBERS {
        assert!(!logs.contains(number), "{number} in the logs");
        assert!(!stored.contains(number), "{number} in the database");
        assert!(!events.contains(number), "{number} in the events");
    }
}
