//! Hook pipelines over gRPC: built-in steps, byte-preserving edits, failure policies, dry runs,
//! unknown hooks, custom steps, and reload from the config file.

use std::time::Duration;

use prost::Message;
use tyk_dispatcher::{
    App, Config,
    hooks::{
        HookTypeName, OnError, Step, StepContext, StepError, StepKind, StepOutcome, UnknownHooks,
    },
    pb,
};

use crate::helpers::*;

fn object(hook_type: pb::HookType, name: &str) -> pb::Object {
    let mut object = seed_object();
    object.hook_type = hook_type as i32;
    object.hook_name = name.into();
    object
}

async fn dispatch(app: &TestApp, object: &pb::Object) -> pb::Object {
    let reply = call_raw(app.channel().await, DISPATCH, object.encode_to_vec())
        .await
        .expect("answered");
    pb::Object::decode(reply).expect("an Object")
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn request_steps_edit_the_object_and_keep_unknown_fields() {
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![hook(
            "Edit",
            HookTypeName::Pre,
            vec![
                step("set_headers", serde_json::json!({"headers": {"x-team": "payments"}})),
                step("delete_headers", serde_json::json!({"names": ["authorization"]})),
                step("add_params", serde_json::json!({"params": {"version": "2"}})),
                step("rewrite_url", serde_json::json!({"pattern": "^/basic-authentication-valid/(.*)", "replacement": "/v2/$1"})),
            ],
        )];
    }))
    .await;
    let sent = object(pb::HookType::Pre, "Edit");
    let mut bytes = sent.encode_to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x2a]); // field 99, unknown to our schema
    let reply = call_raw(app.channel().await, DISPATCH, bytes)
        .await
        .unwrap();
    assert!(
        reply.ends_with(&[0x98, 0x06, 0x2a]),
        "the unknown field survives"
    );
    let reply = pb::Object::decode(reply).unwrap();
    // The steps decode only the request fields they edit; everything else comes back as sent.
    let mut expected = sent.clone();
    let edited = expected.request.as_mut().unwrap();
    edited
        .set_headers
        .insert("X-Team".into(), "payments".into());
    edited.delete_headers = vec!["Authorization".into()];
    edited.add_params.insert("version".into(), "2".into());
    edited.url = "/v2/get".into();
    assert_eq!(reply, expected);
    let request = reply.request.unwrap();
    assert_eq!(
        request.set_headers.get("X-Team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(request.delete_headers, vec!["Authorization".to_string()]);
    assert_eq!(
        request.add_params.get("version").map(String::as_str),
        Some("2")
    );
    assert_eq!(request.url, "/v2/get");
    assert_eq!(
        request.headers,
        sent.request.unwrap().headers,
        "the read-only headers are untouched"
    );
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"Edit\",outcome=\"modified\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_step_runs_total{hook_name=\"Edit\",step=\"set_headers\",outcome=\"modified\"}"
        ),
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn respond_ends_request_hooks_and_replaces_responses() {
    let respond = step(
        "respond",
        serde_json::json!({"status": 429, "body": "slow down", "headers": {"retry-after": "5"}, "when": {"header_present": "user-agent"}}),
    );
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![
            hook("Block", HookTypeName::Pre, vec![respond.clone()]),
            hook("Replace", HookTypeName::Response, vec![respond.clone()]),
        ];
    }))
    .await;
    let reply = dispatch(&app, &object(pb::HookType::Pre, "Block")).await;
    let overrides = reply.request.unwrap().return_overrides.unwrap();
    assert_eq!(
        (
            overrides.response_code,
            overrides.response_body.as_str(),
            overrides.override_error
        ),
        (429, "slow down", true)
    );
    assert_eq!(
        overrides.headers.get("Retry-After").map(String::as_str),
        Some("5")
    );

    let mut response_call = object(pb::HookType::Response, "Replace");
    response_call.response = Some(pb::ResponseObject {
        status_code: 200,
        raw_body: b"upstream".to_vec().into(),
        ..Default::default()
    });
    let reply = dispatch(&app, &response_call).await;
    let response = reply.response.unwrap();
    assert_eq!(response.status_code, 429);
    assert_eq!(&response.raw_body[..], b"slow down");
    assert_eq!(
        response.multivalue_headers,
        vec![pb::Header {
            key: "Retry-After".into(),
            values: vec!["5".into()]
        }]
    );
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"Block\",outcome=\"responded\"}"
        ),
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn response_header_steps_keep_both_set_cookie_values() {
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![hook(
            "Headers",
            HookTypeName::Response,
            vec![
                step(
                    "set_response_headers",
                    serde_json::json!({"headers": {"x-frame-options": "DENY"}}),
                ),
                step(
                    "delete_response_headers",
                    serde_json::json!({"names": ["server"]}),
                ),
            ],
        )];
    }))
    .await;
    let mut call = object(pb::HookType::Response, "Headers");
    call.response = Some(pb::ResponseObject {
        status_code: 200,
        headers: [
            ("Set-Cookie".to_string(), "a=1".to_string()),
            ("Server".to_string(), "up".to_string()),
        ]
        .into(),
        multivalue_headers: vec![
            pb::Header {
                key: "Set-Cookie".into(),
                values: vec!["a=1".into(), "b=2".into()],
            },
            pb::Header {
                key: "Server".into(),
                values: vec!["up".into()],
            },
        ],
        ..Default::default()
    });
    let response = dispatch(&app, &call).await.response.unwrap();
    let cookies = response
        .multivalue_headers
        .iter()
        .find(|h| h.key == "Set-Cookie")
        .unwrap();
    assert_eq!(cookies.values, vec!["a=1", "b=2"]);
    assert!(
        response
            .multivalue_headers
            .iter()
            .any(|h| h.key == "X-Frame-Options" && h.values == ["DENY"])
    );
    assert!(
        response
            .multivalue_headers
            .iter()
            .all(|h| h.key != "Server")
    );
    assert!(!response.headers.contains_key("Server"));
    app.shutdown().await;
}

