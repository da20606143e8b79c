//! A step's own `tracing` spans, exported over OTLP as children of the step's span.
//!
//! [`in_step`] marks the thread that polls a recorded step (the call is sampled and export is
//! on); the [`StepSpans`] layer turns the spans created there into OTLP spans of the call's
//! trace, encoded into our own span buffers like the call and step spans (no SDK tracer): the
//! parent is the step's span, or the enclosing span the step recorded before. Their fields
//! become attributes. A span the log filter (`RUST_LOG`) disables is neither logged nor
//! exported.
//!
//! Everything else must cost next to nothing, since every span of the process passes through
//! the layer: a new span reads one thread-local (no shared cache line, unlike a global "steps
//! running" counter every step would write); recording and closing a span read one relaxed
//! counter of recorded spans still open, which stays zero unless steps create spans.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use opentelemetry::trace::{SpanId, TraceId};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

use super::{
    export::SpanSink,
    otlp::{self, AttrValue, span as field},
    traces::{CallSpan, random_span_id, span_value, unix_nanos},
};
use crate::{bounds, wire::put_len_record};

/// Attributes one span keeps at most, as OpenTelemetry's default span limits; the others are
/// counted in `dropped_attributes_count`.
const MAX_ATTRIBUTES: u32 = 128;

/// The recorded step whose future this thread is polling.
#[derive(Debug)]
struct StepScope {
    trace_id: TraceId,
    span_id: SpanId,
    sink: Arc<SpanSink>,
}

thread_local! {
    static CURRENT: RefCell<Option<StepScope>> = const { RefCell::new(None) };
}

/// Spans recorded by the layer and not closed yet: while zero, recording and closing other
/// spans skip the lookup of their extensions.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Runs `fut` (a step's work) so that the `tracing` spans it creates are exported as children of
/// `step_span`, when that span is recorded; otherwise `fut` runs as it is.
pub fn in_step<F: Future>(
    step_span: &CallSpan,
    fut: F,
) -> impl Future<Output = F::Output> + use<F> {
    let scope = step_span.recording_sink().map(|sink| StepScope {
        trace_id: step_span.trace_id(),
        span_id: step_span.span_id(),
        sink: sink.clone(),
    });
    async move {
        let mut fut = std::pin::pin!(fut);
        let Some(scope) = scope else {
            return fut.await;
        };
        let mut scope = Some(scope);
        std::future::poll_fn(|cx| {
            let _entered = Entered::new(&mut scope);
            fut.as_mut().poll(cx)
        })
        .await
    }
}

/// The span ID of the recorded step whose future this thread is polling, if any: the parent a
/// call the step makes names in its trace context.
pub fn current_step_span() -> Option<SpanId> {
    CURRENT
        .try_with(|current| current.borrow().as_ref().map(|scope| scope.span_id))
        .ok()
        .flatten()
}

/// The step's scope in [`CURRENT`] for one poll; put back (and the previous one restored) when
/// the poll returns or unwinds.
struct Entered<'a> {
    slot: &'a mut Option<StepScope>,
    previous: Option<StepScope>,
}

impl<'a> Entered<'a> {
    fn new(slot: &'a mut Option<StepScope>) -> Self {
        let scope = slot.take();
        let previous = CURRENT
            .try_with(|current| current.replace(scope))
            .unwrap_or_default();
        Self { slot, previous }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = CURRENT
            .try_with(|current| current.replace(previous))
            .unwrap_or_default();
    }
}

/// A span being recorded, kept in the span's extensions until it closes.
struct Recorded {
    body: Vec<u8>,
    span_id: SpanId,
    /// The step span it belongs to.
    step: SpanId,
    sink: Arc<SpanSink>,
    attributes: u32,
    dropped: u32,
}

impl Recorded {
    fn put(&mut self, key: &str, value: AttrValue<'_>) {
        if self.attributes >= MAX_ATTRIBUTES {
            self.dropped += 1;
            return;
        }
        self.attributes += 1;
        otlp::put_attribute(&mut self.body, field::ATTRIBUTES, key, span_value(value));
    }
}

