//! The `coprocess.Dispatcher` handlers, each measured and traced.
//!
//! `Dispatch` reads in one direction: scan the Object, hold its bytes in the in-flight budget,
//! route it through the hooks (charging the copies their decode makes), fit the reply to the
//! gateway's receive limit, answer. A refusal at any point is a [`CallError`], answered in one
//! place ([`Refusals`]). `DispatchEvent` parses, logs, and always answers empty.

use std::{borrow::Cow, sync::Arc};

use bytes::Bytes;
use serde::Deserialize;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    bounds::{self, WarnLimit},
    call::{BudgetMoment, CallError, Outcome, Refusals},
    charge::{CarriedShare, Charged},
    codec::RawMessage,
    event_log, hex,
    hooks::{Answer, Hooks},
    limits::{BudgetShare, InFlightBudget, ReplyPolicy},
    metrics::Metrics,
    object_log, pb,
    response::{self, SplicedReplies},
    telemetry::{AttrValue, CallSpan, Traces},
    wire::{self, ObjectSummary, WireError},
};

/// Span name of Dispatch calls (RPC semantic conventions: `service/method`).
pub const DISPATCH_SPAN: &str = "coprocess.Dispatcher/Dispatch";
/// Span name of DispatchEvent calls.
pub const DISPATCH_EVENT_SPAN: &str = "coprocess.Dispatcher/DispatchEvent";

/// Per-call logging switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSettings {
    /// One INFO line per call.
    pub calls: bool,
    /// The Object as redacted JSON.
    pub objects: bool,
}

/// One rate limit per kind of per-call warning that is not a refusal (those are
/// [`Refusals`]'): a burst writes a line a second per kind, each saying how many were
/// suppressed before it.
#[derive(Debug, Default)]
struct Warnings {
    unrecognised_hook_type: WarnLimit,
    object_not_loggable: WarnLimit,
    malformed_event: WarnLimit,
    empty_event: WarnLimit,
    event_not_json: WarnLimit,
}

/// The Dispatcher service.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    log: LogSettings,
    warnings: Arc<Warnings>,
    budget: InFlightBudget,
    replies: ReplyPolicy,
    metrics: Metrics,
    traces: Traces,
    hooks: Hooks,
    refusals: Refusals,
}

fn rpc_attributes(method: &'static str) -> [(&'static str, AttrValue<'static>); 3] {
    [
        ("rpc.system", AttrValue::Str("grpc")),
        ("rpc.service", AttrValue::Str(pb::SERVICE_NAME)),
        ("rpc.method", AttrValue::Str(method)),
    ]
}

/// A tracing span carrying the call's trace and span IDs, so every log line of the call has
/// them.
fn log_span(span: &CallSpan) -> tracing::Span {
    // Hex into stack buffers: `TraceId`'s `Display` formats through `{:032x}`, which cost more
    // than the rest of the span.
    let (mut trace_id, mut span_id) = ([0; 32], [0; 16]);
    tracing::info_span!(
        "call",
        trace_id = %hex::encode_into(&span.trace_id().to_bytes(), &mut trace_id),
        span_id = %hex::encode_into(&span.span_id().to_bytes(), &mut span_id),
    )
}

