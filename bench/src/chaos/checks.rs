//! The invariants, read from the system's own APIs and from the stores the run owns.
//!
//! The run created every database, vhost and key prefix the services use, so it can read them
//! directly where no API shows what must be checked (stock committed per order, a payment's
//! completed operations, the outboxes). Reads go straight to the servers, never through the
//! proxies the faults are injected into.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, Result};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use url::Url;
use uuid::Uuid;

use crate::{
    chaos::load::BadAnswers,
    infra::{Infra, Slice},
    smtp::Received,
};

/// One invariant after one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// Short name, a column of the report's table.
    pub name: &'static str,
    pub held: bool,
    /// What was checked, with the counts.
    pub detail: String,
    /// Ids (orders, SKUs, queues) and why, for every violation (the first 20).
    pub evidence: Vec<String>,
}

/// The invariants' names, in the report's order.
pub const NAMES: [&str; 8] = [
    "ended",
    "stock",
    "captures",
    "holds",
    "mails",
    "outboxes",
    "dead letters",
    "no 500",
];

const EVIDENCE: usize = 20;

fn invariant(name: &'static str, detail: String, mut evidence: Vec<String>) -> Invariant {
    let total = evidence.len();
    evidence.truncate(EVIDENCE);
    if total > EVIDENCE {
        evidence.push(format!("… and {} more", total - EVIDENCE));
    }
    Invariant {
        name,
        held: total == 0,
        detail,
        evidence,
    }
}

/// What the checks need to know about the run.
#[derive(Debug)]
pub struct Context<'a> {
    pub infra: &'a Infra,
    pub slice: &'a Slice,
    /// The run's vhost (the services' broker topology lives there).
    pub vhost: String,
    /// order-service's own address (its admin routes are not in the gateway's table).
    pub order_http: std::net::SocketAddr,
    pub admin_token: &'a str,
    /// SKU → the stock the run set before the load.
    pub initial_stock: &'a BTreeMap<String, i64>,
    /// The customers the run registered (one welcome mail each).
    pub registered: &'a [String],
}

impl Context<'_> {
    fn postgres(&self, purpose: &str) -> Url {
        let mut url = self.infra.postgres.clone();
        url.set_path(&format!("/{}", self.slice.name(purpose)));
        url
    }

    async fn connect(&self, purpose: &str) -> Result<PgConnection> {
        PgConnection::connect(self.postgres(purpose).as_str())
            .await
            .with_context(|| format!("connecting to the run's {purpose} database"))
    }
}

/// An order as its database has it.
#[derive(Debug, Clone)]
struct Order {
    status: String,
    total: i64,
}

/// A payment, replayed from its completed operations as payment-service's ledger does.
#[derive(Debug, Clone, Default)]
struct Payment {
    state: &'static str,
    captures: u32,
    captured: i64,
    refunded: i64,
    declined: u32,
}

fn replay(operations: &[(String, i64)]) -> Payment {
    let mut payment = Payment {
        state: "PENDING",
        ..Payment::default()
    };
    for (outcome, amount) in operations {
        match outcome.as_str() {
            "approved" => payment.state = "AUTHORIZED",
            "declined" => {
                payment.state = "DECLINED";
                payment.declined += 1;
            }
            "captured" => {
                payment.state = "CAPTURED";
                payment.captures += 1;
                payment.captured += amount;
            }
            "voided" => payment.state = "VOIDED",
            "refunded" => {
                payment.refunded += amount;
                payment.state = if payment.refunded >= payment.captured {
                    "REFUNDED"
                } else {
                    "PARTIALLY_REFUNDED"
                };
            }
            _ => {}
        }
    }
    payment
}

/// What a mail is about, from its subject (and, for a failed payment, its text).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mail {
    Confirmed(Uuid),
    Cancelled(Uuid),
    PaymentFailed(Option<Uuid>),
    Welcome(String),
    StockAlert,
    Other(String),
}

