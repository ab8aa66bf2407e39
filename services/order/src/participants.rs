//! The saga's participants over gRPC: catalog (prices), inventory (stock), payment.
//!
//! Every call here
//!
//! * carries a **service token** (`shop_auth::client::ServiceTokens`, cached) and the W3C trace
//!   context, so the participant knows who calls and the trace follows the order;
//! * has a **deadline** (`ORDER_CALL_TIMEOUT_MS`), sent as `grpc-timeout` so the participant can
//!   stop working on a call nobody waits for, and enforced here too;
//! * is **retried** a couple of times, with jittered exponential back-off (`backon`), when the
//!   participant was unreachable or overloaded. That is safe because every call of these
//!   services is idempotent per order id (their `.proto` files promise it, and their tests
//!   prove it): a repeated Reserve reserves once, a repeated Authorize charges once. A call that
//!   ran into its deadline is *not* retried here: it may still be running, and the saga retries
//!   it later from the database anyway (see [`crate::driver`]);
//! * goes through the downstream's **circuit breaker** ([`shop_resilience::CircuitBreaker`]).
//!
//! Each saga call returns an [`Outcome`]: what the answer means for the saga, nothing more.
//!
//! ## Two layers of retry, on purpose
//!
//! The quick retries here only cover a blip (a connection reset, a shed request) within one
//! step's run and are bounded to two. Anything longer is the driver's business: it writes the
//! unknown outcome to the saga row and tries again after a back-off, giving up its lease in
//! between, so a participant that is down for minutes costs rows, not threads or connections.
//! The breaker sits inside both: while it is open a call fails at once and counts as unknown,
//! instead of every saga waiting out its deadline against a dead participant.
//!
//! The answer mappings ([`reserve_outcome`], [`authorize_outcome`], ...) are separate pure
//! functions so the consumer contract tests (`tests/contracts.rs`) can feed them the providers'
//! recorded answers; a participant that changed a status code would fail there first.
//!
//! ## Where it sits
//!
//! [`crate::api`] calls [`Participants::products`] while placing (the one call made on behalf
//! of a waiting client); [`crate::driver`] calls the other six, one per saga step, and hands
//! the [`Outcome`] to [`crate::saga::after`]. Nothing here reads or writes the database: what
//! was asked and answered is persisted by the driver, so this module can be retried freely.
//!
//! ## Patterns
//!
//! RES-02 (circuit breaker), RES-03 (a deadline on every call), RES-04 (retries with
//! exponential back-off and jitter), BEY-07 (deadline propagation), COM-09 (gRPC for internal
//! calls), OTH-04 (one batched call prices a cart) and the anti-corruption layer of DEC-09
//! (no proto type reaches the state machine) in `docs/patterns.md`.

use std::{future::Future, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use shop_auth::client::ServiceTokens;
use shop_proto::{
    catalog::v1::{GetProductsRequest, Product, catalog_service_client::CatalogServiceClient},
    common::v1::Money,
    inventory::v1::{
        CommitRequest, Line, ReleaseRequest, ReserveRequest,
        inventory_service_client::InventoryServiceClient,
    },
    payment::v1::{
        AuthorizeRequest, AuthorizeResponse, CaptureRequest, PaymentStatus, RefundRequest,
        VoidRequest, payment_service_client::PaymentServiceClient,
    },
};
use shop_resilience::{CircuitBreaker, Metrics, Policy};
use shop_runtime::grpc::PeerChannel;
use tonic::{Code, Status, metadata::MetadataMap};
use uuid::Uuid;

use crate::{
    card::Card,
    config::OrderConfig,
    saga::{Outcome, Reason},
};

/// The breakers' metric names: `order_circuit_breaker_state{downstream}` is what the
/// `CircuitBreakerOpen` alert (`deploy/helm/shop/files/prometheus/alerts.yml`) reads.
///
/// The breaker itself is the shared one (`shop_resilience`, also the gateway's); only these
/// names are order-service's, so the two callers' breakers show apart on a dashboard.
const BREAKER_METRICS: Metrics = Metrics {
    state: "order_circuit_breaker_state",
    transitions: "order_circuit_breaker_transitions_total",
    peer_label: "downstream",
};

/// Why a call produced no answer from the participant itself.
///
/// Kept apart from [`Outcome`] because the same error means different things per step: a
/// `FAILED_PRECONDITION` is "out of stock" for `Reserve` and "captured already" for `Void`.
/// The `*_outcome` functions below make that call, one per step.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The participant answered with an error status (a refusal, a validation error), tonic
    /// reported that it could not reach it, or our own deadline ran out; the code tells which.
    #[error("{0}")]
    Status(Status),
    /// The breaker is open: the call was not made. Carries the method's name for the log.
    #[error("the circuit breaker of {0} is open")]
    Open(&'static str),
    /// No service token (user-service unreachable or our credentials refused). The call was
    /// not made: a participant would refuse it without a token anyway.
    #[error("no service token: {0}")]
    Token(String),
}

impl CallError {
    /// The gRPC code the saga and the metrics see: a call not made (open breaker, no token)
    /// counts as `Unavailable`, so it is retried later like an unreachable participant.
    pub fn code(&self) -> Code {
        match self {
            Self::Status(status) => status.code(),
            Self::Open(_) | Self::Token(_) => Code::Unavailable,
        }
    }
}

/// The code of a status that says "the service did not answer", as opposed to an answer:
/// what counts against the breaker.
///
/// tonic reports a connection the peer closed or refused as `UNAVAILABLE` or, when it dropped
/// mid-request, `CANCELLED` (this service never cancels its own calls: a deadline is reported
/// as `DEADLINE_EXCEEDED`).
fn is_unreachable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// Worth repeating at once: the request never reached the handler or was shed under load.
///
/// `DEADLINE_EXCEEDED` is missing on purpose: the participant may still be working on that
/// request, and repeating it at once would only add a second one behind it.
fn is_retryable_now(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Cancelled | Code::ResourceExhausted | Code::Aborted
    )
}

