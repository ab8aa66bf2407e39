//! The HTTP API: the user-service part of the public API (BRIEF §3), under the same paths the
//! gateway will route here unchanged.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRef, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shop_auth::{Principal, Verifier};
use shop_events::user::UserRegistered;
use shop_messaging::outbox;
use shop_runtime::{
    ApiError, ErrorKind, FieldError,
    openapi::{BadRequest, TooManyRequests, Unauthorized, Unavailable, Validation},
};
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::{
    clients::{self, ServiceClients},
    login_limit,
    passwords::Passwords,
    tokens::{TokenPair, Tokens},
    validate,
};

/// The part of the public API this service owns, as OpenAPI: the routes below, from the
/// types they read and answer. The gateway merges it into the public document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(register, login, refresh, logout, me, jwks),
    components(schemas(User, Me, RegisterRequest, LoginRequest, RefreshRequest, TokenPair))
)]
pub struct ApiDoc;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tokens: Arc<Tokens>,
    pub passwords: Passwords,
    pub verifier: Verifier,
    pub clients: ServiceClients,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/users/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
        // Not part of the public API: the gateway does not route /internal.
        .route("/internal/v1/service-token", post(clients::issue))
        .layer(axum::middleware::map_response(retry_after))
        .with_state(state)
}

/// Every 503 of this service is transient (the hashing queue is full, the database is busy):
/// `Retry-After` tells well-behaved clients when to come back instead of hammering.
async fn retry_after(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    response
}

/// A response carrying credentials: no cache (browser, proxy, CDN) may keep a copy
/// (RFC 6749 §5.1). `Pragma` for HTTP/1.0 caches that ignore `Cache-Control`.
#[derive(Debug)]
pub struct NoStore<T>(pub T);

impl<T: Serialize> IntoResponse for NoStore<T> {
    fn into_response(self) -> Response {
        (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            Json(self.0),
        )
            .into_response()
    }
}

/// A user as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct User {
    pub id: Uuid,
    /// Normalised: trimmed and lower-cased.
    #[schema(format = Email)]
    pub email: String,
    pub name: String,
    /// `customer`, and `admin` for administrators.
    #[schema(example = json!(["customer"]))]
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// The caller's own account (`GET /api/v1/users/me`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    #[schema(format = Email)]
    pub email: String,
    pub name: String,
    /// `customer`, and `admin` for administrators.
    #[schema(example = json!(["customer"]))]
    pub roles: Vec<String>,
}

/// Fields are optional here so that a missing one is a field error, not a parse error; the
/// schema says what the rules in [`validate`] require.
#[derive(Deserialize, ToSchema)]
struct RegisterRequest {
    /// An address of the form `local@domain.tld`, at most 254 characters once trimmed;
    /// compared case-insensitively.
    #[schema(required, nullable = false, value_type = String, format = Email,
             example = "ann@example.com")]
    email: Option<String>,
    /// At least 12 characters, at most 256 bytes; not the email, not one repeated character.
    #[schema(required, nullable = false, value_type = String, format = Password,
             min_length = 12, max_length = 256, example = "correct horse battery")]
    password: Option<String>,
    /// Shown in emails; 1 to 100 characters once surrounding spaces are trimmed.
    #[schema(required, nullable = false, value_type = String, min_length = 1,
             pattern = r"\S", example = "Ann Lee")]
    name: Option<String>,
}

