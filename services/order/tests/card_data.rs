//! order-service keeps no card data once it no longer needs it: the real binary runs with debug
//! logging, orders go through approved, declined and cancelled paths, and then its database,
//! its events and its logs are searched for the card numbers and the CVC. The sealed card's own
//! row is gone once each saga ended (deleted, not blanked), and the idempotency fingerprint
//! never covered the number or the CVC in the first place.

use crate::support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use shop_messaging::testing::Tap;
use shop_testkit::isolation;
use sqlx::PgPool;
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_order-service");
/// A CVC no timestamp or id in the dump is likely to mistake for it: searched as a JSON
/// string and as a JSON number.
const CVC: &str = "987";

/// Every row of every table of the service's database, as JSON text.
async fn everything_stored(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(
        tables.iter().any(|t| t == "public.order_cards"),
        "{tables:?}"
    );
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(pool)
                .await
                .expect("rows");
        dump.push_str(&rows.join("\n"));
        dump.push('\n');
    }
    dump
}

/// The service stops however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

#[tokio::test]
async fn no_card_number_or_cvc_in_the_database_the_events_or_the_logs() {
    let world = World::start(&[]).await;
    let database_url = isolation::postgres_database().await.expect("a database");
    let amqp_url = isolation::rabbitmq_vhost().await.expect("a vhost");
    let http_port = free_port();
    // Not `ChildService`: it pipes stdout and reads it at the end, and debug logs would fill
    // the pipe (and block the service) long before that. A file does not.
    let log_path =
        std::env::temp_dir().join(format!("order-{}.log", uuid::Uuid::now_v7().simple()));
    let log_file = std::fs::File::create(&log_path).expect("a log file");
    let child = Command::new(BINARY)
        .envs(world.order_env())
        .env("DATABASE_URL", &database_url)
        .env("AMQP_URL", &amqp_url)
        .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("GRPC_ADDR", "127.0.0.1:0")
        // As verbose as an operator would ever run it, request and SQL logs included.
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(log_file)
        .spawn()
        .expect("the binary starts");
    let stop = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{http_port}");
    eventually("ready", || {
        let url = format!("{base}/readyz");
        async move {
            reqwest::get(url)
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(drop)
        }
    })
    .await;
    let tap = Tap::bind(&amqp_url, ["order.#"]).await.expect("a tap");

    let http = &world.http;
    let ada = world.customer().await;
    let (product, _) = world.product(1200, 10).await;
    let numbers = [APPROVES, DECLINES];
    let mut ids = Vec::new();
    for (n, number) in numbers.iter().enumerate() {
        let mut body = order_body(&[(&product, 1)], number);
        body["payment"]["cvc"] = Value::from(CVC);
        let (status, placed) = place(http, &base, &ada, &format!("card-{n}"), &body).await;
        assert_eq!(status, 202, "{placed}");
        // The retry with the same key is compared by fingerprint: it must still match.
        let (status, again) = place(http, &base, &ada, &format!("card-{n}"), &body).await;
        assert_eq!((status, &again["id"]), (202, &placed["id"]), "{again}");
        let id = placed["id"].as_str().expect("an id").to_owned();
        settled(http, &base, &ada, &id).await;
        ids.push(id);
    }

    let pool = PgPool::connect(&database_url).await.expect("the database");
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM order_cards")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        cards, 0,
        "every sealed card's row is deleted once its saga ended"
    );
    let stored = everything_stored(&pool).await;
    let mut events = String::new();
    while let Some(delivery) = tap.next(Duration::from_secs(2)).await.expect("the tap") {
        events.push_str(&String::from_utf8_lossy(&delivery.data));
        events.push('\n');
    }
    drop(stop);
    let logs = std::fs::read_to_string(&log_path).expect("the logs");
    let _ = std::fs::remove_file(&log_path);

    // The searches are meaningful: the service did log the requests, stored the orders (with
    // the last four digits payment answered) and published their events.
    assert!(logs.contains("/api/v1/orders"), "{logs}");
    assert!(
        stored.contains(&ids[0]) && stored.contains("\"card_last4\":\"4242\""),
        "{stored}"
    );
    assert!(
        events.contains(&ids[0]) && events.contains(&ids[1]),
        "{events}"
    );
    for (place, text) in [("database", &stored), ("events", &events), ("logs", &logs)] {
        for number in numbers {
            assert!(!text.contains(number), "{number} in the {place}");
        }
        for cvc in [
            format!("\"{CVC}\""),
            format!(":{CVC},"),
            format!(":{CVC}}}"),
        ] {
            assert!(!text.contains(&cvc), "the CVC ({cvc}) in the {place}");
        }
        assert!(
            !text.to_lowercase().contains("\"cvc\""),
            "a cvc field in the {place}"
        );
    }
}
