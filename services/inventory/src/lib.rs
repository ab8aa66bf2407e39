//! inventory-service: stock levels and reservations. Owns the PostgreSQL database `inventory`;
//! serves `shop.inventory.v1.InventoryService` (Reserve, Commit, Release, GetAvailability) to
//! the order saga; lets administrators read and set stock; creates a stock row for every
//! product catalog-service announces; publishes stock events (declared in
//! `shop_events::inventory`) through its outbox.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | its settings (reservation TTL, expiry interval, low-stock threshold) |
//! | [`stock`] | every change of stock and reservations, with its events, in one transaction |
//! | [`grpc`] | `InventoryService`, for service callers only |
//! | [`api`] | the admin HTTP API (`GET/PUT /api/v1/inventory/{sku}`) |
//! | [`expiry`] | the job releasing reservations whose saga died |
//! | [`products`] | the `ProductCreated` handler |
//!
//! ## Its place in the order saga
//!
//! order-service orchestrates every order (ADR 0009) and calls this service at three points:
//! `Reserve` right after pricing and before any money moves, `Commit` once the payment is
//! authorized (the saga's pivot: there is no "un-commit"), and `Release` when the saga compensates.
//! Reserving before charging is deliberate: a reservation is cheap to undo, while an authorization
//! holds the customer's money until it is voided. A saga that dies between `Reserve` and its end
//! leaves a reservation nobody will ever release, so [`expiry`] gives such stock back after
//! `RESERVATION_TTL_SECONDS` (ADR 0007).
//!
//! Inventory keeps no state about the saga itself. Everything it needs to answer a repeated or
//! late call is in the order's reservation row, keyed by the order id, which is why every call
//! can be retried by the orchestrator without harm.
//!
//! ## What survives a crash
//!
//! Nothing here lives only in memory. A Reserve, Commit or Release either committed (with its
//! event in the outbox, pattern BEY-01) or did not happen, so the saga's retry after a lost
//! answer is answered from the reservation row (pattern BEY-10). A reservation whose saga never
//! comes back is released by the [`expiry`] job of whichever instance sees it first (pattern
//! BEY-09), and a `ProductCreated` redelivered after its effect committed meets the inbox row
//! written with that effect and has no second one (pattern BEY-03).
//!
//! The service is a library so tests boot it in-process
//! (`shop_testkit::spawn::<InventoryService>()`); `main.rs` only hands it to the shared runtime.

// Every public item says why it exists; the compiler (and so clippy in CI) holds new code to it.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod expiry;
pub mod grpc;
pub mod products;
pub mod stock;

use shop_auth::grpc::RequireService;
use shop_events::catalog::ProductCreated;
use shop_messaging::{
    Consumer,
    outbox::{RelayConfig, postgres::Relay},
};
use shop_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use sqlx::migrate::Migrator;

use crate::{api::AppState, config::InventoryConfig, products::CreateStockRow};

/// The service's schema, applied at start (public for tests that run its code on a database
/// of their own, such as the contract test of the `ProductCreated` handler).
pub static MIGRATIONS: Migrator = sqlx::migrate!();

/// Who may call which gRPC method: the saga's orchestrator, and nobody else.
///
/// A table rather than a check in each handler so that the whole policy reads in one place and
/// a method added to the proto later stays closed (`PERMISSION_DENIED`) until it is listed here.
/// Callers are named by their service token's subject, i.e. their entry in user-service's
/// `SERVICE_CLIENTS`; `only_services_may_call_and_bad_requests_name_the_field` in
/// `tests/reservations.rs` holds it to that.
pub const GRPC_ACCESS: &[(&[&str], &[&str])] = &[(
    &["order-service"],
    &["Reserve", "Commit", "Release", "GetAvailability"],
)];

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
///
/// Only the admin HTTP routes appear here: the gRPC API is internal to the saga and described
/// by its proto instead.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The inventory-service service, as the shared runtime boots it.
///
/// A unit type: everything it needs arrives through [`Service::build`] (connections) and
/// [`InventoryConfig`] (settings), so tests and `main.rs` start exactly the same service.
#[derive(Debug)]
pub struct InventoryService;

impl Service for InventoryService {
    type Config = InventoryConfig;

    /// The same document as [`openapi()`], as JSON, for `shop_testkit`: every answer a test
    /// receives from this service is checked against it, so the admin API cannot drift from
    /// what the document promises.
    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    /// Name, default ports (8083 HTTP, 50053 gRPC) and stores: before [`Service::build`] runs,
    /// the runtime connects PostgreSQL and applies [`MIGRATIONS`], and starts its RabbitMQ
    /// connection. `/readyz` requires the database and only reports the broker, since the outbox
    /// lets stock changes go on while RabbitMQ is away.
    fn spec() -> ServiceSpec {
        ServiceSpec::new("inventory-service", 8083, 50053)
            .postgres(&MIGRATIONS)
            .amqp()
    }

    /// Wires the service together: the outbox relay, the `ProductCreated` consumer, the expiry
    /// job, then the gRPC and HTTP endpoints.
    ///
    /// The order matters. The relay is spawned first because it creates the outbox tables that
    /// every stock change writes to; the consumer and the expiry job run as tasks of the
    /// runtime, so they stop with the service's shutdown token instead of being cut off. A
    /// failure of any step is a [`BootError`]: the process exits rather than serving half a
    /// service.
    async fn build(ctx: &Context, config: InventoryConfig) -> Result<Endpoints, BootError> {
        let pool = ctx.postgres()?.clone();
        let verifier = config.auth.verifier()?;
        // Creates the outbox tables before the first request can write to them.
        Relay::spawn(ctx, RelayConfig::default()).await?;
        Consumer::postgres("inventory", pool.clone())
            .on::<ProductCreated>(CreateStockRow {
                low_stock_threshold: config.low_stock_threshold,
            })
            .spawn(ctx)
            .await?;
        ctx.tasks.spawn(expiry::run(
            pool.clone(),
            config.expiry_interval,
            ctx.shutdown.clone(),
        ));

        let grpc = RequireService::new(
            InventoryServiceServer::new(grpc::InventoryApi {
                pool: pool.clone(),
                reservation_ttl: config.reservation_ttl,
            }),
            verifier.clone(),
        )
        .allow_table(GRPC_ACCESS);
        let router = api::router(AppState {
            pool,
            verifier,
            low_stock_threshold: config.low_stock_threshold,
        });
        Ok(Endpoints::new(router)
            .grpc(grpc)
            .reflect(shop_proto::FILE_DESCRIPTOR_SET))
    }
}
