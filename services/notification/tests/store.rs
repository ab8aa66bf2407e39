//! The store against the real FerretDB v1 (the native stack's MongoDB server), where only a
//! filter that is exactly `{_id: ...}` is pushed down and everything else reads the whole
//! collection.
//!
//! The claims here are about *which documents each path touches*, never about time: with
//! 20,000 notifications of other users in the history, the record → claim → send → listing
//! path of one user must reach the history by `_id` alone, so that its cost does not depend on
//! how much is stored. A revert to a scan (a claim on `status`, a listing on `user_id`) fails
//! these tests on any machine, fast or slow.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use mongodb::{
    Database,
    bson::{Bson, Document, doc},
    event::{EventHandler, command::CommandEvent},
    options::ClientOptions,
};
use notification_service::{
    config::{DeliveryConfig, SmtpConfig, SmtpTls},
    mailer::Mailer,
    sender::{Reservation, Sender, Wake},
    store::{
        After, BY_USER, CLAIMS, Expiry, Layout, Notification, OUTBOX, Status, Store,
        history_collection, is_history_collection, millis, past_order_email, write_history,
    },
};
use uuid::Uuid;

const DAY: Duration = Duration::from_secs(86_400);
/// Other users' notifications in the history before the path under test runs.
const HISTORY: usize = 20_000;

/// One command the store sent: its name, collection and the filters it carries.
#[derive(Debug, Clone)]
struct Seen {
    command: String,
    collection: String,
    filters: Vec<Document>,
}

