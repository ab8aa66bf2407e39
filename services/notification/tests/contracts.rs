//! notification-service as a consumer: the events it handles (message pacts, verified by each
//! producer's tests) and user-service's `GetUser` (a gRPC contract, verified by user-service).
//! Writes `contracts/notification-service-<provider>.json`.
//!
//! And as a provider: the gateway's contract (a customer lists their own notifications) is
//! replayed against the real service, with the access token of the signed-in customer
//! ([`CUSTOMER`]) and the state `a notification was sent to the signed-in customer` stored in
//! its database as the service records one.
//!
//! Each event's example is run through what the service itself does with it: read the
//! envelope, match type and version, decode the payload into the `shop-events` type, and hand
//! it to the real handler ([`notification_service::handlers::Notifier`]), which looks up the
//! user over gRPC, renders the template and records the notification in a real store; the
//! example passes only if that notification was recorded. For `GetUser`: turning the answer
//! into a recipient.

use std::{sync::Arc, time::Duration};

use notification_service::{handlers::Notifier, store::Store, templates::Templates, users::Users};
use shop_auth::client::ServiceCredentials;
use shop_contract::{ContractError, prelude::*};
use shop_events::{
    inventory::{OutOfStock, StockLow},
    order::{OrderCancelled, OrderConfirmed},
    payment::PaymentFailed,
    user::UserRegistered,
};
use shop_messaging::{Envelope, Event, Received, consumer::mongo::Handle, envelope::CONTENT_TYPE};
use shop_proto::user::v1::{GetUserRequest, GetUserResponse};
use shop_runtime::{config::Secret, grpc::Peers};
use user_service::UserService;
use uuid::Uuid;

const CONSUMER: &str = "notification-service";

fn money() -> JsonPattern {
    json_pattern!({ "amount": like!(1999), "currency": like!("EUR") })
}

fn level() -> JsonPattern {
    json_pattern!({ "sku": like!("MUG-1"), "available": like!(2), "reserved": like!(1), "version": like!(3) })
}

/// The real handler of every event, wired to a real store (FerretDB) and a real user-service
/// (in-process), as the service wires it: what each message pact runs its example through.
struct Harness {
    notifier: Notifier,
    /// A registered user: events about "a user" are handled for this one.
    user: Uuid,
    _users: shop_testkit::TestApp,
}

const SECRET: &str = "notification-contract-secret-0123456789";

async fn harness() -> Harness {
    let users = shop_testkit::spawn_with::<UserService>([(
        "SERVICE_CLIENTS",
        format!("{CONSUMER}={SECRET}"),
    )])
    .await
    .expect("user-service starts");
    let created: serde_json::Value = users
        .client
        .post(users.url("/api/v1/auth/register"))
        .json(&serde_json::json!({
            "email": format!("contract-{}@example.com", Uuid::new_v4().simple()),
            "password": "correct horse battery",
            "name": "Ada Lovelace",
        }))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("JSON");
    let user = created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("the new user's id");

    let (url, name) = shop_testkit::isolation::mongo_database()
        .await
        .expect("a database");
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .expect("mongodb")
        .database(&name);
    let store = Store::open(&db, Duration::from_secs(86_400))
        .await
        .expect("the store's layout");
    let credentials = ServiceCredentials {
        name: CONSUMER,
        token_url: users
            .url("/internal/v1/service-token")
            .parse()
            .expect("URL"),
        secret: Secret(SECRET.to_owned()),
    };
    let grpc: url::Url = users.grpc_url().parse().expect("URL");
    let notifier = Notifier {
        store,
        templates: Arc::new(Templates::new().expect("the templates")),
        users: Users::new(
            &grpc,
            &Peers::default(),
            &credentials,
            Duration::from_secs(5),
        )
        .expect("a client"),
        admins: vec!["Shop admin <admin@example.com>".parse().expect("a mailbox")],
        domain: "shop.example".to_owned(),
        wake: Arc::default(),
    };
    Harness {
        notifier,
        user,
        _users: users,
    }
}

