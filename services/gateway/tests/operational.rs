//! The service boots through the shared runtime against its real stores and broker, and
//! exposes the operational surface every service has.

use gateway::Gateway;
use shop_testkit::{ops::assert_operational, spawn};

#[tokio::test]
async fn serves_health_readiness_metrics_and_grpc_health() {
    let app = spawn::<Gateway>().await.expect("the service starts");
    assert_operational(&app, &["amqp", "consumer:gateway.events", "redis"])
        .await
        .expect("operational endpoints work");
}
