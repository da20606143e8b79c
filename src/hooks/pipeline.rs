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

use bytes::Bytes;
use futures_util::FutureExt;

use super::{
    cel::Scope,
    config::{HookConfig, OnError, StepConfig},
    edit,
    parts::ObjectParts,
    route::Answer,
    step::{BuildError, Step, StepContext, StepError, StepOutcome},
    steps::StepRegistry,
    when::When,
};
use crate::{
    call::Outcome,
    config::Problem,
    metrics::{AuthDecision, FailureCounters, Metrics, StepCounters, StepRun},
    pb::{self, HookType},
    telemetry::{CallSpan, in_step},
    wire::WireError,
};

/// Why a pipeline failed; the `reason` label of `hook_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Past the deadline.
    Deadline,
    /// A step panicked.
    Panic,
    /// A step reported an error.
    StepError,
}

impl Failure {
    /// Every reason, in label order.
    pub const ALL: [Self; 3] = [Self::Deadline, Self::Panic, Self::StepError];

    /// The position in [`Failure::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

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
    steps: Vec<KindedStep>,
    deadline: Duration,
    on_error: OnError,
    dry_run: bool,
    /// What the steps (and a fail-closed answer) read or change: all that is decoded.
    parts: ObjectParts,
    counters: OnceLock<PipelineCounters>,
}

/// A built step, the name of its kind (its metrics label and span name) and its condition.
#[derive(Debug)]
struct KindedStep {
    kind: Arc<str>,
    step: Arc<dyn Step>,
    when: Option<When>,
}

/// Metric handles of one pipeline, made on its first run.
#[derive(Debug)]
struct PipelineCounters {
    steps: Vec<StepCounters>,
    failures: FailureCounters,
}

