//! Public keys: where they come from ([`JwksSource`]) and how they are cached ([`KeyCache`]).
//!
//! Verifying a token must not cost a call to user-service: that would put user-service on the
//! path of every request in the system and make it the bottleneck and the single point of
//! failure. So the key set is fetched once and kept. Two events make it stale:
//!
//! * **rotation**: a token arrives with a `kid` we do not have. We refresh — but at most once
//!   per `min_refresh_interval`, and only one refresh at a time, so garbage `kid`s sent by an
//!   attacker cost one fetch per interval, not one per request;
//! * **retirement**: a key removed from the set (rotated out twice, or withdrawn after a leak)
//!   must stop verifying. The set is therefore also refreshed when older than `max_age`.
//!
//! When a refresh fails the keys we have are kept: a user-service outage does not log
//! everyone out, it only delays the next rotation until it is back. **But not forever**: a key
//! set last fetched more than `max_stale` ago is not used at all. Otherwise anyone able to keep
//! the issuer unreachable (or a long outage nobody noticed) would keep a withdrawn — perhaps
//! leaked — key verifying indefinitely. Past that bound, and while no key set was ever loaded,
//! a token *cannot be checked*, which is not the same as a bad token: the verifier answers
//! 503 (retry later), not 401 (a client would throw its token away and sign in again, into
//! the same outage).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::BoxFuture;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

use crate::verify::ALLOWED_ALGORITHMS;

/// Where a [`KeyCache`] gets the current key set.
pub trait JwksSource: Send + Sync + 'static {
    /// Fetches the whole key set; the error is for the log.
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, String>>;
}

/// A JWKS served over HTTP, normally user-service's `/.well-known/jwks.json`.
#[derive(Debug, Clone)]
pub struct HttpJwks {
    url: url::Url,
    client: reqwest::Client,
}

impl HttpJwks {
    /// A source for `url`. Each fetch has a 5 s timeout: a verifier waiting for it holds a
    /// request, and keys already cached keep working meanwhile.
    pub fn new(url: url::Url) -> Result<Self, reqwest::Error> {
        // See `install_crypto_provider`: a reqwest client panics without one in some builds.
        shop_runtime::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { url, client })
    }
}

impl JwksSource for HttpJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, String>> {
        Box::pin(async move {
            let response = self
                .client
                .get(self.url.clone())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|err| format!("GET {}: {err}", self.url))?;
            response
                .json::<JwkSet>()
                .await
                .map_err(|err| format!("GET {}: not a JWKS: {err}", self.url))
        })
    }
}

/// A key usable for verification: its algorithm is fixed by the key set, never by the token.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

#[derive(Default)]
struct Refresh {
    last_attempt: Option<Instant>,
    fetched_at: Option<Instant>,
}

/// Why there is no key to verify a token with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// The key set is current and has no such key: the token is refused (401).
    Unknown,
    /// No key set was ever loaded, or the one we have is older than `max_stale`: the token
    /// cannot be checked now (503).
    Unavailable,
}

/// The keys as last fetched, and when.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    fetched_at: Option<Instant>,
}

/// The cached key set of one issuer.
pub(crate) struct KeyCache {
    source: Box<dyn JwksSource>,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching, so concurrent misses wait for one fetch instead of each starting one.
    refresh: tokio::sync::Mutex<Refresh>,
    min_refresh_interval: Duration,
    max_age: Duration,
    max_stale: Duration,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .map(|set| set.keys.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("KeyCache").field("kids", &kids).finish()
    }
}

impl KeyCache {
    pub(crate) fn new(
        source: impl JwksSource,
        min_refresh_interval: Duration,
        max_age: Duration,
        max_stale: Duration,
    ) -> Self {
        Self {
            source: Box::new(source),
            keys: RwLock::default(),
            refresh: tokio::sync::Mutex::default(),
            min_refresh_interval,
            max_age,
            max_stale,
        }
    }

    /// The key named `kid` in the set we have, if that set may still be used.
    fn cached(&self, kid: &str) -> Result<VerifyingKey, KeyError> {
        let set = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match set.fetched_at {
            Some(at) if at.elapsed() < self.max_stale => {
                set.keys.get(kid).cloned().ok_or(KeyError::Unknown)
            }
            _ => Err(KeyError::Unavailable),
        }
    }

