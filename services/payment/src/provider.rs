//! The card provider (acquirer) behind a trait, and the simulated one this system runs.
//!
//! [`CardProvider`] is the seam where a real provider's client would go. Every call carries an
//! idempotency key (the attempt's operation key, the same for every retry of that operation),
//! because the one thing payment-service cannot know after a crash or a timeout is whether the
//! provider acted: real providers deduplicate on such a key, which is what makes calling again
//! safe. For the same reason the trait can *ask*: [`CardProvider::retrieve`] looks an
//! authorization up by its idempotency key, which is how the reconciler
//! ([`crate::reconciler`]) learns what became of a call whose answer never arrived, and
//! [`CardProvider::void`] can cancel by that key when no reference ever came back (what real
//! providers call a "technical cancel" or void by merchant reference).
//!
//! [`SimulatedProvider`] fails the way real providers fail, by test card (all Luhn-valid):
//!
//! | number | outcome |
//! |---|---|
//! | `4242424242424242` | approved (or, at `SIMULATED_FAULT_RATE`, one of the two faults below, chosen per idempotency key) |
//! | `4000000000000002` | declined, `card_declined` |
//! | `4000000000009995` | declined, `insufficient_funds` |
//! | `4000000000000259` | approved after `SimulatedProvider::slow_delay`: the provider decides only then, whether or not the caller still waits |
//! | `4000000000000119` | **timeout before acting**: never answers, records nothing |
//! | `4000000000000127` | **approved, answer lost**: the hold is recorded, then the call fails like a connection reset |
//! | `4000000000000069` | **capture refused**: approved; the capture is refused, `authorization_expired` (the hold lapses) |
//! | `4000000000000101` | **void refused once**: approved; the first void is refused, `try_again_later` |
//! | any other valid number | declined, `unknown_card` (a real card typed into a demo is never "charged") |
//!
//! The simulation keeps its own record (schema `simulated_provider`, migration 0002) so that,
//! like a real provider, it remembers what it did across a restart of payment-service and
//! whether or not anybody got its answer. Each call is carried out in a task of its own: a
//! caller that gives up (a timeout) does not stop the provider from acting, which is exactly
//! the uncertainty payment-service has to live with.
//!
//! Why simulate at all, rather than mock per test: the failure modes above are what the saga,
//! the ledger and the reconciler are built for, and they must be reachable from outside by
//! typing a card number, in the tests, in `make run` and under load (`SIMULATED_FAULT_RATE`).
//! A mock would only show the behaviour a test's author thought of; this simulation keeps the
//! provider's side of the story in tables a test can read back.
//!
//! ## Where it sits
//!
//! Only [`crate::payments`] calls a provider: each operation's attempt (authorize, capture,
//! void, refund) and the reconciler's questions (retrieve, and the void of a forgotten hold)
//! go through [`crate::payments::Payments`], which bounds every call with
//! `PROVIDER_TIMEOUT_MS`. [`crate::PaymentService`] builds the one [`SimulatedProvider`] at
//! start; this module is pattern DEC-09 (anti-corruption layer) of `docs/patterns.md`: the
//! trait speaks payment-service's language (decline reasons, "refused" against "unavailable"),
//! and a real provider's client would translate its own codes into it.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use sqlx::{PgConnection, PgPool};

use crate::card::Card;

/// What every provider call returns: boxed so that [`CardProvider`] stays object-safe and the
/// service holds any provider as `Arc<dyn CardProvider>` (the simulated one, a real one).
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// What a declined authorization says, as a reason code callers can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    /// The issuer said no, without a reason it shares.
    CardDeclined,
    /// Not enough money or credit on the card.
    InsufficientFunds,
    /// A valid number that is not one of the simulation's test cards.
    UnknownCard,
    /// The merchant voided this authorization's key before the authorization was processed.
    /// What an Authorize that lands after the saga gave up gets from a provider that honours
    /// voids by key.
    AuthorizationVoided,
}

