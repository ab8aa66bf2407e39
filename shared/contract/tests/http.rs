//! HTTP round trip: a consumer test writes a contract against the Pact mock server, then the
//! provider (an axum app defined here) is verified against it, including a provider state.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use shop_contract::prelude::*;

type Products = Arc<Mutex<HashMap<String, Value>>>;

/// The provider: a product lookup over whatever is in `products`.
fn products_app(products: Products) -> Router {
    Router::new()
        .route("/products/{id}", get(product))
        .with_state(products)
}

async fn product(
    State(products): State<Products>,
    Path(id): Path<String>,
) -> Result<Json<Value>, StatusCode> {
    let products = products
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    products
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The consumer's client code under test.
#[derive(Debug, Deserialize, PartialEq)]
struct Product {
    id: String,
    name: String,
    #[serde(rename = "priceCents")]
    price_cents: i64,
}

async fn fetch_product(base_url: &str, id: &str) -> Result<Option<Product>, reqwest::Error> {
    let response = reqwest::get(format!("{base_url}/products/{id}")).await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    response.error_for_status()?.json().await.map(Some)
}

/// Writes the consumer's contract into `dir` by running the client against the mock server.
async fn write_contract(dir: &std::path::Path) {
    let server = Contract::new("web", "products")
        .in_dir(dir)
        .mock_server(|pact| {
            pact.interaction("a request for an existing product", "", |mut i| {
                i.given_with_params("a product exists", &json!({ "id": "p-1" }));
                i.request.path("/products/p-1");
                i.response.ok().json_body(json_pattern!({
                    "id": "p-1",
                    "name": like!("Coffee"),
                    "priceCents": like!(450),
                }));
                i
            })
            .interaction("a request for a missing product", "", |mut i| {
                i.request.path("/products/nope");
                i.response.not_found();
                i
            });
        });
    let found = fetch_product(&server.base_url(), "p-1")
        .await
        .expect("request");
    assert_eq!(
        found,
        Some(Product {
            id: "p-1".into(),
            name: "Coffee".into(),
            price_cents: 450
        })
    );
    assert_eq!(
        fetch_product(&server.base_url(), "nope")
            .await
            .expect("request"),
        None
    );
    drop(server); // verifies the requests and writes the contract
}

/// The provider's state handler: "a product exists" inserts the product it names.
fn with_states(provider: Provider, products: Products, name: &'static str) -> Provider {
    provider.state(move |state| {
        let products = products.clone();
        async move {
            match state.name.as_str() {
                "a product exists" => {
                    let id = state.params["id"]
                        .as_str()
                        .ok_or("the state needs an id")?
                        .to_owned();
                    let product = json!({ "id": id, "name": name, "priceCents": 1299 });
                    products.lock().map_err(|_| "poisoned")?.insert(id, product);
                    Ok(())
                }
                other => Err(format!("unknown state '{other}'")),
            }
        }
    })
}

#[tokio::test]
async fn consumer_contract_is_verified_against_the_real_provider() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;

    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("web-products.json"))
            .expect("the contract was written"),
    )
    .expect("JSON");
    assert_eq!(written["metadata"]["pactSpecification"]["version"], "4.0");
    assert_eq!(written["interactions"].as_array().map(Vec::len), Some(2));

    // Starts empty: only the provider state makes p-1 exist.
    let products = Products::default();
    let addr = serve(products_app(products.clone())).await;
    let provider = Provider::new("products").pacts_in(dir.path()).http(addr);
    let verification = with_states(provider, products, "Espresso beans")
        .run()
        .await
        .expect("verification ran");
    assert!(verification.passed, "{}", verification.report);
    assert_eq!(
        verification.pacts,
        vec![dir.path().join("web-products.json")]
    );
}

#[tokio::test]
async fn a_provider_that_answers_differently_fails_verification() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;

    // This provider renamed priceCents to price: the consumer's contract breaks.
    let products = Products::default();
    async fn renamed(
        products: State<Products>,
        id: Path<String>,
    ) -> Result<Json<Value>, StatusCode> {
        let Json(mut product) = product(products, id).await?;
        if let Some(fields) = product.as_object_mut() {
            let price = fields.remove("priceCents").unwrap_or_default();
            fields.insert("price".into(), price);
        }
        Ok(Json(product))
    }
    let breaking = Router::new()
        .route("/products/{id}", get(renamed))
        .with_state(products.clone());
    let addr = serve(breaking).await;
    let provider = Provider::new("products").pacts_in(dir.path()).http(addr);
    let verification = with_states(provider, products, "Espresso beans")
        .run()
        .await
        .expect("verification ran");
    assert!(!verification.passed, "{}", verification.report);
    assert!(
        verification.report.contains("priceCents"),
        "{}",
        verification.report
    );
}

#[tokio::test]
#[should_panic(expected = "provider 'products' does not honour its contracts")]
async fn verify_panics_with_the_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;
    let addr = serve(products_app(Products::default())).await;
    // No state handler: p-1 never exists, so the first interaction gets a 404.
    Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .verify()
        .await;
}

#[tokio::test]
async fn a_missing_state_handler_fails_the_interaction_that_needs_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;
    let addr = serve(products_app(Products::default())).await;
    let verification = Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .run()
        .await
        .expect("verification ran");
    assert!(!verification.passed);
    assert!(
        verification
            .report
            .contains("needs provider state 'a product exists' but the test gave no state handler"),
        "{}",
        verification.report
    );
}

#[tokio::test]
async fn no_contract_fails_unless_the_test_says_none_is_expected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = serve(products_app(Products::default())).await;
    let strict = Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .run()
        .await;
    assert!(matches!(
        strict,
        Err(shop_contract::ContractError::NoPacts { .. })
    ));

    let expected = Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .no_pacts_expected("no consumer calls products yet")
        .run()
        .await
        .expect("verification ran");
    assert!(expected.passed && expected.pacts.is_empty());
    assert!(
        expected.report.contains("no consumer calls products yet"),
        "{}",
        expected.report
    );
}

#[tokio::test]
async fn a_missing_contract_of_a_known_consumer_fails_verification() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_contract(dir.path()).await;
    let products = Products::default();
    let addr = serve(products_app(products.clone())).await;

    // `web` wrote its contract, `mobile` did not (deleted, renamed, never written).
    let provider = Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .consumers(["web", "mobile"]);
    let result = with_states(provider, products.clone(), "Espresso beans")
        .run()
        .await;
    match result {
        Err(shop_contract::ContractError::MissingPacts { consumers, .. }) => {
            assert_eq!(consumers, ["mobile"]);
        }
        other => panic!("expected MissingPacts, got {other:?}"),
    }

    let provider = Provider::new("products")
        .pacts_in(dir.path())
        .http(addr)
        .consumers(["web"]);
    let verification = with_states(provider, products, "Espresso beans")
        .run()
        .await
        .expect("verification ran");
    assert!(verification.passed, "{}", verification.report);
}

#[test]
fn the_default_contract_folder_is_the_repository_contracts_folder() {
    let dir = shop_contract::contracts_dir();
    assert!(dir.ends_with("contracts"));
    assert!(
        dir.join("../Cargo.toml").exists(),
        "{} is not at the workspace root",
        dir.display()
    );
}
