//! The gRPC side of every service: the service's own gRPC services plus the standard health
//! service and server reflection, behind tracing and metrics layers; and the one way a service
//! reaches another's gRPC server ([`Peers::channel`], balanced over every address of the
//! peer's name: see [`peers`] for why).
//!
//! ## TLS between services
//!
//! Calls between services carry service tokens and, in `Authorize`, a whole card, so outside a
//! laptop they are encrypted and the caller checks whom it talks to (ADR 0017). Server side,
//! read by the runtime for every service ([`ServerTls`]): `GRPC_TLS_CERT_FILE` and
//! `GRPC_TLS_KEY_FILE`, PEM files of the server's certificate chain and key. Client side, read
//! by each service that calls another ([`ClientTls`]): `GRPC_TLS_CA_FILE`, the CA that signed
//! the servers' certificates (the only one trusted: internal certificates come from a private
//! CA, not the public web's), and `https://` in its `*_GRPC_URL`s ([`url_or`]).
//!
//! With `SHOP_ENV=production` a server without a certificate, a caller without the CA and an
//! `http://` gRPC URL are each a configuration error naming the variable. In development all
//! three may be missing and gRPC is plaintext, as `make run`, compose and the tests use it;
//! `STACK_GRPC_TLS=1 make run` runs the native stack with a development CA instead.
//!
//! There is no client certificate (mTLS): the caller is already authenticated and authorized
//! by its service token (`shop_auth::grpc::RequireService`, ADR 0005); ADR 0017 says why one
//! identity mechanism is kept rather than two.

pub mod peers;

use std::{net::SocketAddr, path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::{
    BootError,
    config::{ConfigError, Env},
    health::Readiness,
    metrics::GrpcMetricsLayer,
    mode::Mode,
    telemetry,
};

pub use peers::{PeerChannel, Peers, Resolve, SystemResolver};

/// The server's certificate chain (PEM): what it proves its name with.
pub const CERT_FILE: &str = "GRPC_TLS_CERT_FILE";
/// The server certificate's private key (PEM).
pub const KEY_FILE: &str = "GRPC_TLS_KEY_FILE";
/// The CA certificate(s) a caller trusts for other services' gRPC servers (PEM).
pub const CA_FILE: &str = "GRPC_TLS_CA_FILE";

/// The TLS identity of this service's gRPC server (`GRPC_TLS_CERT_FILE`, `GRPC_TLS_KEY_FILE`).
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tonic's Identity prints its key: never.
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// Reads the certificate and key, both or neither. Neither is plaintext gRPC, which
    /// production refuses. The files are read and checked now (PEM, a key that matches the
    /// certificate), so a bad file is a configuration error naming its variable, at start.
    pub fn from_env(env: &mut Env) -> Result<Option<Self>, ConfigError> {
        let mode = Mode::of(env);
        let cert_path = env.optional::<String>(CERT_FILE, "the path of a PEM certificate chain");
        let key_path = env.optional::<String>(KEY_FILE, "the path of a PEM private key");
        let (cert_path, key_path) = (cert_path?, key_path?);
        let (cert_path, key_path) = match (cert_path, key_path) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                let problem = "is not set: this service's gRPC server would accept plaintext, \
                               and its callers' tokens and card data would cross the network \
                               readable; give the server a certificate";
                let cert = mode.refuse_in_production(env, CERT_FILE, (), problem);
                let key = mode.refuse_in_production(env, KEY_FILE, (), problem);
                return cert.and(key).map(|()| None);
            }
            (Some(_), None) => return both_or_neither(env, KEY_FILE, CERT_FILE),
            (None, Some(_)) => return both_or_neither(env, CERT_FILE, KEY_FILE),
        };
        let cert = read_pem(env, CERT_FILE, &cert_path);
        let key = read_pem(env, KEY_FILE, &key_path);
        let (cert, key) = (cert?, key?);
        let chain = certificates(env, CERT_FILE, &cert_path, &cert)?;
        let Ok(private_key) = PrivateKeyDer::from_pem_slice(&key) else {
            return env.invalid(KEY_FILE, format!("{key_path} holds no PEM private key"));
        };
        // What tonic will build at start, built now: a key that does not belong to the
        // certificate is reported here, by name, instead of failing the server later.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let checked = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain, private_key)
                    .map_err(|err| err.to_string())
            });
        if let Err(err) = checked {
            return env.invalid(
                KEY_FILE,
                format!("{key_path} does not fit the certificate in {cert_path}: {err}"),
            );
        }
        Ok(Some(Self {
            identity: Identity::from_pem(cert, key),
        }))
    }
}

