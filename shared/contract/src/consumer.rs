//! The consumer side: declare what you need from a provider, prove your code works with it,
//! and the kit writes the contract.
//!
//! Every kind of interaction is recorded only once the consumer's own code has been run
//! against it: HTTP interactions when the Pact mock server saw exactly the expected requests,
//! messages and gRPC calls when the handler given with them accepted the example. A contract
//! therefore never claims more than the consumer's tests exercised.

use std::{collections::HashMap, fmt, future::Future, path::PathBuf};

use bytes::Bytes;
use pact_consumer::{
    builders::{MessageInteractionBuilder, PactBuilder, SyncMessageInteractionBuilder},
    json_pattern, json_pattern_internal, like,
    mock_server::{StartMockServer, ValidatingMockServer},
    patterns::{JsonPattern, Pattern},
};
use pact_models::{
    PactSpecification,
    bodies::OptionalBody,
    interaction::Interaction,
    matchingrules::{MatchingRuleCategory, MatchingRules},
    pact::write_pact,
    path_exp::DocPath,
    v4::message_parts::MessageContents,
};
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::{
    ContractError, Message,
    grpc::{self, Descriptors, GRPC_JSON, METHOD_KEY, STATUS_KEY},
};

/// What a message pact says of the CloudEvents envelope an event travels in (the structured
/// mode of `shop_messaging::envelope`): who sent it, its type and data version, the routing key
/// it is published under, and its content type. Every consumer's message pact declares events
/// this one way, so the envelope's shape is written once.
#[derive(Debug, Clone, Copy)]
pub struct EventEnvelope<'a> {
    /// `source`, the producing service (`catalog-service`).
    pub source: &'a str,
    /// `type`, e.g. `product.created`.
    pub kind: &'a str,
    /// `dataversion`.
    pub version: u32,
    pub routing_key: &'a str,
    /// `shop_messaging::envelope::CONTENT_TYPE`. Passed in rather than named here: this crate
    /// is a dev-dependency of shop-messaging, so it cannot depend on it.
    pub content_type: &'a str,
}

impl EventEnvelope<'_> {
    /// The message declaration for [`Contract::message`]: the envelope around `data` as the
    /// body's pattern (any event id of the example's shape), its example as the body with the
    /// envelope's content type, and the routing key and content type as metadata.
    pub fn declare(
        self,
        data: JsonPattern,
    ) -> impl FnOnce(MessageInteractionBuilder) -> MessageInteractionBuilder + use<> {
        let (source, kind) = (self.source.to_owned(), self.kind.to_owned());
        let (routing_key, content_type) =
            (self.routing_key.to_owned(), self.content_type.to_owned());
        let version = self.version;
        move |mut i| {
            let envelope = json_pattern!({
                "specversion": "1.0",
                "id": like!("0193e1c2-7d5e-7c1a-9a4b-8f1e2d3c4b5a"),
                "source": source,
                "type": kind,
                "dataversion": version,
                "data": data,
            });
            // The pattern's example, sent with the envelope's real content type.
            let example = envelope.to_example().to_string();
            i.json_body(envelope);
            i.body(example, Some(content_type.clone()));
            i.metadata("routingKey", routing_key.as_str());
            i.metadata("contentType", content_type.as_str());
            i
        }
    }
}

/// The contract one consumer has with one provider, written to
/// `<dir>/<consumer>-<provider>.json` (by default in [`crate::contracts_dir`]).
///
/// Each declaration is merged into that file: interactions with the same description and
/// provider states are replaced, others are kept, so several tests can contribute to one
/// contract.
#[derive(Debug, Clone)]
pub struct Contract {
    consumer: String,
    provider: String,
    dir: PathBuf,
    descriptors: Descriptors,
}

impl Contract {
    pub fn new(consumer: impl Into<String>, provider: impl Into<String>) -> Self {
        crate::prepare_process();
        Self {
            consumer: consumer.into(),
            provider: provider.into(),
            dir: crate::contracts_dir(),
            descriptors: Descriptors::default(),
        }
    }

    /// Writes the contract to `dir` instead of the repository's `contracts/` (tests of the kit).
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Makes the messages of another encoded `FileDescriptorSet` available to gRPC interactions.
    pub fn with_descriptors(mut self, encoded_set: &[u8]) -> Result<Self, ContractError> {
        self.descriptors.add(encoded_set)?;
        Ok(self)
    }

