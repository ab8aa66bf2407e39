//! The service boots through the shared runtime against its real stores and broker, and
//! exposes the operational surface every service has.

use notification_service::NotificationService;
use shop_testkit::{ops::assert_operational, spawn_with};

#[tokio::test]
async fn serves_health_readiness_metrics_and_grpc_health() {
    // user-service and the mail server need not be up for the service to be ready: both are
    // only used when there is something to look up or to send.
    let app = spawn_with::<NotificationService>([(
        "SERVICE_SECRET",
        "operational-test-secret-0123456789abcdef",
    )])
    .await
    .expect("the service starts");
    assert_operational(&app, &["amqp", "consumer:notification.events", "mongodb"])
        .await
        .expect("operational endpoints work");
}
