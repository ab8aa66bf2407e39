//! HTTP for the load generator: one keep-alive HTTP/1.1 connection per worker, and the trivial
//! upstream both proxies forward to in the proxy scenario.
//!
//! The client is hyper's connection API, not a pooled client: a worker owns exactly one
//! connection (as wrk does), so the number of connections the proxy sees is the number of
//! workers, and no pool logic sits between the schedule and the socket.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::loadgen::{Outcome, Ticket, Worker};

/// One request/answer of a scenario: what to send for a ticket, and what its answer means.
pub trait Exchange: Send + Sync + 'static {
    fn request(&self, ticket: &Ticket) -> Request<Full<Bytes>>;

    /// Judges an answer. The default: 2xx is success.
    fn response(
        &self,
        _ticket: &Ticket,
        status: StatusCode,
        _headers: &HeaderMap,
        _body: Bytes,
    ) -> Outcome {
        if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::Refused(status.as_u16())
        }
    }
}

/// The same request every time (GET of a path, optional headers).
#[derive(Debug, Clone)]
pub struct Fixed {
    pub path: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Exchange for Fixed {
    fn request(&self, _: &Ticket) -> Request<Full<Bytes>> {
        let mut request = Request::get(self.path.as_str())
            .header(http::header::HOST, "bench")
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        request
    }
}

/// A worker with its own keep-alive connection to `addr`, re-established after an error.
pub struct HttpWorker<E: ?Sized> {
    addr: SocketAddr,
    exchange: Arc<E>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl<E: ?Sized> std::fmt::Debug for HttpWorker<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpWorker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<E: Exchange + ?Sized> HttpWorker<E> {
    /// `count` workers for `addr`, sharing one exchange. Connections open on first use.
    pub fn many(addr: SocketAddr, exchange: Arc<E>, count: usize) -> Vec<Self> {
        (0..count)
            .map(|_| Self {
                addr,
                exchange: exchange.clone(),
                sender: None,
                timeout: Duration::from_secs(30),
            })
            .collect()
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn exchange(
        &mut self,
        ticket: Ticket,
    ) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().ok_or("no connection")?;
        sender.ready().await?;
        let response = sender.send_request(self.exchange.request(&ticket)).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(self
            .exchange
            .response(&ticket, parts.status, &parts.headers, body))
    }
}

impl<E: Exchange + ?Sized> Worker for HttpWorker<E> {
    async fn call(&mut self, ticket: Ticket) -> Outcome {
        match tokio::time::timeout(self.timeout, self.exchange(ticket)).await {
            Ok(Ok(outcome)) => outcome,
            _ => {
                self.sender = None;
                Outcome::Error
            }
        }
    }
}

/// The body the trivial upstream answers with: a small JSON document, like an API answer.
pub const UPSTREAM_BODY: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"bench","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// Serves [`UPSTREAM_BODY`] to every request on `listener` (HTTP/1.1, keep-alive) until the
/// process ends: the cheapest upstream hyper can be, so a proxy's own cost dominates.
pub async fn serve_upstream(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from_static(UPSTREAM_BODY.as_bytes())))
                            .expect("a valid response"),
                    )
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
