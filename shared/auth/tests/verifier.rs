//! The verifier against a real JWKS endpoint (an HTTP server in the test that counts fetches),
//! with tokens built here the way an attacker would build them.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use serde_json::{Value, json};
use shop_auth::{Claims, Principal, Role, Verifier, VerifierConfig, http::RequireAdmin};
use shop_runtime::ErrorKind;
use uuid::Uuid;

const ISSUER: &str = "urn:shop:user-service";
const AUDIENCE: &str = "shop";

/// An Ed25519 signing key as user-service has one.
struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl Key {
    fn generate(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&self.public),
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(roles: &[&str]) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: Uuid::new_v4().to_string(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        iat: now(),
        exp: now() + 900,
        nbf: None,
        jti: Uuid::new_v4().to_string(),
    }
}

/// A JWKS endpoint whose key set the test can change, counting how often it is fetched.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Jwks {
    async fn serve(&self) -> SocketAddr {
        async fn jwks(State(jwks): State<Jwks>) -> Result<Json<Value>, StatusCode> {
            jwks.fetches.fetch_add(1, Ordering::SeqCst);
            if jwks.down.load(Ordering::SeqCst) {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            }
            Ok(Json(json!({ "keys": *jwks.keys.lock().unwrap() })))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|key| key.jwk()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn verifier(jwks: &Jwks, min_refresh_interval: Duration) -> Verifier {
    verifier_with(jwks, |config| {
        config.min_refresh_interval = min_refresh_interval;
    })
    .await
}

async fn verifier_with(jwks: &Jwks, configure: impl FnOnce(&mut VerifierConfig)) -> Verifier {
    let addr = jwks.serve().await;
    let mut config = VerifierConfig::new(ISSUER, AUDIENCE);
    configure(&mut config);
    let url = format!("http://{addr}/.well-known/jwks.json")
        .parse()
        .unwrap();
    Verifier::remote(&config, url).unwrap()
}

fn refused(result: Result<Claims, shop_runtime::ApiError>) -> bool {
    matches!(result, Err(err) if err.kind() == ErrorKind::Unauthorized)
}

#[tokio::test]
async fn verifies_locally_fetching_the_key_set_once() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let verifier = verifier(&jwks, Duration::from_secs(3600)).await;

    let claims = claims(&["customer"]);
    let token = key.sign(&claims);
    for _ in 0..200 {
        assert_eq!(verifier.verify(&token).await.unwrap(), claims);
    }
    let principal = verifier.principal(&token).await.unwrap();
    assert_eq!(principal.user_id.to_string(), claims.sub);
    assert_eq!(principal.roles, vec![Role::Customer]);
    assert_eq!(jwks.fetches(), 1, "one fetch for 201 verifications");
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_key_set_within_a_bound() {
    let old = Key::generate("old");
    let new = Key::generate("new");
    let jwks = Jwks::default();
    jwks.publish(&[&old]);
    let verifier = verifier(&jwks, Duration::from_millis(300)).await;

    verifier.verify(&old.sign(&claims(&[]))).await.unwrap();
    assert_eq!(jwks.fetches(), 1);

    // A rotation: the issuer publishes the new key next to the old one.
    jwks.publish(&[&new, &old]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    verifier.verify(&new.sign(&claims(&[]))).await.unwrap();
    verifier.verify(&old.sign(&claims(&[]))).await.unwrap();
    assert_eq!(
        jwks.fetches(),
        2,
        "the unknown kid caused exactly one refresh"
    );

    // A flood of made-up kids, concurrently: at most one more fetch per interval.
    let forged: Vec<String> = (0..50)
        .map(|i| Key::generate(&format!("forged-{i}")).sign(&claims(&[])))
        .collect();
    let results =
        futures::future::join_all(forged.iter().map(|token| verifier.verify(token))).await;
    assert!(results.into_iter().all(refused));
    assert_eq!(jwks.fetches(), 2, "refreshes are bounded by the interval");
}

#[tokio::test]
async fn keeps_the_cached_keys_when_the_issuer_is_down() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let verifier = verifier(&jwks, Duration::from_millis(10)).await;
    verifier.verify(&key.sign(&claims(&[]))).await.unwrap();

    jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // An unknown kid tries a refresh, which fails...
    assert!(refused(
        verifier
            .verify(&Key::generate("k2").sign(&claims(&[])))
            .await
    ));
    assert_eq!(jwks.fetches(), 2);
    // ...and the keys we had still verify: an issuer outage logs nobody out.
    verifier.verify(&key.sign(&claims(&[]))).await.unwrap();
}

fn unavailable(result: Result<Claims, shop_runtime::ApiError>) -> bool {
    matches!(result, Err(err) if err.kind() == ErrorKind::Unavailable)
}

/// Keeping the cached keys through an issuer outage has a bound: past `max_stale` a withdrawn
/// (perhaps leaked) key must not go on verifying just because nobody can reach the issuer.
/// Tokens then cannot be checked, which is 503, and verification resumes with the next refresh.
#[tokio::test]
async fn cached_keys_are_not_used_past_max_stale_while_refreshes_fail() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let max_stale = Duration::from_millis(300);
    let verifier = verifier_with(&jwks, |config| {
        config.min_refresh_interval = Duration::from_millis(10);
        config.max_age = Duration::from_millis(10);
        config.max_stale = max_stale;
    })
    .await;
    let token = key.sign(&claims(&[]));
    verifier.verify(&token).await.unwrap();

    jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Older than max_age: a refresh is tried and fails; within max_stale the keys still verify.
    verifier.verify(&token).await.unwrap();
    assert_eq!(jwks.fetches(), 2);

    tokio::time::sleep(max_stale).await;
    assert!(unavailable(verifier.verify(&token).await), "503, not 401");
    assert!(
        unavailable(
            verifier
                .verify(&Key::generate("k2").sign(&claims(&[])))
                .await
        ),
        "an unknown kid cannot be judged either"
    );

    jwks.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    verifier.verify(&token).await.unwrap();
}

/// Before any key set was loaded no token can be checked: 503 (retry), not 401 (which tells a
/// client to throw its token away and sign in again, into the same outage).
#[tokio::test]
async fn answers_503_not_401_while_no_key_set_was_ever_loaded() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    jwks.down.store(true, Ordering::SeqCst);
    let verifier = verifier(&jwks, Duration::from_millis(10)).await;

    let err = verifier.verify(&key.sign(&claims(&[]))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let response = axum::response::IntoResponse::into_response(shop_auth::http::AuthRejection(err));
    assert_eq!(response.status(), 503);
    assert!(!response.headers().contains_key("www-authenticate"));

    jwks.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    verifier.verify(&key.sign(&claims(&[]))).await.unwrap();
}

#[tokio::test]
async fn a_key_withdrawn_from_the_set_stops_verifying_after_a_refresh() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let verifier = verifier(&jwks, Duration::from_millis(10)).await;
    verifier.verify(&key.sign(&claims(&[]))).await.unwrap();

    // The issuer withdraws k1 and publishes k2; a k2 token refreshes the set.
    let next = Key::generate("k2");
    jwks.publish(&[&next]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    verifier.verify(&next.sign(&claims(&[]))).await.unwrap();
    assert!(refused(verifier.verify(&key.sign(&claims(&[]))).await));
}

#[tokio::test]
async fn refuses_every_kind_of_bad_token() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let verifier = verifier(&jwks, Duration::from_secs(3600)).await;
    let good = claims(&["customer"]);
    assert!(verifier.verify(&key.sign(&good)).await.is_ok());

    // Expired, beyond the leeway; within the 30 s leeway it still passes.
    let expired = Claims {
        exp: now() - 120,
        iat: now() - 1000,
        ..good.clone()
    };
    let err = verifier.verify(&key.sign(&expired)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert!(err.to_string().contains("expired"), "{err}");
    let just_expired = Claims {
        exp: now() - 10,
        ..good.clone()
    };
    assert!(verifier.verify(&key.sign(&just_expired)).await.is_ok());

    // Not yet valid.
    let early = Claims {
        nbf: Some(now() + 300),
        ..good.clone()
    };
    assert!(refused(verifier.verify(&key.sign(&early)).await));

    // Wrong audience, wrong issuer.
    let other_audience = Claims {
        aud: "another-system".into(),
        ..good.clone()
    };
    assert!(refused(verifier.verify(&key.sign(&other_audience)).await));
    let other_issuer = Claims {
        iss: "urn:evil".into(),
        ..good.clone()
    };
    assert!(refused(verifier.verify(&key.sign(&other_issuer)).await));

    // Tampered: the payload says admin, the signature was made for customer.
    let token = key.sign(&good);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let admin = Claims {
        roles: vec!["admin".into()],
        ..good.clone()
    };
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
    assert!(refused(verifier.verify(&parts.join(".")).await));

    // Signed by a key nobody published, under a published kid.
    let impostor = Key {
        kid: "k1".into(),
        ..Key::generate("x")
    };
    assert!(refused(verifier.verify(&impostor.sign(&good)).await));

    // `alg: none`, with and without a signature part.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    assert!(refused(
        verifier.verify(&format!("{none}.{payload}.")).await
    ));
    assert!(refused(verifier.verify(&format!("{none}.{payload}")).await));

    // HMAC confusion: HS256 "signed" with the public key as the shared secret, both as raw
    // bytes and as the published JWK text.
    let hs256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let message = format!("{hs256}.{payload}");
    for secret in [key.public.clone(), key.jwk().to_string().into_bytes()] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            message.as_bytes(),
        );
        let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        assert!(refused(verifier.verify(&forged).await));
    }

    // RS256 in the header for a key published as EdDSA.
    let rs256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let signature = token.rsplit('.').next().unwrap();
    assert!(refused(
        verifier
            .verify(&format!("{rs256}.{payload}.{signature}"))
            .await
    ));

    // No kid; garbage.
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &good,
        &EncodingKey::from_ed_der(&key.pkcs8),
    )
    .unwrap();
    assert!(refused(verifier.verify(&no_kid).await));
    assert!(refused(verifier.verify("not.a.token").await));
    assert!(refused(verifier.verify("").await));
}

