//! The service boots through the shared runtime against its real stores and broker, and
//! exposes the operational surface every service has. Its participants need not be up: the
//! gRPC channels connect lazily, so order-service starts (and serves reads) without them.

use order_service::OrderService;
use shop_testkit::{ops::assert_operational, spawn_with};

#[tokio::test]
async fn serves_health_readiness_metrics_and_grpc_health() {
    let app = spawn_with::<OrderService>([("SERVICE_SECRET", "operational-test-secret")])
        .await
        .expect("the service starts");
    assert_operational(&app, &["amqp", "postgres"])
        .await
        .expect("operational endpoints work");
}