fn header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    let mut value: Option<String> = None;
    for line in head.lines() {
        match &mut value {
            // A folded header continues on lines that start with white space.
            Some(value) if line.starts_with([' ', '\t']) => {
                value.push(' ');
                value.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some((key, rest)) = line.split_once(':')
                    && key.eq_ignore_ascii_case(name)
                {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
    }
    value
}

/// The first UUID after `marker` in `text`.
fn uuid_after(text: &str, marker: &str) -> Option<Uuid> {
    text.match_indices(marker).find_map(|(at, _)| {
        let rest = text.get(at + marker.len()..)?.trim_start();
        rest.get(..36)?.parse().ok()
    })
}

pub fn classify(mail: &Received) -> Mail {
    let subject = header(&mail.data, "Subject").unwrap_or_default();
    let order = uuid_after(&subject, "Your order ");
    match order {
        Some(id) if subject.ends_with("is confirmed") => Mail::Confirmed(id),
        Some(id) if subject.ends_with("was cancelled") => Mail::Cancelled(id),
        _ if subject.starts_with("Your payment of") => {
            // Quoted-printable soft line breaks removed, so a wrapped id reads whole.
            let text = mail.data.replace("=\r\n", "").replace("=\n", "");
            Mail::PaymentFailed(uuid_after(&text, "for your order"))
        }
        _ if subject.starts_with("Welcome to the shop") => {
            Mail::Welcome(mail.to.first().cloned().unwrap_or_default())
        }
        _ if subject.starts_with("Stock low") || subject.starts_with("Out of stock") => {
            Mail::StockAlert
        }
        _ => Mail::Other(subject),
    }
}

/// Every invariant, as the stores and APIs show them now.
pub async fn evaluate(
    ctx: &Context<'_>,
    accepted: &HashSet<Uuid>,
    mails: &[Received],
    bad: &BadAnswers,
) -> Result<Vec<Invariant>> {
    let mut orders_db = ctx.connect("orders").await?;
    let orders: HashMap<Uuid, Order> =
        sqlx::query_as::<_, (Uuid, String, i64)>("SELECT id, status, total_amount FROM orders")
            .fetch_all(&mut orders_db)
            .await?
            .into_iter()
            .map(|(id, status, total)| (id, Order { status, total }))
            .collect();
    let lines: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT order_id, sku, quantity::bigint FROM order_lines")
            .fetch_all(&mut orders_db)
            .await?;
    let _ = orders_db.close().await;
    let parked = parked(ctx).await?;
    let ended = |id: &Uuid| {
        orders
            .get(id)
            .is_some_and(|order| order.status != "PENDING")
    };

    // Every accepted order ended (or waits, parked, for an operator).
    let mut evidence = Vec::new();
    for id in accepted {
        if !orders.contains_key(id) {
            evidence.push(format!(
                "{id}: accepted (202) but not in the orders database"
            ));
        }
    }
    let mut pending = 0;
    for (id, order) in &orders {
        if order.status == "PENDING" && !parked.contains(id) {
            pending += 1;
            evidence.push(format!("{id}: still PENDING and not parked"));
        }
    }
    let by_status = |status: &str| orders.values().filter(|o| o.status == status).count();
    let ended_check = invariant(
        "ended",
        format!(
            "{} orders ({} accepted by the load, others placed without an answer): {} confirmed, {} cancelled, {} parked, {pending} neither",
            orders.len(),
            accepted.len(),
            by_status("CONFIRMED"),
            by_status("CANCELLED"),
            parked.len(),
        ),
        evidence,
    );

    // Stock conserved, and committed exactly for the orders past the pivot.
    let mut inventory = ctx.connect("inventory").await?;
    let stock: HashMap<String, (i64, i64)> =
        sqlx::query_as::<_, (String, i64, i64)>("SELECT sku, available, reserved FROM stock")
            .fetch_all(&mut inventory)
            .await?
            .into_iter()
            .map(|(sku, available, reserved)| (sku, (available, reserved)))
            .collect();
    let reservations: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT order_id, status FROM reservations")
            .fetch_all(&mut inventory)
            .await?
            .into_iter()
            .collect();
    let committed_lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l.sku, l.quantity FROM reservation_lines l JOIN reservations r USING (order_id) WHERE r.status = 'committed'",
    )
    .fetch_all(&mut inventory)
    .await?;
    let _ = inventory.close().await;
    let mut committed: HashMap<&str, i64> = HashMap::new();
    for (sku, quantity) in &committed_lines {
        *committed.entry(sku.as_str()).or_default() += quantity;
    }
    let mut evidence = Vec::new();
    for (sku, initial) in ctx.initial_stock {
        let Some((available, reserved)) = stock.get(sku) else {
            evidence.push(format!("{sku}: no stock row"));
            continue;
        };
        let committed = committed.get(sku.as_str()).copied().unwrap_or_default();
        if available + committed != *initial || *reserved != 0 {
            evidence.push(format!(
                "{sku}: available {available} + committed {committed} = {} (set to {initial}), reserved {reserved}",
                available + committed
            ));
        }
    }
    let mut sold: HashMap<&str, i64> = HashMap::new();
    for (id, sku, quantity) in &lines {
        let status = reservations.get(id).map(String::as_str);
        let order = orders.get(id).map(|o| o.status.as_str());
        match (order, status) {
            (Some("CONFIRMED"), Some("committed")) => {
                *sold.entry(sku.as_str()).or_default() += quantity
            }
            (Some("CONFIRMED"), other) => evidence.push(format!(
                "{id}: CONFIRMED but its reservation is {}",
                other.unwrap_or("missing")
            )),
            (Some("CANCELLED"), Some("committed")) => {
                evidence.push(format!("{id}: CANCELLED but its stock is committed"))
            }
            (_, Some("reserved")) if ended(id) => {
                evidence.push(format!("{id}: ended but its stock is still reserved"))
            }
            _ => {}
        }
    }
    let total_committed: i64 = committed.values().sum();
    let total_sold: i64 = sold.values().sum();
    let stock_check = invariant(
        "stock",
        format!(
            "{} SKUs: available + committed = the stock set, nothing reserved; {total_committed} units committed, {total_sold} of them for confirmed orders (the rest: parked past the pivot)",
            ctx.initial_stock.len()
        ),
        evidence,
    );

    // Payments: replayed from their completed operations.
    let mut payments_db = ctx.connect("payments").await?;
    let operations: Vec<(Uuid, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT p.order_id, o.outcome, o.amount FROM payments p
         LEFT JOIN payment_operations o ON o.payment_id = p.id AND o.phase = 'completed'
         ORDER BY p.order_id, o.seq",
    )
    .fetch_all(&mut payments_db)
    .await?;
    let _ = payments_db.close().await;
    let mut by_order: BTreeMap<Uuid, Vec<(String, i64)>> = BTreeMap::new();
    for (order, outcome, amount) in operations {
        let entry = by_order.entry(order).or_default();
        if let Some(outcome) = outcome {
            entry.push((outcome, amount.unwrap_or_default()));
        }
    }
    let payments: BTreeMap<Uuid, Payment> = by_order
        .iter()
        .map(|(order, ops)| (*order, replay(ops)))
        .collect();
    let mut evidence = Vec::new();
    for (id, order) in &orders {
        let payment = payments.get(id);
        let captures = payment.map_or(0, |p| p.captures);
        match order.status.as_str() {
            "CONFIRMED" => match payment {
                Some(p) if p.captures == 1 && p.captured == order.total => {}
                Some(p) => evidence.push(format!(
                    "{id}: CONFIRMED, total {}: {} capture(s) of {} in all",
                    order.total, p.captures, p.captured
                )),
                None => evidence.push(format!("{id}: CONFIRMED without a payment")),
            },
            "CANCELLED" if captures > 0 => {
                let p = payment.cloned().unwrap_or_default();
                evidence.push(format!(
                    "{id}: CANCELLED with {captures} capture(s) of {} ({} refunded, {})",
                    p.captured, p.refunded, p.state
                ));
            }
            _ => {}
        }
    }
    for id in payments.keys() {
        if !orders.contains_key(id) {
            evidence.push(format!("{id}: a payment for an order that does not exist"));
        }
    }
    let confirmed = by_status("CONFIRMED");
    let captures_check = invariant(
        "captures",
        format!(
            "{confirmed} confirmed orders each captured once for their total; {} payments in all, {} with a capture",
            payments.len(),
            payments.values().filter(|p| p.captures > 0).count()
        ),
        evidence,
    );

    let mut evidence = Vec::new();
    for (id, payment) in &payments {
        if ended(id) && matches!(payment.state, "AUTHORIZED" | "PENDING") {
            evidence.push(format!(
                "{id}: order {}, payment still {}",
                orders[id].status, payment.state
            ));
        }
    }
    let standing = payments
        .values()
        .filter(|p| p.state == "AUTHORIZED")
        .count();
    let holds_check = invariant(
        "holds",
        format!(
            "no AUTHORIZED or PENDING payment on an ended order ({standing} authorizations standing, on unended orders)"
        ),
        evidence,
    );

    // Mails: one per order event that sends one, none missing, none doubled.
    let mut received: HashMap<Mail, usize> = HashMap::new();
    let mut message_ids: HashMap<Mail, Vec<String>> = HashMap::new();
    for mail in mails {
        let kind = classify(mail);
        *received.entry(kind.clone()).or_default() += 1;
        message_ids
            .entry(kind)
            .or_default()
            .push(header(&mail.data, "Message-ID").unwrap_or_default());
    }
    let mut expected: HashMap<Mail, usize> = HashMap::new();
    for (id, order) in &orders {
        match order.status.as_str() {
            "CONFIRMED" => expected.insert(Mail::Confirmed(*id), 1),
            "CANCELLED" => expected.insert(Mail::Cancelled(*id), 1),
            _ => None,
        };
        let declined = payments.get(id).map_or(0, |p| p.declined as usize);
        if declined > 0 {
            expected.insert(Mail::PaymentFailed(Some(*id)), declined);
        }
    }
    for email in ctx.registered {
        expected.insert(Mail::Welcome(email.clone()), 1);
    }
    let mut evidence = Vec::new();
    let mut keys: Vec<&Mail> = expected.keys().chain(received.keys()).collect();
    keys.sort();
    keys.dedup();
    for mail in keys {
        let want = expected.get(mail).copied().unwrap_or_default();
        let got = received.get(mail).copied().unwrap_or_default();
        // Welcome mails of users the run did not register (the seeded admin) and stock
        // alerts are not the load's; everything else must match.
        let theirs = matches!(mail, Mail::Welcome(_) | Mail::StockAlert) && want == 0;
        if want != got && !theirs {
            // A copy with the Message-ID of the first is notification's documented
            // at-least-once resend (the process died between the server's 250 and recording
            // it); a receiver that deduplicates on Message-ID shows one mail. Said, not excused.
            let ids = message_ids.get(mail).cloned().unwrap_or_default();
            let same = got > 1 && ids.iter().all(|id| !id.is_empty() && *id == ids[0]);
            let why = if same {
                format!(" (each with Message-ID {})", ids[0])
            } else {
                String::new()
            };
            evidence.push(format!("{mail:?}: {got} received, {want} expected{why}"));
        }
    }
    let mails_check = invariant(
        "mails",
        format!(
            "{} mails expected (confirmed, cancelled, payment failed per order; welcome per customer), {} received",
            expected.values().sum::<usize>(),
            mails.len()
        ),
        evidence,
    );

    let outboxes_check = outboxes(ctx).await?;
    let dead_letters_check = dead_letters(ctx).await?;
    let answers_check = invariant(
        "no 500",
        format!(
            "{} answers from the public API were a 500 or a 5xx without a problem document",
            bad.count
        ),
        bad.examples.clone(),
    );
    Ok(vec![
        ended_check,
        stock_check,
        captures_check,
        holds_check,
        mails_check,
        outboxes_check,
        dead_letters_check,
        answers_check,
    ])
}

/// The parked sagas, from order-service's admin API.
async fn parked(ctx: &Context<'_>) -> Result<HashSet<Uuid>> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/admin/sagas/parked",
            ctx.order_http
        ))
        .bearer_auth(ctx.admin_token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()
        .context("GET /api/v1/admin/sagas/parked")?
        .json()
        .await?;
    Ok(body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["order_id"].as_str()?.parse().ok())
        .collect())
}

