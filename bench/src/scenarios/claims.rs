//! Scenario 6, the documents' speed claims: what the source documents this system was designed
//! from say about speed, each put to a measurement on this system instead of being repeated.
//!
//! | claim | A | B |
//! |---|---|---|
//! | gRPC is much faster than REST/JSON | catalog's `GetProducts` for one id, over gRPC | catalog's `GET /api/v1/products/{id}`, the same product from the same store |
//! | a cache makes reads dramatically faster | the gateway's product read, answered from Redis | the same read through a second gateway whose entries are never fresh (`CACHE_FRESH_SECONDS=0`): Redis lookup, catalog, Redis write — a miss every time |
//! | composition saves the client round trips | `GET /api/v1/orders/{id}`, composed by the gateway | the calls a client makes without it: the order straight from order-service, then each of its two products through the gateway (cache hits) |
//!
//! Each pair is measured the way scenario 1 measures the gateway against nginx: closed-loop
//! saturation windows taken in turns (A, B, A, …) so a pair shares whatever else the machine
//! was doing, the median of the pairs' throughput ratios; the CPU the serving processes spent
//! per 1,000 answers; and the latency of one call on an idle system (one worker, back to back).
//!
//! The comparisons are as even as this system allows, and where they are not, the report says
//! so: catalog's gRPC API checks a service token on every call (its REST read is public), and
//! the "three calls" read the order without the gateway (which would compose it anyway).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http::HeaderValue;
use serde::Serialize;
use shop_proto::catalog::v1::{GetProductsRequest, catalog_service_client::CatalogServiceClient};
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::{
    http::{Exchange, Fixed, HttpWorker},
    loadgen::{Measured, Outcome, Plan, Ticket, Worker, run},
    say,
    scenarios::{
        Settings,
        proxy::{Saturation, median, summarise},
    },
    stack::cpu_seconds,
};

/// One claim, both ways of doing the same thing, and how they compare.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    /// What the documents claim, in our words.
    pub claim: String,
    pub a: WayResults,
    pub b: WayResults,
    /// `A / B` saturation throughput: the median of the paired windows' ratios.
    pub throughput_ratio: Option<f64>,
    /// `B / A` median latency of one call on an idle system: how many times longer B takes.
    pub idle_latency_ratio: Option<f64>,
    /// `B / A` CPU per 1,000 answers of the processes that serve them.
    pub cpu_ratio: Option<f64>,
    /// What keeps the comparison from being exactly like for like.
    pub caveat: String,
}

/// What one way measured.
#[derive(Debug, Clone, Serialize)]
pub struct WayResults {
    pub label: String,
    /// The processes whose CPU is counted (their names).
    pub served_by: Vec<String>,
    pub saturation: Saturation,
    /// One worker, back to back, for `settings.point`: the service time of one call.
    pub idle: Measured,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClaimsResults {
    pub connections: usize,
    pub claims: Vec<Claim>,
}

/// One way of getting the data, as the load generator's worker. An enum rather than a boxed
/// trait object: [`Worker::call`] returns `impl Future`, which keeps it off `dyn`.
enum Caller {
    /// One HTTP request per call, on the worker's own keep-alive connection.
    Http(HttpWorker<dyn Exchange>),
    /// One gRPC call per call, on the worker's own HTTP/2 connection.
    Grpc {
        client: CatalogServiceClient<Channel>,
        id: String,
        token: MetadataValue<tonic::metadata::Ascii>,
    },
    /// Several HTTP requests one after the other, each depending on the first: what a client
    /// does to show an order with its products when nobody composes it.
    Sequence {
        client: reqwest::Client,
        urls: Vec<String>,
        token: String,
    },
}

impl Worker for Caller {
    async fn call(&mut self, ticket: Ticket) -> Outcome {
        match self {
            Self::Http(worker) => worker.call(ticket).await,
            Self::Grpc { client, id, token } => {
                let mut request = tonic::Request::new(GetProductsRequest {
                    ids: vec![id.clone()],
                });
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
                match client.get_products(request).await {
                    Ok(answer) if answer.get_ref().products.len() == 1 => Outcome::Ok,
                    Ok(_) => Outcome::Refused(404),
                    Err(status) => Outcome::Refused(grpc_as_http(status.code())),
                }
            }
            Self::Sequence {
                client,
                urls,
                token,
            } => {
                for url in urls.iter() {
                    match client.get(url).bearer_auth(&*token).send().await {
                        Ok(response) if response.status().is_success() => {
                            if response.bytes().await.is_err() {
                                return Outcome::Error;
                            }
                        }
                        Ok(response) => return Outcome::Refused(response.status().as_u16()),
                        Err(_) => return Outcome::Error,
                    }
                }
                Outcome::Ok
            }
        }
    }
}

/// A gRPC failure counted under the HTTP status a REST API would have answered.
fn grpc_as_http(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound => 404,
        tonic::Code::InvalidArgument => 422,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Unavailable => 503,
        tonic::Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// One way of doing it: a label, the processes that do the work, and a fresh worker.
pub struct Way {
    pub label: String,
    pub served_by: Vec<(String, u32)>,
    make: Arc<dyn Fn() -> Caller + Send + Sync>,
}

impl std::fmt::Debug for Way {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Way")
            .field("label", &self.label)
            .field("served_by", &self.served_by)
            .finish_non_exhaustive()
    }
}

impl Way {
    fn workers(&self, count: usize) -> Vec<Caller> {
        (0..count).map(|_| (self.make)()).collect()
    }