/// The three downstreams, their breakers and the caller's credentials.
///
/// Cheap to clone (channels and `Arc`s), shared by the API (pricing) and the driver (steps),
/// so both count against the same breakers.
#[derive(Debug, Clone)]
pub struct Participants {
    /// Prices the lines of a new order.
    catalog: CatalogServiceClient<PeerChannel>,
    /// Reserves, commits and releases stock.
    inventory: InventoryServiceClient<PeerChannel>,
    /// Authorizes, captures, voids and refunds.
    payment: PaymentServiceClient<PeerChannel>,
    /// This service's token cache, one token for all three.
    tokens: Arc<ServiceTokens>,
    /// One breaker per downstream: a participant that is down must not stop calls to the
    /// others.
    catalog_breaker: Arc<CircuitBreaker>,
    /// See `catalog_breaker`.
    inventory_breaker: Arc<CircuitBreaker>,
    /// See `catalog_breaker`.
    payment_breaker: Arc<CircuitBreaker>,
    /// `ORDER_CALL_TIMEOUT_MS`: the deadline of one call.
    call_timeout: Duration,
}

impl Participants {
    /// The clients, connecting lazily (order-service starts while a participant is down), with
    /// one breaker per participant: one participant down must not stop calls to the others.
    ///
    /// Fails only when the configuration cannot make a client at all (the service-token
    /// client, a channel for a URL): a boot error, since no saga could run without them.
    pub fn new(config: &OrderConfig) -> Result<Self, String> {
        let timeout = config.saga.call_timeout;
        let tokens = config.credentials.tokens().map_err(|err| err.to_string())?;
        let policy = Policy {
            failures_to_open: config.breaker_failures,
            open_for: config.breaker_cooldown,
        };
        let breaker = |name| Arc::new(CircuitBreaker::new(name, policy, BREAKER_METRICS));
        // Lazy channels (order-service starts, and serves reads, while a participant is still
        // down), TLS to https:// URLs with the configured CA (ADR 0017), each balanced over
        // every pod of its participant (`shop_runtime::grpc::peers`).
        let channel = |url| config.grpc.channel(url, timeout);
        Ok(Self {
            catalog: CatalogServiceClient::new(channel(&config.catalog_url)?),
            inventory: InventoryServiceClient::new(channel(&config.inventory_url)?),
            payment: PaymentServiceClient::new(channel(&config.payment_url)?),
            tokens: Arc::new(tokens),
            catalog_breaker: breaker("catalog"),
            inventory_breaker: breaker("inventory"),
            payment_breaker: breaker("payment"),
            call_timeout: timeout,
        })
    }

