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
//! **A key names the answer, not the spelling of the request.** Keys made from the raw URL let
//! anyone mint entries: catalog ignored unknown parameters, so `?x=<random>` was a new entry per
//! request (kept for a day), and `/products/%61bc` cached a second copy of product `abc` that
//! the invalidation of `abc` never deleted, serving its old price. So the id in an item key is
//! percent-decoded as catalog's router decodes it ([`canonical_id`]), and a listing key is built
//! from the parsed parameters ([`canonical_listing`]): only catalog's own ([`LIST_PARAMETERS`];
//! a request with any other, or with one twice, is not cached at all — catalog refuses it),
//! decoded, with values catalog reads the same written the same, in a fixed order. Distinct
//! *legitimate* listings (a search per word) are still distinct entries, so at most
//! [`MAX_LISTINGS`] are kept at once; beyond that a listing is answered without being stored.
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
//! **Redis down: the cache is bypassed.** A failed or slow cache call makes the cache step aside
//! for [`BYPASS_FOR`]: reads go to catalog, nothing is stored, and requests do not each wait
//! for a timeout. (The rate limiter does the same with its local fallback, ADR 0013.)
//!
//! **Stale-if-error.** An entry is kept for [`KEEP_FOR`] after it stops being fresh. While
//! catalog is down (unreachable, timing out, its circuit open) a product read is answered from
//! that copy, marked `X-Cache: STALE`, rather than failing: a slightly old catalog is better
//! than none. Everything else fails fast.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

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

/// After a failed or timed-out Redis call the cache is not used for this long.
pub const BYPASS_FOR: Duration = Duration::from_secs(1);

/// The query parameters of catalog's listing (`catalog_service::api::LIST_PARAMETERS`; catalog
/// answers 400 to any other, so a request with another one is never cached).
pub const LIST_PARAMETERS: [&str; 5] = ["q", "category", "ids", "limit", "cursor"];

/// At most this many listings are cached at once (the set `cache:lists`): every distinct search
/// is a legitimate listing, and without a bound a client inventing searches would fill Redis.
/// Beyond it a listing is served but not stored until an invalidation (or expiry) makes room.
pub const MAX_LISTINGS: u64 = 1000;

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
/// the generation the lookup saw, `ARGV[2]` seconds to keep the entry, `ARGV[3]` the most
/// listings to keep, then field, value, ...
/// Returns 1 when stored, 0 when the answer may predate a change and was dropped, 2 when it is a
/// new listing and [`MAX_LISTINGS`] are cached (after forgetting those whose entry expired).
///
/// The set of listings and the generation carry no expiry on purpose: Redis runs with
/// `maxmemory-policy volatile-lru` (it evicts only keys with an expiry), so under memory
/// pressure entries and rate-limit windows go, but never the two keys invalidation relies on.
const STORE: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
if KEYS[3] and redis.call('SISMEMBER', KEYS[3], KEYS[1]) == 0
   and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if redis.call('EXISTS', key) == 0 then redis.call('SREM', KEYS[3], key) end
  end
  if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 2 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[3] then redis.call('SADD', KEYS[3], KEYS[1]) end
return 1
";

#[derive(Debug, Clone)]
pub struct ResponseCache {
    redis: Redis,
    invalidate: redis::Script,
    store: redis::Script,
    fresh_for: Duration,
    bypass: Arc<Bypass>,
}

/// Whether the cache is stepping aside after a Redis failure (see the module docs).
#[derive(Debug)]
struct Bypass {
    started: Instant,
    /// Milliseconds since `started` before which Redis is not asked.
    until_ms: AtomicU64,
}

