//! Authenticating gRPC calls between services.
//!
//! [`RequireService`] wraps a generated tonic server: a call without a valid *service* token
//! (`authorization: Bearer <token>` metadata, role `service`) is answered `UNAUTHENTICATED`
//! before it reaches the handler; an accepted call carries the [`ServicePrincipal`] in its
//! extensions (`request.extensions().get::<ServicePrincipal>()`).
//!
//! Why a tower layer and not a `tonic::service::Interceptor`: interceptors are synchronous,
//! and verifying may have to fetch the key set (an unknown `kid` after a rotation). A layer
//! can await; everything else is the same.
//!
//! ```ignore
//! let server = UserServiceServer::new(api);
//! Endpoints::new(router).grpc(RequireService::new(server, verifier))
//! ```

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::header::AUTHORIZATION;
use tonic::server::NamedService;

use crate::{
    ServicePrincipal, Verifier,
    verify::{bearer, missing},
};

/// A gRPC service that only serves calls from other services.
#[derive(Debug, Clone)]
pub struct RequireService<S> {
    inner: S,
    verifier: Verifier,
}

impl<S> RequireService<S> {
    pub fn new(inner: S, verifier: Verifier) -> Self {
        Self { inner, verifier }
    }
}

/// Keeps the wrapped service's name, so routing, health and reflection are unchanged.
impl<S: NamedService> NamedService for RequireService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RequireService<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The instance that was polled ready is the one that must be called (tower's contract);
        // a fresh clone stays behind for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let token = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(bearer);
            let caller = match token {
                Some(token) => verifier.service(token).await,
                None => Err(missing()),
            };
            match caller {
                Ok(caller) => {
                    tracing::debug!(caller = %caller.name, "service call authenticated");
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(err) => Ok(tonic::Status::from(err).into_http()),
            }
        })
    }
}

/// The calling service of a request that passed [`RequireService`].
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&ServicePrincipal> {
    request.extensions().get::<ServicePrincipal>()
}
