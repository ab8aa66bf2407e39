//! `shop.inventory.v1.InventoryService`, the saga's side of inventory: order-service reserves,
//! commits and releases; every call is idempotent per order (see [`crate::stock`]).
//!
//! Errors keep the codes order-service acts on: `FAILED_PRECONDITION` for "not possible in this
//! state" (not enough stock — the message names the skus —, Commit after Release and the
//! reverse), `NOT_FOUND` for a Commit without a reservation, `INVALID_ARGUMENT` for a bad
//! request. Only service callers get here (`shop_auth::grpc::RequireService`).
//!
//! The handlers hold no rules of their own: they parse, call [`crate::stock`], and map the
//! result. [`ApiError`] converts to a [`Status`] with the same kind, so a refusal keeps its
//! code here and its status in the admin API, and a database outage is `UNAVAILABLE`, which
//! the saga treats as "unknown, try again" rather than as a refusal.
//!
//! Why gRPC here and REST for the admin routes (pattern COM-09): this API has one caller,
//! order-service, which wants typed messages, deadlines carried as `grpc-timeout`, and a
//! contract it records itself (`services/order/tests/contracts.rs`, verified by
//! `tests/contracts.rs` here: the customer/supplier relationship of pattern DEC-07).

use std::time::Duration;

use shop_proto::inventory::v1::{
    Availability, CommitRequest, CommitResponse, GetAvailabilityRequest, GetAvailabilityResponse,
    ReleaseRequest, ReleaseResponse, ReserveRequest, ReserveResponse,
    inventory_service_server::InventoryService,
};
use shop_runtime::{ApiError, FieldError};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::stock::{self, Line};

/// At most this many skus per availability query: far above any basket, and a bound on what
/// one request can ask of the database.
pub const MAX_SKUS: usize = 1000;

/// The gRPC server order-service calls (`shop.inventory.v1.InventoryService`): reserve,
/// commit, release and availability, each a thin translation to [`crate::stock`], where the
/// rules and their tests live. `reservation_ttl` is how long an uncommitted reservation holds
/// stock before [`crate::expiry`] gives it back.
#[derive(Debug, Clone)]
pub struct InventoryApi {
    /// The service's database: reservations and stock.
    pub pool: PgPool,
    /// `RESERVATION_TTL_SECONDS`, given to every new reservation.
    pub reservation_ttl: Duration,
}

/// Parses the order id every call is keyed by; a bad one is an `INVALID_ARGUMENT` naming the
/// field, never a panic.
fn order_id(value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::validation(vec![FieldError::new("order_id", "is not a UUID")]))
}

/// A database time as a protobuf `Timestamp` (sub-second nanos always fit an `i32`; the
/// fallback only keeps the conversion total).
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    /// All lines or none ([`stock::reserve`]); quantities arrive as `u32` and are widened, so
    /// they cannot be negative here. A replay answers the original reservation id.
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let request = request.into_inner();
        let order_id = order_id(&request.order_id)?;
        let lines = request
            .lines
            .into_iter()
            .map(|line| Line {
                sku: line.sku,
                quantity: i64::from(line.quantity),
            })
            .collect();
        let (reservation, _) =
            stock::reserve(&self.pool, order_id, lines, self.reservation_ttl).await?;
        Ok(Response::new(ReserveResponse {
            reservation_id: reservation.id.to_string(),
            expires_at: Some(timestamp(reservation.expires_at)),
        }))
    }

    /// The saga's pivot ([`stock::commit`]): `NOT_FOUND` without a reservation,
    /// `FAILED_PRECONDITION` after a Release or expiry.
    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let order_id = order_id(&request.get_ref().order_id)?;
        stock::commit(&self.pool, order_id).await?;
        Ok(Response::new(CommitResponse {}))
    }

    /// Compensation ([`stock::release`]); succeeds even when the order never reserved, so the
    /// saga can release without knowing whether its Reserve arrived.
    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let request = request.into_inner();
        let order_id = order_id(&request.order_id)?;
        stock::release(&self.pool, order_id, &request.reason).await?;
        Ok(Response::new(ReleaseResponse {}))
    }

    /// Current levels, in the order asked, for skus that pass [`stock::check_sku`]; every bad
    /// sku is named in one `INVALID_ARGUMENT`.
    async fn get_availability(
        &self,
        request: Request<GetAvailabilityRequest>,
    ) -> Result<Response<GetAvailabilityResponse>, Status> {
        let skus = request.into_inner().skus;
        let mut fields = Vec::new();
        if skus.len() > MAX_SKUS {
            fields.push(FieldError::new("skus", "must list at most 1000 skus"));
        }
        for (i, sku) in skus.iter().enumerate() {
            if let Err(problem) = stock::check_sku(sku) {
                fields.push(FieldError::new(format!("skus[{i}]"), problem));
            }
        }
        if !fields.is_empty() {
            return Err(ApiError::validation(fields).into());
        }
        let items = stock::availability(&self.pool, &skus)
            .await?
            .into_iter()
            .map(|row| Availability {
                sku: row.sku,
                available: row.available,
                reserved: row.reserved,
            })
            .collect();
        Ok(Response::new(GetAvailabilityResponse { items }))
    }
}
