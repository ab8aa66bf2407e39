//! A product: how it is stored, how the API shows it, and the rules every write must pass.
//!
//! Validation reports every broken rule at once, one [`FieldError`] per field (422), so a form
//! can show them all. Bodies are read as loose JSON (not a `Deserialize` struct) for the same
//! reason: a wrong type in one field must be a field error, not a parse error that hides the
//! others. Unknown fields are ignored (tolerant reader).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shop_events::Money;
use shop_runtime::FieldError;

use crate::search;

const MAX_SKU_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 5_000;
const MAX_CATEGORY_CHARS: usize = 50;
/// 10^12 minor units: far above any real price, far below where sums of prices could overflow.
const MAX_AMOUNT: i64 = 1_000_000_000_000;
const MAX_ATTRIBUTES: usize = 50;
const MAX_ATTRIBUTE_DEPTH: usize = 3;
const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

/// A product as stored, without the bookkeeping fields (`outbox`, `search_terms`,
/// `stock_version`) that reads project away.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Product {
    /// A UUIDv7 as text: ids sort in creation order, which is what cursor pagination walks.
    #[serde(rename = "_id")]
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    /// Free-form, per category (a size for shirts, a roast for coffee): the reason this
    /// service uses a document store.
    pub attributes: Map<String, Value>,
    /// The read model kept by inventory's stock events (see [`crate::stock`]).
    pub in_stock: bool,
    /// 1 when created, +1 per change: the optimistic-concurrency token and the events' version.
    pub version: i64,
}

/// The public representation (BRIEF §3), plus `version`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Product)]
pub struct ProductBody<'a> {
    /// Assigned by catalog (a UUIDv7 as text).
    #[schema(value_type = String, example = "0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a")]
    pub id: &'a str,
    /// Upper case; a product keeps its sku for life (stock is kept by sku).
    #[schema(value_type = String, example = "COFFEE-ARABICA-1KG")]
    pub sku: &'a str,
    #[schema(value_type = String)]
    pub name: &'a str,
    #[schema(value_type = String)]
    pub description: &'a str,
    /// A slug such as `coffee`.
    #[schema(value_type = String, example = "coffee")]
    pub category: &'a str,
    #[schema(value_type = Money)]
    pub price: &'a Money,
    /// Free-form, per category.
    #[schema(value_type = Object)]
    pub attributes: &'a Map<String, Value>,
    /// Whether inventory has units available (kept by stock events, so briefly behind).
    pub in_stock: bool,
    /// 1 when created, +1 per change.
    pub version: i64,
}

