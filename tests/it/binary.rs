//! The binary: configuration errors, `check-config`, call and event logs, redaction.

use std::time::Duration;

use prost::Message;
use tyk_dispatcher::pb;

use crate::helpers::*;

#[test]
fn bad_config_lists_every_problem_and_binds_nothing() {
    let (code, stdout, stderr) = run_binary(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0,gateway:1"),
            ("TYK_DISPATCHER_MAX_RECV_BYTES", "lots"),
            ("TYK_DISPATCHER_LISTN", "127.0.0.1:1"),
            ("TYK_DISPATCHER_UNIX_SOCKET_MODE", "999"),
        ],
        &[],
    );
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stdout.is_empty(), "nothing served: {stdout}");
    assert!(
        stderr.contains("config error: TYK_DISPATCHER_LISTN: unknown setting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("max_recv_bytes") && stderr.contains("lots"),
        "{stderr}"
    );
}

#[test]
fn bad_values_after_loading_name_key_and_value() {
    let (code, _, stderr) = run_binary(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0,gateway:1"),
            ("TYK_DISPATCHER_UNIX_SOCKET_MODE", "999"),
            ("TYK_DISPATCHER_TLS_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_TLS_CERT", "/nonexistent/tls.crt"),
            ("TYK_DISPATCHER_TLS_KEY", "/nonexistent/tls.key"),
        ],
        &[],
    );
    assert_eq!(code, Some(78), "{stderr}");
    for expected in [
        "config error: listen: \"gateway:1\": the host must be an IP literal or localhost",
        "config error: unix_socket_mode: \"999\" is not a file mode",
        "config error: tls_cert: cannot read /nonexistent/tls.crt",
        "config error: tls_key: cannot read /nonexistent/tls.key",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_config_and_warns_on_disagreement() {
    let (code, stdout, stderr) = run_binary(
        &[
            (
                "TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER",
                "unix:///run/tyk/dispatcher.sock",
            ),
            ("TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE", "20000000"),
            ("TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE", "100000000"),
            ("TYK_DISPATCHER_SERVICE_HOST", "10.0.0.1"),
            ("TYK_DISPATCHER_PORT_50051_TCP_ADDR", "10.0.0.1"),
        ],
        &["check-config"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let config: toml::Value = toml::from_str(&stdout).expect("TOML output");
    assert_eq!(
        config["listen"][0].as_str(),
        Some("unix:///run/tyk/dispatcher.sock")
    );
    assert_eq!(config["max_reply_bytes"].as_integer(), Some(20_000_000));
    assert_eq!(config["max_recv_bytes"].as_integer(), Some(100_000_000));
    assert!(
        stderr.contains("warning: max_recv_bytes raised from 67108864 to 100000000"),
        "{stderr}"
    );

    let (code, _, stderr) = run_binary(
        &[
            (
                "TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER",
                "tcp://127.0.0.1:5555",
            ),
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:6000"),
        ],
        &["check-config"],
    );
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("does not include where the gateway dials"),
        "{stderr}"
    );
}

#[test]
fn flags_win_over_the_environment_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nmax_recv_bytes = 1000\ndrain_delay_secs = 7\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let (code, stdout, stderr) = run_binary(
        &[
            ("TYK_DISPATCHER_CONFIG", &file),
            ("TYK_DISPATCHER_MAX_RECV_BYTES", "2000"),
        ],
        &["check-config", "--listen", "127.0.0.1:3"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let config: toml::Value =
        toml::from_str(stdout.trim_start_matches(|c| c != '\n')).expect("TOML");
    assert_eq!(config["listen"][0].as_str(), Some("127.0.0.1:3"));
    assert_eq!(config["max_recv_bytes"].as_integer(), Some(2000));
    assert_eq!(config["drain_delay_secs"].as_integer(), Some(7));
}

#[tokio::test]
async fn each_call_is_logged_with_hook_type_name_and_api_id() {
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    for hook in [
        pb::HookType::Pre,
        pb::HookType::CustomKeyCheck,
        pb::HookType::PostKeyAuth,
        pb::HookType::Post,
        pb::HookType::Response,
    ] {
        let mut object = seed_object();
        object.hook_type = hook as i32;
        object.hook_name = format!("My{}", hook.as_str_name());
        call_raw(channel.clone(), DISPATCH, object.encode_to_vec())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = process.logs("dispatch");
    let seen: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["hook_type"].as_str().unwrap().to_string(),
                l["hook_name"].as_str().unwrap().to_string(),
                l["api_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let api = "04e911d3012646d97fcdd6c846fafc4b".to_string();
    assert_eq!(
        seen,
        ["Pre", "CustomKeyCheck", "PostKeyAuth", "Post", "Response"]
            .map(|t| (t.to_string(), format!("My{t}"), api.clone()))
            .to_vec()
    );
    assert!(lines.iter().all(|l| l["level"] == "INFO"));
    assert!(
        process.logs("object").is_empty(),
        "object logging is off by default"
    );
}

#[tokio::test]
async fn object_logging_redacts_every_secret() {
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_LOG_OBJECTS", "true"),
        ],
        &[],
    );
    let (grpc, _) = process.ready().await;
    let mut object = full_object();
    let secrets = [
        "Basic c2VjcmV0OnNlY3JldA==",
        "sid=cookie-secret",
        "api-key-secret",
        "query-secret",
        "raw-body-secret",
    ];
    let request = object.request.as_mut().unwrap();
    request
        .headers
        .insert("Authorization".into(), secrets[0].into());
    request.headers.insert("Cookie".into(), secrets[1].into());
    request
        .headers
        .insert("X-Api-Key".into(), secrets[2].into());
    request.url = format!("/p?key={}", secrets[3]);
    request.request_uri = request.url.clone();
    request.params.insert("key".into(), secrets[3].into());
    request.body = secrets[4].into();
    request.raw_body = secrets[4].as_bytes().to_vec().into();
    object
        .metadata
        .insert("token".into(), "token-secret".into());
    call_raw(
        connect(grpc[0].parse().unwrap()).await,
        DISPATCH,
        object.encode_to_vec(),
    )
    .await
    .unwrap();
    let line = process.wait_for_log("object", Duration::from_secs(5)).await;
    let rendered: serde_json::Value =
        serde_json::from_str(line["object"].as_str().unwrap()).unwrap();
    assert_eq!(rendered["hookName"], "Everything");
    assert_eq!(
        rendered["request"]["headers"]["Authorization"],
        "[REDACTED]"
    );
    assert_eq!(rendered["request"]["rawBody"]["bytes"], secrets[4].len());
    let text = process.log_text();
    for secret in secrets.iter().chain(&[
        "token-secret",
        "bcrypt",
        "key-id",
        "{\\\"x\\\":1}",
        "\"h\"",
        "\"s\"",
        "\"p\"",
    ]) {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the log:\n{text}"
        );
    }
}

#[tokio::test]
async fn events_are_logged_by_type_without_the_key_and_bad_ones_by_size() {
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _) = process.ready().await;
    let channel = connect(grpc[0].parse().unwrap()).await;
    let auth_failure = r#"{"message":{"Type":"AuthFailure","Meta":{"Message":"Key not authorised","OriginatingRequest":"R0VUIC8gSFRUUC8xLjE=","Path":"/x","Origin":"127.0.0.1","Key":"raw-key-secret"},"TimeStamp":"now"},"handler_name":"my_handler","spec":{"APIID":"api-7","OrgID":"org"}}"#;
    // Valid JSON of the wrong shape: serde's text would quote the string.
    let wrong_shape = r#"{"message":"shape-secret"}"#;
    for payload in [auth_failure, "definitely not json", wrong_shape, ""] {
        let reply = call_raw(
            channel.clone(),
            DISPATCH_EVENT,
            pb::Event {
                payload: payload.into(),
            }
            .encode_to_vec(),
        )
        .await
        .expect("answered");
        assert!(reply.is_empty());
    }
    let event = process.wait_for_log("event", Duration::from_secs(5)).await;
    assert_eq!(event["event_type"], "AuthFailure");
    assert_eq!(event["handler_name"], "my_handler");
    assert_eq!(event["api_id"], "api-7");
    process
        .wait_for_log("event payload is empty", Duration::from_secs(5))
        .await;
    let not_json = process.logs("event payload is not JSON");
    let seen: Vec<_> = not_json
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap(),
                l["payload_bytes"].as_u64().unwrap(),
                l["error_category"].as_str().unwrap(),
                l["line"].as_u64().unwrap(),
                l["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("WARN", 19, "syntax", 1, 1), ("WARN", 26, "data", 1, 25)]
    );
    assert!(
        not_json.iter().all(|l| l.get("error").is_none()),
        "serde's text is not logged: {not_json:?}"
    );
    assert!(
        process.logs("event payload").is_empty(),
        "no payload without log_objects"
    );
    let text = process.log_text();
    assert!(
        !text.contains("raw-key-secret")
            && !text.contains("R0VUIC8gSFRUUC8xLjE=")
            && !text.contains("shape-secret"),
        "{text}"
    );
}

/// What Go's `base64.StdEncoding.EncodeToString` writes (the gateway's `OriginatingRequest`).
fn base64(bytes: &[u8]) -> String {
    use base64::{Engine as _, prelude::BASE64_STANDARD};
    BASE64_STANDARD.encode(bytes)
}

#[tokio::test]
async fn with_object_logging_event_payloads_are_logged_without_key_or_request() {
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_LOG_OBJECTS", "true"),
        ],
        &[],
    );
    let (grpc, _) = process.ready().await;
    // What Go's `Request.Write` dumps for the request the gateway refused.
    let request = "GET /x HTTP/1.1\r\nHost: gw.example\r\nUser-Agent: curl/8.1.2\r\nAuthorization: secretkey123\r\n\r\n";
    let dump = base64(request.as_bytes());
    let sha256 = tyk_dispatcher::hooks::steps::grants::hex(
        ring::digest::digest(&ring::digest::SHA256, request.as_bytes()).as_ref(),
    );
    let long_path = format!("/{}", "p".repeat(3000));
    // gateway/coprocess_events.go: the event (`message`) with its Meta, the handler's name and
    // the API's IDs; an AuthFailure's Meta is `EventKeyFailureMeta` (gateway/event_system.go).
    let payload = serde_json::json!({
        "message": {
            "Type": "AuthFailure",
            "Meta": {
                "Message": "Key not authorised",
                "OriginatingRequest": dump,
                "Path": long_path,
                "Origin": "127.0.0.1",
                "Key": "secretkey123",
            },
            "TimeStamp": "2024-05-01 10:00:00.000000001 +0000 UTC m=+1.000000001",
        },
        "handler_name": "cp_dynamic_handler",
        "spec": {"APIID": "api-7", "OrgID": "org-1"},
    })
    .to_string();
    call_raw(
        connect(grpc[0].parse().unwrap()).await,
        DISPATCH_EVENT,
        pb::Event { payload }.encode_to_vec(),
    )
    .await
    .expect("answered");
    let line = process
        .wait_for_log("event payload", Duration::from_secs(5))
        .await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["event_type"], "AuthFailure");
    let logged: serde_json::Value =
        serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        logged,
        serde_json::json!({
            "message": {
                "Type": "AuthFailure",
                "Meta": {
                    "Message": "Key not authorised",
                    "OriginatingRequest": {"bytes": request.len(), "sha256": sha256},
                    "Path": format!("/{}…[cut, 3001 bytes]", "p".repeat(1023)),
                    "Origin": "127.0.0.1",
                    "Key": "[REDACTED]",
                },
                "TimeStamp": "2024-05-01 10:00:00.000000001 +0000 UTC m=+1.000000001",
            },
            "handler_name": "cp_dynamic_handler",
            "spec": {"APIID": "api-7", "OrgID": "org-1"},
        })
    );
    assert_eq!(
        process.logs("event").len(),
        1,
        "the event line is still there"
    );
    let text = process.log_text();
    assert!(text.contains(&sha256), "{text}");
    for secret in ["secretkey123", &dump, &base64(b"secretkey123")] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn service_link_variables_do_not_stop_the_server() {
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_SERVICE_HOST", "10.0.0.1"),
            ("TYK_DISPATCHER_SERVICE_PORT", "50051"),
            ("TYK_DISPATCHER_SERVICE_PORT_GRPC", "50051"),
            ("TYK_DISPATCHER_PORT", "tcp://10.0.0.1:50051"),
            ("TYK_DISPATCHER_PORT_50051_TCP", "tcp://10.0.0.1:50051"),
            ("TYK_DISPATCHER_PORT_50051_TCP_PROTO", "tcp"),
            ("TYK_DISPATCHER_PORT_50051_TCP_PORT", "50051"),
            ("TYK_DISPATCHER_PORT_50051_TCP_ADDR", "10.0.0.1"),
        ],
        &[],
    );
    let (_, admin) = process.ready().await;
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn without_ipv6_the_any_address_falls_back_to_ipv4_with_a_warning() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/without_ipv6.py");
    // Debian's python, where python3-seccomp lives.
    let process = Process::start_via(
        &["/usr/bin/python3", script],
        &[
            ("TYK_DISPATCHER_LISTEN", "[::]:0"),
            ("TYK_DISPATCHER_ADMIN_LISTEN", "[::]:0"),
        ],
        &[],
    );
    let (grpc, admin) = process.ready().await;
    let warnings = process.logs("IPv6 is not available here: listening on 0.0.0.0 instead");
    assert_eq!(
        warnings.len(),
        2,
        "one for gRPC, one for admin: {}",
        process.log_text()
    );
    assert_eq!(warnings[0]["level"], "WARN");
    let addr: std::net::SocketAddr = grpc[0].parse().unwrap();
    assert!(addr.ip().is_unspecified() && addr.is_ipv4(), "{addr}");
    let request = seed_object().encode_to_vec();
    let reply = call_raw(
        connect(([127, 0, 0, 1], addr.port()).into()).await,
        DISPATCH,
        request.clone(),
    )
    .await
    .unwrap();
    assert!(reply == request.as_slice());
    assert_eq!(
        http_get(([127, 0, 0, 1], admin.port()).into(), "/readyz")
            .await
            .0,
        200
    );
}