    fn cpu_seconds(&self) -> Option<f64> {
        self.served_by
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .sum()
    }

    /// One request of `exchange` per call on `addr`, judged by the exchange.
    pub fn http(
        label: &str,
        served_by: Vec<(String, u32)>,
        addr: SocketAddr,
        exchange: Arc<dyn Exchange>,
    ) -> Self {
        Self {
            label: label.to_owned(),
            served_by,
            make: Arc::new(move || {
                Caller::Http(HttpWorker::many(addr, exchange.clone(), 1).remove(0))
            }),
        }
    }

    /// catalog's `GetProducts` for `id`, with a service token.
    pub fn grpc(
        label: &str,
        served_by: Vec<(String, u32)>,
        url: &str,
        id: &str,
        token: &str,
    ) -> Result<Self> {
        let endpoint = Channel::from_shared(url.to_owned())?;
        let token: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .context("a service token is valid metadata")?;
        let id = id.to_owned();
        Ok(Self {
            label: label.to_owned(),
            served_by,
            make: Arc::new(move || Caller::Grpc {
                client: CatalogServiceClient::new(endpoint.connect_lazy()),
                id: id.clone(),
                token: token.clone(),
            }),
        })
    }

    /// `urls` one after the other with the user's token, each worker its own client.
    pub fn sequence(
        label: &str,
        served_by: Vec<(String, u32)>,
        urls: Vec<String>,
        token: &str,
    ) -> Self {
        let token = token.to_owned();
        Self {
            label: label.to_owned(),
            served_by,
            make: Arc::new(move || Caller::Sequence {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap_or_default(),
                urls: urls.clone(),
                token: token.clone(),
            }),
        }
    }
}

/// A signed-in `GET path` whose answer must come from the expected side of the cache:
/// `Some("HIT")` for `X-Cache: HIT`, `None` for no `X-Cache` at all (catalog answered). A
/// cache-hit measurement that silently missed (or the reverse) shows as refusals, not as a
/// number.
#[derive(Debug)]
pub struct CacheRead {
    pub read: Fixed,
    pub expected: Option<&'static str>,
}

impl CacheRead {
    pub fn new(path: &str, token: &str, expected: Option<&'static str>) -> Result<Self> {
        Ok(Self {
            read: Fixed {
                path: path.to_owned(),
                headers: vec![(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {token}"))?,
                )],
            },
            expected,
        })
    }
}

impl Exchange for CacheRead {
    fn request(&self, ticket: &Ticket) -> http::Request<http_body_util::Full<bytes::Bytes>> {
        self.read.request(ticket)
    }

