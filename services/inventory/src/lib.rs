//! inventory-service: Stock levels and reservations. Owns the PostgreSQL database `inventory`; serves
//! `inventory.v1.InventoryService` (Reserve, Commit, Release, GetAvailability) to the order saga.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<InventoryService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec};

/// The inventory-service service.
#[derive(Debug)]
pub struct InventoryService;

impl Service for InventoryService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "inventory-service",
            http_port: 8083,
            grpc_port: 50053,
            needs: Needs {
                postgres: true,
                amqp: true,
                ..Needs::default()
            },
            migrations: None,
        }
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
