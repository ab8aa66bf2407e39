//! The service boots through the shared runtime against its real stores and broker, and
//! exposes the operational surface every service has.

use shop_testkit::{ops::assert_operational, spawn};
use user_service::UserService;

#[tokio::test]
async fn serves_health_readiness_metrics_and_grpc_health() {
    let app = spawn::<UserService>().await.expect("the service starts");
    assert_operational(&app, &["amqp", "postgres"])
        .await
        .expect("operational endpoints work");
}
