//! Scenario 2, product read: `GET /api/v1/products/{id}` through the gateway of the running
//! system, with a user's bearer token, the rate limit counted (its limit set far above the
//! load), answered from the Redis cache. Only answers marked `X-Cache: HIT` count as
//! successes, so a run that silently went to catalog would show as refusals.
//!
//! The product routes are public, so the gateway never verifies that token. Beside it, the
//! *authenticated read* `GET /api/v1/users/me` costs what a signed-in request costs: the
//! gateway verifies the JWT (and counts the address's and the user's limits), forwards it, and
//! user-service verifies it again before one primary-key read in PostgreSQL.

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
    /// The authenticated read (`GET /api/v1/users/me`), saturated beside nginx like the
    /// product read.
    pub authenticated: Option<AuthenticatedRead>,
    /// The median of [`Self::paired_ratios`]: nginx is measured again here, window by window
    /// beside the product read, rather than taken from scenario 1 minutes earlier (the
    /// machine's speed drifts between minutes; a pair shares it).
    pub ratio_to_nginx: Option<f64>,
    pub profile: Option<String>,
}

/// `GET /api/v1/users/me`: JWT verified at the gateway and in user-service.
#[derive(Debug, Clone, Serialize)]
pub struct AuthenticatedRead {
    pub path: String,
    pub saturation: Saturation,
    pub nginx: Option<Saturation>,
    pub paired_ratios: Vec<f64>,
    /// The median of [`Self::paired_ratios`].
    pub ratio_to_nginx: Option<f64>,
}

/// A read that succeeds only with `200 OK` (anything else, a 401 included, is a refusal) and,
/// when `cache_hit` is set, only when the gateway answered from its cache (`X-Cache: HIT`): a
/// run that silently went to catalog shows as refusals.
#[derive(Debug)]
struct Read {
    fixed: Fixed,
    cache_hit: bool,
}

impl Exchange for Read {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>> {
        self.fixed.request(ticket)
    }

    fn response(&self, _: &Ticket, status: StatusCode, headers: &HeaderMap, _: Bytes) -> Outcome {
        let hit = || headers.get("x-cache").is_some_and(|v| v == "HIT");
        if status == StatusCode::OK && (!self.cache_hit || hit()) {
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
    let bearer = vec![(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    )];
    let read: Side = (
        gateway,
        Arc::new(Read {
            fixed: Fixed {
                path: path.clone(),
                headers: bearer.clone(),
            },
            cache_hit: true,
        }),
    );
    let profile_to = profile_dir.map(|dir| (dir, "gateway-product"));
    say!("scenario 2: product read saturation, windows alternating with nginx's (when installed)");
    let nginx = nginx.map(|nginx| -> Side { (nginx, proxy::get(proxy::PATH)) });
    let (nginx_saturation, saturation, paired_ratios, profile) =
        saturate_beside(nginx.clone(), read.clone(), settings, profile_to).await;
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

    let me = "/api/v1/users/me";
    say!("scenario 2: authenticated read {me}, windows alternating with nginx's");
    let authenticated: Side = (
        gateway,
        Arc::new(Read {
            fixed: Fixed {
                path: me.to_owned(),
                headers: bearer,
            },
            cache_hit: false,
        }),
    );
    let (me_nginx, me_saturation, me_ratios, _) =
        saturate_beside(nginx.clone(), authenticated, settings, None).await;
    say!(
        "  {:.0} req/s ({} refused), paired ratios to nginx {me_ratios:.3?}",
        me_saturation.measured.ok_rate,
        me_saturation.measured.refused
    );
    let authenticated = AuthenticatedRead {
        path: me.to_owned(),
        ratio_to_nginx: median(&me_ratios),
        saturation: me_saturation,
        nginx: me_nginx,
        paired_ratios: me_ratios,
    };
    Ok(ProductResults {
        path,
        authenticated: Some(authenticated),
        ratio_to_nginx: median(&paired_ratios),
        saturation,
        nginx: nginx_saturation,
        paired_ratios,
        points,
        profile,
    })
}
