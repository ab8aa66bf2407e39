//! Scenario 2, product read: `GET /api/v1/products/{id}` through the gateway of the running
//! system, with a user's bearer token, the rate limit counted (its limit set far above the
//! load), answered from the Redis cache. Only answers marked `X-Cache: HIT` count as
//! successes, so a run that silently went to catalog would show as refusals.

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::{
    http::{Exchange, Fixed},
    loadgen::{Measured, Outcome, Ticket},
    say,
    scenarios::{
        Settings,
        proxy::{Saturation, Target, at_rate, saturate_with},
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct ProductResults {
    pub path: String,
    pub saturation: Saturation,
    pub points: Vec<Measured>,
    /// Saturation throughput / nginx's in scenario 1.
    pub ratio_to_nginx: Option<f64>,
    pub profile: Option<String>,
}

/// The cached product read; anything but a cache hit is a refusal.
#[derive(Debug)]
struct CachedRead(Fixed);

impl Exchange for CachedRead {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>> {
        self.0.request(ticket)
    }

    fn response(&self, _: &Ticket, status: StatusCode, headers: &HeaderMap, _: Bytes) -> Outcome {
        if status == StatusCode::OK && headers.get("x-cache").is_some_and(|v| v == "HIT") {
            Outcome::Ok
        } else {
            Outcome::Refused(status.as_u16())
        }
    }
}

pub async fn run_scenario(
    settings: &Settings,
    gateway: Target,
    product_id: &str,
    token: &str,
    nginx_saturation: Option<f64>,
    profile_dir: Option<&Path>,
) -> anyhow::Result<ProductResults> {
    let path = format!("/api/v1/products/{product_id}");
    let exchange = Arc::new(CachedRead(Fixed {
        path: path.clone(),
        headers: vec![(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        )],
    }));
    say!("scenario 2: product read, saturation");
    let (saturation, profile) = saturate_with(
        gateway,
        settings,
        exchange.clone(),
        profile_dir.map(|dir| (dir, "gateway-product")),
    )
    .await;
    say!(
        "  {:.0} req/s ({} not cache hits)",
        saturation.measured.ok_rate,
        saturation.measured.refused
    );
    let mut points = Vec::new();
    for fraction in &settings.product_fractions {
        let rate = (saturation.measured.ok_rate * fraction).round().max(10.0);
        let measured = at_rate(gateway, settings, exchange.clone(), rate).await;
        say!(
            "scenario 2: {rate:.0} req/s: p99 {:.2} ms",
            measured.latency.p99_ms
        );
        points.push(measured);
    }
    Ok(ProductResults {
        path,
        ratio_to_nginx: nginx_saturation.map(|nginx| saturation.measured.ok_rate / nginx),
        saturation,
        points,
        profile,
    })
}
