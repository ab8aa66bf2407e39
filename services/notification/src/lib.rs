//! notification-service: What was sent to whom. Owns the MongoDB database `notification`; consumes
//! `UserRegistered`, `OrderConfirmed`, `OrderCancelled`, `PaymentFailed` and `StockLow`.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<NotificationService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

/// The notification-service service.
#[derive(Debug)]
pub struct NotificationService;

impl Service for NotificationService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("notification-service", 8086, 50056)
            .mongo()
            .amqp()
    }

    async fn build(_ctx: &Context, _config: ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}