impl Bypass {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn active(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    fn start(&self) {
        let until = self.now_ms().saturating_add(BYPASS_FOR.as_millis() as u64);
        self.until_ms.store(until, Ordering::Relaxed);
    }
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
            bypass: Arc::new(Bypass {
                started: Instant::now(),
                until_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Whether answers of `route` are cached: catalog reads.
    pub fn applies_to(&self, route: &Route, method: &Method) -> bool {
        route.upstream == Upstream::Catalog && method == Method::GET
    }

    /// The key for a request, or `None` when it is not cached: an item read with a query, a
    /// listing with a parameter catalog does not take (see the module docs).
    fn key(&self, path_and_query: &str) -> Option<(String, bool)> {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(path, query)| (path, Some(query)));
        if path == "/api/v1/products" {
            let listing = canonical_listing(query.unwrap_or(""))?;
            return Some((self.redis.key(&format!("cache:list:{listing}")), true));
        }
        let id = path.strip_prefix("/api/v1/products/")?;
        if query.is_some() {
            return None;
        }
        Some((self.item_key(&canonical_id(id)?), false))
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
        if self.bypass.active() {
            return (None, Generation::UNKNOWN);
        }
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
                tracing::debug!(error = %err, "response cache unavailable; bypassing it");
                self.bypass.start();
                return (None, Generation::UNKNOWN);
            }
            Err(_) => {
                tracing::debug!("response cache timed out; bypassing it");
                self.bypass.start();
                return (None, Generation::UNKNOWN);
            }
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
        if self.bypass.active() {
            return;
        }
        let mut invocation = self.store.prepare_invoke();
        invocation.key(&key).key(self.generation_key());
        if is_list {
            invocation.key(self.redis.key("cache:lists"));
        }
        invocation
            .arg(generation)
            .arg((self.fresh_for + KEEP_FOR).as_secs())
            .arg(MAX_LISTINGS)
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
            Ok(Ok(2)) => {
                tracing::debug!(path_and_query, "listing not cached: {MAX_LISTINGS} are");
                metrics::counter!("gateway_cache_listings_full_total").increment(1);
            }
            Ok(Ok(_)) => {
                tracing::debug!(path_and_query, "catalog read not cached: it raced a change");
                metrics::counter!("gateway_cache_fills_dropped_total").increment(1);
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "could not cache a catalog read; bypassing the cache");
                self.bypass.start();
            }
            Err(_) => {
                tracing::debug!("caching a catalog read timed out; bypassing the cache");
                self.bypass.start();
            }
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

/// The product id of an item path segment, percent-decoded as catalog's router decodes it, so
/// `/products/%61bc` and `/products/abc` share the entry that invalidating `abc` deletes.
/// `None` (not cached) when the decoded bytes are not UTF-8: catalog refuses such a path.
pub fn canonical_id(segment: &str) -> Option<String> {
    let id = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    (!id.is_empty()).then(|| id.into_owned())
}

/// A listing's query string in one spelling per answer, or `None` when the request is not to
/// be cached: a parameter catalog does not take, or one given twice (catalog answers 400).
///
/// Parameters are form-decoded as catalog decodes them and written back re-encoded in the
/// order of [`LIST_PARAMETERS`]; values catalog reads the same are written the same: an empty
/// `q`, `category` or `cursor` is left out (catalog reads it as absent), `limit` as the number
/// it parses to (`05` is `5`), and `ids` as the sorted, distinct, trimmed ids (catalog answers
/// the set, in id order).
pub fn canonical_listing(query: &str) -> Option<String> {
    let mut given: [Option<String>; LIST_PARAMETERS.len()] = Default::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = LIST_PARAMETERS.iter().position(|known| *known == name)?;
        if given[slot].replace(value.into_owned()).is_some() {
            return None;
        }
    }
    let mut canonical = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in LIST_PARAMETERS.iter().zip(given) {
        let Some(value) = value else { continue };
        let value = match *name {
            "q" | "category" | "cursor" if value.is_empty() => continue,
            "limit" => value
                .parse::<u32>()
                .map_or(value, |limit| limit.to_string()),
            "ids" => {
                let mut ids: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids.join(",")
            }
            _ => value,
        };
        canonical.append_pair(name, &value);
    }
    Some(canonical.finish())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listing_has_one_key_however_it_is_spelt() {
        let key = canonical_listing("category=lamps&limit=5").unwrap();
        for variant in [
            "limit=5&category=lamps",
            "category=%6Camps&limit=05",
            "q=&category=lamps&cursor=&limit=5",
            "limit=5&category=lamps&",
        ] {
            assert_eq!(
                canonical_listing(variant).as_deref(),
                Some(key.as_str()),
                "{variant}"
            );
        }
        assert_eq!(
            canonical_listing("ids=b,a,%20b").unwrap(),
            canonical_listing("ids=a,b").unwrap()
        );
        assert_ne!(
            canonical_listing("q=lamp").unwrap(),
            canonical_listing("q=Lamp").unwrap(),
            "values catalog may read differently stay apart"
        );
        assert_eq!(canonical_listing("").as_deref(), Some(""));
    }

    #[test]
    fn listings_with_unknown_or_repeated_parameters_are_not_cached() {
        assert_eq!(canonical_listing("category=lamps&x=1"), None);
        assert_eq!(canonical_listing("q=a&q=b"), None);
        assert_eq!(canonical_listing("limit=5&limit=5"), None);
    }

    #[test]
    fn item_ids_are_percent_decoded_like_the_router_does() {
        assert_eq!(canonical_id("%61bc").as_deref(), Some("abc"));
        assert_eq!(canonical_id("abc").as_deref(), Some("abc"));
        assert_eq!(
            canonical_id("a+b").as_deref(),
            Some("a+b"),
            "no form decoding in paths"
        );
        assert_eq!(canonical_id("%FF"), None);
    }
}
