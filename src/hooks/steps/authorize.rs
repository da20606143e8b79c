//! `authorize`: allows or denies the request on a CEL expression.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "authorize"
//! allow = "request.headers['X-Tenant-Id'] == session.metadata.tenant"
//! deny = { status = 403, body = '{"error": "wrong tenant"}' }   # this answer is the default
//! ```
//!
//! On request hooks (after an auth step on CustomKeyCheck, where `session` is what that step
//! made). A denial ends the request with the `deny` answer, whose status, body and headers take
//! the same settings as `respond` (computed ones too). An expression that fails to evaluate
//! follows the hook's `on_error`.

use serde::Deserialize;

use super::{
    respond::{Answer, RespondSettings},
    setting, settings,
};
use crate::{
    hooks::{
        cel::{Expression, Input, Scope},
        config::StepConfig,
        parts::ObjectParts,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeSettings {
    allow: String,
    #[serde(default)]
    deny: Option<serde_json::Value>,
}

/// The answer to a denial unless `deny` says otherwise.
fn default_deny() -> serde_json::Value {
    serde_json::json!({
        "status": 403,
        "body": "{\"error\":\"forbidden\"}",
        "headers": {"Content-Type": "application/json"},
    })
}

/// See the module docs.
#[derive(Debug)]
pub struct Authorize {
    allow: Expression,
    deny: Answer,
}

impl Authorize {
    pub(super) fn build(config: &StepConfig, scope: Scope) -> Result<Self, BuildError> {
        let AuthorizeSettings { allow, deny } = settings(config)?;
        let allow = Expression::compile(&allow, scope)
            .map_err(|err| BuildError::at("allow", err.to_string()))?;
        let deny = deny_answer(deny, scope)?;
        Ok(Self { allow, deny })
    }
}

/// The `deny` setting (or the default) as an answer, its problems reported under `deny.`.
pub(super) fn deny_answer(
    deny: Option<serde_json::Value>,
    scope: Scope,
) -> Result<Answer, BuildError> {
    let deny: RespondSettings = setting(deny.unwrap_or_else(default_deny), "deny")?;
    Answer::build(deny, scope, "deny.")
}

#[async_trait::async_trait]
impl Step for Authorize {
    fn authenticates(&self) -> bool {
        true
    }

    fn parts(&self) -> ObjectParts {
        // The denial writes return_overrides; what the expressions read is decoded for them.
        ObjectParts::RETURN_OVERRIDES
            .union(self.allow.parts())
            .union(self.deny.variables().parts())
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let allowed = self
            .allow
            .holds(&Input::new(object, cx, self.allow.variables()))
            .map_err(|err| StepError::new(format!("allow: {err}")))?;
        if allowed {
            return Ok(StepOutcome::Allowed);
        }
        self.deny.give(object, cx)?;
        Ok(StepOutcome::Denied)
    }
}
