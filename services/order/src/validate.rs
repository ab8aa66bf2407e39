//! Validation of a placing request: every problem reported at once, by field. Unknown fields
//! are ignored (tolerant reader); prices are not read from the client at all.
//!
//! The body is read as loose JSON rather than deserialised into a struct, so a wrong type is a
//! field error like any other (`items[0].quantity: must be a whole number from 1 to 100`)
//! instead of the first parser message, and the client learns everything wrong with its
//! request in one answer. The OpenAPI schemas in [`schema`] are written by hand from the same
//! limits, so the document and the checks cannot disagree about a bound.
//!
//! Where it sits: the first thing `POST /api/v1/orders` does ([`crate::api`]), before the key
//! is looked up, catalog is asked or anything is stored, so a bad request costs nothing but
//! its parsing. What it checks is what the client can fix; what only catalog knows (does the
//! product exist, what does it cost) is checked by [`crate::api::price`] afterwards, and what
//! only payment knows (an expired card, the brand's CVC length) stays with payment-service.
//! This is pattern SEC-21 (input validation) and, by ignoring unknown fields, API-03 (tolerant
//! reader) of `docs/patterns.md`.

use axum::http::HeaderMap;
use serde_json::{Value, json};
use shop_runtime::FieldError;

use crate::card::Card;

/// Lines per order at most: bounds the pricing call, the reservation and the row count of one
/// request.
pub const MAX_ITEMS: usize = 50;
/// Units per line at most: a shop limit, published as the schema's `maximum` from this same
/// constant. The sum's overflow is still checked by [`crate::api::price`], since prices are
/// catalog's to bound.
pub const MAX_QUANTITY: u64 = 100;
/// The longest `Idempotency-Key` accepted (it is stored with the order). Room for any UUID
/// or ULID format a client may use, while one request cannot store an unbounded string.
pub const MAX_KEY_CHARS: usize = 255;

/// A valid request to place an order.
///
/// Only [`place_order`] builds one, so holding one means every field passed.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// The lines, each product at most once, in the request's order (which becomes the
    /// lines' `line_no`).
    pub items: Vec<Item>,
    /// The card, for the saga's `Authorize` step only: sealed into `order_cards` before the
    /// placing transaction, never stored in the clear.
    pub card: Card,
    /// The normalised address (trimmed, country in upper case), stored as given back. JSON
    /// rather than a struct because it is stored (`jsonb`) and shown exactly as built here.
    pub shipping_address: Value,
}

/// One line of the request: a product and how many.
#[derive(Debug, Clone)]
pub struct Item {
    /// A catalog product id, trimmed, at most 100 characters; catalog decides whether it
    /// exists.
    pub product_id: String,
    /// `1..=MAX_QUANTITY`, so it fits the `integer` column and the proto's `uint32`.
    pub quantity: u32,
}

impl PlaceOrder {
    /// The request in one canonical form (fields in fixed order, unknown ones dropped), so the
    /// same order sent twice with different key order or extra fields has the same fingerprint.
    /// The card appears only as first six + last four digits and expiry: the fingerprint is
    /// kept as long as the order, and neither the full number nor the CVC may be.
    pub fn canonical(&self) -> String {
        json!({
            "items": self.items.iter().map(|i| json!([i.product_id, i.quantity])).collect::<Vec<_>>(),
            "card": [self.card.first6(), self.card.last4(), self.card.expiry],
            "shipping_address": self.shipping_address,
        })
        .to_string()
    }
}

/// The schemas of the placing request and of the address it stores, written from the same
/// limits [`place_order`] checks (the body is read as loose JSON to report every field at once).
pub mod schema {
    use utoipa::openapi::{
        ArrayBuilder, ObjectBuilder, Ref, RefOr, Schema, Type, schema::SchemaType,
    };

    use super::*;

