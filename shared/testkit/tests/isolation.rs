//! Two tests running at the same time write the same names into every store and each sees
//! only its own data.
//!
//! The two tests meet at a barrier after writing, so their data coexists while each reads it
//! back. If they do not overlap (the harness runs them one after the other, or only one of
//! them), the barrier times out and the test fails: without the overlap it would prove
//! nothing. Run it as the harness does by default, with more than one test thread.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use shop_testkit::isolation;
use sqlx::{Connection, PgConnection};
use std::sync::LazyLock;
use tokio::sync::Barrier;

static BOTH_WROTE: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(2));

async fn wait_for_the_other_test() {
    tokio::time::timeout(Duration::from_secs(20), BOTH_WROTE.wait())
        .await
        .expect("the other test did not run at the same time (one test thread, or a filter?)");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_test_sees_only_its_own_data() {
    write_then_read_back("first").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_test_sees_only_its_own_data() {
    write_then_read_back("second").await;
}

async fn write_then_read_back(me: &str) {
    // PostgreSQL: the same table name in two databases.
    let mut pg = PgConnection::connect(&isolation::postgres_database().await.unwrap())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE marker (owner TEXT NOT NULL)")
        .execute(&mut pg)
        .await
        .unwrap();
    sqlx::query("INSERT INTO marker VALUES ($1)")
        .bind(me)
        .execute(&mut pg)
        .await
        .unwrap();

    // MongoDB: the same collection name in two databases.
    let (mongo_url, database) = isolation::mongo_database().await.unwrap();
    let markers = mongodb::Client::with_uri_str(&mongo_url)
        .await
        .unwrap()
        .database(&database)
        .collection::<Document>("marker");
    markers.insert_one(doc! { "owner": me }).await.unwrap();

    // Redis: the same key under two prefixes.
    let (redis_url, prefix) = isolation::redis_prefix().await.unwrap();
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{prefix}marker");
    redis::cmd("SET")
        .arg(&key)
        .arg(me)
        .arg("EX")
        .arg(60)
        .exec_async(&mut redis)
        .await
        .unwrap();

    // RabbitMQ: the same queue name in two vhosts.
    let amqp = lapin::Connection::connect(
        &isolation::rabbitmq_vhost().await.unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    channel
        .queue_declare("marker".into(), Default::default(), Default::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            "marker".into(),
            Default::default(),
            me.as_bytes(),
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    wait_for_the_other_test().await;

    let owners: Vec<String> = sqlx::query_scalar("SELECT owner FROM marker")
        .fetch_all(&mut pg)
        .await
        .unwrap();
    assert_eq!(owners, [me]);

    let docs: Vec<Document> = markers
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_str("owner").unwrap(), me);

    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(value, me);

    let message = channel
        .basic_get("marker".into(), Default::default())
        .await
        .unwrap()
        .expect("our message is in our queue");
    assert_eq!(message.delivery.data, me.as_bytes());
    assert!(
        channel
            .basic_get("marker".into(), Default::default())
            .await
            .unwrap()
            .is_none(),
        "and nothing else is"
    );
}
