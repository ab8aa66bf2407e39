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
//!
//! Resuming does not bypass anything: the saga continues from its persisted step through the
//! same driver and the same idempotent participant calls as any other run, so an operator who
//! resumes too early only gets it parked again. The proof is
//! `a_refused_capture_parks_the_saga_for_an_operator_instead_of_looping` in `tests/saga.rs`.
//!
//! Where it sits: [`crate::driver`] parks a saga (it writes `parked_at` and `parked_reason`
//! and gives the lease up), the sweeper then skips it, and only these routes bring it back.
//! They read and write the `order_sagas` table directly and call [`crate::driver::Driver::sweep`];
//! they never call a participant themselves, so an operator cannot move money or stock by
//! hand through order-service.

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

/// The two operator routes, sharing the order API's state (its pool and its driver).
///
/// Merged into [`crate::api::router`] rather than served on a port of their own, so they sit
/// behind the same middleware (request ids, metrics, problem responses); what keeps them from
/// the public is that the gateway's route table does not name them.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/sagas/parked", get(parked))
        .route("/api/v1/admin/sagas/{order_id}/resume", post(resume))
}

/// A saga as operators see it.
///
/// The saga row's columns an operator needs to decide, read as stored: nothing is derived, so
/// what the list shows is what the driver will resume from.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SagaView {
    /// The order the saga belongs to (one saga per order).
    pub order_id: Uuid,
    /// The step it stopped at, as stored (see [`crate::saga::Step`]).
    pub step: String,
    /// The cancellation reason, once the saga turned to compensation.
    pub reason: Option<String>,
    /// When it parked; `None` for a saga that is running.
    pub parked_at: Option<DateTime<Utc>>,
    /// Why it parked, in words an operator can act on (the participant's refusal, or the
    /// last error after too many attempts).
    pub parked_reason: Option<String>,
    /// Attempts of the current step so far; a resume sets it back to zero.
    pub attempts: i32,
    /// The last error of the current step.
    pub last_error: Option<String>,
    /// When the row last changed: in the listing, when the saga parked (nothing writes a
    /// parked row but a resume); in a resume's answer, the resume itself.
    pub updated_at: DateTime<Utc>,
}

/// The answer of the listing: `{items: [...]}` like every list of the API, so fields can be
/// added beside `items` later.
#[derive(Debug, Serialize)]
struct Listing {
    /// At most 500 parked sagas, oldest first.
    items: Vec<SagaView>,
}

/// The columns of [`SagaView`], written once for both queries.
const COLUMNS: &str =
    "order_id, step, reason, parked_at, parked_reason, attempts, last_error, updated_at";

/// Parked sagas, oldest first: the one waiting longest is the first to look at.
///
/// Capped at 500 so one answer stays small; the `order_sagas_parked` gauge counts them all,
/// and resuming the oldest brings the next ones into the list.
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

/// Clears the parking and makes the saga due now, then sweeps at once so the operator sees it
/// move without waiting for the next periodic sweep. Only a parked saga can be resumed: the
/// `UPDATE ... WHERE parked_at IS NOT NULL` makes that check and the change one statement, so
/// two operators resuming at once resume it once. The operator is logged by user id.
///
/// A malformed order id is a 404 like an unknown one, and a failed sweep is only logged: the
/// periodic sweep resumes the saga anyway.
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
