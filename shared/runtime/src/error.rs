//! One error type for every service, rendered as RFC 9457 `application/problem+json` over
//! HTTP and mapped to a gRPC status over gRPC.
//!
//! Handlers return `Result<T, ApiError>`. The caller sees *what to fix* (which field, which
//! rule); internals (SQL, stack traces, upstream hostnames) only reach the log, tagged with the
//! trace id that the response carries so an operator can find them.

use axum::{
    Json,
    extract::rejection::JsonRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// The media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A field that failed validation and why, e.g. `{"field": "email", "message": "is not an email address"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer-like path to the field (`items[0].quantity`).
    pub field: String,
    /// What is wrong, phrased for the caller.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The kinds of failure a caller can act on. Each has one HTTP status and one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (unparseable JSON, wrong content type).
    BadRequest,
    /// The request is well-formed but some fields break the rules.
    Validation,
    Unauthorized,
    Forbidden,
    NotFound,
    /// The request conflicts with the current state (duplicate, wrong status).
    Conflict,
    TooManyRequests,
    /// A dependency (store, broker, upstream) is unavailable; retrying later may work.
    Unavailable,
    /// A dependency did not answer in time.
    Timeout,
    /// A bug or an unexpected failure; details are logged, never returned.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest | Self::Validation => tonic::Code::InvalidArgument,
            Self::Unauthorized => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::Conflict => tonic::Code::FailedPrecondition,
            Self::TooManyRequests => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Timeout => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// A stable identifier for the problem type (the `type` member of the document).
    /// URNs are allowed by RFC 9457 and do not pretend a documentation page exists.
    pub fn type_uri(self) -> &'static str {
        match self {
            Self::BadRequest => "urn:shop:problem:bad-request",
            Self::Validation => "urn:shop:problem:validation",
            Self::Unauthorized => "urn:shop:problem:unauthorized",
            Self::Forbidden => "urn:shop:problem:forbidden",
            Self::NotFound => "urn:shop:problem:not-found",
            Self::Conflict => "urn:shop:problem:conflict",
            Self::TooManyRequests => "urn:shop:problem:too-many-requests",
            Self::Unavailable => "urn:shop:problem:unavailable",
            Self::Timeout => "urn:shop:problem:timeout",
            Self::Internal => "urn:shop:problem:internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Validation => "Validation failed",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::Conflict => "Conflict",
            Self::TooManyRequests => "Too many requests",
            Self::Unavailable => "Service unavailable",
            Self::Timeout => "Upstream timeout",
            Self::Internal => "Internal error",
        }
    }
}

