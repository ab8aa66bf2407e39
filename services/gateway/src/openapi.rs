//! The OpenAPI 3.1 document of the public API, served at `/api/v1/openapi.json`.
//!
//! It is built from the same table the router is built from ([`ROUTES`]), with utoipa's
//! builders: every published route is documented, with its path parameters, its security
//! (bearer token for user and admin routes) and the answers the gateway itself adds (401, 403,
//! 413, 429, 502–504). A route cannot be published without appearing here, and nothing appears
//! here that is not routed (`tests/openapi.rs` checks both through a running gateway).
//!
//! Body schemas are not here yet, with one exception: the answer the gateway composes itself
//! (`GET /api/v1/orders/{id}`, [`crate::compose`]), whose shape no single service owns. The
//! other shapes belong to the services that own them. The interactive page for this document
//! is [`crate::docs`].

use http::Method;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HttpMethod, InfoBuilder, KnownFormat, ObjectBuilder,
    OpenApi, OpenApiBuilder, Paths, Required, ResponseBuilder, Schema, SchemaFormat, Type,
    path::{OperationBuilder, ParameterBuilder, ParameterIn},
    schema::ArrayBuilder,
    security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
};

use crate::routes::{Access, Handler, ROUTES, Route};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

const BEARER: &str = "bearer";

/// The document, built once at start.
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    for route in ROUTES {
        let Some(method) = http_method(&route.method) else {
            continue;
        };
        paths.add_path_operation(route.path, vec![method], operation(route));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("shop public API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The public API of the shop, served by the gateway. Errors are RFC 9457 problem documents.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    BEARER,
                    SecurityScheme::Http(
                        HttpBuilder::new()
                            .scheme(HttpAuthScheme::Bearer)
                            .bearer_format("JWT")
                            .build(),
                    ),
                )
                .build(),
        ))
        .build()
}

fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let mut builder = OperationBuilder::new()
        .tag(route.upstream.name())
        .operation_id(Some(operation_id(route)));
    builder = match route.handler {
        Handler::Forward => builder.response(
            "2XX",
            ResponseBuilder::new().description("The owning service's answer."),
        ),
        Handler::OrderWithProducts => builder
            .description(Some(
                "API composition: the order from order-service (which decides ownership: \
                 another customer's order is 404), each line completed with `product`, the \
                 product as catalog shows it now, fetched for all lines in one call. While \
                 catalog is unavailable the order is still answered: with the last names the \
                 gateway cached, or with lines without `product`.",
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The order, its lines completed from catalog.")
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(composed_order())).build(),
                    ),
            )
            .response("404", problem("No such order among the caller's own.")),
    };
    for name in path_parameters(route.path) {
        builder = builder.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True),
        );
    }
    if route.access != Access::Public {
        builder = builder
            .security(SecurityRequirement::new::<_, _, String>(BEARER, []))
            .response("401", problem("No valid access token."));
    }
    if route.access == Access::Admin {
        builder = builder.response("403", problem("The token lacks the admin role."));
    }
    if matches!(route.method, Method::POST | Method::PUT | Method::PATCH) {
        builder = builder.response(
            "413",
            problem("The body is larger than the gateway accepts."),
        );
    }
    builder
        .response(
            "429",
            problem("Rate limited; see Retry-After and RateLimit."),
        )
        .response("502", problem("The owning service could not be reached."))
        .response(
            "503",
            problem("The owning service is unavailable (circuit open or overloaded)."),
        )
        .response("504", problem("The owning service did not answer in time."))
        .build()
}

fn string(format: Option<SchemaFormat>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(format)
}

fn money() -> Schema {
    ObjectBuilder::new()
        .description(Some("Integer minor units and an ISO 4217 currency."))
        .property("amount", ObjectBuilder::new().schema_type(Type::Integer))
        .property("currency", string(None))
        .required("amount")
        .required("currency")
        .into()
}

/// The answer of the composed `GET /api/v1/orders/{id}`: order-service's order, each line with
/// the `product` the gateway adds.
fn composed_order() -> Schema {
    let product = ObjectBuilder::new()
        .description(Some(
            "Added by the gateway from catalog: the product as it is now. Absent when catalog \
             could not be asked and nothing was cached, or no longer knows the product.",
        ))
        .property("name", string(None))
        .property("in_stock", ObjectBuilder::new().schema_type(Type::Boolean));
    let line = ObjectBuilder::new()
        .property("product_id", string(None))
        .property("sku", string(None))
        .property(
            "name",
            string(None).description(Some("The name when the order was placed.")),
        )
        .property("quantity", ObjectBuilder::new().schema_type(Type::Integer))
        .property("unit_price", money())
        .property("line_total", money())
        .property("product", product)
        .required("product_id")
        .required("quantity");
    ObjectBuilder::new()
        .property("id", string(Some(SchemaFormat::Custom("uuid".into()))))
        .property(
            "status",
            string(None).enum_values(Some(["PENDING", "CONFIRMED", "CANCELLED"])),
        )
        .property("items", ArrayBuilder::new().items(line))
        .property("total", money())
        .property("cancellation_reason", string(None))
        .property(
            "created_at",
            string(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .property(
            "updated_at",
            string(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .required("id")
        .required("status")
        .required("items")
        .required("total")
        .into()
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(format!("{description} (application/problem+json)"))
        .build()
}

/// `get_api_v1_products_id` for `GET /api/v1/products/{id}`.
fn operation_id(route: &Route) -> String {
    let path: String = route
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = path
        .split('_')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    format!("{}_{path}", route.method.as_str().to_ascii_lowercase())
}

/// The `{name}` segments of a path template.
pub fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_parameters_and_security() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, ROUTES.len());
        let get_order = &doc["paths"]["/api/v1/orders/{id}"]["get"];
        assert_eq!(get_order["parameters"][0]["name"], "id");
        assert!(get_order["security"][0].get(BEARER).is_some());
        assert!(
            doc["paths"]["/api/v1/products"]["get"]
                .get("security")
                .is_none()
        );
    }
}
