//! Access tokens (JWTs, short-lived, verified anywhere) and refresh tokens (opaque, long-lived,
//! only ever checked here).
//!
//! A refresh token is 256 random bits; the database keeps only its SHA-256. A fast hash is
//! enough (unlike for passwords): there is nothing to guess in 256 random bits, and the lookup
//! needs the same hash every time. Every use rotates it: the presented token is marked used and
//! a successor in the same *family* is issued. A token presented a second time means two
//! parties hold it — the user and a thief — and we cannot tell which is which, so the whole
//! family is revoked and both must sign in again (OAuth 2.0 Security BCP, RFC 9700 §4.14).
//!
//! **The family row is the lock and the truth.** Each family (one sign-in) has a row in
//! `refresh_families`; a token is valid only while its family is neither revoked nor past its
//! absolute end (`SESSION_LIFETIME_SECONDS`). Rotation locks that row (`SELECT ... FOR UPDATE`)
//! before it looks at the token; reuse detection and logout revoke by updating the same row.
//! So a revocation and a rotation of one family are serialised: either the rotation commits
//! first and the revocation then ends the family *with* the successor in it, or the revocation
//! commits first and the rotation, once it gets the lock, sees the family revoked. Revoking by
//! updating the tokens instead (as this module once did) misses, under READ COMMITTED, a
//! successor inserted by a rotation that has not committed yet.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use shop_auth::Claims;
use shop_runtime::{ApiError, ErrorKind};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::keys::KeyRing;

/// The body of a successful login or refresh.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Single use: trade it for a new pair at `/api/v1/auth/refresh`.
    pub refresh_token: String,
    #[schema(value_type = String, pattern = "^Bearer$", example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Never prints the tokens.
impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Issues and rotates tokens.
#[derive(Debug)]
pub struct Tokens {
    pub keys: Arc<KeyRing>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// The absolute lifetime of a family, from sign-in.
    pub session_lifetime: Duration,
}

