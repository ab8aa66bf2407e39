//! The HTTP API: stock administration (`GET/PUT /api/v1/inventory/{sku}`, BRIEF §3), for
//! administrators only ([`RequireAdmin`]: 401 without a token, 403 for anyone else).

use axum::{
    Json, Router,
    extract::{FromRef, Path, State, rejection::JsonRejection},
    routing::get,
};
use serde::Serialize;
use serde_json::Value;
use shop_auth::{Verifier, http::RequireAdmin};
use shop_runtime::{ApiError, FieldError};
use sqlx::PgPool;

use crate::stock::{self, MAX_UNITS, Stock};

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: Verifier,
    /// The threshold of a row created by a PUT that does not name one.
    pub low_stock_threshold: i64,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/inventory/{sku}", get(get_stock).put(put_stock))
        .with_state(state)
}

/// A sku's stock as the API shows it.
#[derive(Debug, Serialize)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
}

impl From<Stock> for StockView {
    fn from(row: Stock) -> Self {
        Self {
            sku: row.sku,
            available: row.available,
            reserved: row.reserved,
            low_stock_threshold: row.low_stock_threshold,
        }
    }
}

fn sku_path(sku: &str) -> Result<(), ApiError> {
    stock::check_sku(sku)
        .map_err(|problem| ApiError::validation(vec![FieldError::new("sku", problem)]))
}

async fn get_stock(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
    Path(sku): Path<String>,
) -> Result<Json<StockView>, ApiError> {
    sku_path(&sku)?;
    let row = stock::get(&state.pool, &sku)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No stock for sku {sku}.")))?;
    Ok(Json(row.into()))
}

/// A whole number in `0..=MAX_UNITS`, or the field error saying what is wrong with `value`.
fn units(field: &str, value: Option<&Value>, required: bool) -> Result<Option<i64>, FieldError> {
    match value {
        None | Some(Value::Null) if required => Err(FieldError::new(field, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_i64() {
            Some(n) if (0..=MAX_UNITS).contains(&n) => Ok(Some(n)),
            Some(_) => Err(FieldError::new(field, "must be between 0 and 1000000000")),
            None if value.as_u64().is_some() => {
                Err(FieldError::new(field, "must be between 0 and 1000000000"))
            }
            None => Err(FieldError::new(field, "must be a whole number")),
        },
    }
}

/// `{available, low_stock_threshold?}` → 200 with the stock. The body is read as JSON values
/// first, so a wrong type is a field error (`available: must be a whole number`) like any
/// other rule, rather than a parser message. Unknown fields are ignored.
async fn put_stock(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(sku): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<StockView>, ApiError> {
    let Json(body) = body?;
    let mut fields = Vec::new();
    if let Err(problem) = stock::check_sku(&sku) {
        fields.push(FieldError::new("sku", problem));
    }
    let Some(body) = body.as_object() else {
        return Err(ApiError::validation(vec![FieldError::new(
            "",
            "must be a JSON object",
        )]));
    };
    let available = units("available", body.get("available"), true)
        .map_err(|err| fields.push(err))
        .ok()
        .flatten();
    let threshold = units(
        "low_stock_threshold",
        body.get("low_stock_threshold"),
        false,
    )
    .map_err(|err| fields.push(err))
    .ok()
    .flatten();
    let Some(available) = available.filter(|_| fields.is_empty()) else {
        return Err(ApiError::validation(fields));
    };
    let row = stock::set(
        &state.pool,
        &sku,
        available,
        threshold,
        state.low_stock_threshold,
    )
    .await?;
    tracing::info!(%sku, available, admin = %admin.user_id, "stock set");
    Ok(Json(row.into()))
}