impl Pipeline {
    /// Builds the steps of `config`.
    ///
    /// # Errors
    /// One problem per step that cannot be built, keyed within the hook (`steps[1]`,
    /// `deadline_ms`); [`HookTable::build`](super::HookTable::build) puts `hooks[i].` before.
    pub fn build(config: &HookConfig, registry: &StepRegistry) -> Result<Self, Vec<Problem>> {
        let hook_type = HookType::from(config.hook_type);
        let mut steps: Vec<KindedStep> = Vec::new();
        let mut problems = Vec::new();
        if config.cel_cost_limit == 0 {
            problems.push(Problem::new("cel_cost_limit", "must be above 0"));
        }
        for (i, step) in config.steps.iter().enumerate() {
            let scope = Scope {
                hook_type,
                after_auth: steps.iter().any(|s| s.step.authenticates()),
                cost_limit: config.cel_cost_limit,
            };
            match build_step(step, scope, registry) {
                Ok(built) => steps.push(built),
                Err(err) => {
                    let key = match &err.setting {
                        Some(setting) => format!("steps[{i}].{setting}"),
                        None => format!("steps[{i}]"),
                    };
                    problems.push(Problem::new(key, err.message));
                }
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
        let parts = steps.iter().fold(fail_closed_parts, |parts, s| {
            let when = s.when.as_ref().map_or(ObjectParts::NONE, When::parts);
            parts.union(s.step.parts()).union(when)
        });
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
    pub fn select(&self, original: &Bytes) -> Result<Bytes, WireError> {
        if self.parts.is_all() {
            return Ok(original.clone());
        }
        let mut selected = Vec::with_capacity(64);
        self.parts.select(original, &mut selected)?;
        Ok(selected.into())
    }

    /// Runs the steps on `object` (decoded from what [`Pipeline::select`] chose of
    /// `original`), each in a child span of `span`, counted in `metrics`.
    pub async fn run(
        &self,
        original: &Bytes,
        object: pb::Object,
        cx: &StepContext,
        metrics: &Metrics,
        span: &CallSpan,
    ) -> Answer {
        let counters = self.counters(metrics);
        let before = object.clone();
        let mut object = object;
        let result = self
            .within_deadline(self.run_steps(&mut object, cx, counters, span))
            .await;
        self.conclude(original, &before, object, result, counters)
    }

    /// The steps in order, each measured and traced, until one stops the call or fails: the
    /// call's outcome, or why it failed.
    async fn run_steps(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
        counters: &PipelineCounters,
        span: &CallSpan,
    ) -> Result<Outcome, StepFailure> {
        let mut outcome = Outcome::Unchanged;
        for (KindedStep { kind, step, when }, counters) in self.steps.iter().zip(&counters.steps) {
            let step_span = span.child(kind);
            match when.as_ref().map(|w| w.holds(object, cx)) {
                Some(Ok(false)) => {
                    counters.ran(StepRun::Skipped);
                    step_span.end_step(StepRun::Skipped.as_str());
                    continue;
                }
                Some(Err(err)) => {
                    counters.ran(StepRun::Failed);
                    step_span.end_step(StepRun::Failed.as_str());
                    return Err(StepFailure {
                        reason: Failure::StepError,
                        message: with_causes(&err),
                    });
                }
                Some(Ok(true)) | None => {}
            }
            #[cfg(debug_assertions)]
            let unchanged = (!step.parts().is_all()).then(|| object.clone());
            let started = counters.timed().then(std::time::Instant::now);
            let ran = run_step(step.as_ref(), object, cx, &step_span).await;
            if let Some(started) = started {
                counters.took(started.elapsed());
            }
            match ran {
                Ok(step_outcome) => {
                    #[cfg(debug_assertions)]
                    if let Some(before) = &unchanged {
                        check_declared_parts(kind, step.parts(), before, object);
                    }
                    let run = StepRun::from(step_outcome);
                    counters.ran(run);
                    if let Some(decision) = AuthDecision::of(step_outcome) {
                        counters.decided(decision);
                    }
                    step_span.end_step(run.as_str());
                    outcome = call_outcome(outcome, step_outcome);
                    if step_outcome.stops() {
                        break;
                    }
                }
                Err(failure) => {
                    counters.ran(StepRun::Failed);
                    step_span.end_step(StepRun::Failed.as_str());
                    return Err(failure);
                }
            }
        }
        Ok(outcome)
    }

    /// `run` within the hook's deadline. Most pipelines never wait (the built-in steps are
    /// synchronous): they finish on the first poll without arming a timer. A step that waits
    /// gets the rest of the deadline.
    async fn within_deadline(
        &self,
        run: impl Future<Output = Result<Outcome, StepFailure>>,
    ) -> Result<Outcome, StepFailure> {
        let started = tokio::time::Instant::now();
        let mut run = std::pin::pin!(run);
        if let Poll::Ready(result) = futures_util::poll!(run.as_mut()) {
            return result;
        }
        tokio::time::timeout_at(started + self.deadline, run)
            .await
            .unwrap_or_else(|_| {
                Err(StepFailure {
                    reason: Failure::Deadline,
                    message: format!("steps took longer than {:?}", self.deadline),
                })
            })
    }

    /// The answer to the steps' `result` on `after` (`before` as decoded from `original`): the
    /// edits, nothing in a dry run, or the `on_error` answer to a failure.
    fn conclude(
        &self,
        original: &Bytes,
        before: &pb::Object,
        after: pb::Object,
        result: Result<Outcome, StepFailure>,
        counters: &PipelineCounters,
    ) -> Answer {
        match result {
            Ok(outcome) if self.dry_run => {
                let changed = *before != after;
                tracing::info!(hook_name = %self.name, would_change = changed, would_answer = ?outcome, "dry run: original Object sent back");
                Answer::unchanged(original, Outcome::Unchanged)
            }
            Ok(outcome) => answer_with(original, before, after, outcome, self.hook_type),
            Err(StepFailure { reason, message }) => {
                counters.failures[reason.index()].inc();
                // A step's message may quote what the request sent: cut like any request string.
                tracing::warn!(hook_name = %self.name, reason = reason.label(), error = &*crate::bounds::log(&message), on_error = ?self.on_error, "hook failed");
                match self.on_error {
                    OnError::FailOpen => Answer::unchanged(original, Outcome::Failed),
                    OnError::FailClosed => fail_closed_answer(original, before, self.hook_type),
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
                .map(|s| {
                    metrics.step_counters(
                        &self.name,
                        &s.kind,
                        s.step.authenticates(),
                        s.step.calls_out(),
                    )
                })
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
}

/// The answer for `after`, the steps' work on `before` (decoded from `original`): the original
/// edited where they differ, or the original itself when nothing changed.
fn answer_with(
    original: &Bytes,
    before: &pb::Object,
    after: pb::Object,
    outcome: Outcome,
    hook_type: HookType,
) -> Answer {
    let response_code = after
        .request
        .as_ref()
        .and_then(|r| r.return_overrides.as_ref())
        .map(|o| o.response_code)
        .filter(|code| *code > 0 && hook_type != HookType::Response);
    match edit::reply_bytes(original, before, after) {
        Ok(Some(edited)) => Answer {
            reply: edited,
            outcome,
            response_code,
        },
        Ok(None) => Answer {
            reply: original.clone(),
            outcome: Outcome::Unchanged,
            response_code,
        },
        // The original was scanned before: it is well framed.
        Err(err) => {
            tracing::error!(error = %err, "could not edit the Object; sent back unchanged");
            Answer::unchanged(original, Outcome::Failed)
        }
    }
}

/// The `fail_closed` answer for a call of `hook_type` whose Object is `before` (decoded from
/// `original`): a failed hook's, and an undeclared hook's under `unknown_hooks = fail_closed`.
pub(super) fn fail_closed_answer(
    original: &Bytes,
    before: &pb::Object,
    hook_type: HookType,
) -> Answer {
    let mut failed = before.clone();
    fail_closed(&mut failed, hook_type);
    let mut answer = answer_with(original, before, failed, Outcome::Failed, hook_type);
    answer.outcome = Outcome::Failed;
    answer
}

/// Builds one configured step in `scope`: its kind's step, and its `when`.
fn build_step(
    config: &StepConfig,
    scope: Scope,
    registry: &StepRegistry,
) -> Result<KindedStep, BuildError> {
    let when = When::build(config.settings.get("when"), scope).map_err(|mut err| {
        err.message = format!("step {:?}: {}", config.kind, err.message);
        err
    })?;
    let step = if when.is_some() {
        let mut without = config.clone();
        without.settings.remove("when");
        registry.build_in(&without, scope)?
    } else {
        registry.build_in(config, scope)?
    };
    Ok(KindedStep {
        kind: Arc::from(config.kind.as_str()),
        step,
        when,
    })
}

/// Why a pipeline stopped short: the reason label and what happened.
#[derive(Debug)]
struct StepFailure {
    reason: Failure,
    message: String,
}

/// One step's run, with a panic caught and reported as a failure like an error; the `tracing`
/// spans the step makes are recorded as children of `step_span` (see `telemetry::step_spans`).
async fn run_step(
    step: &dyn Step,
    object: &mut pb::Object,
    cx: &StepContext,
    step_span: &CallSpan,
) -> Result<StepOutcome, StepFailure> {
    match AssertUnwindSafe(in_step(step_span, step.run(object, cx)))
        .catch_unwind()
        .await
    {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(err)) => Err(StepFailure {
            reason: Failure::StepError,
            message: with_causes(&err),
        }),
        Err(panic) => Err(StepFailure {
            reason: Failure::Panic,
            message: panic_message(&panic),
        }),
    }
}

/// The call's outcome so far, after a step that ended `step`: a change makes an unchanged call
/// modified; an answer (or a refusal) makes it responded.
fn call_outcome(so_far: Outcome, step: StepOutcome) -> Outcome {
    match step {
        StepOutcome::Modified | StepOutcome::Allowed if so_far == Outcome::Unchanged => {
            Outcome::Modified
        }
        StepOutcome::Responded | StepOutcome::Denied => Outcome::Responded,
        _ => so_far,
    }
}

/// `err`'s message followed by its causes', as one line.
fn with_causes(err: &StepError) -> String {
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(err) = cause {
        message.push_str(": ");
        message.push_str(&err.to_string());
        cause = err.source();
    }
    message
}

/// In debug builds (a custom step's tests, ours), a step that changed parts of the Object its
/// `parts()` does not declare is a bug: in a hook that decodes only the declared parts, what it
/// wrote would replace what the gateway sent. It panics, naming the step.
#[cfg(debug_assertions)]
fn check_declared_parts(
    kind: &str,
    declared: ObjectParts,
    before: &pb::Object,
    after: &pb::Object,
) {
    use prost::Message;
    let undeclared = declared.complement();
    let select = |object: &pb::Object| {
        // A request made where none came is not a change of its own: what counts is which of
        // its fields were written.
        let mut object = object.clone();
        object.request.get_or_insert_with(Default::default);
        let mut out = Vec::new();
        // Our own encoding: always well framed.
        let _ = undeclared.select(&object.encode_to_vec(), &mut out);
        out
    };
    assert!(
        select(before) == select(after),
        "step {kind:?} changed parts of the Object its parts() does not declare ({declared:?})"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_request_edit(object: &mut pb::Object) {
        object
            .request
            .get_or_insert_with(Default::default)
            .set_headers
            .insert("X-A".into(), "1".into());
    }

    #[test]
    fn a_change_inside_the_declared_parts_passes_the_check() {
        let before = pb::Object::default();
        let mut after = before.clone();
        with_request_edit(&mut after);
        check_declared_parts("ok", ObjectParts::REQUEST_HEADER_EDITS, &before, &after);
    }

    #[test]
    #[should_panic(
        expected = "step \"sloppy\" changed parts of the Object its parts() does not declare"
    )]
    fn a_change_outside_the_declared_parts_fails_the_check() {
        let before = pb::Object::default();
        let mut after = before.clone();
        with_request_edit(&mut after);
        after.metadata.insert("team".into(), "a".into());
        check_declared_parts("sloppy", ObjectParts::REQUEST_HEADER_EDITS, &before, &after);
    }
}