    /// Starts a Pact mock server for the HTTP interactions `declare` adds (only HTTP ones:
    /// `pact.interaction(...)`). Point the code under test at [`MockServer::base_url`].
    ///
    /// When the returned server is dropped it checks that every interaction was requested and
    /// nothing else was, then writes the contract; otherwise the test panics with the
    /// differences.
    pub fn mock_server(&self, declare: impl FnOnce(&mut PactBuilder)) -> MockServer {
        let mut pact = PactBuilder::new_v4(&self.consumer, &self.provider);
        pact.with_output_dir(&self.dir);
        declare(&mut pact);
        MockServer {
            server: Some(pact.start_mock_server(None, None)),
            file: self.file(),
        }
    }

    /// The contract's file: Pact's default name, `<consumer>-<provider>.json`.
    fn file(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.json", self.consumer, self.provider))
    }

    /// Declares an asynchronous message (an event) the consumer handles, runs `handler` (the
    /// consumer's real handling code) on the example, and records the interaction if it
    /// succeeded.
    ///
    /// `declare` is Pact's message builder: `i.json_body(json_pattern!(..))`,
    /// `i.metadata("routingKey", "order.placed")`, `i.given(..)`.
    pub async fn message<F, Fut, E>(
        &self,
        description: &str,
        declare: impl FnOnce(MessageInteractionBuilder) -> MessageInteractionBuilder,
        handler: F,
    ) -> Result<(), ContractError>
    where
        F: FnOnce(Message) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let interaction = declare(MessageInteractionBuilder::new(description)).build();
        let contents = &interaction.contents;
        let example = Message {
            body: contents.contents.value().unwrap_or_default(),
            content_type: contents.message_content_type().map(|ct| ct.to_string()),
            metadata: contents.metadata.clone().into_iter().collect(),
        };
        handler(example)
            .await
            .map_err(|err| ContractError::Handler {
                description: description.to_owned(),
                reason: err.to_string(),
            })?;
        self.record(&interaction)
    }

    /// Declares a gRPC call the consumer makes, checks request and response against the
    /// method's protobuf types, runs `handler` (the consumer's code that builds the request or
    /// uses the response) on the example, and records the interaction if it succeeded.
    pub async fn grpc<F, Fut, E>(
        &self,
        interaction: GrpcInteraction,
        handler: F,
    ) -> Result<(), ContractError>
    where
        F: FnOnce(GrpcExample) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let GrpcInteraction {
            description,
            method: path,
            states,
            request,
            response,
        } = interaction;
        let invalid = |part: &'static str, reason: String| ContractError::InvalidMessage {
            description: description.clone(),
            part,
            reason,
        };
        let method = self.descriptors.method(&path)?;

        let request = match request {
            None => return Err(invalid("request", "no request was declared".into())),
            Some(GrpcRequest::Json(json)) => grpc::from_json(&method.input(), &json)
                .and_then(|message| grpc::check_canonical(&json, &message).map(|()| message)),
            Some(GrpcRequest::Encoded(bytes)) => {
                DynamicMessage::decode(method.input(), bytes.as_slice())
                    .map_err(|err| format!("not a valid {}: {err}", method.input().full_name()))
            }
        }
        .map_err(|reason| invalid("request", reason))?;

        let (response_body, response_rules, status, example_response) = match response {
            GrpcResponse::Unset => {
                return Err(invalid(
                    "response",
                    "no response or error was declared".into(),
                ));
            }
            GrpcResponse::Message(pattern) => {
                let written = pattern.to_example();
                let example = grpc::from_json(&method.output(), &written)
                    .and_then(|message| grpc::check_canonical(&written, &message).map(|()| message))
                    .map_err(|reason| invalid("response", reason))?;
                let mut rules = MatchingRuleCategory::empty("body");
                pattern.extract_matching_rules(DocPath::root(), &mut rules);
                (written, rules, Code::Ok, Ok(example))
            }
            GrpcResponse::Error(code, None) => {
                let body = json!({ "code": grpc::code_name(code) });
                (
                    body,
                    MatchingRuleCategory::empty("body"),
                    code,
                    Err(Status::new(code, "")),
                )
            }
            GrpcResponse::Error(code, Some(message)) => {
                let pattern = json_pattern!({ "code": grpc::code_name(code), "message": message });
                let written = pattern.to_example();
                let mut rules = MatchingRuleCategory::empty("body");
                pattern.extract_matching_rules(DocPath::root(), &mut rules);
                let text = written["message"].as_str().unwrap_or_default().to_owned();
                (written, rules, code, Err(Status::new(code, text)))
            }
        };

        let request_contents = grpc_contents(
            &grpc::to_json(&request),
            MatchingRuleCategory::empty("body"),
            [(METHOD_KEY, Value::from(path.as_str()))],
        );
        let response_contents = grpc_contents(
            &response_body,
            response_rules,
            [(STATUS_KEY, Value::from(grpc::code_name(status)))],
        );
        let mut builder = SyncMessageInteractionBuilder::new(&description);
        for (name, params) in &states {
            match params {
                Some(params) => builder.given_with_params(name, params),
                None => builder.given(name),
            };
        }
        builder.request_contents(&request_contents);
        builder.response_contents(&response_contents);
        let interaction = builder.build();

        let example = GrpcExample {
            method: path,
            request,
            response: example_response,
        };
        handler(example)
            .await
            .map_err(|err| ContractError::Handler {
                description: description.clone(),
                reason: err.to_string(),
            })?;
        self.record(&interaction)
    }

    /// Merges one interaction into the contract file.
    fn record(
        &self,
        interaction: &(dyn Interaction + Send + Sync + std::panic::RefUnwindSafe),
    ) -> Result<(), ContractError> {
        let mut builder = PactBuilder::new_v4(&self.consumer, &self.provider);
        builder.push_interaction(interaction);
        let pact = builder.build();
        let path = self.dir.join(pact.default_file_name());
        write_pact(pact, &path, PactSpecification::V4, false)
            .map_err(|err| err.to_string())
            .and_then(|()| canonicalize(&path))
            .map_err(|reason| ContractError::Write { path, reason })
    }
}

