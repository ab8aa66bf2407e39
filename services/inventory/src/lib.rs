//! inventory-service: Stock levels and reservations. Owns the PostgreSQL database `inventory`; serves
//! `inventory.v1.InventoryService` (Reserve, Commit, Release, GetAvailability) to the order saga.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<InventoryService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The inventory-service service.
#[derive(Debug)]
pub struct InventoryService;

impl Service for InventoryService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("inventory-service", 8083, 50053)
            .postgres_without_migrations()
            .amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
