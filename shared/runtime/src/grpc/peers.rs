//! How a service calls another service's gRPC server: one balanced channel per peer, spread over
//! every address the peer's host name resolves to, re-resolved while the service runs.
//!
//! ## Why not one connection to the Service's address
//!
//! gRPC runs on HTTP/2, which sends every call of a client over one long-lived TCP connection.
//! A Kubernetes ClusterIP Service balances *connections* (kube-proxy picks a pod when the TCP
//! connection opens), not requests: once a caller's connection is open, every call it ever
//! makes goes to the pod picked then. Three order-service pods pin themselves to at most three
//! payment pods, and a payment pod added later gets no calls from callers already connected;
//! scaling the called service buys nothing. So the caller balances itself:
//!
//! - the called service is a *headless* Service (`clusterIP: None`): its DNS name resolves to
//!   the address of every **ready** pod instead of one virtual IP;
//! - [`Peers::channel`] resolves the URL's host, opens a connection per address and spreads
//!   calls over them (tonic's balanced [`Channel`], tower's power-of-two-choices balancer);
//! - it resolves the name again every `GRPC_RESOLVE_INTERVAL_SECONDS` (15 s by default): a pod
//!   that became ready is added, one that left the DNS answer (stopped, not ready) is removed,
//!   so a rollout or a scale-up reaches every caller within one interval. A resolution that
//!   fails or answers nothing keeps the last good set (and says so in the log): a DNS hiccup
//!   must not take every peer away.
//!
//! The same path serves a URL whose host is an IP address (the native stack's
//! `http://127.0.0.1:50055`): its "resolution" is that address, a set of one.
//!
//! ## TLS
//!
//! Each connection goes to a pod's IP address, but the certificate is checked against the
//! URL's host name (`shop-payment-service`), which is what the certificate names and what the
//! caller means to reach; the HTTP/2 `:authority` is that name too. An address is only where
//! to connect, never whom to trust.
//!
//! ## Deadlines
//!
//! Every call has the channel's timeout, from the moment it is made: it covers waiting for an
//! address (none resolved yet), connecting and the answer. Running out of it is
//! `DEADLINE_EXCEEDED`, or `UNAVAILABLE` when the name has never resolved to any address.

use std::{
    collections::BTreeSet,
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::mpsc::Sender;
use tonic::{
    Status,
    body::Body,
    transport::{Channel, ClientTlsConfig, Endpoint, channel::Change},
};
use tower::Service;

use super::{CA_FILE, ClientTls};
use crate::config::{ConfigError, Env};

/// How often a peer's host name is resolved again, in whole seconds (at least 1).
pub const RESOLVE_INTERVAL: &str = "GRPC_RESOLVE_INTERVAL_SECONDS";

/// The default of [`RESOLVE_INTERVAL`]: a new or departed pod is seen within this, at the cost
/// of one DNS query per peer and interval.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(15);

/// How many address changes may wait for the balancer (it takes them on its next call).
const PENDING_CHANGES: usize = 64;

/// Where a host name's addresses come from. [`SystemResolver`] in a service; a test gives its
/// own, to put several local servers behind one name.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` has now, with `port` (the URL's).
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The operating system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS; in a pod, the
/// cluster DNS, which answers a headless Service's name with its ready pods' addresses).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// How this service reaches other services' gRPC servers: the CA it trusts for them
/// (`GRPC_TLS_CA_FILE`, [`ClientTls`]) and how often it re-resolves their names
/// (`GRPC_RESOLVE_INTERVAL_SECONDS`). Read by the services that call others, next to their
/// `*_GRPC_URL`s; [`Peers::channel`] is the one way a service builds a channel to another.
#[derive(Clone)]
pub struct Peers {
    tls: ClientTls,
    resolve_every: Duration,
    resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peers")
            .field("tls", &self.tls)
            .field("resolve_every", &self.resolve_every)
            .finish_non_exhaustive()
    }
}

/// Plaintext (development), the system resolver, the default interval.
impl Default for Peers {
    fn default() -> Self {
        Self::new(ClientTls::default())
    }
}

impl Peers {
    /// Reads `GRPC_TLS_CA_FILE` (required in production) and `GRPC_RESOLVE_INTERVAL_SECONDS`.
    pub fn from_env(env: &mut Env) -> Result<Self, ConfigError> {
        let tls = ClientTls::from_env(env);
        let every = match env.seconds_or(RESOLVE_INTERVAL, DEFAULT_RESOLVE_INTERVAL) {
            Ok(every) if every.is_zero() => env.invalid(
                RESOLVE_INTERVAL,
                "must be at least 1: the names would be resolved without pause".to_owned(),
            ),
            other => other,
        };
        Ok(Self::new(tls?).resolve_every(every?))
    }

    /// `tls`, the system resolver and the default interval.
    pub fn new(tls: ClientTls) -> Self {
        Self {
            tls,
            resolve_every: DEFAULT_RESOLVE_INTERVAL,
            resolver: Arc::new(SystemResolver),
        }
    }

    /// Resolves each peer's name again this often.
    #[must_use]
    pub fn resolve_every(mut self, every: Duration) -> Self {
        self.resolve_every = every;
        self
    }

