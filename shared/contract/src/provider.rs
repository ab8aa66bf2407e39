//! The provider side: replay every contract that names this provider against the real service.
//!
//! `pact_verifier` does the replaying and the comparing. What it cannot reach by itself is
//! provided by a small HTTP server the kit runs inside the test (the *shim*):
//!
//! * **messages**: the verifier POSTs `{"description": ...}` to `/messages`; the shim calls
//!   the producer registered for that description and answers with the message body, its
//!   metadata in the `Pact-Message-Metadata` header (base64 JSON), as Pact expects.
//! * **gRPC**: the verifier POSTs the synchronous message's request to `/grpc`; the shim
//!   turns its protobuf JSON into protobuf, calls the provider's real tonic server over
//!   HTTP/2 and answers with the response as protobuf JSON (or `{"code", "message"}` for an
//!   error status), which the verifier compares with the contract. The test may give
//!   metadata the shim adds to every call ([`Provider::grpc_metadata`]), such as the caller's
//!   credentials, so the call goes through the provider's real gRPC stack, access checks
//!   included.
//!
//! Provider states go through `pact_verifier`'s own state-change trait straight to the
//! callback the test gives, with no HTTP round trip.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State as AxumState,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use base64::Engine as _;
use pact_models::provider_states::ProviderState;
use pact_verifier::{
    FilterInfo, NullRequestFilterExecutor, PactSource, ProviderInfo, ProviderTransport,
    VerificationOptions, callback_executors::ProviderStateExecutor, verify_provider_async,
};
use serde_json::{Map, Value, json};
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::Channel,
};

use crate::{
    ContractError, Message,
    grpc::{self, Descriptors, GRPC_JSON, METHOD_KEY, STATUS_KEY},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type StateHandler = Arc<dyn Fn(State) -> BoxFuture<Result<(), String>> + Send + Sync>;
type MessageProducer = Arc<dyn Fn() -> BoxFuture<Result<Message, String>> + Send + Sync>;

/// A provider state an interaction needs, as named by the consumer (`given(...)`).
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub name: String,
    pub params: Map<String, Value>,
}

/// Verification of one provider against the contracts that name it.
///
/// ```no_run
/// # async fn example(app_http: std::net::SocketAddr, app_grpc: std::net::SocketAddr) {
/// shop_contract::Provider::new("catalog")
///     .http(app_http)
///     .grpc(app_grpc)
///     .state(|state| async move {
///         // insert the rows `state.name` describes
///         Ok::<_, String>(())
///     })
///     .verify()
///     .await;
/// # }
/// ```
pub struct Provider {
    name: String,
    dir: PathBuf,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    /// Metadata added to every gRPC call, as given (checked when verification starts).
    grpc_metadata: Vec<(String, String)>,
    /// Headers set on every HTTP request replayed ([`Provider::http_header`]).
    http_headers: HashMap<String, String>,
    descriptors: Descriptors,
    states: Option<StateHandler>,
    producers: BTreeMap<String, MessageProducer>,
    /// Why it is fine that no contract names this provider yet (`None`: it is not).
    no_pacts_expected: Option<String>,
    /// The consumers whose contracts must be present ([`Provider::consumers`]).
    consumers: Vec<String>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("http", &self.http)
            .field("grpc", &self.grpc)
            // Keys only: the values are credentials.
            .field(
                "grpc_metadata",
                &self
                    .grpc_metadata
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .field(
                "http_headers",
                &self.http_headers.keys().collect::<Vec<_>>(),
            )
            .field("states", &self.states.is_some())
            .field("producers", &self.producers.keys().collect::<Vec<_>>())
            .field("no_pacts_expected", &self.no_pacts_expected)
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

/// The outcome of a verification run.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The contract files that were verified.
    pub pacts: Vec<PathBuf>,
    /// True when every interaction of every contract was satisfied (or there were none).
    pub passed: bool,
    /// The verifier's report, followed by any problems the shim ran into.
    pub report: String,
}

impl Provider {
    pub fn new(name: impl Into<String>) -> Self {
        crate::prepare_process();
        Self {
            name: name.into(),
            dir: crate::contracts_dir(),
            http: None,
            grpc: None,
            grpc_metadata: Vec::new(),
            http_headers: HashMap::new(),
            descriptors: Descriptors::default(),
            states: None,
            producers: BTreeMap::new(),
            no_pacts_expected: None,
            consumers: Vec::new(),
        }
    }

