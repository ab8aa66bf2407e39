//! The HTTP API: the order part of the public API (BRIEF §3), under the paths the gateway
//! routes here unchanged. Every route needs a signed-in user and shows only their own orders.
//!
//! `POST /api/v1/orders` is idempotent by `Idempotency-Key`:
//!
//! * the key is stored with the order, unique per user, next to an HMAC of the request body
//!   ([`crate::card::CardVault::fingerprint`]);
//! * a repeat with the same key and body finds the order and answers it again (202, same id)
//!   — without pricing or starting anything;
//! * the same key with another body is refused (422): the client has a bug, and guessing which
//!   of its two requests it meant would be worse;
//! * two identical requests racing both price the cart, but only one `INSERT` wins the unique
//!   constraint; the other reads the winner's order and answers with it.
//!
//! Placing also refuses what the saga could not finish well: a cart that adds up to nothing
//! (422: a card cannot be authorized for zero, and a free order has no payment to run; ADR
//! 0009), and more sagas than this instance drives at once (503 with `Retry-After`, nothing
//! stored: the client retries with the same key).
//!
//! ## What a placing request does, in order
//!
//! 1. Validates the body field by field ([`crate::validate`]) and reads the key.
//! 2. Answers a repeated key from the stored order, before any other work.
//! 3. Prices the cart at catalog in one call: prices never come from the client, and an
//!    unknown product is the caller's error (422), known before anything is stored.
//! 4. Takes a slot of the [`Driver`], or answers 503.
//! 5. Writes the order, its lines, the saga row (leased to this instance, first attempt
//!    marked), the sealed card and `OrderPlaced`, in one transaction.
//! 6. Starts the saga and answers 202 with the order, still `PENDING`.
//!
//! Why 202 and polling rather than waiting for the saga: the saga's length depends on the
//! card (the slow test card takes seconds) and on participants that may be down for a while;
//! the request must not hold a connection for that. The `Location` header names the order to
//! poll, and the order's events tell the rest of the system.
//!
//! ## Patterns
//!
//! RES-08 (an idempotency key on a command), DATA-08 (eventual consistency: 202 and a
//! `Location` to poll), BEY-16 (cursor pagination of the list), SEC-11 (ownership: another
//! customer's order is a 404) and API-05 (the stored row and the API's view are different
//! types) of `docs/patterns.md`.
//!
//! (Doc comments of the types and handlers that appear in the OpenAPI document are that
//! document's text, committed in `services/gateway/openapi.json`; further notes on them are
//! plain comments, so that explaining the code does not change the published contract.)

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use shop_auth::{Principal, Verifier};
use shop_events::{Money, order::OrderPlaced};
use shop_messaging::outbox::postgres::{self as outbox, enqueue_event};
use shop_runtime::{
    ApiError, FieldError,
    openapi::{BadRequest, Conflict, NotFound, Unauthorized, Unavailable, Validation},
    pagination::{PageQuery, encode_cursor},
};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::{
    driver::{Driver, Placed, event_lines},
    participants::Participants,
    saga::{Reason, Step},
    validate::{self, PlaceOrder, schema::ShippingAddress},
};

/// The part of the public API this service owns, as OpenAPI; the gateway merges it into the
/// public document. (The operator routes of [`crate::admin`] are not published.)
#[derive(Debug, OpenApi)]
#[openapi(
    paths(place, list, show, cancel),
    components(schemas(
        OrderView,
        LineView,
        Listing,
        OrderStatus,
        Reason,
        PlaceOrder,
        ShippingAddress
    ))
)]
pub struct ApiDoc;

/// An order's `status`: `PENDING` until the saga ends, then `CONFIRMED` or `CANCELLED` (the
/// values the `orders.status` column's CHECK allows).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
// The variants' meaning is the type's description above; doc comments on them would add text
// to the committed document, hence the `allow`.
#[allow(missing_docs)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Checks access tokens; [`Principal`] and `RequireAdmin` find it through [`FromRef`].
    pub verifier: Verifier,
    /// The gRPC clients, for pricing at placement. A clone of the driver's (the breakers are
    /// shared through `Arc`s), so the API and the saga see one breaker per participant.
    pub participants: Participants,
    /// Starts the saga of a new order and sweeps after a cancellation or a resume. Also
    /// lends the API its card vault (sealing, fingerprints), its slots and its instance id,
    /// which a new saga row is leased to.
    pub driver: Arc<Driver>,
}

