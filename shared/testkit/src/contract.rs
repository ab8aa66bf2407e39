//! Every answer a test receives from a service, checked against that service's OpenAPI document.
//!
//! A service's document ([`shop_runtime::Service::openapi`]) is its promise to clients: for each
//! operation, which statuses it answers and what each body looks like. The promise is only
//! worth something if the code keeps it, so the tests that already exercise the code check it
//! on the way: [`crate::spawn_with`] registers the started service's document under its HTTP
//! address, and the client every test uses ([`TestApp::client`](crate::TestApp), or
//! [`http_client`] for a test's own) passes each answer from a registered address through
//! [`Contract::check`] before the test sees it. A test that receives an answer its service does
//! not document fails right there, at the request, with the operation, the status and the JSON
//! pointer of each disagreement:
//!
//! ```text
//! POST /api/v1/products (create_product) answered 201 with a body its document refuses:
//!   at /price/amount: "12.5" is not of type "integer" (schema /properties/price/...)
//! ```
//!
//! What is checked, for requests under the document's paths (its first segment, `/api/`):
//!
//! * the path matches a documented path (templates such as `/api/v1/orders/{id}`) and the method
//!   an operation on it;
//! * the status is documented for that operation (exactly, or as `4XX`, or as `default`);
//! * the `Content-Type` is one the response documents (a response documenting no content must
//!   come without one);
//! * a JSON body (`application/json`, `application/problem+json`, any `+json`) validates against
//!   the documented schema, `$ref`s into `components` resolved, formats (`uuid`, `date-time`,
//!   `email`…) asserted.
//!
//! Outside the document's paths (`/healthz`, `/readyz`, `/metrics`, `/internal/…`, the JWKS) the
//! service promises nothing in this document, and nothing is checked. Two deliberate ways out,
//! each visible where it is used: a request sent `.with_extension(Unchecked)` (a test probing
//! what the document does not describe, such as an unknown route), and an answer carrying
//! [`STAND_IN`] (it was made by a test's stand-in upstream, not by the service, as the gateway's
//! echo upstream does).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex, RwLock},
    time::Duration,
};

use http::Extensions;
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use serde_json::{Value, json};

/// A header an answer made by a test's stand-in (not by the service under test) carries, so
/// that it is not checked against the service's document.
pub const STAND_IN: &str = "x-test-stand-in";

/// Sent with a request (`.with_extension(Unchecked)`), its answer is not checked: for tests
/// that probe on purpose what the document does not describe.
#[derive(Debug, Clone, Copy)]
pub struct Unchecked;

/// The HTTP client of the tests: a `reqwest` client whose answers from registered services are
/// checked against their documents. Requests are written as with `reqwest::Client`.
pub type Client = ClientWithMiddleware;

/// A [`Client`] whose requests time out after `timeout`.
pub fn http_client(timeout: Duration) -> Client {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default();
    reqwest_middleware::ClientBuilder::new(client)
        .with(Checker)
        .build()
}

/// The documents of the services running in this test process, by HTTP address.
static REGISTERED: LazyLock<RwLock<HashMap<SocketAddr, Arc<Contract>>>> =
    LazyLock::new(Default::default);

/// From now on answers from `addr` are checked against `contract`.
pub fn register(addr: SocketAddr, contract: Contract) {
    if let Ok(mut registered) = REGISTERED.write() {
        registered.insert(addr, Arc::new(contract));
    }
}

/// `addr` no longer answers for a registered service (it stopped; the port may be reused).
pub fn unregister(addr: SocketAddr) {
    if let Ok(mut registered) = REGISTERED.write() {
        registered.remove(&addr);
    }
}

fn registered(addr: SocketAddr) -> Option<Arc<Contract>> {
    REGISTERED.read().ok()?.get(&addr).cloned()
}

