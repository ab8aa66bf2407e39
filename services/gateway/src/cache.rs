//! The response cache for catalog reads, in Redis.
//!
//! Product reads are the bulk of the traffic and change rarely, so `GET /api/v1/products` and
//! `GET /api/v1/products/{id}` answers (200 only) are kept in Redis, shared by every gateway
//! instance:
//!
//! * `<prefix>cache:item:<id>` — one product (reads without a query string only);
//! * `<prefix>cache:list:<query>` — one page of a listing, its key recorded in the set
//!   `<prefix>cache:lists`.
//!
//! **Freshness comes from events, not from a TTL.** When catalog publishes `ProductCreated`,
//! `ProductUpdated` or `PriceChanged`, [`ResponseCache::invalidate_product`] deletes that
//! product's entry and every cached listing (any page may show it), so a changed price is
//! served at most for as long as the event takes to arrive. [`FRESH_FOR`] is only a safety net
//! for a lost consumer. Deleting keys is naturally idempotent: a redelivered event deletes
//! nothing more, so the consumer needs no inbox (there is no transaction to claim one in anyway).
//!
//! **Stale-if-error.** An entry is kept for [`KEEP_FOR`] after it stops being fresh. While
//! catalog is down (unreachable, timing out, its circuit open) a product read is answered from
//! that copy, marked `X-Cache: STALE`, rather than failing: a slightly old catalog is better
//! than none. Everything else fails fast.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{body::Body, response::Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use redis::AsyncCommands;
use shop_runtime::stores::redis::Redis;

use crate::routes::{Route, Upstream};

/// How long a cached answer is served without asking catalog (absent an invalidating event),
/// unless `CACHE_FRESH_SECONDS` says otherwise.
pub const FRESH_FOR: Duration = Duration::from_secs(300);
/// How long it is kept after that, to answer while catalog is down.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// Redis calls of the cache give up after this: a slow cache must not slow the reads down.
const CACHE_TIMEOUT: Duration = Duration::from_millis(250);

/// Deletes every listing and one product entry: `KEYS[1]` the set of listings, `KEYS[2]` the
/// product's entry. One script so no listing cached meanwhile escapes the sweep.
const INVALIDATE: &str = r"
local lists = redis.call('SMEMBERS', KEYS[1])
for _, key in ipairs(lists) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1], KEYS[2])
return #lists
";

#[derive(Debug, Clone)]
pub struct ResponseCache {
    redis: Redis,
    invalidate: redis::Script,
    fresh_for: Duration,
}

/// An entry as read back.
struct Entry {
    body: Bytes,
    content_type: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    fresh: bool,
}

/// An entry as stored: a hash with the body and what is needed to answer with it.
const BODY: &str = "body";
const CONTENT_TYPE: &str = "content_type";
const ETAG: &str = "etag";
const FRESH_UNTIL: &str = "fresh_until";

impl ResponseCache {
    pub fn new(redis: Redis, fresh_for: Duration) -> Self {
        Self {
            redis,
            invalidate: redis::Script::new(INVALIDATE),
            fresh_for,
        }
    }

    /// Whether answers of `route` are cached: catalog reads.
    pub fn applies_to(&self, route: &Route, method: &Method) -> bool {
        route.upstream == Upstream::Catalog && method == Method::GET
    }

