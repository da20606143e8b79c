//! The `coprocess.Dispatcher` handlers: `Dispatch` (scan, log, pass through, fit the reply) and
//! `DispatchEvent` (parse, log, always an empty reply), each measured and traced.

use std::{borrow::Cow, sync::Arc};

use bytes::Bytes;
use serde::Deserialize;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::{
    bounds::{self, WarnLimit},
    charge::CarriedShare,
    codec::RawMessage,
    event_log,
    hooks::{Hooks, StepContext, UnknownHooks, decode_selected, fail_closed},
    limits::{BudgetShare, InFlightBudget, ReplyPolicy},
    metrics::{Metrics, Outcome, Rejection},
    object_log, pb,
    response::{SplicedReplies, SplicedReply},
    telemetry::{AttrValue, CallSpan, Traces},
    wire::{self, ObjectSummary},
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

/// One rate limit per kind of per-call warning: a burst of bad calls writes a line a second
/// per kind, each saying how many were suppressed before it.
#[derive(Debug, Default)]
struct Warnings {
    refused: WarnLimit,
    malformed: WarnLimit,
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
}

/// What a call answered.
struct Answered {
    reply: Bytes,
    outcome: Outcome,
    response_code: Option<i32>,
    share: CarriedShare,
}

fn hook_type_label(raw: i32) -> &'static str {
    pb::HookType::name_of(raw).unwrap_or("Unknown")
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
    tracing::info_span!("call", trace_id = %span.trace_id(), span_id = %span.span_id())
}

