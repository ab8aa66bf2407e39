//! `shop.user.v1.UserService` for internal callers, behind [`shop_auth::grpc::RequireService`]
//! with the table [`crate::GRPC_ACCESS`] (who may call which method, and why).

use shop_proto::user::v1::{GetUserRequest, GetUserResponse, user_service_server::UserService};
use shop_runtime::{ApiError, FieldError};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct UserApi {
    pub pool: PgPool,
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let caller = shop_auth::grpc::caller(&request).map(|c| c.name.clone());
        let id = Uuid::parse_str(&request.get_ref().id)
            .map_err(|_| ApiError::validation(vec![FieldError::new("id", "is not a UUID")]))?;
        tracing::debug!(?caller, %id, "GetUser");
        let (id, email, name): (Uuid, String, String) =
            sqlx::query_as("SELECT id, email, name FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::not_found("No user with this id."))?;
        Ok(Response::new(GetUserResponse {
            id: id.to_string(),
            email,
            name,
        }))
    }
}
