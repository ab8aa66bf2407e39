//! catalog-service: Products, categories and prices. Owns the MongoDB database `catalog`; publishes
//! `ProductCreated`, `ProductUpdated`, `PriceChanged`; serves `catalog.v1.CatalogService/GetProducts`.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<CatalogService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The catalog-service service.
#[derive(Debug)]
pub struct CatalogService;

impl Service for CatalogService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("catalog-service", 8082, 50052)
            .mongo()
            .amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
