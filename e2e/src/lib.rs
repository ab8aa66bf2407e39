//! The harness of the end-to-end journeys: the whole system, and a client that drives it the way
//! a customer or an administrator would — through the gateway's public API and nothing else.
//!
//! # Which system
//!
//! * **In-process (the default, and what `make test` runs).** The first journey of a test binary
//!   boots all seven services inside the test process ([`shop_testkit::spawn_with`]), each
//!   against its own fresh PostgreSQL database, MongoDB database or Redis prefix, and all of them
//!   on **one** fresh RabbitMQ vhost: events must flow between them (a product created in
//!   catalog gets its stock row in inventory, a confirmed order becomes an email), and a vhost
//!   holds one `shop.events` exchange with each consumer's queue bound to it. Emails go to the
//!   local stack's mail catcher (MailDev, `TESTKIT_SMTP_URL` / `TESTKIT_MAIL_API` from
//!   `.local/test.env`).
//! * **A running stack**, when `E2E_BASE_URL` is set (`http://127.0.0.1:8080` after `make run`,
//!   or a compose stack): the same journeys against that gateway; its emails are read back from
//!   MailDev at `E2E_MAILDEV_URL` (default `http://127.0.0.1:1080`, what `make run` starts) or
//!   from Mailpit at `E2E_MAILPIT_URL` (what docker-compose.yml starts), `E2E_ADMIN_EMAIL` /
//!   `E2E_ADMIN_PASSWORD` (default: the development admin) the administrator the journeys use.
//!
//! # One system per test binary
//!
//! Seven services, their stores and consumers take seconds to start and a fair share of a
//! 2-core CI machine to run. So a binary starts them **once**, on first use ([`system`]), and
//! every journey in it shares them. Each `#[tokio::test]` runs on a runtime of its own that
//! ends with the test, and a service's tasks die with the runtime that spawned them; so the
//! system gets a runtime of its own on a dedicated thread that lives as long as the process.
//! The journeys reach it over HTTP only, as clients would, which is also why nothing but
//! addresses crosses between the two runtimes.
//!
//! # How journeys stay out of each other's way
//!
//! Sharing one system, journeys run in parallel and isolate themselves by their **data**: every
//! journey registers its own customers (unique email addresses, so even their mails are their
//! own in the shared mail catcher) and creates its own products (unique sku and category), so no
//! journey sees another's orders, stock, listings or emails, and a journey may run in any order
//! and any number of times against the same stack.
//!
//! # Rate limits
//!
//! The gateway allows 10 login/register/refresh requests a minute per client address (its
//! production default, kept here). A journey needs a few of those, and the brute-force journey
//! must hit the limit without starving the others. The in-process gateway therefore runs with
//! `TRUST_FORWARDED_FOR=true` — as a gateway behind a load balancer does — and each [`Client`]
//! sends its own `X-Forwarded-For` address: every journey is a different client to the gateway,
//! with its own budget, exactly as different customers are. The limits themselves stay the
//! defaults, so the brute-force journey proves the real numbers.
//!
//! A stack started by `make run` does not trust `X-Forwarded-For` (nothing sits in front of it),
//! so there every journey is the same client `127.0.0.1`. When a request that only prepares a
//! journey (a registration, a login) is refused with 429, the client does what a well-behaved
//! client does — waits the `Retry-After` the gateway sent and asks again, for at most
//! [`AUTH_PATIENCE`] — so the journeys pass there too, just more slowly. The journey *about*
//! the limit never retries.
//!
//! # Waiting
//!
//! Everything asynchronous (a saga ending, an email arriving, a cache invalidated by an event)
//! is awaited with [`shop_testkit::eventually`]: poll until it holds or a bound passes, never a
//! sleep standing in for synchronisation, never an assertion on elapsed time.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use reqwest::{
    RequestBuilder, Response, StatusCode,
    header::{HeaderMap, HeaderValue},
};
use serde_json::{Value, json};
use shop_testkit::{BoxError, TestApp, eventually, isolation, spawn_with};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How long a journey waits for something asynchronous: a saga to end, an email to arrive, an
/// event to invalidate the gateway's cache. Generous, because a bound that is hit means a
/// failure, and CI machines are slow; a passing journey never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(45);

/// How long a preparing request keeps honouring `Retry-After` on the auth routes (only ever
/// needed against a stack whose gateway sees every journey as one client, see the module docs).
pub const AUTH_PATIENCE: Duration = Duration::from_secs(200);