#[derive(Clone)]
struct AppState {
    verifier: Verifier,
}

impl axum::extract::FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

#[tokio::test]
async fn extractors_answer_401_problem_json_and_403_for_non_admins() {
    let key = Key::generate("k1");
    let jwks = Jwks::default();
    jwks.publish(&[&key]);
    let verifier = verifier(&jwks, Duration::from_secs(3600)).await;

    async fn me(principal: Principal) -> String {
        principal.user_id.to_string()
    }
    async fn admin_only(RequireAdmin(admin): RequireAdmin) -> String {
        admin.user_id.to_string()
    }
    let app = Router::new()
        .route("/me", get(me))
        .route("/admin", get(admin_only))
        .with_state(AppState { verifier });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let call = |path: &str, token: Option<String>| {
        let mut request = client.get(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let anonymous = call("/me", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["type"], "urn:shop:problem:unauthorized");

    let customer = claims(&["customer"]);
    let response = call("/me", Some(key.sign(&customer))).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), customer.sub);

    let forbidden = call("/admin", Some(key.sign(&customer))).await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let admin = claims(&["customer", "admin"]);
    let allowed = call("/admin", Some(key.sign(&admin))).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.unwrap(), admin.sub);

    let bad = call("/me", Some("garbage".into())).await.unwrap();
    assert_eq!(bad.status(), 401);
}
