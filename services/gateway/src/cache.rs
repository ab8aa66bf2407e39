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
//! **A read that raced an invalidation is not kept.** Deleting on an event is not enough on its
//! own: a read can ask catalog *before* a change, have its answer arrive *after* the change's
//! invalidation, and then store the old answer as if it were current — where it would stay,
//! fresh, until [`FRESH_FOR`] ends, since the event that should remove it has already come and
//! gone. So every invalidation also increments a generation counter (`<prefix>cache:generation`),
//! a lookup reads that counter in the same round trip as the entry ([`Lookup::generation`]), and
//! [`ResponseCache::store`] writes only if the counter is still what the lookup saw (one script,
//! so the check and the write are atomic). The counter is shared by all products: a change to
//! one product also stops a concurrent fill of another, which costs that read nothing but a
//! later miss.
//!
//! **Stale-if-error.** An entry is kept for [`KEEP_FOR`] after it stops being fresh. While
//! catalog is down (unreachable, timing out, its circuit open) a product read is answered from
//! that copy, marked `X-Cache: STALE`, rather than failing: a slightly old catalog is better
//! than none. Everything else fails fast.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{body::Body, response::Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use shop_runtime::stores::redis::Redis;

use crate::routes::{Route, Upstream};

/// How long a cached answer is served without asking catalog (absent an invalidating event),
/// unless `CACHE_FRESH_SECONDS` says otherwise.
pub const FRESH_FOR: Duration = Duration::from_secs(300);
/// How long it is kept after that, to answer while catalog is down.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// Redis calls of the cache give up after this: a slow cache must not slow the reads down.
const CACHE_TIMEOUT: Duration = Duration::from_millis(250);

/// Deletes every listing and one product entry and moves the generation on: `KEYS[1]` the set
/// of listings, `KEYS[2]` the product's entry, `KEYS[3]` the generation. One script so no
/// listing cached meanwhile escapes the sweep.
const INVALIDATE: &str = r"
redis.call('INCR', KEYS[3])
local lists = redis.call('SMEMBERS', KEYS[1])
for _, key in ipairs(lists) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1], KEYS[2])
return #lists
";

/// Stores an entry unless an invalidation came after the lookup that missed it: `KEYS[1]` the
/// entry, `KEYS[2]` the generation, `KEYS[3]` (listings only) the set of listings; `ARGV[1]`
/// the generation the lookup saw, `ARGV[2]` seconds to keep the entry, then field, value, ...
/// Returns 1 when stored, 0 when the answer may predate a change and was dropped.
const STORE: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[3] then
  redis.call('SADD', KEYS[3], KEYS[1])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return 1
";

#[derive(Debug, Clone)]
pub struct ResponseCache {
    redis: Redis,
    invalidate: redis::Script,
    store: redis::Script,
    fresh_for: Duration,
}

/// What a lookup found: a fresh answer to serve, or else the generation to store catalog's
/// answer under (see the module docs).
#[derive(Debug)]
pub struct Lookup {
    /// A fresh cached answer, marked `X-Cache: HIT`.
    pub hit: Option<Response>,
    /// The cache's generation when the lookup was made.
    pub generation: Generation,
}

/// The cache's generation as a lookup saw it, the only thing [`ResponseCache::store`] accepts:
/// an answer can be stored only under the generation read *before* catalog was asked. Not
/// constructible outside this module, so a caller cannot read a newer one after the fact.
#[derive(Debug, Clone, Copy)]
pub struct Generation(Option<i64>);

impl Generation {
    /// Redis did not answer the lookup: nothing is stored (the write would likely fail too,
    /// and there is no generation to check it against).
    const UNKNOWN: Self = Self(None);
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
            store: redis::Script::new(STORE),
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

    fn generation_key(&self) -> String {
        self.redis.key("cache:generation")
    }

    /// A fresh cached answer for this read, if any, and the generation to store catalog's
    /// answer under otherwise. The hit is not counted until [`Self::count_served_hit`]: the
    /// proxy looks it up together with the rate-limit decision, and a refused request is not
    /// served from the cache.
    pub async fn fresh(&self, path_and_query: &str) -> Lookup {
        let (entry, generation) = self.entry(path_and_query).await;
        Lookup {
            hit: entry
                .filter(|entry| entry.fresh)
                .map(|entry| entry.into_response()),
            generation,
        }
    }

    /// Counts a fresh answer from [`Self::fresh`] that was sent to the client.
    pub fn count_served_hit(&self) {
        count_read(true);
    }

