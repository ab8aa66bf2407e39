//! Forwarding one public request to the service that owns it.
//!
//! The order of the checks: the route is known (routing); the caller's *address* is charged
//! its rate limit (in memory, settled in Redis in batches; a login attempt in Redis first,
//! [`crate::ratelimit`]);
//! the caller is authenticated and authorised (a signature check, in memory) and a signed-in
//! caller is charged the *user* limit too; the body is read (bounded); the upstream's circuit
//! and bulkhead are asked (in memory) — and only then does a request leave the gateway, on a
//! pooled keep-alive connection.
//!
//! The address is charged before the token is looked at, though the signature check is the
//! cheaper of the two: a request whose token fails costs a signature check and, charged after
//! it, would never be counted at all — a flood of forged tokens would be free and unlimited.
//!
//! Forwarding uses hyper-util's pooled client directly rather than reqwest (which wraps the
//! same client): each upstream's scheme and authority are parsed once at start, so a request
//! costs no URL parsing, no redirect policy and no per-attempt timer of a general-purpose
//! client. `make bench` measured the difference (bench/findings.md).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use shop_auth::{Principal, Verifier, http::AuthRejection};
use shop_resilience::{CircuitBreaker, Metrics, Policy};
use shop_runtime::{ApiError, ErrorKind};
use tokio::sync::Semaphore;

use crate::{
    cache::{Lookup, ResponseCache},
    ratelimit::{Counting, Decision, Limits, RateLimiter, Subject, write_headers},
    routes::{Access, LimitClass, Route, Upstream},
};

/// Each upstream's circuit breaker ([`shop_resilience`]): after 5 consecutive failures
/// (unreachable, timed out, 502–504) calls fail fast with 503 for 5 s, sparing a service that
/// is down a stream of doomed requests and the clients a timeout each; then one trial call.
pub const BREAKER: Policy = Policy {
    failures_to_open: 5,
    open_for: Duration::from_secs(5),
};

/// The breakers' metric names: `gateway_circuit_state{upstream}` (0 closed, 1 half-open, 2 open).
const BREAKER_METRICS: Metrics = Metrics {
    state: "gateway_circuit_state",
    transitions: "gateway_circuit_transitions_total",
    peer_label: "upstream",
};

/// The client every forwarded request and every composition call goes out on.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One pooled client for every upstream: keep-alive connections are reused across requests,
/// so the hot path pays no TCP handshake. Plain HTTP inside the cluster (TLS ends at the
/// ingress); no proxy from the environment; redirects go back to the client untouched.
///
/// An idle connection is given up after 20 s: the services close one after their header read
/// deadline (`HTTP_HEADER_READ_TIMEOUT_SECONDS`, 30 s, `shop_runtime::http::serve`), and a
/// pooled connection must never be reused just as its server is closing it (the request would
/// fail, and a `POST` is not retried).
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(20))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Everything a request needs, shared by all of them.
#[derive(Debug)]
pub struct Proxy {
    /// One pooled client for every upstream: keep-alive connections are reused across requests.
    pub client: HttpClient,
    pub upstreams: Vec<UpstreamState>,
    pub verifier: Verifier,
    pub limiter: RateLimiter,
    pub limits: Limits,
    pub cache: ResponseCache,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub trust_forwarded_for: bool,
}

/// One upstream: where it is and how it is protected.
#[derive(Debug)]
pub struct UpstreamState {
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without a trailing slash (usually empty); the request's path and
    /// query are appended.
    prefix: String,
    /// The bulkhead: at most `UPSTREAM_CONCURRENCY` requests in flight to this upstream, so a
    /// slow service ties up a bounded share of the gateway's connections and tasks; requests
    /// beyond it are refused at once with 503 instead of queueing until everything times out.
    pub bulkhead: Semaphore,
    /// The circuit breaker, [`BREAKER`].
    pub breaker: CircuitBreaker,
}

impl UpstreamState {
    /// Parses `base` once. Only `http://host[:port][/path]` URLs are valid (the configuration
    /// checks that at start), so a malformed one is refused here with the reason.
    pub fn new(upstream: Upstream, base: &url::Url, concurrency: usize) -> Result<Self, String> {
        let uri: Uri = base
            .as_str()
            .parse()
            .map_err(|err| format!("{} URL '{base}': {err}", upstream.name()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("{} URL '{base}' has no host", upstream.name()));
        };
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            bulkhead: Semaphore::new(concurrency),
            breaker: CircuitBreaker::new(upstream.name(), BREAKER, BREAKER_METRICS),
        })
    }

    /// The upstream's URI for a public request's path and query.
    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let path_and_query = if self.prefix.is_empty() {
            PathAndQuery::try_from(path_and_query)?
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names, and the ones the
/// gateway sets itself (`Host` and `Content-Length` come from the new request, trace context
/// from the gateway's own span).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    headers.remove(header::CONTENT_LENGTH);
}