/// Records that the consumer handles `E` in the shape `data`: the example is decoded as the
/// consumer decodes it, then run through the service's real handler, which must record one
/// notification with `template`, rendered, to at least one recipient.
async fn handles<E: Event>(
    harness: &Harness,
    provider: &str,
    template: &'static str,
    data: JsonPattern,
) -> Result<(), ContractError>
where
    Notifier: Handle<E>,
{
    // "an order.confirmed event", "a user.registered event": the article goes by the sound,
    // and every kind starting with "u" so far ("user") sounds like "you".
    let kind = E::kind();
    let article = if kind.starts_with(['a', 'e', 'i', 'o']) {
        "an"
    } else {
        "a"
    };
    let description = format!("{article} {kind} event");
    Contract::new(CONSUMER, provider)
        .message(
            &description,
            EventEnvelope {
                source: E::SOURCE,
                kind: E::kind(),
                version: E::VERSION,
                routing_key: E::ROUTING_KEY,
                content_type: CONTENT_TYPE,
            }
            .declare(data),
            |message| async move {
                let mut envelope =
                    Envelope::from_slice(&message.body).map_err(|err| err.to_string())?;
                if !E::matches(&envelope) {
                    return Err(format!("not a {} v{}", E::kind(), E::VERSION));
                }
                // A fresh event id per run (the store keeps one notification per event), and
                // the user the harness registered in place of the example's (its lookup must
                // find someone; the id's shape is what the contract is about).
                envelope.id = Uuid::now_v7();
                if let Some(user) = envelope.data.get_mut("userId") {
                    *user = harness.user.to_string().into();
                }
                let payload = envelope.data_as::<E>().map_err(|err| err.to_string())?;
                let id = envelope.id.to_string();
                harness
                    .notifier
                    .handle(Received { payload, envelope })
                    .await
                    .map_err(|err| err.to_string())?;
                let recorded = harness
                    .notifier
                    .store
                    .get(&id)
                    .await
                    .map_err(|err| err.to_string())?
                    .ok_or("the handler recorded no notification")?;
                if recorded.template != template {
                    return Err(format!("recorded {}, not {template}", recorded.template));
                }
                if recorded.to.is_empty() || recorded.subject.is_empty() || recorded.text.is_empty()
                {
                    return Err(format!("incomplete notification: {recorded:?}"));
                }
                Ok(())
            },
        )
        .await
}

