//! The public API: every route the gateway serves, who owns it, and who may call it.
//!
//! The table is the allow-list. A path that is not in it — `/internal/...`, a service's own
//! `/metrics`, a route a service adds without anyone deciding to publish it — answers 404 from
//! the gateway and never reaches a service. Publishing a route is adding a row here.

use http::Method;

/// Which service owns a route (and so which base URL it is forwarded to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    User,
    Catalog,
    Inventory,
    Order,
    Payment,
    Notification,
}

impl Upstream {
    pub const ALL: [Self; 6] = [
        Self::User,
        Self::Catalog,
        Self::Inventory,
        Self::Order,
        Self::Payment,
        Self::Notification,
    ];

    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Catalog => "catalog",
            Self::Inventory => "inventory",
            Self::Order => "order",
            Self::Payment => "payment",
            Self::Notification => "notification",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Who may call a route. The gateway checks it first (so a refused request costs no upstream
/// call); the service checks the forwarded token again (a service never trusts the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; the token, if any, is forwarded untouched.
    Public,
    /// A valid user access token.
    User,
    /// A valid user access token with the `admin` role.
    Admin,
}

/// Which rate limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitClass {
    /// Credential endpoints: a small budget per client address, against password guessing and
    /// token-refresh floods.
    Auth,
    /// Everything else: per signed-in user when the route needs a token, otherwise per client
    /// address.
    Standard,
}

/// How the gateway answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Forwarded to the owning service as it came; its answer goes back as it is.
    Forward,
    /// Forwarded to order-service, and the order it answers is completed with each line's
    /// product from catalog (API composition, [`crate::compose`]).
    OrderWithProducts,
}

/// One published route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// The path template, in axum's syntax; forwarded unchanged (plus the query string).
    pub path: &'static str,
    pub upstream: Upstream,
    pub access: Access,
    pub limit: LimitClass,
    /// Responses carry credentials: `Cache-Control: no-store` is enforced on them.
    pub credentials: bool,
    pub handler: Handler,
}

const fn route(method: Method, path: &'static str, upstream: Upstream, access: Access) -> Route {
    Route {
        method,
        path,
        upstream,
        access,
        limit: LimitClass::Standard,
        credentials: false,
        handler: Handler::Forward,
    }
}

const fn credential(path: &'static str) -> Route {
    Route {
        method: Method::POST,
        path,
        upstream: Upstream::User,
        access: Access::Public,
        limit: LimitClass::Auth,
        credentials: true,
        handler: Handler::Forward,
    }
}

use Access::{Admin, Public, User};

/// The public API (BRIEF §3), in the order of the document.
pub const ROUTES: &[Route] = &[
    credential("/api/v1/auth/register"),
    credential("/api/v1/auth/login"),
    credential("/api/v1/auth/refresh"),
    // Logout spends a refresh token; it needs no tight budget, but its answer is still no-store.
    Route {
        method: Method::POST,
        path: "/api/v1/auth/logout",
        upstream: Upstream::User,
        access: Public,
        limit: LimitClass::Standard,
        credentials: true,
        handler: Handler::Forward,
    },
    route(Method::GET, "/api/v1/users/me", Upstream::User, User),
    route(
        Method::GET,
        "/.well-known/jwks.json",
        Upstream::User,
        Public,
    ),
    route(Method::GET, "/api/v1/products", Upstream::Catalog, Public),
    route(
        Method::GET,
        "/api/v1/products/{id}",
        Upstream::Catalog,
        Public,
    ),
    route(Method::POST, "/api/v1/products", Upstream::Catalog, Admin),
    route(
        Method::PATCH,
        "/api/v1/products/{id}",
        Upstream::Catalog,
        Admin,
    ),
    route(
        Method::GET,
        "/api/v1/inventory/{sku}",
        Upstream::Inventory,
        Admin,
    ),
    route(
        Method::PUT,
        "/api/v1/inventory/{sku}",
        Upstream::Inventory,
        Admin,
    ),
    route(Method::POST, "/api/v1/orders", Upstream::Order, User),
    route(Method::GET, "/api/v1/orders", Upstream::Order, User),
    // The one composed route: the order, with each line's product named by catalog.
    Route {
        method: Method::GET,
        path: "/api/v1/orders/{id}",
        upstream: Upstream::Order,
        access: User,
        limit: LimitClass::Standard,
        credentials: false,
        handler: Handler::OrderWithProducts,
    },
    route(
        Method::POST,
        "/api/v1/orders/{id}/cancel",
        Upstream::Order,
        User,
    ),
    route(Method::GET, "/api/v1/payments", Upstream::Payment, User),
    route(
        Method::GET,
        "/api/v1/notifications",
        Upstream::Notification,
        User,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_is_internal_or_operational_and_none_is_listed_twice() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(
                route.path.starts_with("/api/v1/") || route.path == "/.well-known/jwks.json",
                "{}",
                route.path
            );
            assert!(!route.path.contains("internal"), "{}", route.path);
            assert!(
                !ROUTES[..i]
                    .iter()
                    .any(|other| other.method == route.method && other.path == route.path),
                "{} {} twice",
                route.method,
                route.path
            );
        }
    }
}
