//! Rate limits shared by every gateway instance: counted in memory, settled in Redis.
//!
//! **Algorithm: a fixed window per key**, starting with its first request anywhere: the key's
//! counter in Redis expires with its window, and every instance learns where the window ends
//! from Redis's answers. A fixed window lets a client send up to twice the limit across a
//! window boundary. For login throttling and fair use that is acceptable and keeps the state
//! to one integer per key; a sliding log would cost a sorted set per client. Counting is one
//! Lua script (`SCRIPT`: add, read the time left, start the window if new) for any number of
//! keys, so two instances counting one key never both read "9 of 10" and both let the 11th
//! through, and a batch of keys costs one round trip. (One Redis, not a cluster: a cluster
//! would need the batch split by hash slot.)
//!
//! **Two ways to count, by the precision a budget needs** (ADR 0013):
//!
//! * *Exact*: the request is counted in Redis before it is decided (one script call, one
//!   round trip), and Redis's answer is the total of every instance. The
//!   login budget ([`Counting::Exact`]: it stops password guessing, and a login costs a
//!   password hash anyway) always counts so, and so does every other budget in the second half
//!   of its window's allowance.
//! * *Batched*: the first half of an address's or a user's allowance ([`Counting::Batched`]) is
//!   decided in memory, on what this instance knows — the total Redis last reported plus its
//!   own requests not yet sent — and the counts go to Redis for every key at once every
//!   [`SYNC_EVERY`] ([`RateLimiter::settle_every`]), a few hundred keys per script call. A forwarded request
//!   then costs no Redis round trip: about a tenth less gateway CPU per forwarded request in
//!   an A/B (`bench/findings.md`).
//!
//! The price of batching is bounded: an instance decides alone only while it sees less than
//! half of the limit used, and everything past that half is counted exactly; what Redis does
//! not yet know is what other instances let through in their last [`SYNC_EVERY`], and each of
//! them at most half the limit. So a client spreading a burst over N instances within one
//! sync interval gets at most `limit + (N - 1) × limit / 2`; anything slower, exactly `limit`.
//! One instance is always exact: it counts its own requests whether or not Redis has them yet.
//!
//! **When Redis is unreachable the gateway fails open to what it knows** (ADR 0013): each
//! instance goes on deciding on its own counts (plus whatever Redis had reported), so the
//! limits hold per instance (N instances allow up to N × the limit) instead of the whole API
//! going down with the cache store, or every limit vanishing. Counts not yet sent are kept and
//! sent when Redis answers again. A Redis failure is remembered for [`REDIS_RETRY_AFTER`], so
//! an outage costs one failed call per second, not one per request.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use shop_runtime::stores::redis::Redis;
use tokio_util::sync::CancellationToken;

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

/// What is being counted: the policy (its name shows in the headers), whose budget it is, and
/// how precisely it is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub policy: &'static str,
    pub key: String,
    pub limit: u64,
    pub counting: Counting,
}

/// How a budget is counted across instances (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Every request counted in Redis before it is decided.
    Exact,
    /// The first half of the allowance decided in memory and sent to Redis in batches.
    Batched,
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

/// `KEYS` the counters; `ARGV[1]` the window in ms, `ARGV[1 + i]` the count to add to
/// `KEYS[i]`. Returns `{total, ms left}` for each key in turn.
const SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCRBY', key, ARGV[i + 1])
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, ARGV[1])
    ttl = tonumber(ARGV[1])
  end
  out[#out + 1] = count
  out[#out + 1] = ttl
end
return out
";

/// At most this many keys per script call when the batched counts are sent.
const SETTLE_CHUNK: usize = 500;

/// How often the batched counts go to Redis.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// How long a failed Redis call sends decisions to the counts in memory alone.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An exact decision that takes longer than this is made in memory instead: the limiter is on
/// every request's path and must not turn a slow Redis into a slow API.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// At most this many keys are counted in memory: a flood of distinct client addresses cannot
/// grow the map without bound. A key beyond it is counted exactly, in Redis.
const MAX_TALLIES: usize = 100_000;

/// What one instance knows of one key in its current window.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// When the window ends: this instance's guess until Redis has answered for the key, then
    /// Redis's.
    ends: Instant,
    /// Counts up each time the window starts again here, so an answer about an earlier window
    /// is not taken for this one.
    generation: u64,
    /// The total Redis last reported for the key (every instance's counts it had).
    known: u64,
    /// This instance's requests not yet sent to Redis.
    pending: u64,
}

impl Tally {
    /// What this instance sees used of the budget.
    fn seen(&self) -> u64 {
        self.known + self.pending
    }

    /// Redis's answer for the key, to a count sent in `generation`: `total` so far, the window
    /// ending at `ends`.
    fn learn(&mut self, generation: u64, total: u64, ends: Instant) {
        if generation == self.generation {
            self.known = self.known.max(total);
            self.ends = ends;
        }
    }
}

/// The limiter: counts in memory, settled in Redis (see the module docs). Cloning shares it.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: Redis,
    script: redis::Script,
    window: Duration,
    tallies: Mutex<HashMap<String, Tally>>,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not asked again.
    redis_paused_until: AtomicU64,
}

