//! The whole system boots side by side in one process, each service against its own isolated
//! stores, and every one of them reports ready.

use std::time::Duration;

use shop_testkit::{TestApp, spawn};

#[tokio::test(flavor = "multi_thread")]
async fn all_seven_services_boot_and_become_ready_together() {
    let (gateway, user, catalog, inventory, order, payment, notification) = tokio::try_join!(
        spawn::<gateway::Gateway>(),
        spawn::<user_service::UserService>(),
        spawn::<catalog_service::CatalogService>(),
        spawn::<inventory_service::InventoryService>(),
        spawn::<order_service::OrderService>(),
        spawn::<payment_service::PaymentService>(),
        spawn::<notification_service::NotificationService>(),
    )
    .expect("every service starts");
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
