//! `config_data_headers` (request hooks): request headers whose values come from the API's
//! `config_data`, so one hook serves many APIs with per-API values (a team name, an upstream
//! tenant, a feature flag) kept in the API definition rather than in the dispatcher's config.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "config_data_headers"
//! headers = { X-Team = "/team", X-Tier = "/limits/tier" }   # JSON pointers into config_data
//! ```
//!
//! Strings are sent as they are, numbers and booleans in their JSON text; a pointer that finds
//! nothing, `null`, an object or an array sets no header (the API may simply not define it).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{canonical_header_name, set_entries, settings};
use crate::{
    hooks::{
        config::StepConfig,
        parts::ObjectParts,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDataSettings {
    headers: BTreeMap<String, String>,
}

/// `config_data_headers`: `headers = { Name = "/json/pointer" }`.
#[derive(Debug)]
pub struct ConfigDataHeaders {
    /// Canonical header name → JSON pointer.
    pointers: Vec<(String, String)>,
}

impl ConfigDataHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let ConfigDataSettings { headers } = settings(config)?;
        if headers.is_empty() {
            return Err("needs at least one header".into());
        }
        let mut pointers = Vec::with_capacity(headers.len());
        for (name, pointer) in headers {
            if !pointer.starts_with('/') {
                return Err(BuildError::at(
                    format!("headers.{name}"),
                    format!(
                        "{pointer:?} is not a JSON pointer (it starts with '/', e.g. \"/team\")"
                    ),
                ));
            }
            pointers.push((canonical_header_name(&name), pointer));
        }
        Ok(Self { pointers })
    }
}

fn header_value(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[async_trait::async_trait]
impl Step for ConfigDataHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_HEADER_EDITS
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let Some(config_data) = cx.config_data.as_deref() else {
            return Ok(StepOutcome::Unchanged);
        };
        let found: BTreeMap<String, String> = self
            .pointers
            .iter()
            .filter_map(|(name, pointer)| {
                let value = header_value(config_data.pointer(pointer)?)?;
                Some((name.clone(), value))
            })
            .collect();
        if found.is_empty() {
            return Ok(StepOutcome::Unchanged);
        }
        let request = object.request.get_or_insert_with(Default::default);
        set_entries(
            &mut request.set_headers,
            &mut request.delete_headers,
            &found,
        );
        Ok(StepOutcome::Modified)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hooks::steps::tests::{cx, step_config};

    fn build(headers: serde_json::Value) -> Result<ConfigDataHeaders, String> {
        ConfigDataHeaders::build(&step_config(
            "config_data_headers",
            serde_json::json!({ "headers": headers }),
        ))
        .map_err(|err| err.to_string())
    }

    #[test]
    fn pointers_must_be_json_pointers() {
        let err = build(serde_json::json!({"x-team": "team"})).unwrap_err();
        assert_eq!(
            err,
            "headers.x-team: \"team\" is not a JSON pointer (it starts with '/', e.g. \"/team\")"
        );
        assert_eq!(
            build(serde_json::json!({})).unwrap_err(),
            "needs at least one header"
        );
    }

    #[tokio::test]
    async fn values_come_from_the_apis_config_data() {
        let step = build(serde_json::json!({
            "x-team": "/team", "X-Tier": "/limits/tier", "X-Beta": "/beta",
            "X-Missing": "/nope", "X-Object": "/limits"
        }))
        .unwrap();
        let mut context = cx(pb::HookType::Pre);
        context.config_data = Some(Arc::new(serde_json::json!({
            "team": "payments", "limits": {"tier": 3}, "beta": true
        })));
        let mut object = pb::Object {
            request: Some(pb::MiniRequestObject {
                delete_headers: vec!["X-Team".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let outcome = step.run(&mut object, &context).await.unwrap();
        assert_eq!(outcome, StepOutcome::Modified);
        let request = object.request.unwrap();
        let expected: BTreeMap<String, String> =
            [("X-Beta", "true"), ("X-Team", "payments"), ("X-Tier", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(request.set_headers, expected);
        assert!(
            request.delete_headers.is_empty(),
            "a set header is not also deleted"
        );
    }

    #[tokio::test]
    async fn an_api_without_config_data_is_left_alone() {
        let step = build(serde_json::json!({"X-Team": "/team"})).unwrap();
        let mut object = pb::Object::default();
        let outcome = step.run(&mut object, &cx(pb::HookType::Pre)).await.unwrap();
        assert_eq!(outcome, StepOutcome::Unchanged);
        assert_eq!(object, pb::Object::default());
    }
}
