//! Traces: a real OTLP/gRPC receiver (tonic + opentelemetry-proto) collects the spans; the
//! caller's context in metadata becomes the parent; a dead collector costs only counted spans.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_subscriber::prelude::*;
use tyk_dispatcher::hooks::steps::grants::hex;
use tyk_dispatcher::{
    App, Config,
    hooks::{
        HookConfig, HookTypeName, OnError, Step, StepConfig, StepContext, StepError, StepKind,
        StepOutcome,
    },
    pb,
};

use crate::helpers::*;

/// A received span with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

/// Spans received, in order.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (resource.clone(), span)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, String, tokio_util::sync::CancellationToken) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let (receiver, stop) = (receiver.clone(), stop.clone());
            async move {
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(receiver))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                    .unwrap();
            }
        });
        (receiver, format!("http://{addr}"), stop)
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "only {} of {count} spans arrived",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> String {
    match attribute(attributes, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn dispatch_spans_carry_the_attributes_and_join_the_callers_trace() {
    let (receiver, endpoint, stop) = Receiver::start().await;
    let app = spawn_app(config_with(|c| {
        c.otlp_endpoint = Some(endpoint);
        c.span_batch_delay_ms = 50;
    }))
    .await;
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    call_with_metadata(
        &app,
        DISPATCH,
        seed_object().encode_to_vec(),
        &[(
            "traceparent",
            &format!("00-{w3c_trace}-00f067aa0ba902b7-01"),
        )],
    )
    .await;
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    call_with_metadata(
        &app,
        DISPATCH,
        seed_object().encode_to_vec(),
        &[("b3", &format!("{b3_trace}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    call_with_metadata(
        &app,
        DISPATCH,
        seed_object().encode_to_vec(),
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let event = tyk_dispatcher::pb::Event {
        payload: r#"{"message":{"Type":"AuthFailure"}}"#.into(),
    };
    call_with_metadata(&app, DISPATCH_EVENT, event.encode_to_vec(), &[]).await;
    let spans = receiver.wait_for(4).await;

    let (resource, first) = &spans[0];
    assert_eq!(text(resource, "service.name"), "tyk-dispatcher");
    assert_eq!(first.name, "coprocess.Dispatcher/Dispatch");
    assert_eq!(first.kind, SpanKind::Server as i32);
    assert_eq!(hex(&first.trace_id), w3c_trace);
    assert_eq!(hex(&first.parent_span_id), "00f067aa0ba902b7");
    for (key, expected) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "coprocess.Dispatcher"),
        ("rpc.method", "Dispatch"),
        ("tyk.hook.type", "Pre"),
        ("tyk.hook.name", "MyPreCustomPluginForBasicAuth"),
        ("tyk.api.id", "04e911d3012646d97fcdd6c846fafc4b"),
        ("tyk.org.id", "5e9d9544a1dcd60001d0ed20"),
        ("tyk.dispatch.outcome", "unchanged"),
    ] {
        assert_eq!(text(&first.attributes, key), expected, "{key}");
    }
    assert_eq!(
        attribute(&first.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );

    assert_eq!(hex(&spans[1].1.trace_id), b3_trace);
    assert_eq!(hex(&spans[1].1.parent_span_id), "e457b5a2e4d86bd1");
    assert_eq!(
        hex(&spans[2].1.trace_id),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(hex(&spans[2].1.parent_span_id), "05e3ac9a4f6e3b90");
    let event_span = &spans[3].1;
    assert_eq!(event_span.name, "coprocess.Dispatcher/DispatchEvent");
    assert_eq!(
        text(&event_span.attributes, "tyk.event.type"),
        "AuthFailure"
    );
    assert!(
        event_span.parent_span_id.is_empty(),
        "no context sent: a root span"
    );

    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_spans_exported_total 4"),
        "{metrics}"
    );
    // One exemplar per bucket, the latest call's: any of the three traces.
    let exemplar = [w3c_trace, b3_trace, "0000000000000000a3ce929d0e0e4736"]
        .iter()
        .any(|trace| metrics.contains(&format!("# {{trace_id=\"{trace}\"}}")));
    assert!(exemplar, "exemplar missing:\n{metrics}");
    app.shutdown().await;
    stop.cancel();
}

#[tokio::test]
async fn a_dead_collector_leaves_dispatch_answering_and_counts_the_drops() {
    // A port nobody listens on.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let app = spawn_app(config_with(|c| {
        c.otlp_endpoint = Some(format!("http://{dead}"));
        c.span_batch_delay_ms = 50;
        c.span_queue_size = 8;
        c.span_batch_size = 4;
        c.otlp_timeout_ms = 500;
    }))
    .await;
    let channel = app.channel().await;
    let request = seed_object().encode_to_vec();
    let started = Instant::now();
    for _ in 0..50 {
        let reply = call_raw(channel.clone(), DISPATCH, request.clone())
            .await
            .expect("answered");
        assert!(reply == request.as_slice());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "export never slows calls down"
    );
    let started = Instant::now();
    let dropped = loop {
        let (_, metrics) = http_get(app.admin, "/metrics").await;
        let dropped: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tyk_dispatcher_spans_dropped_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if dropped == 50 || started.elapsed() > Duration::from_secs(10) {
            assert!(
                metrics.contains("tyk_dispatcher_spans_exported_total 0"),
                "{metrics}"
            );
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dropped, 50, "every span is accounted for as dropped");
    app.shutdown().await;
}

#[tokio::test]
async fn log_lines_carry_the_callers_trace_id_even_without_export() {
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _) = process.ready().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut grpc_client = tonic::client::Grpc::new(connect(grpc[0].parse().unwrap()).await);
    grpc_client.ready().await.unwrap();
    let mut request = Request::new(tyk_dispatcher::codec::RawMessage::new(
        seed_object().encode_to_vec(),
    ));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    grpc_client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(DISPATCH),
            tyk_dispatcher::codec::RawCodec,
        )
        .await
        .unwrap();
    let line = process
        .wait_for_log("dispatch", Duration::from_secs(5))
        .await;
    assert_eq!(line["span"]["trace_id"], trace, "{line}");
    let span_id = line["span"]["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, "b7ad6b7169203331",
        "our own span, not the caller's"
    );
}

#[tokio::test]
async fn spans_can_be_exported_over_http_protobuf() {
    use axum::{Router, body::Bytes, routing::post};
    let received = Arc::new(Mutex::new(Vec::<Span>::new()));
    let router = Router::new().route(
        "/v1/traces",
        post({
            let received = received.clone();
            move |body: Bytes| async move {
                let request =
                    ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut received = received.lock().unwrap();
                for resource_spans in request.resource_spans {
                    for scope in resource_spans.scope_spans {
                        received.extend(scope.spans);
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = spawn_app(config_with(|c| {
        c.otlp_endpoint = Some(format!("http://{addr}/v1/traces"));
        c.otlp_protocol = tyk_dispatcher::config::OtlpProtocol::HttpProtobuf;
        c.span_batch_delay_ms = 50;
    }))
    .await;
    call_raw(app.channel().await, DISPATCH, seed_object().encode_to_vec())
        .await
        .unwrap();
    let started = Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no span arrived over HTTP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        received.lock().unwrap()[0].name,
        "coprocess.Dispatcher/Dispatch"
    );
    app.shutdown().await;
}

/// A custom step with spans of its own: one around an await, one opened inside it.
#[derive(Debug)]
struct Traced;

#[async_trait::async_trait]
impl Step for Traced {
    async fn run(
        &self,
        _object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        async {
            tokio::task::yield_now().await;
            tracing::info_span!("check", attempt = 1).in_scope(|| {});
        }
        .instrument(tracing::info_span!("lookup", user = "dev"))
        .await;
        Ok(StepOutcome::Unchanged)
    }
}

/// The app with the `traced` step on the seed call's hook.
async fn spawn_traced(configure: impl FnOnce(&mut Config)) -> TestApp {
    let config = config_with(|c| {
        c.span_batch_delay_ms = 50;
        c.hooks = vec![HookConfig {
            name: seed_object().hook_name,
            hook_type: HookTypeName::Pre,
            api_ids: Vec::new(),
            steps: vec![StepConfig {
                kind: "traced".into(),
                settings: serde_json::Map::new(),
            }],
            deadline_ms: 1000,
            on_error: OnError::FailClosed,
            dry_run: false,
            cel_cost_limit: tyk_dispatcher::hooks::cel::DEFAULT_COST_LIMIT,
        }];
        configure(c);
    });
    let traced = StepKind::new("traced", tyk_dispatcher::hooks::steps::ALL_HOOKS, |_| {
        Ok(Traced)
    });
    spawn_built(App::builder(config).step(traced).build().await.unwrap()).await
}

#[tokio::test]
async fn a_custom_steps_own_spans_are_exported_as_children_of_its_step_span() {
    // The layer the binary installs with its log output, here for this thread only: the test's
    // runtime, the app and the receiver all run on it.
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(tyk_dispatcher::StepSpans),
    );
    let (receiver, endpoint, stop) = Receiver::start().await;
    let app = spawn_traced(|c| c.otlp_endpoint = Some(endpoint.clone())).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // A span of ours around the call, outside any step: not exported.
    call_with_metadata(
        &app,
        DISPATCH,
        seed_object().encode_to_vec(),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )
    .instrument(tracing::info_span!("outside"))
    .await;
    let spans = receiver.wait_for(4).await;
    // Anything more would have arrived in the same batch or the next one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans: Vec<Span> = spans.into_iter().map(|(_, span)| span).collect();
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "check",
            "coprocess.Dispatcher/Dispatch",
            "lookup",
            "step traced"
        ]
    );
    assert_eq!(receiver.spans.lock().unwrap().len(), 4, "nothing else");
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let (call, step, lookup, check) = (
        named("coprocess.Dispatcher/Dispatch"),
        named("step traced"),
        named("lookup"),
        named("check"),
    );
    for span in &spans {
        assert_eq!(hex(&span.trace_id), trace, "{}", span.name);
    }
    assert_eq!(hex(&call.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(step.parent_span_id, call.span_id);
    assert_eq!(lookup.parent_span_id, step.span_id);
    assert_eq!(check.parent_span_id, lookup.span_id);
    assert_eq!(lookup.kind, SpanKind::Internal as i32);
    assert_eq!(text(&lookup.attributes, "user"), "dev");
    assert_eq!(
        attribute(&check.attributes, "attempt"),
        Some(&Value::IntValue(1))
    );
    // Within the step's time.
    assert!(lookup.start_time_unix_nano >= step.start_time_unix_nano);
    assert!(lookup.end_time_unix_nano <= step.end_time_unix_nano);
    app.shutdown().await;

    // Export on but the call not sampled: the step is not recorded, nor are its spans.
    let app = spawn_traced(|c| {
        c.otlp_endpoint = Some(endpoint);
        c.trace_sampler = "always_off".into();
    })
    .await;
    call_with_metadata(&app, DISPATCH, seed_object().encode_to_vec(), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.spans.lock().unwrap().len(), 4, "nothing more");
    app.shutdown().await;
    stop.cancel();
}

#[tokio::test]
async fn the_binarys_subscriber_exports_a_custom_steps_spans() {
    let (receiver, endpoint, stop) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = custom_auth_config(dir.path(), "a-signing-secret-of-enough-length");
    let process = Process::start_example(
        "custom_auth",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        &["--config", config.to_str().unwrap()],
    );
    let (grpc, _) = process.ready().await;
    let mut call = seed_object();
    call.hook_type = pb::HookType::CustomKeyCheck as i32;
    call.hook_name = "Signed".into();
    call.request
        .as_mut()
        .unwrap()
        .headers
        .insert("X-Signature".into(), "00".into());
    call_raw(
        connect(grpc[0].parse().unwrap()).await,
        DISPATCH,
        call.encode_to_vec(),
    )
    .await
    .unwrap();
    let spans: Vec<Span> = receiver
        .wait_for(3)
        .await
        .into_iter()
        .map(|(_, span)| span)
        .collect();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let (call, step, verify) = (
        named("coprocess.Dispatcher/Dispatch"),
        named("step signed_request_auth"),
        named("verify_signature"),
    );
    assert_eq!(verify.parent_span_id, step.span_id);
    assert_eq!(verify.trace_id, call.trace_id);
    assert_eq!(text(&verify.attributes, "method"), "GET");
    stop.cancel();
}
