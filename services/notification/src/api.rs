//! `GET /api/v1/notifications?limit=&cursor=`: the caller's own notifications, newest first.
//!
//! Only ever the signed-in user's: the filter is the token's subject, never a parameter, so
//! there is no id to probe. Pages are cut by keyset (`created_at`, then the id), so a page
//! never repeats or skips an item when new notifications arrive between two requests; the
//! cursor is opaque to clients (base64url of the last item's position).

use axum::{
    Json, Router,
    extract::{FromRef, Query, State},
    routing::get,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use shop_auth::{Principal, Verifier};
use shop_runtime::{
    ApiError,
    openapi::{BadRequest, Unauthorized, Unavailable, Validation},
    pagination::{PageQuery, encode_cursor},
};
use utoipa::{OpenApi, ToSchema};

use crate::store::{After, Status, Store, Summary, chrono};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// The part of the public API this service owns, as OpenAPI; the gateway merges it into the
/// public document.
#[derive(Debug, OpenApi)]
#[openapi(paths(list), components(schemas(Item, Listing, Status)))]
pub struct ApiDoc;

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
        .route("/api/v1/notifications", get(list))
        .with_state(state)
}

/// One notification as its recipient sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Notification)]
pub struct Item {
    /// The id of the event that caused it.
    pub id: String,
    #[schema(example = "email")]
    pub channel: String,
    /// Which message, e.g. `order_confirmed`.
    #[schema(example = "order_confirmed")]
    pub template: String,
    pub to: Vec<String>,
    pub subject: String,
    /// `pending`, `sent` or `failed`.
    #[schema(value_type = Status)]
    pub status: &'static str,
    /// Delivery attempts so far.
    #[schema(minimum = 0)]
    pub attempts: i32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
}

/// A page of the caller's notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NotificationPage)]
pub struct Listing {
    pub items: Vec<Item>,
    pub next_cursor: Option<String>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<Summary> for Item {
    fn from(summary: Summary) -> Self {
        Self {
            id: summary.event_id,
            channel: summary.channel,
            template: summary.template,
            to: summary.to,
            subject: summary.subject,
            status: summary.status.as_str(),
            attempts: summary.attempts,
            created_at: rfc3339(chrono(summary.created_at)),
            sent_at: summary.sent_at.map(|at| rfc3339(chrono(at))),
        }
    }
}

/// What a cursor carries: the last item's keyset position, `<created_at millis>|<event id>`.
/// The shared encoder makes it opaque, so this format can change without breaking clients.
fn position(after: &After) -> String {
    format!("{}|{}", after.created_at.timestamp_millis(), after.event_id)
}

fn read_position(position: &str) -> Option<After> {
    let (millis, event_id) = position.split_once('|')?;
    Some(After {
        created_at: DateTime::from_timestamp_millis(millis.parse().ok()?)?,
        event_id: event_id.to_owned(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    tag = "notification",
    operation_id = "list_notifications",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the caller's notifications.", body = Listing),
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
    let mut problems = Vec::new();
    let limit = page.limit(DEFAULT_LIMIT, MAX_LIMIT, &mut problems);
    let after = page.cursor(&mut problems, read_position);
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }

    // One more than asked tells whether there is a next page without a count query.
    let mut summaries = state
        .store
        .list_for_user(&principal.user_id.to_string(), limit + 1, after.as_ref())
        .await
        .map_err(|err| {
            ApiError::unavailable("The notification store is unavailable.").with_source(err)
        })?;
    let next_cursor = if summaries.len() > limit as usize {
        summaries.truncate(limit as usize);
        summaries.last().map(|last| {
            encode_cursor(&position(&After {
                created_at: chrono(last.created_at),
                event_id: last.event_id.clone(),
            }))
        })
    } else {
        None
    };
    Ok(Json(Listing {
        items: summaries.into_iter().map(Item::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let after = After {
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            event_id: "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a".into(),
        };
        assert_eq!(read_position(&position(&after)), Some(after));
        assert_eq!(read_position("x|y"), None);
        assert_eq!(read_position("1700000000123"), None);
    }

    #[test]
    fn a_cursor_from_a_previous_page_reads_back_through_the_shared_encoder() {
        let after = After {
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            event_id: "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a".into(),
        };
        let page = PageQuery {
            limit: None,
            cursor: Some(encode_cursor(&position(&after))),
        };
        let mut problems = Vec::new();
        assert_eq!(page.cursor(&mut problems, read_position), Some(after));
        assert!(problems.is_empty(), "{problems:?}");
    }
}