impl Product {
    pub fn body(&self) -> ProductBody<'_> {
        ProductBody {
            id: &self.id,
            sku: &self.sku,
            name: &self.name,
            description: &self.description,
            category: &self.category,
            price: &self.price,
            attributes: &self.attributes,
            in_stock: self.in_stock,
            version: self.version,
        }
    }

    /// The entity tag of the representation: it changes whenever the body does, so it has to
    /// include `in_stock`, which changes by stock events without a new product version.
    pub fn etag(&self) -> String {
        let stock = if self.in_stock { "in" } else { "out" };
        format!("\"{}-{stock}\"", self.version)
    }

    /// The editable content, to apply [`Changes`] to.
    pub fn content(&self) -> Content {
        Content {
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category: self.category.clone(),
            price: self.price.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

/// Everything an administrator decides about a product, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub attributes: Map<String, Value>,
}

impl Content {
    /// The normalised words a text search matches (see [`search`]).
    pub fn search_terms(&self) -> Vec<String> {
        let mut text = vec![
            self.sku.as_str(),
            self.name.as_str(),
            self.description.as_str(),
            self.category.as_str(),
        ];
        collect_strings(&self.attributes, &mut text);
        search::index_terms(text)
    }
}

/// Top-level string attribute values (and strings in top-level arrays) are searchable:
/// "red", "arabica"; keys and nested objects are not.
fn collect_strings<'a>(attributes: &'a Map<String, Value>, out: &mut Vec<&'a str>) {
    for value in attributes.values() {
        match value {
            Value::String(text) => out.push(text),
            Value::Array(items) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
}

/// A PATCH: the fields present in the body, each validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price: Option<Money>,
    pub attributes: Option<Map<String, Value>>,
}

impl Changes {
    /// `content` with these changes applied; a different sku is refused (inventory keys the
    /// stock by sku, so a product keeps its sku for life: a new sku is a new product).
    pub fn apply(&self, mut content: Content) -> Result<Content, Vec<FieldError>> {
        if let Some(sku) = &self.sku
            && *sku != content.sku
        {
            return Err(vec![FieldError::new(
                "sku",
                "cannot be changed (stock is kept by sku); create a new product instead",
            )]);
        }
        if let Some(name) = &self.name {
            content.name.clone_from(name);
        }
        if let Some(description) = &self.description {
            content.description.clone_from(description);
        }
        if let Some(category) = &self.category {
            content.category.clone_from(category);
        }
        if let Some(price) = &self.price {
            content.price = price.clone();
        }
        if let Some(attributes) = &self.attributes {
            content.attributes.clone_from(attributes);
        }
        Ok(content)
    }
}

/// The schemas of the write bodies, from the same limits the rules below enforce. Bodies are
/// read as loose JSON (see the module docs), so these describe what the rules accept.
pub mod schema {
    use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type, schema::AdditionalProperties};

    use super::*;

    fn text(description: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description.to_owned()))
    }

    /// The fields of a product an administrator writes, each with its rule.
    fn fields(object: ObjectBuilder) -> ObjectBuilder {
        object
            .property(
                "sku",
                text("Letters, digits, '-', '_' or '.'; stored in upper case. Unique.")
                    .pattern(Some(format!(
                        r"^\s*[A-Za-z0-9._-]{{1,{MAX_SKU_CHARS}}}\s*$"
                    )))
                    .examples([serde_json::json!("COFFEE-ARABICA-1KG")]),
            )
            .property(
                "name",
                text(&format!(
                    "At most {MAX_NAME_CHARS} characters once surrounding spaces are trimmed."
                ))
                .min_length(Some(1))
                .pattern(Some(r"\S")),
            )
            .property(
                "description",
                text(&format!(
                    "Plain text, at most {MAX_DESCRIPTION_CHARS} characters once trimmed; empty when absent."
                )),
            )
            .property(
                "category",
                text(&format!(
                    "A slug of at most {MAX_CATEGORY_CHARS} characters (once trimmed): lower-case \
                     letters and digits, words joined by '-'."
                ))
                .pattern(Some(r"^\s*[a-z0-9]+(-[a-z0-9]+)*\s*$"))
                    .examples([serde_json::json!("coffee")]),
            )
            .property(
                "price",
                ObjectBuilder::new()
                    .property(
                        "amount",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0))
                            .maximum(Some(MAX_AMOUNT))
                            .description(Some("Minor units (1999 for 19.99).")),
                    )
                    .property(
                        "currency",
                        text("ISO 4217, upper case.").pattern(Some("^[A-Z]{3}$")),
                    )
                    .required("amount")
                    .required("currency"),
            )
            .property(
                "attributes",
                ObjectBuilder::new()
                    .description(Some(format!(
                        "Free-form, at most {MAX_ATTRIBUTES} entries, {MAX_ATTRIBUTE_DEPTH} levels \
                         and {MAX_ATTRIBUTES_BYTES} bytes; keys are 1 to 100 characters without \
                         '.', NUL or a leading '$'; no array directly inside an array."
                    )))
                    .max_properties(Some(MAX_ATTRIBUTES))
                    .property_names(Some(
                        text("A key.")
                            .min_length(Some(1))
                            .max_length(Some(100))
                            .pattern(Some(r"^[^$.\x00][^.\x00]*$")),
                    ))
                    .additional_properties(Some(AdditionalProperties::FreeForm(true))),
            )
    }

    /// `POST /api/v1/products`.
    impl utoipa::PartialSchema for Content {
        fn schema() -> RefOr<Schema> {
            fields(ObjectBuilder::new().description(Some("A new product.")))
                .required("sku")
                .required("name")
                .required("category")
                .required("price")
                .into()
        }
    }

    impl utoipa::ToSchema for Content {
        fn name() -> std::borrow::Cow<'static, str> {
            "NewProduct".into()
        }
    }

    /// `PATCH /api/v1/products/{id}`: any subset; `sku` only with the product's own value.
    impl utoipa::PartialSchema for Changes {
        fn schema() -> RefOr<Schema> {
            fields(ObjectBuilder::new().description(Some(
                "Any subset of a product's fields; the ones present replace the current values.",
            )))
            .into()
        }
    }

    impl utoipa::ToSchema for Changes {
        fn name() -> std::borrow::Cow<'static, str> {
            "ProductChanges".into()
        }
    }
}

