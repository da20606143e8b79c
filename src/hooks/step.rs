//! The plugin-step API: what a step is given and what it reports. Built-in steps and custom ones
//! registered on the server builder implement the same trait.

use std::sync::Arc;

use super::parts::ObjectParts;
use crate::pb::{self, HookType};

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Looked, changed nothing.
    Unchanged,
    /// Changed the Object; the next step runs.
    Modified,
    /// Ended the request with its own answer; no further step runs.
    Responded,
    /// Authentication accepted (the Object now carries a session); the next step runs.
    Allowed,
    /// Authentication refused (the Object carries the refusal); no further step runs.
    Denied,
}

impl StepOutcome {
    /// The `outcome` label of step metrics and spans.
    pub fn label(self) -> &'static str {
        crate::metrics::StepRun::from(self).as_str()
    }

    /// Whether the pipeline stops after this step.
    pub fn stops(self) -> bool {
        matches!(self, Self::Responded | Self::Denied)
    }
}

/// A step could not do its work; the hook's `on_error` policy answers instead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    /// An error with this message (which must not contain secrets).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// What a step knows about the call besides the Object.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The hook type of the call.
    pub hook_type: HookType,
    /// The hook's name.
    pub hook_name: Arc<str>,
    /// `spec["APIID"]`.
    pub api_id: String,
    /// `spec["OrgID"]`.
    pub org_id: String,
    /// The API's `config_data`, parsed once per distinct value (shared across calls).
    pub config_data: Option<Arc<serde_json::Value>>,
}

impl StepContext {
    /// Whether this is one of the request hooks (everything but Response).
    pub fn is_request_hook(&self) -> bool {
        self.hook_type != HookType::Response
    }
}

/// One step of a hook's pipeline.
#[async_trait::async_trait]
pub trait Step: Send + Sync + std::fmt::Debug + 'static {
    /// The step's kind, as configured (`set_headers`, `api_key_auth`, …).
    fn kind(&self) -> &str;

    /// Whether the step makes authentication decisions ([`StepOutcome::Allowed`] /
    /// [`StepOutcome::Denied`]); such steps get decision metrics.
    fn authenticates(&self) -> bool {
        false
    }

    /// The parts of the Object this step reads or changes. The server decodes only the parts
    /// of a hook's steps; the others arrive empty, and are sent back as they came unless a step
    /// writes to them, so list everything the step changes too (writing to a map that was not
    /// decoded replaces the whole map). Every part unless the step says otherwise.
    fn parts(&self) -> ObjectParts {
        ObjectParts::ALL
    }

    /// Runs on `object`, changing it in place.
    ///
    /// # Errors
    /// A [`StepError`] when the step cannot do its work; the hook's `on_error` decides the answer.
    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError>;
}