/// The filters of a command: `find`'s `filter`, `findAndModify`'s `query`, each update's and
/// delete's `q`, an aggregation's `$match`es.
fn seen(command: &Document, name: &str) -> Option<Seen> {
    let collection = command.get_str(name).ok()?.to_owned();
    let mut filters = Vec::new();
    let docs_in = |field: &str| -> Vec<Document> {
        command
            .get_array(field)
            .map(|array| {
                array
                    .iter()
                    .filter_map(Bson::as_document)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    match name {
        "find" => filters.push(command.get_document("filter").cloned().unwrap_or_default()),
        "findAndModify" => filters.push(command.get_document("query").cloned().unwrap_or_default()),
        "update" => filters.extend(
            docs_in("updates")
                .iter()
                .map(|u| u.get_document("q").cloned().unwrap_or_default()),
        ),
        "delete" => filters.extend(
            docs_in("deletes")
                .iter()
                .map(|d| d.get_document("q").cloned().unwrap_or_default()),
        ),
        "aggregate" | "count" => filters.extend(
            docs_in("pipeline")
                .iter()
                .filter_map(|stage| stage.get_document("$match").ok().cloned()),
        ),
        _ => {}
    }
    Some(Seen {
        command: name.to_owned(),
        collection,
        filters,
    })
}

/// A database of its own, on a client that records every command while `recording` is set.
async fn monitored() -> (Database, Arc<Mutex<Vec<Seen>>>, Arc<Mutex<bool>>) {
    let (url, database) = shop_testkit::isolation::mongo_database().await.unwrap();
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let recording: Arc<Mutex<bool>> = Arc::default();
    let mut options = ClientOptions::parse(&url).await.unwrap();
    let (into, on) = (log.clone(), recording.clone());
    options.command_event_handler = Some(EventHandler::callback(move |event: CommandEvent| {
        if let CommandEvent::Started(started) = event
            && *on.lock().unwrap()
            && let Some(seen) = seen(&started.command, &started.command_name)
        {
            into.lock().unwrap().push(seen);
        }
    }));
    let db = mongodb::Client::with_options(options)
        .unwrap()
        .database(&database);
    (db, log, recording)
}

/// A recorded notification as the handler makes it.
fn notification(user: &str, to: &str, created: chrono::DateTime<Utc>) -> Notification {
    // Recorded when its event was made: the id's time is `created` (a record is never older
    // than its event, which is what lets retention drop whole days of the history).
    let id = event_id_at(created);
    let at = millis(created);
    Notification {
        message_id: format!("<{id}@shop.example>"),
        event_id: id,
        event_type: "user.registered".into(),
        user_id: Some(user.to_owned()),
        channel: "email".into(),
        template: "welcome".into(),
        to: vec![to.to_owned()],
        subject: format!("Welcome {to}"),
        text: "Hello".into(),
        html: "<p>Hello</p>".into(),
        status: Status::Pending,
        attempts: 0,
        last_error: None,
        next_attempt_at: at,
        created_at: at,
        updated_at: at,
        sent_at: None,
        claim_document: false,
    }
}

/// `n` sent notifications of other users, written straight into the history in bulk, with
/// bodies of a realistic size (a rendered order email is a few kilobytes).
async fn seed_history(db: &Database, n: usize) {
    seed_history_over(db, n, 30).await;
}

/// `n` sent emails spread over the last `days` days, each with the UUIDv7 event id its time
/// gives it (so each is where the service keeps it): 30 days is a history that has run for a
/// month; one day puts all of them in today's partition, as a busy day does.
async fn seed_history_over(db: &Database, n: usize, days: i64) {
    let now = Utc::now();
    let step = chrono::Duration::days(days) / i32::try_from(n.max(1)).unwrap();
    write_history(
        db,
        (0..n).map(|i| {
            let created = now - step * i32::try_from(i).unwrap();
            past_order_email(u64::try_from(i).unwrap(), created)
        }),
    )
    .await
    .unwrap();
}

/// A UUIDv7 event id made at `at`, as a producer would have made it then.
fn event_id_at(at: chrono::DateTime<Utc>) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap(),
        at.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts).to_string()
}

/// The history collections of `db`: the day partitions and the one for other ids.
async fn history_count(db: &Database) -> u64 {
    let mut count = 0;
    for name in db.list_collection_names().await.unwrap() {
        if is_history(&name) {
            count += db
                .collection::<Document>(&name)
                .count_documents(doc! {})
                .await
                .unwrap();
        }
    }
    count
}

fn is_history(collection: &str) -> bool {
    is_history_collection(collection)
}

fn smtp() -> SmtpConfig {
    let url = std::env::var("TESTKIT_SMTP_URL")
        .expect("TESTKIT_SMTP_URL is set (source .local/test.env)");
    let (host, port) = url
        .trim_start_matches("smtp://")
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap();
    SmtpConfig {
        host: host.to_owned(),
        port: port.parse().unwrap(),
        from: "Shop <no-reply@shop.example>".parse().unwrap(),
        timeout: Duration::from_secs(5),
        tls: SmtpTls::None,
        ca: None,
        credentials: None,
    }
}

fn sender(store: &Store) -> Sender {
    Sender {
        store: store.clone(),
        mailer: Mailer::new(&smtp()).unwrap(),
        config: DeliveryConfig {
            backoff_max: Duration::from_millis(300),
            max_attempts: 3,
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(15),
            concurrency: 4,
        },
        wake: Arc::new(Wake::default()),
    }
}

/// `{_id: "<a string>"}` and nothing else: the only filter FerretDB v1 answers without
/// reading the whole collection.
fn keyed(filter: &Document) -> bool {
    filter.len() == 1 && matches!(filter.get("_id"), Some(Bson::String(_)))
}

#[tokio::test]
async fn with_a_large_history_recording_sending_and_listing_one_users_mail_reach_the_history_by_id_only()
 {
    let (db, log, recording) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    assert_eq!(
        store.layout(),
        Layout::Keyed,
        "these tests run against FerretDB v1"
    );
    store.install().await.unwrap();
    seed_history(&db, HISTORY).await;

    *recording.lock().unwrap() = true;
    let user = Uuid::new_v4().to_string();
    let to = format!("history-{}@example.com", Uuid::new_v4().simple());
    let now = Utc::now();
    let first = notification(&user, &to, now - chrono::Duration::seconds(1));
    let second = notification(&user, &to, now);
    assert!(store.insert(&first).await.unwrap());
    assert!(store.insert(&second).await.unwrap());
    assert!(!store.insert(&second).await.unwrap(), "a redelivery");
    let sender = sender(&store);
    for id in [&first.event_id, &second.event_id] {
        let claimed = store.claim(id, sender.config.lease).await.unwrap().unwrap();
        assert_eq!(claimed.attempts, 1);
        sender.deliver(claimed).await;
    }
    assert!(
        store.due(100).await.unwrap().is_empty(),
        "nothing left to send"
    );
    let page = store.list_for_user(&user, 1, None).await.unwrap();
    let rest = store
        .list_for_user(
            &user,
            10,
            Some(&After {
                created_at: notification_service::store::chrono(page[0].created_at),
                event_id: page[0].event_id.clone(),
            }),
        )
        .await
        .unwrap();
    *recording.lock().unwrap() = false;

    // The user's two, newest first, both sent; nobody else's.
    let listed: Vec<(&str, Status)> = page
        .iter()
        .chain(&rest)
        .map(|n| (n.event_id.as_str(), n.status))
        .collect();
    assert_eq!(
        listed,
        [
            (second.event_id.as_str(), Status::Sent),
            (first.event_id.as_str(), Status::Sent)
        ]
    );

    // The design property: the history (and every collection that grows with it) was only
    // ever reached by `_id`; the one collection searched is the outbox, which holds what is
    // pending and is empty again now.
    let log = log.lock().unwrap().clone();
    let history_reads = log.iter().filter(|s| is_history(&s.collection)).count();
    assert!(history_reads >= 6, "the path was recorded: {log:#?}");
    for seen in &log {
        match seen.collection.as_str() {
            OUTBOX => {}
            name if is_history(name) || name == CLAIMS || name == BY_USER => assert!(
                seen.filters.iter().all(keyed),
                "{} on {} with a filter FerretDB v1 answers by reading all {HISTORY}+ documents: {:?}",
                seen.command,
                seen.collection,
                seen.filters
            ),
            other => panic!("an unexpected collection: {other} ({seen:?})"),
        }
    }
    // And of the history only the day the two notifications belong to: the 30 days of
    // history seeded around it (and the collection for other ids) are never read.
    let days = [
        history_collection(&first.event_id),
        history_collection(&second.event_id),
    ];
    for seen in log.iter().filter(|s| is_history(&s.collection)) {
        assert!(
            days.contains(&seen.collection),
            "{} reached {}, not the notifications' own day: {seen:?}",
            seen.command,
            seen.collection
        );
    }
    let outbox = db.collection::<Document>(OUTBOX);
    assert_eq!(outbox.count_documents(doc! {}).await.unwrap(), 0);
    // Both attempts were claimed by the store, with a claim document each; both are gone.
    let claims = db.collection::<Document>(CLAIMS);
    assert_eq!(claims.count_documents(doc! {}).await.unwrap(), 0);
    assert_eq!(
        history_count(&db).await,
        u64::try_from(HISTORY).unwrap() + 2
    );
}

#[tokio::test]
async fn an_attempt_someone_else_claimed_is_not_claimed_again() {
    let (db, _, _) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let mine = notification("u", "a@example.com", Utc::now());
    store.insert(&mine).await.unwrap();

    // Another instance read the same outbox entry and inserted the claim of attempt 1 first
    // (FerretDB v1 has no atomic read-and-update: this insert is what decides).
    db.collection::<Document>(CLAIMS)
        .insert_one(doc! { "_id": format!("{}#1", mine.event_id), "at": bson_now() })
        .await
        .unwrap();
    assert_eq!(store.claim(&mine.event_id, DAY).await.unwrap(), None);

    // Nobody holds attempt 2 yet: a lease of nothing lets it be claimed at once.
    db.collection::<Document>(OUTBOX)
        .update_one(
            doc! { "_id": &mine.event_id },
            doc! { "$set": { "attempts": 1 } },
        )
        .await
        .unwrap();
    let claimed = store.claim(&mine.event_id, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.map(|n| n.attempts), Some(2));
    // And while its lease runs, not again.
    let other = notification("u", "a@example.com", Utc::now());
    store.insert(&other).await.unwrap();
    assert!(store.claim(&other.event_id, DAY).await.unwrap().is_some());
    assert_eq!(store.claim(&other.event_id, DAY).await.unwrap(), None);
}

fn bson_now() -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::now()
}

