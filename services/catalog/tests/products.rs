//! The product API through real HTTP, against real FerretDB: admin writes, validation, ETags
//! and stale updates, pagination under concurrent inserts, search and category filters.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::{
    Issuer, admin, catalog, create, created, customer, get_json, patch, problem, product,
};

#[tokio::test]
async fn an_admin_creates_a_product_that_anyone_reads_with_an_etag() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let mut body = product("Stoneware Mug", "kitchen", 1800);
    body["sku"] = json!(" mug-350-test ");
    let response = create(&app, &admin, &body).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let created_product: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!(
            "/api/v1/products/{}",
            created_product["id"].as_str().unwrap()
        )
    );
    assert_eq!(created_product["sku"], "MUG-350-TEST");
    assert_eq!(
        created_product["in_stock"], false,
        "no stock until inventory says so"
    );
    assert_eq!(created_product["version"], 1);
    assert_eq!(
        created_product["attributes"],
        json!({"color": "red", "weight_g": 250})
    );
    assert_eq!(etag, "\"1-out\"");

    let read = app.get(&location).await.unwrap();
    assert_eq!(read.headers()["etag"], etag.as_str());
    assert_eq!(read.json::<Value>().await.unwrap(), created_product);
    let cached = app
        .client
        .get(app.url(&location))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    // The sku is unique whatever its case; only admins write; unknown ids are 404.
    let (status, duplicate) = problem(create(&app, &admin, &body).await).await;
    assert_eq!(status, 409);
    assert_eq!(duplicate["errors"][0]["field"], "sku");
    let other = product("Other", "kitchen", 100);
    assert_eq!(create(&app, &customer(&issuer), &other).await.status(), 403);
    let anonymous = app
        .client
        .post(app.url("/api/v1/products"))
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, _) = problem(app.get("/api/v1/products/no-such-id").await.unwrap()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stale_patch_is_refused_and_a_bad_body_gets_field_errors() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let product = created(&app, &admin, &product("Kettle", "kitchen", 5490)).await;
    let id = product["id"].as_str().unwrap();

    // Two admins read version 1; the first change wins, the second is refused with 412.
    let first = patch(
        &app,
        &admin,
        id,
        Some("\"1-out\""),
        &json!({"price": {"amount": 4990, "currency": "EUR"}}),
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["etag"], "\"2-out\"");
    let stale = patch(
        &app,
        &admin,
        id,
        Some("\"1-out\""),
        &json!({"name": "Overwritten"}),
    )
    .await;
    let (status, body) = problem(stale).await;
    assert_eq!(status, 412);
    assert_eq!(body["type"], "urn:shop:problem:precondition-failed");
    let current = get_json(&app, &format!("/api/v1/products/{id}")).await;
    assert_eq!(current["name"], "Kettle", "the stale change wrote nothing");
    assert_eq!(current["price"]["amount"], 4990);
    assert_eq!(current["version"], 2);

    // Without If-Match a PATCH applies to the current version; the same values again are
    // not a new version.
    let renamed: Value = patch(&app, &admin, id, None, &json!({"name": "Gooseneck Kettle"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["version"], 3);
    let same: Value = patch(&app, &admin, id, None, &json!({"name": "Gooseneck Kettle"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["version"], 3);

    let (status, body) = problem(
        patch(&app, &admin, id, None, &json!({"name": " ", "price": {"amount": 1.5, "currency": "euro"}, "sku": "OTHER-1", "attributes": []})).await,
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["name", "price.amount", "price.currency", "attributes"]
    );
    let (status, body) =
        problem(patch(&app, &admin, id, None, &json!({"sku": "OTHER-1"})).await).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "sku");
    let (status, body) = problem(create(&app, &admin, &json!({"name": "No price"})).await).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["errors"],
        json!([
            {"field": "sku", "message": "is required"},
            {"field": "category", "message": "is required"},
            {"field": "price", "message": "is required"},
        ])
    );
    assert_eq!(
        get_json(&app, &format!("/api/v1/products/{id}")).await["version"],
        3
    );
}

/// The ids on every page of the list with `query`, following `next_cursor`; `between` runs
/// after each page but the last.
async fn all_pages(
    app: &shop_testkit::TestApp,
    query: &str,
    mut between: impl AsyncFnMut(),
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/products?{query}&cursor={cursor}"),
            None => format!("/api/v1/products?{query}"),
        };
        let page = get_json(app, &path).await;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
        between().await;
    }
}

