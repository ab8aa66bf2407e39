//! The events order-service publishes, one per change of an order's status. Each carries the
//! owner and the priced lines, so a consumer (notification-service: "your order is confirmed")
//! never has to call back for them.

use serde::{Deserialize, Serialize};
use shop_messaging::Event;
use uuid::Uuid;

use crate::Money;

/// One line of an order, priced by catalog-service when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    /// catalog-service's product id (a string, not necessarily a UUID).
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Money,
}

/// An order was accepted (status `PENDING`); its saga starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub items: Vec<OrderLine>,
    pub total: Money,
}

impl Event for OrderPlaced {
    const SOURCE: &'static str = "order-service";
    const ROUTING_KEY: &'static str = "order.order.placed";
}

/// Stock committed and payment captured: the order is `CONFIRMED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub items: Vec<OrderLine>,
    pub total: Money,
}

impl Event for OrderConfirmed {
    const SOURCE: &'static str = "order-service";
    const ROUTING_KEY: &'static str = "order.order.confirmed";
}

/// The saga compensated: the order is `CANCELLED`, nothing is charged, no stock is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// `payment_declined`, `insufficient_funds`, `out_of_stock`, `timeout` or
    /// `cancelled_by_user`; consumers treat an unknown reason like any other cancellation.
    pub reason: String,
    pub total: Money,
}

impl Event for OrderCancelled {
    const SOURCE: &'static str = "order-service";
    const ROUTING_KEY: &'static str = "order.order.cancelled";
}
