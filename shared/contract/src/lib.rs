//! Consumer-driven contract tests between our services, with [Pact](https://docs.pact.io).
//!
//! A *consumer* test states what the consumer needs from a provider and proves the consumer's
//! own code works with that; the kit writes it as a Pact V4 file,
//! `contracts/<consumer>-<provider>.json`, which is committed. A *provider* test starts the
//! real provider and replays every contract naming it; a provider change that breaks a
//! consumer fails the provider's own test suite, before anything is deployed. See
//! `docs/adr/0003-contract-testing.md` for why.
//!
//! # Consumer: HTTP
//!
//! The consumer's client talks to a Pact mock server that answers as the contract says. When
//! the server is dropped it checks it got exactly the declared requests, then writes the file.
//!
//! ```no_run
//! use shop_contract::prelude::*;
//!
//! # async fn example() {
//! let server = Contract::new("gateway", "catalog").mock_server(|pact| {
//!     pact.interaction("a request for product p-1", "", |mut i| {
//!         i.given("product p-1 exists");
//!         i.request.path("/products/p-1");
//!         i.response.ok().json_body(json_pattern!({ "id": "p-1", "name": like!("Coffee") }));
//!         i
//!     });
//! });
//! // let product = my_client(server.base_url()).product("p-1").await?;
//! # drop(server);
//! # }
//! ```
//!
//! # Consumer: events
//!
//! An event is an asynchronous message: a JSON envelope plus metadata (content type, routing
//! key). The consumer's real handler runs on the example; only if it succeeds is the
//! interaction recorded.
//!
//! ```no_run
//! # use shop_contract::prelude::*;
//! # async fn example() -> Result<(), shop_contract::ContractError> {
//! Contract::new("notification", "order")
//!     .message(
//!         "an order.placed event",
//!         |mut i| {
//!             i.json_body(json_pattern!({ "type": "order.placed", "data": { "orderId": like!("o-1") } }));
//!             i.metadata("routingKey", "order.placed");
//!             i
//!         },
//!         |message| async move { message.json_body::<serde_json::Value>().map(|_event| ()) },
//!     )
//!     .await
//! # }
//! ```
//!
//! # Consumer: gRPC
//!
//! The Pact protobuf plugin is not available to us, so a gRPC call is a *synchronous message*
//! whose request and response are protobuf JSON, with the method path in the metadata (see
//! [`grpc`]). Both are checked against the method's types from `/proto` when declared.
//!
//! ```no_run
//! # use shop_contract::prelude::*;
//! # use shop_proto::catalog::v1::{GetProductsRequest, GetProductsResponse};
//! # async fn example() -> Result<(), shop_contract::ContractError> {
//! let call = GrpcInteraction::new("prices of p-1", "/shop.catalog.v1.CatalogService/GetProducts")
//!     .given("product p-1 exists")
//!     .request(&GetProductsRequest { ids: vec!["p-1".into()] })
//!     .response(json_pattern!({
//!         "products": [{ "id": "p-1", "price": { "amount": like!("1999"), "currency": "EUR" } }],
//!     }));
//! Contract::new("order", "catalog")
//!     .grpc(call, |example| async move {
//!         let response: GetProductsResponse = example.response_as()?;
//!         // run the consumer's pricing code on `response`
//!         # drop(response);
//!         Ok::<_, tonic::Status>(())
//!     })
//!     .await
//! # }
//! ```
//!
//! # Provider
//!
//! Start the real service (`shop_testkit::spawn::<S>()`), give its addresses, a callback
//! for provider states, and a producer per message; [`Provider::verify`] replays every
//! contract in `contracts/` naming the provider and panics with a report on any difference.
//!
//! ```no_run
//! # async fn example(http_addr: std::net::SocketAddr, grpc_addr: std::net::SocketAddr) {
//! // let app = shop_testkit::spawn::<OrderService>().await?;
//! shop_contract::Provider::new("order")
//!     .http(http_addr) // app.http_addr
//!     .grpc(grpc_addr) // app.grpc_addr
//!     .state(|state| async move { Ok::<_, String>(()) /* create what state.name says */ })
//!     .message("an order.placed event", || async {
//!         // the provider's real code that builds the event
//!         Ok::<_, String>(shop_contract::Message::json(&serde_json::json!({ "type": "order.placed" })))
//!     })
//!     .verify()
//!     .await;
//! # }
//! ```
//!
//! Pact reports anonymous usage to Google Analytics unless `PACT_DO_NOT_TRACK=true`; the kit
//! refuses to run without it (the workspace's `.cargo/config.toml` sets it).