/// One key's count on its way to Redis.
#[derive(Debug)]
struct Sent {
    key: String,
    generation: u64,
    count: u64,
}

impl RateLimiter {
    pub fn new(redis: Redis, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                script: redis::Script::new(SCRIPT),
                window,
                tallies: Mutex::default(),
                started: Instant::now(),
                redis_paused_until: AtomicU64::new(0),
            }),
        }
    }

    /// Counts one request against `subject` and says whether it may pass.
    pub async fn check(&self, subject: &Subject) -> Decision {
        let inner = &*self.inner;
        let now = Instant::now();
        let sent = {
            let mut tallies = inner.lock();
            let room = tallies.len() < MAX_TALLIES || tallies.contains_key(&subject.key);
            let tally = room.then(|| {
                let tally = tallies.entry(subject.key.clone()).or_insert(Tally {
                    ends: now + inner.window,
                    generation: 0,
                    known: 0,
                    pending: 0,
                });
                if tally.ends <= now {
                    *tally = Tally {
                        ends: now + inner.window,
                        generation: tally.generation + 1,
                        known: 0,
                        pending: 0,
                    };
                }
                tally
            });
            match tally {
                // Decided here: well within the budget, as far as anyone has told us.
                Some(tally)
                    if subject.counting == Counting::Batched
                        && (tally.seen() + 1).saturating_mul(2) <= subject.limit =>
                {
                    tally.pending += 1;
                    let left = tally.ends.saturating_duration_since(now);
                    return self.decide(subject, tally.seen(), left);
                }
                // Counted exactly: this request and whatever this instance has not sent yet.
                Some(tally) => Sent {
                    key: subject.key.clone(),
                    generation: tally.generation,
                    count: std::mem::take(&mut tally.pending) + 1,
                },
                None => Sent {
                    key: subject.key.clone(),
                    generation: 0,
                    count: 1,
                },
            }
        };
        if inner.redis_available() {
            let sent = std::slice::from_ref(&sent);
            match tokio::time::timeout(REDIS_TIMEOUT, inner.count(sent)).await {
                Ok(Ok(answers)) if !answers.is_empty() => {
                    let (total, left) = answers[0];
                    let ends = Instant::now() + left;
                    if let Some(tally) = inner.lock().get_mut(&subject.key) {
                        tally.learn(sent[0].generation, total, ends);
                    }
                    return self.decide(subject, total, left);
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "rate limit store failed; limiting locally");
                }
                Ok(Ok(_)) => tracing::warn!("rate limit store answered nothing; limiting locally"),
                Err(_) => tracing::warn!("rate limit store timed out; limiting locally"),
            }
            inner.pause_redis();
        }
        metrics::counter!("gateway_rate_limit_local_decisions_total").increment(1);
        // Redis did not count it: keep the count to send later, decide on what we know.
        let now = Instant::now();
        match inner.lock().get_mut(&subject.key) {
            Some(tally) if tally.generation == sent.generation => {
                tally.pending += sent.count;
                self.decide(
                    subject,
                    tally.seen(),
                    tally.ends.saturating_duration_since(now),
                )
            }
            _ => self.decide(subject, sent.count, inner.window),
        }
    }

    /// Sends the batched counts to Redis every [`SYNC_EVERY`] until `shutdown`, then once
    /// more.
    pub async fn settle_every(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => {
                    self.settle().await;
                    return;
                }
            }
            self.settle().await;
        }
    }

    /// One batch: every key's unsent count, in one round trip; the keys whose window is over
    /// here are forgotten.
    pub async fn settle(&self) {
        let inner = &*self.inner;
        let batch: Vec<Sent> = {
            let now = Instant::now();
            let mut tallies = inner.lock();
            tallies.retain(|_, tally| tally.ends > now);
            if !inner.redis_available() {
                return;
            }
            tallies
                .iter_mut()
                .filter(|(_, tally)| tally.pending > 0)
                .map(|(key, tally)| Sent {
                    key: key.clone(),
                    generation: tally.generation,
                    count: std::mem::take(&mut tally.pending),
                })
                .collect()
        };
        // In script calls of at most SETTLE_CHUNK keys: a busy window with many clients must
        // not become one script that holds Redis (single-threaded) for everyone else.
        let mut chunks = batch.chunks(SETTLE_CHUNK);
        while let Some(chunk) = chunks.next() {
            let failure = match tokio::time::timeout(REDIS_TIMEOUT, inner.count(chunk)).await {
                Ok(Ok(answers)) if answers.len() == chunk.len() => {
                    let now = Instant::now();
                    let mut tallies = inner.lock();
                    for (sent, (total, left)) in chunk.iter().zip(answers) {
                        if let Some(tally) = tallies.get_mut(&sent.key) {
                            tally.learn(sent.generation, total, now + left);
                        }
                    }
                    continue;
                }
                Ok(Ok(_)) => "answered for other keys than it was sent".to_owned(),
                Ok(Err(err)) => err.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            tracing::warn!(error = %failure, "cannot send rate limit counts; keeping them");
            inner.pause_redis();
            // This chunk and the ones not sent go again with a later batch. (A chunk that timed
            // out may have been counted after all; counting it twice errs on the side of the
            // limit.)
            let mut tallies = inner.lock();
            for sent in chunk.iter().chain(chunks.flatten()) {
                if let Some(tally) = tallies.get_mut(&sent.key)
                    && tally.generation == sent.generation
                {
                    tally.pending += sent.count;
                }
            }
            return;
        }
    }

    fn decide(&self, subject: &Subject, count: u64, left: Duration) -> Decision {
        let allowed = count <= subject.limit;
        if !allowed {
            metrics::counter!("gateway_rate_limited_total", "policy" => subject.policy)
                .increment(1);
        }
        let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        Decision {
            allowed,
            policy: subject.policy,
            limit: subject.limit,
            remaining: subject.limit.saturating_sub(count),
            reset: left_ms.div_ceil(1000).max(1),
            window: self.inner.window.as_secs(),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tally>> {
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn redis_available(&self) -> bool {
        self.now_ms() >= self.redis_paused_until.load(Ordering::Relaxed)
    }

    fn pause_redis(&self) {
        let until = self.now_ms() + u64::try_from(REDIS_RETRY_AFTER.as_millis()).unwrap_or(0);
        self.redis_paused_until.store(until, Ordering::Relaxed);
    }

    /// Adds each count to its key's counter, in one round trip ([`SCRIPT`]); answers each
    /// key's total and the time left in its window, in the same order.
    async fn count(&self, counts: &[Sent]) -> redis::RedisResult<Vec<(u64, Duration)>> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX));
        for sent in counts {
            invocation
                .key(self.redis.key(&format!("rl:{}", sent.key)))
                .arg(sent.count);
        }
        let mut conn = self.redis.connection().await?;
        let flat: Vec<u64> = invocation.invoke_async(&mut conn).await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| (pair[0], Duration::from_millis(pair[1])))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_about_an_earlier_window_is_not_taken_for_this_one() {
        let now = Instant::now();
        let mut tally = Tally {
            ends: now + Duration::from_secs(60),
            generation: 2,
            known: 0,
            pending: 3,
        };
        tally.learn(1, 500, now + Duration::from_millis(10));
        assert_eq!(
            (tally.known, tally.generation),
            (0, 2),
            "the window that ended"
        );
        tally.learn(2, 7, now + Duration::from_secs(30));
        assert_eq!(tally.known, 7);
        assert_eq!(
            tally.ends,
            now + Duration::from_secs(30),
            "Redis says when it ends"
        );
        tally.learn(2, 5, now + Duration::from_secs(30));
        assert_eq!(
            tally.known, 7,
            "a slower answer sent earlier does not go back"
        );
        assert_eq!(tally.seen(), 10);
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
