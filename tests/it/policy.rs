//! Plugins without Rust, over gRPC: CEL conditions, computed values and `authorize`; decisions
//! from a real Open Policy Agent server (built by `tests/tools/opa.sh`) and from an HTTP
//! decision service, with the cache, the trace context and `on_error`; the recipes of
//! `examples/recipes` served with their own configs and checked against their own cases.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prost::Message;
use tyk_dispatcher::{
    App,
    hooks::{HookConfig, HookTypeName, OnError, StepConfig},
    pb,
};

use crate::helpers::*;

/// A Pre hook answering failures per `on_error`, with time for a policy service.
fn pre_hook(name: &str, on_error: OnError, steps: Vec<StepConfig>) -> HookConfig {
    HookConfig {
        on_error,
        deadline_ms: 2000,
        ..hook(name, HookTypeName::Pre, steps)
    }
}

fn call(name: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> pb::Object {
    let mut object = seed_object();
    object.hook_name = name.into();
    let request = object.request.as_mut().unwrap();
    request.method = method.into();
    request.url = path.into();
    for (k, v) in headers {
        request.headers.insert((*k).into(), (*v).into());
    }
    object
}

async fn dispatch(app: &TestApp, object: &pb::Object) -> pb::MiniRequestObject {
    let reply = call_raw(app.channel().await, DISPATCH, object.encode_to_vec())
        .await
        .expect("answered");
    pb::Object::decode(reply).unwrap().request.unwrap()
}

fn overrides(request: &pb::MiniRequestObject) -> (i32, &str) {
    let o = request.return_overrides.as_ref().unwrap();
    (o.response_code, o.response_body.as_str())
}

async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let (_, text) = crate::helpers::http_get(app.admin, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn conditions_computed_values_and_authorize_act_on_the_call() {
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![pre_hook(
            "Rules",
            OnError::FailClosed,
            vec![
                step(
                    "set_headers",
                    serde_json::json!({"headers": {"x-method": {"cel": "request.method + ' ' + request.path"}, "x-static": "1"}, "when": "request.path.startsWith('/orders')"}),
                ),
                step(
                    "set_headers",
                    serde_json::json!({"headers": {"x-never": "1"}, "when": "request.method == 'DELETE' && hook.type == 'Pre'"}),
                ),
                step(
                    "authorize",
                    serde_json::json!({"allow": "request.headers['User-Agent'].startsWith('curl/')", "deny": {"status": 401, "body": {"cel": "'no agent for ' + spec.api_id"}}}),
                ),
            ],
        )];
    }))
    .await;
    let request = dispatch(&app, &call("Rules", "GET", "/orders/7?x=1", &[])).await;
    assert_eq!(
        request.set_headers.get("X-Method").map(String::as_str),
        Some("GET /orders/7")
    );
    assert_eq!(
        request.set_headers.get("X-Static").map(String::as_str),
        Some("1")
    );
    assert!(!request.set_headers.contains_key("X-Never"));
    assert_eq!(overrides(&request).0, -1);

    let request = dispatch(
        &app,
        &call("Rules", "GET", "/other", &[("User-Agent", "wget")]),
    )
    .await;
    assert!(request.set_headers.is_empty(), "{:?}", request.set_headers);
    assert_eq!(
        overrides(&request),
        (401, "no agent for 04e911d3012646d97fcdd6c846fafc4b")
    );

    let runs = "tyk_dispatcher_step_runs_total{hook_name=\"Rules\",step=\"set_headers\",outcome=";
    assert_eq!(
        metric(&app, &format!("{runs}\"skipped\"}}")).await,
        Some(3.0)
    );
    assert_eq!(
        metric(&app, &format!("{runs}\"modified\"}}")).await,
        Some(1.0)
    );
    let decisions =
        "tyk_dispatcher_auth_decisions_total{hook_name=\"Rules\",step=\"authorize\",decision=";
    assert_eq!(
        metric(&app, &format!("{decisions}\"allowed\"}}")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&app, &format!("{decisions}\"denied\"}}")).await,
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_failing_expression_follows_on_error() {
    let condition = || {
        vec![step(
            "set_headers",
            serde_json::json!({"headers": {"x-a": "1"}, "when": "request.headers['X-Missing'] == 'a'"}),
        )]
    };
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![
            pre_hook("Closed", OnError::FailClosed, condition()),
            pre_hook("Open", OnError::FailOpen, condition()),
        ];
    }))
    .await;
    let closed = dispatch(&app, &call("Closed", "GET", "/", &[])).await;
    assert_eq!(overrides(&closed).0, 503);
    let open = dispatch(&app, &call("Open", "GET", "/", &[])).await;
    assert_eq!(overrides(&open).0, -1);
    assert!(open.set_headers.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn config_errors_name_the_hook_step_setting_and_position() {
    let config = config_with(|c| {
        c.hooks = vec![pre_hook(
            "Bad",
            OnError::FailClosed,
            vec![
                step("set_headers", serde_json::json!({"headers": {"x-a": "1"}})),
                step(
                    "set_headers",
                    serde_json::json!({"headers": {"x-a": "1"}, "when": "request.method == 'GET' &&\n  sesion.alias == 'a'"}),
                ),
                step(
                    "set_headers",
                    serde_json::json!({"headers": {"x-b": {"cel": "request.method +"}}}),
                ),
                step(
                    "authorize",
                    serde_json::json!({"allow": "session.alias == 'a'"}),
                ),
            ],
        )];
    });
    let problems = App::build(config).await.unwrap_err().to_string();
    for expected in [
        "hooks[0].steps[1].when: hook \"Bad\": step \"set_headers\": 2:3: unknown variable \"sesion\"",
        "hooks[0].steps[2].headers.x-b: hook \"Bad\": step \"set_headers\": 1:18: Syntax error: mismatched input '<EOF>'",
        "hooks[0].steps[3].allow: hook \"Bad\": step \"authorize\": 1:1: Pre hooks have no `session`",
    ] {
        assert!(problems.contains(expected), "{expected:?} in {problems}");
    }
}

/// A real OPA server on a loopback port, with the recipe's policy; stopped when dropped.
struct Opa {
    child: Child,
    port: u16,
}

impl Opa {
    fn binary() -> PathBuf {
        std::env::var_os("OPA_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("target/test-tools/bin/opa"))
    }

    fn start() -> Self {
        let binary = Self::binary();
        assert!(
            binary.exists(),
            "no OPA server at {} (tests/tools/opa.sh builds it; tests/run.sh runs that)",
            binary.display()
        );
        // OPA does not report a port it picked itself: pick one, and retry if it was taken.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&binary)
                .args(["run", "--server", "--addr", &format!("127.0.0.1:{port}")])
                .args([
                    "--log-level",
                    "error",
                    "--skip-version-check",
                    "--ignore",
                    "*_test.rego",
                ])
                .arg(manifest_dir().join("examples/recipes/opa"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("OPA starts");
            let mut opa = Self { child, port };
            if opa.wait_healthy() {
                return opa;
            }
        }
        panic!("OPA did not come up");
    }

    fn wait_healthy(&mut self) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if get(self.port, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Opa {
    fn drop(&mut self) {
        self.stop();
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[tokio::test]
async fn a_real_opa_server_decides_and_a_warm_cache_outlives_it() {
    let mut opa = Opa::start();
    // The recipe's own config, pointed at this OPA.
    let app = spawn_app(recipe_config("opa", Some(opa.port))).await;
    let bob_reads = call("policyAuthz", "GET", "/orders/42", &[("X-User", "bob")]);
    let request = dispatch(&app, &bob_reads).await;
    assert_eq!(
        request.set_headers.get("X-Policy-User").map(String::as_str),
        Some("bob")
    );
    assert_eq!(overrides(&request).0, -1);

    let request = dispatch(
        &app,
        &call("policyAuthz", "DELETE", "/orders/42", &[("X-User", "bob")]),
    )
    .await;
    assert_eq!(
        overrides(&request),
        (403, "{\"error\":\"forbidden by policy\"}")
    );
    assert!(request.set_headers.is_empty());

    let request = dispatch(
        &app,
        &call(
            "policyAuthz",
            "DELETE",
            "/orders/42",
            &[("X-User", "alice")],
        ),
    )
    .await;
    assert_eq!(
        request.set_headers.get("X-Policy-User").map(String::as_str),
        Some("alice")
    );

    // With OPA gone, a cached decision still answers; an uncached one fails closed.
    opa.stop();
    let request = dispatch(&app, &bob_reads).await;
    assert_eq!(
        request.set_headers.get("X-Policy-User").map(String::as_str),
        Some("bob")
    );
    let request = dispatch(
        &app,
        &call("policyAuthz", "GET", "/orders/42", &[("X-User", "carol")]),
    )
    .await;
    assert_eq!(overrides(&request).0, 503);

    let decisions = "tyk_dispatcher_auth_decisions_total{hook_name=\"policyAuthz\",step=\"opa_authorize\",decision=";
    assert_eq!(
        metric(&app, &format!("{decisions}\"allowed\"}}")).await,
        Some(3.0)
    );
    assert_eq!(
        metric(&app, &format!("{decisions}\"denied\"}}")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&app, "tyk_dispatcher_step_duration_seconds_count{hook_name=\"policyAuthz\",step=\"opa_authorize\"}").await,
        Some(5.0)
    );
    assert_eq!(
        metric(
            &app,
            "tyk_dispatcher_hook_failures_total{hook_name=\"policyAuthz\",reason=\"error\"}"
        )
        .await,
        Some(1.0)
    );
    app.shutdown().await;
}

/// What a decision service was sent: the headers and the body of each call.
type Seen = Arc<Mutex<Vec<(http::HeaderMap, serde_json::Value)>>>;

/// An HTTP decision service on a loopback port that answers `decision` and keeps what it got.
async fn decision_service(decision: serde_json::Value) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/decide",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            let decision = decision.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push((headers, serde_json::from_slice(&body).unwrap()));
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    decision.to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/decide", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn http_decisions_get_the_input_and_the_trace_context() {
    let (url, seen) = decision_service(
        serde_json::json!({"allow": false, "status": 451, "body": "not here", "headers": {"x-reason": "geo"}}),
    )
    .await;
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![pre_hook(
            "Remote",
            OnError::FailClosed,
            vec![step(
                "http_authorize",
                serde_json::json!({"url": url, "extra": {"who": {"cel": "request.headers['X-User']"}}}),
            )],
        )];
    }))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let object = call("Remote", "GET", "/orders/1?page=2", &[("X-User", "bob")]);
    let reply = call_with_metadata(
        &app,
        DISPATCH,
        object.encode_to_vec(),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )
    .await;
    let request = pb::Object::decode(reply).unwrap().request.unwrap();
    assert_eq!(overrides(&request), (451, "not here"));
    let o = request.return_overrides.as_ref().unwrap();
    assert_eq!(o.headers.get("X-Reason").map(String::as_str), Some("geo"));

    let (headers, input) = seen.lock().unwrap()[0].clone();
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-01"), "{traceparent}");
    assert_eq!(input["request"]["method"], "GET");
    assert_eq!(input["request"]["path"], "/orders/1");
    assert_eq!(input["request"]["headers"]["X-User"], "bob");
    assert!(
        input["request"]["headers"].get("Authorization").is_none(),
        "{input}"
    );
    assert_eq!(input["extra"]["who"], "bob");
    assert_eq!(input["spec"]["api_id"], "04e911d3012646d97fcdd6c846fafc4b");
    app.shutdown().await;
}

#[test]
fn the_recipe_policy_passes_its_own_opa_tests() {
    let output = Command::new(Opa::binary())
        .args(["test", "-v"])
        .arg(manifest_dir().join("examples/recipes/opa"))
        .output()
        .expect("opa test runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("PASS: 17/17"), "{stdout}");
}

/// A recipe's hooks (`examples/recipes/<name>/dispatcher.toml`, loaded as the binary loads a
/// config file) on a loopback test config; OPA's port replaced when one is given.
fn recipe_config(name: &str, opa_port: Option<u16>) -> tyk_dispatcher::Config {
    let mut text = std::fs::read_to_string(
        manifest_dir().join(format!("examples/recipes/{name}/dispatcher.toml")),
    )
    .unwrap();
    if let Some(port) = opa_port {
        text = text.replace("127.0.0.1:8181", &format!("127.0.0.1:{port}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatcher.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = tyk_dispatcher::config::load(&tyk_dispatcher::config::Sources {
        file: Some(path),
        env: Vec::new(),
        cli: Default::default(),
    })
    .unwrap();
    config_with(|c| {
        c.hooks = loaded.config.hooks;
        c.unknown_hooks = loaded.config.unknown_hooks;
    })
}

/// What a case file's `expect` says of the reply, checked on an Object served over gRPC (the
/// parts the recipes use: header edits, URL, return_overrides, session).
fn check_case(name: &str, expect: &serde_json::Value, reply: &pb::Object) {
    let request = reply.request.as_ref().unwrap();
    for (header, value) in expect["set_headers"].as_object().into_iter().flatten() {
        assert_eq!(
            request.set_headers.get(header).map(String::as_str),
            value.as_str(),
            "{name}"
        );
    }
    if let Some(url) = expect["url"].as_str() {
        assert_eq!(request.url, url, "{name}");
    }
    let overrides = request.return_overrides.as_ref().unwrap();
    if let Some(code) = expect["return_overrides"]["response_code"].as_i64() {
        assert_eq!(i64::from(overrides.response_code), code, "{name}");
    }
    if let Some(body) = expect["return_overrides"]["response_body"].as_str() {
        assert_eq!(overrides.response_body, body, "{name}");
    }
    if let Some(alias) = expect["session"]["alias"].as_str() {
        assert_eq!(
            reply.session.as_ref().map(|s| s.alias.as_str()),
            Some(alias),
            "{name}"
        );
    }
    for (key, value) in expect["session"]["metadata"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let session = reply.session.as_ref().unwrap();
        assert_eq!(
            session.metadata.get(key).map(String::as_str),
            value.as_str(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_recipes_answer_over_grpc_as_their_cases_expect() {
    for recipe in ["tenant", "claim-routing"] {
        let app = spawn_app(recipe_config(recipe, None)).await;
        let cases: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(
                manifest_dir().join(format!("examples/recipes/{recipe}/cases.yaml")),
            )
            .unwrap(),
        )
        .unwrap();
        let cases = cases["cases"].as_array().unwrap();
        assert!(cases.len() >= 4, "{recipe}");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let mut object: pb::Object = serde_json::from_value(case["object"].clone()).unwrap();
            object.hook_type =
                pb::HookType::from_str_name(case["hook_type"].as_str().unwrap()).unwrap() as i32;
            object.hook_name = case["hook_name"].as_str().unwrap().into();
            object
                .spec
                .insert("APIID".into(), case["api_id"].as_str().unwrap().into());
            object
                .request
                .as_mut()
                .unwrap()
                .return_overrides
                .get_or_insert_with(|| pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                });
            let reply = call_raw(app.channel().await, DISPATCH, object.encode_to_vec())
                .await
                .expect("answered");
            check_case(name, &case["expect"], &pb::Object::decode(reply).unwrap());
        }
        app.shutdown().await;
    }
}
