//! gRPC contracts without the Pact protobuf plugin.
//!
//! A gRPC call is recorded as a Pact V4 *synchronous message*: the request and the response
//! are the [canonical proto3 JSON] form of the method's input and output messages, the body's
//! content type is [`GRPC_JSON`], and the request metadata names the method
//! (`grpcMethod: /shop.catalog.v1.CatalogService/GetProducts`). The response metadata carries
//! the gRPC status name (`grpcStatus: OK`, `NOT_FOUND`, ...), so a contract can also pin down
//! an error the consumer relies on.
//!
//! JSON is the contract format because it is what Pact knows how to compare (with matchers
//! such as `like!`), and because a human can review it in a pull request. Protobuf stays the
//! wire format: this module converts between the two with `prost-reflect` against the
//! descriptors of our `.proto` files ([`Descriptors`]), so a contract that names a field the
//! schema does not have, or gives a field the wrong type, is rejected on both sides.
//!
//! [canonical proto3 JSON]: https://protobuf.dev/programming-guides/json/

use std::fmt;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use serde_json::Value;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::ContractError;

/// Content type of protobuf-JSON bodies in gRPC contracts.
pub const GRPC_JSON: &str = "application/grpc+json";
/// Request metadata key holding the gRPC method path.
pub const METHOD_KEY: &str = "grpcMethod";
/// Response metadata key holding the gRPC status name (`OK` for a successful call).
pub const STATUS_KEY: &str = "grpcStatus";

/// The protobuf schemas gRPC contracts are checked against: all of ours, plus any extra
/// encoded `FileDescriptorSet`s (for instance `tonic_health::pb::FILE_DESCRIPTOR_SET`).
#[derive(Clone)]
pub struct Descriptors {
    pool: DescriptorPool,
}

impl fmt::Debug for Descriptors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: Vec<String> = self
            .pool
            .services()
            .map(|s| s.full_name().to_owned())
            .collect();
        f.debug_struct("Descriptors")
            .field("services", &services)
            .finish()
    }
}

impl Default for Descriptors {
    /// Every package under `/proto`, from [`shop_proto::FILE_DESCRIPTOR_SET`].
    fn default() -> Self {
        let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect(
            "shop_proto::FILE_DESCRIPTOR_SET is produced by its build script and always decodes",
        );
        Self { pool }
    }
}

impl Descriptors {
    /// Adds the files of an encoded `FileDescriptorSet`; files already present are skipped.
    pub fn add(&mut self, encoded_set: &[u8]) -> Result<(), ContractError> {
        self.pool
            .decode_file_descriptor_set(encoded_set)
            .map_err(|err| ContractError::Descriptors(err.to_string()))
    }

    /// Looks up a method by its gRPC path, `/<package>.<Service>/<Method>`.
    pub fn method(&self, path: &str) -> Result<MethodDescriptor, ContractError> {
        let unknown = || ContractError::UnknownMethod(path.to_owned());
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .ok_or_else(unknown)?;
        self.pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .ok_or_else(unknown)
    }
}

/// Parses protobuf JSON into a message of type `desc`. Unknown fields are an error: a contract
/// that mentions a field the schema lacks is a broken contract, not something to ignore.
pub fn from_json(desc: &MessageDescriptor, json: &Value) -> Result<DynamicMessage, String> {
    DynamicMessage::deserialize_with_options(
        desc.clone(),
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|err| format!("not a valid {}: {err}", desc.full_name()))
}

/// The canonical protobuf JSON of a message, *including* fields that hold their default value.
///
/// Proto3 JSON normally omits `false`, `0` and `""`; a contract expecting `"inStock": false`
/// would then see the key missing. Emitting every field makes the provider's answer complete,
/// and the consumer still only pins the fields it lists (unexpected keys are allowed).
pub fn to_json(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new().skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a DynamicMessage always serializes to a JSON value")
}

/// Checks that JSON written by hand is in the canonical form [`to_json`] produces for `message`
/// (lowerCamelCase names, 64-bit integers as strings, enums by name), so that a contract
/// compares equal to what the provider's answer looks like after the same conversion.
pub fn check_canonical(written: &Value, message: &DynamicMessage) -> Result<(), String> {
    compare_canonical(written, &to_json(message), "$")
}

fn compare_canonical(written: &Value, canonical: &Value, path: &str) -> Result<(), String> {
    match (written, canonical) {
        (Value::Object(written), Value::Object(canonical)) => written.iter().try_for_each(|(key, value)| {
            let inner = canonical.get(key).ok_or_else(|| {
                format!("{path}.{key}: not a canonical field name (protobuf JSON uses lowerCamelCase)")
            })?;
            compare_canonical(value, inner, &format!("{path}.{key}"))
        }),
        (Value::Array(written), Value::Array(canonical)) => written
            .iter()
            .zip(canonical)
            .enumerate()
            .try_for_each(|(i, (value, inner))| compare_canonical(value, inner, &format!("{path}[{i}]"))),
        _ if written == canonical => Ok(()),
        _ => Err(format!("{path}: write {canonical} (canonical protobuf JSON), not {written}")),
    }
}

