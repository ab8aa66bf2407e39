//! Events in, emails out, against the real FerretDB, RabbitMQ, SMTP server (MailDev, read back
//! through its REST API) and an in-process user-service.
//!
//! Needs the native stack's mail catcher: `deploy/local/stack.sh infra-up` writes
//! `TESTKIT_SMTP_URL` and `TESTKIT_MAIL_API` into `.local/test.env`. Each test uses addresses
//! no other test uses, so the tests share the catcher and still run in parallel.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::{future::Future, time::Duration};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::AMQPValue,
};
use mongodb::bson::doc;
use notification_service::{CONSUMER, NotificationService};
use serde_json::{Value, json};
use shop_events::{
    Money,
    inventory::{OutOfStock, StockLevel, StockLow},
    order::{OrderCancelled, OrderConfirmed, OrderLine},
    payment::PaymentFailed,
    user::UserRegistered,
};
use shop_messaging::{
    Envelope, Event,
    topology::{self, ConsumerQueues, REASON_HEADER},
};
use shop_testkit::{TestApp, proxy::TcpProxy, spawn_with};
use user_service::UserService;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(30);
const SECRET: &str = "notification-test-secret-0123456789abcdef";
const PASSWORD: &str = "correct horse battery";
/// Short delay queues, declared by the test exactly as the service declares them: about 7 s
/// of retries before a message is parked, plenty for a cut the test restores at once.
const RETRY_DELAYS_MS: [u64; 5] = [300, 600, 1000, 2000, 3000];

fn smtp_addr() -> String {
    let url = std::env::var("TESTKIT_SMTP_URL").expect(
        "TESTKIT_SMTP_URL is set (source .local/test.env after deploy/local/stack.sh infra-up)",
    );
    url.trim_start_matches("smtp://")
        .trim_end_matches('/')
        .to_owned()
}

fn mail_api() -> String {
    std::env::var("TESTKIT_MAIL_API").expect("TESTKIT_MAIL_API is set (source .local/test.env)")
}

/// An address only this test run uses.
fn address(who: &str) -> String {
    format!("{who}-{}@example.com", Uuid::new_v4().simple())
}

/// Polls `condition` every 100 ms until it returns `Some`, or fails after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The mails the catcher holds for `to`.
async fn mails_to(to: &str) -> Vec<Value> {
    let mails: Value = reqwest::Client::new()
        .get(format!("{}/email", mail_api()))
        .query(&[("to.address", to)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    mails.as_array().cloned().unwrap_or_default()
}

/// Waits until exactly `n` mails for `to` arrived and returns them.
async fn wait_for_mails(to: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} mail(s) to {to}"), || async {
        let mails = mails_to(to).await;
        (mails.len() >= n).then_some(mails)
    })
    .await
}

/// user-service with notification-service as a service client.
async fn users() -> TestApp {
    spawn_with::<UserService>([("SERVICE_CLIENTS", format!("notification-service={SECRET}"))])
        .await
        .unwrap()
}