/// Request and response types holding a password or a token never print it: a `?request` in
/// a log line or an error report must not turn the log into a credential store.
impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Creates a customer account. An address that is already registered gets the same answer as
/// a new one (and nothing changes): the answer never tells who has an account here.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "user",
    operation_id = "register",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account (or, for a taken address, an account-shaped answer).", body = User),
        (status = 400, response = BadRequest),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn register(
    State(state): State<AppState>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let registration = validate::registration(
        body.email.as_deref(),
        body.password.as_deref(),
        body.name.as_deref(),
    )
    .map_err(ApiError::validation)?;
    let password_hash = state.passwords.hash(registration.password).await?;

    let mut tx = state.pool.begin().await?;
    let user: Option<User> = sqlx::query_as(
        "INSERT INTO users (id, email, name, password_hash, roles)
         VALUES ($1, $2, $3, $4, ARRAY['customer'])
         ON CONFLICT (email) DO NOTHING
         RETURNING id, email, name, roles, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(&registration.email)
    .bind(&registration.name)
    .bind(&password_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user) = user else {
        // The address is taken. Saying so would tell anyone which addresses have an account
        // here, which login is careful not to reveal; so the answer has the same status and
        // shape as a success (with an id that exists nowhere), after the same work (the hash
        // above). Nothing is stored or published: the owner's account is untouched, and the
        // caller finds out only by signing in with the owner's password. ADR 0005.
        tx.rollback().await?;
        metrics::counter!("user_registrations_email_taken_total").increment(1);
        return Ok((
            StatusCode::CREATED,
            Json(User {
                id: Uuid::now_v7(),
                email: registration.email,
                name: registration.name,
                roles: vec!["customer".to_owned()],
                created_at: Utc::now(),
            }),
        ));
    };
    // The event is written in the same transaction as the account: it exists if and only if
    // the account does, and the relay publishes it once the broker is reachable.
    let event = UserRegistered {
        user_id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
    };
    outbox::postgres::enqueue_event(&mut tx, &event).await?;
    outbox::postgres::commit(tx).await?;
    metrics::counter!("user_registrations_total").increment(1);
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    #[schema(format = Email, example = "ann@example.com")]
    email: String,
    #[schema(format = Password, max_length = 256, example = "correct horse battery")]
    password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// One answer for "no such email" and "wrong password" — same status, same body, and (the
/// password is checked against a dummy hash when the email is unknown) the same time.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "user",
    operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new access and refresh token (not cacheable).", body = TokenPair),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = Validation),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn login(
    State(state): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    // No registered password is longer (the registration rule), and hashing cost must not be
    // the attacker's to choose: refused before any lookup or hash, as at registration.
    if body.password.len() > validate::MAX_PASSWORD_BYTES {
        return Err(ApiError::validation(vec![FieldError::new(
            "password",
            format!(
                "must be at most {} bytes long",
                validate::MAX_PASSWORD_BYTES
            ),
        )]));
    }
    let email = validate::normalise_email(&body.email);
    // A locked account is refused before any hash (crate::login_limit), the right password
    // included; an unknown email is locked the same way, so the answer tells nothing.
    if let Some(email) = &email
        && let Some(seconds) = login_limit::locked_for(&state.pool, email).await?
    {
        metrics::counter!("user_logins_total", "outcome" => "locked").increment(1);
        let mut response = ApiError::new(
            ErrorKind::TooManyRequests,
            format!("Too many failed sign-ins for this account; retry in {seconds} s."),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return Ok(response);
    }
    let account: Option<(Uuid, String, Vec<String>)> = match &email {
        Some(email) => {
            sqlx::query_as("SELECT id, password_hash, roles FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(&state.pool)
                .await?
        }
        None => None,
    };
    let (id, stored, roles) = match account {
        Some((id, hash, roles)) => (Some(id), Some(hash), roles),
        None => (None, None, Vec::new()),
    };
    let valid = state.passwords.verify(body.password, stored).await?;
    match id {
        Some(id) if valid => {
            metrics::counter!("user_logins_total", "outcome" => "success").increment(1);
            if let Some(email) = &email {
                login_limit::succeeded(&state.pool, email).await?;
            }
            Ok(NoStore(state.tokens.sign_in(&state.pool, id, roles).await?).into_response())
        }
        _ => {
            metrics::counter!("user_logins_total", "outcome" => "refused").increment(1);
            if let Some(email) = &email {
                login_limit::failed(&state.pool, email).await?;
            }
            Err(ApiError::new(
                ErrorKind::Unauthorized,
                "The email or password is incorrect.",
            ))
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct RefreshRequest {
    /// The refresh token of the last login or refresh (each is good for one use).
    refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest").finish_non_exhaustive()
    }
}

/// Trades a refresh token for a new pair; the old refresh token is spent (rotation).
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "user",
    operation_id = "refresh",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair (not cacheable).", body = TokenPair),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<NoStore<TokenPair>, ApiError> {
    let Json(body) = body?;
    Ok(NoStore(
        state
            .tokens
            .refresh(&state.pool, &body.refresh_token)
            .await?,
    ))
}

/// Spends the refresh token (and its family): it can no longer be refreshed.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "user",
    operation_id = "logout",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Signed out."),
        (status = 400, response = BadRequest),
        (status = 422, response = Validation),
        (status = 503, response = Unavailable),
    )
)]
async fn logout(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    state
        .tokens
        .sign_out(&state.pool, &body.refresh_token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own account, as the access token identifies it.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "user",
    operation_id = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account.", body = Me),
        (status = 401, response = Unauthorized),
        (status = 404, response = shop_runtime::openapi::NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn me(State(state): State<AppState>, principal: Principal) -> Result<Json<Me>, ApiError> {
    let user: User =
        sqlx::query_as("SELECT id, email, name, roles, created_at FROM users WHERE id = $1")
            .bind(principal.user_id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("The account no longer exists."))?;
    Ok(Json(Me {
        id: user.id,
        email: user.email,
        name: user.name,
        roles: user.roles,
    }))
}

/// The public keys, for every verifier in the system. Cacheable for a few minutes; verifiers
/// refresh on an unknown `kid` anyway.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "user",
    operation_id = "jwks",
    responses(
        (status = 200, description = "The public keys that verify access tokens (RFC 7517 JWK Set).",
         body = Object, example = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "…", "alg": "EdDSA", "use": "sig"}]})),
    )
)]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.tokens.keys.jwks()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_holding_credentials_do_not_print_them() {
        let register: RegisterRequest = serde_json::from_value(serde_json::json!({
            "email": "ann@example.com", "password": "hunter2-hunter2", "name": "Ann"
        }))
        .unwrap();
        let login: LoginRequest = serde_json::from_value(serde_json::json!({
            "email": "ann@example.com", "password": "hunter2-hunter2"
        }))
        .unwrap();
        let refresh: RefreshRequest =
            serde_json::from_value(serde_json::json!({"refresh_token": "rt-secret-value"}))
                .unwrap();
        let printed = format!("{register:?} {login:?} {refresh:?}");
        assert!(printed.contains("ann@example.com"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("rt-secret-value"), "{printed}");
    }
}
