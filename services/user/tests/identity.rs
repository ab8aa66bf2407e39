//! Accounts and tokens through the real HTTP and gRPC endpoints, against real PostgreSQL.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test helper is a failed test

use crate::support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use reqwest::StatusCode;
use ring::{rand::SystemRandom, signature::Ed25519KeyPair};
use serde_json::{Value, json};
use shop_auth::{Claims, Verifier, VerifierConfig, client::ServiceTokens};
use shop_proto::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use shop_testkit::{TestApp, spawn, spawn_with};
use support::{PASSWORD, login, post, refresh, register, signed_in};
use user_service::{UserService, keys::SigningKey};
use uuid::Uuid;

const ISSUER: &str = "urn:shop:user-service";
const AUDIENCE: &str = "shop";

/// A fresh Ed25519 key: its PEM (for the service's configuration) and the same key for
/// signing tokens in the test.
fn new_key() -> (String, SigningKey) {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let body = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, SigningKey::from_pkcs8(der.as_ref()).unwrap())
}

async fn spawn_with_key(pem: &str) -> TestApp {
    spawn_with::<UserService>([("JWT_SIGNING_KEY", pem)])
        .await
        .unwrap()
}

async fn me(app: &TestApp, access_token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
}

/// A problem document without its per-request trace id.
async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut body: Value = response.json().await.unwrap();
    body.as_object_mut().unwrap().remove("trace_id");
    (status, body)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, roles: &[&str]) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: sub.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        iat: now(),
        exp: now() + 300,
        nbf: None,
        jti: Uuid::new_v4().to_string(),
    }
}

