//! The `products` collection: every read and write of the catalog, each one a single-document
//! operation so it is atomic on a standalone server (FerretDB, a single `mongod`).
//!
//! * **Writes and their events are one write.** The event envelopes go into the product's own
//!   `outbox` sub-document in the same `insert_one`/`update_one` as the change
//!   ([`shop_messaging::outbox::mongo`]); the relay publishes them and removes them.
//! * **Optimistic concurrency.** An update is read → change → `update_one` filtered on the
//!   version (and stock flag) that was read. If another writer got there first the filter
//!   matches nothing and nothing is written; the caller retries or is told (412).
//! * **One write to a product at a time in this process** ([`outbox::lock_document`]): FerretDB
//!   v1 applies an update as read, change, write back, so without it the relay's clean-up of an
//!   old outbox entry could overwrite a change made the same millisecond.
//! * **The stock read model** ([`Store::apply_stock_level`]) is a conditional update that only
//!   moves forward: a level older than the one applied is ignored.
//! * **Pagination** walks `_id` (UUIDv7, creation order) with `_id > cursor`: stable while
//!   products are added, each product exactly once.

use futures::{StreamExt, TryStreamExt};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, Document, doc},
    options::IndexOptions,
};
use shop_events::{
    Money,
    catalog::{PriceChanged, ProductCreated, ProductUpdated},
    inventory::StockLevel,
};
use shop_messaging::{Envelope, Event, outbox::mongo as outbox};
use shop_runtime::{ApiError, FieldError, stores::mongo::Server};

use crate::product::{Changes, Content, Product};

/// The one collection, with the outbox inside its documents.
pub const PRODUCTS: &str = "products";

/// Attempts of an update without `If-Match` that keeps losing to concurrent writers.
const UPDATE_ATTEMPTS: usize = 5;

/// Point reads [`Store::get_many`] runs at once.
const GET_MANY_CONCURRENCY: usize = 8;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a product with sku {0} exists")]
    DuplicateSku(String),
    #[error("no such product")]
    NotFound,
    /// `If-Match` named a representation that is no longer current.
    #[error("the product changed since it was read")]
    Stale,
    /// Concurrent writers kept winning (no `If-Match`, retries exhausted).
    #[error("the product is being changed concurrently")]
    Busy,
    #[error("invalid change")]
    Invalid(Vec<FieldError>),
    #[error("store: {0}")]
    Store(#[from] mongodb::error::Error),
    #[error("event: {0}")]
    Event(#[from] shop_messaging::Error),
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::DuplicateSku(sku) => {
                ApiError::conflict(format!("A product with sku {sku} already exists."))
                    .with_extension(
                        "errors",
                        serde_json::json!([FieldError::new(
                            "sku",
                            "is already used by another product"
                        )]),
                    )
            }
            WriteError::NotFound => ApiError::not_found("No product with this id."),
            // The HTTP layer answers 412 for this one before it gets here (see `api`).
            WriteError::Stale => ApiError::conflict(
                "The product changed since you read it; read it again and reapply your change.",
            ),
            WriteError::Busy => {
                ApiError::conflict("The product is being changed by someone else right now; retry.")
            }
            WriteError::Invalid(fields) => ApiError::validation(fields),
            WriteError::Store(err) => store_error(err),
            WriteError::Event(err) => ApiError::internal(err),
        }
    }
}

/// A store failure as the caller sees it: "unavailable, retry" when the server cannot be
/// reached, an internal error (logged, not shown) otherwise.
pub fn store_error(err: mongodb::error::Error) -> ApiError {
    use mongodb::error::ErrorKind;
    match *err.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => {
            ApiError::unavailable("The catalog store is unreachable; retry later.").with_source(err)
        }
        _ => ApiError::internal(err),
    }
}

/// What a list request asks for, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub category: Option<String>,
    /// Every one must be among a product's `search_terms` (see [`crate::search`]).
    pub terms: Vec<String>,
    /// The id of the last product of the previous page.
    pub after: Option<String>,
    pub limit: i64,
}

/// One page of products and whether another one follows.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Product>,
    /// The id to continue after, when there are more products.
    pub last: Option<String>,
}

/// The catalog's access to its database.
#[derive(Debug, Clone)]
pub struct Store {
    documents: Collection<Document>,
    products: Collection<Product>,
    /// Picks [`Store::get_many`]'s access path.
    server: Server,
}

/// Reads never carry the bookkeeping fields.
fn public_fields() -> Document {
    doc! { outbox::FIELD: 0, "search_terms": 0, "stock_version": 0 }
}

