//! Plugins without Rust, over gRPC: CEL conditions, computed values and `authorize`; decisions
//! from a real Open Policy Agent server (built by `tests/tools/opa.sh`) and from an HTTP
//! decision service, with the cache, the trace context and `on_error`.

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
        "hooks[0].steps[1].when: step \"set_headers\": 2:3: unknown variable \"sesion\"",
        "hooks[0].steps[2].headers.x-b: step \"set_headers\": 1:18: Syntax error: mismatched input '<EOF>'",
        "hooks[0].steps[3].allow: step \"authorize\": 1:1: Pre hooks have no `session`",
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/data/tyk/authz/decision", self.port)
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
    let url = opa.url();
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![pre_hook(
            "Policy",
            OnError::FailClosed,
            vec![step(
                "opa_authorize",
                serde_json::json!({"url": url, "cache": {"key": "request.headers['X-User'] + ' ' + request.method + ' ' + request.path", "ttl_secs": 60}}),
            )],
        )];
    }))
    .await;
    let bob_reads = call("Policy", "GET", "/orders/42", &[("X-User", "bob")]);
    let request = dispatch(&app, &bob_reads).await;
    assert_eq!(
        request.set_headers.get("X-Policy-User").map(String::as_str),
        Some("bob")
    );
    assert_eq!(overrides(&request).0, -1);

    let request = dispatch(
        &app,
        &call("Policy", "DELETE", "/orders/42", &[("X-User", "bob")]),
    )
    .await;
    assert_eq!(
        overrides(&request),
        (403, "{\"error\":\"forbidden by policy\"}")
    );
    assert!(request.set_headers.is_empty());

    let request = dispatch(
        &app,
        &call("Policy", "DELETE", "/orders/42", &[("X-User", "alice")]),
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
        &call("Policy", "GET", "/orders/42", &[("X-User", "carol")]),
    )
    .await;
    assert_eq!(overrides(&request).0, 503);

    let decisions =
        "tyk_dispatcher_auth_decisions_total{hook_name=\"Policy\",step=\"opa_authorize\",decision=";
    assert_eq!(
        metric(&app, &format!("{decisions}\"allowed\"}}")).await,
        Some(3.0)
    );
    assert_eq!(
        metric(&app, &format!("{decisions}\"denied\"}}")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&app, "tyk_dispatcher_step_duration_seconds_count{hook_name=\"Policy\",step=\"opa_authorize\"}").await,
        Some(5.0)
    );
    assert_eq!(
        metric(
            &app,
            "tyk_dispatcher_hook_failures_total{hook_name=\"Policy\",reason=\"error\"}"
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
