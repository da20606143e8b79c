//! `respond`: ends the request with a status, body and headers, when its conditions hold.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "respond"
//! status = 403
//! body = '{"error": "version header required"}'
//! headers = { Content-Type = "application/json" }
//! when = { header_absent = "X-Api-Version", path_prefix = "/orders" }
//! ```
//!
//! Request hooks answer through `return_overrides`, with `override_error = true` by default: the
//! gateway otherwise wraps a 4xx body in `{"error": …}`, forces a JSON content type and fires
//! AuthFailure (set it to false to get that). The gateway ignores `return_overrides` on Response
//! hooks, so there the response's status, body and headers are replaced instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    canonical_header_name,
    headers::{request_header, set_response_header},
    settings,
};
use crate::{
    hooks::{
        config::StepConfig,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

/// When a `respond` step answers; every condition given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// A request header that must be present.
    header_present: Option<String>,
    /// A request header that must be absent.
    header_absent: Option<String>,
    /// A request header that must have this value.
    header_equals: Option<HeaderEquals>,
    /// The URL path must start with this.
    path_prefix: Option<String>,
    /// The HTTP method must be this.
    method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderEquals {
    name: String,
    value: String,
}

impl Conditions {
    fn holds(&self, request: Option<&pb::MiniRequestObject>) -> bool {
        let default = pb::MiniRequestObject::default();
        let request = request.unwrap_or(&default);
        let header = |name: &str| request_header(request, name);
        let path = request.url.split('?').next().unwrap_or("");
        self.header_present
            .as_deref()
            .is_none_or(|name| header(name).is_some())
            && self
                .header_absent
                .as_deref()
                .is_none_or(|name| header(name).is_none())
            && self
                .header_equals
                .as_ref()
                .is_none_or(|eq| header(&eq.name).is_some_and(|v| *v == eq.value))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
            && self
                .method
                .as_deref()
                .is_none_or(|method| request.method.eq_ignore_ascii_case(method))
    }
}

fn default_override_error() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RespondSettings {
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    when: Conditions,
    #[serde(default = "default_override_error")]
    override_error: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Respond {
    status: u16,
    body: String,
    headers: BTreeMap<String, String>,
    when: Conditions,
    override_error: bool,
}

impl Respond {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let settings: RespondSettings = settings(config)?;
        if !(100..=599).contains(&settings.status) {
            return Err(BuildError::at(
                "status",
                format!("{} is not an HTTP status", settings.status),
            ));
        }
        Ok(Self {
            status: settings.status,
            body: settings.body,
            headers: settings
                .headers
                .into_iter()
                .map(|(k, v)| (canonical_header_name(&k), v))
                .collect(),
            when: settings.when,
            override_error: settings.override_error,
        })
    }
}

/// Ends a request hook's request through `return_overrides`.
pub(crate) fn respond_to_request(
    object: &mut pb::Object,
    status: u16,
    body: &str,
    headers: &BTreeMap<String, String>,
    override_error: bool,
) {
    let request = object.request.get_or_insert_with(Default::default);
    let overrides = request
        .return_overrides
        .get_or_insert_with(Default::default);
    overrides.response_code = i32::from(status);
    overrides.response_body = body.to_string();
    // response_error would win over response_body.
    overrides.response_error.clear();
    overrides.headers = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    overrides.override_error = override_error;
}

/// Replaces a Response hook's response.
pub(crate) fn replace_response(
    object: &mut pb::Object,
    status: u16,
    body: &str,
    headers: &BTreeMap<String, String>,
) {
    let response = object.response.get_or_insert_with(Default::default);
    response.status_code = i32::from(status);
    response.raw_body = body.as_bytes().to_vec().into();
    response.body = body.to_string();
    response.headers.clear();
    response.multivalue_headers.clear();
    for (name, value) in headers {
        set_response_header(response, name, value);
    }
}

#[async_trait::async_trait]
impl Step for Respond {
    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        if !self.when.holds(object.request.as_ref()) {
            return Ok(StepOutcome::Unchanged);
        }
        if cx.is_request_hook() {
            respond_to_request(
                object,
                self.status,
                &self.body,
                &self.headers,
                self.override_error,
            );
        } else {
            replace_response(object, self.status, &self.body, &self.headers);
        }
        Ok(StepOutcome::Responded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, step_config};

    fn request(headers: &[(&str, &str)], url: &str, method: &str) -> pb::Object {
        pb::Object {
            request: Some(pb::MiniRequestObject {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                url: url.into(),
                method: method.into(),
                return_overrides: Some(pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn respond(when: serde_json::Value) -> Respond {
        Respond::build(&step_config(
            "respond",
            serde_json::json!({"status": 418, "body": "teapot", "headers": {"content-type": "text/plain"}, "when": when}),
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn request_hooks_answer_through_return_overrides() {
        let step = respond(
            serde_json::json!({"header_absent": "x-version", "path_prefix": "/orders", "method": "get"}),
        );
        let mut object = request(&[], "/orders/1?x=1", "GET");
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Responded
        );
        let overrides = object.request.unwrap().return_overrides.unwrap();
        assert_eq!(overrides.response_code, 418);
        assert_eq!(overrides.response_body, "teapot");
        assert!(overrides.override_error);
        assert_eq!(
            overrides.headers.get("Content-Type").map(String::as_str),
            Some("text/plain")
        );
    }

    #[tokio::test]
    async fn conditions_that_do_not_hold_leave_the_object() {
        let step = respond(serde_json::json!({"header_absent": "x-version"}));
        let mut object = request(&[("X-Version", "2")], "/orders", "GET");
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Unchanged
        );
        let step =
            respond(serde_json::json!({"header_equals": {"name": "x-version", "value": "1"}}));
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Unchanged
        );
        let step =
            respond(serde_json::json!({"header_equals": {"name": "x-version", "value": "2"}}));
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Responded
        );
    }

    #[tokio::test]
    async fn response_hooks_replace_the_response() {
        let step = respond(serde_json::json!({}));
        let mut object = request(&[], "/", "GET");
        object.response = Some(pb::ResponseObject {
            status_code: 200,
            raw_body: b"upstream".to_vec().into(),
            multivalue_headers: vec![pb::Header {
                key: "Set-Cookie".into(),
                values: vec!["a".into()],
            }],
            ..Default::default()
        });
        run_step(&step, &mut object, &cx(pb::HookType::Response)).await;
        let response = object.response.unwrap();
        assert_eq!(response.status_code, 418);
        assert_eq!(&response.raw_body[..], b"teapot");
        assert_eq!(response.multivalue_headers.len(), 1);
        assert_eq!(response.multivalue_headers[0].key, "Content-Type");
    }
}
