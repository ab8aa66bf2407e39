//! The load of a chaos scenario: orders and product reads through the gateway's public API,
//! at a fixed rate on the open-loop generator of `make bench` (so a stall shows as refused or
//! late requests, never as requests that were simply not sent), and what their answers say.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use lapin::{Connection, ConnectionProperties, options::BasicConsumeOptions, types::FieldTable};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    http::Exchange,
    loadgen::{Outcome, Ticket},
    scenarios::orders::Shop,
};

pub const APPROVING_CARD: &str = "4242424242424242";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Answers a fault must not produce: a 500, or any other 5xx that is not a problem document.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BadAnswers {
    pub count: u64,
    /// `"<route> <status> <content-type>"`, the first few.
    pub examples: Vec<String>,
}

/// What the load saw, shared by its workers.
#[derive(Debug, Default)]
pub struct Seen {
    /// Accepted order → the due time of its POST.
    pub accepted: Mutex<HashMap<Uuid, Instant>>,
    /// Order → when its `order.confirmed` / `order.cancelled` event arrived (the first time).
    pub ended: Mutex<HashMap<Uuid, Instant>>,
    pub bad: Mutex<BadAnswers>,
}

impl Seen {
    pub fn accepted(&self) -> HashMap<Uuid, Instant> {
        lock(&self.accepted).clone()
    }

    pub fn ended(&self) -> HashMap<Uuid, Instant> {
        lock(&self.ended).clone()
    }

    pub fn bad(&self) -> BadAnswers {
        lock(&self.bad).clone()
    }

    /// Judges a 5xx: the gateway answers an unreachable or failing owner with a problem
    /// document (502, 503 with `Retry-After`, 504); a 500 is a bug wherever it comes from.
    fn check(&self, route: &str, status: StatusCode, headers: &HeaderMap) {
        if !status.is_server_error() {
            return;
        }
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status == StatusCode::INTERNAL_SERVER_ERROR
            || !content_type.starts_with("application/problem+json")
        {
            let mut bad = lock(&self.bad);
            bad.count += 1;
            if bad.examples.len() < 10 {
                bad.examples
                    .push(format!("{route} {} {content_type:?}", status.as_u16()));
            }
        }
    }
}

/// `POST /api/v1/orders`: user and product by turns, a fresh idempotency key, the approving
/// card — or, for tickets due inside `fault_card`'s window, the fault card.
#[derive(Debug)]
pub struct PlaceOrder {
    pub shop: Shop,
    pub seen: Arc<Seen>,
    /// `(card, first ticket, last ticket + 1)`.
    pub fault_card: Option<(&'static str, u64, u64)>,
}

impl Exchange for PlaceOrder {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>> {
        let i = usize::try_from(ticket.index).unwrap_or_default();
        let token = &self.shop.tokens[i % self.shop.tokens.len()];
        let (product, _) = &self.shop.products[i % self.shop.products.len()];
        let card = match self.fault_card {
            Some((card, from, to)) if (from..to).contains(&ticket.index) => card,
            _ => APPROVING_CARD,
        };
        let body = json!({
            "items": [{ "product_id": product, "quantity": 1 + i % 2 }],
            "payment": { "card_number": card, "expiry": "12/39", "cvc": "123" },
            "shipping_address": { "name": "Chaos User", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "DE" },
        });
        Request::post("/api/v1/orders")
            .header(http::header::HOST, "chaos")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", Uuid::new_v4().to_string())
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request")
    }

