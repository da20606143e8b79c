//! The input document a decision service is sent, built from the call.
//!
//! ```json
//! {"request": {"method": "GET", "path": "/orders/1", "url": "/orders/1?v=2",
//!              "headers": {"X-User": "alice"}, "params": {"v": "2"}, "scheme": "https",
//!              "body_size": 0, "body": "…"},
//!  "session": {"alias": "…", "org_id": "…", "metadata": {…}, "tags": […], …},
//!  "spec": {"api_id": "…", "org_id": "…", "config_data": {…}},
//!  "hook": {"type": "Pre", "name": "…"},
//!  "extra": {…}}
//! ```
//!
//! `body` only when asked for (and only up to a cap), `session` when the call has one, without its
//! `token` metadata; `config_data` only when asked for; credential headers are left out unless
//! the settings say otherwise; `extra` holds the computed values the settings add.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    hooks::{
        cel::{ComputedMap, Input},
        step::StepContext,
        steps::{canonical_header_name, upstream_headers},
    },
    pb,
};

/// Largest request body sent by default when `body = true`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 10;

fn default_exclude() -> Vec<String> {
    ["Authorization", "Cookie", "Proxy-Authorization"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn yes() -> bool {
    true
}

/// What goes into the input document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    /// Request headers left out (credentials, by default).
    #[serde(default = "default_exclude")]
    pub exclude_headers: Vec<String>,
    /// Whether the request body is sent (as text; `body_size` always is).
    #[serde(default)]
    pub body: bool,
    /// A larger body is not sent: `body_truncated` is set instead.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Whether the session is sent, when the call has one.
    #[serde(default = "yes")]
    pub session: bool,
    /// Whether the API's `config_data` is sent.
    #[serde(default)]
    pub config_data: bool,
}

impl Default for InputSettings {
    fn default() -> Self {
        Self {
            exclude_headers: default_exclude(),
            body: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            session: true,
            config_data: false,
        }
    }
}

impl InputSettings {
    /// Header names made canonical, so the comparison is one lookup.
    pub fn canonical(mut self) -> Self {
        self.exclude_headers = self
            .exclude_headers
            .iter()
            .map(|n| canonical_header_name(n))
            .collect();
        self
    }
}

/// Builds the input document of a call; `extra` is computed on `input`.
pub fn document(
    settings: &InputSettings,
    extra: &ComputedMap,
    object: &pb::Object,
    cx: &StepContext,
    input: &Input<'_>,
) -> Result<Value, crate::hooks::cel::EvalError> {
    let mut doc = Map::new();
    doc.insert("request".into(), request(settings, object.request.as_ref()));
    if settings.session
        && let Some(session) = object.session.as_ref()
    {
        doc.insert("session".into(), session_doc(session));
    }
    let mut spec = json!({"api_id": cx.api_id, "org_id": cx.org_id});
    if settings.config_data {
        spec["config_data"] = cx.config_data.as_deref().cloned().unwrap_or(Value::Null);
    }
    doc.insert("spec".into(), spec);
    doc.insert(
        "hook".into(),
        json!({"type": cx.hook_type.as_str_name(), "name": &*cx.hook_name}),
    );
    if !extra.is_empty() {
        let values = extra.render(input)?;
        doc.insert(
            "extra".into(),
            Value::Object(
                values
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    Ok(Value::Object(doc))
}

fn request(settings: &InputSettings, request: Option<&pb::MiniRequestObject>) -> Value {
    let default = pb::MiniRequestObject::default();
    let request = request.unwrap_or(&default);
    let headers: Map<String, Value> = upstream_headers(request)
        .filter(|(name, _)| !settings.exclude_headers.iter().any(|x| x == name))
        .map(|(name, value)| (name.into_owned(), Value::String(value.clone())))
        .collect();
    let body: &[u8] = if request.raw_body.is_empty() {
        request.body.as_bytes()
    } else {
        &request.raw_body
    };
    let mut doc = json!({
        "method": request.method,
        "path": request.url.split('?').next().unwrap_or(""),
        "url": request.url,
        "headers": headers,
        "params": request.params,
        "scheme": request.scheme,
        "body_size": body.len(),
    });
    if settings.body {
        if body.len() <= settings.max_body_bytes {
            doc["body"] = Value::String(String::from_utf8_lossy(body).into_owned());
        } else {
            doc["body_truncated"] = Value::Bool(true);
        }
    }
    doc
}

fn session_doc(session: &pb::SessionState) -> Value {
    let metadata: Map<String, Value> = session
        .metadata
        .iter()
        // The session token is a credential of its own.
        .filter(|(k, _)| k.as_str() != "token")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "alias": session.alias,
        "org_id": session.org_id,
        "metadata": metadata,
        "tags": session.tags,
        "apply_policies": session.apply_policies,
        "rate": session.rate,
        "per": session.per,
        "expires": session.expires,
        "quota_max": session.quota_max,
        "quota_remaining": session.quota_remaining,
    })
}
