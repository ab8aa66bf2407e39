//! A TCP proxy a test puts between a service and a dependency, to cut the line and restore it.
//!
//! Why not toxiproxy? It is one more server to install and drive over HTTP; the faults our
//! tests need — "the dependency is unreachable now" and "it is back" — are a few lines of tokio.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::BoxError;

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    /// Bumped on every cut, so live connections notice and close.
    generation: watch::Sender<u64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a random loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Self, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let upstream = upstream.to_owned();
        let accept_enabled = enabled.clone();
        let accept_generation = generation.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_enabled.load(Ordering::SeqCst) {
                    drop(client); // refuse: the peer sees the connection closed at once
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = accept_generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Biased, the cut first: data that arrives after `cut()` is never forwarded,
                    // even when it and the cut are ready in the same poll (an unbiased select
                    // picks at random, and a test's "ack after the cut" could get through).
                    tokio::select! {
                        biased;
                        _ = cut.changed() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            enabled,
            generation,
            accept_task,
        })
    }

    /// Where clients should connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Severs every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}