/// Lets the [`Principal`] and `RequireAdmin` extractors take the verifier out of the state,
/// so no handler passes it by hand.
impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The customer routes and the operators' routes ([`crate::admin`]) on one router; the
/// runtime adds its shared middleware and operational endpoints.
///
/// The paths are the public ones: the gateway forwards `/api/v1/orders...` unchanged, so what
/// a client sees and what this service routes are the same strings.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/orders", post(place).get(list))
        .route("/api/v1/orders/{id}", get(show))
        .route("/api/v1/orders/{id}/cancel", post(cancel))
        .merge(crate::admin::router())
        .with_state(state)
}

/// An order as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
// Fields without a doc comment stay without one: it would become their description in the
// committed document. The `allow` keeps the crate's `missing_docs` rule from asking for it.
#[allow(missing_docs)]
pub struct OrderView {
    pub id: Uuid,
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub items: Vec<LineView>,
    /// The sum of the lines, as charged.
    pub total: Money,
    #[schema(value_type = ShippingAddress)]
    pub shipping_address: serde_json::Value,
    /// Present when `status` is `CANCELLED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Reason>, required = false, nullable = false)]
    pub cancellation_reason: Option<String>,
    /// The card's last four digits, once payment-service has seen it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false, pattern = "^[0-9]{4}$")]
    pub card_last4: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A line of an order, priced by catalog when it was placed.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderLine)]
