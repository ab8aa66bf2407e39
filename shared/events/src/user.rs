//! The events user-service publishes.

use serde::{Deserialize, Serialize};
use shop_messaging::Event;
use uuid::Uuid;

/// A customer registered (not published for the seeded administrator, who did not register).
/// Carries what notification-service needs to greet them, so it never has to call back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

impl Event for UserRegistered {
    const SOURCE: &'static str = "user-service";
    const ROUTING_KEY: &'static str = "user.user.registered";
}
