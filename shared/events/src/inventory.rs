//! The events inventory-service publishes. Every one carries the stock level of each sku it
//! touched *after* the change, with the stock row's version, so a consumer keeping a read model
//! (catalog's `in_stock`) can apply them in any order: it keeps the level with the highest
//! version and ignores older ones.

use serde::{Deserialize, Serialize};
use shop_messaging::Event;
use uuid::Uuid;

/// One sku's stock after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockLevel {
    pub sku: String,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held by reservations not yet committed or released.
    pub reserved: i64,
    /// Increases by one with every change of this sku's stock row.
    pub version: i64,
}

/// Stock was reserved for an order (all its lines at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    pub order_id: Uuid,
    pub levels: Vec<StockLevel>,
}

impl Event for StockReserved {
    const SOURCE: &'static str = "inventory-service";
    const ROUTING_KEY: &'static str = "inventory.stock.reserved";
}

/// An order's reservation was given back (saga compensation, cancellation or expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    pub order_id: Uuid,
    /// Why: `compensation`, `cancelled`, `expired`, ...
    pub reason: String,
    pub levels: Vec<StockLevel>,
}

impl Event for StockReleased {
    const SOURCE: &'static str = "inventory-service";
    const ROUTING_KEY: &'static str = "inventory.stock.released";
}

/// A sku's available stock fell to or below its low-stock threshold (but not to zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockLow {
    pub level: StockLevel,
    pub threshold: i64,
}

impl Event for StockLow {
    const SOURCE: &'static str = "inventory-service";
    const ROUTING_KEY: &'static str = "inventory.stock.low";
}

/// A sku has no available stock left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutOfStock {
    pub level: StockLevel,
}

impl Event for OutOfStock {
    const SOURCE: &'static str = "inventory-service";
    const ROUTING_KEY: &'static str = "inventory.stock.out_of_stock";
}

/// A sku's stock was set or raised by an administrator (or created for a new product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReplenished {
    pub level: StockLevel,
}

impl Event for StockReplenished {
    const SOURCE: &'static str = "inventory-service";
    const ROUTING_KEY: &'static str = "inventory.stock.replenished";
}