    /// Reads contracts from `dir` instead of the repository's `contracts/` (tests of the kit).
    pub fn pacts_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// The provider's HTTP listener (on 127.0.0.1), for HTTP interactions.
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// The provider's gRPC listener, for gRPC interactions.
    pub fn grpc(mut self, addr: SocketAddr) -> Self {
        self.grpc = Some(addr);
        self
    }

    /// Adds `key: value` metadata to every gRPC call the kit replays, e.g. the consumer's
    /// credentials (`.grpc_metadata("authorization", format!("Bearer {token}"))`), so the
    /// contract is verified through the provider's real gRPC stack, access checks included.
    /// Contracts themselves carry no credentials: who may call what is the provider's own
    /// tests' business. A key or value that is not valid gRPC ASCII metadata fails
    /// verification with [`ContractError::Config`].
    pub fn grpc_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.grpc_metadata.push((key.into(), value.into()));
        self
    }

    /// Sets `name: value` on every HTTP request the kit replays, in place of the header of
    /// that name a contract declares: the HTTP counterpart of [`Provider::grpc_metadata`].
    /// A consumer's contract says it sends `Authorization: Bearer <token>` (a pattern); the
    /// provider test gives a token its service accepts
    /// (`.http_header("Authorization", format!("Bearer {token}"))`), for the user its provider
    /// states create data for. Use the header name as the contracts spell it.
    pub fn http_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.http_headers.insert(name.into(), value.into());
        self
    }

    /// Makes the messages of another encoded `FileDescriptorSet` available to gRPC interactions.
    pub fn with_descriptors(mut self, encoded_set: &[u8]) -> Result<Self, ContractError> {
        self.descriptors.add(encoded_set)?;
        Ok(self)
    }

    /// Sets up provider states: called before each interaction, once per state it names.
    /// An error fails that interaction.
    pub fn state<F, Fut, E>(mut self, handler: F) -> Self
    where
        F: Fn(State) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let handler = Arc::new(handler);
        self.states = Some(Arc::new(move |state| {
            let future = handler(state);
            Box::pin(async move { future.await.map_err(|err| err.to_string()) })
        }));
        self
    }

    /// Produces the message a contract describes as `description`, with the provider's real
    /// producer code (the function that builds the event it publishes).
    pub fn message<F, Fut, E>(mut self, description: impl Into<String>, producer: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Message, E>> + Send + 'static,
        E: fmt::Display,
    {
        let producer = Arc::new(producer);
        self.producers.insert(
            description.into(),
            Arc::new(move || {
                let future = producer();
                Box::pin(async move { future.await.map_err(|err| err.to_string()) })
            }),
        );
        self
    }

    /// Lets verification pass when no contract names this provider, for the stated `reason`
    /// (a provider whose first consumer is not written yet). Without it, finding no contract is
    /// an error ([`ContractError::NoPacts`]): a misspelt provider name or a contract written to
    /// the wrong folder would otherwise make a verification that checks nothing pass.
    pub fn no_pacts_expected(mut self, reason: impl Into<String>) -> Self {
        self.no_pacts_expected = Some(reason.into());
        self
    }

    /// The consumers this provider knows it has: verification fails when the contract of any of
    /// them (`<consumer>-<provider>.json`) is missing.
    ///
    /// Why: the verifier replays whatever contracts it finds, so a deleted or renamed file makes
    /// a verification that checks less still pass, and the provider could then break that
    /// consumer unnoticed. Contracts of consumers not listed here are verified all the same.
    pub fn consumers<I, S>(mut self, consumers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.consumers = consumers.into_iter().map(Into::into).collect();
        self
    }

    /// Verifies and panics with the report when anything fails: what a test calls.
    pub async fn verify(self) {
        let name = self.name.clone();
        match self.run().await {
            Ok(verification) if verification.passed => {}
            Ok(verification) => panic!(
                "provider '{name}' does not honour its contracts {:?}:\n{}",
                verification.pacts, verification.report
            ),
            Err(err) => panic!("cannot verify provider '{name}': {err}"),
        }
    }

    /// Verifies every interaction of every contract naming this provider.
    pub async fn run(self) -> Result<Verification, ContractError> {
        let pacts = pacts_for(&self.dir, &self.name)?;
        let missing: Vec<String> = self
            .consumers
            .iter()
            .filter(|consumer| {
                let file = self.dir.join(format!("{consumer}-{}.json", self.name));
                !pacts.contains(&file)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ContractError::MissingPacts {
                provider: self.name,
                consumers: missing,
                dir: self.dir,
            });
        }
        if pacts.is_empty() {
            let Some(reason) = self.no_pacts_expected else {
                return Err(ContractError::NoPacts {
                    provider: self.name,
                    dir: self.dir,
                });
            };
            return Ok(Verification {
                pacts,
                passed: true,
                report: format!(
                    "no contract in {} names provider '{}', as expected: {reason}",
                    self.dir.display(),
                    self.name
                ),
            });
        }
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if let Some(addr) = self.http.filter(|addr| addr.ip() != loopback) {
            return Err(ContractError::Config(format!(
                "the provider's HTTP address must be on {loopback} (the shim is), not {addr}"
            )));
        }

        let mut metadata = MetadataMap::new();
        for (key, value) in &self.grpc_metadata {
            let invalid = |what: &str| {
                ContractError::Config(format!("gRPC metadata '{key}': invalid {what}"))
            };
            let name = MetadataKey::from_bytes(key.as_bytes()).map_err(|_| invalid("key"))?;
            let value = MetadataValue::try_from(value.as_str()).map_err(|_| invalid("value"))?;
            metadata.append(name, value);
        }

        let problems = Problems::default();
        let shim = Arc::new(Shim {
            producers: self.producers,
            descriptors: self.descriptors,
            grpc: self
                .grpc
                .map(|addr| {
                    Channel::from_shared(format!("http://{addr}"))
                        .map(|endpoint| endpoint.connect_lazy())
                })
                .transpose()
                .map_err(|err| ContractError::Config(err.to_string()))?,
            metadata,
            problems: problems.clone(),
        });
        let listener = tokio::net::TcpListener::bind((loopback, 0)).await?;
        let shim_port = listener.local_addr()?.port();
        let app = Router::new()
            .route("/messages", post(produce_message))
            .route("/grpc", post(call_grpc))
            .route("/no-http", any(no_http))
            .with_state(shim.clone());
        let server = AbortOnDrop(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));

        let transport = |name: &str, port: u16, path: &str| ProviderTransport {
            transport: name.to_owned(),
            port: Some(port),
            path: Some(path.to_owned()).filter(|p| !p.is_empty()),
            scheme: Some("http".to_owned()),
        };
        let http = match self.http {
            Some(addr) => transport("http", addr.port(), ""),
            None => transport("http", shim_port, "/no-http"),
        };
        let provider = ProviderInfo {
            name: self.name.clone(),
            host: loopback.to_string(),
            transports: vec![
                http,
                transport("async-message", shim_port, "/messages"),
                transport("sync-message", shim_port, "/grpc"),
            ],
            ..ProviderInfo::default()
        };
        let options = VerificationOptions::<NullRequestFilterExecutor> {
            coloured_output: false,
            request_timeout: 15_000,
            custom_headers: self.http_headers,
            ..VerificationOptions::default()
        };
        let sources = pacts
            .iter()
            .map(|p| PactSource::File(p.display().to_string()))
            .collect();
        let states = Arc::new(StateExecutor {
            handler: self.states,
            problems: problems.clone(),
        });
        let result = verify_provider_async(
            provider,
            sources,
            FilterInfo::None,
            vec![],
            &options,
            None,
            &states,
            None,
        )
        .await
        .map_err(|err| ContractError::Verifier(format!("{err:#}")))?;
        drop(server);

        let mut report = result.output.join("\n");
        let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
        if !problems.is_empty() {
            report.push_str("\nProblems the kit ran into while answering the verifier:\n");
            for problem in problems {
                report.push_str(&format!("  - {problem}\n"));
            }
        }
        Ok(Verification {
            pacts,
            passed: result.result,
            report,
        })
    }
}