#[tokio::test]
async fn pagination_returns_every_product_exactly_once_while_products_are_added() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let mut before = Vec::new();
    for i in 0..12 {
        let product = created(
            &app,
            &admin,
            &product(&format!("Item {i}"), "paging", 100 + i),
        )
        .await;
        before.push(product["id"].as_str().unwrap().to_owned());
    }
    // Between every two pages another product is created.
    let mut added = 0;
    let seen = all_pages(&app, "limit=5", async || {
        added += 1;
        created(
            &app,
            &admin,
            &product(&format!("Late {added}"), "paging", 999),
        )
        .await;
    })
    .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "a product on two pages: {seen:?}"
    );
    for id in &before {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} missing");
    }
    assert!(added >= 2);

    let (status, body) = problem(
        app.get("/api/v1/products?limit=500&cursor=%25%25")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "cursor"]);
}

#[tokio::test]
async fn search_and_category_filters_work_on_ferretdb() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let mut espresso = product("Espresso Beans", "coffee", 1490);
    espresso["description"] = json!("Dark roast, chocolate notes");
    espresso["attributes"] = json!({"origin": "Brazil"});
    let espresso = created(&app, &admin, &espresso).await;
    let filter = created(
        &app,
        &admin,
        &product("Filter Coffee Beans", "coffee", 1290),
    )
    .await;
    let mug = created(&app, &admin, &product("Espresso Cup", "kitchen", 900)).await;

    let ids = |page: Value| -> Vec<String> {
        let mut ids: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |items: &[&Value]| -> Vec<String> {
        let mut ids: Vec<String> = items
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    // Prefixes of words, any case, any order; every word must match; attributes count.
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?q=ESPRESS").await),
        sorted(&[&espresso, &mug])
    );
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?q=beans%20esp").await),
        sorted(&[&espresso])
    );
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?q=brazil").await),
        sorted(&[&espresso])
    );
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?q=tea").await),
        sorted(&[])
    );
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?category=coffee").await),
        sorted(&[&espresso, &filter])
    );
    assert_eq!(
        ids(get_json(&app, "/api/v1/products?category=kitchen&q=espresso").await),
        sorted(&[&mug])
    );
    // A search result pages like any list.
    let paged = all_pages(&app, "q=beans&limit=1", async || {}).await;
    assert_eq!(paged.len(), 2);
}

#[tokio::test]
async fn products_are_read_by_ids_in_one_call_and_a_bad_id_list_names_ids() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;
    let admin = admin(&issuer);
    let mut ids = Vec::new();
    for name in ["Cup", "Saucer", "Teapot"] {
        let product = created(&app, &admin, &product(name, "batch", 500)).await;
        ids.push(product["id"].as_str().unwrap().to_owned());
    }

    // Repeats, blanks and unknown ids are tolerated: each known product once, in id order.
    let query = format!(
        "/api/v1/products?ids={}, {},,{},{},no-such-product",
        ids[2], ids[0], ids[1], ids[0]
    );
    let page = get_json(&app, &query).await;
    let mut expected = ids.clone();
    expected.sort();
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(
        page["items"][0]["category"], "batch",
        "the full product body"
    );

    let too_many = (0..101)
        .map(|n| format!("p{n}"))
        .collect::<Vec<_>>()
        .join(",");
    for query in [
        format!("ids={}&q=cup", ids[0]),
        format!("ids={}&category=batch", ids[0]),
        "ids=,,".to_owned(),
        format!("ids={too_many}"),
        format!("ids={}", "x".repeat(65)),
    ] {
        let (status, body) =
            problem(app.get(&format!("/api/v1/products?{query}")).await.unwrap()).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], "ids", "{query}: {body}");
    }
}

/// An unknown parameter is refused, not ignored: ignored, a misspelt filter would answer the
/// unfiltered listing, and every `?x=<anything>` would be one more URL (one more gateway cache
/// entry) for the same answer.
#[tokio::test]
async fn the_listing_refuses_parameters_it_does_not_know_naming_them() {
    let issuer = Issuer::start().await;
    let app = catalog(&issuer, &[]).await;

    for (query, field) in [
        ("x=1", "x"),
        ("categroy=lamps", "categroy"),
        ("limit=5&x%2Dy=z", "x-y"),
        ("q=a&q=b", "q"),
    ] {
        let (status, body) =
            problem(app.get(&format!("/api/v1/products?{query}")).await.unwrap()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
    // Every parameter it knows is still accepted, in any order.
    let page = get_json(&app, "/api/v1/products?limit=2&category=none&q=cup&cursor=").await;
    assert_eq!(page["items"], json!([]));
}