impl Dispatcher {
    /// A Dispatcher answering with `hooks`, refusing through `refusals`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: LogSettings,
        budget: InFlightBudget,
        replies: ReplyPolicy,
        metrics: Metrics,
        traces: Traces,
        hooks: Hooks,
        refusals: Refusals,
    ) -> Self {
        Self {
            log,
            warnings: Arc::default(),
            budget,
            replies,
            metrics,
            traces,
            hooks,
            refusals,
        }
    }

    fn start_span(&self, metadata: &MetadataMap, summary: &ObjectSummary<'_>) -> CallSpan {
        let [system, service, method] = rpc_attributes("Dispatch");
        let attributes = [
            system,
            service,
            method,
            (
                "tyk.hook.type",
                AttrValue::Str(pb::HookType::label_of(summary.hook_type)),
            ),
            ("tyk.hook.name", AttrValue::Str(summary.hook_name)),
            ("tyk.api.id", AttrValue::Str(summary.api_id.unwrap_or(""))),
            ("tyk.org.id", AttrValue::Str(summary.org_id.unwrap_or(""))),
            // Values are cut to `bounds::SPAN_ATTRIBUTE_BYTES` where spans are written.
        ];
        self.traces.start(DISPATCH_SPAN, metadata, &attributes)
    }

    /// From the scan to the fitted reply; the reply comes with the call's share of the budget,
    /// held until it has been sent.
    async fn serve(
        &self,
        request: &Bytes,
        scanned: Result<ObjectSummary<'_>, WireError>,
        charged: Option<CarriedShare>,
        span: &CallSpan,
    ) -> Result<(Answer, CarriedShare), CallError> {
        let summary = scanned.map_err(|err| CallError::malformed(request.len(), err))?;
        let share = self.hold(request.len(), charged)?;
        self.log_call(request, &summary, span);
        let routed = self.hooks.route(request, &summary)?;
        let copies = self.charge_copies(&share, request.len(), routed.copy_bytes())?;
        let mut answer = routed.run(span).await?;
        drop(copies);
        answer.reply = self.replies.shape(answer.reply, summary.hook_type)?;
        // The decoded Object is gone: what stays is the request and, when the hooks edited it
        // (or it was trimmed), the reply, a second buffer held until it is sent.
        let edited = if answer.is_edit_of(request) {
            answer.reply.len()
        } else {
            0
        };
        share.resize(request.len() + edited);
        Ok((answer, share))
    }

    /// The call's share of the budget: served through `charge::Charging`, the message was
    /// charged from its prefix already; served any other way it is charged here, once whole.
    fn hold(
        &self,
        request_bytes: usize,
        charged: Option<CarriedShare>,
    ) -> Result<CarriedShare, CallError> {
        match charged {
            Some(share) => Ok(share),
            None => self
                .budget
                .take(request_bytes)
                .map(Arc::new)
                .map_err(|source| CallError::NoBudget {
                    request_bytes,
                    moment: BudgetMoment::Whole,
                    source,
                }),
        }
    }

    /// Holds `copies` bytes beside the `request` bytes in `share` for copies the call is about
    /// to make: from what was reserved with the message (see `charge`), returning the rest, and
    /// beyond it only if the budget allows (a reload may have added hooks since the call was
    /// charged). The extra share, if any, is returned when dropped.
    fn charge_copies(
        &self,
        share: &BudgetShare,
        request: usize,
        copies: usize,
    ) -> Result<Option<BudgetShare>, CallError> {
        let reserved = share.bytes().saturating_sub(request);
        if copies <= reserved {
            share.resize(request + copies);
            return Ok(None);
        }
        let copy_bytes = copies - reserved;
        share
            .take_more(copy_bytes)
            .map(Some)
            .map_err(|source| CallError::NoBudget {
                request_bytes: request,
                moment: BudgetMoment::Copies { copy_bytes },
                source,
            })
    }

    /// Whether a call that goes well writes no log line: pass-through, no line per call. Such a
    /// call is served without its log span, whose making (the IDs formatted, the span
    /// registered) was a twentieth of its CPU; a line it writes after all (a warning, a
    /// refusal) enters the span for itself.
    fn writes_no_lines(&self) -> bool {
        !self.log.calls && !self.log.objects && !self.hooks.may_decode()
    }

    /// The call's log lines: one per call (or a warning for a hook type the protocol lacks),
    /// and the Object itself when asked for.
    fn log_call(&self, request: &Bytes, summary: &ObjectSummary<'_>, span: &CallSpan) {
        let api_id = summary.api_id.unwrap_or("");
        if pb::HookType::name_of(summary.hook_type).is_none() || summary.hook_type == 0 {
            if let Some(suppressed) = self.warnings.unrecognised_hook_type.permit() {
                let _entered = tracing::Span::current()
                    .is_none()
                    .then(|| log_span(span).entered());
                tracing::warn!(
                    hook_type = summary.hook_type,
                    hook_name = &*bounds::log(summary.hook_name),
                    api_id = &*bounds::log(api_id),
                    suppressed,
                    "unrecognised hook type: passed through unchanged"
                );
            }
        } else if self.log.calls {
            tracing::info!(
                hook_type = pb::HookType::label_of(summary.hook_type),
                hook_name = &*bounds::log(summary.hook_name),
                api_id = &*bounds::log(api_id),
                "dispatch"
            );
        }
        if self.log.objects {
            match object_log::render(request) {
                Ok(json) => tracing::info!(
                    hook_name = &*bounds::log(summary.hook_name),
                    object = %json,
                    "object"
                ),
                Err(err) => {
                    if let Some(suppressed) = self.warnings.object_not_loggable.permit() {
                        tracing::warn!(
                            error = %err,
                            suppressed,
                            "object could not be decoded for logging"
                        );
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Dispatcher {
    async fn dispatch(&self, request: Request<RawMessage>) -> Result<Response<RawMessage>, Status> {
        let (metadata, mut extensions, message) = request.into_parts();
        let charged = extensions.remove::<Charged>().map(|charged| charged.0);
        let splice = extensions.remove::<SplicedReplies>().is_some();
        let bytes = message.into_bytes();
        let scanned = wire::scan_object(&bytes);
        let summary = scanned.clone().unwrap_or_default();
        let api_id = summary.api_id.unwrap_or("");
        let series = self.metrics.hook(
            summary.hook_type,
            pb::HookType::label_of(summary.hook_type),
            summary.hook_name,
        );
        let measure = self.metrics.start_call(series, bytes.len());
        let span = self.start_span(&metadata, &summary);
        let serving = self.serve(&bytes, scanned, charged, &span);
        let served = if self.writes_no_lines() {
            serving.await
        } else {
            serving.instrument(log_span(&span)).await
        };
        let exemplar = span.exemplar();
        let mut span = span;
        match served {
            Ok((answer, share)) => {
                measure.finish(answer.outcome, api_id, Some(answer.reply.len()), exemplar);
                if let Some(code) = answer.response_code {
                    span.set_attribute(
                        "tyk.return_overrides.response_code",
                        AttrValue::Int(i64::from(code)),
                    );
                }
                span.end(answer.outcome.as_str(), Code::Ok);
                Ok(response::dispatch_reply(splice, answer.reply, share))
            }
            Err(err) => {
                let status = {
                    let _entered = log_span(&span).entered();
                    self.refusals.refuse(&err)
                };
                measure.finish(Outcome::Error, api_id, None, exemplar);
                span.end(Outcome::Error.as_str(), status.code());
                Err(status)
            }
        }
    }

    async fn dispatch_event(
        &self,
        request: Request<RawMessage>,
    ) -> Result<Response<RawMessage>, Status> {
        let (metadata, _, message) = request.into_parts();
        let bytes = message.into_bytes();
        let mut span = self.traces.start(
            DISPATCH_EVENT_SPAN,
            &metadata,
            &rpc_attributes("DispatchEvent"),
        );
        let event_type = {
            let _entered = log_span(&span).entered();
            match wire::scan_event(&bytes) {
                Ok(payload) => log_event(payload, &self.metrics, &self.warnings, self.log.objects),
                Err(err) => {
                    // Still answered: the gateway only logs event errors.
                    self.metrics.events.unparsable.inc();
                    self.metrics.event(None);
                    if let Some(suppressed) = self.warnings.malformed_event.permit() {
                        tracing::warn!(
                            event_bytes = bytes.len(),
                            error = %err,
                            suppressed,
                            "malformed Event message"
                        );
                    }
                    None
                }
            }
        };
        span.set_attribute(
            "tyk.event.type",
            AttrValue::Str(event_type.as_deref().unwrap_or("other")),
        );
        span.end("unchanged", Code::Ok);
        // An empty EventReply encodes to zero bytes.
        Ok(Response::new(RawMessage::default()))
    }
}

/// The parts of an event payload the `event` line shows; everything else (notably `Meta.Key`,
/// the raw key, and `Meta.OriginatingRequest`, a dump of the request) is skipped unread here, and
/// appears only redacted, with `log_objects` (see [`event_log`]).
#[derive(Debug, Deserialize)]
struct EventPayload<'a> {
    #[serde(borrow, default)]
    message: Option<EventMessage<'a>>,
    #[serde(borrow, default)]
    handler_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    spec: Option<EventSpec<'a>>,
}

#[derive(Debug, Deserialize)]
struct EventMessage<'a> {
    #[serde(rename = "Type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct EventSpec<'a> {
    #[serde(rename = "APIID", borrow, default)]
    api_id: Option<Cow<'a, str>>,
}

/// Logs and counts one event payload; returns its type. With `log_objects`, the payload itself
/// follows as redacted JSON (see [`event_log`]).
fn log_event(
    payload: &[u8],
    metrics: &Metrics,
    warnings: &Warnings,
    log_objects: bool,
) -> Option<String> {
    if payload.is_empty() {
        metrics.events.unparsable.inc();
        metrics.event(None);
        if let Some(suppressed) = warnings.empty_event.permit() {
            tracing::warn!(payload_bytes = 0, suppressed, "event payload is empty");
        }
        return None;
    }
    let parsed = serde_json::from_slice::<EventPayload<'_>>(payload);
    let event_type = match &parsed {
        Ok(event) => {
            let event_type = event.message.as_ref().and_then(|m| m.kind.as_deref());
            metrics.event(event_type);
            tracing::info!(
                event_type = &*bounds::log(event_type.unwrap_or("")),
                handler_name = &*bounds::log(event.handler_name.as_deref().unwrap_or("")),
                api_id = &*bounds::log(
                    event
                        .spec
                        .as_ref()
                        .and_then(|s| s.api_id.as_deref())
                        .unwrap_or("")
                ),
                "event"
            );
            event_type.map(str::to_string)
        }
        Err(err) => {
            metrics.events.unparsable.inc();
            metrics.event(None);
            // Not serde's text: a `data` error quotes the value it choked on, e.g. a key
            // sent where an object was expected.
            let why = event_log::NotJson::from(err);
            if let Some(suppressed) = warnings.event_not_json.permit() {
                tracing::warn!(
                    payload_bytes = payload.len(),
                    error_category = why.category,
                    line = why.line,
                    column = why.column,
                    suppressed,
                    "event payload is not JSON"
                );
            }
            None
        }
    };
    if log_objects {
        match event_log::render(payload) {
            Ok(json) => tracing::info!(
                event_type = &*bounds::log(event_type.as_deref().unwrap_or("")),
                payload = %json,
                "event payload"
            ),
            // Said above already, unless only the full parse refused it (nesting the typed
            // parse skipped over).
            Err(why) if parsed.is_ok() => tracing::warn!(
                payload_bytes = payload.len(),
                error_category = why.category,
                line = why.line,
                column = why.column,
                "event payload could not be logged"
            ),
            Err(_) => {}
        }
    }
    event_type
}