    /// A cached answer, fresh or not, marked `X-Cache: STALE` (for stale-if-error).
    pub async fn load(&self, path_and_query: &str) -> Option<Response> {
        let (entry, _) = self.entry(path_and_query).await;
        let entry = entry?;
        count_read(entry.fresh);
        Some(entry.into_response())
    }

    /// The body of a cached catalog read and whether it is still fresh, for the gateway's own
    /// reads ([`crate::compose`]): `None` when nothing is cached or Redis does not answer in
    /// time, and the generation to store catalog's answer under.
    pub async fn body(&self, path_and_query: &str) -> (Option<(Bytes, bool)>, Generation) {
        let (entry, generation) = self.entry(path_and_query).await;
        let body = entry.map(|entry| {
            count_read(entry.fresh);
            (entry.body, entry.fresh)
        });
        (body, generation)
    }

    /// The entry (if any) and the generation, read in one round trip; not counted (the
    /// callers count what they use).
    async fn entry(&self, path_and_query: &str) -> (Option<Entry>, Generation) {
        let Some((key, _)) = self.key(path_and_query) else {
            return (None, Generation::UNKNOWN);
        };
        let read = async {
            let mut conn = self.redis.connection().await?;
            redis::pipe()
                .hgetall(&key)
                .get(self.generation_key())
                .query_async::<(std::collections::HashMap<String, Vec<u8>>, Option<i64>)>(&mut conn)
                .await
        };
        let (mut entry, generation) = match tokio::time::timeout(CACHE_TIMEOUT, read).await {
            Ok(Ok(found)) => found,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "response cache unavailable");
                return (None, Generation::UNKNOWN);
            }
            Err(_) => return (None, Generation::UNKNOWN),
        };
        // A missing counter is generation 0, as the store script reads it.
        let generation = Generation(Some(generation.unwrap_or(0)));
        let Some(body) = entry.remove(BODY) else {
            return (None, generation);
        };
        let body = Bytes::from(body);
        let fresh_until: u64 = entry
            .get(FRESH_UNTIL)
            .and_then(|raw| std::str::from_utf8(raw).ok()?.parse().ok())
            .unwrap_or(0);
        let header = |field: &str| {
            entry
                .get(field)
                .and_then(|raw| HeaderValue::from_bytes(raw).ok())
        };
        (
            Some(Entry {
                content_type: header(CONTENT_TYPE),
                etag: header(ETAG),
                body,
                fresh: now_secs() < fresh_until,
            }),
            generation,
        )
    }

    /// Keeps a 200 answer of a catalog read, unless the cache was invalidated since the lookup
    /// that saw `generation` (the answer may then predate the change). Failures are logged and
    /// ignored: the cache is an optimisation, never a reason to fail a read.
    pub async fn store(
        &self,
        path_and_query: &str,
        generation: Generation,
        parts: &http::response::Parts,
        body: &Bytes,
    ) {
        let (Some((key, is_list)), Generation(Some(generation))) =
            (self.key(path_and_query), generation)
        else {
            return;
        };
        let mut invocation = self.store.prepare_invoke();
        invocation.key(&key).key(self.generation_key());
        if is_list {
            invocation.key(self.redis.key("cache:lists"));
        }
        invocation
            .arg(generation)
            .arg((self.fresh_for + KEEP_FOR).as_secs())
            .arg(BODY)
            .arg(body.as_ref())
            .arg(FRESH_UNTIL)
            .arg(now_secs() + self.fresh_for.as_secs());
        for (field, name) in [(CONTENT_TYPE, header::CONTENT_TYPE), (ETAG, header::ETAG)] {
            if let Some(value) = parts.headers.get(name) {
                invocation.arg(field).arg(value.as_bytes());
            }
        }
        let write = async {
            let mut conn = self.redis.connection().await?;
            invocation.invoke_async::<i64>(&mut conn).await
        };
        match tokio::time::timeout(CACHE_TIMEOUT, write).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => {
                tracing::debug!(path_and_query, "catalog read not cached: it raced a change");
                metrics::counter!("gateway_cache_fills_dropped_total").increment(1);
            }
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
            .key(self.generation_key())
            .invoke_async(&mut conn)
            .await?;
        metrics::counter!("gateway_cache_invalidations_total").increment(1);
        Ok(())
    }
}

impl Entry {
    /// The cached answer, marked `X-Cache: HIT` when fresh and `STALE` when not.
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        for (value, name) in [
            (self.content_type, header::CONTENT_TYPE),
            (self.etag, header::ETAG),
        ] {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
        headers.insert(
            "x-cache",
            HeaderValue::from_static(if self.fresh { "HIT" } else { "STALE" }),
        );
        response
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