impl Store {
    /// The store on `db`, whose server is of kind `server` ([`Server::detect`]).
    pub fn new(db: &Database, server: Server) -> Self {
        let documents = db.collection::<Document>(PRODUCTS);
        Self {
            products: documents.clone_with_type(),
            documents,
            server,
        }
    }

    /// Creates the indexes (idempotent, at every start). The unique sku index is what makes a
    /// duplicate sku a 409 even when two requests race, and the seed safe to run twice.
    pub async fn ensure_indexes(&self) -> Result<(), shop_messaging::Error> {
        shop_messaging::inbox::mongo::ensure_unique(&self.documents, "sku").await?;
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        // Only the missing ones: FerretDB v1.24 drops the connection when asked to create a
        // compound index that already exists (MongoDB would answer "ok, nothing to do").
        let existing = self.documents.list_index_names().await?;
        let missing: Vec<IndexModel> = [
            index(doc! { "category": 1, "_id": 1 }, "category_id"),
            index(doc! { "search_terms": 1 }, "search_terms"),
        ]
        .into_iter()
        .filter(|model| {
            let name = model.options.as_ref().and_then(|o| o.name.as_deref());
            !name.is_some_and(|name| existing.iter().any(|e| e == name))
        })
        .collect();
        if !missing.is_empty() {
            self.documents.create_indexes(missing).await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Product>, mongodb::error::Error> {
        self.products
            .find_one(doc! { "_id": id })
            .projection(public_fields())
            .await
    }

    /// The products with these ids, in no particular order; unknown ids are simply absent.
    /// `ids` must be distinct (both callers deduplicate them).
    ///
    /// On MongoDB, one `find` with `$in` on `_id`: one round trip, served by the `_id` index.
    /// On FerretDB v1, one point read per id instead, [`GET_MANY_CONCURRENCY`] at a time:
    /// FerretDB v1 hands its backend only plain equality filters (on SQLite only one that is
    /// exactly `{_id: <string>}`), never `$in`, so a `$in` makes FerretDB itself read and
    /// decode every product of the collection, `search_terms` arrays and all. With the 24 demo
    /// products that was most of FerretDB's CPU under `make bench`'s orders (every
    /// `POST /orders` prices its cart here; `bench/findings.md`, runs 8–9), and it grows with
    /// the catalog. The point reads cost MongoDB round trips for nothing, so they are only
    /// FerretDB's path; a cart has few lines (at most [`crate::grpc::MAX_IDS`]) either way.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Product>, mongodb::error::Error> {
        match self.server {
            Server::Indexed => self.get_many_at_once(ids).await,
            Server::FerretDbV1 => self.get_many_one_by_one(ids).await,
        }
    }

    async fn get_many_at_once(
        &self,
        ids: &[String],
    ) -> Result<Vec<Product>, mongodb::error::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.products
            .find(doc! { "_id": { "$in": ids } })
            .projection(public_fields())
            .await?
            .try_collect()
            .await
    }