impl Visit for Recorded {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), AttrValue::Str(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), AttrValue::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.put(field.name(), AttrValue::Int(value)),
            Err(_) => self.put(field.name(), AttrValue::Str(&value.to_string())),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), AttrValue::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), AttrValue::Double(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.attributes >= MAX_ATTRIBUTES {
            self.dropped += 1;
            return;
        }
        let mut text = Bounded(String::new());
        // An error only says the value was longer than an attribute keeps.
        let _ = write!(text, "{value:?}");
        self.put(field.name(), AttrValue::Str(&text.0));
    }
}

/// Text cut at [`bounds::SPAN_ATTRIBUTE_BYTES`]: a large value is not formatted whole only to
/// be cut.
struct Bounded(String);

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = bounds::SPAN_ATTRIBUTE_BYTES - self.0.len();
        let fits = bounds::prefix(s, room);
        self.0.push_str(fits);
        if fits.len() < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// The layer that records steps' spans; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepSpans;

impl<S> Layer<S> for StepSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // `try_with`: spans can be made while a thread's locals are being destroyed.
        let recorded = CURRENT.try_with(|current| {
            let current = current.try_borrow().ok()?;
            let scope = current.as_ref()?;
            let parent = if attrs.is_root() {
                None
            } else if let Some(parent) = attrs.parent() {
                ctx.span(parent)
            } else {
                ctx.lookup_current()
            };
            // A span this step recorded is the parent; anything else (the call's log span, a
            // span from outside the step) leaves the step's span as the parent.
            let parent_id = parent
                .and_then(|parent| {
                    parent
                        .extensions()
                        .get::<Recorded>()
                        .filter(|recorded| recorded.step == scope.span_id)
                        .map(|recorded| recorded.span_id)
                })
                .unwrap_or(scope.span_id);
            let span_id = random_span_id();
            let mut body = Vec::with_capacity(128);
            put_len_record(&mut body, field::TRACE_ID, &scope.trace_id.to_bytes());
            put_len_record(&mut body, field::SPAN_ID, &span_id.to_bytes());
            put_len_record(&mut body, field::PARENT_SPAN_ID, &parent_id.to_bytes());
            put_len_record(&mut body, field::NAME, attrs.metadata().name().as_bytes());
            otlp::put_varint_field(&mut body, field::KIND, field::KIND_INTERNAL);
            otlp::put_fixed64(&mut body, field::START_TIME, unix_nanos());
            Some(Recorded {
                body,
                span_id,
                step: scope.span_id,
                sink: scope.sink.clone(),
                attributes: 0,
                dropped: 0,
            })
        });
        let Ok(Some(mut recorded)) = recorded else {
            return;
        };
        let Some(span) = ctx.span(id) else {
            return;
        };
        attrs.record(&mut recorded);
        span.extensions_mut().insert(recorded);
        OPEN.fetch_add(1, Ordering::Relaxed);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if OPEN.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(span) = ctx.span(id)
            && let Some(recorded) = span.extensions_mut().get_mut::<Recorded>()
        {
            values.record(recorded);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if OPEN.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(mut recorded) = ctx
            .span(&id)
            .and_then(|span| span.extensions_mut().remove::<Recorded>())
        else {
            return;
        };
        OPEN.fetch_sub(1, Ordering::Relaxed);
        if recorded.dropped > 0 {
            otlp::put_varint_field(
                &mut recorded.body,
                field::DROPPED_ATTRIBUTES_COUNT,
                u64::from(recorded.dropped),
            );
        }
        otlp::put_fixed64(&mut recorded.body, field::END_TIME, unix_nanos());
        recorded.sink.push(&recorded.body);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use opentelemetry_proto::tonic::{
        common::v1::any_value::Value,
        trace::v1::{ScopeSpans, Span},
    };
    use prost::Message;
    use tonic::metadata::MetadataMap;
    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::telemetry::{
        Traces,
        export::{BatchSettings, SpanCounters, Transport},
        otlp::RequestFrame,
    };

    /// A sink that never exports during a test (nobody listens, the first batch is far away).
    fn sink() -> Arc<SpanSink> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        SpanSink::spawn(
            Transport::Grpc {
                client: tonic::client::Grpc::new(channel),
                metadata: MetadataMap::new(),
            },
            RequestFrame::new([], "test", "0"),
            BatchSettings {
                queue_size: 1000,
                batch_size: 1000,
                delay: Duration::from_secs(3600),
                export_timeout: Duration::from_secs(1),
            },
            SpanCounters::default(),
        )
    }

    fn queued(sink: &SpanSink) -> Vec<Span> {
        ScopeSpans::decode(sink.queued().as_slice()).unwrap().spans
    }

    /// A step's work: spans nested two deep, with fields of each kind.
    async fn step_work() -> u32 {
        let outer = tracing::info_span!("lookup", key = "k1", attempt = 2_u64, hit = true);
        outer.in_scope(|| {
            let inner = tracing::info_span!("decode", ratio = 0.5, detail = ?[1, 2]);
            inner.record("ratio", 0.75);
        });
        // Explicitly a root: still the step's child.
        drop(tracing::info_span!(parent: None, "detached"));
        7
    }

    #[tokio::test]
    async fn a_recorded_steps_spans_are_its_children_and_nothing_else_is_recorded() {
        let sink = sink();
        let traces = Traces::exporting_to(sink.clone());
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(StepSpans));

        let call = traces.start("call", &MetadataMap::new(), &[]);
        let step = call.child("custom");
        // Outside the step: not recorded.
        drop(tracing::info_span!("before"));
        assert_eq!(in_step(&step, step_work()).now_or_never(), Some(7));
        drop(tracing::info_span!("after"));
        let spans = queued(&sink);

        let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
        // In the order they closed.
        assert_eq!(names, ["decode", "detached", "lookup"]);
        let step_id = step.span_id().to_bytes().to_vec();
        let trace_id = call.trace_id().to_bytes().to_vec();
        let (decode, detached, lookup) = (&spans[0], &spans[1], &spans[2]);
        for span in &spans {
            assert_eq!(span.trace_id, trace_id, "{}", span.name);
            assert_eq!(span.kind, 1, "internal");
            assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
            assert!(span.start_time_unix_nano > 0);
        }
        assert_eq!(lookup.parent_span_id, step_id);
        assert_eq!(detached.parent_span_id, step_id);
        assert_eq!(decode.parent_span_id, lookup.span_id);
        let values = |span: &Span| -> Vec<(String, Option<Value>)> {
            span.attributes
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().and_then(|v| v.value.clone());
                    (kv.key.clone(), value)
                })
                .collect()
        };
        assert_eq!(
            values(lookup),
            [
                ("key".into(), Some(Value::StringValue("k1".into()))),
                ("attempt".into(), Some(Value::IntValue(2))),
                ("hit".into(), Some(Value::BoolValue(true))),
            ]
        );
        assert_eq!(
            values(decode),
            [
                ("ratio".into(), Some(Value::DoubleValue(0.5))),
                ("detail".into(), Some(Value::StringValue("[1, 2]".into()))),
                ("ratio".into(), Some(Value::DoubleValue(0.75))),
            ]
        );
        drop(step);
        drop(call);
    }

    #[tokio::test]
    async fn without_export_or_sampling_nothing_is_recorded() {
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(StepSpans));
        // Export off: the step span is not recorded, so neither are the step's spans.
        let off = Traces::disabled();
        let call = off.start("call", &MetadataMap::new(), &[]);
        let step = call.child("custom");
        assert_eq!(in_step(&step, step_work()).now_or_never(), Some(7));
        CURRENT.with(|current| assert!(current.borrow().is_none()));

        // A call the caller did not sample (parent-based sampling) is not recorded either.
        let sink = sink();
        let on = Traces::exporting_to(sink.clone());
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        let call = on.start("call", &metadata, &[]);
        let step = call.child("custom");
        assert_eq!(in_step(&step, step_work()).now_or_never(), Some(7));
        drop((step, call));
        assert!(queued(&sink).is_empty());
    }

    #[test]
    fn attributes_are_bounded() {
        let mut text = Bounded(String::new());
        assert!(write!(text, "{:?}", "x".repeat(1000)).is_err());
        // The opening quote and 255 x's.
        assert_eq!(text.0.len(), bounds::SPAN_ATTRIBUTE_BYTES);
    }
}