/// Waits for the process to exit and returns its code with everything it wrote to stderr.
async fn exit_and_stderr(process: &mut Process) -> (Option<i32>, String) {
    let code = process.wait_exit(Duration::from_secs(10)).await;
    // stderr is read by a thread; give it a moment after exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stderr = process.stderr.lock().unwrap().clone();
    (code, stderr)
}

/// A loopback port nothing listens on (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn hook_problems_at_start_are_config_errors_named_by_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[hooks]]\nname = \"A\"\ntype = \"Pre\"\n\
         [[hooks.steps]]\nkind = \"set_headers\"\nheaders = { X-A = \"1\" }\n\
         [[hooks.steps]]\nkind = \"set_headers\"\nheaders = {}\n\
         [[hooks]]\nname = \"B\"\ntype = \"Pre\"\ndeadline_ms = 0\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_binary(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stdout.is_empty(), "nothing served: {stdout}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "config error: hooks[0].steps[1]: hook \"A\": step \"set_headers\": needs at least one header",
            "config error: hooks[1].deadline_ms: hook \"B\": must be above 0",
        ],
        "{stderr}"
    );
}

#[test]
fn hook_values_of_the_wrong_shape_are_named_by_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatcher.toml");
    std::fs::write(
        &file,
        "[[hooks]]\nname = \"A\"\ntype = \"Pre\"\n[[hooks]]\nname = \"B\"\ntype = \"Sometimes\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run_binary(&[], &["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.starts_with("config error: hooks[1].type: unknown variant: found `Sometimes`"),
        "{stderr}"
    );
    assert!(!stderr.contains("src/"), "{stderr}");
}

