//! axum extractors: a handler that takes a [`Principal`] only runs for a verified user.
//!
//! The router's state must provide the [`Verifier`] (`impl FromRef<AppState> for Verifier`):
//!
//! ```ignore
//! async fn me(principal: Principal) -> ... { /* principal.user_id */ }
//! async fn create_product(RequireAdmin(admin): RequireAdmin, ...) -> ... { ... }
//! async fn get_order(principal: Principal, ...) -> Result<..., ApiError> {
//!     let order = load(id).await?;
//!     principal.require_owner(order.customer_id)?;   // 404 for anyone else
//!     ...
//! }
//! ```
//!
//! Extraction reads `Authorization: Bearer <token>` and nothing else: a header such as
//! `X-User-Id` set by the gateway would be trusted by whoever can reach the service directly.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use shop_runtime::{ApiError, ErrorKind};

use crate::{
    Principal, Verifier,
    verify::{bearer, missing},
};

/// Why extraction failed: the problem document, plus `WWW-Authenticate: Bearer` on a 401 as
/// RFC 6750 asks, so clients know which scheme to use.
#[derive(Debug)]
pub struct AuthRejection(pub ApiError);

impl From<ApiError> for AuthRejection {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let unauthorized = self.0.kind() == ErrorKind::Unauthorized;
        let mut response = self.0.into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The bearer token of a request, or the 401 for "none sent".
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or_else(missing)
}

impl<S> FromRequestParts<S> for Principal
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Several extractors in one handler (e.g. `RequireAdmin` via a layer, then `Principal`)
        // verify the token once.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let verifier = Verifier::from_ref(state);
        let principal = verifier.principal(bearer_token(parts)?).await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// A signed-in administrator: 401 without a valid token, 403 for anyone else.
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub Principal);

impl<S> FromRequestParts<S> for RequireAdmin
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require_admin()?;
        Ok(Self(principal))
    }
}
