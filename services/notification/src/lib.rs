//! notification-service: What was sent to whom. Owns the MongoDB database `notification`; consumes
//! `UserRegistered`, `OrderConfirmed`, `OrderCancelled`, `PaymentFailed` and `StockLow`.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<NotificationService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec};

/// The notification-service service.
#[derive(Debug)]
pub struct NotificationService;

impl Service for NotificationService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "notification-service",
            http_port: 8086,
            grpc_port: 50056,
            needs: Needs {
                mongo: true,
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