#[test]
fn check_config_refuses_a_key_that_is_not_the_certificates() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (_, cert, _) = write_server_cert(first.path(), "ca-1");
    let (_, _, key) = write_server_cert(second.path(), "ca-2");
    let (code, stdout, stderr) = run_binary(
        &[
            ("TYK_DISPATCHER_TLS_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_TLS_CERT", cert.to_str().unwrap()),
            ("TYK_DISPATCHER_TLS_KEY", key.to_str().unwrap()),
        ],
        &["check-config"],
    );
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "config error: tls_key: the key in {} does not match the certificate in {}\n",
            key.display(),
            cert.display()
        )
    );
}

#[test]
fn check_config_refuses_tls_files_that_cannot_be_read() {
    let pki = make_pki();
    // A directory exists, so only reading it fails (root reads a mode-000 file anyway).
    let (code, stdout, stderr) = run_binary(
        &[
            ("TYK_DISPATCHER_TLS_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_TLS_CERT", pki.server_cert.to_str().unwrap()),
            ("TYK_DISPATCHER_TLS_KEY", pki.server_key.to_str().unwrap()),
            (
                "TYK_DISPATCHER_TLS_CLIENT_CA",
                pki.dir.path().to_str().unwrap(),
            ),
        ],
        &["check-config"],
    );
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "config error: tls_client_ca: cannot read {}: Is a directory (os error 21)\n",
            pki.dir.path().display()
        )
    );
}

