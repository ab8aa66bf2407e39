//! Describing a service's REST API in OpenAPI 3.1, the one way every service does it.
//!
//! Each service documents its own routes where they are written: `#[utoipa::path]` on the
//! handler, `utoipa::ToSchema` on the types it really reads and answers (or, for bodies read as
//! loose JSON to report every field error at once, a schema built from the same constants its
//! validation uses). What every service answers alike is written once, here:
//!
//! * the problem responses (`401`, `403`, `404`, `409`, `412`, `422`, `429`, `503`), each an
//!   RFC 9457 document whose schema is [`ApiError`]'s (`Problem`), referenced by an operation
//!   as `(status = 404, response = NotFound)`;
//! * `?limit=&cursor=` ([`PageQuery`]'s parameters), for `params(PageQuery)`;
//! * the bearer-token security scheme [`BEARER`], for `security(("bearer" = []))`.
//!
//! [`complete`] adds these shared components to a service's document. The gateway merges the
//! services' documents into the public one (`services/gateway/src/openapi.rs`).

use utoipa::{
    IntoParams, ToResponse, ToSchema,
    openapi::{
        ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, Response,
        ResponseBuilder, Type,
        path::{Parameter, ParameterBuilder, ParameterIn},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{ApiError, FieldError, error::PROBLEM_JSON, pagination::PageQuery};

/// The name of the security scheme: a user access token (`Authorization: Bearer <JWT>`) issued
/// by user-service.
pub const BEARER: &str = "bearer";

/// The largest `limit` any listing accepts.
pub const MAX_LIMIT: u32 = 100;

/// A problem response: `description`, an `application/problem+json` body.
pub fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ApiError::name())))
            .build(),
    )
}

/// The `Retry-After` header of a response: seconds until a retry may succeed.
pub fn retry_after() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some("Seconds to wait before retrying."))
        .build()
}

macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident => $description:expr $(, $header:ident)?;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    #[allow(unused_mut)]
                    let mut response = problem($description);
                    $( response = response.header("Retry-After", $header()); )?
                    (stringify!($name), response.build().into())
                }
            }
        )*

        /// Every shared response, by name, for a document's components.
        fn shared_responses() -> Vec<(&'static str, RefOr<Response>)> {
            vec![$(<$name as ToResponse<'static>>::response()),*]
        }
    };
}

problem_responses! {
    /// 400: the request is malformed (unparseable JSON, an unknown or repeated query parameter).
    BadRequest => "The request is malformed; `detail` says how.";
    /// 401: no valid access token.
    Unauthorized => "No valid access token (missing, expired, or not signed by user-service).";
    /// 403: a valid token without the role the route needs.
    Forbidden => "The token lacks the role this operation needs (admin).";
    /// 404: nothing here for this caller (another user's resource is 404 as well).
    NotFound => "No such resource among those the caller may see.";
    /// 409: the request conflicts with the resource's current state.
    Conflict => "The request conflicts with the current state; `detail` says which.";
    /// 412: `If-Match` names an older version.
    PreconditionFailed => "`If-Match` names an older version: read again, reapply the change.";
    /// 422: some fields break the rules; every one is listed in `errors`.
    Validation => "Some fields break the rules; `errors` lists every one of them.";
    /// 429: too many requests; `Retry-After` says when to come back.
    TooManyRequests => "Too many requests; come back after `Retry-After` seconds.", retry_after;
    /// 503: a store or dependency is unavailable; retrying after `Retry-After` may work.
    Unavailable => "Temporarily unavailable (a store or dependency); retry after `Retry-After` seconds.", retry_after;
}

/// `?limit=&cursor=`, the one way every listing pages ([`crate::pagination`]).
impl IntoParams for PageQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(format!(
                    "Items per page, 1 to {MAX_LIMIT}; the listing's default (20) when absent."
                )))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(MAX_LIMIT)),
                ))
                .build(),
            ParameterBuilder::new()
                .name("cursor")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "`next_cursor` of the previous page, unchanged (opaque); absent for the first page.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[A-Za-z0-9_-]*$")),
                ))
                .build(),
        ]
    }
}

/// Adds what every service's document shares to `doc`: the `Problem` and `FieldError` schemas,
/// the problem responses and the bearer security scheme.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.insert(
        ApiError::name().into_owned(),
        <ApiError as utoipa::PartialSchema>::schema(),
    );
    components.schemas.insert(
        FieldError::name().into_owned(),
        <FieldError as utoipa::PartialSchema>::schema(),
    );
    for (name, response) in shared_responses() {
        components.responses.insert(name.to_owned(), response);
    }
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    doc
}
