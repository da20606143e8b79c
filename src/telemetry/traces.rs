//! One server span per call, named as the RPC semantic conventions say
//! (`coprocess.Dispatcher/Dispatch`), child of the gateway's span when its context arrives in the
//! metadata, exported over OTLP (gRPC or HTTP/protobuf). With export off, calls still get trace
//! and span IDs (the caller's trace when it sent one) so log lines can be joined to traces.
//!
//! Spans are recorded straight into OTLP protobuf (see `otlp`): a call costs one buffer and no
//! per-attribute allocation, which is what keeps tracing at 100% within a few percent of off.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use tonic::metadata::MetadataMap;

use super::{
    export::{BatchSettings, SpanCounters, SpanSink, Transport},
    otlp::{self, AttrValue, RequestFrame, span as field},
    propagation::parent_from_metadata,
};
use crate::{
    bounds,
    config::{
        Config, OtlpProtocol, Problem, RootSampler, TraceSampler, otel::resource_attributes,
        parse_headers,
    },
    metrics::Metrics,
    wire::{put_len_prefix, put_len_record},
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
        reason: ExporterSetting,
    },
}

/// An export setting the exporter cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ExporterSetting {
    /// `otlp_headers` does not parse.
    #[error(transparent)]
    Headers(#[from] crate::config::ValueError),
    /// A header name HTTP does not allow.
    #[error("header name {0:?} is not valid")]
    HeaderName(String),
    /// A header value HTTP does not allow (not shown: it may be a credential).
    #[error("the value of header {0} is not valid")]
    HeaderValue(String),
    /// The endpoint is not a URL.
    #[error("not a valid URL: {0}")]
    Url(String),
    /// The TLS setup for an `https` endpoint failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(String),
}