/// The contract files in `dir` whose provider is `provider`, sorted.
fn pacts_for(dir: &Path, provider: &str) -> Result<Vec<PathBuf>, ContractError> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        ContractError::Config(format!(
            "cannot read the contracts folder {}: {err}",
            dir.display()
        ))
    })?;
    // A contract is written as `<consumer>-<provider>.json` (Pact's default file name, which
    // `crate::consumer` uses). Files named for another provider are not even opened: a consumer
    // test running beside this verification (one test binary runs its tests in parallel) may be
    // rewriting one of them, and Pact's writer truncates a file before it writes it again, so a
    // reader that does not take the writer's lock can find it empty.
    let suffix = format!("-{provider}.json");
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let named_for_provider = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(&suffix));
        if !named_for_provider {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let pact: Value = serde_json::from_str(&text)
            .map_err(|err| ContractError::Config(format!("{}: {err}", path.display())))?;
        if pact["provider"]["name"] == provider {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Aborts the shim server when verification ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Failures of the kit's own plumbing (state handlers, the shim). The verifier only reports
/// "state change failed" or "status 500"; the report lists these so the cause is visible.
type Problems = Arc<Mutex<Vec<String>>>;

fn record(problems: &Problems, problem: String) -> String {
    tracing::error!(%problem, "contract verification");
    if let Ok(mut problems) = problems.lock() {
        problems.push(problem.clone());
    }
    problem
}

/// Routes `pact_verifier`'s provider-state calls to the test's callback.
struct StateExecutor {
    handler: Option<StateHandler>,
    problems: Problems,
}

impl fmt::Debug for StateExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateExecutor")
            .field("handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl ProviderStateExecutor for StateExecutor {
    async fn call(
        self: Arc<Self>,
        _interaction_id: Option<String>,
        provider_state: &ProviderState,
        setup: bool,
        _client: Option<&reqwest::Client>,
    ) -> anyhow::Result<HashMap<String, Value>> {
        // The verifier also calls with an empty name for interactions that need no state.
        if !setup || provider_state.name.is_empty() {
            return Ok(HashMap::new());
        }
        let Some(handler) = &self.handler else {
            let problem = format!(
                "the contract needs provider state '{}' but the test gave no state handler (Provider::state)",
                provider_state.name
            );
            anyhow::bail!(record(&self.problems, problem));
        };
        let state = State {
            name: provider_state.name.clone(),
            params: provider_state.params.clone().into_iter().collect(),
        };
        if let Err(err) = handler(state).await {
            let problem = format!("provider state '{}' failed: {err}", provider_state.name);
            anyhow::bail!(record(&self.problems, problem));
        }
        Ok(HashMap::new())
    }

    fn teardown(&self) -> bool {
        false
    }
}

/// What the shim's handlers share.
struct Shim {
    producers: BTreeMap<String, MessageProducer>,
    descriptors: Descriptors,
    grpc: Option<Channel>,
    /// Added to every gRPC call ([`Provider::grpc_metadata`]).
    metadata: MetadataMap,
    problems: Problems,
}

impl Shim {
    fn fail(&self, problem: String) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            record(&self.problems, problem),
        )
            .into_response()
    }
}