#[tokio::test]
async fn user_registered() {
    handles::<UserRegistered>(
        &harness().await,
        "user-service",
        "welcome",
        json_pattern!({
            "userId": like!("0193e1c2-0000-7000-8000-000000000001"),
            "email": like!("ada@example.com"),
            "name": like!("Ada Lovelace"),
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn order_events() {
    let line = json_pattern!({
        "productId": like!("p-1"), "sku": like!("MUG-1"), "name": like!("Blue mug"),
        "quantity": like!(2), "unitPrice": money(),
    });
    let harness = harness().await;
    handles::<OrderConfirmed>(
        &harness,
        "order-service",
        "order_confirmed",
        json_pattern!({
            "orderId": like!("0193e1c2-0000-7000-8000-000000000002"),
            "userId": like!("0193e1c2-0000-7000-8000-000000000001"),
            "items": each_like!(line),
            "total": money(),
        }),
    )
    .await
    .unwrap();
    handles::<OrderCancelled>(
        &harness,
        "order-service",
        "order_cancelled",
        json_pattern!({
            "orderId": like!("0193e1c2-0000-7000-8000-000000000002"),
            "userId": like!("0193e1c2-0000-7000-8000-000000000001"),
            "reason": like!("payment_declined"),
            "total": money(),
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn payment_failed() {
    handles::<PaymentFailed>(
        &harness().await,
        "payment-service",
        "payment_failed",
        json_pattern!({
            "paymentId": like!("0193e1c2-0000-7000-8000-000000000003"),
            "orderId": like!("0193e1c2-0000-7000-8000-000000000002"),
            "userId": like!("0193e1c2-0000-7000-8000-000000000001"),
            "amount": money(),
            "reason": like!("card_declined"),
            "cardBrand": like!("visa"),
            "cardLast4": like!("0002"),
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stock_alerts() {
    let harness = harness().await;
    handles::<StockLow>(
        &harness,
        "inventory-service",
        "stock_low",
        json_pattern!({ "level": level(), "threshold": like!(5) }),
    )
    .await
    .unwrap();
    handles::<OutOfStock>(
        &harness,
        "inventory-service",
        "out_of_stock",
        json_pattern!({ "level": level() }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn get_user() {
    let id = "0193e1c2-0000-7000-8000-000000000001";
    let call = GrpcInteraction::new(
        "the address of an existing user",
        "/shop.user.v1.UserService/GetUser",
    )
    .given_with_params("a user exists", serde_json::json!({ "id": id }))
    .request(&GetUserRequest { id: id.into() })
    .response(json_pattern!({
        "id": like!(id),
        "email": like!("ada@example.com"),
        "name": like!("Ada Lovelace"),
    }));
    Contract::new(CONSUMER, "user-service")
        .grpc(call, |example| async move {
            let user: GetUserResponse = example.response_as().map_err(|err| err.to_string())?;
            format!("{} <{}>", user.name, user.email)
                .parse::<lettre::message::Mailbox>()
                .map(drop)
                .map_err(|err| err.to_string())
        })
        .await
        .unwrap();
}

/// The customer the gateway's HTTP requests speak for, in the provider test.
const CUSTOMER: &str = "0192f0c8-0000-7000-8000-00000000c0de";

#[tokio::test]
async fn notification_honours_the_contracts_of_its_consumers() {
    use notification_service::{
        NotificationService,
        store::{Notification, Status, Store, millis},
    };
    use shop_auth::{Role, testing::TestIssuer};

    let issuer = TestIssuer::start().await;
    let smtp = std::env::var("TESTKIT_SMTP_URL").expect(
        "TESTKIT_SMTP_URL is set (source .local/test.env after deploy/local/stack.sh infra-up)",
    );
    let (host, port) = smtp
        .trim_start_matches("smtp://")
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("host:port");
    // user-service is not needed to list what was stored: its addresses lead nowhere.
    let app = shop_testkit::spawn_with::<NotificationService>([
        ("SMTP_HOST", host.to_owned()),
        ("SMTP_PORT", port.to_owned()),
        ("USER_GRPC_URL", "http://127.0.0.1:9".to_owned()),
        (
            "SERVICE_TOKEN_URL",
            "http://127.0.0.1:9/internal/v1/service-token".to_owned(),
        ),
        (
            "SERVICE_SECRET",
            "notification-contract-secret-0123456789".to_owned(),
        ),
        ("AUTH_JWKS_URL", issuer.jwks_url().to_owned()),
    ])
    .await
    .expect("notification-service starts");
    let db = mongodb::Client::with_uri_str(&app.env["MONGODB_URL"])
        .await
        .expect("mongodb")
        .database(&app.env["MONGODB_DATABASE"]);
    let store = Store::open(&db, std::time::Duration::from_secs(90 * 86_400))
        .await
        .expect("the store's layout");
    let token = issuer.user_token(CUSTOMER.parse().expect("a UUID"), &[Role::Customer]);

    let verification = Provider::new("notification-service")
        // Every consumer with a contract here; a missing file fails the verification.
        .consumers(["gateway"])
        .http(app.http_addr)
        .http_header("Authorization", format!("Bearer {token}"))
        .state(move |state| {
            let store = store.clone();
            async move {
                if state.name != "a notification was sent to the signed-in customer" {
                    return Err(format!("unknown provider state '{}'", state.name));
                }
                let now = millis(chrono::Utc::now());
                let sent = Notification {
                    event_id: "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a".into(),
                    event_type: "user.registered".into(),
                    user_id: Some(CUSTOMER.into()),
                    channel: "email".into(),
                    template: "welcome".into(),
                    to: vec!["Ada Lovelace <ada@example.com>".into()],
                    subject: "Welcome to the shop".into(),
                    text: "Welcome".into(),
                    html: "<p>Welcome</p>".into(),
                    message_id: "<0193e1c2@shop.example>".into(),
                    status: Status::Sent,
                    attempts: 1,
                    last_error: None,
                    next_attempt_at: now,
                    created_at: now,
                    updated_at: now,
                    sent_at: Some(now),
                    claim_document: false,
                };
                // `false` when an earlier interaction stored it: it exists either way.
                store
                    .insert(&sent)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .run()
        .await
        .expect("verification runs");
    assert!(verification.passed, "{}", verification.report);
    assert!(
        verification
            .pacts
            .iter()
            .any(|pact| pact.ends_with("gateway-notification-service.json")),
        "{:?}",
        verification.pacts
    );
}