/// The payment provider's test cards (simulated inside payment-service).
pub const APPROVING_CARD: &str = "4242424242424242";
pub const DECLINING_CARD: &str = "4000000000000002";

/// The password of every customer the journeys register.
pub const PASSWORD: &str = "correct horse battery staple";

/// The development administrator seeded by user-service (`ADMIN_EMAIL` / `ADMIN_PASSWORD`).
const DEV_ADMIN: (&str, &str) = ("admin@example.com", "change-me-admin");

/// Service credentials of the two gRPC callers that need service tokens, in-process only.
const ORDER_SECRET: &str = "e2e-order-service-secret-0123456789abcdef";
const NOTIFICATION_SECRET: &str = "e2e-notification-service-secret-0123456789";

/// Where the system under test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Booted inside this test process by [`system`].
    InProcess,
    /// Already running at `E2E_BASE_URL`.
    External,
}

/// The system under test, as the journeys see it: addresses only.
#[derive(Debug)]
pub struct System {
    /// The gateway, e.g. `http://127.0.0.1:8080`; every journey request goes there.
    pub base_url: String,
    /// Where the gateway answers `/healthz`, `/readyz` and `/metrics` when they have a port of
    /// their own (`OPS_ADDR`; compose, the chart): `E2E_OPS_URL`. `None`: on `base_url`.
    pub ops_url: Option<String>,
    /// The mail catcher whose HTTP API the emails the system sent are read back from.
    pub mail: MailCatcher,
    pub target: Target,
    admin_email: String,
    admin_password: String,
    admin_token: OnceCell<String>,
}

/// A mail catcher's HTTP API, by its base URL. The native stack runs MailDev; the compose file
/// runs Mailpit. Their APIs differ, so [`Client::mail`] asks each in its own terms and hands the
/// journeys one shape: `{"subject", "text", "html", "to": [{"address"}]}` (MailDev's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailCatcher {
    MailDev(String),
    Mailpit(String),
}

