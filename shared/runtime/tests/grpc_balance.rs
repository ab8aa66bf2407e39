//! Client-side balancing (`shop_runtime::grpc::Peers`): every address a peer's name resolves to
//! gets calls, the set follows the name as it is resolved again, and over TLS every address is
//! checked against the name, not the address.
//!
//! The servers are real tonic servers on loopback addresses (127.0.0.1, 127.0.0.2, ... share
//! one port, as pods behind a headless Service do), each counting the calls it answers. The
//! name is resolved by a resolver the test controls — what a cluster's DNS would answer for a
//! headless Service — except in one test, which goes through the system's resolver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use crate::support;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use shop_runtime::{
    config::Env,
    grpc::{self, PeerChannel, Peers, Resolve},
};
use support::Pki;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    service::interceptor::InterceptedService,
    transport::{Identity, Server, ServerTlsConfig},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How often the tests' channels resolve again: short, so a test sees a change quickly.
const RESOLVE_EVERY: Duration = Duration::from_millis(50);

/// A gRPC server (the standard health service) counting the calls it answered.
struct Backend {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Backend {
    async fn start(listener: TcpListener, tls: Option<Identity>) -> Self {
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let (_reporter, health) = tonic_health::server::health_reporter();
        let counted = InterceptedService::new(health, move |request| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(request)
        });
        let mut server = Server::builder();
        if let Some(identity) = tls {
            server = server
                .tls_config(ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        let stop = CancellationToken::new();
        tokio::spawn(server.add_service(counted).serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        ));
        Self { addr, calls, stop }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds one port on each of `ips`: the first picks a free port, the others take the same one
/// (tried again with another port when one is taken).
async fn listeners(ips: &[IpAddr]) -> Vec<TcpListener> {
    'attempt: for _ in 0..20 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut bound = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(listener) => bound.push(listener),
                Err(_) => continue 'attempt,
            }
        }
        return bound;
    }
    panic!("no port free on all of {ips:?}");
}