    /// Trimmed before it is checked, so the limit is in words: a `maxLength` would count the
    /// spaces the service trims away.
    fn text(max: usize, description: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(r"\S"))
            .description(Some(format!(
                "{description} At most {max} characters once surrounding spaces are trimmed."
            )))
    }

    /// A string that must match `pattern`, with an example: the country and the card fields,
    /// whose rules are formats rather than lengths.
    fn pattern(pattern: &str, description: &str, example: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .description(Some(description.to_owned()))
            .examples([json!(example)])
    }

    /// `shipping_address`, as sent and as the order shows it.
    #[derive(Debug)]
    pub struct ShippingAddress;

    /// The address fields with the lengths [`place_order`] allows; `line2` may be absent or
    /// null.
    impl utoipa::PartialSchema for ShippingAddress {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .property("name", text(200, "Who receives the parcel."))
                .property("line1", text(200, "Street and number."))
                .property(
                    "line2",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
                        .pattern(Some(r"\S"))
                        .description(Some(
                            "Optional second line, at most 200 characters once trimmed.",
                        )),
                )
                .property("city", text(100, "City."))
                .property("postal_code", text(20, "Postal code."))
                .property(
                    "country",
                    pattern(
                        r"^\s*[A-Za-z]{2}\s*$",
                        "ISO 3166-1 alpha-2 (stored in upper case).",
                        "DE",
                    ),
                )
                .required("name")
                .required("line1")
                .required("city")
                .required("postal_code")
                .required("country")
                .into()
        }
    }

    impl utoipa::ToSchema for ShippingAddress {}

    /// The body of `POST /api/v1/orders`.
    impl utoipa::PartialSchema for PlaceOrder {
        fn schema() -> RefOr<Schema> {
            let item = ObjectBuilder::new()
                .property(
                    "product_id",
                    text(
                        100,
                        "A product of the catalog; each at most once per order.",
                    ),
                )
                .property(
                    "quantity",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(MAX_QUANTITY)),
                )
                .required("product_id")
                .required("quantity");
            let payment = ObjectBuilder::new()
                .description(Some(
                    "The card; it never leaves payment-service except as its last four digits.",
                ))
                .property(
                    "card_number",
                    pattern(
                        r"^[0-9 -]{12,40}$",
                        "12 to 19 digits (spaces and dashes are ignored) passing the Luhn check. \
                         Test cards: 4242424242424242 approves, 4000000000000002 declines, \
                         4000000000009995 declines for insufficient funds, 4000000000000259 \
                         approves slowly.",
                        "4242424242424242",
                    ),
                )
                .property(
                    "expiry",
                    pattern(r"^\s*(0[1-9]|1[0-2])/[0-9]{2}\s*$", "MM/YY.", "12/30"),
                )
                .property(
                    "cvc",
                    pattern(r"^\s*[0-9]{3,4}\s*$", "3 or 4 digits.", "123"),
                )
                .required("card_number")
                .required("expiry")
                .required("cvc");
            ObjectBuilder::new()
                .description(Some(
                    "Prices are catalog's, never the client's; unknown fields are ignored.",
                ))
                .property(
                    "items",
                    ArrayBuilder::new()
                        .items(item)
                        .min_items(Some(1))
                        .max_items(Some(MAX_ITEMS)),
                )
                .property("payment", payment)
                .property(
                    "shipping_address",
                    Ref::from_schema_name(<ShippingAddress as utoipa::ToSchema>::name()),
                )
                .required("items")
                .required("payment")
                .required("shipping_address")
                .into()
        }
    }

    /// Published as `NewOrder`, and brings the `ShippingAddress` schema it refers to along.
    impl utoipa::ToSchema for PlaceOrder {
        fn name() -> std::borrow::Cow<'static, str> {
            "NewOrder".into()
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((
                <ShippingAddress as utoipa::ToSchema>::name().into_owned(),
                <ShippingAddress as utoipa::PartialSchema>::schema(),
            ));
        }
    }
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
///
/// Required rather than optional: without it a retried `POST` after a lost answer would place
/// a second order and charge a second time. Trimmed, and stored with the order, unique per
/// customer, so two customers may use the same key.
///
/// Visible ASCII only, because the key travels in a header and is stored in a `text` column:
/// nothing in it needs escaping or normalising.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, FieldError> {
    let field = "Idempotency-Key";
    let value = headers.get("idempotency-key").ok_or_else(|| {
        FieldError::new(field, "is required (a unique value per order, e.g. a UUID)")
    })?;
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| !key.is_empty() && key.len() <= MAX_KEY_CHARS)
        .filter(|key| key.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| FieldError::new(field, "must be 1 to 255 visible ASCII characters"))?;
    Ok(key.to_owned())
}

