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
        proxy::{self, Saturation, Side, Target, at_rate, median, saturate_beside},
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct ProductResults {
    pub path: String,
    pub saturation: Saturation,
    /// nginx proxying scenario 1's path, saturated in the windows between the product read's.
    pub nginx: Option<Saturation>,
    /// Each pair's `product read / nginx` throughput, in the order run.
    pub paired_ratios: Vec<f64>,
    pub points: Vec<Measured>,
    /// The median of [`Self::paired_ratios`]: nginx is measured again here, window by window
    /// beside the product read, rather than taken from scenario 1 minutes earlier (the
    /// machine's speed drifts between minutes; a pair shares it).
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
    nginx: Option<Target>,
    product_id: &str,
    token: &str,
    profile_dir: Option<&Path>,
) -> anyhow::Result<ProductResults> {
    let path = format!("/api/v1/products/{product_id}");
    let read: Side = (
        gateway,
        Arc::new(CachedRead(Fixed {
            path: path.clone(),
            headers: vec![(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            )],
        })),
    );
    let profile_to = profile_dir.map(|dir| (dir, "gateway-product"));
    say!("scenario 2: product read saturation, windows alternating with nginx's (when installed)");
    let nginx = nginx.map(|nginx| -> Side { (nginx, proxy::get(proxy::PATH)) });
    let (nginx, saturation, paired_ratios, profile) =
        saturate_beside(nginx, read.clone(), settings, profile_to).await;
    say!(
        "  {:.0} req/s ({} not cache hits), paired ratios to nginx {paired_ratios:.3?}",
        saturation.measured.ok_rate,
        saturation.measured.refused
    );
    let mut points = Vec::new();
    for fraction in &settings.product_fractions {
        let rate = (saturation.measured.ok_rate * fraction).round().max(10.0);
        let measured = at_rate(&read, settings, rate).await;
        say!(
            "scenario 2: {rate:.0} req/s: p99 {:.2} ms",
            measured.latency.p99_ms
        );
        points.push(measured);
    }
    Ok(ProductResults {
        path,
        ratio_to_nginx: median(&paired_ratios),
        saturation,
        nginx,
        paired_ratios,
        points,
        profile,
    })
}