/// Checks a `POST /products` body: `sku`, `name`, `category` and `price` are required,
/// `description` defaults to empty and `attributes` to `{}`.
pub fn new_product(body: &Value) -> Result<Content, Vec<FieldError>> {
    let body = object(body)?;
    let mut errors = Vec::new();
    let mut required = |field: &str| {
        let value = body.get(field);
        if value.is_none() {
            errors.push(FieldError::new(field, "is required"));
        }
        value
    };
    let (sku, name, category, price) = (
        required("sku"),
        required("name"),
        required("category"),
        required("price"),
    );
    let sku = sku.and_then(|v| check(sku_rule(v), &mut errors));
    let name = name.and_then(|v| check(name_rule(v), &mut errors));
    let category = category.and_then(|v| check(category_rule(v), &mut errors));
    let price = price.and_then(|v| check(price_rule(v), &mut errors));
    let description = match body.get("description") {
        None => Some(String::new()),
        Some(v) => check(description_rule(v), &mut errors),
    };
    let attributes = match body.get("attributes") {
        None => Some(Map::new()),
        Some(v) => check(attributes_rule(v), &mut errors),
    };
    match (sku, name, description, category, price, attributes) {
        (
            Some(sku),
            Some(name),
            Some(description),
            Some(category),
            Some(price),
            Some(attributes),
        ) if errors.is_empty() => Ok(Content {
            sku,
            name,
            description,
            category,
            price,
            attributes,
        }),
        _ => Err(errors),
    }
}

/// Checks a `PATCH /products/{id}` body: any subset of the fields, each by the same rules.
pub fn changes(body: &Value) -> Result<Changes, Vec<FieldError>> {
    let body = object(body)?;
    let mut errors = Vec::new();
    let changes = Changes {
        sku: body
            .get("sku")
            .and_then(|v| check(sku_rule(v), &mut errors)),
        name: body
            .get("name")
            .and_then(|v| check(name_rule(v), &mut errors)),
        description: body
            .get("description")
            .and_then(|v| check(description_rule(v), &mut errors)),
        category: body
            .get("category")
            .and_then(|v| check(category_rule(v), &mut errors)),
        price: body
            .get("price")
            .and_then(|v| check(price_rule(v), &mut errors)),
        attributes: body
            .get("attributes")
            .and_then(|v| check(attributes_rule(v), &mut errors)),
    };
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

fn object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::new("body", "must be a JSON object")])
}

fn check<T>(result: Result<T, Vec<FieldError>>, errors: &mut Vec<FieldError>) -> Option<T> {
    result.map_err(|mut found| errors.append(&mut found)).ok()
}

fn error<T>(field: &str, message: impl Into<String>) -> Result<T, Vec<FieldError>> {
    Err(vec![FieldError::new(field, message)])
}

fn text<'a>(field: &str, value: &'a Value) -> Result<&'a str, Vec<FieldError>> {
    value
        .as_str()
        .map_or_else(|| error(field, "must be a string"), Ok)
}