impl DeclineReason {
    /// The code stored in the operation row and sent to the caller, stable across releases:
    /// order-service maps it to the order's cancellation reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardDeclined => "card_declined",
            Self::InsufficientFunds => "insufficient_funds",
            Self::UnknownCard => "unknown_card",
            Self::AuthorizationVoided => "authorization_voided",
        }
    }

    /// The inverse of [`DeclineReason::as_str`], for rows read back and the provider's record.
    pub fn parse(code: &str) -> Option<Self> {
        [
            Self::CardDeclined,
            Self::InsufficientFunds,
            Self::UnknownCard,
            Self::AuthorizationVoided,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == code)
    }
}

/// The provider's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationOutcome {
    /// Approved; `reference` identifies the authorization at the provider for later calls.
    Approved {
        /// The provider's id of the hold; stored on the completed row and used by every later
        /// capture, void and refund.
        reference: String,
    },
    /// Declined: nothing is held. An answer, recorded like an approval, and final: a retry
    /// under the same key gets the same decline.
    Declined(DeclineReason),
}

/// What the provider knows about an authorization, looked up by its idempotency key.
///
/// The reconciler's whole view of the outside world: it compares this with the payment's state
/// and records or releases accordingly (see the table in [`crate::reconciler`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderRecord {
    /// Never heard of it: the request did not arrive, or has not been processed yet.
    Nothing,
    /// Approved and still holding `amount` on the card.
    Held {
        /// The provider's id of the hold, what a void of it must name.
        reference: String,
        /// Minor units held.
        amount: i64,
    },
    /// Approved and charged.
    Captured {
        /// The provider's id of the authorization that was captured.
        reference: String,
        /// Minor units the authorization held.
        amount: i64,
    },
    /// Released by a void (or voided by key before it was processed).
    Voided,
    /// The hold lapsed at the provider.
    Expired,
    /// Declined, with its reason code.
    Declined {
        /// The decline code as the provider stored it; [`DeclineReason::parse`] reads it.
        reason: String,
    },
}

/// A call that did not succeed.
///
/// Two kinds only, because payment-service acts on exactly that distinction: an unknown
/// outcome must be asked about again later (the reconciliation queue), a refusal is final for
/// this request and is recorded as the provider's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be asked or did not answer: the outcome is unknown.
    #[error("card provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered and refused to act, with its reason code (`authorization_expired`,
    /// `try_again_later`, ...): nothing happened.
    #[error("card provider refused: {0}")]
    Refused(String),
}

/// A card provider. Object safe, so the service holds an `Arc<dyn CardProvider>`.
///
/// Every mutating call takes an idempotency key and must be safe to repeat with it: the same
/// key must never act twice and must answer as the first call did. payment-service relies on
/// this after every timeout and crash, so an implementation that cannot promise it (a
/// provider without idempotency keys) cannot be plugged in here as is.
pub trait CardProvider: Send + Sync + fmt::Debug + 'static {
    /// Holds `amount` minor units of `currency` on the card. A decline is `Ok`, not an error.
    fn authorize<'a>(
        &'a self,
        idempotency_key: &'a str,
        card: &'a Card,
        amount: i64,
        currency: &'a str,
    ) -> ProviderFuture<'a, AuthorizationOutcome>;

    /// Charges `amount` of what `reference` (an approved authorization) holds; `Refused` when
    /// the hold is gone (expired, voided) or smaller. payment-service always asks for the
    /// whole authorized amount, once per payment.
    fn capture<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()>;

    /// Releases what the authorization holds, without charging. It is named by its
    /// `reference` when one came back, otherwise by the key it was requested under
    /// (`authorize_key`): voiding a key the provider has not seen yet makes a later
    /// authorization under that key a decline, so a request still on its way cannot hold money
    /// for an order that gave up.
    fn void<'a>(
        &'a self,
        idempotency_key: &'a str,
        authorize_key: &'a str,
        reference: Option<&'a str>,
    ) -> ProviderFuture<'a, ()>;

    /// Gives `amount` of a capture back; `Refused` for more than is left. Refunds under
    /// different keys add up, and the provider must refuse the excess on its own, whatever
    /// the ledger has already checked.
    fn refund<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()>;

    /// What the provider knows about the authorization requested under `authorize_key`.
    /// Read-only: asking never changes anything at the provider.
    ///
    /// The reconciler's only way to learn about a call whose answer never came; a provider
    /// that cannot be asked by key could not settle those, which is why it is part of the
    /// trait rather than an extra of the simulation.
    fn retrieve<'a>(&'a self, authorize_key: &'a str) -> ProviderFuture<'a, ProviderRecord>;
}

