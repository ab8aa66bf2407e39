//! notification-service: what was sent to whom. Owns the MongoDB database `notification`;
//! consumes `UserRegistered`, `OrderConfirmed`, `OrderCancelled`, `PaymentFailed`, `StockLow`
//! and `OutOfStock`, and turns each into exactly one email; lists a user's own notifications.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | its settings (SMTP, admin recipients, user-service, retry pacing) |
//! | [`handlers`] | event → recipient, template and values; records the notification |
//! | [`users`] | `GetUser` with a service token, for events without an address |
//! | [`templates`] | minijinja templates (text + HTML), money and reasons for humans |
//! | [`store`] | where notifications are kept: the history (idempotency record), the send queue and the per-user listing, laid out for the server (MongoDB or FerretDB v1), and their retention |
//! | [`sender`] | the loop that sends due notifications over SMTP, and the guarantee it gives |
//! | [`mailer`] | one SMTP message with lettre |
//! | [`api`] | `GET /api/v1/notifications` |
//!
//! The service is a library so tests boot it in-process (`shop_testkit::spawn::<NotificationService>()`);
//! `main.rs` only hands it to the shared runtime.

pub mod api;
pub mod config;
pub mod handlers;
pub mod mailer;
pub mod sender;
pub mod store;
pub mod templates;
pub mod users;

use std::sync::Arc;

use shop_events::{
    inventory::{OutOfStock, StockLow},
    order::{OrderCancelled, OrderConfirmed},
    payment::PaymentFailed,
    user::UserRegistered,
};
use shop_messaging::Consumer;
use shop_runtime::{BootError, Context, Endpoints, Service, ServiceSpec};

use crate::{
    config::NotificationConfig,
    handlers::Notifier,
    mailer::Mailer,
    sender::{Sender, Wake},
    store::{Expiry, Layout, Store},
    templates::Templates,
    users::Users,
};

/// The consumer's name: queues `notification.events`, its delay queues and
/// `notification.events.parking`.
pub const CONSUMER: &str = "notification";

/// This service's part of the public API as OpenAPI 3.1 ([`api::ApiDoc`]), completed with the
/// shared problem responses; the gateway merges it into the public document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    shop_runtime::openapi::complete(<api::ApiDoc as utoipa::OpenApi>::openapi())
}

/// The notification-service service.
#[derive(Debug)]
pub struct NotificationService;

impl Service for NotificationService {
    type Config = NotificationConfig;

    fn openapi() -> Option<serde_json::Value> {
        serde_json::to_value(openapi()).ok()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new("notification-service", 8086, 50056)
            .mongo()
            .amqp()
    }

    async fn build(ctx: &Context, config: NotificationConfig) -> Result<Endpoints, BootError> {
        let db = ctx.mongo()?.clone();
        let store = Store::open(&db, config.retention)
            .await
            .map_err(|err| BootError::store("mongodb", err))?;
        let expiry = store
            .install()
            .await
            .map_err(|err| BootError::store("mongodb", err))?;
        tracing::info!(layout = ?store.layout(), ?expiry, "notification store ready");
        // Retention where the server does not delete by itself (FerretDB v1 has no TTL
        // indexes), and for the keyed layout's own collections.
        if expiry == Expiry::Sweep || store.layout() == Layout::Keyed {
            ctx.tasks.spawn(sweep(store.clone(), ctx.shutdown.clone()));
        }
        let templates = Templates::new().map_err(|err| {
            BootError::Other(format!("the email templates do not compile: {err:#}"))
        })?;
        let users = Users::new(
            &config.user_url,
            &config.grpc,
            &config.credentials,
            config.call_timeout,
        )
        .map_err(BootError::Other)?;
        let mailer = Mailer::new(&config.smtp).map_err(BootError::Other)?;
        let wake = Arc::new(Wake::with_lease(config.delivery.lease));

        // Sending runs beside consuming: an SMTP outage holds up emails, never events.
        let sender = Sender {
            store: store.clone(),
            mailer: mailer.clone(),
            config: config.delivery.clone(),
            wake: wake.clone(),
        };
        ctx.tasks.spawn(sender.run(ctx.shutdown.clone()));

        let notifier = Notifier {
            store: store.clone(),
            templates: Arc::new(templates),
            users,
            admins: config.admins.clone(),
            domain: mailer.domain().to_owned(),
            wake,
        };
        Consumer::stateless(CONSUMER)
            .concurrency(config.consume_concurrency)
            .retry_delays(config.retry_delays.clone())
            .on::<UserRegistered>(notifier.clone())
            .on::<OrderConfirmed>(notifier.clone())
            .on::<OrderCancelled>(notifier.clone())
            .on::<PaymentFailed>(notifier.clone())
            .on::<StockLow>(notifier.clone())
            .on::<OutOfStock>(notifier)
            .spawn(ctx)
            .await?;

        let router = api::router(api::AppState {
            store,
            verifier: config.auth.verifier()?,
        });
        Ok(Endpoints::new(router))
    }
}

/// How often expired notifications are deleted where the server does not do it.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes expired notifications now and every [`SWEEP_EVERY`] until shutdown.
async fn sweep(store: Store, shutdown: tokio_util::sync::CancellationToken) {
    while !shutdown.is_cancelled() {
        match store.expire(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, "expired notifications deleted");
                metrics::counter!("notification_expired_total").increment(deleted);
            }
            Err(err) => tracing::warn!(error = %err, "cannot delete expired notifications"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}