#[tokio::test]
async fn registers_signs_in_and_reads_its_own_account() {
    let app = spawn::<UserService>().await.unwrap();
    let response = register(&app, "  Ann.Lee@Example.COM ").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "ann.lee@example.com");
    assert_eq!(user["name"], "Ann Lee");
    assert_eq!(user["roles"], json!(["customer"]));
    assert!(user.get("password_hash").is_none());

    let response = login(&app, "ANN.LEE@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert!(tokens["refresh_token"].as_str().unwrap().len() >= 43);

    let response = me(&app, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let account: Value = response.json().await.unwrap();
    assert_eq!(
        account,
        json!({"id": user["id"], "email": "ann.lee@example.com", "name": "Ann Lee", "roles": ["customer"]})
    );

    // The access token carries every claim the issue asks for.
    let payload = tokens["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    for claim in ["iss", "aud", "sub", "roles", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} in {claims}");
    }
    assert_eq!(claims["sub"], user["id"]);
    let header = tokens["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
}

/// Registration says no more than login about which addresses have an account (ADR 0005):
/// a taken address gets the answer a new one gets, and the owner's account is untouched.
#[tokio::test]
async fn a_duplicate_email_looks_like_a_new_registration_and_changes_nothing() {
    let app = spawn::<UserService>().await.unwrap();
    let first = register(&app, "bob@example.com").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    let again = post(
        &app,
        "/api/v1/auth/register",
        json!({"email": "BOB@example.com ", "password": "another long password", "name": "Ann Lee"}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["content-type"], "application/json");
    let again: Value = again.json().await.unwrap();
    let keys = |user: &Value| {
        let mut keys: Vec<String> = user.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&again), keys(&first), "the same shape");
    assert_eq!(again["email"], first["email"]);
    assert_eq!(again["roles"], first["roles"]);
    assert_ne!(again["id"], first["id"], "the owner's id is not revealed");

    // The owner's password still works; the second caller's does not.
    assert_eq!(
        login(&app, "bob@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        login(&app, "bob@example.com", "another long password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_weak_password_is_422_with_field_errors() {
    let app = spawn::<UserService>().await.unwrap();
    let response = post(
        &app,
        "/api/v1/auth/register",
        json!({"email": "not-an-email", "password": "short", "name": ""}),
    )
    .await;
    let (status, body) = problem(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"],
        json!([
            {"field": "email", "message": "is not an email address"},
            {"field": "password", "message": "must be at least 12 characters long"},
            {"field": "name", "message": "is required"},
        ])
    );

    let response = post(
        &app,
        "/api/v1/auth/register",
        json!({"email": "c@example.com"}),
    )
    .await;
    let (status, body) = problem(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["password", "name"]);
}

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_look_the_same() {
    let app = spawn::<UserService>().await.unwrap();
    assert_eq!(
        register(&app, "carol@example.com").await.status(),
        StatusCode::CREATED
    );
    let wrong_password = problem(login(&app, "carol@example.com", "not the password").await).await;
    let unknown_email = problem(login(&app, "nobody@example.com", "not the password").await).await;
    assert_eq!(wrong_password.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password, unknown_email);
}

#[tokio::test]
async fn bad_access_tokens_are_all_401() {
    let (pem, key) = new_key();
    let app = spawn_with_key(&pem).await;
    let tokens = signed_in(&app).await;
    let good = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&app, &good).await.status(), StatusCode::OK);
    let sub = {
        let payload = good.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    };
    // The test signs with the service's own key, so only the broken part differs.
    assert_eq!(
        me(&app, &key.sign(&claims(&sub, &["customer"])).unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    let expired = Claims {
        iat: now() - 3600,
        exp: now() - 600,
        ..claims(&sub, &["customer"])
    };
    let wrong_audience = Claims {
        aud: "another-system".into(),
        ..claims(&sub, &["customer"])
    };
    let wrong_issuer = Claims {
        iss: "urn:somebody-else".into(),
        ..claims(&sub, &["customer"])
    };
    let mut bad: Vec<(&str, String)> = vec![
        ("expired", key.sign(&expired).unwrap()),
        ("wrong audience", key.sign(&wrong_audience).unwrap()),
        ("wrong issuer", key.sign(&wrong_issuer).unwrap()),
    ];

    let admin_payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&sub, &["customer", "admin"])).unwrap());
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = &admin_payload;
    bad.push(("tampered", parts.join(".")));

    let kid = key.kid();
    let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    bad.push(("alg none", format!("{none}.{admin_payload}.")));

    // HMAC confusion: HS256 keyed with the public key as published in the JWKS.
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let hs256 = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
    let message = format!("{hs256}.{admin_payload}");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
        message.as_bytes(),
    );
    bad.push((
        "HMAC-confused",
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())),
    ));

    let (_, stranger) = new_key();
    bad.push((
        "signed by another key",
        stranger.sign(&claims(&sub, &["customer"])).unwrap(),
    ));

    for (what, token) in bad {
        let response = me(&app, &token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        let (_, body) = problem(response).await;
        assert_eq!(body["type"], "urn:shop:problem:unauthorized", "{what}");
    }
    let anonymous = app.get("/api/v1/users/me").await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn::<UserService>().await.unwrap();
    let first = signed_in(&app).await;

    let response = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(
        me(&app, second["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );

    // The rotated token again: refused, and its whole family with it.
    let (status, _) = problem(refresh(&app, &first["refresh_token"]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = problem(refresh(&app, &second["refresh_token"]).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the successor was revoked too"
    );

    // Another sign-in is another family, untouched.
    let other = signed_in(&app).await;
    assert_eq!(
        refresh(&app, &other["refresh_token"]).await.status(),
        StatusCode::OK
    );
    let (status, _) = problem(refresh(&app, &json!("made-up")).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn of_two_concurrent_refreshes_exactly_one_wins() {
    let app = spawn::<UserService>().await.unwrap();
    for _ in 0..5 {
        let tokens = signed_in(&app).await;
        let (a, b) = tokio::join!(
            refresh(&app, &tokens["refresh_token"]),
            refresh(&app, &tokens["refresh_token"])
        );
        let mut statuses = [a.status(), b.status()];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
        // The loser presented a token that had just been rotated: that is a reuse, so the
        // winner's successor is revoked as well. A client must not refresh twice in parallel.
        let winner: Value = if a.status() == StatusCode::OK { a } else { b }
            .json()
            .await
            .unwrap();
        assert_eq!(
            refresh(&app, &winner["refresh_token"]).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn logout_revokes_the_refresh_token() {
    let app = spawn::<UserService>().await.unwrap();
    let tokens = signed_in(&app).await;
    let rotated: Value = refresh(&app, &tokens["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    let response = post(
        &app,
        "/api/v1/auth/logout",
        json!({"refresh_token": rotated["refresh_token"]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = problem(refresh(&app, &rotated["refresh_token"]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Logging out twice, or with a token nobody issued, is not an error.
    let again = post(
        &app,
        "/api/v1/auth/logout",
        json!({"refresh_token": "made-up"}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused_and_purged() {
    let app = spawn::<UserService>().await.unwrap();
    let tokens = signed_in(&app).await;
    let pool = sqlx::PgPool::connect(&app.env["DATABASE_URL"])
        .await
        .unwrap();
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, _) = problem(refresh(&app, &tokens["refresh_token"]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(user_service::tokens::purge_expired(&pool).await.unwrap(), 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Each key object of the JWKS holds exactly the public members.
fn assert_public_only(jwks: &Value) {
    for key in jwks["keys"].as_array().unwrap() {
        let mut members: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x"], "{key}");
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }
}

async fn jwks(app: &TestApp) -> Value {
    app.get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_configured_rotation_keeps_tokens_of_the_previous_key_valid() {
    let (old_pem, old_key) = new_key();
    let (new_pem, new_key) = new_key();
    let before = spawn_with_key(&old_pem).await;
    let tokens = signed_in(&before).await;
    let old_token = tokens["access_token"].as_str().unwrap().to_owned();

    // The deploy that rotates: new key current, old key previous, same database.
    let after = spawn_with::<UserService>([
        ("DATABASE_URL", before.env["DATABASE_URL"].as_str()),
        ("JWT_SIGNING_KEY", new_pem.as_str()),
        ("JWT_PREVIOUS_SIGNING_KEY", old_pem.as_str()),
    ])
    .await
    .unwrap();
    let published = jwks(&after).await;
    assert_public_only(&published);
    let kids: Vec<&str> = published["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_key.kid(), old_key.kid()]);

    assert_eq!(me(&after, &old_token).await.status(), StatusCode::OK);
    let fresh: Value = refresh(&after, &tokens["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    let header = fresh["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["kid"], new_key.kid(), "new tokens use the new key");

    // A verifier elsewhere in the system, reading the JWKS over HTTP, accepts both.
    let verifier = Verifier::remote(
        &VerifierConfig::new(ISSUER, AUDIENCE),
        after.url("/.well-known/jwks.json").parse().unwrap(),
    )
    .unwrap();
    verifier.principal(&old_token).await.unwrap();
    verifier
        .principal(fresh["access_token"].as_str().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_development_key_is_kept_across_restarts_and_rotates_in_the_database() {
    let first = spawn::<UserService>().await.unwrap();
    let database_url = first.env["DATABASE_URL"].clone();
    let published = jwks(&first).await;
    assert_public_only(&published);
    assert_eq!(published["keys"].as_array().unwrap().len(), 1);
    let tokens = signed_in(&first).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    first.stop().await.unwrap();

    let restarted = spawn_with::<UserService>([("DATABASE_URL", database_url.as_str())])
        .await
        .unwrap();
    assert_eq!(
        jwks(&restarted).await,
        published,
        "the same key after a restart"
    );
    assert_eq!(me(&restarted, &token).await.status(), StatusCode::OK);

    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let new_kid = user_service::keys::rotate_development_key(&pool)
        .await
        .unwrap();
    let rotated = spawn_with::<UserService>([("DATABASE_URL", database_url.as_str())])
        .await
        .unwrap();
    let keys = jwks(&rotated).await;
    assert_public_only(&keys);
    assert_eq!(keys["keys"][0]["kid"], new_kid.as_str());
    assert_eq!(keys["keys"][1], published["keys"][0]);
    assert_eq!(me(&rotated, &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_admin_is_seeded_from_configuration() {
    let app = spawn::<UserService>().await.unwrap();
    let tokens: Value = login(&app, "admin@example.com", "change-me-admin")
        .await
        .json()
        .await
        .unwrap();
    let account: Value = me(&app, tokens["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(account["roles"], json!(["customer", "admin"]));

    let custom = spawn_with::<UserService>([
        ("ADMIN_EMAIL", "Root@Shop.test"),
        ("ADMIN_PASSWORD", "a much longer secret"),
    ])
    .await
    .unwrap();
    assert_eq!(
        login(&custom, "root@shop.test", "a much longer secret")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        login(&custom, "admin@example.com", "change-me-admin")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

const ORDER_SECRET: &str = "order-service-secret-0123456789abcdef";
const NOTIFICATION_SECRET: &str = "notification-service-secret-0123456789";

#[tokio::test]
async fn get_user_serves_authenticated_service_calls_only() {
    let (pem, key) = new_key();
    let clients = format!("notification-service={NOTIFICATION_SECRET}");
    let app = spawn_with::<UserService>([
        ("JWT_SIGNING_KEY", pem.as_str()),
        ("SERVICE_CLIENTS", clients.as_str()),
    ])
    .await
    .unwrap();
    let user: Value = register(&app, "dora@example.com")
        .await
        .json()
        .await
        .unwrap();
    let id = user["id"].as_str().unwrap().to_owned();
    let mut client = UserServiceClient::new(shop_testkit::ops::channel(&app).await.unwrap());
    let call = |token: Option<String>, id: &str| {
        let mut request = tonic::Request::new(GetUserRequest { id: id.to_owned() });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };

    let anonymous = client.get_user(call(None, &id)).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    // A customer's token is not a service credential.
    let customer = login(&app, "dora@example.com", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = client
        .get_user(call(Some(customer), &id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The way a caller really does it: credentials → cached service token → metadata.
    let tokens = ServiceTokens::new(
        app.url("/internal/v1/service-token").parse().unwrap(),
        "notification-service",
        NOTIFICATION_SECRET,
    )
    .unwrap();
    let mut request = tonic::Request::new(GetUserRequest { id: id.clone() });
    tokens.authorize(&mut request).await.unwrap();
    let found = client.get_user(request).await.unwrap().into_inner();
    assert_eq!(found.id, id);
    assert_eq!(found.email, "dora@example.com");
    assert_eq!(found.name, "Ann Lee");
    // Cached: the same token again (a new one would carry a new jti).
    assert_eq!(
        tokens.bearer().await.unwrap(),
        tokens.bearer().await.unwrap()
    );

    // Any token with the service role and subject verifies; missing and malformed ids are
    // the caller's error.
    let service = key
        .sign(&claims("service:notification-service", &["service"]))
        .unwrap();
    let missing = client
        .get_user(call(Some(service.clone()), &Uuid::new_v4().to_string()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let malformed = client
        .get_user(call(Some(service), "not-a-uuid"))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn service_tokens_need_the_configured_credentials() {
    let clients = format!("order-service={ORDER_SECRET}");
    let app = spawn_with::<UserService>([("SERVICE_CLIENTS", clients.as_str())])
        .await
        .unwrap();
    let request = |name: &str, secret: &str| {
        app.client
            .post(app.url("/internal/v1/service-token"))
            .basic_auth(name, Some(secret))
            .send()
    };
    let issued: Value = request("order-service", ORDER_SECRET)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issued["token_type"], "Bearer");
    let payload = issued["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], "service:order-service");
    assert_eq!(claims["roles"], json!(["service"]));

    let wrong_secret = problem(request("order-service", "not-the-secret").await.unwrap()).await;
    let unknown = problem(request("gateway", ORDER_SECRET).await.unwrap()).await;
    assert_eq!(wrong_secret.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_secret, unknown);
    let anonymous = app
        .client
        .post(app.url("/internal/v1/service-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // A service token is not a user: /users/me refuses it.
    let me = me(&app, issued["access_token"].as_str().unwrap()).await;
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_registration_publishes_user_registered_through_the_outbox() {
    use std::time::Duration;

    use shop_events::user::UserRegistered;
    use shop_messaging::{Envelope, Event, testing::Tap};

    let app = spawn::<UserService>().await.unwrap();
    // A queue bound before the event is published, as notification-service's is.
    let tap = Tap::bind(&app.env["AMQP_URL"], [UserRegistered::ROUTING_KEY])
        .await
        .unwrap();

    let user: Value = register(&app, "erin@example.com")
        .await
        .json()
        .await
        .unwrap();
    let message = tap
        .next(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("no UserRegistered within 15 s");
    let event = Envelope::from_slice(&message.data).unwrap();
    assert_eq!(event.source, "user-service");
    assert_eq!(event.kind, UserRegistered::kind());
    assert_eq!(event.kind, "user.registered");
    assert_eq!(
        event.data_as::<UserRegistered>().unwrap(),
        UserRegistered {
            user_id: user["id"].as_str().unwrap().parse().unwrap(),
            email: "erin@example.com".into(),
            name: "Ann Lee".into(),
        }
    );

    // A registration of a taken address (answered like a new one) writes no event.
    assert_eq!(
        register(&app, "erin@example.com").await.status(),
        StatusCode::CREATED
    );
    assert!(
        tap.next(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none(),
        "a second UserRegistered"
    );
}
