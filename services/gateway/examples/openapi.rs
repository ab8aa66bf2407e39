//! Prints the public OpenAPI document: every service's own description, merged by the gateway
//! along its route table ([`gateway::openapi::merge`]). `services/gateway/openapi.json` is this
//! output, committed; `tests/openapi.rs` fails when it is out of date, and
//! `scripts/openapi-check.sh` refuses a breaking change to it.
//!
//! ```sh
//! cargo run -q -p gateway --example openapi > services/gateway/openapi.json
//! ```
//!
//! An example, not part of the gateway: it links every service (dev-dependencies), which the
//! gateway itself never does (ARCHITECTURE.md).

use std::io::Write;

use gateway::routes::Upstream;
use serde_json::Value;

/// The public document, from the services' descriptions as their code is now.
pub fn document() -> Result<Value, String> {
    let json = |doc: utoipa::openapi::OpenApi| serde_json::to_value(doc).map_err(|e| e.to_string());
    gateway::openapi::merge(&[
        (Upstream::User, json(user_service::openapi())?),
        (Upstream::Catalog, json(catalog_service::openapi())?),
        (Upstream::Inventory, json(inventory_service::openapi())?),
        (Upstream::Order, json(order_service::openapi())?),
        (Upstream::Payment, json(payment_service::openapi())?),
        (
            Upstream::Notification,
            json(notification_service::openapi())?,
        ),
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let document = document()?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &document)?;
    writeln!(out)?;
    Ok(())
}