// The simulated provider's test cards (the module's table says what each does). Public so
// tests and load generators name the behaviour they want instead of repeating digits.
/// Approved.
pub const APPROVE: &str = "4242424242424242";
/// Declined, `card_declined`.
pub const DECLINE: &str = "4000000000000002";
/// Declined, `insufficient_funds`.
pub const INSUFFICIENT_FUNDS: &str = "4000000000009995";
/// Approved after `SimulatedProvider::slow_delay`, whether or not the caller still waits.
pub const SLOW_APPROVE: &str = "4000000000000259";
/// Never answers and records nothing: a timeout before the provider acted.
///
/// The reconciler then finds nothing at the provider and, once a lease has passed without
/// news, stops looking; the saga's next Authorize calls again under the same key.
pub const TIMEOUT_BEFORE_ACTING: &str = "4000000000000119";
/// Approved and recorded, then the answer is lost: the hold exists, the caller does not know.
///
/// The case the reconciliation queue exists for: the payment reads PENDING while money is
/// held, until a retry or the reconciler records the approval (or voids the hold).
pub const ANSWER_LOST: &str = "4000000000000127";
/// Approved; the capture is refused (`authorization_expired`).
///
/// A refusal past the saga's pivot: order-service parks the saga for an operator.
pub const CAPTURE_REFUSED: &str = "4000000000000069";
/// Approved; the first void is refused (`try_again_later`), the next succeeds.
///
/// The refusal reaches order-service as `UNAVAILABLE`, so its compensation simply retries.
pub const VOID_REFUSED_ONCE: &str = "4000000000000101";

/// Faults injected into the approving card's authorizations, for load tests: each idempotency
/// key is faulty with probability `rate`, decided by a hash of `seed` and the key, so a run is
/// reproducible and a retry (same key) meets the same fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRate {
    /// 0.0 to 1.0: the share of keys that meet a fault. Only the approving test card is
    /// affected, so the other test cards keep their documented behaviour under load.
    pub rate: f64,
    /// Which keys are faulty; the same seed picks the same keys on every run and build.
    pub seed: u64,
}

impl FaultRate {
    /// No injected faults: what every deployment but a load test runs with.
    pub const NONE: Self = Self { rate: 0.0, seed: 0 };

    /// The fault this key meets, if any: half of the faulty keys lose the answer, half are
    /// never answered.
    fn fault_of(self, idempotency_key: &str) -> Option<Behaviour> {
        if self.rate <= 0.0 {
            return None;
        }
        let hash = fnv1a(
            self.seed
                .to_le_bytes()
                .iter()
                .chain(idempotency_key.as_bytes()),
        );
        // The top 53 bits as a number in [0, 1): uniform enough for a rate.
        #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64's mantissa exactly
        let roll = (hash >> 11) as f64 / (1u64 << 53) as f64;
        (roll < self.rate).then_some(if hash & 1 == 0 {
            Behaviour::AnswerLost
        } else {
            Behaviour::NeverAnswer
        })
    }
}