/// Every outbox drained: `messaging.outbox` (and nothing given up on in
/// `messaging.outbox_parked`) in each PostgreSQL database, no pending `outbox` entry and nothing
/// in `messaging_outbox_parked` in each MongoDB one.
async fn outboxes(ctx: &Context<'_>) -> Result<Invariant> {
    let mut evidence = Vec::new();
    for purpose in ["users", "inventory", "payments", "orders"] {
        let mut db = ctx.connect(purpose).await?;
        for table in ["messaging.outbox", "messaging.outbox_parked"] {
            let rows: Vec<(String,)> =
                sqlx::query_as(&format!("SELECT routing_key FROM {table} LIMIT 5"))
                    .fetch_all(&mut db)
                    .await?;
            for (key,) in rows {
                evidence.push(format!("{purpose}: {table} holds {key}"));
            }
        }
        let _ = db.close().await;
    }
    let client = mongodb::Client::with_uri_str(&ctx.infra.mongodb).await?;
    for purpose in ["catalog", "notification"] {
        let db = client.database(&ctx.slice.name(purpose));
        for collection in db.list_collection_names().await? {
            let filter = if collection == "messaging_outbox_parked" {
                mongodb::bson::doc! {}
            } else {
                mongodb::bson::doc! { "outbox": { "$exists": true, "$ne": {} } }
            };
            let count = db
                .collection::<mongodb::bson::Document>(&collection)
                .count_documents(filter)
                .await?;
            if count > 0 {
                evidence.push(format!(
                    "{purpose}: {count} document(s) in {collection} with events not relayed"
                ));
            }
        }
    }
    Ok(invariant(
        "outboxes",
        "messaging.outbox and messaging.outbox_parked empty in the four PostgreSQL databases; no pending or parked outbox entry in the two MongoDB ones".into(),
        evidence,
    ))
}

