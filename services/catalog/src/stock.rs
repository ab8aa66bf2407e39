//! The `in_stock` read model, kept by inventory's stock events (CQRS: inventory owns stock;
//! the catalog keeps only the yes/no it shows, updated asynchronously).
//!
//! Every inventory event carries each touched sku's [`StockLevel`] *after* the change, with
//! the stock row's version. Applying a level is [`Store::apply_stock_level`]: one conditional
//! update that keeps the highest version. That makes the handler correct for every way events
//! arrive — twice (a redelivery, a duplicate publish: the second matches nothing), out of
//! order (an older level matches nothing), or interleaved across the five event types — with
//! one single-document write, no transaction.
//!
//! So the consumer keeps no inbox (`Consumer::stateless`): the stored version already is the
//! record of what was applied. An inbox would spare a rare redelivery its look-ups and cost
//! every event two store requests (a look-up before the handler, a record after it).

use shop_events::inventory::{
    OutOfStock, StockLevel, StockLow, StockReleased, StockReplenished, StockReserved,
};
use shop_messaging::{HandlerError, Received, consumer::mongo::Handle};

use crate::store::{Store, WriteError};

/// Applies every level an event carries; returns how many changed the read model.
pub async fn apply(store: &Store, levels: &[StockLevel]) -> Result<usize, WriteError> {
    let mut applied = 0;
    for level in levels {
        let outcome = if store.apply_stock_level(level).await? {
            applied += 1;
            "applied"
        } else {
            "ignored"
        };
        metrics::counter!("catalog_stock_levels_total", "outcome" => outcome).increment(1);
    }
    Ok(applied)
}

/// The handler of all five stock events: they differ in meaning for other consumers, but for
/// `in_stock` each is just "these skus now have these levels".
#[derive(Debug, Clone)]
pub struct StockLevels {
    pub store: Store,
}

impl StockLevels {
    async fn levels(&self, levels: &[StockLevel]) -> Result<(), HandlerError> {
        apply(&self.store, levels).await.map_err(|err| match err {
            WriteError::Store(err) => HandlerError::from(err),
            WriteError::Event(err) => HandlerError::from(err),
            // Another writer kept flipping the flag: try the delivery again later.
            other => HandlerError::retryable(other),
        })?;
        Ok(())
    }
}

impl Handle<StockReserved> for StockLevels {
    async fn handle(&self, event: Received<StockReserved>) -> Result<(), HandlerError> {
        self.levels(&event.payload.levels).await
    }
}

impl Handle<StockReleased> for StockLevels {
    async fn handle(&self, event: Received<StockReleased>) -> Result<(), HandlerError> {
        self.levels(&event.payload.levels).await
    }
}

impl Handle<StockLow> for StockLevels {
    async fn handle(&self, event: Received<StockLow>) -> Result<(), HandlerError> {
        self.levels(std::slice::from_ref(&event.payload.level))
            .await
    }
}

impl Handle<OutOfStock> for StockLevels {
    async fn handle(&self, event: Received<OutOfStock>) -> Result<(), HandlerError> {
        self.levels(std::slice::from_ref(&event.payload.level))
            .await
    }
}

impl Handle<StockReplenished> for StockLevels {
    async fn handle(&self, event: Received<StockReplenished>) -> Result<(), HandlerError> {
        self.levels(std::slice::from_ref(&event.payload.level))
            .await
    }
}