    /// One logical call: breaker, token, deadline, trace context, quick retries.
    ///
    /// Generic over the request and the client method, so the pricing call and the seven
    /// calls of the saga's steps (the refund included) share one policy instead of eight
    /// copies of it.
    ///
    /// At most two retries, 50 to 400 ms apart with jitter, and only for codes that say the
    /// request was not handled (unreachable, cancelled in transit, shed, aborted): a repeat of
    /// those is harmless, and the participants' idempotency per order covers the rare case where
    /// it was handled after all. A call that ran out of time is not repeated here; the driver
    /// decides about it from the saga row. Every attempt is counted in
    /// `order_downstream_calls_total{method, code}`.
    async fn call<Req, Resp, F, Fut>(
        &self,
        breaker: &CircuitBreaker,
        method: &'static str,
        message: Req,
        send: F,
    ) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(400))
            .with_max_times(2)
            .build();
        loop {
            let result = self.once(breaker, method, message.clone(), &send).await;
            let code = match &result {
                Ok(_) => Code::Ok,
                Err(err) => err.code(),
            };
            metrics::counter!("order_downstream_calls_total",
                "method" => method, "code" => format!("{code:?}"))
            .increment(1);
            match (result, delays.next()) {
                (Err(CallError::Status(status)), Some(delay))
                    if is_retryable_now(status.code()) =>
                {
                    tracing::debug!(method, code = ?status.code(), ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                (result, _) => return result,
            }
        }
    }

    /// One attempt of a call. The token and the trace context are set on every attempt (a
    /// retry may need a fresh token); the breaker is asked last, so a call it refuses never
    /// reaches the participant. Only "no answer" counts against the breaker: a refusal proves
    /// the participant is up.
    async fn once<Req, Resp, F, Fut>(
        &self,
        breaker: &CircuitBreaker,
        method: &'static str,
        message: Req,
        send: &F,
    ) -> Result<Resp, CallError>
    where
        F: Fn(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = tonic::Request::new(message);
        self.tokens
            .authorize(&mut request)
            .await
            .map_err(|err| CallError::Token(err.to_string()))?;
        request.set_timeout(self.call_timeout);
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        shop_runtime::telemetry::inject_context(&mut headers);
        *request.metadata_mut() = MetadataMap::from_headers(headers);

        let Some(call) = breaker.call() else {
            return Err(CallError::Open(method));
        };
        // The deadline is also enforced here: `grpc-timeout` only asks the server to give up.
        let answer = match tokio::time::timeout(self.call_timeout, send(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{method}: no answer within {:?}",
                self.call_timeout
            ))),
        };
        // The service answered (a refusal is an answer): it is up.
        call.record(
            answer
                .as_ref()
                .map_or_else(|status| !is_unreachable(status.code()), |_| true),
        );
        answer
            .map(tonic::Response::into_inner)
            .map_err(CallError::Status)
    }

    /// catalog `GetProducts`: every product of an order in one call.
    ///
    /// Returns the products found and the ids catalog does not know; the API turns the latter
    /// into field errors. Used while placing, before anything is stored, so an error here is
    /// simply the request's error.
    ///
    /// The only call that returns a [`CallError`] instead of an [`Outcome`]: there is no saga
    /// yet to decide about it, and the API answers 503 with `Retry-After`, asking the client to
    /// repeat the request with the same `Idempotency-Key`.
    pub async fn products(
        &self,
        ids: Vec<String>,
    ) -> Result<(Vec<Product>, Vec<String>), CallError> {
        let client = self.catalog.clone();
        let response = self
            .call(
                &self.catalog_breaker,
                "catalog.GetProducts",
                GetProductsRequest { ids },
                |request| {
                    let mut client = client.clone();
                    async move { client.get_products(request).await }
                },
            )
            .await?;
        Ok((response.products, response.missing_ids))
    }

    /// inventory `Reserve`: all lines or none.
    ///
    /// `lines` are the order's lines summed per sku (the driver reads them from `order_lines`),
    /// so a repeat after a lost answer sends the same request and inventory replays its first
    /// reservation instead of refusing "other lines".
    pub async fn reserve(&self, order_id: Uuid, lines: Vec<(String, u32)>) -> Outcome {
        let client = self.inventory.clone();
        let message = reserve_request(order_id, lines);
        let result = self
            .call(
                &self.inventory_breaker,
                "inventory.Reserve",
                message,
                |request| {
                    let mut client = client.clone();
                    async move { client.reserve(request).await }
                },
            )
            .await;
        reserve_outcome(result.map(drop))
    }

    /// payment `Authorize` of the order's total; `Some(last4)` of the card when authorized.
    ///
    /// Takes the decrypted [`Card`] by value: it is moved into the request and gone when the
    /// call returns.
    pub async fn authorize(
        &self,
        order_id: Uuid,
        user_id: Uuid,
        amount: Money,
        card: Card,
    ) -> (Outcome, Option<String>) {
        let client = self.payment.clone();
        let message = AuthorizeRequest {
            order_id: order_id.to_string(),
            user_id: user_id.to_string(),
            amount: Some(amount),
            card: Some(shop_proto::payment::v1::Card {
                number: card.number,
                expiry: card.expiry,
                cvc: card.cvc,
            }),
        };
        let result = self
            .call(
                &self.payment_breaker,
                "payment.Authorize",
                message,
                |request| {
                    let mut client = client.clone();
                    async move { client.authorize(request).await }
                },
            )
            .await;
        authorize_outcome(result)
    }

    /// inventory `Commit`: the pivot. A refusal means the reservation is gone (expired).
    ///
    /// `NOT_FOUND` counts as a refusal too: a commit is only sent after a successful reserve,
    /// so inventory answering that it has no reservation means it holds no stock for the
    /// order either way, and the saga compensates.
    pub async fn commit(&self, order_id: Uuid) -> Outcome {
        let client = self.inventory.clone();
        let result = self
            .call(
                &self.inventory_breaker,
                "inventory.Commit",
                CommitRequest {
                    order_id: order_id.to_string(),
                },
                |request| {
                    let mut client = client.clone();
                    async move { client.commit(request).await }
                },
            )
            .await;
        commit_outcome(result.map(drop))
    }

    /// payment `Capture`, and what payment said when it refused.
    ///
    /// The detail is kept (it becomes the saga's `last_error` and, on a refusal, its
    /// `parked_reason`) because a refused capture is handed to a person, who needs payment's
    /// words rather than a status code.
    pub async fn capture(&self, order_id: Uuid) -> (Outcome, Option<String>) {
        let client = self.payment.clone();
        let result = self
            .call(
                &self.payment_breaker,
                "payment.Capture",
                CaptureRequest {
                    order_id: order_id.to_string(),
                },
                |request| {
                    let mut client = client.clone();
                    async move { client.capture(request).await }
                },
            )
            .await;
        let detail = match &result {
            Err(CallError::Status(status)) => Some(status.message().to_owned()),
            Err(err) => Some(err.to_string()),
            Ok(_) => None,
        };
        (
            capture_outcome(result.map(|response| response.status())),
            detail,
        )
    }

    /// payment `Void` of the order's authorization, or `Refund` if it turns out captured.
    ///
    /// The refund happens within the same step, so the saga sees one outcome for "give the
    /// money back" whichever of the two it took. A repeat of the whole step (after a lost
    /// answer) is safe either way: the void replays, and the refund is keyed so it refunds
    /// once.
    pub async fn void(&self, order_id: Uuid) -> Outcome {
        let client = self.payment.clone();
        let result = self
            .call(
                &self.payment_breaker,
                "payment.Void",
                VoidRequest {
                    order_id: order_id.to_string(),
                },
                |request| {
                    let mut client = client.clone();
                    async move { client.void(request).await }
                },
            )
            .await;
        match void_outcome(result.map(|response| response.status())) {
            Voided::Settled(outcome) => outcome,
            Voided::Captured => self.refund(order_id).await,
        }
    }

    /// payment `Refund` of everything captured, under the empty key: the saga's one
    /// compensation refund, so a repeat refunds nothing more.
    async fn refund(&self, order_id: Uuid) -> Outcome {
        let client = self.payment.clone();
        let result = self
            .call(
                &self.payment_breaker,
                "payment.Refund",
                RefundRequest {
                    order_id: order_id.to_string(),
                    reason: "order cancelled".into(),
                    ..RefundRequest::default()
                },
                |request| {
                    let mut client = client.clone();
                    async move { client.refund(request).await }
                },
            )
            .await;
        refund_outcome(result.map(|response| response.status()))
    }

    /// inventory `Release`: a no-op when nothing is reserved.
    ///
    /// The saga's cancellation reason travels as the release's reason (`compensation` when the
    /// saga has none), so inventory's `StockReleased` says why the stock came back.
    pub async fn release(&self, order_id: Uuid, reason: Option<Reason>) -> Outcome {
        let client = self.inventory.clone();
        let result = self
            .call(
                &self.inventory_breaker,
                "inventory.Release",
                ReleaseRequest {
                    order_id: order_id.to_string(),
                    reason: reason.map_or("compensation", Reason::as_str).to_owned(),
                },
                |request| {
                    let mut client = client.clone();
                    async move { client.release(request).await }
                },
            )
            .await;
        release_outcome(result.map(drop))
    }
}

