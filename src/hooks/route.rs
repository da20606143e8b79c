//! One call through the hooks: routed to its hook's pipeline or to the unknown-hook policy,
//! sized (the bytes its decode will copy, so the dispatcher can charge them first), then run
//! into an [`Answer`].

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::{
    UnknownHooks,
    pipeline::{Pipeline, fail_closed_answer},
    recorded::Recorded,
    step::StepContext,
    table::{HookTable, Hooks},
};
use crate::{
    bounds,
    call::{CallError, Outcome},
    pb::{self, HookType},
    telemetry::CallSpan,
    wire::ObjectSummary,
};

/// What the hooks answered a call.
#[derive(Debug)]
pub struct Answer {
    /// The reply: the request's own bytes when nothing changed, else the edited Object.
    pub reply: Bytes,
    /// How the call ended.
    pub outcome: Outcome,
    /// `return_overrides.response_code` when the answer set one.
    pub response_code: Option<i32>,
}

impl Answer {
    /// `request` goes back as it came.
    pub(crate) fn unchanged(request: &Bytes, outcome: Outcome) -> Self {
        Self {
            reply: request.clone(),
            outcome,
            response_code: None,
        }
    }

    /// Whether the reply is a new buffer rather than `request` itself.
    pub fn is_edit_of(&self, request: &Bytes) -> bool {
        self.reply.as_ptr() != request.as_ptr()
    }
}

/// Where a call goes.
#[derive(Debug)]
enum Route {
    /// No hook matches and the policy (or an empty table) passes it on unchanged.
    Pass,
    /// No hook matches and the policy refuses it as a hook of this type would when failing
    /// closed.
    Refuse(HookType),
    /// A declared hook: its pipeline, and the bytes its parts are decoded from.
    Run {
        pipeline: Arc<Pipeline>,
        selected: Bytes,
    },
}

/// A call routed through the hooks, not yet run.
#[derive(Debug)]
pub struct Routed<'a> {
    hooks: &'a Hooks,
    request: &'a Bytes,
    summary: &'a ObjectSummary<'a>,
    route: Route,
}

impl Hooks {
    /// Routes a call (`request`, scanned into `summary`) by the table in force; a call no hook
    /// matches is counted and warned about once per name, unless no hook is declared at all
    /// (a pass-through server, not a miss).
    ///
    /// # Errors
    /// [`CallError::Malformed`] when the parts a pipeline needs cannot be selected.
    pub fn route<'a>(
        &'a self,
        request: &'a Bytes,
        summary: &'a ObjectSummary<'a>,
    ) -> Result<Routed<'a>, CallError> {
        let table = self.table();
        let api_id = summary.api_id.unwrap_or("");
        let route = match table.find(summary.hook_type, summary.hook_name, api_id) {
            Some(pipeline) => {
                let selected = pipeline
                    .select(request)
                    .map_err(|err| CallError::malformed(request.len(), err))?;
                Route::Run {
                    pipeline: pipeline.clone(),
                    selected,
                }
            }
            None => self.unknown(&table, summary),
        };
        Ok(Routed {
            hooks: self,
            request,
            summary,
            route,
        })
    }

    fn unknown(&self, table: &HookTable, summary: &ObjectSummary<'_>) -> Route {
        if !table.is_empty() {
            self.metrics().hooks.unknown.inc();
            if let Some(suppressed) = self.first_unknown(summary.hook_type, summary.hook_name) {
                tracing::warn!(
                    hook_type = pb::HookType::label_of(summary.hook_type),
                    hook_name = &*bounds::log(summary.hook_name),
                    policy = ?table.unknown(),
                    suppressed,
                    "no hook declared for this name (warned once)"
                );
            }
        }
        match table.unknown() {
            UnknownHooks::Pass => Route::Pass,
            UnknownHooks::Reject => Route::Refuse(
                pb::HookType::try_from(summary.hook_type).unwrap_or(pb::HookType::Pre),
            ),
        }
    }
}

impl Routed<'_> {
    /// The bytes the run will copy beside the request: the decoded strings and maps, estimated
    /// by the bytes they come from; a part selection is a copy of its own; a refusal decodes
    /// the whole Object and clones it.
    pub fn copy_bytes(&self) -> usize {
        match &self.route {
            Route::Pass => 0,
            Route::Refuse(_) => 2 * self.request.len(),
            Route::Run { selected, .. } if selected.as_ptr() == self.request.as_ptr() => {
                selected.len()
            }
            Route::Run { selected, .. } => 2 * selected.len(),
        }
    }

    /// Runs the route: the pipeline's steps, or the unknown-hook policy.
    ///
    /// # Errors
    /// [`CallError::Malformed`] when a nested field cannot be decoded.
    pub async fn run(self, span: &CallSpan) -> Result<Answer, CallError> {
        self.run_with(span, None).await
    }

    /// Runs the route with `recorded` answers for the network-backed steps (offline runs).
    ///
    /// # Errors
    /// [`CallError::Malformed`] when a nested field cannot be decoded.
    pub async fn run_with(
        self,
        span: &CallSpan,
        recorded: Option<Arc<Recorded>>,
    ) -> Result<Answer, CallError> {
        let malformed = |err| CallError::malformed(self.request.len(), err);
        match self.route {
            Route::Pass => Ok(Answer::unchanged(self.request, Outcome::Unchanged)),
            Route::Refuse(hook_type) => {
                let object = pb::Object::decode(self.request.clone()).map_err(malformed)?;
                Ok(fail_closed_answer(self.request, &object, hook_type))
            }
            Route::Run { pipeline, selected } => {
                let object = pb::Object::decode(selected).map_err(malformed)?;
                let cx = StepContext {
                    hook_type: pipeline.hook_type,
                    hook_name: pipeline.name.clone(),
                    api_id: self.summary.api_id.unwrap_or("").to_string(),
                    org_id: self.summary.org_id.unwrap_or("").to_string(),
                    config_data: self
                        .summary
                        .config_data
                        .and_then(|raw| self.hooks.config_data(raw)),
                    trace: Some(span.context().clone()),
                    recorded,
                };
                Ok(pipeline
                    .run(self.request, object, &cx, self.hooks.metrics(), span)
                    .await)
            }
        }
    }
}