/// A required text field, trimmed, at most `max` characters; the error names `field`.
///
/// The limit counts characters, not bytes, so a name in any script gets the same room.
fn text<'a>(
    value: &'a Value,
    field: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match value.as_str().map(str::trim) {
        Some(text) if !text.is_empty() && text.chars().count() <= max => Some(text),
        Some(text) if !text.is_empty() => {
            errors.push(FieldError::new(
                field,
                format!("must be at most {max} characters"),
            ));
            None
        }
        _ => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
    }
}

/// The card number's checksum: catches a mistyped digit here, before anything is stored.
///
/// payment-service runs the same check again (it cannot trust its callers); doing it here
/// too turns a typo into a 422 while the customer is still there, not a cancelled order.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Checks the body of `POST /api/v1/orders`.
///
/// Every field is checked even after the first error, and errors name the field by its JSON
/// path. The same product twice is refused rather than merged: the client probably meant
/// something else, and the answer says how to express it. Error messages never quote the
/// card number or the CVC.
pub fn place_order(body: &Value) -> Result<PlaceOrder, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut items = Vec::new();
    match body.get("items").and_then(Value::as_array) {
        Some(list) if list.is_empty() => errors.push(FieldError::new("items", "must not be empty")),
        Some(list) if list.len() > MAX_ITEMS => errors.push(FieldError::new(
            "items",
            format!("must have at most {MAX_ITEMS} lines"),
        )),
        Some(list) => {
            let mut seen: Vec<&str> = Vec::new();
            for (index, item) in list.iter().enumerate() {
                let field = |name: &str| format!("items[{index}].{name}");
                let product_id = text(&item["product_id"], &field("product_id"), 100, &mut errors);
                let quantity = match item["quantity"].as_u64() {
                    Some(q) if (1..=MAX_QUANTITY).contains(&q) => u32::try_from(q).ok(),
                    _ => {
                        errors.push(FieldError::new(
                            field("quantity"),
                            format!("must be a whole number from 1 to {MAX_QUANTITY}"),
                        ));
                        None
                    }
                };
                if let Some(id) = product_id {
                    if seen.contains(&id) {
                        errors.push(FieldError::new(
                            field("product_id"),
                            "appears twice; put the whole quantity on one line",
                        ));
                    } else if quantity.is_none() {
                        seen.push(id);
                    } else if let Some(quantity) = quantity {
                        seen.push(id);
                        items.push(Item {
                            product_id: id.to_owned(),
                            quantity,
                        });
                    }
                }
            }
        }
        None => errors.push(FieldError::new(
            "items",
            "is required (a list of {product_id, quantity})",
        )),
    }

    let payment = &body["payment"];
    let number: String = payment["card_number"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .collect();
    if !(12..=19).contains(&number.len())
        || !number.chars().all(|c| c.is_ascii_digit())
        || !luhn(&number)
    {
        errors.push(FieldError::new(
            "payment.card_number",
            "is not a card number",
        ));
    }
    let expiry = payment["expiry"].as_str().unwrap_or_default().trim();
    let valid_expiry = expiry.len() == 5
        && expiry.as_bytes()[2] == b'/'
        && expiry[..2]
            .parse::<u8>()
            .is_ok_and(|m| (1..=12).contains(&m))
        && expiry[3..].chars().all(|c| c.is_ascii_digit());
    if !valid_expiry {
        errors.push(FieldError::new("payment.expiry", "must be MM/YY"));
    }
    let cvc = payment["cvc"].as_str().unwrap_or_default().trim();
    if !(3..=4).contains(&cvc.len()) || !cvc.chars().all(|c| c.is_ascii_digit()) {
        errors.push(FieldError::new("payment.cvc", "must be 3 or 4 digits"));
    }

    let address = &body["shipping_address"];
    let field = |name: &str| format!("shipping_address.{name}");
    let name = text(&address["name"], &field("name"), 200, &mut errors);
    let line1 = text(&address["line1"], &field("line1"), 200, &mut errors);
    let line2 = match &address["line2"] {
        Value::Null => None,
        other => text(other, &field("line2"), 200, &mut errors),
    };
    let city = text(&address["city"], &field("city"), 100, &mut errors);
    let postal_code = text(
        &address["postal_code"],
        &field("postal_code"),
        20,
        &mut errors,
    );
    let country = address["country"].as_str().map(str::trim);
    let country = match country {
        Some(code) if code.len() == 2 && code.chars().all(|c| c.is_ascii_alphabetic()) => {
            Some(code.to_ascii_uppercase())
        }
        _ => {
            errors.push(FieldError::new(
                field("country"),
                "must be an ISO 3166-1 alpha-2 code such as DE",
            ));
            None
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut shipping_address = json!({
        "name": name,
        "line1": line1,
        "city": city,
        "postal_code": postal_code,
        "country": country,
    });
    if let Some(line2) = line2 {
        shipping_address["line2"] = json!(line2);
    }
    Ok(PlaceOrder {
        items,
        card: Card {
            number,
            expiry: expiry.to_owned(),
            cvc: cvc.to_owned(),
        },
        shipping_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({
            "items": [{ "product_id": "p-1", "quantity": 2 }, { "product_id": "p-2", "quantity": 1 }],
            "payment": { "card_number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123" },
            "shipping_address": { "name": "Ada", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "de" },
            "coupon": "ignored",
        })
    }

    /// A good body passes with its card number stripped of spaces, its country upper-cased and
    /// an absent `line2` left out, and the unknown `coupon` ignored.
    #[test]
    fn accepts_a_good_order_and_normalises_it() {
        let order = place_order(&body()).unwrap();
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.card.number, "4242424242424242");
        assert_eq!(order.shipping_address["country"], "DE");
        assert!(order.shipping_address.get("line2").is_none());
    }

    /// An extra field does not change the canonical form (a client adding one on retry still
    /// matches its key), but a changed quantity does.
    #[test]
    fn the_fingerprint_ignores_unknown_fields_but_not_the_order() {
        let mut other = body();
        other["coupon"] = json!("different");
        assert_eq!(
            place_order(&body()).unwrap().canonical(),
            place_order(&other).unwrap().canonical()
        );
        other["items"][0]["quantity"] = json!(3);
        assert_ne!(
            place_order(&body()).unwrap().canonical(),
            place_order(&other).unwrap().canonical()
        );
    }

    /// What the fingerprint covers, and so what lives as long as the order, holds the first six
    /// and last four digits but neither the full number nor the CVC.
    #[test]
    fn the_canonical_form_keeps_no_card_number_and_no_cvc() {
        let mut with_cvc = body();
        with_cvc["payment"]["cvc"] = json!("987");
        let canonical = place_order(&with_cvc).unwrap().canonical();
        assert!(!canonical.contains("4242424242424242"), "{canonical}");
        assert!(!canonical.contains("987"), "{canonical}");
        assert!(canonical.contains("424242") && canonical.contains("4242"));
    }

    /// One answer names every broken field, in items, payment and address alike, and a field
    /// that is fine (`shipping_address.name`) is not named.
    #[test]
    fn reports_every_bad_field_at_once() {
        let errors = place_order(&json!({
            "items": [{ "product_id": "p-1", "quantity": 0 }, { "product_id": "p-1", "quantity": 1 }, {}],
            "payment": { "card_number": "4242424242424241", "expiry": "13/30", "cvc": "1" },
            "shipping_address": { "name": "Ada", "country": "Germany" },
        }))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "items[0].quantity",
            "items[1].product_id",
            "items[2].product_id",
            "items[2].quantity",
            "payment.card_number",
            "payment.expiry",
            "payment.cvc",
            "shipping_address.line1",
            "shipping_address.city",
            "shipping_address.postal_code",
            "shipping_address.country",
        ] {
            assert!(fields.contains(&expected), "{expected} in {fields:?}");
        }
        assert!(!fields.contains(&"shipping_address.name"));
        let empty = place_order(&json!({})).unwrap_err();
        assert!(empty.iter().any(|e| e.field == "items"));
    }

    /// The simulated provider's test cards are valid numbers, so validation never stops the
    /// behaviours they exist to trigger.
    #[test]
    fn the_test_cards_pass_the_luhn_check() {
        for card in [
            "4242424242424242",
            "4000000000000002",
            "4000000000009995",
            "4000000000000259",
        ] {
            assert!(luhn(card), "{card}");
        }
    }

    /// No key and a 256-character key are refused; a short visible one is taken as is.
    #[test]
    fn idempotency_keys_are_required_and_bounded() {
        let mut headers = HeaderMap::new();
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&headers).unwrap(), "k-1");
        headers.insert("idempotency-key", "x".repeat(256).parse().unwrap());
        assert!(idempotency_key(&headers).is_err());
    }
}
