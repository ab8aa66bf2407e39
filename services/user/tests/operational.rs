//! The service boots through the shared runtime against its real stores and broker, and
//! exposes the operational surface every service has.

use shop_testkit::{
    ops::{assert_operational, reflected_services},
    spawn,
};
use user_service::UserService;

#[tokio::test]
async fn serves_health_readiness_metrics_and_grpc_health() {
    let app = spawn::<UserService>().await.expect("the service starts");
    assert_operational(&app, &["amqp", "postgres"])
        .await
        .expect("operational endpoints work");

    // Reflection advertises exactly what this server runs, not every package in shop-proto.
    let mut services = reflected_services(&app).await.expect("reflection answers");
    services.sort();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "shop.user.v1.UserService",
        ]
    );
}