    /// The key for a request, or `None` when it is not cached (an item read with a query).
    fn key(&self, path_and_query: &str) -> Option<(String, bool)> {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(path, query)| (path, Some(query)));
        if path == "/api/v1/products" {
            return Some((
                self.redis
                    .key(&format!("cache:list:{}", query.unwrap_or(""))),
                true,
            ));
        }
        let id = path.strip_prefix("/api/v1/products/")?;
        (query.is_none() && !id.is_empty()).then(|| (self.item_key(id), false))
    }

    fn item_key(&self, id: &str) -> String {
        self.redis.key(&format!("cache:item:{id}"))
    }

    /// A fresh cached answer for this read, marked `X-Cache: HIT`. Not counted as a hit until
    /// [`Self::count_served_hit`]: the proxy looks it up together with the rate-limit decision,
    /// and a refused request is not served from the cache.
    pub async fn fresh(&self, path_and_query: &str) -> Option<Response> {
        let (response, _) = self.read(path_and_query, true).await?;
        Some(response)
    }

    /// Counts a fresh answer from [`Self::fresh`] that was sent to the client.
    pub fn count_served_hit(&self) {
        count_read(true);
    }

    /// A cached answer, fresh or not, marked `X-Cache: STALE` (for stale-if-error).
    pub async fn load(&self, path_and_query: &str) -> Option<Response> {
        let (response, fresh) = self.read(path_and_query, false).await?;
        count_read(fresh);
        Some(response)
    }

    /// The body of a cached catalog read and whether it is still fresh, for the gateway's own
    /// reads ([`crate::compose`]); `None` when nothing is cached or Redis does not answer in time.
    pub async fn body(&self, path_and_query: &str) -> Option<(Bytes, bool)> {
        let entry = self.entry(path_and_query).await?;
        count_read(entry.fresh);
        Some((entry.body, entry.fresh))
    }

    /// The cached answer and whether it is fresh; not counted (the callers count what they use).
    async fn read(&self, path_and_query: &str, fresh_only: bool) -> Option<(Response, bool)> {
        let entry = self.entry(path_and_query).await?;
        if fresh_only && !entry.fresh {
            return None;
        }
        let mut response = Response::new(Body::from(entry.body));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        for (value, name) in [
            (entry.content_type, header::CONTENT_TYPE),
            (entry.etag, header::ETAG),
        ] {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
        headers.insert(
            "x-cache",
            HeaderValue::from_static(if entry.fresh { "HIT" } else { "STALE" }),
        );
        Some((response, entry.fresh))
    }

    async fn entry(&self, path_and_query: &str) -> Option<Entry> {
        let (key, _) = self.key(path_and_query)?;
        let read = async {
            let mut conn = self.redis.connection().await?;
            conn.hgetall::<_, std::collections::HashMap<String, Vec<u8>>>(&key)
                .await
        };
        let mut entry = match tokio::time::timeout(CACHE_TIMEOUT, read).await {
            Ok(Ok(entry)) => entry,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "response cache unavailable");
                return None;
            }
            Err(_) => return None,
        };
        let body = Bytes::from(entry.remove(BODY)?);
        let fresh_until: u64 = entry
            .get(FRESH_UNTIL)
            .and_then(|raw| std::str::from_utf8(raw).ok()?.parse().ok())
            .unwrap_or(0);
        let header = |field: &str| {
            entry
                .get(field)
                .and_then(|raw| HeaderValue::from_bytes(raw).ok())
        };
        Some(Entry {
            content_type: header(CONTENT_TYPE),
            etag: header(ETAG),
            body,
            fresh: now_secs() < fresh_until,
        })
    }

    /// Keeps a 200 answer of a catalog read. Failures are logged and ignored: the cache is an
    /// optimisation, never a reason to fail a read.
    pub async fn store(&self, path_and_query: &str, parts: &http::response::Parts, body: &Bytes) {
        let Some((key, is_list)) = self.key(path_and_query) else {
            return;
        };
        let mut fields: Vec<(&str, Vec<u8>)> = vec![
            (BODY, body.to_vec()),
            (
                FRESH_UNTIL,
                (now_secs() + self.fresh_for.as_secs())
                    .to_string()
                    .into_bytes(),
            ),
        ];
        for (field, name) in [(CONTENT_TYPE, header::CONTENT_TYPE), (ETAG, header::ETAG)] {
            if let Some(value) = parts.headers.get(name) {
                fields.push((field, value.as_bytes().to_vec()));
            }
        }
        let lists = self.redis.key("cache:lists");
        let write = async {
            let mut conn = self.redis.connection().await?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .del(&key)
                .hset_multiple(&key, &fields)
                .expire(&key, (self.fresh_for + KEEP_FOR).as_secs() as i64);
            if is_list {
                pipe.sadd(&lists, &key)
                    .expire(&lists, (self.fresh_for + KEEP_FOR).as_secs() as i64);
            }
            pipe.query_async::<()>(&mut conn).await
        };
        match tokio::time::timeout(CACHE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "could not cache a catalog read"),
            Err(_) => tracing::debug!("caching a catalog read timed out"),
        }
    }

    /// Forgets product `id` and every cached listing. Idempotent.
    pub async fn invalidate_product(&self, id: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.connection().await?;
        let _: i64 = self
            .invalidate
            .key(self.redis.key("cache:lists"))
            .key(self.item_key(id))
            .invoke_async(&mut conn)
            .await?;
        metrics::counter!("gateway_cache_invalidations_total").increment(1);
        Ok(())
    }
}

/// One cache read that was used: a fresh hit or a stale copy.
fn count_read(fresh: bool) {
    metrics::counter!("gateway_cache_reads_total", "outcome" => if fresh { "hit" } else { "stale" })
        .increment(1);
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
