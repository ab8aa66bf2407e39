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
//! The service is a library so tests boot it in-process
//! (`shop_testkit::spawn::<InventoryService>()`); `main.rs` only hands it to the shared runtime.

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
pub const GRPC_ACCESS: &[(&[&str], &[&str])] = &[(
    &["order-service"],
    &["Reserve", "Commit", "Release", "GetAvailability"],
)];

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The inventory-service service.
#[derive(Debug)]
pub struct InventoryService;

impl Service for InventoryService {
    type Config = InventoryConfig;

    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new("inventory-service", 8083, 50053)
            .postgres(&MIGRATIONS)
            .amqp()
    }

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
