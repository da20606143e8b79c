//! The plugin-step API: what a step is given and what it reports. Built-in steps and custom ones
//! registered on the server builder implement the same trait.

use std::sync::Arc;

use super::{parts::ObjectParts, recorded::Recorded};
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

/// The boxed cause of a [`StepError`] or [`BuildError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A step could not do its work; the hook's `on_error` policy answers instead. The message (and
/// its cause's) is logged with the hook's name: it must not hold secrets.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    message: String,
    #[source]
    cause: Option<Cause>,
}

impl StepError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: None,
        }
    }

    /// An error with this message, caused by `cause` (say, an I/O or HTTP error).
    pub fn with_cause(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self {
            message: message.into(),
            cause: Some(cause.into()),
        }
    }

    /// The message, without its cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A step cannot be built from its settings. It is reported as a config problem under the
/// step's key (`hooks[2].steps[1]`), followed by the setting at fault when there is one
/// (`hooks[2].steps[1].headers.X-Id`). Shown alone, it reads `headers.X-Id: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", setting.as_deref().map(|s| format!("{s}: ")).unwrap_or_default())]
#[non_exhaustive]
pub struct BuildError {
    /// The setting at fault, as a path below the step (`headers.X-Id`), when there is one.
    pub setting: Option<String>,
    /// What is wrong, naming the value.
    pub message: String,
    #[source]
    cause: Option<Cause>,
}

impl BuildError {
    /// A problem with the step as a whole (a missing setting, settings that contradict).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            setting: None,
            message: message.into(),
            cause: None,
        }
    }

    /// A problem with one setting, at `setting` (a path below the step: `headers.X-Id`).
    pub fn at(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: Some(setting.into()),
            message: message.into(),
            cause: None,
        }
    }

    /// The same problem, caused by `cause` (say, the error of reading a file it names).
    #[must_use]
    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for BuildError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// What a step knows about the call besides the Object. Fields may be added.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// The call's trace context (the gateway's trace when it sent one), for calls a step makes.
    pub trace: Option<opentelemetry::trace::SpanContext>,
    /// In offline runs (`tyk-dispatcher test`, `eval`): the answers network-backed steps take
    /// instead of calling out. `None` when serving.
    pub recorded: Option<Arc<Recorded>>,
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
    /// Whether the step makes authentication decisions ([`StepOutcome::Allowed`] /
    /// [`StepOutcome::Denied`]); such steps get decision metrics.
    fn authenticates(&self) -> bool {
        false
    }

    /// Whether the step calls a service (an OPA server, an HTTP decision service): such steps
    /// are timed (`step_duration_seconds`).
    fn calls_out(&self) -> bool {
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
