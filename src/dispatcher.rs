//! The `coprocess.Dispatcher` handlers: `Dispatch` (scan, log, pass through, fit the reply) and
//! `DispatchEvent` (parse, log, always an empty reply).

use std::{borrow::Cow, sync::Arc};

use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::{
    codec::RawMessage,
    limits::{InFlightBudget, ReplyPolicy},
    metrics::{Metrics, Outcome, Rejection},
    object_log, pb, wire,
};

/// Per-call behaviour switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSettings {
    /// One INFO line per call.
    pub calls: bool,
    /// The Object as redacted JSON.
    pub objects: bool,
}

/// The Dispatcher service.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    log: LogSettings,
    budget: InFlightBudget,
    replies: ReplyPolicy,
    metrics: Metrics,
}

impl Dispatcher {
    /// A pass-through Dispatcher.
    pub fn new(
        log: LogSettings,
        budget: InFlightBudget,
        replies: ReplyPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            log,
            budget,
            replies,
            metrics,
        }
    }

    fn log_object(&self, bytes: &[u8], hook_name: &str) {
        match object_log::render(bytes) {
            Ok(json) => tracing::info!(hook_name, object = %json, "object"),
            Err(err) => {
                tracing::warn!(hook_name, error = %err, "object could not be decoded for logging")
            }
        }
    }
}

fn hook_type_label(raw: i32) -> &'static str {
    pb::HookType::name_of(raw).unwrap_or("Unknown")
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for Dispatcher {
    async fn dispatch(&self, request: Request<RawMessage>) -> Result<Response<RawMessage>, Status> {
        let bytes = request.into_inner().into_bytes();
        let share = self.budget.take(bytes.len()).inspect_err(|status| {
            self.metrics.reject(Rejection::InFlightBudget);
            tracing::warn!(
                request_bytes = bytes.len(),
                reason = status.message(),
                "call refused"
            );
        })?;
        let summary = wire::scan_object(&bytes).map_err(|err| {
            self.metrics.reject(Rejection::Malformed);
            tracing::warn!(request_bytes = bytes.len(), error = %err, "malformed Object refused");
            Status::invalid_argument(format!("malformed coprocess.Object: {err}"))
        })?;
        let hook_type = hook_type_label(summary.hook_type);
        let api_id = summary.api_id.unwrap_or("");
        let series = self
            .metrics
            .hook(summary.hook_type, hook_type, summary.hook_name);

        if pb::HookType::name_of(summary.hook_type).is_none() || summary.hook_type == 0 {
            tracing::warn!(
                hook_type = summary.hook_type,
                hook_name = summary.hook_name,
                api_id,
                "unrecognised hook type: passed through unchanged"
            );
        } else if self.log.calls {
            tracing::info!(hook_type, hook_name = summary.hook_name, api_id, "dispatch");
        }
        if self.log.objects {
            self.log_object(&bytes, summary.hook_name);
        }

        // Nothing changes the Object yet: the request's own bytes go back.
        let (reply, _fit) = self.replies.fit(bytes.clone()).inspect_err(|_| {
            self.metrics.reject(Rejection::ReplyTooLarge);
            series.record(Outcome::Error);
        })?;
        series.record(Outcome::Unchanged);
        let mut response = Response::new(RawMessage::new(reply));
        // Held until the reply has been sent (see `response`).
        response.extensions_mut().insert(Arc::new(share));
        Ok(response)
    }

    async fn dispatch_event(
        &self,
        request: Request<RawMessage>,
    ) -> Result<Response<RawMessage>, Status> {
        let bytes = request.into_inner().into_bytes();
        match wire::scan_event(&bytes) {
            Ok(payload) => log_event(payload, &self.metrics),
            Err(err) => {
                // Still answered: the gateway only logs event errors, and a reply costs nothing.
                self.metrics.events_unparsable.inc();
                tracing::warn!(event_bytes = bytes.len(), error = %err, "malformed Event message");
            }
        }
        // An empty EventReply encodes to zero bytes.
        Ok(Response::new(RawMessage::default()))
    }
}

/// The parts of an event payload we log; everything else (notably `Meta.Key`, the raw key, and
/// `Meta.OriginatingRequest`, a dump of the request) is skipped unread.
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

fn log_event(payload: &[u8], metrics: &Metrics) {
    if payload.is_empty() {
        metrics.events_unparsable.inc();
        tracing::warn!(payload_bytes = 0, "event payload is empty");
        return;
    }
    match serde_json::from_slice::<EventPayload<'_>>(payload) {
        Ok(event) => tracing::info!(
            event_type = event
                .message
                .as_ref()
                .and_then(|m| m.kind.as_deref())
                .unwrap_or(""),
            handler_name = event.handler_name.as_deref().unwrap_or(""),
            api_id = event
                .spec
                .as_ref()
                .and_then(|s| s.api_id.as_deref())
                .unwrap_or(""),
            "event"
        ),
        Err(err) => {
            metrics.events_unparsable.inc();
            // serde_json's message gives line and column, never the content.
            tracing::warn!(payload_bytes = payload.len(), error = %err, "event payload is not JSON");
        }
    }
}
