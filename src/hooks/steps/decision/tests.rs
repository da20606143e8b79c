use std::sync::Arc;

use super::*;
use crate::hooks::{
    recorded::{Recorded, RecordedAnswer},
    steps::tests::{cx, scope, step_config},
};

const URL: &str = "http://127.0.0.1:9/v1/data/tyk/authz/decision";

fn step(settings: serde_json::Value) -> DecisionStep {
    let mut settings = settings;
    settings["url"] = URL.into();
    DecisionStep::build_opa(
        &step_config("opa_authorize", settings),
        scope(pb::HookType::Pre),
    )
    .expect("builds")
}

fn answer(body: serde_json::Value) -> RecordedAnswer {
    serde_json::from_value(serde_json::json!({"url": URL, "body": body})).unwrap()
}

fn call(user: &str) -> pb::Object {
    pb::Object {
        request: Some(pb::MiniRequestObject {
            headers: [
                ("X-User".to_string(), user.to_string()),
                ("Authorization".to_string(), "Bearer secret".to_string()),
            ]
            .into(),
            url: "/orders/1?x=1".into(),
            method: "GET".into(),
            raw_body: b"0123456789".to_vec().into(),
            return_overrides: Some(pb::ReturnOverrides {
                response_code: -1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        session: Some(pb::SessionState {
            alias: "alice".into(),
            metadata: [
                ("token".to_string(), "session-token".to_string()),
                ("team".to_string(), "a".to_string()),
            ]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn offline(answers: Vec<RecordedAnswer>) -> StepContext {
    let mut cx = cx(pb::HookType::Pre);
    cx.recorded = Some(Arc::new(Recorded::new(answers)));
    cx
}

#[test]
fn decisions_are_read_from_booleans_and_objects() {
    let parse_opa = |v: serde_json::Value| parse(Protocol::Opa, v.to_string().as_bytes());
    assert!(
        parse_opa(serde_json::json!({"result": true}))
            .unwrap()
            .allow
    );
    assert_eq!(
        parse_opa(serde_json::json!({})).unwrap(),
        Decision::default(),
        "undefined is a denial"
    );
    let full = parse_opa(serde_json::json!({"result": {"allow": false, "status": 451, "body": {"e": 1}, "headers": {"x-why": "policy"}}}))
        .unwrap();
    assert_eq!(full.status, Some(451));
    assert_eq!(full.body.as_deref(), Some("{\"e\":1}"));
    assert_eq!(
        full.headers.get("X-Why").map(String::as_str),
        Some("policy")
    );
    let http = parse(Protocol::Http, b"{\"allow\": true}").unwrap();
    assert!(http.allow);
    for (bad, message) in [
        (&b"nope"[..], "not JSON"),
        (b"{\"result\": {\"status\": 403}}", "no boolean `allow`"),
        (
            b"{\"result\": {\"allow\": false, \"status\": 99}}",
            "not an HTTP status",
        ),
        (b"{\"result\": \"yes\"}", "neither a boolean"),
    ] {
        let err = parse(Protocol::Opa, bad).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}

#[test]
fn the_input_document_leaves_credentials_out() {
    let step = step(
        serde_json::json!({"input": {"body": true, "max_body_bytes": 10}, "extra": {"who": {"cel": "request.headers['X-User']"}}}),
    );
    let object = call("alice");
    let cx = cx(pb::HookType::Pre);
    let input = Input::new(&object, &cx, step.extra.variables());
    let doc = document(&step.input, &step.extra, &object, &cx, &input).unwrap();
    assert_eq!(
        doc["request"]["headers"],
        serde_json::json!({"X-User": "alice"})
    );
    assert_eq!(doc["request"]["path"], "/orders/1");
    assert_eq!(doc["request"]["body"], "0123456789");
    assert_eq!(doc["session"]["metadata"], serde_json::json!({"team": "a"}));
    assert_eq!(doc["spec"]["api_id"], "api-1");
    assert_eq!(doc["hook"]["type"], "Pre");
    assert_eq!(doc["extra"]["who"], "alice");
    let small = self::step(
        serde_json::json!({"input": {"body": true, "max_body_bytes": 9, "session": false}}),
    );
    let doc = document(&small.input, &small.extra, &object, &cx, &input).unwrap();
    assert_eq!(doc["request"]["body_truncated"], true);
    assert!(doc["request"].get("body").is_none());
    assert!(doc.get("session").is_none());
}

#[tokio::test]
async fn allowed_requests_get_the_decision_headers_and_denied_ones_its_answer() {
    let step = step(serde_json::json!({}));
    let mut object = call("alice");
    let cx = offline(vec![answer(
        serde_json::json!({"result": {"allow": true, "headers": {"x-policy-user": "alice"}}}),
    )]);
    assert_eq!(
        step.run(&mut object, &cx).await.unwrap(),
        StepOutcome::Allowed
    );
    let request = object.request.unwrap();
    assert_eq!(
        request.set_headers.get("X-Policy-User").map(String::as_str),
        Some("alice")
    );

    let mut object = call("mallory");
    let cx = offline(vec![answer(serde_json::json!({"result": false}))]);
    assert_eq!(
        step.run(&mut object, &cx).await.unwrap(),
        StepOutcome::Denied
    );
    let overrides = object.request.unwrap().return_overrides.unwrap();
    assert_eq!(overrides.response_code, 403);
    assert_eq!(overrides.response_body, "{\"error\":\"forbidden\"}");

    let mut object = call("mallory");
    let cx = offline(vec![answer(
        serde_json::json!({"result": {"allow": false, "status": 401, "body": "who are you"}}),
    )]);
    step.run(&mut object, &cx).await.unwrap();
    let overrides = object.request.unwrap().return_overrides.unwrap();
    assert_eq!(
        (overrides.response_code, overrides.response_body.as_str()),
        (401, "who are you")
    );
}

#[tokio::test]
async fn failures_are_step_errors_for_on_error_to_answer() {
    let step = step(serde_json::json!({}));
    let err = step
        .run(&mut call("a"), &offline(vec![]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no answer recorded for POST http://127.0.0.1:9/"),
        "{err}"
    );
    let mut status = answer(serde_json::json!({"result": true}));
    status.status = 500;
    let err = step
        .run(&mut call("a"), &offline(vec![status]))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, format!("POST {URL}: status 500"));
    // Nothing listens on port 9: a refused connection, not a hang.
    let err = step
        .run(&mut call("a"), &cx(pb::HookType::Pre))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("POST http://127.0.0.1:9/"),
        "{err}"
    );
}

#[tokio::test]
async fn a_warm_cache_answers_without_asking() {
    let step = step(
        serde_json::json!({"cache": {"key": "request.headers['X-User'] + ' ' + request.path", "ttl_secs": 60}}),
    );
    let cx = offline(vec![answer(serde_json::json!({"result": true}))]);
    assert_eq!(
        step.run(&mut call("alice"), &cx).await.unwrap(),
        StepOutcome::Allowed
    );
    // No recorded answer now: only the cache can decide.
    let empty = offline(vec![]);
    assert_eq!(
        step.run(&mut call("alice"), &empty).await.unwrap(),
        StepOutcome::Allowed
    );
    assert!(
        step.run(&mut call("bob"), &empty).await.is_err(),
        "another key misses"
    );
}

#[test]
fn settings_are_checked() {
    let build = |settings: serde_json::Value| {
        DecisionStep::build_opa(
            &step_config("opa_authorize", settings),
            scope(pb::HookType::Pre),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(build(serde_json::json!({"url": "ftp://x/"})).contains("scheme \"ftp\""));
    assert!(
        build(serde_json::json!({"url": "http://u:p@x/"})).contains("must not hold credentials")
    );
    assert!(
        build(serde_json::json!({"url": URL, "cache": {"key": "sesion.alias", "ttl_secs": 1}}))
            .starts_with("cache.key: 1:1: unknown variable")
    );
    assert!(
        build(serde_json::json!({"url": URL, "tls_ca_file": "/nonexistent/ca.pem"}))
            .starts_with("tls_ca_file: /nonexistent/ca.pem")
    );
}

#[test]
fn the_trace_context_is_passed_on() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut cx = cx(pb::HookType::Pre);
    assert_eq!(traceparent(&cx), None);
    cx.trace = Some(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    assert_eq!(
        traceparent(&cx).as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
}
