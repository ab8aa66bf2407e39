//! Headers every answer from the edge carries: security headers and CORS.

use axum::{extract::Request, middleware::Next, response::Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Security headers for a JSON API, on every response (errors included):
///
/// * `X-Content-Type-Options: nosniff` — a JSON body is never sniffed into HTML or script;
/// * `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'` and
///   `X-Frame-Options: DENY` — a response opened in a browser loads nothing and is never framed;
/// * `Referrer-Policy: no-referrer`;
/// * `Strict-Transport-Security` — ignored over plain HTTP, in force behind TLS termination.
///
/// Headers an upstream set (an `ETag`, a `Location`) are left alone; these are only added.
///
/// One exception: the interactive API page under [`crate::docs::PATH`] gets its own policy
/// ([`crate::docs::CONTENT_SECURITY_POLICY`]), which lets it run its own scripts and styles
/// from the gateway's origin, since a page that loads nothing cannot work. Every API route
/// keeps `default-src 'none'`.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let policy = if is_docs_page(request.uri().path()) {
        crate::docs::CONTENT_SECURITY_POLICY
    } else {
        "default-src 'none'; frame-ancestors 'none'"
    };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, policy),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `Cache-Control: no-store` on an answer to a signed-in request, unless the service set a
/// `Cache-Control` of its own. Such answers are personal data (`/users/me`, orders, payments,
/// notifications); without a directive a shared cache between the client and the edge, or the
/// browser's own, may keep them and show them to the next person on the machine. A service that
/// knows better (a private, revalidated answer) says so and is left alone.
pub fn no_store_unless_set(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

fn is_docs_page(path: &str) -> bool {
    path.strip_prefix(crate::docs::PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// CORS for the configured browser origins only; `None` (no header at all, so browsers keep
/// the same-origin policy) when none is configured. Credentials travel as bearer tokens, not
/// cookies, so `Access-Control-Allow-Credentials` is not needed.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::LOCATION,
                header::ETAG,
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_docs_page_gets_the_relaxed_policy() {
        assert!(is_docs_page("/api/v1/docs"));
        assert!(is_docs_page("/api/v1/docs/swagger-ui.css"));
        assert!(!is_docs_page("/api/v1/docsx"));
        assert!(!is_docs_page("/api/v1/orders"));
    }
}