/// Answers the verifier with `body` as a message with `metadata`.
fn message_response(content_type: &str, metadata: &Map<String, Value>, body: Vec<u8>) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(Value::Object(metadata.clone()).to_string());
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("pact-message-metadata", value);
    }
    (StatusCode::OK, headers, body).into_response()
}

async fn produce_message(
    AxumState(shim): AxumState<Arc<Shim>>,
    Json(request): Json<Value>,
) -> Response {
    let description = request["description"].as_str().unwrap_or_default();
    let Some(producer) = shim.producers.get(description) else {
        let known: Vec<_> = shim.producers.keys().collect();
        return shim.fail(format!(
            "no message producer for '{description}' (the test registered {known:?} with Provider::message)"
        ));
    };
    match producer().await {
        Ok(message) => {
            let content_type = message
                .content_type
                .as_deref()
                .unwrap_or("application/json");
            message_response(content_type, &message.metadata, message.body.to_vec())
        }
        Err(err) => shim.fail(format!("the producer of '{description}' failed: {err}")),
    }
}

async fn call_grpc(AxumState(shim): AxumState<Arc<Shim>>, Json(request): Json<Value>) -> Response {
    let description = request["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match grpc_exchange(&shim, &request["request"]).await {
        Ok((status, body)) => {
            let mut metadata = Map::new();
            metadata.insert(STATUS_KEY.into(), status.into());
            message_response(GRPC_JSON, &metadata, body.to_string().into_bytes())
        }
        Err(problem) => shim.fail(format!("'{description}': {problem}")),
    }
}