#[tokio::test]
async fn a_recording_cut_short_by_a_crash_is_completed_when_the_event_comes_again() {
    let (db, _, _) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let user = Uuid::new_v4().to_string();
    let cut = notification(&user, "cut@example.com", Utc::now());
    // The crash: the history document was written, its outbox and bucket entries were not.
    db.collection::<Notification>(&history_collection(&cut.event_id))
        .insert_one(&cut)
        .await
        .unwrap();
    assert_eq!(store.claim(&cut.event_id, DAY).await.unwrap(), None);
    assert!(
        store
            .list_for_user(&user, 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    // The consumer redelivers the event (the handler never returned): still one record.
    assert!(!store.insert(&cut).await.unwrap());
    let listed = store.list_for_user(&user, 10, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    let claimed = store.claim(&cut.event_id, DAY).await.unwrap().unwrap();
    store.mark_sent(&claimed).await.unwrap();

    // An entry re-added after it was sent (a repair racing the sender) is dropped, not sent.
    db.collection::<Document>(OUTBOX)
        .insert_one(doc! { "_id": &cut.event_id, "attempts": 1, "next_attempt_at": bson_now(), "created_at": bson_now() })
        .await
        .unwrap();
    assert_eq!(store.claim(&cut.event_id, DAY).await.unwrap(), None);
    assert!(store.due(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn notifications_older_than_the_retention_period_are_deleted_where_the_server_has_no_ttl() {
    let (db, _, _) = monitored().await;
    let store = Store::open(&db, 30 * DAY).await.unwrap();
    // FerretDB v1 refuses `expireAfterSeconds`: the service must delete by itself.
    assert_eq!(store.install().await.unwrap(), Expiry::Sweep);

    let user = Uuid::new_v4().to_string();
    let now = Utc::now();
    let old = notification(&user, "old@example.com", now - chrono::Duration::days(100));
    let recent = notification(
        &user,
        "recent@example.com",
        now - chrono::Duration::days(29),
    );
    store.insert(&old).await.unwrap();
    store.insert(&recent).await.unwrap();

    assert_eq!(store.expire(now).await.unwrap(), 1);
    assert_eq!(store.get(&old.event_id).await.unwrap(), None);
    assert!(store.get(&recent.event_id).await.unwrap().is_some());
    let outbox = db.collection::<Document>(OUTBOX);
    assert_eq!(
        outbox
            .count_documents(doc! { "_id": &old.event_id })
            .await
            .unwrap(),
        0,
        "nothing expired is still queued to be sent"
    );
    let buckets = db.collection::<Document>(BY_USER);
    assert_eq!(
        buckets.count_documents(doc! {}).await.unwrap(),
        1,
        "only the recent month's bucket is left"
    );
    let listed: Vec<String> = store
        .list_for_user(&user, 10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.event_id)
        .collect();
    assert_eq!(listed, [recent.event_id]);
}

/// Not a test: the measurement behind ADR 0012's tables. Seeds `NOTIFY_BENCH_STORED` (default
/// 100,000) notifications of other users, spread over the last `NOTIFY_BENCH_DAYS` (default
/// 30) days, then times one record +
/// claim + SMTP send + mark, one listing of a user who has two, and one retention sweep with
/// nothing to expire, on `Layout::Keyed` (the day partitions). The "before" rows of the ADR
/// came from this test before the history was partitioned.
///
/// `cargo test -p notification-service --test integration -- --ignored --nocapture store::measure`
#[tokio::test]
#[ignore = "a measurement, minutes long; run by hand"]
#[allow(clippy::print_stdout)] // a measurement reports what it measured
async fn measure_claim_send_and_listing_on_a_large_history() {
    use std::time::Instant;

    let stored: usize = std::env::var("NOTIFY_BENCH_STORED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let days: i64 = std::env::var("NOTIFY_BENCH_DAYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let (db, _, _) = monitored().await;
    let started = Instant::now();
    seed_history_over(&db, stored, days).await;
    println!(
        "seeded {stored} over {days} days in {:?}",
        started.elapsed()
    );

    // `Layout::Indexed` would read the one `notifications` collection, which the seeds (in
    // their day partitions) do not fill: its "before" figures are in ADR 0012.
    for layout in [Layout::Keyed] {
        let store = Store::new(&db, layout, 90 * DAY);
        store.install().await.unwrap();
        let sender = sender(&store);
        let user = Uuid::new_v4().to_string();
        let to = format!("bench-{}@example.com", Uuid::new_v4().simple());
        store
            .insert(&notification(&user, &to, Utc::now()))
            .await
            .unwrap();

        let mine = notification(&user, &to, Utc::now());
        let started = Instant::now();
        store.insert(&mine).await.unwrap();
        let recorded = started.elapsed();
        let claimed = match layout {
            Layout::Keyed => store.claim(&mine.event_id, sender.config.lease).await,
            Layout::Indexed => store.claim_due(sender.config.lease).await,
        }
        .unwrap()
        .unwrap();
        let claim = started.elapsed() - recorded;
        sender.deliver(claimed).await;
        let sent = started.elapsed();

        let started = Instant::now();
        let listed = store.list_for_user(&user, 21, None).await.unwrap();
        let listing = started.elapsed();
        assert_eq!(listed.len(), 2);

        let started = Instant::now();
        store.expire(Utc::now()).await.unwrap();
        let sweep = started.elapsed();
        println!(
            "{layout:?} with {stored} stored: record {recorded:?}, claim {claim:?}, record+claim+send+mark {sent:?}; listing {listing:?}; sweep {sweep:?}"
        );
    }
}

/// A mail server that holds every message `hold` before its `250` and remembers the most
/// messages it was holding at once.
async fn slow_smtp(hold: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (holding, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = peak.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (holding, peak) = (holding.clone(), peak.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                write.write_all(b"220 slow ESMTP\r\n").await.ok()?;
                let (mut line, mut data) = (String::new(), false);
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.ok()? == 0 {
                        return Some(());
                    }
                    let reply: &[u8] = if data {
                        if line != ".\r\n" {
                            continue;
                        }
                        data = false;
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        b"250 OK\r\n"
                    } else {
                        match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "EHLO" => b"250-slow\r\n250 8BITMIME\r\n",
                            "DATA" => {
                                data = true;
                                b"354 go on\r\n"
                            }
                            "QUIT" => {
                                write.write_all(b"221 Bye\r\n").await.ok()?;
                                return Some(());
                            }
                            _ => b"250 OK\r\n",
                        }
                    };
                    write.write_all(reply).await.ok()?;
                }
            });
        }
    });
    (port, seen)
}

/// A burst of confirmations is not sent one after the other: with a mail server that takes
/// 300 ms per message, the sender has several in flight at once (`NOTIFY_SEND_CONCURRENCY`),
/// and every one is sent and recorded once.
#[tokio::test]
async fn a_burst_of_emails_is_sent_several_at_a_time_each_once() {
    let (db, _, _) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let (port, peak) = slow_smtp(Duration::from_millis(300)).await;
    let mut sender = sender(&store);
    sender.mailer = Mailer::new(&SmtpConfig { port, ..smtp() }).unwrap();
    let user = Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for i in 0..8 {
        let n = notification(&user, &format!("burst-{i}@example.com"), Utc::now());
        store.insert(&n).await.unwrap();
        sender.wake.recorded(&n.event_id);
        ids.push(n.event_id);
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(sender.clone().run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut sent = 0;
        for id in &ids {
            let n = store.get(id).await.unwrap().unwrap();
            if n.status == Status::Sent {
                assert_eq!(n.attempts, 1, "{id} was sent once");
                sent += 1;
            }
        }
        if sent == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} of {} sent",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    assert!(
        peak.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the mail server never held two messages at once"
    );
    assert!(store.due(10).await.unwrap().is_empty());
}

/// Records a notification as the handler does when its sender has room in memory, with the
/// handler's own calls (`Wake::reserve`, `Reservation::claim`): the first attempt claimed by
/// the recording, due again only after the wake's lease. Returns the place in the sender's
/// memory, not yet filled. (`tests/notifications.rs` proves the handler makes these calls.)
async fn record_claimed(store: &Store, wake: &Arc<Wake>) -> (Reservation, Notification) {
    let reservation = wake.reserve().expect("room for one");
    let to = format!("claimed-{}@example.com", Uuid::new_v4().simple());
    let mut n = notification(&Uuid::new_v4().to_string(), &to, Utc::now());
    reservation.claim(&mut n);
    assert_eq!(n.attempts, 1, "the recording takes the first attempt");
    assert!(store.insert(&n).await.unwrap());
    (reservation, n)
}

/// The store of `db` through a client of the test's own, which [`monitored`] does not record:
/// the test watches through it, so that only the sender's commands are recorded.
async fn watching(db: &Database) -> Store {
    let url = shop_testkit::infra::mongodb_url().await.unwrap();
    let watcher = mongodb::Client::with_uri_str(&url).await.unwrap();
    Store::new(&watcher.database(db.name()), Layout::Keyed, 90 * DAY)
}

/// Runs `sender` until `watch` sees `id` no longer pending; returns it.
async fn send_until_settled(sender: &Sender, watch: &Store, id: &str) -> Notification {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(sender.clone().run(shutdown.clone()));
    let settled = settled(watch, id).await;
    shutdown.cancel();
    running.await.unwrap();
    settled
}

/// Waits until the history says `id` is no longer pending; returns it.
async fn settled(store: &Store, id: &str) -> Notification {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = store.get(id).await.unwrap().unwrap();
        if n.status != Status::Pending {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new email's first attempt is claimed by its recording: nobody else can take it while
/// the lease lasts, and the sender sends it from memory — no claim document written or
/// deleted, no read of the outbox or the history, only the outcome written.
#[tokio::test]
async fn an_email_claimed_by_its_recording_is_sent_from_memory_and_no_one_else_can_take_it() {
    let (db, log, recording) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let mut sender = sender(&store);
    sender.wake = Arc::new(Wake::with_lease(sender.config.lease));
    let (reservation, n) = record_claimed(&store, &sender.wake).await;
    assert_eq!(
        store.claim(&n.event_id, sender.config.lease).await.unwrap(),
        None,
        "another sender took the attempt its recording claimed"
    );
    assert!(
        store.due(10).await.unwrap().is_empty(),
        "not due while leased"
    );

    let observed = watching(&db).await;
    *recording.lock().unwrap() = true;
    reservation.fill(n.clone());
    let sent = send_until_settled(&sender, &observed, &n.event_id).await;
    *recording.lock().unwrap() = false;
    assert_eq!((sent.status, sent.attempts), (Status::Sent, 1));

    let log = log.lock().unwrap().clone();
    let mine = |seen: &&Seen| {
        seen.filters
            .iter()
            .any(|f| f.get_str("_id").is_ok_and(|id| id.starts_with(&n.event_id)))
    };
    let claims_or_reads: Vec<&Seen> = log
        .iter()
        .filter(mine)
        .filter(|seen| seen.command == "find" || seen.collection == CLAIMS)
        .collect();
    assert!(
        claims_or_reads.is_empty(),
        "claimed or read again: {claims_or_reads:#?}"
    );
    assert!(
        log.iter()
            .filter(mine)
            .any(|seen| seen.command == "update" && is_history(&seen.collection)),
        "the outcome was written: {log:#?}"
    );
    assert!(store.due(10).await.unwrap().is_empty());
}

/// An email the sender reaches only after half of its recording's lease is not sent from
/// memory (the rest of the lease might not cover the conversation): the lease runs out and
/// the store hands out attempt 2, which is sent once.
#[tokio::test]
async fn an_email_reached_after_half_its_recordings_lease_is_left_to_the_store_and_sent_once() {
    let (db, _, _) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let lease = Duration::from_millis(600);
    let mut sender = sender(&store);
    sender.wake = Arc::new(Wake::with_lease(lease));
    let (reservation, n) = record_claimed(&store, &sender.wake).await;
    tokio::time::sleep(lease / 2 + Duration::from_millis(50)).await;
    reservation.fill(n.clone());
    let sent = send_until_settled(&sender, &store, &n.event_id).await;
    assert_eq!(
        (sent.status, sent.attempts),
        (Status::Sent, 2),
        "sent by the store's next attempt, not from memory"
    );
}

/// A sender that keeps up with new emails runs out of work after each one. It searches the
/// outbox for due emails (and counts the pending ones for its gauge) once a poll interval, not
/// each time: the emails claimed by their recording come from memory, and nothing else can
/// have come due in between that a search would find sooner than the next poll.
#[tokio::test]
async fn a_sender_keeping_up_with_new_emails_searches_the_outbox_once_a_poll_interval() {
    let (db, log, recording) = monitored().await;
    let store = Store::open(&db, 90 * DAY).await.unwrap();
    store.install().await.unwrap();
    let mut sender = sender(&store);
    sender.config.poll = Duration::from_secs(60);
    sender.wake = Arc::new(Wake::with_lease(sender.config.lease));
    let observed = watching(&db).await;

    *recording.lock().unwrap() = true;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(sender.clone().run(shutdown.clone()));
    for _ in 0..5 {
        let (reservation, n) = record_claimed(&store, &sender.wake).await;
        reservation.fill(n.clone());
        assert_eq!(settled(&observed, &n.event_id).await.status, Status::Sent);
    }
    shutdown.cancel();
    running.await.unwrap();
    *recording.lock().unwrap() = false;

    let log = log.lock().unwrap().clone();
    let on_outbox = |command: &str| {
        log.iter()
            .filter(|seen| seen.collection == OUTBOX && seen.command == command)
            .count()
    };
    assert_eq!(on_outbox("find"), 1, "searched for due emails: {log:#?}");
    assert!(
        on_outbox("count") + on_outbox("aggregate") <= 1,
        "counted the pending ones: {log:#?}"
    );
}
