//! Consumes catalog's `ProductCreated`: every product gets a stock row, exactly once.
//!
//! The consumer claims the event id in its inbox in the same transaction as this handler's
//! effect, so a redelivered event never reaches it; the insert is `ON CONFLICT DO NOTHING`
//! as well, so a row an administrator created first (PUT before the event arrived) is kept.
//!
//! This is how stock comes to exist at all: catalog owns products, inventory owns their
//! stock, and neither reads the other's database. Until the event arrives a new sku has no
//! stock row, so a Reserve for it is refused as out of stock, which is the safe side.
//!
//! Failures are sorted by whether waiting helps. An event that breaks inventory's rules (a
//! sku it would refuse from an administrator, a negative or huge `initialStock`) is a
//! permanent error and is parked at once with the reason, rather than retried forever; a
//! database error is retryable and goes through the consumer's delay queues.
//!
//! In the patterns' terms (`docs/patterns.md`): the flow is choreographed (DATA-06), the
//! consumer is idempotent through its inbox (COM-17, BEY-03), and a message that can never
//! succeed ends in the parking queue instead of looping (COM-18).

use shop_events::catalog::ProductCreated;
use shop_messaging::{HandlerError, Received, consumer::postgres::Handle};
use sqlx::PgConnection;

use crate::stock;

/// The handler: creates the product's stock row with its `initial_stock` (0 when absent).
///
/// Stateless apart from its setting, so one value serves every delivery; the registration in
/// [`crate::InventoryService`] gives it the consumer name `inventory` (queue
/// `inventory.events`).
#[derive(Debug, Clone)]
pub struct CreateStockRow {
    /// The low-stock threshold of new rows (`LOW_STOCK_THRESHOLD`).
    pub low_stock_threshold: i64,
}

impl CreateStockRow {
    /// The effect, on the consumer's transaction.
    ///
    /// Public, separate from [`Handle::handle`], so the contract test in `tests/contracts.rs`
    /// can run it on catalog's example message without a broker. Logs only when a row was
    /// really created: a redelivery or a row created first by an administrator is silent.
    pub async fn apply(
        &self,
        tx: &mut PgConnection,
        product: &ProductCreated,
    ) -> Result<(), HandlerError> {
        if let Err(problem) = stock::check_sku(&product.sku) {
            // Retrying cannot make a bad sku good: park it with the reason.
            return Err(HandlerError::permanent(format!("sku {problem}")));
        }
        let initial = product.initial_stock.unwrap_or(0);
        if !(0..=stock::MAX_UNITS).contains(&initial) {
            return Err(HandlerError::permanent(format!(
                "initialStock {initial} is not between 0 and {}",
                stock::MAX_UNITS
            )));
        }
        let created =
            stock::create_for_product(tx, &product.sku, initial, self.low_stock_threshold)
                .await
                .map_err(HandlerError::retryable)?;
        if created {
            tracing::info!(sku = %product.sku, initial, "stock row created for a new product");
        }
        Ok(())
    }
}

impl Handle<ProductCreated> for CreateStockRow {
    /// Hands the payload to [`CreateStockRow::apply`]; the envelope (event id, trace context)
    /// was already used by the consumer for the inbox claim and the span.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: Received<ProductCreated>,
    ) -> Result<(), HandlerError> {
        self.apply(tx, &event.payload).await
    }
}