/// Methods a retry cannot turn into a second effect (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// How one attempt at the upstream ended, when it did not produce a response.
#[derive(Debug)]
pub(crate) enum Failure {
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    TimedOut,
}

impl Proxy {
    /// Serves `request` for `route`.
    pub async fn handle(self: Arc<Self>, route: &'static Route, request: Request) -> Response {
        match self.forward(route, request).await {
            Ok(response) => response,
            Err(rejection) => rejection,
        }
    }

    async fn forward(&self, route: &'static Route, request: Request) -> Result<Response, Response> {
        let (parts, body) = request.into_parts();
        if has_dot_segment(parts.uri.path()) {
            return Err(
                ApiError::not_found(format!("No route for {}.", parts.uri.path())).into_response(),
            );
        }
        let subject = self.address_subject(route, &parts);
        let cacheable = self.cache.applies_to(route, &parts.method);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        // A cacheable read asks Redis for the rate-limit decision and the cached answer at once:
        // both travel on the one multiplexed connection, so the hottest path waits for one round
        // trip instead of two. The price: a refused read costs Redis a lookup it did not need,
        // whose answer is dropped here (the decision is checked first, below).
        let (decision, lookup) = if cacheable {
            let (decision, lookup) = tokio::join!(
                self.limiter.check(&subject),
                self.cache.fresh(path_and_query)
            );
            (decision, Some(lookup))
        } else {
            (self.limiter.check(&subject).await, None)
        };
        let mut decisions = vec![decision];
        if !decisions[0].allowed {
            return Err(too_many_requests(&decisions));
        }
        let principal = match self.authorize(route.access, &parts.headers).await {
            Ok(principal) => principal,
            Err(mut refused) => {
                write_headers(&decisions, refused.headers_mut());
                return Err(refused);
            }
        };
        // A signed-in caller also spends its own budget, wherever it calls from.
        if let Some(principal) = &principal {
            let user = Subject {
                policy: "user",
                key: format!("user:{}", principal.user_id),
                limit: self.limits.user,
                counting: Counting::Batched,
            };
            decisions.push(self.limiter.check(&user).await);
            if decisions.iter().any(|decision| !decision.allowed) {
                return Err(too_many_requests(&decisions));
            }
        }

        let generation = match lookup {
            Some(Lookup {
                hit: Some(mut hit), ..
            }) => {
                self.cache.count_served_hit();
                write_headers(&decisions, hit.headers_mut());
                return Ok(hit);
            }
            Some(Lookup { generation, .. }) => Some(generation),
            None => None,
        };

        let body = read_body(body, self.max_body_bytes, &parts.headers).await?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove("traceparent");
        headers.remove("tracestate");
        shop_runtime::telemetry::inject_context(&mut headers);
        // A client's own X-Forwarded-For is not passed on unless a trusted proxy wrote it.
        let client = client_address(&parts.extensions, &headers, self.trust_forwarded_for);
        if !self.trust_forwarded_for {
            headers.remove("x-forwarded-for");
            if let Some(value) = client.and_then(|client| HeaderValue::from_str(&client).ok()) {
                headers.insert("x-forwarded-for", value);
            }
        }

        let outcome = self
            .call(
                route.upstream,
                &parts.method,
                path_and_query,
                &headers,
                &body,
            )
            .await;
        let mut response = match outcome {
            Ok(response) => {
                if let Some(generation) = generation
                    && response.status() == StatusCode::OK
                {
                    self.cache
                        .store(path_and_query, generation, &response.0, &response.1)
                        .await;
                }
                if cacheable && matches!(response.status().as_u16(), 502..=504) {
                    self.stale_or(path_and_query, response.finish()).await
                } else {
                    response.finish()
                }
            }
            Err(failure) => {
                self.failed(cacheable, path_and_query, route.upstream, failure)
                    .await
            }
        };
        write_headers(&decisions, response.headers_mut());
        if route.credentials {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
                .headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        Ok(response)
    }

    /// Checks the route's access rule; returns the principal when a token was required.
    async fn authorize(
        &self,
        access: Access,
        headers: &HeaderMap,
    ) -> Result<Option<Principal>, Response> {
        if access == Access::Public {
            return Ok(None);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
            })
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(AuthRejection(ApiError::new(
                ErrorKind::Unauthorized,
                "Send an access token: Authorization: Bearer <token>.",
            ))
            .into_response());
        };
        let principal = self
            .verifier
            .principal(token)
            .await
            .map_err(|err| AuthRejection(err).into_response())?;
        if access == Access::Admin {
            principal
                .require_admin()
                .map_err(|err| AuthRejection(err).into_response())?;
        }
        Ok(Some(principal))
    }

    /// The budget a request is charged before its token is looked at: the client address's,
    /// `auth` on the credential routes, `address` on every other.
    fn address_subject(&self, route: &Route, parts: &http::request::Parts) -> Subject {
        let address = client_address(&parts.extensions, &parts.headers, self.trust_forwarded_for)
            .unwrap_or_else(|| "unknown".to_owned());
        match route.limit {
            LimitClass::Auth => Subject {
                policy: "auth",
                key: format!("auth:{address}"),
                limit: self.limits.auth,
                // It stops password guessing: every attempt counted in Redis first.
                counting: Counting::Exact,
            },
            LimitClass::Standard => Subject {
                policy: "address",
                key: format!("addr:{address}"),
                limit: self.limits.address,
                counting: Counting::Batched,
            },
        }
    }

    /// One call to `upstream` through its bulkhead and circuit breaker, the answer read whole.
    /// `Err(None)`: refused here without calling (bulkhead full, circuit open);
    /// `Err(Some(_))`: the upstream gave no answer. Forwarded requests and the calls the
    /// gateway makes on its own ([`crate::compose`]) share this path, so they share the
    /// upstream's protection too.
    pub(crate) async fn call(
        &self,
        upstream: Upstream,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Buffered, Option<Failure>> {
        let state = &self.upstreams[upstream.index()];
        // Bulkhead first: a refused call must not take the circuit's half-open trial slot.
        let Ok(_permit) = state.bulkhead.try_acquire() else {
            metrics::counter!("gateway_bulkhead_rejected_total", "upstream" => upstream.name())
                .increment(1);
            return Err(None);
        };
        let call = state.breaker.call().ok_or(None)?;
        let uri = state
            .uri(path_and_query)
            .map_err(|err| Some(Failure::Unreachable(err.into())))?;
        let result = self.send(upstream, method, &uri, headers, body).await;
        call.record(match &result {
            Ok(response) => !matches!(response.status().as_u16(), 502..=504),
            Err(_) => false,
        });
        result.map_err(Some)
    }

    /// Sends the request and reads the answer; idempotent ones are tried once more when the
    /// upstream could not be reached or answered 502/503 (a restarting instance). Others are
    /// sent once: a timed-out `POST /orders` may have been executed, and only the client (with
    /// its `Idempotency-Key`) can safely repeat it. The timeout covers one attempt, answer
    /// included.
    async fn send(
        &self,
        upstream: Upstream,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Buffered, Failure> {
        let attempts = if is_idempotent(method) { 2 } else { 1 };
        let mut last = None;
        for attempt in 1..=attempts {
            let mut request = http::Request::new(Full::new(body.clone()));
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            let result = match tokio::time::timeout(self.timeout, self.exchange(request)).await {
                Ok(result) => result,
                Err(_) => Err(Failure::TimedOut),
            };
            let outcome = match &result {
                Ok(response) if response.status().is_server_error() => "error_status",
                Ok(_) => "answered",
                Err(Failure::TimedOut) => "timeout",
                Err(Failure::Unreachable(_)) => "unreachable",
            };
            metrics::counter!(
                "gateway_upstream_attempts_total",
                "upstream" => upstream.name(),
                "outcome" => outcome
            )
            .increment(1);
            match result {
                Ok(response)
                    if attempt < attempts && matches!(response.status().as_u16(), 502 | 503) => {}
                Ok(response) => return Ok(response),
                Err(failure) => last = Some(failure),
            }
            if let Some(Failure::TimedOut) = last {
                // A timeout already cost the client the whole budget: do not double it.
                break;
            }
        }
        Err(last.unwrap_or(Failure::TimedOut))
    }

    /// One request and its whole answer (API responses are small JSON documents).
    async fn exchange(&self, request: http::Request<Full<Bytes>>) -> Result<Buffered, Failure> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| Failure::Unreachable(err.into()))?;
        let (mut parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| Failure::Unreachable(err.into()))?
            .to_bytes();
        strip_hop_by_hop(&mut parts.headers);
        parts.extensions = http::Extensions::new();
        Ok(Buffered(parts, body))
    }

    /// The answer when the upstream gave none: a cached copy for product reads
    /// (stale-if-error), otherwise 502/503/504 without internals.
    async fn failed(
        &self,
        cacheable: bool,
        path_and_query: &str,
        upstream: Upstream,
        failure: Option<Failure>,
    ) -> Response {
        metrics::counter!("gateway_upstream_failures_total", "upstream" => upstream.name())
            .increment(1);
        let error = match failure {
            None => {
                ApiError::unavailable("The service behind this route is unavailable; retry later.")
                    .into_response()
            }
            Some(Failure::TimedOut) => ApiError::new(
                ErrorKind::Timeout,
                "The service behind this route did not answer in time.",
            )
            .into_response(),
            Some(Failure::Unreachable(err)) => {
                tracing::warn!(upstream = upstream.name(), error = %err, "upstream unreachable");
                bad_gateway()
            }
        };
        if cacheable {
            self.stale_or(path_and_query, error).await
        } else {
            error
        }
    }

    async fn stale_or(&self, path_and_query: &str, error: Response) -> Response {
        match self.cache.load(path_and_query).await {
            Some(stale) => {
                metrics::counter!("gateway_cache_stale_served_total").increment(1);
                stale
            }
            None => error,
        }
    }
}

