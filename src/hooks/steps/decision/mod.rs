//! `opa_authorize` and `http_authorize`: ask a policy service whether the request may go on.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "opa_authorize"                       # OPA's Data API: POST {"input": …}, reads "result"
//! url = "http://127.0.0.1:8181/v1/data/tyk/authz/decision"
//! # kind = "http_authorize"                    # any service: POST the input, read the whole answer
//! timeout_ms = 100                             # optional; the hook's deadline always applies
//! input = { body = false, max_body_bytes = 65536, session = true, config_data = false,
//!           exclude_headers = ["Authorization", "Cookie", "Proxy-Authorization"] }
//! extra = { tenant = { cel = "session.metadata.tenant" } }   # added to the input as `extra`
//! cache = { key = "request.headers['X-User'] + ' ' + request.method + ' ' + request.path", ttl_secs = 30, max_entries = 10000 }
//! deny = { status = 403, body = '{"error":"forbidden"}' }  # the default denial
//! tls_ca_file = "/etc/tyk-dispatcher/opa-ca.pem"           # optional, for https with a private CA
//! bearer_token_file = "/var/run/secrets/opa-token"         # optional, sent as Authorization
//! ```
//!
//! The input document is described in `input`. The decision is a boolean (`allow`), or an
//! object with `allow` (boolean, required) and optionally `status` and `body` (the denial's)
//! and `headers` (added to the request upstream when allowed, to the denial when not). OPA
//! answers an undefined decision without `result`: that is a denial. A service that cannot be
//! reached, answers non-2xx or something that is not a decision fails the step: the hook's
//! `on_error` answers (`fail_open` lets the request through, `fail_closed` refuses it).
//!
//! Calls go over pooled keep-alive connections (TLS through the process's rustls), carry the
//! call's W3C `traceparent`, and are traced as a `decision` span under the step's. With `cache`,
//! a decision is kept for `ttl_secs` under the key the CEL expression computes.

mod cache;
mod input;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;

use self::{
    cache::DecisionCache,
    input::{InputSettings, document},
};
use super::{
    canonical_header_name,
    respond::{Answer, AnswerOverride},
    set_entries, settings,
};
use crate::{
    hooks::{
        cel::{ComputedMap, Expression, Input, Scope, TemplateSetting},
        config::StepConfig,
        parts::ObjectParts,
        recorded::Recorded,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

/// How the service is asked and how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OPA's Data API: the body is `{"input": …}`, the decision is the answer's `result`.
    Opa,
    /// Any HTTP service: the body is the input document, the decision the whole answer.
    Http,
}

/// Largest answer read from the service by default.
const DEFAULT_MAX_ANSWER_BYTES: usize = 1 << 20;
/// How long connecting may take (the hook's deadline bounds the whole call anyway).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle pooled connections kept per host.
const POOL_IDLE_PER_HOST: usize = 32;

fn default_max_answer() -> usize {
    DEFAULT_MAX_ANSWER_BYTES
}

fn default_max_entries() -> usize {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionSettings {
    url: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    input: InputSettings,
    #[serde(default)]
    extra: BTreeMap<String, TemplateSetting>,
    #[serde(default)]
    cache: Option<CacheSettings>,
    #[serde(default)]
    deny: Option<Value>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default = "default_max_answer")]
    max_answer_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSettings {
    key: String,
    ttl_secs: u64,
    #[serde(default = "default_max_entries")]
    max_entries: usize,
}

/// A decision, as the service made it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allow: bool,
    /// The denial's status, when the decision names one.
    pub status: Option<u16>,
    /// Headers: to the request upstream when allowed, to the denial when not.
    pub headers: BTreeMap<String, String>,
    /// The denial's body, when the decision gives one.
    pub body: Option<String>,
}

/// See the module docs.
pub struct DecisionStep {
    protocol: Protocol,
    url: String,
    client: reqwest::Client,
    input: InputSettings,
    extra: ComputedMap,
    cache: Option<(Expression, DecisionCache)>,
    deny: Answer,
    bearer: Option<String>,
    max_answer_bytes: usize,
}