impl Tokens {
    /// A signed access token for `subject` with `roles`.
    pub fn access_token(&self, subject: String, roles: Vec<String>) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject,
            roles,
            iat: now,
            nbf: Some(now),
            exp: now + self.access_ttl.as_secs(),
            jti: Uuid::new_v4().to_string(),
        };
        self.keys
            .current()
            .sign(&claims)
            .map_err(ApiError::internal)
    }

    /// Tokens for a fresh sign-in: a new refresh-token family.
    pub async fn sign_in(
        &self,
        pool: &PgPool,
        user_id: Uuid,
        roles: Vec<String>,
    ) -> Result<TokenPair, ApiError> {
        let lifetime = seconds(self.session_lifetime)?;
        let family_id = Uuid::new_v4();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (id, user_id, expires_at)
             VALUES ($1, $2, now() + $3 * interval '1 second')",
        )
        .bind(family_id)
        .bind(user_id)
        .bind(lifetime)
        .execute(&mut *tx)
        .await?;
        let pair = self.issue(&mut tx, user_id, family_id, roles).await?;
        tx.commit().await?;
        Ok(pair)
    }

    /// Exchanges a refresh token for a new pair, rotating it.
    ///
    /// Of two concurrent refreshes with the same token exactly one wins: both lock the family
    /// row, the second gets it after the first committed, finds the token used — and is
    /// treated as a reuse, which revokes the family.
    pub async fn refresh(&self, pool: &PgPool, presented: &str) -> Result<TokenPair, ApiError> {
        let hash = token_hash(presented);
        let mut tx = pool.begin().await?;
        // A token's family never changes, so it can be read before taking the lock.
        let family_id: Option<Uuid> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(family_id) = family_id else {
            return Err(refused("unknown"));
        };
        let family: Option<(Uuid, bool)> = sqlx::query_as(
            "SELECT user_id, revoked_at IS NULL AND expires_at > now()
             FROM refresh_families WHERE id = $1 FOR UPDATE",
        )
        .bind(family_id)
        .fetch_optional(&mut *tx)
        .await?;
        let user_id = match family {
            Some((user_id, true)) => user_id,
            _ => return Err(refused("family revoked or ended")),
        };
        // Read after the lock: this statement sees everything committed by whoever held the
        // family before us (READ COMMITTED takes a new snapshot per statement).
        let token: Option<(bool, bool)> = sqlx::query_as(
            "SELECT used_at IS NOT NULL, expires_at <= now()
             FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        // Gone since the first read: purged as expired.
        let Some((used, expired)) = token else {
            return Err(refused("expired"));
        };
        if used {
            revoke_family(&mut tx, family_id).await?;
            tx.commit().await?;
            tracing::warn!(%family_id, "a rotated refresh token was presented again; family revoked");
            metrics::counter!("user_token_refreshes_total", "outcome" => "reuse_detected")
                .increment(1);
            return Err(invalid_refresh_token());
        }
        if expired {
            return Err(refused("expired"));
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        let roles: Vec<String> = sqlx::query_scalar("SELECT roles FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let pair = self.issue(&mut tx, user_id, family_id, roles).await?;
        tx.commit().await?;
        metrics::counter!("user_token_refreshes_total", "outcome" => "rotated").increment(1);
        Ok(pair)
    }

    /// Revokes the family of `presented` (logout). Unknown tokens are ignored: logout is
    /// idempotent and says nothing about which tokens exist. The update of the family row
    /// waits for a rotation in flight, so its successor is revoked too.
    pub async fn sign_out(&self, pool: &PgPool, presented: &str) -> Result<(), ApiError> {
        let mut tx = pool.begin().await?;
        let family: Option<Uuid> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash(presented))
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(family_id) = family {
            revoke_family(&mut tx, family_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn issue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        user_id: Uuid,
        family_id: Uuid,
        roles: Vec<String>,
    ) -> Result<TokenPair, ApiError> {
        let refresh_token = new_refresh_token()?;
        let refresh_ttl = seconds(self.refresh_ttl)?;
        // Never beyond the end of the session, however recently it was refreshed.
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at)
             SELECT $1, $2, $3, LEAST(now() + $4 * interval '1 second', expires_at)
             FROM refresh_families WHERE id = $2",
        )
        .bind(token_hash(&refresh_token))
        .bind(family_id)
        .bind(user_id)
        .bind(refresh_ttl)
        .execute(&mut **tx)
        .await?;
        Ok(TokenPair {
            access_token: self.access_token(user_id.to_string(), roles)?,
            refresh_token,
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
        })
    }
}

/// Deletes expired refresh tokens, now and then every hour until shutdown. They are refused
/// anyway; keeping them would only grow the table and the indexes every refresh uses. Every
/// instance runs this; the deletes are idempotent.
pub async fn purge_expired_periodically(pool: PgPool, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match purge_expired(&pool).await {
            Ok(deleted) => tracing::debug!(deleted, "expired refresh tokens purged"),
            Err(err) => tracing::warn!(error = %err, "cannot purge expired refresh tokens"),
        }
    }
}

/// Deletes the refresh tokens that have expired, then the families that ended or have no
/// token left (their tokens go with them); returns how many tokens expired.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now()")
        .execute(pool)
        .await?
        .rows_affected();
    sqlx::query(
        "DELETE FROM refresh_families f
         WHERE f.expires_at < now()
            OR NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.id)",
    )
    .execute(pool)
    .await?;
    Ok(tokens)
}

/// Ends a family: every token in it, including one a concurrent rotation is inserting (the
/// update waits for that rotation's lock on the row, and the rotation re-reads it).
async fn revoke_family(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A refused refresh, counted with its reason (the caller sees one answer for all).
fn refused(reason: &'static str) -> ApiError {
    tracing::debug!(reason, "refresh token refused");
    metrics::counter!("user_token_refreshes_total", "outcome" => "refused").increment(1);
    invalid_refresh_token()
}

fn seconds(duration: Duration) -> Result<i64, ApiError> {
    i64::try_from(duration.as_secs()).map_err(ApiError::internal)
}

/// One answer for unknown, expired, revoked and reused refresh tokens.
pub fn invalid_refresh_token() -> ApiError {
    ApiError::new(
        ErrorKind::Unauthorized,
        "The refresh token is not valid; sign in again.",
    )
}

fn new_refresh_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal(std::io::Error::other("the system RNG failed")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