/// An upstream response read into memory (API responses are small JSON documents).
pub(crate) struct Buffered(pub(crate) http::response::Parts, pub(crate) Bytes);

impl Buffered {
    pub(crate) fn status(&self) -> StatusCode {
        self.0.status
    }

    pub(crate) fn finish(self) -> Response {
        Response::from_parts(self.0, Body::from(self.1))
    }
}

/// 429 with the state of every budget the request was charged, `Retry-After` included.
fn too_many_requests(decisions: &[Decision]) -> Response {
    let reset = decisions
        .iter()
        .filter(|decision| !decision.allowed)
        .map(|decision| decision.reset)
        .max()
        .unwrap_or(1);
    let mut response = ApiError::new(
        ErrorKind::TooManyRequests,
        format!("Too many requests; retry in {reset} s."),
    )
    .into_response();
    write_headers(decisions, response.headers_mut());
    response
}

/// Reads the body, refusing more than `limit` bytes with 413 (early, from `Content-Length`,
/// when the client announces it).
async fn read_body(body: Body, limit: usize, headers: &HeaderMap) -> Result<Bytes, Response> {
    let too_large = || {
        let mut response = ApiError::new(
            ErrorKind::BadRequest,
            format!("The request body must not exceed {limit} bytes."),
        )
        .into_response();
        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        response
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// 502 as a problem document. (`ErrorKind` has no 502: services never answer it themselves;
/// only the edge talks to another server on the caller's behalf.)
pub(crate) fn bad_gateway() -> Response {
    let mut doc = serde_json::json!({
        "type": "urn:shop:problem:bad-gateway",
        "title": "Bad gateway",
        "status": 502,
        "detail": "The service behind this route could not be reached; retry later.",
    });
    if let Some(trace_id) = shop_runtime::telemetry::current_trace_id() {
        doc["trace_id"] = trace_id.into();
    }
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, shop_runtime::error::PROBLEM_JSON)],
        doc.to_string(),
    )
        .into_response()
}