impl Dispatcher {
    /// A pass-through Dispatcher.
    pub fn new(
        log: LogSettings,
        budget: InFlightBudget,
        replies: ReplyPolicy,
        metrics: Metrics,
        traces: Traces,
        hooks: Hooks,
    ) -> Self {
        Self {
            log,
            warnings: Arc::default(),
            budget,
            replies,
            metrics,
            traces,
            hooks,
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
                AttrValue::Str(hook_type_label(summary.hook_type)),
            ),
            ("tyk.hook.name", AttrValue::Str(summary.hook_name)),
            ("tyk.api.id", AttrValue::Str(summary.api_id.unwrap_or(""))),
            ("tyk.org.id", AttrValue::Str(summary.org_id.unwrap_or(""))),
            // Values are cut to `bounds::SPAN_ATTRIBUTE_BYTES` where spans are written.
        ];
        self.traces.start(DISPATCH_SPAN, metadata, &attributes)
    }

    /// Counts and logs (rate-limited) a request that is not a valid Object, wherever that was
    /// found: the scan, or a hook's decode of a nested field; the answer says what was wrong.
    fn malformed(&self, request_bytes: usize, err: &dyn std::fmt::Display) -> Status {
        self.metrics.reject(Rejection::Malformed);
        if let Some(suppressed) = self.warnings.malformed.permit() {
            tracing::warn!(
                request_bytes,
                error = %err,
                suppressed,
                "malformed Object refused"
            );
        }
        Status::invalid_argument(format!("malformed coprocess.Object: {err}"))
    }

    /// The whole Object, decoded.
    fn decode(&self, bytes: &Bytes) -> Result<pb::Object, Status> {
        <pb::Object as prost::Message>::decode(bytes.clone())
            .map_err(|err| self.malformed(bytes.len(), &err))
    }

    /// Holds `copies` bytes beside the `request` bytes in `share` for copies the call is about
    /// to make: from what was reserved with the message (see `charge`), returning the rest, and
    /// beyond it only if the budget allows (a reload may have added hooks since the call was
    /// charged); refused (RESOURCE_EXHAUSTED, counted) when it does not. The extra share, if
    /// any, is returned when dropped.
    fn charge_copies(
        &self,
        share: &BudgetShare,
        request: usize,
        copies: usize,
    ) -> Result<Option<BudgetShare>, Status> {
        let reserved = share.bytes().saturating_sub(request);
        if copies <= reserved {
            share.resize(request + copies);
            return Ok(None);
        }
        let more = copies - reserved;
        share.take_more(more).map(Some).inspect_err(|status| {
            self.metrics.reject(Rejection::InFlightBudget);
            if let Some(suppressed) = self.warnings.refused.permit() {
                tracing::warn!(
                    copy_bytes = more,
                    reason = status.message(),
                    suppressed,
                    "call refused: no budget to decode its Object"
                );
            }
        })
    }

    /// Everything after the scan: budget, logs, the hook's pipeline, the reply fitted to the
    /// limit.
    async fn answer(
        &self,
        bytes: &Bytes,
        summary: &ObjectSummary<'_>,
        span: &CallSpan,
        charged: Option<CarriedShare>,
    ) -> Result<Answered, Status> {
        // Served through `charge::Charging` the message was charged from its prefix already;
        // served any other way it is charged here, once it is whole.
        let share = match charged {
            Some(share) => share,
            None => Arc::new(self.budget.take(bytes.len()).inspect_err(|status| {
                self.metrics.reject(Rejection::InFlightBudget);
                if let Some(suppressed) = self.warnings.refused.permit() {
                    tracing::warn!(
                        request_bytes = bytes.len(),
                        reason = status.message(),
                        suppressed,
                        "call refused"
                    );
                }
            })?),
        };
        let hook_type = hook_type_label(summary.hook_type);
        let api_id = summary.api_id.unwrap_or("");
        if pb::HookType::name_of(summary.hook_type).is_none() || summary.hook_type == 0 {
            if let Some(suppressed) = self.warnings.unrecognised_hook_type.permit() {
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
                hook_type,
                hook_name = &*bounds::log(summary.hook_name),
                api_id = &*bounds::log(api_id),
                "dispatch"
            );
        }
        if self.log.objects {
            match object_log::render(bytes) {
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
        let (reply, outcome, response_code) = self.run_hook(bytes, summary, span, &share).await?;
        // The decoded Object is gone: what stays is the request and, when the hook edited it,
        // the reply, a second buffer held until it is sent.
        let edited = if reply.as_ptr() == bytes.as_ptr() {
            0
        } else {
            reply.len()
        };
        share.resize(bytes.len() + edited);
        let (reply, _fit) = self.replies.fit(reply).inspect_err(|_| {
            self.metrics.reject(Rejection::ReplyTooLarge);
        })?;
        Ok(Answered {
            reply,
            outcome,
            response_code,
            share,
        })
    }

    /// The hook's pipeline, or the unknown-hook policy; the request's own bytes go back when
    /// nothing changes.
    ///
    /// Decoding makes copies of the Object's strings and maps: the decoded Object is charged to
    /// the budget (estimated by the bytes it is decoded from; twice that when it is cloned)
    /// before it is made, refused like any call the budget cannot cover, and returned when the
    /// hook is done with it.
    async fn run_hook(
        &self,
        bytes: &Bytes,
        summary: &ObjectSummary<'_>,
        span: &CallSpan,
        share: &BudgetShare,
    ) -> Result<(Bytes, Outcome, Option<i32>), Status> {
        let table = self.hooks.current();
        let api_id = summary.api_id.unwrap_or("");
        let Some(pipeline) = table.find(summary.hook_type, summary.hook_name, api_id) else {
            // With no hook declared at all this is a pass-through server, not a miss.
            if !table.is_empty() {
                self.metrics.unknown_hooks.inc();
            }
            if !table.is_empty()
                && let Some(suppressed) = self
                    .hooks
                    .first_unknown(summary.hook_type, summary.hook_name)
            {
                tracing::warn!(
                    hook_type = hook_type_label(summary.hook_type),
                    hook_name = &*bounds::log(summary.hook_name),
                    policy = ?table.unknown(),
                    suppressed,
                    "no hook declared for this name (warned once)"
                );
            }
            if table.unknown() == UnknownHooks::Pass {
                share.resize(bytes.len());
                return Ok((bytes.clone(), Outcome::Unchanged, None));
            }
            // The decoded Object and its clone.
            let _copies = self.charge_copies(share, bytes.len(), 2 * bytes.len())?;
            let object = self.decode(bytes)?;
            let mut refused = object.clone();
            let hook_type = pb::HookType::try_from(summary.hook_type).unwrap_or(pb::HookType::Pre);
            fail_closed(&mut refused, hook_type);
            let reply = crate::hooks::reply_bytes(bytes, &object, refused)
                .map_err(|err| self.malformed(bytes.len(), &err))?
                .unwrap_or_else(|| bytes.clone());
            return Ok((reply, Outcome::Failed, None));
        };
        let selected = pipeline
            .select(bytes)
            .map_err(|err| self.malformed(bytes.len(), &err))?;
        // The decoded strings and maps, estimated by the bytes they come from; a selection is a
        // copy of its own, charged with them.
        let copies = if selected.as_ptr() == bytes.as_ptr() {
            selected.len()
        } else {
            2 * selected.len()
        };
        let _copies = self.charge_copies(share, bytes.len(), copies)?;
        let object = decode_selected(selected).map_err(|err| self.malformed(bytes.len(), &err))?;
        let config_data = summary
            .config_data
            .and_then(|raw| self.hooks.config_data(raw));
        let cx = StepContext {
            hook_type: pipeline.hook_type,
            hook_name: pipeline.name.clone(),
            api_id: api_id.to_string(),
            org_id: summary.org_id.unwrap_or("").to_string(),
            config_data,
        };
        let answer = pipeline
            .run(bytes, object, &cx, &self.metrics, &self.traces, span)
            .await;
        Ok((
            answer.reply.unwrap_or_else(|| bytes.clone()),
            answer.outcome,
            answer.response_code,
        ))
    }
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Dispatcher {
    async fn dispatch(&self, request: Request<RawMessage>) -> Result<Response<RawMessage>, Status> {
        let (metadata, mut extensions, message) = request.into_parts();
        let charged = extensions.remove::<CarriedShare>();
        let spliced = extensions.remove::<SplicedReplies>().is_some();
        let bytes = message.into_bytes();
        let scanned = wire::scan_object(&bytes);
        let summary = scanned.clone().unwrap_or_default();
        let api_id = summary.api_id.unwrap_or("");
        let series = self.metrics.hook(
            summary.hook_type,
            hook_type_label(summary.hook_type),
            summary.hook_name,
        );
        let measure = self.metrics.start_call(series, bytes.len());
        let span = self.start_span(&metadata, &summary);
        let result = async {
            match &scanned {
                Ok(summary) => self.answer(&bytes, summary, &span, charged).await,
                Err(err) => Err(self.malformed(bytes.len(), err)),
            }
        }
        .instrument(log_span(&span))
        .await;
        let exemplar = span.exemplar();
        let mut span = span;
        match result {
            Ok(answered) => {
                measure.finish(
                    answered.outcome,
                    api_id,
                    Some(answered.reply.len()),
                    exemplar,
                );
                if let Some(code) = answered.response_code {
                    span.set_attribute(
                        "tyk.return_overrides.response_code",
                        AttrValue::Int(i64::from(code)),
                    );
                }
                span.end(answered.outcome.as_str(), Code::Ok);
                // Served by our own routes, the reply goes out as it is instead of being copied
                // into tonic's encode buffer (see `response`).
                let mut response = if spliced {
                    let mut response = Response::new(RawMessage::default());
                    response
                        .extensions_mut()
                        .insert(SplicedReply(answered.reply));
                    response
                } else {
                    Response::new(RawMessage::new(answered.reply))
                };
                // Held until the reply has been sent (see `response`).
                response.extensions_mut().insert(answered.share);
                Ok(response)
            }
            Err(status) => {
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
                    self.metrics.events_unparsable.inc();
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
        metrics.events_unparsable.inc();
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
            metrics.events_unparsable.inc();
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