    async fn get_many_one_by_one(
        &self,
        ids: &[String],
    ) -> Result<Vec<Product>, mongodb::error::Error> {
        let reads: Vec<_> = ids.iter().map(|id| self.get(id)).collect();
        let found: Vec<Option<Product>> = futures::stream::iter(reads)
            .buffer_unordered(GET_MANY_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// A page in id order. One more product than asked for is read to know whether a next
    /// page exists, so the last page has no cursor (no empty page at the end).
    pub async fn list(&self, query: &ListQuery) -> Result<Page, mongodb::error::Error> {
        let mut filter = Document::new();
        if let Some(category) = &query.category {
            filter.insert("category", category);
        }
        if !query.terms.is_empty() {
            filter.insert("search_terms", doc! { "$all": query.terms.clone() });
        }
        if let Some(after) = &query.after {
            filter.insert("_id", doc! { "$gt": after });
        }
        let mut items: Vec<Product> = self
            .products
            .find(filter)
            .projection(public_fields())
            .sort(doc! { "_id": 1 })
            .limit(query.limit + 1)
            .await?
            .try_collect()
            .await?;
        let more = items.len() > usize::try_from(query.limit).unwrap_or(usize::MAX);
        items.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        let last = more
            .then(|| items.last().map(|product| product.id.clone()))
            .flatten();
        Ok(Page { items, last })
    }

    /// Inserts a product and its `ProductCreated` in one write. `initial_stock` travels in the
    /// event for inventory (the demo seed sets it).
    pub async fn create(
        &self,
        content: &Content,
        initial_stock: Option<i64>,
    ) -> Result<Product, WriteError> {
        let product = Product {
            id: uuid::Uuid::now_v7().to_string(),
            sku: content.sku.clone(),
            name: content.name.clone(),
            description: content.description.clone(),
            category: content.category.clone(),
            price: content.price.clone(),
            attributes: content.attributes.clone(),
            in_stock: false,
            version: 1,
        };
        let created = ProductCreated {
            product_id: product.id.clone(),
            sku: product.sku.clone(),
            name: product.name.clone(),
            category: product.category.clone(),
            price: product.price.clone(),
            version: product.version,
            initial_stock,
        };
        let envelope = created.envelope()?;
        let mut document = content_fields(content)?;
        document.insert("_id", &product.id);
        document.insert("in_stock", false);
        document.insert("version", product.version);
        document.insert("created_at", bson::DateTime::now());
        document.insert(
            outbox::FIELD,
            outbox::pending([(ProductCreated::ROUTING_KEY, &envelope)])?,
        );
        match self.documents.insert_one(document).await {
            Ok(_) => {
                outbox::written();
                Ok(product)
            }
            Err(err) if shop_messaging::inbox::mongo::is_duplicate(&err) => {
                Err(WriteError::DuplicateSku(product.sku))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Applies `changes` to the product, with its events, if the product is still what the
    /// caller saw: `if_match` holds the entity tags the caller accepts (`None`: whatever is
    /// current, retried a few times against concurrent writers).
    ///
    /// Returns the product after the change and whether anything changed (a PATCH that sets
    /// the values already there is not a new version and publishes nothing).
    pub async fn update(
        &self,
        id: &str,
        changes: &Changes,
        if_match: Option<&IfMatch>,
    ) -> Result<(Product, bool), WriteError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.get(id).await?.ok_or(WriteError::NotFound)?;
            if let Some(if_match) = if_match
                && !if_match.matches(&current.etag())
            {
                return Err(WriteError::Stale);
            }
            let content = changes
                .apply(current.content())
                .map_err(WriteError::Invalid)?;
            if content == current.content() {
                return Ok((current, false));
            }
            let next = Product {
                id: current.id.clone(),
                sku: content.sku.clone(),
                name: content.name.clone(),
                description: content.description.clone(),
                category: content.category.clone(),
                price: content.price.clone(),
                attributes: content.attributes.clone(),
                in_stock: current.in_stock,
                version: current.version + 1,
            };
            let mut set = content_fields(&content)?;
            set.insert("version", next.version);
            set.insert("updated_at", bson::DateTime::now());
            for (routing_key, envelope) in events_of_update(&current, &next)? {
                set.insert(
                    outbox::path(&envelope),
                    outbox::entry(routing_key, &envelope)?,
                );
            }
            let _lock = outbox::lock_document(&self.documents, &Bson::from(id)).await;
            let written = self
                .documents
                .update_one(
                    doc! { "_id": id, "version": current.version, "in_stock": current.in_stock },
                    doc! { "$set": set },
                )
                .await?;
            if written.matched_count == 1 {
                outbox::written();
                return Ok((next, true));
            }
            if if_match.is_some() {
                // What the caller's tag named was current when read, and is gone now.
                return Err(WriteError::Stale);
            }
            metrics::counter!("catalog_update_retries_total").increment(1);
        }
        Err(WriteError::Busy)
    }

    /// Applies one sku's stock level to `in_stock` if it is newer than the last one applied.
    /// Returns false for an old or repeated level (or an unknown sku): nothing changed.
    ///
    /// One conditional `update_one`: idempotent (the same level twice matches once) and
    /// order-independent (an older level arriving late matches nothing), without an inbox.
    ///
    /// When the level flips `in_stock`, the same write puts a `ProductUpdated` into the
    /// product's outbox: `in_stock` is part of what a product read answers (and of its `ETag`),
    /// so whoever caches product reads — the gateway — must hear of it like of any other change.
    /// A level that leaves `in_stock` as it was publishes nothing.
    pub async fn apply_stock_level(&self, level: &StockLevel) -> Result<bool, WriteError> {
        let Some(found) = self.get_by_sku(&level.sku).await? else {
            return Ok(false);
        };
        let _lock = outbox::lock_document(&self.documents, &Bson::from(found.id.as_str())).await;
        let in_stock = level.available > 0;
        for _ in 0..UPDATE_ATTEMPTS {
            // Read under the lock: the flag as read decides whether an event goes with the
            // write, and the filter insists on it (another instance may flip it meanwhile).
            let Some(product) = self.get(&found.id).await? else {
                return Ok(false);
            };
            let mut set = doc! { "in_stock": in_stock, "stock_version": level.version };
            let flips = product.in_stock != in_stock;
            if flips {
                let envelope = product_updated(&product).envelope()?;
                set.insert(
                    outbox::path(&envelope),
                    outbox::entry(ProductUpdated::ROUTING_KEY, &envelope)?,
                );
            }
            let written = self
                .documents
                .update_one(
                    doc! {
                        "_id": &product.id,
                        "sku": &level.sku,
                        "in_stock": product.in_stock,
                        "$or": [
                            { "stock_version": { "$exists": false } },
                            { "stock_version": { "$lt": level.version } },
                        ],
                    },
                    doc! { "$set": set },
                )
                .await?;
            if written.matched_count == 1 {
                if flips {
                    outbox::written();
                }
                return Ok(true);
            }
            // Nothing matched: either this level is old (done), or the flag moved under us
            // (read again and retry).
            match self.get(&found.id).await? {
                Some(now) if now.in_stock != product.in_stock => continue,
                _ => return Ok(false),
            }
        }
        Err(WriteError::Busy)
    }

    /// The product with this sku.
    pub async fn get_by_sku(&self, sku: &str) -> Result<Option<Product>, mongodb::error::Error> {
        self.products
            .find_one(doc! { "sku": sku })
            .projection(public_fields())
            .await
    }

    /// The skus among `skus` that exist already (for the idempotent seed).
    pub async fn existing_skus(
        &self,
        skus: &[String],
    ) -> Result<Vec<String>, mongodb::error::Error> {
        let found: Vec<Document> = self
            .documents
            .find(doc! { "sku": { "$in": skus } })
            .projection(doc! { "sku": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .iter()
            .filter_map(|document| document.get_str("sku").ok().map(str::to_owned))
            .collect())
    }
}

/// The stored fields of `content`, with its search terms.
fn content_fields(content: &Content) -> Result<Document, WriteError> {
    let attributes = bson::to_document(&content.attributes).map_err(|err| {
        WriteError::Invalid(vec![FieldError::new(
            "attributes",
            format!("cannot be stored: {err}"),
        )])
    })?;
    Ok(doc! {
        "sku": &content.sku,
        "name": &content.name,
        "description": &content.description,
        "category": &content.category,
        "price": money(&content.price),
        "attributes": attributes,
        "search_terms": content.search_terms(),
    })
}

fn money(price: &Money) -> Bson {
    Bson::Document(doc! { "amount": price.amount, "currency": &price.currency })
}

/// `ProductUpdated` for every change, plus `PriceChanged` when the price moved.
fn events_of_update(
    before: &Product,
    after: &Product,
) -> Result<Vec<(&'static str, Envelope)>, shop_messaging::Error> {
    let mut events = vec![(
        ProductUpdated::ROUTING_KEY,
        product_updated(after).envelope()?,
    )];
    if before.price != after.price {
        let changed = PriceChanged {
            product_id: after.id.clone(),
            sku: after.sku.clone(),
            old_price: before.price.clone(),
            new_price: after.price.clone(),
            version: after.version,
        };
        events.push((PriceChanged::ROUTING_KEY, changed.envelope()?));
    }
    Ok(events)
}

pub fn product_updated(product: &Product) -> ProductUpdated {
    ProductUpdated {
        product_id: product.id.clone(),
        sku: product.sku.clone(),
        name: product.name.clone(),
        category: product.category.clone(),
        price: product.price.clone(),
        version: product.version,
    }
}

/// An `If-Match` header: `*` or a list of entity tags, compared strongly (RFC 9110 §13.1.1:
/// a weak tag never matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    pub fn parse(header: &str) -> Self {
        if header.trim() == "*" {
            return Self::Any;
        }
        Self::Tags(
            header
                .split(',')
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn matches(&self, etag: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|tag| !tag.starts_with("W/") && tag == etag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IfMatch;

    #[test]
    fn if_match_compares_strongly() {
        assert!(IfMatch::parse("*").matches("\"3-in\""));
        assert!(IfMatch::parse("\"2-in\", \"3-in\"").matches("\"3-in\""));
        assert!(!IfMatch::parse("\"3-out\"").matches("\"3-in\""));
        assert!(!IfMatch::parse("W/\"3-in\"").matches("\"3-in\""));
    }
}