    /// The key named `kid`, refreshing the set when `kid` is unknown or the set is old —
    /// within the refresh bound.
    pub(crate) async fn get(&self, kid: &str) -> Result<VerifyingKey, KeyError> {
        let cached = self.cached(kid);
        // Fast path, never waiting: a known key from a fresh set. `try_lock` only fails while
        // a refresh runs, and then the key we have is still good for the moment.
        if cached.is_ok() {
            match self.refresh.try_lock() {
                Ok(state) if is_fresh(&state, self.max_age) => return cached,
                Err(_) => return cached,
                Ok(_) => {}
            }
        }

        let mut state = self.refresh.lock().await;
        // Another task may have refreshed while we waited.
        if let Ok(key) = self.cached(kid)
            && is_fresh(&state, self.max_age)
        {
            return Ok(key);
        }
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh_interval)
        {
            return self.cached(kid);
        }
        state.last_attempt = Some(Instant::now());
        metrics::counter!("auth_jwks_fetches_total").increment(1);
        match self.source.fetch().await {
            Ok(set) => {
                let keys = usable_keys(&set);
                tracing::info!(kids = ?keys.keys().collect::<Vec<_>>(), "key set refreshed");
                let fetched_at = Instant::now();
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(fetched_at),
                });
                state.fetched_at = Some(fetched_at);
            }
            Err(err) => {
                metrics::counter!("auth_jwks_fetch_failures_total").increment(1);
                match state.fetched_at {
                    Some(at) if at.elapsed() < self.max_stale => tracing::warn!(
                        error = %err,
                        "cannot refresh the key set; keeping the cached keys"
                    ),
                    Some(_) => tracing::error!(
                        error = %err,
                        max_stale = ?self.max_stale,
                        "cannot refresh the key set, and the cached one is too old to use"
                    ),
                    None => tracing::error!(error = %err, "cannot load the key set"),
                }
            }
        }
        self.cached(kid)
    }
}

fn is_fresh(state: &Refresh, max_age: Duration) -> bool {
    state.fetched_at.is_some_and(|at| at.elapsed() < max_age)
}

/// RSA moduli shorter than this are refused (NIST SP 800-131A: 1024-bit RSA is factorable with
/// enough money). A key set is fetched over the network; a short key in it is a downgrade
/// attempt or a mistake, and either way must not verify anything.
pub const MIN_RSA_BITS: usize = 2048;

/// The size of an RSA JWK's modulus `n` in bits (0 when it is not an RSA key or `n` does not
/// decode).
fn rsa_modulus_bits(jwk: &Jwk) -> usize {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return 0;
    };
    let Ok(modulus) = URL_SAFE_NO_PAD.decode(rsa.n.trim_end_matches('=')) else {
        return 0;
    };
    let leading = modulus.iter().take_while(|byte| **byte == 0).count();
    let significant = &modulus[leading..];
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// The keys of `set` this verifier may use: signing keys with a `kid` and an allowed `alg`.
/// A key without `alg` is skipped rather than guessed: letting the token's header choose the
/// algorithm for a key is exactly the confusion the allow-list exists to prevent.
fn usable_keys(set: &JwkSet) -> HashMap<String, VerifyingKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature)
            {
                return None;
            }
            let algorithm = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                other => {
                    tracing::warn!(%kid, ?other, "ignoring a published key with a refused algorithm");
                    return None;
                }
            };
            debug_assert!(ALLOWED_ALGORITHMS.contains(&algorithm));
            if algorithm == Algorithm::RS256 {
                let bits = rsa_modulus_bits(jwk);
                if bits < MIN_RSA_BITS {
                    tracing::warn!(%kid, bits, "ignoring a published RSA key shorter than {MIN_RSA_BITS} bits");
                    return None;
                }
            }
            let key = DecodingKey::from_jwk(jwk).ok()?;
            (key.family() == algorithm.family()).then_some((kid, VerifyingKey { algorithm, key }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An RSA public JWK whose modulus has exactly `bits` bits (the top bit set, the rest
    /// arbitrary: parsing a public key does not check it is a product of two primes).
    fn rsa_jwk(kid: &str, bits: usize) -> serde_json::Value {
        let mut modulus = vec![0xA5u8; bits.div_ceil(8)];
        let top = bits - (modulus.len() - 1) * 8; // bits used in the first byte, 1..=8
        modulus[0] = (0xA5 >> (8 - top)) | (1 << (top - 1));
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&modulus), "e": "AQAB",
        })
    }

    #[test]
    fn rsa_keys_below_2048_bits_are_not_used() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            rsa_jwk("short", 1024),
            rsa_jwk("almost", 2047),
            rsa_jwk("enough", 2048),
            rsa_jwk("large", 4096),
        ]}))
        .unwrap();
        let mut kids: Vec<String> = usable_keys(&set).into_keys().collect();
        kids.sort();
        assert_eq!(kids, ["enough", "large"]);
    }
}
