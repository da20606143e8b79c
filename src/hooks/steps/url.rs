//! URL-path and method steps.

use serde::Deserialize;

use super::settings;
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
struct RewriteSettings {
    pattern: String,
    replacement: String,
}

/// `rewrite_url`: `pattern = "^/v1/(.*)"`, `replacement = "/v2/$1"`, applied to the path only.
/// A query in the replacement is refused: the gateway reverts queries written into the URL (use
/// `add_params`/`delete_params`).
#[derive(Debug)]
pub struct RewriteUrl {
    pattern: regex::Regex,
    replacement: String,
}

impl RewriteUrl {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let RewriteSettings {
            pattern,
            replacement,
        } = settings(config)?;
        if replacement.contains('?') {
            return Err(BuildError::at(
                "replacement",
                format!(
                    "{replacement:?} holds a query, which the gateway reverts: use add_params / delete_params"
                ),
            ));
        }
        if !replacement.starts_with('/') {
            return Err(BuildError::at(
                "replacement",
                format!("{replacement:?} must be a path starting with /"),
            ));
        }
        let pattern =
            regex::Regex::new(&pattern).map_err(|err| format!("bad pattern {pattern:?}: {err}"))?;
        Ok(Self {
            pattern,
            replacement,
        })
    }
}

#[async_trait::async_trait]
impl Step for RewriteUrl {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_URL
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        let (path, query) = match request.url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (request.url.as_str(), None),
        };
        if !self.pattern.is_match(path) {
            return Ok(StepOutcome::Unchanged);
        }
        let mut url = self
            .pattern
            .replace(path, self.replacement.as_str())
            .into_owned();
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        request.url = url;
        Ok(StepOutcome::Modified)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodSettings {
    method: String,
}

/// `set_method`: `method = "POST"`.
#[derive(Debug)]
pub struct SetMethod {
    method: String,
}

impl SetMethod {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let MethodSettings { method } = settings(config)?;
        let method = method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(BuildError::at(
                "method",
                format!("{method:?} is not an HTTP method"),
            ));
        }
        Ok(Self { method })
    }
}

#[async_trait::async_trait]
impl Step for SetMethod {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_METHOD
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        if request.method == self.method {
            return Ok(StepOutcome::Unchanged);
        }
        request.method = self.method.clone();
        Ok(StepOutcome::Modified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, step_config};

    #[tokio::test]
    async fn the_path_is_rewritten_and_the_query_kept() {
        let step = RewriteUrl::build(&step_config(
            "rewrite_url",
            serde_json::json!({"pattern": "^/v1/(.*)", "replacement": "/v2/$1"}),
        ))
        .unwrap();
        let mut object = pb::Object {
            request: Some(pb::MiniRequestObject {
                url: "/v1/items?id=7".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Modified
        );
        assert_eq!(object.request.as_ref().unwrap().url, "/v2/items?id=7");
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Unchanged
        );
    }

    #[test]
    fn queries_and_bad_patterns_are_refused() {
        let err = RewriteUrl::build(&step_config(
            "rewrite_url",
            serde_json::json!({"pattern": "^/a", "replacement": "/b?x=1"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("add_params"), "{err}");
        let err = RewriteUrl::build(&step_config(
            "rewrite_url",
            serde_json::json!({"pattern": "(", "replacement": "/b"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad pattern \"(\""), "{err}");
        assert!(
            SetMethod::build(&step_config(
                "set_method",
                serde_json::json!({"method": "G T"})
            ))
            .is_err()
        );
    }

    #[tokio::test]
    async fn the_method_is_set() {
        let step = SetMethod::build(&step_config(
            "set_method",
            serde_json::json!({"method": "post"}),
        ))
        .unwrap();
        let mut object = pb::Object::default();
        run_step(&step, &mut object, &cx(pb::HookType::Post)).await;
        assert_eq!(object.request.unwrap().method, "POST");
    }
}
