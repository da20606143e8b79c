//! Receive limits, the in-flight budget and reply limits, over gRPC.

use std::time::Duration;

use prost::Message;
use tonic::Code;
use tyk_dispatcher::pb;

use crate::helpers::*;

fn object_with_body(body: Vec<u8>) -> Vec<u8> {
    let mut object = seed_object();
    let request = object.request.as_mut().expect("request");
    request.body = String::from_utf8(body.clone()).unwrap_or_default();
    request.raw_body = body.into();
    object.encode_to_vec()
}

#[tokio::test]
async fn a_message_over_the_receive_limit_is_refused_and_the_next_one_served() {
    let app = spawn_app(config_with(|c| c.max_recv_bytes = 64 * 1024)).await;
    let channel = app.channel().await;
    let err = call_raw(
        channel.clone(),
        DISPATCH,
        object_with_body(vec![0xff; 100 * 1024]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().starts_with("request of ")
            && err
                .message()
                .contains("exceeds the receive limit of 65536 bytes"),
        "{}",
        err.message()
    );
    let small = object_with_body(vec![0xff; 1024]);
    assert_eq!(
        call_raw(channel, DISPATCH, small.clone())
            .await
            .unwrap()
            .as_ref(),
        small.as_slice()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_default_receive_limit_takes_bodies_far_over_four_mib() {
    let app = spawn_app(config_with(|c| c.max_reply_bytes = Some(64 << 20))).await;
    let request = object_with_body(vec![0xab; 20 << 20]);
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .expect("20 MiB passes");
    assert!(reply == request.as_slice());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_in_flight_budget_get_resource_exhausted() {
    let app = spawn_app(config_with(|c| {
        c.max_recv_bytes = 600 * 1024;
        c.max_in_flight_bytes = Some(600 * 1024);
    }))
    .await;
    let request = object_with_body(vec![0xff; 512 * 1024]);
    let channels: Vec<_> = futures_util::future::join_all((0..8).map(|_| app.channel())).await;
    // Whether calls overlap is up to the scheduler; bursts of 64 make it near certain, and a
    // few bursts make it certain enough.
    let mut refused = None;
    for _burst in 0..20 {
        let calls = (0..64).map(|i| call_raw(channels[i % 8].clone(), DISPATCH, request.clone()));
        for result in futures_util::future::join_all(calls).await {
            match result {
                Ok(reply) => assert!(reply == request.as_slice()),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    refused = Some(status.message().to_string());
                }
            }
        }
        if refused.is_some() {
            break;
        }
    }
    let message = refused.expect("some call was refused for the budget");
    assert!(
        message.starts_with("in-flight budget exhausted: this call needs"),
        "{message}"
    );
    assert!(
        message.contains("of 614400 bytes (max_in_flight_bytes)"),
        "{message}"
    );
    // Nothing is leaked: the budget is whole again and a call passes.
    let reply = call_raw(channels[0].clone(), DISPATCH, request.clone())
        .await
        .expect("budget returned");
    assert!(reply == request.as_slice());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_rejected_calls_total{reason=\"in_flight_budget\"}"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_utf8_reply_over_the_limit_is_rescued_by_dropping_body_strings() {
    let app = spawn_app(config_with(|c| c.max_reply_bytes = Some(1 << 20))).await;
    let body = "{\"k\":\"".to_string() + &"v".repeat(700 * 1024) + "\"}";
    let request = object_with_body(body.clone().into_bytes());
    assert!(request.len() > 1 << 20, "the body travels twice");
    let reply = call_raw(app.channel().await, DISPATCH, request)
        .await
        .expect("rescued");
    assert!(reply.len() <= 1 << 20);
    let decoded = pb::Object::decode(reply).unwrap();
    let request = decoded.request.unwrap();
    assert_eq!(request.raw_body, body.as_bytes());
    assert!(request.body.is_empty());
    assert_eq!(decoded.hook_name, "MyPreCustomPluginForBasicAuth");
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_reply_body_strings_dropped_total 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_binary_reply_over_the_limit_names_both_sizes() {
    let app = spawn_app(config_with(|c| c.max_reply_bytes = Some(1 << 20))).await;
    let request = object_with_body(vec![0xff; 2 << 20]);
    let err = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        format!(
            "reply too large: {} bytes exceeds the reply limit of 1048576 bytes (max_reply_bytes or TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE)",
            request.len()
        )
    );
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_known_limit_utf8_bodies_are_fitted_under_the_gateway_default() {
    // The gateway's 4 MiB default: a 3 MiB UTF-8 body travels twice, so only dropping the body
    // strings lets it through.
    let app = spawn_app(config_with(|_| {})).await;
    let body = "x".repeat(3 << 20);
    let request = object_with_body(body.clone().into_bytes());
    let reply = call_raw(app.channel().await, DISPATCH, request)
        .await
        .expect("fits");
    assert!(reply.len() <= 4 << 20);
    assert_eq!(
        pb::Object::decode(reply)
            .unwrap()
            .request
            .unwrap()
            .raw_body
            .len(),
        body.len()
    );
    // 5 MiB cannot fit: sent anyway (the gateway may have a larger limit), and counted.
    let request = object_with_body(vec![0xff; 5 << 20]);
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .expect("sent");
    assert!(reply == request.as_slice());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_replies_over_gateway_default_limit_total 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

/// The reported message: `levels` start-group tags of field 1 (0x0b) and their end tags
/// (0x0c), well formed, so only the depth is wrong with it. 20000 levels once overflowed the
/// stack in the wire scan and aborted the process.
fn nested_groups(levels: usize) -> Vec<u8> {
    let mut bytes = vec![0x0b; levels];
    bytes.resize(2 * levels, 0x0c);
    bytes
}

/// `levels` nested groups of field 15, unknown to every message of the schema.
fn unknown_nested_groups(levels: usize) -> Vec<u8> {
    let mut bytes = vec![0x7b; levels];
    bytes.resize(2 * levels, 0x7c);
    bytes
}

const TOO_DEEP_AT_63: &str = "malformed coprocess.Object: nesting deeper than 64 levels at byte 63";

fn malformed_count(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("tyk_dispatcher_rejected_calls_total{reason=\"malformed\"} ")
        })
        .and_then(|value| value.trim().parse().ok())
}

fn deep_hook() -> tyk_dispatcher::hooks::HookConfig {
    tyk_dispatcher::hooks::HookConfig {
        name: "Deep".into(),
        hook_type: tyk_dispatcher::hooks::HookTypeName::Pre,
        api_ids: Vec::new(),
        steps: vec![tyk_dispatcher::hooks::StepConfig {
            kind: "set_headers".into(),
            settings: serde_json::json!({"headers": {"x-team": "payments"}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }],
        deadline_ms: 500,
        on_error: tyk_dispatcher::hooks::OnError::FailClosed,
        dry_run: false,
        cel_cost_limit: tyk_dispatcher::hooks::cel::DEFAULT_COST_LIMIT,
    }
}

fn hooked_object() -> pb::Object {
    let mut object = seed_object();
    object.hook_type = pb::HookType::Pre as i32;
    object.hook_name = "Deep".into();
    object
}

#[tokio::test]
async fn twenty_thousand_nested_groups_are_refused_without_a_hook_and_the_server_keeps_serving() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    let bytes = nested_groups(20_000);
    assert_eq!(bytes.len(), 40_000);
    let err = call_raw(channel.clone(), DISPATCH, bytes)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), TOO_DEEP_AT_63);
    // The same start tags never closed: refused at the same tag, before the end is missed.
    let err = call_raw(channel.clone(), DISPATCH, vec![0x0b; 23_000])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), TOO_DEEP_AT_63);
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(malformed_count(&metrics), Some(2), "{metrics}");
    let request = seed_object().encode_to_vec();
    let reply = call_raw(channel, DISPATCH, request.clone())
        .await
        .expect("still serving");
    assert_eq!(reply.as_ref(), request.as_slice());
    app.shutdown().await;
}

#[tokio::test]
async fn nested_groups_are_refused_before_a_hook_runs_at_any_level_of_the_object() {
    let app = spawn_app(config_with(|c| c.hooks = vec![deep_hook()])).await;
    let channel = app.channel().await;
    let object = hooked_object();
    // After the Object's own fields: the byte offset of the 64th start tag in the message.
    let mut top = object.encode_to_vec();
    let at = top.len() + 63;
    top.extend_from_slice(&nested_groups(20_000));
    // Inside the request (level 2), where only a walk of the request sees them.
    let mut inner = object.clone();
    let mut request = inner.request.take().unwrap().encode_to_vec();
    request.extend_from_slice(&unknown_nested_groups(20_000));
    let mut in_request = inner.encode_to_vec();
    put_len_record(&mut in_request, 3, &request);
    let cases = [
        (
            top,
            format!("malformed coprocess.Object: nesting deeper than 64 levels at byte {at}"),
        ),
        (
            in_request,
            format!(
                "malformed coprocess.Object: nesting deeper than 64 levels at byte {}",
                request.len() - 40_000 + 62
            ),
        ),
    ];
    for (bytes, message) in cases {
        let err = call_raw(channel.clone(), DISPATCH, bytes)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), message);
    }
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(malformed_count(&metrics), Some(2), "{metrics}");
    // Within the bound the hook runs as usual and the unknown groups travel back.
    let mut within = object.encode_to_vec();
    within.extend_from_slice(&unknown_nested_groups(63));
    let reply = call_raw(channel, DISPATCH, within)
        .await
        .expect("within the bound");
    assert!(reply.ends_with(&unknown_nested_groups(63)));
    let decoded = pb::Object::decode(reply).unwrap();
    assert_eq!(
        decoded
            .request
            .unwrap()
            .set_headers
            .get("X-Team")
            .map(String::as_str),
        Some("payments")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_field_only_a_hook_decodes_is_refused_and_counted_as_malformed() {
    let app = spawn_app(config_with(|c| c.hooks = vec![deep_hook()])).await;
    let channel = app.channel().await;
    // A header edit whose value is not UTF-8: the scan passes over the request's edits, the
    // hook's decode of them (its step edits headers) does not.
    let mut object = hooked_object();
    object
        .request
        .as_mut()
        .unwrap()
        .set_headers
        .insert("X-Broken".into(), "ZZZZ".into());
    let mut bytes = object.encode_to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"ZZZZ")
        .expect("the value is in the message");
    bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
    let err = call_raw(channel.clone(), DISPATCH, bytes)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("malformed coprocess.Object: "),
        "{}",
        err.message()
    );
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(malformed_count(&metrics), Some(1), "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_deeply_nested_event_is_answered_empty_and_counted_unparsable() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    let mut event = Vec::new();
    put_len_record(&mut event, 1, br#"{"message":{"Type":"X"}}"#);
    event.extend_from_slice(&nested_groups(20_000));
    let reply = call_raw(channel.clone(), DISPATCH_EVENT, event)
        .await
        .expect("events are always answered");
    assert!(reply.is_empty(), "an empty EventReply");
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_events_unparsable_total 1"),
        "{metrics}"
    );
    let request = seed_object().encode_to_vec();
    let reply = call_raw(channel, DISPATCH, request.clone())
        .await
        .expect("still serving");
    assert_eq!(reply.as_ref(), request.as_slice());
    app.shutdown().await;
}

#[tokio::test]
async fn the_real_binary_survives_nested_groups_and_warns_once_per_call() {
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    let err = call_raw(channel.clone(), DISPATCH, nested_groups(20_000))
        .await
        .unwrap_err();
    assert_eq!(err.message(), TOO_DEEP_AT_63);
    let mut event = Vec::new();
    put_len_record(&mut event, 1, b"{}");
    event.extend_from_slice(&nested_groups(20_000));
    let reply = call_raw(channel.clone(), DISPATCH_EVENT, event)
        .await
        .expect("answered");
    assert!(reply.is_empty());
    let request = seed_object().encode_to_vec();
    let reply = call_raw(channel, DISPATCH, request.clone())
        .await
        .expect("still serving");
    assert_eq!(reply.as_ref(), request.as_slice());
    // Log lines are read from the child's stdout by another thread: wait until both arrived.
    process
        .wait_for_log("malformed Object refused", Duration::from_secs(5))
        .await;
    process
        .wait_for_log("malformed Event message", Duration::from_secs(5))
        .await;
    let refused = process.logs("malformed Object refused");
    assert_eq!(refused.len(), 1, "{}", process.log_text());
    assert_eq!(refused[0]["level"], "WARN");
    assert_eq!(refused[0]["request_bytes"], 40_000);
    assert_eq!(
        refused[0]["error"],
        "nesting deeper than 64 levels at byte 63"
    );
    let event = process.logs("malformed Event message");
    assert_eq!(event.len(), 1, "{}", process.log_text());
    assert_eq!(event[0]["level"], "WARN");
    assert_eq!(
        event[0]["error"],
        "nesting deeper than 64 levels at byte 67"
    );
}