/// An Object with `response` whose encoding carries a field unknown to our schema (99) inside
/// the response message.
fn response_call_bytes(object: &pb::Object, response: &pb::ResponseObject) -> Vec<u8> {
    let mut inner = response.encode_to_vec();
    inner.extend_from_slice(&[0x98, 0x06, 0x2a]);
    let mut bytes = object.encode_to_vec();
    prost::encoding::encode_key(7, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);
    bytes
}

#[tokio::test]
async fn response_header_steps_set_or_add_several_values_of_one_name() {
    let cookies = serde_json::json!(["a=1; Path=/", "b=2"]);
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![
            hook(
                "SetCookies",
                HookTypeName::Response,
                vec![step(
                    "set_response_headers",
                    serde_json::json!({"headers": {"Set-Cookie": cookies.clone()}}),
                )],
            ),
            hook(
                "AddCookies",
                HookTypeName::Response,
                vec![step(
                    "add_response_headers",
                    serde_json::json!({"headers": {"set-cookie": cookies.clone(), "X-Added": "yes"}}),
                )],
            ),
        ];
    }))
    .await;
    // As the gateway builds it: every value in multivalue_headers, the first in the map.
    let upstream = pb::ResponseObject {
        status_code: 200,
        raw_body: b"upstream body".to_vec().into(),
        body: "upstream body".into(),
        headers: [
            ("Set-Cookie".to_string(), "up=1".to_string()),
            ("Server".to_string(), "up".to_string()),
        ]
        .into(),
        multivalue_headers: vec![
            pb::Header {
                key: "Set-Cookie".into(),
                values: vec!["up=1".into(), "up=2; HttpOnly".into()],
            },
            pb::Header {
                key: "Server".into(),
                values: vec!["up".into()],
            },
        ],
    };
    let header = |key: &str, values: &[&str]| pb::Header {
        key: key.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    for (name, set_cookie, map_cookie, added) in [
        (
            "SetCookies",
            &["a=1; Path=/", "b=2"][..],
            "a=1; Path=/",
            false,
        ),
        (
            "AddCookies",
            &["up=1", "up=2; HttpOnly", "a=1; Path=/", "b=2"][..],
            "up=1",
            true,
        ),
    ] {
        let call = object(pb::HookType::Response, name);
        let reply = call_raw(
            app.channel().await,
            DISPATCH,
            response_call_bytes(&call, &upstream),
        )
        .await
        .unwrap();
        assert!(
            reply.windows(3).any(|w| w == [0x98, 0x06, 0x2a]),
            "{name}: the unknown response field survives"
        );
        let reply = pb::Object::decode(reply).unwrap();
        let mut expected = call.clone();
        let mut response = upstream.clone();
        response
            .headers
            .insert("Set-Cookie".into(), map_cookie.into());
        response.multivalue_headers[0] = header("Set-Cookie", set_cookie);
        if added {
            response.headers.insert("X-Added".into(), "yes".into());
            response
                .multivalue_headers
                .push(header("X-Added", &["yes"]));
        }
        expected.response = Some(response);
        assert_eq!(reply, expected, "{name}");
    }
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_step_runs_total{hook_name=\"AddCookies\",step=\"add_response_headers\",outcome=\"modified\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    app.shutdown().await;
}

/// A custom step that sleeps, or panics.
#[derive(Debug)]
struct Misbehave {
    panic: bool,
}

#[async_trait::async_trait]
impl Step for Misbehave {
    async fn run(
        &self,
        _object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        if self.panic {
            panic!("plugin bug");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(StepOutcome::Unchanged)
    }
}

async fn spawn_with_misbehaving_steps(config: Config) -> TestApp {
    let sleep = StepKind::new("sleep", tyk_dispatcher::hooks::steps::ALL_HOOKS, |_| {
        Ok(Misbehave { panic: false })
    });
    let panic = StepKind::new("panic", tyk_dispatcher::hooks::steps::ALL_HOOKS, |_| {
        Ok(Misbehave { panic: true })
    });
    let app = App::builder(config)
        .step(sleep)
        .step(panic)
        .build()
        .await
        .unwrap();
    spawn_built(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_panics_get_the_on_error_answer_per_hook_type() {
    let mut slow = hook(
        "Slow",
        HookTypeName::Pre,
        vec![step("sleep", serde_json::json!({}))],
    );
    slow.deadline_ms = 100;
    let mut slow_auth = slow.clone();
    slow_auth.name = "SlowAuth".into();
    slow_auth.hook_type = HookTypeName::CustomKeyCheck;
    let mut slow_response = slow.clone();
    slow_response.name = "SlowResponse".into();
    slow_response.hook_type = HookTypeName::Response;
    let mut buggy = hook(
        "Buggy",
        HookTypeName::Post,
        vec![step("panic", serde_json::json!({}))],
    );
    buggy.on_error = OnError::FailOpen;
    let app = spawn_with_misbehaving_steps(config_with(|c| {
        c.hooks = vec![slow, slow_auth, slow_response, buggy]
    }))
    .await;

    let started = std::time::Instant::now();
    let reply = dispatch(&app, &object(pb::HookType::Pre, "Slow")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the deadline"
    );
    assert_eq!(
        reply
            .request
            .unwrap()
            .return_overrides
            .unwrap()
            .response_code,
        503
    );
    let reply = dispatch(&app, &object(pb::HookType::CustomKeyCheck, "SlowAuth")).await;
    assert_eq!(
        reply
            .request
            .unwrap()
            .return_overrides
            .unwrap()
            .response_code,
        403
    );
    let mut response_call = object(pb::HookType::Response, "SlowResponse");
    response_call.response = Some(pb::ResponseObject {
        status_code: 200,
        raw_body: b"upstream secret".to_vec().into(),
        ..Default::default()
    });
    let response = dispatch(&app, &response_call).await.response.unwrap();
    assert_eq!(response.status_code, 502);
    assert!(
        !response.raw_body.windows(6).any(|w| w == b"secret"),
        "upstream body replaced"
    );

    // fail_open: the Object comes back as it went, and the server survives the panic.
    let sent = object(pb::HookType::Post, "Buggy");
    let reply = call_raw(app.channel().await, DISPATCH, sent.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), sent.encode_to_vec().as_slice());
    let reply = dispatch(&app, &object(pb::HookType::Pre, "Unconfigured")).await;
    assert_eq!(reply, object(pb::HookType::Pre, "Unconfigured"));

    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_hook_failures_total{hook_name=\"Slow\",reason=\"deadline\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_hook_failures_total{hook_name=\"Buggy\",reason=\"panic\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"Slow\",outcome=\"failed\"}"
        ),
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn dry_runs_send_the_original_back_and_still_count() {
    let mut dry = hook(
        "Dry",
        HookTypeName::Pre,
        vec![step(
            "set_headers",
            serde_json::json!({"headers": {"x-a": "1"}}),
        )],
    );
    dry.dry_run = true;
    let app = spawn_app(config_with(|c| c.hooks = vec![dry])).await;
    let sent = object(pb::HookType::Pre, "Dry").encode_to_vec();
    let reply = call_raw(app.channel().await, DISPATCH, sent.clone())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), sent.as_slice());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_step_runs_total{hook_name=\"Dry\",step=\"set_headers\",outcome=\"modified\"}"
        ),
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_hooks_pass_or_are_rejected_as_configured() {
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![hook("Known", HookTypeName::Pre, vec![])];
        c.unknown_hooks = UnknownHooks::Reject;
    }))
    .await;
    let reply = dispatch(&app, &object(pb::HookType::Pre, "Typo")).await;
    assert_eq!(
        reply
            .request
            .unwrap()
            .return_overrides
            .unwrap()
            .response_code,
        503
    );
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "tyk_dispatcher_unknown_hooks_total"),
        Some(1.0)
    );
    let (status, body) = http_get(app.admin, "/hooks").await;
    assert_eq!(status, 200);
    let hooks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hooks["unknown_hooks"], "reject");
    assert_eq!(hooks["hooks"][0]["name"], "Known");
    assert_eq!(hooks["hooks"][0]["type"], "Pre");
    app.shutdown().await;
}

