//! The operators' side of the saga: parked sagas, listed and resumed. Administrators only
//! ([`RequireAdmin`]: 401 without a token, 403 for anyone else).
//!
//! A saga parks instead of retrying forever when a participant *refuses* a step it cannot turn
//! back from (payment refuses the capture: the authorization expired) or a step past the pivot
//! or in compensation failed `ORDER_PARK_AFTER_ATTEMPTS` times in a row. Parking never decides
//! anything about the money or the stock: it stops, says why (`parked_reason`), and waits for a
//! person. These routes are on order-service's own port, not in the gateway's public table:
//! they are for operators inside the deployment (runbook: `services/order/README.md`).
//!
//! * `GET /api/v1/admin/sagas/parked` → `{items: [{order_id, step, reason, parked_reason,
//!   parked_at, attempts, last_error}]}`, oldest first (at most 500).
//! * `POST /api/v1/admin/sagas/{order_id}/resume` → 200 with the saga, due at once with its
//!   attempts counted from zero; 404 for no such saga, 409 if it is not parked.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shop_auth::http::RequireAdmin;
use shop_runtime::ApiError;
use uuid::Uuid;

use crate::api::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/sagas/parked", get(parked))
        .route("/api/v1/admin/sagas/{order_id}/resume", post(resume))
}

/// A saga as operators see it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SagaView {
    pub order_id: Uuid,
    pub step: String,
    /// The cancellation reason, once the saga turned to compensation.
    pub reason: Option<String>,
    pub parked_at: Option<DateTime<Utc>>,
    pub parked_reason: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct Listing {
    items: Vec<SagaView>,
}

const COLUMNS: &str =
    "order_id, step, reason, parked_at, parked_reason, attempts, last_error, updated_at";

async fn parked(
    State(state): State<AppState>,
    RequireAdmin(_admin): RequireAdmin,
) -> Result<Json<Listing>, ApiError> {
    let items = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM order_sagas WHERE parked_at IS NOT NULL
         ORDER BY parked_at LIMIT 500"
    ))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Listing { items }))
}

async fn resume(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(order_id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let missing = || ApiError::not_found("No saga exists for this order.");
    let order_id = Uuid::parse_str(&order_id).map_err(|_| missing())?;
    let resumed: Option<SagaView> = sqlx::query_as(&format!(
        "UPDATE order_sagas
         SET parked_at = NULL, parked_reason = NULL, attempts = 0, next_attempt_at = now(),
             updated_at = now()
         WHERE order_id = $1 AND parked_at IS NOT NULL
         RETURNING {COLUMNS}"
    ))
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(saga) = resumed else {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT step FROM order_sagas WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&state.pool)
                .await?;
        return Err(match exists {
            None => missing(),
            Some(step) => ApiError::conflict("The saga is not parked; nothing to resume.")
                .with_extension("step", serde_json::json!(step)),
        });
    };
    tracing::warn!(%order_id, step = %saga.step, admin = %admin.user_id, "parked saga resumed by an operator");
    metrics::counter!("order_sagas_resumed_total").increment(1);
    // Picked up now rather than at the next sweep.
    if let Err(err) = state.driver.sweep().await {
        tracing::warn!(error = %err, "sweep after resume failed; the periodic sweep picks it up");
    }
    Ok(Json(saga))
}