/// Upper-cased, so `abc-1` and `ABC-1` cannot become two products (or two stock rows).
fn sku_rule(value: &Value) -> Result<String, Vec<FieldError>> {
    let sku = text("sku", value)?.trim().to_uppercase();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if sku.is_empty() || sku.len() > MAX_SKU_CHARS || !sku.chars().all(allowed) {
        return error(
            "sku",
            format!("must be 1 to {MAX_SKU_CHARS} letters, digits, '-', '_' or '.'"),
        );
    }
    Ok(sku)
}

fn name_rule(value: &Value) -> Result<String, Vec<FieldError>> {
    let name = text("name", value)?.trim();
    if name.is_empty() {
        return error("name", "must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return error(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters long"),
        );
    }
    Ok(name.to_owned())
}

fn description_rule(value: &Value) -> Result<String, Vec<FieldError>> {
    let description = text("description", value)?.trim();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return error(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters long"),
        );
    }
    Ok(description.to_owned())
}

/// A slug (`coffee`, `kitchen-tools`): categories are filtered by exact match.
fn category_rule(value: &Value) -> Result<String, Vec<FieldError>> {
    let category = text("category", value)?.trim();
    let slug = !category.is_empty()
        && category.len() <= MAX_CATEGORY_CHARS
        && category.split('-').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !slug {
        return error(
            "category",
            format!(
                "must be a slug of at most {MAX_CATEGORY_CHARS} characters: lower-case letters and digits, words joined by '-'"
            ),
        );
    }
    Ok(category.to_owned())
}

/// `{amount, currency}`: integer minor units, ISO 4217 code.
fn price_rule(value: &Value) -> Result<Money, Vec<FieldError>> {
    let Some(price) = value.as_object() else {
        return error(
            "price",
            "must be an object {amount, currency} with the amount in minor units",
        );
    };
    let mut errors = Vec::new();
    let amount = match price.get("amount") {
        None => {
            errors.push(FieldError::new("price.amount", "is required"));
            None
        }
        Some(amount) => match amount.as_i64() {
            Some(amount) if (0..=MAX_AMOUNT).contains(&amount) => Some(amount),
            Some(_) => {
                errors.push(FieldError::new(
                    "price.amount",
                    format!("must be between 0 and {MAX_AMOUNT} (minor units)"),
                ));
                None
            }
            None => {
                errors.push(FieldError::new(
                    "price.amount",
                    "must be an integer number of minor units (1999 for 19.99)",
                ));
                None
            }
        },
    };
    let currency = match price.get("currency").map(Value::as_str) {
        None => {
            errors.push(FieldError::new("price.currency", "is required"));
            None
        }
        Some(Some(code)) if code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase()) => {
            Some(code.to_owned())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "price.currency",
                "must be an ISO 4217 code in upper case, such as EUR",
            ));
            None
        }
    };
    match (amount, currency) {
        (Some(amount), Some(currency)) => Ok(Money { amount, currency }),
        _ => Err(errors),
    }
}

/// A JSON object of bounded size and depth whose keys the store accepts as field names.
fn attributes_rule(value: &Value) -> Result<Map<String, Value>, Vec<FieldError>> {
    let Some(attributes) = value.as_object() else {
        return error("attributes", "must be a JSON object");
    };
    let mut errors = Vec::new();
    if attributes.len() > MAX_ATTRIBUTES {
        errors.push(FieldError::new(
            "attributes",
            format!("must have at most {MAX_ATTRIBUTES} entries"),
        ));
    }
    if value.to_string().len() > MAX_ATTRIBUTES_BYTES {
        errors.push(FieldError::new(
            "attributes",
            format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"),
        ));
    }
    check_keys("attributes", attributes, 1, &mut errors);
    if errors.is_empty() {
        Ok(attributes.clone())
    } else {
        Err(errors)
    }
}

