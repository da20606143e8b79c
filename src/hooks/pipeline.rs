//! Running one hook's steps: in order, within the hook's deadline, with panics caught, each step
//! measured and traced; failures answered by the hook's `on_error` policy, and dry runs reported
//! but not applied.

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock},
    task::Poll,
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use prost::Message;

use bytes::Bytes;
use futures_util::FutureExt;

use super::{
    config::{HookConfig, OnError},
    edit,
    parts::ObjectParts,
    step::{Step, StepContext, StepOutcome},
    steps::StepRegistry,
};
use crate::{
    config::Problem,
    metrics::{Metrics, Outcome, STEP_OUTCOMES, StepCounters},
    pb::{self, HookType},
    telemetry::{CallSpan, Traces, in_step},
};

/// Why a pipeline failed (in the order of `metrics::FAILURE_REASONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Past the deadline.
    Deadline,
    /// A step panicked.
    Panic,
    /// A step reported an error.
    StepError,
}

impl Failure {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Panic => "panic",
            Self::StepError => "error",
        }
    }
}

/// A hook's pipeline, ready to run.
#[derive(Debug)]
pub struct Pipeline {
    /// The hook name.
    pub name: Arc<str>,
    /// The hook type.
    pub hook_type: HookType,
    steps: Vec<Arc<dyn Step>>,
    deadline: Duration,
    on_error: OnError,
    dry_run: bool,
    /// What the steps (and a fail-closed answer) read or change: all that is decoded.
    parts: ObjectParts,
    counters: OnceLock<PipelineCounters>,
}

/// Metric handles of one pipeline, made on its first run.
#[derive(Debug)]
struct PipelineCounters {
    steps: Vec<StepCounters>,
    failures: [Counter; 3],
}

/// What a pipeline answered.
#[derive(Debug)]
pub struct Answer {
    /// The reply, or `None` for the request's own bytes.
    pub reply: Option<Bytes>,
    /// The outcome label of the call.
    pub outcome: Outcome,
    /// `return_overrides.response_code` when the answer set one.
    pub response_code: Option<i32>,
}

