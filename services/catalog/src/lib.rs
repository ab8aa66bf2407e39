//! catalog-service: products, categories and prices. Owns the MongoDB database `catalog`;
//! publishes `ProductCreated`, `ProductUpdated` and `PriceChanged` (declared in
//! `shop_events::catalog`, written into the product document's own outbox); keeps `in_stock`
//! from inventory's stock events; serves `shop.catalog.v1.CatalogService/GetProducts` to
//! internal callers.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | its settings (demo seed, relay pace, token verification) |
//! | [`product`] | the product, its public representation and ETag, the validation rules |
//! | [`search`] | text search that works the same on MongoDB and FerretDB (ADR 0006) |
//! | [`store`] | every read and write: single-document, versioned, events in the same write |
//! | [`api`] | the HTTP API (`/api/v1/products`), admin writes behind `RequireAdmin` |
//! | [`grpc`] | `GetProducts`, batch by ids, for service callers only |
//! | [`stock`] | the `in_stock` read model kept by inventory's events |
//! | [`seed`] | the demo catalog, loaded idempotently |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<CatalogService>()`);
//! `main.rs` only hands it to the shared runtime.

pub mod api;
pub mod config;
pub mod grpc;
pub mod product;
pub mod search;
pub mod seed;
pub mod stock;
pub mod store;

use shop_auth::grpc::RequireService;
use shop_events::inventory::{
    OutOfStock, StockLow, StockReleased, StockReplenished, StockReserved,
};
use shop_messaging::{
    Consumer,
    outbox::{RelayConfig, mongo::Relay},
};
use shop_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec, stores::mongo::Server};

use crate::{api::AppState, config::CatalogConfig, grpc::CatalogApi, store::Store};

/// Which service may call which gRPC method: order-service prices carts. Any other caller,
/// and any method not listed, is refused (`PERMISSION_DENIED`).
pub const GRPC_ACCESS: &[(&[&str], &[&str])] = &[(&["order-service"], &["GetProducts"])];

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The catalog-service service.
#[derive(Debug)]
pub struct CatalogService;

impl Service for CatalogService {
    type Config = CatalogConfig;

    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new("catalog-service", 8082, 50052)
            .mongo()
            .amqp()
    }

    async fn build(ctx: &Context, config: CatalogConfig) -> Result<Endpoints, BootError> {
        let db = ctx.mongo()?;
        let server = Server::detect(db)
            .await
            .map_err(|err| BootError::store("mongodb", err))?;
        let store = Store::new(db, server);
        store.ensure_indexes().await?;
        if config.seed_demo {
            let created = seed::load(&store)
                .await
                .map_err(|err| BootError::store("mongodb", err))?;
            tracing::info!(created, "demo catalog loaded");
        }
        // Publishes what product writes leave in their documents' outbox.
        Relay::spawn(
            ctx,
            &[store::PRODUCTS],
            RelayConfig {
                poll_interval: config.outbox_poll_interval,
                ..RelayConfig::default()
            },
        )
        .await?;
        // The in_stock read model, kept by every inventory event (each carries stock levels).
        // No inbox: applying a level is conditional on its version, so a repeated event
        // changes nothing, and an inbox would cost two store requests per event (see `stock`).
        let stock = stock::StockLevels {
            store: store.clone(),
        };
        Consumer::stateless("catalog")
            .on::<StockReserved>(stock.clone())
            .on::<StockReleased>(stock.clone())
            .on::<StockLow>(stock.clone())
            .on::<OutOfStock>(stock.clone())
            .on::<StockReplenished>(stock)
            .spawn(ctx)
            .await?;

        // Tokens are verified locally against user-service's published keys.
        let verifier = config.auth.verifier()?;
        let grpc = RequireService::new(
            CatalogServiceServer::new(CatalogApi {
                store: store.clone(),
            }),
            verifier.clone(),
        )
        .allow_table(GRPC_ACCESS);
        let router = api::router(AppState { store, verifier });
        Ok(Endpoints::new(router)
            .grpc(grpc)
            .reflect(shop_proto::FILE_DESCRIPTOR_SET))
    }
}