// What each answer means for the saga. Pure functions, so the contract tests run exactly this
// code on the examples in `contracts/`.

/// The `Reserve` request for an order's lines.
///
/// Public so the contract test builds the request exactly as the saga does. The order id is
/// the whole idempotency key: inventory keeps one reservation per order.
pub fn reserve_request(order_id: Uuid, lines: Vec<(String, u32)>) -> ReserveRequest {
    ReserveRequest {
        order_id: order_id.to_string(),
        lines: lines
            .into_iter()
            .map(|(sku, quantity)| Line { sku, quantity })
            .collect(),
    }
}

/// How inventory words a `Reserve` refused for lack of stock (`inventory.proto`: "Not enough
/// stock for: <sku>, <sku>"). Its other `FAILED_PRECONDITION` answers to `Reserve` say that the
/// order's own reservation ended, which is not a shortage.
pub const OUT_OF_STOCK_MESSAGE: &str = "Not enough stock for: ";

/// What inventory's answer to `Reserve` means for the saga; no answer is unknown and retried.
///
/// * Not enough stock (or a sku inventory does not stock at all): cancelled as `out_of_stock`.
/// * Any other refusal: the order's reservation was released or expired before this attempt —
///   an earlier attempt reserved, its answer was lost, and the retries outlasted the
///   reservation. Inventory has already put the stock back; the saga was too slow, so the
///   order is cancelled as `timeout`. (The third refusal the proto names, a reservation of
///   other lines, cannot come from this service: an order's lines never change.)
///
/// Public and pure, so the contract tests check each mapping against the provider's answers.
pub fn reserve_outcome(result: Result<(), CallError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(CallError::Status(status))
            if status.code() == Code::NotFound
                || (status.code() == Code::FailedPrecondition
                    && status.message().starts_with(OUT_OF_STOCK_MESSAGE)) =>
        {
            Outcome::Refused(Reason::OutOfStock)
        }
        Err(CallError::Status(status)) if status.code() == Code::FailedPrecondition => {
            Outcome::Refused(Reason::Timeout)
        }
        Err(err) => unknown("inventory.Reserve", &err),
    }
}

