//! API composition: `GET /api/v1/orders/{id}` answers with data from two services.
//!
//! **The pattern.** A client showing an order wants more than order-service owns: each line
//! already carries what was bought (sku, the name at the time, the price paid), but the
//! product's *current* catalog view — its name today, whether it can be bought again — belongs
//! to catalog. Rather than make every client call both services (and catalog once per line),
//! the edge composes one answer:
//!
//! 1. the request is forwarded to order-service exactly like any other route ([`Proxy::handle`]:
//!    token check, rate limit, bulkhead, breaker), **with the caller's token**, so order-service
//!    still decides ownership: someone else's order is its 404, passed through untouched, and
//!    costs no catalog call;
//! 2. the product ids of the order's lines are collected and deduplicated, and catalog is asked
//!    for all of them in **one** call, `GET /api/v1/products?ids=a,b,c` (one per
//!    [`MAX_IDS_PER_CALL`] ids; order-service caps an order at 50 lines, so in practice one);
//! 3. each line gets a `product` field, `{name, in_stock}`, from that answer. Everything
//!    order-service said is kept as it was: the composition only adds.
//!
//! **Why catalog's REST read and not its gRPC `GetProducts`.** BRIEF §5 puts REST between the
//! gateway and the services and gRPC between services; the product data is public, so the
//! public read API is the right door. Using gRPC would also hand the edge a service credential
//! and a place in catalog's access table (ADR 0005): the most exposed process would hold a
//! credential it does not need. The caller's token is *not* sent to catalog either: catalog
//! needs to know nothing about who reads a product.
//!
//! **Through the cache.** The catalog call goes through the same Redis response cache as
//! product reads ([`crate::cache`]): a client polling its order until it is `CONFIRMED` costs
//! catalog one call per order per freshness window, and catalog's product events invalidate
//! the entry like any listing, so a renamed product shows its new name as soon as the event
//! arrives.
//!
//! **When catalog is down** (unreachable, timing out, circuit open, answering an error), the
//! order is still answered, 200, never a 5xx for data the order does not depend on:
//! * with the names from the cached answer, however old, if this set of products was asked for
//!   before (stale-if-error, as for product reads);
//! * otherwise without `product` on the lines. The lines still carry the name order-service
//!   recorded when the order was placed, so a client always has a name to show.
//!
//! Counted in `gateway_composition_total{outcome}`: `complete` (catalog or a fresh cache
//! entry answered), `stale` (a stale cache entry), `degraded` (lines without `product`).

use std::{collections::HashMap, sync::Arc};

use axum::{body::Body, extract::Request, response::Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::{
    proxy::Proxy,
    routes::{Route, Upstream},
};

/// Ids per catalog call: catalog's limit for `?ids=`.
pub const MAX_IDS_PER_CALL: usize = 100;

/// The largest order answer the gateway reads to compose (order-service's are a few KiB).
const MAX_ORDER_BYTES: usize = 1024 * 1024;

/// What the composition adds to a line: the product as catalog shows it now.
#[derive(Debug, Clone, PartialEq)]
struct CatalogView {
    name: Value,
    in_stock: Value,
}

/// How the products of one order were found, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// From catalog, or a fresh cache entry.
    Current,
    /// From a cache entry kept for stale-if-error.
    Stale,
    /// Not at all: catalog could not be asked and nothing was cached.
    Missing,
}