impl std::fmt::Debug for DecisionStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionStep")
            .field("protocol", &self.protocol)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl DecisionStep {
    pub(in crate::hooks::steps) fn build_opa(
        config: &StepConfig,
        scope: Scope,
    ) -> Result<Self, BuildError> {
        Self::build(config, scope, Protocol::Opa)
    }

    pub(in crate::hooks::steps) fn build_http(
        config: &StepConfig,
        scope: Scope,
    ) -> Result<Self, BuildError> {
        Self::build(config, scope, Protocol::Http)
    }

    fn build(config: &StepConfig, scope: Scope, protocol: Protocol) -> Result<Self, BuildError> {
        let settings: DecisionSettings = settings(config)?;
        let url = reqwest::Url::parse(&settings.url)
            .map_err(|err| BuildError::at("url", format!("{:?}: {err}", settings.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BuildError::at(
                "url",
                format!("scheme {:?} is not http(s)", url.scheme()),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(BuildError::at(
                "url",
                "must not hold credentials (they would show in logs); use bearer_token_file",
            ));
        }
        if settings.timeout_ms == Some(0) {
            return Err(BuildError::at("timeout_ms", "must be above 0"));
        }
        let cache = match settings.cache {
            None => None,
            Some(cache) => {
                if cache.ttl_secs == 0 || cache.max_entries == 0 {
                    return Err(BuildError::at(
                        "cache",
                        "ttl_secs and max_entries must be above 0",
                    ));
                }
                let key = Expression::compile(&cache.key, scope)
                    .map_err(|err| BuildError::at("cache.key", err.to_string()))?;
                Some((
                    key,
                    DecisionCache::new(Duration::from_secs(cache.ttl_secs), cache.max_entries),
                ))
            }
        };
        let bearer = match &settings.bearer_token_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|err| {
                        BuildError::at("bearer_token_file", format!("{}: {err}", path.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
        };
        Ok(Self {
            protocol,
            client: client(settings.timeout_ms, settings.tls_ca_file.as_deref())?,
            url: url.into(),
            input: settings.input.canonical(),
            extra: ComputedMap::build(settings.extra, scope, "extra", str::to_string)?,
            cache,
            deny: super::authorize::deny_answer(settings.deny, scope)?,
            bearer,
            max_answer_bytes: settings.max_answer_bytes,
        })
    }

    /// Asks the service (or the recorded answers, offline) about `doc`.
    async fn decide(&self, doc: Value, cx: &StepContext) -> Result<Decision, StepError> {
        let (status, body) = match &cx.recorded {
            Some(recorded) => self.recorded(recorded)?,
            None => {
                let span = tracing::info_span!(
                    "decision",
                    url = %self.url,
                    http.response.status_code = tracing::field::Empty
                );
                let called = self.call(doc, cx).instrument(span.clone()).await?;
                span.record("http.response.status_code", called.0);
                called
            }
        };
        if !(200..300).contains(&status) {
            return Err(StepError::new(format!(
                "POST {}: status {status}",
                self.url
            )));
        }
        parse(self.protocol, &body)
    }

    fn recorded(&self, recorded: &Recorded) -> Result<(u16, Vec<u8>), StepError> {
        let answer = recorded.answer("POST", &self.url)?;
        Ok((answer.status, answer.body_bytes()))
    }

    async fn call(&self, doc: Value, cx: &StepContext) -> Result<(u16, Vec<u8>), StepError> {
        let body = match self.protocol {
            Protocol::Opa => serde_json::json!({ "input": doc }),
            Protocol::Http => doc,
        };
        let mut request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(traceparent) = traceparent(cx) {
            request = request.header("traceparent", traceparent);
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let failed = |err: reqwest::Error| {
            // reqwest's message names the URL, which holds no credential (refused at load).
            StepError::with_cause(format!("POST {}", self.url), err.without_url())
        };
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if answer.len() + chunk.len() > self.max_answer_bytes {
                return Err(StepError::new(format!(
                    "POST {}: the answer is over max_answer_bytes ({})",
                    self.url, self.max_answer_bytes
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    }

    /// Puts `decision` into the Object: edits upstream when allowed, the denial when not.
    fn apply(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
        decision: &Decision,
    ) -> Result<StepOutcome, StepError> {
        if decision.allow {
            if !decision.headers.is_empty() {
                let request = object.request.get_or_insert_with(Default::default);
                set_entries(
                    &mut request.set_headers,
                    &mut request.delete_headers,
                    &decision.headers,
                );
            }
            return Ok(StepOutcome::Allowed);
        }
        self.deny.give_overridden(
            object,
            cx,
            &AnswerOverride {
                status: decision.status,
                body: decision.body.as_deref(),
                headers: &decision.headers,
            },
        )?;
        Ok(StepOutcome::Denied)
    }
}

/// The HTTP client of one step: its own pool of keep-alive connections.
fn client(
    timeout_ms: Option<u64>,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, BuildError> {
    // reqwest uses the process-wide rustls provider and panics without one: make sure there is
    // one even when no App was built (unit tests, custom code building steps itself).
    let _ = crate::tls::crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .tcp_nodelay(true);
    if let Some(ms) = timeout_ms {
        builder = builder.timeout(Duration::from_millis(ms));
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|err| BuildError::at("tls_ca_file", format!("{}: {err}", path.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|err| BuildError::at("tls_ca_file", format!("{}: {err}", path.display())))?;
        if certificates.is_empty() {
            return Err(BuildError::at(
                "tls_ca_file",
                format!("{}: no certificate in it", path.display()),
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|err| BuildError::new(format!("cannot build an HTTP client: {err}")))
}

/// The W3C `traceparent` of a call made for this step: the call's trace, the step's span as
/// parent when it is recorded (else the call's own span).
fn traceparent(cx: &StepContext) -> Option<String> {
    let context = cx.trace.as_ref().filter(|c| c.is_valid())?;
    let parent = crate::telemetry::current_step_span().unwrap_or_else(|| context.span_id());
    Some(format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        parent,
        context.trace_flags().to_u8()
    ))
}

/// Reads a decision from the service's answer.
fn parse(protocol: Protocol, body: &[u8]) -> Result<Decision, StepError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|err| StepError::new(format!("the answer is not JSON: {err}")))?;
    let result = match protocol {
        // An undefined decision (no rule matched, or a wrong path) comes without `result`.
        Protocol::Opa => match answer.get("result") {
            Some(result) => result,
            None => return Ok(Decision::default()),
        },
        Protocol::Http => &answer,
    };
    match result {
        Value::Bool(allow) => Ok(Decision {
            allow: *allow,
            ..Decision::default()
        }),
        Value::Object(fields) => {
            let allow = fields
                .get("allow")
                .and_then(Value::as_bool)
                .ok_or_else(|| StepError::new("the decision has no boolean `allow`"))?;
            let status = match fields.get("status") {
                None | Some(Value::Null) => None,
                Some(value) => Some(
                    value
                        .as_u64()
                        .filter(|s| (100..=599).contains(s))
                        .and_then(|s| u16::try_from(s).ok())
                        .ok_or_else(|| {
                            StepError::new("the decision's `status` is not an HTTP status")
                        })?,
                ),
            };
            let headers = match fields.get("headers") {
                None | Some(Value::Null) => BTreeMap::new(),
                Some(Value::Object(headers)) => headers
                    .iter()
                    .map(|(k, v)| (canonical_header_name(k), text(v)))
                    .collect(),
                Some(_) => return Err(StepError::new("the decision's `headers` is not an object")),
            };
            let body = fields.get("body").filter(|v| !v.is_null()).map(text);
            Ok(Decision {
                allow,
                status,
                headers,
                body,
            })
        }
        _ => Err(StepError::new(
            "the decision is neither a boolean nor an object with `allow`",
        )),
    }
}

/// A JSON value as text: strings as they are, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl Step for DecisionStep {
    fn authenticates(&self) -> bool {
        true
    }

    fn calls_out(&self) -> bool {
        true
    }

    fn parts(&self) -> ObjectParts {
        let mut parts = ObjectParts::REQUEST;
        if self.input.session {
            parts = parts.union(ObjectParts::SESSION);
        }
        if let Some((key, _)) = &self.cache {
            parts = parts.union(key.parts());
        }
        parts
            .union(self.extra.variables().parts())
            .union(self.deny.variables().parts())
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let (key, doc) = {
            let key_reads = self.cache.as_ref().map(|(key, _)| key.variables());
            let input = Input::new(
                object,
                cx,
                key_reads.unwrap_or_default().union(self.extra.variables()),
            );
            let key = match &self.cache {
                Some((key, cache)) => {
                    let key = key
                        .text(&input)
                        .map_err(|err| StepError::new(format!("cache.key: {err}")))?;
                    if let Some(decision) = cache.get(&key) {
                        drop(input);
                        return self.apply(object, cx, &decision);
                    }
                    Some(key)
                }
                None => None,
            };
            let doc = document(&self.input, &self.extra, object, cx, &input)
                .map_err(|err| StepError::new(format!("extra: {err}")))?;
            (key, doc)
        };
        let decision = Arc::new(self.decide(doc, cx).await?);
        if let (Some(key), Some((_, cache))) = (key, &self.cache) {
            cache.put(&key, decision.clone());
        }
        self.apply(object, cx, &decision)
    }
}

#[cfg(test)]
mod tests;
