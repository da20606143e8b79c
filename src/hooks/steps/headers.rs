//! Header steps. Request headers change through `set_headers`/`delete_headers`, which is what the
//! gateway applies (the `headers` map it sends is read-only). Response headers are written to
//! both `headers` and `multivalue_headers`, which the gateway rebuilds the response from, so
//! multi-value headers such as Set-Cookie survive.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{delete_entries, response_of, set_entries, settings};
use crate::{
    hooks::{
        config::StepConfig,
        parts::ObjectParts,
        step::{Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

/// Go's canonical form of a header name (`content-type` → `Content-Type`), as the gateway uses.
/// Names with characters outside a token are left as they are, as Go does.
pub fn canonical_header_name(name: &str) -> String {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// A request header by name: its Go canonical form first, then any case.
pub fn request_header<'a>(request: &'a pb::MiniRequestObject, name: &str) -> Option<&'a String> {
    request
        .headers
        .get(&canonical_header_name(name))
        .or_else(|| {
            request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
}

fn canonical_map(map: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    if map.is_empty() {
        return Err("needs at least one header".into());
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| (canonical_header_name(&k), v))
        .collect())
}

fn canonical_names(names: Vec<String>) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Err("needs at least one name".into());
    }
    Ok(names.iter().map(|n| canonical_header_name(n)).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderValues {
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderNames {
    names: Vec<String>,
}

/// `set_headers`: `headers = { Name = "value" }`.
#[derive(Debug)]
pub struct SetHeaders {
    headers: BTreeMap<String, String>,
}

impl SetHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, String> {
        let HeaderValues { headers } = settings(config)?;
        Ok(Self {
            headers: canonical_map(headers)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for SetHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_HEADER_EDITS
    }

    fn kind(&self) -> &str {
        "set_headers"
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        set_entries(
            &mut request.set_headers,
            &mut request.delete_headers,
            &self.headers,
        );
        Ok(StepOutcome::Modified)
    }
}

/// `delete_headers`: `names = ["X-Internal"]`.
#[derive(Debug)]
pub struct DeleteHeaders {
    names: Vec<String>,
}

impl DeleteHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, String> {
        let HeaderNames { names } = settings(config)?;
        Ok(Self {
            names: canonical_names(names)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for DeleteHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_HEADER_EDITS
    }

    fn kind(&self) -> &str {
        "delete_headers"
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        delete_entries(
            &mut request.set_headers,
            &mut request.delete_headers,
            &self.names,
        );
        Ok(StepOutcome::Modified)
    }
}

/// Sets `name` to one `value` in both response header views.
pub(crate) fn set_response_header(response: &mut pb::ResponseObject, name: &str, value: &str) {
    response.headers.insert(name.to_string(), value.to_string());
    match response
        .multivalue_headers
        .iter_mut()
        .find(|h| h.key.eq_ignore_ascii_case(name))
    {
        Some(header) => {
            header.key = name.to_string();
            header.values = vec![value.to_string()];
        }
        None => response.multivalue_headers.push(pb::Header {
            key: name.to_string(),
            values: vec![value.to_string()],
        }),
    }
}

/// `set_response_headers`: `headers = { Name = "value" }` (replaces every value of the name).
#[derive(Debug)]
pub struct SetResponseHeaders {
    headers: BTreeMap<String, String>,
}

impl SetResponseHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, String> {
        let HeaderValues { headers } = settings(config)?;
        Ok(Self {
            headers: canonical_map(headers)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for SetResponseHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::RESPONSE
    }

    fn kind(&self) -> &str {
        "set_response_headers"
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let response = response_of(object)?;
        for (name, value) in &self.headers {
            set_response_header(response, name, value);
        }
        Ok(StepOutcome::Modified)
    }
}

/// `delete_response_headers`: `names = ["Server"]`.
#[derive(Debug)]
pub struct DeleteResponseHeaders {
    names: Vec<String>,
}

impl DeleteResponseHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, String> {
        let HeaderNames { names } = settings(config)?;
        Ok(Self {
            names: canonical_names(names)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for DeleteResponseHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::RESPONSE
    }

    fn kind(&self) -> &str {
        "delete_response_headers"
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let response = response_of(object)?;
        let before = response.multivalue_headers.len() + response.headers.len();
        response
            .headers
            .retain(|name, _| !self.names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        response
            .multivalue_headers
            .retain(|h| !self.names.iter().any(|n| n.eq_ignore_ascii_case(&h.key)));
        Ok(
            if before == response.multivalue_headers.len() + response.headers.len() {
                StepOutcome::Unchanged
            } else {
                StepOutcome::Modified
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, step_config};

    #[test]
    fn canonical_names_follow_go() {
        for (name, canonical) in [
            ("content-type", "Content-Type"),
            ("X-API-KEY", "X-Api-Key"),
            ("set-cookie", "Set-Cookie"),
            ("x_under", "X_under"),
            ("bad name", "bad name"),
        ] {
            assert_eq!(canonical_header_name(name), canonical);
        }
    }

    #[tokio::test]
    async fn request_header_steps_go_through_set_and_delete_lists() {
        let mut object = pb::Object::default();
        let set = SetHeaders::build(&step_config(
            "set_headers",
            serde_json::json!({"headers": {"x-team": "payments"}}),
        ))
        .unwrap();
        let delete = DeleteHeaders::build(&step_config(
            "delete_headers",
            serde_json::json!({"names": ["x-internal"]}),
        ))
        .unwrap();
        assert_eq!(
            run_step(&set, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Modified
        );
        assert_eq!(
            run_step(&delete, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Modified
        );
        let request = object.request.unwrap();
        assert_eq!(
            request.set_headers.get("X-Team").map(String::as_str),
            Some("payments")
        );
        assert_eq!(request.delete_headers, vec!["X-Internal".to_string()]);
        assert!(
            request.headers.is_empty(),
            "the read-only map is left alone"
        );
    }

    #[tokio::test]
    async fn response_header_steps_keep_multi_values_of_other_names() {
        let mut object = pb::Object {
            response: Some(pb::ResponseObject {
                headers: [
                    ("Set-Cookie".to_string(), "a=1".to_string()),
                    ("Server".to_string(), "x".to_string()),
                ]
                .into(),
                multivalue_headers: vec![
                    pb::Header {
                        key: "Set-Cookie".into(),
                        values: vec!["a=1".into(), "b=2".into()],
                    },
                    pb::Header {
                        key: "Server".into(),
                        values: vec!["x".into()],
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let set = SetResponseHeaders::build(&step_config(
            "set_response_headers",
            serde_json::json!({"headers": {"x-frame-options": "DENY"}}),
        ))
        .unwrap();
        let delete = DeleteResponseHeaders::build(&step_config(
            "delete_response_headers",
            serde_json::json!({"names": ["server"]}),
        ))
        .unwrap();
        run_step(&set, &mut object, &cx(pb::HookType::Response)).await;
        run_step(&delete, &mut object, &cx(pb::HookType::Response)).await;
        let response = object.response.unwrap();
        assert_eq!(
            response.headers.get("X-Frame-Options").map(String::as_str),
            Some("DENY")
        );
        assert!(!response.headers.contains_key("Server"));
        let cookies = response
            .multivalue_headers
            .iter()
            .find(|h| h.key == "Set-Cookie")
            .unwrap();
        assert_eq!(cookies.values, vec!["a=1", "b=2"]);
        assert!(
            response
                .multivalue_headers
                .iter()
                .all(|h| h.key != "Server")
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(
            SetHeaders::build(&step_config(
                "set_headers",
                serde_json::json!({"headers": {}})
            ))
            .is_err()
        );
        let err = SetHeaders::build(&step_config(
            "set_headers",
            serde_json::json!({"header": {"a": "b"}}),
        ))
        .unwrap_err();
        assert!(err.contains("unknown field `header`"), "{err}");
    }
}
