//! TLS between services (ADR 0017): a service's gRPC server with a certificate signed by a CA
//! answers over `https://` a client that trusts that CA, and nobody else; production refuses a
//! server without a certificate and plaintext gRPC URLs.
//!
//! The certificates are made here, for each test, with `rcgen`: no key is ever committed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::time::Duration;

use axum::Router;
use shop_runtime::{
    BootError, Context, Endpoints, Running, Service, ServiceSpec,
    config::Env,
    grpc::{self, ClientTls, Peers, ServerTls},
};
use support::Pki;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A service with nothing of its own: its gRPC server serves the standard health service, like
/// every service's does, which is all these tests call.
struct Bare;

impl Service for Bare {
    type Config = ();

    fn spec() -> ServiceSpec {
        ServiceSpec::new("tls-test-service", 0, 0)
    }

    async fn build(_: &Context, (): ()) -> Result<Endpoints, BootError> {
        Ok(Endpoints::new(Router::new()))
    }
}

async fn start(pairs: &[(&str, &str)]) -> Running {
    let mut vars = vec![("HTTP_ADDR", "127.0.0.1:0"), ("GRPC_ADDR", "127.0.0.1:0")];
    vars.extend_from_slice(pairs);
    shop_runtime::start::<Bare>(Env::from_pairs(vars))
        .await
        .expect("the service starts")
}

/// The client side as a calling service builds it: `GRPC_TLS_CA_FILE` through its config.
fn client_trusting(ca_file: &str) -> Peers {
    let mut env = Env::from_pairs([(grpc::CA_FILE, ca_file)]);
    let peers = Peers::from_env(&mut env);
    env.finish().unwrap();
    peers.unwrap()
}

async fn health_check(peers: &Peers, url: &str) -> Result<(), tonic::Status> {
    let channel = peers
        .channel(&url.parse().unwrap(), Duration::from_secs(5))
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

#[tokio::test]
async fn a_server_with_a_certificate_from_the_ca_answers_a_client_trusting_that_ca_only() {
    let pki = Pki::new("shop test CA");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let app = start(&[(grpc::CERT_FILE, &cert), (grpc::KEY_FILE, &key)]).await;
    let port = app.grpc_addr.port();
    let trusting = client_trusting(&pki.ca_file());

    // Over TLS, the certificate checked against the CA and the URL's host (an IP address here).
    health_check(&trusting, &format!("https://127.0.0.1:{port}"))
        .await
        .expect("a client trusting the CA is answered over https");
    health_check(&trusting, &format!("https://localhost:{port}"))
        .await
        .expect("by either name the certificate carries");

    // A client trusting another CA does not get through: it cannot tell this server from an
    // impostor's, so it refuses to send anything.
    let stranger = Pki::new("another CA");
    let refused = health_check(
        &client_trusting(&stranger.ca_file()),
        &format!("https://127.0.0.1:{port}"),
    )
    .await
    .expect_err("a client not trusting the CA refuses the server");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        format!("{refused:?}").contains("UnknownIssuer"),
        "refused for the certificate's issuer: {refused:?}"
    );

    // Plaintext to the TLS port gets nowhere either.
    let plain = health_check(&Peers::default(), &format!("http://127.0.0.1:{port}")).await;
    assert!(plain.is_err(), "a plaintext call was answered: {plain:?}");

    app.shutdown();
    app.stopped().await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = Pki::new("shop test CA");
    let (cert, key) = pki.issue("other", &["payment-service.example"]);
    let app = start(&[(grpc::CERT_FILE, &cert), (grpc::KEY_FILE, &key)]).await;
    let refused = health_check(
        &client_trusting(&pki.ca_file()),
        &format!("https://127.0.0.1:{}", app.grpc_addr.port()),
    )
    .await
    .expect_err("the right CA, but not this server's name");
    assert!(
        format!("{refused:?}").contains("NotValidForName"),
        "{refused:?}"
    );
    app.shutdown();
    app.stopped().await.unwrap();
}

