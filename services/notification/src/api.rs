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
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shop_auth::{Principal, Verifier};
use shop_runtime::{ApiError, FieldError};

use crate::store::{After, Store, Summary, chrono};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

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

/// Parameters are strings so a bad one is a field error, not a bare 400.
#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<String>,
    cursor: Option<String>,
}

/// One notification as its recipient sees it.
#[derive(Debug, Serialize)]
pub struct Item {
    /// The id of the event that caused it.
    pub id: String,
    pub channel: String,
    pub template: String,
    pub to: Vec<String>,
    pub subject: String,
    /// `pending`, `sent` or `failed`.
    pub status: &'static str,
    pub attempts: i32,
    pub created_at: String,
    pub sent_at: Option<String>,
}

#[derive(Debug, Serialize)]
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

fn encode_cursor(after: &After) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        after.created_at.timestamp_millis(),
        after.event_id
    ))
}

fn decode_cursor(cursor: &str) -> Option<After> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (millis, event_id) = raw.split_once('|')?;
    Some(After {
        created_at: DateTime::from_timestamp_millis(millis.parse().ok()?)?,
        event_id: event_id.to_owned(),
    })
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<Page>,
) -> Result<Json<Listing>, ApiError> {
    let mut problems = Vec::new();
    let limit = match page.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                problems.push(FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                ));
                DEFAULT_LIMIT
            }
        },
    };
    let after = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            let after = decode_cursor(raw);
            if after.is_none() {
                problems.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API returned; start without one",
                ));
            }
            after
        }
    };
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
            encode_cursor(&After {
                created_at: chrono(last.created_at),
                event_id: last.event_id.clone(),
            })
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
    fn cursors_round_trip_and_garbage_is_refused() {
        let after = After {
            created_at: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            event_id: "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&after)), Some(after));
        assert_eq!(decode_cursor("not base64!"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("x|y")), None);
    }
}
