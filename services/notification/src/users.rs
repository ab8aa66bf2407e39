//! Who a user is, for events that carry a user id but no address: user-service's gRPC
//! `GetUser`, called with a service token (`shop_auth::client::ServiceTokens`).
//!
//! Every failure says whether waiting helps. user-service unreachable, slow, or refusing our
//! token (a configuration being fixed) → [`HandlerError::Retryable`]: the event goes through
//! the consumer's delay queues and is tried again, while the events behind it keep flowing.
//! No such user, or an id user-service rejects → [`HandlerError::Permanent`]: parked with the
//! reason, since no retry can make the user exist.

use std::{sync::Arc, time::Duration};

use shop_auth::client::{ServiceCredentials, ServiceTokens};
use shop_messaging::HandlerError;
use shop_proto::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use shop_runtime::grpc::{PeerChannel, Peers};
use tonic::Code;
use uuid::Uuid;

/// The name this service has in user-service's `SERVICE_CLIENTS`.
pub const SERVICE_NAME: &str = "notification-service";

/// A user's address and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub email: String,
    pub name: String,
}

/// A `GetUser` client with its credentials.
#[derive(Debug, Clone)]
pub struct Users {
    client: UserServiceClient<PeerChannel>,
    tokens: Arc<ServiceTokens>,
}

impl Users {
    /// Nothing is connected yet: the service starts (and records what needs no lookup) while
    /// user-service is down; the channel connects on first use and reconnects by itself (TLS
    /// to an https:// URL, checked against `peers`' CA: ADR 0017), balanced over every
    /// user-service pod (`shop_runtime::grpc::peers`). Needs a Tokio runtime.
    pub fn new(
        url: &url::Url,
        peers: &Peers,
        credentials: &ServiceCredentials,
        timeout: Duration,
    ) -> Result<Self, String> {
        let channel = peers
            .channel(url, timeout)
            .map_err(|err| format!("USER_GRPC_URL {err}"))?;
        let tokens = credentials
            .tokens()
            .map_err(|err| format!("cannot build the token client: {err}"))?;
        Ok(Self {
            client: UserServiceClient::new(channel),
            tokens: Arc::new(tokens),
        })
    }

    /// The user with `id`.
    pub async fn get(&self, id: Uuid) -> Result<User, HandlerError> {
        let mut request = tonic::Request::new(GetUserRequest { id: id.to_string() });
        self.tokens.authorize(&mut request).await.map_err(|err| {
            HandlerError::retryable(format!("no service token for GetUser: {err}"))
        })?;
        match self.client.clone().get_user(request).await {
            Ok(response) => {
                let user = response.into_inner();
                Ok(User {
                    email: user.email,
                    name: user.name,
                })
            }
            Err(status) => Err(classify(id, &status)),
        }
    }
}

fn classify(id: Uuid, status: &tonic::Status) -> HandlerError {
    let reason = format!("GetUser {id}: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::NotFound | Code::InvalidArgument => HandlerError::permanent(reason),
        _ => HandlerError::retryable(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_cannot_change_are_permanent() {
        let id = Uuid::nil();
        for code in [Code::NotFound, Code::InvalidArgument] {
            assert!(matches!(
                classify(id, &tonic::Status::new(code, "x")),
                HandlerError::Permanent(_)
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert!(matches!(
                classify(id, &tonic::Status::new(code, "x")),
                HandlerError::Retryable(_)
            ));
        }
    }
}
