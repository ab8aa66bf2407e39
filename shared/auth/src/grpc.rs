//! Authenticating and authorizing gRPC calls between services.
//!
//! [`RequireService`] wraps a generated tonic server: a call without a valid *service* token
//! (`authorization: Bearer <token>` metadata, role `service`) is answered `UNAUTHENTICATED`
//! before it reaches the handler; an accepted call carries the [`ServicePrincipal`] in its
//! extensions (`request.extensions().get::<ServicePrincipal>()`).
//!
//! **Least privilege between services.** A valid service token only says *who* calls. Which
//! caller may call which method is declared next to the server, in one table:
//!
//! ```ignore
//! let server = PaymentServiceServer::new(api);
//! let server = RequireService::new(server, verifier)
//!     .allow(["order-service"], ["Authorize", "Capture", "Void", "Refund"]);
//! Endpoints::new(router).grpc(server)
//! ```
//!
//! (or from a `const` table of `(callers, methods)` rows: `.allow_table(ACCESS)`).
//!
//! Once a table is given it is complete: a method it does not name is refused for everyone
//! (`PERMISSION_DENIED`), so a method added to the proto later is closed until someone decides
//! who needs it, and a typo in a method name fails closed, visibly, in that service's tests.
//! Callers are the names in the `sub` of their service token (`service:<name>`), i.e. their
//! entry in user-service's `SERVICE_CLIENTS`. A server without any table accepts every
//! authenticated service, as before tables existed, and says so in its log at start.
//!
//! Why a tower layer and not a `tonic::service::Interceptor`: interceptors are synchronous,
//! and verifying may have to fetch the key set (an unknown `kid` after a rotation). A layer
//! can await; everything else is the same.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::header::AUTHORIZATION;
use shop_runtime::{ApiError, ErrorKind};
use tonic::server::NamedService;

use crate::{
    ServicePrincipal, Verifier,
    verify::{bearer, missing},
};

/// A gRPC service that only serves calls from other services, each method only to the
/// callers its table allows.
#[derive(Debug, Clone)]
pub struct RequireService<S> {
    inner: S,
    /// The gRPC service name, e.g. `shop.payment.v1.PaymentService`, for the log.
    name: &'static str,
    verifier: Verifier,
    /// `None`: no table declared, any authenticated service may call any method.
    table: Option<Arc<AccessTable>>,
    /// The table is logged once, at the first call (the builder has no "finished" moment).
    announced: Arc<std::sync::Once>,
}

/// Method name (as in the proto, e.g. `GetUser`) → the callers allowed to call it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessTable {
    methods: BTreeMap<String, BTreeSet<String>>,
}

impl AccessTable {
    /// Whether `caller` (a service name, e.g. `order-service`) may call `method`.
    pub fn allows(&self, caller: &str, method: &str) -> bool {
        self.methods
            .get(method)
            .is_some_and(|callers| callers.contains(caller))
    }

    /// `(method, callers)` rows, sorted: for logs and documentation.
    pub fn rows(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.methods.iter().map(|(method, callers)| {
            (
                method.as_str(),
                callers.iter().map(String::as_str).collect(),
            )
        })
    }
}

impl<S: NamedService> RequireService<S> {
    /// Authenticates every call; add the authorization table with [`RequireService::allow`].
    pub fn new(inner: S, verifier: Verifier) -> Self {
        Self {
            inner,
            name: S::NAME,
            verifier,
            table: None,
            announced: Arc::new(std::sync::Once::new()),
        }
    }

    /// Lets each of `callers` call each of `methods` (names as in the proto: `"Authorize"`,
    /// not the Rust `authorize`). Call it once per group of callers; every method not named
    /// in any call is refused for everyone.
    pub fn allow<'a>(
        mut self,
        callers: impl IntoIterator<Item = &'a str>,
        methods: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let callers: Vec<&str> = callers.into_iter().collect();
        let table = Arc::make_mut(self.table.get_or_insert_with(Arc::default));
        for method in methods {
            debug_assert!(
                !method.contains('/'),
                "{method}: name the method only, e.g. \"GetUser\""
            );
            table
                .methods
                .entry(method.to_owned())
                .or_default()
                .extend(callers.iter().map(|caller| (*caller).to_owned()));
        }
        self
    }

    /// [`RequireService::allow`] for each `(callers, methods)` row of a table, typically a
    /// `const` next to the server:
    /// `const ACCESS: &[(&[&str], &[&str])] = &[(&["order-service"], &["Authorize"])];`
    pub fn allow_table(self, rows: &[(&[&str], &[&str])]) -> Self {
        rows.iter().fold(self, |server, (callers, methods)| {
            server.allow(callers.iter().copied(), methods.iter().copied())
        })
    }

    /// The declared table; `None` when every authenticated service may call every method.
    pub fn table(&self) -> Option<&AccessTable> {
        self.table.as_deref()
    }
}

