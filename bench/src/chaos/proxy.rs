//! A TCP proxy between the services and one dependency, with the ways a line really fails.
//!
//! `shop_testkit::proxy::TcpProxy` knows one fault: every connection closed, new ones refused.
//! The chaos suite needs four, because each one exercises a different piece of the services'
//! resilience:
//!
//! | [`Mode`] / strike | live connections | new connections | what it looks like |
//! |---|---|---|---|
//! | [`Mode::Down`] | closed (FIN) on both sides | reset at once | the server stopped |
//! | [`Mode::Reset`] | reset (RST) on both sides | reset at once | the server crashed, or its host |
//! | [`Mode::Blackhole`] | kept open, nothing forwarded | accepted, nothing forwarded | a network partition: calls hang until a deadline, then resume when it heals |
//! | [`FaultProxy::silent_cut`] | the client's side reset; the server's side kept open and silent | forwarded | a NAT or firewall forgetting the connection: the client reconnects at once, the server learns only from its own heartbeat |
//!
//! It is the bench's own (not testkit's, which other engineers own and whose one mode their
//! tests rely on), and its upstream can be set after it started listening, so a service can be
//! pointed at it before the address it will forward to exists (payment's gRPC port).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// How the proxy treats connections right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forwarding.
    Up,
    /// The dependency stopped: connections closed, new ones refused.
    Down,
    /// The dependency crashed: connections reset, new ones refused.
    Reset,
    /// A partition: nothing crosses, nothing is closed.
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Bumped by every [`FaultProxy::silent_cut`].
    silent_cuts: u64,
}

/// A running proxy; dropping it closes every connection it holds.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    state: watch::Sender<State>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port; forwards to `upstream` once it is set.
    pub async fn start(upstream: Option<SocketAddr>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Mutex::new(upstream));
        let (state, _) = watch::channel(State {
            mode: Mode::Up,
            silent_cuts: 0,
        });
        let accept_upstream = upstream.clone();
        let accept_state = state.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let upstream = *accept_upstream
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let state = accept_state.subscribe();
                tokio::spawn(connection(client, upstream, state));
            }
        });
        Ok(Self {
            addr,
            upstream,
            state,
            accept_task,
        })
    }

    /// Where the services connect instead of the dependency.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(upstream);
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|state| state.mode = mode);
    }

    /// Resets the client side of every live connection and keeps the server side open without
    /// a word, until the server closes it itself; new connections go through.
    pub fn silent_cut(&self) {
        self.state.send_modify(|state| state.silent_cuts += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set_mode(Mode::Down);
        self.accept_task.abort();
    }
}

/// Closes `stream` with a reset instead of an orderly FIN, as a crashed peer's kernel does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds a server-side connection whose client was silently cut: reads and discards what the
/// server sends (its heartbeats) until the server gives up on it, or the proxy is dropped.
fn hold_silently(mut server: TcpStream, mut state: watch::Receiver<State>) {
    tokio::spawn(async move {
        let mut sink = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = server.read(&mut sink) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

async fn connection(
    client: TcpStream,
    upstream: Option<SocketAddr>,
    mut state: watch::Receiver<State>,
) {
    let first = *state.borrow_and_update();
    // A partition: the client is connected to nothing until it heals (or gives up).
    let mut current = first;
    while current.mode == Mode::Blackhole {
        if state.changed().await.is_err() {
            return;
        }
        current = *state.borrow_and_update();
    }
    let Some(upstream) = upstream else {
        return reset(client);
    };
    if matches!(current.mode, Mode::Down | Mode::Reset) {
        return reset(client);
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    pipe(client, server, current.silent_cuts, state).await;
}

/// Forwards both ways until either side closes or a fault strikes.
async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    silent_cuts: u64,
    mut state: watch::Receiver<State>,
) {
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let now = *state.borrow_and_update();
        if now.silent_cuts != silent_cuts {
            reset(client);
            return hold_silently(server, state);
        }
        match now.mode {
            Mode::Up => {}
            Mode::Down => return,
            Mode::Reset => {
                reset(client);
                return reset(server);
            }
            Mode::Blackhole => {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        // Biased, the state first: nothing crosses once a fault is set, even when data and
        // the change are ready in the same poll.
        tokio::select! {
            biased;
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client.read(&mut up) => match read {
                Ok(n) if n > 0 => {
                    if server.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            read = server.read(&mut down) => match read {
                Ok(n) if n > 0 => {
                    if client.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn each_mode_fails_the_line_its_own_way_and_up_heals_it() {
        let proxy = FaultProxy::start(Some(echo().await)).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut live, Duration::from_secs(2)).await.unwrap(),
            b"ping"
        );

        // A partition: the live connection stays open but nothing comes back ...
        proxy.set_mode(Mode::Blackhole);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            round_trip(&mut live, Duration::from_millis(300))
                .await
                .is_none()
        );
        // ... and when it heals, what was sent meanwhile arrives.
        proxy.set_mode(Mode::Up);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), live.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");

        // A crash: the live connection is reset, a new one refused.
        proxy.set_mode(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 1];
        let read = live.read(&mut buf).await;
        assert!(
            matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(matches!(fresh.read(&mut buf).await, Err(_) | Ok(0)));

        // Back up: new connections work again.
        proxy.set_mode(Mode::Up);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut again, Duration::from_secs(2))
                .await
                .unwrap(),
            b"ping"
        );
    }

    #[tokio::test]
    async fn a_silent_cut_resets_the_client_and_lets_it_reconnect_at_once() {
        let proxy = FaultProxy::start(Some(echo().await)).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut live, Duration::from_secs(2))
                .await
                .is_some()
        );
        proxy.silent_cut();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 1];
        assert!(matches!(live.read(&mut buf).await, Err(_) | Ok(0)));
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut again, Duration::from_secs(2))
                .await
                .is_some()
        );
    }
}
