//! The HTTP API: the user-service part of the public API (BRIEF §3), under the same paths the
//! gateway will route here unchanged.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRef, State, rejection::JsonRejection},
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shop_auth::{Principal, Verifier};
use shop_events::user::UserRegistered;
use shop_messaging::outbox;
use shop_runtime::{ApiError, ErrorKind, FieldError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    clients::{self, ServiceClients},
    passwords::Passwords,
    tokens::{TokenPair, Tokens},
    validate,
};

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
        .with_state(state)
}

/// A user as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// Fields are optional here so that a missing one is a field error, not a parse error.
#[derive(Debug, Deserialize)]
struct RegisterRequest {
    email: Option<String>,
    password: Option<String>,
    name: Option<String>,
}

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
        return Err(
            ApiError::conflict("An account with this email already exists.").with_extension(
                "errors",
                serde_json::json!([FieldError::new("email", "is already registered")]),
            ),
        );
    };
    // The event is written in the same transaction as the account: it exists if and only if
    // the account does, and the relay publishes it once the broker is reachable.
    let event = UserRegistered {
        user_id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
    };
    outbox::postgres::enqueue_event(&mut tx, &event)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await?;
    metrics::counter!("user_registrations_total").increment(1);
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
}

/// One answer for "no such email" and "wrong password" — same status, same body, and (the
/// password is checked against a dummy hash when the email is unknown) the same time.
async fn login(
    State(state): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<TokenPair>, ApiError> {
    let Json(body) = body?;
    let account: Option<(Uuid, String, Vec<String>)> = match validate::normalise_email(&body.email)
    {
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
            Ok(Json(state.tokens.sign_in(&state.pool, id, roles).await?))
        }
        _ => {
            metrics::counter!("user_logins_total", "outcome" => "refused").increment(1);
            Err(ApiError::new(
                ErrorKind::Unauthorized,
                "The email or password is incorrect.",
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Json<TokenPair>, ApiError> {
    let Json(body) = body?;
    Ok(Json(
        state
            .tokens
            .refresh(&state.pool, &body.refresh_token)
            .await?,
    ))
}

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
async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user: User =
        sqlx::query_as("SELECT id, email, name, roles, created_at FROM users WHERE id = $1")
            .bind(principal.user_id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("The account no longer exists."))?;
    Ok(Json(serde_json::json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "roles": user.roles,
    })))
}

/// The public keys, for every verifier in the system. Cacheable for a few minutes; verifiers
/// refresh on an unknown `kid` anyway.
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.tokens.keys.jwks()),
    )
}