fn both_or_neither<T>(env: &mut Env, missing: &str, given: &str) -> Result<T, ConfigError> {
    env.invalid(
        missing,
        format!("is not set, but {given} is: a TLS server needs both (or neither, in development)"),
    )
}

fn read_pem(env: &mut Env, variable: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(Path::new(path))
        .or_else(|err| env.invalid(variable, format!("cannot read {path}: {err}")))
}

/// The PEM file at `path`, set in `variable`, read and checked to hold at least one certificate:
/// a CA file, read once at start. A file that cannot be read or holds none is a problem of
/// `variable`, reported with the file's name. (`GRPC_TLS_CA_FILE` here; notification-service's
/// `SMTP_TLS_CA_FILE` too.)
pub fn certificates_file(
    env: &mut Env,
    variable: &str,
    path: &str,
) -> Result<Vec<u8>, ConfigError> {
    let pem = read_pem(env, variable, path)?;
    certificates(env, variable, path, &pem)?;
    Ok(pem)
}

/// The certificates of a PEM file; at least one.
fn certificates(
    env: &mut Env,
    variable: &str,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => env.invalid(variable, format!("{path} holds no PEM certificate")),
        Err(err) => env.invalid(variable, format!("{path} is not valid PEM: {err}")),
    }
}

/// The CA a service trusts for other services' gRPC servers (`GRPC_TLS_CA_FILE`): the TLS part
/// of [`Peers`].
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
}

impl ClientTls {
    /// Reads and checks the CA file; production requires it (its URLs are `https://`).
    pub fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let path = match env.optional::<String>(CA_FILE, "the path of a PEM CA certificate")? {
            Some(path) => path,
            None => {
                return Mode::of(env).refuse_in_production(
                    env,
                    CA_FILE,
                    Self::default(),
                    "is not set: without the CA that signed the other services' certificates \
                     this service cannot check whom its gRPC calls reach",
                );
            }
        };
        let pem = certificates_file(env, CA_FILE, &path)?;
        Ok(Self {
            ca: Some(Certificate::from_pem(pem)),
        })
    }
}

/// Another service's gRPC URL from `key`, `default` when unset: `http(s)://`, and `https://`
/// only with `SHOP_ENV=production` (the call would cross the network in clear text).
///
/// # Panics
/// When `default` is not a URL: defaults are constants of the code, checked by its tests.
pub fn url_or(env: &mut Env, key: &str, default: &str) -> Result<url::Url, ConfigError> {
    let url = env.http_url_or(key, default)?;
    if url.scheme() == "http" {
        Mode::of(env).refuse_in_production(
            env,
            key,
            url,
            "is plain http: service tokens and card data would cross the network readable; \
             use https:// (and GRPC_TLS_CA_FILE)",
        )
    } else {
        Ok(url)
    }
}

/// Serves `routes` (the services named in `served`) plus `grpc.health.v1.Health` and
/// reflection until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    served: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), BootError> {
    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    // A descriptor set may describe more services than this server runs (shop-proto holds every
    // package): advertise exactly the ones served, so `grpcurl list` tells the truth.
    let advertised = served.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    for name in advertised.clone() {
        reflection_v1 = reflection_v1.with_service_name(name);
        reflection_v1alpha = reflection_v1alpha.with_service_name(name);
    }
    let reflection_v1 = reflection_v1
        .build_v1()
        .map_err(|err| BootError::Other(err.to_string()))?;
    let reflection_v1alpha = reflection_v1alpha
        .build_v1alpha()
        .map_err(|err| BootError::Other(err.to_string()))?;

    // Only these services' methods are metric labels (GrpcMetricsLayer).
    let metrics = GrpcMetricsLayer::new(advertised.clone());
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(ServerTlsConfig::new().identity(tls.identity))
            .map_err(|err| BootError::Other(format!("gRPC TLS: {err}")))?;
    }
    server
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(telemetry::http_span)
                // A non-OK status is usually the caller's problem (NOT_FOUND, UNAUTHENTICATED);
                // real faults are logged where they happen (`ApiError::internal`), so the
                // transport layer only notes failures at debug level.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(metrics)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
        .map_err(|err| BootError::Other(format!("gRPC server failed: {err}")))
}

/// Keeps the gRPC health status in step with readiness: `SERVING` while every probe is up,
/// `NOT_SERVING` otherwise and from the moment shutdown begins.
pub async fn mirror_readiness(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let status = if readiness.check().await.ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_all(&reporter, &services, status).await;
    }
    set_all(&reporter, &services, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    // "" is the whole server, as defined by the gRPC health protocol.
    reporter.set_service_status("", status).await;
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
}

/// Binds a listener, naming the address in the error.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, BootError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BootError::Bind { addr, source })
}
