//! The outbox relays under the faults that used to stall them or publish twice: rows that are
//! not events, messages the broker keeps refusing, two relays at once, and a relay process
//! killed between the broker's confirm and its own commit.

mod support;

use std::time::Duration;

use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use mongodb::bson::{Document, doc};
use serde_json::json;
use shop_messaging::{
    outbox::{RelayConfig, mongo},
    topology,
};
use shop_testkit::{BoxError, isolation, process::ChildService};
use support::{ROUTING_KEY, Stack, event, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

async fn parked_rows(stack: &Stack) -> Result<Vec<(uuid::Uuid, i32, String)>, BoxError> {
    Ok(
        sqlx::query_as("SELECT id, attempts, reason FROM messaging.outbox_parked ORDER BY seq")
            .fetch_all(&stack.pool)
            .await?,
    )
}

#[tokio::test]
async fn rows_that_are_not_events_are_parked_and_the_rows_behind_them_are_published()
-> Result<(), BoxError> {
    let (stack, _recorder, _status) = Stack::consuming().await?;
    // Three hand-written rows at the head of the outbox, more than one batch of them.
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO messaging.outbox (id, routing_key, envelope) VALUES ($1, $2, '{\"not\": \"an event\"}')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(ROUTING_KEY)
        .execute(&stack.pool)
        .await?;
    }
    let behind = event(json!({ "n": 1 }));
    stack.commit(&behind).await?;

    stack.relay_with(RelayConfig {
        batch_size: 2,
        ..Stack::relay_config()
    });
    eventually(PATIENCE, || async {
        stack.effects(behind.id).await.unwrap_or(0) == 1
    })
    .await?;
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    let parked = parked_rows(&stack).await?;
    assert_eq!(parked.len(), 3);
    assert!(
        parked
            .iter()
            .all(|(_, _, reason)| reason.starts_with("not an event")),
        "{parked:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_message_the_broker_keeps_refusing_is_parked_and_holds_nothing_up() -> Result<(), BoxError>
{
    let (stack, _recorder, _status) = Stack::consuming().await?;
    // A queue that refuses everything (full at length 0, reject-publish): the broker nacks
    // every message routed to it.
    let connection =
        Connection::connect(&stack.direct_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    topology::declare_exchange(&channel).await?;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare("full".into(), QueueDeclareOptions::default(), full)
        .await?;
    channel
        .queue_bind(
            "full".into(),
            topology::EXCHANGE.into(),
            "shop.full.thing".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let refused = event(json!({ "n": 0 }));
    let mut tx = stack.pool.begin().await?;
    shop_messaging::outbox::postgres::enqueue(&mut tx, "shop.full.thing", &refused).await?;
    shop_messaging::outbox::postgres::commit(tx).await?;
    let behind: Vec<_> = (1..=3).map(|n| event(json!({ "n": n }))).collect();
    for thing in &behind {
        stack.commit(thing).await?;
    }

    // One row per batch: the refused row is at the head of every batch unless it is set aside.
    stack.relay_with(RelayConfig {
        batch_size: 1,
        ..Stack::relay_config()
    });
    for thing in &behind {
        eventually(PATIENCE, || async {
            stack.effects(thing.id).await.unwrap_or(0) == 1
        })
        .await?;
    }
    eventually(PATIENCE, || async {
        parked_rows(&stack).await.is_ok_and(|rows| rows.len() == 1)
    })
    .await?;
    let parked = parked_rows(&stack).await?;
    assert_eq!(parked[0].0, refused.id);
    assert_eq!(parked[0].1, 3, "max_attempts");
    assert!(
        parked[0].2.starts_with("refused 3 times"),
        "{}",
        parked[0].2
    );
    assert_eq!(stack.outbox_rows().await?, 0);

    // Once the cause is fixed, an operator moves it back and it is published.
    channel
        .queue_delete("full".into(), lapin::options::QueueDeleteOptions::default())
        .await?;
    assert_eq!(
        shop_messaging::outbox::postgres::requeue_parked(&stack.pool).await?,
        1
    );
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    assert!(parked_rows(&stack).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_mongodb_entry_that_is_not_an_event_is_parked_and_documents_behind_it_are_relayed()
-> Result<(), BoxError> {
    let (stack, _recorder, _status) = Stack::consuming().await?;
    let (url, name) = isolation::mongo_database().await?;
    let db = mongodb::Client::with_uri_str(&url).await?.database(&name);
    let products = db.collection::<Document>("products");
    products
        .insert_one(doc! {
            "_id": "broken",
            mongo::FIELD: { "0190aaaa-0000-7000-8000-000000000000": { "routing_key": ROUTING_KEY, "envelope": "{not json" } },
        })
        .await?;
    let good = event(json!({ "n": 1 }));
    products
        .insert_one(doc! { "_id": "good", mongo::FIELD: mongo::pending([(ROUTING_KEY, &good)])? })
        .await?;

    stack.tasks.spawn(mongo::Relay::run(
        db.clone(),
        stack.amqp.clone(),
        vec!["products".to_owned()],
        RelayConfig {
            batch_size: 1,
            poll_interval: Duration::from_millis(200),
            ..Stack::relay_config()
        },
        stack.shutdown.clone(),
    ));
    eventually(PATIENCE, || async {
        stack.effects(good.id).await.unwrap_or(0) == 1
    })
    .await?;
    let parked = db.collection::<Document>(mongo::PARKED);
    eventually(PATIENCE, || async {
        parked.count_documents(doc! {}).await.ok() == Some(1)
    })
    .await?;
    let record = parked.find_one(doc! {}).await?.ok_or("parked")?;
    assert!(
        record.get_str("reason")?.starts_with("not an event"),
        "{record}"
    );
    let broken = products
        .find_one(doc! { "_id": "broken" })
        .await?
        .ok_or("document")?;
    assert!(broken.get_document(mongo::FIELD)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn two_relays_with_transactions_committing_out_of_sequence_order_lose_nothing_and_publish_nothing_twice()
-> Result<(), BoxError> {
    let (stack, recorder, status) = Stack::consuming().await?;
    let small_batches = RelayConfig {
        batch_size: 3,
        ..Stack::relay_config()
    };
    stack.relay_with(small_batches.clone());
    stack.relay_with(small_batches);

    // `early` takes its sequence number first and commits last: rows behind it in sequence
    // order are committed (and relayed) before it exists for anyone.
    let early = event(json!({ "n": 0 }));
    let mut open = stack.pool.begin().await?;
    shop_messaging::outbox::postgres::enqueue(&mut open, ROUTING_KEY, &early).await?;
    let later: Vec<_> = (1..=20).map(|n| event(json!({ "n": n }))).collect();
    for thing in &later {
        stack.commit(thing).await?;
    }
    let first = later.first().ok_or("events")?;
    eventually(PATIENCE, || async {
        stack.effects(first.id).await.unwrap_or(0) == 1
    })
    .await?;
    shop_messaging::outbox::postgres::commit(open).await?;

    for thing in later.iter().chain([&early]) {
        eventually(PATIENCE, || async {
            stack.effects(thing.id).await.unwrap_or(0) == 1
        })
        .await?;
    }
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    assert_eq!(status.settled("handled"), 21);
    assert_eq!(
        status.settled("duplicate"),
        0,
        "no event was published twice"
    );
    for thing in later.iter().chain([&early]) {
        assert_eq!(recorder.deliveries_of(thing.id), 1);
    }
    Ok(())
}

/// The advisory lock the test holds to stop a relay right before it deletes its rows.
const HOLD: i64 = 0x7e57;

#[tokio::test]
async fn a_relay_process_killed_between_the_confirm_and_its_commit_causes_a_duplicate_but_one_effect()
-> Result<(), BoxError> {
    let (stack, recorder, status) = Stack::consuming().await?;
    // The relay deletes a row only once the broker confirmed it; this trigger makes that
    // DELETE wait for a lock the test holds, so the process can be killed right there.
    sqlx::query(&format!(
        "CREATE FUNCTION hold_delete() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_advisory_xact_lock({HOLD}); RETURN OLD; END $$"
    ))
    .execute(&stack.pool)
    .await?;
    sqlx::query(
        "CREATE TRIGGER hold_delete BEFORE DELETE ON messaging.outbox
         FOR EACH ROW EXECUTE FUNCTION hold_delete()",
    )
    .execute(&stack.pool)
    .await?;
    let mut holder = stack.pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await?;

    let thing = event(json!({ "n": 1 }));
    stack.commit(&thing).await?;
    let relay = ChildService::start(
        env!("CARGO_BIN_EXE_outbox-relay"),
        [
            ("DATABASE_URL", stack.database_url.as_str()),
            ("AMQP_URL", stack.direct_url.as_str()),
        ],
    )?;

    // Published, confirmed, handled; the relay now waits in its DELETE, not yet committed.
    eventually(PATIENCE, || async {
        stack.effects(thing.id).await.unwrap_or(0) == 1
    })
    .await?;
    eventually(PATIENCE, || async { waiting_on_hold(&stack).await == 1 }).await?;
    relay.kill()?;
    // PostgreSQL notices the dead client once its session stops waiting: release the lock,
    // and the session's DELETE finds no one to commit it.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await?;
    eventually(PATIENCE, || async { unlocked_rows(&stack).await == 1 }).await?;
    sqlx::query("DROP TRIGGER hold_delete ON messaging.outbox")
        .execute(&stack.pool)
        .await?;

    stack.relay(); // the next relay publishes the row again
    eventually(PATIENCE, || async { status.settled("duplicate") == 1 }).await?;
    eventually(PATIENCE, || async {
        stack.outbox_rows().await.unwrap_or(-1) == 0
    })
    .await?;
    assert_eq!(
        stack.effects(thing.id).await?,
        1,
        "delivered twice, applied once"
    );
    assert_eq!(recorder.deliveries_of(thing.id), 1);
    Ok(())
}

/// Outbox rows no transaction holds.
async fn unlocked_rows(stack: &Stack) -> i64 {
    let rows: Result<Vec<uuid::Uuid>, _> =
        sqlx::query_scalar("SELECT id FROM messaging.outbox FOR UPDATE SKIP LOCKED")
            .fetch_all(&stack.pool)
            .await;
    rows.map_or(-1, |rows| i64::try_from(rows.len()).unwrap_or(-1))
}

/// Sessions waiting for the test's advisory lock.
async fn waiting_on_hold(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND NOT granted AND objid = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(HOLD)
    .fetch_one(&stack.pool)
    .await
    .unwrap_or(-1)
}