/// The body and metadata of one side of a gRPC interaction.
fn grpc_contents(
    body: &Value,
    rules: MatchingRuleCategory,
    metadata: impl IntoIterator<Item = (&'static str, Value)>,
) -> MessageContents {
    let mut matching_rules = MatchingRules::default();
    matching_rules.add_category("body").add_rules(rules);
    let mut all_metadata: HashMap<String, Value> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    all_metadata.insert("contentType".into(), GRPC_JSON.into());
    MessageContents {
        contents: OptionalBody::Present(
            Bytes::from(body.to_string()),
            Some(GRPC_JSON.into()),
            None,
        ),
        metadata: all_metadata,
        matching_rules,
        ..MessageContents::default()
    }
}

/// A gRPC call as the consumer expects it: method, request, and response or error.
///
/// ```
/// use shop_contract::prelude::*;
///
/// GrpcInteraction::new("prices of two products", "/shop.catalog.v1.CatalogService/GetProducts")
///     .given("products p-1 and p-2 exist")
///     .request_json(serde_json::json!({ "ids": ["p-1", "p-2"] }))
///     .response(json_pattern!({
///         "products": [{ "id": "p-1", "price": { "amount": like!("1999"), "currency": "EUR" } }],
///     }));
/// ```
#[derive(Debug)]
pub struct GrpcInteraction {
    description: String,
    method: String,
    states: Vec<(String, Option<Value>)>,
    request: Option<GrpcRequest>,
    response: GrpcResponse,
}

#[derive(Debug)]
enum GrpcRequest {
    Json(Value),
    Encoded(Vec<u8>),
}

#[derive(Debug)]
enum GrpcResponse {
    Unset,
    Message(JsonPattern),
    /// The status code, and the message when the consumer relies on it.
    Error(Code, Option<JsonPattern>),
}

impl GrpcInteraction {
    /// `method` is the gRPC path, `/<package>.<Service>/<Method>`.
    pub fn new(description: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            method: method.into(),
            states: Vec::new(),
            request: None,
            response: GrpcResponse::Unset,
        }
    }

    /// A provider state the call needs (the provider test sets it up before the call).
    pub fn given(mut self, state: impl Into<String>) -> Self {
        self.states.push((state.into(), None));
        self
    }

    /// A provider state with parameters.
    pub fn given_with_params(mut self, state: impl Into<String>, params: Value) -> Self {
        self.states.push((state.into(), Some(params)));
        self
    }

    /// The request as protobuf JSON.
    pub fn request_json(mut self, json: Value) -> Self {
        self.request = Some(GrpcRequest::Json(json));
        self
    }

    /// The request as the generated message the consumer's code builds (its wire bytes are
    /// read as the method's input type).
    pub fn request(mut self, message: &impl prost::Message) -> Self {
        self.request = Some(GrpcRequest::Encoded(message.encode_to_vec()));
        self
    }

    /// The successful response, as a protobuf-JSON pattern: exact values, or Pact matchers
    /// (`like!`, `each_like!`, `term!`) where any value of that shape is fine.
    pub fn response(mut self, pattern: impl Into<JsonPattern>) -> Self {
        self.response = GrpcResponse::Message(pattern.into());
        self
    }

    /// The call fails with this status code (the message text is not part of the contract).
    pub fn error(mut self, code: Code) -> Self {
        self.response = GrpcResponse::Error(code, None);
        self
    }

    /// The call fails with this status code and a message the consumer tells apart from
    /// others of the same code: an exact string, or `term!(regex, example)` for a message
    /// with variable parts. The consumer's code is given the example as the status message,
    /// and the provider's real message must match it.
    ///
    /// For a provider whose one code covers several outcomes the consumer must treat
    /// differently, and which documents the message as part of its API.
    pub fn error_with_message(mut self, code: Code, message: impl Into<JsonPattern>) -> Self {
        self.response = GrpcResponse::Error(code, Some(message.into()));
        self
    }
}

