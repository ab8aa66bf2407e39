//! `shop.catalog.v1.CatalogService` for internal callers (order-service pricing a cart),
//! behind [`shop_auth::grpc::RequireService`].

use shop_proto::{
    catalog::v1::{
        GetProductsRequest, GetProductsResponse, Product as ProductMessage,
        catalog_service_server::CatalogService,
    },
    common::v1::Money,
};
use shop_runtime::{ApiError, FieldError};
use tonic::{Request, Response, Status};

use crate::store::{Store, store_error};

/// At most this many ids per call: a cart, not a catalog export.
pub const MAX_IDS: usize = 100;

#[derive(Debug, Clone)]
pub struct CatalogApi {
    pub store: Store,
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    /// One query for the whole batch (no N+1). Every requested id is accounted for: found, or
    /// listed in `missing_ids` — an order must never be priced with a line silently dropped.
    async fn get_products(
        &self,
        request: Request<GetProductsRequest>,
    ) -> Result<Response<GetProductsResponse>, Status> {
        let mut ids = request.into_inner().ids;
        ids.sort();
        ids.dedup();
        if ids.len() > MAX_IDS {
            return Err(ApiError::validation(vec![FieldError::new(
                "ids",
                format!("must name at most {MAX_IDS} distinct products"),
            )])
            .into());
        }
        let found = self.store.get_many(&ids).await.map_err(store_error)?;
        let missing_ids = ids
            .into_iter()
            .filter(|id| !found.iter().any(|product| product.id == *id))
            .collect();
        let products = found
            .into_iter()
            .map(|product| ProductMessage {
                id: product.id,
                sku: product.sku,
                name: product.name,
                price: Some(Money {
                    amount: product.price.amount,
                    currency: product.price.currency,
                }),
                in_stock: product.in_stock,
                version: product.version,
            })
            .collect();
        Ok(Response::new(GetProductsResponse {
            products,
            missing_ids,
        }))
    }
}