pub mod consumer;
pub mod grpc;
pub mod provider;

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{Map, Value};

pub use consumer::{Contract, EventEnvelope, GrpcExample, GrpcInteraction, MockServer};
pub use pact_consumer;
pub use provider::{Provider, State, Verification};

/// What a contract test needs: the kit's types, plus Pact's matchers (`json_pattern!`,
/// `like!`, `each_like!`, `term!`) and request/response builder traits.
pub mod prelude {
    pub use pact_consumer::prelude::*;

    pub use crate::{Contract, EventEnvelope, GrpcInteraction, Message, Provider};
}

/// The repository's `contracts/` folder, where contracts are written and read by default.
pub fn contracts_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts"))
}

/// A message (an event) as the consumer receives it and the provider produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// Everything besides the body: routing key, event type, ...
    pub metadata: Map<String, Value>,
}

impl Message {
    /// A JSON message.
    pub fn json(body: &impl serde::Serialize) -> Self {
        Self {
            body: Bytes::from(serde_json::to_vec(body).expect("a serde_json-serializable value")),
            content_type: Some("application/json".into()),
            metadata: Map::new(),
        }
    }

    /// A message as it travelled on the broker, for a provider test that took it off a queue:
    /// its body and content type, and the `routingKey` / `contentType` metadata that event
    /// contracts name.
    pub fn published(
        body: impl Into<Bytes>,
        routing_key: &str,
        content_type: Option<&str>,
    ) -> Self {
        let mut message = Self {
            body: body.into(),
            content_type: content_type.map(str::to_owned),
            metadata: Map::new(),
        }
        .with_metadata("routingKey", routing_key);
        if let Some(content_type) = content_type {
            message = message.with_metadata("contentType", content_type);
        }
        message
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The body parsed as JSON into `T` (the consumer's own event type).
    pub fn json_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why declaring or verifying a contract failed.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("invalid protobuf descriptors: {0}")]
    Descriptors(String),
    #[error("no gRPC method {0} in the descriptors (expected /<package>.<Service>/<Method>)")]
    UnknownMethod(String),
    #[error("'{description}': the {part} {reason}")]
    InvalidMessage {
        description: String,
        part: &'static str,
        reason: String,
    },
    #[error("'{description}': the consumer's handler rejected the example: {reason}")]
    Handler { description: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("no contract in {dir} names provider '{provider}'")]
    NoPacts { provider: String, dir: PathBuf },
    #[error("no contract in {dir} from consumer(s) {consumers:?} of provider '{provider}'")]
    MissingPacts {
        provider: String,
        consumers: Vec<String>,
        dir: PathBuf,
    },
    #[error("{0}")]
    Config(String),
    #[error("pact_verifier failed: {0}")]
    Verifier(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Prepares the process for Pact; called by [`Contract::new`] and [`Provider::new`].
///
/// * Pact's libraries send anonymous usage events to Google Analytics unless told not to.
///   Tests must not phone home (nor hang on a firewall), so the kit insists on the opt-out.
/// * `pact_verifier` builds reqwest with `rustls-no-provider`; cargo unifies that feature into
///   every reqwest client of the test process, which then panics unless a process-wide rustls
///   crypto provider is installed: the runtime's one install does it.
fn prepare_process() {
    let opted_out = std::env::var("PACT_DO_NOT_TRACK").is_ok_and(|value| value == "true");
    assert!(
        opted_out,
        "set PACT_DO_NOT_TRACK=true (the workspace's .cargo/config.toml [env] does) so Pact does not send usage data"
    );
    shop_runtime::install_crypto_provider();
}
