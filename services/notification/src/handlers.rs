//! What each event turns into: a recipient, a template and its values. The handlers only
//! *record* the notification; [`crate::sender`] sends it.
//!
//! Each handler's effect is one insert keyed by the event id ([`crate::store`]), so the
//! consumer keeps no inbox of its own (`Consumer::stateless`): the notification *is* the
//! record that the event was handled. Run twice for one event (a redelivery, a crash before
//! the acknowledgement, two instances handling a duplicate publish), a handler records one
//! notification, so one email. The "already recorded?" look at the start of each handler that
//! calls user-service is that inbox's cheap check: a redelivery is acknowledged without a
//! call, and a recording cut short by a crash is completed ([`Store::recorded`]).
//!
//! | event | template | to |
//! |---|---|---|
//! | `UserRegistered` | `welcome` | the address in the event |
//! | `OrderConfirmed` | `order_confirmed` (lines and total) | the user, looked up with `GetUser` |
//! | `OrderCancelled` | `order_cancelled` (the reason in words) | the user, looked up |
//! | `PaymentFailed` | `payment_failed` | the user, looked up |
//! | `StockLow`, `OutOfStock` | `stock_low`, `out_of_stock` | `NOTIFY_ADMIN_EMAILS` |

use std::sync::Arc;

use chrono::Utc;
use lettre::message::Mailbox;
use serde_json::{Value, json};
use shop_events::{
    inventory::{OutOfStock, StockLow},
    order::{OrderCancelled, OrderConfirmed},
    payment::PaymentFailed,
    user::UserRegistered,
};
use shop_messaging::{Envelope, HandlerError, Received, consumer::mongo::Handle};
use uuid::Uuid;

use crate::{
    sender::Wake,
    store::{Notification, Status, Store, millis},
    templates::{Template, Templates, mail_name},
    users::Users,
};

/// The handler of every event this service consumes (one value, cloned per event type).
#[derive(Debug, Clone)]
pub struct Notifier {
    pub store: Store,
    pub templates: Arc<Templates>,
    pub users: Users,
    pub admins: Vec<Mailbox>,
    /// The domain of the Message-IDs (the sender's).
    pub domain: String,
    /// The sender, handed each new notification (claimed by its recording, or by id).
    pub wake: Arc<Wake>,
}

/// Who a notification goes to.
struct Recipients {
    user_id: Option<Uuid>,
    to: Vec<Mailbox>,
}