impl Proxy {
    /// Serves `GET /api/v1/orders/{id}`: the order from order-service, each line completed
    /// with its product from catalog (see the module documentation).
    pub async fn order_with_products(
        self: Arc<Self>,
        route: &'static Route,
        request: Request,
    ) -> Response {
        let request_id = request.headers().get("x-request-id").cloned();
        let response = self.clone().handle(route, request).await;
        if response.status() != StatusCode::OK {
            // 404 for another customer's order, 401, 429, 5xx: order-service's or the
            // gateway's answer as it is, and no catalog call.
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_ORDER_BYTES).await else {
            tracing::warn!("an order answer could not be read for composition");
            return crate::proxy::bad_gateway();
        };
        let Ok(mut order) = serde_json::from_slice::<Value>(&bytes) else {
            // Not the JSON order it should be: pass it on rather than guess.
            return Response::from_parts(parts, Body::from(bytes));
        };
        let ids = product_ids(&order);
        if ids.is_empty() {
            return Response::from_parts(parts, Body::from(bytes));
        }

        let (products, source) = self.products(&ids, request_id.as_ref()).await;
        if let Some(lines) = order.get_mut("items").and_then(Value::as_array_mut) {
            for line in lines {
                let view = line
                    .get("product_id")
                    .and_then(Value::as_str)
                    .and_then(|id| products.get(id));
                if let (Some(view), Some(line)) = (view, line.as_object_mut()) {
                    line.insert(
                        "product".into(),
                        json!({ "name": view.name, "in_stock": view.in_stock }),
                    );
                }
            }
        }
        let outcome = match source {
            Source::Current => "complete",
            Source::Stale => "stale",
            Source::Missing => "degraded",
        };
        metrics::counter!("gateway_composition_total", "outcome" => outcome).increment(1);

        let body = serde_json::to_vec(&order).unwrap_or_else(|_| bytes.to_vec());
        // The body changed: its length is recomputed, and an entity tag of order-service's
        // representation would no longer describe it.
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ETAG);
        Response::from_parts(parts, Body::from(body))
    }

    /// The catalog view of `ids`, one call per [`MAX_IDS_PER_CALL`] ids, and where it came
    /// from (the worst source of any call).
    async fn products(
        &self,
        ids: &[String],
        request_id: Option<&HeaderValue>,
    ) -> (HashMap<String, CatalogView>, Source) {
        let mut found = HashMap::new();
        let mut source = Source::Current;
        for chunk in ids.chunks(MAX_IDS_PER_CALL) {
            let (page, from) = self.catalog_page(&batch_path(chunk), request_id).await;
            if let Some(page) = page {
                collect(&page, &mut found);
            }
            source = source.max(from);
        }
        (found, source)
    }

    /// One page of catalog's `?ids=` read: a fresh cache entry, else catalog (whose answer is
    /// then cached), else a stale cache entry.
    async fn catalog_page(
        &self,
        path_and_query: &str,
        request_id: Option<&HeaderValue>,
    ) -> (Option<Bytes>, Source) {
        let (cached, generation) = self.cache.body(path_and_query).await;
        if let Some((body, true)) = cached {
            return (Some(body), Source::Current);
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(id) = request_id {
            headers.insert("x-request-id", id.clone());
        }
        shop_runtime::telemetry::inject_context(&mut headers);
        let answer = self
            .call(
                Upstream::Catalog,
                &Method::GET,
                path_and_query,
                &headers,
                &Bytes::new(),
            )
            .await;
        match answer {
            Ok(page) if page.status() == StatusCode::OK => {
                self.cache
                    .store(path_and_query, generation, &page.0, &page.1)
                    .await;
                return (Some(page.1), Source::Current);
            }
            Ok(page) => {
                tracing::warn!(status = %page.status(), "catalog refused the products of an order");
            }
            Err(_) => tracing::warn!("catalog did not answer for the products of an order"),
        }
        match cached {
            Some((body, _)) => (Some(body), Source::Stale),
            None => (None, Source::Missing),
        }
    }
}

/// The distinct product ids of an order's lines, sorted (so the same order always makes the
/// same catalog request, and hits the same cache entry).
fn product_ids(order: &Value) -> Vec<String> {
    let mut ids: Vec<String> = order
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|line| line.get("product_id")?.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `/api/v1/products?ids=a,b,c`, each id percent-encoded.
fn batch_path(ids: &[String]) -> String {
    let ids: Vec<String> = ids
        .iter()
        .map(|id| url::form_urlencoded::byte_serialize(id.as_bytes()).collect())
        .collect();
    format!("/api/v1/products?ids={}", ids.join(","))
}

/// Reads catalog's page as a tolerant reader: `items[].id`, `.name`, `.in_stock`, nothing else.
fn collect(page: &[u8], found: &mut HashMap<String, CatalogView>) {
    let Ok(page) = serde_json::from_slice::<Value>(page) else {
        return;
    };
    for product in page
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(id) = product.get("id").and_then(Value::as_str) else {
            continue;
        };
        found.insert(
            id.to_owned(),
            CatalogView {
                name: product.get("name").cloned().unwrap_or(Value::Null),
                in_stock: product.get("in_stock").cloned().unwrap_or(Value::Null),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_sorted_and_encoded_into_one_request() {
        let order = json!({ "items": [
            { "product_id": "p-2", "quantity": 1 },
            { "product_id": "p-1", "quantity": 2 },
            { "product_id": "p-2", "quantity": 3 },
            { "quantity": 1 },
        ]});
        let ids = product_ids(&order);
        assert_eq!(ids, ["p-1", "p-2"]);
        assert_eq!(batch_path(&ids), "/api/v1/products?ids=p-1,p-2");
        assert_eq!(
            batch_path(&["a b&c".to_owned()]),
            "/api/v1/products?ids=a+b%26c"
        );
    }

    #[test]
    fn catalog_pages_are_read_tolerantly() {
        let mut found = HashMap::new();
        collect(
            br#"{"items": [{"id": "p-1", "name": "Coffee", "in_stock": true, "new": 1}, {"name": "no id"}], "next_cursor": null}"#,
            &mut found,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found["p-1"].name, "Coffee");
        assert_eq!(found["p-1"].in_stock, true);
        collect(b"not json", &mut found);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn the_worst_source_wins() {
        assert_eq!(Source::Current.max(Source::Stale), Source::Stale);
        assert_eq!(Source::Missing.max(Source::Stale), Source::Missing);
    }
}
