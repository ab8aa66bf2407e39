//! Rate limits shared by every gateway instance, kept in Redis.
//!
//! **Algorithm: a fixed window per key, decided by one Lua script.** `INCR` the key, set its
//! expiry on the first hit of the window, read the remaining time — in one `EVALSHA`, so two
//! instances counting the same client never both read "9 of 10" and both let the 11th through
//! (the read-then-write race a `GET` followed by a `SET` would have). Redis runs a script
//! atomically; one round trip per request.
//!
//! A fixed window lets a client send up to twice the limit across a window boundary. For login
//! throttling and fair use that is acceptable and keeps the decision to one integer per key;
//! a sliding log would cost a sorted set per client.
//!
//! **When Redis is unreachable the gateway fails open to a local limiter** (ADR 0013): each
//! instance then enforces the same limits in its own memory. The limits hold per instance
//! (so N instances allow up to N × the limit) instead of the whole API going down with the
//! cache store, or every limit vanishing. A Redis failure is remembered for
//! [`REDIS_RETRY_AFTER`], so an outage costs one timed-out call per second, not one per request.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use shop_runtime::stores::redis::Redis;

/// How many requests each class of key may make per window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    /// Per client address on login, register and refresh.
    pub auth: u64,
    /// Per signed-in user.
    pub user: u64,
    /// Per client address on anonymous routes.
    pub address: u64,
}

/// What is being counted: the policy (its name shows in the headers) and whose budget it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub policy: &'static str,
    pub key: String,
    pub limit: u64,
}

/// The outcome of one decision, and what the response headers say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub policy: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets (at least 1).
    pub reset: u64,
    pub window: u64,
}

impl Decision {
    /// `RateLimit-Policy` and `RateLimit` as in the IETF httpapi draft (structured fields),
    /// plus `Retry-After` on a refusal.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        write_headers(std::slice::from_ref(self), headers);
    }
}

/// The headers for every budget one request was charged (the client address, and the user when
/// signed in): one list member per policy in `RateLimit-Policy` and `RateLimit`, as the draft
/// allows, and `Retry-After` for the longest wait among the refusing ones.
pub fn write_headers(decisions: &[Decision], headers: &mut HeaderMap) {
    let join = |item: &dyn Fn(&Decision) -> String| {
        decisions.iter().map(item).collect::<Vec<_>>().join(", ")
    };
    let policy = join(&|d| format!("\"{}\";q={};w={}", d.policy, d.limit, d.window));
    let state = join(&|d| format!("\"{}\";r={};t={}", d.policy, d.remaining, d.reset));
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert("ratelimit-policy", value);
    }
    if let Ok(value) = HeaderValue::from_str(&state) {
        headers.insert("ratelimit", value);
    }
    if let Some(reset) = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.reset)
        .max()
    {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(reset));
    }
}

/// `KEYS[1]` the counter, `ARGV[1]` the window in ms. Returns `{count, ms left}`.
const SCRIPT: &str = r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
";

/// How long a failed Redis call sends decisions to the local limiter.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A decision that takes longer than this is abandoned for the local limiter: the limiter is on
/// every request's path and must not turn a slow Redis into a slow API.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The limiter: Redis first, the local window when Redis is away.
#[derive(Debug)]
pub struct RateLimiter {
    redis: Redis,
    script: redis::Script,
    window: Duration,
    local: LocalLimiter,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not asked again.
    redis_paused_until: AtomicU64,
}

impl RateLimiter {
    pub fn new(redis: Redis, window: Duration) -> Self {
        Self {
            redis,
            script: redis::Script::new(SCRIPT),
            window,
            local: LocalLimiter::default(),
            started: Instant::now(),
            redis_paused_until: AtomicU64::new(0),
        }
    }

    /// Counts one request against `subject` and says whether it may pass.
    pub async fn check(&self, subject: &Subject) -> Decision {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms >= self.redis_paused_until.load(Ordering::Relaxed) {
            match tokio::time::timeout(REDIS_TIMEOUT, self.count_in_redis(&subject.key)).await {
                Ok(Ok((count, ttl_ms))) => return self.decide(subject, count, ttl_ms),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "rate limit store failed; limiting locally")
                }
                Err(_) => tracing::warn!("rate limit store timed out; limiting locally"),
            }
            self.redis_paused_until.store(
                now_ms + REDIS_RETRY_AFTER.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        metrics::counter!("gateway_rate_limit_local_decisions_total").increment(1);
        let (count, ttl_ms) = self.local.count(&subject.key, self.window);
        self.decide(subject, count, ttl_ms)
    }

    async fn count_in_redis(&self, key: &str) -> redis::RedisResult<(u64, u64)> {
        let mut conn = self.redis.connection().await?;
        self.script
            .key(self.redis.key(&format!("rl:{key}")))
            .arg(self.window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
    }

    fn decide(&self, subject: &Subject, count: u64, ttl_ms: u64) -> Decision {
        let allowed = count <= subject.limit;
        if !allowed {
            metrics::counter!("gateway_rate_limited_total", "policy" => subject.policy)
                .increment(1);
        }
        Decision {
            allowed,
            policy: subject.policy,
            limit: subject.limit,
            remaining: subject.limit.saturating_sub(count),
            reset: ttl_ms.div_ceil(1000).max(1),
            window: self.window.as_secs(),
        }
    }
}

/// Fixed windows in this process's memory: the fallback while Redis is unreachable.
#[derive(Debug, Default)]
struct LocalLimiter {
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

/// Above this many keys, expired windows are swept before a new one is added, so a flood of
/// distinct client addresses cannot grow the map without bound.
const LOCAL_SWEEP_AT: usize = 100_000;

impl LocalLimiter {
    /// `(count in the current window, ms left in it)`.
    fn count(&self, key: &str, window: Duration) -> (u64, u64) {
        let now = Instant::now();
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() >= LOCAL_SWEEP_AT && !windows.contains_key(key) {
            windows.retain(|_, (started, _)| now.duration_since(*started) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let left = window.saturating_sub(now.duration_since(entry.0));
        (entry.1, left.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_windows_count_per_key_and_reset() {
        let local = LocalLimiter::default();
        let window = Duration::from_secs(60);
        assert_eq!(local.count("a", window).0, 1);
        assert_eq!(local.count("a", window).0, 2);
        assert_eq!(local.count("b", window).0, 1);
        let (_, left) = local.count("c", Duration::ZERO);
        assert_eq!(left, 0);
        assert_eq!(
            local.count("c", Duration::ZERO).0,
            1,
            "an elapsed window starts again"
        );
    }

    #[test]
    fn headers_follow_the_draft_and_refusals_say_when_to_retry() {
        let decision = Decision {
            allowed: false,
            policy: "auth",
            limit: 10,
            remaining: 0,
            reset: 42,
            window: 60,
        };
        let mut headers = HeaderMap::new();
        decision.write_headers(&mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"auth\";q=10;w=60");
        assert_eq!(headers["ratelimit"], "\"auth\";r=0;t=42");
        assert_eq!(headers["retry-after"], "42");
    }
}
