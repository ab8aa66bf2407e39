//! The interactive page for the OpenAPI document: Swagger UI at `/api/v1/docs/`.
//!
//! The page and its scripts and styles are served by the gateway itself, from files compiled
//! into the binary: `utoipa-swagger-ui` with its `vendored` feature takes them from the
//! `utoipa-swagger-ui-vendored` crate on the registry, so the build downloads nothing (its
//! default build script fetches a release from the internet, which fails offline), and the
//! browser loads nothing from a CDN: the page works without internet access and under a
//! policy that allows only the gateway's own origin ([`CONTENT_SECURITY_POLICY`]).
//!
//! The page reads [`crate::openapi::PATH`]; "Try it out" sends requests to the gateway's own
//! API, through every check a client's request meets (a token pasted into "Authorize" is
//! kept in the page's memory only).

use std::{borrow::Cow, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::Path,
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use http::{HeaderValue, header};
use shop_runtime::ApiError;
use utoipa_swagger_ui::Config;

/// Where the page is served (with a trailing slash: its assets are relative to it).
pub const PATH: &str = "/api/v1/docs";

/// The policy for the page, relaxed from the API's `default-src 'none'` only as far as Swagger
/// UI needs, and never beyond the gateway's own origin:
///
/// * `script-src 'self'`, `style-src 'self'`: its bundle and stylesheet (the page has no
///   inline script; the configuration is the separate `swagger-initializer.js`);
/// * `style-src 'unsafe-inline'` as well: the UI's components set `style` attributes as they
///   render; styles cannot run code, and no other origin is allowed;
/// * `img-src 'self' data:`: its icons are inline SVG data URLs;
/// * `connect-src 'self'`: it fetches the document and, for "Try it out", the API itself;
/// * `frame-ancestors 'none'`, `base-uri 'none'`, `form-action 'none'`, as everywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page's routes: `/api/v1/docs` redirects to `/api/v1/docs/` (the page), and
/// `/api/v1/docs/<file>` serves its assets; an unknown file is a 404 problem.
pub fn router() -> Router {
    let config = Arc::new(
        Config::new([crate::openapi::PATH])
            // Swagger UI would otherwise send the document to an online validator.
            .validator_url("none")
            .persist_authorization(false),
    );
    let slash = format!("{PATH}/");
    let index = config.clone();
    Router::new()
        .route(
            PATH,
            get(move || {
                let slash = slash.clone();
                async move { Redirect::permanent(&slash) }
            }),
        )
        .route(
            &format!("{PATH}/"),
            get(move || {
                let config = index.clone();
                async move { asset("", config) }
            }),
        )
        .route(
            &format!("{PATH}/{{*file}}"),
            get(move |Path(file): Path<String>| {
                let config = config.clone();
                async move { asset(&file, config) }
            }),
        )
}

fn asset(file: &str, config: Arc<Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(file, config) {
        Ok(Some(found)) => {
            let content_type = HeaderValue::from_str(&found.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let body = match found.bytes {
                Cow::Borrowed(bytes) => Body::from(bytes),
                Cow::Owned(bytes) => Body::from(bytes),
            };
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    // The assets change only with the gateway's version.
                    (
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("public, max-age=3600"),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Ok(None) => ApiError::not_found(format!("No file {file} in the API page.")).into_response(),
        Err(err) => {
            tracing::error!(error = %err, file, "cannot serve the API page");
            ApiError::internal("The API page cannot be served.").into_response()
        }
    }
}