/// Replays one gRPC request on the real server: (status name, response JSON).
async fn grpc_exchange(shim: &Shim, request: &Value) -> Result<(&'static str, Value), String> {
    let path = request["metadata"][METHOD_KEY].as_str().ok_or_else(|| {
        format!("the request has no '{METHOD_KEY}' metadata; is this a gRPC contract?")
    })?;
    let method = shim
        .descriptors
        .method(path)
        .map_err(|err| err.to_string())?;
    let content = &request["contents"]["content"];
    // Pact stores JSON bodies as JSON, but tolerate one stored as a string.
    let content = match content {
        Value::String(text) => {
            serde_json::from_str(text).map_err(|err| format!("request body: {err}"))?
        }
        other => other.clone(),
    };
    let message = grpc::from_json(&method.input(), &content)?;
    let channel = shim.grpc.clone().ok_or(
        "the contract has gRPC interactions but the test gave no gRPC address (Provider::grpc)",
    )?;
    Ok(
        match grpc::call(channel, &method, message, &shim.metadata).await {
            Ok(response) => ("OK", grpc::to_json(&response)),
            Err(status) => {
                let code = grpc::code_name(status.code());
                (code, json!({ "code": code, "message": status.message() }))
            }
        },
    )
}

async fn no_http() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the contract has HTTP interactions but the test gave no HTTP address (Provider::http)",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::pacts_for;

    /// The race seen in CI: a consumer test rewrites its contract (truncated, then written)
    /// while the same binary's provider test lists the folder. A file named for another
    /// provider is not opened, so an empty one there is no error.
    #[test]
    fn contracts_of_other_providers_are_not_opened_even_while_being_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("catalog-inventory.json"), "").unwrap();
        let mine = dir.path().join("gateway-catalog.json");
        std::fs::write(
            &mine,
            r#"{"consumer":{"name":"gateway"},"provider":{"name":"catalog"}}"#,
        )
        .unwrap();
        assert_eq!(pacts_for(dir.path(), "catalog").unwrap(), [mine]);
        // The rule applies to this provider's own files too: one being rewritten is an error,
        // not silently skipped (a contract must never go unverified).
        std::fs::write(dir.path().join("order-catalog.json"), "").unwrap();
        assert!(pacts_for(dir.path(), "catalog").is_err());
    }
}