/// The example exchange of a gRPC interaction, handed to the consumer's code.
#[derive(Debug)]
pub struct GrpcExample {
    /// The method path.
    pub method: String,
    /// The request, as a message of the method's input type.
    pub request: DynamicMessage,
    /// The response (of the output type), or the status the provider answers with.
    pub response: Result<DynamicMessage, Status>,
}

impl GrpcExample {
    /// The request as the generated type `T`.
    pub fn request_as<T: prost::Message + Default>(&self) -> Result<T, ContractError> {
        grpc::to_prost(&self.request).map_err(|reason| ContractError::InvalidMessage {
            description: self.method.clone(),
            part: "request",
            reason,
        })
    }

    /// The response as the generated type `T`, or the status of a declared error.
    pub fn response_as<T: prost::Message + Default>(&self) -> Result<T, Status> {
        match &self.response {
            Ok(message) => grpc::to_prost(message).map_err(Status::internal),
            Err(status) => Err(status.clone()),
        }
    }
}

/// A running Pact mock server; see [`Contract::mock_server`].
pub struct MockServer {
    /// Pact's server; `None` only while it is being dropped.
    server: Option<Box<dyn ValidatingMockServer>>,
    /// The contract file Pact writes when the server is dropped.
    file: PathBuf,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MockServer").field(&self.base_url()).finish()
    }
}

impl MockServer {
    /// `http://127.0.0.1:<port>`, without a trailing slash: what a client's base URL setting wants.
    pub fn base_url(&self) -> String {
        self.server
            .as_ref()
            .map(|server| server.url().as_str().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }
}

impl Drop for MockServer {
    /// Pact's server checks its requests and writes the contract when dropped (and panics on a
    /// difference, before anything below runs); then the file is put in canonical form.
    fn drop(&mut self) {
        drop(self.server.take());
        if std::thread::panicking() || !self.file.exists() {
            return;
        }
        if let Err(reason) = canonicalize(&self.file) {
            panic!("cannot write {}: {reason}", self.file.display());
        }
    }
}

/// Rewrites a contract file in one canonical form: object keys sorted, interactions sorted by
/// description and provider states, pretty-printed with a final newline.
///
/// Why: Pact writes JSON objects in the order of its in-memory hash maps, which differs from
/// run to run, and appends merged interactions in the order tests happen to finish. Committed
/// contracts would then change on every test run, and a real change (a consumer that now needs
/// a new field) would hide among the noise. In canonical form, a test run that leaves
/// `contracts/` different from the commit *is* a contract change: `make test` checks that with
/// `git diff --exit-code contracts/`.
///
/// Takes the same exclusive file lock as Pact's writer, so a test of the same process writing
/// the file at the same time waits for it (and vice versa).
pub fn canonicalize(path: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom, Write};

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| err.to_string())?;
    fs2::FileExt::lock_exclusive(&file).map_err(|err| err.to_string())?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|err| err.to_string())?;
    let mut pact: Value = serde_json::from_str(&text).map_err(|err| err.to_string())?;
    if let Some(interactions) = pact.get_mut("interactions").and_then(Value::as_array_mut) {
        interactions.sort_by_cached_key(|interaction| {
            (
                interaction["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                interaction["providerStates"].to_string(),
            )
        });
    }
    let mut canonical =
        serde_json::to_string_pretty(&sorted(pact)).map_err(|err| err.to_string())?;
    canonical.push('\n');
    if canonical != text {
        file.set_len(0).map_err(|err| err.to_string())?;
        file.seek(SeekFrom::Start(0))
            .map_err(|err| err.to_string())?;
        file.write_all(canonical.as_bytes())
            .map_err(|err| err.to_string())?;
    }
    fs2::FileExt::unlock(&file).map_err(|err| err.to_string())
}

/// `value` with the keys of every object in sorted order (arrays keep theirs: it is meaningful).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
