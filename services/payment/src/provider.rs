//! The card provider (acquirer) behind a trait, and the simulated one this system runs.
//!
//! [`CardProvider`] is the seam where a real provider's client would go. Every call carries an
//! idempotency key (the attempt's operation key, the same for every retry of that operation),
//! because the one thing payment-service cannot know after a crash or a timeout is whether the
//! provider acted: real providers deduplicate on such a key, which is what makes calling again
//! safe (see `ledger` and the README, "idempotency across the provider call").
//!
//! [`SimulatedProvider`] answers by card number, with the test cards of the brief:
//!
//! | number | outcome |
//! |---|---|
//! | `4242424242424242` | approved |
//! | `4000000000000002` | declined, `card_declined` |
//! | `4000000000009995` | declined, `insufficient_funds` |
//! | `4000000000000259` | approved after [`SimulatedProvider::slow_delay`] (default 5 s) |
//! | any other valid number | declined, `unknown_card` (a real card typed into a demo is never "charged") |

use std::{fmt, future::Future, pin::Pin, time::Duration};

use crate::card::Card;

pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// What a declined authorization says, as a reason code callers can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    CardDeclined,
    InsufficientFunds,
    UnknownCard,
}

impl DeclineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardDeclined => "card_declined",
            Self::InsufficientFunds => "insufficient_funds",
            Self::UnknownCard => "unknown_card",
        }
    }
}

/// The provider's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationOutcome {
    /// Approved; `reference` identifies the authorization at the provider for later calls.
    Approved {
        reference: String,
    },
    Declined(DeclineReason),
}

/// The provider could not be asked or did not answer: the outcome is unknown.
#[derive(Debug, Clone, thiserror::Error)]
#[error("card provider unavailable: {0}")]
pub struct ProviderError(pub String);

/// A card provider. Object safe, so the service holds an `Arc<dyn CardProvider>`.
pub trait CardProvider: Send + Sync + fmt::Debug + 'static {
    /// Holds `amount` minor units of `currency` on the card.
    fn authorize<'a>(
        &'a self,
        idempotency_key: &'a str,
        card: &'a Card,
        amount: i64,
        currency: &'a str,
    ) -> ProviderFuture<'a, AuthorizationOutcome>;

    /// Charges what `reference` (an approved authorization) holds.
    fn capture<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()>;

    /// Releases what `reference` holds, without charging.
    fn void<'a>(&'a self, idempotency_key: &'a str, reference: &'a str) -> ProviderFuture<'a, ()>;

    /// Gives `amount` of a capture back.
    fn refund<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()>;
}

pub const APPROVE: &str = "4242424242424242";
pub const DECLINE: &str = "4000000000000002";
pub const INSUFFICIENT_FUNDS: &str = "4000000000009995";
pub const SLOW_APPROVE: &str = "4000000000000259";

/// The provider inside payment-service: no network, fixed answers per test card.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    /// How long the slow card takes to be approved.
    pub slow_delay: Duration,
}

impl CardProvider for SimulatedProvider {
    fn authorize<'a>(
        &'a self,
        idempotency_key: &'a str,
        card: &'a Card,
        _amount: i64,
        _currency: &'a str,
    ) -> ProviderFuture<'a, AuthorizationOutcome> {
        Box::pin(async move {
            let approved = || AuthorizationOutcome::Approved {
                // Deterministic per key, as a real provider's deduplication would make it.
                reference: format!("sim_auth_{idempotency_key}"),
            };
            Ok(match card.number().digits() {
                APPROVE => approved(),
                SLOW_APPROVE => {
                    tokio::time::sleep(self.slow_delay).await;
                    approved()
                }
                DECLINE => AuthorizationOutcome::Declined(DeclineReason::CardDeclined),
                INSUFFICIENT_FUNDS => {
                    AuthorizationOutcome::Declined(DeclineReason::InsufficientFunds)
                }
                _ => AuthorizationOutcome::Declined(DeclineReason::UnknownCard),
            })
        })
    }

    fn capture<'a>(&'a self, _: &'a str, _: &'a str, _: i64) -> ProviderFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn void<'a>(&'a self, _: &'a str, _: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn refund<'a>(&'a self, _: &'a str, _: &'a str, _: i64) -> ProviderFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}