/// A registered user: (id, email, access token).
async fn register(users: &TestApp, name: &str) -> (Uuid, String, String) {
    let email = address(&name.to_lowercase().replace(' ', "."));
    let created: Value = users
        .client
        .post(users.url("/api/v1/auth/register"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login: Value = users
        .client
        .post(users.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["id"].as_str().unwrap().parse().unwrap(),
        email,
        login["access_token"].as_str().unwrap().to_owned(),
    )
}

/// notification-service wired to `users` (gRPC at `user_grpc`), sending to `smtp`.
async fn notifications(users: &TestApp, user_grpc: &str, smtp: &str, admins: &str) -> TestApp {
    notifications_with(users, user_grpc, smtp, admins, []).await
}

/// [`notifications`] with more settings (e.g. a database seeded beforehand).
async fn notifications_with<const N: usize>(
    users: &TestApp,
    user_grpc: &str,
    smtp: &str,
    admins: &str,
    more: [(&str, String); N],
) -> TestApp {
    let (host, port) = smtp.rsplit_once(':').unwrap();
    let delays: Vec<String> = RETRY_DELAYS_MS.iter().map(ToString::to_string).collect();
    let settings = [
        ("SMTP_HOST", host.to_owned()),
        ("SMTP_PORT", port.to_owned()),
        ("NOTIFY_ADMIN_EMAILS", admins.to_owned()),
        ("USER_GRPC_URL", format!("http://{user_grpc}")),
        ("SERVICE_TOKEN_URL", users.url("/internal/v1/service-token")),
        ("SERVICE_SECRET", SECRET.to_owned()),
        ("AUTH_JWKS_URL", users.url("/.well-known/jwks.json")),
        ("NOTIFY_RETRY_DELAYS_MS", delays.join(",")),
        ("NOTIFY_SEND_BACKOFF_MAX_MS", "300".to_owned()),
        ("NOTIFY_POLL_MS", "100".to_owned()),
        ("SMTP_TIMEOUT_MS", "2000".to_owned()),
    ];
    spawn_with::<NotificationService>(settings.into_iter().chain(more))
        .await
        .unwrap()
}

/// Publishes to the service's vhost, with publisher confirms. Declares the consumer's queues
/// first (exactly as the consumer does), so nothing published before it attached is lost.
struct Broker {
    channel: lapin::Channel,
    _connection: Connection,
}

impl Broker {
    async fn of(app: &TestApp) -> Self {
        let connection = Connection::connect(&app.env["AMQP_URL"], ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let delays: Vec<Duration> = RETRY_DELAYS_MS
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        let bindings = [
            UserRegistered::ROUTING_KEY,
            OrderConfirmed::ROUTING_KEY,
            OrderCancelled::ROUTING_KEY,
            PaymentFailed::ROUTING_KEY,
            StockLow::ROUTING_KEY,
            OutOfStock::ROUTING_KEY,
        ]
        .map(str::to_owned);
        topology::declare_consumer(
            &channel,
            &ConsumerQueues::new(CONSUMER, &delays),
            &bindings,
            topology::DELIVERY_LIMIT,
        )
        .await
        .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            channel,
            _connection: connection,
        }
    }

    async fn publish_envelope(&self, routing_key: &str, envelope: &Envelope) {
        self.channel
            .basic_publish(
                topology::EXCHANGE.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &envelope.to_vec(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish<E: Event>(&self, event: &E) -> Envelope {
        let envelope = event.envelope().unwrap();
        self.publish_envelope(E::ROUTING_KEY, &envelope).await;
        envelope
    }

    /// The next parked message's reason (waits for one).
    async fn parked_reason(&self) -> String {
        let parking = format!("{CONSUMER}.events.parking");
        eventually("a parked message", || async {
            let delivery = self
                .channel
                .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()?;
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            match headers.inner().get(REASON_HEADER) {
                Some(AMQPValue::LongString(reason)) => Some(reason.to_string()),
                other => Some(format!("{other:?}")),
            }
        })
        .await
    }
}

fn eur(amount: i64) -> Money {
    Money {
        amount,
        currency: "EUR".into(),
    }
}

fn level(sku: &str, available: i64) -> StockLevel {
    StockLevel {
        sku: sku.into(),
        available,
        reserved: 1,
        version: 3,
    }
}

/// The notification record of an event, read straight from the service's database.
async fn record(app: &TestApp, event_id: Uuid) -> Option<mongodb::bson::Document> {
    let client = mongodb::Client::with_uri_str(&app.env["MONGODB_URL"])
        .await
        .unwrap();
    client
        .database(&app.env["MONGODB_DATABASE"])
        .collection::<mongodb::bson::Document>(&notification_service::store::history_collection(
            &event_id.to_string(),
        ))
        .find_one(doc! { "_id": event_id.to_string() })
        .await
        .unwrap()
}

#[tokio::test]
async fn each_event_becomes_one_email_to_its_recipient_and_the_user_lists_their_own() {
    let users = users().await;
    let admin = address("stock-admin");
    let app = notifications(&users, &users.grpc_addr.to_string(), &smtp_addr(), &admin).await;
    let broker = Broker::of(&app).await;
    let (user_id, email, token) = register(&users, "Ada Lovelace").await;
    let order_id = Uuid::new_v4();

    broker
        .publish(&UserRegistered {
            user_id,
            email: email.clone(),
            name: "Ada Lovelace".into(),
        })
        .await;
    broker
        .publish(&OrderConfirmed {
            order_id,
            user_id,
            items: vec![OrderLine {
                product_id: "p-1".into(),
                sku: "MUG-1".into(),
                name: "Blue mug".into(),
                quantity: 2,
                unit_price: eur(1250),
            }],
            total: eur(2500),
        })
        .await;
    broker
        .publish(&OrderCancelled {
            order_id,
            user_id,
            reason: "out_of_stock".into(),
            total: eur(2500),
        })
        .await;
    broker
        .publish(&PaymentFailed {
            payment_id: Uuid::new_v4(),
            order_id,
            user_id,
            amount: eur(1999),
            reason: "insufficient_funds".into(),
            card_brand: "visa".into(),
            card_last4: "9995".into(),
        })
        .await;
    broker
        .publish(&StockLow {
            level: level("MUG-1", 2),
            threshold: 5,
        })
        .await;
    broker
        .publish(&OutOfStock {
            level: level("MUG-2", 0),
        })
        .await;

    let mails = wait_for_mails(&email, 4).await;
    let text_of = |needle: &str| -> String {
        let mail = mails
            .iter()
            .find(|mail| {
                mail["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(needle)
            })
            .unwrap_or_else(|| panic!("a mail whose subject contains '{needle}' in {mails:#?}"));
        assert!(
            mail["html"].as_str().unwrap().contains("<html"),
            "multipart with HTML"
        );
        mail["text"].as_str().unwrap().to_owned()
    };
    assert!(text_of("Welcome to the shop, Ada Lovelace").contains("Hello Ada Lovelace"));
    let confirmed = text_of("is confirmed");
    assert!(
        confirmed.contains("2 x Blue mug at 12.50 EUR"),
        "{confirmed}"
    );
    assert!(confirmed.contains("Total: 25.00 EUR"), "{confirmed}");
    let cancelled = text_of("was cancelled");
    assert!(cancelled.contains("no longer in stock"), "{cancelled}");
    let failed = text_of("Your payment of 19.99 EUR did not go through");
    assert!(
        failed.contains("insufficient funds") && failed.contains("9995"),
        "{failed}"
    );

    let alerts = wait_for_mails(&admin, 2).await;
    let subjects: Vec<&str> = alerts
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert!(
        subjects.contains(&"Stock low: MUG-1 (2 left)"),
        "{subjects:?}"
    );
    assert!(subjects.contains(&"Out of stock: MUG-2"), "{subjects:?}");

    // Exactly one each, once every record says sent.
    let listing: Value = eventually("four sent notifications listed", || async {
        let listing: Value = app
            .client
            .get(app.url("/api/v1/notifications?limit=3"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sent = listing["items"]
            .as_array()?
            .iter()
            .all(|item| item["status"] == "sent");
        sent.then_some(listing)
    })
    .await;
    assert_eq!(mails_to(&email).await.len(), 4);
    assert_eq!(mails_to(&admin).await.len(), 2);

    // Own only (no stock alerts), newest first, in pages. The consumer handles several
    // events at once, so "newest" is the order they were recorded in, not the order they were
    // published in: the pages are checked against their own timestamps.
    let first = listing["items"].as_array().unwrap();
    assert_eq!(first.len(), 3);
    let cursor = listing["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .client
        .get(app.url("/api/v1/notifications"))
        .query(&[("limit", "3"), ("cursor", cursor)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rest = rest["items"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 1);
    let all: Vec<&Value> = first.iter().chain(&rest).collect();
    let mut templates: Vec<&str> = all.iter().filter_map(|n| n["template"].as_str()).collect();
    templates.sort_unstable();
    assert_eq!(
        templates,
        [
            "order_cancelled",
            "order_confirmed",
            "payment_failed",
            "welcome"
        ]
    );
    // The keyset the API promises: (created_at, id), strictly descending across pages. RFC
    // 3339 in UTC with milliseconds is fixed width, so text order is time order; the id breaks
    // ties within a millisecond.
    let keys: Vec<(&str, &str)> = all
        .iter()
        .filter_map(|n| Some((n["created_at"].as_str()?, n["id"].as_str()?)))
        .collect();
    assert_eq!(keys.len(), 4);
    assert!(
        keys.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first across pages: {keys:?}"
    );

    let anonymous = app.get("/api/v1/notifications").await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_redelivered_event_sends_one_email() {
    let users = users().await;
    let app = notifications(
        &users,
        &users.grpc_addr.to_string(),
        &smtp_addr(),
        "ops@example.com",
    )
    .await;
    let broker = Broker::of(&app).await;
    let email = address("twice");
    let welcome = UserRegistered {
        user_id: Uuid::new_v4(),
        email: email.clone(),
        name: "Twice".into(),
    }
    .envelope()
    .unwrap();
    broker
        .publish_envelope(UserRegistered::ROUTING_KEY, &welcome)
        .await;
    broker
        .publish_envelope(UserRegistered::ROUTING_KEY, &welcome)
        .await;
    // A different event to the same address, published last. Caveat: the consumer handles up
    // to four messages at once, so this mail arriving shows that the first copy was handled,
    // not that the second was; a second mail that copy would send could come after the count
    // below (a known gap of this test since consumers became concurrent).
    broker
        .publish(&UserRegistered {
            user_id: Uuid::new_v4(),
            email: email.clone(),
            name: "Marker".into(),
        })
        .await;
    // Both mails, in whichever order the sender sends them: the two records are sent
    // independently, so the marker's mail can leave before the welcome's.
    let mails = eventually("the welcome and the marker mail", || async {
        let mails = mails_to(&email).await;
        let has = |word: &str| {
            mails
                .iter()
                .any(|mail| mail["subject"].as_str().unwrap_or_default().contains(word))
        };
        (has("Marker") && has("Twice")).then_some(mails)
    })
    .await;
    let copies = mails
        .iter()
        .filter(|mail| {
            mail["subject"]
                .as_str()
                .unwrap_or_default()
                .contains("Twice")
        })
        .count();
    assert_eq!(copies, 1, "{mails:#?}");
    assert_eq!(
        record(&app, welcome.id)
            .await
            .unwrap()
            .get_str("status")
            .unwrap(),
        "sent"
    );
}

/// The handler records a new email with its first attempt already claimed (`attempts: 1`, due
/// again only a lease later) and hands it to its sender in memory. A mail server that accepts
/// the connection and never answers keeps that attempt in flight, and the record says so.
/// Recorded unclaimed, the record would read `attempts: 0` and be due at once until the
/// outcome: on FerretDB a claim in the store writes only the outbox and the claims.
#[tokio::test]
async fn the_handler_records_a_new_email_with_its_first_attempt_claimed() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            open.push(connection);
        }
    });
    let users = users().await;
    let app = notifications(
        &users,
        &users.grpc_addr.to_string(),
        &smtp,
        "ops@example.com",
    )
    .await;
    let broker = Broker::of(&app).await;
    let welcome = broker
        .publish(&UserRegistered {
            user_id: Uuid::new_v4(),
            email: address("claimed"),
            name: "Claimed".into(),
        })
        .await;

    let recorded = eventually("the welcome recorded", || record(&app, welcome.id)).await;
    assert_eq!(recorded.get_str("status").unwrap(), "pending", "{recorded}");
    assert_eq!(recorded.get_i32("attempts").unwrap(), 1, "{recorded}");
    let (created, next) = (
        recorded.get_datetime("created_at").unwrap(),
        recorded.get_datetime("next_attempt_at").unwrap(),
    );
    assert!(next > created, "not leased to its recorder: {recorded}");
    held.abort();
}

#[tokio::test]
async fn emails_wait_while_smtp_is_down_and_arrive_once_when_it_returns() {
    let users = users().await;
    let smtp = TcpProxy::start(&smtp_addr()).await.unwrap();
    let app = notifications(
        &users,
        &users.grpc_addr.to_string(),
        &smtp.addr().to_string(),
        "ops@example.com",
    )
    .await;
    let broker = Broker::of(&app).await;
    let email = address("outage");
    smtp.cut();

    let welcome = broker
        .publish(&UserRegistered {
            user_id: Uuid::new_v4(),
            email: email.clone(),
            name: "Patient".into(),
        })
        .await;
    // Tried during the outage, still pending.
    let during = eventually("two failed attempts", || async {
        let record = record(&app, welcome.id).await?;
        (record.get_i32("attempts").ok()? >= 2).then_some(record)
    })
    .await;
    assert_eq!(during.get_str("status").unwrap(), "pending");
    assert!(
        during
            .get_str("last_error")
            .unwrap()
            .contains("mail server"),
        "{during}"
    );
    assert!(mails_to(&email).await.is_empty());

    smtp.restore();
    wait_for_mails(&email, 1).await;
    let after = eventually("the record marked sent", || async {
        let record = record(&app, welcome.id).await?;
        (record.get_str("status").ok()? == "sent").then_some(record)
    })
    .await;
    assert_eq!(mails_to(&email).await.len(), 1, "{after}");
}

#[tokio::test]
async fn user_service_down_delays_a_notification_others_flow_and_malformed_events_are_parked() {
    let users = users().await;
    let grpc = TcpProxy::start(&users.grpc_addr.to_string()).await.unwrap();
    let app = notifications(
        &users,
        &grpc.addr().to_string(),
        &smtp_addr(),
        "ops@example.com",
    )
    .await;
    let broker = Broker::of(&app).await;
    let (user_id, email, _token) = register(&users, "Grace Hopper").await;
    grpc.cut();

    broker
        .publish(&PaymentFailed {
            payment_id: Uuid::new_v4(),
            order_id: Uuid::new_v4(),
            user_id,
            amount: eur(4200),
            reason: "card_declined".into(),
            card_brand: "mastercard".into(),
            card_last4: "0002".into(),
        })
        .await;
    // Published after it, needs no lookup: arrives while the payment mail waits.
    let other = address("flowing");
    broker
        .publish(&UserRegistered {
            user_id: Uuid::new_v4(),
            email: other.clone(),
            name: "Flowing".into(),
        })
        .await;
    wait_for_mails(&other, 1).await;
    assert!(
        mails_to(&email).await.is_empty(),
        "no address while user-service is down"
    );

    grpc.restore();
    let mails = wait_for_mails(&email, 1).await;
    assert!(
        mails[0]["subject"].as_str().unwrap().contains("42.00 EUR"),
        "{mails:#?}"
    );

    // An address that is not one: parked with the reason, never retried.
    broker
        .publish(&UserRegistered {
            user_id: Uuid::new_v4(),
            email: "not-an-address".into(),
            name: "Broken".into(),
        })
        .await;
    let reason = broker.parked_reason().await;
    assert!(
        reason.contains("'not-an-address' is not an email address"),
        "{reason}"
    );
}

/// The consumer keeps no inbox (`Consumer::stateless`), so a redelivery, or two instances
/// handling a duplicate publish at once, runs a handler twice for one event; the handler's own
/// effect — one insert keyed by the event id — is what keeps that to one notification. Called
/// directly here, both runs past the "already recorded?" look, as two at once would be.
#[tokio::test]
async fn the_handler_run_twice_for_one_event_records_one_notification() {
    use notification_service::{
        handlers::Notifier, store::Store, templates::Templates, users::Users,
    };
    use shop_messaging::{Received, consumer::mongo::Handle};

    let (url, database) = shop_testkit::isolation::mongo_database().await.unwrap();
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&database);
    let store = Store::open(&db, Duration::from_secs(90 * 86_400))
        .await
        .unwrap();
    store.install().await.unwrap();
    let unused = url::Url::parse("http://127.0.0.1:9").unwrap();
    let notifier = Notifier {
        store: store.clone(),
        templates: std::sync::Arc::new(Templates::new().unwrap()),
        users: Users::new(
            &unused,
            &shop_runtime::grpc::Peers::default(),
            &shop_auth::client::ServiceCredentials {
                name: "notification-service",
                token_url: unused.clone(),
                secret: shop_runtime::config::Secret("unused".into()),
            },
            Duration::from_secs(1),
        )
        .unwrap(),
        admins: vec!["ops@example.com".parse().unwrap()],
        domain: "shop.example".into(),
        wake: std::sync::Arc::default(),
    };
    let payload = UserRegistered {
        user_id: Uuid::new_v4(),
        email: address("again"),
        name: "Again".into(),
    };
    let received = Received {
        envelope: payload.envelope().unwrap(),
        payload,
    };
    notifier.handle(received.clone()).await.unwrap();
    let first = store
        .get(&received.id().to_string())
        .await
        .unwrap()
        .unwrap();
    notifier.handle(received.clone()).await.unwrap();
    assert_eq!(history_count(&db).await, 1);
    assert_eq!(
        store.get(&received.id().to_string()).await.unwrap(),
        Some(first)
    );
}

/// `n` sent order emails of other users, written straight into the history in bulk (bodies of
/// a realistic few kilobytes), created `age` ago and one second apart before that, each with
/// the UUIDv7 event id its time gives it, in the collection the service keeps it in.
async fn seed_history(db: &mongodb::Database, n: usize, age: chrono::Duration) {
    use notification_service::store::{past_order_email, write_history};
    let newest = chrono::Utc::now() - age;
    write_history(
        db,
        (0..n).map(|i| {
            let created = newest - chrono::Duration::seconds(i64::try_from(i).unwrap());
            past_order_email(u64::try_from(i).unwrap(), created)
        }),
    )
    .await
    .unwrap();
}

/// Notifications in every history collection of `db` (the day partitions and the one for
/// ids that are not UUIDv7).
async fn history_count(db: &mongodb::Database) -> u64 {
    let mut count = 0;
    for name in db.list_collection_names().await.unwrap() {
        if notification_service::store::is_history_collection(&name) {
            count += db
                .collection::<mongodb::bson::Document>(&name)
                .count_documents(doc! {})
                .await
                .unwrap();
        }
    }
    count
}

/// "A system that has run for days": 20,000 notifications of other users already stored
/// (and a few past the retention period). Through the service, a user's events still become
/// emails and their listing holds exactly their own; the queue of pending sends is empty once
/// they are sent (it never holds history); expired notifications are deleted by the service
/// itself, FerretDB v1 having no TTL index. Which documents each path touches is proven in
/// `tests/store.rs`; this test shows the service works on top of a large history.
#[tokio::test]
async fn with_20000_notifications_stored_a_users_events_are_sent_and_listed_and_expired_ones_deleted()
 {
    const STORED: usize = 20_000;
    let users = users().await;
    let (url, database) = shop_testkit::isolation::mongo_database().await.unwrap();
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&database);
    seed_history(&db, STORED, chrono::Duration::minutes(1)).await;
    seed_history(&db, 3, chrono::Duration::days(31)).await;

    let app = notifications_with(
        &users,
        &users.grpc_addr.to_string(),
        &smtp_addr(),
        "ops@example.com",
        [
            ("MONGODB_URL", url.clone()),
            ("MONGODB_DATABASE", database.clone()),
            ("NOTIFICATION_RETENTION_DAYS", "30".to_owned()),
        ],
    )
    .await;
    let broker = Broker::of(&app).await;
    let (user_id, email, token) = register(&users, "Ada Byron").await;
    broker
        .publish(&UserRegistered {
            user_id,
            email: email.clone(),
            name: "Ada Byron".into(),
        })
        .await;
    broker
        .publish(&OrderCancelled {
            order_id: Uuid::new_v4(),
            user_id,
            reason: "payment_failed".into(),
            total: eur(2500),
        })
        .await;
    wait_for_mails(&email, 2).await;

    let listing: Value = eventually("two sent notifications listed", || async {
        let listing: Value = app
            .client
            .get(app.url("/api/v1/notifications"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = listing["items"].as_array()?;
        (items.len() == 2 && items.iter().all(|item| item["status"] == "sent")).then_some(listing)
    })
    .await;
    let mut templates: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["template"].as_str())
        .collect();
    templates.sort_unstable();
    assert_eq!(templates, ["order_cancelled", "welcome"]);
    assert!(listing["next_cursor"].is_null(), "{listing}");
    assert_eq!(mails_to(&email).await.len(), 2);

    let outbox = db.collection::<mongodb::bson::Document>(notification_service::store::OUTBOX);
    assert_eq!(outbox.count_documents(doc! {}).await.unwrap(), 0);
    let kept = eventually("the expired notifications deleted", || async {
        let kept = history_count(&db).await;
        (kept == u64::try_from(STORED).unwrap() + 2).then_some(kept)
    })
    .await;
    assert_eq!(kept, 20_002);
}