#[tokio::test]
async fn a_hook_config_edited_on_disk_takes_effect_and_a_broken_edit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.toml");
    let write = |header: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nlog_calls = false\ndrain_delay_secs = 1\nconfig_reload_interval_secs = 1\n\n[[hooks]]\nname = \"Live\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"set_headers\"\nheaders = {{ X-Version = \"{header}\" }}\n"
        );
        // Replaced by rename, as a ConfigMap volume does.
        std::fs::write(dir.path().join("tmp.toml"), text).unwrap();
        std::fs::rename(dir.path().join("tmp.toml"), &file).unwrap();
    };
    write("one");
    let sources = tyk_dispatcher::config::Sources {
        file: Some(file.clone()),
        ..Default::default()
    };
    let config = tyk_dispatcher::config::load(&sources).unwrap().config;
    let app = spawn_built(
        App::builder(config)
            .reload_from(sources)
            .build()
            .await
            .unwrap(),
    )
    .await;
    let header = |reply: pb::Object| reply.request.unwrap().set_headers.get("X-Version").cloned();
    assert_eq!(
        header(dispatch(&app, &object(pb::HookType::Pre, "Live")).await).as_deref(),
        Some("one")
    );

    write("two");
    let mut changed = false;
    for _ in 0..50 {
        if header(dispatch(&app, &object(pb::HookType::Pre, "Live")).await).as_deref()
            == Some("two")
        {
            changed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(changed, "the edit never took effect");

    std::fs::write(
        dir.path().join("tmp.toml"),
        "[[hooks]]\nname = \"Live\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"no_such_step\"\n",
    )
    .unwrap();
    std::fs::rename(dir.path().join("tmp.toml"), &file).unwrap();
    let mut refused = false;
    for _ in 0..50 {
        let (_, metrics) = http_get(app.admin, "/metrics").await;
        if metric(
            &metrics,
            "tyk_dispatcher_config_reloads_total{result=\"failure\"}",
        ) == Some(1.0)
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the broken edit was not counted");
    assert_eq!(
        header(dispatch(&app, &object(pb::HookType::Pre, "Live")).await).as_deref(),
        Some("two"),
        "old hooks keep serving"
    );
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_config_reloads_total{result=\"success\"}"
        ),
        Some(1.0)
    );
    app.shutdown().await;
}

/// An `api_key_auth` call with `key`: whether a session came back, and the status.
async fn authenticate(app: &TestApp, key: &str) -> (bool, i32) {
    let mut call = object(pb::HookType::CustomKeyCheck, "Auth");
    let request = call.request.as_mut().unwrap();
    request
        .headers
        .insert("Authorization".into(), format!("Bearer {key}"));
    let reply = dispatch(app, &call).await;
    let status = reply
        .request
        .unwrap()
        .return_overrides
        .unwrap()
        .response_code;
    (reply.session.is_some(), status)
}

#[tokio::test]
async fn api_keys_rotated_on_disk_are_read_in_the_background_and_calls_never_read_the_files() {
    // The steps compare their files every 5 s.
    let reload_every = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    let secret_file = dir.path().join("secret");
    let write_keys = |key: &str| {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let text = format!(
            "[[keys]]\nsha256 = \"{}\"\nname = \"team\"\napis = [\"04e911d3012646d97fcdd6c846fafc4b\"]\n",
            tyk_dispatcher::hooks::steps::grants::hex(digest.as_ref())
        );
        // Replaced by rename, as a Secret volume does.
        std::fs::write(dir.path().join("keys.staged"), text).unwrap();
        std::fs::rename(dir.path().join("keys.staged"), &keys_file).unwrap();
    };
    write_keys("first-key");
    std::fs::write(&secret_file, "0123456789abcdef0123").unwrap();
    let app = spawn_app(config_with(|c| {
        c.hooks = vec![hook(
            "Auth",
            HookTypeName::CustomKeyCheck,
            vec![step(
                "api_key_auth",
                serde_json::json!({"keys_file": keys_file, "secret_file": secret_file}),
            )],
        )];
    }))
    .await;
    assert_eq!(authenticate(&app, "first-key").await, (true, -1));

    write_keys("second-key");
    // No call until the files are gone: only the background comparison can read the new keys.
    tokio::time::sleep(reload_every + Duration::from_secs(2)).await;
    std::fs::remove_file(&keys_file).unwrap();
    std::fs::remove_file(&secret_file).unwrap();
    assert_eq!(authenticate(&app, "second-key").await, (true, -1));
    assert_eq!(authenticate(&app, "first-key").await, (false, 403));

    // The deleted file is noticed and refused: the keys in force stay.
    tokio::time::sleep(reload_every + Duration::from_secs(1)).await;
    assert_eq!(authenticate(&app, "second-key").await, (true, -1));
    assert_eq!(authenticate(&app, "first-key").await, (false, 403));
    app.shutdown().await;
}

#[test]
fn check_config_refuses_bad_hooks_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.toml");
    std::fs::write(
        &file,
        "[[hooks]]\nname = \"A\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"set_response_headers\"\nheaders = { X = \"1\" }\n[[hooks.steps]]\nkind = \"rewrite_url\"\npattern = \"(\"\nreplacement = \"/x\"\n[[hooks.steps]]\nkind = \"bogus\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run_binary(&[], &["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "config error: hooks[0].steps[0]: hook \"A\": step \"set_response_headers\" cannot act on Pre hooks"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "config error: hooks[0].steps[1]: hook \"A\": step \"rewrite_url\": bad pattern \"(\""
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("config error: hooks[0].steps[2]: hook \"A\": unknown step kind \"bogus\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_custom_auth_example_serves_its_step_with_the_same_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-signing-secret-of-enough-length";
    let config = custom_auth_config(dir.path(), secret);
    let process =
        Process::start_example("custom_auth", &[], &["--config", config.to_str().unwrap()]);
    let (grpc, admin) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    let mut call = object(pb::HookType::CustomKeyCheck, "Signed");
    let reply = pb::Object::decode(
        call_raw(channel.clone(), DISPATCH, call.encode_to_vec())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        reply
            .request
            .unwrap()
            .return_overrides
            .unwrap()
            .response_code,
        401
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = tyk_dispatcher::hooks::steps::grants::hex(
        ring::hmac::sign(&key, b"GET /basic-authentication-valid/get").as_ref(),
    );
    call.request
        .as_mut()
        .unwrap()
        .headers
        .insert("X-Signature".into(), signature);
    let reply = pb::Object::decode(
        call_raw(channel, DISPATCH, call.encode_to_vec())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(reply.session.is_some(), "signed request accepted");
    assert_eq!(reply.metadata.get("token").map(String::len), Some(64));
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_auth_decisions_total{hook_name=\"Signed\",step=\"signed_request_auth\",decision=\"allowed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tyk_dispatcher_auth_decisions_total{hook_name=\"Signed\",step=\"signed_request_auth\",decision=\"denied\"}"
        ),
        Some(1.0)
    );
}