/// The client's address: the TCP peer, or — only when the operator says a trusted proxy sits in
/// front (`TRUST_FORWARDED_FOR`) — the last address that proxy appended to `X-Forwarded-For`.
/// Trusting the header otherwise would let any client pick its own rate-limit key.
fn client_address(
    extensions: &http::Extensions,
    headers: &HeaderMap,
    trust_forwarded_for: bool,
) -> Option<String> {
    if trust_forwarded_for
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .rfind(|value| !value.is_empty())
    {
        return Some(last.to_owned());
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// `.` and `..` segments (also percent-encoded) would be resolved by URL parsing on the way
/// out and could turn a public path into another one: refused.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert("idempotency-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["authorization", "idempotency-key"]);
    }

    #[test]
    fn dot_segments_are_detected_encoded_or_not() {
        assert!(has_dot_segment("/api/v1/orders/../cancel"));
        assert!(has_dot_segment("/api/v1/products/%2E%2e"));
        assert!(!has_dot_segment("/api/v1/products/a.b"));
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 10.0.0.9"),
        );
        let mut extensions = http::Extensions::new();
        extensions.insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
        assert_eq!(
            client_address(&extensions, &headers, true).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            client_address(&extensions, &headers, false).as_deref(),
            Some("127.0.0.1")
        );
    }
}