/// `n` servers on 127.0.0.1, 127.0.0.2, ... sharing one port, each with `tls` if given.
async fn backends(n: u8, tls: Option<(&str, &str)>) -> Vec<Backend> {
    let ips: Vec<IpAddr> = (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let identity = tls.map(|(cert, key)| {
        Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    });
    let mut started = Vec::new();
    for listener in listeners(&ips).await {
        started.push(Backend::start(listener, identity.clone()).await);
    }
    started
}

/// A name server the test controls: it answers every name with the addresses set last (or an
/// error), and counts the questions.
#[derive(Clone)]
struct Names {
    answer: Arc<Mutex<Result<Vec<SocketAddr>, String>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Names {
    fn answering(addrs: &[SocketAddr]) -> Self {
        Self {
            answer: Arc::new(Mutex::new(Ok(addrs.to_vec()))),
            asked: Arc::default(),
        }
    }

    fn answer(&self, addrs: &[SocketAddr]) {
        *self.answer.lock().unwrap() = Ok(addrs.to_vec());
    }

    fn fail(&self, problem: &str) {
        *self.answer.lock().unwrap() = Err(problem.to_owned());
    }

    fn questions(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    /// Waits until the channel has asked twice more: the second question comes after the
    /// first answer has been handed to the balancer, so the current answer is in effect.
    async fn settle(&self) {
        let seen = self.questions();
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.questions() < seen + 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the channel resolves the name again");
    }
}

impl Resolve for Names {
    fn resolve(&self, host: &str, _port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        self.asked.lock().unwrap().push(host.to_owned());
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { answer.map_err(io::Error::other) })
    }
}

fn channel(peers: &Peers, url: &str) -> PeerChannel {
    peers
        .channel(&url.parse().unwrap(), Duration::from_secs(5))
        .unwrap()
}

/// `n` health checks, one after the other; every one must succeed.
async fn calls(channel: &PeerChannel, n: usize) {
    for _ in 0..n {
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("every call is answered");
    }
}

fn counts(backends: &[Backend]) -> Vec<usize> {
    backends.iter().map(Backend::calls).collect()
}

#[tokio::test]
async fn two_servers_behind_one_name_both_receive_calls() {
    let servers = backends(2, None).await;
    let names = Names::answering(&[servers[0].addr, servers[1].addr]);
    let peers = Peers::default()
        .resolve_every(RESOLVE_EVERY)
        .with_resolver(names.clone());
    let port = servers[0].addr.port();
    let payment = channel(&peers, &format!("http://shop-payment-service:{port}"));

    calls(&payment, 40).await;

    let counts = counts(&servers);
    assert!(
        counts.iter().all(|&n| n > 0),
        "each server answered some of the 40 calls: {counts:?}"
    );
    assert_eq!(counts.iter().sum::<usize>(), 40);
    assert_eq!(
        names.asked.lock().unwrap()[0],
        "shop-payment-service",
        "the URL's host is what is resolved"
    );
}

/// The system's resolver, as a service uses it: `localhost` comes from `/etc/hosts`, like a
/// cluster name comes from its DNS. Every address the name has gets a server and calls.
#[tokio::test]
async fn every_address_of_a_name_from_the_system_resolver_receives_calls() {
    let mut ips: Vec<IpAddr> = tokio::net::lookup_host(("localhost", 0))
        .await
        .unwrap()
        .map(|addr| addr.ip())
        .collect();
    ips.sort();
    ips.dedup();
    let mut servers = Vec::new();
    for listener in listeners(&ips).await {
        servers.push(Backend::start(listener, None).await);
    }
    let port = servers[0].addr.port();
    let peers = Peers::default().resolve_every(RESOLVE_EVERY);
    let local = channel(&peers, &format!("http://localhost:{port}"));

    calls(&local, 20 * servers.len()).await;

    let counts = counts(&servers);
    assert!(counts.iter().all(|&n| n > 0), "{ips:?}: {counts:?}");
}

/// A pod that leaves the DNS answer (stopped, no longer ready) stops getting calls, one that
/// joins it starts getting them; a failed resolution changes nothing.
#[tokio::test]
async fn the_addresses_follow_the_name_as_it_is_resolved_again() {
    let servers = backends(3, None).await;
    let [a, b, c] = [servers[0].addr, servers[1].addr, servers[2].addr];
    let names = Names::answering(&[a, b]);
    let peers = Peers::default()
        .resolve_every(RESOLVE_EVERY)
        .with_resolver(names.clone());
    let payment = channel(&peers, &format!("http://shop-payment-service:{}", a.port()));
    calls(&payment, 40).await;
    let before = counts(&servers);
    assert!(
        before[0] > 0 && before[1] > 0 && before[2] == 0,
        "{before:?}"
    );

    // a leaves the answer: it is still running, but gets nothing more, and every call succeeds.
    names.answer(&[b]);
    names.settle().await;
    calls(&payment, 20).await;
    let after = counts(&servers);
    assert_eq!(
        after[0], before[0],
        "a removed address got calls: {after:?}"
    );
    assert_eq!(after[1], before[1] + 20, "{after:?}");

    // c joins: it gets calls (b too).
    names.answer(&[b, c]);
    names.settle().await;
    calls(&payment, 40).await;
    let joined = counts(&servers);
    assert_eq!(joined[0], before[0], "{joined:?}");
    assert!(joined[1] > after[1] && joined[2] > 0, "{joined:?}");

    // The name server fails: the last good set (b, c) stays, calls keep succeeding on both.
    names.fail("SERVFAIL");
    names.settle().await;
    calls(&payment, 40).await;
    let kept = counts(&servers);
    assert_eq!(kept[0], before[0], "{kept:?}");
    assert!(kept[1] > joined[1] && kept[2] > joined[2], "{kept:?}");
}

/// With no address ever resolved, a call does not hang: it fails as UNAVAILABLE (the peer
/// cannot be reached; retrying later may help) once the call's timeout has passed.
#[tokio::test]
async fn a_name_that_never_resolved_fails_calls_as_unavailable_within_the_timeout() {
    let names = Names::answering(&[]);
    names.fail("NXDOMAIN");
    let peers = Peers::default()
        .resolve_every(RESOLVE_EVERY)
        .with_resolver(names);
    let nowhere = peers
        .channel(
            &"http://shop-payment-service:50055".parse().unwrap(),
            Duration::from_millis(300),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let status = HealthClient::new(nowhere)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not resolved"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{status:?}");
}

/// Over TLS each connection goes to an address, but the certificate is checked against the
/// URL's host: servers whose certificate names only `shop-payment-service` (no address) answer
/// a balanced channel to that name, both of them, and refuse one to another name.
#[tokio::test]
async fn balanced_tls_endpoints_verify_the_urls_host_not_the_address() {
    let pki = Pki::new("shop test CA");
    let (cert, key) = pki.issue("payment", &["shop-payment-service"]);
    let servers = backends(2, Some((&cert, &key))).await;
    let port = servers[0].addr.port();
    let names = Names::answering(&[servers[0].addr, servers[1].addr]);
    let mut env = Env::from_pairs([(grpc::CA_FILE, pki.ca_file())]);
    let peers = Peers::from_env(&mut env)
        .unwrap()
        .resolve_every(RESOLVE_EVERY)
        .with_resolver(names);
    env.finish().unwrap();

    let payment = channel(&peers, &format!("https://shop-payment-service:{port}"));
    calls(&payment, 40).await;
    let counts = counts(&servers);
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");

    // The same addresses under another name: the certificate does not name it.
    let impostor = channel(&peers, &format!("https://shop-user-service:{port}"));
    let refused = HealthClient::new(impostor)
        .check(HealthCheckRequest::default())
        .await
        .expect_err("a certificate for another name is refused");
    assert!(
        format!("{refused:?}").contains("NotValidForName"),
        "{refused:?}"
    );
}

#[test]
fn the_resolve_interval_is_read_in_whole_seconds_and_zero_is_refused() {
    let mut env = Env::from_pairs([(grpc::peers::RESOLVE_INTERVAL, "0")]);
    let _ = Peers::from_env(&mut env);
    let text = env.finish().unwrap_err().to_string();
    assert!(
        text.contains("GRPC_RESOLVE_INTERVAL_SECONDS: must be at least 1"),
        "{text}"
    );

    let mut env = Env::from_pairs([(grpc::peers::RESOLVE_INTERVAL, "5")]);
    let peers = Peers::from_env(&mut env).unwrap();
    env.finish().unwrap();
    assert!(
        format!("{peers:?}").contains("resolve_every: 5s"),
        "{peers:?}"
    );
}
