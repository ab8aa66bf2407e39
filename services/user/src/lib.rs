//! user-service: Accounts, credentials and tokens. Owns the PostgreSQL database `users`; publishes
//! `UserRegistered`; serves `user.v1.UserService/GetUser` to internal callers.
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<UserService>()`);
//! `main.rs` only hands it to the shared runtime.

use axum::Router;
use shop_runtime::{BootError, Context, Endpoints, Needs, Service, ServiceSpec};

/// The user-service service.
#[derive(Debug)]
pub struct UserService;

impl Service for UserService {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "user-service",
            http_port: 8081,
            grpc_port: 50051,
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
