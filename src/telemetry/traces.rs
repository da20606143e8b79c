//! One server span per call, named as the RPC semantic conventions say
//! (`coprocess.Dispatcher/Dispatch`), child of the gateway's span when its context arrives in the
//! metadata, exported over OTLP (gRPC or HTTP/protobuf). With export off, calls still get trace
//! and span IDs (the caller's trace when it sent one) so log lines can be joined to traces.

use std::{sync::Arc, time::Duration};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _,
    },
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider},
};
use tonic::metadata::MetadataMap;

use super::{
    export::{BatchSettings, CountingBatchProcessor, SpanCounters},
    propagation::parent_from_metadata,
};
use crate::{
    config::{Config, OtlpProtocol, otel::resource_attributes, parse_headers},
    metrics::Metrics,
};

/// Tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The exporter refused its settings.
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

struct Export {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    processor: Arc<CountingBatchProcessor>,
}

/// Starts call spans; exports them when an endpoint is configured.
#[derive(Clone)]
pub struct Traces {
    export: Option<Arc<Export>>,
    ids: RandomIdGenerator,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("exporting", &self.export.is_some())
            .finish()
    }
}

fn sampler(name: &str, ratio: Option<f64>) -> Sampler {
    let ratio = ratio.unwrap_or(1.0);
    match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// A processor wrapper so the provider and our shutdown share one processor.
#[derive(Debug)]
struct SharedProcessor(Arc<CountingBatchProcessor>);

impl opentelemetry_sdk::trace::SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

impl Traces {
    /// IDs for logs, no export.
    pub fn disabled() -> Self {
        Self {
            export: None,
            ids: RandomIdGenerator::default(),
        }
    }

    /// Sets up export as `config` says (off without `otlp_endpoint`). Must run inside the
    /// Tokio runtime: the export task starts here.
    ///
    /// # Errors
    /// When the exporter cannot be built from the settings.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Self, TracesError> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Self::disabled());
        };
        let error = |reason: String| TracesError::Exporter {
            endpoint: endpoint.clone(),
            reason,
        };
        let headers = config
            .otlp_headers
            .as_deref()
            .map(parse_headers)
            .transpose()
            .map_err(error)?
            .unwrap_or_default();
        let timeout = Duration::from_millis(config.otlp_timeout_ms);
        let mut exporter = match config.otlp_protocol {
            OtlpProtocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &headers {
                    let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                        .map_err(|_| error(format!("header name {name:?} is not valid")))?;
                    let value = value
                        .parse()
                        .map_err(|_| error(format!("the value of header {name} is not valid")))?;
                    metadata.insert(name, value);
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .build()
            }
            OtlpProtocol::HttpProtobuf => {
                // reqwest uses the process-wide rustls provider: ring, our only crypto backend.
                // An error means one is installed already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .with_headers(headers.into_iter().collect())
                    .build()
            }
        }
        .map_err(|err| error(err.to_string()))?;

        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(
                resource_attributes(config.resource_attributes.as_deref())
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .chain([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))]),
            )
            .build();
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let processor = Arc::new(CountingBatchProcessor::spawn(
            exporter,
            BatchSettings {
                queue_size: config.span_queue_size,
                batch_size: config.span_batch_size,
                delay: Duration::from_millis(config.span_batch_delay_ms),
                export_timeout: timeout,
            },
            SpanCounters {
                exported: metrics.spans_exported.clone(),
                dropped: metrics.spans_dropped.clone(),
            },
        ));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SharedProcessor(processor.clone()))
            .with_sampler(sampler(&config.trace_sampler, config.trace_sampler_arg))
            .with_resource(resource)
            .build();
        let tracer =
            opentelemetry::trace::TracerProvider::tracer(&provider, env!("CARGO_PKG_NAME"));
        Ok(Self {
            export: Some(Arc::new(Export {
                tracer,
                provider,
                processor,
            })),
            ids: RandomIdGenerator::default(),
        })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    /// Starts the server span of one call, child of the context in `metadata`.
    pub fn start(
        &self,
        name: &'static str,
        metadata: &MetadataMap,
        attributes: Vec<KeyValue>,
    ) -> CallSpan {
        let parent = parent_from_metadata(metadata);
        match &self.export {
            Some(export) => {
                let cx = match parent {
                    Some(parent) => Context::new().with_remote_span_context(parent),
                    None => Context::new(),
                };
                let span = export
                    .tracer
                    .span_builder(name)
                    .with_kind(SpanKind::Server)
                    .with_attributes(attributes)
                    .start_with_context(&export.tracer, &cx);
                let context = span.span_context().clone();
                CallSpan {
                    span: Some(span),
                    context,
                }
            }
            None => {
                let trace_id = parent
                    .as_ref()
                    .map_or_else(|| self.ids.new_trace_id(), SpanContext::trace_id);
                let flags = parent
                    .as_ref()
                    .map_or(TraceFlags::default(), SpanContext::trace_flags);
                CallSpan {
                    span: None,
                    context: SpanContext::new(
                        trace_id,
                        self.ids.new_span_id(),
                        flags,
                        false,
                        TraceState::default(),
                    ),
                }
            }
        }
    }

    /// Starts the span of one plugin step, child of the call's span (recorded only when the call
    /// is).
    pub fn start_child(&self, parent: &CallSpan, step_kind: &str) -> CallSpan {
        match (&self.export, &parent.span) {
            (Some(export), Some(_)) => {
                let cx = Context::new().with_remote_span_context(parent.context.clone());
                let span = export
                    .tracer
                    .span_builder(format!("step {step_kind}"))
                    .with_kind(SpanKind::Internal)
                    .with_attributes([KeyValue::new("tyk.step.kind", step_kind.to_string())])
                    .start_with_context(&export.tracer, &cx);
                let context = span.span_context().clone();
                CallSpan {
                    span: Some(span),
                    context,
                }
            }
            _ => CallSpan {
                span: None,
                context: parent.context.clone(),
            },
        }
    }

    /// Exports what is queued and stops exporting, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(export) = &self.export {
            if !export.processor.close(timeout).await {
                tracing::warn!(?timeout, "spans still queued at exit were not exported");
            }
            let _ = export.provider.shutdown();
        }
    }
}

/// The span of one call; ends when [`CallSpan::end`] is called or it is dropped.
#[derive(Debug)]
pub struct CallSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    context: SpanContext,
}

impl CallSpan {
    /// The call's trace ID (for logs).
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    /// The call's span ID (for logs).
    pub fn span_id(&self) -> SpanId {
        self.context.span_id()
    }

    /// The trace ID as an exemplar, when the span is recorded.
    pub fn exemplar(&self) -> Option<String> {
        self.span
            .as_ref()
            .filter(|span| span.is_recording())
            .map(|_| self.context.trace_id().to_string())
    }

    /// Adds an attribute when the span is recorded.
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.span {
            span.set_attribute(attribute);
        }
    }

    /// Ends a step's span with the step's outcome.
    pub fn end_step(mut self, outcome: &'static str) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new("tyk.step.outcome", outcome));
            if outcome == "failed" {
                span.set_status(Status::error("step failed"));
            }
            span.end();
        }
    }

    /// Ends the span with the call's outcome and gRPC status code.
    pub fn end(mut self, outcome: &'static str, code: tonic::Code) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new("tyk.dispatch.outcome", outcome));
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != tonic::Code::Ok {
                span.set_status(Status::error(code.description()));
            }
            span.end();
        }
    }
}
