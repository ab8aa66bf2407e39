//! Catalog's events, consumed to forget cached catalog reads as soon as they change.
//!
//! The cache's freshness time is only a safety net: a changed price is invalidated when
//! `PriceChanged` arrives, not when the entry expires. Forgetting a key twice is the same as
//! forgetting it once, so this consumer keeps no inbox (`Consumer::stateless`): a redelivered
//! event deletes keys that are already gone. A Redis error is retried through the consumer's
//! delay queues like any other handler failure.
//!
//! A product's `in_stock` flag changes through inventory's events; when one flips it, catalog
//! publishes `ProductUpdated` too (`catalog_service::store::Store::apply_stock_level`), so a
//! cached read stops showing the old flag once that event arrives, like any other change.

use shop_events::catalog::{PriceChanged, ProductCreated, ProductUpdated};
use shop_messaging::{Consumer, HandlerError, Received, consumer::stateless::Handle};
use shop_runtime::{BootError, Context};

use crate::cache::ResponseCache;

/// Forgets the product's cached entry and every cached listing.
#[derive(Debug, Clone)]
pub struct Invalidate {
    pub cache: ResponseCache,
}

impl Invalidate {
    async fn product(&self, product_id: &str) -> Result<(), HandlerError> {
        self.cache
            .invalidate_product(product_id)
            .await
            .map_err(HandlerError::retryable)
    }
}

impl Handle<ProductCreated> for Invalidate {
    /// A new product changes listings (its own entry cannot be cached yet).
    async fn handle(&self, event: Received<ProductCreated>) -> Result<(), HandlerError> {
        self.product(&event.payload.product_id).await
    }
}

impl Handle<ProductUpdated> for Invalidate {
    async fn handle(&self, event: Received<ProductUpdated>) -> Result<(), HandlerError> {
        self.product(&event.payload.product_id).await
    }
}

impl Handle<PriceChanged> for Invalidate {
    async fn handle(&self, event: Received<PriceChanged>) -> Result<(), HandlerError> {
        self.product(&event.payload.product_id).await
    }
}

/// Starts the gateway's consumer (queue `gateway.events`).
pub async fn spawn(ctx: &Context, cache: ResponseCache) -> Result<(), BootError> {
    let invalidate = Invalidate { cache };
    Consumer::stateless("gateway")
        .on::<ProductCreated>(invalidate.clone())
        .on::<ProductUpdated>(invalidate.clone())
        .on::<PriceChanged>(invalidate)
        .spawn(ctx)
        .await?;
    Ok(())
}