impl MailCatcher {
    /// The emails to `to` (newest last), in MailDev's shape; `None` when the catcher does not
    /// answer.
    async fn mails_to(&self, http: &reqwest::Client, to: &str) -> Option<Vec<Value>> {
        match self {
            // MailDev filters by recipient itself.
            Self::MailDev(base) => {
                let url = format!("{base}/email?to.address={to}");
                let mails: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                mails.as_array().cloned()
            }
            // Mailpit: a search (newest first, summaries only), then each message for its body.
            Self::Mailpit(base) => {
                let search = reqwest::Url::parse_with_params(
                    &format!("{base}/api/v1/search"),
                    [("query", format!("to:\"{to}\""))],
                )
                .ok()?;
                let found: Value = http.get(search).send().await.ok()?.json().await.ok()?;
                let mut mails = Vec::new();
                for summary in found["messages"].as_array()?.iter().rev() {
                    let id = summary["ID"].as_str()?;
                    let message: Value = http
                        .get(format!("{base}/api/v1/message/{id}"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let recipients: Vec<Value> = message["To"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|to| serde_json::json!({ "address": to["Address"] }))
                        .collect();
                    mails.push(serde_json::json!({
                        "subject": message["Subject"],
                        "text": message["Text"],
                        "html": message["HTML"],
                        "to": recipients,
                    }));
                }
                Some(mails)
            }
        }
    }
}

static SYSTEM: OnceCell<Result<System, String>> = OnceCell::const_new();

/// Gateway settings a test binary adds to the in-process system, set before its first
/// [`system`] call (each test binary has a system of its own; see [`with_gateway_settings`]).
static GATEWAY_SETTINGS: std::sync::OnceLock<Vec<(&'static str, String)>> =
    std::sync::OnceLock::new();

/// Boots this binary's in-process system with these extra gateway settings: the way a test
/// binary uses a documented test setting (e.g. higher `RATE_LIMIT_USER` for a fuzzer that
/// sends hundreds of requests a second). Without effect on a running stack (`E2E_BASE_URL`),
/// and once the system is booted.
pub fn with_gateway_settings(settings: Vec<(&'static str, String)>) {
    let _ = GATEWAY_SETTINGS.set(settings);
}

/// The system of this test binary, started on first use (see the module docs).
///
/// # Panics
/// If it cannot be started or reached; every journey of the binary then fails with the reason.
pub async fn system() -> &'static System {
    // The workspace's reqwest leaves the TLS provider to the program (`rustls-no-provider`):
    // the services install theirs at boot, but against an external system (compose, a
    // cluster) no service boots in this process, and the first client would panic.
    shop_runtime::install_crypto_provider();
    let system = SYSTEM
        .get_or_init(|| async {
            let outcome = match env("E2E_BASE_URL") {
                Some(url) => external(url).await,
                None => in_process().await,
            };
            outcome.map_err(|err| err.to_string())
        })
        .await;
    match system {
        Ok(system) => system,
        Err(err) => panic!("the system under test is not available: {err}"),
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .map(|value| value.trim().trim_end_matches('/').to_owned())
        .filter(|value| !value.is_empty())
}

/// A stack someone else started: check that its gateway answers before any journey begins.
async fn external(base_url: String) -> Result<System, BoxError> {
    let system = System {
        mail: match (env("E2E_MAILPIT_URL"), env("E2E_MAILDEV_URL")) {
            (Some(_), Some(_)) => {
                return Err("set E2E_MAILPIT_URL or E2E_MAILDEV_URL, not both".into());
            }
            (Some(mailpit), None) => MailCatcher::Mailpit(mailpit),
            (None, maildev) => {
                MailCatcher::MailDev(maildev.unwrap_or_else(|| "http://127.0.0.1:1080".into()))
            }
        },
        target: Target::External,
        admin_email: env("E2E_ADMIN_EMAIL").unwrap_or_else(|| DEV_ADMIN.0.into()),
        admin_password: env("E2E_ADMIN_PASSWORD").unwrap_or_else(|| DEV_ADMIN.1.into()),
        admin_token: OnceCell::new(),
        base_url,
        ops_url: env("E2E_OPS_URL"),
    };
    let http = reqwest::Client::new();
    let ready = format!("{}/readyz", system.ops_base());
    eventually(Duration::from_secs(30), || async {
        http.get(&ready)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await
    .map_err(|err| format!("the gateway at {ready} is not ready: {err}"))?;
    Ok(system)
}

/// Boots the seven services on a runtime of their own, on a thread that outlives every test.
async fn in_process() -> Result<System, BoxError> {
    let (booted, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("e2e-system".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("e2e-system")
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = booted.send(Err(err.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match boot().await {
                    Ok((system, _running)) => {
                        let _ = booted.send(Ok(system));
                        // `_running` keeps the services up: they stop when the process exits.
                        std::future::pending::<()>().await;
                    }
                    Err(err) => {
                        let _ = booted.send(Err(err.to_string()));
                    }
                }
            });
        })?;
    Ok(outcome
        .await
        .map_err(|_| "the system's thread ended before it booted")??)
}

/// Starts every service, wired the way `deploy/local/stack.sh` wires them, and waits until
/// each is ready and every consumer is attached.
async fn boot() -> Result<(System, Vec<TestApp>), BoxError> {
    // One vhost for all: the events must cross from each service to the others.
    let broker = isolation::rabbitmq_vhost().await?;
    let amqp = || ("AMQP_URL", broker.clone());
    // Everyone verifies user-service's tokens, so it comes first.
    let user = spawn_with::<user_service::UserService>([
        amqp(),
        (
            "SERVICE_CLIENTS",
            format!("order-service={ORDER_SECRET},notification-service={NOTIFICATION_SECRET}"),
        ),
    ])
    .await?;
    let jwks = || ("AUTH_JWKS_URL", user.url("/.well-known/jwks.json"));
    let token_url = || ("SERVICE_TOKEN_URL", user.url("/internal/v1/service-token"));
    let (smtp_host, smtp_port) = smtp();

    let (catalog, inventory, payment, notification) = tokio::try_join!(
        spawn_with::<catalog_service::CatalogService>([amqp(), jwks()]),
        spawn_with::<inventory_service::InventoryService>([amqp(), jwks()]),
        spawn_with::<payment_service::PaymentService>([amqp(), jwks()]),
        spawn_with::<notification_service::NotificationService>([
            amqp(),
            jwks(),
            token_url(),
            ("SERVICE_SECRET", NOTIFICATION_SECRET.to_owned()),
            ("USER_GRPC_URL", user.grpc_url()),
            ("SMTP_HOST", smtp_host),
            ("SMTP_PORT", smtp_port),
        ]),
    )?;
    let order = spawn_with::<order_service::OrderService>([
        amqp(),
        jwks(),
        token_url(),
        ("SERVICE_SECRET", ORDER_SECRET.to_owned()),
        ("CATALOG_GRPC_URL", catalog.grpc_url()),
        ("INVENTORY_GRPC_URL", inventory.grpc_url()),
        ("PAYMENT_GRPC_URL", payment.grpc_url()),
    ])
    .await?;
    let gateway = spawn_with::<gateway::Gateway>(
        [
            amqp(),
            jwks(),
            ("USER_SERVICE_URL", base(&user)),
            ("CATALOG_SERVICE_URL", base(&catalog)),
            ("INVENTORY_SERVICE_URL", base(&inventory)),
            ("ORDER_SERVICE_URL", base(&order)),
            ("PAYMENT_SERVICE_URL", base(&payment)),
            ("NOTIFICATION_SERVICE_URL", base(&notification)),
            // Each journey is its own client (module docs, "Rate limits").
            ("TRUST_FORWARDED_FOR", "true".to_owned()),
        ]
        .into_iter()
        .chain(GATEWAY_SETTINGS.get().cloned().unwrap_or_default()),
    )
    .await?;

    for app in [
        &user,
        &catalog,
        &inventory,
        &payment,
        &notification,
        &order,
        &gateway,
    ] {
        app.wait_ready(Duration::from_secs(30)).await?;
    }
    // Queues exist once their consumers attached; an event published before would match none.
    for (app, queue) in [
        (&inventory, "inventory.events"),
        (&catalog, "catalog.events"),
        (&notification, "notification.events"),
        (&gateway, "gateway.events"),
    ] {
        consuming(app, queue).await?;
    }
    let system = System {
        base_url: base(&gateway),
        ops_url: None,
        mail: MailCatcher::MailDev(
            env("TESTKIT_MAIL_API").unwrap_or_else(|| "http://127.0.0.1:1080".into()),
        ),
        target: Target::InProcess,
        admin_email: DEV_ADMIN.0.into(),
        admin_password: DEV_ADMIN.1.into(),
        admin_token: OnceCell::new(),
    };
    let running = vec![
        user,
        catalog,
        inventory,
        payment,
        notification,
        order,
        gateway,
    ];
    Ok((system, running))
}

/// The mail catcher's SMTP address (host, port) from `TESTKIT_SMTP_URL`, else the local
/// stack's.
fn smtp() -> (String, String) {
    let url = env("TESTKIT_SMTP_URL").unwrap_or_else(|| "smtp://127.0.0.1:1025".into());
    let address = url.trim_start_matches("smtp://");
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.to_owned()),
        None => (address.to_owned(), "25".to_owned()),
    }
}

fn base(app: &TestApp) -> String {
    format!("http://{}", app.http_addr)
}

/// Waits until `app` reports its consumer of `queue` attached.
async fn consuming(app: &TestApp, queue: &str) -> Result<(), BoxError> {
    let probe = format!("consumer:{queue}");
    eventually(Duration::from_secs(30), || async {
        let Ok(response) = app.get("/readyz").await else {
            return false;
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["checks"][&probe] == "up"
    })
    .await
    .map_err(|err| format!("{queue} is not consumed: {err}").into())
}

/// The next client address: 198.18.0.0/15 is reserved for benchmarking (RFC 2544), so it never
/// names a real client.
fn next_address() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("198.18.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

/// A short random word, to make names no other journey (or earlier run) uses.
pub fn unique() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// `(status, JSON body)` of a response; the body is `null` when it is not JSON.
pub async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A signed-up customer with a fresh sign-in.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// A product a journey created for itself, with its stock.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    /// Price in EUR cents.
    pub price: i64,
}

/// A client of the public API, one per journey: a browser or app of its own, with its own
/// address (see the module docs on rate limits). Every request goes to the gateway.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub system: &'static System,
    /// The address this client has for the gateway (sent as `X-Forwarded-For`, which only the
    /// in-process gateway trusts).
    pub address: String,
}

/// A new client of this binary's system: the start of every journey.
pub async fn client() -> Client {
    let system = system().await;
    let address = next_address();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&address).expect("an address is a valid header value"),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    Client {
        http,
        system,
        address,
    }
}

impl System {
    /// Where the gateway's operational endpoints answer: `ops_url`, else `base_url`.
    pub fn ops_base(&self) -> &str {
        self.ops_url.as_deref().unwrap_or(&self.base_url)
    }
}

impl Client {
    /// The gateway's URL for `path` (`/api/v1/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.system.base_url)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.url(path))
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.http.put(self.url(path))
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.http.patch(self.url(path))
    }

    /// Sends a request that prepares a journey on a rate-limited auth route; a 429 is waited
    /// out as its `Retry-After` says (module docs), for at most [`AUTH_PATIENCE`].
    pub async fn send_patiently(&self, request: impl Fn() -> RequestBuilder) -> Response {
        let deadline = tokio::time::Instant::now() + AUTH_PATIENCE;
        loop {
            let response = request().send().await.expect("the gateway answers");
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                return response;
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .expect("a 429 says when to come back (Retry-After)");
            let resume = tokio::time::Instant::now() + Duration::from_secs(retry_after.max(1));
            assert!(
                resume <= deadline,
                "still rate limited after {AUTH_PATIENCE:?} of honouring Retry-After"
            );
            // Not a synchronisation guess: the server said when it will accept the request.
            tokio::time::sleep_until(resume).await;
        }
    }

    /// Registers a new customer (a unique address at example.com) and signs them in.
    pub async fn customer(&self, name: &str) -> Customer {
        let email = format!(
            "e2e-{}-{}@example.com",
            name.to_lowercase().replace(' ', "-"),
            unique()
        );
        let (status, user) = json(
            self.send_patiently(|| {
                self.post("/api/v1/auth/register")
                    .json(&json!({ "email": email, "password": PASSWORD, "name": name }))
            })
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "registering {email}: {user}");
        let tokens = self.sign_in(&email, PASSWORD).await;
        Customer {
            id: user["id"].as_str().expect("a user id").to_owned(),
            email,
            access_token: tokens["access_token"]
                .as_str()
                .expect("an access token")
                .to_owned(),
            refresh_token: tokens["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .to_owned(),
        }
    }

    /// `POST /api/v1/auth/login`, expected to succeed: the token answer.
    pub async fn sign_in(&self, email: &str, password: &str) -> Value {
        let (status, tokens) = json(
            self.send_patiently(|| {
                self.post("/api/v1/auth/login")
                    .json(&json!({ "email": email, "password": password }))
            })
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "signing in {email}: {tokens}");
        tokens
    }

    /// An administrator's access token (the development admin unless `E2E_ADMIN_*` say
    /// otherwise), obtained once per test binary.
    pub async fn admin(&self) -> String {
        let system = self.system;
        system
            .admin_token
            .get_or_init(|| async {
                self.sign_in(&system.admin_email, &system.admin_password)
                    .await["access_token"]
                    .as_str()
                    .expect("an admin access token")
                    .to_owned()
            })
            .await
            .clone()
    }

    /// Creates a product as the administrator, in a category of its own, priced `price` EUR
    /// cents, and sets its stock to `stock` units.
    pub async fn product(&self, price: i64, stock: i64) -> Product {
        let word = unique();
        let product = Product {
            id: String::new(),
            sku: format!("E2E-{}", word.to_uppercase()),
            name: format!("Teapot {word}"),
            category: format!("e2e-{word}"),
            price,
        };
        let created = self.create_product(&product).await;
        let product = Product {
            id: created["id"].as_str().expect("a product id").to_owned(),
            ..product
        };
        self.set_stock(&product.sku, stock).await;
        product
    }

    /// `POST /api/v1/products` as the administrator; the created product.
    pub async fn create_product(&self, product: &Product) -> Value {
        let (status, created) = json(
            self.post("/api/v1/products")
                .bearer_auth(self.admin().await)
                .json(&json!({
                    "sku": product.sku,
                    "name": product.name,
                    "description": "A product an end-to-end journey created for itself.",
                    "category": product.category,
                    "price": { "amount": product.price, "currency": "EUR" },
                    "attributes": { "origin": "e2e" },
                }))
                .send()
                .await
                .expect("the gateway answers"),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "creating {}: {created}",
            product.sku
        );
        created
    }

    /// `PUT /api/v1/inventory/{sku}` as the administrator.
    pub async fn set_stock(&self, sku: &str, available: i64) {
        let (status, body) = json(
            self.put(&format!("/api/v1/inventory/{sku}"))
                .bearer_auth(self.admin().await)
                .json(&json!({ "available": available }))
                .send()
                .await
                .expect("the gateway answers"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "setting the stock of {sku}: {body}");
    }

    /// `(available, reserved)` of a sku, from the admin stock route.
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let (status, stock) = json(
            self.get(&format!("/api/v1/inventory/{sku}"))
                .bearer_auth(self.admin().await)
                .send()
                .await
                .expect("the gateway answers"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "the stock of {sku}: {stock}");
        (
            stock["available"].as_i64().expect("available"),
            stock["reserved"].as_i64().expect("reserved"),
        )
    }

    /// `POST /api/v1/orders` for `quantity` of `product`, paid with `card`, under `key`.
    pub fn order_request(
        &self,
        customer: &Customer,
        product: &Product,
        quantity: u32,
        card: &str,
        key: &str,
    ) -> RequestBuilder {
        self.post("/api/v1/orders")
            .bearer_auth(&customer.access_token)
            .header("idempotency-key", key)
            .json(&json!({
                "items": [{ "product_id": product.id, "quantity": quantity }],
                "payment": { "card_number": card, "expiry": "12/34", "cvc": "123" },
                "shipping_address": {
                    "name": "Ada Lovelace", "line1": "1 Main Street", "city": "Berlin",
                    "postal_code": "10115", "country": "DE",
                },
            }))
    }

    /// Places an order that the API accepts (202 `PENDING`); the accepted order.
    pub async fn place_order(
        &self,
        customer: &Customer,
        product: &Product,
        quantity: u32,
        card: &str,
    ) -> Value {
        let response = self
            .order_request(customer, product, quantity, card, &unique())
            .send()
            .await
            .expect("the gateway answers");
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (status, order) = json(response).await;
        assert_eq!(status, StatusCode::ACCEPTED, "placing an order: {order}");
        assert_eq!(order["status"], "PENDING", "{order}");
        let id = order["id"].as_str().expect("an order id");
        assert!(
            location
                .as_deref()
                .is_some_and(|location| location.ends_with(id)),
            "Location names the order: {location:?}"
        );
        order
    }

    /// `GET /api/v1/orders/{id}` as `customer`: (status, body).
    pub async fn order(&self, customer: &Customer, id: &str) -> (StatusCode, Value) {
        json(
            self.get(&format!("/api/v1/orders/{id}"))
                .bearer_auth(&customer.access_token)
                .send()
                .await
                .expect("the gateway answers"),
        )
        .await
    }

    /// Waits (bounded) until the saga of order `id` ended; the order as it ended.
    pub async fn settled(&self, customer: &Customer, id: &str) -> Value {
        wait_for(&format!("order {id} to end"), || async {
            let (status, order) = self.order(customer, id).await;
            (status == StatusCode::OK && order["status"] != "PENDING").then_some(order)
        })
        .await
    }

    /// `GET /api/v1/payments[?order_id=]` as `customer`: the listed payments.
    pub async fn payments(&self, customer: &Customer, order_id: Option<&str>) -> Vec<Value> {
        let path = match order_id {
            Some(id) => format!("/api/v1/payments?order_id={id}"),
            None => "/api/v1/payments".to_owned(),
        };
        let (status, body) = json(
            self.get(&path)
                .bearer_auth(&customer.access_token)
                .send()
                .await
                .expect("the gateway answers"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["items"].as_array().expect("items").clone()
    }

    /// Waits (bounded) for an email to `to` whose subject contains `subject`, read from the mail
    /// catcher's API; the mail as MailDev describes it (`subject`, `text`, `html`, `to`, ...).
    pub async fn mail(&self, to: &str, subject: &str) -> Value {
        let catcher = reqwest::Client::new();
        wait_for(&format!("an email to {to} about '{subject}'"), || async {
            let mails = self.system.mail.mails_to(&catcher, to).await?;
            // The recipient is checked again: a catcher's filter may match more loosely.
            mails.iter().rev().find_map(|mail| {
                let addressed = mail["to"].as_array().is_some_and(|recipients| {
                    recipients
                        .iter()
                        .any(|recipient| recipient["address"].as_str() == Some(to))
                });
                let about = mail["subject"]
                    .as_str()
                    .is_some_and(|text| text.contains(subject));
                (addressed && about).then(|| mail.clone())
            })
        })
        .await
    }
}

/// Polls `probe` with [`eventually`] until it yields a value, for at most [`PATIENCE`].
///
/// # Panics
/// When the bound passes: `what` did not happen.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let found = Mutex::new(None);
    let outcome = eventually(PATIENCE, || {
        let attempt = probe();
        let found = &found;
        async move {
            match attempt.await {
                Some(value) => {
                    *found.lock().expect("not poisoned") = Some(value);
                    true
                }
                None => false,
            }
        }
    })
    .await;
    if let Err(err) = outcome {
        panic!("waited for {what}: {err}");
    }
    found
        .into_inner()
        .expect("not poisoned")
        .expect("a value once the probe held")
}
