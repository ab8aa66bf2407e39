//! The catalog as the gateway serves it: from its Redis cache, kept fresh by catalog's events;
//! and the edge itself, which publishes the API and nothing internal.

use e2e::{Client, Product, client, json, unique, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One read through the gateway: (`X-Cache`, body).
async fn read(shop: &Client, path: &str) -> (Option<String>, Value) {
    let response = shop.get(path).send().await.unwrap();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    (cache, body)
}

/// Reads `path` until the gateway answers it from its cache: from then on, only an
/// invalidation (or the cache's freshness time, `CACHE_FRESH_SECONDS`, 300 s by default and far
/// beyond any wait here) makes the gateway ask catalog again.
async fn cached(shop: &Client, path: &str) -> Value {
    wait_for(&format!("{path} to be cached"), || async {
        let (cache, body) = read(shop, path).await;
        (cache.as_deref() == Some("HIT")).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_product_and_a_new_price_are_listed_once_their_events_invalidate_the_cache() {
    let shop = client().await;
    let word = unique();
    let category = format!("e2e-{word}");
    let listing = format!("/api/v1/products?category={category}");

    // The category is empty, and the gateway has that answer cached.
    let empty = cached(&shop, &listing).await;
    assert_eq!(empty["items"], json!([]), "{empty}");

    // An administrator creates a product in it.
    let created = shop
        .create_product(&Product {
            id: String::new(),
            sku: format!("E2E-{}", word.to_uppercase()),
            name: format!("Kettle {word}"),
            category: category.clone(),
            price: 3500,
        })
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // catalog's ProductCreated reaches the gateway, which forgets its cached listings: the
    // product is listed long before the cached empty answer would have gone stale.
    wait_for("the new product to be listed", || async {
        let (_, page) = read(&shop, &listing).await;
        let ids: Vec<&str> = page["items"]
            .as_array()?
            .iter()
            .filter_map(|item| item["id"].as_str())
            .collect();
        (ids == [id.as_str()]).then_some(())
    })
    .await;
    // The same event gave the product its stock row in inventory (none yet).
    let sku = created["sku"].as_str().unwrap().to_owned();
    wait_for("the stock row from ProductCreated", || async {
        let (status, _) = json(
            shop.get(&format!("/api/v1/inventory/{sku}"))
                .bearer_auth(shop.admin().await)
                .send()
                .await
                .unwrap(),
        )
        .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(shop.stock(&sku).await, (0, 0));

    // A price change: both the cached product and the cached listing show it once
    // PriceChanged/ProductUpdated arrive.
    let item = format!("/api/v1/products/{id}");
    assert_eq!(cached(&shop, &item).await["price"]["amount"], 3500);
    assert_eq!(
        cached(&shop, &listing).await["items"][0]["price"]["amount"],
        3500
    );
    let (status, patched) = json(
        shop.patch(&item)
            .bearer_auth(shop.admin().await)
            .json(&json!({ "price": { "amount": 2900, "currency": "EUR" } }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    for path in [&item, &listing] {
        wait_for(&format!("{path} to show the new price"), || async {
            let (_, body) = read(&shop, path).await;
            let price = if path == &item {
                &body["price"]
            } else {
                &body["items"][0]["price"]
            };
            (price["amount"] == 2900).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_publishes_the_api_and_nothing_internal() {
    let shop = client().await;
    // With an operational port of its own (compose, the chart) the public port answers none of
    // the operational endpoints; without (in-process, `make run`) it answers them.
    let ops = shop.system.ops_base().to_owned();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = reqwest::get(format!("{ops}{path}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{ops}{path}");
        if shop.system.ops_url.is_some() {
            let response = shop.get(path).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "public {path}");
        }
    }
    let (status, openapi) = json(shop.get("/api/v1/openapi.json").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/v1/orders",
        "/api/v1/products/{id}",
        "/api/v1/auth/login",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} in the OpenAPI document"
        );
    }
    let (status, keys) = json(shop.get("/.well-known/jwks.json").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!keys["keys"].as_array().unwrap().is_empty(), "{keys}");

    // The services' internal routes are not reachable from outside: a service token is only
    // ever issued to a service talking to user-service directly.
    let (status, problem) = json(
        shop.post("/internal/v1/service-token")
            .basic_auth("order-service", Some("guess"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}