/// A service's OpenAPI 3.1 document, ready to check answers against.
#[derive(Debug)]
pub struct Contract {
    document: Value,
    /// The first segment every documented path starts with (`/api/`): the part of the URL
    /// space this document speaks for.
    scope: Vec<String>,
    /// Compiled schemas, by their JSON pointer in the document.
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Contract {
    /// The contract of `document`, an OpenAPI 3.1 document as JSON.
    pub fn new(document: Value) -> Self {
        let mut scope: Vec<String> = document["paths"]
            .as_object()
            .into_iter()
            .flat_map(|paths| paths.keys())
            .filter_map(|path| path.split('/').nth(1))
            .map(|first| format!("/{first}/"))
            .collect();
        scope.sort();
        scope.dedup();
        Self {
            document,
            scope,
            validators: Mutex::default(),
        }
    }

    /// Whether the document speaks for `path` at all.
    pub fn covers(&self, path: &str) -> bool {
        self.scope.iter().any(|prefix| path.starts_with(prefix))
    }

    /// Checks one answer: `method` and `path` (without query) of the request, the answer's
    /// `status`, `content_type` (as sent, parameters included) and `body`. `Err` says what
    /// disagrees with the document, naming the operation, the status and, for a body, the JSON
    /// pointer of each error.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let method = method.to_ascii_lowercase();
        let template = self
            .template(path)
            .ok_or_else(|| format!("{} {path} matches no path of the document", up(&method)))?;
        let operation = &self.document["paths"][template][&method];
        if !operation.is_object() {
            return Err(format!(
                "{} {template}: the document has no such operation",
                up(&method)
            ));
        }
        let name = match operation["operationId"].as_str() {
            Some(id) => format!("{} {path} ({id})", up(&method)),
            None => format!("{} {path}", up(&method)),
        };
        let responses = &operation["responses"];
        let class = format!("{}XX", status / 100);
        let key = [status.to_string(), class, "default".to_owned()]
            .into_iter()
            .find(|key| responses.get(key).is_some())
            .ok_or_else(|| {
                let documented: Vec<&String> =
                    responses.as_object().into_iter().flatten().map(|(k, _)| k).collect();
                format!("{name} answered {status}, which it does not document (documented: {documented:?})")
            })?;
        let (mut pointer, response) = self.resolve(
            format!("/paths/{}/{method}/responses/{key}", escape(template)),
            &responses[&key],
        )?;
        let media_type = content_type
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|value| !value.is_empty());
        let content = response["content"].as_object().filter(|c| !c.is_empty());
        let Some(content) = content else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{name} answered {status} with a body ({}); the document says it has none",
                    content_type.unwrap_or("no Content-Type")
                ))
            };
        };
        let documented_types = || content.keys().collect::<Vec<_>>();
        if body.is_empty() {
            return Err(format!(
                "{name} answered {status} without a body; the document says {:?}",
                documented_types()
            ));
        }
        let Some(media_type) = media_type else {
            return Err(format!(
                "{name} answered {status} with a body but no Content-Type; the document says {:?}",
                documented_types()
            ));
        };
        let Some(documented) = content.get(&media_type) else {
            return Err(format!(
                "{name} answered {status} as {media_type}; the document says {:?}",
                documented_types()
            ));
        };
        if !is_json(&media_type) || documented.get("schema").is_none() {
            return Ok(());
        }
        let instance: Value = serde_json::from_slice(body).map_err(|err| {
            format!("{name} answered {status} as {media_type}, but the body is not JSON ({err})")
        })?;
        pointer.push_str(&format!("/content/{}/schema", escape(&media_type)));
        let validator = self.validator(&pointer)?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|error| {
                let at = error.instance_path().to_string();
                format!(
                    "at {}: {error} (schema {})",
                    if at.is_empty() { "/" } else { &at },
                    error.schema_path()
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{name} answered {status} with a body its document refuses:\n  {}\nbody: {instance}",
                errors.join("\n  ")
            ))
        }
    }

    /// The documented path `path` is an instance of: literal segments must be equal, a
    /// `{parameter}` takes any non-empty segment; the most literal match wins
    /// (`/orders/mine` over `/orders/{id}`).
    fn template(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()?
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') && part.ends_with('}') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, template.as_str()))
            })
            .max_by_key(|(literal, _)| *literal)
            .map(|(_, template)| template)
    }

    /// Follows a response's `$ref` (`#/components/responses/NotFound`) to the response object:
    /// its JSON pointer and value.
    fn resolve<'d>(
        &'d self,
        pointer: String,
        response: &'d Value,
    ) -> Result<(String, &'d Value), String> {
        match response["$ref"].as_str() {
            None => Ok((pointer, response)),
            Some(reference) => {
                let target = reference.strip_prefix('#').ok_or_else(|| {
                    format!("{pointer}: only local references are supported ({reference})")
                })?;
                let value = self
                    .document
                    .pointer(target)
                    .ok_or_else(|| format!("{pointer}: {reference} is not in the document"))?;
                self.resolve(target.to_owned(), value)
            }
        }
    }

    /// The validator of the schema at `pointer`, compiled once. The schema is validated as part
    /// of a root that carries the document's `components`, so its `$ref`s resolve.
    fn validator(&self, pointer: &str) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self
            .validators
            .lock()
            .map_err(|_| "validator cache poisoned".to_owned())?;
        if let Some(validator) = cache.get(pointer) {
            return Ok(validator.clone());
        }
        let schema = self
            .document
            .pointer(pointer)
            .ok_or_else(|| format!("no schema at {pointer}"))?;
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": "#/$defs/answer",
            "$defs": { "answer": schema },
            "components": self.document["components"],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|err| format!("the schema at {pointer} does not compile: {err}"))?;
        let validator = Arc::new(validator);
        cache.insert(pointer.to_owned(), validator.clone());
        Ok(validator)
    }
}

