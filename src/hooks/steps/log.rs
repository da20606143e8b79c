//! `log`: the seed's echo of the Object, as canonical JSON with secrets redacted, per hook.

use serde::Deserialize;

use super::settings;
use crate::{
    hooks::{
        config::StepConfig,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    object_log, pb,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSettings {}

/// See the module docs.
#[derive(Debug)]
pub struct Log;

impl Log {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let LogSettings {} = settings(config)?;
        Ok(Self)
    }
}

#[async_trait::async_trait]
impl Step for Log {
    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let json = object_log::render_object(object);
        tracing::info!(hook_name = %cx.hook_name, object = %json, "object");
        Ok(StepOutcome::Unchanged)
    }
}