/// The error every handler returns.
///
/// The contents are boxed so that `Result<T, ApiError>` stays one pointer wide on the error
/// side: errors are the rare path, and a large `Err` variant would make every `Result` in every
/// handler bigger (clippy's `result_large_err`).
#[derive(Debug, thiserror::Error)]
#[error("{:?}: {}", .0.kind, .0.detail)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    detail: String,
    fields: Vec<FieldError>,
    /// Extra members of the problem document (e.g. per-check readiness results).
    extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds for a `Retry-After` header: when the caller may try again (503, 429).
    retry_after: Option<u32>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            detail: detail.into(),
            fields: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after: None,
            source: None,
        }))
    }

    /// 422 with one entry per offending field.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let mut err = Self::new(ErrorKind::Validation, "One or more fields are invalid.");
        err.0.fields = fields;
        err
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, detail)
    }

    /// An unexpected failure. The cause is logged when the error is rendered; the caller
    /// only learns that something went wrong and the trace id to quote.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut err = Self::new(ErrorKind::Internal, "An unexpected error occurred.");
        err.0.source = Some(source.into());
        err
    }

    /// Attaches the underlying cause for the log (never shown to the caller).
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Tells the caller when to try again (`Retry-After`, in seconds): an overloaded or
    /// briefly unavailable service says so instead of leaving clients to guess and hammer it.
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    /// Adds a member to the problem document.
    pub fn with_extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.0.extensions.insert(key.to_owned(), value);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    pub fn fields(&self) -> &[FieldError] {
        &self.0.fields
    }

    /// The RFC 9457 document for this error.
    pub fn problem(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), self.0.kind.type_uri().into());
        doc.insert("title".into(), self.0.kind.title().into());
        doc.insert("status".into(), self.0.kind.status().as_u16().into());
        doc.insert("detail".into(), self.0.detail.clone().into());
        if !self.0.fields.is_empty() {
            doc.insert("errors".into(), serde_json::json!(self.0.fields));
        }
        if let Some(trace_id) = crate::telemetry::current_trace_id() {
            doc.insert("trace_id".into(), trace_id.into());
        }
        for (key, value) in &self.0.extensions {
            doc.insert(key.clone(), value.clone());
        }
        serde_json::Value::Object(doc)
    }

    fn log(&self) {
        match (&self.0.kind, &self.0.source) {
            (ErrorKind::Internal, source) => {
                tracing::error!(error = ?source, detail = %self.0.detail, "request failed");
            }
            (kind, Some(source)) => tracing::warn!(?kind, error = %source, "request failed"),
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.0.kind.status(), Json(self.problem())).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.0.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        err.log();
        let mut message = err.0.detail.clone();
        for field in &err.0.fields {
            message.push_str(&format!("; {}: {}", field.field, field.message));
        }
        tonic::Status::new(err.0.kind.grpc_code(), message)
    }
}

/// Unparseable bodies become a 400 (syntax) or 422 (wrong shape) problem naming the cause,
/// instead of axum's plain-text rejection.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let kind = match rejection {
            JsonRejection::JsonDataError(_) => ErrorKind::Validation,
            _ => ErrorKind::BadRequest,
        };
        Self::new(kind, rejection.body_text())
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that is down, restarting or out of connections is a 503 the caller may
    /// retry, not a 500: during a PostgreSQL crash and restart every query fails with an I/O
    /// error or one of the "server is shutting down / starting up" codes, and a client that
    /// sees 500 concludes the request itself is broken. Everything else stays internal.
    fn from(err: sqlx::Error) -> Self {
        if matches!(err, sqlx::Error::RowNotFound) {
            return Self::not_found("The resource does not exist.");
        }
        if store_unavailable(&err) {
            return Self::unavailable("The database is busy or unreachable; retry later.")
                .with_retry_after(1)
                .with_source(err);
        }
        Self::internal(err)
    }
}

/// Whether a database error means "the store is not reachable right now" (retry later) rather
/// than "this request is wrong" or a bug.
pub fn store_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // The connection broke mid-conversation (the server went away).
        sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception), 57P01..57P05 (admin/crash shutdown, cannot
        // connect now, idle session timeout), 53300 (too many connections).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

/// Middleware making *every* error answer a problem document, including those no handler
/// wrote: extractor rejections (a path parameter that is not a number, a body without a JSON
/// content type), 405 for a wrong method, 413 for a body over the limit. axum renders those as
/// plain text; callers should not have to parse two error formats.
///
/// Responses that already are `application/problem+json` pass untouched. The plain text of a
/// 4xx becomes the `detail` (it describes the caller's input); the body of a 5xx is dropped,
/// since it may describe internals. The type is `about:blank`, as RFC 9457 prescribes for a
/// problem that is nothing more than its HTTP status.
pub async fn problem_for_plain_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut doc = serde_json::Map::new();
    doc.insert("type".into(), "about:blank".into());
    doc.insert(
        "title".into(),
        status.canonical_reason().unwrap_or("Error").into(),
    );
    doc.insert("status".into(), status.as_u16().into());
    if status.is_client_error()
        && let Ok(bytes) = axum::body::to_bytes(body, 4096).await
    {
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !text.is_empty() {
            doc.insert("detail".into(), text.into());
        }
    }
    if let Some(trace_id) = crate::telemetry::current_trace_id() {
        doc.insert("trace_id".into(), trace_id.into());
    }
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Fallback for unknown routes: a problem document instead of an empty 404.
pub async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("No route for {}.", uri.path()))
}

