//! The HTTP API: `GET /api/v1/payments?order_id=` (BRIEF §3), the signed-in customer's own
//! payments only.
//!
//! "Own" is a condition of the query (`WHERE user_id = <the token's subject>`), not a check after
//! loading: asking for someone else's order id returns an empty list, indistinguishable from an
//! order without a payment, so order ids cannot be probed.
//!
//! The view is computed like every other answer of this service: the payment's facts plus a
//! replay of its completed operations ([`Ledger::replay`]), so the state a customer sees is the
//! state the saga's next call would be decided on. Read-only: money moves only through the
//! gRPC API.
//!
//! Where it sits: the gateway routes `GET /api/v1/payments` here unchanged, and the gateway's
//! composed order view does not use it. Nothing in the order saga reads this API; it exists
//! for the customer, who may check what was held, taken and given back for each order.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{FromRef, Query, State, rejection::QueryRejection},
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shop_auth::{Principal, Verifier};
use shop_events::Money;
use shop_runtime::{
    ApiError, ErrorKind, FieldError,
    openapi::{BadRequest, Unauthorized, Unavailable, Validation},
};
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::{
    ledger::{Ledger, State as PaymentState},
    payments::{OperationRow, Payment, completed},
};

/// At most this many payments in one answer (newest first); a customer has one per order.
///
/// A bound rather than paging: it keeps one request's cost fixed, and the order filter reaches
/// any older payment directly. The second query of a request reads only the operation rows
/// of the payments listed.
const LIMIT: i64 = 100;

/// The part of the public API this service owns, as OpenAPI; the gateway merges it into the
/// public document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(list),
    components(schemas(PaymentView, CardView, Payments, PaymentState))
)]
pub struct ApiDoc;

/// What the handler shares: the database and the token verifier.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database, read only here.
    pub pool: PgPool,
    /// Checks access tokens; the [`Principal`] extractor finds it through [`FromRef`].
    pub verifier: Verifier,
}

/// Lets the [`Principal`] extractor take the verifier out of the state, so the handler never
/// handles tokens itself.
impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The customer route only; the runtime adds its shared middleware and operational endpoints.
///
/// There is no route that moves money: a refund outside the saga goes through the gRPC
/// `Refund`, which only the callers named in [`crate::GRPC_ACCESS`] may use.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/payments", get(list))
        .with_state(state)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the payment of this order (a UUID); the caller's own only, so another customer's
    /// order id gives an empty list.
    #[param(value_type = Option<Uuid>)]
    order_id: Option<String>,
}

/// The caller's payments, newest first (at most 100; a customer has one per order).
#[derive(Debug, Serialize, ToSchema)]
// `items` stays without a doc comment, which would become text in the committed document.
#[allow(missing_docs)]
pub struct Payments {
    pub items: Vec<PaymentView>,
}

/// A payment as the customer sees it: no card data beyond brand and last four.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Payment)]
// The fields' meaning, in plain comments because doc comments here would change the
// committed OpenAPI document: `state` is derived from the operation log, never stored;
// `captured` is 0 until the capture, `refunded` sums every refund; `updated_at` is when the
// last completed operation was recorded (`created_at` before any). The `allow` below keeps the
// crate's `missing_docs` rule from asking for those doc comments.
#[allow(missing_docs)]
pub struct PaymentView {
    pub id: Uuid,
    pub order_id: Uuid,
    #[schema(value_type = PaymentState)]
    pub state: &'static str,
    pub amount: Money,
    pub captured: Money,
    pub refunded: Money,
    pub card: CardView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// The only card data that ever leaves the service: enough for a customer to recognise the
// card, useless to anyone who would charge it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Card)]
#[allow(missing_docs)] // as for `PaymentView`: no doc comments on a published schema's fields
pub struct CardView {
    #[schema(example = "visa")]
    pub brand: String,
    #[schema(pattern = "^[0-9]{4}$", example = "4242")]
    pub last4: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/payments",
    tag = "payment",
    operation_id = "list_payments",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's payments.", body = Payments),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
// The caller's payments, optionally of one order: 400 for a query that cannot be parsed, 422
// for an `order_id` that is not a UUID, 401 without a token. Two queries in all (payments,
// then all their operation rows), whatever the number of payments.
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Payments>, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::new(ErrorKind::BadRequest, err.body_text()))?;
    // Absent means all; present must be a UUID (an empty value too: the document says `uuid`).
    let order_id = match query.order_id.as_deref() {
        None => None,
        Some(raw) => Some(Uuid::parse_str(raw).map_err(|_| {
            ApiError::validation(vec![FieldError::new("order_id", "is not a UUID")])
        })?),
    };
    let payments: Vec<Payment> = sqlx::query_as(
        "SELECT * FROM payments
         WHERE user_id = $1 AND ($2::uuid IS NULL OR order_id = $2)
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(principal.user_id)
    .bind(order_id)
    .bind(LIMIT)
    .fetch_all(&state.pool)
    .await?;
    let ids: Vec<Uuid> = payments.iter().map(|p| p.id).collect();
    let rows: Vec<OperationRow> =
        sqlx::query_as("SELECT * FROM payment_operations WHERE payment_id = ANY($1) ORDER BY seq")
            .bind(&ids)
            .fetch_all(&state.pool)
            .await?;
    let mut by_payment: HashMap<Uuid, Vec<OperationRow>> = HashMap::new();
    for row in rows {
        by_payment.entry(row.payment_id).or_default().push(row);
    }
    let items: Vec<PaymentView> = payments
        .into_iter()
        .map(|payment| {
            let rows = by_payment.remove(&payment.id).unwrap_or_default();
            let (done, done_rows) = completed(&rows);
            let ledger = Ledger::replay(&done);
            let updated_at = done_rows
                .last()
                .map_or(payment.created_at, |row| row.recorded_at);
            PaymentView {
                id: payment.id,
                order_id: payment.order_id,
                state: ledger.state.as_str(),
                amount: payment.money(payment.amount),
                captured: payment.money(ledger.captured),
                refunded: payment.money(ledger.refunded),
                card: CardView {
                    brand: payment.card_brand.clone(),
                    last4: payment.card_last4.clone(),
                },
                created_at: payment.created_at,
                updated_at,
            }
        })
        .collect();
    Ok(Json(Payments { items }))
}
