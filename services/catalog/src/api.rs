//! The HTTP API: the catalog part of the public API (BRIEF §3), under the same paths the
//! gateway will route here unchanged. Reads are public; writes need an administrator's token.

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::{Value, json};
use shop_auth::{Verifier, http::RequireAdmin};
use shop_runtime::{
    ApiError, ErrorKind, FieldError,
    error::PROBLEM_JSON,
    openapi::{
        BadRequest, Conflict, Forbidden, NotFound, PreconditionFailed, Unauthorized, Unavailable,
        Validation,
    },
    pagination::{PageQuery, encode_cursor},
};
use utoipa::{OpenApi, ToSchema};

use crate::{
    product::{self, Changes, Content, Product, ProductBody},
    search,
    store::{IfMatch, ListQuery, Store, WriteError, store_error},
};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// The part of the public API this service owns, as OpenAPI; the gateway merges it into the
/// public document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(list, read, create, update),
    components(schemas(ProductBody, ProductPage, Content, Changes))
)]
pub struct ApiDoc;

/// A page of products: `{items, next_cursor}`; `next_cursor` is null on the last page.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage<'a> {
    pub items: Vec<ProductBody<'a>>,
    /// Pass it as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/products", get(list).post(create))
        .route("/api/v1/products/{id}", get(read).patch(update))
        .with_state(state)
}

/// Every parameter is text here so that a bad one is a field error naming it.
#[derive(Debug, Default)]
struct ListParams {
    q: Option<String>,
    category: Option<String>,
    /// `ids=a,b,c`: see [`list_by_ids`].
    ids: Option<String>,
    page: PageQuery,
}

/// The query parameters `GET /api/v1/products` understands; any other is refused.
///
/// Refused rather than ignored, for two reasons. A misspelt filter (`?categroy=lamps`) would
/// otherwise answer the unfiltered listing as if it were the filtered one. And every ignored
/// parameter makes another URL for the same answer: the gateway caches listings by their
/// parameters, and `?x=<anything>` was a new cache entry per request, each kept for a day.
pub const LIST_PARAMETERS: [&str; 5] = ["q", "category", "ids", "limit", "cursor"];