/// The schema of every problem document this module renders ([`ApiError::problem`] and
/// [`problem_for_plain_errors`]), named `Problem` in the OpenAPI document: what a client of any
/// service can rely on in an error answer.
impl utoipa::PartialSchema for ApiError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description.to_owned()))
        };
        ObjectBuilder::new()
            .description(Some(
                "An RFC 9457 problem document (`application/problem+json`). `type` identifies the \
                 problem (`urn:shop:problem:*`, or `about:blank` when the status says it all); \
                 `errors` lists every offending field at once.",
            ))
            .property(
                "type",
                text("What kind of problem (a URN, or `about:blank`).")
                    .examples([serde_json::json!(ErrorKind::Validation.type_uri())]),
            )
            .property("title", text("A short summary of the kind."))
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(400))
                    .maximum(Some(599))
                    .description(Some("The HTTP status of the answer.")),
            )
            .property("detail", text("What went wrong with this request."))
            .property(
                "errors",
                ArrayBuilder::new()
                    .items(utoipa::openapi::Ref::from_schema_name(
                        <FieldError as utoipa::ToSchema>::name(),
                    ))
                    .description(Some("One entry per offending field or parameter.")),
            )
            .property(
                "trace_id",
                text("The trace to quote when asking an operator about this answer."),
            )
            .required("type")
            .required("title")
            .required("status")
            .into()
    }
}

impl utoipa::ToSchema for ApiError {
    fn name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((
            <FieldError as utoipa::ToSchema>::name().into_owned(),
            FieldError::schema(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn validation_errors_render_as_problem_json_with_fields() {
        let err = ApiError::validation(vec![FieldError::new("email", "is not an email address")]);
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["status"], 422);
        assert_eq!(doc["type"], "urn:shop:problem:validation");
        assert_eq!(doc["errors"][0]["field"], "email");
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let err = ApiError::internal(std::io::Error::other(
            "password=hunter2 at db.internal:5432",
        ));
        let response = err.into_response();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("hunter2") && !text.contains("db.internal"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn plain_text_errors_from_extractors_become_problem_documents() {
        use axum::{Router, extract::Path, routing::get};
        use tower::ServiceExt;

        let app = Router::new()
            .route(
                "/items/{id}",
                get(|Path(id): Path<u32>| async move { id.to_string() }),
            )
            .route(
                "/boom",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "db at 10.0.0.7 refused") }),
            )
            .layer(axum::middleware::from_fn(problem_for_plain_errors));
        let call = |method: &str, uri: &str| {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(request)
        };

        let response = call("GET", "/items/not-a-number").await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["status"], 400);
        assert!(
            doc["detail"].as_str().unwrap().contains("not-a-number"),
            "{doc}"
        );

        let response = call("DELETE", "/items/1").await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(
            response.headers().contains_key(header::ALLOW),
            "headers are kept"
        );

        let response = call("GET", "/boom").await.unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("10.0.0.7"),
            "5xx bodies are not passed on: {text}"
        );

        let response = call("GET", "/items/7").await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "successes pass untouched"
        );
    }

    #[test]
    fn a_database_that_is_down_is_503_with_retry_after_not_500() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let response = ApiError::from(refused).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bug = sqlx::Error::ColumnNotFound("total".into());
        assert_eq!(
            ApiError::from(bug).into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn maps_to_grpc_codes() {
        let status: tonic::Status = ApiError::not_found("no such user").into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        let status: tonic::Status =
            ApiError::validation(vec![FieldError::new("id", "is not a UUID")]).into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("id: is not a UUID"));
    }
}