    fn response(
        &self,
        ticket: &Ticket,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Outcome {
        self.seen.check("POST /api/v1/orders", status, headers);
        if !status.is_success() {
            return Outcome::Refused(status.as_u16());
        }
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|order| order["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()));
        match id {
            Some(id) => {
                lock(&self.seen.accepted).insert(id, ticket.due);
                Outcome::Ok
            }
            None => Outcome::Refused(status.as_u16()),
        }
    }
}

/// `GET /api/v1/products/{id}`, signed in, product by turns: what the gateway's cache and rate
/// limit serve (Redis), and catalog behind them.
#[derive(Debug)]
pub struct ReadProduct {
    pub shop: Shop,
    pub seen: Arc<Seen>,
}

impl Exchange for ReadProduct {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>> {
        let i = usize::try_from(ticket.index).unwrap_or_default();
        let token = &self.shop.tokens[i % self.shop.tokens.len()];
        let (product, _) = &self.shop.products[i % self.shop.products.len()];
        Request::get(format!("/api/v1/products/{product}"))
            .header(http::header::HOST, "chaos")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }

    fn response(&self, _: &Ticket, status: StatusCode, headers: &HeaderMap, _: Bytes) -> Outcome {
        self.seen
            .check("GET /api/v1/products/{id}", status, headers);
        if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::Refused(status.as_u16())
        }
    }
}

/// Listens to the run's order events on a private queue of its own, straight on the broker
/// (never through the proxy the services use): when each order ended, as the rest of the
/// system learns it.
pub async fn observe(amqp: &str, seen: Arc<Seen>) -> anyhow::Result<Connection> {
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = shop_messaging::topology::declare_private_queue(
        &channel,
        ["order.order.confirmed", "order.order.cancelled"],
    )
    .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "shop-bench-chaos".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let id = serde_json::from_slice::<Value>(&delivery.data)
                .ok()
                .and_then(|envelope| envelope["data"]["orderId"].as_str()?.parse().ok());
            if let Some(id) = id {
                lock(&seen.ended).entry(id).or_insert_with(Instant::now);
            }
        }
    });
    Ok(connection)
}

/// Time from `healed` to the end of the first order placed after it: how long until the
/// system took an order from POST to its end again. `None` when no order placed after the
/// fault ended.
pub fn recovery(seen: &Seen, healed: Instant) -> Option<Duration> {
    let accepted = seen.accepted();
    let ended = seen.ended();
    accepted
        .iter()
        .filter(|(_, due)| **due >= healed)
        .filter_map(|(id, _)| ended.get(id))
        .min()
        .map(|end| end.saturating_duration_since(healed))
}

/// Refused answers by status, as text for the report (`503×12 502×3`).
pub fn by_status(refused: &BTreeMap<u16, u64>) -> String {
    if refused.is_empty() {
        return "–".into();
    }
    refused
        .iter()
        .map(|(status, count)| format!("{status}×{count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn recovery_is_the_first_end_of_an_order_placed_after_the_fault() {
        let seen = Seen::default();
        let start = Instant::now();
        let (before, after, later) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let healed = start + Duration::from_secs(10);
        lock(&seen.accepted).insert(before, start);
        lock(&seen.accepted).insert(after, healed + Duration::from_secs(1));
        lock(&seen.accepted).insert(later, healed + Duration::from_secs(2));
        // The order placed before the fault ended right after it healed: it says nothing about
        // whether new orders go through.
        lock(&seen.ended).insert(before, healed);
        lock(&seen.ended).insert(later, healed + Duration::from_secs(3));
        lock(&seen.ended).insert(after, healed + Duration::from_secs(4));
        assert_eq!(recovery(&seen, healed), Some(Duration::from_secs(3)));
        assert_eq!(recovery(&seen, healed + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_500_or_a_5xx_without_a_problem_document_is_bad_and_503_problem_is_not() {
        let seen = Seen::default();
        let problem = HeaderMap::from_iter([(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        )]);
        seen.check("r", StatusCode::SERVICE_UNAVAILABLE, &problem);
        seen.check("r", StatusCode::BAD_GATEWAY, &problem);
        seen.check("r", StatusCode::NOT_FOUND, &HeaderMap::new());
        assert_eq!(seen.bad().count, 0);
        seen.check("r", StatusCode::INTERNAL_SERVER_ERROR, &problem);
        seen.check("r", StatusCode::GATEWAY_TIMEOUT, &HeaderMap::new());
        assert_eq!(seen.bad().count, 2);
    }
}
