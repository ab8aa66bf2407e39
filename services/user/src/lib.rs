//! user-service: accounts, credentials and tokens. Owns the PostgreSQL database `users`;
//! publishes `UserRegistered` (declared in `shop_events::user`, written to the outbox with the account); serves `shop.user.v1.UserService/GetUser` to internal callers.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | its settings (token lifetimes, keys, the seeded admin) |
//! | [`validate`] | email normalisation and the password policy |
//! | [`passwords`] | Argon2id, off the async runtime |
//! | [`keys`] | Ed25519 signing keys, the JWKS, rotation |
//! | [`tokens`] | access tokens and rotating refresh tokens |
//! | [`api`] | the HTTP API (`/api/v1/auth/*`, `/api/v1/users/me`, `/.well-known/jwks.json`) |
//! | [`grpc`] | `GetUser`, for the service callers in [`GRPC_ACCESS`] only |
//! | [`clients`] | service credentials → service tokens (`POST /internal/v1/service-token`) |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<UserService>()`);
//! `main.rs` only hands it to the shared runtime.

pub mod api;
pub mod clients;
pub mod config;
pub mod grpc;
pub mod keys;
pub mod login_limit;
pub mod passwords;
pub mod tokens;
pub mod validate;

use std::sync::Arc;

use shop_auth::{Verifier, VerifierConfig, grpc::RequireService};
use shop_messaging::outbox::{RelayConfig, postgres::Relay};
use shop_proto::user::v1::user_service_server::UserServiceServer;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};
use sqlx::{PgPool, migrate::Migrator};

use crate::{
    api::AppState,
    config::{AdminSeed, DEV_ADMIN_PASSWORD, UserConfig},
    keys::KeyRing,
    passwords::Passwords,
    tokens::Tokens,
};

static MIGRATIONS: Migrator = sqlx::migrate!();

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The user-service service.
#[derive(Debug)]
pub struct UserService;

impl Service for UserService {
    type Config = UserConfig;

    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new("user-service", 8081, 50051)
            .postgres(&MIGRATIONS)
            .amqp()
    }

    async fn build(ctx: &Context, config: UserConfig) -> Result<Endpoints, BootError> {
        let pool = ctx.postgres()?.clone();
        let mut conveniences = Vec::new();
        if config.signing_key.is_none() {
            conveniences.push("signing key generated and kept in the database");
        }
        if config.admin.password == DEV_ADMIN_PASSWORD {
            conveniences.push("the administrator has the published default password");
        }
        config
            .mode
            .announce_conveniences("user-service", &conveniences);
        let keys = Arc::new(
            KeyRing::load(config.signing_key, config.previous_key, &pool)
                .await
                .map_err(|err| BootError::store("postgres", err))?,
        );
        let passwords = Passwords::new(config.hashing_queue)
            .await
            .map_err(|err| BootError::Other(err.to_string()))?;
        seed_admin(&pool, &passwords, &config.admin).await?;
        // Creates the outbox tables (before the first request can write to them) and publishes
        // what registrations write there.
        Relay::spawn(ctx, RelayConfig::default()).await?;

        // This service verifies its own tokens exactly as every other service does, only with
        // the key set read from memory instead of fetched from /.well-known/jwks.json.
        let verifier = Verifier::new(
            &VerifierConfig::new(&config.issuer, &config.audience),
            (*keys).clone(),
        );
        let tokens = Arc::new(Tokens {
            keys,
            issuer: config.issuer,
            audience: config.audience,
            access_ttl: config.access_ttl,
            refresh_ttl: config.refresh_ttl,
            session_lifetime: config.session_lifetime,
        });
        ctx.tasks.spawn(tokens::purge_expired_periodically(
            pool.clone(),
            ctx.shutdown.clone(),
        ));
        let grpc = RequireService::new(
            UserServiceServer::new(grpc::UserApi { pool: pool.clone() }),
            verifier.clone(),
        )
        .allow_table(GRPC_ACCESS);
        let router = api::router(AppState {
            pool,
            tokens,
            passwords,
            verifier,
            clients: config.clients,
        });
        Ok(Endpoints::new(router)
            .grpc(grpc)
            .reflect(shop_proto::FILE_DESCRIPTOR_SET))
    }
}

/// Who may call which method of `shop.user.v1.UserService` (enforced by
/// [`RequireService`]; anything not listed is refused with `PERMISSION_DENIED`).
///
/// `GetUser` returns a person's email: notification-service needs it to write to customers.
/// Nobody else does — in particular not the gateway, which serves `/users/me` from the
/// caller's own token — so a compromised gateway cannot enumerate customers' addresses.
pub const GRPC_ACCESS: &[(&[&str], &[&str])] = &[(&["notification-service"], &["GetUser"])];

/// Creates the administrator account when no account has its email yet, and applies a changed
/// `ADMIN_PASSWORD` to an existing one: rotating the admin password is changing the secret
/// and restarting. A rotation also ends the administrator's sessions (refresh-token
/// families), since whoever knew the old password may hold one.
async fn seed_admin(
    pool: &PgPool,
    passwords: &Passwords,
    admin: &AdminSeed,
) -> Result<(), BootError> {
    let store = |err: sqlx::Error| BootError::store("postgres", err);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
        .bind(&admin.email)
        .fetch_one(pool)
        .await
        .map_err(store)?;
    if exists {
        return apply_admin_password(pool, passwords, admin).await;
    }
    if admin.password == DEV_ADMIN_PASSWORD {
        tracing::warn!(email = %admin.email, "seeding the administrator with the development password; set ADMIN_PASSWORD");
    }
    let hash = passwords
        .hash(admin.password.clone())
        .await
        .map_err(|err| BootError::Other(err.to_string()))?;
    // Instances starting together race here; the unique email makes all but one a no-op.
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, roles)
         VALUES ($1, $2, 'Administrator', $3, ARRAY['customer', 'admin'])
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&admin.email)
    .bind(hash)
    .execute(pool)
    .await
    .map_err(store)?;
    tracing::info!(email = %admin.email, "administrator account created");
    Ok(())
}

/// Re-hashes the administrator's password when the configured one no longer matches.
/// Costs one Argon2 check per start.
async fn apply_admin_password(
    pool: &PgPool,
    passwords: &Passwords,
    admin: &AdminSeed,
) -> Result<(), BootError> {
    let store = |err: sqlx::Error| BootError::store("postgres", err);
    let hashing = |err: shop_runtime::ApiError| BootError::Other(err.to_string());
    let (id, stored): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(&admin.email)
            .fetch_one(pool)
            .await
            .map_err(store)?;
    if passwords
        .verify(admin.password.clone(), Some(stored))
        .await
        .map_err(hashing)?
    {
        return Ok(());
    }
    let hash = passwords
        .hash(admin.password.clone())
        .await
        .map_err(hashing)?;
    let mut tx = pool.begin().await.map_err(store)?;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(&mut *tx)
        .await
        .map_err(store)?;
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(store)?;
    tx.commit().await.map_err(store)?;
    tracing::info!(email = %admin.email, "administrator password changed from ADMIN_PASSWORD; their sessions were ended");
    Ok(())
}
