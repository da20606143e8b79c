//! `delay` (every hook): waits a fixed time, changing nothing. Fault injection: it shows what a
//! slow plugin does to the gateway's requests, and proves a hook's `deadline_ms` and `on_error`
//! before a real slow step does.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "delay"
//! ms = 300
//! ```

use std::time::Duration;

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

/// Longest delay accepted: a minute is already far past any sane hook deadline.
const MAX_DELAY_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySettings {
    ms: u64,
}

/// `delay`: `ms = N`.
#[derive(Debug)]
pub struct Delay {
    delay: Duration,
}

impl Delay {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let DelaySettings { ms } = settings(config)?;
        if ms == 0 || ms > MAX_DELAY_MS {
            return Err(BuildError::at(
                "ms",
                format!("{ms} must be between 1 and {MAX_DELAY_MS}"),
            ));
        }
        Ok(Self {
            delay: Duration::from_millis(ms),
        })
    }
}

#[async_trait::async_trait]
impl Step for Delay {
    fn parts(&self) -> ObjectParts {
        ObjectParts::NONE
    }

    async fn run(
        &self,
        _object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        tokio::time::sleep(self.delay).await;
        Ok(StepOutcome::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, step_config};

    #[test]
    fn delays_out_of_range_are_refused() {
        for ms in [0, MAX_DELAY_MS + 1] {
            let err = Delay::build(&step_config("delay", serde_json::json!({ "ms": ms })))
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("ms: {ms} must be between 1 and 60000"));
        }
    }

    #[tokio::test]
    async fn waits_the_configured_time_and_changes_nothing() {
        let step = Delay::build(&step_config("delay", serde_json::json!({"ms": 30}))).unwrap();
        let mut object = pb::Object::default();
        let started = tokio::time::Instant::now();
        let outcome = step.run(&mut object, &cx(pb::HookType::Pre)).await.unwrap();
        assert_eq!(outcome, StepOutcome::Unchanged);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(object, pb::Object::default());
    }
}