impl Pipeline {
    /// Builds the steps of `config`.
    ///
    /// # Errors
    /// One problem per step that cannot be built, keyed within the hook (`steps[1]`,
    /// `deadline_ms`); [`HookTable::build`](super::HookTable::build) puts `hooks[i].` before.
    pub fn build(config: &HookConfig, registry: &StepRegistry) -> Result<Self, Vec<Problem>> {
        let hook_type = HookType::from(config.hook_type);
        let mut steps = Vec::new();
        let mut problems = Vec::new();
        for (i, step) in config.steps.iter().enumerate() {
            match registry.build(step, hook_type) {
                Ok(step) => steps.push(step),
                Err(err) => problems.push(Problem::new(format!("steps[{i}]"), err)),
            }
        }
        if config.deadline_ms == 0 {
            problems.push(Problem::new("deadline_ms", "must be above 0"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let fail_closed_parts = match hook_type {
            HookType::Response => ObjectParts::RESPONSE,
            _ => ObjectParts::RETURN_OVERRIDES,
        };
        let parts = steps
            .iter()
            .fold(fail_closed_parts, |parts, step| parts.union(step.parts()));
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            hook_type,
            steps,
            deadline: Duration::from_millis(config.deadline_ms),
            on_error: config.on_error,
            dry_run: config.dry_run,
            parts,
            counters: OnceLock::new(),
        })
    }

    /// The bytes the steps' parts are decoded from: `original` itself when they need all of
    /// it, else a copy of just those fields.
    ///
    /// # Errors
    /// When `original` is not a valid Object, with the reason.
    pub fn select(&self, original: &Bytes) -> Result<Bytes, String> {
        if self.parts.is_all() {
            return Ok(original.clone());
        }
        let mut selected = Vec::with_capacity(64);
        self.parts
            .select(original, &mut selected)
            .map_err(|err| err.to_string())?;
        Ok(selected.into())
    }

    /// The parts of `original` (an encoded Object) that the steps work on, decoded.
    ///
    /// # Errors
    /// When `original` is not a valid Object, with the reason.
    pub fn decode(&self, original: &Bytes) -> Result<pb::Object, String> {
        decode_selected(self.select(original)?)
    }

    /// Runs the steps on `object` (decoded from `original` by [`Pipeline::decode`]).
    pub async fn run(
        &self,
        original: &Bytes,
        object: pb::Object,
        cx: &StepContext,
        metrics: &Metrics,
        traces: &Traces,
        span: &CallSpan,
    ) -> Answer {
        let counters = self.counters(metrics);
        let before = object.clone();
        let mut object = object;
        let mut outcome = Outcome::Unchanged;
        let run = async {
            for (index, step) in self.steps.iter().enumerate() {
                let step_span = traces.start_child(span, step.kind());
                let result = AssertUnwindSafe(in_step(&step_span, step.run(&mut object, cx)))
                    .catch_unwind()
                    .await;
                let result = match result {
                    Ok(result) => result.map_err(|err| (Failure::StepError, err.0)),
                    Err(panic) => Err((Failure::Panic, panic_message(&panic))),
                };
                match result {
                    Ok(step_outcome) => {
                        let label = step_outcome.label();
                        if let Some(i) = STEP_OUTCOMES.iter().position(|o| *o == label) {
                            counters.steps[index].runs[i].inc();
                        }
                        match step_outcome {
                            StepOutcome::Allowed => {
                                if let Some(auth) = &counters.steps[index].auth {
                                    auth[0].inc();
                                }
                            }
                            StepOutcome::Denied => {
                                if let Some(auth) = &counters.steps[index].auth {
                                    auth[1].inc();
                                }
                            }
                            _ => {}
                        }
                        step_span.end_step(label);
                        match step_outcome {
                            StepOutcome::Modified | StepOutcome::Allowed
                                if outcome == Outcome::Unchanged =>
                            {
                                outcome = Outcome::Modified;
                            }
                            StepOutcome::Responded | StepOutcome::Denied => {
                                outcome = Outcome::Responded;
                                break;
                            }
                            _ => {}
                        }
                    }
                    Err((failure, message)) => {
                        counters.steps[index].runs[3].inc();
                        step_span.end_step("failed");
                        return Err((failure, message));
                    }
                }
            }
            Ok(())
        };
        let started = tokio::time::Instant::now();
        // Most pipelines never wait (the built-in steps are synchronous): they finish on the
        // first poll without arming a timer. A step that waits gets the rest of the deadline.
        let result = {
            let mut run = std::pin::pin!(run);
            match futures_util::poll!(run.as_mut()) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    match tokio::time::timeout_at(started + self.deadline, run).await {
                        Ok(result) => result,
                        Err(_) => Err((
                            Failure::Deadline,
                            format!("steps took longer than {:?}", self.deadline),
                        )),
                    }
                }
            }
        };
        match result {
            Ok(()) if self.dry_run => {
                let changed = before != object;
                tracing::info!(hook_name = %self.name, would_change = changed, would_answer = ?outcome, "dry run: original Object sent back");
                Answer {
                    reply: None,
                    outcome: Outcome::Unchanged,
                    response_code: None,
                }
            }
            Ok(()) => self.answer(original, &before, object, outcome),
            Err((failure, message)) => {
                counters.failures[failure as usize].inc();
                // A step's message may quote what the request sent: cut like any request string.
                tracing::warn!(hook_name = %self.name, reason = failure.label(), error = &*crate::bounds::log(&message), on_error = ?self.on_error, "hook failed");
                match self.on_error {
                    OnError::FailOpen => Answer {
                        reply: None,
                        outcome: Outcome::Failed,
                        response_code: None,
                    },
                    OnError::FailClosed => {
                        let mut failed = before.clone();
                        fail_closed(&mut failed, self.hook_type);
                        let mut answer = self.answer(original, &before, failed, Outcome::Failed);
                        answer.outcome = Outcome::Failed;
                        answer
                    }
                }
            }
        }
    }

    /// The pipeline's metric series, created with zero values the first time (when the config is
    /// loaded, so a first failure is seen by `rate()`).
    fn counters(&self, metrics: &Metrics) -> &PipelineCounters {
        self.counters.get_or_init(|| PipelineCounters {
            steps: self
                .steps
                .iter()
                .map(|s| metrics.step_counters(&self.name, s.kind(), s.authenticates()))
                .collect(),
            failures: metrics.hook_failure_counters(&self.name),
        })
    }

    /// Creates the pipeline's series now.
    pub fn prepare_metrics(&self, metrics: &Metrics) {
        self.counters(metrics);
        metrics.hook(
            self.hook_type as i32,
            self.hook_type.as_str_name(),
            &self.name,
        );
    }

    fn answer(
        &self,
        original: &Bytes,
        before: &pb::Object,
        after: pb::Object,
        outcome: Outcome,
    ) -> Answer {
        let response_code = after
            .request
            .as_ref()
            .and_then(|r| r.return_overrides.as_ref())
            .map(|o| o.response_code)
            .filter(|code| *code > 0 && self.hook_type != HookType::Response);
        match edit::reply_bytes(original, before, after) {
            Ok(reply) => Answer {
                outcome: if reply.is_none() {
                    Outcome::Unchanged
                } else {
                    outcome
                },
                reply,
                response_code,
            },
            // The original was scanned before: it is well framed.
            Err(err) => {
                tracing::error!(error = %err, "could not edit the Object; sent back unchanged");
                Answer {
                    reply: None,
                    outcome: Outcome::Failed,
                    response_code: None,
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a step panicked".to_string())
}

/// The short body of a fail-closed answer.
const FAILED_BODY: &str = "{\"error\":\"plugin unavailable\"}";

/// Writes the `fail_closed` answer for `hook_type` into `object`: 503 on request hooks, 403 on
/// CustomKeyCheck (through `return_overrides`, raw), 502 with a short body on Response hooks.
pub fn fail_closed(object: &mut pb::Object, hook_type: HookType) {
    let headers: BTreeMap<String, String> =
        [("Content-Type".to_string(), "application/json".to_string())].into();
    match hook_type {
        HookType::Response => super::steps::replace_response(object, 502, FAILED_BODY, &headers),
        HookType::CustomKeyCheck => {
            super::steps::respond_to_request(object, 403, FAILED_BODY, &headers, true)
        }
        _ => super::steps::respond_to_request(object, 503, FAILED_BODY, &headers, true),
    }
}

/// An Object decoded from [`Pipeline::select`]'s bytes (bytes fields share them; strings and
/// maps are copies).
///
/// # Errors
/// When `selected` is not a valid Object, with the reason.
pub fn decode_selected(selected: Bytes) -> Result<pb::Object, String> {
    pb::Object::decode(selected).map_err(|err| err.to_string())
}
