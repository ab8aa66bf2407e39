//! Verifying access tokens, the same way in every service.
//!
//! user-service signs short-lived access tokens (JWTs) with an asymmetric key and publishes the
//! public half at `/.well-known/jwks.json`. Every other service — the gateway first, then each
//! service behind it again (defense in depth: a service never trusts a bare header saying who
//! the caller is) — verifies them *locally* with this crate:
//!
//! * [`Verifier`] checks a token: algorithm on the allow-list ([`ALLOWED_ALGORITHMS`]: no
//!   `none`, no HMAC), a `kid` naming a published key, the signature, `iss`, `aud`, `exp` and
//!   `nbf` with a small leeway.
//! * [`jwks`] fetches the key set once and caches it; an unknown `kid` (a rotation) triggers a
//!   refresh, at most once per [`VerifierConfig::min_refresh_interval`], so a flood of forged
//!   `kid`s cannot turn into a flood of requests to user-service.
//! * [`http`] has the axum extractors: [`Principal`] (any signed-in user), [`http::RequireAdmin`],
//!   and [`Principal::require_owner`] for "your own data only".
//! * [`grpc`] has the layer that authenticates service-to-service calls and enforces each
//!   server's table of which caller may call which method, and [`client`] the caller's side:
//!   [`client::ServiceTokens`] gets and caches a service token.
//! * [`config`]: [`AuthConfig`], the variables every verifying service reads.
//! * `testing` (feature `testing`): a token issuer for the tests of verifying services.
//!
//! Every failure is a [`shop_runtime::ApiError`]: 401 problem+json over HTTP, `UNAUTHENTICATED`
//! over gRPC — except "cannot check tokens now" (no key set loaded yet, or the cached one too
//! stale, [`jwks`]), which is 503 / `UNAVAILABLE`: the token may be fine, retry later. The caller learns *that* the token was refused and, when it helps them (expired →
//! refresh), why; never which key or check an attacker would have to defeat next.

pub mod client;
pub mod config;
pub mod grpc;
pub mod http;
pub mod jwks;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod verify;

use serde::{Deserialize, Serialize};
use shop_runtime::{ApiError, ErrorKind};
use uuid::Uuid;

pub use config::AuthConfig;
pub use verify::{ALLOWED_ALGORITHMS, Verifier, VerifierConfig};

/// The claims of an access token, as user-service signs them.
///
/// `kid` travels in the header, not here. `jti` makes every token unique (so a token can be
/// found in logs or, later, denied individually) even when two are issued in the same second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// A user id (UUID) for user tokens, `service:<name>` for service tokens.
    pub sub: String,
    /// Role names; unknown names are ignored when the principal is built (tolerant reader).
    #[serde(default)]
    pub roles: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub jti: String,
}

/// What a subject may do. Stored and transmitted as lower-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every registered user.
    Customer,
    /// Operators: catalog and stock administration, everyone's orders.
    Admin,
    /// Another service of this system calling over gRPC; never held by a person.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
            Self::Service => "service",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Self::Customer),
            "admin" => Some(Self::Admin),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The signed-in user a request acts for, taken from a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub roles: Vec<Role>,
}

impl Principal {
    /// Builds the principal of a *user* token: `sub` must be a UUID, and a token carrying the
    /// `service` role is refused here (a service credential must not act as a person).
    pub fn from_claims(claims: &Claims) -> Result<Self, ApiError> {
        let roles: Vec<Role> = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| unauthorized())?;
        if roles.contains(&Role::Service) {
            return Err(unauthorized());
        }
        Ok(Self { user_id, roles })
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(Role::Admin)
    }

    /// 403 unless the principal is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Forbidden,
                "This operation is reserved to administrators.",
            ))
        }
    }

    /// "Your own data only": passes when the principal is `owner` or an admin (support staff
    /// must be able to look at a customer's order).
    ///
    /// Anyone else gets **404, not 403**: a 403 would confirm that the resource exists, and
    /// resource ids would become something to probe for. Call it after loading the resource,
    /// with the owner stored on it — never with an id taken from the request.
    pub fn require_owner(&self, owner: Uuid) -> Result<(), ApiError> {
        if self.user_id == owner || self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_found("The resource does not exist."))
        }
    }
}

/// Another service of this system, authenticated by a service token (`sub` = `service:<name>`,
/// role `service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    /// The calling service's name, e.g. `order-service`.
    pub name: String,
}

impl ServicePrincipal {
    /// The `sub` of a service token for `name`.
    pub fn subject(name: &str) -> String {
        format!("service:{name}")
    }

    /// Builds the principal of a *service* token; user tokens are refused.
    pub fn from_claims(claims: &Claims) -> Result<Self, ApiError> {
        let is_service = claims.roles.iter().any(|r| r == Role::Service.as_str());
        match claims.sub.strip_prefix("service:") {
            Some(name) if is_service && !name.is_empty() => Ok(Self {
                name: name.to_owned(),
            }),
            _ => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "This API is for service calls; send a service token.",
            )),
        }
    }
}

/// The one answer to a refused token. Details go to the log, not to the caller.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, "The access token is not valid.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, roles: &[&str]) -> Claims {
        Claims {
            iss: "issuer".into(),
            aud: "shop".into(),
            sub: sub.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iat: 0,
            exp: 0,
            nbf: None,
            jti: "j".into(),
        }
    }

    #[test]
    fn user_principals_ignore_unknown_roles_and_refuse_service_tokens() {
        let id = Uuid::new_v4();
        let principal = Principal::from_claims(&claims(&id.to_string(), &["customer", "pilot"]))
            .expect("a user token");
        assert_eq!(principal.roles, vec![Role::Customer]);
        assert_eq!(
            Principal::from_claims(&claims(&id.to_string(), &["service"]))
                .unwrap_err()
                .kind(),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            Principal::from_claims(&claims("service:order-service", &["customer"]))
                .unwrap_err()
                .kind(),
            ErrorKind::Unauthorized
        );
    }

    #[test]
    fn owners_and_admins_pass_others_see_not_found() {
        let owner = Uuid::new_v4();
        let customer = Principal {
            user_id: owner,
            roles: vec![Role::Customer],
        };
        let stranger = Principal {
            user_id: Uuid::new_v4(),
            roles: vec![Role::Customer],
        };
        let admin = Principal {
            user_id: Uuid::new_v4(),
            roles: vec![Role::Admin],
        };
        assert!(customer.require_owner(owner).is_ok());
        assert!(admin.require_owner(owner).is_ok());
        assert_eq!(
            stranger.require_owner(owner).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            customer.require_admin().unwrap_err().kind(),
            ErrorKind::Forbidden
        );
        assert!(admin.require_admin().is_ok());
    }

    #[test]
    fn service_principals_need_the_role_and_the_prefix() {
        let ok = ServicePrincipal::from_claims(&claims("service:order-service", &["service"]))
            .expect("a service token");
        assert_eq!(ok.name, "order-service");
        assert!(ServicePrincipal::from_claims(&claims("service:x", &["customer"])).is_err());
        assert!(
            ServicePrincipal::from_claims(&claims(&Uuid::new_v4().to_string(), &["service"]))
                .is_err()
        );
    }
}
