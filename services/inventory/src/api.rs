//! The HTTP API: stock administration (`GET/PUT /api/v1/inventory/{sku}`, BRIEF §3), for
//! administrators only ([`RequireAdmin`]: 401 without a token, 403 for anyone else).
//!
//! This is the only way a person changes stock: counting the shelf and setting `available`.
//! Reserved units are not editable here, because they belong to sagas in flight and only the
//! saga (or the expiry job) may move them. Like every other change, a PUT goes through
//! [`crate::stock`] and publishes its event in the same transaction. Bad input is answered
//! with field-level problem+json (422), never with a parser's message;
//! `a_bad_stock_body_gets_field_level_problem_json` in `tests/admin.rs` holds it to that.

use axum::{
    Json, Router,
    extract::{FromRef, Path, State, rejection::JsonRejection},
    routing::get,
};
use serde::Serialize;
use serde_json::Value;
use shop_auth::{Verifier, http::RequireAdmin};
use shop_runtime::{
    ApiError, FieldError,
    openapi::{BadRequest, Forbidden, NotFound, Unauthorized, Unavailable, Validation},
};
use sqlx::PgPool;
use utoipa::{
    OpenApi, ToSchema,
    openapi::{ObjectBuilder, RefOr, Schema, Type, schema::SchemaType},
};

use crate::stock::{self, MAX_UNITS, Stock};

/// The part of the public API this service owns, as OpenAPI; the gateway merges it into the
/// public document.
#[derive(Debug, OpenApi)]
#[openapi(paths(get_stock, put_stock), components(schemas(StockView, SetStock)))]
pub struct ApiDoc;

/// What the handlers share: the database and the token verifier.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub pool: PgPool,
    /// Checks access tokens; [`RequireAdmin`] finds it through [`FromRef`].
    pub verifier: Verifier,
    /// The threshold of a row created by a PUT that does not name one.
    pub low_stock_threshold: i64,
}

/// Lets [`RequireAdmin`] take the verifier out of the state without the handlers passing it.
impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The admin routes only: the runtime wraps them in its shared middleware (request ids,
/// tracing, metrics, problem responses) and adds the operational endpoints, so no service
/// writes those twice.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/inventory/{sku}", get(get_stock).put(put_stock))
        .with_state(state)
}

// A type of its own rather than `Stock` with `Serialize`, so the row's `version` (an internal
// ordering aid for events) does not become part of the public API. (A plain comment: the doc
// comments of this type are its OpenAPI description, committed in the gateway's document.)
/// A sku's stock as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Stock)]
pub struct StockView {
    // Undocumented on purpose (hence the `allow`): a doc comment here would become the field's
    // description in the committed OpenAPI document.
    #[allow(missing_docs)]
    pub sku: String,
    /// Units that can be reserved now.
    #[schema(minimum = 0)]
    pub available: i64,
    /// Units held by orders in progress.
    #[schema(minimum = 0)]
    pub reserved: i64,
    /// `StockLow` is published when `available` falls to this or below.
    #[schema(minimum = 0)]
    pub low_stock_threshold: i64,
}

/// The body of `PUT /api/v1/inventory/{sku}`, read as loose JSON by `put_stock` (so a wrong
/// type is a field error); its schema is written from the same bounds `units` checks.
#[derive(Debug)]
pub struct SetStock;

/// Written by hand because there is no struct to derive it from (the handler reads loose
/// JSON); `low_stock_threshold` also admits null, which keeps the current threshold.
impl utoipa::PartialSchema for SetStock {
    fn schema() -> RefOr<Schema> {
        let units = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(MAX_UNITS))
                .description(Some(description.to_owned()))
        };
        ObjectBuilder::new()
            .property("available", units("Units available from now on."))
            .property(
                "low_stock_threshold",
                units("When to publish `StockLow`; unchanged (or the default for a new sku) when absent or null.")
                    .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null])),
            )
            .required("available")
            .into()
    }
}

impl ToSchema for SetStock {}

/// Drops `version`, which orders events for their consumers and means nothing to a person.
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

/// The `{sku}` path segment must pass the same rule as every other sku, or 422 on `sku`.
fn sku_path(sku: &str) -> Result<(), ApiError> {
    stock::check_sku(sku)
        .map_err(|problem| ApiError::validation(vec![FieldError::new("sku", problem)]))
}

#[utoipa::path(
    get,
    path = "/api/v1/inventory/{sku}",
    tag = "inventory",
    operation_id = "get_stock",
    security(("bearer" = [])),
    params(("sku" = String, Path, min_length = 1, max_length = 64, pattern = r"^[^\s\x00-\x1f\x7f-\x9f]+$",
            description = "The product's sku.")),
    responses(
        (status = 200, description = "The sku's stock.", body = StockView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
// 404 for a sku that has no row (its product never reached inventory), which is different
// from a row with nothing available.
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
        // JSON has one number type: `5.0` is the whole number 5, as JSON Schema says (a
        // fuzzer found it refused).
        // A whole float out of range (`-5.0`, `1e10`) is a number in the wrong range, not the
        // wrong kind of number: `as` saturates, so it lands outside the range below.
        Some(value) => match value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.is_finite() && f.fract() == 0.0)
                .map(|f| f as i64)
        }) {
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
#[utoipa::path(
    put,
    path = "/api/v1/inventory/{sku}",
    tag = "inventory",
    operation_id = "set_stock",
    security(("bearer" = [])),
    params(("sku" = String, Path, min_length = 1, max_length = 64, pattern = r"^[^\s\x00-\x1f\x7f-\x9f]+$",
            description = "The product's sku; a sku without stock gets a row.")),
    request_body = SetStock,
    responses(
        (status = 200, description = "The sku's stock after the change.", body = StockView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::units;

    /// What each kind of JSON value gets: whole numbers in range pass however they are written;
    /// whole numbers out of range hear about the range, whatever their notation; anything else
    /// hears that it is not a whole number.
    #[test]
    fn units_name_the_range_for_whole_numbers_and_the_kind_for_everything_else() {
        let message = |value: serde_json::Value| match units("available", Some(&value), true) {
            Ok(n) => format!("ok {n:?}"),
            Err(err) => err.message.to_string(),
        };
        assert_eq!(message(json!(5)), "ok Some(5)");
        assert_eq!(message(json!(5.0)), "ok Some(5)");
        for out_of_range in [
            json!(-1),
            json!(-5.0),
            json!(1e10),
            json!(1_000_000_001),
            json!(u64::MAX),
        ] {
            assert_eq!(
                message(out_of_range.clone()),
                "must be between 0 and 1000000000",
                "{out_of_range}"
            );
        }
        for not_whole in [json!(2.5), json!("5"), json!(true), json!([1])] {
            assert_eq!(
                message(not_whole.clone()),
                "must be a whole number",
                "{not_whole}"
            );
        }
    }
}
