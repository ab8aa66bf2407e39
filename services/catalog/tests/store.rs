//! The store's two ways of reading several products by id, against the real FerretDB: one
//! `$in` (MongoDB's path: one round trip, the `_id` index) and point reads (FerretDB v1's path,
//! which pushes down only equality on `_id`). Whichever the server gets, the answer must be the
//! same.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use catalog_service::{product, store::Store};
use serde_json::json;
use shop_runtime::stores::mongo::Server;

#[tokio::test]
async fn both_ways_of_reading_products_by_id_find_the_same_products_and_skip_unknown_ids() {
    let (url, name) = shop_testkit::isolation::mongo_database().await.unwrap();
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&name);
    let at_once = Store::new(&db, Server::Indexed);
    let one_by_one = Store::new(&db, Server::FerretDbV1);
    at_once.ensure_indexes().await.unwrap();

    let mut ids = Vec::new();
    for n in 0..5 {
        let content = product::new_product(&json!({
            "sku": format!("SKU-{n}"), "name": format!("Product {n}"), "category": "coffee",
            "price": {"amount": 1000 + n, "currency": "EUR"},
        }))
        .unwrap();
        ids.push(at_once.create(&content, None).await.unwrap().id);
    }
    // Three of the five, and one that does not exist.
    let asked = vec![
        ids[4].clone(),
        ids[0].clone(),
        "no-such-product".to_owned(),
        ids[2].clone(),
    ];

    for store in [&at_once, &one_by_one] {
        let mut found: Vec<(String, String)> = store
            .get_many(&asked)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        found.sort();
        let mut expected = vec![
            (ids[0].clone(), "Product 0".to_owned()),
            (ids[2].clone(), "Product 2".to_owned()),
            (ids[4].clone(), "Product 4".to_owned()),
        ];
        expected.sort();
        assert_eq!(found, expected);
        assert!(store.get_many(&[]).await.unwrap().is_empty());
    }
}
