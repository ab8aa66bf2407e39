//! What every inventory test needs: an inventory-service verifying tokens of an in-test issuer
//! (`shop_auth::testing::TestIssuer`, standing in for user-service's key set), and helpers to
//! call it as order-service and an administrator would.

#![allow(dead_code)] // each test binary uses a different part of this
#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use std::time::Duration;

use inventory_service::InventoryService;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_auth::{Role, testing::TestIssuer};
use shop_messaging::{Envelope, testing::Tap, topology};
use shop_proto::inventory::v1::{
    Availability, CommitRequest, GetAvailabilityRequest, Line, ReleaseRequest, ReserveRequest,
    ReserveResponse, inventory_service_client::InventoryServiceClient,
};
use shop_testkit::{TestApp, spawn_with};
use tonic::{Request, Status, transport::Channel as GrpcChannel};
use uuid::Uuid;

/// inventory-service and the issuer of the tokens it accepts.
pub struct Stack {
    pub issuer: TestIssuer,
    pub inventory: TestApp,
    client: InventoryServiceClient<GrpcChannel>,
}

impl Stack {
    /// The service, with `settings` on top of the test defaults.
    pub async fn start(settings: &[(&str, &str)]) -> Self {
        let issuer = TestIssuer::start().await;
        let mut env = vec![("AUTH_JWKS_URL".to_owned(), issuer.jwks_url().to_owned())];
        env.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let inventory = spawn_with::<InventoryService>(env).await.unwrap();
        let client = InventoryServiceClient::new(grpc_channel(&inventory).await);
        Self {
            issuer,
            inventory,
            client,
        }
    }

    /// A second inventory-service instance on the same database, broker and key set.
    pub async fn another_instance(&self) -> (TestApp, InventoryServiceClient<GrpcChannel>) {
        let mut env = self.inventory.env.clone();
        env.insert("HTTP_ADDR".into(), "127.0.0.1:0".into());
        env.insert("GRPC_ADDR".into(), "127.0.0.1:0".into());
        let app = spawn_with::<InventoryService>(env).await.unwrap();
        let client = InventoryServiceClient::new(grpc_channel(&app).await);
        (app, client)
    }

    /// A gRPC client of the (first) instance; calls need [`Stack::authorized`] requests.
    pub fn client(&self) -> InventoryServiceClient<GrpcChannel> {
        self.client.clone()
    }

    /// `message` with order-service's service token, as order-service sends it.
    pub fn authorized<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.issuer.authorize_as("order-service", &mut request);
        request
    }

    pub async fn reserve_on(
        &self,
        client: &mut InventoryServiceClient<GrpcChannel>,
        order_id: Uuid,
        lines: &[(&str, u32)],
    ) -> Result<ReserveResponse, Status> {
        let lines = lines
            .iter()
            .map(|(sku, quantity)| Line {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect();
        client
            .reserve(self.authorized(ReserveRequest {
                order_id: order_id.to_string(),
                lines,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[(&str, u32)],
    ) -> Result<ReserveResponse, Status> {
        self.reserve_on(&mut self.client(), order_id, lines).await
    }

    pub async fn commit(&self, order_id: Uuid) -> Result<(), Status> {
        self.client()
            .commit(self.authorized(CommitRequest {
                order_id: order_id.to_string(),
            }))
            .await
            .map(drop)
    }

    pub async fn release(&self, order_id: Uuid) -> Result<(), Status> {
        self.client()
            .release(self.authorized(ReleaseRequest {
                order_id: order_id.to_string(),
                reason: "compensation".into(),
            }))
            .await
            .map(drop)
    }

    /// `(available, reserved)` of `sku`, through GetAvailability.
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let items: Vec<Availability> = self
            .client()
            .get_availability(self.authorized(GetAvailabilityRequest {
                skus: vec![sku.to_owned()],
            }))
            .await
            .unwrap()
            .into_inner()
            .items;
        (items[0].available, items[0].reserved)
    }

    /// An administrator's access token.
    pub fn admin_token(&self) -> String {
        self.issuer
            .user_token(Uuid::new_v4(), &[Role::Customer, Role::Admin])
    }

    /// A customer's access token.
    pub fn customer_token(&self) -> String {
        self.issuer.user_token(Uuid::new_v4(), &[Role::Customer])
    }

    /// `PUT /api/v1/inventory/{sku}` as `token`.
    pub async fn put_stock(&self, token: &str, sku: &str, body: Value) -> reqwest::Response {
        self.inventory
            .client
            .put(self.inventory.url(&format!("/api/v1/inventory/{sku}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Sets `sku` to `available` units as the administrator.
    pub async fn set_stock(&self, sku: &str, available: i64) {
        let admin = self.admin_token();
        let response = self
            .put_stock(&admin, sku, json!({ "available": available }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// A pool on inventory's own database, to look at what the service stored.
    pub async fn database(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.inventory.env["DATABASE_URL"])
            .await
            .unwrap()
    }

    /// A queue on the service's events exchange bound to `routing_keys`; bind it before the
    /// action whose events it should see, and read them with [`next_event`].
    pub async fn tap(&self, routing_keys: &[&str]) -> Tap {
        Tap::bind(&self.inventory.env["AMQP_URL"], routing_keys)
            .await
            .unwrap()
    }

    /// A channel on the service's broker vhost (to publish to it), with its connection: keep
    /// both alive while the channel is used.
    pub async fn amqp(&self) -> (Connection, Channel) {
        let connection = Connection::connect(
            &self.inventory.env["AMQP_URL"],
            ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology::declare_exchange(&channel).await.unwrap();
        (connection, channel)
    }
}

async fn grpc_channel(app: &TestApp) -> GrpcChannel {
    GrpcChannel::from_shared(app.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An exclusive queue on `channel` bound to `routing_keys`, declared before the events it should
/// see — for a test that reads the raw deliveries on its own channel; the others use
/// [`Stack::tap`].
pub async fn watch(channel: &Channel, routing_keys: &[&str]) -> String {
    let queue = format!("watch-{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for key in routing_keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                topology::EXCHANGE.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    queue
}

/// The next message on `tap`: its routing key and envelope, waiting up to 15 s.
pub async fn next_event(tap: &Tap) -> (String, Envelope) {
    let message = tap
        .next(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("no event within 15 s");
    let key = message.routing_key.to_string();
    (key, Envelope::from_slice(&message.data).unwrap())
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
