//! The events user-service publishes. Consumers are tolerant readers: fields may be added,
//! never removed or renamed without a new `version` of the event.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::User;

/// CloudEvents `type` of [`UserRegistered`].
pub const USER_REGISTERED_TYPE: &str = "user.registered";
/// Its routing key, `<service>.<aggregate>.<event>`.
pub const USER_REGISTERED_KEY: &str = "user.user.registered";

/// A customer registered (not published for the seeded administrator, who did not register).
/// Carries what notification-service needs to greet them, so it never has to call back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

impl From<&User> for UserRegistered {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
        }
    }
}