/// FNV-1a, 64 bits: a stable hash (unlike `std`'s, which may change between releases), so a
/// seed means the same faults on every build.
fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a test card (or an injected fault) makes the provider do with an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Approve at once; the quirk, if any, says how the approved hold misbehaves later.
    Approve(Option<Quirk>),
    /// Approve, after deciding for `slow_delay`.
    Slow,
    /// Decline with this code.
    Decline(DeclineReason),
    /// Never answer, never act.
    NeverAnswer,
    /// Approve (record the hold), then fail the call as a dropped connection would.
    AnswerLost,
}

/// What an approved test card does later.
///
/// Stored with the hold (`quirk` column), because it shows in later calls, possibly after a
/// restart of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quirk {
    /// The hold lapses before it is captured: the capture is refused, `authorization_expired`.
    CaptureExpires,
    /// The first void is refused, `try_again_later`; the next one succeeds.
    VoidRefusedOnce,
}

impl Quirk {
    /// The stored name.
    fn as_str(self) -> &'static str {
        match self {
            Self::CaptureExpires => "capture_expires",
            Self::VoidRefusedOnce => "void_refused_once",
        }
    }
}

/// The provider inside payment-service: no network, fixed behaviour per test card, and its own
/// record in the `simulated_provider` schema (a stand-in for the provider's system, reached
/// only through [`CardProvider`]).
///
/// Cheap to clone (a pool, a duration, two numbers): every call that acts clones it into the
/// provider's own task.
///
/// It deduplicates by idempotency key the way the trait demands: a repeated authorization gets
/// the first answer, a repeated capture, void or refund does nothing more. Its tables are its
/// own; no code of the service reads them except through the trait (tests do, to check what
/// "the provider" did).
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    /// The service's database, where the `simulated_provider` schema lives.
    pool: PgPool,
    /// How long the provider takes to decide on the slow card.
    slow_delay: Duration,
    /// Injected faults for load tests.
    faults: FaultRate,
}

/// One row of `simulated_provider.authorizations`.
#[derive(Debug, sqlx::FromRow)]
struct Authorization {
    /// The key the authorization was requested under; the provider's deduplication key.
    idempotency_key: String,
    /// Set for an approved hold; `None` for a decline and for a key voided before any
    /// authorization arrived.
    reference: Option<String>,
    /// What is held (0 for a decline).
    amount: i64,
    /// `held`, `captured`, `voided`, `expired` or `declined`.
    status: String,
    /// The decline code of a declined authorization.
    decline_reason: Option<String>,
    /// [`Quirk::as_str`] of a test card that misbehaves later.
    quirk: Option<String>,
    /// How many voids were refused so far (for the void-refused-once card).
    void_refusals: i32,
    /// What was refunded of the capture so far.
    refunded: i64,
}

impl Authorization {
    /// The answer a (repeated) authorize request gets: the first one's.
    fn outcome(&self) -> AuthorizationOutcome {
        match (&self.reference, self.status.as_str()) {
            (Some(reference), "held" | "captured" | "voided" | "expired") => {
                AuthorizationOutcome::Approved {
                    reference: reference.clone(),
                }
            }
            (None, "voided") => AuthorizationOutcome::Declined(DeclineReason::AuthorizationVoided),
            _ => AuthorizationOutcome::Declined(
                self.decline_reason
                    .as_deref()
                    .and_then(DeclineReason::parse)
                    .unwrap_or(DeclineReason::CardDeclined),
            ),
        }
    }

    /// The row as [`CardProvider::retrieve`] reports it.
    fn record(&self) -> ProviderRecord {
        let reference = || self.reference.clone().unwrap_or_default();
        match self.status.as_str() {
            "held" => ProviderRecord::Held {
                reference: reference(),
                amount: self.amount,
            },
            "captured" => ProviderRecord::Captured {
                reference: reference(),
                amount: self.amount,
            },
            "voided" => ProviderRecord::Voided,
            "expired" => ProviderRecord::Expired,
            _ => ProviderRecord::Declined {
                reason: self.decline_reason.clone().unwrap_or_default(),
            },
        }
    }
}