impl Notifier {
    /// Records the notification for `envelope` unless one exists: rendered now, sent by the
    /// sender. Rendering errors are permanent (the event lacks what the template needs).
    async fn record(
        &self,
        envelope: &Envelope,
        template: Template,
        recipients: Recipients,
        context: &Value,
    ) -> Result<(), HandlerError> {
        if recipients.to.is_empty() {
            tracing::warn!(event_id = %envelope.id, template = template.name(), "no recipients configured; nothing to send");
            return Ok(());
        }
        let rendered = self.templates.render(template, context).map_err(|err| {
            HandlerError::permanent(format!("cannot render {}: {err:#}", template.name()))
        })?;
        // The first attempt is claimed by the recording itself when the sender has room for
        // the email in memory: due again only after a lease, so only this instance's sender
        // sends it meanwhile (crate::sender::Wake).
        let claim = self.wake.reserve();
        let now = millis(Utc::now());
        let mut notification = Notification {
            event_id: envelope.id.to_string(),
            event_type: envelope.kind.clone(),
            user_id: recipients.user_id.map(|id| id.to_string()),
            channel: "email".to_owned(),
            template: template.name().to_owned(),
            to: recipients.to.iter().map(ToString::to_string).collect(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            message_id: format!("<{}@{}>", envelope.id, self.domain),
            status: Status::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
            sent_at: None,
            claim_document: false,
        };
        if let Some(claim) = &claim {
            claim.claim(&mut notification);
        }
        if self.store.insert(&notification).await? {
            metrics::counter!("notification_recorded_total", "template" => template.name())
                .increment(1);
            match claim {
                Some(claim) => claim.fill(notification),
                None => self.wake.recorded(&notification.event_id),
            }
        } else {
            tracing::debug!(event_id = %envelope.id, "already recorded; not recording twice");
        }
        Ok(())
    }

    /// Already recorded: skip the lookup (a redelivery during a user-service outage must not
    /// wait for user-service to be acknowledged). The store also completes a recording a crash
    /// cut short ([`Store::recorded`]).
    async fn recorded(&self, envelope: &Envelope) -> Result<bool, HandlerError> {
        Ok(self.store.recorded(&envelope.id.to_string()).await?)
    }

    /// The user's mailbox and name, from `GetUser`.
    async fn user(&self, id: Uuid) -> Result<(Recipients, String), HandlerError> {
        let user = self.users.get(id).await?;
        let to = mailbox(&user.name, &user.email)?;
        Ok((
            Recipients {
                user_id: Some(id),
                to: vec![to],
            },
            mail_name(&user.name),
        ))
    }

    fn admins(&self) -> Recipients {
        Recipients {
            user_id: None,
            to: self.admins.clone(),
        }
    }
}

/// `name <email>` (the name as [`mail_name`] leaves it); an address that is not one is a permanent error (retrying will not fix it).
fn mailbox(name: &str, email: &str) -> Result<Mailbox, HandlerError> {
    let address = email.parse().map_err(|err| {
        HandlerError::permanent(format!("'{email}' is not an email address: {err}"))
    })?;
    let name = mail_name(name);
    Ok(Mailbox::new((!name.is_empty()).then_some(name), address))
}

impl Handle<UserRegistered> for Notifier {
    async fn handle(&self, event: Received<UserRegistered>) -> Result<(), HandlerError> {
        let user = &event.payload;
        let recipients = Recipients {
            user_id: Some(user.user_id),
            to: vec![mailbox(&user.name, &user.email)?],
        };
        // The name as it may appear in a mail (no control characters, no links).
        let context = json!({ "name": mail_name(&user.name) });
        self.record(&event.envelope, Template::Welcome, recipients, &context)
            .await
    }
}

impl Handle<OrderConfirmed> for Notifier {
    async fn handle(&self, event: Received<OrderConfirmed>) -> Result<(), HandlerError> {
        if self.recorded(&event.envelope).await? {
            return Ok(());
        }
        let order = &event.payload;
        let (recipients, name) = self.user(order.user_id).await?;
        let items: Vec<Value> = order
            .items
            .iter()
            .map(|line| json!({ "name": line.name, "quantity": line.quantity, "unit_price": line.unit_price }))
            .collect();
        let context = json!({
            "name": name,
            "order_id": order.order_id,
            "items": items,
            "total": order.total,
        });
        self.record(
            &event.envelope,
            Template::OrderConfirmed,
            recipients,
            &context,
        )
        .await
    }
}

impl Handle<OrderCancelled> for Notifier {
    async fn handle(&self, event: Received<OrderCancelled>) -> Result<(), HandlerError> {
        if self.recorded(&event.envelope).await? {
            return Ok(());
        }
        let order = &event.payload;
        let (recipients, name) = self.user(order.user_id).await?;
        let context = json!({ "name": name, "order_id": order.order_id, "reason": order.reason });
        self.record(
            &event.envelope,
            Template::OrderCancelled,
            recipients,
            &context,
        )
        .await
    }
}

impl Handle<PaymentFailed> for Notifier {
    async fn handle(&self, event: Received<PaymentFailed>) -> Result<(), HandlerError> {
        if self.recorded(&event.envelope).await? {
            return Ok(());
        }
        let payment = &event.payload;
        let (recipients, name) = self.user(payment.user_id).await?;
        let context = json!({
            "name": name,
            "order_id": payment.order_id,
            "amount": payment.amount,
            "reason": payment.reason,
            "card_brand": payment.card_brand,
            "card_last4": payment.card_last4,
        });
        self.record(
            &event.envelope,
            Template::PaymentFailed,
            recipients,
            &context,
        )
        .await
    }
}

impl Handle<StockLow> for Notifier {
    async fn handle(&self, event: Received<StockLow>) -> Result<(), HandlerError> {
        let context = json!({ "level": event.payload.level, "threshold": event.payload.threshold });
        self.record(&event.envelope, Template::StockLow, self.admins(), &context)
            .await
    }
}

impl Handle<OutOfStock> for Notifier {
    async fn handle(&self, event: Received<OutOfStock>) -> Result<(), HandlerError> {
        let context = json!({ "level": event.payload.level });
        self.record(
            &event.envelope,
            Template::OutOfStock,
            self.admins(),
            &context,
        )
        .await
    }
}