/// Converts a generated (prost) message into a dynamic one of type `desc` via its wire bytes.
pub fn from_prost(
    desc: &MessageDescriptor,
    message: &impl prost::Message,
) -> Result<DynamicMessage, String> {
    DynamicMessage::decode(desc.clone(), message.encode_to_vec().as_slice())
        .map_err(|err| format!("not a valid {}: {err}", desc.full_name()))
}

/// Converts a dynamic message into a generated (prost) message via its wire bytes.
pub fn to_prost<T: prost::Message + Default>(message: &DynamicMessage) -> Result<T, String> {
    T::decode(message.encode_to_vec().as_slice()).map_err(|err| err.to_string())
}

/// The name a gRPC status code has in the protocol (`NOT_FOUND`), as written in contracts.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Calls `method` on a real gRPC server over `channel`, with a dynamic request and response,
/// sending `metadata` with the request (empty: none).
pub async fn call(
    channel: Channel,
    method: &MethodDescriptor,
    request: DynamicMessage,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<DynamicMessage, Status> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path =
        http::uri::PathAndQuery::try_from(path).map_err(|err| Status::internal(err.to_string()))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|err| {
        Status::unavailable(format!(
            "the provider's gRPC server is not reachable: {err}"
        ))
    })?;
    let codec = DynamicCodec {
        response: method.output(),
    };
    let response = client
        .unary(
            tonic::Request::from_parts(metadata.clone(), tonic::Extensions::default(), request),
            path,
            codec,
        )
        .await?;
    Ok(response.into_inner())
}

/// A tonic codec for messages known only at run time: encodes any [`DynamicMessage`] and
/// decodes responses as the method's output type.
#[derive(Debug, Clone)]
struct DynamicCodec {
    response: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

#[derive(Debug)]
struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn methods_are_found_by_their_grpc_path() {
        let descriptors = Descriptors::default();
        let method = descriptors
            .method("/shop.catalog.v1.CatalogService/GetProducts")
            .expect("catalog method");
        assert_eq!(
            method.input().full_name(),
            "shop.catalog.v1.GetProductsRequest"
        );
        assert_eq!(
            method.output().full_name(),
            "shop.catalog.v1.GetProductsResponse"
        );
        for bad in [
            "shop.catalog.v1.CatalogService/GetProducts",
            "/shop.catalog.v1.CatalogService/Nope",
            "/x",
        ] {
            assert!(
                matches!(
                    descriptors.method(bad),
                    Err(ContractError::UnknownMethod(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_is_canonical_and_complete() {
        let descriptors = Descriptors::default();
        let output = descriptors
            .method("/shop.catalog.v1.CatalogService/GetProducts")
            .expect("catalog method")
            .output();
        let message = from_json(
            &output,
            &json!({"products": [{"id": "p-1", "price": {"amount": "1999", "currency": "EUR"}}]}),
        )
        .expect("valid response");
        let product = &to_json(&message)["products"][0];
        // 64-bit integers are strings, names are lowerCamelCase, defaults are present.
        assert_eq!(product["price"]["amount"], json!("1999"));
        assert_eq!(product["inStock"], json!(false));
        assert_eq!(to_json(&message)["missingIds"], json!([]));
    }

    #[test]
    fn json_that_does_not_fit_the_schema_is_rejected() {
        let descriptors = Descriptors::default();
        let input = descriptors
            .method("/shop.catalog.v1.CatalogService/GetProducts")
            .expect("catalog method")
            .input();
        let unknown_field = from_json(&input, &json!({"ids": ["p-1"], "limit": 3}));
        assert!(unknown_field.is_err_and(|err| err.contains("limit")));
        assert!(from_json(&input, &json!({"ids": "p-1"})).is_err());
    }

    #[test]
    fn hand_written_json_must_be_canonical() {
        let descriptors = Descriptors::default();
        let output = descriptors
            .method("/shop.catalog.v1.CatalogService/GetProducts")
            .expect("catalog method")
            .output();
        let check = |written: serde_json::Value| {
            let message = from_json(&output, &written).expect("valid response");
            check_canonical(&written, &message)
        };
        assert_eq!(
            check(json!({"missingIds": ["p-9"], "products": [{"price": {"amount": "5"}}]})),
            Ok(())
        );
        let number = check(json!({"products": [{"price": {"amount": 5}}]}));
        assert!(number.is_err_and(|err| err.contains("$.products[0].price.amount")));
        let snake_case = check(json!({"missing_ids": ["p-9"]}));
        assert!(snake_case.is_err_and(|err| err.contains("missing_ids")));
    }

    #[test]
    fn prost_messages_convert_both_ways() {
        let descriptors = Descriptors::default();
        let input = descriptors
            .method("/shop.catalog.v1.CatalogService/GetProducts")
            .expect("catalog method")
            .input();
        let request = shop_proto::catalog::v1::GetProductsRequest {
            ids: vec!["p-1".into(), "p-2".into()],
        };
        let dynamic = from_prost(&input, &request).expect("same type");
        assert_eq!(to_json(&dynamic), json!({"ids": ["p-1", "p-2"]}));
        let back: shop_proto::catalog::v1::GetProductsRequest =
            to_prost(&dynamic).expect("decodes");
        assert_eq!(back, request);
    }

    #[test]
    fn status_codes_have_their_protocol_names() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Ok), "OK");
    }
}