/// Keys become document field names: no `$` prefix (operators) and no `.` (paths).
/// A NUL cannot be in a BSON field name at all (names are C strings), and FerretDB stores no
/// array directly inside an array: the store refused both with an error that became a 500
/// (found by Schemathesis). Objects inside arrays are documents too, so their keys follow the
/// same rules.
fn check_keys(path: &str, object: &Map<String, Value>, depth: usize, errors: &mut Vec<FieldError>) {
    for (key, value) in object {
        let field = format!("{path}.{key}");
        if key.is_empty()
            || key.starts_with('$')
            || key.contains('.')
            || key.contains('\0')
            || key.len() > 100
        {
            errors.push(FieldError::new(
                &field,
                "names must be 1 to 100 characters, without '.' or NUL and not starting with '$'",
            ));
        }
        let nested = match value {
            Value::Object(inner) => Some(inner),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::Object(inner) => {
                            check_keys(&format!("{field}[{index}]"), inner, depth + 1, errors);
                        }
                        Value::Array(_) => errors.push(FieldError::new(
                            format!("{field}[{index}]"),
                            "is an array inside an array, which the store cannot keep",
                        )),
                        _ => {}
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(inner) = nested {
            if depth >= MAX_ATTRIBUTE_DEPTH {
                errors.push(FieldError::new(
                    &field,
                    format!("nests deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
                ));
            } else {
                check_keys(&field, inner, depth + 1, errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attribute_keys_with_nul_nested_arrays_or_inside_arrays_follow_the_store_rules() {
        for attributes in [
            json!({"a": {"b\u{0}": 1}}),
            json!({"list": [{"$where": 1}]}),
            json!({"list": [1, {"a.b": 2}]}),
            json!({"list": [[false]]}),
        ] {
            let errors = attributes_rule(&attributes).unwrap_err();
            assert_eq!(errors.len(), 1, "{attributes}: {errors:?}");
        }
        assert!(attributes_rule(&json!({"list": [{"ok": 1}]})).is_ok());
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_new_product_is_normalised_and_defaults_the_optional_fields() {
        let content = new_product(&json!({
            "sku": " ab-12 ", "name": " Mug ", "category": "kitchen",
            "price": {"amount": 1299, "currency": "EUR"}, "unknown": true,
        }))
        .unwrap();
        assert_eq!(content.sku, "AB-12");
        assert_eq!(content.name, "Mug");
        assert_eq!(content.description, "");
        assert!(content.attributes.is_empty());
    }

    #[test]
    fn every_broken_rule_is_reported_by_field() {
        let errors = new_product(&json!({
            "sku": "no spaces please", "name": 7, "category": "Not A Slug",
            "price": {"amount": 12.5, "currency": "eur"},
            "attributes": {"$where": 1, "a.b": 2, "deep": {"x": {"y": {"z": 1}}}},
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "sku",
                "name",
                "category",
                "price.amount",
                "price.currency",
                "attributes.$where",
                "attributes.a.b",
                "attributes.deep.x.y",
            ]
        );
        let errors = new_product(&json!({})).unwrap_err();
        assert_eq!(fields(&errors), ["sku", "name", "category", "price"]);
        assert!(errors.iter().all(|e| e.message == "is required"));
    }

    #[test]
    fn a_patch_checks_only_what_it_carries_and_keeps_the_sku() {
        assert_eq!(changes(&json!({})).unwrap(), Changes::default());
        let errors = changes(&json!({"price": {"amount": -1}, "name": ""})).unwrap_err();
        assert_eq!(fields(&errors), ["name", "price.amount", "price.currency"]);

        let content = new_product(&json!({
            "sku": "A-1", "name": "Mug", "category": "kitchen",
            "price": {"amount": 100, "currency": "EUR"},
        }))
        .unwrap();
        let patch = changes(&json!({"sku": "a-1", "name": "Big mug"})).unwrap();
        assert_eq!(patch.apply(content.clone()).unwrap().name, "Big mug");
        let patch = changes(&json!({"sku": "B-1"})).unwrap();
        assert_eq!(fields(&patch.apply(content).unwrap_err()), ["sku"]);
    }
}
