//! Receive limits, the in-flight budget and reply limits, over gRPC.

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