// As for `OrderView`: undocumented fields would otherwise gain text in the committed document.
#[allow(missing_docs)]
pub struct LineView {
    pub product_id: String,
    pub sku: String,
    /// The product's name when the order was placed.
    pub name: String,
    #[schema(minimum = 1, maximum = 100)]
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

/// An `orders` row as the API reads it (the idempotency key itself is not needed: the query
/// that finds a repeat selects by it).
#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    /// UUIDv7, so ordering by id is ordering by creation (the list's cursor relies on it).
    id: Uuid,
    /// The customer: what [`own`] compares with the token's subject.
    user_id: Uuid,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`, written by the saga's last transaction.
    status: String,
    /// Set exactly when `status` is `CANCELLED` (a table CHECK holds both together).
    cancellation_reason: Option<String>,
    /// Minor units, priced by catalog at placement; what the saga authorizes.
    total_amount: i64,
    /// The one currency of every line.
    currency: String,
    /// The validated, normalised address, as the client will see it back.
    shipping_address: serde_json::Value,
    /// Filled by the saga when payment authorizes; `None` before that and for a declined card.
    card_last4: Option<String>,
    /// The keyed HMAC a repeated `Idempotency-Key` is compared with; never shown.
    request_fingerprint: Vec<u8>,
    /// When the order was placed.
    created_at: DateTime<Utc>,
    /// Set at placement and again when the saga ends; recording `card_last4` leaves it alone,
    /// and the saga's own progress is in `order_sagas`.
    updated_at: DateTime<Utc>,
}

/// The columns of [`OrderRow`], written once for every query.
const ORDER_COLUMNS: &str = "id, user_id, status, cancellation_reason, total_amount, currency,
    shipping_address, card_last4, request_fingerprint, created_at, updated_at";

/// Loads an order with its lines; `None` when it does not exist.
///
/// Two queries outside a transaction, the row and then its lines: the lines never change
/// after placement, so they cannot disagree with the row they are read after.
///
/// Ownership is not checked here: callers decide (the API through `own`, placing through the
/// order it just wrote).
async fn load(pool: &PgPool, id: Uuid) -> Result<Option<(OrderRow, OrderView)>, ApiError> {
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let mut conn = pool.acquire().await?;
    let lines = event_lines(&mut conn, id, &row.currency).await?;
    let view = view(&row, lines);
    Ok(Some((row, view)))
}

/// The API's view of a row and its lines: line totals are computed, not stored, from the
/// unit price fixed at placement.
///
/// The only place a row becomes an answer, so the stored columns (the fingerprint, the
/// customer's id) cannot leak into the API by a new query forgetting to leave them out.
fn view(row: &OrderRow, lines: Vec<shop_events::order::OrderLine>) -> OrderView {
    OrderView {
        id: row.id,
        status: row.status.clone(),
        items: lines
            .into_iter()
            .map(|line| LineView {
                line_total: Money {
                    amount: line.unit_price.amount * i64::from(line.quantity),
                    currency: line.unit_price.currency.clone(),
                },
                product_id: line.product_id,
                sku: line.sku,
                name: line.name,
                quantity: line.quantity,
                unit_price: line.unit_price,
            })
            .collect(),
        total: Money {
            amount: row.total_amount,
            currency: row.currency.clone(),
        },
        shipping_address: row.shipping_address.clone(),
        cancellation_reason: row.cancellation_reason.clone(),
        card_last4: row.card_last4.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// 202 with the order and its `Location`.
///
/// Used by every successful path of `POST /orders` (first request, repeated key, lost race),
/// so they share one status code and one header, and a client needs no special case for a
/// retry.
///
/// 202 and `Location` for a first request and its repeats alike, so a client that lost the
/// first answer gets the same order back, which is the point of the key.
fn accepted(order: OrderView) -> Response {
    let location = format!("/api/v1/orders/{}", order.id);
    let mut response = (StatusCode::ACCEPTED, Json(order)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The answer to a repeated key: the same order, or 422 when the body differs.
///
/// `None` when the key is new for this customer. Keys are scoped per customer, so one
/// customer's key never finds another's order.
///
/// The body is compared through its fingerprint (a keyed HMAC of the canonical request, which
/// leaves out the card's full number and CVC because it is kept as long as the order).
async fn replay(
    pool: &PgPool,
    user_id: Uuid,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Response>, ApiError> {
    let existing: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE user_id = $1 AND idempotency_key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    let Some(id) = existing else { return Ok(None) };
    let (row, order) = load(pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("The order does not exist."))?;
    if row.request_fingerprint != fingerprint {
        return Err(ApiError::validation(vec![FieldError::new(
            "Idempotency-Key",
            "was already used for a different order; use a new key for a new order",
        )]));
    }
    metrics::counter!("orders_idempotent_replays_total").increment(1);
    Ok(Some(accepted(order)))
}

/// Places an order: 202 at once, with `status: PENDING` and a `Location` to poll; the saga
/// prices, reserves, pays and ends it `CONFIRMED` or `CANCELLED`. Idempotent by
/// `Idempotency-Key`: a retry with the same key and body answers the same order.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "order",
    operation_id = "place_order",
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "A new value per order (a UUID, say), the same on every retry of it.")),
    request_body = PlaceOrder,
    responses(
        (status = 202, description = "Accepted: the order, `PENDING` (or as it is now, for a repeated key).",
         body = OrderView, headers(("Location" = String, description = "The order's URL, to poll."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn place(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let key = validate::idempotency_key(&headers).map_err(|err| ApiError::validation(vec![err]))?;
    let request: PlaceOrder = validate::place_order(&body).map_err(ApiError::validation)?;
    let fingerprint = state
        .driver
        .vault
        .fingerprint(request.canonical().as_bytes());

    if let Some(response) = replay(&state.pool, principal.user_id, &key, &fingerprint).await? {
        return Ok(response);
    }

    // Prices come from catalog-service, in one call for the whole cart, never from the client.
    let ids: Vec<String> = request.items.iter().map(|i| i.product_id.clone()).collect();
    let (products, missing) = state.participants.products(ids).await.map_err(|err| {
        ApiError::unavailable(
            "The catalog cannot price the order right now; retry with the same Idempotency-Key.",
        )
        .with_retry_after(1)
        .with_source(err)
    })?;
    let Priced {
        lines,
        currency,
        total,
    } = price(&request.items, &products, &missing).map_err(ApiError::validation)?;
    if total == 0 {
        return Err(ApiError::validation(vec![FieldError::new(
            "items",
            "add up to nothing; a free order cannot be paid by card",
        )]));
    }

    let driver = &state.driver;
    // A slot to drive the saga, taken before anything is stored: an instance that already
    // drives as many sagas as it may says so instead of queueing work it cannot start.
    let Some(slot) = driver.try_slot() else {
        metrics::counter!("orders_refused_total", "reason" => "saturated").increment(1);
        return Err(ApiError::unavailable(
            "Too many orders are being processed; retry with the same Idempotency-Key.",
        )
        .with_retry_after(1));
    };
    let order_id = Uuid::now_v7();
    let sealed = driver
        .vault
        .seal(order_id, &request.card)
        .map_err(ApiError::internal)?;
    let mut tx = state.pool.begin().await?;
    // The row comes back as stored (its defaults, the address as `jsonb` keeps it), so the
    // answer is built from it rather than read back after the commit.
    let inserted: Option<OrderRow> = sqlx::query_as(&format!(
        "INSERT INTO orders (id, user_id, idempotency_key, request_fingerprint, total_amount,
                             currency, shipping_address)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id, idempotency_key) DO NOTHING
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order_id)
    .bind(principal.user_id)
    .bind(&key)
    .bind(&fingerprint)
    .bind(total)
    .bind(&currency)
    .bind(&request.shipping_address)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = inserted else {
        // A concurrent request with the same key won the race: answer with its order.
        tx.rollback().await?;
        return replay(&state.pool, principal.user_id, &key, &fingerprint)
            .await?
            .ok_or_else(|| ApiError::conflict("The order is being placed; retry."));
    };
    for (line_no, line) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_no, product_id, sku, name, quantity,
                                      unit_price_amount)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order_id)
        .bind(i32::try_from(line_no).unwrap_or(i32::MAX))
        .bind(&line.product_id)
        .bind(&line.sku)
        .bind(&line.name)
        .bind(i32::try_from(line.quantity).unwrap_or(i32::MAX))
        .bind(line.unit_price.amount)
        .execute(&mut *tx)
        .await?;
    }
    // The saga starts leased to the run this request starts right after the commit (a lease
    // token of its own, see `driver`); the first attempt of its first step is persisted here
    // too, so the call needs no commit of its own.
    let lease = Uuid::new_v4();
    let (db_now, deadline): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO order_sagas (order_id, step, deadline, lease_owner, lease_until, attempts)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4,
                 now() + $5 * interval '1 millisecond', 1)
         RETURNING now(), deadline",
    )
    .bind(order_id)
    .bind(Step::Reserve.as_str())
    .bind(i64::try_from(driver.config.saga_timeout.as_millis()).unwrap_or(i64::MAX))
    .bind(lease)
    .bind(i64::try_from(driver.config.lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_one(&mut *tx)
    .await?;
    // Its own row, deleted once the authorization's outcome is known (see `driver`).
    sqlx::query("INSERT INTO order_cards (order_id, sealed) VALUES ($1, $2)")
        .bind(order_id)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
    enqueue_event(
        &mut tx,
        &OrderPlaced {
            order_id,
            user_id: principal.user_id,
            items: lines.clone(),
            total: Money {
                amount: total,
                currency: currency.clone(),
            },
        },
    )
    .await?;
    outbox::commit(tx).await?;
    metrics::counter!("orders_placed_total").increment(1);
    // Everything the saga's first step needs was just written: the run starts from it, and
    // the answer is built from the returned row, so placing an order reads nothing back.
    let order = view(&row, lines.clone());
    driver.start(
        order_id,
        lease,
        Some(Placed {
            db_now,
            deadline,
            sealed_card: sealed,
            user_id: principal.user_id,
            total_amount: total,
            currency,
            lines,
        }),
        slot,
    );
    Ok(accepted(order))
}

/// A cart priced by catalog-service.
///
/// What the placing transaction writes: the lines with their prices frozen at this moment
/// (a later price change in catalog does not touch a placed order), and the total the saga
/// will authorize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The lines with catalog's sku, name and unit price, in the request's order.
    pub lines: Vec<shop_events::order::OrderLine>,
    /// The one currency of every line.
    pub currency: String,
    /// The sum of the lines in minor units, checked for overflow.
    pub total: i64,
}

/// Prices `items` with catalog's answer to `GetProducts`: unknown products, products without
/// a price, mixed currencies and totals that overflow are field errors. Pure, so the contract
/// test runs it on the contract's example.
///
/// Every line gets its own error, so one answer lists every unknown product. An order has one
/// currency because it is authorized as one amount; mixing would need a conversion nobody
/// agreed to. The sum uses checked arithmetic, so a huge quantity times a huge price is a field
/// error, not a wrapped total.
pub fn price(
    items: &[crate::validate::Item],
    products: &[shop_proto::catalog::v1::Product],
    missing: &[String],
) -> Result<Priced, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let field = format!("items[{index}].product_id");
        let product = products
            .iter()
            .find(|p| p.id == item.product_id)
            .filter(|_| !missing.contains(&item.product_id));
        match product {
            Some(product) => match &product.price {
                Some(price) => lines.push(shop_events::order::OrderLine {
                    product_id: item.product_id.clone(),
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    quantity: item.quantity,
                    unit_price: Money {
                        amount: price.amount,
                        currency: price.currency.clone(),
                    },
                }),
                None => errors.push(FieldError::new(field, "has no price")),
            },
            None => errors.push(FieldError::new(field, "is not a product of the catalog")),
        }
    }
    let currency = lines
        .first()
        .map(|line| line.unit_price.currency.clone())
        .unwrap_or_default();
    if lines
        .iter()
        .any(|line| line.unit_price.currency != currency)
    {
        errors.push(FieldError::new(
            "items",
            "are priced in different currencies; order them separately",
        ));
    }
    let total = lines.iter().try_fold(0i64, |sum, line| {
        line.unit_price
            .amount
            .checked_mul(i64::from(line.quantity))
            .and_then(|amount| sum.checked_add(amount))
    });
    match total {
        None => errors.push(FieldError::new(
            "items",
            "add up to more than can be charged",
        )),
        Some(_) if !errors.is_empty() => {}
        Some(total) => {
            return Ok(Priced {
                lines,
                currency,
                total,
            });
        }
    }
    Err(errors)
}

#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "order",
    operation_id = "get_order",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order's id (a UUID).")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order = own(&state.pool, &principal, &id).await?;
    Ok(Json(order))
}

/// The caller's order `id`; 404 for a malformed id, a missing order and someone else's alike.
///
/// One answer for all three, so order ids cannot be probed: a 403 for someone else's order
/// would confirm that it exists.
async fn own(pool: &PgPool, principal: &Principal, id: &str) -> Result<OrderView, ApiError> {
    let missing = || ApiError::not_found("The order does not exist.");
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    let (row, order) = load(pool, id).await?.ok_or_else(missing)?;
    // Own orders only, for admins too: the public API has no "everyone's orders" view.
    if row.user_id != principal.user_id {
        return Err(missing());
    }
    Ok(order)
}

/// A page of the caller's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderPage)]
struct Listing {
    items: Vec<OrderView>,
    /// Pass it as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Orders per page when the caller does not say.
const DEFAULT_LIMIT: u32 = 20;
/// The most a caller may ask for in one page; more is a field error on `limit`.
const MAX_LIMIT: u32 = 100;

/// The caller's orders, newest first. The cursor carries the last id of the previous page (ids
/// are UUID v7, ordered by creation), so pages stay stable while new orders arrive; it is
/// opaque to callers through the shared encoder, so the paging key can change without them.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "order",
    operation_id = "list_orders",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the caller's orders.", body = Listing),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Json<Listing>, ApiError> {
    let mut errors = Vec::new();
    let limit = i64::from(page.limit(DEFAULT_LIMIT, MAX_LIMIT, &mut errors));
    let cursor = page.cursor(&mut errors, |last_id| Uuid::parse_str(last_id).ok());
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(principal.user_id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let mut conn = state.pool.acquire().await?;
    let mut items = Vec::new();
    for row in rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
    {
        let lines = event_lines(&mut conn, row.id, &row.currency).await?;
        items.push(view(row, lines));
    }
    let next_cursor = more
        .then(|| {
            items
                .last()
                .map(|order| encode_cursor(&order.id.to_string()))
        })
        .flatten();
    Ok(Json(Listing { items, next_cursor }))
}

/// Cancels a `PENDING` order through its saga: the request is recorded on the saga row (under
/// its lock) and the saga compensates what it did. Too late once stock was committed: 409.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/cancel",
    tag = "order",
    operation_id = "cancel_order",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order's id (a UUID).")),
    responses(
        (status = 200, description = "The order: usually `CANCELLED` with `cancelled_by_user`, \
          still `PENDING` when compensation takes longer (it ends cancelled).", body = OrderView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order = own(&state.pool, &principal, &id).await?;
    let mut tx = state.pool.begin().await?;
    let step: String =
        sqlx::query_scalar("SELECT step FROM order_sagas WHERE order_id = $1 FOR UPDATE")
            .bind(order.id)
            .fetch_one(&mut *tx)
            .await?;
    let step: Step = step
        .parse()
        .map_err(|err: String| ApiError::internal(std::io::Error::other(err)))?;
    match step {
        // Already cancelled, or already being compensated for another reason: it ends
        // cancelled either way.
        Step::Cancelled | Step::VoidPayment | Step::ReleaseStock => return Ok(Json(order)),
        step if !step.is_compensatable() => {
            return Err(ApiError::conflict(
                "The order can no longer be cancelled: its stock is already committed.",
            )
            // Not `status`: that member is the HTTP status (RFC 9457); found by checking the
            // answer against the document's `Problem`.
            .with_extension("order_status", serde_json::json!(order.status)));
        }
        _ => {}
    }
    // Due now: the instance driving it sees the flag at its next write; if none drives it, the
    // sweeper picks it up at once.
    sqlx::query(
        "UPDATE order_sagas SET cancel_requested = true, next_attempt_at = now(), updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("orders_cancel_requests_total").increment(1);

    // Most compensations take milliseconds: wait a little so the answer usually shows the
    // order cancelled. If not yet, it shows PENDING; the saga finishes the cancellation anyway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let _ = state.driver.sweep().await;
    loop {
        let current = own(&state.pool, &principal, &id).await?;
        if current.status != "PENDING" || tokio::time::Instant::now() >= deadline {
            return Ok(Json(current));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