impl TracesError {
    /// The error as a configuration problem.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Exporter { endpoint, reason } => {
                Problem::new("otlp_endpoint", format!("{endpoint}: {reason}"))
            }
        }
    }
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`), as the OpenTelemetry SDKs decide.
#[derive(Debug, Clone, Copy)]
enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Trace IDs whose low 63 bits fall under this bound.
    Ratio(u64),
    /// A sampled parent's decision is followed, an unsampled one's too; roots use the inner.
    ParentBased(Root),
}

#[derive(Debug, Clone, Copy)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

fn ratio_bound(ratio: f64) -> u64 {
    // As the SDKs do: compare the trace ID's low 63 bits with ratio * 2^63.
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

fn under_ratio(trace_id: TraceId, bound: u64) -> bool {
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

impl From<TraceSampler> for Sampler {
    fn from(sampler: TraceSampler) -> Self {
        match sampler {
            TraceSampler::AlwaysOn => Self::AlwaysOn,
            TraceSampler::AlwaysOff => Self::AlwaysOff,
            TraceSampler::Ratio(ratio) => Self::Ratio(ratio_bound(ratio)),
            TraceSampler::ParentBased(RootSampler::AlwaysOn) => Self::ParentBased(Root::AlwaysOn),
            TraceSampler::ParentBased(RootSampler::AlwaysOff) => Self::ParentBased(Root::AlwaysOff),
            TraceSampler::ParentBased(RootSampler::Ratio(ratio)) => {
                Self::ParentBased(Root::Ratio(ratio_bound(ratio)))
            }
        }
    }
}

impl Sampler {
    fn sample(self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match (self, parent) {
            (Self::AlwaysOn, _) => true,
            (Self::AlwaysOff, _) => false,
            (Self::Ratio(bound), _) => under_ratio(trace_id, bound),
            (Self::ParentBased(_), Some(parent)) => parent.is_sampled(),
            (Self::ParentBased(Root::AlwaysOn), None) => true,
            (Self::ParentBased(Root::AlwaysOff), None) => false,
            (Self::ParentBased(Root::Ratio(bound)), None) => under_ratio(trace_id, bound),
        }
    }
}

#[derive(Debug)]
struct Export {
    sink: Arc<SpanSink>,
    sampler: Sampler,
}

/// Starts call spans; exports them when an endpoint is configured.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    export: Option<Arc<Export>>,
}

/// Request-derived strings (hook name, API and org IDs, event type) are as long as the gateway
/// sends them; a span carries at most [`bounds::SPAN_ATTRIBUTE_BYTES`] of each, truncated on a
/// char boundary as OpenTelemetry's attribute length limit does.
pub(super) fn span_value(value: AttrValue<'_>) -> AttrValue<'_> {
    match value {
        AttrValue::Str(text) => AttrValue::Str(bounds::prefix(text, bounds::SPAN_ATTRIBUTE_BYTES)),
        other => other,
    }
}

fn random_trace_id() -> TraceId {
    loop {
        let id = TraceId::from_bytes(rand::random());
        if id != TraceId::INVALID {
            return id;
        }
    }
}

pub(super) fn random_span_id() -> SpanId {
    loop {
        let id = SpanId::from_bytes(rand::random());
        if id != SpanId::INVALID {
            return id;
        }
    }
}

pub(super) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The exporter settings both [`Traces::check`] and [`Traces::from_config`] start from.
struct ExportSettings<'a> {
    endpoint: &'a str,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl<'a> ExportSettings<'a> {
    /// `None` when export is off (no endpoint).
    fn of(config: &'a Config) -> Result<Option<Self>, TracesError> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let headers = config
            .otlp_headers
            .as_deref()
            .map(parse_headers)
            .transpose()
            .map_err(|err| TracesError::Exporter {
                endpoint: endpoint.to_string(),
                reason: err.into(),
            })?
            .unwrap_or_default();
        Ok(Some(Self {
            endpoint,
            headers,
            timeout: Duration::from_millis(config.otlp_timeout_ms),
        }))
    }

    fn error(&self, reason: ExporterSetting) -> TracesError {
        TracesError::Exporter {
            endpoint: self.endpoint.to_string(),
            reason,
        }
    }
}

impl Traces {
    /// IDs for logs, no export.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Checks that the exporter `config` describes can be built, without building it (no
    /// runtime needed: `check-config` runs outside one).
    ///
    /// # Errors
    /// What [`Traces::from_config`] would refuse.
    pub fn check(config: &Config) -> Result<(), TracesError> {
        let Some(export) = ExportSettings::of(config)? else {
            return Ok(());
        };
        match config.otlp_protocol {
            OtlpProtocol::Grpc => {
                grpc_endpoint(export.endpoint, &export.headers, export.timeout).map(drop)
            }
            OtlpProtocol::HttpProtobuf => {
                http_transport(export.endpoint, &export.headers, export.timeout).map(drop)
            }
        }
        .map_err(|reason| export.error(reason))
    }

    /// Sets up export as `config` says (off without `otlp_endpoint`). Must run inside the
    /// Tokio runtime: the export task starts here.
    ///
    /// # Errors
    /// When the exporter cannot be built from the settings.
    pub fn from_config(
        config: &Config,
        sampler: TraceSampler,
        metrics: &Metrics,
    ) -> Result<Self, TracesError> {
        let Some(export) = ExportSettings::of(config)? else {
            return Ok(Self::disabled());
        };
        let transport = match config.otlp_protocol {
            OtlpProtocol::Grpc => grpc_transport(export.endpoint, &export.headers, export.timeout),
            OtlpProtocol::HttpProtobuf => {
                http_transport(export.endpoint, &export.headers, export.timeout)
            }
        }
        .map_err(|reason| export.error(reason))?;
        let resource = resource_attributes(config.resource_attributes.as_deref());
        // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES, which wins
        // over the default.
        let service_name = resource
            .iter()
            .find(|(key, _)| key == "service.name")
            .filter(|_| config.service_name == env!("CARGO_PKG_NAME"))
            .map_or(config.service_name.as_str(), |(_, value)| value.as_str());
        let frame = RequestFrame::new(
            std::iter::once(("service.name", service_name))
                .chain(
                    resource
                        .iter()
                        .filter(|(key, _)| key != "service.name")
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .chain([("service.version", env!("CARGO_PKG_VERSION"))]),
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        );
        let sink = SpanSink::spawn(
            transport,
            frame,
            BatchSettings {
                queue_size: config.span_queue_size,
                batch_size: config.span_batch_size,
                delay: Duration::from_millis(config.span_batch_delay_ms),
                export_timeout: export.timeout,
            },
            SpanCounters {
                exported: metrics.spans.exported.clone(),
                dropped: metrics.spans.dropped.clone(),
            },
        );
        Ok(Self {
            export: Some(Arc::new(Export {
                sink,
                sampler: Sampler::from(sampler),
            })),
        })
    }

    /// Exporting into `sink`, sampled as by default (the caller's decision, else every call).
    #[cfg(test)]
    pub(super) fn exporting_to(sink: Arc<SpanSink>) -> Self {
        Self {
            export: Some(Arc::new(Export {
                sink,
                sampler: Sampler::ParentBased(Root::AlwaysOn),
            })),
        }
    }

    /// Starts the server span of one call, child of the context in `metadata`, with
    /// `attributes` (recorded only when the span is; strings cut to
    /// [`bounds::SPAN_ATTRIBUTE_BYTES`]).
    pub fn start(
        &self,
        name: &'static str,
        metadata: &MetadataMap,
        attributes: &[(&str, AttrValue<'_>)],
    ) -> CallSpan {
        let parent = parent_from_metadata(metadata);
        let trace_id = parent
            .as_ref()
            .map_or_else(random_trace_id, SpanContext::trace_id);
        let span_id = random_span_id();
        let sampled = self
            .export
            .as_ref()
            .is_some_and(|export| export.sampler.sample(parent.as_ref(), trace_id));
        let flags = match (&self.export, &parent) {
            (Some(_), _) if sampled => TraceFlags::SAMPLED,
            (Some(_), _) => TraceFlags::default(),
            // Not exporting: the caller's decision travels on in the logs.
            (None, parent) => parent
                .as_ref()
                .map_or(TraceFlags::default(), SpanContext::trace_flags),
        };
        let recording = self.export.as_ref().filter(|_| sampled).map(|export| {
            let mut body = Vec::with_capacity(512);
            put_len_record(&mut body, field::TRACE_ID, &trace_id.to_bytes());
            put_len_record(&mut body, field::SPAN_ID, &span_id.to_bytes());
            if let Some(parent) = &parent {
                let state = parent.trace_state().header();
                if !state.is_empty() {
                    put_len_record(&mut body, field::TRACE_STATE, state.as_bytes());
                }
                put_len_record(
                    &mut body,
                    field::PARENT_SPAN_ID,
                    &parent.span_id().to_bytes(),
                );
            }
            put_len_record(&mut body, field::NAME, name.as_bytes());
            otlp::put_varint_field(&mut body, field::KIND, field::KIND_SERVER);
            otlp::put_fixed64(&mut body, field::START_TIME, unix_nanos());
            for (key, value) in attributes {
                otlp::put_attribute(&mut body, field::ATTRIBUTES, key, span_value(*value));
            }
            Recording {
                body,
                sink: export.sink.clone(),
            }
        });
        let state = parent
            .as_ref()
            .map_or_else(TraceState::default, |p| p.trace_state().clone());
        CallSpan {
            context: SpanContext::new(trace_id, span_id, flags, false, state),
            recording,
        }
    }

    /// Exports what is queued and stops exporting, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(export) = &self.export
            && !export.sink.close(timeout).await
        {
            tracing::warn!(?timeout, "spans still queued at exit were not exported");
        }
    }
}

/// The configured export headers (`OTEL_EXPORTER_OTLP_HEADERS`), checked.
fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, ExporterSetting> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let key = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ExporterSetting::HeaderName(name.clone()))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| ExporterSetting::HeaderValue(name.clone()))?;
        map.insert(key, value);
    }
    Ok(map)
}

/// The gRPC endpoint and metadata, checked; making the channel needs a runtime, this does not.
fn grpc_endpoint(
    endpoint: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(tonic::transport::Endpoint, MetadataMap), ExporterSetting> {
    let metadata = tonic::metadata::MetadataMap::from_headers(header_map(headers)?);
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|err| ExporterSetting::Url(err.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if endpoint.starts_with("https://") {
        channel = channel
            .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
            .map_err(|err| ExporterSetting::Tls(err.to_string()))?;
    }
    Ok((channel, metadata))
}

fn grpc_transport(
    endpoint: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Transport, ExporterSetting> {
    let (channel, metadata) = grpc_endpoint(endpoint, headers, timeout)?;
    Ok(Transport::Grpc {
        client: tonic::client::Grpc::new(channel.connect_lazy()),
        metadata,
    })
}

fn http_transport(
    endpoint: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Transport, ExporterSetting> {
    let map = header_map(headers)?;
    let url = reqwest::Url::parse(endpoint).map_err(|err| ExporterSetting::Url(err.to_string()))?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|err| ExporterSetting::Client(err.to_string()))?;
    Ok(Transport::Http {
        client,
        url: url.to_string(),
        headers: map,
    })
}

/// A span being recorded: its OTLP encoding so far, and where it goes when it ends.
#[derive(Debug)]
struct Recording {
    body: Vec<u8>,
    sink: Arc<SpanSink>,
}

/// The span of one call; ends when [`CallSpan::end`] is called or it is dropped.
#[derive(Debug)]
pub struct CallSpan {
    context: SpanContext,
    recording: Option<Recording>,
}

impl CallSpan {
    /// The call's trace ID (for logs).
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    /// The span's context (for the trace context of calls made on its behalf).
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// The call's span ID (for logs).
    pub fn span_id(&self) -> SpanId {
        self.context.span_id()
    }

    /// Where the span goes when it ends, when it is recorded.
    pub(super) fn recording_sink(&self) -> Option<&Arc<SpanSink>> {
        self.recording.as_ref().map(|recording| &recording.sink)
    }

    /// The trace ID as an exemplar, when the span is recorded.
    pub fn exemplar(&self) -> Option<String> {
        self.recording
            .as_ref()
            .map(|_| self.context.trace_id().to_string())
    }

    /// Adds an attribute when the span is recorded (a string cut to
    /// [`bounds::SPAN_ATTRIBUTE_BYTES`]).
    pub fn set_attribute(&mut self, key: &str, value: AttrValue<'_>) {
        if let Some(recording) = &mut self.recording {
            otlp::put_attribute(
                &mut recording.body,
                field::ATTRIBUTES,
                key,
                span_value(value),
            );
        }
    }

    /// Starts the span of one plugin step, child of the call's span (recorded only when the call
    /// is).
    pub fn child(&self, step_kind: &str) -> CallSpan {
        let parent = self;
        let Some(parent_recording) = &parent.recording else {
            return CallSpan {
                context: parent.context.clone(),
                recording: None,
            };
        };
        let trace_id = parent.context.trace_id();
        let span_id = random_span_id();
        let mut body = Vec::with_capacity(256);
        put_len_record(&mut body, field::TRACE_ID, &trace_id.to_bytes());
        put_len_record(&mut body, field::SPAN_ID, &span_id.to_bytes());
        put_len_record(
            &mut body,
            field::PARENT_SPAN_ID,
            &parent.context.span_id().to_bytes(),
        );
        const PREFIX: &str = "step ";
        put_len_prefix(&mut body, field::NAME, PREFIX.len() + step_kind.len());
        body.extend_from_slice(PREFIX.as_bytes());
        body.extend_from_slice(step_kind.as_bytes());
        otlp::put_varint_field(&mut body, field::KIND, field::KIND_INTERNAL);
        otlp::put_fixed64(&mut body, field::START_TIME, unix_nanos());
        otlp::put_attribute(
            &mut body,
            field::ATTRIBUTES,
            "tyk.step.kind",
            AttrValue::Str(step_kind),
        );
        CallSpan {
            context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            recording: Some(Recording {
                body,
                sink: parent_recording.sink.clone(),
            }),
        }
    }

    /// Ends a step's span with the step's outcome.
    pub fn end_step(mut self, outcome: &'static str) {
        self.set_attribute("tyk.step.outcome", AttrValue::Str(outcome));
        let error = (outcome == "failed").then_some("step failed");
        self.finish(error);
    }

    /// Ends the span with the call's outcome and gRPC status code.
    pub fn end(mut self, outcome: &'static str, code: tonic::Code) {
        self.set_attribute("tyk.dispatch.outcome", AttrValue::Str(outcome));
        self.set_attribute("rpc.grpc.status_code", AttrValue::Int(code as i64));
        let error = (code != tonic::Code::Ok).then(|| code.description());
        self.finish(error);
    }

    fn finish(&mut self, error: Option<&str>) {
        if let Some(mut recording) = self.recording.take() {
            if let Some(message) = error {
                otlp::put_error_status(&mut recording.body, message);
            }
            otlp::put_fixed64(&mut recording.body, field::END_TIME, unix_nanos());
            recording.sink.push(&recording.body);
        }
    }
}

impl Drop for CallSpan {
    /// A call dropped before it ended (the caller went away) still has its span exported.
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_string_attributes_are_cut_on_a_char_boundary() {
        let long = format!("a{}", "€".repeat(1000));
        let AttrValue::Str(cut) = span_value(AttrValue::Str(&long)) else {
            panic!("still a string");
        };
        // 1 + 3 × 85 = 256 bytes.
        assert_eq!(cut, format!("a{}", "€".repeat(85)));
        assert_eq!(span_value(AttrValue::Str("short")), AttrValue::Str("short"));
        assert_eq!(span_value(AttrValue::Int(7)), AttrValue::Int(7));
    }
}
