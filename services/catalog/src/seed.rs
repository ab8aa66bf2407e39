//! The demo catalog (`seed/demo-products.json`), loaded at start when `CATALOG_SEED_DEMO=true`.
//!
//! Idempotent: products whose sku exists are skipped, and the unique sku index turns a race
//! between two starting instances into a duplicate-key error that is also "already there".
//! Existing products are never overwritten, so an administrator's edits survive restarts.
//! Each product is created exactly like one from the admin API — through [`Store::create`],
//! with its `ProductCreated` in the same write — plus the `initial_stock` inventory creates
//! its stock row with.

use serde::Deserialize;
use serde_json::Value;

use crate::{
    product,
    store::{Store, WriteError},
};

const DEMO_PRODUCTS: &str = include_str!("../seed/demo-products.json");

#[derive(Debug, Deserialize)]
struct SeedProduct {
    #[serde(flatten)]
    content: Value,
    initial_stock: i64,
}

/// Creates the demo products that do not exist yet; returns how many it created.
pub async fn load(store: &Store) -> Result<usize, String> {
    let seeds: Vec<SeedProduct> =
        serde_json::from_str(DEMO_PRODUCTS).map_err(|err| format!("demo catalog: {err}"))?;
    let mut products = Vec::with_capacity(seeds.len());
    for seed in seeds {
        // The seed passes the same rules as the API: it cannot store what the API would refuse.
        let content = product::new_product(&seed.content)
            .map_err(|errors| format!("demo catalog: {:?}: {errors:?}", seed.content["sku"]))?;
        products.push((content, seed.initial_stock));
    }
    let skus: Vec<String> = products.iter().map(|(c, _)| c.sku.clone()).collect();
    let existing = store
        .existing_skus(&skus)
        .await
        .map_err(|err| err.to_string())?;
    let mut created = 0;
    for (content, stock) in products {
        if existing.contains(&content.sku) {
            continue;
        }
        match store.create(&content, Some(stock)).await {
            Ok(_) => created += 1,
            Err(WriteError::DuplicateSku(_)) => {} // another instance was faster
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_passes_the_api_rules() {
        let seeds: Vec<SeedProduct> = serde_json::from_str(DEMO_PRODUCTS).unwrap();
        assert!(seeds.len() >= 20);
        let mut categories = std::collections::BTreeSet::new();
        for seed in &seeds {
            let content = product::new_product(&seed.content).unwrap();
            assert!(!content.attributes.is_empty(), "{}", content.sku);
            assert!(seed.initial_stock > 0, "{}", content.sku);
            categories.insert(content.category);
        }
        assert!(categories.len() >= 5);
    }
}