/// Reads the listing's parameters: 400 (a problem naming the parameter) for one not in
/// [`LIST_PARAMETERS`] or one given twice (which value would count is anyone's guess).
fn list_params(pairs: Vec<(String, String)>) -> Result<ListParams, ApiError> {
    let mut params = ListParams::default();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "q" => &mut params.q,
            "category" => &mut params.category,
            "ids" => &mut params.ids,
            "limit" => &mut params.page.limit,
            "cursor" => &mut params.page.cursor,
            _ => {
                return Err(bad_parameter(
                    &name,
                    &format!(
                        "is not a parameter of this listing (it accepts {})",
                        LIST_PARAMETERS.join(", ")
                    ),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(bad_parameter(&name, "is given more than once"));
        }
    }
    Ok(params)
}

/// 400 naming the parameter, in the detail and in `errors` like a field error. The name is
/// the caller's own text: cut short, so the answer cannot be made to echo a long string back.
fn bad_parameter(name: &str, problem: &str) -> ApiError {
    let name: String = name.chars().take(64).collect();
    ApiError::new(
        ErrorKind::BadRequest,
        format!("Query parameter '{name}' {problem}."),
    )
    .with_extension(
        "errors",
        json!([FieldError::new(name.clone(), problem.to_owned())]),
    )
}

/// `{items, next_cursor}`; `next_cursor` is null on the last page. The cursor carries the last
/// id of the page (ids sort in creation order), opaque to callers through the shared encoder.
#[utoipa::path(
    get,
    path = "/api/v1/products",
    tag = "catalog",
    operation_id = "list_products",
    params(
        ("q" = Option<String>, Query,
         description = "Words every product found must contain (prefixes match), at most 10 words."),
        ("category" = Option<String>, Query, description = "Only this category (a slug such as `coffee`)."),
        ("ids" = Option<String>, Query, description = "Comma-separated product ids (at most 100, each at most 64 characters): \
          exactly these products, as one page. Not combined with `q`, `category` or `cursor`."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of products, in creation order.", body = ProductPage),
        (status = 400, response = BadRequest),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn list(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = list_params(pairs)?;
    if let Some(ids) = params.ids.as_deref() {
        return list_by_ids(&state, ids, &params).await;
    }
    let mut errors = Vec::new();
    let limit = params.page.limit(DEFAULT_LIMIT, MAX_LIMIT, &mut errors);
    let after = params.page.cursor(&mut errors, |last_id| {
        (!last_id.is_empty() && last_id.len() <= 64).then(|| last_id.to_owned())
    });
    let terms = match search::query_terms(params.q.as_deref().unwrap_or_default()) {
        Some(terms) => terms,
        None => {
            errors.push(FieldError::new(
                "q",
                format!("must have at most {} words", search::MAX_QUERY_WORDS),
            ));
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let query = ListQuery {
        category: params.category.filter(|c| !c.is_empty()),
        terms,
        after,
        limit: i64::from(limit),
    };
    let page = state.store.list(&query).await.map_err(store_error)?;
    Ok(Json(ProductPage {
        items: page.items.iter().map(Product::body).collect(),
        next_cursor: page.last.as_deref().map(encode_cursor),
    })
    .into_response())
}

/// `GET /api/v1/products?ids=a,b,c`: the products with these ids (at most
/// [`crate::grpc::MAX_IDS`] distinct ones), in id order, as one page (`next_cursor` null);
/// ids catalog does not know are simply not in `items`. One query for the whole batch, for a
/// caller that shows many products at once — the gateway's order composition names every
/// product of an order in one call instead of one per line. It is the public read API (no
/// token), so the gateway needs no service credentials for it. Not combined with `q`,
/// `category` or `cursor` (422 naming `ids`).
async fn list_by_ids(
    state: &AppState,
    ids: &str,
    params: &ListParams,
) -> Result<Response, ApiError> {
    let mut ids: Vec<String> = ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let problem = if given(&params.q) || given(&params.category) || given(&params.page.cursor) {
        Some("cannot be combined with q, category or cursor".to_owned())
    } else if ids.is_empty() {
        Some("must name at least one product id".to_owned())
    } else if ids.len() > crate::grpc::MAX_IDS {
        Some(format!(
            "must name at most {} distinct products",
            crate::grpc::MAX_IDS
        ))
    } else if ids.iter().any(|id| id.len() > 64) {
        Some("must be product ids of at most 64 characters".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(ApiError::validation(vec![FieldError::new("ids", problem)]));
    }
    let mut found = state.store.get_many(&ids).await.map_err(store_error)?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(ProductPage {
        items: found.iter().map(Product::body).collect(),
        next_cursor: None,
    })
    .into_response())
}

/// One product with its `ETag`; `If-None-Match` with the current tag answers 304.
#[utoipa::path(
    get,
    path = "/api/v1/products/{id}",
    tag = "catalog",
    operation_id = "get_product",
    params(
        ("id" = String, Path, description = "The product's id."),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` read before: 304 while it is current."),
    ),
    responses(
        (status = 200, description = "The product.", body = ProductBody,
         headers(("ETag" = String, description = "The version of this representation, for `If-Match` and `If-None-Match`."))),
        (status = 304, description = "Unchanged since the `ETag` in `If-None-Match`.",
         headers(("ETag" = String))),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let product = state
        .store
        .get(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("No product with this id."))?;
    let etag = product.etag();
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            // Weak comparison for GET (RFC 9110 §13.1.2).
            tags.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(with_etag(StatusCode::OK, &product))
}

fn with_etag(status: StatusCode, product: &Product) -> Response {
    let mut response = (status, Json(product.body())).into_response();
    if let Ok(etag) = HeaderValue::from_str(&product.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Creates a product (administrators only); its stock row follows from the event.
#[utoipa::path(
    post,
    path = "/api/v1/products",
    tag = "catalog",
    operation_id = "create_product",
    security(("bearer" = [])),
    request_body = Content,
    responses(
        (status = 201, description = "The product created.", body = ProductBody,
         headers(("ETag" = String), ("Location" = String, description = "The product's URL."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn create(
    State(state): State<AppState>,
    RequireAdmin(_admin): RequireAdmin,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let content = product::new_product(&body).map_err(ApiError::validation)?;
    let product = state.store.create(&content, None).await?;
    metrics::counter!("catalog_products_created_total").increment(1);
    let mut response = with_etag(StatusCode::CREATED, &product);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/products/{}", product.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Any subset of the fields. With `If-Match` the change applies only to that representation
/// (412 otherwise, nothing written); without it, to whatever is current.
#[utoipa::path(
    patch,
    path = "/api/v1/products/{id}",
    tag = "catalog",
    operation_id = "update_product",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The product's id."),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the change was made against: \
          412 and nothing written when the product changed since."),
    ),
    request_body = Changes,
    responses(
        (status = 200, description = "The product after the change.", body = ProductBody,
         headers(("ETag" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn update(
    State(state): State<AppState>,
    RequireAdmin(_admin): RequireAdmin,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let changes = product::changes(&body).map_err(ApiError::validation)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|value| value.to_str().map(IfMatch::parse))
        .transpose()
        .map_err(|_| {
            ApiError::validation(vec![FieldError::new(
                "If-Match",
                "must be entity tags from an ETag header",
            )])
        })?;
    match state.store.update(&id, &changes, if_match.as_ref()).await {
        Ok((product, changed)) => {
            let outcome = if changed { "applied" } else { "unchanged" };
            metrics::counter!("catalog_product_updates_total", "outcome" => outcome).increment(1);
            Ok(with_etag(StatusCode::OK, &product))
        }
        Err(WriteError::Stale) => {
            metrics::counter!("catalog_product_updates_total", "outcome" => "stale").increment(1);
            Ok(precondition_failed())
        }
        Err(err) => Err(err.into()),
    }
}

/// 412 as a problem document. `shop_runtime::ErrorKind` has no "precondition failed" kind
/// (yet), so this one response is rendered here from a conflict problem.
fn precondition_failed() -> Response {
    let mut problem = ApiError::conflict(
        "The product changed since you read it (If-Match names an older version); \
         read it again and reapply your change.",
    )
    .problem();
    problem["type"] = "urn:shop:problem:precondition-failed".into();
    problem["title"] = "Precondition failed".into();
    problem["status"] = StatusCode::PRECONDITION_FAILED.as_u16().into();
    let mut response = (StatusCode::PRECONDITION_FAILED, Json(problem)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}
