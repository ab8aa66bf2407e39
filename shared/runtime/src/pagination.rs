//! Cursor pagination, the one way every list endpoint of the public API pages:
//! `?limit=&cursor=` → `{items, next_cursor}` (`next_cursor` is `null` on the last page).
//!
//! The part a caller sees is written once, here:
//!
//! * **Cursors are opaque**: base64url (no padding) of a string only the service reads — the
//!   last id, `millis|id`, whatever its keyset needs. Clients hand back what they were given and
//!   never build one, so a service can change how it pages (another sort key, another store)
//!   without breaking anyone. A raw id would invite clients to construct cursors, and then the
//!   format could never change.
//! * **Parameters are strings**: `?limit=ten` deserialized straight into a number fails the
//!   whole query extractor with a bare 400. As text it becomes a [`FieldError`] naming `limit`,
//!   reported in the same 422 as every other problem with the request.
//!
//! What is *inside* a cursor stays with each service: [`PageQuery::cursor`] hands it the
//! decoded string to read into its own position, and [`encode_cursor`] wraps the next one.
//!
//! ```ignore
//! #[derive(Deserialize)]
//! struct ListParams {
//!     q: Option<String>,
//!     #[serde(flatten)]
//!     page: PageQuery,
//! }
//!
//! let mut errors = Vec::new();
//! let limit = params.page.limit(20, 100, &mut errors);
//! let after = params.page.cursor(&mut errors, |last_id| Uuid::parse_str(last_id).ok());
//! if !errors.is_empty() {
//!     return Err(ApiError::validation(errors));
//! }
//! // ... fetch `limit + 1` rows after `after`; if there is one more:
//! let next_cursor = more.then(|| encode_cursor(&last.id.to_string()));
//! ```

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::FieldError;

/// What a caller may say about the page it wants. Both are text on purpose (see the module
/// docs); a handler takes it as `Query<PageQuery>` or `#[serde(flatten)]`s it into its own
/// parameters next to filters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    /// Items per page, `1..=max`; the endpoint's default when absent.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page; absent or empty for the first page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size: `default` when `limit` is absent, the number when it is a whole number
    /// in `1..=max`. Anything else records a field error on `limit` and returns `default`, so
    /// the handler can go on checking its other parameters and report every problem at once.
    pub fn limit(&self, default: u32, max: u32, errors: &mut Vec<FieldError>) -> u32 {
        debug_assert!(
            (1..=max).contains(&default),
            "default limit outside 1..={max}"
        );
        let Some(raw) = self.limit.as_deref() else {
            return default;
        };
        match raw.parse::<u32>() {
            Ok(limit) if (1..=max).contains(&limit) => limit,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {max}"),
                ));
                default
            }
        }
    }

    /// Where the previous page ended: `None` for the first page (no cursor, or an empty one),
    /// otherwise the string the service put in with [`encode_cursor`], read by `read` into the
    /// service's own position. A cursor that is not one of ours — not base64url, not text, or
    /// refused by `read` — records a field error on `cursor` and gives `None`.
    pub fn cursor<T>(
        &self,
        errors: &mut Vec<FieldError>,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let cursor = self.cursor.as_deref().filter(|cursor| !cursor.is_empty())?;
        let position = decode_cursor(cursor).and_then(|position| read(&position));
        if position.is_none() {
            errors.push(FieldError::new(
                "cursor",
                "is not a cursor from a previous page",
            ));
        }
        position
    }
}

/// The opaque `next_cursor` for a page that ended at `position` (a string the service chooses
/// and reads back in [`PageQuery::cursor`]). URL-safe, so clients can paste it into a query
/// string as it is.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, cursor: Option<&str>) -> PageQuery {
        PageQuery {
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|error| error.field.as_str()).collect()
    }

    #[test]
    fn a_cursor_round_trips_and_is_url_safe() {
        for position in [
            "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a",
            "1700000000123|év?>",
            "a",
        ] {
            let cursor = encode_cursor(position);
            assert!(
                cursor
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{cursor} needs escaping in a URL"
            );
            let mut errors = Vec::new();
            let read = query(None, Some(&cursor)).cursor(&mut errors, |s| Some(s.to_owned()));
            assert_eq!(read.as_deref(), Some(position));
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn no_cursor_or_an_empty_one_is_the_first_page() {
        for cursor in [None, Some("")] {
            let mut errors = Vec::new();
            let read = query(None, cursor).cursor(&mut errors, |_| -> Option<()> {
                panic!("nothing to read on the first page")
            });
            assert_eq!(read, None);
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn garbage_cursors_are_refused_on_the_cursor_field() {
        let not_text = URL_SAFE_NO_PAD.encode([0xff, 0xfe]);
        for garbage in ["%%%", "not base64!", "a+b/", not_text.as_str()] {
            let mut errors = Vec::new();
            let read = query(None, Some(garbage)).cursor(&mut errors, |s| Some(s.to_owned()));
            assert_eq!(read, None, "{garbage} was accepted");
            assert_eq!(fields(&errors), ["cursor"]);
            assert_eq!(errors[0].message, "is not a cursor from a previous page");
        }
    }

    #[test]
    fn a_cursor_the_service_cannot_read_is_refused_on_the_cursor_field() {
        let mut errors = Vec::new();
        let cursor = encode_cursor("no-separator");
        let read = query(None, Some(&cursor)).cursor(&mut errors, |s| {
            s.split_once('|')
                .map(|(millis, id)| (millis.to_owned(), id.to_owned()))
        });
        assert_eq!(read, None);
        assert_eq!(fields(&errors), ["cursor"]);
    }

    #[test]
    fn limit_defaults_and_accepts_its_bounds() {
        let mut errors = Vec::new();
        assert_eq!(query(None, None).limit(20, 100, &mut errors), 20);
        assert_eq!(query(Some("1"), None).limit(20, 100, &mut errors), 1);
        assert_eq!(query(Some("100"), None).limit(20, 100, &mut errors), 100);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn limit_outside_its_bounds_is_a_field_error_and_falls_back_to_the_default() {
        for bad in ["0", "101", "-1", "ten", "2.5", "", "99999999999"] {
            let mut errors = Vec::new();
            assert_eq!(query(Some(bad), None).limit(20, 100, &mut errors), 20);
            assert_eq!(fields(&errors), ["limit"], "{bad:?}");
            assert_eq!(errors[0].message, "must be a whole number from 1 to 100");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let page = query(Some("500"), Some("%%"));
        let mut errors = Vec::new();
        page.limit(20, 100, &mut errors);
        page.cursor(&mut errors, |s| Some(s.to_owned()));
        assert_eq!(fields(&errors), ["limit", "cursor"]);
    }
}