impl<S> RequireService<S> {
    /// Logs the table once, so who may call what is visible in the log (and a server still
    /// without a table stands out).
    ///
    /// It runs on the first call, inside that request's span; `parent: None` keeps these lines
    /// out of the request's trace, which they say nothing about.
    fn announce(&self) {
        let name = self.name;
        match &self.table {
            Some(table) => {
                for (method, callers) in table.rows() {
                    tracing::info!(parent: None, service = name, method, ?callers, "gRPC method allowed to");
                }
            }
            None => tracing::warn!(
                parent: None,
                service = name,
                "no authorization table: every authenticated service may call every method"
            ),
        }
    }
}

/// Keeps the wrapped service's name, so routing, health and reflection are unchanged.
impl<S: NamedService> NamedService for RequireService<S> {
    const NAME: &'static str = S::NAME;
}

/// Why a call was refused: which caller, which method; the caller is told which method it may
/// not call (it is its own configuration that is wrong), nothing about who may.
fn forbidden(caller: &str, method: &str) -> ApiError {
    tracing::warn!(
        caller,
        method,
        "service call refused by the authorization table"
    );
    ApiError::new(
        ErrorKind::Forbidden,
        format!("The service {caller} may not call {method}."),
    )
}

/// The method of a gRPC request path `/package.Service/Method`.
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
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
        self.announced.clone().call_once(|| self.announce());
        // The instance that was polled ready is the one that must be called (tower's contract);
        // a fresh clone stays behind for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let verifier = self.verifier.clone();
        let table = self.table.clone();
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
            let caller = caller.and_then(|caller| {
                let method = method_of(request.uri().path());
                match &table {
                    Some(table) if !table.allows(&caller.name, method) => {
                        Err(forbidden(&caller.name, method))
                    }
                    _ => Ok(caller),
                }
            });
            match caller {
                Ok(caller) => {
                    tracing::debug!(caller = %caller.name, "service call authorized");
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

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};

    use tower::ServiceExt;

    use super::*;
    use crate::testing::TestIssuer;

    /// Stands for a generated server: answers every call it is given with OK.
    #[derive(Debug, Clone)]
    struct Payments;

    impl NamedService for Payments {
        const NAME: &'static str = "shop.payment.v1.PaymentService";
    }

    impl tower::Service<http::Request<()>> for Payments {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            ready(Ok(http::Response::new(tonic::body::Body::default())))
        }
    }

    /// The gRPC code `server` answers a call of `method` with, `Ok` when it reached the handler.
    async fn code(
        server: &RequireService<Payments>,
        token: Option<String>,
        method: &str,
    ) -> tonic::Code {
        let mut request = http::Request::builder()
            .uri(format!("/shop.payment.v1.PaymentService/{method}"))
            .body(())
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        }
        let response = server.clone().oneshot(request).await.unwrap();
        tonic::Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code())
    }

    #[tokio::test]
    async fn each_method_serves_only_the_callers_its_table_names() {
        let issuer = TestIssuer::start().await;
        let server = RequireService::new(Payments, issuer.verifier())
            .allow(
                ["order-service"],
                ["Authorize", "Capture", "Void", "Refund"],
            )
            .allow_table(&[(&["order-service", "gateway"], &["GetPayment"])]);
        let order = || Some(issuer.service_token("order-service"));
        let gateway = || Some(issuer.service_token("gateway"));

        for method in ["Authorize", "Capture", "Void", "Refund", "GetPayment"] {
            assert_eq!(
                code(&server, order(), method).await,
                tonic::Code::Ok,
                "{method}"
            );
        }
        assert_eq!(
            code(&server, gateway(), "GetPayment").await,
            tonic::Code::Ok
        );
        assert_eq!(
            code(&server, gateway(), "Capture").await,
            tonic::Code::PermissionDenied,
            "a caller outside the table"
        );
        assert_eq!(
            code(&server, order(), "DeleteEverything").await,
            tonic::Code::PermissionDenied,
            "a method the table does not name is closed to everyone"
        );
        assert_eq!(
            code(&server, None, "Authorize").await,
            tonic::Code::Unauthenticated
        );
        let user = Some(issuer.user_token(uuid::Uuid::new_v4(), &[crate::Role::Admin]));
        assert_eq!(
            code(&server, user, "Authorize").await,
            tonic::Code::Unauthenticated,
            "a person's token is no service credential, whatever its roles"
        );
        let table = server.table().unwrap();
        assert!(table.allows("order-service", "Refund"));
        assert!(!table.allows("gateway", "Refund"));
    }

    #[tokio::test]
    async fn without_a_table_every_authenticated_service_is_served() {
        let issuer = TestIssuer::start().await;
        let server = RequireService::new(Payments, issuer.verifier());
        assert!(server.table().is_none());
        let gateway = Some(issuer.service_token("gateway"));
        assert_eq!(code(&server, gateway, "Capture").await, tonic::Code::Ok);
        assert_eq!(
            code(&server, None, "Capture").await,
            tonic::Code::Unauthenticated
        );
    }
}
