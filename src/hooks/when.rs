//! A step's `when`: the step runs only when it holds. Either a CEL expression
//! (`when = "request.headers['X-Tier'] == 'gold'"`) or structured conditions
//! (`when = { header_absent = "X-Api-Version", path_prefix = "/orders" }`), all of which must hold.

use serde::Deserialize;

use super::{
    cel::{Expression, Input, Scope},
    parts::ObjectParts,
    step::{BuildError, StepContext, StepError},
    steps::{request_header, setting},
};
use crate::pb;

/// Structured conditions; every one given must hold.
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

/// A step's condition.
#[derive(Debug)]
pub enum When {
    /// A CEL expression that must evaluate to `true`.
    Cel(Expression),
    /// Structured conditions on the request.
    Conditions(Conditions),
}

impl When {
    /// Builds the `when` setting `value`, if the step has one, compiled in `scope`.
    ///
    /// # Errors
    /// A problem at `when`: an expression that does not compile, unknown conditions.
    pub fn build(
        value: Option<&serde_json::Value>,
        scope: Scope,
    ) -> Result<Option<Self>, BuildError> {
        let Some(value) = value else {
            return Ok(None);
        };
        match value {
            serde_json::Value::String(source) => Expression::compile(source, scope)
                .map(|e| Some(Self::Cel(e)))
                .map_err(|err| BuildError::at("when", err.to_string())),
            _ => setting(value.clone(), "when").map(|c| Some(Self::Conditions(c))),
        }
    }

    /// The Object parts it reads.
    pub fn parts(&self) -> ObjectParts {
        match self {
            Self::Cel(expression) => expression.parts(),
            Self::Conditions(_) => ObjectParts::REQUEST_HEADERS
                .union(ObjectParts::REQUEST_URL)
                .union(ObjectParts::REQUEST_METHOD),
        }
    }

    /// Whether it holds for `object`.
    ///
    /// # Errors
    /// The expression failed (the hook's `on_error` answers).
    pub fn holds(&self, object: &pb::Object, cx: &StepContext) -> Result<bool, StepError> {
        match self {
            Self::Conditions(conditions) => Ok(conditions.holds(object.request.as_ref())),
            Self::Cel(expression) => expression
                .holds(&Input::new(object, cx, expression.variables()))
                .map_err(|err| StepError::new(format!("when: {err}"))),
        }
    }
}
