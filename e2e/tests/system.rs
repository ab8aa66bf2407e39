//! The whole system boots side by side in one process, each service against its own isolated
//! stores, wired to each other the way `deploy/local/stack.sh` wires them (one user-service
//! issuing tokens; service credentials for the two gRPC callers), and every one reports ready.

use std::time::Duration;

use shop_testkit::{TestApp, spawn_with};

const ORDER_SECRET: &str = "e2e-order-service-secret-0123456789abcdef";
const NOTIFICATION_SECRET: &str = "e2e-notification-service-secret-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn all_seven_services_boot_and_become_ready_together() {
    // Everyone else verifies user-service's tokens, so it comes first.
    let user = spawn_with::<user_service::UserService>([(
        "SERVICE_CLIENTS",
        format!("order-service={ORDER_SECRET},notification-service={NOTIFICATION_SECRET}"),
    )])
    .await
    .expect("user-service starts");
    let jwks = ("AUTH_JWKS_URL", user.url("/.well-known/jwks.json"));
    let token_url = ("SERVICE_TOKEN_URL", user.url("/internal/v1/service-token"));
    let (catalog, inventory, payment) = tokio::try_join!(
        spawn_with::<catalog_service::CatalogService>([jwks.clone()]),
        spawn_with::<inventory_service::InventoryService>([jwks.clone()]),
        spawn_with::<payment_service::PaymentService>([jwks.clone()]),
    )
    .expect("the saga's participants start");
    let (order, notification, gateway) = tokio::try_join!(
        spawn_with::<order_service::OrderService>([
            jwks.clone(),
            token_url.clone(),
            ("SERVICE_SECRET", ORDER_SECRET.to_owned()),
            ("CATALOG_GRPC_URL", catalog.grpc_url()),
            ("INVENTORY_GRPC_URL", inventory.grpc_url()),
            ("PAYMENT_GRPC_URL", payment.grpc_url()),
        ]),
        spawn_with::<notification_service::NotificationService>([
            jwks.clone(),
            token_url,
            ("SERVICE_SECRET", NOTIFICATION_SECRET.to_owned()),
            ("USER_GRPC_URL", user.grpc_url()),
        ]),
        spawn_with::<gateway::Gateway>([
            jwks,
            ("USER_SERVICE_URL", base(&user)),
            ("CATALOG_SERVICE_URL", base(&catalog)),
            ("INVENTORY_SERVICE_URL", base(&inventory)),
            ("PAYMENT_SERVICE_URL", base(&payment)),
        ]),
    )
    .expect("order, notification and the gateway start");
    // (The gateway's order and notification upstreams keep their defaults: it only proxies to
    // them per request, so booting does not need them.)
    let apps: [&TestApp; 7] = [
        &gateway,
        &user,
        &catalog,
        &inventory,
        &order,
        &payment,
        &notification,
    ];
    for app in apps {
        app.wait_ready(Duration::from_secs(20))
            .await
            .unwrap_or_else(|err| panic!("{} is not ready: {err}", app.http_addr));
    }
}

fn base(app: &TestApp) -> String {
    format!("http://{}", app.http_addr)
}
