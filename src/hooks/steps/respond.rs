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

use super::{canonical_header_name, headers::set_response_header, settings};
use crate::{
    hooks::{
        cel::{ComputedMap, Input, Scope, Template, TemplateSetting, Variables},
        config::StepConfig,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

fn default_override_error() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RespondSettings {
    status: u16,
    #[serde(default)]
    body: Option<TemplateSetting>,
    #[serde(default)]
    headers: BTreeMap<String, TemplateSetting>,
    #[serde(default = "default_override_error")]
    override_error: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Respond {
    answer: Answer,
}

/// An answer a step ends the request with: a status, a body and headers (either may be
/// computed).
#[derive(Debug)]
pub(super) struct Answer {
    status: u16,
    body: Template,
    headers: ComputedMap,
    override_error: bool,
}

/// What replaces parts of an [`Answer`] for one call.
#[derive(Debug)]
pub(super) struct AnswerOverride<'a> {
    pub status: Option<u16>,
    pub body: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
}

impl Default for AnswerOverride<'_> {
    fn default() -> Self {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        Self {
            status: None,
            body: None,
            headers: &NONE,
        }
    }
}

impl Answer {
    /// Builds `settings`, reporting problems under `setting` (`""` for the step itself).
    pub(super) fn build(
        settings: RespondSettings,
        scope: Scope,
        setting: &str,
    ) -> Result<Self, BuildError> {
        let at = |name: &str| format!("{setting}{name}");
        if !(100..=599).contains(&settings.status) {
            return Err(BuildError::at(
                at("status"),
                format!("{} is not an HTTP status", settings.status),
            ));
        }
        let body = settings
            .body
            .unwrap_or(TemplateSetting::Literal(String::new()));
        Ok(Self {
            status: settings.status,
            body: Template::build(body, scope)
                .map_err(|err| BuildError::at(at("body"), err.to_string()))?,
            headers: ComputedMap::build(
                settings.headers,
                scope,
                &at("headers"),
                canonical_header_name,
            )?,
            override_error: settings.override_error,
        })
    }

    /// The variables its computed parts read.
    pub(super) fn variables(&self) -> Variables {
        self.headers.variables().union(self.body.variables())
    }

    /// Ends the request (or replaces the response) with this answer.
    pub(super) fn give(&self, object: &mut pb::Object, cx: &StepContext) -> Result<(), StepError> {
        self.give_overridden(object, cx, &AnswerOverride::default())
    }

    /// Ends the request with this answer, its status and body replaced and headers added where
    /// `by` says (a policy service's decision).
    pub(super) fn give_overridden(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
        by: &AnswerOverride<'_>,
    ) -> Result<(), StepError> {
        let failed = |err: crate::hooks::cel::EvalError| StepError::new(err.to_string());
        let (body, headers) = {
            let input = Input::new(object, cx, self.variables());
            let body = match by.body {
                Some(body) => body.to_string(),
                None => self.body.render(&input).map_err(failed)?.into_owned(),
            };
            let mut headers = self.headers.render(&input).map_err(failed)?.into_owned();
            headers.extend(by.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            (body, headers)
        };
        let status = by.status.unwrap_or(self.status);
        if cx.is_request_hook() {
            respond_to_request(object, status, &body, &headers, self.override_error);
        } else {
            replace_response(object, status, &body, &headers);
        }
        Ok(())
    }
}

impl Respond {
    pub(super) fn build(config: &StepConfig, scope: Scope) -> Result<Self, BuildError> {
        let settings: RespondSettings = settings(config)?;
        Ok(Self {
            answer: Answer::build(settings, scope, "")?,
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
        self.answer.give(object, cx)?;
        Ok(StepOutcome::Responded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, scope, step_config};

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

    fn respond() -> Respond {
        Respond::build(
            &step_config(
                "respond",
                serde_json::json!({"status": 418, "body": "teapot", "headers": {"content-type": "text/plain"}}),
            ),
            scope(pb::HookType::Pre),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn bodies_and_headers_may_be_computed() {
        let step = Respond::build(
            &step_config(
                "respond",
                serde_json::json!({"status": 400, "body": {"cel": "'no ' + request.method"}, "headers": {"x-path": {"cel": "request.path"}}}),
            ),
            scope(pb::HookType::Pre),
        )
        .unwrap();
        let mut object = request(&[], "/orders/1?x=1", "DELETE");
        run_step(&step, &mut object, &cx(pb::HookType::Pre)).await;
        let overrides = object.request.unwrap().return_overrides.unwrap();
        assert_eq!(overrides.response_body, "no DELETE");
        assert_eq!(
            overrides.headers.get("X-Path").map(String::as_str),
            Some("/orders/1")
        );
    }

    #[tokio::test]
    async fn request_hooks_answer_through_return_overrides() {
        let step = respond();
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
    async fn response_hooks_replace_the_response() {
        let step = respond();
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