/// Every parking (dead-letter) queue of the run's vhost empty, or each message explained.
async fn dead_letters(ctx: &Context<'_>) -> Result<Invariant> {
    let mut api = ctx.infra.rabbitmq_api.clone();
    let user = api.username().to_owned();
    let password = api.password().unwrap_or_default().to_owned();
    let _ = api.set_username("");
    let _ = api.set_password(None);
    let http = reqwest::Client::new();
    let queues: Vec<serde_json::Value> = http
        .get(api.join(&format!("api/queues/{}?columns=name", ctx.vhost))?)
        .basic_auth(&user, Some(&password))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let parking: Vec<String> = queues
        .iter()
        .filter_map(|q| q["name"].as_str())
        .filter(|name| name.ends_with(".parking"))
        .map(str::to_owned)
        .collect();
    let mut evidence = Vec::new();
    for queue in &parking {
        // A peek (requeued): the management API's message counts lag by a stats interval.
        let messages: Vec<serde_json::Value> = http
            .post(api.join(&format!("api/queues/{}/{queue}/get", ctx.vhost))?)
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({
                "count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2000
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for message in messages {
            let headers = &message["properties"]["headers"];
            let reason = headers["shop-failure-reason"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    headers["x-death"][0]["reason"]
                        .as_str()
                        .map(|r| format!("x-death {r}"))
                })
                .unwrap_or_else(|| "no reason given".into());
            evidence.push(format!(
                "{queue}: {} ({reason})",
                message["routing_key"].as_str().unwrap_or("?")
            ));
        }
    }
    Ok(invariant(
        "dead letters",
        format!(
            "{} parking queues on the run's vhost, each peeked",
            parking.len()
        ),
        evidence,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(to: &str, data: &str) -> Received {
        Received {
            to: vec![to.into()],
            data: data.into(),
        }
    }

    #[test]
    fn mails_are_told_apart_by_subject_and_order() {
        let id = Uuid::new_v4();
        assert_eq!(
            classify(&mail(
                "a@x",
                &format!("From: s\r\nSubject: Your order {id} is confirmed\r\n\r\nbody\r\n")
            )),
            Mail::Confirmed(id)
        );
        assert_eq!(
            classify(&mail(
                "a@x",
                &format!("Subject: Your order\r\n {id} was cancelled\r\nTo: a@x\r\n\r\nb\r\n")
            )),
            Mail::Cancelled(id)
        );
        let text = id.to_string();
        let (head, tail) = text.split_at(20);
        assert_eq!(
            classify(&mail(
                "a@x",
                &format!(
                    "Subject: Your payment of 19.99 EUR did not go through\r\n\r\nfor your order {head}=\r\n{tail}\r\nfrom"
                )
            )),
            Mail::PaymentFailed(Some(id))
        );
        assert_eq!(
            classify(&mail(
                "ada@x",
                "Subject: Welcome to the shop, Ada\r\n\r\nhi"
            )),
            Mail::Welcome("ada@x".into())
        );
    }

    #[test]
    fn a_payment_is_replayed_as_the_ledger_does() {
        let ops = |list: &[(&str, i64)]| {
            list.iter()
                .map(|(o, a)| ((*o).to_owned(), *a))
                .collect::<Vec<_>>()
        };
        let p = replay(&ops(&[("approved", 100), ("captured", 100)]));
        assert_eq!((p.state, p.captures, p.captured), ("CAPTURED", 1, 100));
        assert_eq!(replay(&ops(&[])).state, "PENDING");
        assert_eq!(replay(&ops(&[("approved", 100)])).state, "AUTHORIZED");
        assert_eq!(
            replay(&ops(&[("approved", 100), ("voided", 0)])).state,
            "VOIDED"
        );
        let p = replay(&ops(&[("declined", 0)]));
        assert_eq!((p.state, p.declined), ("DECLINED", 1));
    }
}