/// A failure of the simulation's own database work looks, to the service, like a provider
/// that could not be reached: the outcome is unknown.
fn unavailable(err: impl fmt::Display) -> ProviderError {
    ProviderError::Unavailable(err.to_string())
}

/// The provider answered no, with `reason`.
fn refused(reason: &str) -> ProviderError {
    ProviderError::Refused(reason.to_owned())
}

impl SimulatedProvider {
    /// The simulation, keeping its record in `pool` (schema `simulated_provider`) so that it
    /// remembers what it did across a restart of the service, as a real provider would.
    ///
    /// The schema comes with the service's own migrations; the service's code reaches those
    /// tables only through the [`CardProvider`] methods.
    pub fn new(pool: PgPool, slow_delay: Duration, faults: FaultRate) -> Self {
        Self {
            pool,
            slow_delay,
            faults,
        }
    }

    /// What this card number (and, for the approving card, the injected faults) make the
    /// authorization do. Decided before the provider's task starts, so the card itself never
    /// leaves the caller's future.
    fn behaviour(&self, idempotency_key: &str, digits: &str) -> Behaviour {
        match digits {
            APPROVE => self
                .faults
                .fault_of(idempotency_key)
                .unwrap_or(Behaviour::Approve(None)),
            SLOW_APPROVE => Behaviour::Slow,
            DECLINE => Behaviour::Decline(DeclineReason::CardDeclined),
            INSUFFICIENT_FUNDS => Behaviour::Decline(DeclineReason::InsufficientFunds),
            TIMEOUT_BEFORE_ACTING => Behaviour::NeverAnswer,
            ANSWER_LOST => Behaviour::AnswerLost,
            CAPTURE_REFUSED => Behaviour::Approve(Some(Quirk::CaptureExpires)),
            VOID_REFUSED_ONCE => Behaviour::Approve(Some(Quirk::VoidRefusedOnce)),
            _ => Behaviour::Decline(DeclineReason::UnknownCard),
        }
    }