/// What production refuses, each by its variable: a gRPC server without a certificate, a caller
/// without the CA, and a plaintext gRPC URL. Development keeps all three, for `make run`.
#[test]
fn production_refuses_plaintext_grpc_by_name() {
    let production = [
        ("SHOP_ENV", "production"),
        ("PEER_GRPC_URL", "http://peer:50051"),
    ];
    let mut env = Env::from_pairs(production);
    let _ = ServerTls::from_env(&mut env);
    let _ = Peers::from_env(&mut env);
    let _ = grpc::url_or(&mut env, "PEER_GRPC_URL", "http://127.0.0.1:50051");
    let err = env.finish().unwrap_err();
    let refused: Vec<&str> = err.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(
        refused,
        [
            grpc::CERT_FILE,
            grpc::KEY_FILE,
            grpc::CA_FILE,
            "PEER_GRPC_URL"
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("PEER_GRPC_URL: is plain http") && text.contains("SHOP_ENV=production"),
        "{text}"
    );

    // The default (an http:// URL) counts as well: unset is no way around the check.
    let mut env = Env::from_pairs([("SHOP_ENV", "production")]);
    let _ = grpc::url_or(&mut env, "PEER_GRPC_URL", "http://127.0.0.1:50051");
    assert!(env.finish().is_err());

    let mut env = Env::from_pairs([("PEER_GRPC_URL", "http://peer:50051")]);
    assert!(matches!(ServerTls::from_env(&mut env), Ok(None)));
    assert!(Peers::from_env(&mut env).is_ok());
    assert!(grpc::url_or(&mut env, "PEER_GRPC_URL", "http://127.0.0.1:50051").is_ok());
    env.finish().expect("development allows plaintext gRPC");
}

/// The runtime reads the server's certificate for every service: a production service without
/// one does not start.
#[test]
fn a_production_service_without_a_grpc_certificate_does_not_start() {
    let mut env = Env::from_pairs([("SHOP_ENV", "production"), ("OPS_ADDR", "127.0.0.1:0")]);
    let err = shop_runtime::load::<Bare>(&mut env).unwrap_err();
    let refused: Vec<&str> = err.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(refused, [grpc::CERT_FILE, grpc::KEY_FILE], "{err}");
}

#[test]
fn production_accepts_tls_settings_and_reports_bad_files_by_name() {
    let pki = Pki::new("shop test CA");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let ca = pki.ca_file();
    let mut env = Env::from_pairs([
        ("SHOP_ENV", "production"),
        (grpc::CERT_FILE, cert.as_str()),
        (grpc::KEY_FILE, key.as_str()),
        (grpc::CA_FILE, ca.as_str()),
        ("PEER_GRPC_URL", "https://peer:50051"),
    ]);
    assert!(matches!(ServerTls::from_env(&mut env), Ok(Some(_))));
    assert!(Peers::from_env(&mut env).is_ok());
    assert!(grpc::url_or(&mut env, "PEER_GRPC_URL", "http://127.0.0.1:50051").is_ok());
    env.finish()
        .expect("TLS everywhere is what production wants");

    // A key that belongs to another certificate, a file that is not PEM, a path that does not
    // exist, a certificate without its key: each named, at start.
    let (_, other_key) = pki.issue("other", &["localhost"]);
    let not_pem = pki.write("not.pem", "hello");
    let missing = pki.path("missing.pem");
    for (pairs, variable, problem) in [
        (
            vec![(grpc::CERT_FILE, &cert), (grpc::KEY_FILE, &other_key)],
            grpc::KEY_FILE,
            "does not fit the certificate",
        ),
        (
            vec![(grpc::CERT_FILE, &not_pem), (grpc::KEY_FILE, &key)],
            grpc::CERT_FILE,
            "holds no PEM certificate",
        ),
        (
            vec![(grpc::CERT_FILE, &missing), (grpc::KEY_FILE, &key)],
            grpc::CERT_FILE,
            "cannot read",
        ),
        (
            vec![(grpc::CERT_FILE, &cert)],
            grpc::KEY_FILE,
            "is not set, but",
        ),
    ] {
        let mut env = Env::from_pairs(pairs);
        let _ = ServerTls::from_env(&mut env);
        let text = env.finish().unwrap_err().to_string();
        assert!(text.contains(&format!("{variable}: ")), "{text}");
        assert!(text.contains(problem), "{problem} in {text}");
    }
    let mut env = Env::from_pairs([(grpc::CA_FILE, not_pem.as_str())]);
    let _ = ClientTls::from_env(&mut env);
    let text = env.finish().unwrap_err().to_string();
    assert!(text.contains("GRPC_TLS_CA_FILE: "), "{text}");
}

#[test]
fn an_https_url_without_a_ca_is_an_error_not_a_plaintext_call() {
    let url = "https://127.0.0.1:1".parse().unwrap();
    let err = Peers::default()
        .channel(&url, Duration::from_secs(1))
        .unwrap_err();
    assert!(err.contains("GRPC_TLS_CA_FILE is not set"), "{err}");
}