    fn response(
        &self,
        _: &Ticket,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        _: bytes::Bytes,
    ) -> Outcome {
        let cache = headers.get("x-cache").and_then(|v| v.to_str().ok());
        if status == http::StatusCode::OK && cache == self.expected {
            Outcome::Ok
        } else {
            Outcome::Refused(status.as_u16())
        }
    }
}

/// Measures `a` against `b`: a warm-up of each, then the idle latency and the saturation
/// windows, both taken in turns.
pub async fn compare(settings: &Settings, claim: &str, caveat: &str, a: Way, b: Way) -> Claim {
    say!("scenario 6: {claim}: {} vs {}", a.label, b.label);
    let warm = Plan::saturate(settings.saturation / 5);
    for way in [&a, &b] {
        let _ = run(&warm, way.workers(settings.connections)).await;
    }
    let mut idle: [Vec<Measured>; 2] = Default::default();
    let mut windows: [Vec<Measured>; 2] = Default::default();
    let mut cpu = [Some(0.0); 2];
    for _ in 0..settings.saturation_windows.max(1) {
        for (side, way) in [&a, &b].into_iter().enumerate() {
            idle[side].push(run(&Plan::saturate(settings.point), way.workers(1)).await);
            let before = way.cpu_seconds();
            windows[side].push(
                run(
                    &Plan::saturate(settings.saturation),
                    way.workers(settings.connections),
                )
                .await,
            );
            cpu[side] = match (cpu[side], before, way.cpu_seconds()) {
                (Some(sum), Some(before), Some(after)) => Some(sum + after - before),
                _ => None,
            };
        }
    }
    let ratios: Vec<f64> = windows[0]
        .iter()
        .zip(&windows[1])
        .filter(|(_, b)| b.ok_rate > 0.0)
        .map(|(a, b)| a.ok_rate / b.ok_rate)
        .collect();
    let [idle_a, idle_b] = idle.map(median_by_p50);
    let [windows_a, windows_b] = windows;
    let [cpu_a, cpu_b] = cpu;
    let results = |way: &Way, windows, cpu, idle| WayResults {
        label: way.label.clone(),
        served_by: way.served_by.iter().map(|(name, _)| name.clone()).collect(),
        saturation: summarise(windows, cpu),
        idle,
    };
    let a = results(&a, windows_a, cpu_a, idle_a);
    let b = results(&b, windows_b, cpu_b, idle_b);
    let ratio = |numerator: f64, denominator: f64| {
        (denominator > 0.0 && numerator.is_finite()).then(|| numerator / denominator)
    };
    let claim = Claim {
        claim: claim.to_owned(),
        throughput_ratio: median(&ratios),
        idle_latency_ratio: ratio(b.idle.service_time.p50_ms, a.idle.service_time.p50_ms),
        cpu_ratio: match (a.saturation.cpu_ms_per_1k, b.saturation.cpu_ms_per_1k) {
            (Some(a), Some(b)) => ratio(b, a),
            _ => None,
        },
        caveat: caveat.to_owned(),
        a,
        b,
    };
    say!(
        "  {:.0} vs {:.0} answers/s (paired ratio {:.2?}), idle p50 {:.3} vs {:.3} ms, CPU {:.1?} vs {:.1?} ms per 1,000",
        claim.a.saturation.measured.ok_rate,
        claim.b.saturation.measured.ok_rate,
        claim.throughput_ratio,
        claim.a.idle.service_time.p50_ms,
        claim.b.idle.service_time.p50_ms,
        claim.a.saturation.cpu_ms_per_1k,
        claim.b.saturation.cpu_ms_per_1k,
    );
    claim
}

/// The window whose median service time is the median of the windows'.
fn median_by_p50(mut windows: Vec<Measured>) -> Measured {
    windows.sort_by(|a, b| a.service_time.p50_ms.total_cmp(&b.service_time.p50_ms));
    if windows.is_empty() {
        return Measured::default();
    }
    windows.swap_remove(windows.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_read_counts_only_answers_from_the_expected_side_of_the_cache() {
        let read = CacheRead::new("/api/v1/products/p", "t", Some("HIT")).expect("a valid token");
        let miss = CacheRead::new("/api/v1/products/p", "t", None).expect("a valid token");
        let ticket = Ticket {
            index: 0,
            due: tokio::time::Instant::now(),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-cache", HeaderValue::from_static("HIT"));
        let ok = http::StatusCode::OK;
        assert_eq!(
            read.response(&ticket, ok, &headers, bytes::Bytes::new()),
            Outcome::Ok
        );
        assert_eq!(
            miss.response(&ticket, ok, &headers, bytes::Bytes::new()),
            Outcome::Refused(200),
            "a hit counts as a refusal where a miss is measured"
        );
        assert_eq!(
            read.response(&ticket, ok, &http::HeaderMap::new(), bytes::Bytes::new()),
            Outcome::Refused(200),
            "an answer from catalog counts as a refusal where a hit is measured"
        );
        assert_eq!(
            miss.response(&ticket, ok, &http::HeaderMap::new(), bytes::Bytes::new()),
            Outcome::Ok
        );
        assert_eq!(
            read.response(
                &ticket,
                http::StatusCode::BAD_GATEWAY,
                &http::HeaderMap::new(),
                bytes::Bytes::new()
            ),
            Outcome::Refused(502)
        );
    }
}