    /// Runs `work` as the provider's own task and waits for it: dropping the returned future
    /// (a caller's timeout) does not undo or stop what the provider does.
    async fn on_the_provider<T, F>(work: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ProviderError>> + Send + 'static,
    {
        tokio::spawn(work)
            .await
            .map_err(|err| unavailable(format!("provider task failed: {err}")))?
    }

    /// Processes an authorization; the bool is whether this request created the record (a
    /// repeat gets the first answer).
    ///
    /// The insert-if-absent on the key is the deduplication: whichever request gets there
    /// first decides, including a void by key that arrived before the authorization did.
    async fn process_authorization(
        self,
        key: String,
        amount: i64,
        currency: String,
        behaviour: Behaviour,
    ) -> Result<(AuthorizationOutcome, bool), ProviderError> {
        if behaviour == Behaviour::Slow {
            tokio::time::sleep(self.slow_delay).await;
        }
        let (status, reason, quirk) = match behaviour {
            Behaviour::Approve(quirk) => ("held", None, quirk),
            Behaviour::Slow | Behaviour::AnswerLost => ("held", None, None),
            Behaviour::Decline(reason) => ("declined", Some(reason.as_str()), None),
            Behaviour::NeverAnswer => return Err(unavailable("never answers")),
        };
        // Deterministic per key, as a real provider's deduplication would make it; a key voided
        // before it got here keeps its `voided` row and this request is declined.
        let reference = (status == "held").then(|| format!("sim_auth_{key}"));
        // One statement for a new key (the row it wrote comes back); a repeated key reads the
        // row its first request wrote.
        let created: Option<Authorization> = sqlx::query_as(
            "INSERT INTO simulated_provider.authorizations
               (idempotency_key, reference, amount, currency, status, decline_reason, quirk)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING *",
        )
        .bind(&key)
        .bind(&reference)
        .bind(if status == "held" { amount } else { 0 })
        .bind(&currency)
        .bind(status)
        .bind(reason)
        .bind(quirk.map(Quirk::as_str))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if let Some(stored) = created {
            return Ok((stored.outcome(), true));
        }
        let stored: Authorization = sqlx::query_as(
            "SELECT * FROM simulated_provider.authorizations WHERE idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok((stored.outcome(), false))
    }

    /// The authorization a capture, void or refund names, locked; `None` when unknown.
    async fn locked(
        conn: &mut PgConnection,
        by_reference: Option<&str>,
        by_key: &str,
    ) -> Result<Option<Authorization>, ProviderError> {
        let query = match by_reference {
            Some(_) => {
                "SELECT * FROM simulated_provider.authorizations WHERE reference = $1 FOR UPDATE"
            }
            None => {
                "SELECT * FROM simulated_provider.authorizations WHERE idempotency_key = $1 FOR UPDATE"
            }
        };
        sqlx::query_as(query)
            .bind(by_reference.unwrap_or(by_key))
            .fetch_optional(conn)
            .await
            .map_err(unavailable)
    }

    /// Whether a capture, void or refund under `key` already took effect: a repeat is then
    /// answered with success and does nothing more.
    async fn done_before(conn: &mut PgConnection, key: &str) -> Result<bool, ProviderError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM simulated_provider.requests WHERE idempotency_key = $1)",
        )
        .bind(key)
        .fetch_one(conn)
        .await
        .map_err(unavailable)
    }

    /// Notes that the request under `key` took effect, in the transaction of the effect, so a
    /// repeat is recognised by [`SimulatedProvider::done_before`].
    async fn remember(
        conn: &mut PgConnection,
        key: &str,
        operation: &str,
        authorization: &str,
        amount: i64,
    ) -> Result<(), ProviderError> {
        sqlx::query(
            "INSERT INTO simulated_provider.requests (idempotency_key, operation, authorization_key, amount)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(key)
        .bind(operation)
        .bind(authorization)
        .bind(amount)
        .execute(conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Moves an authorization (named by its key) to `status`.
    async fn set_status(
        conn: &mut PgConnection,
        authorization: &str,
        status: &str,
    ) -> Result<(), ProviderError> {
        sqlx::query(
            "UPDATE simulated_provider.authorizations SET status = $2, updated_at = now()
             WHERE idempotency_key = $1",
        )
        .bind(authorization)
        .bind(status)
        .execute(conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// A capture, under the authorization's row lock: once per key, refused unless the hold
    /// is still there and large enough.
    async fn process_capture(
        self,
        key: String,
        reference: String,
        amount: i64,
    ) -> Result<(), ProviderError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if Self::done_before(&mut tx, &key).await? {
            return Ok(());
        }
        let Some(auth) = Self::locked(&mut tx, Some(&reference), "").await? else {
            return Err(refused("unknown_authorization"));
        };
        match auth.status.as_str() {
            "held" if auth.quirk.as_deref() == Some(Quirk::CaptureExpires.as_str()) => {
                // The hold lapsed before the capture: nothing is held any more either.
                Self::set_status(&mut tx, &auth.idempotency_key, "expired").await?;
                tx.commit().await.map_err(unavailable)?;
                Err(refused("authorization_expired"))
            }
            "held" if amount <= auth.amount => {
                Self::set_status(&mut tx, &auth.idempotency_key, "captured").await?;
                Self::remember(&mut tx, &key, "capture", &auth.idempotency_key, amount).await?;
                tx.commit().await.map_err(unavailable)?;
                Ok(())
            }
            "held" => Err(refused("amount_exceeds_authorization")),
            "expired" => Err(refused("authorization_expired")),
            "voided" => Err(refused("authorization_voided")),
            "captured" => Err(refused("already_captured")),
            _ => Err(refused("not_authorized")),
        }
    }

    /// A void, by reference or, without one, by the authorization's key. Voiding something
    /// that holds nothing (already voided, expired, declined) succeeds: nothing being held is
    /// what a void asks for. Refused only for a captured authorization, an unknown reference,
    /// and the first void of the void-refused-once card.
    async fn process_void(
        self,
        key: String,
        authorize_key: String,
        reference: Option<String>,
    ) -> Result<(), ProviderError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if Self::done_before(&mut tx, &key).await? {
            return Ok(());
        }
        let mut found = Self::locked(&mut tx, reference.as_deref(), &authorize_key).await?;
        if found.is_none() && reference.is_none() {
            // Void by key of an authorization never seen: remember the key as voided, so the
            // authorization, should it still arrive, is declined. A concurrent authorization
            // that got in first wins the insert and is voided below instead.
            sqlx::query(
                "INSERT INTO simulated_provider.authorizations (idempotency_key, status)
                 VALUES ($1, 'voided') ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(&authorize_key)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            found = Self::locked(&mut tx, None, &authorize_key).await?;
        }
        let Some(auth) = found else {
            return Err(refused("unknown_authorization"));
        };
        match auth.status.as_str() {
            "held"
                if auth.quirk.as_deref() == Some(Quirk::VoidRefusedOnce.as_str())
                    && auth.void_refusals == 0 =>
            {
                sqlx::query(
                    "UPDATE simulated_provider.authorizations SET void_refusals = void_refusals + 1
                     WHERE idempotency_key = $1",
                )
                .bind(&auth.idempotency_key)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                Err(refused("try_again_later"))
            }
            "captured" => Err(refused("already_captured")),
            status => {
                if status == "held" {
                    Self::set_status(&mut tx, &auth.idempotency_key, "voided").await?;
                }
                // Voided, expired or declined already: nothing is held, which is what a void
                // asks for.
                Self::remember(&mut tx, &key, "void", &auth.idempotency_key, auth.amount).await?;
                tx.commit().await.map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// A refund of part or all of a capture: once per key, never beyond what was captured.
    async fn process_refund(
        self,
        key: String,
        reference: String,
        amount: i64,
    ) -> Result<(), ProviderError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if Self::done_before(&mut tx, &key).await? {
            return Ok(());
        }
        let Some(auth) = Self::locked(&mut tx, Some(&reference), "").await? else {
            return Err(refused("unknown_authorization"));
        };
        if auth.status != "captured" {
            return Err(refused("not_captured"));
        }
        if auth.refunded + amount > auth.amount {
            return Err(refused("amount_exceeds_capture"));
        }
        sqlx::query(
            "UPDATE simulated_provider.authorizations SET refunded = refunded + $2, updated_at = now()
             WHERE idempotency_key = $1",
        )
        .bind(&auth.idempotency_key)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        Self::remember(&mut tx, &key, "refund", &auth.idempotency_key, amount).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }
}

impl CardProvider for SimulatedProvider {
    /// Decides by card number, then acts in the provider's own task; the never-answering card
    /// returns a future that never completes, so only the caller's timeout ends it.
    fn authorize<'a>(
        &'a self,
        idempotency_key: &'a str,
        card: &'a Card,
        amount: i64,
        currency: &'a str,
    ) -> ProviderFuture<'a, AuthorizationOutcome> {
        // Only the behaviour goes on to the provider's task, never the card.
        let behaviour = self.behaviour(idempotency_key, card.number().digits());
        Box::pin(async move {
            if behaviour == Behaviour::NeverAnswer {
                // Waits past any timeout; nothing is recorded.
                return std::future::pending().await;
            }
            let work = self.clone().process_authorization(
                idempotency_key.to_owned(),
                amount,
                currency.to_owned(),
                behaviour,
            );
            let (outcome, created) = Self::on_the_provider(work).await?;
            if behaviour == Behaviour::AnswerLost && created {
                // The hold exists; the answer never reaches the caller. A repeat (same key)
                // finds it and is answered, as deduplication would.
                return Err(unavailable("connection reset by peer"));
            }
            Ok(outcome)
        })
    }

    /// In the provider's own task (`SimulatedProvider::process_capture`), so a caller that
    /// times out does not stop the capture half way.
    fn capture<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()> {
        let work =
            self.clone()
                .process_capture(idempotency_key.to_owned(), reference.to_owned(), amount);
        Box::pin(Self::on_the_provider(work))
    }

    /// In the provider's own task (`SimulatedProvider::process_void`); a void by key can
    /// arrive before the authorization it cancels, and still wins.
    fn void<'a>(
        &'a self,
        idempotency_key: &'a str,
        authorize_key: &'a str,
        reference: Option<&'a str>,
    ) -> ProviderFuture<'a, ()> {
        let work = self.clone().process_void(
            idempotency_key.to_owned(),
            authorize_key.to_owned(),
            reference.map(str::to_owned),
        );
        Box::pin(Self::on_the_provider(work))
    }

    /// In the provider's own task (`SimulatedProvider::process_refund`), never beyond what
    /// was captured.
    fn refund<'a>(
        &'a self,
        idempotency_key: &'a str,
        reference: &'a str,
        amount: i64,
    ) -> ProviderFuture<'a, ()> {
        let work =
            self.clone()
                .process_refund(idempotency_key.to_owned(), reference.to_owned(), amount);
        Box::pin(Self::on_the_provider(work))
    }

    /// A plain read of the provider's record, not in a task of its own: it changes nothing,
    /// so there is nothing a dropped caller could leave half done.
    fn retrieve<'a>(&'a self, authorize_key: &'a str) -> ProviderFuture<'a, ProviderRecord> {
        Box::pin(async move {
            let found: Option<Authorization> = sqlx::query_as(
                "SELECT * FROM simulated_provider.authorizations WHERE idempotency_key = $1",
            )
            .bind(authorize_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(found.map_or(ProviderRecord::Nothing, |auth| auth.record()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No faults at rate 0, every key faulty at rate 1, about a quarter at 0.25 with both kinds
    /// present, the same keys for the same seed, and other keys for another seed.
    #[test]
    fn injected_faults_follow_the_rate_and_the_seed() {
        let keys: Vec<String> = (0..2000).map(|i| format!("p{i}:authorize:")).collect();
        let faulty = |faults: FaultRate| {
            keys.iter()
                .filter_map(|key| faults.fault_of(key))
                .collect::<Vec<_>>()
        };
        assert!(faulty(FaultRate::NONE).is_empty());
        assert_eq!(faulty(FaultRate { rate: 1.0, seed: 7 }).len(), keys.len());
        let some = faulty(FaultRate {
            rate: 0.25,
            seed: 7,
        });
        assert!((400..600).contains(&some.len()), "{}", some.len());
        assert!(some.contains(&Behaviour::AnswerLost) && some.contains(&Behaviour::NeverAnswer));
        // Reproducible for a seed, different for another.
        assert_eq!(
            some,
            faulty(FaultRate {
                rate: 0.25,
                seed: 7
            })
        );
        let key_faults = |seed| {
            keys.iter()
                .map(|key| FaultRate { rate: 0.25, seed }.fault_of(key))
                .collect::<Vec<_>>()
        };
        assert_ne!(key_faults(7), key_faults(8));
    }

    /// Every decline code reads back as itself, and an unknown code is `None`, not a guess.
    #[test]
    fn decline_reasons_round_trip() {
        for reason in [
            DeclineReason::CardDeclined,
            DeclineReason::InsufficientFunds,
            DeclineReason::UnknownCard,
            DeclineReason::AuthorizationVoided,
        ] {
            assert_eq!(DeclineReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeclineReason::parse("nope"), None);
    }
}