fn up(method: &str) -> String {
    method.to_ascii_uppercase()
}

/// A JSON pointer segment (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The client middleware: checks each answer from a registered address, fails the test
/// (panics, in the test's own task) on the first disagreement.
#[derive(Debug)]
struct Checker;

#[async_trait::async_trait]
impl Middleware for Checker {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let method = request.method().clone();
        let url = request.url().clone();
        let contract = url
            .socket_addrs(|| None)
            .ok()
            .and_then(|addrs| addrs.into_iter().find_map(registered))
            .filter(|contract| contract.covers(url.path()))
            .filter(|_| extensions.get::<Unchecked>().is_none() && method != http::Method::HEAD);
        let mut response = next.run(request, extensions).await?;
        let Some(contract) = contract else {
            return Ok(response);
        };
        if response.headers().contains_key(STAND_IN) {
            return Ok(response);
        }
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let answered_from = response.url().clone();
        let response_extensions = std::mem::take(response.extensions_mut());
        let body = response.bytes().await?;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        if let Err(disagreement) = contract.check(
            method.as_str(),
            url.path(),
            status.as_u16(),
            content_type,
            &body,
        ) {
            panic!("the answer disagrees with the service's OpenAPI document: {disagreement}");
        }
        let mut rebuilt = http::Response::builder()
            .status(status)
            .version(version)
            .url(answered_from)
            .body(body)
            .map_err(|err| reqwest_middleware::Error::Middleware(err.into()))?;
        *rebuilt.headers_mut() = headers;
        rebuilt.extensions_mut().extend(response_extensions);
        Ok(Response::from(rebuilt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document in the shape the services' are: a schema and a shared problem response in
    /// `components`, operations referring to them.
    fn contract() -> Contract {
        Contract::new(json!({
            "openapi": "3.1.0",
            "paths": {
                "/api/v1/orders/{id}": { "get": {
                    "operationId": "get_order",
                    "responses": {
                        "200": { "description": "The order.", "content": { "application/json": {
                            "schema": { "$ref": "#/components/schemas/Order" } } } },
                        "404": { "$ref": "#/components/responses/NotFound" },
                    },
                }},
                "/api/v1/orders/mine": { "delete": {
                    "responses": { "204": { "description": "Gone." } },
                }},
            },
            "components": {
                "schemas": {
                    "Order": {
                        "type": "object",
                        "required": ["id", "status"],
                        "properties": {
                            "id": { "type": "string", "format": "uuid" },
                            "status": { "type": "string", "enum": ["PENDING", "CONFIRMED"] },
                        },
                    },
                    "Problem": { "type": "object", "required": ["title"],
                        "properties": { "title": { "type": "string" } } },
                },
                "responses": {
                    "NotFound": { "description": "Not found.", "content": {
                        "application/problem+json": {
                            "schema": { "$ref": "#/components/schemas/Problem" } } } },
                },
            },
        }))
    }

    const ID: &str = "/api/v1/orders/0190c7c4-8f5c-7cc5-9d3b-7c3ad0b0c9a1";

    fn check(
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &Value,
    ) -> Result<(), String> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        contract().check("GET", path, status, content_type, &body)
    }

    #[test]
    fn a_conforming_answer_is_accepted() {
        let order = json!({ "id": "0190c7c4-8f5c-7cc5-9d3b-7c3ad0b0c9a1", "status": "PENDING" });
        check(ID, 200, Some("application/json"), &order).unwrap();
        // a referenced shared response, its schema referenced again
        check(
            ID,
            404,
            Some("application/problem+json"),
            &json!({ "title": "Not Found" }),
        )
        .unwrap();
        // the literal path wins over the template, and a documented empty answer is fine
        contract()
            .check("DELETE", "/api/v1/orders/mine", 204, None, b"")
            .unwrap();
    }

    #[test]
    fn a_body_that_breaks_the_schema_is_refused_with_the_pointer_of_each_error() {
        let order = json!({ "id": "not-a-uuid", "status": "SHIPPED" });
        let err = check(ID, 200, Some("application/json; charset=utf-8"), &order).unwrap_err();
        assert!(err.contains("GET /api/v1/orders/"), "{err}");
        assert!(err.contains("(get_order) answered 200"), "{err}");
        assert!(err.contains("at /id:"), "{err}");
        assert!(err.contains("at /status:"), "{err}");

        let err = check(ID, 200, Some("application/json"), &json!({ "id": ID })).unwrap_err();
        assert!(err.contains("\"status\" is a required property"), "{err}");

        let err = check(ID, 404, Some("application/problem+json"), &json!({})).unwrap_err();
        assert!(
            err.contains("answered 404") && err.contains("\"title\""),
            "{err}"
        );
    }

    #[test]
    fn an_undocumented_route_status_or_content_type_is_refused() {
        let order = json!({ "id": "0190c7c4-8f5c-7cc5-9d3b-7c3ad0b0c9a1", "status": "PENDING" });
        let err = check("/api/v1/carts/1", 200, Some("application/json"), &order).unwrap_err();
        assert!(err.contains("matches no path"), "{err}");
        let err = contract()
            .check("PUT", ID, 200, Some("application/json"), b"{}")
            .unwrap_err();
        assert!(err.contains("no such operation"), "{err}");
        let err = check(
            ID,
            409,
            Some("application/problem+json"),
            &json!({ "title": "x" }),
        )
        .unwrap_err();
        assert!(
            err.contains("answered 409, which it does not document"),
            "{err}"
        );
        let err = check(ID, 200, Some("text/plain"), &order).unwrap_err();
        assert!(err.contains("as text/plain"), "{err}");
        let err = check(ID, 200, Some("application/json"), &Value::Null).unwrap_err();
        assert!(err.contains("without a body"), "{err}");
        let err = contract()
            .check(
                "DELETE",
                "/api/v1/orders/mine",
                204,
                Some("application/json"),
                b"{}",
            )
            .unwrap_err();
        assert!(err.contains("says it has none"), "{err}");
    }

    #[test]
    fn only_the_documents_own_paths_are_covered() {
        assert!(contract().covers("/api/v1/anything"));
        assert!(!contract().covers("/healthz"));
        assert!(!contract().covers("/internal/v1/service-token"));
    }
}
