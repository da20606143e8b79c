//! Dispatch and DispatchEvent over gRPC: byte-exact echo, every hook type, bad input.

use prost::Message;
use tonic::Code;
use tyk_dispatcher::pb;

use crate::helpers::*;

#[tokio::test]
async fn the_seed_payload_comes_back_equal_with_the_typed_client() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut client = pb::dispatcher_client::DispatcherClient::new(app.channel().await);
    let reply = client
        .dispatch(seed_object())
        .await
        .expect("dispatch")
        .into_inner();
    assert_eq!(reply, seed_object());
    let event = client
        .dispatch_event(pb::Event {
            payload: "{\"event\": \"test\"}".into(),
        })
        .await
        .expect("event")
        .into_inner();
    assert_eq!(event, pb::EventReply {});
    app.shutdown().await;
}

#[tokio::test]
async fn a_fully_populated_object_comes_back_byte_identical() {
    let app = spawn_app(config_with(|_| {})).await;
    let request = full_object().encode_to_vec();
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .expect("dispatch");
    assert_eq!(reply.as_ref(), request.as_slice());
    // Sanity: the fixture really does set the newest fields.
    let decoded = pb::Object::decode(reply).unwrap();
    assert_eq!(decoded.session.unwrap().post_expiry_grace_period, 34);
    app.shutdown().await;
}

#[tokio::test]
async fn fields_newer_than_our_schema_survive() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut request = full_object().encode_to_vec();
    // Field 8 of Object (string), field 99 (varint), both unknown to our schema; and field 35 of
    // SessionState appended inside a second `session` record, which protobuf merges.
    request.extend_from_slice(&[0x42, 0x03, b'n', b'e', b'w']);
    request.extend_from_slice(&[0x98, 0x06, 0x2a]);
    request.extend_from_slice(&[0x22, 0x03, 0x98, 0x02, 0x01]);
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .expect("dispatch");
    assert_eq!(reply.as_ref(), request.as_slice());
    app.shutdown().await;
}

#[tokio::test]
async fn every_hook_type_and_an_empty_object_pass_through() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    for hook in [
        pb::HookType::Pre,
        pb::HookType::Post,
        pb::HookType::PostKeyAuth,
        pb::HookType::CustomKeyCheck,
        pb::HookType::Response,
    ] {
        let mut object = seed_object();
        object.hook_type = hook as i32;
        object.hook_name = format!("{hook:?}Hook");
        let request = object.encode_to_vec();
        let reply = call_raw(channel.clone(), DISPATCH, request.clone())
            .await
            .expect("dispatch");
        assert_eq!(reply.as_ref(), request.as_slice(), "{hook:?}");
    }
    let reply = call_raw(channel.clone(), DISPATCH, Vec::new())
        .await
        .expect("empty object");
    assert!(reply.is_empty());
    // An unrecognised hook type is passed through too.
    let mut object = seed_object();
    object.hook_type = 99;
    let request = object.encode_to_vec();
    let reply = call_raw(channel, DISPATCH, request.clone())
        .await
        .expect("hook type 99");
    assert_eq!(reply.as_ref(), request.as_slice());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_dispatch_requests_total{hook_type=\"Response\",hook_name=\"ResponseHook\",outcome=\"unchanged\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tyk_dispatcher_dispatch_requests_total{hook_type=\"Unknown\",hook_name=\"MyPreCustomPluginForBasicAuth\",outcome=\"unchanged\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn garbage_is_refused_clearly_and_the_server_keeps_serving() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    let cases: [(&[u8], &str); 3] = [
        (
            &[0xff; 12],
            "malformed coprocess.Object: malformed varint at byte 0",
        ),
        (
            &[0x1a, 0x10, 0x01],
            "malformed coprocess.Object: record at byte 0 needs 16 bytes but only 1 remain",
        ),
        (
            &[0x0a, 0x01, 0x01],
            "malformed coprocess.Object: field 1 of Object has wire type 2, expected 0",
        ),
    ];
    for (bytes, message) in cases {
        let err = call_raw(channel.clone(), DISPATCH, bytes.to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), message);
    }
    let request = seed_object().encode_to_vec();
    let reply = call_raw(channel, DISPATCH, request.clone())
        .await
        .expect("still serving");
    assert_eq!(reply.as_ref(), request.as_slice());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_rejected_calls_total{reason=\"malformed\"} 3"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn events_always_get_an_empty_reply() {
    let app = spawn_app(config_with(|_| {})).await;
    let channel = app.channel().await;
    let payloads: [&[u8]; 4] = [
        br#"{"message":{"Type":"AuthFailure","Meta":{"Key":"secret"}},"handler_name":"h","spec":{"APIID":"a"}}"#,
        b"not json at all",
        b"",
        &[0xff, 0xfe],
    ];
    for payload in payloads {
        let mut event = Vec::new();
        put_len_record(&mut event, 1, payload);
        let reply = call_raw(channel.clone(), DISPATCH_EVENT, event)
            .await
            .expect("answered");
        assert!(reply.is_empty(), "an empty EventReply");
    }
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_events_unparsable_total 3"),
        "{metrics}"
    );
    app.shutdown().await;
}
