//! The events catalog-service publishes. Consumed by inventory-service (a stock row per new
//! product) and by the gateway (response-cache invalidation).

use serde::{Deserialize, Serialize};
use shop_messaging::Event;

use crate::Money;

/// A product was added to the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductCreated {
    /// catalog-service's own product id.
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Money,
    /// The product document's version after the change (starts at 1).
    pub version: i64,
    /// Units the stock row starts with; set by the demo seed, absent (0) for products created
    /// through the admin API, whose stock an administrator sets in inventory-service.
    #[serde(default)]
    pub initial_stock: Option<i64>,
}

impl Event for ProductCreated {
    const SOURCE: &'static str = "catalog-service";
    const ROUTING_KEY: &'static str = "catalog.product.created";
}

/// Any field of a product changed (a price change also publishes [`PriceChanged`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductUpdated {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Money,
    pub version: i64,
}

impl Event for ProductUpdated {
    const SOURCE: &'static str = "catalog-service";
    const ROUTING_KEY: &'static str = "catalog.product.updated";
}

/// A product's price changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceChanged {
    pub product_id: String,
    pub sku: String,
    pub old_price: Money,
    pub new_price: Money,
    pub version: i64,
}

impl Event for PriceChanged {
    const SOURCE: &'static str = "catalog-service";
    const ROUTING_KEY: &'static str = "catalog.product.price_changed";
}