/// The outcome of `Authorize`, and the card's last four digits when authorized.
///
/// A decline carries payment's reason code, which `decline` turns into the order's
/// cancellation reason. A status payment should never answer to an authorization (pending,
/// voided, refunded) is treated as unknown and asked again later, not guessed at.
pub fn authorize_outcome(
    result: Result<AuthorizeResponse, CallError>,
) -> (Outcome, Option<String>) {
    match result {
        Ok(response) => match response.status() {
            PaymentStatus::Authorized | PaymentStatus::Captured => {
                (Outcome::Done, Some(response.card_last4))
            }
            PaymentStatus::Declined => (Outcome::Refused(decline(&response.decline_reason)), None),
            other => {
                tracing::warn!(status = ?other, "unexpected authorization status");
                (Outcome::Unknown, None)
            }
        },
        // A card payment-service refuses outright (malformed, expired) is a decline.
        Err(CallError::Status(status))
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ) =>
        {
            (Outcome::Refused(Reason::PaymentDeclined), None)
        }
        Err(err) => (unknown("payment.Authorize", &err), None),
    }
}

/// `Commit`: a refusal means the reservation is gone (it expired), so nothing was committed.
///
/// The refusal's reason is always `timeout`: whatever inventory said, the saga was too slow
/// for its reservation, and that is what the customer is told.
pub fn commit_outcome(result: Result<(), CallError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(CallError::Status(status))
            if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) =>
        {
            Outcome::Refused(Reason::Timeout)
        }
        Err(err) => unknown("inventory.Commit", &err),
    }
}