#[tokio::test]
async fn a_busy_admin_port_exits_71_leaving_no_grpc_port_or_socket_behind() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    let grpc_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dispatcher.sock");
    let listen = format!("127.0.0.1:{grpc_port},unix://{}", socket.display());
    let mut process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", &listen),
            ("TYK_DISPATCHER_ADMIN_LISTEN", &admin_addr),
        ],
        &[],
    );
    let (code, stderr) = exit_and_stderr(&mut process).await;
    assert_eq!(code, Some(71), "{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot listen on {admin_addr}: Address already in use (os error 98)\n")
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", grpc_port)).is_ok(),
        "the gRPC port is free again"
    );
    assert!(!socket.exists(), "no socket file left behind");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_listener_that_cannot_bind_closes_those_bound_before_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let grpc_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dispatcher.sock");
    let listen = format!(
        "unix://{},127.0.0.1:{grpc_port},{busy_addr}",
        socket.display()
    );
    let mut process = Process::start(&[("TYK_DISPATCHER_LISTEN", &listen)], &[]);
    let (code, stderr) = exit_and_stderr(&mut process).await;
    assert_eq!(code, Some(71), "{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot listen on {busy_addr}: Address already in use (os error 98)\n")
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", grpc_port)).is_ok(),
        "the gRPC port bound first is free again"
    );
    assert!(!socket.exists(), "the socket file made first is removed");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn each_cause_is_told_once_and_no_message_cites_source_code() {
    for (env, args, value, expected) in [
        (
            &[("TYK_DISPATCHER_MAX_RECV_BYTES", "lots")][..],
            &[][..],
            "lots",
            (
                "config error: max_recv_bytes: ",
                " (from TYK_DISPATCHER_MAX_RECV_BYTES)",
            ),
        ),
        (
            &[],
            &["--log-format", "xml"],
            "xml",
            ("config error: log_format: ", " (from --log-format)"),
        ),
    ] {
        let (code, _, stderr) = run_binary(env, args);
        assert_eq!(code, Some(78), "{stderr}");
        assert!(!stderr.contains("src/"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert_eq!(stderr.matches(value).count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(expected.0) && stderr.trim_end().ends_with(expected.1),
            "{stderr}"
        );
    }
}