    /// Takes addresses from `resolver` instead of the system's.
    #[must_use]
    pub fn with_resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// A channel to `url` balanced over every address its host resolves to, kept up to date
    /// in the background (the module's documentation says why), with `timeout` for connecting
    /// and for each call.
    ///
    /// Nothing is connected yet: a service starts while the one it calls is still down, and a
    /// connection that breaks is opened again on the next call. The background resolution
    /// ends when the last clone of the channel is dropped. Needs a Tokio runtime.
    ///
    /// `https://` is TLS, every server's certificate checked against the CA and the URL's host;
    /// `http://` is plaintext (development only: [`super::url_or`] refuses it in production).
    pub fn channel(&self, url: &url::Url, timeout: Duration) -> Result<PeerChannel, String> {
        let target = Target::of(url, &self.tls, timeout)?;
        // Every endpoint is built the same way: building one now reports a bad URL or TLS
        // setting here, at start, not in the background later.
        target.endpoint(SocketAddr::from(([127, 0, 0, 1], target.port)))?;

        let (channel, changes) = Channel::balance_channel(PENDING_CHANGES);
        let addresses = Arc::new(AtomicUsize::new(0));
        tokio::spawn(keep_resolved(
            target,
            Arc::clone(&self.resolver),
            self.resolve_every,
            changes,
            Arc::clone(&addresses),
        ));
        Ok(PeerChannel {
            channel,
            timeout,
            peer: Arc::from(url.as_str()),
            addresses,
        })
    }
}

/// What every endpoint of one peer shares.
struct Target {
    scheme: String,
    /// The URL's host as a certificate names it: a DNS name or an IP address, no brackets.
    host: String,
    port: u16,
    /// `scheme://host:port`: the `:authority` of every call, whichever address it goes to.
    origin: tonic::transport::Uri,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
}

impl Target {
    fn of(url: &url::Url, tls: &ClientTls, timeout: Duration) -> Result<Self, String> {
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{url} has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{url} has no port"))?;
        let authority = url.host_str().unwrap_or(&host);
        let origin = format!("{}://{authority}:{port}", url.scheme())
            .parse()
            .map_err(|err| format!("{url}: {err}"))?;
        let tls = match (url.scheme(), &tls.ca) {
            ("https", Some(ca)) => Some(
                ClientTlsConfig::new()
                    .ca_certificate(ca.clone())
                    // The name to verify, and to send as SNI: the URL's, not the address's.
                    .domain_name(host.clone()),
            ),
            ("https", None) => {
                return Err(format!(
                    "{url} is https, but {CA_FILE} is not set: which CA signs its certificate?"
                ));
            }
            _ => None,
        };
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
            origin,
            tls,
            timeout,
        })
    }

    /// The endpoint for one of the peer's addresses.
    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(format!("{}://{addr}", self.scheme))
            .map_err(|err| format!("{addr}: {err}"))?
            .origin(self.origin.clone())
            .connect_timeout(self.timeout);
        match &self.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|err| format!("{}: {err}", self.origin)),
            None => Ok(endpoint),
        }
    }
}

/// Resolves the target's host now and every `every` after, turning each difference from the
/// previous answer into endpoint changes of the balanced channel; ends when the channel is gone.
async fn keep_resolved(
    target: Target,
    resolver: Arc<dyn Resolve>,
    every: Duration,
    changes: Sender<Change<SocketAddr, Endpoint>>,
    addresses: Arc<AtomicUsize>,
) {
    let peer = &target.origin;
    let mut current = BTreeSet::<SocketAddr>::new();
    loop {
        match resolver.resolve(&target.host, target.port).await {
            Ok(found) if !found.is_empty() => {
                let found: BTreeSet<SocketAddr> = found.into_iter().collect();
                let gone: Vec<SocketAddr> = current.difference(&found).copied().collect();
                let new: Vec<SocketAddr> = found.difference(&current).copied().collect();
                for addr in &gone {
                    if changes.send(Change::Remove(*addr)).await.is_err() {
                        return;
                    }
                    current.remove(addr);
                }
                for addr in &new {
                    match target.endpoint(*addr) {
                        Ok(endpoint) => {
                            if changes.send(Change::Insert(*addr, endpoint)).await.is_err() {
                                return;
                            }
                            current.insert(*addr);
                        }
                        Err(err) => tracing::error!(%peer, %addr, error = %err, "unusable address"),
                    }
                }
                addresses.store(current.len(), Ordering::Relaxed);
                if !gone.is_empty() || !new.is_empty() {
                    tracing::info!(%peer, addresses = ?current, added = ?new, removed = ?gone,
                        "gRPC peer's addresses changed");
                }
            }
            Ok(_) => tracing::warn!(%peer, addresses = ?current,
                "the name resolved to no address; keeping the last ones"),
            Err(err) => tracing::warn!(%peer, addresses = ?current, error = %err,
                "cannot resolve the name; keeping the last addresses"),
        }
        tokio::select! {
            // Every handle of the channel dropped: nobody calls this peer any more.
            () = changes.closed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// A channel to another service's gRPC server, balanced over its addresses (see the module);
/// what the generated clients take (`PaymentServiceClient<PeerChannel>`). Cheap to clone: the
/// clones share the connections.
#[derive(Clone)]
pub struct PeerChannel {
    channel: Channel,
    timeout: Duration,
    /// The URL, for error messages.
    peer: Arc<str>,
    /// How many addresses the channel has now.
    addresses: Arc<AtomicUsize>,
}

impl fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChannel")
            .field("peer", &self.peer)
            .field("addresses", &self.addresses.load(Ordering::Relaxed))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for PeerChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.channel.call(request);
        let (timeout, peer, addresses) = (self.timeout, self.peer.clone(), self.addresses.clone());
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => {
                    let status = if addresses.load(Ordering::Relaxed) == 0 {
                        Status::unavailable(format!(
                            "{peer}: its host name has not resolved to any address"
                        ))
                    } else {
                        Status::deadline_exceeded(format!(
                            "{peer} did not answer within {timeout:?}"
                        ))
                    };
                    // tonic turns a `Status` error into that status, code and message.
                    let status: BoxError = Box::new(status);
                    Err(status)
                }
            }
        })
    }
}