/// `Capture`: a refusal (`FAILED_PRECONDITION`: the provider refused, e.g. an expired
/// authorization, or the payment is not capturable) is told apart from an unknown outcome:
/// retrying it would change nothing, so the saga parks for an operator instead of looping.
///
/// An answer other than `CAPTURED` is unknown rather than done: the saga only confirms an
/// order once payment says the money was taken.
pub fn capture_outcome(result: Result<PaymentStatus, CallError>) -> Outcome {
    match result {
        Ok(PaymentStatus::Captured) => Outcome::Done,
        Ok(status) => {
            tracing::error!(?status, "capture did not capture");
            Outcome::Unknown
        }
        Err(CallError::Status(status)) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(message = status.message(), "payment refused the capture");
            Outcome::Refused(Reason::PaymentDeclined)
        }
        Err(err) => unknown("payment.Capture", &err),
    }
}

/// What a `Void` answer leaves to do.
///
/// A type of its own because one answer ("already captured") needs a second call, which
/// [`Participants::void`] makes before the saga hears anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voided {
    /// The void answered for itself; the outcome goes to the saga as is.
    Settled(Outcome),
    /// The payment was captured after all: refund it.
    Captured,
}

/// `Void` is final on payment's side: it voids what exists and leaves a tombstone that refuses
/// any authorization landing later (even for an order payment has never seen), so `VOIDED` and
/// `DECLINED` (nothing held) settle the question of money for good.
pub fn void_outcome(result: Result<PaymentStatus, CallError>) -> Voided {
    match result {
        Ok(PaymentStatus::Voided | PaymentStatus::Refunded | PaymentStatus::Declined) => {
            Voided::Settled(Outcome::Done)
        }
        Ok(PaymentStatus::Captured | PaymentStatus::PartiallyRefunded) => Voided::Captured,
        // Never seen (a payment-service without tombstones): nothing is authorized *yet*; the
        // saga keeps looking for a late authorization for a while.
        Ok(PaymentStatus::Unspecified) => Voided::Settled(Outcome::NothingToUndo),
        Ok(PaymentStatus::Authorized) => Voided::Settled(Outcome::Unknown),
        Err(CallError::Status(status)) if status.code() == Code::NotFound => {
            Voided::Settled(Outcome::NothingToUndo)
        }
        // "Void after capture" is a forbidden transition: give the money back instead.
        Err(CallError::Status(status)) if status.code() == Code::FailedPrecondition => {
            Voided::Captured
        }
        Err(err) => Voided::Settled(unknown("payment.Void", &err)),
    }
}

/// What payment's answer to `Refund` means on the way back: refunded means the order had been
/// captured after all; "nothing to refund" means there is nothing to undo.
///
/// `REFUNDED` is required, not `PARTIALLY_REFUNDED`: the saga's refund asks for everything
/// captured, so anything less is a surprise to retry, not a success.
pub fn refund_outcome(result: Result<PaymentStatus, CallError>) -> Outcome {
    match result {
        Ok(PaymentStatus::Refunded) => Outcome::AlreadyCaptured,
        Ok(status) => {
            tracing::error!(?status, "refund did not refund");
            Outcome::Unknown
        }
        // Nothing captured to refund (and, after the void's refusal, nothing to void).
        Err(CallError::Status(status))
            if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) =>
        {
            Outcome::NothingToUndo
        }
        Err(err) => unknown("payment.Refund", &err),
    }
}

/// What inventory's answer to `Release` means on the way back: no reservation (`NotFound`) is
/// nothing to undo, so a compensation retried after a lost answer still ends.
///
/// A refusal (`FAILED_PRECONDITION`: the reservation was committed) is left unknown and
/// retried, and so parks after [`crate::saga::State::park_after`] attempts: committed stock
/// on the way back means the saga went wrong, and a person should look.
pub fn release_outcome(result: Result<(), CallError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(CallError::Status(status)) if status.code() == Code::NotFound => Outcome::NothingToUndo,
        Err(err) => unknown("inventory.Release", &err),
    }
}

/// payment's decline code as the order's cancellation reason: insufficient funds is worth
/// telling the customer, every other code is a plain decline.
///
/// A code this service does not know (one payment adds later) is a plain decline too, so a
/// new code never blocks an order.
fn decline(reason: &str) -> Reason {
    if reason == "insufficient_funds" {
        Reason::InsufficientFunds
    } else {
        Reason::PaymentDeclined
    }
}

/// Logs why a call gave no usable answer (at info: the saga handles it) and classifies it as
/// unknown.
fn unknown(method: &'static str, err: &CallError) -> Outcome {
    tracing::info!(method, error = %err, "no usable answer; the saga retries later");
    Outcome::Unknown
}
