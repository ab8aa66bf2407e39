//! `GetProducts` over real gRPC: a batch by ids with current price and version, unknown ids
//! reported, and only order-service allowed to call.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use serde_json::json;
use shop_proto::catalog::v1::{GetProductsRequest, catalog_service_client::CatalogServiceClient};
use support::{Issuer, admin, catalog, created, patch, product};
use tonic::Code;

#[tokio::test]
async fn get_products_prices_a_batch_reports_unknown_ids_and_serves_order_service_only() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let mug = created(&app, &admin, &product("Mug", "kitchen", 1800)).await;
    let beans = created(&app, &admin, &product("Beans", "coffee", 1490)).await;
    let beans_id = beans["id"].as_str().unwrap().to_owned();
    patch(
        &app,
        &admin,
        &beans_id,
        None,
        &json!({"price": {"amount": 1290, "currency": "EUR"}}),
    )
    .await;

    let mut client = CatalogServiceClient::new(shop_testkit::ops::channel(&app).await.unwrap());
    let request = |ids: Vec<String>, caller: Option<&str>| {
        let mut request = tonic::Request::new(GetProductsRequest { ids });
        if let Some(caller) = caller {
            issuer.authorize_as(caller, &mut request);
        }
        request
    };
    let ids = vec![
        mug["id"].as_str().unwrap().to_owned(),
        beans_id.clone(),
        beans_id.clone(),
        "no-such-product".to_owned(),
    ];
    let mut found = client
        .get_products(request(ids.clone(), Some("order-service")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.missing_ids, ["no-such-product"]);
    found.products.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<(&str, i64, i64)> = found
        .products
        .iter()
        .map(|p| (p.name.as_str(), p.price.as_ref().unwrap().amount, p.version))
        .collect();
    assert_eq!(summary, [("Beans", 1290, 2), ("Mug", 1800, 1)]);

    let anonymous = client
        .get_products(request(ids.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let gateway = client
        .get_products(request(ids, Some("gateway")))
        .await
        .unwrap_err();
    assert_eq!(gateway.code(), Code::PermissionDenied);
    let too_many = (0..101).map(|i| format!("id-{i}")).collect();
    let refused = client
        .get_products(request(too_many, Some("order-service")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}
